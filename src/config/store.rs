//! The `[store]` section: which storage engine holds the events and how it is set up. Serde
//! reads the table into [`RawStore`] (unknown keys refused); [`RawStore::validate`] picks the
//! engine (`engine = "embedded"`, the default, or `"postgres"`), checks that each key belongs
//! to that engine, fills in defaults and resolves the PostgreSQL URL from exactly one of
//! `url`, `url_env`, `url_file` (the rules of `verify.secrets`' `value`, `value_env`,
//! `value_file`). The URL may hold a password: it is kept in a [`SecretString`] and never
//! quoted in an error. This module opens no store and no connection, and reads no file but
//! the one `url_file` names.

use std::ops::RangeInclusive;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::{
    check_range, file_absent, invalid, resolve_secret_value, ConfigError, NotChecked, SecretKeys,
    SecretSources, SecretString, NOT_PRESENT,
};

const DEFAULT_STORE_PATH: &str = "./data";
const DEFAULT_RETENTION_DAYS: u32 = 35;
/// Spec 9.3: dedupe keys must be kept at least 38 hours, so at least 2 days.
const RETENTION_DAYS_RANGE: RangeInclusive<u32> = 2..=365;
/// `store.min_free_bytes` when not set: 512 MiB, room for the engine's flushes and compactions
/// after admissions stop.
const DEFAULT_MIN_FREE_BYTES: u64 = 512 * 1024 * 1024;
/// `store.cache_mib` / `store.memtable_mib` when not set (the embedded engine's defaults).
const DEFAULT_CACHE_MIB: u32 = 32;
const DEFAULT_MEMTABLE_MIB: u32 = 8;
const CACHE_MIB_RANGE: RangeInclusive<u32> = 1..=65536;
const MEMTABLE_MIB_RANGE: RangeInclusive<u32> = 1..=1024;
const MIB: u64 = 1024 * 1024;
const DEFAULT_KEEP_DELIVERED_HOURS: u32 = 0;
const KEEP_DELIVERED_HOURS_RANGE: RangeInclusive<u32> = 0..=8760;
const KNOWN_ENGINES: &[&str] = &["embedded", "postgres"];
const DEFAULT_SCHEMA: &str = "kirimhook";
/// PostgreSQL's identifier limit (NAMEDATALEN - 1).
const SCHEMA_MAX_CHARS: usize = 63;
const DEFAULT_POOL_SIZE: usize = 16;
const POOL_SIZE_RANGE: RangeInclusive<usize> = 1..=256;
const DEFAULT_LEASE_SECS: u64 = 60;
const LEASE_SECS_RANGE: RangeInclusive<u64> = 5..=3600;
const POSTGRES_SCHEMES: [&str; 2] = ["postgres://", "postgresql://"];
/// What a `url_file` that `check-config --skip-missing-secrets` did not find is replaced
/// with, so that the rest of the config can be checked; never connected to.
const UNCHECKED_POSTGRES_URL: &str = "postgres://not-checked.invalid/kirimhook";

/// `store`: exactly one of `url`, `url_env`, `url_file` (with engine = "postgres").
const STORE_URL_KEYS: SecretKeys = SecretKeys {
    inline: "url",
    env_var: "url_env",
    file: "url_file",
    required: true,
};

/// The event store (`[store]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreConfig {
    /// Directory of the embedded store, `path`. Default `./data`; a relative path is relative
    /// to the working directory of the daemon. Embedded engine only: with
    /// [`StoreEngine::Postgres`] the key is refused and this holds the default, unused.
    pub path: PathBuf,
    /// Days that events and dedupe keys are kept, `retention_days`. Default 35; 2..=365
    /// (spec 9.3 requires dedupe keys to be kept at least 38 hours). Every engine.
    pub retention_days: u32,
    /// How long an event stays in the store after every sink has taken it, so that
    /// `kirimhook replay` can send it again, `keep_delivered_hours`. Default 0 (removed with
    /// its last queue entry on the embedded engine, at the next sweep on PostgreSQL);
    /// 0..=8760 hours. Every engine.
    pub keep_delivered: Duration,
    /// Free bytes the store's filesystem must keep, `min_free_bytes`: below it new deliveries
    /// get 503 + `Retry-After` (nothing is written) until space is back. Default 512 MiB; 0
    /// turns the check off. Embedded engine only: with [`StoreEngine::Postgres`] the key is
    /// refused and this is 0 (no local disk to watch).
    pub min_free_bytes: u64,
    /// The embedded engine's block cache, `cache_mib` (MiB). Default 32; 1..=65536. Embedded
    /// engine only (refused with [`StoreEngine::Postgres`]).
    pub cache_bytes: u64,
    /// The embedded engine's memtable of events, `memtable_mib` (MiB); every other keyspace
    /// gets a quarter of it (at least 1 MiB). Default 8; 1..=1024. Embedded engine only.
    pub memtable_bytes: u64,
    /// The storage engine and its own settings, `engine`. Default [`StoreEngine::Embedded`].
    pub engine: StoreEngine,
}

/// Which engine holds the events (`store.engine`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreEngine {
    /// `engine = "embedded"` (the default): fjall in the directory `store.path`.
    Embedded,
    /// `engine = "postgres"`: tables in a schema of a PostgreSQL database, shareable by
    /// several kirimhook processes.
    Postgres(PostgresConfig),
}

impl StoreEngine {
    /// The engine's name as written in `store.engine`, for logs and reports.
    pub fn name(&self) -> &'static str {
        match self {
            StoreEngine::Embedded => "embedded",
            StoreEngine::Postgres(_) => "postgres",
        }
    }
}

/// The settings of the PostgreSQL engine. `Debug` never shows the URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PostgresConfig {
    /// Connection URL, `postgres://` or `postgresql://`, from exactly one of `url`, `url_env`
    /// and `url_file` (a file is read up to 64 KiB, one trailing line ending removed). May
    /// hold a password.
    pub url: SecretString,
    /// Schema that holds kirimhook's tables, `schema`. Default `kirimhook`; 1 to 63 of
    /// `a-z 0-9 _`, not starting with a digit nor with `pg_`.
    pub schema: String,
    /// Connections in the pool, `pool_size`. Default 16; 1..=256.
    pub pool_size: usize,
    /// How long a claimed delivery stays with its claimer before another may take it over,
    /// `lease_secs`. Default 60 s; 5..=3600 s.
    pub lease: Duration,
}

/// `[store]` as serde reads it. Engine-specific keys are `Option`s so that they can be
/// refused, by name, on the other engine. No `Debug`: `url` may hold a password.
#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawStore {
    engine: Option<String>,
    // Every engine.
    retention_days: Option<u32>,
    keep_delivered_hours: Option<u32>,
    // engine = "embedded" only.
    path: Option<PathBuf>,
    min_free_bytes: Option<u64>,
    cache_mib: Option<u32>,
    memtable_mib: Option<u32>,
    // engine = "postgres" only.
    url: Option<String>,
    url_env: Option<String>,
    url_file: Option<PathBuf>,
    schema: Option<String>,
    pool_size: Option<usize>,
    lease_secs: Option<u64>,
}

impl RawStore {
    /// With engine = "postgres", replaces a `url_file` that does not exist (when it is the
    /// only URL source) by a placeholder URL and says so; see `Config::check`.
    pub(super) fn skip_missing_url_file(&mut self) -> Option<NotChecked> {
        if self.engine.as_deref() != Some("postgres")
            || self.url.is_some()
            || self.url_env.is_some()
        {
            return None;
        }
        let path = self.url_file.take_if(|p| file_absent(p))?;
        self.url = Some(UNCHECKED_POSTGRES_URL.to_owned());
        Some(NotChecked {
            key: "store.url_file".to_owned(),
            path,
            reason: NOT_PRESENT,
        })
    }

    /// Checks in this order: engine, the keys of every engine, then the engine's own keys
    /// (a key of the other engine is refused by name).
    pub(super) fn validate(
        self,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<StoreConfig, ConfigError> {
        let postgres = match self.engine.as_deref() {
            None | Some("embedded") => false,
            Some("postgres") => true,
            Some(other) => {
                return Err(invalid(
                    "store.engine",
                    format!(
                        "unknown engine `{}`; known engines: {}",
                        other.escape_debug(),
                        KNOWN_ENGINES.join(", ")
                    ),
                ))
            }
        };
        let retention_days = check_range(
            "store.retention_days",
            self.retention_days.unwrap_or(DEFAULT_RETENTION_DAYS),
            RETENTION_DAYS_RANGE,
            " days",
        )?;
        let keep_delivered_hours = check_range(
            "store.keep_delivered_hours",
            self.keep_delivered_hours
                .unwrap_or(DEFAULT_KEEP_DELIVERED_HOURS),
            KEEP_DELIVERED_HOURS_RANGE,
            " hours",
        )?;
        let keep_delivered = Duration::from_secs(u64::from(keep_delivered_hours) * 3600);
        let cache_mib = check_range(
            "store.cache_mib",
            self.cache_mib.unwrap_or(DEFAULT_CACHE_MIB),
            CACHE_MIB_RANGE,
            " MiB",
        )?;
        let memtable_mib = check_range(
            "store.memtable_mib",
            self.memtable_mib.unwrap_or(DEFAULT_MEMTABLE_MIB),
            MEMTABLE_MIB_RANGE,
            " MiB",
        )?;
        let (path, min_free_bytes, engine) = if postgres {
            self.refuse_embedded_keys()?;
            let engine = StoreEngine::Postgres(self.validate_postgres(env)?);
            (PathBuf::from(DEFAULT_STORE_PATH), 0, engine)
        } else {
            self.refuse_postgres_keys()?;
            let path = self
                .path
                .unwrap_or_else(|| PathBuf::from(DEFAULT_STORE_PATH));
            if path.as_os_str().is_empty() {
                return Err(invalid("store.path", "must not be empty"));
            }
            let min_free_bytes = self.min_free_bytes.unwrap_or(DEFAULT_MIN_FREE_BYTES);
            (path, min_free_bytes, StoreEngine::Embedded)
        };
        Ok(StoreConfig {
            path,
            retention_days,
            keep_delivered,
            min_free_bytes,
            cache_bytes: u64::from(cache_mib) * MIB,
            memtable_bytes: u64::from(memtable_mib) * MIB,
            engine,
        })
    }

    fn refuse_embedded_keys(&self) -> Result<(), ConfigError> {
        let keys = [
            ("path", self.path.is_some()),
            ("min_free_bytes", self.min_free_bytes.is_some()),
            ("cache_mib", self.cache_mib.is_some()),
            ("memtable_mib", self.memtable_mib.is_some()),
        ];
        match keys.into_iter().find(|(_, set)| *set) {
            Some((key, _)) => Err(invalid(
                format!("store.{key}"),
                "applies to the embedded engine only (this store is engine = \"postgres\"); \
                 remove it",
            )),
            None => Ok(()),
        }
    }

    fn refuse_postgres_keys(&self) -> Result<(), ConfigError> {
        let keys = [
            ("url", self.url.is_some()),
            ("url_env", self.url_env.is_some()),
            ("url_file", self.url_file.is_some()),
            ("schema", self.schema.is_some()),
            ("pool_size", self.pool_size.is_some()),
            ("lease_secs", self.lease_secs.is_some()),
        ];
        match keys.into_iter().find(|(_, set)| *set) {
            Some((key, _)) => Err(invalid(
                format!("store.{key}"),
                "is only for engine = \"postgres\" (this store is engine = \"embedded\", \
                 the default)",
            )),
            None => Ok(()),
        }
    }

    fn validate_postgres(
        self,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<PostgresConfig, ConfigError> {
        let sources = SecretSources {
            inline: self.url,
            env_var: self.url_env,
            file: self.url_file,
        };
        let url = match resolve_secret_value("store", &STORE_URL_KEYS, sources, env)? {
            Some((value, key)) => {
                check_postgres_url(&value, &key)?;
                SecretString::new(value)
            }
            None => {
                return Err(invalid(
                    "store.url",
                    "is required for engine = \"postgres\": set exactly one of url, url_env, \
                     url_file (a URL such as `postgres://kirimhook@db.internal:5432/kirimhook`)",
                ))
            }
        };
        let schema = self.schema.unwrap_or_else(|| DEFAULT_SCHEMA.to_owned());
        check_schema(&schema)?;
        let pool_size = check_range(
            "store.pool_size",
            self.pool_size.unwrap_or(DEFAULT_POOL_SIZE),
            POOL_SIZE_RANGE,
            "",
        )?;
        let lease_secs = check_range(
            "store.lease_secs",
            self.lease_secs.unwrap_or(DEFAULT_LEASE_SECS),
            LEASE_SECS_RANGE,
            " seconds",
        )?;
        Ok(PostgresConfig {
            url,
            schema,
            pool_size,
            lease: Duration::from_secs(lease_secs),
        })
    }
}

/// A PostgreSQL URL: `postgres://` or `postgresql://`, no whitespace or control characters.
/// `key` is the key that supplied it; the value (maybe with a password) is never shown.
fn check_postgres_url(value: &str, key: &str) -> Result<(), ConfigError> {
    if !POSTGRES_SCHEMES.iter().any(|s| value.starts_with(s)) {
        return Err(invalid(
            key,
            "must start with `postgres://` or `postgresql://`, such as \
             `postgres://kirimhook@db.internal:5432/kirimhook` (the value is not shown)",
        ));
    }
    if value.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(invalid(
            key,
            "the URL contains whitespace or control characters; look for stray spaces or an \
             extra line ending (the value is not shown)",
        ));
    }
    Ok(())
}

/// `store.schema`: `[a-z_][a-z0-9_]{0,62}`, and not `pg_...` (reserved by PostgreSQL). Used
/// unquoted in SQL, so nothing else is allowed.
fn check_schema(schema: &str) -> Result<(), ConfigError> {
    const KEY: &str = "store.schema";
    let shape_ok = schema.len() <= SCHEMA_MAX_CHARS
        && schema
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_lowercase() || b == b'_')
        && schema
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if !shape_ok {
        return Err(invalid(
            KEY,
            format!(
                "`{}` must be 1 to {SCHEMA_MAX_CHARS} of a-z, 0-9 and `_`, not starting with \
                 a digit, such as \"kirimhook\"",
                schema.escape_debug()
            ),
        ));
    }
    if schema.starts_with("pg_") {
        return Err(invalid(
            KEY,
            format!("`{schema}`: names starting with `pg_` are reserved by PostgreSQL"),
        ));
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::io::Write as _;
    use std::path::Path;

    use super::super::{Config, MissingFiles};
    use super::*;

    const PASSWORD: &str = "TOPSECRET_pw";
    const URL: &str = "postgres://kirimhook:TOPSECRET_pw@db.internal:5432/kirimhook";

    fn with_store(lines: &str) -> String {
        format!(
            "[store]\n{lines}\n\
             [[verify.secrets]]\nid = \"sec_A\"\nvalue = \"whsec_c2VjcmV0\"\n\
             [[sinks]]\nname = \"out\"\nkind = \"stdout\"\n"
        )
    }

    fn postgres(lines: &str) -> String {
        with_store(&format!("engine = \"postgres\"\n{lines}"))
    }

    fn parse_with(
        text: &str,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<StoreConfig, ConfigError> {
        Config::from_toml_str_with(text, env).map(|config| config.store)
    }

    fn parse(text: &str) -> Result<StoreConfig, ConfigError> {
        parse_with(text, &|_| None)
    }

    fn parse_err(text: &str) -> ConfigError {
        match parse(text) {
            Ok(store) => panic!("expected an error, got {store:?}"),
            Err(err) => err,
        }
    }

    fn only_postgres(store: &StoreConfig) -> &PostgresConfig {
        match &store.engine {
            StoreEngine::Postgres(pg) => pg,
            StoreEngine::Embedded => panic!("expected engine postgres, got {store:?}"),
        }
    }

    /// The error is `Invalid` on `key`, says `fragment`, and never shows the password.
    fn assert_invalid(err: &ConfigError, key: &str, fragment: &str) {
        assert_eq!(err.key(), Some(key), "{err}");
        let shown = err.to_string();
        assert!(shown.starts_with(&format!("{key}: ")), "{shown}");
        assert!(shown.contains(fragment), "{shown:?} lacks {fragment:?}");
        assert!(!format!("{shown} {err:?}").contains(PASSWORD), "{err:?}");
    }

    fn temp_file(content: &[u8]) -> tempfile::NamedTempFile {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        file.write_all(content).unwrap();
        file.flush().unwrap();
        file
    }

    fn toml_path(path: &Path) -> String {
        format!("'{}'", path.display())
    }

    #[test]
    fn embedded_is_the_default_engine() {
        for text in [with_store(""), with_store("engine = \"embedded\"")] {
            let store = parse(&text).unwrap();
            assert_eq!(store.engine, StoreEngine::Embedded);
            assert_eq!(store.engine.name(), "embedded");
            assert_eq!(store.path, PathBuf::from("./data"));
            assert_eq!(store.min_free_bytes, 512 * 1024 * 1024);
            assert_eq!(store.cache_bytes, 32 * 1024 * 1024);
            assert_eq!(store.memtable_bytes, 8 * 1024 * 1024);
        }
    }

    #[test]
    fn engine_memory_is_set_in_mib_within_its_ranges() {
        let store = parse(&with_store("cache_mib = 64\nmemtable_mib = 2")).unwrap();
        assert_eq!(store.cache_bytes, 64 * 1024 * 1024);
        assert_eq!(store.memtable_bytes, 2 * 1024 * 1024);
        for (line, key, fragment) in [
            (
                "cache_mib = 0",
                "store.cache_mib",
                "between 1 and 65536 MiB, got 0",
            ),
            ("cache_mib = 65537", "store.cache_mib", "got 65537"),
            (
                "memtable_mib = 0",
                "store.memtable_mib",
                "between 1 and 1024 MiB, got 0",
            ),
            ("memtable_mib = 1025", "store.memtable_mib", "got 1025"),
        ] {
            assert_invalid(&parse_err(&with_store(line)), key, fragment);
        }
    }

    #[test]
    fn postgres_defaults() {
        let store = parse(&postgres(&format!("url = \"{URL}\""))).unwrap();
        assert_eq!(store.engine.name(), "postgres");
        assert_eq!(
            store,
            StoreConfig {
                path: PathBuf::from("./data"),
                retention_days: 35,
                keep_delivered: Duration::ZERO,
                min_free_bytes: 0,
                cache_bytes: 32 * 1024 * 1024,
                memtable_bytes: 8 * 1024 * 1024,
                engine: StoreEngine::Postgres(PostgresConfig {
                    url: SecretString::new(URL),
                    schema: "kirimhook".to_owned(),
                    pool_size: 16,
                    lease: Duration::from_secs(60),
                }),
            }
        );
        assert_eq!(only_postgres(&store).url.expose(), URL);
    }

    #[test]
    fn postgres_explicit_values() {
        let store = parse(&postgres(
            "url = \"postgresql://db/k\"\nschema = \"_kh_2\"\npool_size = 256\n\
             lease_secs = 3600\nretention_days = 2\nkeep_delivered_hours = 24",
        ))
        .unwrap();
        let pg = only_postgres(&store);
        assert_eq!(pg.url.expose(), "postgresql://db/k");
        assert_eq!(pg.schema, "_kh_2");
        assert_eq!(pg.pool_size, 256);
        assert_eq!(pg.lease, Duration::from_secs(3600));
        assert_eq!(store.retention_days, 2);
        assert_eq!(store.keep_delivered, Duration::from_secs(24 * 3600));
        let store = parse(&postgres(
            "url = \"postgres://db/k\"\npool_size = 1\nlease_secs = 5",
        ))
        .unwrap();
        assert_eq!(only_postgres(&store).pool_size, 1);
        assert_eq!(only_postgres(&store).lease, Duration::from_secs(5));
    }

    #[test]
    fn unknown_engine_lists_the_known_ones() {
        for engine in ["postgresql", "Postgres", "fjall", ""] {
            let err = parse_err(&with_store(&format!("engine = \"{engine}\"")));
            assert_invalid(
                &err,
                "store.engine",
                &format!("unknown engine `{engine}`; known engines: embedded, postgres"),
            );
        }
        let err = parse_err(&with_store("engine = 1"));
        assert_invalid(&err, "store.engine", "expected a string");
    }

    #[test]
    fn postgres_keys_are_refused_on_the_embedded_engine() {
        let file = temp_file(URL.as_bytes());
        for engine in ["", "engine = \"embedded\"\n"] {
            for (line, key) in [
                (format!("url = \"{URL}\""), "store.url"),
                ("url_env = \"PG_URL\"".to_owned(), "store.url_env"),
                (
                    format!("url_file = {}", toml_path(file.path())),
                    "store.url_file",
                ),
                ("schema = \"kirimhook\"".to_owned(), "store.schema"),
                ("pool_size = 16".to_owned(), "store.pool_size"),
                ("lease_secs = 60".to_owned(), "store.lease_secs"),
            ] {
                let err = parse_err(&with_store(&format!("{engine}{line}")));
                assert_invalid(&err, key, "is only for engine = \"postgres\"");
            }
        }
    }

    #[test]
    fn embedded_keys_are_refused_on_postgres() {
        for (line, key) in [
            ("path = \"./data\"", "store.path"),
            ("min_free_bytes = 0", "store.min_free_bytes"),
            ("cache_mib = 8", "store.cache_mib"),
            ("memtable_mib = 8", "store.memtable_mib"),
        ] {
            let err = parse_err(&postgres(&format!("url = \"{URL}\"\n{line}")));
            assert_invalid(&err, key, "applies to the embedded engine only");
        }
    }

    #[test]
    fn postgres_needs_exactly_one_url_source() {
        let err = parse_err(&postgres(""));
        assert_invalid(
            &err,
            "store.url",
            "is required for engine = \"postgres\": set exactly one of url, url_env, url_file",
        );
        let env = |_: &str| Some(URL.to_owned());
        let file = temp_file(URL.as_bytes());
        for (lines, found) in [
            (
                format!("url = \"{URL}\"\nurl_env = \"PG_URL\""),
                "url, url_env",
            ),
            (
                format!(
                    "url_env = \"PG_URL\"\nurl_file = {}",
                    toml_path(file.path())
                ),
                "url_env, url_file",
            ),
            (
                format!(
                    "url = \"{URL}\"\nurl_env = \"PG_URL\"\nurl_file = {}",
                    toml_path(file.path())
                ),
                "url, url_env, url_file",
            ),
        ] {
            let err = parse_with(&postgres(&lines), &env).unwrap_err();
            assert_invalid(
                &err,
                "store",
                &format!("exactly one of url, url_env, url_file must be set (found: {found})"),
            );
        }
    }

    #[test]
    fn url_must_be_a_postgres_url_and_is_never_shown() {
        for bad in [
            "mysql://kirimhook:TOPSECRET_pw@db/k",
            "TOPSECRET_pw",
            "",
            "POSTGRES://u:TOPSECRET_pw@db/k",
            "postgres:/u:TOPSECRET_pw@db/k",
        ] {
            let err = parse_err(&postgres(&format!("url = \"{bad}\"")));
            assert_invalid(
                &err,
                "store.url",
                "must start with `postgres://` or `postgresql://`",
            );
        }
        let err = parse_err(&postgres("url = \"postgres://u:TOPSECRET_pw@db/k \""));
        assert_invalid(&err, "store.url", "whitespace or control characters");
        // Through the environment, the error names url_env.
        let env = |_: &str| Some("TOPSECRET_pw".to_owned());
        let err = parse_with(&postgres("url_env = \"PG_URL\""), &env).unwrap_err();
        assert_invalid(&err, "store.url_env", "must start with `postgres://`");
    }

    #[test]
    fn url_env_is_resolved_through_the_injected_env() {
        let env = |name: &str| (name == "PG_URL").then(|| URL.to_owned());
        let store = parse_with(&postgres("url_env = \"PG_URL\""), &env).unwrap();
        assert_eq!(only_postgres(&store).url.expose(), URL);

        let err = parse_err(&postgres("url_env = \"PG_URL\""));
        assert_invalid(
            &err,
            "store.url_env",
            "environment variable `PG_URL` is unset or empty",
        );
        let err = parse_err(&postgres("url_env = \"\""));
        assert_invalid(&err, "store.url_env", "must name an environment variable");
    }

    #[test]
    fn url_file_trims_one_line_ending_and_names_its_key() {
        let file = temp_file(format!("{URL}\n").as_bytes());
        let store = parse(&postgres(&format!("url_file = {}", toml_path(file.path())))).unwrap();
        assert_eq!(only_postgres(&store).url.expose(), URL);

        let file = temp_file(format!("{URL}\n\n").as_bytes());
        let err = parse_err(&postgres(&format!("url_file = {}", toml_path(file.path()))));
        assert_invalid(&err, "store.url_file", "whitespace or control characters");

        let file = temp_file(b"TOPSECRET_pw\n");
        let err = parse_err(&postgres(&format!("url_file = {}", toml_path(file.path()))));
        assert_invalid(&err, "store.url_file", "must start with `postgres://`");

        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("pg_url");
        let err = parse_err(&postgres(&format!("url_file = {}", toml_path(&missing))));
        assert_invalid(&err, "store.url_file", "cannot read");
        assert!(
            err.to_string().contains(&missing.display().to_string()),
            "{err}"
        );
        let err = parse_err(&postgres("url_file = ''"));
        assert_invalid(&err, "store.url_file", "must name a file");

        // The 64 KiB limit of secret files.
        let big = temp_file(&vec![b'p'; 64 * 1024 + 1]);
        let err = parse_err(&postgres(&format!("url_file = {}", toml_path(big.path()))));
        assert_invalid(&err, "store.url_file", "larger than 64 KiB");
    }

    #[test]
    fn schema_rules() {
        let with_schema =
            |schema: &str| postgres(&format!("url = \"postgres://db/k\"\nschema = \"{schema}\""));
        let longest = format!("a{}", "b".repeat(62));
        for ok in ["kirimhook", "_", "a", "kh_test_1", longest.as_str()] {
            let store = parse(&with_schema(ok)).unwrap();
            assert_eq!(only_postgres(&store).schema, ok);
        }
        let too_long = format!("a{}", "b".repeat(63));
        for bad in [
            "",
            "1abc",
            "Kirimhook",
            "kirim-hook",
            "kirim hook",
            "a.b",
            &too_long,
        ] {
            let err = parse_err(&with_schema(bad));
            assert_invalid(&err, "store.schema", "must be 1 to 63 of a-z, 0-9 and `_`");
        }
        let err = parse_err(&with_schema("pg_kirimhook"));
        assert_invalid(&err, "store.schema", "reserved by PostgreSQL");
    }

    #[test]
    fn pool_size_and_lease_ranges() {
        for (line, key, fragment) in [
            (
                "pool_size = 0",
                "store.pool_size",
                "between 1 and 256, got 0",
            ),
            ("pool_size = 257", "store.pool_size", "got 257"),
            (
                "lease_secs = 4",
                "store.lease_secs",
                "between 5 and 3600 seconds, got 4",
            ),
            ("lease_secs = 3601", "store.lease_secs", "got 3601"),
        ] {
            let err = parse_err(&postgres(&format!("url = \"{URL}\"\n{line}")));
            assert_invalid(&err, key, fragment);
        }
        let err = parse_err(&postgres(&format!("url = \"{URL}\"\nlease_secs = -1")));
        assert_invalid(&err, "store.lease_secs", "line ");
    }

    #[test]
    fn common_keys_are_checked_on_postgres_too() {
        let err = parse_err(&postgres(&format!("url = \"{URL}\"\nretention_days = 1")));
        assert_invalid(&err, "store.retention_days", "between 2 and 365 days");
        let err = parse_err(&postgres(&format!(
            "url = \"{URL}\"\nkeep_delivered_hours = 8761"
        )));
        assert_invalid(&err, "store.keep_delivered_hours", "got 8761");
    }

    #[test]
    fn debug_never_shows_the_url() {
        let config =
            Config::from_toml_str_with(&postgres(&format!("url = \"{URL}\"")), &|_| None).unwrap();
        for shown in [format!("{config:?}"), format!("{:#?}", config.store)] {
            assert!(!shown.contains(PASSWORD), "{shown}");
            assert!(!shown.contains("db.internal"), "{shown}");
            assert!(shown.contains("<redacted>"), "{shown}");
            assert!(shown.contains("kirimhook"), "{shown}");
        }
    }

    #[test]
    fn a_changed_url_or_engine_makes_a_different_store_config() {
        // The reload compares StoreConfig as a whole and asks for a restart when it differs.
        let a = parse(&postgres(&format!("url = \"{URL}\""))).unwrap();
        let b = parse(&postgres(
            "url = \"postgres://kirimhook:new@db.internal/kirimhook\"",
        ))
        .unwrap();
        let c = parse(&postgres(&format!("url = \"{URL}\"\nschema = \"other\""))).unwrap();
        assert_ne!(a, b);
        assert_ne!(a, c);
        assert_ne!(a, parse(&with_store("")).unwrap());
        assert_eq!(a, parse(&postgres(&format!("url = \"{URL}\""))).unwrap());
    }

    /// The example's commented-out PostgreSQL block, uncommented (first `# ` of each line
    /// removed) with `path` and `min_free_bytes` taken out as it says, parses with the values
    /// it documents.
    #[test]
    fn example_postgres_block_parses_when_uncommented() {
        let example = include_str!("../../config.example.toml");
        let start = example
            .find("\n# engine = \"postgres\"\n")
            .expect("the example has a commented-out postgres block")
            + 1;
        let block_len: usize = example[start..]
            .lines()
            .take_while(|line| line.starts_with('#'))
            .map(|line| line.len() + 1)
            .sum();
        let uncommented: String = example[start..start + block_len]
            .lines()
            .map(|line| format!("{}\n", line.strip_prefix("# ").unwrap_or("")))
            .collect();
        let text: String = format!(
            "{}{uncommented}{}",
            &example[..start],
            &example[start + block_len..]
        )
        .lines()
        .filter(|line| !line.starts_with("path = ") && !line.starts_with("min_free_bytes = "))
        .map(|line| format!("{line}\n"))
        .collect();
        let store = parse(&text).unwrap();
        assert_eq!(store.retention_days, 35);
        let pg = only_postgres(&store);
        assert_eq!(
            pg.url.expose(),
            "postgres://kirimhook@db.internal:5432/kirimhook"
        );
        assert_eq!(pg.schema, "kirimhook");
        assert_eq!(pg.pool_size, 16);
        assert_eq!(pg.lease, Duration::from_secs(60));
    }

    #[test]
    fn check_can_skip_a_url_file_that_is_not_here() {
        let dir = tempfile::tempdir().unwrap();
        let gone = dir.path().join("run/credentials/kirimhook.service/pg_url");
        let text = postgres(&format!("url_file = {}", toml_path(&gone)));
        let file = temp_file(text.as_bytes());

        let err = Config::check(file.path(), MissingFiles::Refuse).unwrap_err();
        assert_invalid(&err, "store.url_file", &gone.display().to_string());

        let checked = Config::check(file.path(), MissingFiles::Skip).unwrap();
        assert_eq!(
            checked.not_checked,
            [NotChecked {
                key: "store.url_file".to_owned(),
                path: gone.clone(),
                reason: NOT_PRESENT,
            }]
        );
        assert_eq!(checked.config.store.engine.name(), "postgres");

        // Skipping hides nothing else: a second source is still an error, and so is a
        // url_file on the embedded engine; url_env is never skipped (as value_env).
        let text = postgres(&format!("url = \"{URL}\"\nurl_file = {}", toml_path(&gone)));
        let file = temp_file(text.as_bytes());
        let err = Config::check(file.path(), MissingFiles::Skip).unwrap_err();
        assert_invalid(&err, "store", "exactly one of");
        let text = with_store(&format!("url_file = {}", toml_path(&gone)));
        let file = temp_file(text.as_bytes());
        let err = Config::check(file.path(), MissingFiles::Skip).unwrap_err();
        assert_invalid(&err, "store.url_file", "is only for engine = \"postgres\"");
        let text = postgres("url_env = \"KIRIMHOOK_TEST_SURELY_UNSET_PG_URL\"");
        let file = temp_file(text.as_bytes());
        let err = Config::check(file.path(), MissingFiles::Skip).unwrap_err();
        assert_invalid(&err, "store.url_env", "is unset or empty");
    }
}
