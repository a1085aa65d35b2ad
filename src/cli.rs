//! The command line (clap derive). Parsing only; `main` runs what it describes.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::telemetry::LogFormat;

/// kirimhook: receive kirim.dev webhooks, verify them, store them durably, stream them once.
#[derive(Debug, Parser)]
#[command(name = "kirimhook", version, about, long_about = None)]
pub struct Cli {
    /// Log format on stderr (stdout carries only the event stream).
    #[arg(long, global = true, value_enum, default_value = "pretty")]
    pub log_format: LogFormat,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon.
    Serve {
        /// Path of the TOML configuration.
        #[arg(long)]
        config: PathBuf,
    },
    /// Validate a configuration: exit 0 when valid, else 1 naming the failing key.
    CheckConfig {
        /// Path of the TOML configuration.
        #[arg(long)]
        config: PathBuf,
    },
    /// Print an X-Kirim-Signature value for FILE's exact bytes.
    Sign {
        /// The signing secret.
        #[command(flatten)]
        secret: SecretArg,
        /// Unix time to sign at (default: now).
        #[arg(long)]
        timestamp: Option<i64>,
        /// The body to sign.
        file: PathBuf,
    },
    /// Send FILE as a signed delivery, the way kirim.dev would, and print the answer.
    Send(SendArgs),
    /// List the organisation's connected lines (their phone_number_id) from kirim.dev.
    Accounts(AccountsArgs),
}

/// A secret given on the command line or, to keep it out of `ps`, through the environment.
#[derive(Debug, Args)]
#[group(required = true, multiple = false)]
pub struct SecretArg {
    /// The secret value (`whsec_...`).
    #[arg(long)]
    pub secret: Option<String>,
    /// Name of an environment variable holding the secret.
    #[arg(long)]
    pub secret_env: Option<String>,
}

/// Arguments of `kirimhook send`.
#[derive(Debug, Args)]
pub struct SendArgs {
    /// Receiver URL, e.g. http://127.0.0.1:8080/webhooks/kirim
    #[arg(long)]
    pub url: String,
    /// The signing secret.
    #[command(flatten)]
    pub secret: SecretArg,
    /// X-Kirim-Source (default: `meta` for a WhatsApp payload, else `kirim`).
    #[arg(long)]
    pub source: Option<String>,
    /// X-Kirim-Event (default: the envelope's `type`, or message.received / message.status).
    #[arg(long)]
    pub event: Option<String>,
    /// X-Kirim-Event-Id (default: the envelope's `id` or the first wamid).
    #[arg(long)]
    pub event_id: Option<String>,
    /// X-Kirim-Attempt.
    #[arg(long, default_value_t = 1)]
    pub attempt: u32,
    /// The body to send, byte for byte.
    pub file: PathBuf,
}

/// Arguments of `kirimhook accounts`.
#[derive(Debug, Args)]
pub struct AccountsArgs {
    /// Name of the environment variable holding the kirim.dev API key (never the key itself).
    #[arg(long, value_name = "NAME", default_value = crate::accounts::DEFAULT_API_KEY_ENV)]
    pub api_key_env: String,
    /// kirim.dev API base URL (http:// is allowed, for local testing and proxies).
    #[arg(long, value_name = "URL", default_value = crate::accounts::DEFAULT_API_BASE)]
    pub api_base: String,
    /// Print one JSON array of the accounts instead of a table.
    #[arg(long)]
    pub json: bool,
}

impl SecretArg {
    /// The secret value, read from the environment when `--secret-env` was used.
    pub fn resolve(&self) -> anyhow::Result<String> {
        match (&self.secret, &self.secret_env) {
            (Some(value), _) => Ok(value.clone()),
            (None, Some(var)) => std::env::var(var).map_err(|_| {
                anyhow::anyhow!("--secret-env: environment variable {var} is not set")
            }),
            (None, None) => anyhow::bail!("give --secret or --secret-env"),
        }
    }
}
