//! Configuration: turns the TOML file into a validated [`Config`] in two steps. Serde reads
//! the text into private `Raw*` structs that reject unknown keys, then `validate` checks every
//! value, fills in defaults and resolves signing secrets (inline, from an environment variable
//! or from a file). Every [`ConfigError::Invalid`] names the failing key by its full dotted
//! path, such as `verify.secrets[1].value_env` or `sinks[0].name`. Indexes count from 0 in file
//! order. Secret values never appear in an error or in `Debug` output. This module does not
//! reload the file, does not open sockets or the store, and does no I/O except reading the
//! config file in [`Config::load`] and the files named by `value_file`.

use std::fmt::Display;
use std::net::SocketAddr;
use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::signature::SigningSecret;

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
const DEFAULT_STORE_PATH: &str = "./data";
const DEFAULT_RETENTION_DAYS: u32 = 35;
/// Spec 9.3: dedupe keys must be kept at least 38 hours, so at least 2 days.
const RETENTION_DAYS_RANGE: RangeInclusive<u32> = 2..=365;
const SECRET_PREFIX: &str = "whsec_";
const SINK_NAME_MAX_CHARS: usize = 64;
const KNOWN_SINK_KINDS: &[&str] = &["stdout"];

/// The validated configuration of the daemon.
#[derive(Debug, Clone)]
pub struct Config {
    /// The HTTP listener: `[server]`.
    pub server: ServerConfig,
    /// Signature verification: `[verify]` and `[[verify.secrets]]`.
    pub verify: VerifyConfig,
    /// The on-disk event store: `[store]`.
    pub store: StoreConfig,
    /// Where accepted events are delivered: `[[sinks]]`, at least one, names unique.
    pub sinks: Vec<SinkConfig>,
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

/// The on-disk event store (`[store]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreConfig {
    /// Directory of the store, `path`. Default `./data`; a relative path is relative to the
    /// working directory of the daemon.
    pub path: PathBuf,
    /// Days that events and dedupe keys are kept, `retention_days`. Default 35; 2..=365
    /// (spec 9.3 requires dedupe keys to be kept at least 38 hours).
    pub retention_days: u32,
}

/// One event sink (`[[sinks]]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SinkConfig {
    /// Unique name used in logs and in the store: 1 to 64 of `A-Z a-z 0-9 _ -`.
    pub name: String,
    /// What the sink does with events, with its kind-specific settings.
    pub kind: SinkKind,
}

/// The kind of a sink, from its `kind` key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SinkKind {
    /// `kind = "stdout"`: writes one JSON event per line to standard output.
    Stdout,
}

/// Why the configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The config file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file that was asked for.
        path: PathBuf,
        /// Why reading it failed.
        source: std::io::Error,
    },
    /// The text is not valid TOML or does not have the expected shape (unknown key, wrong
    /// type). The message gives line and column and names the key, but never quotes the
    /// source text or a string value, so that secrets cannot leak through it.
    #[error("{0}")]
    Parse(String),
    /// A value is present but not acceptable.
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

impl Config {
    /// Parses and validates TOML text. `env` resolves environment variables for `value_env`
    /// (injected so tests need not touch the process environment).
    pub fn from_toml_str_with(
        text: &str,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|err| parse_error(text, &err))?;
        raw.validate(env)
    }

    /// Same with the process environment.
    pub fn from_toml_str(text: &str) -> Result<Config, ConfigError> {
        Self::from_toml_str_with(text, &|name| std::env::var(name).ok())
    }

    /// Reads the file and parses it.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::from_toml_str(&text)
    }
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
    store: RawStore,
    #[serde(default)]
    sinks: Vec<RawSink>,
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

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStore {
    path: Option<PathBuf>,
    retention_days: Option<u32>,
}

/// A sink table. Kind-specific keys (an `http` sink's `url`, say) are added here as `Option`s
/// and checked per kind in [`validate_sink_kind`], which rejects keys that belong to another
/// kind. Today no kind has any, so every key but `name` and `kind` is an unknown-field error.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSink {
    name: Option<String>,
    kind: Option<String>,
}

impl RawConfig {
    fn validate(self, env: &dyn Fn(&str) -> Option<String>) -> Result<Config, ConfigError> {
        Ok(Config {
            server: self.server.validate()?,
            verify: self.verify.validate(env)?,
            store: self.store.validate()?,
            sinks: validate_sinks(self.sinks)?,
        })
    }
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

        Ok(ServerConfig {
            listen,
            path,
            max_body_bytes,
            max_connections,
            request_timeout: Duration::from_secs(request_timeout),
            shutdown_timeout: Duration::from_secs(shutdown_timeout),
        })
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
    let (value, value_key) =
        resolve_secret_value(&base, raw.value, raw.value_env, raw.value_file, env)?;
    check_secret_value(&value, &value_key)?;
    Ok(SigningSecret::new(id, value))
}

/// Returns the secret value and the dotted key that supplied it.
fn resolve_secret_value(
    base: &str,
    value: Option<String>,
    value_env: Option<String>,
    value_file: Option<PathBuf>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<(String, String), ConfigError> {
    match (value, value_env, value_file) {
        (Some(value), None, None) => Ok((value, format!("{base}.value"))),
        (None, Some(var), None) => {
            let key = format!("{base}.value_env");
            if var.is_empty() {
                return Err(invalid(key, "must name an environment variable"));
            }
            match env(&var) {
                Some(value) if !value.is_empty() => Ok((value, key)),
                _ => Err(invalid(
                    key,
                    format!("environment variable `{var}` is unset or empty"),
                )),
            }
        }
        (None, None, Some(path)) => {
            let key = format!("{base}.value_file");
            if path.as_os_str().is_empty() {
                return Err(invalid(key, "must name a file"));
            }
            let content = std::fs::read_to_string(&path)
                .map_err(|err| invalid(&key, format!("cannot read {}: {err}", path.display())))?;
            Ok((trim_one_line_ending(&content).to_owned(), key))
        }
        (value, value_env, value_file) => {
            let found: Vec<&str> = [
                ("value", value.is_some()),
                ("value_env", value_env.is_some()),
                ("value_file", value_file.is_some()),
            ]
            .into_iter()
            .filter_map(|(name, set)| set.then_some(name))
            .collect();
            let found = if found.is_empty() {
                "none".to_owned()
            } else {
                found.join(", ")
            };
            Err(invalid(
                base,
                format!("exactly one of value, value_env, value_file must be set (found: {found})"),
            ))
        }
    }
}

/// Removes one trailing `"\n"` or `"\r\n"`, as left by editors and `echo`; nothing else.
fn trim_one_line_ending(text: &str) -> &str {
    text.strip_suffix("\r\n")
        .or_else(|| text.strip_suffix('\n'))
        .unwrap_or(text)
}

/// Checks the shape of a secret. Messages never include the value.
fn check_secret_value(value: &str, key: &str) -> Result<(), ConfigError> {
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

impl RawStore {
    fn validate(self) -> Result<StoreConfig, ConfigError> {
        let path = self
            .path
            .unwrap_or_else(|| PathBuf::from(DEFAULT_STORE_PATH));
        if path.as_os_str().is_empty() {
            return Err(invalid("store.path", "must not be empty"));
        }
        let retention_days = check_range(
            "store.retention_days",
            self.retention_days.unwrap_or(DEFAULT_RETENTION_DAYS),
            RETENTION_DAYS_RANGE,
            " days",
        )?;
        Ok(StoreConfig {
            path,
            retention_days,
        })
    }
}

fn validate_sinks(raw: Vec<RawSink>) -> Result<Vec<SinkConfig>, ConfigError> {
    if raw.is_empty() {
        return Err(invalid("sinks", "at least one [[sinks]] entry is required"));
    }
    let mut sinks: Vec<SinkConfig> = Vec::with_capacity(raw.len());
    for (index, raw) in raw.into_iter().enumerate() {
        let base = format!("sinks[{index}]");
        let name_key = format!("{base}.name");
        let name = raw.name.ok_or_else(|| invalid(&name_key, "is required"))?;
        check_sink_name(&name, &name_key)?;
        if let Some(first) = sinks.iter().position(|s| s.name == name) {
            return Err(invalid(
                name_key,
                format!("duplicate sink name `{name}` (already used by sinks[{first}])"),
            ));
        }
        let kind_key = format!("{base}.kind");
        let kind = raw
            .kind
            .ok_or_else(|| invalid(&kind_key, kind_hint("is required")))?;
        let kind = validate_sink_kind(&kind, &kind_key)?;
        sinks.push(SinkConfig { name, kind });
    }
    Ok(sinks)
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

/// Maps `kind` to a [`SinkKind`]. When a kind gains its own keys, its arm checks them
/// (reporting `sinks[i].<key>`) and the other arms reject them.
fn validate_sink_kind(kind: &str, key: &str) -> Result<SinkKind, ConfigError> {
    match kind {
        "stdout" => Ok(SinkKind::Stdout),
        other => Err(invalid(
            key,
            kind_hint(&format!("unknown sink kind `{}`", other.escape_debug())),
        )),
    }
}

fn kind_hint(problem: &str) -> String {
    format!("{problem}; known kinds: {}", KNOWN_SINK_KINDS.join(", "))
}

fn check_range<T: PartialOrd + Display + Copy>(
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

fn invalid(key: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        message: message.into(),
    }
}

/// Builds [`ConfigError::Parse`] from toml's message and position. toml's own `Display`
/// quotes the offending source line, which may hold a secret, so it is not used; string
/// values that serde quotes in its messages (`invalid type: string "..."`) are removed too.
fn parse_error(text: &str, err: &toml::de::Error) -> ConfigError {
    let message = redact_quoted_strings(err.message().trim_end());
    let located = match err.span() {
        Some(span) => {
            let (line, column) = line_and_column(text, span.start);
            format!("TOML parse error at line {line}, column {column}: {message}")
        }
        None => format!("TOML parse error: {message}"),
    };
    ConfigError::Parse(located)
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

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    use std::io::Write as _;

    const SECRET: &str = "whsec_c2VjcmV0LXZhbHVlLWZvci10ZXN0cw";

    /// The smallest valid config: one inline secret, one sink, everything else defaulted.
    fn minimal() -> String {
        format!(
            "[[verify.secrets]]\nid = \"sec_A\"\nvalue = \"{SECRET}\"\n\n\
             [[sinks]]\nname = \"out\"\nkind = \"stdout\"\n"
        )
    }

    fn no_env(_: &str) -> Option<String> {
        None
    }

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::from_toml_str_with(text, &no_env)
    }

    fn parse_err(text: &str) -> ConfigError {
        match parse(text) {
            Ok(config) => panic!("expected an error, got {config:?}"),
            Err(err) => err,
        }
    }

    /// Asserts the error is `Invalid` for `key`, and that its Display names the key and
    /// contains `fragment`.
    fn assert_invalid(err: &ConfigError, key: &str, fragment: &str) {
        assert!(
            matches!(err, ConfigError::Invalid { .. }),
            "expected Invalid, got {err:?}"
        );
        assert_eq!(err.key(), Some(key), "{err}");
        let shown = err.to_string();
        assert!(shown.starts_with(&format!("{key}: ")), "{shown}");
        assert!(shown.contains(fragment), "{shown:?} lacks {fragment:?}");
    }

    fn with_server(lines: &str) -> String {
        format!("[server]\n{lines}\n{}", minimal())
    }

    fn with_store(lines: &str) -> String {
        format!("[store]\n{lines}\n{}", minimal())
    }

    fn with_sinks(sinks: &str) -> String {
        format!("[[verify.secrets]]\nid = \"sec_A\"\nvalue = \"{SECRET}\"\n\n{sinks}")
    }

    fn with_secrets(secrets: &str) -> String {
        format!("{secrets}\n[[sinks]]\nname = \"out\"\nkind = \"stdout\"\n")
    }

    fn temp_file(content: &[u8]) -> tempfile::NamedTempFile {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        file.write_all(content).unwrap();
        file.flush().unwrap();
        file
    }

    fn toml_path(path: &Path) -> String {
        // TOML literal strings take backslashes as they are (Windows paths).
        format!("'{}'", path.display())
    }

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
            }
        );
        assert_eq!(
            config.sinks,
            vec![SinkConfig {
                name: "out".to_owned(),
                kind: SinkKind::Stdout,
            }]
        );
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
    fn negative_number_is_a_parse_error() {
        let err = parse_err(&with_server("max_connections = -1"));
        assert!(matches!(err, ConfigError::Parse(_)), "{err:?}");
        assert_eq!(err.key(), None);
        assert!(err.to_string().contains("line 2"), "{err}");
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

        let (value, key) = resolve_secret_value(
            "verify.secrets[1]",
            None,
            Some("KIRIM_SECRET_B".to_owned()),
            None,
            &env,
        )
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
            let (value, key) = resolve_secret_value(
                "verify.secrets[0]",
                None,
                None,
                Some(file.path().to_owned()),
                &no_env,
            )
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
        assert!(matches!(err, ConfigError::Parse(_)), "{err:?}");
        let shown = err.to_string();
        assert!(shown.contains("valeu"), "{shown}");
        assert!(shown.contains("line 4"), "{shown}");
        assert!(!shown.contains("TOPSECRET"), "{shown}");

        // A secret pasted where a table array belongs: serde quotes the string it got.
        let text = with_secrets("[verify]\nsecrets = \"whsec_TOPSECRET\"\n");
        let err = parse_err(&text);
        assert!(matches!(err, ConfigError::Parse(_)), "{err:?}");
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
            with_sinks("[[sinks]]\nname = \"out\"\nkind = \"stdout\"\nurl = \"http://x\"\n"),
        ];
        let names = [
            "surprise",
            "listne",
            "tolerance",
            "surprise",
            "retention",
            "url",
        ];
        for (text, name) in cases.iter().zip(names) {
            let err = parse_err(text);
            assert!(matches!(err, ConfigError::Parse(_)), "{err:?}");
            assert_eq!(err.key(), None);
            let shown = err.to_string();
            assert!(
                shown.contains(&format!("`{name}`")),
                "{shown:?} lacks {name}"
            );
            assert!(shown.contains("unknown field"), "{shown}");
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

        let long = "Az09_-".repeat(10) + "abcd";
        assert_eq!(long.len(), 64);
        let config = parse(&with_sinks(&format!("{}{}", sink(&long), sink("b")))).unwrap();
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
        assert!(err.to_string().contains("known kinds: stdout"), "{err}");
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
        assert_eq!(config.store.path, PathBuf::from("./data"));
        assert_eq!(config.store.retention_days, 35);
        assert_eq!(
            config.sinks,
            vec![SinkConfig {
                name: "stdout".to_owned(),
                kind: SinkKind::Stdout,
            }]
        );
    }
}
