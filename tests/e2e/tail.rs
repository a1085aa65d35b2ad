//! `kirimhook tail` against a running daemon: what happens shows up in order (accepted,
//! duplicate, quarantined, rejected, a relay's failed attempt and its delivery on the retry, a
//! dead letter), the filters
//! keep to one sink, and a viewer that stops reading holds back nothing: the daemon keeps
//! answering 200 while the viewer is stalled, and the viewer is told what it lost.
//!
//! The viewers are the real CLI in child processes, their stdout and stderr collected line by
//! line ([`Lines`]); "watching" on stderr says the daemon answered, so the viewer is subscribed.

use std::process::{Child, Command, Stdio};

use serde_json::{json, Value};
use tokio::task::JoinSet;

use crate::admin::{admin_url, http_sink};
use crate::daemon::{temp_dir, Daemon, Lines, Settings};
use crate::fixtures::{kirim_delivery, kirim_event, new_event_id, now};
use crate::target::{Plan, Target};

/// A running `kirimhook tail`, killed when dropped.
struct Viewer {
    child: Child,
    stderr: Lines,
}

impl Drop for Viewer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Viewer {
    /// Starts `kirimhook tail ARGS` against `daemon`, waits until it is watching, and hands
    /// back its stdout pipe unread.
    async fn start(daemon: &Daemon, args: &[&str]) -> (Viewer, std::process::ChildStdout) {
        let mut child = Command::new(env!("CARGO_BIN_EXE_kirimhook"))
            .arg("tail")
            .args(["--admin", &admin_url(daemon)])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn kirimhook tail");
        let stdout = child.stdout.take().expect("stdout piped");
        let stderr = Lines::collect(child.stderr.take().expect("stderr piped"), "tail stderr");
        let viewer = Viewer { child, stderr };
        let watching = viewer
            .stderr
            .wait_for(|lines, closed| {
                if lines.iter().any(|l| l.starts_with("watching http://")) {
                    Some(Ok(()))
                } else if closed {
                    Some(Err(()))
                } else {
                    None
                }
            })
            .await;
        assert_eq!(
            watching,
            Some(Ok(())),
            "kirimhook tail did not start watching; its stderr:\n{}",
            viewer.stderr.lines().join("\n")
        );
        (viewer, stdout)
    }
}

/// What kirim.dev is told for a forged delivery.
fn forged_answer() -> Value {
    json!({"error": "invalid_signature"})
}

fn parse(line: &str) -> Value {
    serde_json::from_str(line).unwrap_or_else(|e| panic!("not a JSON line ({e}): {line}"))
}

/// The index of the first line of `kind` (and `sink`, when given) about `event_id`.
fn position(lines: &[Value], kind: &str, sink: Option<&str>, event_id: &str) -> Option<usize> {
    lines.iter().position(|l| {
        l["kind"] == kind && l["event_id"] == event_id && sink.is_none_or(|sink| l["sink"] == sink)
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deliveries_and_a_relay_outcome_appear_in_order() {
    let app = Target::start().await;
    let settings = Settings {
        extra_sinks: http_sink("app", &app.url()),
        ..Settings::default()
    };
    let dir = temp_dir();
    let daemon = Daemon::start(dir.path(), &settings).await;
    let (_json_viewer, json_out) = Viewer::start(&daemon, &["--json"]).await;
    let json_lines = Lines::collect(json_out, "tail --json");
    let (_app_viewer, app_out) = Viewer::start(&daemon, &["--sink", "app"]).await;
    let app_lines = Lines::collect(app_out, "tail --sink app");

    let mut client = daemon.client();
    let first = new_event_id();
    let retried = new_event_id();
    let refused = new_event_id();
    app.plan_for(&retried, [Plan::status(500).with_body("try later")]);
    app.plan_for(&refused, [Plan::status(400)]);
    let delivery = kirim_event(&first);
    let accepted = json!({"status": "accepted"});
    client
        .send(&delivery)
        .await
        .expect(200, accepted.clone(), "first");
    client
        .send(&delivery.clone().retry(2, &["A"]))
        .await
        .expect(200, json!({"status": "duplicate"}), "the retry of first");
    client
        .send(&kirim_event(&retried))
        .await
        .expect(200, accepted, "retried");
    client.send(&kirim_event(&refused)).await.expect(
        200,
        json!({"status": "accepted"}),
        "refused by the app",
    );
    let odd = new_event_id();
    let unrecognised = kirim_delivery(&odd, "contact.created", b"not json".to_vec());
    client.send(&unrecognised).await.expect(
        200,
        json!({"status": "quarantined"}),
        "an authentic delivery with a body that is not JSON",
    );
    let forged = kirim_event(&new_event_id())
        .with_header("X-Kirim-Delivery-Id", "wbd_forged")
        .with_header("X-Kirim-Signature", &format!("t={},v1=00", now()));
    client
        .send(&forged)
        .await
        .expect(401, forged_answer(), "forged");

    let lines: Vec<Value> = json_lines
        .wait_for(|lines, _| {
            let lines: Vec<Value> = lines.iter().map(|l| parse(l)).collect();
            position(&lines, "delivered", Some("app"), &retried)
                .and(position(&lines, "delivered", Some("stdout"), &retried))
                .and(position(&lines, "dead_lettered", Some("app"), &refused))
                .and(lines.iter().position(|l| l["kind"] == "rejected"))
                .map(|_| lines)
        })
        .await
        .unwrap_or_else(|| {
            panic!(
                "the retried event's deliveries never showed; tail --json printed:\n{}",
                json_lines.lines().join("\n")
            )
        });
    let at = |kind: &str, sink: Option<&str>, id: &str| {
        position(&lines, kind, sink, id).unwrap_or_else(|| {
            panic!(
                "no {kind} line for {id} (sink {sink:?}) in:\n{}",
                json_lines.lines().join("\n")
            )
        })
    };
    // Sink lines after the event's accepted line: the relay's answer takes a round trip
    // (stdout can be quicker than the receive path's wake-up, so its line is only looked for).
    let accepted = at("accepted", None, &first);
    assert!(accepted < at("delivered", Some("app"), &first));
    at("delivered", Some("stdout"), &first);
    assert!(accepted < at("duplicate", None, &first));
    let duplicate = &lines[at("duplicate", None, &first)];
    assert_eq!(duplicate["attempt"], "2", "{duplicate}");
    assert_eq!(
        lines[accepted]["sinks"],
        serde_json::json!(["stdout", "app"])
    );
    assert_eq!(lines[accepted]["event_type"], "conversation.assigned");

    let failed = at("failed", Some("app"), &retried);
    let delivered = at("delivered", Some("app"), &retried);
    assert!(at("accepted", None, &retried) < failed && failed < delivered);
    assert_eq!(lines[failed]["status"], 500, "{}", lines[failed]);
    assert_eq!(lines[failed]["attempt"], 1);
    assert!(lines[failed]["retry_in_ms"].is_u64(), "{}", lines[failed]);
    assert_eq!(lines[delivered]["attempt"], 2);

    let dead = &lines[at("dead_lettered", Some("app"), &refused)];
    assert!(at("accepted", None, &refused) < at("dead_lettered", Some("app"), &refused));
    assert_eq!(
        (dead["status"].as_u64(), dead["attempts"].as_u64()),
        (Some(400), Some(1)),
        "{dead}"
    );
    let quarantined = &lines[at("quarantined", None, &odd)];
    assert_eq!(quarantined["reason"], "not_json", "{quarantined}");
    assert!(
        position(&lines, "accepted", None, &odd).is_none(),
        "a quarantined delivery is not an accepted event"
    );

    let rejected = lines
        .iter()
        .find(|l| l["kind"] == "rejected")
        .expect("a rejected line");
    assert_eq!(rejected["status"], 401);
    assert_eq!(rejected["reason"], "invalid_signature");
    assert_eq!(rejected["delivery_id"], "wbd_forged");
    // F5's body names its assignee; the feed never carries a body (or a secret).
    let every = json_lines.lines().join("\n");
    assert!(
        !every.contains("usr_T81RRMHBZ1YA9Y7189BN7AFEW3") && !every.contains("whsec_"),
        "no body or secret in the feed:\n{every}"
    );

    // The text viewer keeps to the sink `app`: its outcomes and the events accepted for it.
    let text = app_lines
        .wait_for(|lines, _| {
            lines
                .iter()
                .any(|l| l.contains("delivered") && l.contains(&retried))
                .then(|| lines.to_vec())
        })
        .await
        .unwrap_or_else(|| panic!("tail --sink app printed:\n{}", app_lines.lines().join("\n")));
    for line in &text {
        let about_app = if line.contains(" accepted ") {
            line.contains("-> stdout, app")
        } else {
            line.contains(" app ") && !line.contains("stdout")
        };
        assert!(
            about_app && !line.contains("rejected") && !line.contains("duplicate"),
            "tail --sink app printed a line about something else: {line}"
        );
        assert!(
            !line.contains('\u{1b}'),
            "no colour when stdout is not a terminal: {line}"
        );
    }
    let failed_line = text
        .iter()
        .find(|l| l.contains("failed"))
        .expect("a failed line");
    assert!(
        failed_line.contains("500") && failed_line.contains("retry in"),
        "{failed_line}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_viewer_does_not_slow_acceptance_and_is_told_what_it_lost() {
    let dir = temp_dir();
    let daemon = Daemon::start(dir.path(), &Settings::default()).await;
    // The viewer's stdout is not read: it stops reading the daemon once its pipe is full.
    let (_viewer, stalled_out) = Viewer::start(&daemon, &["--json"]).await;

    // Forged deliveries are refused cheaply, and each shows as a line carrying its 2 KiB
    // delivery id: 16,000 of them are far more than the pipe, the sockets' buffers and the
    // feed's ring hold together. Authentic ones go in between and must all be accepted.
    let padding = "x".repeat(2048);
    let mut senders = JoinSet::new();
    for sender in 0..4 {
        let (addr, padding) = (daemon.addr, padding.clone());
        senders.spawn(async move {
            let mut client = crate::http::Client::new(addr);
            let mut accepted = Vec::new();
            for i in 0..4000 {
                if i % 100 == 0 {
                    let id = new_event_id();
                    client.send(&kirim_event(&id)).await.expect(
                        200,
                        json!({"status": "accepted"}),
                        "an authentic delivery while the viewer is stalled",
                    );
                    accepted.push(id);
                }
                let forged = kirim_event(&new_event_id())
                    .with_header(
                        "X-Kirim-Delivery-Id",
                        &format!("wbd_{sender}_{i}_{padding}"),
                    )
                    .with_header("X-Kirim-Signature", &format!("t={},v1=00", now()));
                client
                    .send(&forged)
                    .await
                    .expect(401, forged_answer(), "forged");
            }
            accepted
        });
    }
    let mut accepted = Vec::new();
    while let Some(sent) = senders.join_next().await {
        accepted.extend(sent.expect("a sender"));
    }
    assert_eq!(accepted.len(), 160);
    for id in &accepted {
        daemon.wait_for_event(id).await;
    }

    // Reading again: the viewer says how many lines it lost, and then shows what came after.
    let lines = Lines::collect(stalled_out, "stalled tail");
    let last = new_event_id();
    let mut client = daemon.client();
    client
        .send(&kirim_event(&last))
        .await
        .expect(200, json!({"status": "accepted"}), "last");
    // Each check looks at the lines that came since the last one: tens of thousands of 2 KiB
    // lines may arrive.
    let mut checked = 0;
    let seen = lines
        .wait_for(|lines, _| {
            let found = lines[checked..]
                .iter()
                .any(|l| l.contains("\"accepted\"") && l.contains(&last));
            checked = lines.len();
            found.then(|| lines.to_vec())
        })
        .await
        .unwrap_or_else(|| {
            let shown = lines.lines();
            let tail: Vec<String> = shown
                .iter()
                .rev()
                .take(3)
                .map(|l| l.chars().take(300).collect())
                .collect();
            panic!(
                "the resumed viewer never showed the last event; it printed {} lines, the last \
                 ones:\n{}\nits stderr:\n{}",
                shown.len(),
                tail.join("\n"),
                _viewer.stderr.lines().join("\n")
            )
        });
    let lost: u64 = seen
        .iter()
        .map(|l| parse(l))
        .filter(|l| l["kind"] == "lost")
        .map(|l| l["lines"].as_u64().expect("lines is a count"))
        .sum();
    assert!(
        lost > 0,
        "a viewer that stalled through 16,000 lines must be told it lost some; it printed {} lines",
        seen.len()
    );
    eprintln!(
        "stalled viewer: {} lines shown after resuming, {lost} reported lost",
        seen.len()
    );
}
