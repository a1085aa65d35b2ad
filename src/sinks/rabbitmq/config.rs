//! The keys of a `rabbitmq` sink (`url` / `url_env` / `url_file`, `exchange`, `declare`,
//! `routing_key`, `concurrency`, `timeout_secs`) and their validation into a
//! [`RabbitMqSinkConfig`], with the routing-key [`Template`] checked here, once, so that a
//! delivery only fills it in.
//!
//! The keys every kind takes are checked by [`crate::config`]; errors name the full key
//! (`sinks[0].routing_key`). The URL may hold a password: it is kept in a [`SecretString`] and
//! never quoted in an error. No connection is opened here and no host is resolved; the only
//! I/O is reading a `url_file`.

use std::ops::RangeInclusive;
use std::path::PathBuf;
use std::time::Duration;

use crate::config::{
    check_range, file_absent, invalid, ConfigError, NotChecked, SecretString, NOT_PRESENT,
};
use crate::sinks::config::{Kind, KindKey, KindKeys, SinkTable};
use crate::sinks::SinkKind;
use crate::store::StoredEvent;

const DEFAULT_EXCHANGE: &str = "kirim";
const DEFAULT_ROUTING_KEY: &str = "{source}.{type}";
const DEFAULT_CONCURRENCY: usize = 256;
const CONCURRENCY_RANGE: RangeInclusive<usize> = 1..=1024;
const DEFAULT_TIMEOUT_SECS: u64 = 10;
const TIMEOUT_SECS_RANGE: RangeInclusive<u64> = 1..=300;
/// AMQP 0-9-1 short strings (exchange names, routing keys) hold at most 255 bytes.
pub const MAX_SHORT_STRING_BYTES: usize = 255;
const AMQP_SCHEMES: [&str; 2] = ["amqp://", "amqps://"];
const URL_EXAMPLE: &str = "amqp://kirimhook@rabbitmq.internal:5672/%2f";
/// What a `url_file` that `check-config --skip-missing-secrets` did not find is replaced
/// with, so that the rest of the config can be checked; never connected to.
const UNCHECKED_AMQP_URL: &str = "amqp://not-checked.invalid/%2f";

/// `kind = "rabbitmq"` and its keys.
pub const KIND: Kind = Kind {
    name: "rabbitmq",
    keys: &[
        KindKey::of::<String>("url"),
        KindKey::of::<String>("url_env"),
        KindKey::of::<PathBuf>("url_file"),
        KindKey::of::<String>("exchange"),
        KindKey::of::<bool>("declare"),
        KindKey::of::<String>("routing_key"),
        KindKey::of::<usize>("concurrency"),
        KindKey::of::<u64>("timeout_secs"),
        KindKey::of::<PathBuf>("ca_file"),
    ],
    validate_keys: |keys, table| validate(keys, table).map(SinkKind::RabbitMq),
    skip_missing_files,
};

/// The settings of a `rabbitmq` sink. `Debug` never shows the URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RabbitMqSinkConfig {
    /// Broker URL, `amqp://` or `amqps://` (TLS with the webpki roots), from exactly one of
    /// `url`, `url_env`, `url_file`. May hold a password.
    pub url: SecretString,
    /// Exchange the events are published to, `exchange`. Default `kirim`.
    pub exchange: String,
    /// Whether the exchange is declared (topic, durable) when the sink connects, `declare`.
    /// Default true; with false it must already exist.
    pub declare: bool,
    /// Routing key of each event, `routing_key`. Default `{source}.{type}`.
    pub routing_key: Template,
    /// Publishes in flight at once, `concurrency`, sent in batches of up to 64. Default 256;
    /// 1..=1024.
    pub concurrency: usize,
    /// Time allowed to connect, and for the broker's confirm of one publish (and, while the
    /// sink publishes one at a time, to wait for a turn), `timeout_secs`. Default 10 s;
    /// 1..=300 s.
    pub timeout: Duration,
    /// `ca_file`: PEM CA certificates trusted for `amqps://` besides the webpki roots (a
    /// private CA), read when the sink connects.
    pub ca_file: Option<PathBuf>,
}

/// Validates the keys of a rabbitmq sink, in the order url, exchange, declare, routing_key,
/// concurrency, timeout_secs, ca_file.
fn validate(keys: &mut KindKeys, table: &SinkTable<'_>) -> Result<RabbitMqSinkConfig, ConfigError> {
    let base = table.base;
    let url =
        crate::sinks::config::secret_url(keys, table, "rabbitmq", URL_EXAMPLE, check_amqp_url)?;
    let exchange: String = keys
        .take(base, "exchange")?
        .unwrap_or_else(|| DEFAULT_EXCHANGE.to_owned());
    check_exchange(&format!("{base}.exchange"), &exchange)?;
    let declare = keys.take(base, "declare")?.unwrap_or(true);
    let routing_key: String = keys
        .take(base, "routing_key")?
        .unwrap_or_else(|| DEFAULT_ROUTING_KEY.to_owned());
    let routing_key = Template::parse(&routing_key)
        .map_err(|message| invalid(format!("{base}.routing_key"), message))?;
    let concurrency = check_range(
        &format!("{base}.concurrency"),
        keys.take(base, "concurrency")?
            .unwrap_or(DEFAULT_CONCURRENCY),
        CONCURRENCY_RANGE,
        "",
    )?;
    let timeout = check_range(
        &format!("{base}.timeout_secs"),
        keys.take(base, "timeout_secs")?
            .unwrap_or(DEFAULT_TIMEOUT_SECS),
        TIMEOUT_SECS_RANGE,
        " seconds",
    )?;
    let ca_file = keys.take::<PathBuf>(base, "ca_file")?;
    if ca_file.is_some() && !url.expose().starts_with("amqps://") {
        return Err(invalid(
            format!("{base}.ca_file"),
            "is for TLS: the URL must start with `amqps://`",
        ));
    }
    Ok(RabbitMqSinkConfig {
        url,
        exchange,
        declare,
        routing_key,
        concurrency,
        timeout: Duration::from_secs(timeout),
        ca_file,
    })
}

/// A `url_file` that does not exist (when it is the only URL source) becomes a placeholder
/// `url`, listed as not checked.
fn skip_missing_files(keys: &mut KindKeys, base: &str) -> Vec<NotChecked> {
    if keys.contains("url") || keys.contains("url_env") {
        return Vec::new();
    }
    let path = match keys.get("url_file") {
        Some(toml::Value::String(path)) => PathBuf::from(path),
        _ => return Vec::new(),
    };
    if !file_absent(&path) {
        return Vec::new();
    }
    keys.remove("url_file");
    keys.insert("url", toml::Value::String(UNCHECKED_AMQP_URL.to_owned()));
    vec![NotChecked {
        key: format!("{base}.url_file"),
        path,
        reason: NOT_PRESENT,
    }]
}

/// An AMQP URL: `amqp://` or `amqps://`, no whitespace or control characters, and one the
/// client can read. `key` is the key that supplied it; the value is never shown.
fn check_amqp_url(value: &str, key: &str) -> Result<(), ConfigError> {
    if !AMQP_SCHEMES.iter().any(|s| value.starts_with(s)) {
        return Err(invalid(
            key,
            format!(
                "must start with `amqp://` or `amqps://`, such as `{URL_EXAMPLE}` \
                 (the value is not shown)"
            ),
        ));
    }
    if value.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(invalid(
            key,
            "the URL contains whitespace or control characters; look for stray spaces or an \
             extra line ending (the value is not shown)",
        ));
    }
    // The client's own parser (its message is not quoted: it may repeat parts of the URL).
    if value.parse::<lapin::uri::AMQPUri>().is_err() {
        return Err(invalid(
            key,
            format!(
                "is not a valid AMQP URL; expected one such as `{URL_EXAMPLE}` \
                 (the value is not shown)"
            ),
        ));
    }
    Ok(())
}

/// An exchange name as RabbitMQ takes it: 1 to 255 bytes of letters, digits, `-`, `_`, `.`
/// and `:` (the default exchange, `""`, routes by queue name and is not offered).
fn check_exchange(key: &str, name: &str) -> Result<(), ConfigError> {
    if name.is_empty() {
        return Err(invalid(
            key,
            "must not be empty (the default exchange is not supported; name a topic exchange \
             such as `kirim`)",
        ));
    }
    if name.len() > MAX_SHORT_STRING_BYTES {
        return Err(invalid(
            key,
            format!(
                "must be at most {MAX_SHORT_STRING_BYTES} bytes, got {}",
                name.len()
            ),
        ));
    }
    if let Some(bad) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':')))
    {
        return Err(invalid(
            key,
            format!("may hold only letters, digits, `-`, `_`, `.` and `:`, found {bad:?}"),
        ));
    }
    Ok(())
}

/// A value a routing key can be filled with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field {
    /// `{source}`: `kirim` or `meta`.
    Source,
    /// `{type}`: the event type, such as `message.received`.
    Type,
    /// `{event_id}`: the event id.
    EventId,
    /// `{phone_number_id}`: the first Meta `phone_number_id` (empty for kirim events).
    PhoneNumberId,
}

impl Field {
    const ALL: [(&'static str, Field); 4] = [
        ("source", Field::Source),
        ("type", Field::Type),
        ("event_id", Field::EventId),
        ("phone_number_id", Field::PhoneNumberId),
    ];

    /// This field's value for `event` (empty when the event has none).
    fn value(self, event: &StoredEvent) -> &str {
        let meta = &event.meta;
        match self {
            Field::Source => meta.source.map(|s| s.as_str()).unwrap_or(""),
            Field::Type => meta.event_type.as_deref().unwrap_or(""),
            Field::EventId => meta.event_id.as_deref().unwrap_or(""),
            Field::PhoneNumberId => meta
                .phone_number_ids
                .first()
                .map(String::as_str)
                .unwrap_or(""),
        }
    }
}

/// One piece of a [`Template`].
#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    Text(String),
    Field(Field),
}

/// A routing-key template such as `{source}.{type}`: text and `{placeholder}`s, checked when
/// the config is read. Braces are not allowed anywhere else.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    pieces: Vec<Piece>,
}

impl Template {
    /// Parses `text`; the error says what is wrong (without the key, which the caller adds).
    pub fn parse(text: &str) -> Result<Template, String> {
        let known = || {
            Field::ALL
                .iter()
                .map(|(name, _)| format!("{{{name}}}"))
                .collect::<Vec<_>>()
                .join(" ")
        };
        let mut pieces = Vec::new();
        let mut rest = text;
        let mut literal_bytes = 0;
        while !rest.is_empty() {
            let brace = rest.find(['{', '}']).unwrap_or(rest.len());
            if brace > 0 {
                literal_bytes += brace;
                pieces.push(Piece::Text(rest[..brace].to_owned()));
            }
            rest = &rest[brace..];
            if rest.starts_with('}') {
                return Err(format!(
                    "has a `}}` without its `{{`; placeholders: {}",
                    known()
                ));
            }
            if rest.is_empty() {
                break;
            }
            let end = rest
                .find('}')
                .ok_or_else(|| format!("has a `{{` without its `}}`; placeholders: {}", known()))?;
            let name = &rest[1..end];
            let field = Field::ALL
                .iter()
                .find(|(known, _)| *known == name)
                .map(|(_, field)| *field)
                .ok_or_else(|| {
                    format!(
                        "unknown placeholder `{{{name}}}`; known placeholders: {}",
                        known()
                    )
                })?;
            pieces.push(Piece::Field(field));
            rest = &rest[end + 1..];
        }
        if literal_bytes > MAX_SHORT_STRING_BYTES {
            return Err(format!(
                "must be at most {MAX_SHORT_STRING_BYTES} bytes (an AMQP routing key), \
                 got {literal_bytes} without its placeholders"
            ));
        }
        Ok(Template { pieces })
    }

    /// The routing key of `event`. A placeholder whose value the event lacks is left empty.
    pub fn render(&self, event: &StoredEvent) -> String {
        let mut out = String::new();
        for piece in &self.pieces {
            match piece {
                Piece::Text(text) => out.push_str(text),
                Piece::Field(field) => out.push_str(field.value(event)),
            }
        }
        out
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::time::Duration;

    use crate::config::testing::*;
    use crate::config::{Config, SecretString, SinkKind};
    use crate::receive::envelope::Source;
    use crate::store::model::RecordMeta;
    use crate::store::StoredEvent;

    use super::{RabbitMqSinkConfig, Template};

    const URL: &str = "amqp://guest:TOPSECRET@127.0.0.1:5672/%2f";

    /// The commented-out RabbitMQ sink of the example, uncommented (the first `#` and the
    /// space after it removed from each line), parses with the values it documents.
    #[test]
    fn example_rabbitmq_sink_parses_when_uncommented() {
        let text = format!(
            "{}\n{}",
            crate::sinks::config::example_head(),
            crate::sinks::config::example_block("rabbitmq")
        );
        let env = |name: &str| (name == "KIRIMHOOK_AMQP_URL").then(|| URL.to_owned());
        let config = Config::from_toml_str_with(&text, &env).unwrap();
        assert_eq!(config.sinks.len(), 2);
        let sink = &config.sinks[1];
        assert_eq!(sink.name, "bus");
        let SinkKind::RabbitMq(rabbit) = &sink.kind else {
            panic!("expected a rabbitmq sink, got {sink:?}");
        };
        let defaults = parse(&with_url("")).unwrap();
        assert_eq!(
            rabbit,
            only_rabbit(&defaults),
            "the example shows the defaults"
        );
        assert_eq!(
            sink.filter,
            crate::receive::route::Filter::new(Some(vec!["message.*".to_owned()]), None, None)
        );
    }

    fn rabbit_sink(lines: &str) -> String {
        with_sinks(&format!(
            "[[sinks]]\nname = \"bus\"\nkind = \"rabbitmq\"\n{lines}\n"
        ))
    }

    fn with_url(extra: &str) -> String {
        rabbit_sink(&format!("url = \"{URL}\"\n{extra}"))
    }

    fn only_rabbit(config: &Config) -> &RabbitMqSinkConfig {
        match &config.sinks[0].kind {
            SinkKind::RabbitMq(rabbit) => rabbit,
            other => panic!("expected a rabbitmq sink, got {other:?}"),
        }
    }

    #[test]
    fn ca_file_is_for_amqps_only() {
        let err = parse_err(&with_url("ca_file = \"/etc/kirimhook/amqp-ca.pem\"\n"));
        assert_invalid(
            &err,
            "sinks[0].ca_file",
            "the URL must start with `amqps://`",
        );
        let config = parse(&with_sinks(
            "[[sinks]]\nname = \"amqp\"\nkind = \"rabbitmq\"\n\
             url = \"amqps://guest:guest@mq.internal:5671/%2f\"\n\
             ca_file = \"/etc/kirimhook/amqp-ca.pem\"\n",
        ))
        .unwrap();
        assert_eq!(
            only_rabbit(&config).ca_file.as_deref(),
            Some(std::path::Path::new("/etc/kirimhook/amqp-ca.pem"))
        );
    }

    #[test]
    fn defaults() {
        let config = parse(&with_url("")).unwrap();
        let rabbit = only_rabbit(&config);
        assert_eq!(
            rabbit,
            &RabbitMqSinkConfig {
                url: SecretString::new(URL),
                exchange: "kirim".to_owned(),
                declare: true,
                routing_key: Template::parse("{source}.{type}").unwrap(),
                concurrency: 256,
                timeout: Duration::from_secs(10),
                ca_file: None,
            }
        );
        assert_eq!(
            config.sinks[0].kind.attempt_timeout(),
            Some(Duration::from_secs(30))
        );
        let shown = format!("{config:?}");
        assert!(!shown.contains("TOPSECRET"), "{shown}");
    }

    #[test]
    fn every_key() {
        let config = parse(&rabbit_sink(
            "url = \"amqps://u:p@rabbit.internal:5671/kirim\"\nexchange = \"kirim.events-2:x\"\n\
             declare = false\nrouting_key = \"wa.{source}.{type}.{phone_number_id}.{event_id}\"\n\
             concurrency = 1024\ntimeout_secs = 300\nevents = [\"message.*\"]\n",
        ))
        .unwrap();
        let rabbit = only_rabbit(&config);
        assert_eq!(
            rabbit.url.expose(),
            "amqps://u:p@rabbit.internal:5671/kirim"
        );
        assert_eq!(rabbit.exchange, "kirim.events-2:x");
        assert!(!rabbit.declare);
        assert_eq!(rabbit.concurrency, 1024);
        assert_eq!(rabbit.timeout, Duration::from_secs(300));
        assert_eq!(
            rabbit.routing_key.render(&event(Some("123"))),
            "wa.meta.message.received.123.evt_1"
        );
        let config = parse(&with_url("concurrency = 1\ntimeout_secs = 1\n")).unwrap();
        assert_eq!(only_rabbit(&config).concurrency, 1);
        assert_eq!(only_rabbit(&config).timeout, Duration::from_secs(1));
    }

    #[test]
    fn url_sources_env_and_file() {
        let env = |name: &str| (name == "AMQP_URL").then(|| URL.to_owned());
        let config =
            Config::from_toml_str_with(&rabbit_sink("url_env = \"AMQP_URL\""), &env).unwrap();
        assert_eq!(only_rabbit(&config).url.expose(), URL);

        let file = temp_file(format!("{URL}\n").as_bytes());
        let config = parse(&rabbit_sink(&format!(
            "url_file = {}",
            toml_path(file.path())
        )))
        .unwrap();
        assert_eq!(only_rabbit(&config).url.expose(), URL);

        let err = parse_err(&rabbit_sink("url_env = \"AMQP_URL\""));
        assert_invalid(&err, "sinks[0].url_env", "`AMQP_URL` is unset or empty");
        let err = parse_err(&rabbit_sink("url_file = ''"));
        assert_invalid(&err, "sinks[0].url_file", "must name a file");
    }

    #[test]
    fn url_rules_never_show_the_value() {
        let err = parse_err(&rabbit_sink(""));
        assert_invalid(
            &err,
            "sinks[0].url",
            "is required for kind = \"rabbitmq\": set exactly one of url, url_env, url_file",
        );
        let err = parse_err(&rabbit_sink(&format!(
            "url = \"{URL}\"\nurl_env = \"AMQP_URL\""
        )));
        assert_invalid(
            &err,
            "sinks[0]",
            "exactly one of url, url_env, url_file must be set (found: url, url_env)",
        );
        for (bad, fragment) in [
            (
                "http://guest:TOPSECRET@127.0.0.1/",
                "must start with `amqp://` or `amqps://`",
            ),
            (
                "amqp://guest:TOPSECRET@127.0.0.1:5672/%2f ",
                "whitespace or control characters",
            ),
            (
                "amqp://guest:TOPSECRET@127.0.0.1:99999999/%2f",
                "is not a valid AMQP URL",
            ),
        ] {
            let err = parse_err(&rabbit_sink(&format!("url = \"{bad}\"")));
            assert_invalid(&err, "sinks[0].url", fragment);
            assert!(!err.to_string().contains("TOPSECRET"), "{err}");
            assert!(!format!("{err:?}").contains("TOPSECRET"), "{err:?}");
        }
        let env = |_: &str| Some("redis://:TOPSECRET@h/0".to_owned());
        let err =
            Config::from_toml_str_with(&rabbit_sink("url_env = \"AMQP_URL\""), &env).unwrap_err();
        assert_invalid(&err, "sinks[0].url_env", "must start with `amqp://`");
        assert!(!err.to_string().contains("TOPSECRET"), "{err}");
    }

    #[test]
    fn exchange_rules() {
        for (value, fragment) in [
            ("", "must not be empty"),
            ("kirim events", "found ' '"),
            ("kirim/x", "found '/'"),
        ] {
            let err = parse_err(&with_url(&format!("exchange = \"{value}\"")));
            assert_invalid(&err, "sinks[0].exchange", fragment);
        }
        let long = "x".repeat(256);
        let err = parse_err(&with_url(&format!("exchange = \"{long}\"")));
        assert_invalid(&err, "sinks[0].exchange", "at most 255 bytes, got 256");
        let err = parse_err(&with_url("declare = \"yes\""));
        assert_invalid(&err, "sinks[0].declare", "expected a boolean");
    }

    #[test]
    fn routing_key_rules() {
        for (value, fragment) in [
            ("{source}.{kind}", "unknown placeholder `{kind}`; known placeholders: {source} {type} {event_id} {phone_number_id}"),
            ("{source", "has a `{` without its `}`"),
            ("source}", "has a `}` without its `{`"),
            ("{}", "unknown placeholder `{}`"),
            ("{{source}}", "unknown placeholder `{{source}`"),
        ] {
            let err = parse_err(&with_url(&format!("routing_key = \"{value}\"")));
            assert_invalid(&err, "sinks[0].routing_key", fragment);
        }
        let long = "x".repeat(256);
        let err = parse_err(&with_url(&format!("routing_key = \"{long}\"")));
        assert_invalid(&err, "sinks[0].routing_key", "at most 255 bytes");
    }

    #[test]
    fn ranges() {
        for (line, key, fragment) in [
            (
                "concurrency = 0",
                "sinks[0].concurrency",
                "between 1 and 1024, got 0",
            ),
            ("concurrency = 1025", "sinks[0].concurrency", "got 1025"),
            (
                "timeout_secs = 0",
                "sinks[0].timeout_secs",
                "between 1 and 300 seconds, got 0",
            ),
            ("timeout_secs = 301", "sinks[0].timeout_secs", "got 301"),
        ] {
            let err = parse_err(&with_url(line));
            assert_invalid(&err, key, fragment);
        }
    }

    #[test]
    fn rabbitmq_keys_are_refused_on_other_kinds() {
        for (line, key) in [
            ("url_env = \"X\"", "sinks[0].url_env"),
            ("exchange = \"kirim\"", "sinks[0].exchange"),
            ("declare = true", "sinks[0].declare"),
            ("routing_key = \"{type}\"", "sinks[0].routing_key"),
        ] {
            let err = parse_err(&with_sinks(&format!(
                "[[sinks]]\nname = \"out\"\nkind = \"stdout\"\n{line}\n"
            )));
            assert_invalid(&err, key, "kind = \"rabbitmq\"");
        }
        // A key two kinds share names both.
        let err = parse_err(&with_sinks(
            "[[sinks]]\nname = \"out\"\nkind = \"stdout\"\nconcurrency = 2\n",
        ));
        assert_invalid(
            &err,
            "sinks[0].concurrency",
            "only for kind = \"http\" or kind = \"redis_stream\" or kind = \"nats\" or kind = \"rabbitmq\"",
        );
        // And the http sink refuses the rabbitmq keys.
        let err = parse_err(&with_sinks(
            "[[sinks]]\nname = \"app\"\nkind = \"http\"\nurl = \"http://127.0.0.1:9/\"\n\
             exchange = \"kirim\"\n",
        ));
        assert_invalid(&err, "sinks[0].exchange", "only for kind = \"rabbitmq\"");
    }

    fn event(phone: Option<&str>) -> StoredEvent {
        StoredEvent {
            seq: 1,
            meta: RecordMeta {
                received_at_ms: 0,
                secret_id: "sec_A".to_owned(),
                headers: Vec::new(),
                keys: Vec::new(),
                shape: None,
                source: Some(if phone.is_some() {
                    Source::Meta
                } else {
                    Source::Kirim
                }),
                event_type: Some("message.received".to_owned()),
                event_id: Some("evt_1".to_owned()),
                phone_number_ids: phone.into_iter().map(str::to_owned).collect(),
                quarantine_reason: None,
            },
            body: b"{}".to_vec(),
        }
    }

    #[test]
    fn templates_render_every_placeholder() {
        let template =
            Template::parse("kirim.{source}.{type}/{event_id}:{phone_number_id}").unwrap();
        assert_eq!(
            template.render(&event(Some("1065"))),
            "kirim.meta.message.received/evt_1:1065"
        );
        assert_eq!(
            template.render(&event(None)),
            "kirim.kirim.message.received/evt_1:"
        );
        assert_eq!(Template::parse("").unwrap().render(&event(None)), "");
        assert_eq!(
            Template::parse("fixed").unwrap().render(&event(None)),
            "fixed"
        );
        let mut bare = event(None);
        bare.meta.source = None;
        bare.meta.event_type = None;
        assert_eq!(
            Template::parse("{source}.{type}").unwrap().render(&bare),
            "."
        );
    }
}
