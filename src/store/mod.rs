//! The durable store: the only code in kirimhook that knows a storage engine.
//!
//! One API, whatever the engine ([`Store`]):
//! - [`Store::admit`]: dedupe check + event + one queue entry per matching sink, atomic and
//!   durable before it returns `New`; concurrent admissions share one commit (group commit).
//! - [`Store::claim`] / [`Store::settle`]: a dispatcher leases due queue entries for a while
//!   and reports what became of each; a settlement whose claim was taken over after its
//!   lease expired is fenced. [`Store::work`] waits for new work.
//! - dead letters, quarantine, [`Store::replay`] with the sink's filter pushed down to the
//!   engine, exact [`Store::counts`], [`Store::sweep`] (retention).
//!
//! [`model`] holds the domain types every engine shares, [`record`] the engine-neutral
//! encoding of one stored delivery. Engines: [`embedded`] (fjall, one machine, the default) and
//! [`postgres`] (several instances sharing one database). [`conformance`] runs the same cases
//! against both.

#[cfg(test)]
mod conformance;
pub mod embedded;
pub mod model;
pub mod postgres;
pub mod record;

use std::time::{Duration, SystemTime};

use crate::receive::route::Filter;

pub use embedded::guard;
pub use embedded::{check_not_damaged, Change, StoreOptions};
pub use model::{
    millis, signed_digest, Admission, AttemptState, Claim, ClaimOrder, ClaimToken, Claimed, Counts,
    DeadLetter, Destination, LastError, NewDelivery, Outcome, QueueEntry, RecordMeta, RecoveryLoss,
    Settled, Settlement, SinkStatus, StoredEvent, Swept,
};

/// Errors of the store, whatever its engine. Engine errors arrive here as text: no engine
/// type crosses this boundary.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The engine failed (I/O error, a lost connection, a failed query, ...).
    #[error("storage engine: {0}")]
    Engine(String),
    /// The store could not be opened; the message says what is wrong and what to do.
    #[error("{0}")]
    Open(String),
    /// Another process holds the store, or is creating it (its `version` file is not there
    /// yet, or it is damaged); the message says which and what to do.
    #[error("{0}")]
    InUse(String),
    /// Free disk space is below `store.min_free_bytes`: nothing was written.
    #[error("{0}")]
    LowDisk(String),
    /// A batch could not be written or checked, or its commit's outcome is unknown: the
    /// caller must not answer 2xx for it.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// The store was closed, or its writer stopped.
    #[error("store writer is not running")]
    WriterGone,
    /// A stored record could not be decoded.
    #[error("record {seq}: {source}")]
    Decode {
        /// Sequence number of the record.
        seq: u64,
        /// What was wrong.
        source: record::DecodeError,
    },
    /// A blocking read task panicked or was cancelled.
    #[error("store read task failed: {0}")]
    Task(String),
}

/// Handle to the store, whatever its engine. Cheap to clone.
#[derive(Clone)]
pub struct Store {
    engine: Engine,
}

#[derive(Clone)]
enum Engine {
    Embedded(embedded::Store),
    Postgres(postgres::PgStore),
}

/// Waits for new work in the store; see [`Store::work`].
pub struct Work {
    engine: WorkEngine,
}

enum WorkEngine {
    Embedded(embedded::Work),
    Postgres(postgres::PgWork),
}

impl Work {
    /// Returns when new work may be there (new events committed, entries requeued or
    /// released), or at `deadline`. Returns false when the store stopped for good.
    pub async fn wait(&mut self, deadline: Option<tokio::time::Instant>) -> bool {
        match &mut self.engine {
            WorkEngine::Embedded(work) => work.wait(deadline).await,
            WorkEngine::Postgres(work) => {
                work.wait(deadline).await;
                true
            }
        }
    }
}

impl Store {
    /// Opens (or creates) the embedded store in `path`; see [`embedded::Store::open_with`].
    pub fn open_embedded(
        path: &std::path::Path,
        sinks: Vec<String>,
        options: StoreOptions,
    ) -> Result<Store, StoreError> {
        embedded::Store::open_with(path, sinks, options).map(Store::from)
    }

    /// Connects to PostgreSQL, creating and migrating the schema; see
    /// [`postgres::PgStore::connect`].
    pub async fn connect_postgres(settings: &postgres::PgSettings) -> Result<Store, StoreError> {
        postgres::PgStore::connect(settings).await.map(|s| Store {
            engine: Engine::Postgres(s),
        })
    }

    /// [`Store::open_embedded`] with default options.
    pub fn open(path: &std::path::Path, sinks: Vec<String>) -> Result<Store, StoreError> {
        Store::open_embedded(path, sinks, StoreOptions::default())
    }

    /// The engine's name, for logs and status: `embedded` or `postgres`.
    pub fn engine_name(&self) -> &'static str {
        match &self.engine {
            Engine::Embedded(_) => "embedded",
            Engine::Postgres(_) => "postgres",
        }
    }

    /// Admits a verified delivery: if it is new, its keys, the event and one queue entry per
    /// sink in `delivery.sinks` are stored atomically, and durably before this returns.
    pub async fn admit(&self, delivery: NewDelivery) -> Result<Admission, StoreError> {
        match &self.engine {
            Engine::Embedded(s) => s.admit(delivery).await,
            Engine::Postgres(s) => s.admit(delivery).await,
        }
    }

    /// Leases up to `max` due entries of `sink`'s queue to this instance for `lease`, with
    /// their events. An entry is due when its retry time has come and no unexpired lease
    /// holds it.
    pub async fn claim(
        &self,
        sink: &str,
        max: usize,
        lease: Duration,
        order: ClaimOrder,
    ) -> Result<Claimed, StoreError> {
        match &self.engine {
            Engine::Embedded(s) => s.claim(sink, max, lease, order).await,
            Engine::Postgres(s) => s.claim(sink, max, lease, order).await,
        }
    }

    /// Records what became of claims of `sink`. A settlement applies only while its claim
    /// was not taken over by a later claim; the others are counted as fenced. Delivered
    /// entries may be applied lazily (a crash can deliver them again: at least once).
    pub async fn settle(
        &self,
        sink: &str,
        settlements: Vec<Settlement>,
    ) -> Result<Settled, StoreError> {
        match &self.engine {
            Engine::Embedded(s) => s.settle(sink, settlements).await,
            Engine::Postgres(s) => s.settle(sink, settlements).await,
        }
    }

    /// How long a dispatcher whose last claim came back empty waits before it claims again,
    /// however often new work is announced meanwhile: nothing on the embedded engine (a
    /// claim is a look at memory), a few milliseconds on PostgreSQL, where every claim is a
    /// transaction and every instance hears of every other instance's admissions.
    pub fn idle_claim_gap(&self) -> Duration {
        match &self.engine {
            Engine::Embedded(_) => Duration::ZERO,
            Engine::Postgres(_) => Duration::from_millis(10),
        }
    }

    /// A handle that waits for new work.
    pub fn work(&self) -> Work {
        let engine = match &self.engine {
            Engine::Embedded(s) => WorkEngine::Embedded(s.work()),
            Engine::Postgres(s) => WorkEngine::Postgres(s.work()),
        };
        Work { engine }
    }

    /// Up to `limit` of `sink`'s dead letters with seq greater than `after`, in seq order.
    pub async fn dead_letters(
        &self,
        sink: &str,
        after: u64,
        limit: usize,
    ) -> Result<Vec<DeadLetter>, StoreError> {
        match &self.engine {
            Engine::Embedded(s) => s.dead_letters(sink, after, limit).await,
            Engine::Postgres(s) => s.dead_letters(sink, after, limit).await,
        }
    }

    /// Moves `sink`'s dead letters (all when `seqs` is `None`) back into its queue, as never
    /// attempted. Returns how many moved.
    pub async fn retry_dead_letters(
        &self,
        sink: &str,
        seqs: Option<Vec<u64>>,
    ) -> Result<usize, StoreError> {
        match &self.engine {
            Engine::Embedded(s) => s.retry_dead_letters(sink, seqs).await,
            Engine::Postgres(s) => s.retry_dead_letters(sink, seqs).await,
        }
    }

    /// Forgets `sink`'s dead letters (all when `seqs` is `None`). Returns how many.
    pub async fn drop_dead_letters(
        &self,
        sink: &str,
        seqs: Option<Vec<u64>>,
    ) -> Result<usize, StoreError> {
        match &self.engine {
            Engine::Embedded(s) => s.drop_dead_letters(sink, seqs).await,
            Engine::Postgres(s) => s.drop_dead_letters(sink, seqs).await,
        }
    }

    /// Up to `limit` quarantined deliveries with seq greater than `after`.
    pub async fn read_quarantine(
        &self,
        after: u64,
        limit: usize,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        match &self.engine {
            Engine::Embedded(s) => s.read_quarantine(after, limit).await,
            Engine::Postgres(s) => s.read_quarantine(after, limit).await,
        }
    }

    /// Forgets quarantined deliveries (all when `seqs` is `None`). Returns how many.
    pub async fn drop_quarantine(&self, seqs: Option<Vec<u64>>) -> Result<usize, StoreError> {
        match &self.engine {
            Engine::Embedded(s) => s.drop_quarantine(seqs).await,
            Engine::Postgres(s) => s.drop_quarantine(seqs).await,
        }
    }

    /// Queues again for `sink` every stored event received at or after `since` that `filter`
    /// matches (events are kept after delivery only for the configured keep window). The
    /// engine applies the filter where the events are. Returns how many were queued.
    pub async fn replay(
        &self,
        sink: &str,
        since: SystemTime,
        filter: &Filter,
    ) -> Result<usize, StoreError> {
        match &self.engine {
            Engine::Embedded(s) => {
                let filter = filter.clone();
                s.replay(sink, since, move |meta| filter.matches(meta))
                    .await
            }
            Engine::Postgres(s) => s.replay(sink, since, filter).await,
        }
    }

    /// The stored events with these seqs (`None` for one that is gone), in the given order.
    pub async fn events(&self, seqs: Vec<u64>) -> Result<Vec<Option<StoredEvent>>, StoreError> {
        match &self.engine {
            Engine::Embedded(s) => s.events(seqs).await,
            Engine::Postgres(s) => s.events(seqs).await,
        }
    }

    /// What `sink` owes: queue depth and dead letters (exact), and the oldest queued event's
    /// arrival time.
    pub async fn sink_status(&self, sink: &str) -> Result<SinkStatus, StoreError> {
        match &self.engine {
            Engine::Embedded(s) => s.sink_status(sink).await,
            Engine::Postgres(s) => s.sink_status(sink).await,
        }
    }

    /// Number of events in `sink`'s queue (exact).
    pub async fn queue_len(&self, sink: &str) -> Result<usize, StoreError> {
        Ok(self.sink_status(sink).await?.queued)
    }

    /// The exact counts of everything the store holds.
    pub async fn counts(&self) -> Result<Counts, StoreError> {
        match &self.engine {
            Engine::Embedded(s) => Ok(s.counts()),
            Engine::Postgres(s) => s.counts().await,
        }
    }

    /// Forgets dedupe keys first seen before `now - retention` and signed-content digests
    /// first seen before `now - keep_signatures`, and removes events that no sink has queued
    /// (nor holds as a dead letter) once they are older than `keep_events` (0: at once).
    /// Works in bounded steps; returns what it removed.
    pub async fn sweep(
        &self,
        now: SystemTime,
        retention: Duration,
        keep_signatures: Duration,
        keep_events: Duration,
    ) -> Result<Swept, StoreError> {
        match &self.engine {
            Engine::Embedded(s) => s.sweep(now, retention, keep_signatures, keep_events).await,
            Engine::Postgres(s) => s.sweep(now, retention, keep_signatures, keep_events).await,
        }
    }

    /// Succeeds when the store can take writes now (the readiness probe).
    pub async fn ping(&self) -> Result<(), StoreError> {
        match &self.engine {
            Engine::Embedded(s) => s.barrier().await,
            Engine::Postgres(s) => s.ping().await,
        }
    }

    /// Why the store stopped for good, once it has.
    pub fn failure(&self) -> Option<String> {
        match &self.engine {
            Engine::Embedded(s) => s.failure(),
            Engine::Postgres(_) => None,
        }
    }

    /// Resolves once the store has stopped for good (see [`Store::failure`]); never for an
    /// engine that reconnects by itself.
    pub async fn stopped(&self) {
        match &self.engine {
            Engine::Embedded(s) => s.stopped().await,
            Engine::Postgres(_) => std::future::pending().await,
        }
    }

    /// `Some(free bytes)` while admissions are refused because free space on the embedded
    /// store's filesystem is below `store.min_free_bytes`.
    pub fn low_disk(&self) -> Option<u64> {
        match &self.engine {
            Engine::Embedded(s) => s.low_disk(),
            Engine::Postgres(_) => None,
        }
    }

    /// Free bytes on the embedded store's filesystem at the last sample (0 when unknown).
    pub fn free_bytes(&self) -> u64 {
        match &self.engine {
            Engine::Embedded(s) => s.free_bytes(),
            Engine::Postgres(_) => 0,
        }
    }

    /// What recovery found missing over the store's life (embedded engine).
    pub fn recovery_loss(&self) -> RecoveryLoss {
        match &self.engine {
            Engine::Embedded(s) => s.recovery_loss(),
            Engine::Postgres(_) => RecoveryLoss::default(),
        }
    }

    /// Bytes the store takes (the embedded store's files, or the PostgreSQL tables).
    pub async fn disk_space(&self) -> Result<u64, StoreError> {
        match &self.engine {
            Engine::Embedded(s) => {
                let s = s.clone();
                tokio::task::spawn_blocking(move || s.disk_space())
                    .await
                    .map_err(|e| StoreError::Task(e.to_string()))?
            }
            Engine::Postgres(s) => s.disk_space().await,
        }
    }

    /// Writes out what is pending and stops the engine's tasks; later writes fail.
    pub async fn close(&self) -> Result<(), StoreError> {
        match &self.engine {
            Engine::Embedded(s) => s.close().await,
            Engine::Postgres(s) => {
                s.close().await;
                Ok(())
            }
        }
    }

    /// The embedded engine, when that is the engine (its own tests and tools).
    pub fn embedded(&self) -> Option<&embedded::Store> {
        match &self.engine {
            Engine::Embedded(s) => Some(s),
            Engine::Postgres(_) => None,
        }
    }
}

impl From<embedded::Store> for Store {
    fn from(store: embedded::Store) -> Store {
        Store {
            engine: Engine::Embedded(store),
        }
    }
}
