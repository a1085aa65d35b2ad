//! The schema: its name (validated, quoted), the notification channel derived from it, and the
//! versioned migrations that create and upgrade its tables.
//!
//! Migrations are SQL files embedded in the binary, numbered from 1; `schema_migrations` holds
//! the versions applied. They run in one transaction under a transaction-level advisory lock
//! keyed by the schema name, so instances starting together do not race: the second waits,
//! then finds nothing left to do. This module does not open connections.

use super::{describe, StoreError};

/// The embedded migrations, in order: (version, SQL with `__SCHEMA__` for the quoted schema).
const MIGRATIONS: &[(i32, &str)] = &[
    (1, include_str!("migrations/0001_init.sql")),
    (2, include_str!("migrations/0002_queue_due.sql")),
];

/// First key of every advisory lock kirimhook takes ("kh").
pub(super) const LOCK_CLASS: i32 = 0x6b68;

/// A validated schema name, and the SQL spellings derived from it.
#[derive(Debug, Clone)]
pub(super) struct Schema {
    name: String,
    quoted: String,
    channel: String,
}

impl Schema {
    /// Checks `name` against `[a-z_][a-z0-9_]{0,62}`.
    pub fn new(name: &str) -> Result<Schema, StoreError> {
        let mut bytes = name.bytes();
        let first_ok = bytes
            .next()
            .is_some_and(|b| b.is_ascii_lowercase() || b == b'_');
        let rest_ok = bytes.all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
        if !first_ok || !rest_ok || name.len() > 63 {
            return Err(StoreError::Open(format!(
                "store.schema {name:?} is not a valid schema name: use 1 to 63 \
                 lower-case letters, digits or underscores, not starting with a digit"
            )));
        }
        let mut channel = format!("{name}_work");
        channel.truncate(63);
        Ok(Schema {
            name: name.to_owned(),
            quoted: format!("\"{name}\""),
            channel,
        })
    }

    /// The bare name (for catalog lookups).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The NOTIFY channel of this schema (`<schema>_work`, at most 63 bytes).
    pub fn channel(&self) -> &str {
        &self.channel
    }

    /// `sql` with every `__SCHEMA__` replaced by the quoted schema name.
    pub fn sql(&self, sql: &str) -> String {
        sql.replace("__SCHEMA__", &self.quoted)
    }
}

/// Creates the schema if it is missing and applies the migrations it lacks, in one
/// transaction under the schema's advisory lock.
pub(super) async fn migrate(
    client: &mut tokio_postgres::Client,
    schema: &Schema,
) -> Result<(), StoreError> {
    let fail = |what: &str, e: tokio_postgres::Error| {
        StoreError::Open(format!(
            "cannot {what} PostgreSQL schema {}: {}; check that the user may create \
             schemas and tables in this database",
            schema.name(),
            describe(&e)
        ))
    };
    let tx = client.transaction().await.map_err(|e| fail("migrate", e))?;
    tx.execute(
        "SELECT pg_advisory_xact_lock($1, hashtext($2))",
        &[&LOCK_CLASS, &format!("migrate:{}", schema.name())],
    )
    .await
    .map_err(|e| fail("lock", e))?;
    tx.batch_execute(&schema.sql(
        "CREATE SCHEMA IF NOT EXISTS __SCHEMA__;
         CREATE TABLE IF NOT EXISTS __SCHEMA__.schema_migrations (
             version integer PRIMARY KEY,
             applied_at timestamptz NOT NULL DEFAULT now()
         );",
    ))
    .await
    .map_err(|e| fail("create", e))?;
    let row = tx
        .query_one(
            &schema.sql("SELECT coalesce(max(version), 0) FROM __SCHEMA__.schema_migrations"),
            &[],
        )
        .await
        .map_err(|e| fail("read the version of", e))?;
    let current: i32 = row.get(0);
    let known = MIGRATIONS.last().map_or(0, |(v, _)| *v);
    if current > known {
        return Err(StoreError::Open(format!(
            "PostgreSQL schema {} is at version {current}, newer than this kirimhook knows \
             ({known}): run a kirimhook at least as new as the one that migrated it",
            schema.name()
        )));
    }
    for (version, sql) in MIGRATIONS.iter().filter(|(v, _)| *v > current) {
        tx.batch_execute(&schema.sql(sql))
            .await
            .map_err(|e| fail(&format!("apply migration {version} to"), e))?;
        tx.execute(
            &schema.sql("INSERT INTO __SCHEMA__.schema_migrations (version) VALUES ($1)"),
            &[version],
        )
        .await
        .map_err(|e| fail("record the version of", e))?;
        tracing::info!(
            schema = schema.name(),
            version,
            "migrated the PostgreSQL schema"
        );
    }
    tx.commit()
        .await
        .map_err(|e| fail("commit the migration of", e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schema_names_are_validated() {
        for good in ["kirimhook", "_x", "a1_b2", &"a".repeat(63)] {
            assert!(Schema::new(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "1abc",
            "Kirim",
            "a-b",
            "a\"b",
            "a b",
            &"a".repeat(64),
            "é",
        ] {
            assert!(Schema::new(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn channel_fits_an_identifier() {
        let long = Schema::new(&"a".repeat(63)).unwrap();
        assert_eq!(long.channel().len(), 63);
        assert_eq!(Schema::new("kh").unwrap().channel(), "kh_work");
        assert_eq!(
            Schema::new("kh").unwrap().sql("SELECT 1 FROM __SCHEMA__.t"),
            "SELECT 1 FROM \"kh\".t"
        );
    }
}
