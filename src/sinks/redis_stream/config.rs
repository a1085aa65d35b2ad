//! The keys of a `redis_stream` sink (`url` / `url_env` / `url_file`, `stream`, `max_len`,
//! `dedupe_ttl_secs`, `concurrency`, `ca_file`) and their validation into a [`RedisStreamConfig`].
//!
//! The keys every kind takes are checked by [`crate::config`]; errors name the full key
//! (`sinks[0].stream`). The URL comes from exactly one of `url`, `url_env`, `url_file` (the
//! rules of `[store]`'s PostgreSQL URL); it may hold a password, so it is kept in a
//! [`SecretString`] and never quoted in an error. The URL is parsed here (by the client
//! library, which does no I/O for it); nothing is connected to. The only I/O is reading a
//! `url_file`.

use std::ops::RangeInclusive;
use std::path::PathBuf;
use std::time::Duration;

use crate::config::{
    check_range, file_absent, invalid, ConfigError, NotChecked, SecretString, NOT_PRESENT,
};
use crate::sinks::config::{Kind, KindKey, KindKeys, SinkTable};
use crate::sinks::SinkKind;

const DEFAULT_MAX_LEN: u64 = 1_000_000;
/// Redis takes MAXLEN as a signed 64-bit count.
const MAX_LEN_RANGE: RangeInclusive<u64> = 0..=i64::MAX as u64;
/// 48 hours: longer than the 38 hours a sender may retry a delivery (spec 9.3).
const DEFAULT_DEDUPE_TTL_SECS: u64 = 172_800;
const DEDUPE_TTL_SECS_RANGE: RangeInclusive<u64> = 1..=31_536_000;
const DEFAULT_CONCURRENCY: usize = 256;
const CONCURRENCY_RANGE: RangeInclusive<usize> = 1..=1024;
/// Longest stream key accepted (the dedupe markers add `:dedupe:<key>` to it).
const STREAM_MAX_BYTES: usize = 256;
const REDIS_SCHEMES: [&str; 2] = ["redis://", "rediss://"];
const URL_EXAMPLE: &str = "redis://127.0.0.1:6379/0";
/// What a `url_file` that `check-config --skip-missing-secrets` did not find is replaced
/// with, so that the rest of the config can be checked; never connected to.
const UNCHECKED_REDIS_URL: &str = "redis://not-checked.invalid/0";

/// `kind = "redis_stream"` and its keys.
pub const KIND: Kind = Kind {
    name: "redis_stream",
    keys: &[
        KindKey::of::<String>("url"),
        KindKey::of::<String>("url_env"),
        KindKey::of::<PathBuf>("url_file"),
        KindKey::of::<String>("stream"),
        KindKey::of::<u64>("max_len"),
        KindKey::of::<u64>("dedupe_ttl_secs"),
        KindKey::of::<usize>("concurrency"),
        KindKey::of::<PathBuf>("ca_file"),
    ],
    validate_keys: |keys, table| validate(keys, table).map(SinkKind::RedisStream),
    skip_missing_files,
};

/// The settings of a `redis_stream` sink. `Debug` never shows the URL.
#[derive(Debug, Clone)]
pub struct RedisStreamConfig {
    /// Connection URL, `redis://` or `rediss://` (TLS), from exactly one of `url`, `url_env`
    /// and `url_file`. May hold a password.
    pub url: SecretString,
    /// The stream's key, `stream`. Required; 1 to 256 bytes, no whitespace or control
    /// characters. Dedupe markers live beside it, at `<stream>:dedupe:<dedupe key>`.
    pub stream: String,
    /// `XADD MAXLEN ~` bound, `max_len`. Default 1000000; 0 = the stream is never trimmed.
    pub max_len: u64,
    /// How long a published event's dedupe marker lives, `dedupe_ttl_secs`: a republish
    /// within it is dropped. Default 172800 s (48 h); 1..=31536000 s.
    pub dedupe_ttl: Duration,
    /// Events in flight at once for this sink, `concurrency`, in pipelines of up to 64.
    /// Default 256 (four pipelines); 1..=1024.
    pub concurrency: usize,
    /// `ca_file`: PEM CA certificates trusted instead of the public roots for `rediss://`
    /// (a private CA), read when the sink connects.
    pub ca_file: Option<PathBuf>,
}

/// Validates the keys of a redis_stream sink, in the order url, stream, max_len,
/// dedupe_ttl_secs, concurrency, ca_file.
fn validate(keys: &mut KindKeys, table: &SinkTable<'_>) -> Result<RedisStreamConfig, ConfigError> {
    let base = table.base;
    let url = crate::sinks::config::secret_url(
        keys,
        table,
        "redis_stream",
        URL_EXAMPLE,
        check_redis_url,
    )?;
    let stream_key = format!("{base}.stream");
    let stream = match keys.take::<String>(base, "stream")? {
        Some(stream) => check_stream(&stream_key, stream)?,
        None => {
            return Err(invalid(
                stream_key,
                "is required for kind = \"redis_stream\" (the stream's key, such as \
                 \"kirim:events\")",
            ))
        }
    };
    let max_len = check_range(
        &format!("{base}.max_len"),
        keys.take(base, "max_len")?.unwrap_or(DEFAULT_MAX_LEN),
        MAX_LEN_RANGE,
        " entries",
    )?;
    let dedupe_ttl = check_range(
        &format!("{base}.dedupe_ttl_secs"),
        keys.take(base, "dedupe_ttl_secs")?
            .unwrap_or(DEFAULT_DEDUPE_TTL_SECS),
        DEDUPE_TTL_SECS_RANGE,
        " seconds",
    )?;
    let concurrency = check_range(
        &format!("{base}.concurrency"),
        keys.take(base, "concurrency")?
            .unwrap_or(DEFAULT_CONCURRENCY),
        CONCURRENCY_RANGE,
        "",
    )?;
    let ca_file = keys.take::<PathBuf>(base, "ca_file")?;
    if ca_file.is_some() && !url.expose().starts_with("rediss://") {
        return Err(invalid(
            format!("{base}.ca_file"),
            "is for TLS: the URL must start with `rediss://`",
        ));
    }
    Ok(RedisStreamConfig {
        url,
        stream,
        max_len,
        dedupe_ttl: Duration::from_secs(dedupe_ttl),
        concurrency,
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
    keys.insert("url", toml::Value::String(UNCHECKED_REDIS_URL.to_owned()));
    vec![NotChecked {
        key: format!("{base}.url_file"),
        path,
        reason: NOT_PRESENT,
    }]
}

/// A Redis URL: `redis://` or `rediss://`, no whitespace or control characters, and one the
/// client can read. `key` is the key that supplied it; the value is never shown.
fn check_redis_url(value: &str, key: &str) -> Result<(), ConfigError> {
    if !REDIS_SCHEMES.iter().any(|s| value.starts_with(s)) {
        return Err(invalid(
            key,
            format!(
                "must start with `redis://` or `rediss://` (TLS), such as `{URL_EXAMPLE}` \
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
    if redis::Client::open(value).is_err() {
        return Err(invalid(
            key,
            format!(
                "is not a valid Redis URL; expected one such as `{URL_EXAMPLE}` (the value is \
                 not shown)"
            ),
        ));
    }
    Ok(())
}

/// `stream`: 1 to [`STREAM_MAX_BYTES`] bytes, no whitespace or control characters.
fn check_stream(key: &str, stream: String) -> Result<String, ConfigError> {
    if stream.is_empty() || stream.len() > STREAM_MAX_BYTES {
        return Err(invalid(
            key,
            format!("must be 1 to {STREAM_MAX_BYTES} bytes long"),
        ));
    }
    if stream.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(invalid(
            key,
            format!(
                "`{}` must not contain whitespace or control characters",
                stream.escape_debug()
            ),
        ));
    }
    Ok(stream)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::time::Duration;

    use crate::config::testing::*;
    use crate::config::{Config, SinkKind};

    use super::RedisStreamConfig;

    const PASSWORD: &str = "TOPSECRET_pw";

    fn redis_sink(extra: &str) -> String {
        with_sinks(&format!(
            "[[sinks]]\nname = \"bus\"\nkind = \"redis_stream\"\n{extra}"
        ))
    }

    fn with_url(extra: &str) -> String {
        redis_sink(&format!(
            "url = \"redis://127.0.0.1:6379/0\"\nstream = \"kirim:events\"\n{extra}"
        ))
    }

    fn only_redis(config: &Config) -> &RedisStreamConfig {
        match &config.sinks[0].kind {
            SinkKind::RedisStream(redis) => redis,
            other => panic!("expected a redis_stream sink, got {other:?}"),
        }
    }

    /// The commented-out Redis Streams sink at the end of the example, uncommented by removing
    /// the first `#` (and the space after it) of each line, parses with the values it documents.
    #[test]
    fn example_redis_sink_parses_when_uncommented() {
        let text = format!(
            "{}\n{}",
            crate::sinks::config::example_head(),
            crate::sinks::config::example_block("redis_stream")
        );
        let env = |name: &str| {
            (name == "KIRIMHOOK_REDIS_URL").then(|| "redis://127.0.0.1:6379/0".to_owned())
        };
        let config = Config::from_toml_str_with(&text, &env).unwrap();
        assert_eq!(config.sinks.len(), 2);
        assert_eq!(config.sinks[1].name, "bus");
        let SinkKind::RedisStream(redis) = &config.sinks[1].kind else {
            panic!("expected a redis_stream sink, got {:?}", config.sinks[1]);
        };
        assert_eq!(redis.url.expose(), "redis://127.0.0.1:6379/0");
        assert_eq!(redis.stream, "kirim:events");
        assert_eq!(redis.max_len, 1_000_000);
        assert_eq!(redis.dedupe_ttl, Duration::from_secs(172_800));
        assert_eq!(redis.concurrency, 256);
    }

    /// [`assert_invalid`], and the password never shows.
    fn assert_hidden(err: &crate::config::ConfigError, key: &str, fragment: &str) {
        assert_invalid(err, key, fragment);
        assert!(!format!("{err} {err:?}").contains(PASSWORD), "{err:?}");
    }

    #[test]
    fn defaults() {
        let config = parse(&with_url("")).unwrap();
        let redis = only_redis(&config);
        assert_eq!(redis.url.expose(), "redis://127.0.0.1:6379/0");
        assert_eq!(redis.stream, "kirim:events");
        assert_eq!(redis.max_len, 1_000_000);
        assert_eq!(redis.dedupe_ttl, Duration::from_secs(172_800));
        assert_eq!(redis.concurrency, 256);
        assert!(config.sinks[0].filter.is_everything());
    }

    #[test]
    fn every_key_parses() {
        let config = parse(&with_url(
            "max_len = 0\ndedupe_ttl_secs = 60\nconcurrency = 256\nevents = [\"message.*\"]\n",
        ))
        .unwrap();
        let redis = only_redis(&config);
        assert_eq!(redis.max_len, 0);
        assert_eq!(redis.dedupe_ttl, Duration::from_secs(60));
        assert_eq!(redis.concurrency, 256);
        assert!(!config.sinks[0].filter.is_everything());

        let url = format!("rediss://kirim:{PASSWORD}@redis.internal:6380/2");
        let env = |name: &str| (name == "REDIS_URL").then(|| url.clone());
        let config = Config::from_toml_str_with(
            &redis_sink("url_env = \"REDIS_URL\"\nstream = \"s\"\n"),
            &env,
        )
        .unwrap();
        assert_eq!(only_redis(&config).url.expose(), url);
        let shown = format!("{config:?}");
        assert!(!shown.contains(PASSWORD), "{shown}");

        let file = temp_file(format!("{url}\n").as_bytes());
        let config = parse(&redis_sink(&format!(
            "url_file = {}\nstream = \"s\"\n",
            toml_path(file.path())
        )))
        .unwrap();
        assert_eq!(only_redis(&config).url.expose(), url);
    }

    #[test]
    fn ca_file_is_for_rediss_only() {
        let config = Config::from_toml_str_with(
            &redis_sink(
                "url = \"rediss://redis.internal:6380/0\"\nstream = \"s\"\n\
                 ca_file = \"/etc/kirimhook/redis-ca.pem\"\n",
            ),
            &|_: &str| None,
        )
        .unwrap();
        assert_eq!(
            only_redis(&config).ca_file.as_deref(),
            Some(std::path::Path::new("/etc/kirimhook/redis-ca.pem"))
        );
        assert_eq!(only_redis(&parse(&with_url("")).unwrap()).ca_file, None);
        let err = parse_err(&with_url("ca_file = \"/etc/kirimhook/redis-ca.pem\"\n"));
        assert_invalid(
            &err,
            "sinks[0].ca_file",
            "the URL must start with `rediss://`",
        );
    }

    #[test]
    fn url_rules() {
        let err = parse_err(&redis_sink("stream = \"s\"\n"));
        assert_hidden(
            &err,
            "sinks[0].url",
            "is required for kind = \"redis_stream\"",
        );

        let secret_url = format!("http://u:{PASSWORD}@127.0.0.1:6379");
        let err = parse_err(&redis_sink(&format!(
            "url = \"{secret_url}\"\nstream = \"s\"\n"
        )));
        assert_hidden(
            &err,
            "sinks[0].url",
            "must start with `redis://` or `rediss://`",
        );

        let err = parse_err(&redis_sink(&format!(
            "url = \"redis://u:{PASSWORD}@127.0.0.1:6379/x\"\nstream = \"s\"\n"
        )));
        assert_hidden(&err, "sinks[0].url", "is not a valid Redis URL");

        let err = parse_err(&redis_sink(&format!(
            "url = \"redis://u:{PASSWORD}@127.0.0.1:6379 \"\nstream = \"s\"\n"
        )));
        assert_hidden(&err, "sinks[0].url", "whitespace");

        let err = parse_err(&redis_sink(
            "url_env = \"KIRIMHOOK_SURELY_UNSET\"\nstream = \"s\"\n",
        ));
        assert_hidden(&err, "sinks[0].url_env", "is unset or empty");

        let err = parse_err(&redis_sink(
            "url = \"redis://127.0.0.1\"\nurl_env = \"X\"\nstream = \"s\"\n",
        ));
        assert_hidden(
            &err,
            "sinks[0]",
            "exactly one of url, url_env, url_file must be set (found: url, url_env)",
        );
    }

    #[test]
    fn stream_and_number_rules() {
        let err = parse_err(&redis_sink("url = \"redis://127.0.0.1\"\n"));
        assert_invalid(
            &err,
            "sinks[0].stream",
            "is required for kind = \"redis_stream\"",
        );
        let err = parse_err(&redis_sink("url = \"redis://127.0.0.1\"\nstream = \"\"\n"));
        assert_invalid(&err, "sinks[0].stream", "must be 1 to 256 bytes long");
        let long = "s".repeat(257);
        let err = parse_err(&redis_sink(&format!(
            "url = \"redis://127.0.0.1\"\nstream = \"{long}\"\n"
        )));
        assert_invalid(&err, "sinks[0].stream", "must be 1 to 256 bytes long");
        let err = parse_err(&redis_sink(
            "url = \"redis://127.0.0.1\"\nstream = \"a b\"\n",
        ));
        assert_invalid(&err, "sinks[0].stream", "whitespace");

        let err = parse_err(&with_url("dedupe_ttl_secs = 0\n"));
        assert_invalid(
            &err,
            "sinks[0].dedupe_ttl_secs",
            "must be between 1 and 31536000",
        );
        let err = parse_err(&with_url("concurrency = 0\n"));
        assert_invalid(&err, "sinks[0].concurrency", "must be between 1 and 1024");
        let err = parse_err(&with_url("concurrency = 1025\n"));
        assert_invalid(&err, "sinks[0].concurrency", "must be between 1 and 1024");
        let err = parse_err(&with_url("max_len = -1\n"));
        assert_eq!(err.key(), Some("sinks[0].max_len"), "{err}");
        let err = parse_err(&with_url("stream_name = \"x\"\n"));
        assert_invalid(&err, "sinks[0].stream_name", "unknown key");
    }

    #[test]
    fn redis_keys_are_refused_on_other_kinds() {
        for (line, key) in [
            ("stream = \"s\"", "sinks[0].stream"),
            ("max_len = 5", "sinks[0].max_len"),
            ("dedupe_ttl_secs = 5", "sinks[0].dedupe_ttl_secs"),
            ("url_env = \"X\"", "sinks[0].url_env"),
        ] {
            let err = parse_err(&with_sinks(&format!(
                "[[sinks]]\nname = \"app\"\nkind = \"http\"\n\
                 url = \"http://127.0.0.1:9000/\"\n{line}\n"
            )));
            assert_invalid(&err, key, "only for kind = \"redis_stream\"");
        }
        // And http's own keys on a redis_stream sink.
        let err = parse_err(&with_url("timeout_secs = 5\n"));
        assert_invalid(&err, "sinks[0].timeout_secs", "only for kind = \"http\"");
    }

    #[test]
    fn a_missing_url_file_can_be_skipped_by_check_config() {
        use crate::config::MissingFiles;
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("redis-url");
        let path = dir.path().join("kirimhook.toml");
        std::fs::write(
            &path,
            redis_sink(&format!(
                "url_file = {}\nstream = \"s\"\n",
                toml_path(&missing)
            )),
        )
        .unwrap();
        let err = Config::check(&path, MissingFiles::Refuse).unwrap_err();
        assert_eq!(err.key(), Some("sinks[0].url_file"), "{err}");
        let checked = Config::check(&path, MissingFiles::Skip).unwrap();
        assert_eq!(checked.not_checked.len(), 1);
        assert_eq!(checked.not_checked[0].key, "sinks[0].url_file");
    }
}
