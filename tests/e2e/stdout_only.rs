//! stdout carries the event stream and nothing else: one daemon goes through every kind of
//! request and a graceful stop, and afterwards every stdout line is an event, while the logs
//! are all on stderr.

use hyper::Method;
use serde_json::json;

use crate::daemon::{temp_dir, Daemon, Settings};
use crate::fixtures::{self, kirim_delivery, new_event_id, now, sentinel, PATH};
use crate::http::{chunked_request, raw};

#[tokio::test]
async fn logs_never_reach_stdout() {
    let dir = temp_dir();
    let settings = Settings {
        max_body_bytes: Some(2048),
        ..Settings::default()
    };
    let mut daemon = Daemon::start(dir.path(), &settings).await;
    let mut client = daemon.client();
    let accepted = json!({"status": "accepted"});

    let all = fixtures::all();
    for fixture in &all {
        let delivery = fixture.signed_now();
        client
            .send(&delivery)
            .await
            .expect(200, accepted.clone(), &fixture.name);
        client.send(&delivery.retry(2, &["A"])).await.expect(
            200,
            json!({"status": "duplicate"}),
            &format!("{} retried", fixture.name),
        );
    }
    let f7 = fixtures::get("f7");
    let reply = client.send(&f7.original().signed(&["wrong"], now())).await;
    assert_eq!(reply.status, 401, "{reply:?}");
    let reply = client
        .send(&f7.original().without_header("X-Kirim-Signature"))
        .await;
    assert_eq!(reply.status, 401, "{reply:?}");
    let reply = client
        .send(&f7.original().signed(&["A"], now() - 1000))
        .await;
    assert_eq!(reply.status, 401, "{reply:?}");
    let big = kirim_delivery(&new_event_id(), "contact.created", vec![b' '; 4096]);
    let reply = client.send(&big).await;
    assert_eq!(reply.status, 413, "{reply:?}");
    let (status, answer) = raw(daemon.addr, &chunked_request(&big, 512)).await;
    assert_eq!(status, 413, "{answer}");
    let reply = client.request(Method::GET, PATH, &[], Vec::new()).await;
    assert_eq!(reply.status, 405, "{reply:?}");
    let reply = client.request(Method::POST, "/nope", &[], Vec::new()).await;
    assert_eq!(reply.status, 404, "{reply:?}");
    let quarantined = kirim_delivery(&new_event_id(), "contact.created", b"<xml/>".to_vec());
    client
        .send(&quarantined)
        .await
        .expect(200, json!({"status": "quarantined"}), "non-JSON body");
    let last = sentinel();
    client.send(&last).await.expect(200, accepted, "sentinel");
    daemon.wait_for_event(last.event_id()).await;
    daemon.stop_gracefully().await;

    let stdout = daemon.stdout.lines();
    assert_eq!(
        stdout.len(),
        all.len() + 1,
        "stdout: one line per fixture plus the sentinel; got:\n{}",
        stdout.join("\n")
    );
    for line in &stdout {
        let json: serde_json::Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("stdout line is not JSON ({e}): {line}"));
        assert!(
            json.get("event_id").is_some_and(|id| id.is_string()) && json.get("body").is_some(),
            "stdout line is not an event (no event_id or body): {line}"
        );
    }

    let stderr = daemon.stderr.lines();
    for line in &stderr {
        let json: serde_json::Value = serde_json::from_str(line).unwrap_or_else(|e| {
            panic!("with --log-format json every stderr line is JSON ({e}): {line}")
        });
        assert!(
            json.get("level").is_some(),
            "a log line has a level: {line}"
        );
        assert!(
            json.get("body").is_none(),
            "bodies are never logged: {line}"
        );
    }
    for message in ["listening", "stopped"] {
        assert!(
            stderr
                .iter()
                .any(|l| l.contains(&format!("\"message\":\"{message}\""))),
            "the {message:?} log line is on stderr; stderr:\n{}",
            stderr.join("\n")
        );
    }
    let secret_logged = stderr
        .iter()
        .any(|l| l.contains(fixtures::SECRET_A) || l.contains(fixtures::SECRET_B));
    assert!(!secret_logged, "secrets are never logged");
}
