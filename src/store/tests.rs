//! Tests of the store against a real fjall database in a temp folder.

use std::time::{Duration, SystemTime};

use super::*;
use crate::signature::{self, SigningSecret};

fn verified() -> Verified {
    let secret = SigningSecret::new("sec_T", "whsec_test");
    let header = secret.sign(1000, b"{}");
    signature::verify(Some(header.as_bytes()), b"{}", &[secret], 1000, 300).unwrap()
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
        .settle_durably("stdout", (1..=3).map(Settlement::Delivered).collect())
        .await
        .unwrap();
    assert_eq!(store.queue_len("stdout").await.unwrap(), 0);
    let swept = store
        .sweep(
            SystemTime::now(),
            Duration::from_secs(86_400),
            Duration::ZERO,
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
        .settle_durably(
            "a",
            vec![Settlement::Delivered(1), Settlement::Delivered(2)],
        )
        .await
        .unwrap();
    let swept = store
        .sweep(
            SystemTime::now(),
            Duration::from_millis(35 * day),
            Duration::ZERO,
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
        .settle_durably("b", vec![Settlement::Delivered(1)])
        .await
        .unwrap();
    let swept = store
        .sweep(
            SystemTime::now(),
            Duration::from_millis(35 * day),
            Duration::ZERO,
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
    let swept = store
        .sweep(
            SystemTime::now(),
            Duration::from_secs(86_400),
            Duration::ZERO,
        )
        .await
        .unwrap();
    assert_eq!(swept.events, 0, "seq 1 is owed to b and blocks the range");
    store
        .settle_durably("b", vec![Settlement::Delivered(1)])
        .await
        .unwrap();
    let swept = store
        .sweep(
            SystemTime::now(),
            Duration::from_secs(86_400),
            Duration::ZERO,
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
        .settle_durably(
            "stdout",
            vec![
                Settlement::Retry(1, retry.clone()),
                Settlement::DeadLetter(2, dead.clone()),
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
        .settle_durably("stdout", vec![Settlement::Delivered(1)])
        .await
        .unwrap();
    store
        .sweep(
            SystemTime::now(),
            Duration::from_secs(86_400),
            Duration::ZERO,
        )
        .await
        .unwrap();
    assert!(store.read_after(0, 10).await.unwrap().is_empty());
    assert_eq!(store.dead_letters("stdout", 0, 10).await.unwrap().len(), 1);
    // A late retry state never resurrects a delivered entry.
    store
        .settle_durably(
            "stdout",
            vec![Settlement::Retry(1, AttemptState::default())],
        )
        .await
        .unwrap();
    assert!(store.queue("stdout", 0, 10).await.unwrap().is_empty());
    store.close().await.unwrap();
}

#[tokio::test]
async fn committed_watch_reports_the_last_event_seq() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let mut watch = store.subscribe();
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
    let mut requeued = store.requeued();
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
        .settle_durably(
            "stdout",
            vec![
                Settlement::DeadLetter(1, dead.clone()),
                Settlement::DeadLetter(2, dead.clone()),
                Settlement::Delivered(3),
            ],
        )
        .await
        .unwrap();
    // Event records of dead letters and delivered events can be swept...
    store
        .sweep(
            SystemTime::now(),
            Duration::from_secs(86_400),
            Duration::ZERO,
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
        .settle_durably("stdout", vec![Settlement::Delivered(2)])
        .await
        .unwrap();
    store.admit(event(&["kirim:4"], "{}")).await.unwrap();
    store
        .settle_durably("stdout", vec![Settlement::Delivered(5)])
        .await
        .unwrap();
    // Kept for a day: the sweep leaves delivered events alone.
    let swept = store
        .sweep(
            SystemTime::now(),
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
