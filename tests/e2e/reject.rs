//! What an unauthentic or malformed request gets: 401 with the reason, 413 over the body limit
//! (declared or chunked), 404 and 405 off the one route, never a redirect; and none of it is
//! stored or streamed.

use hyper::Method;
use serde_json::json;

use crate::daemon::{temp_dir, Daemon, Settings};
use crate::fixtures::{self, kirim_delivery, new_event_id, now, sentinel, PATH};
use crate::http::{chunked_request, raw};

#[tokio::test]
async fn unauthentic_deliveries_get_401_and_leave_no_trace() {
    let dir = temp_dir();
    let settings = Settings::default();
    let mut daemon = Daemon::start(dir.path(), &settings).await;
    let mut client = daemon.client();
    let f7 = fixtures::get("f7");
    let invalid = json!({"error": "invalid_signature"});

    client
        .send(&f7.original().signed(&["wrong"], now()))
        .await
        .expect(
            401,
            invalid.clone(),
            "F7 signed with a secret the daemon does not have",
        );
    let body = String::from_utf8(f7.body.clone()).expect("F7 is UTF-8");
    let tampered = body.replacen("Siti Rahmawati", "Siti Rahmawatx", 1);
    assert_ne!(tampered, body);
    client
        .send(&f7.signed_now().with_body(tampered))
        .await
        .expect(
            401,
            invalid.clone(),
            "F7 with its body changed after signing",
        );
    client
        .send(
            &f7.original()
                .with_header("X-Kirim-Signature", "t=abc,v1=00"),
        )
        .await
        .expect(401, invalid.clone(), "F7 with a malformed signature header");
    client
        .send(&f7.original().without_header("X-Kirim-Signature"))
        .await
        .expect(
            401,
            json!({"error": "missing_signature"}),
            "F7 without a signature header",
        );
    let expired = json!({"error": "signature_expired"});
    client
        .send(&f7.original().signed(&["A"], now() - 1000))
        .await
        .expect(401, expired.clone(), "F7 signed 1000 s ago");
    client
        .send(&f7.original().signed(&["A"], now() + 1000))
        .await
        .expect(401, expired, "F7 signed 1000 s in the future");

    // Spec 4.5: every failed verification is logged with its reason and delivery id.
    let stderr = daemon.stderr.clone();
    for reason in [
        "invalid_signature",
        "missing_signature",
        "signature_expired",
    ] {
        let logged = stderr
            .wait_for(|lines, _| lines.iter().any(|l| l.contains(reason)).then_some(()))
            .await;
        assert!(
            logged.is_some(),
            "no log line gives the reason {reason}; stderr:\n{}",
            daemon.stderr_text()
        );
    }
    assert!(
        daemon
            .stderr_text()
            .contains(f7.header("X-Kirim-Delivery-Id")),
        "the 401 log lines should name the delivery id; stderr:\n{}",
        daemon.stderr_text()
    );

    // Nothing was streamed: the next event is the first line.
    let first = sentinel();
    client
        .send(&first)
        .await
        .expect(200, json!({"status": "accepted"}), "sentinel");
    daemon.wait_for_event(first.event_id()).await;
    assert_eq!(
        daemon.event_ids(),
        vec![first.event_id().to_owned()],
        "rejected deliveries must not reach stdout"
    );

    // Nor stored: after a restart only new events are streamed ...
    daemon.stop_gracefully().await;
    let daemon = daemon.restart(&settings).await;
    let mut client = daemon.client();
    let second = sentinel();
    client
        .send(&second)
        .await
        .expect(200, json!({"status": "accepted"}), "sentinel after restart");
    daemon.wait_for_event(second.event_id()).await;
    assert_eq!(
        daemon.event_ids(),
        vec![second.event_id().to_owned()],
        "after a restart nothing but the new sentinel is streamed"
    );

    // ... and F7, refused six times, is new when it finally arrives authentic.
    client.send(&f7.signed_now()).await.expect(
        200,
        json!({"status": "accepted"}),
        "F7 validly signed after its rejected attempts (must be new, not a duplicate)",
    );
    let event = daemon.wait_for_event(f7.event_id()).await;
    assert_eq!(
        event.body_bytes(),
        &f7.body[..],
        "F7's own bytes, not the tampered ones"
    );
    assert_eq!(daemon.events().len(), 2, "stdout: the sentinel and F7");
}

/// A Kirim envelope of exactly `len` bytes (padded inside `data`).
fn envelope_of_len(id: &str, len: usize) -> Vec<u8> {
    let head = format!(
        r#"{{"id":"{id}","type":"conversation.assigned","created_at":"2026-06-10T03:29:59Z","livemode":true,"data":{{"pad":""#
    );
    let tail = r#""}}"#;
    let pad = len - head.len() - tail.len();
    format!("{head}{}{tail}", "x".repeat(pad)).into_bytes()
}

#[tokio::test]
async fn bodies_over_the_limit_get_413_with_or_without_content_length() {
    let dir = temp_dir();
    let settings = Settings {
        max_body_bytes: Some(2048),
        ..Settings::default()
    };
    let daemon = Daemon::start(dir.path(), &settings).await;
    let mut client = daemon.client();
    let too_large = json!({"error": "body_too_large"});

    let big_id = new_event_id();
    let big = kirim_delivery(
        &big_id,
        "conversation.assigned",
        envelope_of_len(&big_id, 4096),
    );
    assert_eq!(big.body.len(), 4096);
    client.send(&big).await.expect(
        413,
        too_large.clone(),
        "4096 validly signed bytes, limit 2048",
    );

    let (status, answer) = raw(daemon.addr, &chunked_request(&big, 1000)).await;
    assert_eq!(
        status, 413,
        "4096 validly signed bytes, chunked without Content-Length, limit 2048; answer:\n{answer}"
    );
    assert!(answer.contains("body_too_large"), "{answer}");

    let over_id = new_event_id();
    let over = kirim_delivery(
        &over_id,
        "conversation.assigned",
        envelope_of_len(&over_id, 2049),
    );
    client
        .send(&over)
        .await
        .expect(413, too_large, "2049 bytes, limit 2048");

    // At the limit and under it, with or without Content-Length, bodies are accepted.
    let at_id = new_event_id();
    let at = kirim_delivery(
        &at_id,
        "conversation.assigned",
        envelope_of_len(&at_id, 2048),
    );
    client
        .send(&at)
        .await
        .expect(200, json!({"status": "accepted"}), "2048 bytes, limit 2048");
    let chunked = sentinel();
    let (status, answer) = raw(daemon.addr, &chunked_request(&chunked, 100)).await;
    assert_eq!(status, 200, "a small chunked delivery; answer:\n{answer}");
    assert!(answer.contains(r#"{"status":"accepted"}"#), "{answer}");

    daemon.wait_for_event(chunked.event_id()).await;
    assert_eq!(
        daemon.event_ids(),
        vec![at_id, chunked.event_id().to_owned()],
        "bodies over the limit must not be streamed"
    );
    // The refused event was not stored either.
    client
        .send(
            &big.with_body(envelope_of_len(&big_id, 2000))
                .retry(2, &["A"]),
        )
        .await
        .expect(
            200,
            json!({"status": "accepted"}),
            "the refused event, now small enough",
        );
}

#[tokio::test]
async fn wrong_method_or_path_is_refused_and_never_redirected() {
    let dir = temp_dir();
    let daemon = Daemon::start(dir.path(), &Settings::default()).await;
    let mut client = daemon.client();

    for method in [Method::GET, Method::PUT, Method::DELETE] {
        let reply = client.request(method.clone(), PATH, &[], Vec::new()).await;
        assert_eq!(reply.status, 405, "{method} {PATH}: {reply:?}");
        assert_eq!(
            reply.headers.get("allow").map(|v| v.to_str().unwrap_or("")),
            Some("POST"),
            "{method} {PATH} must say Allow: POST; {reply:?}"
        );
    }

    let f5 = fixtures::get("f5");
    for path in [
        "/other",
        "/webhooks/kirim/",
        "/webhooks",
        "/",
        "/webhooks/kirim/x",
    ] {
        let delivery = f5.signed_now();
        let reply = client
            .request(Method::POST, path, &delivery.headers, delivery.body.clone())
            .await;
        assert_eq!(reply.status, 404, "POST {path}: {reply:?}");
        assert!(
            reply.headers.get("location").is_none(),
            "POST {path}: {reply:?}"
        );
    }
    let reply = client.request(Method::GET, "/", &[], Vec::new()).await;
    assert_eq!(reply.status, 404, "GET /: {reply:?}");

    // F5 posted to the wrong paths was not stored: on the right path it is new.
    client.send(&f5.signed_now()).await.expect(
        200,
        json!({"status": "accepted"}),
        "F5 on the webhook path after being posted elsewhere",
    );
    daemon.wait_for_event(f5.event_id()).await;
    assert_eq!(daemon.event_ids(), vec![f5.event_id().to_owned()]);
}
