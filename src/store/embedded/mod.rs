//! The durable store: the only code in kirimhook that knows the storage engine (fjall).
//!
//! Its API is small: [`Store::admit`] (dedupe check + keys + event + one queue entry per
//! matching sink, in one fsync'd batch), [`Store::queue`] / [`Store::events`] (what a sink still
//! owes), [`Store::settle`] (a sink's outcomes: delivered, retry later, dead letter) and
//! [`Store::sweep`] (retention). Every write goes through one writer thread (`writer.rs`) that
//! takes every command waiting at that moment, applies them as one atomic batch and persists it
//! with a single `fdatasync`: concurrent requests share flushes (group commit), and the dedupe
//! check and the insert can never race because one thread does both.
//!
//! Keyspaces:
//! - `events`: seq (u64 BE) -> record ([`record`]); removed once no sink has it queued.
//! - `quarantine`: seq -> record; authentic deliveries whose body was not recognised.
//! - `dedupe`: dedupe key -> first-seen time (ms, u64 BE).
//! - `dedupe_by_time`: first-seen time (u64 BE) ++ key -> empty; lets the sweep find old keys.
//! - `queue`: sink ++ 0 ++ seq -> attempt state ([`queue`]); one entry per event a sink owes.
//! - `dead_letters`: sink ++ 0 ++ seq -> final attempt state + a copy of the event record.
//! - `signatures`: SHA-256 of a delivery's signed content (`t` and body) -> first-seen time; a
//!   captured delivery sent again with other unsigned headers is a duplicate. Kept only while
//!   a replay could still pass the freshness check.
//! - `signatures_by_time`: first-seen time ++ digest -> empty; lets the sweep find old ones.
//! - `meta`: `next_seq` -> the next seq to hand out (a seq is never reused, even after a sweep);
//!   the exact counters ([`counts`]); what recovery lost (`recovery:*`).
//!
//! Beside the engine's files, `kirimhook.acked` holds the highest acknowledged seq ([`guard`]):
//! at open, a store whose recovered events end below it lost acknowledged data, and says so
//! (error log, `kirimhook_store_recovery_dropped_total`, `kirimhook status`).
//!
//! Reads are blocking engine calls; the async wrappers run them on tokio's blocking pool.

mod claims;
pub mod counts;
pub mod guard;
pub mod queue;
mod writer;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fjall::{Database, Keyspace, KeyspaceCreateOptions};
use tokio::sync::{mpsc, oneshot, watch};

use super::model::millis;
use super::model::{
    Admission, AttemptState, Counts, DeadLetter, NewDelivery, QueueEntry, RecordMeta, RecoveryLoss,
    SinkStatus, StoredEvent, Swept,
};
use super::record;
use super::StoreError;
#[cfg(test)]
use crate::receive::envelope::DedupeKey;
use guard::{DiskWatch, FreeSpaceProbe, Guard};
use writer::{AdmitCommand, Command, Maintenance, SweepReport};

/// Engine memory when `[store]` does not say: the block cache and the memtable of `events`.
/// The cache holds the blocks every admission reads (the bloom filters and indexes of the
/// dedupe keys and signatures, which grow with the keys kept): at 8 MiB, the sustained bench's
/// closed loop fell from 25,000 to 8,000 admissions/s after about 750,000 deliveries, and at
/// 16 MiB after about 1.2 million; at 32 MiB it held its rate.
/// Every other keyspace gets a quarter of the memtable size (at least 1 MiB): keys, indexes,
/// queue entries and counters are small, and they must still fill and flush their memtables
/// on their own, a little at a time. (With the engine's 64 MiB default they never filled one
/// before the journal reached its limit, and then the engine flushed all of them at once and
/// admissions waited seconds behind that I/O.)
pub const DEFAULT_CACHE_BYTES: u64 = 32 * 1024 * 1024;
/// See [`DEFAULT_CACHE_BYTES`].
pub const DEFAULT_MEMTABLE_BYTES: u64 = 8 * 1024 * 1024;
const MIN_MEMTABLE_BYTES: u64 = 1024 * 1024;

/// How many commands the writer's queue holds before callers wait (back-pressure).
const QUEUE_CAPACITY: usize = 8192;

impl From<fjall::Error> for StoreError {
    fn from(e: fjall::Error) -> Self {
        StoreError::Engine(e.to_string())
    }
}

/// A sink's outcome as the writer applies it (claims are checked before it gets here).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// Delivered: the queue entry goes.
    Delivered(u64),
    /// Failed, try again later: the queue entry keeps this state.
    Retry(u64, AttemptState),
    /// Given up: the entry moves to the dead letters with this final state.
    DeadLetter(u64, AttemptState),
}

/// How the store is opened beyond its path.
#[derive(Clone)]
pub struct StoreOptions {
    /// Below this many free bytes on the store's filesystem, admissions are refused (0: off).
    pub min_free_bytes: u64,
    /// Reads the free bytes of a filesystem (injected in tests).
    pub free_space: FreeSpaceProbe,
    /// How long a free-space sample is trusted while admissions are accepted.
    pub free_space_sample_every: Duration,
    /// The engine's block cache, shared by every keyspace.
    pub cache_bytes: u64,
    /// The memtable of `events`; the other keyspaces get a quarter of it.
    pub memtable_bytes: u64,
    /// Whether delivered events stay until the sweep removes them (the default; the daemon
    /// keeps them only with `store.keep_delivered_hours` > 0, for replay). When false, an
    /// event goes as soon as its last queue entry does, mostly while it is still in the
    /// engine's memtable: it then costs no table file, no compaction and no memory for an
    /// index of it.
    pub keep_delivered: bool,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            min_free_bytes: 0,
            free_space: guard::statvfs_probe(),
            free_space_sample_every: guard::DISK_SAMPLE_TTL,
            cache_bytes: DEFAULT_CACHE_BYTES,
            memtable_bytes: DEFAULT_MEMTABLE_BYTES,
            keep_delivered: true,
        }
    }
}

/// State the writer publishes for readers.
pub(crate) struct Shared {
    counts: Mutex<Counts>,
    /// Per sink, a seq below which its queue holds nothing (the writer's low-water marks).
    queue_lows: Mutex<std::collections::HashMap<String, u64>>,
    disk: Arc<DiskWatch>,
    failure: Mutex<Option<String>>,
    recovery: RecoveryLoss,
}

impl Shared {
    fn set_counts(&self, counts: Counts) {
        *lock(&self.counts) = counts;
    }

    fn set_queue_lows(&self, lows: std::collections::HashMap<String, u64>) {
        *lock(&self.queue_lows) = lows;
    }

    fn set_failure(&self, reason: String) {
        lock(&self.failure).get_or_insert(reason);
    }
}

/// Locks a mutex whose data stays valid even if a holder panicked.
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Handle to the store. Cheap to clone.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

struct Inner {
    path: PathBuf,
    shared: Arc<Shared>,
    events: Keyspace,
    quarantine: Keyspace,
    queue: Keyspace,
    dead_letters: Keyspace,
    tx: mpsc::Sender<Command>,
    committed: watch::Receiver<u64>,
    requeued: watch::Receiver<u64>,
    claims: claims::Claims,
    writer: std::sync::Mutex<Option<std::thread::JoinHandle<()>>>,
}

#[derive(Clone)]
pub(crate) struct Keyspaces {
    events: Keyspace,
    quarantine: Keyspace,
    dedupe: Keyspace,
    dedupe_by_time: Keyspace,
    queue: Keyspace,
    dead_letters: Keyspace,
    signatures: Keyspace,
    signatures_by_time: Keyspace,
    meta: Keyspace,
}

impl Keyspaces {
    /// Every keyspace with its name.
    pub(super) fn named(&self) -> [(&'static str, &Keyspace); 9] {
        [
            ("events", &self.events),
            ("quarantine", &self.quarantine),
            ("dedupe", &self.dedupe),
            ("dedupe_by_time", &self.dedupe_by_time),
            ("queue", &self.queue),
            ("dead_letters", &self.dead_letters),
            ("signatures", &self.signatures),
            ("signatures_by_time", &self.signatures_by_time),
            ("meta", &self.meta),
        ]
    }
}

/// The memtable size of keyspace `name` when `events` gets `memtable_bytes`.
pub(super) fn memtable_limit(name: &str, memtable_bytes: u64) -> u64 {
    if name == "events" {
        memtable_bytes
    } else {
        (memtable_bytes / 4).max(MIN_MEMTABLE_BYTES)
    }
}

const NEXT_SEQ: &[u8] = b"next_seq";
const RECOVERY_DROPPED: &[u8] = b"recovery:dropped_total";
const RECOVERY_LAST: &[u8] = b"recovery:last";

impl Store {
    /// Opens (or creates) the store in `path` and starts its writer thread. `sinks` are the
    /// configured sink names; queues of other sinks are kept (and reported at start-up).
    pub fn open(path: &Path, sinks: Vec<String>) -> Result<Store, StoreError> {
        Store::open_with(path, sinks, StoreOptions::default())
    }

    /// [`Store::open`] with options. An error says in plain words what is wrong and what to
    /// do; directories this call created are removed again when it fails.
    pub fn open_with(
        path: &Path,
        sinks: Vec<String>,
        options: StoreOptions,
    ) -> Result<Store, StoreError> {
        let created = first_missing(path);
        let opened = Store::open_inner(path, sinks, options);
        if let (Err(e), Some(dir)) = (&opened, created) {
            // Another process may have created the same new directory meanwhile and be using
            // it (it holds the lock, or has not written `version` yet): leave that one alone.
            if !matches!(e, StoreError::InUse(_)) {
                let _ = std::fs::remove_dir_all(dir);
            }
        }
        opened
    }

    fn open_inner(
        path: &Path,
        sinks: Vec<String>,
        options: StoreOptions,
    ) -> Result<Store, StoreError> {
        let shown = path.display();
        std::fs::create_dir_all(path).map_err(|e| {
            StoreError::Open(format!(
                "cannot create the store directory {shown}: {}",
                io_words(&e)
            ))
        })?;
        check_not_damaged(path)?;
        let db = Database::builder(path)
            .manual_journal_persist(true)
            .cache_size(options.cache_bytes)
            // One flush-and-compaction thread. With two, the engine's first worker hands
            // every compaction request back to the queue while the other one is busy, and
            // spins doing so: about 5% of the daemon's CPU under load in a profile, for no
            // work. Measured in the receive bench: CPU per request a few percent lower,
            // nothing slower.
            .worker_threads(1)
            .open()
            .map_err(|e| open_error(path, e))?;
        let ks = |name: &str| {
            let size = memtable_limit(name, options.memtable_bytes);
            db.keyspace(name, || {
                let options = KeyspaceCreateOptions::default().max_memtable_size(size);
                if name.ends_with("_by_time") {
                    // Only ever scanned in ranges by the sweep, never looked up by key: a
                    // bloom filter would cost memory and flush work for nothing.
                    options.filter_policy(fjall::config::FilterPolicy::disabled())
                } else {
                    options
                }
            })
            .map_err(|e| open_error(path, e))
        };
        let keyspaces = Keyspaces {
            events: ks("events")?,
            quarantine: ks("quarantine")?,
            dedupe: ks("dedupe")?,
            dedupe_by_time: ks("dedupe_by_time")?,
            queue: ks("queue")?,
            dead_letters: ks("dead_letters")?,
            signatures: ks("signatures")?,
            signatures_by_time: ks("signatures_by_time")?,
            meta: ks("meta")?,
        };
        let counts = Counts::load_or_count(&keyspaces, &db)?;
        let (guard, acked) = Guard::open(path).map_err(|e| {
            StoreError::Open(format!(
                "cannot open {} in the store at {shown}: {}",
                guard::MARK_FILE,
                io_words(&e)
            ))
        })?;
        let (next_seq, recovery) =
            check_recovery(path, &db, &keyspaces, recover_next_seq(&keyspaces)?, acked)?;
        let lows = writer::Lows::recover(&keyspaces)?;
        for (sink, first) in &lows.queue {
            if !sinks.contains(sink) {
                tracing::warn!(
                    sink = %sink, first_seq = first,
                    "a sink that is no longer configured still has queued events; they are kept until it comes back"
                );
            }
        }
        let disk = Arc::new(DiskWatch::new(
            path,
            options.min_free_bytes,
            options.free_space,
            options.free_space_sample_every,
        ));
        let shared = Arc::new(Shared {
            counts: Mutex::new(counts.clone()),
            queue_lows: Mutex::new(std::collections::HashMap::new()),
            disk: disk.clone(),
            failure: Mutex::new(None),
            recovery,
        });

        let (committed_tx, committed) = watch::channel(next_seq.saturating_sub(1));
        let (requeued_tx, requeued) = watch::channel(0);
        let (tx, rx) = mpsc::channel(QUEUE_CAPACITY);
        let writer = writer::Writer::new(
            db.clone(),
            keyspaces.clone(),
            options.memtable_bytes,
            options.keep_delivered,
            next_seq,
            committed_tx,
            requeued_tx,
            counts,
            guard,
            disk,
            shared.clone(),
            lows,
        );
        let handle = std::thread::Builder::new()
            .name("kirimhook-store".into())
            .spawn(move || writer.run(rx))
            .map_err(|e| {
                StoreError::Open(format!("cannot start the store's writer thread: {e}"))
            })?;
        Ok(Store {
            inner: Arc::new(Inner {
                path: path.to_owned(),
                shared,
                events: keyspaces.events,
                quarantine: keyspaces.quarantine,
                queue: keyspaces.queue,
                dead_letters: keyspaces.dead_letters,
                tx,
                committed,
                requeued,
                claims: claims::Claims::default(),
                writer: std::sync::Mutex::new(Some(handle)),
            }),
        })
    }

    /// Admits a verified delivery: if any of its dedupe keys is new, writes the new keys, the
    /// record and its queue entries in one batch and returns only after that batch is fsync'd.
    pub async fn admit(&self, delivery: NewDelivery) -> Result<Admission, StoreError> {
        let signed = delivery.signed_digest();
        let mut meta = delivery.meta;
        meta.secret_id = delivery.verified.secret_id().to_owned();
        let record = record::encode(&meta, &delivery.body);
        let (reply, answer) = oneshot::channel();
        let command = Command::Admit(AdmitCommand {
            keys: meta.keys,
            signed,
            destination: delivery.destination,
            sinks: delivery.sinks,
            received_at_ms: meta.received_at_ms,
            record,
            reply,
        });
        self.send(command).await?;
        answer.await.map_err(|_| StoreError::WriterGone)?
    }

    /// Hands `sink`'s outcomes to the writer. Returns once they are handed over, not once they
    /// are on disk: they ride along with the next group commit. Losing them in a crash only
    /// means a delivery is made again, which at-least-once allows.
    pub(crate) async fn apply_changes(
        &self,
        sink: &str,
        changes: Vec<Change>,
    ) -> Result<(), StoreError> {
        if changes.is_empty() {
            return Ok(());
        }
        self.send(Command::Settle {
            sink: sink.to_owned(),
            outcomes: changes,
            reply: None,
        })
        .await
    }

    /// Like [`Store::apply_changes`], but returns only after the changes are fsync'd.
    pub(crate) async fn apply_changes_durably(
        &self,
        sink: &str,
        changes: Vec<Change>,
    ) -> Result<(), StoreError> {
        let (reply, answer) = oneshot::channel();
        self.send(Command::Settle {
            sink: sink.to_owned(),
            outcomes: changes,
            reply: Some(reply),
        })
        .await?;
        answer.await.map_err(|_| StoreError::WriterGone)?
    }

    /// Returns once everything handed to the writer before is applied and fsync'd; fails when
    /// the writer is gone (the readiness probe).
    pub async fn barrier(&self) -> Result<(), StoreError> {
        self.apply_changes_durably("", Vec::new()).await
    }

    /// Forgets dedupe keys first seen before `now - retention` and signed-content digests
    /// first seen before `now - keep_signatures`, and removes events that no sink has queued
    /// any more, once they are older than `keep_events` (0: at once). Works in bounded steps;
    /// returns what it removed.
    pub async fn sweep(
        &self,
        now: SystemTime,
        retention: Duration,
        keep_signatures: Duration,
        keep_events: Duration,
    ) -> Result<Swept, StoreError> {
        let cutoff_ms = millis(now.checked_sub(retention).unwrap_or(UNIX_EPOCH));
        let signatures_cutoff_ms = millis(now.checked_sub(keep_signatures).unwrap_or(UNIX_EPOCH));
        let keep_events_until_ms = if keep_events.is_zero() {
            0
        } else {
            millis(now.checked_sub(keep_events).unwrap_or(UNIX_EPOCH)).max(1)
        };
        let mut total = Swept::default();
        loop {
            let (reply, answer) = oneshot::channel();
            self.send(Command::Sweep {
                cutoff_ms,
                signatures_cutoff_ms,
                keep_events_until_ms,
                reply,
            })
            .await?;
            let SweepReport { swept, more } =
                answer.await.map_err(|_| StoreError::WriterGone)??;
            total.keys += swept.keys;
            total.events += swept.events;
            if !more {
                return Ok(total);
            }
        }
    }

    /// Moves `sink`'s dead letters (all when `seqs` is `None`) back into its queue, as never
    /// attempted. Returns how many moved.
    pub async fn retry_dead_letters(
        &self,
        sink: &str,
        seqs: Option<Vec<u64>>,
    ) -> Result<usize, StoreError> {
        self.maintain(Maintenance::Requeue {
            sink: sink.to_owned(),
            seqs,
        })
        .await
    }

    /// Forgets `sink`'s dead letters (all when `seqs` is `None`). Returns how many.
    pub async fn drop_dead_letters(
        &self,
        sink: &str,
        seqs: Option<Vec<u64>>,
    ) -> Result<usize, StoreError> {
        self.maintain(Maintenance::DropDeadLetters {
            sink: sink.to_owned(),
            seqs,
        })
        .await
    }

    /// Forgets quarantined deliveries (all when `seqs` is `None`). Returns how many.
    pub async fn drop_quarantine(&self, seqs: Option<Vec<u64>>) -> Result<usize, StoreError> {
        self.maintain(Maintenance::DropQuarantine { seqs }).await
    }

    /// Queues every stored event received at or after `since` that `matches` (the sink's
    /// filter) for `sink` again (events are kept after delivery only for the configured keep
    /// window). Returns how many were queued.
    pub async fn replay(
        &self,
        sink: &str,
        since: SystemTime,
        matches: impl Fn(&RecordMeta) -> bool + Send + 'static,
    ) -> Result<usize, StoreError> {
        self.maintain(Maintenance::Replay {
            sink: sink.to_owned(),
            since_ms: millis(since),
            matches: Box::new(matches),
        })
        .await
    }

    /// A handle that waits for new work: a commit with new events, or a requeue.
    pub fn work(&self) -> Work {
        Work {
            committed: self.inner.committed.clone(),
            requeued: self.inner.requeued.clone(),
        }
    }

    async fn maintain(&self, op: Maintenance) -> Result<usize, StoreError> {
        let (reply, answer) = oneshot::channel();
        self.send(Command::Maintain { op, reply }).await?;
        answer.await.map_err(|_| StoreError::WriterGone)?
    }

    /// Up to `limit` entries of `sink`'s queue with seq greater than `after`, in seq order.
    pub async fn queue(
        &self,
        sink: &str,
        after: u64,
        limit: usize,
    ) -> Result<Vec<QueueEntry>, StoreError> {
        let queue_ks = self.inner.queue.clone();
        let sink = sink.to_owned();
        blocking(move || {
            let mut out = Vec::new();
            scan_sink_keys(&queue_ks, &sink, after, u64::MAX, limit, |seq, value| {
                out.push(QueueEntry {
                    seq,
                    state: queue::decode_state(value),
                });
                Ok(())
            })?;
            Ok(out)
        })
        .await
    }

    /// Up to `limit` entries of `sink`'s queue with `after < seq <= up_to`, each with its event
    /// (`None` for one that is gone), read in one go.
    pub async fn queue_with_events(
        &self,
        sink: &str,
        after: u64,
        up_to: u64,
        limit: usize,
    ) -> Result<Vec<(QueueEntry, Option<StoredEvent>)>, StoreError> {
        let queue_ks = self.inner.queue.clone();
        let events = self.inner.events.clone();
        let sink = sink.to_owned();
        blocking(move || {
            let mut out = Vec::new();
            scan_sink_keys(&queue_ks, &sink, after, up_to, limit, |seq, value| {
                let state = queue::decode_state(value);
                out.push((QueueEntry { seq, state }, get_event(&events, seq)?));
                Ok(())
            })?;
            Ok(out)
        })
        .await
    }

    /// What `sink` owes: queue depth and dead letters (exact counters), and the oldest queued
    /// event's arrival time (one lookup).
    pub async fn sink_status(&self, sink: &str) -> Result<SinkStatus, StoreError> {
        let counts = self.counts();
        let queue_ks = self.inner.queue.clone();
        let events = self.inner.events.clone();
        let prefix = queue::prefix(sink);
        // From the writer's low-water mark, not the queue's start: the delivered entries'
        // tombstones before it are never walked.
        let low = lock(&self.inner.shared.queue_lows).get(sink).copied();
        let Some(low) = low else {
            return Ok(SinkStatus {
                queued: counts.queued(sink) as usize,
                oldest_received_ms: None,
                dead_letters: counts.dead_letters(sink) as usize,
            });
        };
        let start = queue::key(sink, low);
        let oldest_received_ms = blocking(move || {
            let Some(guard) = queue_ks.range(start..).next() else {
                return Ok(None);
            };
            let key = guard.key()?;
            if !key.starts_with(&prefix) {
                return Ok(None);
            }
            let seq = queue::seq_of(&key);
            Ok(get_event(&events, seq)
                .ok()
                .flatten()
                .map(|e| e.meta.received_at_ms))
        })
        .await?;
        Ok(SinkStatus {
            queued: counts.queued(sink) as usize,
            oldest_received_ms,
            dead_letters: counts.dead_letters(sink) as usize,
        })
    }

    /// Number of events in `sink`'s queue.
    pub async fn queue_len(&self, sink: &str) -> Result<usize, StoreError> {
        Ok(self.sink_status(sink).await?.queued)
    }

    /// The stored events with these seqs (`None` for one that is gone), in the given order.
    pub async fn events(&self, seqs: Vec<u64>) -> Result<Vec<Option<StoredEvent>>, StoreError> {
        let events = self.inner.events.clone();
        blocking(move || {
            seqs.into_iter()
                .map(|seq| get_event(&events, seq))
                .collect()
        })
        .await
    }

    /// Up to `limit` stored events with seq greater than `after`, in seq order.
    pub async fn read_after(
        &self,
        after: u64,
        limit: usize,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        let events = self.inner.events.clone();
        blocking(move || read_range(&events, after, limit)).await
    }

    /// Up to `limit` quarantined deliveries with seq greater than `after`.
    pub async fn read_quarantine(
        &self,
        after: u64,
        limit: usize,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        let quarantine = self.inner.quarantine.clone();
        blocking(move || read_range(&quarantine, after, limit)).await
    }

    /// Up to `limit` of `sink`'s dead letters with seq greater than `after`, in seq order.
    pub async fn dead_letters(
        &self,
        sink: &str,
        after: u64,
        limit: usize,
    ) -> Result<Vec<DeadLetter>, StoreError> {
        let dead = self.inner.dead_letters.clone();
        let sink = sink.to_owned();
        blocking(move || {
            let mut out = Vec::new();
            scan_sink_keys(&dead, &sink, after, u64::MAX, limit, |seq, value| {
                let letter = queue::decode_dead_letter(&sink, seq, value)
                    .map_err(|source| StoreError::Decode { seq, source })?;
                out.push(letter);
                Ok(())
            })?;
            Ok(out)
        })
        .await
    }

    /// Number of stored events not yet removed by a sweep (exact).
    pub fn event_count(&self) -> usize {
        self.counts().events as usize
    }

    /// Number of quarantined deliveries (exact).
    pub fn quarantine_count(&self) -> usize {
        self.counts().quarantine as usize
    }

    /// The exact counts of everything the store holds, as of the last commit.
    pub fn counts(&self) -> Counts {
        lock(&self.inner.shared.counts).clone()
    }

    /// Why the writer stopped for good, once it has.
    pub fn failure(&self) -> Option<String> {
        lock(&self.inner.shared.failure).clone()
    }

    /// `Some(free bytes)` while admissions are refused because free space is below
    /// `store.min_free_bytes`.
    pub fn low_disk(&self) -> Option<u64> {
        let disk = &self.inner.shared.disk;
        disk.refresh_if_low();
        disk.is_low().then(|| disk.free_bytes())
    }

    /// Free bytes on the store's filesystem at the last sample (0 before the first, or when
    /// the watermark is off).
    pub fn free_bytes(&self) -> u64 {
        self.inner.shared.disk.free_bytes()
    }

    /// What recovery found missing over the store's life.
    pub fn recovery_loss(&self) -> RecoveryLoss {
        self.inner.shared.recovery.clone()
    }

    /// Resolves once the writer has stopped for good (closed, or failed: see
    /// [`Store::failure`]).
    pub async fn stopped(&self) {
        let mut committed = self.inner.committed.clone();
        while committed.changed().await.is_ok() {}
    }

    /// Bytes the store's files take on disk (allocated blocks, so a journal file that is
    /// preallocated but mostly empty counts for what it holds). Walks the directory: blocking.
    pub fn disk_space(&self) -> Result<u64, StoreError> {
        allocated_bytes(&self.inner.path).map_err(|e| StoreError::Engine(e.to_string()))
    }

    /// Stops the writer after it has written everything queued so far, and persists the journal.
    /// Later writes fail with [`StoreError::WriterGone`].
    pub async fn close(&self) -> Result<(), StoreError> {
        let (reply, answer) = oneshot::channel();
        // If the writer is already gone there is nothing left to flush.
        if self.inner.tx.send(Command::Close { reply }).await.is_ok() {
            answer.await.map_err(|_| StoreError::WriterGone)??;
        }
        let handle = self
            .inner
            .writer
            .lock()
            .map_err(|_| StoreError::WriterGone)?
            .take();
        if let Some(handle) = handle {
            tokio::task::spawn_blocking(move || handle.join())
                .await
                .map_err(|e| StoreError::Task(e.to_string()))?
                .map_err(|_| StoreError::Task("store writer panicked".into()))?;
        }
        Ok(())
    }

    async fn send(&self, command: Command) -> Result<(), StoreError> {
        self.inner
            .tx
            .send(command)
            .await
            .map_err(|_| StoreError::WriterGone)
    }
}

/// Waits for new work on an embedded store.
pub struct Work {
    committed: watch::Receiver<u64>,
    requeued: watch::Receiver<u64>,
}

impl Work {
    /// Returns when events were committed or entries requeued since the last call, or at
    /// `deadline`. Returns false when the store's writer is gone (no work will come).
    pub async fn wait(&mut self, deadline: Option<tokio::time::Instant>) -> bool {
        let sleep = async {
            match deadline {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            changed = self.committed.changed() => changed.is_ok(),
            changed = self.requeued.changed() => changed.is_ok(),
            _ = sleep => true,
        }
    }
}

/// Runs a blocking engine read on tokio's blocking pool.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| StoreError::Task(e.to_string()))?
}

/// Calls `each` with the seq and value of every entry of `sink` (keys `sink ++ 0 ++ seq`: the
/// queue and dead-letter keyspaces) with `after < seq <= up_to`, at most `limit`, in seq order.
fn scan_sink_keys(
    keyspace: &Keyspace,
    sink: &str,
    after: u64,
    up_to: u64,
    limit: usize,
    mut each: impl FnMut(u64, &[u8]) -> Result<(), StoreError>,
) -> Result<(), StoreError> {
    let Some(start) = after.checked_add(1) else {
        return Ok(());
    };
    let prefix = queue::prefix(sink);
    for guard in keyspace.range(queue::key(sink, start)..).take(limit) {
        let (key, value) = guard.into_inner()?;
        let seq = queue::seq_of(&key);
        if !key.starts_with(&prefix) || seq > up_to {
            break;
        }
        each(seq, &value)?;
    }
    Ok(())
}

/// The stored event `seq`, `None` when it is gone.
fn get_event(events: &Keyspace, seq: u64) -> Result<Option<StoredEvent>, StoreError> {
    match events.get(seq.to_be_bytes())? {
        Some(value) => record::decode(seq, &value)
            .map(Some)
            .map_err(|source| StoreError::Decode { seq, source }),
        None => Ok(None),
    }
}

fn read_range(ks: &Keyspace, after: u64, limit: usize) -> Result<Vec<StoredEvent>, StoreError> {
    let Some(start) = after.checked_add(1) else {
        return Ok(Vec::new());
    };
    let mut out = Vec::new();
    for guard in ks.range(start.to_be_bytes()..).take(limit) {
        let (key, value) = guard.into_inner()?;
        let seq = be_u64(&key);
        let event =
            record::decode(seq, &value).map_err(|source| StoreError::Decode { seq, source })?;
        out.push(event);
    }
    Ok(out)
}

/// The first of `path` and its ancestors that does not exist yet (what opening would create).
fn first_missing(path: &Path) -> Option<PathBuf> {
    let mut missing = None;
    for dir in path.ancestors() {
        if dir.as_os_str().is_empty() || dir.exists() {
            break;
        }
        missing = Some(dir.to_owned());
    }
    missing
}

/// Refuses a directory that holds engine files but no `version` marker: the engine would try
/// to create a new store over it and fail with an obscure "File exists".
pub fn check_not_damaged(path: &Path) -> Result<(), StoreError> {
    if path.join("version").exists() {
        return Ok(());
    }
    let engine_files = ["keyspaces", "lock", "0.jnl"]
        .iter()
        .any(|name| path.join(name).exists());
    if engine_files {
        return Err(StoreError::InUse(format!(
            "the store at {} is damaged: its `version` file is missing. Restore the directory \
             from a backup, or move it aside to start with an empty store (its undelivered \
             events would then be lost)",
            path.display()
        )));
    }
    Ok(())
}

/// A plain-words message for an engine error at open.
fn open_error(path: &Path, error: fjall::Error) -> StoreError {
    let shown = path.display();
    StoreError::Open(match error {
        fjall::Error::Locked => {
            return StoreError::InUse(format!(
                "another kirimhook process is using the store at {shown}; stop it first, or \
                 give this one its own store.path"
            ))
        }
        fjall::Error::Io(e) => format!("cannot open the store at {shown}: {}", io_words(&e)),
        fjall::Error::InvalidVersion(version) => format!(
            "the store at {shown} was written in a format this kirimhook cannot read \
             ({version:?}); use the kirimhook version that wrote it, or move it aside"
        ),
        fjall::Error::Storage(lsm_error) => format!(
            "the store at {shown} cannot be read ({lsm_error:?}); if it is damaged, restore it \
             from a backup or move it aside to start with an empty store"
        ),
        other => format!(
            "the store at {shown} is damaged and cannot be opened ({other:?}); restore it from \
             a backup, or move it aside to start with an empty store"
        ),
    })
}

/// An I/O error in plain words, with what to do for the common cases.
fn io_words(e: &std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::PermissionDenied => format!(
            "permission denied ({e}); give the user kirimhook runs as write access to it, or \
             set store.path"
        ),
        std::io::ErrorKind::ReadOnlyFilesystem => {
            format!("the filesystem is read-only ({e}); set store.path to a writable directory")
        }
        std::io::ErrorKind::StorageFull => {
            format!("the disk is full ({e}); free some space")
        }
        _ => e.to_string(),
    }
}

/// Compares the recovered seqs with the acknowledged mark; reports and records a loss.
/// Returns the next seq to hand out (past every acknowledged one: seqs are never reused) and
/// the store's loss record.
fn check_recovery(
    path: &Path,
    db: &Database,
    ks: &Keyspaces,
    next_seq: u64,
    acked: Option<u64>,
) -> Result<(u64, RecoveryLoss), StoreError> {
    let mut loss = RecoveryLoss {
        dropped_total: ks
            .meta
            .get(RECOVERY_DROPPED)?
            .map(|v| be_u64(&v))
            .unwrap_or(0),
        last: ks
            .meta
            .get(RECOVERY_LAST)?
            .map(|v| String::from_utf8_lossy(&v).into_owned()),
    };
    let recovered_last = next_seq.saturating_sub(1);
    let Some(acked) = acked.filter(|&acked| acked > recovered_last) else {
        return Ok((next_seq, loss));
    };
    let dropped = acked - recovered_last;
    let journal = newest_journal(path)
        .map(|p| p.display().to_string())
        .unwrap_or_else(|| "-".into());
    let when = humantime::format_rfc3339_seconds(SystemTime::now());
    let words = format!(
        "{when}: {dropped} acknowledged deliveries (seqs {}..={acked}) were missing after \
         recovery; the journal ({journal}) was truncated or damaged",
        recovered_last + 1
    );
    tracing::error!(
        dropped,
        first_seq = recovered_last + 1,
        last_seq = acked,
        journal = %journal,
        store = %path.display(),
        "the store lost acknowledged deliveries at recovery: its journal was truncated or \
         damaged. They cannot be recovered from this store; kirim.dev will not resend them. \
         Restore the store from a backup, or replay them from kirim.dev's dashboard"
    );
    loss.dropped_total += dropped;
    loss.last = Some(words);
    let next_seq = acked + 1;
    let mut batch = db.batch().durability(Some(fjall::PersistMode::SyncData));
    batch.insert(&ks.meta, NEXT_SEQ, next_seq.to_be_bytes());
    batch.insert(&ks.meta, RECOVERY_DROPPED, loss.dropped_total.to_be_bytes());
    if let Some(last) = &loss.last {
        batch.insert(&ks.meta, RECOVERY_LAST, last.as_bytes());
    }
    batch.commit()?;
    Ok((next_seq, loss))
}

/// The most recently modified journal file of the store, for messages.
fn newest_journal(path: &Path) -> Option<PathBuf> {
    std::fs::read_dir(path)
        .ok()?
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().ends_with(".jnl"))
        .filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path())))
        .max()
        .map(|(_, p)| p)
}

/// Bytes allocated to the files under `path` (blocks, not lengths).
fn allocated_bytes(path: &Path) -> std::io::Result<u64> {
    use std::os::unix::fs::MetadataExt as _;
    let mut total = 0u64;
    let mut dirs = vec![path.to_owned()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir)? {
            let entry = entry?;
            let meta = match entry.metadata() {
                Ok(meta) => meta,
                // Removed between listing and reading (compaction): not there any more.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            };
            if meta.is_dir() {
                dirs.push(entry.path());
            } else {
                total = total.saturating_add(meta.blocks().saturating_mul(512));
            }
        }
    }
    Ok(total)
}

/// The next seq: the persisted counter, or one past the highest stored seq if that is larger.
fn recover_next_seq(ks: &Keyspaces) -> Result<u64, StoreError> {
    let stored = ks.meta.get(NEXT_SEQ)?.map(|v| be_u64(&v)).unwrap_or(1);
    let mut next = stored.max(1);
    for tree in [&ks.events, &ks.quarantine] {
        if let Some(guard) = tree.last_key_value() {
            let key = guard.key()?;
            next = next.max(be_u64(&key).saturating_add(1));
        }
    }
    Ok(next)
}

/// Reads a big-endian u64 from the first 8 bytes (missing bytes count as zero).
fn be_u64(bytes: &[u8]) -> u64 {
    let mut buf = [0u8; 8];
    let n = bytes.len().min(8);
    buf[..n].copy_from_slice(&bytes[..n]);
    u64::from_be_bytes(buf)
}

/// Keys used by the tests of this module and the writer.
#[cfg(test)]
fn key(s: &str) -> DedupeKey {
    serde_json::from_value(serde_json::Value::String(s.into())).unwrap()
}

#[cfg(test)]
mod tests;
