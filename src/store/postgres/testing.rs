//! Test support: a PostgreSQL schema of its own for each test, from
//! `KIRIMHOOK_TEST_POSTGRES_URL`, dropped when the test ends. Without the variable a test is
//! skipped (it says so), unless `KIRIMHOOK_REQUIRE_SERVICES=1` makes that a failure.

use super::PgSettings;

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
