//! The gauges `/metrics` renders, read from the store per scrape: per sink queue depth, oldest
//! queued age and dead letters; quarantine size; store size and free space. Counting a queue
//! is O(queue), so one snapshot is cached and shared for [`SNAPSHOT_TTL`]. A value that cannot
//! be read is logged and left out (or zero); a scrape never fails. The counters themselves
//! live in [`crate::metrics`].

use std::time::{Duration, SystemTime};

use super::Admin;
use crate::metrics::{SinkSnapshot, Snapshot};
use crate::store;

/// How long `/metrics` reuses the gauges it computed.
pub(super) const SNAPSHOT_TTL: Duration = Duration::from_secs(5);

impl Admin {
    /// [`Admin::snapshot`], reused for [`SNAPSHOT_TTL`]; one computation at a time.
    pub(super) async fn cached_snapshot(&self) -> Snapshot {
        let mut cache = self.snapshot_cache.lock().await;
        if let Some((at, snapshot)) = cache.as_ref() {
            if at.elapsed() < SNAPSHOT_TTL {
                return snapshot.clone();
            }
        }
        let snapshot = self.snapshot().await;
        *cache = Some((std::time::Instant::now(), snapshot.clone()));
        snapshot
    }

    /// The gauges' values; a sink whose status cannot be read is left out (and logged).
    async fn snapshot(&self) -> Snapshot {
        let now = store::millis(SystemTime::now());
        let mut sinks = Vec::with_capacity(self.sinks.len());
        for name in &self.sinks {
            match self.store.sink_status(name).await {
                Ok(status) => sinks.push(SinkSnapshot {
                    name: name.clone(),
                    queued: status.queued as u64,
                    oldest_age: status
                        .oldest_received_ms
                        .map(|ms| Duration::from_millis(now.saturating_sub(ms)))
                        .unwrap_or_default(),
                    dead_letters: status.dead_letters as u64,
                }),
                Err(e) => {
                    tracing::warn!(sink = %name, error = %e, "metrics: cannot read the sink's status")
                }
            }
        }
        let quarantined = match self.store.counts().await {
            Ok(counts) => counts.quarantine,
            Err(e) => {
                tracing::warn!(error = %e, "metrics: cannot read the store's counts");
                0
            }
        };
        Snapshot {
            sinks,
            quarantined,
            store_bytes: self.store_bytes().await,
            store_free_bytes: self.store.free_bytes(),
            low_disk: self.store.low_disk().is_some(),
            recovery_dropped: self.store.recovery_loss().dropped_total,
            log_write_failures: crate::telemetry::log_write_failures(),
        }
    }

    /// Bytes the store takes on disk; 0 (and a warning) when it cannot be read.
    pub(super) async fn store_bytes(&self) -> u64 {
        match self.store.disk_space().await {
            Ok(bytes) => bytes,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the store's disk space");
                0
            }
        }
    }
}
