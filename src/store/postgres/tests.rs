//! Tests of the PostgreSQL engine against a real server (`KIRIMHOOK_TEST_POSTGRES_URL`), each
//! in a schema of its own; skipped (and saying so) without the variable. These cover
//! admission, claims and settlements, dead letters, replay and the sweep; `tests_connection`
//! covers connecting, restarts, wake-ups and a server that goes away.

use std::collections::BTreeSet;
use std::time::{Duration, SystemTime};

use super::testing::*;
use super::*;
use crate::receive::envelope::Source;
use crate::receive::route::Filter;
use crate::store::model::{
    Admission, AttemptState, ClaimOrder, Destination, LastError, Outcome, RecordMeta, Settled,
    Settlement,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admits_new_and_duplicates() {
    let (settings, _guard) = settings!("admits_new_and_duplicates");
    let store = PgStore::connect(&settings).await.unwrap();

    let first = seq_of(store.admit(event(&["kirim:evt_1"], &["s"])).await.unwrap());
    // Same key, other signed content: a duplicate, whose digest is remembered.
    let t = 777_000;
    let dup = delivery_with(verified_at(t), meta(&["kirim:evt_1"], now_ms()), &["s"]);
    assert_eq!(store.admit(dup).await.unwrap(), Admission::Duplicate);
    // The same signed content with a new key (other unsigned headers): still a duplicate.
    let replayed = delivery_with(verified_at(t), meta(&["kirim:evt_2"], now_ms()), &["s"]);
    assert_eq!(store.admit(replayed).await.unwrap(), Admission::Duplicate);
    // A new key with new content is new; one of several new keys is enough.
    let second = seq_of(
        store
            .admit(event(&["kirim:evt_1", "kirim:evt_3"], &["s"]))
            .await
            .unwrap(),
    );
    assert!(second > first);
    assert_eq!(
        store.admit(event(&["kirim:evt_3"], &["s"])).await.unwrap(),
        Admission::Duplicate
    );

    // The secret id comes from the verification, not from the metadata.
    let stored = store.events(vec![first, 999_999]).await.unwrap();
    let ev = stored[0].as_ref().unwrap();
    assert_eq!(ev.meta.secret_id, "sec_T");
    assert_eq!(ev.body, b"{\"a\":1}");
    assert!(stored[1].is_none());

    // Quarantine: stored apart, not queued.
    let mut q = event(&["sha256:q1"], &["s"]);
    q.destination = Destination::Quarantine;
    let qseq = seq_of(store.admit(q).await.unwrap());
    let counts = store.counts().await.unwrap();
    assert_eq!(counts.events, 2);
    assert_eq!(counts.quarantine, 1);
    assert_eq!(counts.queued("s"), 2);
    let quarantined = store.read_quarantine(0, 10).await.unwrap();
    assert_eq!(quarantined.len(), 1);
    assert_eq!(quarantined[0].seq, qseq);
    assert_eq!(store.drop_quarantine(None).await.unwrap(), 1);
    assert!(store.read_quarantine(0, 10).await.unwrap().is_empty());
    store.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_batch_duplicates() {
    let (settings, _guard) = settings!("same_batch_duplicates");
    let store = PgStore::connect(&settings).await.unwrap();
    // Many admissions at once land in few batches: the shared key is taken once.
    let mut tasks = Vec::new();
    for _ in 0..50 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            store.admit(event(&["kirim:shared"], &["s"])).await
        }));
    }
    // The same signed content many times at once: one New.
    for i in 0..50 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let d = delivery_with(verified_at(555_000), meta(&[&format!("k{i}")], 1), &["s"]);
            store.admit(d).await
        }));
    }
    let mut new = [0, 0];
    for (i, task) in tasks.into_iter().enumerate() {
        if let Admission::New { .. } = task.await.unwrap().unwrap() {
            new[i / 50] += 1;
        }
    }
    assert_eq!(new, [1, 1]);
    assert_eq!(store.counts().await.unwrap().queued("s"), 2);
    store.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_admit_one_key_once() {
    let (settings, _guard) = settings!("two_instances_one_key");
    let a = PgStore::connect(&settings).await.unwrap();
    let b = PgStore::connect(&settings).await.unwrap();
    let mut tasks = Vec::new();
    for i in 0..100 {
        let store = if i % 2 == 0 { a.clone() } else { b.clone() };
        tasks.push(tokio::spawn(async move {
            store.admit(event(&["kirim:once"], &["s"])).await
        }));
    }
    let mut new = 0;
    for task in tasks {
        if let Admission::New { .. } = task.await.unwrap().unwrap() {
            new += 1;
        }
    }
    assert_eq!(new, 1);
    assert_eq!(a.counts().await.unwrap().events, 1);
    a.close().await;
    b.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overlapping_keys_in_opposite_orders_do_not_deadlock() {
    let (settings, _guard) = settings!("opposite_orders");
    let a = PgStore::connect(&settings).await.unwrap();
    let b = PgStore::connect(&settings).await.unwrap();
    let mut tasks = Vec::new();
    for i in 0..60 {
        let keys: Vec<String> = (0..5).map(|k| format!("k{i}_{k}")).collect();
        let mut reversed = keys.clone();
        reversed.reverse();
        // Each round's keys also overlap the next round's.
        let mut a_keys = keys.clone();
        a_keys.push(format!("k{}_0", i + 1));
        for (store, keys) in [(a.clone(), a_keys), (b.clone(), reversed)] {
            tasks.push(tokio::spawn(async move {
                let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
                store.admit(event(&keys, &["s"])).await
            }));
        }
    }
    for task in tasks {
        let admitted = task.await.unwrap();
        assert!(admitted.is_ok(), "{admitted:?}");
    }
    a.close().await;
    b.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claims_and_settles() {
    let (settings, _guard) = settings!("claims_and_settles");
    let store = PgStore::connect(&settings).await.unwrap();
    let mut seqs = Vec::new();
    for i in 0..3 {
        let admitted = store.admit(event(&[&format!("c{i}")], &["s", "t"])).await;
        seqs.push(seq_of(admitted.unwrap()));
    }
    let first = store.claim("s", 2, LEASE, ClaimOrder::Any).await.unwrap();
    assert_eq!(
        first.claims.iter().map(|c| c.seq).collect::<Vec<_>>(),
        seqs[..2]
    );
    assert_eq!(first.claims[0].state, AttemptState::default());
    assert_eq!(first.claims[0].event.meta.secret_id, "sec_T");
    let second = store.claim("s", 2, LEASE, ClaimOrder::Any).await.unwrap();
    assert_eq!(second.claims.len(), 1);
    // Everything else is leased and no retry waits: the end of a lease is the waiters' poll's
    // business, not a due time.
    assert_eq!(second.next_due_ms, None);

    let retry_at = now_ms() + 3_600_000;
    let settled = store
        .settle(
            "s",
            vec![
                Settlement::of(&first.claims[0], Outcome::Delivered),
                Settlement::of(&first.claims[1], Outcome::Retry(retry_state(retry_at))),
                Settlement::of(
                    &second.claims[0],
                    Outcome::DeadLetter(retry_state(retry_at)),
                ),
            ],
        )
        .await
        .unwrap();
    assert_eq!(
        settled,
        Settled {
            applied: 3,
            fenced: 0
        }
    );
    // Settling the same claims again: the entries are gone or no longer leased.
    let again = store
        .settle(
            "s",
            vec![Settlement::of(&first.claims[1], Outcome::Delivered)],
        )
        .await
        .unwrap();
    assert_eq!(again.fenced, 1);

    let status = store.sink_status("s").await.unwrap();
    assert_eq!(status.queued, 1);
    assert_eq!(status.dead_letters, 1);
    assert!(status.oldest_received_ms.is_some());
    let idle = store.claim("s", 5, LEASE, ClaimOrder::Any).await.unwrap();
    assert!(idle.claims.is_empty());
    assert_eq!(idle.next_due_ms, Some(retry_at));

    let dead = store.dead_letters("s", 0, 10).await.unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].event.seq, seqs[2]);
    assert_eq!(
        dead[0].state,
        retry_state(retry_at).clone_with(&dead[0].state)
    );
    assert_eq!(
        dead[0].state.last_error,
        Some(LastError::new(Some(503), "busy"))
    );

    // The other sink is untouched; a release keeps the state and makes it due again.
    let t = store.claim("t", 1, LEASE, ClaimOrder::Any).await.unwrap();
    let released = store
        .settle("t", vec![Settlement::of(&t.claims[0], Outcome::Release)])
        .await
        .unwrap();
    assert_eq!(released.applied, 1);
    let t2 = store.claim("t", 1, LEASE, ClaimOrder::Any).await.unwrap();
    assert_eq!(t2.claims[0].seq, t.claims[0].seq);
    assert!(t2.claims[0].token > t.claims[0].token);
    let counts = store.counts().await.unwrap();
    assert_eq!(counts.queued("s"), 1);
    assert_eq!(counts.queued("t"), 3);
    assert_eq!(counts.dead_letters("s"), 1);
    store.close().await;
}

trait SameTimes {
    /// `self` with the attempt times of `other` (set by the test at slightly other instants).
    fn clone_with(&self, other: &AttemptState) -> AttemptState;
}

impl SameTimes for AttemptState {
    fn clone_with(&self, other: &AttemptState) -> AttemptState {
        AttemptState {
            first_attempt_ms: other.first_attempt_ms,
            last_attempt_ms: other.last_attempt_ms,
            ..self.clone()
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_lease_is_taken_over_and_fences_the_late_settle() {
    let (settings, _guard) = settings!("lease_expiry");
    let a = PgStore::connect(&settings).await.unwrap();
    let mut other = settings.clone();
    other.instance.push_str("-b");
    let b = PgStore::connect(&other).await.unwrap();
    a.admit(event(&["l1"], &["s"])).await.unwrap();
    let mine = a
        .claim("s", 1, Duration::from_millis(200), ClaimOrder::Any)
        .await
        .unwrap();
    assert_eq!(mine.claims.len(), 1);
    let early = b.claim("s", 1, LEASE, ClaimOrder::Any).await.unwrap();
    assert!(early.claims.is_empty());
    tokio::time::sleep(Duration::from_millis(300)).await;
    let theirs = b.claim("s", 1, LEASE, ClaimOrder::Any).await.unwrap();
    assert_eq!(theirs.claims.len(), 1);
    assert!(theirs.claims[0].token > mine.claims[0].token);
    let late = a
        .settle(
            "s",
            vec![Settlement::of(&mine.claims[0], Outcome::Delivered)],
        )
        .await
        .unwrap();
    assert_eq!(
        late,
        Settled {
            applied: 0,
            fenced: 1
        }
    );
    let done = b
        .settle(
            "s",
            vec![Settlement::of(&theirs.claims[0], Outcome::Delivered)],
        )
        .await
        .unwrap();
    assert_eq!(done.applied, 1);
    assert_eq!(a.sink_status("s").await.unwrap().queued, 0);
    a.close().await;
    b.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strict_order_waits_for_the_first_entry() {
    let (settings, _guard) = settings!("strict_order");
    let store = PgStore::connect(&settings).await.unwrap();
    let mut seqs = Vec::new();
    for i in 0..3 {
        seqs.push(seq_of(
            store
                .admit(event(&[&format!("o{i}")], &["s"]))
                .await
                .unwrap(),
        ));
    }
    let first = store
        .claim("s", 1, LEASE, ClaimOrder::Strict)
        .await
        .unwrap();
    assert_eq!(first.claims[0].seq, seqs[0]);
    // The first entry is leased: nothing after it is handed out.
    let blocked = store
        .claim("s", 5, LEASE, ClaimOrder::Strict)
        .await
        .unwrap();
    assert!(blocked.claims.is_empty());
    assert!(blocked.next_due_ms.unwrap() > now_ms() + 20_000);
    let retry_at = now_ms() + 3_600_000;
    store
        .settle(
            "s",
            vec![Settlement::of(
                &first.claims[0],
                Outcome::Retry(retry_state(retry_at)),
            )],
        )
        .await
        .unwrap();
    let waiting = store
        .claim("s", 5, LEASE, ClaimOrder::Strict)
        .await
        .unwrap();
    assert!(waiting.claims.is_empty());
    assert_eq!(waiting.next_due_ms, Some(retry_at));
    // Any order passes the waiting entry.
    let any = store.claim("s", 5, LEASE, ClaimOrder::Any).await.unwrap();
    assert_eq!(
        any.claims.iter().map(|c| c.seq).collect::<Vec<_>>(),
        seqs[1..]
    );
    store.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_are_retried_and_dropped() {
    let (settings, _guard) = settings!("dead_letters");
    let store = PgStore::connect(&settings).await.unwrap();
    for i in 0..3 {
        store
            .admit(event(&[&format!("d{i}")], &["s"]))
            .await
            .unwrap();
    }
    let claimed = store.claim("s", 3, LEASE, ClaimOrder::Any).await.unwrap();
    let dead: Vec<Settlement> = claimed
        .claims
        .iter()
        .map(|c| Settlement::of(c, Outcome::DeadLetter(retry_state(1))))
        .collect();
    assert_eq!(store.settle("s", dead).await.unwrap().applied, 3);
    let letters = store.dead_letters("s", 0, 10).await.unwrap();
    assert_eq!(letters.len(), 3);
    assert_eq!(
        store
            .dead_letters("s", letters[0].event.seq, 1)
            .await
            .unwrap()
            .len(),
        1
    );

    let first = letters[0].event.seq;
    assert_eq!(
        store
            .retry_dead_letters("s", Some(vec![first]))
            .await
            .unwrap(),
        1
    );
    let again = store.claim("s", 3, LEASE, ClaimOrder::Any).await.unwrap();
    assert_eq!(again.claims.len(), 1);
    assert_eq!(again.claims[0].seq, first);
    assert_eq!(again.claims[0].state, AttemptState::default());

    assert_eq!(store.drop_dead_letters("s", None).await.unwrap(), 2);
    assert_eq!(store.sink_status("s").await.unwrap().dead_letters, 0);
    assert_eq!(store.retry_dead_letters("s", None).await.unwrap(), 0);
    store.close().await;
}

/// Events to check a replay filter against: every combination of the criteria.
fn replay_metas() -> Vec<RecordMeta> {
    let types = [
        Some("message.received"),
        Some("message.status"),
        Some("messages"),
        Some("contact.created"),
        Some("a_b%c"),
        Some("axbyc"),
        None,
    ];
    let sources = [Some(Source::Kirim), Some(Source::Meta), None];
    let phones: [&[&str]; 3] = [&[], &["111"], &["222", "333"]];
    let mut out = Vec::new();
    for t in types {
        for s in sources {
            for p in phones {
                let mut m = meta(&[], 1);
                m.event_type = t.map(str::to_owned);
                m.source = s;
                m.phone_number_ids = p.iter().map(|p| p.to_string()).collect();
                out.push(m);
            }
        }
    }
    out
}

fn replay_filters() -> Vec<Filter> {
    let strings = |items: &[&str]| Some(items.iter().map(|s| s.to_string()).collect());
    vec![
        Filter::default(),
        Filter::new(strings(&["message.*"]), None, None),
        Filter::new(strings(&["*"]), None, None),
        Filter::new(strings(&["**", "contact.*"]), None, None),
        Filter::new(strings(&["*.*"]), None, None),
        Filter::new(strings(&["a_b%c"]), None, None),
        Filter::new(strings(&["contact.created", "messages"]), None, None),
        Filter::new(strings(&[]), None, None),
        Filter::new(None, Some(vec![Source::Meta]), None),
        Filter::new(None, Some(vec![]), None),
        Filter::new(None, None, strings(&["333"])),
        Filter::new(None, None, strings(&[])),
        Filter::new(
            strings(&["message.*"]),
            Some(vec![Source::Meta, Source::Kirim]),
            strings(&["111", "222"]),
        ),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_pushes_the_filter_down_like_filter_matches() {
    let (settings, _guard) = settings!("replay_filters");
    let store = PgStore::connect(&settings).await.unwrap();
    let metas = replay_metas();
    let mut admitted = Vec::new();
    for (i, mut m) in metas.into_iter().enumerate() {
        m.keys = vec![key(&format!("r{i}"))];
        m.received_at_ms = now_ms();
        let seq = seq_of(
            store
                .admit(delivery_with(verified(), m.clone(), &[]))
                .await
                .unwrap(),
        );
        admitted.push((seq, m));
    }
    let old = delivery_with(verified(), meta(&["r_old"], 1_000), &[]);
    store.admit(old).await.unwrap();
    let since = SystemTime::now() - Duration::from_secs(3600);
    for (i, filter) in replay_filters().iter().enumerate() {
        let sink = format!("replay{i}");
        let queued = store.replay(&sink, since, filter).await.unwrap();
        let expected: BTreeSet<u64> = admitted
            .iter()
            .filter(|(_, m)| filter.matches(m))
            .map(|(seq, _)| *seq)
            .collect();
        let claimed = store
            .claim(&sink, 1000, LEASE, ClaimOrder::Any)
            .await
            .unwrap();
        let got: BTreeSet<u64> = claimed.claims.iter().map(|c| c.seq).collect();
        assert_eq!(got, expected, "filter {filter:?}");
        assert_eq!(queued, expected.len());
        // Queued already: not queued twice.
        assert_eq!(store.replay(&sink, since, filter).await.unwrap(), 0);
    }
    store.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sweep_forgets_old_keys_and_unreferenced_events() {
    let (settings, _guard) = settings!("sweep");
    let store = PgStore::connect(&settings).await.unwrap();
    let hour_ago = now_ms() - 3_600_000;
    let old = |k: &str, sinks: &[&str]| delivery_with(verified(), meta(&[k], hour_ago), sinks);
    let delivered = seq_of(store.admit(old("w1", &["s"])).await.unwrap());
    let queued = seq_of(store.admit(old("w2", &["s"])).await.unwrap());
    let dead = seq_of(store.admit(old("w3", &["s"])).await.unwrap());
    let unqueued = seq_of(store.admit(old("w4", &[])).await.unwrap());
    let fresh = seq_of(store.admit(event(&["w5"], &[])).await.unwrap());
    let claimed = store.claim("s", 3, LEASE, ClaimOrder::Any).await.unwrap();
    let by_seq = |seq| claimed.claims.iter().find(|c| c.seq == seq).unwrap();
    store
        .settle(
            "s",
            vec![
                Settlement::of(by_seq(delivered), Outcome::Delivered),
                Settlement::of(by_seq(dead), Outcome::DeadLetter(retry_state(1))),
                Settlement::of(by_seq(queued), Outcome::Release),
            ],
        )
        .await
        .unwrap();

    // Keep events ten minutes, keys and digests a day: nothing but old events go.
    let day = Duration::from_secs(86_400);
    let swept = store
        .sweep(SystemTime::now(), day, day, Duration::from_secs(600))
        .await
        .unwrap();
    assert_eq!(swept.keys, 0);
    assert_eq!(swept.events, 2);
    let left = store
        .events(vec![delivered, queued, dead, unqueued, fresh])
        .await
        .unwrap();
    let present: Vec<bool> = left.iter().map(Option::is_some).collect();
    assert_eq!(present, [false, true, true, false, true]);

    // Keys older than 30 minutes go (w1..w4), and with them the duplicate check on them.
    let half_hour = Duration::from_secs(1800);
    let swept = store
        .sweep(SystemTime::now(), half_hour, half_hour, Duration::ZERO)
        .await
        .unwrap();
    assert_eq!(swept.keys, 4);
    assert_eq!(swept.events, 1);
    assert!(matches!(
        store.admit(event(&["w1"], &[])).await.unwrap(),
        Admission::New { .. }
    ));
    assert_eq!(
        store.admit(event(&["w5"], &[])).await.unwrap(),
        Admission::Duplicate
    );
    store.close().await;
}

/// The conformance suite on PostgreSQL, each case in its own schema.
mod conformance {
    use crate::store::conformance::{conformance_tests, Harness};
    use crate::store::postgres::testing::test_settings;
    use crate::store::Store;

    async fn open(case: &'static str) -> Option<Harness> {
        let (settings, guard) = test_settings(case).await?;
        let store = Store::connect_postgres(&settings)
            .await
            .expect("connect to the test database");
        Some(Harness {
            store,
            reopen: Box::new(move || {
                let settings = settings.clone();
                Box::pin(async move {
                    Store::connect_postgres(&settings)
                        .await
                        .expect("connect again")
                })
            }),
            _keep: Box::new(guard),
        })
    }

    conformance_tests!(open);
}
