//! The admin listener and the operator CLI against a running daemon: `/healthz`, `/readyz`,
//! `/metrics` after real deliveries, `kirimhook status` (table and `--json`), the dead-letter
//! round trip (a 400 from the service, `list`, `show`, `retry` that then arrives, `drop
//! --all`), the quarantine (`list`, `show`, `drop`) and `replay` to one sink of an event kept
//! by `store.keep_delivered_hours`.
//!
//! The daemon's admin listener runs on 127.0.0.1:0; its address comes from the "admin
//! listening" log line ([`Daemon::admin_addr`]). Everything is observed the way an operator
//! sees it: HTTP answers, CLI output and exit codes, and what the fake service receives.

use std::net::SocketAddr;
use std::process::{Command, Output};
use std::time::Duration;

use hyper::Method;
use serde_json::json;
use tokio::time::Instant;

use crate::daemon::{temp_dir, Daemon, Settings, DEADLINE};
use crate::fixtures::{self, kirim_delivery, kirim_event, new_event_id, Delivery, SECRET_A};
use crate::http::{Client, Reply};
use crate::target::{refused_addr, Plan, Target};

/// How often the polling helpers look again.
const POLL: Duration = Duration::from_millis(25);

/// One `[[sinks]]` table of kind `http` to `url`, with quick retries.
pub fn http_sink(name: &str, url: &str) -> String {
    format!(
        "[[sinks]]\nname = \"{name}\"\nkind = \"http\"\nurl = \"{url}\"\ntimeout_secs = 5\n\
         [sinks.retry]\ninitial_backoff_ms = 50\nmax_backoff_secs = 1\nmax_attempts = 5\n\n"
    )
}

pub fn admin_addr(daemon: &Daemon) -> SocketAddr {
    daemon.admin_addr.unwrap_or_else(|| {
        panic!(
            "the daemon logged no \"admin listening\" line; stderr:\n{}",
            daemon.stderr_text()
        )
    })
}

pub fn admin_url(daemon: &Daemon) -> String {
    format!("http://{}", admin_addr(daemon))
}

/// `GET path` on the admin listener.
pub async fn get(daemon: &Daemon, path: &str) -> Reply {
    Client::new(admin_addr(daemon))
        .request(Method::GET, path, &[], Vec::new())
        .await
}

/// Runs `kirimhook ARGS` (off the runtime's threads).
pub async fn kirimhook(args: Vec<String>) -> Output {
    tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_kirimhook"))
            .args(&args)
            .output()
            .expect("run kirimhook")
    })
    .await
    .expect("the kirimhook task")
}

/// Runs an operator command against `daemon`'s admin listener; asserts exit 0, returns stdout.
pub async fn cli(daemon: &Daemon, args: &[&str]) -> String {
    let mut all: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
    all.push("--admin".into());
    all.push(admin_url(daemon));
    let out = kirimhook(all.clone()).await;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(
        out.status.code(),
        Some(0),
        "kirimhook {}: stdout: {stdout}; stderr: {}",
        all.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// The same with `--json`, parsed.
pub async fn cli_json(daemon: &Daemon, args: &[&str]) -> serde_json::Value {
    let mut with_json = args.to_vec();
    with_json.push("--json");
    let stdout = cli(daemon, &with_json).await;
    serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("kirimhook {args:?} --json printed no JSON ({e}): {stdout}"))
}

/// Polls `check` until it returns `Some`; panics after [`DEADLINE`] with `what` and the last
/// value seen.
pub async fn poll<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, String>>,
{
    let deadline = Instant::now() + DEADLINE;
    loop {
        match check().await {
            Ok(found) => return found,
            Err(last) => {
                assert!(
                    Instant::now() < deadline,
                    "waited {DEADLINE:?} for {what}; last seen:\n{last}"
                );
                tokio::time::sleep(POLL).await;
            }
        }
    }
}

/// The value of the sample `series` (name and labels exactly as rendered) in a scrape.
pub fn sample(metrics: &str, series: &str) -> Option<f64> {
    metrics.lines().find_map(|line| {
        line.strip_prefix(series)?
            .strip_prefix(' ')?
            .split(' ')
            .next()?
            .parse()
            .ok()
    })
}

/// Scrapes until `series` has `value`.
pub async fn wait_for_sample(daemon: &Daemon, series: &str, value: f64) -> String {
    poll(&format!("{series} = {value}"), || async {
        let reply = get(daemon, "/metrics").await;
        match sample(&reply.body, series) {
            Some(v) if v == value => Ok(reply.body),
            _ => Err(reply.body),
        }
    })
    .await
}

pub async fn send(client: &mut Client, delivery: &Delivery, status: &str) {
    client
        .send(delivery)
        .await
        .expect(200, json!({ "status": status }), status);
}

#[tokio::test]
async fn health_readiness_and_metrics_after_real_deliveries() {
    let dir = temp_dir();
    let daemon = Daemon::start(dir.path(), &Settings::default()).await;

    let health = get(&daemon, "/healthz").await;
    assert_eq!((health.status, health.body.as_str()), (200, "ok\n"));
    poll("/readyz to answer 200", || async {
        let ready = get(&daemon, "/readyz").await;
        if ready.status == 200 && ready.json() == json!({"ready": true}) {
            Ok(())
        } else {
            Err(format!("{} {}", ready.status, ready.body))
        }
    })
    .await;

    // The admin API never answers on the public port, and the webhook never on the admin one.
    let mut public = daemon.client();
    let reply = public
        .request(Method::GET, "/metrics", &[], Vec::new())
        .await;
    assert_eq!(reply.status, 404, "{}", reply.body);
    let reply = get(&daemon, fixtures::PATH).await;
    assert_eq!(reply.status, 404, "{}", reply.body);

    let event = kirim_event(&new_event_id());
    send(&mut public, &event, "accepted").await;
    send(&mut public, &event, "duplicate").await;
    let by_b = kirim_event(&new_event_id()).signed(&["B"], fixtures::now());
    send(&mut public, &by_b, "accepted").await;
    let forged = kirim_event(&new_event_id()).signed(&["WRONG"], fixtures::now());
    public
        .send(&forged)
        .await
        .expect(401, json!({"error": "invalid_signature"}), "wrong secret");
    let unsigned = kirim_event(&new_event_id()).without_header("X-Kirim-Signature");
    public
        .send(&unsigned)
        .await
        .expect(401, json!({"error": "missing_signature"}), "no signature");
    daemon.wait_for_event(by_b.event_id()).await;

    wait_for_sample(
        &daemon,
        "kirimhook_sink_delivered_total{sink=\"stdout\"}",
        2.0,
    )
    .await;
    // A delivery is counted when the sink took it; the queue gauge follows once its outcome
    // is committed (and the scrape cache has expired): wait for that too.
    let metrics =
        wait_for_sample(&daemon, "kirimhook_sink_queue_depth{sink=\"stdout\"}", 0.0).await;
    let reply = get(&daemon, "/metrics").await;
    assert_eq!(
        reply
            .headers
            .get("content-type")
            .and_then(|v| v.to_str().ok()),
        Some("application/openmetrics-text; version=1.0.0; charset=utf-8")
    );
    for (series, value) in [
        ("kirimhook_requests_total{outcome=\"accepted\"}", 2.0),
        ("kirimhook_requests_total{outcome=\"duplicate\"}", 1.0),
        (
            "kirimhook_requests_total{outcome=\"invalid_signature\"}",
            1.0,
        ),
        (
            "kirimhook_requests_total{outcome=\"missing_signature\"}",
            1.0,
        ),
        (
            "kirimhook_requests_total{outcome=\"signature_expired\"}",
            0.0,
        ),
        ("kirimhook_requests_total{outcome=\"body_too_large\"}", 0.0),
        (
            "kirimhook_requests_total{outcome=\"store_unavailable\"}",
            0.0,
        ),
        ("kirimhook_verified_total{secret_id=\"sec_A\"}", 2.0),
        ("kirimhook_verified_total{secret_id=\"sec_B\"}", 1.0),
        (
            "kirimhook_events_accepted_total{type=\"conversation.assigned\",source=\"kirim\"}",
            2.0,
        ),
        ("kirimhook_store_flush_seconds_count", 3.0),
        ("kirimhook_sink_failed_attempts_total{sink=\"stdout\"}", 0.0),
        ("kirimhook_sink_dead_lettered_total{sink=\"stdout\"}", 0.0),
        ("kirimhook_sink_queue_depth{sink=\"stdout\"}", 0.0),
        (
            "kirimhook_sink_oldest_undelivered_age_seconds{sink=\"stdout\"}",
            0.0,
        ),
        ("kirimhook_sink_dead_letters{sink=\"stdout\"}", 0.0),
        ("kirimhook_quarantine_size", 0.0),
    ] {
        assert_eq!(
            sample(&metrics, series),
            Some(value),
            "{series} in:\n{metrics}"
        );
    }
    let bytes = sample(&metrics, "kirimhook_store_bytes").expect("kirimhook_store_bytes");
    assert!(bytes > 0.0, "{metrics}");
    assert!(metrics.ends_with("# EOF\n"), "{metrics}");
    assert!(!metrics.contains(SECRET_A), "{metrics}");
}

#[tokio::test]
async fn status_shows_a_stuck_queue_as_a_table_and_as_json() {
    // A service that never answers: its event waits in the queue.
    let down = refused_addr();
    let settings = Settings {
        extra_sinks: http_sink("app", &format!("http://{down}/hooks/kirim")),
        ..Settings::default()
    };
    let dir = temp_dir();
    let daemon = Daemon::start(dir.path(), &settings).await;
    let mut client = daemon.client();
    let event = kirim_event(&new_event_id());
    send(&mut client, &event, "accepted").await;
    daemon.wait_for_event(event.event_id()).await;

    let json = poll("app's queue to show the event", || async {
        let json = cli_json(&daemon, &["status"]).await;
        let app = json["sinks"]
            .as_array()
            .and_then(|s| s.iter().find(|s| s["name"] == "app"))
            .cloned()
            .unwrap_or_default();
        let stdout_done = json["sinks"][0]["name"] == "stdout" && json["sinks"][0]["queued"] == 0;
        if app["queued"] == 1 && stdout_done {
            Ok(json)
        } else {
            Err(json.to_string())
        }
    })
    .await;
    assert_eq!(json["quarantined"], 0, "{json}");
    assert!(json["store_bytes"].as_u64().unwrap_or(0) > 0, "{json}");
    assert!(json["sinks"][1]["oldest_received_at"].is_string(), "{json}");
    assert_eq!(json["sinks"][1]["dead_letters"], 0, "{json}");

    let table = cli(&daemon, &["status"]).await;
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(
        lines
            .first()
            .map(|l| l.split_whitespace().collect::<Vec<_>>()),
        Some(vec!["SINK", "QUEUED", "OLDEST", "DEAD_LETTERS"]),
        "{table}"
    );
    let app: Vec<&str> = lines
        .iter()
        .find(|l| l.starts_with("app "))
        .unwrap_or_else(|| panic!("no app row in:\n{table}"))
        .split_whitespace()
        .collect();
    assert_eq!(app[1], "1", "{table}");
    assert!(
        app[2].ends_with('s') || app[2].ends_with('m'),
        "an age: {table}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.split_whitespace().collect::<Vec<_>>() == ["stdout", "0", "-", "0"]),
        "{table}"
    );
    assert!(table.contains("quarantine: 0 deliveries"), "{table}");
    assert!(table.contains(" on disk, "), "{table}");

    let metrics = wait_for_sample(&daemon, "kirimhook_sink_queue_depth{sink=\"app\"}", 1.0).await;
    let age = sample(
        &metrics,
        "kirimhook_sink_oldest_undelivered_age_seconds{sink=\"app\"}",
    )
    .expect("the oldest age of app");
    assert!(age > 0.0, "{metrics}");
    assert!(
        sample(
            &metrics,
            "kirimhook_sink_failed_attempts_total{sink=\"app\"}"
        )
        .unwrap_or(0.0)
            >= 1.0,
        "the failed probe of an unreachable sink is counted:\n{metrics}"
    );

    // Clear errors: an unknown sink, and no daemon at the URL.
    let out = kirimhook(vec![
        "dead-letters".into(),
        "list".into(),
        "--sink".into(),
        "nope".into(),
        "--admin".into(),
        admin_url(&daemon),
    ])
    .await;
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("`nope`") && stderr.contains("404") && stderr.contains("app"),
        "{stderr}"
    );
    let nowhere = format!("http://{}", refused_addr());
    let out = kirimhook(vec!["status".into(), "--admin".into(), nowhere.clone()]).await;
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("cannot reach the admin listener at {nowhere}"))
            && stderr.contains("[admin]"),
        "{stderr}"
    );
    // The webhook port is not the admin API.
    let out = kirimhook(vec![
        "status".into(),
        "--admin".into(),
        format!("http://{}", daemon.addr),
    ])
    .await;
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("not its webhook port"), "{stderr}");
}

#[tokio::test]
async fn a_dead_letter_is_listed_shown_retried_until_it_arrives_and_dropped() {
    let target = Target::start().await;
    let settings = Settings {
        stdout_sink: false,
        extra_sinks: http_sink("app", &target.url()),
        ..Settings::default()
    };
    let dir = temp_dir();
    let daemon = Daemon::start(dir.path(), &settings).await;
    let mut client = daemon.client();

    // The service refuses both events once with a 400 (permanent: dead letter at once), and
    // would take them afterwards.
    let first = kirim_event(&new_event_id());
    let second = kirim_event(&new_event_id());
    for event in [&first, &second] {
        target.plan_for(
            event.event_id(),
            [Plan::status(400).with_body("{\"error\":\"unknown contact\"}")],
        );
        send(&mut client, event, "accepted").await;
        target.wait_answered(event.event_id(), 1).await;
    }

    let list = poll("two dead letters", || async {
        let json = cli_json(&daemon, &["dead-letters", "list", "--sink", "app"]).await;
        match json["dead_letters"].as_array() {
            Some(letters) if letters.len() == 2 => Ok(json),
            _ => Err(json.to_string()),
        }
    })
    .await;
    let seq = |i: usize| list["dead_letters"][i]["seq"].as_u64().expect("a seq");
    assert_eq!(
        list["dead_letters"][0]["event_id"],
        first.event_id(),
        "{list}"
    );
    assert_eq!(list["dead_letters"][0]["attempts"], 1, "{list}");
    assert_eq!(
        list["dead_letters"][0]["last_error"]["status"], 400,
        "{list}"
    );

    let table = cli(&daemon, &["dead-letters", "list", "--sink", "app"]).await;
    assert!(table.starts_with("ID "), "{table}");
    let row = table
        .lines()
        .find(|l| l.contains(first.event_id()))
        .unwrap_or_else(|| panic!("no row for {} in:\n{table}", first.event_id()));
    let cells: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(cells[0], seq(0).to_string(), "{table}");
    assert_eq!(cells[1], "conversation.assigned", "{table}");
    assert!(
        row.contains("HTTP 400: {\"error\":\"unknown contact\"}"),
        "{table}"
    );

    let shown = cli(
        &daemon,
        &["dead-letters", "show", "--sink", "app", &seq(0).to_string()],
    )
    .await;
    assert!(
        shown.contains(&format!("event id:         {}", first.event_id())),
        "{shown}"
    );
    assert!(
        shown.contains("last error:       HTTP 400: {\"error\":\"unknown contact\"}"),
        "{shown}"
    );
    assert!(shown.contains("secret id:        sec_A"), "{shown}");
    assert!(
        shown.contains(&format!("\"id\": \"{}\"", first.event_id())),
        "the body: {shown}"
    );
    assert!(!shown.contains(SECRET_A), "{shown}");
    assert!(!shown.contains("x-kirim-signature"), "{shown}");
    let json = cli_json(
        &daemon,
        &["dead-letters", "show", "--sink", "app", &seq(0).to_string()],
    )
    .await;
    assert_eq!(json["event"]["body_format"], "json", "{json}");
    assert_eq!(json["event"]["body"]["id"], first.event_id(), "{json}");
    let missing = kirimhook(vec![
        "dead-letters".into(),
        "show".into(),
        "--sink".into(),
        "app".into(),
        "999999".into(),
        "--admin".into(),
        admin_url(&daemon),
    ])
    .await;
    let stderr = String::from_utf8_lossy(&missing.stderr).into_owned();
    assert_eq!(missing.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("no dead letter 999999"), "{stderr}");

    // Retry the first: it is sent again, as a first attempt, and this time taken.
    let retried = cli(
        &daemon,
        &[
            "dead-letters",
            "retry",
            "--sink",
            "app",
            &seq(0).to_string(),
        ],
    )
    .await;
    assert_eq!(
        retried,
        "retried 1 dead letters of sink app: back in the queue\n"
    );
    let hits = target.wait_answered(first.event_id(), 2).await;
    assert!(hits[1].acknowledged(), "{}", target.summary());
    assert_eq!(hits[1].attempt(), Some(1), "{}", target.summary());
    assert_eq!(hits[1].body, hits[0].body);

    let list = poll("one dead letter left", || async {
        let json = cli_json(&daemon, &["dead-letters", "list", "--sink", "app"]).await;
        match json["dead_letters"].as_array() {
            Some(letters) if letters.len() == 1 => Ok(json),
            _ => Err(json.to_string()),
        }
    })
    .await;
    assert_eq!(list["dead_letters"][0]["seq"], seq(1), "{list}");

    let dropped = cli(&daemon, &["dead-letters", "drop", "--sink", "app", "--all"]).await;
    assert_eq!(
        dropped,
        "dropped 1 dead letters of sink app: gone for good\n"
    );
    let empty = cli(&daemon, &["dead-letters", "list", "--sink", "app"]).await;
    assert_eq!(empty, "sink app has no dead letters\n");
    assert_eq!(
        target.hits_for(second.event_id()).len(),
        1,
        "{}",
        target.summary()
    );

    let metrics =
        wait_for_sample(&daemon, "kirimhook_sink_delivered_total{sink=\"app\"}", 1.0).await;
    for (series, value) in [
        ("kirimhook_sink_dead_lettered_total{sink=\"app\"}", 2.0),
        ("kirimhook_sink_failed_attempts_total{sink=\"app\"}", 2.0),
        ("kirimhook_sink_dead_letters{sink=\"app\"}", 0.0),
        ("kirimhook_sink_queue_depth{sink=\"app\"}", 0.0),
    ] {
        assert_eq!(
            sample(&metrics, series),
            Some(value),
            "{series} in:\n{metrics}"
        );
    }
}

#[tokio::test]
async fn quarantined_deliveries_are_listed_shown_and_dropped() {
    let dir = temp_dir();
    let daemon = Daemon::start(dir.path(), &Settings::default()).await;
    let mut client = daemon.client();
    let event_id = new_event_id();
    let odd = kirim_delivery(
        &event_id,
        "contact.created",
        b"not json \x01 at all".to_vec(),
    );
    send(&mut client, &odd, "quarantined").await;

    let list = poll("one quarantined delivery", || async {
        let json = cli_json(&daemon, &["quarantine", "list"]).await;
        match json["quarantine"].as_array() {
            Some(entries) if entries.len() == 1 => Ok(json),
            _ => Err(json.to_string()),
        }
    })
    .await;
    let seq = list["quarantine"][0]["seq"].as_u64().expect("a seq");
    assert_eq!(list["quarantine"][0]["reason"], "not_json", "{list}");
    assert_eq!(
        list["quarantine"][0]["event_id"],
        event_id.as_str(),
        "{list}"
    );

    let table = cli(&daemon, &["quarantine", "list"]).await;
    let row = table
        .lines()
        .find(|l| l.contains(&event_id))
        .unwrap_or_else(|| panic!("no row for {event_id} in:\n{table}"));
    assert_eq!(
        row.split_whitespace().collect::<Vec<_>>()[0],
        seq.to_string(),
        "{table}"
    );
    assert!(row.contains("not_json"), "{table}");
    wait_for_sample(&daemon, "kirimhook_quarantine_size", 1.0).await;
    let metrics = get(&daemon, "/metrics").await.body;
    assert_eq!(
        sample(
            &metrics,
            "kirimhook_requests_total{outcome=\"quarantined\"}"
        ),
        Some(1.0),
        "{metrics}"
    );

    let shown = cli(&daemon, &["quarantine", "show", &seq.to_string()]).await;
    assert!(shown.contains("quarantined:      not_json"), "{shown}");
    assert!(
        shown.contains(&format!(
            "body:             {} bytes, not JSON",
            odd.body.len()
        )),
        "{shown}"
    );
    // The control character is not passed to the terminal.
    assert!(shown.ends_with("not json \u{FFFD} at all\n"), "{shown}");
    let json = cli_json(&daemon, &["quarantine", "show", &seq.to_string()]).await;
    assert_eq!(json["body_format"], "text", "{json}");
    assert_eq!(json["body"], "not json \u{1} at all", "{json}");

    let dropped = cli(&daemon, &["quarantine", "drop", &seq.to_string()]).await;
    assert_eq!(dropped, "dropped 1 quarantined deliveries: gone for good\n");
    let empty = cli(&daemon, &["quarantine", "list"]).await;
    assert_eq!(empty, "the quarantine is empty\n");
}

#[tokio::test]
async fn replay_sends_kept_events_again_to_one_sink_only() {
    let app = Target::start().await;
    let audit = Target::start().await;
    let settings = Settings {
        keep_delivered_hours: 1,
        extra_sinks: format!(
            "{}{}",
            http_sink("app", &app.url()),
            http_sink("audit", &audit.url())
        ),
        ..Settings::default()
    };
    let dir = temp_dir();
    let daemon = Daemon::start(dir.path(), &settings).await;
    let mut client = daemon.client();
    let since = kirimhook::admin::rfc3339_ms(
        kirimhook::store::millis(std::time::SystemTime::now()).saturating_sub(60_000),
    );
    let event = kirim_event(&new_event_id());
    send(&mut client, &event, "accepted").await;
    let ids = vec![event.event_id().to_owned()];
    app.wait_acknowledged(&ids).await;
    audit.wait_acknowledged(&ids).await;
    daemon.wait_for_event(event.event_id()).await;
    // Every sink has it: wait until that is recorded, so the replay is the only reason to
    // send it again.
    poll("every queue to be empty", || async {
        let json = cli_json(&daemon, &["status"]).await;
        let queued: u64 = json["sinks"]
            .as_array()
            .map(|s| s.iter().filter_map(|s| s["queued"].as_u64()).sum())
            .unwrap_or(1);
        if queued == 0 {
            Ok(())
        } else {
            Err(json.to_string())
        }
    })
    .await;

    let replayed = cli(&daemon, &["replay", "--sink", "app", "--since", &since]).await;
    assert_eq!(
        replayed,
        format!("queued 1 stored event(s) received since {since} for sink app again\n")
    );
    let hits = poll("the replayed event at app", || async {
        let hits = app.hits_for(event.event_id());
        if hits.len() >= 2 && hits[1].answered.is_some() {
            Ok(hits)
        } else {
            Err(format!(
                "{}\nstderr:\n{}",
                app.summary(),
                daemon.stderr_text()
            ))
        }
    })
    .await;
    assert_eq!(hits[1].body, hits[0].body);

    // Only app: a later sentinel reaches audit and stdout once, and the event no second time.
    let sentinel = kirim_event(&new_event_id());
    send(&mut client, &sentinel, "accepted").await;
    audit
        .wait_acknowledged(&[sentinel.event_id().to_owned()])
        .await;
    daemon.wait_for_event(sentinel.event_id()).await;
    assert_eq!(
        audit.hits_for(event.event_id()).len(),
        1,
        "{}",
        audit.summary()
    );
    let printed = daemon
        .event_ids()
        .iter()
        .filter(|id| *id == event.event_id())
        .count();
    assert_eq!(printed, 1, "stdout:\n{}", daemon.stdout.lines().join("\n"));

    // Nothing received since a moment from now; an unknown sink is named.
    let later = cli(
        &daemon,
        &[
            "replay",
            "--sink",
            "audit",
            "--since",
            "2999-01-01T00:00:00Z",
        ],
    )
    .await;
    assert!(later.starts_with("queued 0 "), "{later}");
    let out = kirimhook(vec![
        "replay".into(),
        "--sink".into(),
        "nope".into(),
        "--since".into(),
        "1h".into(),
        "--admin".into(),
        admin_url(&daemon),
    ])
    .await;
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("`nope`") && stderr.contains("404"),
        "{stderr}"
    );
}
