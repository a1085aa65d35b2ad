//! SIGHUP reload: a secret rotation (spec 4.6) under steady traffic loses no delivery, and an
//! invalid new config is refused with the key named while the running one stays.

use std::sync::{Arc, Mutex};

use serde_json::json;

use crate::daemon::{temp_dir, Daemon, Settings};
use crate::fixtures::{kirim_event, new_event_id, now};

/// The secrets a delivery was signed with, and the status and body it got.
type Answer = (Vec<&'static str>, u16, String);

const RELOADED: &str = "configuration reloaded";
const REFUSED: &str = "reload refused; keeping the running configuration";

/// Waits until stderr holds `count` log lines whose message is `message`.
async fn wait_for_log(daemon: &Daemon, message: &str, count: usize) -> String {
    let found = daemon
        .stderr
        .wait_for(|lines, _| {
            let matching: Vec<&String> = lines
                .iter()
                .filter(|line| {
                    serde_json::from_str::<serde_json::Value>(line)
                        .is_ok_and(|log| log["message"] == message)
                })
                .collect();
            (matching.len() >= count).then(|| matching[count - 1].clone())
        })
        .await;
    found.unwrap_or_else(|| {
        panic!(
            "no {count}th {message:?} log line; stderr:\n{}",
            daemon.stderr_text()
        )
    })
}

#[tokio::test]
async fn rotating_secrets_under_traffic_never_answers_401() {
    let dir = temp_dir();
    let only_a = Settings {
        secret_a: true,
        secret_b: false,
        ..Settings::default()
    };
    let daemon = Daemon::start(dir.path(), &only_a).await;

    // What kirim.dev signs with right now, and every answer it got.
    let signing: Arc<Mutex<Vec<&'static str>>> = Arc::new(Mutex::new(vec!["A"]));
    let answers: Arc<Mutex<Vec<Answer>>> = Arc::default();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let traffic = {
        let (signing, answers, stop) = (signing.clone(), answers.clone(), stop.clone());
        let mut client = daemon.client();
        tokio::spawn(async move {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let secrets = signing.lock().expect("lock").clone();
                let delivery = kirim_event(&new_event_id()).signed(&secrets, now());
                let reply = client.send(&delivery).await;
                answers
                    .lock()
                    .expect("lock")
                    .push((secrets, reply.status, reply.body));
            }
        })
    };
    let sent = |answers: &Arc<Mutex<Vec<_>>>| answers.lock().expect("lock").len();
    let wait_for_more = |n: usize| {
        let answers = answers.clone();
        async move {
            let target = sent(&answers) + n;
            let deadline = tokio::time::Instant::now() + crate::daemon::DEADLINE;
            while sent(&answers) < target {
                assert!(tokio::time::Instant::now() < deadline, "traffic stalled");
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            }
        }
    };

    // 1. Add the new secret to kirimhook first (old one still there) and reload.
    wait_for_more(20).await;
    let both = Settings {
        secret_a: true,
        secret_b: true,
        ..Settings::default()
    };
    daemon.rewrite_config(&both);
    daemon.signal("HUP");
    wait_for_log(&daemon, RELOADED, 1).await;
    wait_for_more(20).await;

    // 2. kirim.dev's rotation starts: every delivery is signed by both secrets.
    *signing.lock().expect("lock") = vec!["B", "A"];
    wait_for_more(20).await;

    // 3. The old secret expires at kirim.dev and is removed from kirimhook.
    let only_b = Settings {
        secret_a: false,
        secret_b: true,
        ..Settings::default()
    };
    daemon.rewrite_config(&only_b);
    daemon.signal("HUP");
    wait_for_log(&daemon, RELOADED, 2).await;
    *signing.lock().expect("lock") = vec!["B"];
    wait_for_more(20).await;

    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    traffic.await.expect("traffic task");
    let answers = answers.lock().expect("lock").clone();
    let refused: Vec<_> = answers
        .iter()
        .filter(|(_, status, _)| *status != 200)
        .collect();
    assert!(
        refused.is_empty(),
        "{} of {} deliveries were refused during the rotation: {:?}",
        refused.len(),
        answers.len(),
        &refused[..refused.len().min(5)]
    );
    assert!(answers.len() >= 80);

    // The old secret is gone now: a delivery signed only with it is refused.
    let mut client = daemon.client();
    let old = kirim_event(&new_event_id()).signed(&["A"], now());
    client.send(&old).await.expect(
        401,
        json!({"error": "invalid_signature"}),
        "signed by the removed secret",
    );
}

#[tokio::test]
async fn an_invalid_config_is_refused_on_reload_and_the_running_one_stays() {
    let dir = temp_dir();
    let settings = Settings::default();
    let daemon = Daemon::start(dir.path(), &settings).await;
    let mut text = settings.config_toml(dir.path());
    text = text.replace("[server]\n", "[server]\nlistn = \"127.0.0.1:1\"\n");
    std::fs::write(dir.path().join("kirimhook.toml"), text).expect("write the config");
    daemon.signal("HUP");
    let line = wait_for_log(&daemon, REFUSED, 1).await;
    assert!(
        line.contains("listn"),
        "the refusal must name the bad key: {line}"
    );
    let mut client = daemon.client();
    let delivery = kirim_event(&new_event_id());
    client.send(&delivery).await.expect(
        200,
        json!({"status": "accepted"}),
        "after a refused reload",
    );
    daemon.wait_for_event(delivery.event_id()).await;
}

#[tokio::test]
async fn a_reload_applies_new_sink_settings() {
    let target = crate::target::Target::start().await;
    let dir = temp_dir();
    let sink = |events: &str| {
        format!(
            "[[sinks]]\nname = \"app\"\nkind = \"http\"\nurl = \"{}\"\nevents = [{events}]\n",
            target.url()
        )
    };
    let contacts_only = Settings {
        extra_sinks: sink("\"contact.*\""),
        ..Settings::default()
    };
    let daemon = Daemon::start(dir.path(), &contacts_only).await;
    let mut client = daemon.client();

    // conversation.assigned does not match "contact.*": streamed, not relayed.
    let before = kirim_event(&new_event_id());
    client
        .send(&before)
        .await
        .expect(200, json!({"status": "accepted"}), "before the reload");
    daemon.wait_for_event(before.event_id()).await;

    let everything = Settings {
        extra_sinks: sink("\"*\""),
        ..Settings::default()
    };
    daemon.rewrite_config(&everything);
    daemon.signal("HUP");
    wait_for_log(&daemon, RELOADED, 1).await;

    let after = kirim_event(&new_event_id());
    client
        .send(&after)
        .await
        .expect(200, json!({"status": "accepted"}), "after the reload");
    target
        .wait_acknowledged(&[after.event_id().to_owned()])
        .await;
    assert!(
        target.hits_for(before.event_id()).is_empty(),
        "the event accepted under the old filter must not be relayed"
    );
}

#[tokio::test]
async fn reloads_under_traffic_relay_every_event_once() {
    let target = crate::target::Target::start().await;
    // A slow service: deliveries are in flight whenever a reload comes.
    target.set_default(crate::target::Plan {
        delay: std::time::Duration::from_millis(15),
        ..crate::target::Plan::ok()
    });
    let dir = temp_dir();
    let relay = Settings {
        extra_sinks: format!(
            "[[sinks]]\nname = \"app\"\nkind = \"http\"\nurl = \"{}\"\nconcurrency = 4\n",
            target.url()
        ),
        ..Settings::default()
    };
    let daemon = Daemon::start(dir.path(), &relay).await;
    let mut client = daemon.client();
    let mut ids = Vec::new();
    for round in 0..4 {
        for _ in 0..40 {
            let delivery = kirim_event(&new_event_id());
            client.send(&delivery).await.expect(
                200,
                json!({"status": "accepted"}),
                "a delivery between reloads",
            );
            ids.push(delivery.event_id().to_owned());
        }
        // Reload while the relay is still busy with what was just accepted.
        daemon.signal("HUP");
        wait_for_log(&daemon, RELOADED, round + 1).await;
    }
    target.wait_acknowledged(&ids).await;
    let hits = target.hits();
    let repeated: Vec<&str> = ids
        .iter()
        .filter(|id| hits.iter().filter(|h| h.event_id() == id.as_str()).count() > 1)
        .map(String::as_str)
        .collect();
    assert!(
        repeated.is_empty(),
        "reloads must not make the relay send an event twice; sent more than once: {repeated:?}"
    );
}
