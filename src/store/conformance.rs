//! The store's conformance suite: the same cases, run against every engine through the
//! engine-agnostic [`Store`] API. Each engine's test module instantiates them with
//! [`conformance_tests!`], giving an async opener that returns a fresh [`Harness`] (or `None`
//! when the engine's service is not there: the test then says it was skipped).

use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, SystemTime};

use super::{
    millis, Admission, AttemptState, ClaimOrder, Destination, NewDelivery, Outcome, RecordMeta,
    Settlement, Store,
};
use crate::receive::envelope::{DedupeKey, Source};
use crate::receive::route::Filter;
use crate::receive::signature::{self, SigningSecret};

/// A boxed future, as the openers return.
pub(crate) type BoxFuture<T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send>>;

/// A store under test, and how to open it again (a restart).
pub(crate) struct Harness {
    /// The store.
    pub store: Store,
    /// Opens the same store again, after `store` was closed.
    pub reopen: Box<dyn Fn() -> BoxFuture<Store> + Send + Sync>,
    /// Holds whatever must live as long as the test (a temp dir, a schema).
    pub _keep: Box<dyn std::any::Any + Send + Sync>,
}

/// The sink every case queues for.
const SINK: &str = "app";
/// A lease longer than any case.
const LONG: Duration = Duration::from_secs(600);

/// A delivery with its own signed content, these dedupe keys, and this event type.
pub(crate) fn delivery(keys: &[&str], event_type: &str) -> NewDelivery {
    static T: AtomicI64 = AtomicI64::new(1_000_000);
    let t = T.fetch_add(1, Ordering::Relaxed);
    delivery_at(t, keys, event_type, millis(SystemTime::now()))
}

/// A delivery signed at `t`, received at `received_at_ms`.
fn delivery_at(t: i64, keys: &[&str], event_type: &str, received_at_ms: u64) -> NewDelivery {
    let secret = SigningSecret::new("sec_T", "whsec_test");
    let header = secret.sign(t, b"{}");
    let verified = signature::verify(Some(header.as_bytes()), b"{}", &[secret], t, 300)
        .expect("a test signature verifies");
    NewDelivery {
        verified,
        destination: Destination::Events,
        meta: RecordMeta {
            received_at_ms,
            secret_id: String::new(),
            headers: vec![("x-kirim-delivery-id".into(), format!("wbd_{t}"))],
            keys: keys.iter().map(|k| dedupe_key(k)).collect(),
            shape: None,
            source: Some(Source::Kirim),
            event_type: Some(event_type.to_owned()),
            event_id: keys.first().map(|k| (*k).to_owned()),
            phone_number_ids: vec![],
            quarantine_reason: None,
        },
        body: bytes::Bytes::from(format!("{{\"keys\":{keys:?}}}")),
        sinks: vec![SINK.to_owned()],
    }
}

fn dedupe_key(text: &str) -> DedupeKey {
    serde_json::from_value(serde_json::Value::String(text.to_owned()))
        .expect("any string is a dedupe key")
}

async fn admit_new(store: &Store, keys: &[&str]) -> u64 {
    match store.admit(delivery(keys, "message.received")).await {
        Ok(Admission::New { seq }) => seq,
        other => panic!("expected a new admission of {keys:?}, got {other:?}"),
    }
}

fn now_ms() -> u64 {
    millis(SystemTime::now())
}

/// Claims until `want` claims were gathered or 5 s passed (a claim only sees committed work).
async fn claim_n(store: &Store, want: usize, order: ClaimOrder) -> Vec<super::Claim> {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let mut got = Vec::new();
    while got.len() < want {
        let claimed = store
            .claim(SINK, want - got.len(), LONG, order)
            .await
            .expect("claim");
        got.extend(claimed.claims);
        if got.len() < want {
            assert!(
                std::time::Instant::now() < deadline,
                "claimed {} of {want}",
                got.len()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    got
}

/// Claims `want` entries with a `lease` (polling up to 5 s for them to be committed).
async fn claim_leased(store: &Store, want: usize, lease: Duration) -> Vec<super::Claim> {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let mut got = Vec::new();
    while got.len() < want {
        let claimed = store
            .claim(SINK, want - got.len(), lease, ClaimOrder::Any)
            .await
            .expect("claim");
        got.extend(claimed.claims);
        if got.len() < want {
            assert!(
                std::time::Instant::now() < deadline,
                "claimed {} of {want}",
                got.len()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    got
}

/// New, duplicate by key, duplicate by signed content; the same key in one batch.
pub(crate) async fn admits_new_and_duplicates(h: Harness) {
    let store = &h.store;
    let first = delivery(&["kirim:a"], "message.received");
    let replay = NewDelivery {
        verified: first.verified.clone(),
        body: first.body.clone(),
        meta: RecordMeta {
            keys: vec![dedupe_key("kirim:other")],
            ..first.meta.clone()
        },
        destination: Destination::Events,
        sinks: first.sinks.clone(),
    };
    assert!(matches!(
        store.admit(first).await.unwrap(),
        Admission::New { .. }
    ));
    assert_eq!(
        store
            .admit(delivery(&["kirim:a"], "message.received"))
            .await
            .unwrap(),
        Admission::Duplicate
    );
    // The same signed content with other (unsigned) keys: a duplicate.
    assert_eq!(store.admit(replay).await.unwrap(), Admission::Duplicate);
    // One new key among known ones: new.
    admit_new(store, &["kirim:a", "kirim:b"]).await;
    let counts = store.counts().await.unwrap();
    assert_eq!(counts.events, 2);
    assert_eq!(counts.queued(SINK), 2);
    store.close().await.unwrap();
}

/// Many concurrent copies of one event: exactly one is new.
pub(crate) async fn concurrent_copies_admit_once(h: Harness) {
    let mut tasks = Vec::new();
    for _ in 0..100 {
        let store = h.store.clone();
        tasks.push(tokio::spawn(async move {
            store
                .admit(delivery(&["kirim:same"], "message.received"))
                .await
                .unwrap()
        }));
    }
    let mut new = 0;
    for task in tasks {
        if matches!(task.await.unwrap(), Admission::New { .. }) {
            new += 1;
        }
    }
    assert_eq!(new, 1);
    assert_eq!(h.store.queue_len(SINK).await.unwrap(), 1);
    h.store.close().await.unwrap();
}

/// Claims hand each entry to one claimer, in seq order, with its event; a delivered
/// settlement removes it.
pub(crate) async fn claims_are_exclusive_and_settle_removes(h: Harness) {
    let store = &h.store;
    let mut seqs = Vec::new();
    for i in 0..5 {
        seqs.push(admit_new(store, &[&format!("kirim:c{i}")]).await);
    }
    let first = claim_n(store, 2, ClaimOrder::Any).await;
    let rest = claim_n(store, 3, ClaimOrder::Any).await;
    let mut claimed: Vec<u64> = first.iter().chain(&rest).map(|c| c.seq).collect();
    assert!(first[0].seq < first[1].seq, "claims come in seq order");
    claimed.sort();
    assert_eq!(claimed, seqs);
    assert_eq!(
        rest[0].event.meta.event_id.as_deref(),
        Some(
            format!(
                "kirim:c{}",
                seqs.iter().position(|s| *s == rest[0].seq).unwrap()
            )
            .as_str()
        )
    );
    let more = store.claim(SINK, 10, LONG, ClaimOrder::Any).await.unwrap();
    assert!(more.claims.is_empty(), "everything is leased");
    let settlements = first
        .iter()
        .chain(&rest)
        .map(|c| Settlement::of(c, Outcome::Delivered))
        .collect();
    let settled = store.settle(SINK, settlements).await.unwrap();
    assert_eq!((settled.applied, settled.fenced), (5, 0));
    store.ping().await.unwrap();
    assert_eq!(store.queue_len(SINK).await.unwrap(), 0);
    let more = store.claim(SINK, 10, LONG, ClaimOrder::Any).await.unwrap();
    assert!(more.claims.is_empty());
    store.close().await.unwrap();
}

/// A retry is claimable again at its due time, with its attempt state; a release at once.
pub(crate) async fn retries_wait_for_their_time_and_releases_do_not(h: Harness) {
    let store = &h.store;
    let a = admit_new(store, &["kirim:r1"]).await;
    let b = admit_new(store, &["kirim:r2"]).await;
    let claims = claim_n(store, 2, ClaimOrder::Any).await;
    let due = now_ms() + 400;
    let state = AttemptState {
        attempts: 1,
        first_attempt_ms: now_ms(),
        last_attempt_ms: now_ms(),
        next_attempt_ms: due,
        last_error: Some(super::LastError::new(Some(503), "busy")),
    };
    let outcomes = claims
        .iter()
        .map(|c| {
            let outcome = if c.seq == a {
                Outcome::Retry(state.clone())
            } else {
                Outcome::Release
            };
            Settlement::of(c, outcome)
        })
        .collect();
    store.settle(SINK, outcomes).await.unwrap();
    let now = store.claim(SINK, 10, LONG, ClaimOrder::Any).await.unwrap();
    let seqs: Vec<u64> = now.claims.iter().map(|c| c.seq).collect();
    assert_eq!(
        seqs,
        vec![b],
        "the released entry at once, the retry not yet"
    );
    assert_eq!(now.claims[0].state.attempts, 0);
    let next = now.next_due_ms.expect("the retry's due time is known");
    assert!(next <= due, "next due {next} after the retry's {due}");
    tokio::time::sleep(Duration::from_millis(due.saturating_sub(now_ms()) + 50)).await;
    let later = claim_n(store, 1, ClaimOrder::Any).await;
    assert_eq!(later[0].seq, a);
    assert_eq!(later[0].state, state);
    store.close().await.unwrap();
}

/// A claim whose lease ended is handed out again; the first claimer's settlement is fenced.
pub(crate) async fn expired_leases_are_taken_over_and_fenced(h: Harness) {
    let store = &h.store;
    let seq = admit_new(store, &["kirim:l1"]).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let first = loop {
        let claimed = store
            .claim(SINK, 1, Duration::from_millis(200), ClaimOrder::Any)
            .await
            .unwrap();
        if let Some(claim) = claimed.claims.into_iter().next() {
            break claim;
        }
        assert!(std::time::Instant::now() < deadline, "never claimable");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(first.seq, seq);
    let early = store.claim(SINK, 1, LONG, ClaimOrder::Any).await.unwrap();
    assert!(early.claims.is_empty(), "leased");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let second = claim_n(store, 1, ClaimOrder::Any).await;
    assert_eq!(second[0].seq, seq);
    assert_ne!(second[0].token, first.token);
    let late = store
        .settle(SINK, vec![Settlement::of(&first, Outcome::Delivered)])
        .await
        .unwrap();
    assert_eq!((late.applied, late.fenced), (0, 1));
    store.ping().await.unwrap();
    assert_eq!(
        store.queue_len(SINK).await.unwrap(),
        1,
        "fenced: not removed"
    );
    let ok = store
        .settle(SINK, vec![Settlement::of(&second[0], Outcome::Delivered)])
        .await
        .unwrap();
    assert_eq!((ok.applied, ok.fenced), (1, 0));
    store.ping().await.unwrap();
    assert_eq!(store.queue_len(SINK).await.unwrap(), 0);
    store.close().await.unwrap();
}

/// Strict order: nothing later while the earliest entry waits for its retry or is leased.
pub(crate) async fn strict_order_waits_for_the_earliest(h: Harness) {
    let store = &h.store;
    let a = admit_new(store, &["kirim:s1"]).await;
    let b = admit_new(store, &["kirim:s2"]).await;
    let first = claim_n(store, 1, ClaimOrder::Strict).await;
    assert_eq!(first[0].seq, a);
    let leased = store
        .claim(SINK, 5, LONG, ClaimOrder::Strict)
        .await
        .unwrap();
    assert!(
        leased.claims.is_empty(),
        "strict: nothing while the earliest is leased"
    );
    let state = AttemptState {
        attempts: 1,
        next_attempt_ms: now_ms() + 60_000,
        ..AttemptState::default()
    };
    store
        .settle(SINK, vec![Settlement::of(&first[0], Outcome::Retry(state))])
        .await
        .unwrap();
    let strict = store
        .claim(SINK, 5, LONG, ClaimOrder::Strict)
        .await
        .unwrap();
    assert!(
        strict.claims.is_empty(),
        "strict: nothing while the earliest waits"
    );
    let any = claim_n(store, 1, ClaimOrder::Any).await;
    assert_eq!(any[0].seq, b, "any order: later entries go");
    store.close().await.unwrap();
}

/// A strict claim hands out a run from the head of the queue, not one entry: the entries
/// waiting for a retry first, in seq order whatever their due times, then fresh ones; it
/// stops at the first entry that is not due.
pub(crate) async fn strict_claims_hand_out_a_run_in_seq_order(h: Harness) {
    let store = &h.store;
    let mut seqs = Vec::new();
    for key in ["kirim:r1", "kirim:r2", "kirim:r3", "kirim:r4", "kirim:r5"] {
        seqs.push(admit_new(store, &[key]).await);
    }
    let strict = |max| store.claim(SINK, max, LONG, ClaimOrder::Strict);
    let run = claim_n(store, 3, ClaimOrder::Strict).await;
    let claimed: Vec<u64> = run.iter().map(|c| c.seq).collect();
    assert_eq!(claimed, seqs[..3], "one strict claim hands out a run");
    assert!(strict(10).await.unwrap().claims.is_empty());

    // The second waits with a later due time than the third: both due, seq order wins.
    let retry = |attempts, due| {
        Outcome::Retry(AttemptState {
            attempts,
            next_attempt_ms: due,
            ..AttemptState::default()
        })
    };
    let now = now_ms();
    store
        .settle(
            SINK,
            vec![
                Settlement::of(&run[0], Outcome::Delivered),
                Settlement::of(&run[1], retry(3, now - 1_000)),
                Settlement::of(&run[2], retry(1, now - 2_000)),
            ],
        )
        .await
        .unwrap();
    let again = strict(10).await.unwrap();
    let claimed: Vec<u64> = again.claims.iter().map(|c| c.seq).collect();
    assert_eq!(
        claimed,
        seqs[1..],
        "retries in seq order, then fresh entries"
    );

    // The second waits for a later retry: nothing after it goes, whatever else is due.
    let mut settlements = vec![Settlement::of(&again.claims[0], retry(4, now + 60_000))];
    settlements.extend(
        again.claims[1..]
            .iter()
            .map(|c| Settlement::of(c, Outcome::Release)),
    );
    store.settle(SINK, settlements).await.unwrap();
    assert!(strict(10).await.unwrap().claims.is_empty());
    store.close().await.unwrap();
}

/// Dead letters keep the event and the last state; a retry puts them back as never
/// attempted; a drop forgets them.
pub(crate) async fn dead_letters_retry_and_drop(h: Harness) {
    let store = &h.store;
    let a = admit_new(store, &["kirim:d1"]).await;
    let b = admit_new(store, &["kirim:d2"]).await;
    let claims = claim_n(store, 2, ClaimOrder::Any).await;
    let last = AttemptState {
        attempts: 3,
        first_attempt_ms: 1,
        last_attempt_ms: 2,
        next_attempt_ms: 0,
        last_error: Some(super::LastError::new(Some(400), "bad request")),
    };
    let outcomes = claims
        .iter()
        .map(|c| Settlement::of(c, Outcome::DeadLetter(last.clone())))
        .collect();
    store.settle(SINK, outcomes).await.unwrap();
    store.ping().await.unwrap();
    let letters = store.dead_letters(SINK, 0, 10).await.unwrap();
    let seqs: Vec<u64> = letters.iter().map(|l| l.event.seq).collect();
    assert_eq!(seqs, {
        let mut v = vec![a, b];
        v.sort();
        v
    });
    assert_eq!(letters[0].state, last);
    assert_eq!(letters[0].sink, SINK);
    let counts = store.counts().await.unwrap();
    assert_eq!((counts.queued(SINK), counts.dead_letters(SINK)), (0, 2));
    assert_eq!(
        store.retry_dead_letters(SINK, Some(vec![a])).await.unwrap(),
        1
    );
    let again = claim_n(store, 1, ClaimOrder::Any).await;
    assert_eq!(again[0].seq, a);
    assert_eq!(again[0].state.attempts, 0);
    assert_eq!(store.drop_dead_letters(SINK, None).await.unwrap(), 1);
    assert!(store.dead_letters(SINK, 0, 10).await.unwrap().is_empty());
    store.close().await.unwrap();
}

/// A quarantined delivery is kept for an operator and never claimed.
pub(crate) async fn quarantine_is_kept_not_claimed(h: Harness) {
    let store = &h.store;
    let mut q = delivery(&["sha256:q1"], "unknown");
    q.destination = Destination::Quarantine;
    q.meta.quarantine_reason = Some("not_json".into());
    let Admission::New { seq } = store.admit(q).await.unwrap() else {
        panic!("quarantine admission");
    };
    let read = store.read_quarantine(0, 10).await.unwrap();
    assert_eq!(read.len(), 1);
    assert_eq!(read[0].seq, seq);
    assert_eq!(read[0].meta.quarantine_reason.as_deref(), Some("not_json"));
    let claimed = store.claim(SINK, 10, LONG, ClaimOrder::Any).await.unwrap();
    assert!(claimed.claims.is_empty());
    assert_eq!(store.counts().await.unwrap().quarantine, 1);
    assert_eq!(store.drop_quarantine(None).await.unwrap(), 1);
    assert!(store.read_quarantine(0, 10).await.unwrap().is_empty());
    store.close().await.unwrap();
}

/// A replay queues again the stored events that the filter takes, once.
pub(crate) async fn replay_applies_the_filter(h: Harness) {
    let store = &h.store;
    let since = SystemTime::now() - Duration::from_secs(60);
    let mut want = Vec::new();
    for (i, event_type) in ["message.received", "message.status", "contact.created"]
        .iter()
        .enumerate()
    {
        let Admission::New { seq } = store
            .admit(delivery(&[&format!("kirim:p{i}")], event_type))
            .await
            .unwrap()
        else {
            panic!("new");
        };
        if event_type.starts_with("message.") {
            want.push(seq);
        }
    }
    let claims = claim_n(store, 3, ClaimOrder::Any).await;
    let delivered = claims
        .iter()
        .map(|c| Settlement::of(c, Outcome::Delivered))
        .collect();
    store.settle(SINK, delivered).await.unwrap();
    store.ping().await.unwrap();
    let filter = Filter::new(Some(vec!["message.*".into()]), None, None);
    assert_eq!(store.replay(SINK, since, &filter).await.unwrap(), 2);
    let mut again: Vec<u64> = claim_n(store, 2, ClaimOrder::Any)
        .await
        .iter()
        .map(|c| c.seq)
        .collect();
    again.sort();
    assert_eq!(again, want);
    let none = Filter::new(None, Some(vec![Source::Meta]), None);
    assert_eq!(store.replay(SINK, since, &none).await.unwrap(), 0);
    store.close().await.unwrap();
}

/// The sweep forgets old keys (the same event is new again) and removes delivered events.
pub(crate) async fn sweep_forgets_old_keys_and_delivered_events(h: Harness) {
    let store = &h.store;
    let old = now_ms() - 10 * 24 * 3600 * 1000;
    let t = 2_000_000_000 + (std::process::id() as i64 % 1000) * 1000;
    let mut aged = delivery_at(t, &["kirim:old"], "message.received", old);
    aged.sinks.clear();
    assert!(matches!(
        store.admit(aged).await.unwrap(),
        Admission::New { .. }
    ));
    let fresh = admit_new(store, &["kirim:fresh"]).await;
    let claims = claim_n(store, 1, ClaimOrder::Any).await;
    assert_eq!(claims[0].seq, fresh);
    store
        .settle(SINK, vec![Settlement::of(&claims[0], Outcome::Delivered)])
        .await
        .unwrap();
    store.ping().await.unwrap();
    let swept = store
        .sweep(
            SystemTime::now(),
            Duration::from_secs(24 * 3600),
            Duration::from_secs(24 * 3600),
            Duration::ZERO,
        )
        .await
        .unwrap();
    assert!(swept.keys >= 1, "{swept:?}");
    assert_eq!(
        swept.events, 2,
        "both events are owed to no sink: {swept:?}"
    );
    assert_eq!(store.counts().await.unwrap().events, 0);
    // The old key is forgotten: the same event is new again (signed anew, as kirim.dev does).
    admit_new(store, &["kirim:old"]).await;
    // The fresh key is remembered.
    assert_eq!(
        store
            .admit(delivery(&["kirim:fresh"], "message.received"))
            .await
            .unwrap(),
        Admission::Duplicate
    );
    store.close().await.unwrap();
}

/// After a restart: keys are remembered, unsettled claims are claimable again (at once on
/// the embedded engine, which keeps leases in memory; once the lease ended on a shared
/// engine, whose other instances may still hold theirs), counts hold.
pub(crate) async fn a_restart_keeps_everything(h: Harness) {
    let Harness {
        store: first,
        reopen,
        _keep,
    } = h;
    let a = admit_new(&first, &["kirim:x1"]).await;
    let b = admit_new(&first, &["kirim:x2"]).await;
    let claims = claim_leased(&first, 2, Duration::from_millis(300)).await;
    let done = claims.iter().find(|c| c.seq == b).expect("b claimed");
    first
        .settle(SINK, vec![Settlement::of(done, Outcome::Delivered)])
        .await
        .unwrap();
    first.close().await.unwrap();
    // The engine lets go of its files (or connections) only when the last handle is gone.
    drop(first);
    let store = reopen().await;
    assert_eq!(
        store
            .admit(delivery(&["kirim:x1"], "message.received"))
            .await
            .unwrap(),
        Admission::Duplicate
    );
    let again = claim_n(&store, 1, ClaimOrder::Any).await;
    assert_eq!(
        again[0].seq, a,
        "the unsettled claim is claimable after a restart"
    );
    let counts = store.counts().await.unwrap();
    assert_eq!(counts.queued(SINK), 1);
    store.close().await.unwrap();
}

/// New work wakes a waiter before its deadline.
pub(crate) async fn new_work_wakes_a_waiter(h: Harness) {
    let store = h.store.clone();
    let mut work = store.work();
    let waiter = tokio::spawn(async move {
        let started = std::time::Instant::now();
        work.wait(Some(tokio::time::Instant::now() + Duration::from_secs(30)))
            .await;
        started.elapsed()
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    admit_new(&h.store, &["kirim:w1"]).await;
    let waited = tokio::time::timeout(Duration::from_secs(10), waiter)
        .await
        .expect("the waiter woke")
        .unwrap();
    assert!(waited < Duration::from_secs(10));
    h.store.close().await.unwrap();
}

/// Instantiates every conformance case as a test of one engine: `$open` is an async fn
/// `(&'static str) -> Option<Harness>` (`None`: skipped).
macro_rules! conformance_tests {
    ($open:path) => {
        crate::store::conformance::conformance_tests!(@cases $open,
            admits_new_and_duplicates,
            concurrent_copies_admit_once,
            claims_are_exclusive_and_settle_removes,
            retries_wait_for_their_time_and_releases_do_not,
            expired_leases_are_taken_over_and_fenced,
            strict_order_waits_for_the_earliest,
            strict_claims_hand_out_a_run_in_seq_order,
            dead_letters_retry_and_drop,
            quarantine_is_kept_not_claimed,
            replay_applies_the_filter,
            sweep_forgets_old_keys_and_delivered_events,
            a_restart_keeps_everything,
            new_work_wakes_a_waiter
        );
    };
    (@cases $open:path, $($case:ident),+) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                if let Some(harness) = $open(stringify!($case)).await {
                    crate::store::conformance::$case(harness).await;
                }
            }
        )+
    };
}
pub(crate) use conformance_tests;
