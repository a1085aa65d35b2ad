//! The keys of a `nats` sink (`url`, `subject`, `stream`, `concurrency`, `timeout_secs`,
//! `token_env`, `creds_file`, `user` + `password_env`, `ca_file`) and their validation into a [`NatsSinkConfig`], with the subject
//! template ([`SubjectTemplate`]) the sink renders for every event.
//!
//! The keys every kind takes are checked by [`crate::config`]; errors name the full key
//! (`sinks[0].subject`). A URL is never quoted in an error, a token never appears in an error
//! or in `Debug` output. Nothing is resolved or connected here; the only I/O is reading the
//! token's environment variable. Two `nats` sinks naming one `stream` are allowed, with a
//! warning: JetStream keeps one copy of a `Nats-Msg-Id` per stream, so the second sink's copy
//! of every event would be dropped as a duplicate.

use std::ops::RangeInclusive;
use std::path::PathBuf;
use std::time::Duration;

use crate::config::{check_range, invalid, ConfigError, NotChecked, SecretString};
use crate::sinks::config::{Kind, KindKey, KindKeys, SinkTable};
use crate::sinks::SinkKind;
use crate::store::model::RecordMeta;

const DEFAULT_TIMEOUT_SECS: u64 = 10;
const TIMEOUT_SECS_RANGE: RangeInclusive<u64> = 1..=300;
const DEFAULT_CONCURRENCY: usize = 256;
const CONCURRENCY_RANGE: RangeInclusive<usize> = 1..=4096;
/// The default port of a NATS server.
const DEFAULT_PORT: u16 = 4222;
const URL_EXAMPLE: &str = "nats://127.0.0.1:4222";
const SUBJECT_EXAMPLE: &str = "kirim.{source}.{type}";
/// Longest stream name accepted (JetStream's own limit is 255).
const MAX_STREAM_CHARS: usize = 255;

/// `kind = "nats"` and its keys.
pub const KIND: Kind = Kind {
    name: "nats",
    keys: &[
        KindKey::of::<String>("url"),
        KindKey::of::<String>("subject"),
        KindKey::of::<String>("stream"),
        KindKey::of::<usize>("concurrency"),
        KindKey::of::<u64>("timeout_secs"),
        KindKey::of::<String>("token_env"),
        KindKey::of::<PathBuf>("creds_file"),
        KindKey::of::<String>("user"),
        KindKey::of::<String>("password_env"),
        KindKey::of::<PathBuf>("ca_file"),
    ],
    validate_keys: |keys, table| validate(keys, table).map(SinkKind::Nats),
    skip_missing_files,
};

/// The settings of a `nats` sink. `Debug` never shows the token.
#[derive(Debug, Clone)]
pub struct NatsSinkConfig {
    /// The server, `url`: `nats://host[:port]` or `tls://host[:port]` (TLS with the system's
    /// roots). Required; no user name or password in it (use `token_env`, `creds_file` or
    /// `user` + `password_env`).
    pub url: String,
    /// Where each event is published, `subject` (a template). Required.
    pub subject: SubjectTemplate,
    /// `stream`: the JetStream stream to create when missing (file storage, subjects
    /// [`SubjectTemplate::stream_filter`]) or to check. `None`: the operator runs the stream.
    pub stream: Option<String>,
    /// Most publishes awaiting their ack at once, `concurrency`, sent in batches of up to 64.
    /// Default 256 (four batches); 1..=4096.
    pub concurrency: usize,
    /// How long one batch may take, from connecting to its last ack, `timeout_secs`.
    /// Default 10 s; 1..=300 s.
    pub timeout: Duration,
    /// How the sink authenticates.
    pub auth: NatsAuth,
    /// `ca_file`: PEM CA certificates trusted instead of the system's roots (a private CA);
    /// needs a `tls://` URL. Read when the sink connects.
    pub ca_file: Option<PathBuf>,
}

/// How a `nats` sink authenticates to the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NatsAuth {
    /// No credentials.
    None,
    /// `token_env`: the token in this environment variable (read when the config is read).
    Token(SecretString),
    /// `creds_file`: a NATS `.creds` file (JWT and NKey seed), read when the sink connects.
    CredsFile(PathBuf),
    /// `user` and `password_env`: a user name, and its password in this environment variable
    /// (read when the config is read).
    UserPassword {
        /// The user name.
        user: String,
        /// The password.
        password: SecretString,
    },
}

/// One field of an event a subject template may name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Field {
    Source,
    Type,
    EventId,
    PhoneNumberId,
}

impl Field {
    const ALL: [(&'static str, Field); 4] = [
        ("source", Field::Source),
        ("type", Field::Type),
        ("event_id", Field::EventId),
        ("phone_number_id", Field::PhoneNumberId),
    ];

    fn value(self, meta: &RecordMeta) -> Option<&str> {
        match self {
            Field::Source => meta.source.map(|s| s.as_str()),
            Field::Type => meta.event_type.as_deref(),
            Field::EventId => meta.event_id.as_deref(),
            Field::PhoneNumberId => meta.phone_number_ids.first().map(String::as_str),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Text(String),
    Field(Field),
}

/// A subject template such as `kirim.{source}.{type}`: fixed text (valid subject characters,
/// no empty token, no wildcard) and the placeholders `{source}`, `{type}`, `{event_id}` and
/// `{phone_number_id}` (the first of a Meta event's ids). Validated when the config is read.
///
/// Rendering never fails: a value is cleaned so the subject stays valid. A character that
/// cannot be in a subject token (whitespace, a control character, `*`, `>`) becomes `_`, and
/// so does an empty token (a missing value, such as `{phone_number_id}` of a kirim event, or
/// `a..b` in a value). A dot inside a value stays a dot: `{type}` = `message.received` adds
/// two tokens, which consumers can filter with `kirim.*.message.>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubjectTemplate {
    parts: Vec<Part>,
}

impl SubjectTemplate {
    /// Parses `text`; the error says what is wrong (without the key).
    pub fn parse(text: &str) -> Result<Self, String> {
        if text.is_empty() {
            return Err("must not be empty".to_owned());
        }
        let mut parts = Vec::new();
        let mut rest = text;
        while !rest.is_empty() {
            match rest.find(['{', '}']) {
                Some(at) if rest[at..].starts_with('}') => {
                    return Err("has a `}` without its `{`".to_owned())
                }
                Some(at) => {
                    if at > 0 {
                        parts.push(Part::Text(rest[..at].to_owned()));
                    }
                    let close = rest[at..]
                        .find('}')
                        .ok_or_else(|| "has a `{` without its `}`".to_owned())?;
                    let name = &rest[at + 1..at + close];
                    let field = Field::ALL
                        .iter()
                        .find(|(n, _)| *n == name)
                        .map(|(_, f)| *f)
                        .ok_or_else(|| {
                            format!(
                                "unknown placeholder `{{{}}}`; expected {{source}}, {{type}}, \
                                 {{event_id}} or {{phone_number_id}}",
                                name.escape_debug()
                            )
                        })?;
                    parts.push(Part::Field(field));
                    rest = &rest[at + close + 1..];
                }
                None => {
                    parts.push(Part::Text(rest.to_owned()));
                    rest = "";
                }
            }
        }
        for part in &parts {
            if let Part::Text(text) = part {
                if let Some(c) = text.chars().find(|&c| !is_token_char(c)) {
                    return Err(format!(
                        "has `{}`, which a subject cannot contain (no whitespace and no \
                         wildcard `*` or `>`)",
                        c.escape_debug()
                    ));
                }
            }
        }
        // An empty token in the fixed text (`kirim..x`, `.x`, `x.`) is an error; placeholders
        // stand for one non-empty token or more.
        let shape: String = parts
            .iter()
            .map(|part| match part {
                Part::Text(text) => text.as_str(),
                Part::Field(_) => "x",
            })
            .collect();
        if shape.split('.').any(str::is_empty) {
            return Err("has an empty token (a leading, trailing or double `.`)".to_owned());
        }
        Ok(SubjectTemplate { parts })
    }

    /// The subject of the event described by `meta` (see [`SubjectTemplate`] for the cleaning).
    pub fn render(&self, meta: &RecordMeta) -> String {
        let mut subject = String::new();
        for part in &self.parts {
            match part {
                Part::Text(text) => subject.push_str(text),
                Part::Field(field) => {
                    let value = field.value(meta).unwrap_or("");
                    let tokens: Vec<String> = value
                        .split('.')
                        .map(|token| {
                            if token.is_empty() {
                                "_".to_owned()
                            } else {
                                token
                                    .chars()
                                    .map(|c| if is_token_char(c) { c } else { '_' })
                                    .collect()
                            }
                        })
                        .collect();
                    subject.push_str(&tokens.join("."));
                }
            }
        }
        subject
    }

    /// The subject filter that covers every rendered subject: the fixed tokens before the
    /// first placeholder followed by `>` (`kirim.>` for `kirim.{source}.{type}`), or the
    /// subject itself when there is no placeholder. `None` when the template starts within its
    /// first token with a placeholder (the filter would be `>`, every subject).
    pub fn stream_filter(&self) -> Option<String> {
        let mut fixed = String::new();
        for part in &self.parts {
            match part {
                Part::Text(text) => fixed.push_str(text),
                Part::Field(_) => {
                    let cut = fixed.rfind('.')?;
                    return Some(format!("{}.>", &fixed[..cut]));
                }
            }
        }
        Some(fixed)
    }
}

/// Whether `c` may be in a subject token: printable, not a space, not a wildcard.
fn is_token_char(c: char) -> bool {
    !(c.is_whitespace() || c.is_control() || c == '*' || c == '>')
}

/// Validates the keys of a nats sink, in the order url, subject, stream, concurrency,
/// timeout_secs, then the credentials.
fn validate(keys: &mut KindKeys, table: &SinkTable<'_>) -> Result<NatsSinkConfig, ConfigError> {
    let base = table.base;
    let key = |name: &str| format!("{base}.{name}");
    let url = match keys.take::<String>(base, "url")? {
        Some(url) => validate_url(&key("url"), &url)?,
        None => {
            return Err(invalid(
                key("url"),
                format!("is required for kind = \"nats\" (the server, such as `{URL_EXAMPLE}`)"),
            ))
        }
    };
    let subject = match keys.take::<String>(base, "subject")? {
        Some(text) => SubjectTemplate::parse(&text).map_err(|e| invalid(key("subject"), e))?,
        None => {
            return Err(invalid(
                key("subject"),
                format!(
                    "is required for kind = \"nats\" (where events are published, such as \
                     `{SUBJECT_EXAMPLE}`)"
                ),
            ))
        }
    };
    let stream = keys.take::<String>(base, "stream")?;
    if let Some(stream) = &stream {
        validate_stream(&key("stream"), stream)?;
        if subject.stream_filter().is_none() {
            return Err(invalid(
                key("subject"),
                "must start with a fixed token (such as `kirim.`) when `stream` is set, so that \
                 the stream's subjects can cover it",
            ));
        }
        warn_about_a_shared_stream(table, stream);
    }
    let concurrency = check_range(
        &key("concurrency"),
        keys.take(base, "concurrency")?
            .unwrap_or(DEFAULT_CONCURRENCY),
        CONCURRENCY_RANGE,
        "",
    )?;
    let timeout = check_range(
        &key("timeout_secs"),
        keys.take(base, "timeout_secs")?
            .unwrap_or(DEFAULT_TIMEOUT_SECS),
        TIMEOUT_SECS_RANGE,
        " seconds",
    )?;
    let auth = validate_auth(keys, table)?;
    let ca_file = keys.take::<PathBuf>(base, "ca_file")?;
    if ca_file.is_some() && !url.starts_with("tls://") {
        return Err(invalid(
            key("ca_file"),
            "is for TLS: the URL must start with `tls://`",
        ));
    }
    Ok(NatsSinkConfig {
        url,
        subject,
        stream,
        concurrency,
        timeout: Duration::from_secs(timeout),
        auth,
        ca_file,
    })
}

/// Validates `token_env`, `creds_file` and `user` + `password_env`: at most one way to
/// authenticate, and a named environment variable that is set and not empty.
fn validate_auth(keys: &mut KindKeys, table: &SinkTable<'_>) -> Result<NatsAuth, ConfigError> {
    let base = table.base;
    let token_env = keys.take::<String>(base, "token_env")?;
    let creds_file = keys.take::<PathBuf>(base, "creds_file")?;
    let user = keys.take::<String>(base, "user")?;
    let password_env = keys.take::<String>(base, "password_env")?;
    let ways = [
        token_env.is_some(),
        creds_file.is_some(),
        user.is_some() || password_env.is_some(),
    ];
    if ways.iter().filter(|&&set| set).count() > 1 {
        return Err(invalid(
            base,
            "at most one of token_env, creds_file, user + password_env may be set",
        ));
    }
    let secret = |name: &str, var: String| {
        let key = format!("{base}.{name}");
        if var.is_empty() {
            return Err(invalid(key, "must name an environment variable"));
        }
        match (table.env)(&var) {
            Some(value) if !value.is_empty() => Ok(SecretString::new(value)),
            _ => Err(invalid(
                key,
                format!("`{}` is unset or empty", var.escape_debug()),
            )),
        }
    };
    Ok(match (token_env, creds_file, user, password_env) {
        (Some(var), ..) => NatsAuth::Token(secret("token_env", var)?),
        (_, Some(path), ..) => NatsAuth::CredsFile(path),
        (_, _, Some(user), Some(var)) => {
            if user.is_empty() || user.contains(char::is_control) {
                return Err(invalid(
                    format!("{base}.user"),
                    "must be a user name (not empty, no control characters)",
                ));
            }
            NatsAuth::UserPassword {
                user,
                password: secret("password_env", var)?,
            }
        }
        (_, _, Some(_), None) => {
            return Err(invalid(
                format!("{base}.password_env"),
                "is required with `user` (the environment variable holding the password)",
            ))
        }
        (_, _, None, Some(_)) => {
            return Err(invalid(
                format!("{base}.user"),
                "is required with `password_env`",
            ))
        }
        (None, None, None, None) => NatsAuth::None,
    })
}

/// Logs a warning when a `nats` sink before this one publishes into the same stream.
fn warn_about_a_shared_stream(table: &SinkTable<'_>, stream: &str) {
    for earlier in table.earlier {
        if let SinkKind::Nats(other) = &earlier.kind {
            if other.stream.as_deref() == Some(stream) {
                tracing::warn!(
                    sink = table.name,
                    other_sink = %earlier.name,
                    stream,
                    "two nats sinks publish into one stream: JetStream drops the second copy \
                     of every event as a duplicate (same Nats-Msg-Id)"
                );
            }
        }
    }
}

/// `creds_file` is read when the sink connects, not when the config is read: nothing to skip.
fn skip_missing_files(_keys: &mut KindKeys, _base: &str) -> Vec<NotChecked> {
    Vec::new()
}

/// Checks a server URL: `nats://` or `tls://`, a host, an optional port, nothing else. The
/// URL is never quoted.
fn validate_url(key: &str, text: &str) -> Result<String, ConfigError> {
    let Some((scheme, rest)) = text.split_once("://") else {
        return Err(invalid(
            key,
            format!(
                "must be a nats:// or tls:// URL such as `{URL_EXAMPLE}` (the value is not shown)"
            ),
        ));
    };
    if !scheme.eq_ignore_ascii_case("nats") && !scheme.eq_ignore_ascii_case("tls") {
        return Err(invalid(
            key,
            format!(
                "scheme `{}` is not supported; use nats:// (or tls:// for TLS)",
                scheme.escape_debug()
            ),
        ));
    }
    let authority = rest.strip_suffix('/').unwrap_or(rest);
    if authority.contains('@') {
        return Err(invalid(
            key,
            "must not contain a user name, password or token (the value is not shown); use \
             `token_env`, `creds_file` or `user` + `password_env`",
        ));
    }
    if authority.contains(['/', '?', '#', ',']) || authority.contains(char::is_whitespace) {
        return Err(invalid(
            key,
            "must be one server, `nats://host[:port]`, with no path (the value is not shown)",
        ));
    }
    let (host, port) = match authority.rsplit_once(':') {
        _ if authority.ends_with(']') => (authority, None),
        Some((host, port)) => (host, Some(port)),
        None => (authority, None),
    };
    if host.is_empty() || host == "[]" || (host.contains(':') && !host.starts_with('[')) {
        return Err(invalid(key, "must name a host"));
    }
    let port = match port {
        Some(port) => match port.parse::<u16>() {
            Ok(port) if port > 0 => port,
            _ => return Err(invalid(key, "the port must be between 1 and 65535")),
        },
        None => DEFAULT_PORT,
    };
    Ok(format!("{}://{host}:{port}", scheme.to_ascii_lowercase()))
}

/// Checks a JetStream stream name: letters, digits, `_` and `-`.
fn validate_stream(key: &str, name: &str) -> Result<(), ConfigError> {
    let ok = !name.is_empty()
        && name.len() <= MAX_STREAM_CHARS
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if ok {
        Ok(())
    } else {
        Err(invalid(
            key,
            format!(
                "must be 1 to {MAX_STREAM_CHARS} letters, digits, `_` or `-` (a JetStream \
                 stream name)"
            ),
        ))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::config::testing::*;
    use crate::config::Config;
    use crate::receive::envelope::Source;

    fn nats_sink(extra: &str) -> String {
        with_sinks(&format!(
            "[[sinks]]\nname = \"bus\"\nkind = \"nats\"\nurl = \"nats://127.0.0.1:4222\"\n\
             subject = \"kirim.{{source}}.{{type}}\"\n{extra}"
        ))
    }

    fn only_nats(config: &Config) -> &NatsSinkConfig {
        match &config.sinks[0].kind {
            SinkKind::Nats(nats) => nats,
            other => panic!("expected a nats sink, got {other:?}"),
        }
    }

    fn meta(source: Option<Source>, event_type: Option<&str>, phone: &[&str]) -> RecordMeta {
        RecordMeta {
            received_at_ms: 0,
            secret_id: "sec_A".to_owned(),
            headers: Vec::new(),
            keys: Vec::new(),
            shape: None,
            source,
            event_type: event_type.map(str::to_owned),
            event_id: Some("evt_1".to_owned()),
            phone_number_ids: phone.iter().map(|p| (*p).to_owned()).collect(),
            quarantine_reason: None,
        }
    }

    #[test]
    fn full_nats_sink_parses() {
        let env = |name: &str| (name == "NATS_TOKEN").then(|| "TOPSECRET".to_owned());
        let text = nats_sink(
            "stream = \"KIRIM\"\nconcurrency = 128\ntimeout_secs = 30\n\
             token_env = \"NATS_TOKEN\"\nevents = [\"message.*\"]\n",
        );
        let config = Config::from_toml_str_with(&text, &env).unwrap();
        let nats = only_nats(&config);
        assert_eq!(nats.url, "nats://127.0.0.1:4222");
        assert_eq!(nats.stream.as_deref(), Some("KIRIM"));
        assert_eq!(nats.concurrency, 128);
        assert_eq!(nats.timeout, Duration::from_secs(30));
        assert_eq!(nats.auth, NatsAuth::Token(SecretString::new("TOPSECRET")));
        assert_eq!(nats.subject.stream_filter().as_deref(), Some("kirim.>"));
        let shown = format!("{config:?}");
        assert!(!shown.contains("TOPSECRET"), "{shown}");
    }

    #[test]
    fn nats_sink_defaults() {
        let config = parse(&nats_sink("")).unwrap();
        let nats = only_nats(&config);
        assert_eq!(nats.stream, None);
        assert_eq!(nats.concurrency, 256);
        assert_eq!(nats.timeout, Duration::from_secs(10));
        assert_eq!(nats.auth, NatsAuth::None);
        let sink = crate::sinks::build(&config.sinks[0]);
        assert_eq!(crate::sinks::Sink::max_batch(&sink), 64);
        assert_eq!(crate::sinks::Sink::concurrency(&sink), 4);
        let config = parse(&nats_sink("concurrency = 200\n")).unwrap();
        let sink = crate::sinks::build(&config.sinks[0]);
        assert_eq!(crate::sinks::Sink::concurrency(&sink), 4);
        let config = parse(&nats_sink("concurrency = 8\n")).unwrap();
        let sink = crate::sinks::build(&config.sinks[0]);
        assert_eq!(crate::sinks::Sink::max_batch(&sink), 8);
        assert_eq!(crate::sinks::Sink::concurrency(&sink), 1);
    }

    #[test]
    fn nats_url_rules() {
        let with_url = |url: &str| {
            with_sinks(&format!(
                "[[sinks]]\nname = \"bus\"\nkind = \"nats\"\nurl = \"{url}\"\nsubject = \"k\"\n"
            ))
        };
        let err = parse_err(&with_sinks(
            "[[sinks]]\nname = \"bus\"\nkind = \"nats\"\nsubject = \"k\"\n",
        ));
        assert_invalid(&err, "sinks[0].url", "is required for kind = \"nats\"");
        for (url, fragment) in [
            ("127.0.0.1:4222", "must be a nats:// or tls:// URL"),
            ("http://127.0.0.1:4222", "scheme `http` is not supported"),
            (
                "nats://user:TOPSECRET@127.0.0.1",
                "user name, password or token",
            ),
            ("nats://127.0.0.1:4222/x", "with no path"),
            ("nats://a:1,b:2", "must be one server"),
            ("nats://", "must name a host"),
            ("nats://:4222", "must name a host"),
            ("nats://127.0.0.1:0", "port must be between 1 and 65535"),
            ("nats://127.0.0.1:65536", "port must be between 1 and 65535"),
        ] {
            let err = parse_err(&with_url(url));
            assert_invalid(&err, "sinks[0].url", fragment);
            assert!(!err.to_string().contains("TOPSECRET"), "{err}");
        }
        for (url, normal) in [
            ("nats://127.0.0.1:4222", "nats://127.0.0.1:4222"),
            ("nats://nats.internal", "nats://nats.internal:4222"),
            ("NATS://nats.internal:5000/", "nats://nats.internal:5000"),
            ("tls://nats.example.com", "tls://nats.example.com:4222"),
            ("nats://[::1]:4222", "nats://[::1]:4222"),
            ("nats://[::1]", "nats://[::1]:4222"),
        ] {
            let config = parse(&with_url(url)).unwrap();
            assert_eq!(only_nats(&config).url, normal, "{url}");
        }
    }

    #[test]
    fn subject_template_rules() {
        let with_subject = |subject: &str| {
            with_sinks(&format!(
                "[[sinks]]\nname = \"bus\"\nkind = \"nats\"\nurl = \"nats://127.0.0.1\"\n\
                 subject = \"{subject}\"\n"
            ))
        };
        let err = parse_err(&with_sinks(
            "[[sinks]]\nname = \"bus\"\nkind = \"nats\"\nurl = \"nats://127.0.0.1\"\n",
        ));
        assert_invalid(&err, "sinks[0].subject", "is required for kind = \"nats\"");
        for (subject, fragment) in [
            ("", "must not be empty"),
            ("kirim.{kind}", "unknown placeholder `{kind}`"),
            ("kirim.{source", "a `{` without its `}`"),
            ("kirim.source}", "a `}` without its `{`"),
            ("kirim.*", "`*`, which a subject cannot contain"),
            ("kirim.>", "`>`, which a subject cannot contain"),
            ("kirim events", "` `, which a subject cannot contain"),
            ("kirim..{type}", "empty token"),
            (".kirim", "empty token"),
            ("kirim.{type}.", "empty token"),
        ] {
            let err = parse_err(&with_subject(subject));
            assert_invalid(&err, "sinks[0].subject", fragment);
        }
        let err = parse_err(&with_subject("{source}.x\"\nstream = \"S"));
        assert_invalid(&err, "sinks[0].subject", "must start with a fixed token");
        let err = parse_err(&with_subject("k\"\nstream = \"a.b"));
        assert_invalid(&err, "sinks[0].stream", "a JetStream stream name");

        let template = |text: &str| SubjectTemplate::parse(text).unwrap();
        assert_eq!(
            template("kirim.{source}.{type}").stream_filter().as_deref(),
            Some("kirim.>")
        );
        assert_eq!(
            template("a.b{type}").stream_filter().as_deref(),
            Some("a.>")
        );
        assert_eq!(template("a.b").stream_filter().as_deref(), Some("a.b"));
        assert_eq!(template("{type}.a").stream_filter(), None);
    }

    #[test]
    fn subjects_render_with_every_placeholder_and_stay_valid() {
        let t =
            SubjectTemplate::parse("kirim.{source}.{type}.{event_id}.{phone_number_id}").unwrap();
        let meta_event = meta(Some(Source::Meta), Some("messages"), &["1065", "2"]);
        assert_eq!(t.render(&meta_event), "kirim.meta.messages.evt_1.1065");
        let kirim = meta(Some(Source::Kirim), Some("message.received"), &[]);
        assert_eq!(t.render(&kirim), "kirim.kirim.message.received.evt_1._");
        let odd = meta(None, Some(" a b*.>..c\u{7}"), &[]);
        assert_eq!(t.render(&odd), "kirim._._a_b_._._.c_.evt_1._");
        let empty = meta(None, Some(""), &[]);
        assert_eq!(t.render(&empty), "kirim._._.evt_1._");
    }

    #[test]
    fn nats_ranges_and_credentials() {
        for (line, key, fragment) in [
            (
                "concurrency = 0",
                "sinks[0].concurrency",
                "between 1 and 4096, got 0",
            ),
            ("concurrency = 4097", "sinks[0].concurrency", "got 4097"),
            (
                "timeout_secs = 0",
                "sinks[0].timeout_secs",
                "between 1 and 300 seconds",
            ),
            ("timeout_secs = 301", "sinks[0].timeout_secs", "got 301"),
            (
                "token_env = \"\"",
                "sinks[0].token_env",
                "must name an environment variable",
            ),
            (
                "token_env = \"NATS_TOKEN\"",
                "sinks[0].token_env",
                "`NATS_TOKEN` is unset or empty",
            ),
            (
                "token_env = \"NATS_TOKEN\"\ncreds_file = \"/x.creds\"",
                "sinks[0]",
                "at most one of token_env, creds_file",
            ),
            (
                "creds_file = \"/x.creds\"\nuser = \"u\"\npassword_env = \"P\"",
                "sinks[0]",
                "at most one of token_env, creds_file, user + password_env",
            ),
            (
                "user = \"kirimhook\"",
                "sinks[0].password_env",
                "is required with `user`",
            ),
            (
                "password_env = \"NATS_PASSWORD\"",
                "sinks[0].user",
                "is required with `password_env`",
            ),
            (
                "user = \"kirimhook\"\npassword_env = \"NATS_PASSWORD\"",
                "sinks[0].password_env",
                "`NATS_PASSWORD` is unset or empty",
            ),
        ] {
            let err = parse_err(&nats_sink(&format!("{line}\n")));
            assert_invalid(&err, key, fragment);
        }
        let config = parse(&nats_sink("creds_file = \"/etc/kirimhook/nats.creds\"\n")).unwrap();
        assert_eq!(
            only_nats(&config).auth,
            NatsAuth::CredsFile(PathBuf::from("/etc/kirimhook/nats.creds"))
        );

        let env = |name: &str| (name == "NATS_PASSWORD").then(|| "hunter2-secret".to_owned());
        let text = nats_sink("user = \"kirimhook\"\npassword_env = \"NATS_PASSWORD\"\n");
        let config = Config::from_toml_str_with(&text, &env).unwrap();
        let auth = &only_nats(&config).auth;
        assert_eq!(
            auth,
            &NatsAuth::UserPassword {
                user: "kirimhook".to_owned(),
                password: SecretString::new("hunter2-secret".to_owned()),
            }
        );
        assert!(!format!("{auth:?}").contains("hunter2"), "{auth:?}");
        let err = Config::from_toml_str_with(
            &nats_sink("user = \"\"\npassword_env = \"NATS_PASSWORD\"\n"),
            &env,
        )
        .unwrap_err();
        assert_invalid(&err, "sinks[0].user", "must be a user name");

        let config = parse(&with_sinks(
            "[[sinks]]\nname = \"bus\"\nkind = \"nats\"\nurl = \"tls://nats.internal\"\n\
             subject = \"kirim.{type}\"\nca_file = \"/etc/kirimhook/nats-ca.pem\"\n",
        ))
        .unwrap();
        assert_eq!(
            only_nats(&config).ca_file.as_deref(),
            Some(std::path::Path::new("/etc/kirimhook/nats-ca.pem"))
        );
        let err = parse_err(&nats_sink("ca_file = \"/etc/kirimhook/nats-ca.pem\"\n"));
        assert_invalid(&err, "sinks[0].ca_file", "the URL must start with `tls://`");
    }

    #[test]
    fn nats_only_keys_are_refused_on_http_and_shared_keys_are_not() {
        for (line, key) in [
            ("subject = \"k\"", "sinks[0].subject"),
            ("stream = \"S\"", "sinks[0].stream"),
            ("token_env = \"T\"", "sinks[0].token_env"),
            ("creds_file = \"/x\"", "sinks[0].creds_file"),
            ("password_env = \"P\"", "sinks[0].password_env"),
        ] {
            let err = parse_err(&with_sinks(&format!(
                "[[sinks]]\nname = \"app\"\nkind = \"http\"\nurl = \"http://127.0.0.1:9/\"\n{line}\n"
            )));
            assert_invalid(&err, key, "kind = \"nats\"");
        }
        let err = parse_err(&nats_sink("secret = \"whsec_x\"\n"));
        assert_invalid(&err, "sinks[0].secret", "only for kind = \"http\"");
    }

    /// The commented-out nats sink at the end of the example parses, uncommented, with the
    /// values it documents.
    #[test]
    fn example_nats_sink_parses_when_uncommented() {
        let block = crate::sinks::config::example_block("nats");
        let config = parse(&with_sinks(&block)).unwrap();
        let nats = only_nats(&config);
        assert_eq!(config.sinks[0].name, "bus");
        assert_eq!(nats.url, "nats://127.0.0.1:4222");
        assert_eq!(nats.stream.as_deref(), Some("KIRIM"));
        assert_eq!(nats.subject.stream_filter().as_deref(), Some("kirim.>"));
        assert_eq!(nats.concurrency, 256);
        assert_eq!(nats.timeout, Duration::from_secs(10));
        assert_eq!(nats.auth, NatsAuth::None);
    }

    #[test]
    fn two_sinks_may_share_a_stream() {
        let text = nats_sink(
            "stream = \"KIRIM\"\n[[sinks]]\nname = \"bus2\"\nkind = \"nats\"\n\
             url = \"nats://127.0.0.1\"\nsubject = \"kirim.copy.{type}\"\nstream = \"KIRIM\"\n",
        );
        let config = parse(&text).unwrap();
        assert_eq!(config.sinks.len(), 2);
    }
}
