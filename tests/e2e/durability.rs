//! What survives a restart: dedupe keys and the stdout sink's cursor across a graceful stop, and
//! every acknowledged event across a `kill -9` right after a concurrent burst.

use std::collections::HashSet;

use serde_json::json;
use tokio::task::JoinSet;

use crate::daemon::{temp_dir, Daemon, Event, Settings};
use crate::fixtures::{self, kirim_event, new_event_id, sentinel};
use crate::http::Client;

#[tokio::test]
async fn a_graceful_restart_keeps_dedupe_and_streams_nothing_twice() {
    let dir = temp_dir();
    let settings = Settings::default();
    let mut daemon = Daemon::start(dir.path(), &settings).await;
    let mut client = daemon.client();
    let f1 = fixtures::get("f1");
    let f5 = fixtures::get("f5");
    let first_f1 = f1.signed_now();
    let first_f5 = f5.signed_now();
    client.send(&first_f5).await.expect(
        200,
        json!({"status": "accepted"}),
        "F5 before the restart",
    );
    client.send(&first_f1).await.expect(
        200,
        json!({"status": "accepted"}),
        "F1 before the restart",
    );
    // Stopped at once: a graceful stop first lets the sink stream what was accepted.
    daemon.stop_gracefully().await;
    assert_eq!(
        daemon.event_ids(),
        vec![f5.event_id().to_owned(), f1.event_id().to_owned()],
        "before the restart: F5 then F1, once each, all streamed before the daemon exited"
    );

    let daemon = daemon.restart(&settings).await;
    let mut client = daemon.client();
    client.send(&first_f5.retry(2, &["A"])).await.expect(
        200,
        json!({"status": "duplicate"}),
        "F5 retried after the restart",
    );
    client.send(&first_f1.retry(2, &["A"])).await.expect(
        200,
        json!({"status": "duplicate"}),
        "F1 retried after the restart",
    );
    let after = sentinel();
    client.send(&after).await.expect(
        200,
        json!({"status": "accepted"}),
        "sentinel after the restart",
    );
    daemon.wait_for_event(after.event_id()).await;
    assert_eq!(
        daemon.event_ids(),
        vec![after.event_id().to_owned()],
        "after the restart nothing accepted before may be streamed again; stdout:\n{}",
        daemon.stdout.lines().join("\n")
    );
}

/// Events in the burst.
const BURST: usize = 300;
/// Concurrent connections sending the burst.
const CONNECTIONS: usize = 16;

#[tokio::test]
async fn kill_9_right_after_a_burst_loses_no_acknowledged_event() {
    let dir = temp_dir();
    let settings = Settings::default();
    let mut daemon = Daemon::start(dir.path(), &settings).await;

    let ids: Vec<String> = (0..BURST).map(|_| new_event_id()).collect();
    let mut senders = JoinSet::new();
    for share in ids.chunks(BURST.div_ceil(CONNECTIONS)) {
        let deliveries: Vec<_> = share.iter().map(|id| kirim_event(id)).collect();
        let mut client = Client::new(daemon.addr);
        senders.spawn(async move {
            let mut acked = Vec::new();
            let mut refused = Vec::new();
            for delivery in deliveries {
                let reply = client.send(&delivery).await;
                if reply.status == 200 && reply.json() == json!({"status": "accepted"}) {
                    acked.push(delivery);
                } else {
                    refused.push(format!(
                        "{}: {} {}",
                        delivery.event_id(),
                        reply.status,
                        reply.body
                    ));
                }
            }
            (acked, refused)
        });
    }
    let mut acked = Vec::new();
    let mut refused = Vec::new();
    while let Some(done) = senders.join_next().await {
        let (a, r) = done.expect("a sender task panicked");
        acked.extend(a);
        refused.extend(r);
    }
    daemon.kill9().await;

    assert!(
        refused.is_empty(),
        "every distinct, validly signed event of the burst should be accepted; refused: {refused:?}"
    );
    assert_eq!(acked.len(), BURST);
    let before: HashSet<String> = daemon
        .events()
        .iter()
        .filter_map(|e| e.event_id().map(str::to_owned))
        .collect();

    let daemon = daemon.restart(&settings).await;
    let mut seen = before.clone();
    let mut read = 0;
    let missing = |seen: &HashSet<String>| -> Vec<String> {
        acked
            .iter()
            .map(|d| d.event_id().to_owned())
            .filter(|id| !seen.contains(id))
            .collect()
    };
    let complete = daemon
        .stdout
        .wait_for(|lines, _| {
            for line in &lines[read..] {
                if let Some(id) = Event::parse(line).event_id() {
                    seen.insert(id.to_owned());
                }
            }
            read = lines.len();
            missing(&seen).is_empty().then_some(())
        })
        .await;
    let after_restart = daemon.event_ids().len();
    assert!(
        complete.is_some(),
        "acknowledged events never reached stdout (streamed before kill: {}, after restart: {after_restart}); missing: {:?}\nstderr after restart:\n{}",
        before.len(),
        missing(&seen),
        daemon.stderr_text()
    );

    let mut client = daemon.client();
    let last = acked.last().expect("the burst acknowledged events").clone();
    client.send(&last.retry(2, &["A"])).await.expect(
        200,
        json!({"status": "duplicate"}),
        "a retry of an acknowledged event after kill -9 and restart",
    );
}
