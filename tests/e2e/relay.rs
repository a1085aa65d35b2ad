//! The HTTP relay sink, seen from the user's service (a fake [`Target`]) and from kirim.dev (the
//! test client): every event relayed byte for byte with its headers and a fresh signature,
//! failures retried with back-off (`Retry-After` honoured) or dead-lettered, the receive path
//! untouched by a down or failing relay, filters, and at-least-once across a `kill -9` without
//! re-sending what the service had already acknowledged.
//!
//! Dead letters and queues are read with the store API after a graceful stop (the daemon holds
//! the store's lock while it runs). Timings and counts worth knowing are printed to stderr
//! (`cargo test --test e2e relay -- --nocapture`).

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use kirimhook::receive::signature::{self, SigningSecret};
use kirimhook::store::{DeadLetter, QueueEntry, Store};
use serde_json::json;
use tokio::task::JoinSet;

use crate::daemon::{temp_dir, Daemon, Settings};
use crate::fixtures::{
    self, kirim_event, new_delivery_id, new_event_id, now, Delivery, PHONE_NUMBER_ID, SECRET_A,
    SECRET_B,
};
use crate::http::{Client, Reply};
use crate::target::{refused_addr, Hit, Plan, Target, PATH};

/// The relay secret of the signed sinks (not a kirim.dev secret).
const SINK_SECRET: &str = "whsec_cmVsYXktc2luay1zZWNyZXQtZm9yLWUyZS10ZXN0cw";

/// One `[[sinks]]` table of kind `http`.
#[derive(Debug, Clone)]
struct Relay {
    name: String,
    url: String,
    timeout_secs: u64,
    concurrency: usize,
    secret: Option<String>,
    /// `events` / `sources` / `phone_number_ids` lines, verbatim.
    filters: String,
    initial_backoff_ms: u64,
    max_backoff_secs: u64,
    max_attempts: u32,
}

impl Relay {
    /// A relay to `url` with quick retries: 50 ms initial back-off, 1 s cap, 20 attempts.
    fn new(name: &str, url: &str) -> Relay {
        Relay {
            name: name.to_owned(),
            url: url.to_owned(),
            timeout_secs: 5,
            concurrency: 8,
            secret: None,
            filters: String::new(),
            initial_backoff_ms: 50,
            max_backoff_secs: 1,
            max_attempts: 20,
        }
    }

    fn timeout_secs(mut self, secs: u64) -> Relay {
        self.timeout_secs = secs;
        self
    }

    fn concurrency(mut self, n: usize) -> Relay {
        self.concurrency = n;
        self
    }

    fn secret(mut self, secret: &str) -> Relay {
        self.secret = Some(secret.to_owned());
        self
    }

    fn filter(mut self, line: &str) -> Relay {
        self.filters.push_str(line);
        self.filters.push('\n');
        self
    }

    fn retry(mut self, initial_backoff_ms: u64, max_backoff_secs: u64, max_attempts: u32) -> Relay {
        self.initial_backoff_ms = initial_backoff_ms;
        self.max_backoff_secs = max_backoff_secs;
        self.max_attempts = max_attempts;
        self
    }

    fn toml(&self) -> String {
        let mut text = format!(
            "[[sinks]]\nname = \"{}\"\nkind = \"http\"\nurl = \"{}\"\ntimeout_secs = {}\nconcurrency = {}\n",
            self.name, self.url, self.timeout_secs, self.concurrency
        );
        if let Some(secret) = &self.secret {
            text.push_str(&format!("secret = \"{secret}\"\n"));
        }
        text.push_str(&self.filters);
        text.push_str(&format!(
            "[sinks.retry]\ninitial_backoff_ms = {}\nmax_backoff_secs = {}\nmax_attempts = {}\n\n",
            self.initial_backoff_ms, self.max_backoff_secs, self.max_attempts
        ));
        text
    }
}

/// A daemon config with these relays and no stdout sink.
fn relay_settings(relays: &[Relay]) -> Settings {
    Settings {
        stdout_sink: false,
        extra_sinks: relays.iter().map(Relay::toml).collect(),
        ..Settings::default()
    }
}

/// The URL of a relay target at `addr`.
fn url_of(addr: std::net::SocketAddr) -> String {
    format!("http://{addr}{PATH}")
}

/// Sends `delivery` and asserts kirim.dev is told "accepted".
async fn send_accepted(client: &mut Client, delivery: &Delivery, what: &str) -> Reply {
    let reply = client.send(delivery).await;
    reply.expect(200, json!({"status": "accepted"}), what);
    reply
}

/// What a stopped daemon's store still holds for each sink.
struct Leftovers {
    queues: HashMap<String, Vec<QueueEntry>>,
    dead: HashMap<String, Vec<DeadLetter>>,
}

impl Leftovers {
    fn queue(&self, sink: &str) -> &[QueueEntry] {
        &self.queues[sink]
    }

    fn dead(&self, sink: &str) -> &[DeadLetter] {
        &self.dead[sink]
    }

    /// Asserts `sink` owes nothing and gave up on nothing.
    #[track_caller]
    fn assert_clean(&self, sink: &str) {
        let queued: Vec<u64> = self.queue(sink).iter().map(|e| e.seq).collect();
        assert!(
            queued.is_empty(),
            "sink {sink} still has events queued after every one was acknowledged: seqs {queued:?}"
        );
        let dead: Vec<String> = self.dead(sink).iter().map(dead_summary).collect();
        assert!(dead.is_empty(), "sink {sink} has dead letters: {dead:?}");
    }
}

/// Opens the store of the stopped `daemon` and reads each sink's queue and dead letters.
async fn leftovers(daemon: &Daemon, sinks: &[&str]) -> Leftovers {
    let names = sinks.iter().map(|s| (*s).to_owned()).collect();
    let store = Store::open(&daemon.store_path(), names)
        .unwrap_or_else(|e| panic!("cannot open the stopped daemon's store: {e}"));
    let mut queues = HashMap::new();
    let mut dead = HashMap::new();
    for sink in sinks {
        let queue = store
            .embedded()
            .expect("an embedded store")
            .queue(sink, 0, 1000)
            .await
            .expect("read a sink's queue");
        let letters = store
            .dead_letters(sink, 0, 100)
            .await
            .expect("read a sink's dead letters");
        queues.insert((*sink).to_owned(), queue);
        dead.insert((*sink).to_owned(), letters);
    }
    store.close().await.expect("close the store");
    Leftovers { queues, dead }
}

fn dead_summary(letter: &DeadLetter) -> String {
    format!(
        "{} after {} attempts: {:?}",
        letter.event.meta.event_id.as_deref().unwrap_or("-"),
        letter.state.attempts,
        letter.state.last_error
    )
}

/// Milliseconds between two instants (negative when `to` is earlier).
fn ms(from: Instant, to: Instant) -> i128 {
    if to >= from {
        to.duration_since(from).as_millis() as i128
    } else {
        -(from.duration_since(to).as_millis() as i128)
    }
}

/// How many requests each event got.
fn count_by_event(hits: &[Hit]) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for hit in hits {
        *counts.entry(hit.event_id().to_owned()).or_insert(0) += 1;
    }
    counts
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_event_is_relayed_once_byte_for_byte_with_its_headers_and_a_fresh_signature() {
    let signed = Target::start().await;
    let plain = Target::start().await;
    let settings = relay_settings(&[
        Relay::new("signed", &signed.url()).secret(SINK_SECRET),
        Relay::new("plain", &plain.url()),
    ]);
    let dir = temp_dir();
    let mut daemon = Daemon::start(dir.path(), &settings).await;
    let mut client = daemon.client();

    let started = now();
    let all = fixtures::all();
    let mut sent = Vec::new();
    for fixture in &all {
        let delivery = fixture.signed_now();
        send_accepted(&mut client, &delivery, &fixture.name).await;
        sent.push((fixture.clone(), delivery));
    }
    let ids: Vec<String> = all.iter().map(|f| f.event_id().to_owned()).collect();
    signed.wait_acknowledged(&ids).await;
    plain.wait_acknowledged(&ids).await;
    daemon.stop_gracefully().await;
    let finished = now();

    for (sink, target) in [("signed", &signed), ("plain", &plain)] {
        let hits = target.hits();
        assert_eq!(
            hits.len(),
            all.len(),
            "sink {sink}: one request per accepted event; the target received:\n{}",
            target.summary()
        );
        for (fixture, delivery) in &sent {
            let name = &fixture.name;
            let mine: Vec<&Hit> = hits
                .iter()
                .filter(|h| h.event_id() == fixture.event_id())
                .collect();
            assert_eq!(
                mine.len(),
                1,
                "sink {sink}: {name} relayed exactly once; the target received:\n{}",
                target.summary()
            );
            let hit = mine[0];
            assert_eq!(hit.method, "POST", "sink {sink}: {name} method");
            assert_eq!(hit.path, PATH, "sink {sink}: {name} path");
            let file = std::fs::read(&fixture.file).expect("read the fixture file");
            assert!(
                hit.body[..] == file[..],
                "sink {sink}: {name}'s body must be byte-identical to {}; relayed:\n{}",
                fixture.file.display(),
                String::from_utf8_lossy(&hit.body)
            );
            assert_eq!(
                hit.header("content-type"),
                Some("application/json"),
                "sink {sink}: {name} content-type"
            );
            for header in [
                "X-Kirim-Source",
                "X-Kirim-Event",
                "X-Kirim-Event-Id",
                "X-Kirim-Delivery-Id",
            ] {
                assert_eq!(
                    hit.header(header),
                    delivery.header(header),
                    "sink {sink}: {name}'s original {header} is passed on as is"
                );
                assert_eq!(
                    hit.header_count(header),
                    1,
                    "sink {sink}: {name} one {header}"
                );
            }
            assert_eq!(
                hit.header("x-kirimhook-attempt"),
                Some("1"),
                "sink {sink}: {name} X-Kirimhook-Attempt"
            );
            assert_eq!(
                hit.header("x-kirim-signature-256"),
                None,
                "sink {sink}: {name}: kirim.dev's own signature is not passed on"
            );
        }
    }
    let f9 = signed.hits_for(fixtures::get("f9").event_id());
    assert_eq!(
        f9[0].header("x-kirim-source"),
        Some("kirimdev"),
        "F9's X-Kirim-Source is passed on as kirim.dev sent it"
    );

    let sink_secret = [SigningSecret::new("sink", SINK_SECRET)];
    let kirim_secrets = [
        SigningSecret::new("sec_A", SECRET_A),
        SigningSecret::new("sec_B", SECRET_B),
    ];
    for hit in signed.hits() {
        let id = hit.event_id();
        assert_eq!(
            hit.header_count("x-kirim-signature"),
            1,
            "{id}: one signature"
        );
        let header = hit
            .header("x-kirim-signature")
            .unwrap_or_else(|| panic!("{id}: the signed sink sent no X-Kirim-Signature: {hit:?}"));
        let verified =
            signature::verify(Some(header.as_bytes()), &hit.body, &sink_secret, now(), 300)
                .unwrap_or_else(|e| {
                    panic!(
                "{id}: the relay's signature {header:?} does not verify with the sink secret: {e}"
            )
                });
        assert!(
            (started - 1..=finished + 1).contains(&verified.timestamp()),
            "{id}: signed at t={} but relayed between {started} and {finished}",
            verified.timestamp()
        );
        assert!(
            signature::verify(Some(header.as_bytes()), &hit.body, &kirim_secrets, now(), 0)
                .is_err(),
            "{id}: the relay must sign with the sink secret, not kirim.dev's secret A or B"
        );
    }
    for hit in plain.hits() {
        assert_eq!(
            hit.header("x-kirim-signature"),
            None,
            "{}: a sink without a secret sends no signature",
            hit.event_id()
        );
    }

    let store = leftovers(&daemon, &["signed", "plain"]).await;
    store.assert_clean("signed");
    store.assert_clean("plain");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_attempts_are_retried_until_delivered() {
    let app = Target::start().await;
    let late_addr = refused_addr();
    let settings = relay_settings(&[
        Relay::new("app", &app.url())
            .timeout_secs(1)
            .retry(50, 2, 10),
        Relay::new("late", &url_of(late_addr))
            .timeout_secs(1)
            .retry(50, 1, 100),
    ]);
    let dir = temp_dir();
    let mut daemon = Daemon::start(dir.path(), &settings).await;
    let mut client = daemon.client();

    let cases = [
        ("500", Plan::status(500).with_body("internal error")),
        ("503", Plan::status(503)),
        ("429", Plan::status(429).with_header("Retry-After", "1")),
        ("timeout", Plan::ok().after(Duration::from_millis(2500))),
    ];
    let mut ids = Vec::new();
    for (case, plan) in &cases {
        let id = new_event_id();
        app.plan_for(&id, [plan.clone()]);
        send_accepted(&mut client, &kirim_event(&id), case).await;
        ids.push(id);
    }
    for (id, (case, _)) in ids.iter().zip(&cases) {
        let what = format!("the retry of the {case} event to be acknowledged");
        app.wait_until(&what, |hits| {
            let mine: Vec<&Hit> = hits.iter().filter(|h| h.event_id() == id).collect();
            (mine.len() >= 2 && mine[1].acknowledged()).then_some(())
        })
        .await;
    }

    // The "late" relay refuses connections: wait until the daemon noticed and paused that sink
    // (a refused connection counts no attempt against the events), then bring it up.
    crate::brokers::wait_paused(&daemon, "late").await;
    let late = Target::start_on(late_addr).await;
    let up = Instant::now();
    late.wait_acknowledged(&ids).await;
    let late_took = Instant::now() - up;
    daemon.stop_gracefully().await;

    let mut figures = Vec::new();
    for (id, (case, _)) in ids.iter().zip(&cases) {
        let hits = app.hits_for(id);
        let attempts: Vec<Option<u32>> = hits.iter().map(Hit::attempt).collect();
        assert_eq!(
            attempts,
            vec![Some(1), Some(2)],
            "the {case} event: one failed attempt, then one retry, X-Kirimhook-Attempt counting up; target:\n{}",
            app.summary()
        );
        let (first, second) = (&hits[0], &hits[1]);
        let gap = ms(first.arrived, second.arrived);
        figures.push(format!("{case}: retry {gap} ms after the first request"));
        match *case {
            "429" => {
                let (answered, status) = first.answered.expect("the 429 was answered");
                assert_eq!(status, 429);
                let wait = ms(answered, second.arrived);
                assert!(
                    wait >= 950,
                    "Retry-After: 1 must be honoured: the retry came {wait} ms after the 429 (back-off alone is at most 50 ms)"
                );
                figures.push(format!("429: retry {wait} ms after the 429 answer"));
            }
            "timeout" => {
                assert!(
                    (950..2400).contains(&gap),
                    "a request unanswered after timeout_secs = 1 is abandoned after ~1 s and retried (before the target's late answer at 2.5 s); retried after {gap} ms"
                );
            }
            _ => assert_eq!(
                first.answered.map(|a| a.1),
                Some(case.parse().expect("a status"))
            ),
        }
    }
    for id in &ids {
        let hits = late.hits_for(id);
        assert_eq!(
            hits.len(),
            1,
            "a refused connection never reached the late target, which then got each event once; target:\n{}",
            late.summary()
        );
        let attempt = hits[0].attempt().unwrap_or(0);
        assert_eq!(
            attempt, 1,
            "a refused connection delivers nothing and counts no attempt (the sink is paused instead): X-Kirimhook-Attempt at the late target should be 1"
        );
        figures.push(format!("late: {id} delivered on attempt {attempt}"));
    }
    eprintln!(
        "relay retries: {}; late target up -> all delivered in {} ms",
        figures.join("; "),
        late_took.as_millis()
    );

    let store = leftovers(&daemon, &["app", "late"]).await;
    store.assert_clean("app");
    store.assert_clean("late");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn permanent_failures_and_exhausted_retries_are_dead_lettered() {
    let app = Target::start().await;
    let settings = relay_settings(&[Relay::new("app", &app.url()).retry(50, 1, 3)]);
    let dir = temp_dir();
    let mut daemon = Daemon::start(dir.path(), &settings).await;
    let mut client = daemon.client();

    let rejected = new_event_id();
    let poisoned = new_event_id();
    app.always_for(
        &rejected,
        Plan::status(400).with_body(r#"{"error":"unknown contact"}"#),
    );
    // Slow failures: the poisoned event's three attempts take at least 1.5 s, long enough to
    // show that other events are delivered meanwhile.
    app.always_for(
        &poisoned,
        Plan::status(500)
            .with_body("database unavailable: connection pool exhausted")
            .after(Duration::from_millis(500)),
    );
    let rejected_delivery = kirim_event(&rejected);
    let poisoned_delivery = kirim_event(&poisoned);
    send_accepted(
        &mut client,
        &rejected_delivery,
        "the event the target rejects",
    )
    .await;
    send_accepted(
        &mut client,
        &poisoned_delivery,
        "the event that always fails",
    )
    .await;
    app.wait_until("the first attempt of the failing event", |hits| {
        hits.iter().any(|h| h.event_id() == poisoned).then_some(())
    })
    .await;

    let others: Vec<String> = (0..10).map(|_| new_event_id()).collect();
    for id in &others {
        send_accepted(&mut client, &kirim_event(id), "an ordinary event").await;
    }
    app.wait_acknowledged(&others).await;
    let others_done = app
        .hits()
        .iter()
        .filter(|h| others.iter().any(|id| id == h.event_id()))
        .filter_map(|h| h.answered.map(|a| a.0))
        .max()
        .expect("the others were answered");
    let poisoned_hits = app.wait_answered(&poisoned, 3).await;
    daemon.stop_gracefully().await;

    let rejected_hits = app.hits_for(&rejected);
    assert_eq!(
        rejected_hits.len(),
        1,
        "a 400 is not retried: the target sees the event once; target:\n{}",
        app.summary()
    );
    let attempts: Vec<Option<u32>> = app.hits_for(&poisoned).iter().map(Hit::attempt).collect();
    assert_eq!(
        attempts,
        vec![Some(1), Some(2), Some(3)],
        "max_attempts = 3: three attempts, then no more; target:\n{}",
        app.summary()
    );
    let last_failure = poisoned_hits[2].answered.expect("answered").0;
    assert!(
        others_done < last_failure,
        "other events flow while one event is being retried: they were all acknowledged {} ms after the failing event's last attempt",
        ms(last_failure, others_done)
    );
    let counts = count_by_event(&app.hits());
    for id in &others {
        assert_eq!(counts.get(id), Some(&1), "{id}: delivered once");
    }

    let store = leftovers(&daemon, &["app"]).await;
    let dead: HashMap<&str, &DeadLetter> = store
        .dead("app")
        .iter()
        .map(|d| (d.event.meta.event_id.as_deref().unwrap_or("-"), d))
        .collect();
    assert_eq!(
        dead.len(),
        2,
        "exactly the rejected and the exhausted event are dead letters: {:?}",
        store
            .dead("app")
            .iter()
            .map(dead_summary)
            .collect::<Vec<_>>()
    );
    let letter = dead
        .get(rejected.as_str())
        .unwrap_or_else(|| panic!("the 400 event is not a dead letter"));
    assert_eq!(letter.state.attempts, 1, "{}", dead_summary(letter));
    let error = letter.state.last_error.as_ref().expect("a last error");
    assert_eq!(error.status, Some(400), "{}", dead_summary(letter));
    assert!(
        error.message.contains("unknown contact"),
        "the dead letter keeps an excerpt of the answer: {}",
        dead_summary(letter)
    );
    assert_eq!(
        letter.event.body, rejected_delivery.body,
        "dead letter body"
    );

    let letter = dead
        .get(poisoned.as_str())
        .unwrap_or_else(|| panic!("the exhausted event is not a dead letter"));
    assert_eq!(letter.state.attempts, 3, "{}", dead_summary(letter));
    let error = letter.state.last_error.as_ref().expect("a last error");
    assert_eq!(error.status, Some(500), "{}", dead_summary(letter));
    assert!(
        error
            .message
            .contains("database unavailable: connection pool exhausted"),
        "the dead letter keeps an excerpt of the answer: {}",
        dead_summary(letter)
    );
    assert_eq!(
        letter.event.body, poisoned_delivery.body,
        "dead letter body"
    );
    assert!(
        store.queue("app").is_empty(),
        "nothing left queued: {:?}",
        store.queue("app")
    );
}

/// Deliveries sent while the relay is down.
const WHILE_DOWN: usize = 50;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_down_relay_does_not_slow_the_receive_path_and_catches_up() {
    let addr = refused_addr();
    let settings = relay_settings(&[Relay::new("app", &url_of(addr))
        .timeout_secs(2)
        .retry(50, 1, 100)]);
    let dir = temp_dir();
    let mut daemon = Daemon::start(dir.path(), &settings).await;
    let mut client = daemon.client();

    let ids: Vec<String> = (0..WHILE_DOWN).map(|_| new_event_id()).collect();
    let mut slowest = Duration::ZERO;
    for id in &ids {
        let delivery = kirim_event(id);
        let sent = Instant::now();
        send_accepted(&mut client, &delivery, "a delivery while the relay is down").await;
        let took = sent.elapsed();
        assert!(
            took < Duration::from_secs(1),
            "kirim.dev waited {} ms for an answer while the relay was down",
            took.as_millis()
        );
        slowest = slowest.max(took);
    }
    crate::brokers::wait_paused(&daemon, "app").await;

    // The service comes up still warming up: its first two answers are 503.
    let target = Target::start_on(addr).await;
    target.plan(Plan::status(503).with_body("warming up"));
    target.plan(Plan::status(503).with_body("warming up"));
    let up = Instant::now();
    target.wait_acknowledged(&ids).await;
    let caught_up = up.elapsed();
    daemon.stop_gracefully().await;

    let counts = count_by_event(&target.hits());
    for id in &ids {
        assert!(
            counts.get(id).is_some_and(|&n| n >= 1),
            "{id} never arrived"
        );
    }
    let extra = target.hits().len() - ids.len();
    eprintln!(
        "relay down: slowest answer to kirim.dev {} ms; all {WHILE_DOWN} relayed {} ms after the target came up; extra requests: {extra}",
        slowest.as_millis(),
        caught_up.as_millis()
    );
    leftovers(&daemon, &["app"]).await.assert_clean("app");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_relay_does_not_hold_up_a_healthy_one() {
    let broken = Target::start().await;
    // Slow and failing: every attempt ties up a connection for 4 s, then fails.
    broken.set_default(Plan::status(503).after(Duration::from_secs(4)));
    let healthy = Target::start().await;
    let settings = relay_settings(&[
        Relay::new("broken", &broken.url())
            .timeout_secs(10)
            .concurrency(2)
            .retry(50, 1, 100),
        Relay::new("healthy", &healthy.url()),
    ]);
    let dir = temp_dir();
    let daemon = Daemon::start(dir.path(), &settings).await;
    let mut client = daemon.client();

    let mut sent_at = HashMap::new();
    let ids: Vec<String> = (0..30).map(|_| new_event_id()).collect();
    for id in &ids {
        send_accepted(&mut client, &kirim_event(id), "an event for both relays").await;
        sent_at.insert(id.clone(), Instant::now());
    }
    healthy.wait_acknowledged(&ids).await;

    let hits = healthy.hits();
    let mut slowest = 0;
    for id in &ids {
        let first = hits
            .iter()
            .find(|h| h.event_id() == id)
            .expect("acknowledged, so received");
        let lag = ms(sent_at[id], first.arrived);
        slowest = slowest.max(lag);
        assert!(
            lag < 2000,
            "{id} reached the healthy relay {lag} ms after it was accepted"
        );
    }
    let counts = count_by_event(&hits);
    assert!(
        ids.iter().all(|id| counts.get(id) == Some(&1)),
        "the healthy relay got each event once: {counts:?}"
    );
    let broken_hits = broken.hits();
    assert!(
        !broken_hits.is_empty() && broken_hits.iter().all(|h| !h.acknowledged()),
        "the broken relay was tried and never succeeded"
    );
    eprintln!(
        "failing relay: healthy got all 30, slowest {slowest} ms after acceptance; broken got {} requests meanwhile",
        broken_hits.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filters_choose_which_events_a_relay_gets() {
    let everything = Target::start().await;
    let contacts = Target::start().await;
    let phone = Target::start().await;
    let kirim = Target::start().await;
    let settings = relay_settings(&[
        Relay::new("everything", &everything.url()),
        Relay::new("contacts", &contacts.url()).filter(r#"events = ["contact.*"]"#),
        Relay::new("phone", &phone.url())
            .filter(&format!(r#"phone_number_ids = ["{PHONE_NUMBER_ID}"]"#)),
        Relay::new("kirim", &kirim.url()).filter(r#"sources = ["kirim"]"#),
    ]);
    let dir = temp_dir();
    let mut daemon = Daemon::start(dir.path(), &settings).await;
    let mut client = daemon.client();

    let all = fixtures::all();
    let mut names: HashMap<String, String> = HashMap::new();
    for fixture in &all {
        send_accepted(&mut client, &fixture.signed_now(), &fixture.name).await;
        names.insert(fixture.event_id().to_owned(), fixture.name.clone());
    }
    // F1 for another business number, with a new message id so that it is not a duplicate.
    let f1 = fixtures::get("f1");
    let wamid = format!("wamid.RELAYTEST{}", &new_event_id()[4..]);
    let body = String::from_utf8(f1.body.clone())
        .expect("F1 is UTF-8")
        .replace(PHONE_NUMBER_ID, "109283746509999")
        .replace(f1.event_id(), &wamid);
    assert!(body.contains("109283746509999") && body.contains(&wamid));
    let other_phone = f1
        .original()
        .with_body(body)
        .with_header("X-Kirim-Event-Id", &wamid)
        .with_header("X-Kirim-Delivery-Id", &new_delivery_id())
        .signed(&["A"], now());
    send_accepted(&mut client, &other_phone, "F1 for another phone number").await;
    names.insert(wamid.clone(), "other-phone".into());

    let every_id: Vec<String> = names.keys().cloned().collect();
    everything.wait_acknowledged(&every_id).await;
    let expect = |list: &[&str]| -> Vec<String> {
        let mut v: Vec<String> = list.iter().map(|s| (*s).to_owned()).collect();
        v.sort();
        v
    };
    let cases = [
        (&contacts, "contacts", expect(&["f7", "f8", "f9"])),
        (&phone, "phone", expect(&["f1", "f2", "f3", "f4"])),
        (&kirim, "kirim", expect(&["f5", "f6", "f7", "f8", "f9"])),
    ];
    for (target, _, wanted) in &cases {
        let ids: Vec<String> = names
            .iter()
            .filter(|(_, name)| wanted.contains(name))
            .map(|(id, _)| id.clone())
            .collect();
        target.wait_acknowledged(&ids).await;
    }
    daemon.stop_gracefully().await;

    let got = |target: &Target| -> Vec<String> {
        let mut v: Vec<String> = target
            .hits()
            .iter()
            .map(|h| {
                names
                    .get(h.event_id())
                    .cloned()
                    .unwrap_or_else(|| format!("unknown {}", h.event_id()))
            })
            .collect();
        v.sort();
        v
    };
    let mut all_names: Vec<String> = names.values().cloned().collect();
    all_names.sort();
    assert_eq!(
        got(&everything),
        all_names,
        "a relay without filters gets every event, F1 for the other number included"
    );
    for (target, sink, wanted) in &cases {
        assert_eq!(&got(target), wanted, "sink {sink}: the events it received");
    }
    let store = leftovers(&daemon, &["everything", "contacts", "phone", "kirim"]).await;
    for sink in ["everything", "contacts", "phone", "kirim"] {
        store.assert_clean(sink);
    }
}

/// Events in the kill -9 test.
const KILL_EVENTS: usize = 100;
/// The relay's concurrency in the kill -9 test.
const KILL_CONCURRENCY: usize = 4;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_while_relaying_loses_nothing_and_resends_only_what_was_in_flight() {
    let target = Target::start().await;
    target.set_default(Plan::ok().after(Duration::from_millis(50)));
    let settings = relay_settings(&[Relay::new("app", &target.url())
        .concurrency(KILL_CONCURRENCY)
        .retry(50, 1, 20)]);
    let dir = temp_dir();
    let mut daemon = Daemon::start(dir.path(), &settings).await;

    let ids: Vec<String> = (0..KILL_EVENTS).map(|_| new_event_id()).collect();
    let mut senders = JoinSet::new();
    for share in ids.chunks(KILL_EVENTS.div_ceil(4)) {
        let deliveries: Vec<Delivery> = share.iter().map(|id| kirim_event(id)).collect();
        let mut client = Client::new(daemon.addr);
        senders.spawn(async move {
            for delivery in &deliveries {
                send_accepted(&mut client, delivery, "an event of the burst").await;
            }
        });
    }
    while let Some(done) = senders.join_next().await {
        done.expect("a sender task panicked");
    }
    let acknowledged = |hits: &[Hit]| -> HashSet<String> {
        hits.iter()
            .filter(|h| h.acknowledged())
            .map(|h| h.event_id().to_owned())
            .collect()
    };
    target
        .wait_until("30 events acknowledged before the kill", |hits| {
            (acknowledged(hits).len() >= 30).then_some(())
        })
        .await;
    let kill_started = Instant::now();
    daemon.kill9().await;
    let at_kill = target.hits();
    let acked_before: HashSet<String> = at_kill
        .iter()
        .filter(|h| h.acknowledged() && h.answered.is_some_and(|a| a.0 < kill_started))
        .map(|h| h.event_id().to_owned())
        .collect();
    let in_flight = at_kill
        .iter()
        .filter(|h| h.answered.is_none_or(|a| a.0 >= kill_started))
        .count();
    assert!(
        acked_before.len() < KILL_EVENTS,
        "the relay had already delivered everything before the kill; the test proves nothing (slow the target down)"
    );

    let mut daemon = daemon.restart(&settings).await;
    let restarted = Instant::now();
    target.wait_acknowledged(&ids).await;
    let caught_up = restarted.elapsed();
    daemon.stop_gracefully().await;

    let hits = target.hits();
    let counts = count_by_event(&hits);
    for id in &ids {
        assert!(
            hits.iter().any(|h| h.event_id() == id && h.acknowledged()),
            "{id} was accepted but never reached the relay"
        );
    }
    let resent: Vec<&String> = acked_before
        .iter()
        .filter(|id| {
            hits.iter()
                .any(|h| h.event_id() == id.as_str() && h.arrived >= kill_started)
        })
        .collect();
    let duplicates: usize = counts.values().map(|n| n - 1).sum();
    eprintln!(
        "kill -9 while relaying: {} of {KILL_EVENTS} acknowledged before the kill, {in_flight} requests in flight at the kill; after the restart {} resent of those acknowledged, {duplicates} duplicate requests in all, caught up {} ms after the restart",
        acked_before.len(),
        resent.len(),
        caught_up.as_millis()
    );
    assert!(
        resent.len() <= KILL_CONCURRENCY * 3,
        "events the relay had acknowledged before the kill were sent again: {} (at most {} expected: those in flight and not yet recorded)",
        resent.len(),
        KILL_CONCURRENCY * 3
    );
    leftovers(&daemon, &["app"]).await.assert_clean("app");
}
