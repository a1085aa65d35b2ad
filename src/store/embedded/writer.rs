//! The store's single writer thread: group commit.
//!
//! It blocks for one command, then takes every other command already waiting (up to
//! [`MAX_BATCH`]), decides each admission against the dedupe keyspace and the keys seen earlier in
//! the same batch, writes all of it as one atomic fjall batch and persists it with one
//! `fdatasync` before answering anyone. So a 200 is never sent before its event is on disk, and
//! N concurrent requests cost one flush, not N. Sinks' outcomes (delivered, retry, dead letter)
//! ride in the same batches. Sweeps run here too, so a sweep can never delete a key that a
//! concurrent admission has just written.
//!
//! Every batch also carries the exact counters it changed ([`Counts`]), and is checked by the
//! [`Guard`]: admissions are refused while free space is below the watermark, the
//! acknowledged high-water mark follows each commit, and a store directory that vanished
//! under the daemon fails the batch and stops the writer.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use fjall::{AbstractTree as _, Database, PersistMode};
use tokio::sync::{mpsc, oneshot, watch};

use super::guard::{DiskWatch, Guard};
use super::{
    be_u64, memtable_limit, queue, record, Change, Keyspaces, Shared, StoreError, NEXT_SEQ,
};
use crate::receive::envelope::DedupeKey;
use crate::store::model::{Admission, Counts, Destination, Swept};

/// Most commands folded into one batch.
const MAX_BATCH: usize = 4096;
/// Most keys, digests or events one sweep step removes: a step runs between two group
/// commits, so an admission waits behind at most one such bounded step.
const SWEEP_STEP: usize = 512;
/// How often the queues' low-water marks are moved past what was delivered (for the sweep
/// and `status`), at most.
const ADVANCE_LOWS_EVERY: std::time::Duration = std::time::Duration::from_secs(1);
/// Where the sweep of `dedupe_by_time` resumes: every index key below it is gone.
const DEDUPE_SWEPT_TO: &[u8] = b"sweep:dedupe_from";
/// Where the sweep of `signatures_by_time` resumes.
const SIGNATURES_SWEPT_TO: &[u8] = b"sweep:signatures_from";

pub(super) struct AdmitCommand {
    pub keys: Vec<DedupeKey>,
    /// SHA-256 of the signed content (`t` and body): a delivery seen before is a duplicate
    /// whatever its unsigned headers say.
    pub signed: [u8; 32],
    pub destination: Destination,
    pub sinks: Vec<String>,
    pub received_at_ms: u64,
    pub record: Vec<u8>,
    pub reply: oneshot::Sender<Result<Admission, StoreError>>,
}

pub(super) struct SweepReport {
    pub swept: Swept,
    pub more: bool,
}

pub(super) enum Command {
    Admit(AdmitCommand),
    Settle {
        sink: String,
        outcomes: Vec<Change>,
        reply: Option<oneshot::Sender<Result<(), StoreError>>>,
    },
    Sweep {
        cutoff_ms: u64,
        signatures_cutoff_ms: u64,
        keep_events_until_ms: u64,
        reply: oneshot::Sender<Result<SweepReport, StoreError>>,
    },
    Maintain {
        op: Maintenance,
        reply: oneshot::Sender<Result<usize, StoreError>>,
    },
    Close {
        reply: oneshot::Sender<Result<(), StoreError>>,
    },
}

/// Operator actions on queues, dead letters and quarantine (rare; each is its own batch).
pub(super) enum Maintenance {
    /// Dead letters of `sink` (all, or these seqs) back into its queue, as never attempted.
    Requeue {
        sink: String,
        seqs: Option<Vec<u64>>,
    },
    /// Forget dead letters of `sink` (all, or these seqs).
    DropDeadLetters {
        sink: String,
        seqs: Option<Vec<u64>>,
    },
    /// Forget quarantined deliveries (all, or these seqs).
    DropQuarantine { seqs: Option<Vec<u64>> },
    /// Queue every stored event received at or after `since_ms` that `matches` for `sink`
    /// again.
    Replay {
        sink: String,
        since_ms: u64,
        matches: Box<dyn Fn(&super::RecordMeta) -> bool + Send>,
    },
}

pub(super) struct Writer {
    db: Database,
    ks: Keyspaces,
    /// `[store] memtable_mib`: what each keyspace's memtable must stay under
    /// ([`Writer::bound_memtables`]).
    memtable_bytes: u64,
    /// Delivered events stay until the sweep (for replay); otherwise they go with their
    /// last queue entry ([`Writer::settle`]).
    keep_delivered: bool,
    next_seq: u64,
    committed: watch::Sender<u64>,
    requeued: watch::Sender<u64>,
    /// The counters as committed.
    counts: Counts,
    guard: Guard,
    disk: Arc<DiskWatch>,
    shared: Arc<Shared>,
    /// Low-water marks, so that no periodic or hot path scans a keyspace from its start
    /// through the tombstones that deliveries and sweeps leave there.
    lows: Lows,
    /// Set when a sweep's or an operator action's write failed: the engine refuses every
    /// later write, so the writer stops after answering.
    failed: bool,
}

/// Positions below which a keyspace holds nothing live. Each is a lower bound: an insert
/// below it lowers it at once, and it only moves up past entries known to be gone, so a scan
/// that starts there never misses an entry and never walks the same tombstones twice.
pub(super) struct Lows {
    /// Per sink: no queue entry has a lower seq (no entry at all when the sink is absent).
    pub queue: HashMap<String, u64>,
    /// No stored event has a lower seq.
    pub events: u64,
    /// Every `dedupe_by_time` key below this was swept.
    pub dedupe_from: Vec<u8>,
    /// Every `signatures_by_time` key below this was swept.
    pub signatures_from: Vec<u8>,
    advanced: std::time::Instant,
    /// Set when a queue's mark moved, so readers get the new marks.
    changed: bool,
}

impl Lows {
    /// The marks of a store just opened: one scan per queue and of the events, from the start
    /// (once per process), and the sweep positions kept in `meta`.
    pub fn recover(ks: &Keyspaces) -> Result<Lows, StoreError> {
        let queue = queued_sinks(&ks.queue)?.into_iter().collect();
        let events = match ks.events.first_key_value() {
            Some(guard) => be_u64(&guard.key()?),
            None => u64::MAX,
        };
        let position = |key: &[u8]| -> Result<Vec<u8>, StoreError> {
            Ok(ks.meta.get(key)?.map(|v| v.to_vec()).unwrap_or_default())
        };
        Ok(Lows {
            queue,
            events,
            dedupe_from: position(DEDUPE_SWEPT_TO)?,
            signatures_from: position(SIGNATURES_SWEPT_TO)?,
            advanced: std::time::Instant::now(),
            changed: true,
        })
    }

    /// `seq` was queued for `sink`.
    fn queued(&mut self, sink: &str, seq: u64) {
        match self.queue.get_mut(sink) {
            Some(low) if *low <= seq => {}
            Some(low) => {
                *low = seq;
                self.changed = true;
            }
            None => {
                self.queue.insert(sink.to_owned(), seq);
                self.changed = true;
            }
        }
    }

    /// The lowest seq any queue may still hold (`next_seq` when every queue is empty).
    fn lowest_pending(&self, next_seq: u64) -> u64 {
        self.queue.values().copied().fold(next_seq, u64::min)
    }
}

/// Queue and dead-letter keys this batch has already added (true) or removed (false), so that
/// counting sees the batch's own changes before they are committed.
#[derive(Default)]
struct Overlay {
    queue: HashMap<Vec<u8>, bool>,
    dead: HashMap<Vec<u8>, bool>,
}

/// What one batch will answer once it is persisted.
enum Pending {
    Admit(oneshot::Sender<Result<Admission, StoreError>>, Admission),
    Settle(Option<oneshot::Sender<Result<(), StoreError>>>),
}

impl Writer {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        db: Database,
        ks: Keyspaces,
        memtable_bytes: u64,
        keep_delivered: bool,
        next_seq: u64,
        committed: watch::Sender<u64>,
        requeued: watch::Sender<u64>,
        counts: Counts,
        guard: Guard,
        disk: Arc<DiskWatch>,
        shared: Arc<Shared>,
        lows: Lows,
    ) -> Self {
        let mut writer = Writer {
            db,
            ks,
            memtable_bytes,
            keep_delivered,
            next_seq,
            committed,
            requeued,
            counts,
            guard,
            disk,
            shared,
            lows,
            failed: false,
        };
        writer.publish_lows();
        writer
    }

    /// Hands the queues' marks to readers (`status` finds a queue's head from there).
    fn publish_lows(&mut self) {
        if std::mem::take(&mut self.lows.changed) {
            self.shared.set_queue_lows(self.lows.queue.clone());
        }
    }

    /// Moves each queue's mark up to its first live entry. Walks only the tombstones that
    /// deliveries left since the last call (each one once).
    fn advance_lows(&mut self) -> Result<(), StoreError> {
        self.lows.advanced = std::time::Instant::now();
        let sinks: Vec<(String, u64)> = self
            .lows
            .queue
            .iter()
            .map(|(sink, low)| (sink.clone(), *low))
            .collect();
        for (sink, low) in sinks {
            let prefix = queue::prefix(&sink);
            let head = match self.ks.queue.range(queue::key(&sink, low)..).next() {
                Some(guard) => {
                    let key = guard.key()?;
                    key.starts_with(&prefix).then(|| queue::seq_of(&key))
                }
                None => None,
            };
            match head {
                Some(seq) if seq == low => {}
                Some(seq) => {
                    self.lows.queue.insert(sink, seq);
                    self.lows.changed = true;
                }
                None => {
                    self.lows.queue.remove(&sink);
                    self.lows.changed = true;
                }
            }
        }
        self.publish_lows();
        Ok(())
    }

    /// Makes `counts` the committed counters, for the writer and its readers.
    fn publish(&mut self, counts: Counts) {
        self.shared.set_counts(counts.clone());
        self.counts = counts;
    }

    /// Whether `key` is in the queue, counting this batch's own changes.
    fn queued(&self, overlay: &Overlay, key: &[u8]) -> Result<bool, StoreError> {
        match overlay.queue.get(key) {
            Some(present) => Ok(*present),
            None => Ok(self.ks.queue.contains_key(key)?),
        }
    }

    /// Whether `key` is in the dead letters, counting this batch's own changes.
    fn dead(&self, overlay: &Overlay, key: &[u8]) -> Result<bool, StoreError> {
        match overlay.dead.get(key) {
            Some(present) => Ok(*present),
            None => Ok(self.ks.dead_letters.contains_key(key)?),
        }
    }

    /// Runs until every sender is dropped or a `Close` arrives.
    pub fn run(mut self, mut rx: mpsc::Receiver<Command>) {
        let mut commands = Vec::with_capacity(MAX_BATCH);
        while let Some(first) = rx.blocking_recv() {
            commands.push(first);
            while commands.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(c) => commands.push(c),
                    Err(_) => break,
                }
            }
            if self.apply(&mut commands) {
                return;
            }
        }
        if let Err(e) = self.db.persist(PersistMode::SyncData) {
            tracing::error!(error = %e, "final store flush failed");
        }
        if let Err(e) = self.guard.sync() {
            tracing::warn!(error = %e, "cannot sync the store's acknowledged mark");
        }
    }

    /// Seals every memtable that has grown past its configured size, so that the engine
    /// flushes it. The engine does this by itself with the size a keyspace was created with;
    /// this keeps `[store] memtable_mib` true for a store created with other sizes (before
    /// it was set, or by an older kirimhook with the engine's 64 MiB default).
    fn bound_memtables(&self) {
        for (name, ks) in self.ks.named() {
            if ks.tree.active_memtable().size() > memtable_limit(name, self.memtable_bytes) {
                if let Err(e) = ks.rotate_memtable() {
                    tracing::warn!(error = %e, "cannot seal a full memtable of the store");
                }
            }
        }
    }

    /// Commits a batch of a sweep or an operator action; a failed write stops the writer (the
    /// engine refuses every later write after one).
    fn commit_or_stop(&mut self, batch: fjall::OwnedWriteBatch) -> Result<(), StoreError> {
        batch.commit().map_err(|e| {
            self.stop_failed(&format!("a store write failed: {e}"));
            self.failed = true;
            StoreError::Engine(e.to_string())
        })
    }

    /// Stops for good after a failure no retry can heal: records why, for the daemon's exit.
    fn stop_failed(&self, reason: &str) {
        tracing::error!(error = %reason, "the store writer stops");
        self.shared.set_failure(reason.to_owned());
    }

    /// Applies a batch of commands. Returns true when the writer must stop.
    fn apply(&mut self, commands: &mut Vec<Command>) -> bool {
        if self.lows.advanced.elapsed() >= ADVANCE_LOWS_EVERY {
            if let Err(e) = self.advance_lows() {
                tracing::warn!(error = %e, "cannot move the queues' low-water marks");
            }
        }
        // fsync only when someone waits for it (admissions, durable settles); plain sink
        // outcomes ride along with the next synced batch, or the journal's own flush.
        let needs_sync = commands.iter().any(|c| {
            matches!(
                c,
                Command::Admit(_) | Command::Settle { reply: Some(_), .. }
            )
        });
        let mut batch = self.db.batch().durability(Some(if needs_sync {
            PersistMode::SyncData
        } else {
            PersistMode::Buffer
        }));
        let mut pending = Vec::with_capacity(commands.len());
        let mut seen: HashSet<DedupeKey> = HashSet::new();
        let mut seen_signed: HashSet<[u8; 32]> = HashSet::new();
        let mut counts = self.counts.clone();
        let mut overlay = Overlay::default();
        let mut sweeps = Vec::new();
        let mut maintenance = Vec::new();
        let mut close = None;
        let first_seq = self.next_seq;
        let mut last_event_seq = None;

        let mut failure: Option<String> = None;
        for command in commands.drain(..) {
            match command {
                Command::Admit(admit) => {
                    if failure.is_some() {
                        let _ = admit.reply.send(Err(StoreError::Unavailable(
                            "an earlier read in the same batch failed".into(),
                        )));
                        continue;
                    }
                    // Refused before anything is written when the disk is nearly full.
                    if let Err(reason) = self.disk.admit(admit.record.len() as u64) {
                        let _ = admit.reply.send(Err(StoreError::LowDisk(reason)));
                        continue;
                    }
                    match self.is_replay(&admit.signed, &seen_signed) {
                        Ok(true) => {
                            pending.push(Pending::Admit(admit.reply, Admission::Duplicate));
                            continue;
                        }
                        Ok(false) => {}
                        Err(e) => {
                            failure = Some(e.to_string());
                            let _ = admit.reply.send(Err(e));
                            continue;
                        }
                    }
                    match self.is_new(&admit.keys, &seen) {
                        Ok(new_keys) if new_keys.is_empty() => {
                            // Remembered too: a duplicate (a kirim.dev retry, signed anew)
                            // replayed with other unsigned headers stays a duplicate.
                            self.remember_signed(&mut batch, admit.signed, admit.received_at_ms);
                            seen_signed.insert(admit.signed);
                            pending.push(Pending::Admit(admit.reply, Admission::Duplicate));
                        }
                        Ok(new_keys) => {
                            let seq = self.next_seq;
                            self.next_seq += 1;
                            let tree = match admit.destination {
                                Destination::Events => {
                                    last_event_seq = Some(seq);
                                    counts.events += 1;
                                    self.lows.events = self.lows.events.min(seq);
                                    &self.ks.events
                                }
                                Destination::Quarantine => {
                                    counts.quarantine += 1;
                                    &self.ks.quarantine
                                }
                            };
                            // The event before its queue entries: a reader that sees an
                            // entry finds the event (readers also stop at the committed seq).
                            batch.insert(tree, seq.to_be_bytes(), admit.record);
                            if admit.destination == Destination::Events {
                                for sink in &admit.sinks {
                                    let key = queue::key(sink, seq);
                                    batch.insert(&self.ks.queue, key.as_slice(), []);
                                    overlay.queue.insert(key, true);
                                    counts.add_queued(sink, 1);
                                    self.lows.queued(sink, seq);
                                }
                            }
                            let ts = admit.received_at_ms.to_be_bytes();
                            self.remember_signed(&mut batch, admit.signed, admit.received_at_ms);
                            seen_signed.insert(admit.signed);
                            for key in new_keys {
                                batch.insert(&self.ks.dedupe, key.as_str(), ts);
                                let mut by_time = Vec::with_capacity(8 + key.as_str().len());
                                by_time.extend_from_slice(&ts);
                                by_time.extend_from_slice(key.as_str().as_bytes());
                                batch.insert(&self.ks.dedupe_by_time, by_time, []);
                                seen.insert(key);
                            }
                            pending.push(Pending::Admit(admit.reply, Admission::New { seq }));
                        }
                        Err(e) => {
                            failure = Some(e.to_string());
                            let _ = admit.reply.send(Err(e));
                        }
                    }
                }
                Command::Settle {
                    sink,
                    outcomes,
                    reply,
                } => {
                    if let Err(e) =
                        self.settle(&mut batch, &mut counts, &mut overlay, &sink, outcomes)
                    {
                        tracing::error!(sink = %sink, error = %e, "recording sink outcomes failed");
                    }
                    pending.push(Pending::Settle(reply));
                }
                Command::Sweep {
                    cutoff_ms,
                    signatures_cutoff_ms,
                    keep_events_until_ms,
                    reply,
                } => sweeps.push((cutoff_ms, signatures_cutoff_ms, keep_events_until_ms, reply)),
                Command::Maintain { op, reply } => maintenance.push((op, reply)),
                Command::Close { reply } => close = Some(reply),
            }
        }

        if let Some(reason) = failure {
            // A read failed: the engine is unhealthy. Answer everyone; write nothing.
            tracing::error!(error = %reason, "store read failed; batch refused");
            self.next_seq = first_seq;
            fail_all(pending, &reason);
        } else if !pending.is_empty() {
            if self.next_seq != first_seq {
                batch.insert(&self.ks.meta, NEXT_SEQ, self.next_seq.to_be_bytes());
            }
            counts.write_changed(&self.counts, &mut batch, &self.ks.meta, false);
            match batch.commit() {
                Ok(()) => {
                    // Written into files that were deleted under us: nothing of it is safe.
                    if let Err(reason) = self.guard.check_identity() {
                        self.next_seq = first_seq;
                        self.stop_failed(&reason);
                        fail_all(pending, &reason);
                        return true;
                    }
                    self.publish(counts);
                    self.publish_lows();
                    if self.next_seq != first_seq {
                        if let Err(e) = self.guard.acked(self.next_seq - 1) {
                            tracing::warn!(error = %e, "cannot write the store's acknowledged mark");
                        }
                    }
                    // Publish the new events before anyone hears "accepted": a shutdown that
                    // follows a 200 must find them.
                    if let Some(seq) = last_event_seq {
                        self.committed.send_replace(seq);
                    }
                    for p in pending {
                        match p {
                            Pending::Admit(reply, outcome) => {
                                let _ = reply.send(Ok(outcome));
                            }
                            Pending::Settle(Some(reply)) => {
                                let _ = reply.send(Ok(()));
                            }
                            Pending::Settle(None) => {}
                        }
                    }
                    self.bound_memtables();
                }
                Err(e) => {
                    // fjall refuses every later write after a failed journal write or fsync:
                    // stop, so the daemon exits and its supervisor restarts it on a recovered
                    // store, instead of answering 503 for ever.
                    self.stop_failed(&format!("a store write failed: {e}"));
                    self.next_seq = first_seq;
                    fail_all(pending, &e.to_string());
                    return true;
                }
            }
        }

        for (cutoff_ms, signatures_cutoff_ms, keep_events_until_ms, reply) in sweeps {
            let _ =
                reply.send(self.sweep_step(cutoff_ms, signatures_cutoff_ms, keep_events_until_ms));
        }
        for (op, reply) in maintenance {
            let _ = reply.send(self.maintain(op));
        }

        if self.failed {
            return true;
        }
        if let Some(reply) = close {
            let persisted = self.db.persist(PersistMode::SyncData).map_err(Into::into);
            if let Err(e) = self.guard.sync() {
                tracing::warn!(error = %e, "cannot sync the store's acknowledged mark");
            }
            let _ = reply.send(persisted);
            return true;
        }
        false
    }

    /// Adds the digest of a delivery's signed content, first seen at `at_ms`, to the batch.
    fn remember_signed(&self, batch: &mut fjall::OwnedWriteBatch, signed: [u8; 32], at_ms: u64) {
        let ts = at_ms.to_be_bytes();
        batch.insert(&self.ks.signatures, signed, ts);
        let mut by_time = Vec::with_capacity(40);
        by_time.extend_from_slice(&ts);
        by_time.extend_from_slice(&signed);
        batch.insert(&self.ks.signatures_by_time, by_time, []);
    }

    /// Whether this signed content (`t` and body) was admitted before: a captured delivery
    /// sent again with other unsigned headers is a duplicate, never a new event.
    fn is_replay(&self, signed: &[u8; 32], seen: &HashSet<[u8; 32]>) -> Result<bool, StoreError> {
        Ok(seen.contains(signed) || self.ks.signatures.contains_key(signed)?)
    }

    /// The keys of `keys` that are neither stored nor earlier in this batch.
    fn is_new(
        &self,
        keys: &[DedupeKey],
        seen: &HashSet<DedupeKey>,
    ) -> Result<Vec<DedupeKey>, StoreError> {
        let mut new = Vec::new();
        for key in keys {
            if seen.contains(key) || new.contains(key) {
                continue;
            }
            if !self.ks.dedupe.contains_key(key.as_str())? {
                new.push(key.clone());
            }
        }
        Ok(new)
    }

    /// Whether a queue other than `sink`'s still holds `seq`, counting this batch's changes.
    /// Every queue counts, also that of a sink no longer configured.
    fn owed_elsewhere(&self, overlay: &Overlay, sink: &str, seq: u64) -> Result<bool, StoreError> {
        for (other, low) in &self.lows.queue {
            if other != sink && seq >= *low && self.queued(overlay, &queue::key(other, seq))? {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Adds `sink`'s outcomes to the batch. A dead letter copies the event record, so it
    /// outlives the event's removal.
    fn settle(
        &self,
        batch: &mut fjall::OwnedWriteBatch,
        counts: &mut Counts,
        overlay: &mut Overlay,
        sink: &str,
        outcomes: Vec<Change>,
    ) -> Result<(), StoreError> {
        for outcome in outcomes {
            match outcome {
                Change::Delivered(seq) => {
                    let key = queue::key(sink, seq);
                    // Already gone (settled twice): nothing to remove or count.
                    if self.queued(overlay, &key)? {
                        batch.remove(&self.ks.queue, key.as_slice());
                        overlay.queue.insert(key, false);
                        counts.remove_queued(sink);
                        if !self.keep_delivered && !self.owed_elsewhere(overlay, sink, seq)? {
                            // Written once at admission (a requeue writes it again only
                            // after it was removed), so a weak tombstone is enough: it and
                            // the record cancel out when the memtable is flushed or the
                            // table compacted, instead of a tombstone kept for ever after.
                            batch.remove_weak(&self.ks.events, seq.to_be_bytes());
                            counts.events = counts.events.saturating_sub(1);
                        }
                    }
                }
                Change::Retry(seq, state) => {
                    let key = queue::key(sink, seq);
                    // Never resurrect an entry that is gone (delivered or dead-lettered).
                    if self.queued(overlay, &key)? {
                        batch.insert(&self.ks.queue, key, queue::encode_state(&state));
                    }
                }
                Change::DeadLetter(seq, state) => {
                    let key = queue::key(sink, seq);
                    if !self.queued(overlay, &key)? {
                        continue;
                    }
                    match self.ks.events.get(seq.to_be_bytes())? {
                        Some(record) => {
                            if !self.dead(overlay, &key)? {
                                counts.add_dead(sink);
                            }
                            batch.insert(
                                &self.ks.dead_letters,
                                key.as_slice(),
                                queue::encode_dead_letter(&state, &record),
                            );
                            overlay.dead.insert(key.clone(), true);
                        }
                        None => tracing::error!(
                            sink, seq, "dead letter without its event (already removed); only its queue entry is dropped"
                        ),
                    }
                    batch.remove(&self.ks.queue, key.as_slice());
                    overlay.queue.insert(key, false);
                    counts.remove_queued(sink);
                }
            }
        }
        Ok(())
    }

    /// Applies one operator action as its own fsync'd batch; returns how many items it touched.
    fn maintain(&mut self, op: Maintenance) -> Result<usize, StoreError> {
        let mut batch = self.db.batch().durability(Some(PersistMode::SyncData));
        let mut counts = self.counts.clone();
        let mut touched = 0;
        let mut requeued = false;
        match op {
            Maintenance::Requeue { sink, seqs } => {
                let prefix = queue::prefix(&sink);
                for (key, value) in pick(&self.ks.dead_letters, &prefix, seqs, |seq| {
                    queue::key(&sink, seq)
                })? {
                    let seq = queue::seq_of(&key);
                    if !self.ks.events.contains_key(seq.to_be_bytes())? {
                        let record = queue::dead_letter_record(&value)
                            .map_err(|source| StoreError::Decode { seq, source })?;
                        batch.insert(&self.ks.events, seq.to_be_bytes(), record);
                        counts.events += 1;
                        self.lows.events = self.lows.events.min(seq);
                    }
                    if !self.ks.queue.contains_key(&key)? {
                        counts.add_queued(&sink, 1);
                    }
                    self.lows.queued(&sink, seq);
                    batch.insert(&self.ks.queue, key.clone(), []);
                    batch.remove(&self.ks.dead_letters, key);
                    counts.remove_dead(&sink);
                    touched += 1;
                }
                requeued = touched > 0;
            }
            Maintenance::DropDeadLetters { sink, seqs } => {
                let prefix = queue::prefix(&sink);
                for (key, _) in pick(&self.ks.dead_letters, &prefix, seqs, |seq| {
                    queue::key(&sink, seq)
                })? {
                    batch.remove(&self.ks.dead_letters, key);
                    counts.remove_dead(&sink);
                    touched += 1;
                }
            }
            Maintenance::DropQuarantine { seqs } => {
                for (key, _) in pick(&self.ks.quarantine, &[], seqs, |seq| {
                    seq.to_be_bytes().to_vec()
                })? {
                    batch.remove(&self.ks.quarantine, key);
                    counts.quarantine = counts.quarantine.saturating_sub(1);
                    touched += 1;
                }
            }
            Maintenance::Replay {
                sink,
                since_ms,
                matches,
            } => {
                for guard in self.ks.events.range(self.lows.events.to_be_bytes()..) {
                    let (key, value) = guard.into_inner()?;
                    let seq = be_u64(&key);
                    let event = record::decode(seq, &value)
                        .map_err(|source| StoreError::Decode { seq, source })?;
                    if event.meta.received_at_ms < since_ms || !matches(&event.meta) {
                        continue;
                    }
                    let entry = queue::key(&sink, seq);
                    if !self.ks.queue.contains_key(&entry)? {
                        batch.insert(&self.ks.queue, entry, []);
                        counts.add_queued(&sink, 1);
                        self.lows.queued(&sink, seq);
                        touched += 1;
                    }
                }
                requeued = touched > 0;
            }
        }
        counts.write_changed(&self.counts, &mut batch, &self.ks.meta, false);
        self.commit_or_stop(batch)?;
        self.publish(counts);
        self.publish_lows();
        if requeued {
            self.requeued.send_modify(|generation| *generation += 1);
        }
        Ok(touched)
    }

    /// One bounded step of the retention sweep. Buffered, not fsync'd: a lost sweep is redone.
    /// Every scan starts at a low-water mark, never at the start of a keyspace, so a step's
    /// cost is what it removes (and the tombstones since the last step), not everything that
    /// was ever removed before.
    fn sweep_step(
        &mut self,
        cutoff_ms: u64,
        signatures_cutoff_ms: u64,
        keep_events_until_ms: u64,
    ) -> Result<SweepReport, StoreError> {
        self.advance_lows()?;
        let mut batch = self.db.batch();
        let mut counts = self.counts.clone();
        let mut swept = Swept::default();

        // Signed-content digests are needed only while a replay could still verify.
        let signatures = sweep_index(
            &self.ks.signatures_by_time,
            &self.ks.signatures,
            &self.lows.signatures_from,
            signatures_cutoff_ms,
            &mut batch,
        )?;
        let dedupe = sweep_index(
            &self.ks.dedupe_by_time,
            &self.ks.dedupe,
            &self.lows.dedupe_from,
            cutoff_ms,
            &mut batch,
        )?;
        swept.keys = dedupe.removed;
        for (key, from) in [
            (SIGNATURES_SWEPT_TO, &signatures.resume_from),
            (DEDUPE_SWEPT_TO, &dedupe.resume_from),
        ] {
            batch.insert(&self.ks.meta, key, from.as_slice());
        }

        // Events below the lowest seq any queue may still hold are owed to no one. Every
        // queue counts, also that of a sink no longer configured: its backlog is kept until
        // the sink comes back (or an operator drops it).
        let lowest_pending = self.lows.lowest_pending(self.next_seq);
        let mut events_low = self.lows.events;
        let mut more_events = false;
        if events_low < lowest_pending {
            events_low = lowest_pending;
            let range = self.lows.events.to_be_bytes()..lowest_pending.to_be_bytes();
            for guard in self.ks.events.range(range) {
                let (key, value) = guard.into_inner()?;
                let seq = be_u64(&key);
                if swept.events == SWEEP_STEP {
                    more_events = true;
                    events_low = seq;
                    break;
                }
                // Delivered events younger than the keep window stay (for replay); seqs follow
                // arrival, so the first young one ends the sweep.
                if keep_events_until_ms > 0 {
                    let received = record::received_at_ms(&value).unwrap_or(0);
                    if received >= keep_events_until_ms {
                        events_low = seq;
                        break;
                    }
                }
                batch.remove(&self.ks.events, key);
                swept.events += 1;
                counts.events = counts.events.saturating_sub(1);
            }
        }
        counts.write_changed(&self.counts, &mut batch, &self.ks.meta, false);
        self.commit_or_stop(batch)?;
        self.publish(counts);
        self.lows.events = events_low;
        self.lows.dedupe_from = dedupe.resume_from;
        self.lows.signatures_from = signatures.resume_from;
        Ok(SweepReport {
            swept,
            more: signatures.more || dedupe.more || more_events,
        })
    }
}

/// What one step over a time index removed.
struct IndexSweep {
    removed: usize,
    /// Where the next step starts: every index key below it is gone.
    resume_from: Vec<u8>,
    /// The step stopped at its bound before the cutoff.
    more: bool,
}

/// Removes up to [`SWEEP_STEP`] entries of `index` (time ++ key) from `from` up to `cutoff_ms`,
/// and each indexed key of `keys` that still carries that time.
fn sweep_index(
    index: &fjall::Keyspace,
    keys: &fjall::Keyspace,
    from: &[u8],
    cutoff_ms: u64,
    batch: &mut fjall::OwnedWriteBatch,
) -> Result<IndexSweep, StoreError> {
    let cutoff = cutoff_ms.to_be_bytes();
    let mut sweep = IndexSweep {
        removed: 0,
        resume_from: from.to_vec(),
        more: false,
    };
    if from >= cutoff.as_slice() {
        return Ok(sweep);
    }
    for guard in index.range(from.to_vec()..cutoff.to_vec()) {
        let index_key = guard.key()?;
        if sweep.removed == SWEEP_STEP {
            sweep.more = true;
            sweep.resume_from = index_key.to_vec();
            return Ok(sweep);
        }
        let ts = be_u64(&index_key);
        let key = index_key.get(8..).unwrap_or_default();
        // Remove the key only if it still carries this time (it may have been seen again).
        if keys.get(key)?.is_some_and(|v| be_u64(&v) == ts) {
            batch.remove(keys, key);
        }
        batch.remove(index, index_key);
        sweep.removed += 1;
    }
    // Everything below the cutoff is gone.
    sweep.resume_from = cutoff.to_vec();
    Ok(sweep)
}

/// The entries an operator action selects: every key under `prefix` when `seqs` is `None`,
/// else the listed ones that exist (looked up directly, not by scanning).
fn pick(
    keyspace: &fjall::Keyspace,
    prefix: &[u8],
    seqs: Option<Vec<u64>>,
    key_of: impl Fn(u64) -> Vec<u8>,
) -> Result<Vec<(Vec<u8>, fjall::Slice)>, StoreError> {
    let mut out = Vec::new();
    match seqs {
        None => {
            for guard in keyspace.prefix(prefix) {
                let (key, value) = guard.into_inner()?;
                out.push((key.to_vec(), value));
            }
        }
        Some(mut seqs) => {
            seqs.sort_unstable();
            seqs.dedup();
            for seq in seqs {
                let key = key_of(seq);
                if let Some(value) = keyspace.get(&key)? {
                    out.push((key, value));
                }
            }
        }
    }
    Ok(out)
}

/// Every sink that has a queue, with the lowest seq in it (skip-scan over the queue keyspace).
pub(super) fn queued_sinks(queue_ks: &fjall::Keyspace) -> Result<Vec<(String, u64)>, StoreError> {
    let mut out = Vec::new();
    let mut start: Vec<u8> = Vec::new();
    loop {
        let Some(guard) = queue_ks.range(start.as_slice()..).next() else {
            return Ok(out);
        };
        let key = guard.key()?;
        let Some(end) = key.iter().position(|&b| b == 0) else {
            return Ok(out);
        };
        let sink = String::from_utf8_lossy(&key[..end]).into_owned();
        out.push((sink, queue::seq_of(&key)));
        // Sink names never contain 0 or 1 bytes: sink ++ 1 sorts after all of this sink's keys.
        start = key[..end].to_vec();
        start.push(1);
    }
}

fn fail_all(pending: Vec<Pending>, reason: &str) {
    for p in pending {
        let error = StoreError::Unavailable(reason.to_owned());
        match p {
            Pending::Admit(reply, _) => {
                let _ = reply.send(Err(error));
            }
            Pending::Settle(Some(reply)) => {
                let _ = reply.send(Err(error));
            }
            Pending::Settle(None) => {
                tracing::warn!(error = %error, "sink outcomes not recorded; those events will be delivered again");
            }
        }
    }
}
