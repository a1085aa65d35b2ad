//! Test support: a PostgreSQL schema of its own for each test, from
//! `KIRIMHOOK_TEST_POSTGRES_URL`, dropped when the test ends. Without the variable a test is
//! skipped (it says so), unless `KIRIMHOOK_REQUIRE_SERVICES=1` makes that a failure.

use std::time::{Duration, SystemTime};

use super::PgSettings;
use crate::receive::envelope::{DedupeKey, Source};
use crate::receive::signature::{self, SigningSecret, Verified};
use crate::store::model::{
    millis, Admission, AttemptState, Destination, LastError, NewDelivery, RecordMeta,
};

/// A lease long enough never to expire during a test.
pub(crate) const LEASE: Duration = Duration::from_secs(30);

/// Drops its schema (CASCADE) when dropped: best effort, on a thread of its own so that it
/// works from inside or outside a runtime.
pub(crate) struct SchemaGuard {
    url: String,
    schema: String,
}

impl Drop for SchemaGuard {
    fn drop(&mut self) {
        let (url, schema) = (self.url.clone(), self.schema.clone());
        let dropper = std::thread::spawn(move || {
            let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            runtime.block_on(async move {
                let Ok((client, connection)) =
                    tokio_postgres::connect(&url, tokio_postgres::NoTls).await
                else {
                    return;
                };
                tokio::spawn(connection);
                let _ = client
                    .batch_execute(&format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE"))
                    .await;
            });
        });
        let _ = dropper.join();
    }
}

/// Settings for a fresh schema `kh_t_<short name>_<pid>_<random>`, or `None` (after saying
/// the test was skipped) when `KIRIMHOOK_TEST_POSTGRES_URL` is not set.
pub(crate) async fn test_settings(test_name: &str) -> Option<(PgSettings, SchemaGuard)> {
    let Ok(url) = std::env::var("KIRIMHOOK_TEST_POSTGRES_URL") else {
        if std::env::var("KIRIMHOOK_REQUIRE_SERVICES").as_deref() == Ok("1") {
            panic!(
                "{test_name}: KIRIMHOOK_TEST_POSTGRES_URL is not set, and \
                 KIRIMHOOK_REQUIRE_SERVICES=1 requires PostgreSQL"
            );
        }
        eprintln!("skipped: {test_name}: KIRIMHOOK_TEST_POSTGRES_URL is not set");
        return None;
    };
    let short: String = test_name
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '_')
        .map(|c| c.to_ascii_lowercase())
        .take(24)
        .collect();
    let schema = format!(
        "kh_t_{short}_{}_{:08x}",
        std::process::id(),
        fastrand::u32(..)
    );
    let settings = PgSettings {
        url: url.clone(),
        schema: schema.clone(),
        pool_size: 4,
        instance: format!("test-{}-{:08x}", std::process::id(), fastrand::u32(..)),
    };
    Some((settings, SchemaGuard { url, schema }))
}

/// A verification with its own `t`, so that no two deliveries share signed content unless
/// a test means them to.
pub(crate) fn verified() -> Verified {
    static T: std::sync::atomic::AtomicI64 = std::sync::atomic::AtomicI64::new(1000);
    verified_at(T.fetch_add(1, std::sync::atomic::Ordering::Relaxed))
}

pub(crate) fn verified_at(t: i64) -> Verified {
    let secret = SigningSecret::new("sec_T", "whsec_test");
    let header = secret.sign(t, b"{}");
    signature::verify(Some(header.as_bytes()), b"{}", &[secret], t, 300).unwrap()
}

pub(crate) fn key(s: &str) -> DedupeKey {
    serde_json::from_value(serde_json::Value::String(s.into())).unwrap()
}

pub(crate) fn meta(keys: &[&str], at_ms: u64) -> RecordMeta {
    RecordMeta {
        received_at_ms: at_ms,
        secret_id: String::new(),
        headers: vec![("x-kirim-delivery-id".into(), "wbd_1".into())],
        keys: keys.iter().map(|k| key(k)).collect(),
        shape: None,
        source: Some(Source::Kirim),
        event_type: Some("contact.created".into()),
        event_id: None,
        phone_number_ids: vec![],
        quarantine_reason: None,
    }
}

pub(crate) fn delivery_with(verified: Verified, meta: RecordMeta, sinks: &[&str]) -> NewDelivery {
    NewDelivery {
        verified,
        destination: Destination::Events,
        meta,
        body: bytes::Bytes::from_static(b"{\"a\":1}"),
        sinks: sinks.iter().map(|s| s.to_string()).collect(),
    }
}

pub(crate) fn event(keys: &[&str], sinks: &[&str]) -> NewDelivery {
    delivery_with(verified(), meta(keys, now_ms()), sinks)
}

pub(crate) fn now_ms() -> u64 {
    millis(SystemTime::now())
}

pub(crate) fn seq_of(a: Admission) -> u64 {
    match a {
        Admission::New { seq } => seq,
        Admission::Duplicate => panic!("expected New, got Duplicate"),
    }
}

pub(crate) fn retry_state(next_attempt_ms: u64) -> AttemptState {
    AttemptState {
        attempts: 1,
        first_attempt_ms: now_ms(),
        last_attempt_ms: now_ms(),
        next_attempt_ms,
        last_error: Some(LastError::new(Some(503), "busy")),
    }
}

/// Settings and guard, or return from the test (it was skipped).
macro_rules! settings {
    ($name:expr) => {
        match $crate::store::postgres::testing::test_settings($name).await {
            Some(pair) => pair,
            None => return,
        }
    };
}
pub(crate) use settings;
