//! The command line (clap derive). Parsing only; `main` runs what it describes. The shell
//! completion scripts and the manual page are generated from the same definitions
//! ([`completion_script`], [`man_page`]), so they never drift from what the binary accepts.
//!
//! This module imports nothing else from the crate: the types and the defaults of the flags
//! live here, and the modules that act on them (`telemetry`, `ops::*`) import them from here.

use std::path::PathBuf;

use clap::{Args, CommandFactory as _, Parser, Subcommand, ValueEnum};

/// Where the admin listener is unless `--admin` says otherwise (the `[admin] listen` default).
pub const DEFAULT_ADMIN_URL: &str = "http://127.0.0.1:9090";
/// Most entries a list command prints unless `--limit` says otherwise (the admin API's own
/// default page size, which a request without `limit` gets).
pub const DEFAULT_LIMIT: usize = 100;
/// Where kirim.dev's REST API lives unless `--api-base` says otherwise.
pub const DEFAULT_API_BASE: &str = "https://api.kirim.chat";
/// The environment variable holding the API key unless `--api-key-env` says otherwise.
pub const DEFAULT_API_KEY_ENV: &str = "KIRIM_API_KEY";

/// The completion script of `shell` for every command and flag.
pub fn completion_script(shell: clap_complete::Shell) -> Vec<u8> {
    let mut out = Vec::new();
    clap_complete::generate(shell, &mut Cli::command(), "kirimhook", &mut out);
    out
}

/// The manual page of kirimhook (`command` `None`: the synopsis and the list of commands) or
/// of one of its commands (`kirimhook-<command>`, with every flag), in roff. `Ok(None)` when
/// no command has that name.
pub fn man_page(command: Option<&str>) -> std::io::Result<Option<Vec<u8>>> {
    let cli = Cli::command();
    let page = match command {
        None => cli,
        Some(name) => {
            let Some(sub) = cli.find_subcommand(name).cloned() else {
                return Ok(None);
            };
            let title = format!("kirimhook-{name}");
            sub.name(title.clone())
                .bin_name(format!("kirimhook {name}"))
                .display_name(title)
        }
    };
    let mut out = Vec::new();
    clap_mangen::Man::new(page).render(&mut out)?;
    Ok(Some(out))
}

/// Every manual page, as (file name, roff): `kirimhook.1`, then `kirimhook-<command>.1` for
/// each command.
pub fn man_pages() -> std::io::Result<Vec<(String, Vec<u8>)>> {
    let mut pages = Vec::new();
    let names = std::iter::once(None).chain(command_names().into_iter().map(Some));
    for name in names {
        let file = match &name {
            None => "kirimhook.1".to_owned(),
            Some(name) => format!("kirimhook-{name}.1"),
        };
        if let Some(page) = man_page(name.as_deref())? {
            pages.push((file, page));
        }
    }
    Ok(pages)
}

/// The names of kirimhook's commands, as typed.
pub fn command_names() -> Vec<String> {
    Cli::command()
        .get_subcommands()
        .map(|c| c.get_name().to_owned())
        .collect()
}

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Pretty,
    /// One JSON object per line (for journald/Loki/...), with the request span's fields.
    Json,
}

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
    /// Validate a configuration and its store path: exit 0 when valid, else 1 naming the
    /// failing key.
    CheckConfig {
        /// Path of the TOML configuration.
        #[arg(long)]
        config: PathBuf,
        /// Secret and TLS files that do not exist here (such as systemd credentials under
        /// /run/credentials/...) are listed as not checked instead of failing the check.
        #[arg(long)]
        skip_missing_secrets: bool,
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
    /// Operator commands, answered by a running daemon's admin listener.
    #[command(flatten)]
    Admin(AdminCommand),
    /// Watch a running daemon live: each delivery accepted, duplicate, quarantined or
    /// rejected, and each sink's delivered, failed and dead-lettered events, as they happen.
    Tail(TailArgs),
    /// Print the completion script for a shell, e.g. `kirimhook completions bash >
    /// /etc/bash_completion.d/kirimhook`.
    Completions {
        /// The shell to complete in.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the manual page (roff), e.g. `kirimhook man | man -l -`; with a command, that
    /// command's own page (`kirimhook-<command>`, every flag).
    Man {
        /// A command, such as `serve` (default: the page of kirimhook itself).
        command: Option<String>,
        /// Write every page into DIR instead (kirimhook.1 and kirimhook-<command>.1 for each
        /// command), for a package or `/usr/local/share/man/man1`.
        #[arg(long, value_name = "DIR", conflicts_with = "command")]
        out_dir: Option<PathBuf>,
    },
}

/// The operator commands: they speak to a running daemon's admin listener (`[admin] listen`).
#[derive(Debug, Subcommand)]
pub enum AdminCommand {
    /// Per sink: queue depth, age of the oldest queued event, dead letters; quarantine; store size.
    Status(AdminArgs),
    /// List, show, retry or drop a sink's dead letters (events it gave up on).
    #[command(subcommand)]
    DeadLetters(DeadLettersCommand),
    /// List, show or drop quarantined deliveries (authentic, body not recognised).
    #[command(subcommand)]
    Quarantine(QuarantineCommand),
    /// Send the events received since a time to one sink again (only events still stored:
    /// see store.keep_delivered_hours).
    Replay(ReplayArgs),
}

/// Where a daemon's admin listener is.
#[derive(Debug, Clone, Args)]
pub struct AdminTarget {
    /// The daemon's admin listener (its `[admin] listen`).
    #[arg(long, value_name = "URL", default_value = DEFAULT_ADMIN_URL)]
    pub admin: String,
    /// Take the admin listener's address from the daemon's config (its `[admin] listen`)
    /// instead of --admin.
    #[arg(long, value_name = "FILE", conflicts_with = "admin")]
    pub config: Option<PathBuf>,
}

/// Where the admin listener is, and how to print its answer.
#[derive(Debug, Clone, Args)]
pub struct AdminArgs {
    /// The admin listener.
    #[command(flatten)]
    pub target: AdminTarget,
    /// Print the admin API's JSON answer instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// Which entries a retry or drop is about: IDs, or every one.
#[derive(Debug, Clone, Args)]
#[group(required = true, multiple = false)]
pub struct Selected {
    /// IDs (seqs, from `list`).
    #[arg(value_name = "ID")]
    pub ids: Vec<u64>,
    /// Every entry.
    #[arg(long)]
    pub all: bool,
}

/// A page of a list.
#[derive(Debug, Clone, Args)]
pub struct PageArgs {
    /// Start after this ID (the `--after` a previous page printed).
    #[arg(long, value_name = "ID", default_value_t = 0)]
    pub after: u64,
    /// Most entries to print (1 to 1000).
    #[arg(long, value_name = "N", default_value_t = DEFAULT_LIMIT)]
    pub limit: usize,
}

/// `kirimhook dead-letters ...`.
#[derive(Debug, Subcommand)]
pub enum DeadLettersCommand {
    /// List a sink's dead letters: ID, event, attempts, last error.
    List {
        /// The sink's name.
        #[arg(long)]
        sink: String,
        /// Which page.
        #[command(flatten)]
        page: PageArgs,
        /// The admin listener.
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Show one dead letter with its event and body.
    Show {
        /// The sink's name.
        #[arg(long)]
        sink: String,
        /// Its ID (from `list`).
        id: u64,
        /// The admin listener.
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Put dead letters back into the sink's queue, as never attempted: they are sent again.
    Retry {
        /// The sink's name.
        #[arg(long)]
        sink: String,
        /// Which ones.
        #[command(flatten)]
        selected: Selected,
        /// The admin listener.
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Forget dead letters for good.
    Drop {
        /// The sink's name.
        #[arg(long)]
        sink: String,
        /// Which ones.
        #[command(flatten)]
        selected: Selected,
        /// The admin listener.
        #[command(flatten)]
        admin: AdminArgs,
    },
}

/// `kirimhook quarantine ...`.
#[derive(Debug, Subcommand)]
pub enum QuarantineCommand {
    /// List quarantined deliveries: ID, event, why.
    List {
        /// Which page.
        #[command(flatten)]
        page: PageArgs,
        /// The admin listener.
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Show one quarantined delivery with its body.
    Show {
        /// Its ID (from `list`).
        id: u64,
        /// The admin listener.
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Forget quarantined deliveries for good.
    Drop {
        /// Which ones.
        #[command(flatten)]
        selected: Selected,
        /// The admin listener.
        #[command(flatten)]
        admin: AdminArgs,
    },
}

/// Arguments of `kirimhook replay`.
#[derive(Debug, Args)]
pub struct ReplayArgs {
    /// The sink to send the events to again.
    #[arg(long)]
    pub sink: String,
    /// Events received at or after this time: RFC 3339 (2026-06-01T12:00:00Z, or with an
    /// offset such as +07:00), or a duration back from now (90m, 2h, 1day).
    #[arg(long, value_name = "TIME")]
    pub since: String,
    /// The admin listener.
    #[command(flatten)]
    pub admin: AdminArgs,
}

/// Arguments of `kirimhook tail`.
#[derive(Debug, Clone, Args)]
pub struct TailArgs {
    /// The admin listener.
    #[command(flatten)]
    pub target: AdminTarget,
    /// Print one JSON object per line (for jq) instead of aligned text.
    #[arg(long)]
    pub json: bool,
    /// Only lines about events of these types: comma-separated globs, as in a sink's
    /// `events` filter (message.*,contact.updated). Rejected requests are then not shown.
    #[arg(long, value_name = "TYPES", value_delimiter = ',')]
    pub events: Vec<String>,
    /// Only this sink's outcomes, and the events accepted for it.
    #[arg(long, value_name = "NAME")]
    pub sink: Option<String>,
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
    /// Receiver URL, e.g. http://127.0.0.1:8080/webhooks/kirim (or https:// for a receiver
    /// with [server.tls]).
    #[arg(long)]
    pub url: String,
    /// PEM file of the certificate(s) to trust for an https:// URL instead of the usual
    /// public roots, e.g. a receiver's self-signed certificate.
    #[arg(long, value_name = "FILE")]
    pub cacert: Option<PathBuf>,
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
    #[arg(long, value_name = "NAME", default_value = DEFAULT_API_KEY_ENV)]
    pub api_key_env: String,
    /// kirim.dev API base URL (http:// is allowed, for local testing and proxies).
    #[arg(long, value_name = "URL", default_value = DEFAULT_API_BASE)]
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
