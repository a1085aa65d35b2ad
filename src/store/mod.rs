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
//! - `meta`: `next_seq` -> the next seq to hand out (a seq is never reused, even after a sweep).
//!
//! Reads are blocking engine calls; the async wrappers run them on tokio's blocking pool.

pub mod queue;
pub mod record;
mod writer;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fjall::{Database, Keyspace, KeyspaceCreateOptions};
use tokio::sync::{mpsc, oneshot, watch};

#[cfg(test)]
use crate::envelope::DedupeKey;
use crate::signature::Verified;
pub use queue::{AttemptState, DeadLetter, LastError, QueueEntry};
pub use record::{RecordMeta, StoredEvent};
use writer::{AdmitCommand, Command, Maintenance, SweepReport};

/// How many commands the writer's queue holds before callers wait (back-pressure).
const QUEUE_CAPACITY: usize = 8192;

/// Errors of the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The engine failed (I/O error, poisoned after a failed fsync, ...).
    #[error("storage engine: {0}")]
    Engine(#[from] fjall::Error),
    /// A batch could not be written or checked; nothing of it was stored.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// The writer thread is gone (shutting down or crashed).
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

/// Where a delivery goes once admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Destination {
    /// A recognised event: queued for the sinks whose filters match.
    Events,
    /// An authentic delivery with an unrecognised body: kept for an operator, not forwarded.
    Quarantine,
}

/// A verified delivery ready to be admitted. Building one needs a [`Verified`], so
/// unauthenticated input cannot reach the store.
#[derive(Debug)]
pub struct NewDelivery {
    /// Proof of authenticity (and the matched secret).
    pub verified: Verified,
    /// Where it goes.
    pub destination: Destination,
    /// Metadata to store; `secret_id` is overwritten from `verified`.
    pub meta: RecordMeta,
    /// The exact body bytes.
    pub body: bytes::Bytes,
    /// Sinks the event is queued for (their filters matched). Ignored for quarantine.
    pub sinks: Vec<String>,
}

/// Outcome of [`Store::admit`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// At least one key was new: the delivery is durably stored under this seq.
    New {
        /// Its sequence number.
        seq: u64,
    },
    /// Every key was already known: nothing was written.
    Duplicate,
}

/// Counts from one retention sweep.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Swept {
    /// Dedupe keys forgotten because they were older than the retention.
    pub keys: usize,
    /// Events removed because no configured sink had them queued any more.
    pub events: usize,
}

/// What a sink owes, from [`Store::sink_status`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SinkStatus {
    /// Events waiting in the sink's queue (including those waiting for a retry).
    pub queued: usize,
    /// When the oldest queued event arrived (ms since the epoch), if any is queued.
    pub oldest_received_ms: Option<u64>,
    /// Events in the sink's dead letters.
    pub dead_letters: usize,
}

/// A sink's outcome for one event, recorded with [`Store::settle`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Settlement {
    /// Delivered: the queue entry goes.
    Delivered(u64),
    /// Failed, try again later: the queue entry keeps this state.
    Retry(u64, AttemptState),
    /// Given up: the entry moves to the dead letters with this final state.
    DeadLetter(u64, AttemptState),
}

/// Handle to the store. Cheap to clone.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

struct Inner {
    db: Database,
    events: Keyspace,
    quarantine: Keyspace,
    queue: Keyspace,
    dead_letters: Keyspace,
    tx: mpsc::Sender<Command>,
    committed: watch::Receiver<u64>,
    requeued: watch::Receiver<u64>,
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
    meta: Keyspace,
}

const NEXT_SEQ: &[u8] = b"next_seq";

impl Store {
    /// Opens (or creates) the store in `path` and starts its writer thread. `sinks` are the
    /// configured sink names; queues of other sinks are kept (and reported at start-up).
    pub fn open(path: &Path, sinks: Vec<String>) -> Result<Store, StoreError> {
        std::fs::create_dir_all(path).map_err(|e| StoreError::Engine(e.into()))?;
        let db = Database::builder(path)
            .manual_journal_persist(true)
            .open()?;
        let ks = |name: &str| db.keyspace(name, KeyspaceCreateOptions::default);
        let keyspaces = Keyspaces {
            events: ks("events")?,
            quarantine: ks("quarantine")?,
            dedupe: ks("dedupe")?,
            dedupe_by_time: ks("dedupe_by_time")?,
            queue: ks("queue")?,
            dead_letters: ks("dead_letters")?,
            meta: ks("meta")?,
        };
        let next_seq = recover_next_seq(&keyspaces)?;
        for (sink, first) in writer::queued_sinks(&keyspaces.queue)? {
            if !sinks.contains(&sink) {
                tracing::warn!(
                    sink = %sink, first_seq = first,
                    "a sink that is no longer configured still has queued events; they are kept until it comes back"
                );
            }
        }
        let (committed_tx, committed) = watch::channel(next_seq.saturating_sub(1));
        let (requeued_tx, requeued) = watch::channel(0);
        let (tx, rx) = mpsc::channel(QUEUE_CAPACITY);
        let writer = writer::Writer::new(
            db.clone(),
            keyspaces.clone(),
            next_seq,
            committed_tx,
            requeued_tx,
        );
        let handle = std::thread::Builder::new()
            .name("kirimhook-store".into())
            .spawn(move || writer.run(rx))
            .map_err(|e| StoreError::Engine(e.into()))?;
        Ok(Store {
            inner: Arc::new(Inner {
                db,
                events: keyspaces.events,
                quarantine: keyspaces.quarantine,
                queue: keyspaces.queue,
                dead_letters: keyspaces.dead_letters,
                tx,
                committed,
                requeued,
                writer: std::sync::Mutex::new(Some(handle)),
            }),
        })
    }

    /// Admits a verified delivery: if any of its dedupe keys is new, writes the new keys, the
    /// record and its queue entries in one batch and returns only after that batch is fsync'd.
    pub async fn admit(&self, delivery: NewDelivery) -> Result<Admission, StoreError> {
        let mut meta = delivery.meta;
        meta.secret_id = delivery.verified.secret_id().to_owned();
        let record = record::encode(&meta, &delivery.body);
        let (reply, answer) = oneshot::channel();
        let command = Command::Admit(AdmitCommand {
            keys: meta.keys,
            destination: delivery.destination,
            sinks: delivery.sinks,
            received_at_ms: meta.received_at_ms,
            record,
            reply,
        });
        self.send(command).await?;
        answer.await.map_err(|_| StoreError::WriterGone)?
    }

    /// Records `sink`'s outcomes. Returns once they are handed to the writer, not once they are
    /// on disk: they ride along with the next group commit. Losing them in a crash only means a
    /// delivery is made again, which at-least-once allows.
    pub async fn settle(&self, sink: &str, outcomes: Vec<Settlement>) -> Result<(), StoreError> {
        if outcomes.is_empty() {
            return Ok(());
        }
        self.send(Command::Settle {
            sink: sink.to_owned(),
            outcomes,
            reply: None,
        })
        .await
    }

    /// Like [`Store::settle`], but returns only after the outcomes are fsync'd.
    pub async fn settle_durably(
        &self,
        sink: &str,
        outcomes: Vec<Settlement>,
    ) -> Result<(), StoreError> {
        let (reply, answer) = oneshot::channel();
        self.send(Command::Settle {
            sink: sink.to_owned(),
            outcomes,
            reply: Some(reply),
        })
        .await?;
        answer.await.map_err(|_| StoreError::WriterGone)?
    }

    /// Forgets dedupe keys first seen before `now - retention` and removes events that no sink
    /// has queued any more, once they are older than `keep_events` (0: at once). Works in
    /// bounded steps; returns what it removed.
    pub async fn sweep(
        &self,
        now: SystemTime,
        retention: Duration,
        keep_events: Duration,
    ) -> Result<Swept, StoreError> {
        let cutoff_ms = millis(now.checked_sub(retention).unwrap_or(UNIX_EPOCH));
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

    /// A receiver that changes whenever entries were put back into a queue below what a
    /// dispatcher may already have scanned (dead-letter retry, replay).
    pub fn requeued(&self) -> watch::Receiver<u64> {
        self.inner.requeued.clone()
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

    /// What `sink` owes: queue depth, the oldest queued event's arrival time, dead letters.
    /// Counts entries (O(queue + dead letters)): for status pages and scrapes, not hot paths.
    pub async fn sink_status(&self, sink: &str) -> Result<SinkStatus, StoreError> {
        let queue_ks = self.inner.queue.clone();
        let dead = self.inner.dead_letters.clone();
        let events = self.inner.events.clone();
        let prefix = queue::prefix(sink);
        blocking(move || {
            let mut status = SinkStatus::default();
            for guard in queue_ks.prefix(&prefix) {
                let key = guard.key()?;
                if status.queued == 0 {
                    let seq = queue::seq_of(&key);
                    status.oldest_received_ms = get_event(&events, seq)
                        .ok()
                        .flatten()
                        .map(|e| e.meta.received_at_ms);
                }
                status.queued += 1;
            }
            for guard in dead.prefix(&prefix) {
                guard.key()?;
                status.dead_letters += 1;
            }
            Ok(status)
        })
        .await
    }

    /// Number of events in `sink`'s queue (counts them: O(queue)).
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

    /// Number of stored events not yet removed by a sweep (approximate for large stores).
    pub fn event_count(&self) -> usize {
        self.inner.events.approximate_len()
    }

    /// Number of quarantined deliveries (approximate for large stores).
    pub fn quarantine_count(&self) -> usize {
        self.inner.quarantine.approximate_len()
    }

    /// A receiver that changes whenever new events are committed; its value is the highest
    /// committed event seq.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.inner.committed.clone()
    }

    /// Bytes the store takes on disk.
    pub fn disk_space(&self) -> Result<u64, StoreError> {
        Ok(self.inner.db.disk_space()?)
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

/// Milliseconds since the Unix epoch (0 for times before it).
pub fn millis(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Keys used by the tests of this module and the writer.
#[cfg(test)]
fn key(s: &str) -> DedupeKey {
    serde_json::from_value(serde_json::Value::String(s.into())).unwrap()
}

#[cfg(test)]
mod tests;
