//! Logging: tracing to stderr, filtered by `RUST_LOG` (default `info`, with the storage engine's
//! own chatter at `warn`), human or JSON format. Colours only when stderr is a terminal.
//!
//! stdout is reserved for the event stream, so nothing here ever writes to it.
//!
//! Logging never stops or kills the daemon: a log line that cannot be written (stderr's reader
//! has gone, a redirected file's disk is full, fd 2 was closed) is dropped and counted in
//! [`log_write_failures`] (`kirimhook_log_write_failures_total`). SIGPIPE is ignored by the Rust
//! runtime before `main` runs, so such a write returns `EPIPE` instead of killing the process.

use std::io::{IsTerminal as _, Write};
use std::sync::atomic::{AtomicU64, Ordering};

use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::EnvFilter;

use crate::cli::LogFormat;

/// The filter used when `RUST_LOG` is not set.
const DEFAULT_FILTER: &str = "info,fjall=warn,lsm_tree=warn";

/// Log lines that could not be written to stderr, since the process started.
static LOG_WRITE_FAILURES: AtomicU64 = AtomicU64::new(0);

/// How many log lines could not be written (and were dropped) since the process started.
pub fn log_write_failures() -> u64 {
    LOG_WRITE_FAILURES.load(Ordering::Relaxed)
}

/// Installs the global subscriber. Call once, before anything logs.
pub fn init(format: LogFormat) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(DEFAULT_FILTER));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        // Its own report of a failed write would go to stderr with `eprintln!`, which panics
        // when stderr is gone: the failure is counted instead.
        .log_internal_errors(false)
        .with_writer(Stderr);
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

/// Writes a line to stderr for code outside the subscriber (the final error of `main`),
/// dropping and counting it when stderr is gone, never panicking as `eprintln!` would.
pub fn stderr_line(line: &str) {
    let mut out = Stderr;
    let _ = out.write_all(line.as_bytes());
    let _ = out.write_all(b"\n");
}

/// stderr that never fails: a write error drops the bytes and is counted.
#[derive(Debug, Clone, Copy, Default)]
struct Stderr;

impl Write for Stderr {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        // One formatted log line per call: write it whole or drop it whole.
        if std::io::stderr().lock().write_all(buf).is_err() {
            LOG_WRITE_FAILURES.fetch_add(1, Ordering::Relaxed);
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        let _ = std::io::stderr().flush();
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for Stderr {
    type Writer = Stderr;

    fn make_writer(&'a self) -> Stderr {
        Stderr
    }
}
