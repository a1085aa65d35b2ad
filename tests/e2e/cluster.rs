//! Several instances on one PostgreSQL database (`[store] engine = "postgres"`), as a load
//! balancer would spread kirim.dev's deliveries: a retry that lands on the other instance is a
//! duplicate, concurrent copies are accepted once, deliveries are shared and taken over when an
//! instance dies, and a database outage answers 503 without losing anything acknowledged.
//!
//! Real PostgreSQL from `KIRIMHOOK_TEST_POSTGRES_URL` (each test in its own schema); without
//! it the tests say they were skipped. Counts and timings worth knowing are printed to stderr
//! (`cargo test --test e2e cluster -- --nocapture`).

use std::collections::HashSet;
use std::time::{Duration, Instant};

use serde_json::json;
use tokio::task::JoinSet;

use crate::admin::{get, poll};
use crate::daemon::{temp_dir, Daemon, PostgresStore, Settings};
use crate::fixtures::{kirim_event, new_event_id, Delivery};
use crate::http::Client;
use crate::proxy::{postgres_addr, via, Proxy};
use crate::services::{postgres_url, PgSchema};
use crate::target::{Plan, Target};

/// The lease of every test here (the smallest allowed): a dead instance's claims are taken
/// over after this.
const LEASE_SECS: u64 = 5;

/// A `[[sinks]]` table of kind `http` named `relay` to `url`, with quick retries.
fn relay(url: &str, timeout_secs: u64) -> String {
    format!(
        "[[sinks]]\nname = \"relay\"\nkind = \"http\"\nurl = \"{url}\"\ntimeout_secs = {timeout_secs}\n\
         concurrency = 8\n[sinks.retry]\ninitial_backoff_ms = 50\nmax_backoff_secs = 1\nmax_attempts = 50\n\n"
    )
}

/// A daemon on the PostgreSQL schema at `url`, relaying to `target`, with or without stdout.
fn settings(url: &str, schema: &PgSchema, target: &str, stdout: bool) -> Settings {
    Settings {
        stdout_sink: stdout,
        extra_sinks: relay(target, 5),
        postgres: Some(PostgresStore {
            url: url.to_owned(),
            schema: schema.name().to_owned(),
            lease_secs: LEASE_SECS,
        }),
        ..Settings::default()
    }
}

/// Waits until the relay's queue is empty, as `GET /v1/status` of `daemon` says.
async fn wait_relay_drained(daemon: &Daemon) {
    poll("the relay's queue to drain", || async {
        let status = get(daemon, "/v1/status").await.json();
        let queued = status["sinks"]
            .as_array()
            .map(|sinks| {
                sinks
                    .iter()
                    .map(|s| s["queued"].as_u64().unwrap_or(u64::MAX))
                    .fold(0u64, u64::saturating_add)
            })
            .unwrap_or(u64::MAX);
        if queued == 0 {
            Ok(())
        } else {
            Err(status.to_string())
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_at_the_other_instance_is_a_duplicate_and_forwarded_once() {
    let Some(url) = postgres_url("cluster::a_retry_at_the_other_instance") else {
        return;
    };
    let schema = PgSchema::unique(&url, "cluster_retry");
    let target = Target::start().await;
    let (dir_a, dir_b) = (temp_dir(), temp_dir());
    let a = Daemon::start(dir_a.path(), &settings(&url, &schema, &target.url(), true)).await;
    let b = Daemon::start(dir_b.path(), &settings(&url, &schema, &target.url(), true)).await;

    let event_id = new_event_id();
    let first = kirim_event(&event_id);
    a.client().send(&first).await.expect(
        200,
        json!({"status": "accepted"}),
        "the first delivery, at A",
    );
    let retry = first.clone().retry(2, &["A"]);
    b.client().send(&retry).await.expect(
        200,
        json!({"status": "duplicate"}),
        "kirim.dev's retry, at B",
    );

    target
        .wait_acknowledged(std::slice::from_ref(&event_id))
        .await;
    wait_relay_drained(&a).await;
    assert_eq!(target.hits_for(&event_id).len(), 1, "{}", target.summary());
    let lines = a
        .event_ids()
        .into_iter()
        .chain(b.event_ids())
        .filter(|id| *id == event_id)
        .count();
    assert_eq!(lines, 1, "one stdout line over both instances");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copies_spread_over_two_instances_are_accepted_once() {
    let Some(url) = postgres_url("cluster::copies_spread_over_two_instances") else {
        return;
    };
    let schema = PgSchema::unique(&url, "cluster_copies");
    let target = Target::start().await;
    let (dir_a, dir_b) = (temp_dir(), temp_dir());
    let a = Daemon::start(dir_a.path(), &settings(&url, &schema, &target.url(), false)).await;
    let b = Daemon::start(dir_b.path(), &settings(&url, &schema, &target.url(), false)).await;
    let event_id = new_event_id();
    let original = kirim_event(&event_id);
    let mut sends = JoinSet::new();
    for i in 0..100u32 {
        let copy = original.clone().retry(i + 1, &["A"]);
        let addr = if i % 2 == 0 { a.addr } else { b.addr };
        sends.spawn(async move { Client::new(addr).send(&copy).await.json() });
    }
    let mut accepted = 0;
    let mut duplicate = 0;
    while let Some(reply) = sends.join_next().await {
        match reply.expect("a send task")["status"].as_str() {
            Some("accepted") => accepted += 1,
            Some("duplicate") => duplicate += 1,
            other => panic!("unexpected answer {other:?}"),
        }
    }
    assert_eq!((accepted, duplicate), (1, 99));
    target
        .wait_acknowledged(std::slice::from_ref(&event_id))
        .await;
    wait_relay_drained(&b).await;
    assert_eq!(target.hits_for(&event_id).len(), 1, "{}", target.summary());
}

/// Sends `deliveries` alternately to `addrs` from 8 concurrent senders, the way kirim.dev
/// retries: a refused connection or a 503 is tried again (on the next instance) until it is
/// answered 200. Returns the event ids answered 200 ("accepted", or "duplicate" when an
/// instance stored the event but died before its answer reached the sender).
async fn send_all(addrs: Vec<std::net::SocketAddr>, deliveries: Vec<Delivery>) -> HashSet<String> {
    let deliveries = std::sync::Arc::new(std::sync::Mutex::new(deliveries));
    let mut senders = JoinSet::new();
    for s in 0..8usize {
        let deliveries = deliveries.clone();
        let addrs = addrs.clone();
        senders.spawn(async move {
            let mut accepted = Vec::new();
            let mut turn = s;
            loop {
                let next = deliveries.lock().expect("lock").pop();
                let Some(delivery) = next else {
                    return accepted;
                };
                let deadline = Instant::now() + Duration::from_secs(60);
                loop {
                    turn += 1;
                    let addr = addrs[turn % addrs.len()];
                    let reply = Client::new(addr).try_send(&delivery).await;
                    match reply.map(|r| (r.status, r.json())) {
                        Some((200, body)) => {
                            assert!(
                                body["status"] == "accepted" || body["status"] == "duplicate",
                                "{body}"
                            );
                            accepted.push(delivery.event_id().to_owned());
                            break;
                        }
                        _ if Instant::now() < deadline => {
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                        other => panic!("never answered 200: {other:?}"),
                    }
                }
            }
        });
    }
    let mut accepted = HashSet::new();
    while let Some(ids) = senders.join_next().await {
        accepted.extend(ids.expect("a sender task"));
    }
    accepted
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_one_instance_under_load_loses_no_acknowledged_event() {
    let Some(url) = postgres_url("cluster::kill_9_of_one_instance") else {
        return;
    };
    let schema = PgSchema::unique(&url, "cluster_kill");
    let target = Target::start().await;
    // Slow answers keep deliveries in flight at the kill.
    target.set_default(Plan::ok().after(Duration::from_millis(20)));
    let (dir_a, dir_b) = (temp_dir(), temp_dir());
    let mut a = Daemon::start(dir_a.path(), &settings(&url, &schema, &target.url(), false)).await;
    let b = Daemon::start(dir_b.path(), &settings(&url, &schema, &target.url(), false)).await;
    let deliveries: Vec<Delivery> = (0..400).map(|_| kirim_event(&new_event_id())).collect();
    let sending = tokio::spawn(send_all(vec![a.addr, b.addr], deliveries));
    // Kill A once deliveries are flowing through it.
    target
        .wait_until("A to relay some events", |hits| {
            (hits.len() >= 50).then_some(())
        })
        .await;
    a.kill9().await;
    let started = Instant::now();
    let accepted = sending.await.expect("the senders");
    assert_eq!(accepted.len(), 400, "every event acknowledged");
    let ids: Vec<String> = accepted.into_iter().collect();
    target.wait_acknowledged(&ids).await;
    let hits = target.hits().len();
    eprintln!(
        "cluster kill -9: 400 acknowledged events all relayed, {} requests ({} repeated), \
         last one {:?} after the kill",
        hits,
        hits - 400,
        started.elapsed()
    );
    wait_relay_drained(&b).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_instances_claim_is_delivered_by_the_other_after_the_lease() {
    let Some(url) = postgres_url("cluster::a_killed_instances_claim") else {
        return;
    };
    let schema = PgSchema::unique(&url, "cluster_lease");
    let target = Target::start().await;
    let event_id = new_event_id();
    // The first attempt hangs (A is killed meanwhile); the second is answered at once.
    target.plan_for(
        &event_id,
        [Plan::ok().after(Duration::from_secs(30)), Plan::ok()],
    );
    let (dir_a, dir_b) = (temp_dir(), temp_dir());
    let mut a = Daemon::start(dir_a.path(), &settings(&url, &schema, &target.url(), false)).await;
    a.client().send(&kirim_event(&event_id)).await.expect(
        200,
        json!({"status": "accepted"}),
        "the event, at A",
    );
    target
        .wait_until("A's attempt to arrive", |hits| {
            hits.iter().any(|h| h.event_id() == event_id).then_some(())
        })
        .await;
    a.kill9().await;
    let killed = Instant::now();
    let b = Daemon::start(dir_b.path(), &settings(&url, &schema, &target.url(), false)).await;
    target
        .wait_acknowledged(std::slice::from_ref(&event_id))
        .await;
    let took = killed.elapsed();
    eprintln!("cluster lease: B delivered A's claimed event {took:?} after the kill (lease {LEASE_SECS} s)");
    assert_eq!(target.hits_for(&event_id).len(), 2, "{}", target.summary());
    wait_relay_drained(&b).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_outage_answers_503_and_loses_nothing_acknowledged() {
    let Some(url) = postgres_url("cluster::a_database_outage") else {
        return;
    };
    let schema = PgSchema::unique(&url, "cluster_outage");
    let proxy = Proxy::start(postgres_addr(&url)).await;
    let target = Target::start().await;
    let dir = temp_dir();
    let daemon = Daemon::start(
        dir.path(),
        &settings(&via(&url, proxy.addr), &schema, &target.url(), false),
    )
    .await;
    let mut acked = Vec::new();
    for _ in 0..20 {
        let event_id = new_event_id();
        daemon.client().send(&kirim_event(&event_id)).await.expect(
            200,
            json!({"status": "accepted"}),
            "before the outage",
        );
        acked.push(event_id);
    }
    proxy.cut();
    // While the database is unreachable: 503 with Retry-After, never 200.
    let mut refused = 0;
    for _ in 0..5 {
        let reply = daemon.client().send(&kirim_event(&new_event_id())).await;
        assert_eq!(reply.status, 503, "during the outage: {:?}", reply.json());
        assert!(reply.headers.contains_key("retry-after"));
        refused += 1;
    }
    let ready = get(&daemon, "/readyz").await;
    assert_eq!(ready.status, 503, "/readyz during the outage");
    proxy.restore();
    // Service resumes by itself.
    let event_id = new_event_id();
    let resumed = poll("admissions to resume", || {
        let delivery = kirim_event(&event_id);
        let daemon = &daemon;
        async move {
            let reply = daemon.client().send(&delivery).await;
            if reply.status == 200 {
                Ok(reply)
            } else {
                Err(format!("{} {}", reply.status, reply.body))
            }
        }
    })
    .await;
    assert_eq!(resumed.json(), json!({"status": "accepted"}));
    acked.push(event_id);
    target.wait_acknowledged(&acked).await;
    eprintln!("cluster outage: {refused} deliveries refused with 503 while the database was cut; all {} acknowledged events relayed", acked.len());
}
