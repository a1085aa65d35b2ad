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
async fn cursor_is_durable_and_seqs_are_never_reused_after_a_sweep() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    for i in 0..3 {
        store
            .admit(event(&[&format!("kirim:evt_{i}")], "{}"))
            .await
            .unwrap();
    }
    store.ack("stdout", 3).await.unwrap();
    let swept = store
        .sweep(SystemTime::now(), Duration::from_secs(86_400))
        .await
        .unwrap();
    assert_eq!(swept, Swept { keys: 0, events: 3 });
    assert!(store.read_after(0, 10).await.unwrap().is_empty());
    store.close().await.unwrap();
    drop(store);

    let store = open(dir.path());
    assert_eq!(store.cursor("stdout").unwrap(), 3);
    assert_eq!(
        store.admit(event(&["kirim:evt_new"], "{}")).await.unwrap(),
        Admission::New { seq: 4 }
    );
    store.close().await.unwrap();
}

#[tokio::test]
async fn sweep_keeps_events_a_sink_has_not_taken_and_forgets_old_keys() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), vec!["a".into(), "b".into()]).unwrap();
    let day = 86_400_000;
    let now = store_now_ms();
    store
        .admit(delivery(
            &["kirim:old"],
            "{}",
            Destination::Events,
            now - 40 * day,
        ))
        .await
        .unwrap();
    store
        .admit(delivery(&["kirim:young"], "{}", Destination::Events, now))
        .await
        .unwrap();
    store.ack("a", 2).await.unwrap();
    let swept = store
        .sweep(SystemTime::now(), Duration::from_millis(35 * day))
        .await
        .unwrap();
    // Sink b has taken nothing: both events stay; the 40-day-old key goes.
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
    store.ack("b", 1).await.unwrap();
    let swept = store
        .sweep(SystemTime::now(), Duration::from_millis(35 * day))
        .await
        .unwrap();
    assert_eq!(swept.events, 1);
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
