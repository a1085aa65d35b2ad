//! Claims on the embedded engine: which queue entries are leased to a dispatcher right now.
//!
//! One process owns an embedded store, so leases live in memory: a restart forgets them, and
//! every queued entry is claimable again (at-least-once). Per sink, the engine keeps a scan
//! position over the queue (entries never attempted are handed out in seq order, read ahead
//! with their events), a timer heap of entries waiting for a retry, and the leases. Neither
//! a backlog nor a long retry makes it rescan the queue; a requeue (dead-letter retry,
//! replay) puts entries back below the scan position, so the next claim scans again from the
//! start, after the outcomes already handed to the writer are applied.
//!
//! Only entries up to the highest committed seq are scanned: a batch the writer is still
//! applying can be partly visible, and its entries must wait until it is whole.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::{Change, Store};
use crate::store::model::{
    millis, AttemptState, Claim, ClaimOrder, ClaimToken, Claimed, Outcome, QueueEntry, Settled,
    Settlement, StoredEvent,
};
use crate::store::StoreError;

/// Queue entries read from the engine at a time.
const SCAN: usize = 1024;

/// A queue entry and its event (`None`: not read yet).
type Item = (QueueEntry, Option<Arc<StoredEvent>>);

/// The claim state of every sink.
#[derive(Default)]
pub(super) struct Claims {
    sinks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<SinkClaims>>>>,
    next_token: AtomicU64,
}

/// One sink's claim state.
#[derive(Default)]
struct SinkClaims {
    /// Entries that failed before were loaded from the queue (done at the first claim).
    loaded: bool,
    /// The requeue generation this state has seen.
    requeue_seen: u64,
    /// Highest seq the fresh scan has passed.
    scanned: u64,
    /// Entries never attempted, read ahead from the queue with their events, in seq order.
    fresh: VecDeque<Item>,
    /// Entries waiting for a retry: (due time ms, seq), earliest first; their states.
    retries: BinaryHeap<Reverse<(u64, u64)>>,
    waiting: HashMap<u64, AttemptState>,
    /// Entries handed out and not settled yet.
    leased: HashMap<u64, Lease>,
}

struct Lease {
    token: ClaimToken,
    until_ms: u64,
    entry: QueueEntry,
    event: Arc<StoredEvent>,
}

impl Claims {
    fn sink(&self, sink: &str) -> Arc<tokio::sync::Mutex<SinkClaims>> {
        let mut sinks = super::lock(&self.sinks);
        sinks.entry(sink.to_owned()).or_default().clone()
    }

    fn token(&self) -> ClaimToken {
        ClaimToken(self.next_token.fetch_add(1, Ordering::Relaxed) + 1)
    }
}

impl Store {
    /// Leases up to `max` due entries of `sink`'s queue for `lease`; see
    /// [`crate::store::Store::claim`].
    pub async fn claim(
        &self,
        sink: &str,
        max: usize,
        lease: Duration,
        order: ClaimOrder,
    ) -> Result<Claimed, StoreError> {
        let state = self.inner.claims.sink(sink);
        let mut state = state.lock().await;
        if !state.loaded {
            self.load_retries(sink, &mut state).await?;
        }
        let generation = *self.inner.requeued.borrow();
        if generation != state.requeue_seen {
            // Entries were put back below the scan position: scan again from the start, once
            // the outcomes already handed to the writer are applied (so nothing just
            // delivered is found again).
            self.barrier().await?;
            state.requeue_seen = generation;
            state.fresh.clear();
            state.scanned = 0;
        }
        let now = millis(std::time::SystemTime::now());
        state.expire(now);
        let mut picked: Vec<Item> = Vec::new();
        match order {
            ClaimOrder::Any => {
                while picked.len() < max {
                    match state.retries.peek() {
                        Some(Reverse((due, seq))) if *due <= now => {
                            let seq = *seq;
                            state.retries.pop();
                            if let Some(state_of) = state.waiting.remove(&seq) {
                                picked.push((
                                    QueueEntry {
                                        seq,
                                        state: state_of,
                                    },
                                    None,
                                ));
                            }
                            continue;
                        }
                        _ => {}
                    }
                    if !self.pick_fresh(sink, &mut state, &mut picked).await? {
                        break;
                    }
                }
            }
            // Nothing is handed out while an earlier claim is out; then a run from the head.
            ClaimOrder::Strict if state.leased.is_empty() => {
                if state.pick_waiting_run(max, now, &mut picked) {
                    while picked.len() < max {
                        if !self.pick_fresh(sink, &mut state, &mut picked).await? {
                            break;
                        }
                    }
                }
            }
            ClaimOrder::Strict => {}
        }
        let claims = self.lease(sink, &mut state, picked, now, lease).await?;
        let next_due_ms = state
            .retries
            .peek()
            .map(|Reverse((due, _))| *due)
            .into_iter()
            .chain(state.leased.values().map(|l| l.until_ms))
            .min();
        Ok(Claimed {
            claims,
            next_due_ms,
        })
    }

    /// Records `sink`'s outcomes for its claims; see [`crate::store::Store::settle`].
    pub async fn settle(
        &self,
        sink: &str,
        settlements: Vec<Settlement>,
    ) -> Result<Settled, StoreError> {
        if settlements.is_empty() {
            return Ok(Settled::default());
        }
        let state = self.inner.claims.sink(sink);
        let mut state = state.lock().await;
        let mut settled = Settled::default();
        let mut changes = Vec::with_capacity(settlements.len());
        let mut released = Vec::new();
        for settlement in settlements {
            let held = state
                .leased
                .get(&settlement.seq)
                .is_some_and(|l| l.token == settlement.token);
            if !held {
                settled.fenced += 1;
                continue;
            }
            let Some(lease) = state.leased.remove(&settlement.seq) else {
                continue;
            };
            settled.applied += 1;
            let seq = settlement.seq;
            match settlement.outcome {
                Outcome::Delivered => changes.push(Change::Delivered(seq)),
                Outcome::Retry(next) => {
                    state.retries.push(Reverse((next.next_attempt_ms, seq)));
                    state.waiting.insert(seq, next.clone());
                    changes.push(Change::Retry(seq, next));
                }
                Outcome::DeadLetter(last) => changes.push(Change::DeadLetter(seq, last)),
                Outcome::Release => released.push(lease),
            }
        }
        state.put_back(released);
        drop(state);
        self.apply_changes(sink, changes).await?;
        Ok(settled)
    }

    /// Loads the entries of `sink` that already failed at least once (from before a restart).
    async fn load_retries(&self, sink: &str, state: &mut SinkClaims) -> Result<(), StoreError> {
        state.retries.clear();
        state.waiting.clear();
        let mut after = 0;
        loop {
            let entries = self.queue(sink, after, SCAN).await?;
            let Some(last) = entries.last() else {
                break;
            };
            after = last.seq;
            for entry in entries {
                if entry.state.attempts > 0 && !state.leased.contains_key(&entry.seq) {
                    state
                        .retries
                        .push(Reverse((entry.state.next_attempt_ms, entry.seq)));
                    state.waiting.insert(entry.seq, entry.state);
                }
            }
        }
        state.loaded = true;
        Ok(())
    }

    /// The next entry never attempted, scanning the queue (with the events) when the
    /// read-ahead is empty.
    /// Moves the next fresh entry into `picked`; false when there is none. On an error,
    /// everything in `picked` goes back where it came from first.
    async fn pick_fresh(
        &self,
        sink: &str,
        state: &mut SinkClaims,
        picked: &mut Vec<Item>,
    ) -> Result<bool, StoreError> {
        match self.next_fresh(sink, state).await {
            Ok(Some(item)) => {
                picked.push(item);
                Ok(true)
            }
            Ok(None) => Ok(false),
            Err(e) => {
                for (entry, event) in picked.drain(..).rev() {
                    state.restore(entry, event);
                }
                Err(e)
            }
        }
    }

    async fn next_fresh(
        &self,
        sink: &str,
        state: &mut SinkClaims,
    ) -> Result<Option<Item>, StoreError> {
        loop {
            if let Some(item) = state.fresh.pop_front() {
                return Ok(Some(item));
            }
            let committed = *self.inner.committed.borrow();
            if state.scanned >= committed {
                return Ok(None);
            }
            let found = self
                .queue_with_events(sink, state.scanned, committed, SCAN)
                .await?;
            state.scanned = match found.last() {
                Some((entry, _)) if found.len() == SCAN => entry.seq,
                _ => committed,
            };
            for (entry, event) in found {
                // Entries that failed before belong to the retry path.
                if entry.state.attempts > 0
                    || state.waiting.contains_key(&entry.seq)
                    || state.leased.contains_key(&entry.seq)
                {
                    continue;
                }
                state.fresh.push_back((entry, event.map(Arc::new)));
            }
        }
    }

    /// Leases `picked`, reading the events not read yet; entries whose event is gone are
    /// dropped from the queue with a warning.
    async fn lease(
        &self,
        sink: &str,
        state: &mut SinkClaims,
        mut picked: Vec<Item>,
        now: u64,
        lease: Duration,
    ) -> Result<Vec<Claim>, StoreError> {
        let missing: Vec<u64> = picked
            .iter()
            .filter(|(_, event)| event.is_none())
            .map(|(entry, _)| entry.seq)
            .collect();
        if !missing.is_empty() {
            match self.events(missing).await {
                Ok(found) => {
                    let mut found = found.into_iter();
                    for (_, event) in picked.iter_mut().filter(|(_, e)| e.is_none()) {
                        *event = found.next().flatten().map(Arc::new);
                    }
                }
                Err(e) => {
                    // Nothing picked may be forgotten: back where each came from.
                    for (entry, event) in picked.into_iter().rev() {
                        state.restore(entry, event);
                    }
                    return Err(e);
                }
            }
        }
        let until_ms = now.saturating_add(lease.as_millis() as u64);
        let mut claims = Vec::with_capacity(picked.len());
        let mut gone = Vec::new();
        for (entry, event) in picked {
            let Some(event) = event else {
                gone.push(entry.seq);
                continue;
            };
            let token = self.inner.claims.token();
            claims.push(Claim {
                seq: entry.seq,
                state: entry.state.clone(),
                event: event.clone(),
                token,
            });
            state.leased.insert(
                entry.seq,
                Lease {
                    token,
                    until_ms,
                    entry,
                    event,
                },
            );
        }
        if !gone.is_empty() {
            tracing::warn!(sink, seqs = ?gone, "queued events are missing from the store; dropping their queue entries");
            self.apply_changes(sink, gone.into_iter().map(Change::Delivered).collect())
                .await?;
        }
        claims.sort_by_key(|c| c.seq);
        Ok(claims)
    }
}

impl SinkClaims {
    /// Leases that ended before `now` are claimable again (a later settle with their token is
    /// fenced once they are handed out anew).
    fn expire(&mut self, now: u64) {
        let expired: Vec<u64> = self
            .leased
            .iter()
            .filter(|(_, l)| l.until_ms <= now)
            .map(|(seq, _)| *seq)
            .collect();
        let leases = expired
            .into_iter()
            .filter_map(|seq| self.leased.remove(&seq))
            .collect();
        self.put_back(leases);
    }

    /// Strict order: moves the entries waiting for a retry into `picked`, lowest seq first,
    /// up to `max`, stopping at the first one that is not due. They all come before every
    /// fresh entry (nothing later starts while one waits), and their due times need not grow
    /// with their seqs, so the timer heap's order is not used here; it is rebuilt from what
    /// still waits. True when none waits any more, so that fresh entries may follow.
    fn pick_waiting_run(&mut self, max: usize, now: u64, picked: &mut Vec<Item>) -> bool {
        if self.waiting.is_empty() {
            return true;
        }
        let mut run: Vec<(u64, u64)> = self
            .waiting
            .iter()
            .map(|(seq, state)| (*seq, state.next_attempt_ms))
            .collect();
        run.sort_unstable();
        for (seq, due) in run {
            if picked.len() >= max || due > now {
                break;
            }
            if let Some(state) = self.waiting.remove(&seq) {
                picked.push((QueueEntry { seq, state }, None));
            }
        }
        self.retries = self
            .waiting
            .iter()
            .map(|(seq, state)| Reverse((state.next_attempt_ms, *seq)))
            .collect();
        self.waiting.is_empty()
    }

    /// Entries whose lease ended unsettled (released or expired): due again at once.
    fn put_back(&mut self, mut leases: Vec<Lease>) {
        leases.sort_by_key(|l| Reverse(l.entry.seq));
        for lease in leases {
            self.restore(lease.entry, Some(lease.event));
        }
    }

    /// Puts an entry that was not tried back where it came from: the retry heap for one that
    /// failed before, else the read-ahead, in seq order.
    fn restore(&mut self, entry: QueueEntry, event: Option<Arc<StoredEvent>>) {
        if entry.state.attempts > 0 {
            self.retries
                .push(Reverse((entry.state.next_attempt_ms, entry.seq)));
            self.waiting.insert(entry.seq, entry.state);
        } else if entry.seq <= self.scanned {
            let at = self.fresh.partition_point(|(e, _)| e.seq < entry.seq);
            self.fresh.insert(at, (entry, event));
        }
        // Above the scan position: the scan finds it again.
    }
}
