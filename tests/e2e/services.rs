//! The external services of the service-backed tests (the PostgreSQL store engine, the broker
//! sinks): where to find them and how to keep each test to itself.
//!
//! A service is named by an environment variable, `KIRIMHOOK_TEST_POSTGRES_URL` and its
//! siblings (`.ci/run` sets them all). Without it a test prints `skipped: <test>: <VAR> is not
//! set` on stderr and returns early; with `KIRIMHOOK_REQUIRE_SERVICES=1` it panics instead, so
//! that CI cannot pass by skipping. Every test works in names of its own ([`unique_name`]: a
//! schema, queue, stream or key prefix), so tests run in parallel against one service;
//! [`PgSchema`] drops a test's schema when the test ends. This module opens no connection
//! itself: the schema is dropped by the `psql` binary, best effort.

use std::process::{Command, Stdio};

/// The variable naming the PostgreSQL database of the store engine's tests.
pub const POSTGRES_URL_VAR: &str = "KIRIMHOOK_TEST_POSTGRES_URL";
/// The variable naming the NATS server (with JetStream) of the `nats` sink's tests.
pub const NATS_URL_VAR: &str = "KIRIMHOOK_TEST_NATS_URL";
/// Set to `1` (by `.ci/run`): a missing service fails the test instead of skipping it.
pub const REQUIRE_SERVICES_VAR: &str = "KIRIMHOOK_REQUIRE_SERVICES";
/// PostgreSQL's identifier limit (NAMEDATALEN - 1), also fine for queues, streams and keys.
const MAX_NAME_CHARS: usize = 63;

/// The PostgreSQL URL for `test`, from `KIRIMHOOK_TEST_POSTGRES_URL`; see [`service_url`].
pub fn postgres_url(test: &str) -> Option<String> {
    service_url(test, POSTGRES_URL_VAR)
}

/// The NATS URL for `test`, from `KIRIMHOOK_TEST_NATS_URL`; see [`service_url`].
pub fn nats_url(test: &str) -> Option<String> {
    service_url(test, NATS_URL_VAR)
}

/// The value of `var` (a `KIRIMHOOK_TEST_*_URL`) for the test named `test`. Unset or empty:
/// panics when `KIRIMHOOK_REQUIRE_SERVICES=1`, else prints `skipped: <test>: <var> is not
/// set` on stderr and returns `None` (the test then returns early and passes).
pub fn service_url(test: &str, var: &str) -> Option<String> {
    match std::env::var(var) {
        Ok(url) if !url.is_empty() => Some(url),
        _ if services_required() => panic!(
            "{test}: {var} is not set, and {REQUIRE_SERVICES_VAR}=1 says the service must be \
             there: start it (see .ci/run) or unset {REQUIRE_SERVICES_VAR} to skip"
        ),
        _ => {
            eprintln!("skipped: {test}: {var} is not set");
            None
        }
    }
}

fn services_required() -> bool {
    std::env::var(REQUIRE_SERVICES_VAR).is_ok_and(|v| v == "1")
}

/// A name no other test (of this or another process) uses: `prefix`, the process id and 64
/// random bits, such as `store_conformance_4711_9f3a0c2e4b1d7a65`. Lowercase `a-z 0-9 _`,
/// starting with a letter or `_`, at most 63 characters and never `pg_...`: valid unquoted as
/// a PostgreSQL schema and as a queue, stream, subject or key name. Characters of `prefix`
/// outside `a-z 0-9 _` become `_`; a long prefix is cut.
pub fn unique_name(prefix: &str) -> String {
    let suffix = format!("_{}_{:016x}", std::process::id(), fastrand::u64(..));
    let mut name: String = prefix
        .chars()
        .map(|c| c.to_ascii_lowercase())
        .map(|c| {
            if c.is_ascii_lowercase() || c.is_ascii_digit() {
                c
            } else {
                '_'
            }
        })
        .collect();
    if !name.starts_with(|c: char| c.is_ascii_lowercase() || c == '_') || name.starts_with("pg_") {
        name.insert_str(0, "t_");
    }
    name.truncate(MAX_NAME_CHARS.saturating_sub(suffix.len()));
    name.push_str(&suffix);
    name
}

/// A test's own PostgreSQL schema, dropped (`DROP SCHEMA ... CASCADE`) when the guard is
/// dropped, also when the test panics. Creating it is left to whoever uses it (the daemon
/// creates its schema). The drop runs the `psql` binary and ignores every failure: a schema
/// left behind costs disk space, not a wrong result, since every name is unique.
pub struct PgSchema {
    url: String,
    name: String,
}

impl PgSchema {
    /// A guard for a new unique schema (see [`unique_name`]) in the database at `url`.
    pub fn unique(url: &str, prefix: &str) -> PgSchema {
        PgSchema {
            url: url.to_owned(),
            name: unique_name(prefix),
        }
    }

    /// The schema's name, for `store.schema`.
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl Drop for PgSchema {
    fn drop(&mut self) {
        // The name is `[a-z0-9_]` only (unique_name), so quoting it is safe.
        let _ = psql(
            &self.url,
            &format!("DROP SCHEMA IF EXISTS \"{}\" CASCADE", self.name),
        );
    }
}

/// Runs one SQL command with `psql` against `url`; `Some(output)` (stdout, unaligned, tuples
/// only) when psql exists and the command succeeded, `None` otherwise.
fn psql(url: &str, sql: &str) -> Option<String> {
    let output = Command::new("psql")
        .args([
            "-X",
            "-q",
            "-A",
            "-t",
            "-v",
            "ON_ERROR_STOP=1",
            "-d",
            url,
            "-c",
            sql,
        ])
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()?;
    output
        .status
        .success()
        .then(|| String::from_utf8_lossy(&output.stdout).trim().to_owned())
}

#[test]
fn unique_names_are_valid_and_distinct() {
    let valid = |name: &str| {
        name.len() <= MAX_NAME_CHARS
            && name.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
            && !name.starts_with("pg_")
            && name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
    };
    let long = "x".repeat(100);
    for prefix in [
        "store",
        "Store-Conformance.1",
        "",
        "9lives",
        "pg_x",
        long.as_str(),
    ] {
        let (a, b) = (unique_name(prefix), unique_name(prefix));
        assert!(valid(&a), "{a:?} from {prefix:?}");
        assert_ne!(a, b);
        assert!(a.contains(&format!("_{}_", std::process::id())), "{a}");
    }
    assert!(unique_name("store").starts_with("store_"));
    assert!(unique_name("Store-X").starts_with("store_x_"));
}

#[test]
fn pg_schema_guard_drops_its_schema() {
    let test = "services::pg_schema_guard_drops_its_schema";
    let Some(url) = postgres_url(test) else {
        return;
    };
    let exists = |name: &str| {
        psql(
            &url,
            &format!("SELECT count(*) FROM pg_namespace WHERE nspname = '{name}'"),
        )
    };
    let psql_installed = Command::new("psql")
        .arg("--version")
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|status| status.success());
    if !psql_installed {
        // psql is a tool, not a service: without it the guard does nothing, by design.
        eprintln!("skipped: {test}: psql is not installed");
        return;
    }
    assert_eq!(
        exists("public").as_deref(),
        Some("1"),
        "psql cannot query the database of {POSTGRES_URL_VAR}"
    );
    let schema = PgSchema::unique(&url, "services_guard");
    let name = schema.name().to_owned();
    assert!(
        psql(&url, &format!("CREATE SCHEMA \"{name}\"")).is_some(),
        "cannot create schema {name}"
    );
    assert_eq!(exists(&name).as_deref(), Some("1"));
    drop(schema);
    assert_eq!(exists(&name).as_deref(), Some("0"));
}
