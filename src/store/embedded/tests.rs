//! Tests of the store against a real fjall database in a temp folder.

use std::time::{Duration, SystemTime};

use super::*;
use crate::receive::signature::Verified;
use crate::receive::signature::{self, SigningSecret};
use crate::store::model::{Destination, LastError};

/// A verification with its own `t`: two deliveries of the tests are never the same signed
/// content, unless a test means them to be (see `same_signed_content_is_a_duplicate`).
fn verified() -> Verified {
    static T: std::sync::atomic::AtomicI64 = std::sync::atomic::AtomicI64::new(1000);
    verified_at(T.fetch_add(1, std::sync::atomic::Ordering::Relaxed))
}

fn verified_at(t: i64) -> Verified {
    let secret = SigningSecret::new("sec_T", "whsec_test");
    let header = secret.sign(t, b"{}");
    signature::verify(Some(header.as_bytes()), b"{}", &[secret], t, 300).unwrap()
}

fn delivery(keys: &[&str], body: &str, destination: Destination, at_ms: u64) -> NewDelivery {
    NewDelivery {
        verified: verified(),
        destination,
        meta: RecordMeta {
            received_at_ms: at_ms,
            secret_id: String::new(),
            headers: vec![("x-kirim-delivery-id".into(), "wbd_1".into())],
            keys: keys.iter().map(|k| key(k)).collect(),
            shape: None,
            source: None,
            event_type: Some("contact.created".into()),
            event_id: None,
            phone_number_ids: vec![],
            quarantine_reason: None,
        },
        body: bytes::Bytes::copy_from_slice(body.as_bytes()),
        sinks: vec!["stdout".into()],
    }
}

fn event(keys: &[&str], body: &str) -> NewDelivery {
    delivery(keys, body, Destination::Events, store_now_ms())
}

/// One whole sweep now: dedupe keys older than `retention`, digests older than
/// `keep_signatures`, delivered events at once.
async fn sweep_now(
    store: &Store,
    retention: Duration,
    keep_signatures: Duration,
) -> Result<Swept, StoreError> {
    store
        .sweep(
            SystemTime::now(),
            retention,
            keep_signatures,
            Duration::ZERO,
        )
        .await
}

fn store_now_ms() -> u64 {
    millis(SystemTime::now())
}

fn open(dir: &std::path::Path) -> Store {
    Store::open(dir, vec!["stdout".into()]).unwrap()
}

#[tokio::test]
async fn admits_new_and_refuses_duplicates_across_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    assert_eq!(
        store
            .admit(event(&["kirim:evt_1"], "{\"a\":1}"))
            .await
            .unwrap(),
        Admission::New { seq: 1 }
    );
    assert_eq!(
        store
            .admit(event(&["kirim:evt_1"], "{\"a\":2}"))
            .await
            .unwrap(),
        Admission::Duplicate
    );
    // A delivery with one known and one new key is new.
    assert_eq!(
        store
            .admit(event(&["kirim:evt_1", "kirim:evt_2"], "{}"))
            .await
            .unwrap(),
        Admission::New { seq: 2 }
    );
    store.close().await.unwrap();
    drop(store);

    let store = open(dir.path());
    assert_eq!(
        store.admit(event(&["kirim:evt_2"], "{}")).await.unwrap(),
        Admission::Duplicate
    );
    assert_eq!(
        store.admit(event(&["kirim:evt_3"], "{}")).await.unwrap(),
        Admission::New { seq: 3 }
    );
    let events = store.read_after(0, 10).await.unwrap();
    assert_eq!(events.len(), 3);
    assert_eq!(events[0].body, b"{\"a\":1}");
    assert_eq!(events[0].meta.secret_id, "sec_T");
    store.close().await.unwrap();
}

#[tokio::test]
async fn concurrent_admissions_of_one_key_store_it_once() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let mut tasks = Vec::new();
    for i in 0..64 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            store
                .admit(event(&["kirim:same"], &format!("{{\"i\":{i}}}")))
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
    assert_eq!(store.read_after(0, 100).await.unwrap().len(), 1);
    store.close().await.unwrap();
}

#[tokio::test]
async fn quarantine_is_kept_apart_from_events_and_deduped() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let q = || delivery(&["sha256:ab"], "not json", Destination::Quarantine, 1);
    assert!(matches!(
        store.admit(q()).await.unwrap(),
        Admission::New { .. }
    ));
    assert_eq!(store.admit(q()).await.unwrap(), Admission::Duplicate);
    assert!(store.read_after(0, 10).await.unwrap().is_empty());
    let quarantined = store.read_quarantine(0, 10).await.unwrap();
    assert_eq!(quarantined.len(), 1);
    assert_eq!(quarantined[0].body, b"not json");
    store.close().await.unwrap();
}

#[tokio::test]
async fn delivered_events_are_swept_and_seqs_are_never_reused() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    for i in 0..3 {
        store
            .admit(event(&[&format!("kirim:evt_{i}")], "{}"))
            .await
            .unwrap();
    }
    assert_eq!(store.queue_len("stdout").await.unwrap(), 3);
    store
        .apply_changes_durably("stdout", (1..=3).map(Change::Delivered).collect())
        .await
        .unwrap();
    assert_eq!(store.queue_len("stdout").await.unwrap(), 0);
    let swept = sweep_now(
        &store,
        Duration::from_secs(86_400),
        Duration::from_secs(86_400),
    )
    .await
    .unwrap();
    assert_eq!(swept, Swept { keys: 0, events: 3 });
    assert!(store.read_after(0, 10).await.unwrap().is_empty());
    store.close().await.unwrap();
    drop(store);

    let store = open(dir.path());
    assert_eq!(
        store.admit(event(&["kirim:evt_new"], "{}")).await.unwrap(),
        Admission::New { seq: 4 }
    );
    store.close().await.unwrap();
}

#[tokio::test]
async fn sweep_keeps_events_a_sink_still_owes_and_forgets_old_keys() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), vec!["a".into(), "b".into()]).unwrap();
    let day = 86_400_000;
    let now = store_now_ms();
    let both = |keys: &[&str], at| NewDelivery {
        sinks: vec!["a".into(), "b".into()],
        ..delivery(keys, "{}", Destination::Events, at)
    };
    store
        .admit(both(&["kirim:old"], now - 40 * day))
        .await
        .unwrap();
    store.admit(both(&["kirim:young"], now)).await.unwrap();
    store
        .apply_changes_durably("a", vec![Change::Delivered(1), Change::Delivered(2)])
        .await
        .unwrap();
    let swept = sweep_now(
        &store,
        Duration::from_millis(35 * day),
        Duration::from_millis(35 * day),
    )
    .await
    .unwrap();
    // Sink b still owes both: they stay; the 40-day-old key goes.
    assert_eq!(swept, Swept { keys: 1, events: 0 });
    assert_eq!(store.read_after(0, 10).await.unwrap().len(), 2);
    assert!(matches!(
        store.admit(event(&["kirim:old"], "{}")).await.unwrap(),
        Admission::New { .. }
    ));
    assert_eq!(
        store.admit(event(&["kirim:young"], "{}")).await.unwrap(),
        Admission::Duplicate
    );
    store
        .apply_changes_durably("b", vec![Change::Delivered(1)])
        .await
        .unwrap();
    let swept = sweep_now(
        &store,
        Duration::from_millis(35 * day),
        Duration::from_millis(35 * day),
    )
    .await
    .unwrap();
    assert_eq!(swept.events, 1);
    store.close().await.unwrap();
}

#[tokio::test]
async fn events_are_queued_only_for_the_listed_sinks() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), vec!["a".into(), "b".into()]).unwrap();
    let only_b = NewDelivery {
        sinks: vec!["b".into()],
        ..event(&["kirim:1"], "{}")
    };
    let none = NewDelivery {
        sinks: vec![],
        ..event(&["kirim:2"], "{}")
    };
    store.admit(only_b).await.unwrap();
    store.admit(none).await.unwrap();
    assert!(store.queue("a", 0, 10).await.unwrap().is_empty());
    let b = store.queue("b", 0, 10).await.unwrap();
    assert_eq!(b.len(), 1);
    assert_eq!(b[0].seq, 1);
    assert_eq!(b[0].state, AttemptState::default());
    // The event no sink wants is removed by the sweep; b's is kept.
    let swept = sweep_now(
        &store,
        Duration::from_secs(86_400),
        Duration::from_secs(86_400),
    )
    .await
    .unwrap();
    assert_eq!(swept.events, 0, "seq 1 is owed to b and blocks the range");
    store
        .apply_changes_durably("b", vec![Change::Delivered(1)])
        .await
        .unwrap();
    let swept = sweep_now(
        &store,
        Duration::from_secs(86_400),
        Duration::from_secs(86_400),
    )
    .await
    .unwrap();
    assert_eq!(swept.events, 2);
    store.close().await.unwrap();
}

#[tokio::test]
async fn retry_state_and_dead_letters_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    store.admit(event(&["kirim:1"], "{\"n\":1}")).await.unwrap();
    store.admit(event(&["kirim:2"], "{\"n\":2}")).await.unwrap();
    let retry = AttemptState {
        attempts: 2,
        first_attempt_ms: 10,
        last_attempt_ms: 20,
        next_attempt_ms: 30,
        last_error: Some(LastError::new(Some(503), "HTTP 503: busy")),
    };
    let dead = AttemptState {
        attempts: 1,
        first_attempt_ms: 11,
        last_attempt_ms: 11,
        next_attempt_ms: 0,
        last_error: Some(LastError::new(Some(400), "HTTP 400: bad")),
    };
    store
        .apply_changes_durably(
            "stdout",
            vec![
                Change::Retry(1, retry.clone()),
                Change::DeadLetter(2, dead.clone()),
            ],
        )
        .await
        .unwrap();
    store.close().await.unwrap();
    drop(store);

    let store = open(dir.path());
    let queue = store.queue("stdout", 0, 10).await.unwrap();
    assert_eq!(
        queue,
        vec![QueueEntry {
            seq: 1,
            state: retry
        }]
    );
    let letters = store.dead_letters("stdout", 0, 10).await.unwrap();
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0].state, dead);
    assert_eq!(letters[0].event.seq, 2);
    assert_eq!(letters[0].event.body, b"{\"n\":2}");
    // The dead letter keeps its own copy: the event itself can go.
    store
        .apply_changes_durably("stdout", vec![Change::Delivered(1)])
        .await
        .unwrap();
    sweep_now(
        &store,
        Duration::from_secs(86_400),
        Duration::from_secs(86_400),
    )
    .await
    .unwrap();
    assert!(store.read_after(0, 10).await.unwrap().is_empty());
    assert_eq!(store.dead_letters("stdout", 0, 10).await.unwrap().len(), 1);
    // A late retry state never resurrects a delivered entry.
    store
        .apply_changes_durably("stdout", vec![Change::Retry(1, AttemptState::default())])
        .await
        .unwrap();
    assert!(store.queue("stdout", 0, 10).await.unwrap().is_empty());
    store.close().await.unwrap();
}

#[tokio::test]
async fn committed_watch_reports_the_last_event_seq() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let mut watch = store.inner.committed.clone();
    assert_eq!(*watch.borrow_and_update(), 0);
    store.admit(event(&["kirim:a"], "{}")).await.unwrap();
    watch.changed().await.unwrap();
    assert_eq!(*watch.borrow_and_update(), 1);
    store.close().await.unwrap();
}

#[tokio::test]
async fn admit_after_close_is_an_error_not_a_hang() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    store.close().await.unwrap();
    assert!(matches!(
        store.admit(event(&["kirim:a"], "{}")).await,
        Err(StoreError::WriterGone)
    ));
}

#[tokio::test]
async fn operator_actions_on_dead_letters_quarantine_and_replay() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let mut requeued = store.inner.requeued.clone();
    for i in 1..=3 {
        store
            .admit(event(&[&format!("kirim:{i}")], &format!("{{\"n\":{i}}}")))
            .await
            .unwrap();
    }
    let dead = AttemptState {
        attempts: 20,
        last_error: Some(LastError::new(Some(500), "HTTP 500")),
        ..AttemptState::default()
    };
    store
        .apply_changes_durably(
            "stdout",
            vec![
                Change::DeadLetter(1, dead.clone()),
                Change::DeadLetter(2, dead.clone()),
                Change::Delivered(3),
            ],
        )
        .await
        .unwrap();
    // Event records of dead letters and delivered events can be swept...
    sweep_now(
        &store,
        Duration::from_secs(86_400),
        Duration::from_secs(86_400),
    )
    .await
    .unwrap();
    assert!(store.read_after(0, 10).await.unwrap().is_empty());
    // ...and a retried dead letter comes back with its event, as never attempted.
    assert_eq!(
        store
            .retry_dead_letters("stdout", Some(vec![2]))
            .await
            .unwrap(),
        1
    );
    assert!(requeued.has_changed().unwrap());
    requeued.borrow_and_update();
    let queue = store.queue("stdout", 0, 10).await.unwrap();
    assert_eq!(
        queue,
        vec![QueueEntry {
            seq: 2,
            state: AttemptState::default()
        }]
    );
    let events = store.events(vec![2]).await.unwrap();
    assert_eq!(events[0].as_ref().unwrap().body, b"{\"n\":2}");
    assert_eq!(store.drop_dead_letters("stdout", None).await.unwrap(), 1);
    assert!(store
        .dead_letters("stdout", 0, 10)
        .await
        .unwrap()
        .is_empty());

    // Quarantine drop.
    let q = delivery(&["sha256:q"], "junk", Destination::Quarantine, 1);
    store.admit(q).await.unwrap();
    assert_eq!(store.drop_quarantine(None).await.unwrap(), 1);
    assert!(store.read_quarantine(0, 10).await.unwrap().is_empty());

    // Replay queues kept events again for one sink.
    store
        .apply_changes_durably("stdout", vec![Change::Delivered(2)])
        .await
        .unwrap();
    store.admit(event(&["kirim:4"], "{}")).await.unwrap();
    store
        .apply_changes_durably("stdout", vec![Change::Delivered(5)])
        .await
        .unwrap();
    // Kept for a day: the sweep leaves delivered events alone.
    let swept = store
        .sweep(
            SystemTime::now(),
            Duration::from_secs(86_400),
            Duration::from_secs(86_400),
            Duration::from_secs(86_400),
        )
        .await
        .unwrap();
    assert_eq!(swept.events, 0);
    let since = SystemTime::now() - Duration::from_secs(60);
    // The sink's filter is honoured: nothing matches this one.
    let none = |meta: &RecordMeta| meta.event_type.as_deref() == Some("no.such.type");
    assert_eq!(store.replay("stdout", since, none).await.unwrap(), 0);
    assert_eq!(store.replay("stdout", since, |_| true).await.unwrap(), 2);
    assert!(requeued.has_changed().unwrap());
    assert_eq!(store.queue_len("stdout").await.unwrap(), 2);
    store.close().await.unwrap();
}

#[tokio::test]
async fn same_signed_content_is_a_duplicate_whatever_its_keys() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let signed_once = |keys: &[&str]| NewDelivery {
        verified: verified_at(7_000),
        ..event(keys, "{\"id\":\"m1\"}")
    };
    assert_eq!(
        store.admit(signed_once(&["event:A"])).await.unwrap(),
        Admission::New { seq: 1 }
    );
    // The same signed request with another unsigned header (so other keys): a duplicate.
    assert_eq!(
        store.admit(signed_once(&["event:B"])).await.unwrap(),
        Admission::Duplicate
    );
    // Also within one group commit, and after a restart.
    let (a, b) = tokio::join!(
        store.admit(signed_once(&["event:C"])),
        store.admit(signed_once(&["event:D"]))
    );
    assert_eq!(
        (a.unwrap(), b.unwrap()),
        (Admission::Duplicate, Admission::Duplicate)
    );
    store.close().await.unwrap();
    drop(store);
    let store = open(dir.path());
    assert_eq!(
        store.admit(signed_once(&["event:E"])).await.unwrap(),
        Admission::Duplicate
    );
    // A kirim.dev retry (signed anew) that is a duplicate by its key, replayed with another
    // header (so another key): still a duplicate.
    let retry = |keys: &[&str]| NewDelivery {
        verified: verified_at(7_500),
        ..event(keys, "{\"id\":\"m1\"}")
    };
    assert_eq!(
        store.admit(retry(&["event:A"])).await.unwrap(),
        Admission::Duplicate
    );
    assert_eq!(
        store.admit(retry(&["event:Z"])).await.unwrap(),
        Admission::Duplicate
    );
    // Signed again (a kirim.dev retry has a new `t`) with a new key: new.
    let resigned = NewDelivery {
        verified: verified_at(7_001),
        ..event(&["event:F"], "{\"id\":\"m1\"}")
    };
    assert_eq!(
        store.admit(resigned).await.unwrap(),
        Admission::New { seq: 2 }
    );
    // Once the window has passed, the digest is swept (the dedupe keys stay).
    let swept = store
        .sweep(
            SystemTime::now() + Duration::from_secs(7200),
            Duration::from_secs(86_400),
            Duration::from_secs(3600),
            Duration::ZERO,
        )
        .await
        .unwrap();
    assert_eq!(swept.keys, 0);
    // Its digest is gone: with a new key the same signed content is new again (the key
    // `event:A` alone would still make it a duplicate).
    let forgotten = NewDelivery {
        verified: verified_at(7_000),
        ..event(&["event:NEW"], "{\"id\":\"m1\"}")
    };
    assert_eq!(
        store.admit(forgotten).await.unwrap(),
        Admission::New { seq: 3 }
    );
}

#[tokio::test]
async fn counts_are_exact_after_drops_sweeps_and_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), vec!["a".into(), "b".into()]).unwrap();
    let both = |key: &str| NewDelivery {
        sinks: vec!["a".into(), "b".into()],
        ..event(&[key], "{}")
    };
    for i in 1..=4 {
        store.admit(both(&format!("k:{i}"))).await.unwrap();
    }
    for i in 1..=3 {
        store
            .admit(delivery(
                &[&format!("q:{i}")],
                "x",
                Destination::Quarantine,
                store_now_ms(),
            ))
            .await
            .unwrap();
    }
    let counts = store.counts();
    assert_eq!((counts.events, counts.quarantine), (4, 3));
    assert_eq!((counts.queued("a"), counts.queued("b")), (4, 4));

    // a takes 1 and 2 (and 1 again: settled twice counts once); b dead-letters 3 twice.
    let state = AttemptState {
        attempts: 1,
        ..AttemptState::default()
    };
    store
        .apply_changes(
            "a",
            vec![
                Change::Delivered(1),
                Change::Delivered(2),
                Change::Delivered(1),
            ],
        )
        .await
        .unwrap();
    store
        .apply_changes_durably(
            "b",
            vec![
                Change::DeadLetter(3, state.clone()),
                Change::DeadLetter(3, state),
            ],
        )
        .await
        .unwrap();
    assert_eq!(store.drop_quarantine(None).await.unwrap(), 3);
    let counts = store.counts();
    assert_eq!((counts.queued("a"), counts.queued("b")), (2, 3));
    assert_eq!((counts.dead_letters("a"), counts.dead_letters("b")), (0, 1));
    assert_eq!(counts.quarantine, 0);
    assert_eq!(store.read_quarantine(0, 100).await.unwrap().len(), 0);

    // b takes everything; a takes 3 and 4: every event can go.
    store
        .apply_changes(
            "b",
            vec![
                Change::Delivered(1),
                Change::Delivered(2),
                Change::Delivered(4),
            ],
        )
        .await
        .unwrap();
    store
        .apply_changes_durably("a", vec![Change::Delivered(3), Change::Delivered(4)])
        .await
        .unwrap();
    let swept = sweep_now(
        &store,
        Duration::from_secs(86_400),
        Duration::from_secs(3600),
    )
    .await
    .unwrap();
    assert_eq!(swept.events, 4);
    let counts = store.counts();
    assert_eq!(counts.events, 0);
    assert_eq!(store.read_after(0, 100).await.unwrap().len(), 0);
    assert_eq!((counts.queued("a"), counts.queued("b")), (0, 0));

    // Retry the dead letter: back in b's queue, its event restored.
    assert_eq!(store.retry_dead_letters("b", None).await.unwrap(), 1);
    let before = store.counts();
    assert_eq!(
        (before.events, before.queued("b"), before.dead_letters("b")),
        (1, 1, 0)
    );
    store.close().await.unwrap();
    drop(store);

    let store = Store::open(dir.path(), vec!["a".into(), "b".into()]).unwrap();
    assert_eq!(store.counts(), before, "the counters survive a restart");
    assert_eq!(store.sink_status("b").await.unwrap().queued, 1);
}

#[tokio::test]
async fn a_store_without_counters_is_counted_once_at_open() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), vec!["a".into()]).unwrap();
    for i in 1..=3 {
        let e = NewDelivery {
            sinks: vec!["a".into()],
            ..event(&[&format!("k:{i}")], "{}")
        };
        store.admit(e).await.unwrap();
    }
    store.close().await.unwrap();
    drop(store);
    // As written by a kirimhook without counters.
    {
        let db = Database::builder(dir.path()).open().unwrap();
        let meta = db.keyspace("meta", KeyspaceCreateOptions::default).unwrap();
        let keys: Vec<Vec<u8>> = meta
            .prefix(b"count:")
            .map(|g| g.key().unwrap().to_vec())
            .collect();
        assert!(!keys.is_empty());
        for key in keys {
            meta.remove(key).unwrap();
        }
        db.persist(fjall::PersistMode::SyncAll).unwrap();
    }
    let store = Store::open(dir.path(), vec!["a".into()]).unwrap();
    let counts = store.counts();
    assert_eq!((counts.events, counts.queued("a")), (3, 3));
}

#[tokio::test]
async fn a_truncated_journal_is_reported_not_silent() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    for i in 0..200 {
        store
            .admit(event(
                &[&format!("k:{i}")],
                "{\"pad\":\"................................\"}",
            ))
            .await
            .unwrap();
    }
    // A kill -9: the writer's files are left as they are (no close).
    drop(store);
    let journal = newest_journal(dir.path()).expect("a journal file");
    // The journal file is preallocated (sparse): cut what was written in half.
    let len = {
        use std::os::unix::fs::MetadataExt as _;
        std::fs::metadata(&journal).unwrap().blocks() * 512
    };
    std::fs::OpenOptions::new()
        .write(true)
        .open(&journal)
        .unwrap()
        .set_len(len / 2)
        .unwrap();

    let store = open(dir.path());
    let loss = store.recovery_loss();
    assert!(loss.dropped_total > 0, "{loss:?}");
    let last = loss.last.clone().unwrap();
    assert!(last.contains("acknowledged deliveries"), "{last}");
    assert!(last.contains(".jnl"), "names the journal: {last}");
    // Seqs are never reused: the next one is past every acknowledged one.
    let Admission::New { seq } = store.admit(event(&["k:new"], "{}")).await.unwrap() else {
        panic!("new");
    };
    assert_eq!(seq, 201);
    store.close().await.unwrap();
    drop(store);
    // The finding stays on record after later clean restarts.
    let store = open(dir.path());
    assert_eq!(store.recovery_loss(), loss);
}

#[tokio::test]
async fn open_errors_say_what_is_wrong() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let Err(locked) = Store::open(dir.path(), vec![]) else {
        panic!("a second open must fail");
    };
    let text = locked.to_string();
    assert!(
        text.contains("another kirimhook process is using the store at"),
        "{text}"
    );
    store.close().await.unwrap();
    drop(store);

    std::fs::remove_file(dir.path().join("version")).unwrap();
    let Err(damaged) = Store::open(dir.path(), vec![]) else {
        panic!("a store without its version file must not open");
    };
    let text = damaged.to_string();
    assert!(text.contains("`version` file is missing"), "{text}");
    assert!(!text.contains("File exists"), "{text}");

    let file = dir.path().join("a-file");
    std::fs::write(&file, b"").unwrap();
    let Err(under_file) = Store::open(&file.join("store"), vec![]) else {
        panic!("a store under a file must not open");
    };
    assert!(under_file
        .to_string()
        .contains("cannot create the store directory"));
}

#[test]
fn a_failed_open_removes_only_what_it_created() {
    let dir = tempfile::tempdir().unwrap();
    let new = dir.path().join("a").join("b");
    assert_eq!(first_missing(&new), Some(dir.path().join("a")));
    assert_eq!(first_missing(dir.path()), None);
}

#[tokio::test]
async fn a_vanished_store_directory_fails_admissions_and_stops_the_writer() {
    let parent = tempfile::tempdir().unwrap();
    let path = parent.path().join("store");
    let store = open(&path);
    store.admit(event(&["k:1"], "{}")).await.unwrap();
    std::fs::remove_dir_all(&path).unwrap();
    let refused = store.admit(event(&["k:2"], "{}")).await;
    assert!(
        matches!(refused, Err(StoreError::Unavailable(_))),
        "{refused:?}"
    );
    let failure = store.failure().expect("the reason is recorded");
    assert!(failure.contains("is gone"), "{failure}");
    assert!(matches!(
        store.admit(event(&["k:3"], "{}")).await,
        Err(StoreError::WriterGone)
    ));
}

#[tokio::test]
async fn low_disk_refuses_admissions_but_not_outcomes_and_recovers_in_place() {
    let dir = tempfile::tempdir().unwrap();
    let free = Arc::new(std::sync::Mutex::new(1_000_000u64));
    let probe: guard::FreeSpaceProbe = {
        let free = free.clone();
        Arc::new(move |_: &Path| Ok(*free.lock().unwrap()))
    };
    let options = StoreOptions {
        min_free_bytes: 500_000,
        free_space: probe,
        free_space_sample_every: Duration::ZERO,
        ..StoreOptions::default()
    };
    let store = Store::open_with(dir.path(), vec!["stdout".into()], options).unwrap();
    assert_eq!(
        store.admit(event(&["k:1"], "{}")).await.unwrap(),
        Admission::New { seq: 1 }
    );
    assert_eq!(store.low_disk(), None);

    *free.lock().unwrap() = 100_000;
    let refused = store.admit(event(&["k:2"], "{}")).await;
    assert!(
        matches!(&refused, Err(StoreError::LowDisk(reason)) if reason.contains("min_free_bytes")),
        "{refused:?}"
    );
    assert_eq!(store.low_disk(), Some(100_000));
    // Outcomes still land (they free space).
    store
        .apply_changes_durably("stdout", vec![Change::Delivered(1)])
        .await
        .unwrap();
    assert_eq!(store.counts().queued("stdout"), 0);

    *free.lock().unwrap() = 600_000;
    assert_eq!(
        store.admit(event(&["k:2"], "{}")).await.unwrap(),
        Admission::New { seq: 2 }
    );
    assert_eq!(store.low_disk(), None);
}

#[tokio::test]
async fn entries_put_back_below_the_low_water_marks_are_kept_and_found() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), vec!["a".into()]).unwrap();
    let for_a = |key: &str| NewDelivery {
        sinks: vec!["a".into()],
        ..event(&[key], "{}")
    };
    for i in 1..=4 {
        store.admit(for_a(&format!("k:{i}"))).await.unwrap();
    }
    let state = AttemptState {
        attempts: 3,
        ..AttemptState::default()
    };
    store
        .apply_changes_durably(
            "a",
            vec![
                Change::DeadLetter(1, state),
                Change::Delivered(2),
                Change::Delivered(3),
                Change::Delivered(4),
            ],
        )
        .await
        .unwrap();
    let sweep = |store: Store| async move {
        sweep_now(
            &store,
            Duration::from_secs(86_400),
            Duration::from_secs(3600),
        )
        .await
        .unwrap()
    };
    // Every queue is empty: the marks move past everything, and every event goes.
    assert_eq!(sweep(store.clone()).await.events, 4);
    assert_eq!(
        store.sink_status("a").await.unwrap().oldest_received_ms,
        None
    );

    // The dead letter goes back below every mark: its event and queue entry must be kept
    // by the next sweep and found by status and the queue reads.
    assert_eq!(store.retry_dead_letters("a", None).await.unwrap(), 1);
    assert_eq!(sweep(store.clone()).await.events, 0);
    let status = store.sink_status("a").await.unwrap();
    assert_eq!(status.queued, 1);
    assert!(status.oldest_received_ms.is_some(), "{status:?}");
    let queued = store.queue_with_events("a", 0, u64::MAX, 10).await.unwrap();
    assert_eq!(queued.len(), 1);
    assert_eq!(queued[0].0.seq, 1);
    assert!(queued[0].1.is_some(), "the event is still there");

    // A later event, then both delivered: the sweep removes both.
    store.admit(for_a("k:5")).await.unwrap();
    store
        .apply_changes_durably("a", vec![Change::Delivered(1), Change::Delivered(5)])
        .await
        .unwrap();
    assert_eq!(sweep(store.clone()).await.events, 2);
    assert_eq!(store.counts().events, 0);
}

#[tokio::test]
async fn a_big_sweep_goes_in_bounded_steps_and_resumes_where_it_stopped() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let day = 86_400_000;
    let old = store_now_ms() - 40 * day;
    let mut admits = tokio::task::JoinSet::new();
    for i in 0..1500u64 {
        let mut e = delivery(&[&format!("k:{i}")], "{}", Destination::Events, old + i);
        e.sinks = vec![];
        let store = store.clone();
        admits.spawn(async move { store.admit(e).await.unwrap() });
    }
    while admits.join_next().await.is_some() {}
    let swept = sweep_now(
        &store,
        Duration::from_millis(35 * day),
        Duration::from_secs(3600),
    )
    .await
    .unwrap();
    assert_eq!((swept.keys, swept.events), (1500, 1500));
    // Nothing is left to do, and the keys are forgotten: the same key is new again.
    let again = sweep_now(
        &store,
        Duration::from_millis(35 * day),
        Duration::from_secs(3600),
    )
    .await
    .unwrap();
    assert_eq!(again, Swept::default());
    assert!(matches!(
        store.admit(event(&["k:7"], "{}")).await.unwrap(),
        Admission::New { .. }
    ));
}

/// The conformance suite on the embedded engine, each case in its own temp folder.
mod conformance {
    use crate::store::conformance::{conformance_tests, Harness};

    async fn open(_case: &'static str) -> Option<Harness> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().to_owned();
        let store = crate::store::Store::open(&path, vec!["app".into()]).unwrap();
        Some(Harness {
            store,
            reopen: Box::new(move || {
                let path = path.clone();
                Box::pin(
                    async move { crate::store::Store::open(&path, vec!["app".into()]).unwrap() },
                )
            }),
            _keep: Box::new(dir),
        })
    }

    conformance_tests!(open);
}

/// `memtable_mib` holds for a store created with larger memtables: the writer seals the
/// events' memtable once it passes the configured size, whatever size the keyspace was made
/// with (here the engine's 64 MiB default).
#[tokio::test]
async fn memtables_stay_within_the_configured_size_of_an_older_store() {
    use fjall::AbstractTree as _;
    let dir = tempfile::tempdir().unwrap();
    let big = StoreOptions {
        memtable_bytes: 64 * 1024 * 1024,
        ..StoreOptions::default()
    };
    let store = Store::open_with(dir.path(), vec!["stdout".into()], big).unwrap();
    store.admit(event(&["k:first"], "{}")).await.unwrap();
    store.close().await.unwrap();
    drop(store);

    let limit = 1024 * 1024;
    let small = StoreOptions {
        memtable_bytes: limit,
        ..StoreOptions::default()
    };
    let store = Store::open_with(dir.path(), vec!["stdout".into()], small).unwrap();
    let body = format!("{{\"pad\":\"{}\"}}", "x".repeat(4000));
    let mut largest = 0;
    for i in 0..1000 {
        let key = format!("k:{i}");
        store.admit(event(&[key.as_str()], &body)).await.unwrap();
        largest = largest.max(store.inner.events.tree.active_memtable().size());
    }
    // 1000 events of 4 KiB: 4 MiB went through a memtable allowed 1 MiB (plus the one batch
    // written before the writer looks).
    assert!(
        largest < limit + 64 * 1024,
        "the events' memtable grew to {largest} bytes, over its {limit}-byte limit"
    );
    assert_eq!(store.counts().events, 1001);
}

/// Without `keep_delivered`, an event goes with its last queue entry, not at the next sweep;
/// a dead letter sent again brings its event back, and it goes again once delivered. The
/// counters follow, and a restart finds the same.
#[tokio::test]
async fn without_keep_delivered_an_event_goes_with_its_last_queue_entry() {
    let dir = tempfile::tempdir().unwrap();
    let options = || StoreOptions {
        keep_delivered: false,
        ..StoreOptions::default()
    };
    let sinks = || vec!["a".to_owned(), "b".to_owned()];
    let store = Store::open_with(dir.path(), sinks(), options()).unwrap();
    let both = NewDelivery {
        sinks: sinks(),
        ..event(&["kirim:1"], "{\"n\":1}")
    };
    let only_b = NewDelivery {
        sinks: vec!["b".into()],
        ..event(&["kirim:2"], "{\"n\":2}")
    };
    store.admit(both).await.unwrap();
    store.admit(only_b).await.unwrap();
    let present = |events: Vec<Option<StoredEvent>>| -> Vec<bool> {
        events.iter().map(Option::is_some).collect()
    };

    store
        .apply_changes_durably("a", vec![Change::Delivered(1)])
        .await
        .unwrap();
    assert_eq!(
        present(store.events(vec![1, 2]).await.unwrap()),
        [true, true]
    );
    assert_eq!(store.counts().events, 2, "b still owes seq 1");

    store
        .apply_changes_durably("b", vec![Change::Delivered(1), Change::Delivered(2)])
        .await
        .unwrap();
    assert_eq!(
        present(store.events(vec![1, 2]).await.unwrap()),
        [false, false]
    );
    assert_eq!(store.counts().events, 0);
    // Settled twice: nothing more is counted.
    store
        .apply_changes_durably("b", vec![Change::Delivered(2)])
        .await
        .unwrap();
    assert_eq!(store.counts().events, 0);

    // A dead letter keeps its copy; sent again, the event is back until delivered.
    let third = NewDelivery {
        sinks: vec!["a".into()],
        ..event(&["kirim:3"], "{\"n\":3}")
    };
    store.admit(third).await.unwrap();
    let state = AttemptState {
        attempts: 5,
        ..AttemptState::default()
    };
    store
        .apply_changes_durably("a", vec![Change::DeadLetter(3, state)])
        .await
        .unwrap();
    assert_eq!(store.retry_dead_letters("a", None).await.unwrap(), 1);
    let back = store.events(vec![3]).await.unwrap();
    assert_eq!(
        back[0].as_ref().map(|e| e.body.clone()),
        Some(b"{\"n\":3}".to_vec())
    );
    store
        .apply_changes_durably("a", vec![Change::Delivered(3)])
        .await
        .unwrap();
    assert_eq!(present(store.events(vec![3]).await.unwrap()), [false]);
    assert_eq!(store.counts().events, 0);
    store.close().await.unwrap();
    drop(store);

    let store = Store::open_with(dir.path(), sinks(), options()).unwrap();
    assert_eq!(
        present(store.events(vec![1, 2, 3]).await.unwrap()),
        [false, false, false]
    );
    assert_eq!(store.counts().events, 0);
    assert_eq!(store.counts().dead_letters("a"), 0);
}
