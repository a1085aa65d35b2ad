//! The keys of an `http` sink (`url`, `timeout_secs`, `concurrency`, `secret` / `secret_env`
//! / `secret_file`) and their validation into an [`HttpSinkConfig`].
//!
//! The keys every kind takes (`name`, `kind`, the filters, `retry`) are checked by
//! [`crate::config`], which hands this module the rest through [`crate::sinks::config`]; errors
//! name the full key (`sinks[0].url`). A URL is never quoted in an error (it may carry a
//! token), and a secret value never appears in an error or in `Debug` output. Host names are
//! not resolved here; the only I/O is reading a `secret_file`.

use std::ops::RangeInclusive;
use std::path::PathBuf;
use std::time::Duration;

use crate::config::{
    check_range, check_secret, file_absent, invalid, resolve_secret_value, ConfigError, NotChecked,
    SecretKeys, SecretSources, NOT_PRESENT, UNCHECKED_SECRET,
};
use crate::receive::signature::SigningSecret;
use crate::sinks::config::{Kind, KindKey, KindKeys, SinkTable};
use crate::sinks::SinkKind;

const DEFAULT_HTTP_TIMEOUT_SECS: u64 = 10;
const HTTP_TIMEOUT_SECS_RANGE: RangeInclusive<u64> = 1..=300;
const DEFAULT_HTTP_CONCURRENCY: usize = 32;
const HTTP_CONCURRENCY_RANGE: RangeInclusive<usize> = 1..=256;
const URL_EXAMPLE: &str = "http://127.0.0.1:9000/hooks/kirim";
const TLS_NOT_SUPPORTED: &str = "TLS to a relay target is not supported yet; use http:// on a \
                                 private network or a local TLS-terminating proxy";

/// `kind = "http"` and its keys.
pub const KIND: Kind = Kind {
    name: "http",
    keys: &[
        KindKey::of::<String>("url"),
        KindKey::of::<u64>("timeout_secs"),
        KindKey::of::<usize>("concurrency"),
        KindKey::of::<String>("secret"),
        KindKey::of::<String>("secret_env"),
        KindKey::of::<PathBuf>("secret_file"),
    ],
    validate_keys: |keys, table| validate(keys, table).map(SinkKind::Http),
    skip_missing_files,
};

/// `sinks[i]`: at most one of `secret`, `secret_env`, `secret_file`.
const SINK_SECRET_KEYS: SecretKeys = SecretKeys {
    inline: "secret",
    env_var: "secret_env",
    file: "secret_file",
    required: false,
};

/// The settings of an `http` sink. `Debug` shows the secret's id (the sink name), never its
/// value.
#[derive(Debug, Clone)]
pub struct HttpSinkConfig {
    /// Where events are POSTed, `url`. Required. `http://` with a host; `https://` is refused
    /// for now, and so are a user name or password in the URL.
    pub url: hyper::Uri,
    /// Time allowed for one delivery attempt, `timeout_secs`. Default 10 s; 1..=300 s.
    pub timeout: Duration,
    /// Deliveries in flight at once for this sink, `concurrency`. Default 8; 1..=256.
    pub concurrency: usize,
    /// Secret the sink signs its deliveries with, from at most one of `secret`, `secret_env`
    /// and `secret_file` (same rules as `verify.secrets`: `whsec_...`, one trailing line
    /// ending removed from a file). Its id is the sink name. `None`: deliveries are unsigned.
    pub secret: Option<SigningSecret>,
}

/// Validates the keys of an http sink, in the order url, timeout_secs, concurrency, secret.
fn validate(keys: &mut KindKeys, table: &SinkTable<'_>) -> Result<HttpSinkConfig, ConfigError> {
    let base = table.base;
    let url_key = format!("{base}.url");
    let url = match keys.take::<String>(base, "url")? {
        Some(url) => validate_url(&url_key, &url)?,
        None => {
            return Err(invalid(
                url_key,
                format!(
                    "is required for kind = \"http\" (where events are POSTed, \
                     such as `{URL_EXAMPLE}`)"
                ),
            ))
        }
    };
    let timeout = check_range(
        &format!("{base}.timeout_secs"),
        keys.take(base, "timeout_secs")?
            .unwrap_or(DEFAULT_HTTP_TIMEOUT_SECS),
        HTTP_TIMEOUT_SECS_RANGE,
        " seconds",
    )?;
    let concurrency = check_range(
        &format!("{base}.concurrency"),
        keys.take(base, "concurrency")?
            .unwrap_or(DEFAULT_HTTP_CONCURRENCY),
        HTTP_CONCURRENCY_RANGE,
        "",
    )?;
    let sources = SecretSources {
        inline: keys.take(base, "secret")?,
        env_var: keys.take(base, "secret_env")?,
        file: keys.take(base, "secret_file")?,
    };
    let secret = match resolve_secret_value(base, &SINK_SECRET_KEYS, sources, table.env)? {
        Some((value, key)) => {
            check_secret(&value, &key)?;
            Some(SigningSecret::new(table.name, value))
        }
        None => None,
    };
    Ok(HttpSinkConfig {
        url,
        timeout: Duration::from_secs(timeout),
        concurrency,
        secret,
    })
}

/// A `secret_file` that does not exist (when it is the only secret source) becomes a
/// placeholder `secret`, listed as not checked.
fn skip_missing_files(keys: &mut KindKeys, base: &str) -> Vec<NotChecked> {
    if keys.contains("secret") || keys.contains("secret_env") {
        return Vec::new();
    }
    let path = match keys.get("secret_file") {
        Some(toml::Value::String(path)) => PathBuf::from(path),
        _ => return Vec::new(),
    };
    if !file_absent(&path) {
        return Vec::new();
    }
    keys.remove("secret_file");
    keys.insert("secret", toml::Value::String(UNCHECKED_SECRET.to_owned()));
    vec![NotChecked {
        key: format!("{base}.secret_file"),
        path,
        reason: NOT_PRESENT,
    }]
}

/// Parses a sink URL: absolute `http://` with a host, no user name or password. Messages never
/// quote the URL, which may carry a token.
fn validate_url(key: &str, text: &str) -> Result<hyper::Uri, ConfigError> {
    let url: hyper::Uri = text.parse().map_err(|_| {
        invalid(
            key,
            format!(
                "is not a valid URL; expected an absolute http:// URL such as `{URL_EXAMPLE}` \
                 (the value is not shown)"
            ),
        )
    })?;
    match url.scheme_str() {
        Some(scheme) if scheme.eq_ignore_ascii_case("http") => {}
        Some(scheme) if scheme.eq_ignore_ascii_case("https") => {
            return Err(invalid(key, TLS_NOT_SUPPORTED))
        }
        Some(scheme) => {
            return Err(invalid(
                key,
                format!(
                    "scheme `{}` is not supported; use http://",
                    scheme.escape_debug()
                ),
            ))
        }
        None => {
            return Err(invalid(
                key,
                format!("must be an absolute http:// URL such as `{URL_EXAMPLE}`"),
            ))
        }
    }
    let authority = url.authority().map_or("", |a| a.as_str());
    if authority.contains('@') {
        return Err(invalid(
            key,
            "must not contain a user name or password (the value is not shown); \
             use `secret` to let the target authenticate deliveries",
        ));
    }
    let host = match url.host() {
        Some(host) if !host.is_empty() => host,
        _ => return Err(invalid(key, "must name a host")),
    };
    // `Uri` drops a port it cannot parse (`:99999`), and a client would then connect to
    // port 80; so look at the text after the host.
    let port_text = authority
        .strip_prefix(host)
        .and_then(|rest| rest.strip_prefix(':'))
        .unwrap_or("");
    if !port_text.is_empty() && !matches!(url.port_u16(), Some(1..)) {
        return Err(invalid(key, "the port must be between 1 and 65535"));
    }
    Ok(url)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::time::Duration;

    use crate::config::testing::*;
    use crate::config::{Config, RetryPolicy, SinkKind};
    use crate::receive::envelope::Source;
    use crate::receive::route::Filter;
    use crate::receive::signature::SigningSecret;

    use super::HttpSinkConfig;

    /// The commented-out HTTP sink at the end of the example, uncommented by removing the
    /// first `#` (and the space after it) of each line, parses with the values it documents.
    #[test]
    fn example_http_sink_parses_when_uncommented() {
        let text = format!(
            "{}\n{}",
            crate::sinks::config::example_head(),
            crate::sinks::config::example_block("http")
        );
        let env = |name: &str| {
            (name == "KIRIMHOOK_APP_SECRET").then(|| "whsec_app_secret_from_env".to_owned())
        };
        let config = Config::from_toml_str_with(&text, &env).unwrap();
        // The stdout sink, then the commented-out http one.
        assert_eq!(config.sinks.len(), 2);
        let sink = &config.sinks[1];
        assert_eq!(sink.name, "app");
        let SinkKind::Http(http) = &sink.kind else {
            panic!("expected an http sink, got {sink:?}");
        };
        assert_eq!(http.url, "http://127.0.0.1:9000/hooks/kirim");
        assert_eq!(http.timeout, Duration::from_secs(10));
        assert_eq!(http.concurrency, 32);
        assert_eq!(http.secret.as_ref().map(|s| s.id()), Some("app"));
        assert_eq!(
            sink.filter,
            Filter::new(
                Some(vec!["message.*".to_owned(), "contact.created".to_owned()]),
                Some(vec![Source::Meta]),
                Some(vec!["106540352242922".to_owned()]),
            )
        );
        assert_eq!(sink.retry, RetryPolicy::default());
    }

    fn http_sink(extra: &str) -> String {
        with_sinks(&format!(
            "[[sinks]]\nname = \"app\"\nkind = \"http\"\n\
             url = \"http://127.0.0.1:9000/hooks/kirim\"\n{extra}"
        ))
    }

    fn only_http(config: &Config) -> &HttpSinkConfig {
        match &config.sinks[0].kind {
            SinkKind::Http(http) => http,
            other => panic!("expected an http sink, got {other:?}"),
        }
    }

    #[test]
    fn full_http_sink_parses() {
        let text = with_sinks(&format!(
            "[[sinks]]\n\
             name = \"app\"\n\
             kind = \"http\"\n\
             url = \"http://10.0.0.5:9000/hooks/kirim?x=1\"\n\
             timeout_secs = 300\n\
             concurrency = 256\n\
             secret = \"{SECRET}\"\n\
             events = [\"message.*\", \"contact.created\"]\n\
             sources = [\"meta\", \"kirim\"]\n\
             phone_number_ids = [\"106540352242922\", \"2\"]\n\
             [sinks.retry]\n\
             initial_backoff_ms = 250\n\
             max_backoff_secs = 86400\n\
             max_attempts = 1000\n\
             [[sinks]]\nname = \"out\"\nkind = \"stdout\"\n"
        ));
        let config = parse(&text).unwrap();
        let sink = &config.sinks[0];
        assert_eq!(sink.name, "app");
        let http = only_http(&config);
        assert_eq!(http.url, "http://10.0.0.5:9000/hooks/kirim?x=1");
        assert_eq!(http.url.host(), Some("10.0.0.5"));
        assert_eq!(http.url.port_u16(), Some(9000));
        assert_eq!(http.timeout, Duration::from_secs(300));
        assert_eq!(http.concurrency, 256);
        assert_eq!(http.secret.as_ref().map(|s| s.id()), Some("app"));
        assert_eq!(
            sink.filter,
            Filter::new(
                Some(vec!["message.*".to_owned(), "contact.created".to_owned()]),
                Some(vec![Source::Meta, Source::Kirim]),
                Some(vec!["106540352242922".to_owned(), "2".to_owned()]),
            )
        );
        assert_eq!(
            sink.retry,
            RetryPolicy {
                initial_backoff: Duration::from_millis(250),
                max_backoff: Duration::from_secs(86_400),
                max_attempts: 1000,
            }
        );
        // [sinks.retry] belongs to the sink above it only.
        assert_eq!(config.sinks[1].retry, RetryPolicy::default());
        assert!(config.sinks[1].filter.is_everything());

        let shown = format!("{config:?}");
        assert!(!shown.contains(SECRET), "{shown}");
    }

    #[test]
    fn http_sink_defaults() {
        let config = parse(&http_sink("")).unwrap();
        let http = only_http(&config);
        assert_eq!(http.timeout, Duration::from_secs(10));
        assert_eq!(http.concurrency, 32);
        assert!(http.secret.is_none());
        assert!(config.sinks[0].filter.is_everything());
        assert_eq!(
            config.sinks[0].retry,
            RetryPolicy {
                initial_backoff: Duration::from_millis(1000),
                max_backoff: Duration::from_secs(600),
                max_attempts: 20,
            }
        );
        assert_eq!(config.sinks[0].retry, RetryPolicy::default());
    }

    #[test]
    fn http_url_rules() {
        let url = |url: &str| http_sink_with_url(url);
        let err = parse_err(&with_sinks("[[sinks]]\nname = \"app\"\nkind = \"http\"\n"));
        assert_invalid(&err, "sinks[0].url", "is required for kind = \"http\"");

        let err = parse_err(&url("https://relay.example.com/hooks"));
        assert_invalid(
            &err,
            "sinks[0].url",
            "TLS to a relay target is not supported yet; use http:// on a private network \
             or a local TLS-terminating proxy",
        );
        let err = parse_err(&url("HTTPS://relay.example.com/hooks"));
        assert_invalid(
            &err,
            "sinks[0].url",
            "TLS to a relay target is not supported yet",
        );

        let err = parse_err(&url("ftp://relay.example.com/hooks"));
        assert_invalid(&err, "sinks[0].url", "scheme `ftp` is not supported");
        for relative in ["127.0.0.1:9000", "relay.internal", "/hooks"] {
            let err = parse_err(&url(relative));
            assert_invalid(&err, "sinks[0].url", "must be an absolute http:// URL");
        }
        for garbage in [
            "",
            "127.0.0.1:9000/hooks",
            "http://exa mple.com/",
            "http:///a",
        ] {
            let err = parse_err(&url(garbage));
            assert_invalid(&err, "sinks[0].url", "is not a valid URL");
            assert!(err.to_string().contains("an absolute http:// URL"), "{err}");
        }
        let err = parse_err(&url("http://:9000/hooks"));
        assert_invalid(&err, "sinks[0].url", "must name a host");
        for port in ["0", "65536", "99999"] {
            let err = parse_err(&url(&format!("http://127.0.0.1:{port}/hooks")));
            assert_invalid(&err, "sinks[0].url", "port must be between 1 and 65535");
        }

        // Credentials in the URL are refused and never shown.
        let err = parse_err(&url("http://user:TOPSECRET@127.0.0.1:9000/hooks"));
        assert_invalid(&err, "sinks[0].url", "user name or password");
        assert!(!err.to_string().contains("TOPSECRET"), "{err}");
        let err = parse_err(&url("http://127.0.0.1:9000/hooks?token=TOPSECRET x"));
        assert_invalid(&err, "sinks[0].url", "is not a valid URL");
        assert!(!err.to_string().contains("TOPSECRET"), "{err}");

        for ok in [
            "http://127.0.0.1:9000/hooks/kirim",
            "http://relay.internal/hooks",
            "http://[::1]:9000/",
            "HTTP://relay.internal",
            "http://relay.internal:/",
            "http://127.0.0.1:65535/a#fragment",
        ] {
            let config = parse(&url(ok)).unwrap();
            assert_eq!(only_http(&config).url.scheme_str(), Some("http"), "{ok}");
        }
    }

    fn http_sink_with_url(url: &str) -> String {
        with_sinks(&format!(
            "[[sinks]]\nname = \"app\"\nkind = \"http\"\nurl = \"{url}\"\n"
        ))
    }

    #[test]
    fn http_timeout_and_concurrency_ranges() {
        for (line, key, fragment) in [
            (
                "timeout_secs = 0",
                "sinks[0].timeout_secs",
                "between 1 and 300 seconds, got 0",
            ),
            ("timeout_secs = 301", "sinks[0].timeout_secs", "got 301"),
            (
                "concurrency = 0",
                "sinks[0].concurrency",
                "between 1 and 256, got 0",
            ),
            ("concurrency = 257", "sinks[0].concurrency", "got 257"),
        ] {
            let err = parse_err(&http_sink(&format!("{line}\n")));
            assert_invalid(&err, key, fragment);
        }
        let config = parse(&http_sink("timeout_secs = 1\nconcurrency = 1\n")).unwrap();
        assert_eq!(only_http(&config).timeout, Duration::from_secs(1));
        assert_eq!(only_http(&config).concurrency, 1);
    }

    #[test]
    fn http_only_keys_are_refused_on_stdout() {
        let file = temp_file(SECRET.as_bytes());
        for (line, key) in [
            (
                "url = \"http://127.0.0.1:9000/\"".to_owned(),
                "sinks[0].url",
            ),
            ("timeout_secs = 10".to_owned(), "sinks[0].timeout_secs"),
            ("concurrency = 8".to_owned(), "sinks[0].concurrency"),
            (format!("secret = \"{SECRET}\""), "sinks[0].secret"),
            (
                "secret_env = \"APP_SECRET\"".to_owned(),
                "sinks[0].secret_env",
            ),
            (
                format!("secret_file = {}", toml_path(file.path())),
                "sinks[0].secret_file",
            ),
        ] {
            let err = parse_err(&with_sinks(&format!(
                "[[sinks]]\nname = \"out\"\nkind = \"stdout\"\n{line}\n"
            )));
            assert_invalid(&err, key, "only for kind = \"http\"");
            assert!(!err.to_string().contains(SECRET), "{err}");
        }
    }

    #[test]
    fn sink_secret_from_env_file_or_inline() {
        let env = |name: &str| (name == "APP_SECRET").then(|| "whsec_app".to_owned());
        let config =
            Config::from_toml_str_with(&http_sink("secret_env = \"APP_SECRET\"\n"), &env).unwrap();
        let secret = only_http(&config).secret.as_ref().unwrap();
        assert_eq!(secret.id(), "app");
        // The resolved value is the one the sink signs with.
        assert_eq!(
            secret.sign(1, b"{}"),
            SigningSecret::new("x", "whsec_app").sign(1, b"{}")
        );

        let file = temp_file(b"whsec_from_file\n");
        let config = parse(&http_sink(&format!(
            "secret_file = {}\n",
            toml_path(file.path())
        )))
        .unwrap();
        let secret = only_http(&config).secret.as_ref().unwrap();
        assert_eq!(
            secret.sign(1, b"{}"),
            SigningSecret::new("x", "whsec_from_file").sign(1, b"{}")
        );

        let config = parse(&http_sink(&format!("secret = \"{SECRET}\"\n"))).unwrap();
        assert_eq!(only_http(&config).secret.as_ref().unwrap().id(), "app");
    }

    #[test]
    fn sink_secret_errors_name_the_key_and_hide_the_value() {
        let err = parse_err(&http_sink("secret_env = \"APP_SECRET\"\n"));
        assert_invalid(
            &err,
            "sinks[0].secret_env",
            "`APP_SECRET` is unset or empty",
        );
        let err = parse_err(&http_sink("secret_env = \"\"\n"));
        assert_invalid(
            &err,
            "sinks[0].secret_env",
            "must name an environment variable",
        );

        let leaked = "sk_live_TOPSECRET_1234";
        let env = |_: &str| Some(leaked.to_owned());
        let err = Config::from_toml_str_with(&http_sink("secret_env = \"APP_SECRET\"\n"), &env)
            .unwrap_err();
        assert_invalid(&err, "sinks[0].secret_env", "must start with `whsec_`");
        assert!(!err.to_string().contains("TOPSECRET"), "{err}");
        assert!(!format!("{err:?}").contains("TOPSECRET"), "{err:?}");

        let err = parse_err(&http_sink(&format!("secret = \"{leaked}\"\n")));
        assert_invalid(&err, "sinks[0].secret", "must start with `whsec_`");
        assert!(!err.to_string().contains("TOPSECRET"), "{err}");

        let file = temp_file(b"whsec_TOPSECRET \n");
        let err = parse_err(&http_sink(&format!(
            "secret_file = {}\n",
            toml_path(file.path())
        )));
        assert_invalid(&err, "sinks[0].secret_file", "whitespace");
        assert!(!err.to_string().contains("TOPSECRET"), "{err}");

        let env = |_: &str| Some("whsec_TOPSECRET".to_owned());
        let err = Config::from_toml_str_with(
            &http_sink("secret = \"whsec_TOPSECRET\"\nsecret_env = \"APP_SECRET\"\n"),
            &env,
        )
        .unwrap_err();
        assert_invalid(
            &err,
            "sinks[0]",
            "at most one of secret, secret_env, secret_file may be set (found: secret, secret_env)",
        );
        assert!(!err.to_string().contains("TOPSECRET"), "{err}");

        // A good secret never shows in Debug either.
        let config =
            Config::from_toml_str_with(&http_sink("secret_env = \"APP_SECRET\"\n"), &env).unwrap();
        let shown = format!("{config:?}");
        assert!(shown.contains("app"), "{shown}");
        assert!(!shown.contains("TOPSECRET"), "{shown}");
    }

    /// A wrong type in an http key is reported while the file is read, at the key and its
    /// line, like any other key's (the kind's keys are type-checked before the kind is known).
    #[test]
    fn wrong_types_and_unknown_keys_name_the_key_and_line() {
        let err = parse_err(&http_sink("timeout_secs = \"10\"\n"));
        assert_invalid(
            &err,
            "sinks[0].timeout_secs",
            "invalid type: string (value not shown), expected a whole number (0 or more) (line 9, column 16)",
        );
        let err = parse_err(&with_sinks(
            "[[sinks]]\nname = \"app\"\nkind = \"http\"\nurl = 1979-05-27\n",
        ));
        assert_invalid(
            &err,
            "sinks[0].url",
            "invalid type: map, expected a string (line 8",
        );
        let err = parse_err(&with_sinks(
            "[[sinks]]\nname = \"app\"\nkind = \"http\"\nsecret_file = 3\n",
        ));
        assert_invalid(&err, "sinks[0].secret_file", "expected path string");
        let err = parse_err(&http_sink("urls = \"x\"\n"));
        assert_invalid(
            &err,
            "sinks[0].urls",
            "unknown key; expected one of `name`, `kind`, `url`, `timeout_secs`, `concurrency`, \
             `secret`, `secret_env`, `secret_file`, `url_env`, `url_file`, `stream`, `max_len`, \
             `dedupe_ttl_secs`, `ca_file`, `subject`, `token_env`, `creds_file`, `user`, \
             `password_env`, `exchange`, `declare`, `routing_key`, `events`, `sources`, \
             `phone_number_ids`, `retry` (line 9, column 1)",
        );
    }
}
