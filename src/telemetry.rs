//! Logging: tracing to stderr, filtered by `RUST_LOG` (default `info`, with the storage engine's
//! own chatter at `warn`), human or JSON format. Colours only when stderr is a terminal.
//!
//! stdout is reserved for the event stream, so nothing here ever writes to it.

use std::io::IsTerminal as _;

use tracing_subscriber::EnvFilter;

/// The filter used when `RUST_LOG` is not set.
const DEFAULT_FILTER: &str = "info,fjall=warn,lsm_tree=warn";

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Pretty,
    /// One JSON object per line (for journald/Loki/...), with the request span's fields.
    Json,
}

/// Installs the global subscriber. Call once, before anything logs.
pub fn init(format: LogFormat) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(DEFAULT_FILTER));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Pretty => builder.init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .init(),
    }
}
