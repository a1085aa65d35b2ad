//! The durable store: the only code in kirimhook that knows the storage engine (fjall).
//!
//! Its API is small: [`Store::admit`] (dedupe check + keys + event in one fsync'd batch),
//! [`Store::read_after`] (next events for a sink), [`Store::ack`] (a sink's durable progress) and
//! [`Store::sweep`] (retention). Every write goes through one writer thread
//! ([`writer`]) that takes every command waiting at that moment, applies them as one atomic
//! batch and persists it with a single `fdatasync`: concurrent requests share flushes (group
//! commit), and the dedupe check and the insert can never race because one thread does both.
//!
//! Keyspaces:
//! - `events`: seq (u64 BE) -> record ([`record`]); the deliveries that sinks read.
//! - `quarantine`: seq -> record; authentic deliveries whose body was not recognised.
//! - `dedupe`: dedupe key -> first-seen time (ms, u64 BE).
//! - `dedupe_by_time`: first-seen time (u64 BE) ++ key -> empty; lets the sweep find old keys.
//! - `cursors`: sink name -> highest seq that sink has taken (u64 BE).
//! - `meta`: `next_seq` -> the next seq to hand out (so a seq is never reused, even after a sweep).
//!
//! Reads are blocking engine calls; the async wrappers run them on tokio's blocking pool.

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
pub use record::{RecordMeta, StoredEvent};
use writer::{AdmitCommand, Command, SweepReport};

/// How many commands the writer's queue holds before `admit` waits (back-pressure).
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
    /// A recognised event: sinks read it.
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
    /// Events removed because every sink had taken them.
    pub events: usize,
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
    cursors: Keyspace,
    tx: mpsc::Sender<Command>,
    committed: watch::Receiver<u64>,
    writer: std::sync::Mutex<Option<std::thread::JoinHandle<()>>>,
}

pub(crate) struct Keyspaces {
    events: Keyspace,
    quarantine: Keyspace,
    dedupe: Keyspace,
    dedupe_by_time: Keyspace,
    cursors: Keyspace,
    meta: Keyspace,
}

const NEXT_SEQ: &[u8] = b"next_seq";

impl Store {
    /// Opens (or creates) the store in `path` and starts its writer thread. `sinks` are the
    /// configured sink names: an event is removed by the sweep once all of them have taken it.
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
            cursors: ks("cursors")?,
            meta: ks("meta")?,
        };
        let next_seq = recover_next_seq(&keyspaces)?;
        let last = next_seq.saturating_sub(1);
        let (committed_tx, committed) = watch::channel(last);
        let (tx, rx) = mpsc::channel(QUEUE_CAPACITY);
        let inner_keyspaces = Keyspaces {
            events: keyspaces.events.clone(),
            quarantine: keyspaces.quarantine.clone(),
            dedupe: keyspaces.dedupe.clone(),
            dedupe_by_time: keyspaces.dedupe_by_time.clone(),
            cursors: keyspaces.cursors.clone(),
            meta: keyspaces.meta.clone(),
        };
        let writer =
            writer::Writer::new(db.clone(), inner_keyspaces, next_seq, sinks, committed_tx);
        let handle = std::thread::Builder::new()
            .name("kirimhook-store".into())
            .spawn(move || writer.run(rx))
            .map_err(|e| StoreError::Engine(e.into()))?;
        Ok(Store {
            inner: Arc::new(Inner {
                db,
                events: keyspaces.events,
                quarantine: keyspaces.quarantine,
                cursors: keyspaces.cursors,
                tx,
                committed,
                writer: std::sync::Mutex::new(Some(handle)),
            }),
        })
    }

    /// Admits a verified delivery: if any of its dedupe keys is new, writes the new keys and the
    /// record in one batch and returns only after that batch is fsync'd.
    pub async fn admit(&self, delivery: NewDelivery) -> Result<Admission, StoreError> {
        let mut meta = delivery.meta;
        meta.secret_id = delivery.verified.secret_id().to_owned();
        let keys = meta.keys.clone();
        let record = record::encode(&meta, &delivery.body);
        let (reply, answer) = oneshot::channel();
        let command = Command::Admit(AdmitCommand {
            keys,
            destination: delivery.destination,
            received_at_ms: meta.received_at_ms,
            record,
            reply,
        });
        self.send(command).await?;
        answer.await.map_err(|_| StoreError::WriterGone)?
    }

    /// Records durably that sink `sink` has taken every event up to and including `seq`.
    pub async fn ack(&self, sink: &str, seq: u64) -> Result<(), StoreError> {
        let (reply, answer) = oneshot::channel();
        self.send(Command::Ack {
            sink: sink.to_owned(),
            seq,
            reply,
        })
        .await?;
        answer.await.map_err(|_| StoreError::WriterGone)?
    }

    /// Forgets dedupe keys first seen before `now - retention` and removes events that every
    /// configured sink has taken. Works in bounded steps; returns what it removed.
    pub async fn sweep(&self, now: SystemTime, retention: Duration) -> Result<Swept, StoreError> {
        let cutoff_ms = millis(now.checked_sub(retention).unwrap_or(UNIX_EPOCH));
        let mut total = Swept::default();
        loop {
            let (reply, answer) = oneshot::channel();
            self.send(Command::Sweep { cutoff_ms, reply }).await?;
            let SweepReport { swept, more } =
                answer.await.map_err(|_| StoreError::WriterGone)??;
            total.keys += swept.keys;
            total.events += swept.events;
            if !more {
                return Ok(total);
            }
        }
    }

    /// The highest seq sink `sink` has acknowledged (0 when it has none yet).
    pub fn cursor(&self, sink: &str) -> Result<u64, StoreError> {
        Ok(self
            .inner
            .cursors
            .get(sink)?
            .map(|v| be_u64(&v))
            .unwrap_or(0))
    }

    /// Up to `limit` events with seq greater than `after`, in seq order.
    pub async fn read_after(
        &self,
        after: u64,
        limit: usize,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        let events = self.inner.events.clone();
        tokio::task::spawn_blocking(move || read_range(&events, after, limit))
            .await
            .map_err(|e| StoreError::Task(e.to_string()))?
    }

    /// Up to `limit` quarantined deliveries with seq greater than `after`.
    pub async fn read_quarantine(
        &self,
        after: u64,
        limit: usize,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        let quarantine = self.inner.quarantine.clone();
        tokio::task::spawn_blocking(move || read_range(&quarantine, after, limit))
            .await
            .map_err(|e| StoreError::Task(e.to_string()))?
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
    /// Later calls to `admit`/`ack` fail with [`StoreError::WriterGone`].
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
