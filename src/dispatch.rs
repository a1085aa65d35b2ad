//! Feeds one sink from its queue in the store: at most `concurrency` deliveries in flight,
//! failed ones retried with back-off, given-up ones dead-lettered.
//!
//! Every event a sink must get has a queue entry for that sink, written in the same batch as
//! the event. The dispatcher starts new entries in seq order (a scan position kept in memory)
//! and keeps entries waiting for a retry in a timer heap, so neither a backlog nor a long retry
//! makes it rescan the queue. An outcome (delivered / retry later / dead letter) is recorded
//! through the store's group commit; the queue entry goes only once the sink has the event, so
//! every event is delivered at least once across crashes: a crash after the sink took an event
//! but before its outcome reached the disk delivers it again after the restart.
//!
//! A sink with `concurrency() == 1` (stdout) gets events strictly in store order: while one of
//! its events waits for a retry, no later event is started.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::task::{Id, JoinSet};
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use crate::config::RetryPolicy;
use crate::health::Fault;
use crate::metrics::{Metrics, SinkCounters};
use crate::retry;
use crate::sinks::{Attempt, Failure, Sink, SinkError};
use crate::store::{self, AttemptState, Change, LastError, QueueEntry, Store, StoredEvent};

/// Queue entries read from the store at a time.
const SCAN: usize = 1024;
/// Pause after the store itself failed.
const STORE_RETRY: Duration = Duration::from_secs(1);

/// A queue entry and its event (`None`: not read yet, or no longer stored).
type Item = (QueueEntry, Option<Arc<StoredEvent>>);

/// What a finished delivery task reports.
struct Done {
    started_ms: u64,
    result: Result<(), Failure>,
}

/// The dispatcher of one sink.
struct Dispatcher<S> {
    store: Store,
    sink: Arc<S>,
    policy: RetryPolicy,
    name: String,
    /// Entries waiting for a retry: (due time ms, seq), earliest first; their states.
    retries: BinaryHeap<Reverse<(u64, u64)>>,
    waiting: HashMap<u64, AttemptState>,
    /// Entries never attempted, read ahead from the queue with their events.
    fresh: VecDeque<Item>,
    /// Highest seq the fresh scan has passed.
    scanned: u64,
    in_flight: HashSet<u64>,
    /// While the sink is unreachable: when the next probe may go (ms), and how many probes
    /// failed in a row. 0 when the sink is healthy.
    paused_until: u64,
    pause_failures: u32,
    running: JoinSet<Done>,
    /// The entries each running delivery task is delivering, by task id.
    batches: HashMap<Id, Vec<QueueEntry>>,
    /// Delivered, failed attempts, dead-lettered.
    counters: SinkCounters,
    /// Set when the sink can never deliver again in this process ([`SinkError::Gone`]).
    gone: Option<String>,
}

/// Runs `sink` until `stop` is cancelled and nothing more can be delivered right now
/// (entries waiting for a retry stay queued for the next start). Ends early with
/// [`Fault::SinkGone`] when the sink can never deliver again in this process; its queue is
/// left as it is for the next start.
pub async fn run<S: Sink>(
    store: Store,
    sink: S,
    policy: RetryPolicy,
    stop: CancellationToken,
    metrics: Metrics,
) -> Result<(), Fault> {
    run_until(store, sink, policy, stop, CancellationToken::new(), metrics).await
}

/// Like [`run`], and also ends when `halt` is cancelled, as soon as the deliveries in flight
/// have finished (nothing new is started): how a reload swaps a sink's settings.
pub async fn run_until<S: Sink>(
    store: Store,
    sink: S,
    policy: RetryPolicy,
    stop: CancellationToken,
    halt: CancellationToken,
    metrics: Metrics,
) -> Result<(), Fault> {
    let name = sink.name().to_owned();
    let mut dispatcher = Dispatcher {
        store: store.clone(),
        sink: Arc::new(sink),
        policy,
        name: name.clone(),
        retries: BinaryHeap::new(),
        waiting: HashMap::new(),
        fresh: VecDeque::new(),
        scanned: 0,
        in_flight: HashSet::new(),
        paused_until: 0,
        pause_failures: 0,
        running: JoinSet::new(),
        batches: HashMap::new(),
        counters: metrics.sink(&name),
        gone: None,
    };
    while let Err(e) = dispatcher.load_retries().await {
        tracing::error!(sink = %name, error = %e, "cannot read the sink's queue");
        if pause(&stop, STORE_RETRY).await {
            return Ok(());
        }
    }
    tracing::info!(sink = %name, waiting_retries = dispatcher.waiting.len(), "sink started");
    dispatcher.run(stop, halt).await
}

impl<S: Sink> Dispatcher<S> {
    async fn run(&mut self, stop: CancellationToken, halt: CancellationToken) -> Result<(), Fault> {
        let mut committed = self.store.subscribe();
        let mut requeued = self.store.requeued();
        // Set when the select below saw `requeued` change: `changed()` marks the value seen,
        // so `has_changed()` alone would miss a requeue that woke the loop.
        let mut rescan = false;
        // Set when the store's writer stopped: outcomes can no longer be recorded, so nothing
        // new is started; what is in flight finishes, then the dispatcher ends.
        let mut store_gone = false;
        loop {
            let last_committed = *committed.borrow_and_update();
            if std::mem::take(&mut rescan) || requeued.has_changed().unwrap_or(false) {
                requeued.borrow_and_update();
                // Entries were put back below the scan position: scan the queue again, once
                // this sink's recorded outcomes are applied (so nothing just delivered is
                // found again).
                if let Err(e) = self.store.settle_durably(&self.name, Vec::new()).await {
                    tracing::warn!(sink = %self.name, error = %e, "waiting for recorded outcomes failed");
                }
                self.fresh.clear();
                self.scanned = 0;
            }
            if let Some(message) = &self.gone {
                if self.running.is_empty() {
                    // What was delivered before the fault is recorded; the rest stays queued.
                    if let Err(e) = self.store.settle_durably(&self.name, Vec::new()).await {
                        tracing::warn!(sink = %self.name, error = %e, "waiting for recorded outcomes failed");
                    }
                    return Err(Fault::SinkGone {
                        sink: self.name.clone(),
                        message: message.clone(),
                    });
                }
            } else if store_gone {
                if self.running.is_empty() {
                    tracing::error!(sink = %self.name, "the store's writer stopped; sink stops");
                    return Ok(());
                }
            } else if halt.is_cancelled() {
                if self.running.is_empty() {
                    // Let the recorded outcomes reach the store before a successor reads the
                    // queue, so it does not send again what was just delivered.
                    if let Err(e) = self.store.settle_durably(&self.name, Vec::new()).await {
                        tracing::warn!(sink = %self.name, error = %e, "waiting for recorded outcomes failed");
                    }
                    tracing::info!(sink = %self.name, "sink halted");
                    return Ok(());
                }
            } else if let Err(e) = self.fill(last_committed).await {
                tracing::error!(sink = %self.name, error = %e, "reading the sink's queue failed");
                if self.running.is_empty() {
                    if pause(&stop, STORE_RETRY).await {
                        return Ok(());
                    }
                    continue;
                }
            }
            if stop.is_cancelled() && self.running.is_empty() {
                tracing::info!(sink = %self.name, waiting_retries = self.waiting.len(), "sink drained");
                return Ok(());
            }
            let next_retry = self.retries.peek().map(|Reverse((due, _))| *due);
            let wake = match (next_retry, self.paused_until) {
                (_, paused) if paused > 0 => Some(paused),
                (due, _) => due,
            };
            let sleep = wake.map(|due| Duration::from_millis(due.saturating_sub(now_ms())));
            tokio::select! {
                Some(joined) = self.running.join_next_with_id() => {
                    self.joined(joined).await;
                    // Take every other finished delivery too before refilling.
                    while let Some(joined) = self.running.try_join_next_with_id() {
                        self.joined(joined).await;
                    }
                }
                changed = committed.changed(), if !store_gone => if changed.is_err() {
                    store_gone = true;
                },
                Ok(()) = requeued.changed() => rescan = true,
                _ = tokio::time::sleep(sleep.unwrap_or_default()), if sleep.is_some() => {}
                _ = stop.cancelled(), if !stop.is_cancelled() => {}
                _ = halt.cancelled(), if !halt.is_cancelled() => {}
            }
        }
    }

    /// Loads the entries that already failed at least once (from before a restart).
    async fn load_retries(&mut self) -> Result<(), store::StoreError> {
        self.retries.clear();
        self.waiting.clear();
        let mut after = 0;
        loop {
            let entries = self.store.queue(&self.name, after, SCAN).await?;
            let Some(last) = entries.last() else {
                return Ok(());
            };
            after = last.seq;
            for entry in entries {
                if entry.state.attempts > 0 {
                    self.retries
                        .push(Reverse((entry.state.next_attempt_ms, entry.seq)));
                    self.waiting.insert(entry.seq, entry.state);
                }
            }
        }
    }

    /// Starts deliveries until the sink's concurrency is used or nothing is due. Fresh entries
    /// come with their events from the queue scan; the events of retries are read in one go.
    async fn fill(&mut self, last_committed: u64) -> Result<(), store::StoreError> {
        let ordered = self.sink.concurrency() <= 1;
        let mut free = self
            .sink
            .concurrency()
            .max(1)
            .saturating_sub(self.running.len());
        if self.paused_until > 0 {
            // Unreachable: one probe at a time, when its back-off has passed.
            if now_ms() < self.paused_until || !self.running.is_empty() {
                return Ok(());
            }
            free = 1;
        }
        let mut batches: Vec<Vec<Item>> = Vec::new();
        while batches.len() < free {
            let mut batch = Vec::new();
            match self.retries.peek() {
                Some(Reverse((due, seq))) if *due <= now_ms() => {
                    let seq = *seq;
                    self.retries.pop();
                    if let Some(state) = self.waiting.remove(&seq) {
                        batch.push((QueueEntry { seq, state }, None));
                    }
                }
                // In-order sinks wait for the retry before anything later.
                Some(_) if ordered => {}
                _ => {
                    while batch.len() < self.sink.max_batch().max(1) {
                        match self.next_fresh(last_committed).await {
                            Ok(Some(item)) => batch.push(item),
                            Ok(None) => break,
                            Err(e) => {
                                // Nothing collected so far may be forgotten.
                                for (entry, event) in
                                    batches.into_iter().flatten().chain(batch).rev()
                                {
                                    self.in_flight.remove(&entry.seq);
                                    self.requeue(entry, event);
                                }
                                return Err(e);
                            }
                        }
                    }
                }
            }
            if batch.is_empty() {
                break;
            }
            self.in_flight.extend(batch.iter().map(|(e, _)| e.seq));
            batches.push(batch);
        }
        let missing: Vec<u64> = batches
            .iter()
            .flatten()
            .filter(|(_, event)| event.is_none())
            .map(|(e, _)| e.seq)
            .collect();
        if !missing.is_empty() {
            match self.store.events(missing).await {
                Ok(found) => {
                    let mut found = found.into_iter();
                    for (_, event) in batches.iter_mut().flatten().filter(|(_, e)| e.is_none()) {
                        *event = found.next().flatten().map(Arc::new);
                    }
                }
                Err(e) => {
                    // Put them back: they are tried again on the next round.
                    for (entry, event) in batches.into_iter().flatten().rev() {
                        self.in_flight.remove(&entry.seq);
                        self.requeue(entry, event);
                    }
                    return Err(e);
                }
            }
        }
        for batch in batches {
            self.start(batch).await;
        }
        Ok(())
    }

    /// Puts an entry that was not tried back where it came from.
    fn requeue(&mut self, entry: QueueEntry, event: Option<Arc<StoredEvent>>) {
        if entry.state.attempts > 0 {
            self.retries
                .push(Reverse((entry.state.next_attempt_ms, entry.seq)));
            self.waiting.insert(entry.seq, entry.state);
        } else {
            self.fresh.push_front((entry, event));
        }
    }

    async fn next_fresh(&mut self, last_committed: u64) -> Result<Option<Item>, store::StoreError> {
        loop {
            if let Some(item) = self.fresh.pop_front() {
                return Ok(Some(item));
            }
            if self.scanned >= last_committed {
                return Ok(None);
            }
            // Only entries up to the last committed seq: a batch still being applied by the
            // writer can be partly visible, and its entries must wait until it is whole.
            let found = self
                .store
                .queue_with_events(&self.name, self.scanned, last_committed, SCAN)
                .await?;
            self.scanned = match found.last() {
                Some((entry, _)) if found.len() == SCAN => entry.seq,
                _ => last_committed,
            };
            let mut gone = Vec::new();
            for (entry, event) in found {
                // Entries that failed before belong to the retry path.
                if entry.state.attempts > 0
                    || self.waiting.contains_key(&entry.seq)
                    || self.in_flight.contains(&entry.seq)
                {
                    continue;
                }
                match event {
                    Some(event) => self.fresh.push_back((entry, Some(Arc::new(event)))),
                    None => gone.push(entry.seq),
                }
            }
            self.drop_gone(gone).await;
        }
    }

    /// Queue entries whose event is no longer stored (a dangling entry): dropped with a warning.
    async fn drop_gone(&mut self, gone: Vec<u64>) {
        if gone.is_empty() {
            return;
        }
        for seq in &gone {
            self.in_flight.remove(seq);
        }
        tracing::warn!(sink = %self.name, seqs = ?gone, "queued events are missing from the store; dropping their queue entries");
        self.settle(gone.into_iter().map(Change::Delivered).collect())
            .await;
    }

    async fn start(&mut self, batch: Vec<Item>) {
        let mut attempts = Vec::with_capacity(batch.len());
        let mut entries = Vec::with_capacity(batch.len());
        let mut gone = Vec::new();
        for (entry, event) in batch {
            match event {
                Some(event) => {
                    attempts.push(Attempt {
                        event,
                        attempt: entry.state.attempts + 1,
                    });
                    entries.push(entry);
                }
                None => gone.push(entry.seq),
            }
        }
        self.drop_gone(gone).await;
        if attempts.is_empty() {
            return;
        }
        let sink = self.sink.clone();
        let span = tracing::debug_span!(
            "attempt",
            sink = %self.name,
            first_seq = entries[0].seq,
            count = entries.len(),
            event_id = attempts[0].event.meta.event_id.as_deref().unwrap_or("-"),
            attempt = attempts[0].attempt,
        );
        let handle = self.running.spawn(
            async move {
                let started_ms = now_ms();
                let result = sink.deliver(&attempts).await;
                Done { started_ms, result }
            }
            .instrument(span),
        );
        self.batches.insert(handle.id(), entries);
    }

    async fn joined(&mut self, joined: Result<(Id, Done), tokio::task::JoinError>) {
        match joined {
            Ok((id, done)) => {
                let batch = self.batches.remove(&id).unwrap_or_default();
                self.finish(batch, done).await;
            }
            Err(e) => self.lost(e.id()).await,
        }
    }

    /// Records the outcome of a finished delivery of `batch`.
    async fn finish(&mut self, batch: Vec<QueueEntry>, done: Done) {
        let Done { started_ms, result } = done;
        for entry in &batch {
            self.in_flight.remove(&entry.seq);
        }
        let (delivered, failure) = match result {
            Ok(()) => (batch.len(), None),
            Err(Failure { delivered, error }) => (delivered.min(batch.len()), Some(error)),
        };
        let mut batch = batch.into_iter();
        let mut outcomes: Vec<Change> = batch
            .by_ref()
            .take(delivered)
            .map(|e| Change::Delivered(e.seq))
            .collect();
        self.counters.delivered(delivered);
        if delivered > 0 || failure.is_none() {
            self.reachable();
        }
        match failure {
            Some(SinkError::Gone { message }) => {
                // Not the event's fault and no attempt: it stays queued for the next start.
                if self.gone.is_none() {
                    tracing::error!(sink = %self.name, error = %message, "the sink can never deliver again in this process; it stops, its queue is kept");
                }
                self.gone = Some(message);
                for entry in batch.rev() {
                    self.requeue(entry, None);
                }
            }
            Some(SinkError::Unreachable { message }) => {
                // Nothing was delivered and the event is not to blame: no attempt is counted
                // against the event (the metric counts the failed probe).
                self.counters.failed_attempt();
                self.unreachable(&message);
                for entry in batch.rev() {
                    self.requeue(entry, None);
                }
            }
            Some(error) => {
                if let Some(entry) = batch.next() {
                    outcomes.push(self.failed(entry, started_ms, error));
                }
                // Not tried: back to the front of the line, in order.
                for entry in batch.rev() {
                    self.requeue(entry, None);
                }
            }
            None => {}
        }
        self.settle(outcomes).await;
    }

    /// The sink could not be reached: pause it, probing with back-off.
    fn unreachable(&mut self, message: &str) {
        self.pause_failures = self.pause_failures.saturating_add(1);
        let wait = retry::backoff(&self.policy, self.pause_failures, None, fastrand::f64())
            .max(Duration::from_millis(10));
        self.paused_until = now_ms().saturating_add(wait.as_millis() as u64);
        if self.pause_failures == 1 {
            tracing::warn!(sink = %self.name, error = %message, "sink unreachable; pausing deliveries and probing with back-off");
        } else {
            tracing::debug!(sink = %self.name, error = %message, probe_in_ms = wait.as_millis() as u64, "sink still unreachable");
        }
    }

    /// A delivery went through: a paused sink is healthy again.
    fn reachable(&mut self) {
        if self.paused_until > 0 {
            tracing::info!(sink = %self.name, failed_probes = self.pause_failures, "sink reachable again; resuming deliveries");
        }
        self.paused_until = 0;
        self.pause_failures = 0;
    }

    /// The outcome of one failed attempt: retry later, or dead letter.
    fn failed(&mut self, entry: QueueEntry, started_ms: u64, error: SinkError) -> Change {
        self.counters.failed_attempt();
        let mut state = entry.state;
        state.attempts += 1;
        if state.first_attempt_ms == 0 {
            state.first_attempt_ms = started_ms;
        }
        state.last_attempt_ms = started_ms;
        state.last_error = Some(LastError::new(error.status(), &error.to_string()));
        let seq = entry.seq;
        match error {
            SinkError::Retryable { retry_after, .. }
                if state.attempts < self.policy.max_attempts =>
            {
                let wait =
                    retry::backoff(&self.policy, state.attempts, retry_after, fastrand::f64());
                state.next_attempt_ms = now_ms().saturating_add(wait.as_millis() as u64);
                tracing::warn!(
                    sink = %self.name, seq, attempt = state.attempts, error = %error,
                    retry_in_ms = wait.as_millis() as u64, "delivery failed; will retry"
                );
                self.retries.push(Reverse((state.next_attempt_ms, seq)));
                self.waiting.insert(seq, state.clone());
                Change::Retry(seq, state)
            }
            error => {
                tracing::error!(
                    sink = %self.name, seq, attempts = state.attempts, error = %error,
                    "delivery failed; moved to the dead letters"
                );
                self.counters.dead_lettered();
                Change::DeadLetter(seq, state)
            }
        }
    }

    /// A delivery task panicked: each of its events counts a failed attempt (so a sink that
    /// panics on one event dead-letters it after `max_attempts` instead of looping).
    async fn lost(&mut self, id: Id) {
        let entries = self.batches.remove(&id).unwrap_or_default();
        let seqs: Vec<u64> = entries.iter().map(|e| e.seq).collect();
        tracing::error!(sink = %self.name, seqs = ?seqs, "a delivery task failed; counting a failed attempt");
        let now = now_ms();
        let mut outcomes = Vec::with_capacity(entries.len());
        for entry in entries {
            self.in_flight.remove(&entry.seq);
            outcomes.push(self.failed(
                entry,
                now,
                SinkError::retryable("the delivery task panicked"),
            ));
        }
        self.settle(outcomes).await;
    }

    async fn settle(&self, outcomes: Vec<Change>) {
        if let Err(e) = self.store.settle(&self.name, outcomes).await {
            tracing::error!(sink = %self.name, error = %e, "recording delivery outcomes failed; those events will be delivered again");
        }
    }
}

/// Milliseconds since the Unix epoch, now.
fn now_ms() -> u64 {
    store::millis(SystemTime::now())
}

/// Sleeps for `d`; returns true if `stop` was cancelled meanwhile.
async fn pause(stop: &CancellationToken, d: Duration) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(d) => false,
        _ = stop.cancelled() => true,
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;
    use crate::receive::signature::{self, SigningSecret};
    use crate::store::{Admission, Destination, NewDelivery, RecordMeta};

    /// Records what it is given; fails the first attempt of every event whose seq is a
    /// multiple of `fail_every` (0: never).
    struct Collect {
        got: Mutex<Vec<(u64, u32)>>,
        fail_every: u64,
        concurrency: usize,
    }

    impl Sink for Collect {
        fn name(&self) -> &str {
            "collect"
        }
        fn concurrency(&self) -> usize {
            self.concurrency
        }
        async fn deliver(&self, batch: &[Attempt]) -> Result<(), Failure> {
            let a = &batch[0];
            if self.fail_every > 0 && a.event.seq.is_multiple_of(self.fail_every) && a.attempt == 1
            {
                return Err(Failure {
                    delivered: 0,
                    error: SinkError::retryable("first attempt fails"),
                });
            }
            self.got.lock().unwrap().push((a.event.seq, a.attempt));
            Ok(())
        }
    }

    fn delivery(i: usize) -> NewDelivery {
        let secret = SigningSecret::new("sec_T", "whsec_test");
        let header = secret.sign(1000, b"{}");
        let verified =
            signature::verify(Some(header.as_bytes()), b"{}", &[secret], 1000, 300).unwrap();
        NewDelivery {
            verified,
            destination: Destination::Events,
            meta: RecordMeta {
                received_at_ms: 1,
                secret_id: String::new(),
                headers: vec![],
                keys: vec![serde_json::from_value(format!("kirim:evt_{i}").into()).unwrap()],
                shape: None,
                source: None,
                event_type: None,
                event_id: None,
                phone_number_ids: vec![],
                quarantine_reason: None,
            },
            body: bytes::Bytes::from_static(b"{}"),
            sinks: vec!["collect".into()],
        }
    }

    /// Waits until `sink` has received `n` deliveries.
    async fn wait_for(sink: &Collect, n: usize) {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while sink.got.lock().unwrap().len() < n {
            assert!(
                std::time::Instant::now() < deadline,
                "the sink got {:?}, expected {n} deliveries",
                sink.got.lock().unwrap()
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_requeue_wakes_an_idle_dispatcher() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), vec!["collect".into()]).unwrap();
        let sink = Arc::new(Collect {
            got: Mutex::new(Vec::new()),
            fail_every: 0,
            concurrency: 4,
        });
        struct Shared(Arc<Collect>);
        impl Sink for Shared {
            fn name(&self) -> &str {
                self.0.name()
            }
            fn concurrency(&self) -> usize {
                self.0.concurrency()
            }
            async fn deliver(&self, batch: &[Attempt]) -> Result<(), Failure> {
                self.0.deliver(batch).await
            }
        }
        let stop = CancellationToken::new();
        let runner = tokio::spawn(run(
            store.clone(),
            Shared(sink.clone()),
            RetryPolicy::default(),
            stop.clone(),
            Metrics::default(),
        ));
        store.admit(delivery(1)).await.unwrap();
        wait_for(&sink, 1).await;
        store.settle_durably("collect", vec![]).await.unwrap();
        // The dispatcher is idle in its select now; a replay must wake it and rescan.
        tokio::time::sleep(Duration::from_millis(50)).await;
        let queued = store
            .replay("collect", std::time::UNIX_EPOCH, |_| true)
            .await
            .unwrap();
        assert_eq!(queued, 1);
        wait_for(&sink, 2).await;
        stop.cancel();
        runner.await.unwrap().unwrap();
        store.close().await.unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_event_admitted_under_load_reaches_the_sink_once_retries_included() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), vec!["collect".into()]).unwrap();
        let sink = Collect {
            got: Mutex::new(Vec::new()),
            fail_every: 7,
            concurrency: 4,
        };
        let stop = CancellationToken::new();
        let policy = RetryPolicy {
            initial_backoff: Duration::from_millis(1),
            max_backoff: Duration::from_millis(5),
            max_attempts: 5,
        };
        // The dispatcher owns the sink; share what it collects through a channel of seqs.
        let sink = Arc::new(sink);
        struct Shared(Arc<Collect>);
        impl Sink for Shared {
            fn name(&self) -> &str {
                self.0.name()
            }
            fn concurrency(&self) -> usize {
                self.0.concurrency()
            }
            async fn deliver(&self, batch: &[Attempt]) -> Result<(), Failure> {
                self.0.deliver(batch).await
            }
        }
        let metrics = Metrics::new(&[], &["collect"]);
        let runner = tokio::spawn(run(
            store.clone(),
            Shared(sink.clone()),
            policy,
            stop.clone(),
            metrics.clone(),
        ));

        let mut writers = Vec::new();
        for w in 0..16 {
            let store = store.clone();
            writers.push(tokio::spawn(async move {
                let mut seqs = Vec::new();
                for i in 0..100 {
                    if let Admission::New { seq } =
                        store.admit(delivery(w * 1000 + i)).await.unwrap()
                    {
                        seqs.push(seq);
                    }
                }
                seqs
            }));
        }
        let mut accepted = Vec::new();
        for w in writers {
            accepted.extend(w.await.unwrap());
        }
        accepted.sort();
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            let mut got: Vec<u64> = sink.got.lock().unwrap().iter().map(|g| g.0).collect();
            got.sort();
            if got == accepted {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "sink has {} of {} accepted events",
                got.len(),
                accepted.len()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let retried = sink.got.lock().unwrap().iter().filter(|g| g.1 == 2).count();
        assert_eq!(retried, accepted.iter().filter(|s| *s % 7 == 0).count());
        stop.cancel();
        runner.await.unwrap().unwrap();
        let text = metrics.render(&crate::metrics::Snapshot::default());
        for (series, value) in [
            (
                "kirimhook_sink_delivered_total{sink=\"collect\"}",
                accepted.len(),
            ),
            (
                "kirimhook_sink_failed_attempts_total{sink=\"collect\"}",
                retried,
            ),
            ("kirimhook_sink_dead_lettered_total{sink=\"collect\"}", 0),
        ] {
            assert!(
                text.lines().any(|l| l == format!("{series} {value}")),
                "{series} {value} in\n{text}"
            );
        }
        // Outcomes ride the next group commit: a durable no-op waits for them.
        store.settle_durably("collect", vec![]).await.unwrap();
        assert_eq!(store.queue_len("collect").await.unwrap(), 0);
        store.close().await.unwrap();
    }
}

#[cfg(test)]
mod panics {
    use super::*;
    use crate::receive::signature::{self, SigningSecret};
    use crate::store::{NewDelivery, RecordMeta};

    /// Panics on every attempt.
    struct Panicky;

    impl Sink for Panicky {
        fn name(&self) -> &str {
            "panicky"
        }
        async fn deliver(&self, _batch: &[Attempt]) -> Result<(), Failure> {
            panic!("a sink bug");
        }
    }

    #[tokio::test]
    async fn a_sink_that_panics_dead_letters_the_event_after_max_attempts() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), vec!["panicky".into()]).unwrap();
        let secret = SigningSecret::new("sec_T", "whsec_test");
        let header = secret.sign(1000, b"{}");
        let verified =
            signature::verify(Some(header.as_bytes()), b"{}", &[secret], 1000, 300).unwrap();
        let meta = RecordMeta {
            received_at_ms: 1,
            secret_id: String::new(),
            headers: vec![],
            keys: vec![serde_json::from_value("kirim:evt_p".into()).unwrap()],
            shape: None,
            source: None,
            event_type: None,
            event_id: None,
            phone_number_ids: vec![],
            quarantine_reason: None,
        };
        store
            .admit(NewDelivery {
                verified,
                destination: store::Destination::Events,
                meta,
                body: bytes::Bytes::from_static(b"{}"),
                sinks: vec!["panicky".into()],
            })
            .await
            .unwrap();
        let policy = RetryPolicy {
            initial_backoff: Duration::from_millis(1),
            max_backoff: Duration::from_millis(2),
            max_attempts: 3,
        };
        let stop = CancellationToken::new();
        let runner = tokio::spawn(run(
            store.clone(),
            Panicky,
            policy,
            stop.clone(),
            Metrics::default(),
        ));
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let letters = loop {
            store.settle_durably("panicky", vec![]).await.unwrap();
            let letters = store.dead_letters("panicky", 0, 10).await.unwrap();
            if !letters.is_empty() {
                break letters;
            }
            assert!(std::time::Instant::now() < deadline, "never dead-lettered");
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        assert_eq!(letters[0].state.attempts, 3);
        stop.cancel();
        runner.await.unwrap().unwrap();
        store.close().await.unwrap();
    }
}
