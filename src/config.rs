//! Configuration: turns the TOML file into a validated [`Config`] in two steps. Serde reads
//! the text into private `Raw*` structs that reject unknown keys, then `validate` checks every
//! value, fills in defaults and resolves signing secrets (inline, from an environment variable
//! or from a file), and the PostgreSQL URL of `[store]` the same way (the `[store]` section
//! lives in `store`). Of a `[[sinks]]` table this module reads the keys every kind takes
//! (`name`, `kind`, the filters, `retry`); the keys of one kind (http's `url`, `secret_file`,
//! ...) are declared, read and validated by that kind's `config.rs` under [`crate::sinks`],
//! through [`crate::sinks::config`], with the same error rules. Every
//! [`ConfigError::Invalid`] names the failing key by its full dotted path, such as
//! `verify.secrets[1].value_env` or `sinks[0].retry.max_attempts`. Indexes count from 0 in file
//! order. Secret values never appear in an error or in `Debug` output (the store URL is a
//! [`SecretString`]), and sink URLs are not quoted in errors either (they may carry a token).
//! A sink's `events`, `sources` and `phone_number_ids` become a [`Filter`] from
//! [`crate::receive::route`]. This module does not reload the file, does not open sockets or the store,
//! does not resolve host names, and does no I/O except reading the config file in
//! [`Config::load`], the files named by `value_file`, `secret_file` and `store.url_file`, and
//! the TLS certificate and key of `[server.tls]` (parsed by [`crate::tls`] so that
//! `check-config` finds a bad one; the key is never shown).

use std::fmt::Display;
use std::net::SocketAddr;
use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::de::{DeserializeSeed, Deserializer, MapAccess, Visitor};
use serde::Deserialize;

use crate::receive::envelope::Source;
use crate::receive::route::Filter;
use crate::receive::signature::SigningSecret;
use crate::sinks;
use crate::sinks::config::{KindKey, KindKeys, SinkTable};
pub use crate::sinks::SinkKind;
pub use crate::tls::TlsConfig;

mod locate;
mod secret;
mod store;

pub use secret::SecretString;
pub use store::{PostgresConfig, StoreConfig, StoreEngine};

const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
const DEFAULT_PATH: &str = "/webhooks/kirim";
const DEFAULT_MAX_BODY_BYTES: usize = 1024 * 1024;
const MAX_BODY_BYTES_RANGE: RangeInclusive<usize> = 1024..=64 * 1024 * 1024;
const DEFAULT_MAX_CONNECTIONS: usize = 1024;
const DEFAULT_REQUEST_TIMEOUT_SECS: u64 = 10;
const REQUEST_TIMEOUT_SECS_RANGE: RangeInclusive<u64> = 1..=300;
const DEFAULT_SHUTDOWN_TIMEOUT_SECS: u64 = 10;
const SHUTDOWN_TIMEOUT_SECS_RANGE: RangeInclusive<u64> = 1..=600;
const DEFAULT_TOLERANCE_SECS: u64 = 300;
const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:9090";
const SECRET_PREFIX: &str = "whsec_";
/// The most bytes read from a `value_file` or `secret_file`: a secret is one short line, and a
/// wrong path (`/dev/zero`, a log file) must neither hang the start nor fill the memory.
pub const MAX_SECRET_FILE_BYTES: u64 = 64 * 1024;
/// What a secret file that `check-config --skip-missing-secrets` did not find is replaced
/// with, so that the rest of the config can be checked; never served.
pub(crate) const UNCHECKED_SECRET: &str = "whsec_not_checked";
const SINK_NAME_MAX_CHARS: usize = 64;
const DEFAULT_INITIAL_BACKOFF_MS: u64 = 1000;
const INITIAL_BACKOFF_MS_RANGE: RangeInclusive<u64> = 1..=3_600_000;
const DEFAULT_MAX_BACKOFF_SECS: u64 = 600;
const MAX_BACKOFF_SECS_RANGE: RangeInclusive<u64> = 1..=86_400;
const DEFAULT_MAX_ATTEMPTS: u32 = 20;
const MAX_ATTEMPTS_RANGE: RangeInclusive<u32> = 1..=1000;

/// The validated configuration of the daemon.
#[derive(Debug, Clone)]
pub struct Config {
    /// The HTTP listener: `[server]`.
    pub server: ServerConfig,
    /// Signature verification: `[verify]` and `[[verify.secrets]]`.
    pub verify: VerifyConfig,
    /// The event store and its engine: `[store]`.
    pub store: StoreConfig,
    /// Where accepted events are delivered: `[[sinks]]`, at least one, names unique.
    pub sinks: Vec<SinkConfig>,
    /// The admin listener (health, metrics, the API behind the operator CLI): `[admin]`.
    pub admin: AdminConfig,
}

/// The admin listener (`[admin]`): `/healthz`, `/readyz`, `/metrics` and the JSON API that
/// `kirimhook status`, `dead-letters`, `quarantine` and `replay` use. It has no
/// authentication: keep it on loopback (the default) or a private network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminConfig {
    /// Whether the admin listener runs, `enabled`. Default `true`.
    pub enabled: bool,
    /// Address to bind, `listen`. Default `127.0.0.1:9090`. Never the public listener's
    /// address (`server.listen`).
    pub listen: SocketAddr,
}

impl AdminConfig {
    /// The `[admin]` table of the config file at `path`, read on its own: how the operator
    /// commands find a daemon's admin listener (`--config`). Nothing else in the file is
    /// validated, and no secret file is opened.
    pub fn read(path: &Path) -> Result<AdminConfig, ConfigError> {
        AdminConfig::from_toml_str(&read_config_file(path)?)
    }

    /// The `[admin]` table of config text, read on its own (see [`AdminConfig::read`]).
    pub fn from_toml_str(text: &str) -> Result<AdminConfig, ConfigError> {
        #[derive(Deserialize)]
        struct AdminOnly {
            #[serde(default)]
            admin: RawAdmin,
        }
        let only: AdminOnly = toml::from_str(text).map_err(|err| read_error(text, &err))?;
        only.admin.parse()
    }
}

/// The HTTP listener and its limits (`[server]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerConfig {
    /// Address to bind, `listen`. Default `127.0.0.1:8080`.
    pub listen: SocketAddr,
    /// Request path webhooks are posted to, `path`. Default `/webhooks/kirim`. Starts with `/`,
    /// holds no `?`, `#`, whitespace or control characters.
    pub path: String,
    /// Largest accepted request body in bytes, `max_body_bytes`. Default 1 MiB; 1 KiB..=64 MiB.
    pub max_body_bytes: usize,
    /// Most connections served at once, `max_connections`. Default 1024; at least 1.
    pub max_connections: usize,
    /// Headers and body must both arrive within this, `request_timeout_secs`. Default 10 s;
    /// 1..=300 s.
    pub request_timeout: Duration,
    /// Drain deadline after SIGTERM or SIGINT, `shutdown_timeout_secs`. Default 10 s; 1..=600 s.
    pub shutdown_timeout: Duration,
    /// HTTPS instead of HTTP on `listen`, `[server.tls]`. Default: none, plain HTTP.
    pub tls: Option<TlsConfig>,
}

/// Signature verification settings (`[verify]`).
#[derive(Debug, Clone)]
pub struct VerifyConfig {
    /// Largest accepted distance between the signed timestamp and now, in seconds,
    /// `tolerance_secs`. Default 300. 0 disables the freshness check.
    pub tolerance_secs: u64,
    /// The signing secrets, in file order, ids unique (`[[verify.secrets]]`, at least one).
    /// A delivery is authentic when any of them verifies it.
    pub secrets: Vec<SigningSecret>,
}

/// One event sink (`[[sinks]]`): the keys every kind takes, and in [`SinkConfig::kind`] the
/// settings of its kind, validated by the kind itself ([`crate::sinks::config`]).
///
/// Not `PartialEq`: an HTTP sink may hold a [`SigningSecret`], which cannot be compared.
#[derive(Debug, Clone)]
pub struct SinkConfig {
    /// Unique name used in logs and in the store: 1 to 64 of `A-Z a-z 0-9 _ -`.
    pub name: String,
    /// What the sink does with events, with its kind-specific settings.
    pub kind: SinkKind,
    /// Which events are queued for this sink: `events`, `sources` and `phone_number_ids`,
    /// allowed on every kind. Default: every event.
    pub filter: Filter,
    /// How failed deliveries to this sink are retried: `[sinks.retry]`, allowed on every kind.
    pub retry: RetryPolicy,
}

/// How a sink retries a failed delivery (`[sinks.retry]`). [`RetryPolicy::default`] gives the
/// defaults of every key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Backoff cap before the first retry, `initial_backoff_ms`. Default 1000 ms;
    /// 1..=3 600 000 ms.
    pub initial_backoff: Duration,
    /// Largest backoff between two attempts, `max_backoff_secs`. Default 600 s; at least
    /// `initial_backoff`, at most 86 400 s.
    pub max_backoff: Duration,
    /// Attempts in all, the first one included, before the event is dead-lettered,
    /// `max_attempts`. Default 20; 1..=1000.
    pub max_attempts: u32,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            initial_backoff: Duration::from_millis(DEFAULT_INITIAL_BACKOFF_MS),
            max_backoff: Duration::from_secs(DEFAULT_MAX_BACKOFF_SECS),
            max_attempts: DEFAULT_MAX_ATTEMPTS,
        }
    }
}

/// Why the configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The config file could not be read. The OS error is part of the message (and not a
    /// `source()` as well, so that a report of the error chain says it once).
    #[error("cannot read config file {path}: {error}")]
    Read {
        /// The file that was asked for.
        path: PathBuf,
        /// Why reading it failed.
        error: std::io::Error,
    },
    /// The text is not valid TOML. The message gives line and column, but never quotes the
    /// source text or a string value, so that secrets cannot leak through it.
    #[error("{0}")]
    Parse(String),
    /// A value is present but not acceptable, or of the wrong type, or a key is unknown (then
    /// `key` is the unknown key's full path and the message lists the known ones).
    #[error("{key}: {message}")]
    Invalid {
        /// Full dotted path of the key, such as `verify.secrets[1].value_env`.
        key: String,
        /// What is wrong with it; never contains a secret value.
        message: String,
    },
}

impl ConfigError {
    /// The dotted key this error is about, when known.
    pub fn key(&self) -> Option<&str> {
        match self {
            ConfigError::Invalid { key, .. } => Some(key),
            ConfigError::Read { .. } | ConfigError::Parse(_) => None,
        }
    }
}

/// A config file as `kirimhook check-config` read it: see [`Config::check`].
#[derive(Debug)]
pub struct Checked {
    /// The validated config. A secret whose file was skipped holds a placeholder: this value
    /// is for reporting only, never for serving.
    pub config: Config,
    /// The files that were not there and not checked, in file order.
    pub not_checked: Vec<NotChecked>,
}

/// A secret or TLS file that `check-config --skip-missing-secrets` did not check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotChecked {
    /// The key naming it, such as `verify.secrets[0].value_file`.
    pub key: String,
    /// The path it names.
    pub path: PathBuf,
    /// Why it was not checked.
    pub reason: &'static str,
}

impl Display for NotChecked {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({}): {}", self.key, self.path.display(), self.reason)
    }
}

/// What [`Config::check`] does with a secret or TLS file (`value_file`, `secret_file`,
/// `server.tls.cert_file`, `server.tls.key_file`) that does not exist.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MissingFiles {
    /// An error naming the key and the path, as when serving.
    Refuse,
    /// Check everything else and list the file as not checked: for a production config whose
    /// credentials (`/run/credentials/...`) exist only where it runs.
    Skip,
}

pub(crate) const NOT_PRESENT: &str = "not present here; not checked";
const PAIR_NOT_CHECKED: &str = "not checked (the other file of [server.tls] is not present here)";

impl Config {
    /// Reads and validates the file the way [`Config::load`] does; with
    /// [`MissingFiles::Skip`], secret and TLS files that do not exist are listed in
    /// [`Checked::not_checked`] instead of failing. The store path is not looked at here.
    pub fn check(path: &Path, missing: MissingFiles) -> Result<Checked, ConfigError> {
        let text = read_config_file(path)?;
        let mut raw: RawConfig = toml::from_str(&text).map_err(|err| read_error(&text, &err))?;
        let not_checked = match missing {
            MissingFiles::Refuse => Vec::new(),
            MissingFiles::Skip => raw.skip_missing_files(),
        };
        let config = raw.validate(&|name| std::env::var(name).ok())?;
        Ok(Checked {
            config,
            not_checked,
        })
    }

    /// Parses and validates TOML text. `env` resolves environment variables for `value_env`
    /// (injected so tests need not touch the process environment).
    pub fn from_toml_str_with(
        text: &str,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|err| read_error(text, &err))?;
        raw.validate(env)
    }

    /// Same with the process environment.
    pub fn from_toml_str(text: &str) -> Result<Config, ConfigError> {
        Self::from_toml_str_with(text, &|name| std::env::var(name).ok())
    }

    /// Reads the file and parses it.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        Self::from_toml_str(&read_config_file(path)?)
    }
}

fn read_config_file(path: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(path).map_err(|error| ConfigError::Read {
        path: path.to_owned(),
        error,
    })
}

// ---------------------------------------------------------------------------------------------
// Raw layer: exactly what serde reads. No Debug derive, so secret values cannot be printed.
// Required keys are `Option` so that their absence is reported with the full dotted key.

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    server: RawServer,
    #[serde(default)]
    verify: RawVerify,
    #[serde(default)]
    store: store::RawStore,
    #[serde(default)]
    sinks: Vec<RawSink>,
    #[serde(default)]
    admin: RawAdmin,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAdmin {
    enabled: Option<bool>,
    listen: Option<String>,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawServer {
    listen: Option<String>,
    path: Option<String>,
    max_body_bytes: Option<usize>,
    max_connections: Option<usize>,
    request_timeout_secs: Option<u64>,
    shutdown_timeout_secs: Option<u64>,
    tls: Option<RawTls>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTls {
    cert_file: Option<PathBuf>,
    key_file: Option<PathBuf>,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawVerify {
    tolerance_secs: Option<u64>,
    #[serde(default)]
    secrets: Vec<RawSecret>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSecret {
    id: Option<String>,
    value: Option<String>,
    value_env: Option<String>,
    value_file: Option<PathBuf>,
}

/// A sink table: the keys every kind takes, and in `kind_keys` the others, each declared
/// and type-checked by a kind ([`crate::sinks::config`]). Read by hand ([`RawSinkVisitor`])
/// because serde's `flatten` does not work with `deny_unknown_fields`; an unknown key is
/// refused with the same message and position.
struct RawSink {
    name: Option<String>,
    kind: Option<String>,
    kind_keys: KindKeys,
    events: Option<Vec<String>>,
    sources: Option<Vec<String>>,
    phone_number_ids: Option<Vec<String>>,
    retry: RawRetry,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRetry {
    initial_backoff_ms: Option<u64>,
    max_backoff_secs: Option<u64>,
    max_attempts: Option<u32>,
}

/// The keys of a sink table every kind takes, before and after the kinds' own keys in the
/// list an unknown-key error gives.
const SINK_KEYS_BEFORE: [&str; 2] = ["name", "kind"];
const SINK_KEYS_AFTER: [&str; 4] = ["events", "sources", "phone_number_ids", "retry"];

/// A key of a sink table.
enum SinkKey {
    Name,
    Kind,
    Events,
    Sources,
    PhoneNumberIds,
    Retry,
    OfKind(&'static KindKey),
}

/// Reads one key of a sink table; an unknown one is an error at the key's position, worded
/// as serde's own (`unknown field `x`, expected one of ...`).
struct SinkKeySeed;

impl<'de> DeserializeSeed<'de> for SinkKeySeed {
    type Value = SinkKey;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<SinkKey, D::Error> {
        deserializer.deserialize_identifier(self)
    }
}

impl Visitor<'_> for SinkKeySeed {
    type Value = SinkKey;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("field identifier")
    }

    fn visit_str<E: serde::de::Error>(self, key: &str) -> Result<SinkKey, E> {
        Ok(match key {
            "name" => SinkKey::Name,
            "kind" => SinkKey::Kind,
            "events" => SinkKey::Events,
            "sources" => SinkKey::Sources,
            "phone_number_ids" => SinkKey::PhoneNumberIds,
            "retry" => SinkKey::Retry,
            other => match sinks::config::kind_key(other) {
                Some(key) => SinkKey::OfKind(key),
                None => {
                    let known: Vec<String> = SINK_KEYS_BEFORE
                        .into_iter()
                        .chain(sinks::config::kind_keys().map(|k| k.name))
                        .chain(SINK_KEYS_AFTER)
                        .map(|k| format!("`{k}`"))
                        .collect();
                    return Err(E::custom(format_args!(
                        "unknown field `{other}`, expected one of {}",
                        known.join(", ")
                    )));
                }
            },
        })
    }
}

/// Reads a sink table (see [`RawSink`]).
struct RawSinkVisitor;

impl<'de> Visitor<'de> for RawSinkVisitor {
    type Value = RawSink;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // As a derived `Deserialize` words it, which `plain_types` turns into "a table".
        f.write_str("struct RawSink")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<RawSink, A::Error> {
        let mut sink = RawSink {
            name: None,
            kind: None,
            kind_keys: KindKeys::default(),
            events: None,
            sources: None,
            phone_number_ids: None,
            retry: RawRetry::default(),
        };
        while let Some(key) = map.next_key_seed(SinkKeySeed)? {
            match key {
                SinkKey::Name => sink.name = Some(map.next_value()?),
                SinkKey::Kind => sink.kind = Some(map.next_value()?),
                SinkKey::Events => sink.events = Some(map.next_value()?),
                SinkKey::Sources => sink.sources = Some(map.next_value()?),
                SinkKey::PhoneNumberIds => sink.phone_number_ids = Some(map.next_value()?),
                SinkKey::Retry => sink.retry = map.next_value()?,
                SinkKey::OfKind(key) => {
                    let value = map.next_value_seed(key)?;
                    sink.kind_keys.insert(key.name, value);
                }
            }
        }
        Ok(sink)
    }
}

impl<'de> Deserialize<'de> for RawSink {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<RawSink, D::Error> {
        deserializer.deserialize_map(RawSinkVisitor)
    }
}

/// Whether `path` names a file that is not there (an empty path is not "absent": it is an
/// error of its own, reported by validation).
pub(crate) fn file_absent(path: &Path) -> bool {
    !path.as_os_str().is_empty()
        && matches!(std::fs::metadata(path), Err(e) if e.kind() == std::io::ErrorKind::NotFound)
}

impl RawConfig {
    /// Replaces each secret file that does not exist (when it is the entry's only source)
    /// by a placeholder secret (a placeholder URL for `store.url_file`), and drops
    /// `[server.tls]` when one of its files does not exist; returns what was not checked.
    fn skip_missing_files(&mut self) -> Vec<NotChecked> {
        let mut skipped = Vec::new();
        if let Some(tls) = &self.server.tls {
            let files = [
                ("server.tls.cert_file", &tls.cert_file),
                ("server.tls.key_file", &tls.key_file),
            ];
            if files
                .iter()
                .any(|(_, f)| f.as_deref().is_some_and(file_absent))
            {
                for (key, file) in files {
                    if let Some(path) = file {
                        let reason = if file_absent(path) {
                            NOT_PRESENT
                        } else {
                            PAIR_NOT_CHECKED
                        };
                        skipped.push(NotChecked {
                            key: key.to_owned(),
                            path: path.clone(),
                            reason,
                        });
                    }
                }
                self.server.tls = None;
            }
        }
        for (index, secret) in self.verify.secrets.iter_mut().enumerate() {
            if secret.value.is_none() && secret.value_env.is_none() {
                if let Some(path) = secret.value_file.take_if(|p| file_absent(p)) {
                    secret.value = Some(UNCHECKED_SECRET.to_owned());
                    skipped.push(NotChecked {
                        key: format!("verify.secrets[{index}].value_file"),
                        path,
                        reason: NOT_PRESENT,
                    });
                }
            }
        }
        skipped.extend(self.store.skip_missing_url_file());
        for (index, sink) in self.sinks.iter_mut().enumerate() {
            if let Some(kind) = sink.kind.as_deref().and_then(sinks::config::kind) {
                let base = format!("sinks[{index}]");
                skipped.extend((kind.skip_missing_files)(&mut sink.kind_keys, &base));
            }
        }
        skipped
    }

    fn validate(self, env: &dyn Fn(&str) -> Option<String>) -> Result<Config, ConfigError> {
        let server = self.server.validate()?;
        let admin = self.admin.validate(&server)?;
        Ok(Config {
            server,
            verify: self.verify.validate(env)?,
            store: self.store.validate(env)?,
            sinks: validate_sinks(self.sinks, env)?,
            admin,
        })
    }
}

impl RawAdmin {
    fn validate(self, server: &ServerConfig) -> Result<AdminConfig, ConfigError> {
        let AdminConfig { enabled, listen } = self.parse()?;
        if enabled && overlaps(listen, server.listen) {
            return Err(invalid(
                "admin.listen",
                format!(
                    "`{listen}` is the port of server.listen (`{}`); the admin API must \
                     never be reachable on the public port: pick another port",
                    server.listen
                ),
            ));
        }
        Ok(AdminConfig { enabled, listen })
    }

    /// The table's values, each checked on its own (not against `[server]`).
    fn parse(self) -> Result<AdminConfig, ConfigError> {
        let listen_text = self
            .listen
            .unwrap_or_else(|| DEFAULT_ADMIN_LISTEN.to_owned());
        let listen = listen_text.parse::<SocketAddr>().map_err(|_| {
            invalid(
                "admin.listen",
                format!(
                    "`{listen_text}` is not an IP address and port such as \
                     `127.0.0.1:9090` or `[::1]:9090` (host names are not resolved)"
                ),
            )
        })?;
        Ok(AdminConfig {
            enabled: self.enabled.unwrap_or(true),
            listen,
        })
    }
}

/// Whether two listen addresses would take the same port: the same port (not 0, which
/// picks a free one) on the same IP, or on any IP when either is a wildcard address.
fn overlaps(a: SocketAddr, b: SocketAddr) -> bool {
    a.port() != 0
        && a.port() == b.port()
        && (a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified())
}

impl RawServer {
    fn validate(self) -> Result<ServerConfig, ConfigError> {
        let listen_text = self.listen.unwrap_or_else(|| DEFAULT_LISTEN.to_owned());
        let listen = listen_text.parse::<SocketAddr>().map_err(|_| {
            invalid(
                "server.listen",
                format!(
                    "`{listen_text}` is not an IP address and port such as \
                     `127.0.0.1:8080` or `[::1]:8080` (host names are not resolved)"
                ),
            )
        })?;

        let path = self.path.unwrap_or_else(|| DEFAULT_PATH.to_owned());
        if !path.starts_with('/') {
            return Err(invalid(
                "server.path",
                format!("`{path}` must start with `/`"),
            ));
        }
        if path.contains(['?', '#']) {
            return Err(invalid(
                "server.path",
                format!("`{path}` must not contain `?` or `#`"),
            ));
        }
        if path.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(invalid(
                "server.path",
                "must not contain whitespace or control characters",
            ));
        }

        let max_body_bytes = check_range(
            "server.max_body_bytes",
            self.max_body_bytes.unwrap_or(DEFAULT_MAX_BODY_BYTES),
            MAX_BODY_BYTES_RANGE,
            " bytes",
        )?;
        let max_connections = self.max_connections.unwrap_or(DEFAULT_MAX_CONNECTIONS);
        if max_connections == 0 {
            return Err(invalid("server.max_connections", "must be at least 1"));
        }
        let request_timeout = check_range(
            "server.request_timeout_secs",
            self.request_timeout_secs
                .unwrap_or(DEFAULT_REQUEST_TIMEOUT_SECS),
            REQUEST_TIMEOUT_SECS_RANGE,
            " seconds",
        )?;
        let shutdown_timeout = check_range(
            "server.shutdown_timeout_secs",
            self.shutdown_timeout_secs
                .unwrap_or(DEFAULT_SHUTDOWN_TIMEOUT_SECS),
            SHUTDOWN_TIMEOUT_SECS_RANGE,
            " seconds",
        )?;
        let tls = self.tls.map(RawTls::validate).transpose()?;

        Ok(ServerConfig {
            listen,
            path,
            max_body_bytes,
            max_connections,
            request_timeout: Duration::from_secs(request_timeout),
            shutdown_timeout: Duration::from_secs(shutdown_timeout),
            tls,
        })
    }
}

impl RawTls {
    /// Both keys are required; the files must hold a certificate chain and its key. Errors
    /// name the key of the file at fault and its path, never the key material.
    fn validate(self) -> Result<TlsConfig, ConfigError> {
        let required = |value: Option<PathBuf>, key: &str, what: &str| match value {
            Some(path) if path.as_os_str().is_empty() => Err(invalid(key, "must name a file")),
            Some(path) => Ok(path),
            None => Err(invalid(
                key,
                format!("is required in [server.tls] (path of the PEM {what})"),
            )),
        };
        let config = TlsConfig {
            cert_file: required(self.cert_file, "server.tls.cert_file", "certificate chain")?,
            key_file: required(self.key_file, "server.tls.key_file", "private key")?,
        };
        crate::tls::server_config(&config)
            .map_err(|err| invalid(err.file().config_key(), err.to_string()))?;
        Ok(config)
    }
}

impl RawVerify {
    fn validate(self, env: &dyn Fn(&str) -> Option<String>) -> Result<VerifyConfig, ConfigError> {
        if self.secrets.is_empty() {
            return Err(invalid(
                "verify.secrets",
                "at least one [[verify.secrets]] entry is required",
            ));
        }
        let mut secrets: Vec<SigningSecret> = Vec::with_capacity(self.secrets.len());
        for (index, raw) in self.secrets.into_iter().enumerate() {
            let secret = validate_secret(index, raw, env)?;
            if let Some(first) = secrets.iter().position(|s| s.id() == secret.id()) {
                return Err(invalid(
                    format!("verify.secrets[{index}].id"),
                    format!(
                        "duplicate secret id `{}` (already used by verify.secrets[{first}])",
                        secret.id()
                    ),
                ));
            }
            secrets.push(secret);
        }
        Ok(VerifyConfig {
            tolerance_secs: self.tolerance_secs.unwrap_or(DEFAULT_TOLERANCE_SECS),
            secrets,
        })
    }
}

fn validate_secret(
    index: usize,
    raw: RawSecret,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<SigningSecret, ConfigError> {
    let base = format!("verify.secrets[{index}]");
    let id_key = format!("{base}.id");
    let id = match raw.id {
        None => {
            return Err(invalid(
                id_key,
                "is required (the secret's id from kirim.dev, `sec_...`)",
            ))
        }
        Some(id) => id,
    };
    if id.is_empty() {
        return Err(invalid(id_key, "must not be empty"));
    }
    if id.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(invalid(
            id_key,
            format!(
                "`{}` must not contain whitespace or control characters",
                id.escape_debug()
            ),
        ));
    }
    let sources = SecretSources {
        inline: raw.value,
        env_var: raw.value_env,
        file: raw.value_file,
    };
    match resolve_secret_value(&base, &VERIFY_SECRET_KEYS, sources, env)? {
        Some((value, value_key)) => {
            check_secret(&value, &value_key)?;
            Ok(SigningSecret::new(id, value))
        }
        None => Err(secret_sources_error(&base, &VERIFY_SECRET_KEYS, "none")),
    }
}

/// The names of the three keys that can supply one secret, and whether one is required.
pub(crate) struct SecretKeys {
    /// The key holding the value itself.
    pub(crate) inline: &'static str,
    /// The key naming an environment variable.
    pub(crate) env_var: &'static str,
    /// The key naming a file.
    pub(crate) file: &'static str,
    /// Whether one of the three must be set.
    pub(crate) required: bool,
}

/// `verify.secrets[i]`: exactly one of `value`, `value_env`, `value_file`.
const VERIFY_SECRET_KEYS: SecretKeys = SecretKeys {
    inline: "value",
    env_var: "value_env",
    file: "value_file",
    required: true,
};

/// The raw values of the three keys named by a [`SecretKeys`].
pub(crate) struct SecretSources {
    /// The inline value.
    pub(crate) inline: Option<String>,
    /// The environment variable's name.
    pub(crate) env_var: Option<String>,
    /// The file's path.
    pub(crate) file: Option<PathBuf>,
}

/// Returns the secret value and the dotted key that supplied it, or `None` when none of the
/// three keys is set. More than one set is an error on `base`. The value is not checked here
/// (see [`check_secret_value`]).
pub(crate) fn resolve_secret_value(
    base: &str,
    keys: &SecretKeys,
    sources: SecretSources,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Option<(String, String)>, ConfigError> {
    match (sources.inline, sources.env_var, sources.file) {
        (None, None, None) => Ok(None),
        (Some(value), None, None) => Ok(Some((value, format!("{base}.{}", keys.inline)))),
        (None, Some(var), None) => {
            let key = format!("{base}.{}", keys.env_var);
            if var.is_empty() {
                return Err(invalid(key, "must name an environment variable"));
            }
            match env(&var) {
                Some(value) if !value.is_empty() => Ok(Some((value, key))),
                _ => Err(invalid(
                    key,
                    format!("environment variable `{var}` is unset or empty"),
                )),
            }
        }
        (None, None, Some(path)) => {
            let key = format!("{base}.{}", keys.file);
            if path.as_os_str().is_empty() {
                return Err(invalid(key, "must name a file"));
            }
            let content = read_secret_file(&path, &key)?;
            Ok(Some((trim_one_line_ending(&content).to_owned(), key)))
        }
        (inline, env_var, file) => {
            let found: Vec<&str> = [
                (keys.inline, inline.is_some()),
                (keys.env_var, env_var.is_some()),
                (keys.file, file.is_some()),
            ]
            .into_iter()
            .filter_map(|(name, set)| set.then_some(name))
            .collect();
            Err(secret_sources_error(base, keys, &found.join(", ")))
        }
    }
}

/// The error for a wrong number of secret sources; `found` lists the keys that were set.
fn secret_sources_error(base: &str, keys: &SecretKeys, found: &str) -> ConfigError {
    let (how_many, verb) = if keys.required {
        ("exactly one", "must")
    } else {
        ("at most one", "may")
    };
    invalid(
        base,
        format!(
            "{how_many} of {}, {}, {} {verb} be set (found: {found})",
            keys.inline, keys.env_var, keys.file
        ),
    )
}

/// Reads a secret file of at most [`MAX_SECRET_FILE_BYTES`] (read through `take`, so an
/// endless file such as `/dev/zero` stops there). Errors name `key` and the path.
fn read_secret_file(path: &Path, key: &str) -> Result<String, ConfigError> {
    use std::io::Read as _;
    let cannot =
        |err: std::io::Error| invalid(key, format!("cannot read {}: {err}", path.display()));
    let file = std::fs::File::open(path).map_err(cannot)?;
    let mut bytes = Vec::new();
    file.take(MAX_SECRET_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(cannot)?;
    if bytes.len() as u64 > MAX_SECRET_FILE_BYTES {
        return Err(invalid(
            key,
            format!(
                "{} is larger than {} KiB; a secret file holds one line (is it the right file?)",
                path.display(),
                MAX_SECRET_FILE_BYTES / 1024
            ),
        ));
    }
    String::from_utf8(bytes).map_err(|_| {
        invalid(
            key,
            format!(
                "{} is not UTF-8 text (the content is not shown)",
                path.display()
            ),
        )
    })
}

/// Removes one trailing `"\n"` or `"\r\n"`, as left by editors and `echo`; nothing else.
fn trim_one_line_ending(text: &str) -> &str {
    text.strip_suffix("\r\n")
        .or_else(|| text.strip_suffix('\n'))
        .unwrap_or(text)
}

/// Checks the shape of a signing secret, in the config or given elsewhere (`kirimhook sign
/// --secret`): `whsec_` and at least one more character, no whitespace or control
/// characters. `key` names where it came from in the error; the value is never shown.
pub fn check_secret(value: &str, key: &str) -> Result<(), ConfigError> {
    let has_body = value
        .strip_prefix(SECRET_PREFIX)
        .is_some_and(|rest| !rest.is_empty());
    if !has_body {
        return Err(invalid(
            key,
            "the secret must start with `whsec_` followed by at least one character \
             (the value is not shown)",
        ));
    }
    if value.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(invalid(
            key,
            "the secret contains whitespace or control characters; look for stray spaces \
             or an extra line ending (the value is not shown)",
        ));
    }
    Ok(())
}

fn validate_sinks(
    raw: Vec<RawSink>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Vec<SinkConfig>, ConfigError> {
    if raw.is_empty() {
        return Err(invalid("sinks", "at least one [[sinks]] entry is required"));
    }
    let mut sinks: Vec<SinkConfig> = Vec::with_capacity(raw.len());
    for (index, raw) in raw.into_iter().enumerate() {
        let sink = raw.validate(index, &sinks, env)?;
        sinks.push(sink);
    }
    Ok(sinks)
}

impl RawSink {
    /// Validates sink number `index`; `earlier` are the sinks before it, for the uniqueness
    /// of names. Keys are checked in this order: name, kind, the kind's own keys, filters,
    /// retry.
    fn validate(
        self,
        index: usize,
        earlier: &[SinkConfig],
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<SinkConfig, ConfigError> {
        let RawSink {
            name,
            kind,
            kind_keys,
            events,
            sources,
            phone_number_ids,
            retry,
        } = self;
        let base = format!("sinks[{index}]");

        let name_key = format!("{base}.name");
        let name = name.ok_or_else(|| invalid(&name_key, "is required"))?;
        check_sink_name(&name, &name_key)?;
        if let Some(first) = earlier.iter().position(|s| s.name == name) {
            return Err(invalid(
                name_key,
                format!("duplicate sink name `{name}` (already used by sinks[{first}])"),
            ));
        }

        let kind_key = format!("{base}.kind");
        let kind = kind.ok_or_else(|| invalid(&kind_key, kind_hint("is required")))?;
        let Some(kind) = sinks::config::kind(&kind) else {
            return Err(invalid(
                kind_key,
                kind_hint(&format!("unknown sink kind `{}`", kind.escape_debug())),
            ));
        };
        let table = SinkTable {
            base: &base,
            name: &name,
            earlier,
            env,
        };
        let kind = kind.validate(kind_keys, &table)?;

        let filter = Filter::new(
            check_list(&base, "events", events, check_event_glob)?,
            check_list(&base, "sources", sources, parse_source)?,
            check_list(
                &base,
                "phone_number_ids",
                phone_number_ids,
                check_phone_number_id,
            )?,
        );
        let retry = retry.validate(&base)?;
        Ok(SinkConfig {
            name,
            kind,
            filter,
            retry,
        })
    }
}

/// Checks an optional filter list: absent stays `None` (match everything), empty is refused,
/// and `check` turns each item into its value or says what is wrong with it (the error then
/// names `base.field[j]`).
fn check_list<T>(
    base: &str,
    field: &str,
    items: Option<Vec<String>>,
    check: fn(&str) -> Result<T, String>,
) -> Result<Option<Vec<T>>, ConfigError> {
    let Some(items) = items else {
        return Ok(None);
    };
    if items.is_empty() {
        return Err(invalid(
            format!("{base}.{field}"),
            "must not be empty; leave the key out to match everything",
        ));
    }
    items
        .iter()
        .enumerate()
        .map(|(j, item)| {
            check(item).map_err(|message| invalid(format!("{base}.{field}[{j}]"), message))
        })
        .collect::<Result<Vec<T>, ConfigError>>()
        .map(Some)
}

/// An `events` glob: 1 or more of `a-z 0-9 . _ - *`.
fn check_event_glob(glob: &str) -> Result<String, String> {
    if glob.is_empty() {
        return Err("must not be empty (use \"*\" to match every event type)".to_owned());
    }
    let allowed = |c: char| {
        c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '_' | '-' | '*')
    };
    if !glob.chars().all(allowed) {
        return Err(format!(
            "`{}` may only contain a-z, 0-9, `.`, `_`, `-` and `*` \
             (`*` matches any run of characters), such as \"message.*\"",
            glob.escape_debug()
        ));
    }
    Ok(glob.to_owned())
}

/// A `sources` entry: `kirim` or `meta`.
fn parse_source(source: &str) -> Result<Source, String> {
    match source {
        "kirim" => Ok(Source::Kirim),
        "meta" => Ok(Source::Meta),
        other => Err(format!(
            "`{}` is not a source; use \"kirim\" or \"meta\"",
            other.escape_debug()
        )),
    }
}

/// A `phone_number_ids` entry: Meta's id of a connected line, all digits.
fn check_phone_number_id(id: &str) -> Result<String, String> {
    if id.is_empty() {
        return Err("must not be empty".to_owned());
    }
    if !id.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!(
            "`{}` must be digits only, such as \"106540352242922\" \
             (`kirimhook accounts` lists the ids of the connected lines)",
            id.escape_debug()
        ));
    }
    Ok(id.to_owned())
}

impl RawRetry {
    fn validate(self, base: &str) -> Result<RetryPolicy, ConfigError> {
        let initial_backoff_ms = check_range(
            &format!("{base}.retry.initial_backoff_ms"),
            self.initial_backoff_ms
                .unwrap_or(DEFAULT_INITIAL_BACKOFF_MS),
            INITIAL_BACKOFF_MS_RANGE,
            " milliseconds",
        )?;
        let max_backoff_key = format!("{base}.retry.max_backoff_secs");
        let max_backoff_secs = check_range(
            &max_backoff_key,
            self.max_backoff_secs.unwrap_or(DEFAULT_MAX_BACKOFF_SECS),
            MAX_BACKOFF_SECS_RANGE,
            " seconds",
        )?;
        let initial_backoff = Duration::from_millis(initial_backoff_ms);
        let max_backoff = Duration::from_secs(max_backoff_secs);
        if max_backoff < initial_backoff {
            return Err(invalid(
                max_backoff_key,
                format!(
                    "must be at least retry.initial_backoff_ms ({initial_backoff_ms} ms), \
                     got {max_backoff_secs} seconds"
                ),
            ));
        }
        let max_attempts = check_range(
            &format!("{base}.retry.max_attempts"),
            self.max_attempts.unwrap_or(DEFAULT_MAX_ATTEMPTS),
            MAX_ATTEMPTS_RANGE,
            "",
        )?;
        Ok(RetryPolicy {
            initial_backoff,
            max_backoff,
            max_attempts,
        })
    }
}

fn check_sink_name(name: &str, key: &str) -> Result<(), ConfigError> {
    if name.is_empty() {
        return Err(invalid(key, "must not be empty"));
    }
    if name.chars().count() > SINK_NAME_MAX_CHARS {
        return Err(invalid(
            key,
            format!("must be at most {SINK_NAME_MAX_CHARS} characters"),
        ));
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        return Err(invalid(
            key,
            format!(
                "`{}` may only contain A-Z, a-z, 0-9, `_` and `-`",
                name.escape_debug()
            ),
        ));
    }
    Ok(())
}

fn kind_hint(problem: &str) -> String {
    let known: Vec<&str> = sinks::config::KINDS.iter().map(|k| k.name).collect();
    format!("{problem}; known kinds: {}", known.join(", "))
}

pub(crate) fn check_range<T: PartialOrd + Display + Copy>(
    key: &str,
    value: T,
    range: RangeInclusive<T>,
    unit: &str,
) -> Result<T, ConfigError> {
    if range.contains(&value) {
        Ok(value)
    } else {
        Err(invalid(
            key,
            format!(
                "must be between {} and {}{unit}, got {value}",
                range.start(),
                range.end()
            ),
        ))
    }
}

pub(crate) fn invalid(key: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        message: message.into(),
    }
}

/// Builds the error for text toml could not read into the raw structs. A wrong type or an
/// unknown key becomes [`ConfigError::Invalid`] on the key's full path (found by
/// [`locate::key_at`]); text that is not TOML at all is a [`ConfigError::Parse`]. toml's own
/// `Display` quotes the offending source line, which may hold a secret, so it is not used;
/// string values that serde quotes in its messages (`invalid type: string "..."`) are removed
/// too.
fn read_error(text: &str, err: &toml::de::Error) -> ConfigError {
    let message = redact_quoted_strings(err.message().trim_end());
    let Some(span) = err.span() else {
        return ConfigError::Parse(format!("TOML parse error: {message}"));
    };
    let (line, column) = line_and_column(text, span.start);
    let at = format!("line {line}, column {column}");
    let unknown = message
        .strip_prefix("unknown field `")
        .and_then(|rest| rest.split_once('`'));
    let found = locate::key_at(text, span.start);
    match (unknown, found) {
        (Some((field, expected)), table) => {
            let key = match table {
                Some(key) if key == field || key.ends_with(&format!(".{field}")) => key,
                Some(table) => format!("{table}.{field}"),
                None => field.to_owned(),
            };
            let expected = expected.trim_start_matches([',', ' ']);
            let message = if expected.is_empty() {
                format!("unknown key ({at})")
            } else {
                format!("unknown key; {expected} ({at})")
            };
            invalid(key, message)
        }
        (None, Some(key)) => invalid(key, format!("{} ({at})", plain_types(&message))),
        (None, None) => ConfigError::Parse(format!("TOML parse error at {at}: {message}")),
    }
}

/// serde's Rust type names in an "expected ..." message, in the words of a config file.
fn plain_types(message: &str) -> String {
    let mut out = message.to_owned();
    for rust in ["usize", "u64", "u32", "u16", "u8"] {
        out = out.replace(
            &format!("expected {rust}"),
            "expected a whole number (0 or more)",
        );
    }
    const STRUCT: &str = "expected struct ";
    if let Some(start) = out.find(STRUCT) {
        let name = start + STRUCT.len();
        let end = out[name..]
            .find(|c: char| !c.is_alphanumeric())
            .map_or(out.len(), |i| name + i);
        out.replace_range(start..end, "expected a table");
    }
    out.replace("expected a sequence", "expected an array")
}

/// 1-based line and column (in characters) of a byte offset.
fn line_and_column(text: &str, offset: usize) -> (usize, usize) {
    let before = text.get(..offset).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

/// Replaces every `string "..."` (serde's rendering of an unexpected string value) with
/// `string (value not shown)`.
fn redact_quoted_strings(message: &str) -> String {
    const MARKER: &str = "string \"";
    let mut out = String::with_capacity(message.len());
    let mut rest = message;
    while let Some(start) = rest.find(MARKER) {
        out.push_str(&rest[..start]);
        out.push_str("string (value not shown)");
        let quoted = &rest[start + MARKER.len()..];
        let mut end = quoted.len();
        let mut escaped = false;
        for (i, c) in quoted.char_indices() {
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                end = i + c.len_utf8();
                break;
            }
        }
        rest = &quoted[end..];
    }
    out.push_str(rest);
    out
}

/// Helpers for the config tests here and in each sink kind's `config.rs`.
#[cfg(test)]
#[allow(clippy::unwrap_used)]
pub(crate) mod testing {
    use super::*;

    use std::io::Write as _;

    /// A valid signing secret for the test configs.
    pub(crate) const SECRET: &str = "whsec_c2VjcmV0LXZhbHVlLWZvci10ZXN0cw";

    /// The smallest valid config: one inline secret, one sink, everything else defaulted.
    pub(crate) fn minimal() -> String {
        format!(
            "[[verify.secrets]]\nid = \"sec_A\"\nvalue = \"{SECRET}\"\n\n\
             [[sinks]]\nname = \"out\"\nkind = \"stdout\"\n"
        )
    }

    /// An environment where no variable is set.
    pub(crate) fn no_env(_: &str) -> Option<String> {
        None
    }

    /// Parses `text` with [`no_env`].
    pub(crate) fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::from_toml_str_with(text, &no_env)
    }

    /// The error of parsing `text`; panics if it parses.
    pub(crate) fn parse_err(text: &str) -> ConfigError {
        match parse(text) {
            Ok(config) => panic!("expected an error, got {config:?}"),
            Err(err) => err,
        }
    }

    /// Asserts the error is `Invalid` for `key`, and that its Display names the key and
    /// contains `fragment`.
    pub(crate) fn assert_invalid(err: &ConfigError, key: &str, fragment: &str) {
        assert!(
            matches!(err, ConfigError::Invalid { .. }),
            "expected Invalid, got {err:?}"
        );
        assert_eq!(err.key(), Some(key), "{err}");
        let shown = err.to_string();
        assert!(shown.starts_with(&format!("{key}: ")), "{shown}");
        assert!(shown.contains(fragment), "{shown:?} lacks {fragment:?}");
    }

    /// [`minimal`] with a `[server]` table of `lines`.
    pub(crate) fn with_server(lines: &str) -> String {
        format!("[server]\n{lines}\n{}", minimal())
    }

    /// [`minimal`] with a `[store]` table of `lines`.
    pub(crate) fn with_store(lines: &str) -> String {
        format!("[store]\n{lines}\n{}", minimal())
    }

    /// One verify secret and the `[[sinks]]` tables in `sinks`.
    pub(crate) fn with_sinks(sinks: &str) -> String {
        format!("[[verify.secrets]]\nid = \"sec_A\"\nvalue = \"{SECRET}\"\n\n{sinks}")
    }

    /// The `[[verify.secrets]]` tables in `secrets` and one stdout sink.
    pub(crate) fn with_secrets(secrets: &str) -> String {
        format!("{secrets}\n[[sinks]]\nname = \"out\"\nkind = \"stdout\"\n")
    }

    /// A temporary file holding `content`.
    pub(crate) fn temp_file(content: &[u8]) -> tempfile::NamedTempFile {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        file.write_all(content).unwrap();
        file.flush().unwrap();
        file
    }

    /// `path` as a TOML literal string.
    pub(crate) fn toml_path(path: &Path) -> String {
        // TOML literal strings take backslashes as they are (Windows paths).
        format!("'{}'", path.display())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::testing::*;
    use super::*;

    #[test]
    fn defaults() {
        let config = parse(&minimal()).unwrap();
        assert_eq!(
            config.server,
            ServerConfig {
                listen: "127.0.0.1:8080".parse().unwrap(),
                path: "/webhooks/kirim".to_owned(),
                max_body_bytes: 1_048_576,
                max_connections: 1024,
                request_timeout: Duration::from_secs(10),
                shutdown_timeout: Duration::from_secs(10),
                tls: None,
            }
        );
        assert_eq!(config.verify.tolerance_secs, 300);
        assert_eq!(config.verify.secrets.len(), 1);
        assert_eq!(config.verify.secrets[0].id(), "sec_A");
        assert_eq!(
            config.store,
            StoreConfig {
                path: PathBuf::from("./data"),
                retention_days: 35,
                keep_delivered: Duration::ZERO,
                min_free_bytes: 512 * 1024 * 1024,
                cache_bytes: 32 * 1024 * 1024,
                memtable_bytes: 8 * 1024 * 1024,
                engine: StoreEngine::Embedded,
            }
        );
        assert_eq!(
            config.admin,
            AdminConfig {
                enabled: true,
                listen: "127.0.0.1:9090".parse().unwrap(),
            }
        );
        assert_eq!(config.sinks.len(), 1);
        assert_eq!(config.sinks[0].name, "out");
        assert!(matches!(config.sinks[0].kind, SinkKind::Stdout));
        assert!(config.sinks[0].filter.is_everything());
        assert_eq!(config.sinks[0].filter, Filter::default());
        assert_eq!(config.sinks[0].retry, RetryPolicy::default());
    }

    #[test]
    fn explicit_values_override_defaults() {
        let text = format!(
            "[server]\nlisten = \"[::1]:9000\"\npath = \"/hooks\"\nmax_body_bytes = 2048\n\
             max_connections = 7\nrequest_timeout_secs = 300\nshutdown_timeout_secs = 600\n\
             [verify]\ntolerance_secs = 0\n\
             [store]\npath = \"/var/lib/kirimhook\"\nretention_days = 2\n{}",
            minimal()
        );
        let config = parse(&text).unwrap();
        assert_eq!(config.server.listen, "[::1]:9000".parse().unwrap());
        assert_eq!(config.server.path, "/hooks");
        assert_eq!(config.server.max_body_bytes, 2048);
        assert_eq!(config.server.max_connections, 7);
        assert_eq!(config.server.request_timeout, Duration::from_secs(300));
        assert_eq!(config.server.shutdown_timeout, Duration::from_secs(600));
        assert_eq!(config.verify.tolerance_secs, 0);
        assert_eq!(config.store.path, PathBuf::from("/var/lib/kirimhook"));
        assert_eq!(config.store.retention_days, 2);
    }

    #[test]
    fn bad_listen_names_key_and_value() {
        let err = parse_err(&with_server("listen = \"localhost:8080\""));
        assert_invalid(&err, "server.listen", "`localhost:8080`");
        let err = parse_err(&with_server("listen = \"127.0.0.1\""));
        assert_invalid(&err, "server.listen", "`127.0.0.1`");
    }

    /// A self-signed certificate and its key, as PEM text.
    fn test_cert() -> (String, String) {
        let generated = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
        (generated.cert.pem(), generated.signing_key.serialize_pem())
    }

    fn with_tls(cert: &Path, key: &Path) -> String {
        with_server(&format!(
            "[server.tls]\ncert_file = {}\nkey_file = {}",
            toml_path(cert),
            toml_path(key)
        ))
    }

    #[test]
    fn tls_files_are_loaded_and_checked() {
        let (cert_pem, key_pem) = test_cert();
        let (cert, key) = (
            temp_file(cert_pem.as_bytes()),
            temp_file(key_pem.as_bytes()),
        );
        let config = parse(&with_tls(cert.path(), key.path())).unwrap();
        assert_eq!(
            config.server.tls,
            Some(TlsConfig {
                cert_file: cert.path().to_owned(),
                key_file: key.path().to_owned(),
            })
        );
    }

    #[test]
    fn tls_keys_are_both_required() {
        let (cert_pem, _) = test_cert();
        let cert = temp_file(cert_pem.as_bytes());
        let err = parse_err(&with_server(&format!(
            "[server.tls]\ncert_file = {}",
            toml_path(cert.path())
        )));
        assert_invalid(&err, "server.tls.key_file", "is required");
        let err = parse_err(&with_server("[server.tls]\nkey_file = '/etc/key.pem'"));
        assert_invalid(&err, "server.tls.cert_file", "is required");
        let err = parse_err(&with_server("[server.tls]\ncert_file = ''\nkey_file = ''"));
        assert_invalid(&err, "server.tls.cert_file", "must name a file");
        let err = parse_err(&with_server("[server.tls]\ncert = 'x'"));
        assert_invalid(
            &err,
            "server.tls.cert",
            "expected `cert_file` or `key_file`",
        );
    }

    #[test]
    fn unreadable_tls_file_names_key_and_path() {
        let (cert_pem, key_pem) = test_cert();
        let (cert, key) = (
            temp_file(cert_pem.as_bytes()),
            temp_file(key_pem.as_bytes()),
        );
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.pem");
        let err = parse_err(&with_tls(&missing, key.path()));
        assert_invalid(&err, "server.tls.cert_file", &missing.display().to_string());
        assert!(err.to_string().contains("cannot read"), "{err}");
        let err = parse_err(&with_tls(cert.path(), &missing));
        assert_invalid(&err, "server.tls.key_file", &missing.display().to_string());
        // A directory cannot be read as a file either.
        let err = parse_err(&with_tls(cert.path(), dir.path()));
        assert_invalid(&err, "server.tls.key_file", "cannot read");
    }

    #[test]
    fn tls_files_that_are_not_pem_name_key_and_path() {
        let (cert_pem, key_pem) = test_cert();
        let (cert, key) = (
            temp_file(cert_pem.as_bytes()),
            temp_file(key_pem.as_bytes()),
        );
        let junk = temp_file(b"\x30\x82\x01\x0a binary, not PEM");
        let err = parse_err(&with_tls(junk.path(), key.path()));
        assert_invalid(&err, "server.tls.cert_file", "no certificate");
        assert!(err.to_string().contains(&junk.path().display().to_string()));
        let err = parse_err(&with_tls(cert.path(), junk.path()));
        assert_invalid(&err, "server.tls.key_file", "no private key");
        // The two swapped: no certificate in the key file.
        let err = parse_err(&with_tls(key.path(), cert.path()));
        assert_invalid(&err, "server.tls.cert_file", "no certificate");
        // A truncated key: the message never quotes it.
        let truncated = &key_pem[..key_pem.len() / 2];
        let broken = temp_file(truncated.as_bytes());
        let err = parse_err(&with_tls(cert.path(), broken.path()));
        assert_invalid(&err, "server.tls.key_file", "not a valid PEM file");
        let body_line = key_pem.lines().nth(1).unwrap();
        assert!(!format!("{err} {err:?}").contains(body_line), "{err:?}");
        // A key of another certificate.
        let (_, other_key) = test_cert();
        let other = temp_file(other_key.as_bytes());
        let err = parse_err(&with_tls(cert.path(), other.path()));
        assert_invalid(
            &err,
            "server.tls.key_file",
            "cannot be used with the certificate",
        );
    }

    #[test]
    fn bad_path_names_key() {
        let err = parse_err(&with_server("path = \"webhooks\""));
        assert_invalid(&err, "server.path", "must start with `/`");
        let err = parse_err(&with_server("path = \"/hooks?x=1\""));
        assert_invalid(&err, "server.path", "`?` or `#`");
        let err = parse_err(&with_server("path = \"/hooks#frag\""));
        assert_invalid(&err, "server.path", "`?` or `#`");
        let err = parse_err(&with_server("path = \"/my hooks\""));
        assert_invalid(&err, "server.path", "whitespace");
        assert_eq!(
            parse(&with_server("path = \"/\"")).unwrap().server.path,
            "/"
        );
    }

    #[test]
    fn max_body_bytes_bounds() {
        let err = parse_err(&with_server("max_body_bytes = 1023"));
        assert_invalid(&err, "server.max_body_bytes", "got 1023");
        let err = parse_err(&with_server("max_body_bytes = 67108865"));
        assert_invalid(&err, "server.max_body_bytes", "between 1024 and 67108864");
        for ok in [1024, 67_108_864] {
            let config = parse(&with_server(&format!("max_body_bytes = {ok}"))).unwrap();
            assert_eq!(config.server.max_body_bytes, ok);
        }
    }

    #[test]
    fn max_connections_must_be_positive() {
        let err = parse_err(&with_server("max_connections = 0"));
        assert_invalid(&err, "server.max_connections", "at least 1");
        let config = parse(&with_server("max_connections = 1")).unwrap();
        assert_eq!(config.server.max_connections, 1);
    }

    #[test]
    fn timeout_bounds() {
        for bad in [0, 301] {
            let err = parse_err(&with_server(&format!("request_timeout_secs = {bad}")));
            assert_invalid(
                &err,
                "server.request_timeout_secs",
                "between 1 and 300 seconds",
            );
        }
        for bad in [0, 601] {
            let err = parse_err(&with_server(&format!("shutdown_timeout_secs = {bad}")));
            assert_invalid(
                &err,
                "server.shutdown_timeout_secs",
                "between 1 and 600 seconds",
            );
        }
        let config = parse(&with_server(
            "request_timeout_secs = 1\nshutdown_timeout_secs = 1",
        ))
        .unwrap();
        assert_eq!(config.server.request_timeout, Duration::from_secs(1));
        assert_eq!(config.server.shutdown_timeout, Duration::from_secs(1));
    }

    #[test]
    fn store_bounds() {
        for bad in [0, 1, 366] {
            let err = parse_err(&with_store(&format!("retention_days = {bad}")));
            assert_invalid(&err, "store.retention_days", "between 2 and 365 days");
        }
        let config = parse(&with_store("retention_days = 365")).unwrap();
        assert_eq!(config.store.retention_days, 365);
        let err = parse_err(&with_store("path = \"\""));
        assert_invalid(&err, "store.path", "must not be empty");
    }

    #[test]
    fn keep_delivered_hours() {
        let config = parse(&with_store("keep_delivered_hours = 48")).unwrap();
        assert_eq!(config.store.keep_delivered, Duration::from_secs(48 * 3600));
        let config = parse(&with_store("keep_delivered_hours = 0")).unwrap();
        assert_eq!(config.store.keep_delivered, Duration::ZERO);
        let err = parse_err(&with_store("keep_delivered_hours = 8761"));
        assert_invalid(
            &err,
            "store.keep_delivered_hours",
            "between 0 and 8760 hours",
        );
    }

    fn with_admin(server: &str, admin: &str) -> String {
        format!("[server]\n{server}\n[admin]\n{admin}\n{}", minimal())
    }

    #[test]
    fn the_admin_table_is_read_on_its_own() {
        let admin = AdminConfig::from_toml_str(
            "[admin]\nlisten = \"127.0.0.2:9191\"\n[[verify.secrets]]\nvalue_file = \"/nowhere\"",
        )
        .unwrap();
        assert_eq!(admin.listen, "127.0.0.2:9191".parse().unwrap());
        assert!(admin.enabled);
        let default = AdminConfig::from_toml_str("").unwrap();
        assert_eq!(default.listen, DEFAULT_ADMIN_LISTEN.parse().unwrap());
        let off = AdminConfig::from_toml_str("[admin]\nenabled = false").unwrap();
        assert!(!off.enabled);
        let err = AdminConfig::from_toml_str("[admin]\nlisten = \"localhost:9090\"").unwrap_err();
        assert_invalid(&err, "admin.listen", "not an IP address and port");
        let err = AdminConfig::from_toml_str("[admin]\nlisten = 9090").unwrap_err();
        assert_invalid(&err, "admin.listen", "expected a string");
        let err = AdminConfig::from_toml_str("[admin]\nport = 9090").unwrap_err();
        assert_eq!(err.key(), Some("admin.port"), "{err}");
    }

    #[test]
    fn admin_listener() {
        let config = parse(&with_admin("", "listen = \"[::1]:9191\"\nenabled = false")).unwrap();
        assert_eq!(
            config.admin,
            AdminConfig {
                enabled: false,
                listen: "[::1]:9191".parse().unwrap(),
            }
        );
        let err = parse_err(&with_admin("", "listen = \"localhost:9090\""));
        assert_invalid(&err, "admin.listen", "not an IP address and port");
        let err = parse_err(&with_admin("", "listen = 9090"));
        assert_invalid(&err, "admin.listen", "expected a string");
        let err = parse_err(&with_admin("", "port = 1"));
        assert_invalid(&err, "admin.port", "unknown key");
    }

    #[test]
    fn admin_listen_is_never_the_public_port() {
        for (server, admin) in [
            ("127.0.0.1:8080", "127.0.0.1:8080"),
            ("0.0.0.0:8080", "127.0.0.1:8080"),
            ("127.0.0.1:8080", "0.0.0.0:8080"),
            ("[::]:8080", "[::1]:8080"),
        ] {
            let text = with_admin(
                &format!("listen = \"{server}\""),
                &format!("listen = \"{admin}\""),
            );
            let err = parse_err(&text);
            assert_invalid(
                &err,
                "admin.listen",
                "never be reachable on the public port",
            );
        }
        for (server, admin) in [
            ("127.0.0.1:8080", "127.0.0.1:9090"),
            ("127.0.0.1:8080", "127.0.0.2:8080"),
            ("127.0.0.1:0", "127.0.0.1:0"),
        ] {
            let text = with_admin(
                &format!("listen = \"{server}\""),
                &format!("listen = \"{admin}\""),
            );
            assert!(parse(&text).is_ok(), "{server} and {admin}");
        }
        // A disabled admin listener does not bind, so its address cannot clash.
        let text = with_admin("listen = \"127.0.0.1:9090\"", "enabled = false");
        assert!(parse(&text).is_ok());
    }

    #[test]
    fn negative_number_names_the_key_and_line() {
        let err = parse_err(&with_server("max_connections = -1"));
        assert_invalid(&err, "server.max_connections", "a whole number (0 or more)");
        assert!(err.to_string().contains("line 2"), "{err}");
    }

    #[test]
    fn wrong_types_name_the_key_in_plain_words() {
        let err = parse_err(&with_server("max_body_bytes = \"1M\""));
        assert_invalid(&err, "server.max_body_bytes", "invalid type: string");
        let shown = err.to_string();
        assert!(
            shown.contains("expected a whole number (0 or more) (line 2, column 18)"),
            "{shown}"
        );
        assert!(!shown.contains("1M") && !shown.contains("u64"), "{shown}");

        let err = parse_err(&format!("server = 3\n{}", minimal()));
        assert_invalid(&err, "server", "expected a table");
        let err = parse_err(&with_sinks(
            "[[sinks]]\nname = \"a\"\nkind = \"stdout\"\n\
             [[sinks]]\nname = \"b\"\nkind = \"stdout\"\n[sinks.retry]\nmax_attempts = \"x\"\n",
        ));
        assert_invalid(
            &err,
            "sinks[1].retry.max_attempts",
            "expected a whole number",
        );
        let err = parse_err(&with_sinks(
            "[[sinks]]\nname = \"a\"\nkind = \"stdout\"\nevents = \"message.*\"\n",
        ));
        assert_invalid(&err, "sinks[0].events", "expected an array");
        let err = parse_err(&with_secrets(
            "[[verify.secrets]]\nid = \"sec_A\"\nvalue = 12\n",
        ));
        assert_invalid(&err, "verify.secrets[0].value", "expected a string");
        // Not TOML at all: no key, a line.
        let err = parse_err("[server\nlisten = 1\n");
        assert!(matches!(err, ConfigError::Parse(_)), "{err:?}");
        assert!(err.to_string().contains("line 1"), "{err}");
    }

    #[test]
    fn at_least_one_secret() {
        let err = parse_err(&with_secrets(""));
        assert_invalid(&err, "verify.secrets", "at least one");
        let err = parse_err(&with_secrets("[verify]\ntolerance_secs = 5\n"));
        assert_invalid(&err, "verify.secrets", "at least one");
    }

    #[test]
    fn secret_id_required_non_empty_and_unique() {
        let err = parse_err(&with_secrets(&format!(
            "[[verify.secrets]]\nvalue = \"{SECRET}\"\n"
        )));
        assert_invalid(&err, "verify.secrets[0].id", "is required");

        let err = parse_err(&with_secrets(&format!(
            "[[verify.secrets]]\nid = \"\"\nvalue = \"{SECRET}\"\n"
        )));
        assert_invalid(&err, "verify.secrets[0].id", "must not be empty");

        let err = parse_err(&with_secrets(&format!(
            "[[verify.secrets]]\nid = \"sec_A \"\nvalue = \"{SECRET}\"\n"
        )));
        assert_invalid(&err, "verify.secrets[0].id", "whitespace");

        let err = parse_err(&with_secrets(&format!(
            "[[verify.secrets]]\nid = \"sec_A\"\nvalue = \"{SECRET}\"\n\
             [[verify.secrets]]\nid = \"sec_B\"\nvalue = \"{SECRET}\"\n\
             [[verify.secrets]]\nid = \"sec_A\"\nvalue = \"whsec_other\"\n"
        )));
        assert_invalid(&err, "verify.secrets[2].id", "duplicate secret id `sec_A`");
        assert!(err.to_string().contains("verify.secrets[0]"), "{err}");
    }

    #[test]
    fn two_secrets_kept_in_order() {
        let config = parse(&with_secrets(&format!(
            "[[verify.secrets]]\nid = \"sec_new\"\nvalue = \"{SECRET}\"\n\
             [[verify.secrets]]\nid = \"sec_old\"\nvalue = \"whsec_old\"\n"
        )))
        .unwrap();
        let ids: Vec<&str> = config.verify.secrets.iter().map(|s| s.id()).collect();
        assert_eq!(ids, ["sec_new", "sec_old"]);
    }

    #[test]
    fn exactly_one_value_source() {
        let err = parse_err(&with_secrets("[[verify.secrets]]\nid = \"sec_A\"\n"));
        assert_invalid(
            &err,
            "verify.secrets[0]",
            "exactly one of value, value_env, value_file",
        );
        assert!(err.to_string().contains("found: none"), "{err}");

        let err = parse_err(&with_secrets(&format!(
            "[[verify.secrets]]\nid = \"sec_A\"\nvalue = \"{SECRET}\"\n\
             [[verify.secrets]]\nid = \"sec_B\"\nvalue = \"{SECRET}\"\nvalue_env = \"X\"\n\
             value_file = \"/nonexistent\"\n"
        )));
        assert_invalid(
            &err,
            "verify.secrets[1]",
            "exactly one of value, value_env, value_file",
        );
        assert!(
            err.to_string()
                .contains("found: value, value_env, value_file"),
            "{err}"
        );
        assert!(!err.to_string().contains(SECRET), "{err}");
    }

    #[test]
    fn value_env_is_resolved_through_injected_env() {
        let text = with_secrets(&format!(
            "[[verify.secrets]]\nid = \"sec_A\"\nvalue = \"{SECRET}\"\n\
             [[verify.secrets]]\nid = \"sec_B\"\nvalue_env = \"KIRIM_SECRET_B\"\n"
        ));
        let seen = std::cell::RefCell::new(Vec::new());
        let env = |name: &str| {
            seen.borrow_mut().push(name.to_owned());
            (name == "KIRIM_SECRET_B").then(|| "whsec_from_env".to_owned())
        };
        let config = Config::from_toml_str_with(&text, &env).unwrap();
        assert_eq!(config.verify.secrets[1].id(), "sec_B");
        assert_eq!(*seen.borrow(), ["KIRIM_SECRET_B"]);

        let sources = SecretSources {
            inline: None,
            env_var: Some("KIRIM_SECRET_B".to_owned()),
            file: None,
        };
        let (value, key) =
            resolve_secret_value("verify.secrets[1]", &VERIFY_SECRET_KEYS, sources, &env)
                .unwrap()
                .unwrap();
        assert_eq!(value, "whsec_from_env");
        assert_eq!(key, "verify.secrets[1].value_env");
    }

    #[test]
    fn value_env_unset_or_empty_names_key_and_variable() {
        let text = with_secrets(&format!(
            "[[verify.secrets]]\nid = \"sec_A\"\nvalue = \"{SECRET}\"\n\
             [[verify.secrets]]\nid = \"sec_B\"\nvalue_env = \"KIRIM_SECRET_B\"\n"
        ));
        let err = parse_err(&text);
        assert_invalid(&err, "verify.secrets[1].value_env", "`KIRIM_SECRET_B`");

        let empty = |_: &str| Some(String::new());
        let err = Config::from_toml_str_with(&text, &empty).unwrap_err();
        assert_invalid(&err, "verify.secrets[1].value_env", "unset or empty");

        let err = parse_err(&with_secrets(
            "[[verify.secrets]]\nid = \"sec_A\"\nvalue_env = \"\"\n",
        ));
        assert_invalid(&err, "verify.secrets[0].value_env", "environment variable");
    }

    #[test]
    fn value_file_trims_exactly_one_line_ending() {
        for (content, expected) in [
            (&b"whsec_file\n"[..], "whsec_file"),
            (b"whsec_file\r\n", "whsec_file"),
            (b"whsec_file", "whsec_file"),
            (b"whsec_file\n\n", "whsec_file\n"),
            (b"whsec_file\r\n\r\n", "whsec_file\r\n"),
        ] {
            let file = temp_file(content);
            let sources = SecretSources {
                inline: None,
                env_var: None,
                file: Some(file.path().to_owned()),
            };
            let (value, key) =
                resolve_secret_value("verify.secrets[0]", &VERIFY_SECRET_KEYS, sources, &no_env)
                    .unwrap()
                    .unwrap();
            assert_eq!(value, expected, "content {content:?}");
            assert_eq!(key, "verify.secrets[0].value_file");
        }
    }

    #[test]
    fn value_file_loads_through_config() {
        let good = temp_file(b"whsec_from_file\n");
        let text = with_secrets(&format!(
            "[[verify.secrets]]\nid = \"sec_F\"\nvalue_file = {}\n",
            toml_path(good.path())
        ));
        let config = parse(&text).unwrap();
        assert_eq!(config.verify.secrets[0].id(), "sec_F");

        // A second line ending is kept, so the secret is rejected rather than silently
        // never matching.
        let doubled = temp_file(b"whsec_from_file\n\n");
        let text = with_secrets(&format!(
            "[[verify.secrets]]\nid = \"sec_F\"\nvalue_file = {}\n",
            toml_path(doubled.path())
        ));
        let err = parse_err(&text);
        assert_invalid(&err, "verify.secrets[0].value_file", "whitespace");
        assert!(!err.to_string().contains("from_file"), "{err}");
    }

    #[test]
    fn unreadable_value_file_names_key_path_and_error() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("no-such-secret");
        let text = with_secrets(&format!(
            "[[verify.secrets]]\nid = \"sec_F\"\nvalue_file = {}\n",
            toml_path(&missing)
        ));
        let err = parse_err(&text);
        assert_invalid(
            &err,
            "verify.secrets[0].value_file",
            &missing.display().to_string(),
        );
        let io = std::io::Error::from(std::io::ErrorKind::NotFound).to_string();
        let shown = err.to_string();
        assert!(
            shown.contains(&io) || shown.to_lowercase().contains("no such file"),
            "{shown}"
        );
    }

    #[test]
    fn value_file_is_read_up_to_a_limit() {
        let big = temp_file(&vec![b'a'; MAX_SECRET_FILE_BYTES as usize + 1]);
        let text = with_secrets(&format!(
            "[[verify.secrets]]\nid = \"sec_F\"\nvalue_file = {}\n",
            toml_path(big.path())
        ));
        let err = parse_err(&text);
        assert_invalid(&err, "verify.secrets[0].value_file", "larger than 64 KiB");
        assert!(
            err.to_string().contains(&big.path().display().to_string()),
            "{err}"
        );

        // An endless file stops at the limit instead of hanging the start.
        if Path::new("/dev/zero").exists() {
            let text =
                with_secrets("[[verify.secrets]]\nid = \"sec_F\"\nvalue_file = \"/dev/zero\"\n");
            assert_invalid(
                &parse_err(&text),
                "verify.secrets[0].value_file",
                "/dev/zero",
            );
        }

        // A secret file just under the limit is read (and then judged as a secret).
        let mut long = format!("whsec_{}", "a".repeat(MAX_SECRET_FILE_BYTES as usize - 7));
        long.push('\n');
        let fits = temp_file(long.as_bytes());
        let text = with_secrets(&format!(
            "[[verify.secrets]]\nid = \"sec_F\"\nvalue_file = {}\n",
            toml_path(fits.path())
        ));
        assert!(parse(&text).is_ok());
    }

    #[test]
    fn check_secret_is_the_config_rule() {
        assert!(check_secret(SECRET, "--secret").is_ok());
        for bad in [
            "",
            "whsec_",
            "hunter2",
            "WHSEC_abc",
            "whsec_a b",
            "whsec_a\n",
        ] {
            let err = check_secret(bad, "--secret").unwrap_err();
            assert_eq!(err.key(), Some("--secret"));
            if bad.len() > "whsec_".len() {
                assert!(!err.to_string().contains(bad), "{err}");
            }
        }
    }

    #[test]
    fn check_can_skip_secret_files_that_are_not_here() {
        let dir = tempfile::tempdir().unwrap();
        let gone = dir
            .path()
            .join("run/credentials/kirimhook.service/kirim_secret");
        let gone_sink = dir
            .path()
            .join("run/credentials/kirimhook.service/app_secret");
        let gone_key = dir.path().join("run/credentials/kirimhook.service/tls_key");
        let (cert_pem, _) = test_cert();
        let cert = temp_file(cert_pem.as_bytes());
        let text = format!(
            "[server.tls]\ncert_file = {}\nkey_file = {}\n\
             [[verify.secrets]]\nid = \"sec_A\"\nvalue_file = {}\n\
             [[verify.secrets]]\nid = \"sec_B\"\nvalue = \"{SECRET}\"\n\
             [[sinks]]\nname = \"app\"\nkind = \"http\"\nurl = \"http://127.0.0.1:9000/\"\n\
             secret_file = {}\n",
            toml_path(cert.path()),
            toml_path(&gone_key),
            toml_path(&gone),
            toml_path(&gone_sink),
        );
        let file = temp_file(text.as_bytes());

        // Without skipping: the first missing file is an error naming its key and path.
        let err = Config::check(file.path(), MissingFiles::Refuse).unwrap_err();
        assert_invalid(&err, "server.tls.key_file", &gone_key.display().to_string());
        let err = Config::load(file.path()).unwrap_err();
        assert_eq!(err.key(), Some("server.tls.key_file"), "{err}");

        let checked = Config::check(file.path(), MissingFiles::Skip).unwrap();
        let keys: Vec<(&str, &str)> = checked
            .not_checked
            .iter()
            .map(|n| (n.key.as_str(), n.reason))
            .collect();
        assert_eq!(
            keys,
            [
                ("server.tls.cert_file", PAIR_NOT_CHECKED),
                ("server.tls.key_file", NOT_PRESENT),
                ("verify.secrets[0].value_file", NOT_PRESENT),
                ("sinks[0].secret_file", NOT_PRESENT),
            ]
        );
        assert_eq!(checked.not_checked[2].path, gone);
        assert_eq!(checked.config.verify.secrets.len(), 2);

        // Skipping hides nothing else: a file that is there but wrong is still an error,
        // and so is any other mistake.
        let bad = temp_file(b"not a secret\n");
        let text = with_secrets(&format!(
            "[[verify.secrets]]\nid = \"sec_A\"\nvalue_file = {}\n",
            toml_path(bad.path())
        ));
        let file = temp_file(text.as_bytes());
        let err = Config::check(file.path(), MissingFiles::Skip).unwrap_err();
        assert_invalid(&err, "verify.secrets[0].value_file", "whsec_");
        let text = with_secrets(&format!(
            "[[verify.secrets]]\nid = \"sec_A\"\nvalue_file = {}\nvalue = \"{SECRET}\"\n",
            toml_path(&gone)
        ));
        let file = temp_file(text.as_bytes());
        let err = Config::check(file.path(), MissingFiles::Skip).unwrap_err();
        assert_invalid(&err, "verify.secrets[0]", "exactly one of");
    }

    #[test]
    fn wrong_prefix_never_shows_the_value() {
        let leaked = "sk_live_TOPSECRET_1234";
        // Inline value.
        let err = parse_err(&with_secrets(&format!(
            "[[verify.secrets]]\nid = \"sec_A\"\nvalue = \"{leaked}\"\n"
        )));
        assert_invalid(&err, "verify.secrets[0].value", "must start with `whsec_`");
        assert!(err.to_string().contains("the value is not shown"), "{err}");
        assert!(!err.to_string().contains("TOPSECRET"), "{err}");
        assert!(!format!("{err:?}").contains("TOPSECRET"), "{err:?}");

        // From the environment.
        let env = |_: &str| Some(leaked.to_owned());
        let text = with_secrets("[[verify.secrets]]\nid = \"sec_A\"\nvalue_env = \"S\"\n");
        let err = Config::from_toml_str_with(&text, &env).unwrap_err();
        assert_invalid(
            &err,
            "verify.secrets[0].value_env",
            "must start with `whsec_`",
        );
        assert!(!err.to_string().contains("TOPSECRET"), "{err}");
        assert!(!format!("{err:?}").contains("TOPSECRET"), "{err:?}");

        // From a file.
        let file = temp_file(leaked.as_bytes());
        let err = parse_err(&with_secrets(&format!(
            "[[verify.secrets]]\nid = \"sec_A\"\nvalue_file = {}\n",
            toml_path(file.path())
        )));
        assert_invalid(
            &err,
            "verify.secrets[0].value_file",
            "must start with `whsec_`",
        );
        assert!(!err.to_string().contains("TOPSECRET"), "{err}");
        assert!(!format!("{err:?}").contains("TOPSECRET"), "{err:?}");
    }

    #[test]
    fn prefix_alone_is_not_a_secret() {
        let err = parse_err(&with_secrets(
            "[[verify.secrets]]\nid = \"sec_A\"\nvalue = \"whsec_\"\n",
        ));
        assert_invalid(&err, "verify.secrets[0].value", "at least one character");
        let err = parse_err(&with_secrets(
            "[[verify.secrets]]\nid = \"sec_A\"\nvalue = \"WHSEC_abc\"\n",
        ));
        assert_invalid(&err, "verify.secrets[0].value", "must start with `whsec_`");
    }

    #[test]
    fn parse_errors_never_show_secret_values() {
        // An unknown key on a line that holds a secret: toml's own Display quotes that line.
        let text = with_secrets(
            "[[verify.secrets]]\nid = \"sec_A\"\nvalue = \"whsec_TOPSECRET\"; extra = 1\n",
        );
        let err = parse_err(&text);
        assert!(!err.to_string().contains("TOPSECRET"), "{err}");
        assert!(!format!("{err:?}").contains("TOPSECRET"), "{err:?}");

        let text = with_secrets(
            "[[verify.secrets]]\nid = \"sec_A\"\nvalue = \"whsec_TOPSECRET\", valeu = 1\n",
        );
        let err = parse_err(&text);
        assert!(!err.to_string().contains("TOPSECRET"), "{err}");

        let text = with_secrets(
            "[[verify.secrets]]\nid = \"sec_A\"\nvalue = \"whsec_OK\"\n\
             valeu = \"whsec_TOPSECRET\"\n",
        );
        let err = parse_err(&text);
        assert_eq!(err.key(), Some("verify.secrets[0].valeu"), "{err:?}");
        let shown = err.to_string();
        assert!(shown.contains("line 4"), "{shown}");
        assert!(!shown.contains("TOPSECRET"), "{shown}");

        // A secret pasted where a table array belongs: serde quotes the string it got.
        let text = with_secrets("[verify]\nsecrets = \"whsec_TOPSECRET\"\n");
        let err = parse_err(&text);
        assert_eq!(err.key(), Some("verify.secrets"), "{err:?}");
        assert!(!err.to_string().contains("TOPSECRET"), "{err}");
        assert!(err.to_string().contains("value not shown"), "{err}");
    }

    #[test]
    fn debug_output_redacts_secrets() {
        let config = parse(&minimal()).unwrap();
        let shown = format!("{config:?}");
        assert!(shown.contains("sec_A"), "{shown}");
        assert!(!shown.contains(SECRET), "{shown}");
    }

    #[test]
    fn unknown_keys_are_rejected_with_their_name() {
        let cases = [
            format!("surprise = 1\n{}", minimal()),
            with_server("listne = \"127.0.0.1:1\""),
            format!("[verify]\ntolerance = 5\n{}", minimal()),
            with_secrets(&format!(
                "[[verify.secrets]]\nid = \"sec_A\"\nvalue = \"{SECRET}\"\nsurprise = 1\n"
            )),
            with_store("retention = 3"),
            with_sinks("[[sinks]]\nname = \"out\"\nkind = \"stdout\"\nurll = \"http://x\"\n"),
            with_sinks(
                "[[sinks]]\nname = \"out\"\nkind = \"stdout\"\n[sinks.retry]\nattempts = 3\n",
            ),
        ];
        let keys = [
            "surprise",
            "server.listne",
            "verify.tolerance",
            "verify.secrets[0].surprise",
            "store.retention",
            "sinks[0].urll",
            "sinks[0].retry.attempts",
        ];
        for (text, key) in cases.iter().zip(keys) {
            let err = parse_err(text);
            assert_invalid(&err, key, "unknown key; expected");
            assert!(err.to_string().contains("line "), "{err}");
        }
    }

    #[test]
    fn at_least_one_sink() {
        let err = parse_err(&with_sinks(""));
        assert_invalid(&err, "sinks", "at least one");
    }

    #[test]
    fn sink_name_rules() {
        let sink = |name: &str| format!("[[sinks]]\nname = \"{name}\"\nkind = \"stdout\"\n");
        let err = parse_err(&with_sinks("[[sinks]]\nkind = \"stdout\"\n"));
        assert_invalid(&err, "sinks[0].name", "is required");
        let err = parse_err(&with_sinks(&sink("")));
        assert_invalid(&err, "sinks[0].name", "must not be empty");
        let err = parse_err(&with_sinks(&format!("{}{}", sink("ok"), sink("a.b"))));
        assert_invalid(&err, "sinks[1].name", "may only contain");
        let err = parse_err(&with_sinks(&sink("é")));
        assert_invalid(&err, "sinks[0].name", "may only contain");
        let err = parse_err(&with_sinks(&sink(&"a".repeat(65))));
        assert_invalid(&err, "sinks[0].name", "at most 64");
        let err = parse_err(&with_sinks(&format!("{}{}", sink("one"), sink("one"))));
        assert_invalid(&err, "sinks[1].name", "duplicate sink name `one`");
        let err = parse_err(&with_sinks(&format!("{}{}", sink("a"), sink("b"))));
        assert_invalid(&err, "sinks[1].kind", "only one stdout sink");

        let long = "Az09_-".repeat(10) + "abcd";
        assert_eq!(long.len(), 64);
        let http = "[[sinks]]\nname = \"b\"\nkind = \"http\"\nurl = \"http://127.0.0.1:9000/\"\n";
        let config = parse(&with_sinks(&format!("{}{http}", sink(&long)))).unwrap();
        let names: Vec<&str> = config.sinks.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, [long.as_str(), "b"]);
    }

    #[test]
    fn sink_kind_rules() {
        let err = parse_err(&with_sinks("[[sinks]]\nname = \"a\"\n"));
        assert_invalid(&err, "sinks[0].kind", "is required");
        let err = parse_err(&with_sinks(
            "[[sinks]]\nname = \"a\"\nkind = \"stdout\"\n[[sinks]]\nname = \"b\"\nkind = \"kafka\"\n",
        ));
        assert_invalid(&err, "sinks[1].kind", "unknown sink kind `kafka`");
        assert!(
            err.to_string().contains("known kinds: stdout, http"),
            "{err}"
        );
    }

    #[test]
    fn load_reads_file_or_reports_path() {
        let file = temp_file(minimal().as_bytes());
        let config = Config::load(file.path()).unwrap();
        assert_eq!(config.sinks[0].name, "out");

        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("kirimhook.toml");
        let err = Config::load(&missing).unwrap_err();
        assert!(matches!(err, ConfigError::Read { .. }), "{err:?}");
        assert_eq!(err.key(), None);
        let shown = err.to_string();
        assert!(shown.starts_with("cannot read config file "), "{shown}");
        assert!(shown.contains(&missing.display().to_string()), "{shown}");
        // The OS error is in the message, so it is not a source too: a report of the
        // chain (anyhow's `{:#}`) says it once.
        assert!(std::error::Error::source(&err).is_none(), "{err:?}");
        let chain = format!("{:#}", anyhow::Error::from(err));
        let os = std::fs::read(&missing).unwrap_err().to_string();
        assert_eq!(chain.matches(&os).count(), 1, "{chain}");
    }

    #[test]
    fn redaction_helpers() {
        assert_eq!(
            redact_quoted_strings(r#"invalid type: string "a\"b", expected u64"#),
            "invalid type: string (value not shown), expected u64"
        );
        assert_eq!(
            redact_quoted_strings("unknown field `x`, expected `a`"),
            "unknown field `x`, expected `a`"
        );
        assert_eq!(line_and_column("ab\ncd\néf", 8), (3, 2));
        assert_eq!(line_and_column("abc", 0), (1, 1));
    }

    #[test]
    fn example_config_parses() {
        let config = Config::from_toml_str(include_str!("../config.example.toml")).unwrap();
        assert_eq!(config.server.listen, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(config.server.path, "/webhooks/kirim");
        assert_eq!(config.server.max_body_bytes, 1_048_576);
        assert_eq!(config.verify.tolerance_secs, 300);
        let ids: Vec<&str> = config.verify.secrets.iter().map(|s| s.id()).collect();
        assert_eq!(ids, ["sec_DEMO0000000000000000000000"]);
        // The value is the one the daemon and check-config warn about.
        assert!(config.verify.secrets[0].is_demo());
        assert_eq!(config.store.path, PathBuf::from("./data"));
        assert_eq!(config.store.retention_days, 35);
        assert_eq!(config.store.keep_delivered, Duration::ZERO);
        assert!(config.admin.enabled);
        assert_eq!(config.admin.listen, "127.0.0.1:9090".parse().unwrap());
        assert_eq!(config.sinks.len(), 1);
        assert_eq!(config.sinks[0].name, "stdout");
        assert!(matches!(config.sinks[0].kind, SinkKind::Stdout));
        assert!(config.sinks[0].filter.is_everything());
        assert_eq!(config.sinks[0].retry, RetryPolicy::default());
    }

    /// The commented-out `[server.tls]` table of the example has the keys it documents.
    #[test]
    fn example_tls_table_uncommented_has_both_keys() {
        let example = include_str!("../config.example.toml");
        let start = example
            .find("\n# [server.tls]\n")
            .expect("the example has a commented-out [server.tls] table");
        let block: String = example[start + 1..]
            .lines()
            .take_while(|line| line.starts_with('#'))
            .map(|line| {
                let line = line.strip_prefix('#').unwrap_or(line);
                format!("{}\n", line.strip_prefix(' ').unwrap_or(line))
            })
            .collect();
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = test_cert();
        std::fs::write(dir.path().join("cert.pem"), cert).unwrap();
        std::fs::write(dir.path().join("key.pem"), key).unwrap();
        let block = block
            .replace(
                "/etc/kirimhook/tls/fullchain.pem",
                &dir.path().join("cert.pem").display().to_string(),
            )
            .replace(
                "/run/credentials/kirimhook.service/tls_key",
                &dir.path().join("key.pem").display().to_string(),
            );
        let config = parse(&format!("{block}\n{}", minimal())).unwrap();
        let tls = config.server.tls.unwrap();
        assert_eq!(tls.cert_file, dir.path().join("cert.pem"));
        assert_eq!(tls.key_file, dir.path().join("key.pem"));
    }

    #[test]
    fn filters_and_retry_on_a_stdout_sink() {
        let config = parse(&with_sinks(
            "[[sinks]]\nname = \"out\"\nkind = \"stdout\"\n\
             events = [\"*.created\"]\nsources = [\"kirim\"]\nphone_number_ids = [\"1\"]\n\
             [sinks.retry]\nmax_attempts = 3\n",
        ))
        .unwrap();
        let sink = &config.sinks[0];
        assert!(matches!(sink.kind, SinkKind::Stdout));
        assert_eq!(
            sink.filter,
            Filter::new(
                Some(vec!["*.created".to_owned()]),
                Some(vec![Source::Kirim]),
                Some(vec!["1".to_owned()]),
            )
        );
        assert_eq!(
            sink.retry,
            RetryPolicy {
                max_attempts: 3,
                ..RetryPolicy::default()
            }
        );
    }

    #[test]
    fn filter_value_rules() {
        let stdout = |line: &str| {
            with_sinks(&format!(
                "[[sinks]]\nname = \"a\"\nkind = \"http\"\nurl = \"http://127.0.0.1:9000/\"\n\
                 [[sinks]]\nname = \"b\"\nkind = \"stdout\"\n{line}\n"
            ))
        };
        for (line, key, fragment) in [
            (
                "events = []",
                "sinks[1].events",
                "leave the key out to match everything",
            ),
            (
                "sources = []",
                "sinks[1].sources",
                "leave the key out to match everything",
            ),
            (
                "phone_number_ids = []",
                "sinks[1].phone_number_ids",
                "leave the key out to match everything",
            ),
            (
                "events = [\"message.*\", \"\"]",
                "sinks[1].events[1]",
                "must not be empty",
            ),
            (
                "events = [\"Message.*\"]",
                "sinks[1].events[0]",
                "may only contain a-z",
            ),
            (
                "events = [\"message.?\"]",
                "sinks[1].events[0]",
                "`message.?`",
            ),
            (
                "events = [\"a b\"]",
                "sinks[1].events[0]",
                "may only contain",
            ),
            (
                "sources = [\"meta\", \"whatsapp\"]",
                "sinks[1].sources[1]",
                "`whatsapp` is not a source",
            ),
            (
                "sources = [\"Meta\"]",
                "sinks[1].sources[0]",
                "use \"kirim\" or \"meta\"",
            ),
            (
                "phone_number_ids = [\"\"]",
                "sinks[1].phone_number_ids[0]",
                "must not be empty",
            ),
            (
                "phone_number_ids = [\"1\", \"+6281234\"]",
                "sinks[1].phone_number_ids[1]",
                "digits only",
            ),
            (
                "phone_number_ids = [\" 1\"]",
                "sinks[1].phone_number_ids[0]",
                "digits only",
            ),
        ] {
            let err = parse_err(&stdout(line));
            assert_invalid(&err, key, fragment);
        }

        // A number instead of a string names the element and the line.
        let err = parse_err(&stdout("phone_number_ids = [106540352242922]"));
        assert_invalid(&err, "sinks[1].phone_number_ids[0]", "expected a string");
        assert!(err.to_string().contains("line 12"), "{err}");

        let config = parse(&stdout("events = [\"*\", \"a-b_c.9*\"]")).unwrap();
        assert!(config.sinks[1].filter.is_everything());
    }

    #[test]
    fn retry_rules() {
        let retry = |lines: &str| {
            with_sinks(&format!(
                "[[sinks]]\nname = \"out\"\nkind = \"stdout\"\n[sinks.retry]\n{lines}\n"
            ))
        };
        for (lines, key, fragment) in [
            (
                "initial_backoff_ms = 0",
                "sinks[0].retry.initial_backoff_ms",
                "between 1 and 3600000 milliseconds, got 0",
            ),
            (
                "initial_backoff_ms = 3600001",
                "sinks[0].retry.initial_backoff_ms",
                "got 3600001",
            ),
            (
                "max_backoff_secs = 86401",
                "sinks[0].retry.max_backoff_secs",
                "between 1 and 86400 seconds, got 86401",
            ),
            (
                "max_backoff_secs = 0",
                "sinks[0].retry.max_backoff_secs",
                "got 0",
            ),
            (
                "initial_backoff_ms = 5000\nmax_backoff_secs = 4",
                "sinks[0].retry.max_backoff_secs",
                "must be at least retry.initial_backoff_ms (5000 ms), got 4 seconds",
            ),
            (
                "initial_backoff_ms = 3600000",
                "sinks[0].retry.max_backoff_secs",
                "must be at least",
            ),
            (
                "max_attempts = 0",
                "sinks[0].retry.max_attempts",
                "between 1 and 1000, got 0",
            ),
            (
                "max_attempts = 1001",
                "sinks[0].retry.max_attempts",
                "got 1001",
            ),
        ] {
            let err = parse_err(&retry(lines));
            assert_invalid(&err, key, fragment);
        }

        let config = parse(&retry(
            "initial_backoff_ms = 3600000\nmax_backoff_secs = 3600\nmax_attempts = 1",
        ))
        .unwrap();
        assert_eq!(
            config.sinks[0].retry,
            RetryPolicy {
                initial_backoff: Duration::from_secs(3600),
                max_backoff: Duration::from_secs(3600),
                max_attempts: 1,
            }
        );
        let config = parse(&retry("initial_backoff_ms = 1\nmax_backoff_secs = 1")).unwrap();
        assert_eq!(
            config.sinks[0].retry.initial_backoff,
            Duration::from_millis(1)
        );
    }
}
