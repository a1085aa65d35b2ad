//! What an authentic delivery gets: the fixtures accepted and streamed exactly once with the
//! right fields and their exact bytes, retries answered "duplicate" and not streamed again,
//! statuses of one message kept apart, unrecognised bodies (also bodies that are not UTF-8)
//! quarantined rather than refused, and a captured delivery sent again with other unsigned
//! headers answered "duplicate".

use std::time::{Duration, SystemTime};

use serde_json::json;

use crate::daemon::{temp_dir, Daemon, Event, Settings};
use crate::fixtures::{self, kirim_delivery, new_event_id, sentinel, Delivery, Fixture};

/// Asserts that `events` (the whole stream, ending with `sentinel_id`) holds exactly one line
/// per sent fixture with every field right, and nothing else.
fn assert_stream(
    events: &[Event],
    sent: &[(Fixture, Delivery)],
    sentinel_id: &str,
    started: SystemTime,
) {
    let ids: Vec<&str> = events.iter().map(|e| e.event_id().unwrap_or("-")).collect();
    assert_eq!(
        events.len(),
        sent.len() + 1,
        "stdout should carry one line per fixture plus the sentinel; event ids seen: {ids:?}"
    );
    assert_eq!(events.last().and_then(Event::event_id), Some(sentinel_id));
    for (fixture, delivery) in sent {
        let name = &fixture.name;
        let lines: Vec<&Event> = events
            .iter()
            .filter(|e| e.event_id() == Some(fixture.event_id()))
            .collect();
        assert_eq!(
            lines.len(),
            1,
            "{name}: expected exactly one stdout line with event_id {}; event ids seen: {ids:?}",
            fixture.event_id()
        );
        let event = lines[0];
        let line = &event.raw;
        assert_eq!(event.keys(), fixture.dedupe_keys, "{name}: keys in {line}");
        assert_eq!(
            event.str("type"),
            Some(fixture.header("X-Kirim-Event")),
            "{name}: type in {line}"
        );
        assert_eq!(
            event.str("source"),
            Some(fixture.source()),
            "{name}: source in {line}"
        );
        assert_eq!(
            event.str("delivery_id"),
            delivery.header("X-Kirim-Delivery-Id"),
            "{name}: delivery_id in {line}"
        );
        let attempt: u64 = fixture.header("X-Kirim-Attempt").parse().expect("attempt");
        assert_eq!(
            event.json["attempt"],
            json!(attempt),
            "{name}: attempt in {line}"
        );
        assert_eq!(
            event.str("secret_id"),
            Some("sec_A"),
            "{name}: secret_id in {line}"
        );
        let received_at = event
            .str("received_at")
            .unwrap_or_else(|| panic!("{name}: no received_at in {line}"));
        let received_at = humantime::parse_rfc3339(received_at)
            .unwrap_or_else(|e| panic!("{name}: received_at is not RFC 3339 ({e}) in {line}"));
        assert!(
            received_at + Duration::from_secs(2) >= started
                && received_at <= SystemTime::now() + Duration::from_secs(2),
            "{name}: received_at is not the time of receipt in {line}"
        );
        if fixture.source() == "meta" {
            assert_eq!(
                event.str("phone_number_id"),
                Some(fixtures::PHONE_NUMBER_ID),
                "{name}: phone_number_id in {line}"
            );
        } else {
            assert!(
                event.json.get("phone_number_id").is_none(),
                "{name}: a Kirim event has no phone_number_id, got {line}"
            );
        }
        assert_eq!(
            String::from_utf8_lossy(event.body_bytes()),
            String::from_utf8_lossy(&fixture.body),
            "{name}: the body on stdout must be the signed bytes exactly"
        );
        assert_eq!(event.body_bytes(), &fixture.body[..], "{name}: body bytes");
    }
}

/// Sends every delivery (expecting "accepted"), then a sentinel, and checks the whole stream.
async fn send_all_and_check(daemon: &Daemon, sent: &[(Fixture, Delivery)], started: SystemTime) {
    let mut client = daemon.client();
    for (fixture, delivery) in sent {
        client.send(delivery).await.expect(
            200,
            json!({"status": "accepted"}),
            &format!("{} ({})", fixture.name, fixture.header("X-Kirim-Event")),
        );
    }
    let sentinel = sentinel();
    client
        .send(&sentinel)
        .await
        .expect(200, json!({"status": "accepted"}), "sentinel");
    daemon.wait_for_event(sentinel.event_id()).await;
    assert_stream(&daemon.events(), sent, sentinel.event_id(), started);
}

#[tokio::test]
async fn every_fixture_is_accepted_and_streamed_once_with_its_exact_bytes() {
    let started = SystemTime::now();
    let dir = temp_dir();
    let daemon = Daemon::start(dir.path(), &Settings::default()).await;
    let sent: Vec<(Fixture, Delivery)> = fixtures::all()
        .into_iter()
        .map(|f| {
            let delivery = f.signed_now();
            (f, delivery)
        })
        .collect();
    assert_eq!(sent.len(), 9, "fixtures F1-F9");
    send_all_and_check(&daemon, &sent, started).await;
}

#[tokio::test]
async fn original_fixture_signatures_verify_over_the_wire_with_tolerance_off() {
    let started = SystemTime::now();
    let dir = temp_dir();
    let settings = Settings {
        tolerance_secs: 0,
        ..Settings::default()
    };
    let daemon = Daemon::start(dir.path(), &settings).await;
    let sent: Vec<(Fixture, Delivery)> = fixtures::all()
        .into_iter()
        .map(|f| {
            let delivery = f.original();
            (f, delivery)
        })
        .collect();
    send_all_and_check(&daemon, &sent, started).await;
}

#[tokio::test]
async fn a_retry_is_answered_duplicate_and_not_streamed_again() {
    let dir = temp_dir();
    let daemon = Daemon::start(dir.path(), &Settings::default()).await;
    let mut client = daemon.client();
    let f5 = fixtures::get("f5");
    let first = f5.signed_now();
    client
        .send(&first)
        .await
        .expect(200, json!({"status": "accepted"}), "F5, attempt 1");
    daemon.wait_for_event(f5.event_id()).await;

    let retry = first.clone().retry(2, &["A"]);
    assert_ne!(
        retry.header("X-Kirim-Delivery-Id"),
        first.header("X-Kirim-Delivery-Id")
    );
    client
        .send(&retry)
        .await
        .expect(200, json!({"status": "duplicate"}), "F5 retried, attempt 2");
    // A retry signed by the other secret, through the alternative header, is the same event.
    let other = first
        .clone()
        .without_header("X-Kirim-Signature")
        .with_header("X-Kirim-Signature-256", "")
        .retry(3, &["B"]);
    client.send(&other).await.expect(
        200,
        json!({"status": "duplicate"}),
        "F5 retried, attempt 3, secret B",
    );

    let sentinel = sentinel();
    client
        .send(&sentinel)
        .await
        .expect(200, json!({"status": "accepted"}), "sentinel");
    daemon.wait_for_event(sentinel.event_id()).await;
    let events = daemon.events();
    let f5_lines: Vec<&Event> = events
        .iter()
        .filter(|e| e.event_id() == Some(f5.event_id()))
        .collect();
    assert_eq!(
        f5_lines.len(),
        1,
        "F5 must be streamed once although it was delivered three times; stdout:\n{}",
        daemon.stdout.lines().join("\n")
    );
    assert_eq!(
        f5_lines[0].str("delivery_id"),
        first.header("X-Kirim-Delivery-Id")
    );
    assert_eq!(f5_lines[0].json["attempt"], json!(1));
    assert_eq!(events.len(), 2, "stdout: F5 and the sentinel, nothing else");
}

#[tokio::test]
async fn sent_and_delivered_statuses_of_one_message_are_both_streamed() {
    let dir = temp_dir();
    let daemon = Daemon::start(dir.path(), &Settings::default()).await;
    let mut client = daemon.client();
    let f3 = fixtures::get("f3");
    let delivered = f3.signed_now();
    let body = String::from_utf8(f3.body.clone()).expect("F3 is UTF-8");
    assert_eq!(body.matches("\"status\":\"delivered\"").count(), 1);
    let sent_body = body.replace("\"status\":\"delivered\"", "\"status\":\"sent\"");
    // Statuses arrive in any order: "delivered" first, then "sent".
    let sent = f3.original().with_body(sent_body.clone()).retry(1, &["A"]);

    client
        .send(&delivered)
        .await
        .expect(200, json!({"status": "accepted"}), "F3 (delivered)");
    client
        .send(&sent)
        .await
        .expect(200, json!({"status": "accepted"}), "F3 with status sent");
    client.send(&sent.clone().retry(2, &["A"])).await.expect(
        200,
        json!({"status": "duplicate"}),
        "F3 sent, retried",
    );

    let sentinel = sentinel();
    client
        .send(&sentinel)
        .await
        .expect(200, json!({"status": "accepted"}), "sentinel");
    daemon.wait_for_event(sentinel.event_id()).await;

    let wamid = f3.event_id();
    let events = daemon.events();
    let statuses: Vec<&Event> = events
        .iter()
        .filter(|e| e.event_id() == Some(wamid))
        .collect();
    let keys: Vec<Vec<String>> = statuses.iter().map(|e| e.keys()).collect();
    assert_eq!(
        keys,
        vec![
            vec![format!("meta:status:{wamid}:delivered")],
            vec![format!("meta:status:{wamid}:sent")],
        ],
        "both statuses of {wamid} must be streamed once each, in arrival order; stdout:\n{}",
        daemon.stdout.lines().join("\n")
    );
    assert_eq!(statuses[1].body_bytes(), sent_body.as_bytes());
    assert_eq!(events.len(), 3, "stdout: two statuses and the sentinel");
}

#[tokio::test]
async fn unrecognised_bodies_are_quarantined_and_unknown_types_streamed() {
    let dir = temp_dir();
    let daemon = Daemon::start(dir.path(), &Settings::default()).await;
    let mut client = daemon.client();

    let not_json = kirim_delivery(
        &new_event_id(),
        "contact.created",
        b"this is not JSON, but it is signed".to_vec(),
    );
    client.send(&not_json).await.expect(
        200,
        json!({"status": "quarantined"}),
        "authentic non-JSON body",
    );
    client
        .send(&not_json.clone().retry(2, &["A"]))
        .await
        .expect(
            200,
            json!({"status": "duplicate"}),
            "the same non-JSON body again",
        );

    let unknown_shape = kirim_delivery(
        &new_event_id(),
        "contact.created",
        br#"{"hello":"world"}"#.to_vec(),
    );
    client.send(&unknown_shape).await.expect(
        200,
        json!({"status": "quarantined"}),
        "authentic JSON body of unknown shape, X-Kirim-Source: kirim",
    );
    let no_hints = fixtures::Delivery {
        headers: vec![("Content-Type".into(), "application/json".into())],
        body: br#"{"hello":"there"}"#.to_vec(),
    }
    .signed(&["A"], fixtures::now());
    client.send(&no_hints).await.expect(
        200,
        json!({"status": "quarantined"}),
        "authentic JSON body of unknown shape, no X-Kirim-* headers but the signature",
    );

    let id = new_event_id();
    let body = format!(
        r#"{{"id":"{id}","type":"broadcast.started","created_at":"2026-06-10T05:00:00.000Z","data":{{"broadcast":{{"id":"brd_01KTQXR82PJ05YY62FEXEXHSK4"}}}}}}"#
    );
    let broadcast = kirim_delivery(&id, "broadcast.started", body.clone().into_bytes())
        .with_header("X-Kirim-Source", "kirimdev")
        .signed(&["A"], fixtures::now());
    client.send(&broadcast).await.expect(
        200,
        json!({"status": "accepted"}),
        "Kirim envelope of unknown type broadcast.started from kirimdev",
    );

    let event = daemon.wait_for_event(&id).await;
    assert_eq!(
        event.str("type"),
        Some("broadcast.started"),
        "{}",
        event.raw
    );
    assert_eq!(event.str("source"), Some("kirim"), "{}", event.raw);
    assert_eq!(event.keys(), vec![format!("kirim:{id}")], "{}", event.raw);
    assert_eq!(event.body_bytes(), body.as_bytes());
    assert_eq!(
        daemon.event_ids(),
        vec![id.clone()],
        "quarantined deliveries must not be streamed; stdout:\n{}",
        daemon.stdout.lines().join("\n")
    );
}

#[tokio::test]
async fn either_signature_header_verifying_is_enough_when_both_are_present() {
    let dir = temp_dir();
    let daemon = Daemon::start(dir.path(), &Settings::default()).await;
    let mut client = daemon.client();
    let f6 = fixtures::get("f6");
    let good = f6.signed_now();
    let good_value = good
        .header("X-Kirim-Signature")
        .expect("signed_now sets X-Kirim-Signature")
        .to_owned();
    let wrong = f6.original().signed(&["A"], fixtures::now() - 1000);
    let wrong_value = wrong
        .header("X-Kirim-Signature")
        .expect("signed sets X-Kirim-Signature")
        .to_owned();

    // Preferred header stale, alternative header good: accepted (spec 10, row 1).
    let both = good
        .clone()
        .with_header("X-Kirim-Signature", &wrong_value)
        .with_header("X-Kirim-Signature-256", &good_value);
    client.send(&both).await.expect(
        200,
        json!({"status": "accepted"}),
        "F6 with a stale X-Kirim-Signature and a good -256",
    );
    daemon.wait_for_event(f6.event_id()).await;

    // Both bad: the preferred header's reason is reported.
    let neither = good
        .with_header("X-Kirim-Signature", &wrong_value)
        .with_header("X-Kirim-Signature-256", &wrong_value);
    client.send(&neither).await.expect(
        401,
        json!({"error": "signature_expired"}),
        "F6 with two stale signature headers",
    );
}

/// Waits for the line of `sentinel_id` on stdout, then asserts that it is the only line: no
/// other delivery was streamed.
async fn assert_only_the_sentinel_streamed(daemon: &Daemon, sentinel_id: &str) {
    let seen = daemon
        .stdout
        .wait_for(|lines, _| lines.iter().any(|l| l.contains(sentinel_id)).then_some(()))
        .await;
    let lines = daemon.stdout.lines();
    assert!(
        seen.is_some(),
        "the sentinel did not appear on stdout; stdout:\n{}\nstderr:\n{}",
        lines.join("\n"),
        daemon.stderr_text()
    );
    assert_eq!(
        lines.len(),
        1,
        "stdout should carry the sentinel only; stdout:\n{}",
        lines.join("\n")
    );
}

#[tokio::test]
async fn a_body_that_is_not_utf8_is_quarantined_and_not_streamed() {
    let dir = temp_dir();
    let daemon = Daemon::start(dir.path(), &Settings::default()).await;
    let mut client = daemon.client();

    let id = new_event_id();
    let mut body =
        format!(r#"{{"id":"{id}","type":"contact.created","data":{{"text":""#).into_bytes();
    body.extend_from_slice(b"\xff\xfe\"}}");
    let delivery = kirim_delivery(&id, "contact.created", body);
    client.send(&delivery).await.expect(
        200,
        json!({"status": "quarantined"}),
        "authentic envelope whose body is not UTF-8",
    );

    let sentinel = sentinel();
    client
        .send(&sentinel)
        .await
        .expect(200, json!({"status": "accepted"}), "sentinel");
    assert_only_the_sentinel_streamed(&daemon, sentinel.event_id()).await;
}

#[tokio::test]
async fn unsigned_headers_cannot_make_a_captured_delivery_new() {
    let dir = temp_dir();
    let daemon = Daemon::start(dir.path(), &Settings::default()).await;
    let mut client = daemon.client();

    // An alternate message envelope whose body also fits the envelope when the header says
    // `kirim`: the body's message id keys it, whatever the headers say.
    let message_id = new_event_id().replace("evt_", "msg_");
    let body = format!(
        r#"{{"id":"wbd_1","type":"message.received","event":"message.received","data":{{"message":{{"id":"{message_id}","content":"Halo"}}}}}}"#
    );
    let first_id = new_event_id();
    let captured = kirim_delivery(&first_id, "message.received", body.into_bytes())
        .without_header("X-Kirim-Source");
    client.send(&captured).await.expect(
        200,
        json!({"status": "accepted"}),
        "alternate message envelope, first time",
    );
    let replays = [
        captured
            .clone()
            .with_header("X-Kirim-Event-Id", &new_event_id()),
        captured.clone().with_header("X-Kirim-Source", "kirim"),
        captured
            .clone()
            .without_header("X-Kirim-Event-Id")
            .with_header("X-Kirim-Source", "kirimdev"),
    ];
    for replay in &replays {
        client.send(replay).await.expect(
            200,
            json!({"status": "duplicate"}),
            "the same signed body with other unsigned headers",
        );
    }

    // Without a message id in the body the key comes from X-Kirim-Event-Id; the store's
    // memory of the signed content still makes a replay with another header a duplicate.
    let no_id = br#"{"id":"wbd_2","type":"message.received","event":"message.received","data":{"message":{"content":"Halo lagi"}}}"#;
    let second_id = new_event_id();
    let keyed_by_header = kirim_delivery(&second_id, "message.received", no_id.to_vec())
        .without_header("X-Kirim-Source");
    client.send(&keyed_by_header).await.expect(
        200,
        json!({"status": "accepted"}),
        "alternate message envelope without a message id",
    );
    let other_header = keyed_by_header
        .clone()
        .with_header("X-Kirim-Event-Id", &new_event_id());
    client.send(&other_header).await.expect(
        200,
        json!({"status": "duplicate"}),
        "the same signed body with another X-Kirim-Event-Id",
    );

    let event = daemon.wait_for_event(&first_id).await;
    assert_eq!(event.keys(), vec![format!("message:{message_id}")]);
    let second = daemon.wait_for_event(&second_id).await;
    assert_eq!(second.keys(), vec![format!("event:{second_id}")]);
    let sentinel = sentinel();
    client
        .send(&sentinel)
        .await
        .expect(200, json!({"status": "accepted"}), "sentinel");
    daemon.wait_for_event(sentinel.event_id()).await;
    assert_eq!(
        daemon.event_ids(),
        vec![first_id, second_id, sentinel.event_id().to_owned()],
        "each captured delivery must be streamed once"
    );
}
