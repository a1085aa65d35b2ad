//! Feeds one sink from the store: claim -> deliver -> settle, with at most `concurrency`
//! deliveries in flight, failed ones retried with back-off, given-up ones dead-lettered.
//!
//! Every event a sink must get has a queue entry for that sink, written in the same
//! transaction as the event. The dispatcher claims due entries from the store (a lease: on
//! PostgreSQL, another instance takes them over when this one dies), delivers them, and
//! settles each claim: delivered, retry later (the store keeps the attempt state and the due
//! time), dead letter, or released untried. The queue entry goes only once the sink has the
//! event, so every event is delivered at least once across crashes: a crash after the sink
//! took an event but before its outcome was recorded delivers it again.
//!
//! A sink with one batch in flight at a time (`concurrency() == 1`: stdout, the broker sinks
//! with `concurrency` up to their batch size, any sink set to `concurrency = 1`) claims in
//! strict order: while one of its events waits for a retry, no later event is started. Each
//! strict claim is a run from the head of the queue, so such a sink still gets whole
//! batches.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::task::{Id, JoinSet};
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use crate::activity::{clip, Activity, SinkEvent, What};
use crate::config::RetryPolicy;
use crate::deliver::backoff as retry;
use crate::health::Fault;
use crate::metrics::{Metrics, SinkCounters};
use crate::sinks::{Attempt, Failure, Sink, SinkError};
use crate::store::{self, Claim, ClaimOrder, LastError, Outcome, Settlement, Store};

/// Pause after the store itself failed.
const STORE_RETRY: Duration = Duration::from_secs(1);

/// What a finished delivery task reports.
struct Done {
    started_ms: u64,
    result: Result<(), Failure>,
}

/// How a dispatcher runs, beside its sink.
#[derive(Debug, Clone, Copy)]
pub struct Plan {
    /// Back-off and attempts.
    pub policy: RetryPolicy,
    /// How long a claim is leased: after that, another instance may take it over.
    pub lease: Duration,
}

/// The dispatcher of one sink.
struct Dispatcher<S> {
    store: Store,
    sink: Arc<S>,
    plan: Plan,
    name: String,
    order: ClaimOrder,
    /// While the sink is unreachable: when the next probe may go (ms), and how many probes
    /// failed in a row. 0 when the sink is healthy.
    paused_until: u64,
    pause_failures: u32,
    /// When the store said an entry not handed out becomes due (ms).
    next_due_ms: Option<u64>,
    running: JoinSet<Done>,
    /// The claims each running delivery task is delivering, by task id.
    batches: HashMap<Id, Vec<Claim>>,
    /// Outcomes not recorded yet: settled together, once per round.
    outcomes: Vec<Settlement>,
    /// Delivered, failed attempts, dead-lettered.
    counters: SinkCounters,
    /// Where each outcome is shown to `kirimhook tail`.
    activity: Activity,
    /// Set when the sink can never deliver again in this process ([`SinkError::Gone`]).
    gone: Option<String>,
    /// When a claim last came back empty: the next one waits [`Store::idle_claim_gap`]
    /// after it, however often new work is announced meanwhile.
    empty_claim_at: Option<tokio::time::Instant>,
}

/// Runs `sink` until `stop` is cancelled and nothing more can be delivered right now
/// (entries waiting for a retry stay queued for the next start). Ends early with
/// [`Fault::SinkGone`] when the sink can never deliver again in this process; its queue is
/// left as it is for the next start.
pub async fn run<S: Sink>(
    store: Store,
    sink: S,
    plan: Plan,
    stop: CancellationToken,
    metrics: Metrics,
) -> Result<(), Fault> {
    run_until(store, sink, plan, stop, CancellationToken::new(), metrics).await
}

/// Like [`run`], and also ends when `halt` is cancelled, as soon as the deliveries in flight
/// have finished (nothing new is started): how a reload swaps a sink's settings.
pub async fn run_until<S: Sink>(
    store: Store,
    sink: S,
    plan: Plan,
    stop: CancellationToken,
    halt: CancellationToken,
    metrics: Metrics,
) -> Result<(), Fault> {
    let name = sink.name().to_owned();
    // One batch in flight at a time: claims in strict order, a run from the head of the
    // queue each (up to the sink's batch size), so such a sink still gets whole batches.
    let order = if sink.concurrency() <= 1 {
        ClaimOrder::Strict
    } else {
        ClaimOrder::Any
    };
    let mut dispatcher = Dispatcher {
        store,
        sink: Arc::new(sink),
        plan,
        name: name.clone(),
        order,
        paused_until: 0,
        pause_failures: 0,
        next_due_ms: None,
        running: JoinSet::new(),
        batches: HashMap::new(),
        outcomes: Vec::new(),
        counters: metrics.sink(&name),
        activity: metrics.activity().clone(),
        gone: None,
        empty_claim_at: None,
    };
    tracing::info!(sink = %name, "sink started");
    dispatcher.run(stop, halt).await
}

impl<S: Sink> Dispatcher<S> {
    async fn run(&mut self, stop: CancellationToken, halt: CancellationToken) -> Result<(), Fault> {
        let mut work = self.store.work();
        // Set when the store stopped for good: outcomes can no longer be recorded, so nothing
        // new is started; what is in flight finishes, then the dispatcher ends.
        let mut store_gone = false;
        loop {
            self.record().await;
            let mut idle = true;
            if let Some(message) = &self.gone {
                if self.running.is_empty() {
                    // What was delivered before the fault is recorded; the rest stays queued.
                    return Err(Fault::SinkGone {
                        sink: self.name.clone(),
                        message: message.clone(),
                    });
                }
            } else if store_gone {
                if self.running.is_empty() {
                    tracing::error!(sink = %self.name, "the store stopped; sink stops");
                    return Ok(());
                }
            } else if halt.is_cancelled() {
                if self.running.is_empty() {
                    tracing::info!(sink = %self.name, "sink halted");
                    return Ok(());
                }
            } else {
                match self.fill().await {
                    Ok(started) => idle = !started,
                    Err(e) => {
                        tracing::error!(sink = %self.name, error = %e, "claiming from the sink's queue failed");
                        if self.running.is_empty() {
                            if pause(&stop, STORE_RETRY).await {
                                return Ok(());
                            }
                            continue;
                        }
                    }
                }
            }
            if stop.is_cancelled() && self.running.is_empty() && idle {
                tracing::info!(sink = %self.name, "sink drained");
                return Ok(());
            }
            let wake = if self.paused_until > 0 {
                Some(self.paused_until)
            } else {
                self.next_due_ms
            };
            let deadline = wake.map(|due| {
                tokio::time::Instant::now() + Duration::from_millis(due.saturating_sub(now_ms()))
            });
            tokio::select! {
                Some(joined) = self.running.join_next_with_id() => {
                    self.joined(joined);
                    // Take every other finished delivery too before recording and refilling.
                    while let Some(joined) = self.running.try_join_next_with_id() {
                        self.joined(joined);
                    }
                }
                alive = async {
                    if let Some(at) = self.empty_claim_at {
                        tokio::time::sleep_until(at + self.store.idle_claim_gap()).await;
                    }
                    work.wait(deadline).await
                }, if !store_gone => if !alive {
                    store_gone = true;
                },
                _ = stop.cancelled(), if !stop.is_cancelled() => {}
                _ = halt.cancelled(), if !halt.is_cancelled() => {}
            }
        }
    }

    /// Claims what the sink can take now and starts delivering it. Returns whether anything
    /// was started.
    async fn fill(&mut self) -> Result<bool, store::StoreError> {
        let concurrency = self.sink.concurrency().max(1);
        let max_batch = self.sink.max_batch().max(1);
        let mut free = concurrency.saturating_sub(self.running.len());
        let mut batch_size = max_batch;
        if self.paused_until > 0 {
            // Unreachable: one probe of one event at a time, when its back-off has passed.
            if now_ms() < self.paused_until || !self.running.is_empty() {
                return Ok(false);
            }
            free = 1;
            batch_size = 1;
        }
        if free == 0 {
            return Ok(false);
        }
        let claimed = self
            .store
            .claim(&self.name, free * batch_size, self.plan.lease, self.order)
            .await?;
        self.next_due_ms = claimed.next_due_ms;
        if claimed.claims.is_empty() {
            self.empty_claim_at = Some(tokio::time::Instant::now());
            return Ok(false);
        }
        self.empty_claim_at = None;
        let mut claims = claimed.claims.into_iter().peekable();
        while claims.peek().is_some() {
            let batch: Vec<Claim> = claims.by_ref().take(batch_size).collect();
            self.start(batch);
        }
        Ok(true)
    }

    fn start(&mut self, batch: Vec<Claim>) {
        let attempts: Vec<Attempt> = batch
            .iter()
            .map(|claim| Attempt {
                event: claim.event.clone(),
                attempt: claim.state.attempts + 1,
            })
            .collect();
        let sink = self.sink.clone();
        let span = tracing::debug_span!(
            "attempt",
            sink = %self.name,
            first_seq = batch[0].seq,
            count = batch.len(),
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
        self.batches.insert(handle.id(), batch);
    }

    fn joined(&mut self, joined: Result<(Id, Done), tokio::task::JoinError>) {
        match joined {
            Ok((id, done)) => {
                let batch = self.batches.remove(&id).unwrap_or_default();
                self.finish(batch, done);
            }
            Err(e) => self.lost(e.id()),
        }
    }

    /// Works out the outcomes of a finished delivery of `batch`.
    fn finish(&mut self, batch: Vec<Claim>, done: Done) {
        let Done { started_ms, result } = done;
        let (delivered, failure, code) = match result {
            Ok(()) => (batch.len(), None, None),
            Err(Failure {
                delivered,
                error,
                code,
            }) => (delivered.min(batch.len()), Some(error), code),
        };
        let latency_ms = now_ms().saturating_sub(started_ms);
        let mut batch = batch.into_iter();
        for claim in batch.by_ref().take(delivered) {
            self.activity.publish(|| What::Delivered {
                event: self.sink_event(&claim),
                attempt: claim.state.attempts + 1,
                latency_ms,
            });
            self.outcomes
                .push(Settlement::of(&claim, Outcome::Delivered));
        }
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
            }
            Some(SinkError::Unreachable { message }) => {
                // Nothing was delivered and the event is not to blame: no attempt is counted
                // against the event (the metric counts the failed probe).
                self.counters.failed_attempt();
                if let Some(claim) = batch.as_slice().first() {
                    self.activity.publish(|| What::Failed {
                        event: self.sink_event(claim),
                        attempt: claim.state.attempts + 1,
                        latency_ms,
                        status: code,
                        error: message.clone(),
                        retry_in_ms: None,
                    });
                }
                self.unreachable(&message);
            }
            Some(error) => {
                if let Some(claim) = batch.next() {
                    let outcome = self.failed(&claim, started_ms, error, code);
                    self.outcomes.push(Settlement::of(&claim, outcome));
                }
            }
            None => {}
        }
        // Not tried: back into the queue, due at once.
        for claim in batch {
            self.outcomes.push(Settlement::of(&claim, Outcome::Release));
        }
    }

    /// The sink could not be reached: pause it, probing with back-off.
    fn unreachable(&mut self, message: &str) {
        self.pause_failures = self.pause_failures.saturating_add(1);
        let wait = retry::backoff(
            &self.plan.policy,
            self.pause_failures,
            None,
            fastrand::f64(),
        )
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

    /// The outcome of one failed attempt: retry later, or dead letter. `code` is the sink's
    /// own status code for the attempt ([`Failure::code`]), kept in the last error.
    fn failed(
        &mut self,
        claim: &Claim,
        started_ms: u64,
        error: SinkError,
        code: Option<u16>,
    ) -> Outcome {
        self.counters.failed_attempt();
        let mut state = claim.state.clone();
        state.attempts += 1;
        if state.first_attempt_ms == 0 {
            state.first_attempt_ms = started_ms;
        }
        state.last_attempt_ms = started_ms;
        state.last_error = Some(LastError::new(code, &error.to_string()));
        let seq = claim.seq;
        match error {
            SinkError::Retryable { retry_after, .. }
                if state.attempts < self.plan.policy.max_attempts =>
            {
                let wait = retry::backoff(
                    &self.plan.policy,
                    state.attempts,
                    retry_after,
                    fastrand::f64(),
                );
                state.next_attempt_ms = now_ms().saturating_add(wait.as_millis() as u64);
                self.show_failure(claim, &state, started_ms, code, &error, Some(wait));
                tracing::warn!(
                    sink = %self.name, seq, attempt = state.attempts, error = %error,
                    retry_in_ms = wait.as_millis() as u64, "delivery failed; will retry"
                );
                Outcome::Retry(state)
            }
            error => {
                self.show_failure(claim, &state, started_ms, code, &error, None);
                tracing::error!(
                    sink = %self.name, seq, attempts = state.attempts, error = %error,
                    "delivery failed; moved to the dead letters"
                );
                self.counters.dead_lettered();
                Outcome::DeadLetter(state)
            }
        }
    }

    /// What a live-feed line says of this sink and `claim`'s event.
    fn sink_event(&self, claim: &Claim) -> SinkEvent {
        let meta = &claim.event.meta;
        SinkEvent {
            sink: self.name.clone(),
            seq: claim.seq,
            event_type: meta.event_type.as_deref().map(clip),
            event_id: meta.event_id.as_deref().map(clip),
        }
    }

    /// Shows a failed attempt in the live feed: retried in `retry`, or (`None`) dead-lettered.
    fn show_failure(
        &self,
        claim: &Claim,
        state: &store::AttemptState,
        started_ms: u64,
        status: Option<u16>,
        error: &SinkError,
        retry: Option<Duration>,
    ) {
        self.activity.publish(|| match retry {
            Some(wait) => What::Failed {
                event: self.sink_event(claim),
                attempt: state.attempts,
                latency_ms: now_ms().saturating_sub(started_ms),
                status,
                error: error.to_string(),
                retry_in_ms: Some(wait.as_millis() as u64),
            },
            None => What::DeadLettered {
                event: self.sink_event(claim),
                attempts: state.attempts,
                status,
                error: error.to_string(),
            },
        });
    }

    /// A delivery task panicked: each of its events counts a failed attempt (so a sink that
    /// panics on one event dead-letters it after `max_attempts` instead of looping).
    fn lost(&mut self, id: Id) {
        let claims = self.batches.remove(&id).unwrap_or_default();
        let seqs: Vec<u64> = claims.iter().map(|c| c.seq).collect();
        tracing::error!(sink = %self.name, seqs = ?seqs, "a delivery task failed; counting a failed attempt");
        let now = now_ms();
        for claim in claims {
            let outcome = self.failed(
                &claim,
                now,
                SinkError::retryable("the delivery task panicked"),
                None,
            );
            self.outcomes.push(Settlement::of(&claim, outcome));
        }
    }

    /// Records the outcomes gathered so far, in one call.
    async fn record(&mut self) {
        if self.outcomes.is_empty() {
            return;
        }
        let outcomes = std::mem::take(&mut self.outcomes);
        let count = outcomes.len();
        match self.store.settle(&self.name, outcomes).await {
            Ok(settled) if settled.fenced > 0 => tracing::warn!(
                sink = %self.name, fenced = settled.fenced,
                "outcomes not recorded: their claims had expired and were taken over"
            ),
            Ok(_) => {}
            Err(e) => tracing::error!(
                sink = %self.name, error = %e, outcomes = count,
                "recording delivery outcomes failed; those events will be delivered again"
            ),
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
                return Err(Failure::new(SinkError::retryable("first attempt fails")));
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

    /// A plan with `policy` and a lease longer than any test.
    pub(super) fn plan(policy: RetryPolicy) -> Plan {
        Plan {
            policy,
            lease: Duration::from_secs(600),
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
            plan(RetryPolicy::default()),
            stop.clone(),
            Metrics::default(),
        ));
        store.admit(delivery(1)).await.unwrap();
        wait_for(&sink, 1).await;
        store.ping().await.unwrap();
        // The dispatcher is idle in its select now; a replay must wake it and rescan.
        tokio::time::sleep(Duration::from_millis(50)).await;
        let queued = store
            .replay(
                "collect",
                std::time::UNIX_EPOCH,
                &crate::receive::route::Filter::default(),
            )
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
            plan(policy),
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
        store.ping().await.unwrap();
        assert_eq!(store.queue_len("collect").await.unwrap(), 0);
        store.close().await.unwrap();
    }
}

#[cfg(test)]
mod panics {
    use super::tests::plan;
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
            plan(policy),
            stop.clone(),
            Metrics::default(),
        ));
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let letters = loop {
            store.ping().await.unwrap();
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
