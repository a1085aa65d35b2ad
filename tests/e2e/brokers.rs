//! What the sink tests share: waiting for a sink to pause as unreachable (the
//! [`relay`](crate::relay) tests too), and for the broker sinks' tests ([`nats`](crate::nats),
//! [`rabbitmq`](crate::rabbitmq), [`redis_stream`](crate::redis_stream)) checking a stopped
//! daemon's store for dead letters and leftovers, and the kill -9 under load driver
//! ([`kill_9_under_load`]), to which each broker's test gives only its sink and a count of what
//! its broker holds, and then reads the broker itself.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use tokio::task::JoinSet;

use kirimhook::store::Store;

use crate::admin::{get, poll, sample};
use crate::daemon::{temp_dir, Daemon, Settings, DEADLINE};
use crate::fixtures::{kirim_event, new_event_id, Delivery};
use crate::http::Client;

/// The log message of a sink that paused because it cannot reach its destination.
const UNREACHABLE: &str = "sink unreachable; pausing deliveries and probing with back-off";

/// Waits until `daemon` logged that its sink `sink` is unreachable and paused; fails after
/// [`DEADLINE`].
pub async fn wait_paused(daemon: &Daemon, sink: &str) {
    let paused = daemon
        .stderr
        .wait_for(|lines, _| {
            lines
                .iter()
                .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
                .any(|log| log["message"] == UNREACHABLE && log["sink"] == sink)
                .then_some(())
        })
        .await;
    assert!(
        paused.is_some(),
        "the sink {sink} did not pause as unreachable; stderr:\n{}",
        daemon.stderr_text()
    );
}

/// Opens the store of the stopped `daemon` and asserts that its sink `sink` has no dead letter
/// and nothing left in its queue.
pub async fn assert_nothing_dead_or_queued(daemon: &Daemon, sink: &str) {
    let store = Store::open(&daemon.store_path(), vec![sink.to_owned()])
        .unwrap_or_else(|e| panic!("cannot open the stopped daemon's store: {e}"));
    let dead = store
        .dead_letters(sink, 0, 100)
        .await
        .expect("read the dead letters");
    assert!(dead.is_empty(), "nothing is dead-lettered: {dead:?}");
    let queued = store
        .embedded()
        .expect("an embedded store")
        .queue(sink, 0, 100)
        .await
        .expect("the sink's queue");
    assert!(queued.is_empty(), "nothing is left queued: {queued:?}");
    store.close().await.expect("close the store");
}

/// How late the slow path of a kill -9 test passes the broker's answers (see
/// [`Proxy::start_slow`](crate::proxy::Proxy::start_slow)): an event is settled at least this
/// long after it reached the broker, so when the kill comes right after an acknowledgement, the
/// acknowledged events of the last moments are still in the sink's queue, and publishes the
/// broker has stored are most likely waiting for their acks.
pub const SLOW_ANSWERS: Duration = Duration::from_millis(50);

/// The event ids in the queue of the sink `sink` of the stopped `daemon`.
async fn queued_event_ids(daemon: &Daemon, sink: &str) -> HashSet<String> {
    let store = Store::open(&daemon.store_path(), vec![sink.to_owned()])
        .unwrap_or_else(|e| panic!("cannot open the killed daemon's store: {e}"));
    let queued = store
        .embedded()
        .expect("an embedded store")
        .queue_with_events(sink, 0, u64::MAX, LOAD)
        .await
        .expect("the sink's queue");
    store.close().await.expect("close the store");
    queued
        .into_iter()
        .filter_map(|(_, event)| event?.meta.event_id)
        .collect()
}

/// Deliveries the load offers: far more than are acknowledged before the kill, so that the
/// load is still running when it comes.
const LOAD: usize = 4000;
/// Concurrent senders.
const SENDERS: usize = 16;
/// Acknowledged events before the kill (at least).
const KILL_AFTER: usize = 300;
/// Messages in the broker before the kill (at least): the sink is publishing, not starting.
const PUBLISHED_BEFORE_KILL: usize = 100;

/// What [`kill_9_under_load`] sent and saw.
pub struct KillUnderLoad {
    /// The event ids answered 200 `accepted` before the kill.
    pub acked: HashSet<String>,
    /// Every event id a request was made for: the acknowledged ones, and those in flight at
    /// the kill (stored or not: either may be published).
    pub sent: HashSet<String>,
    /// How many messages the broker held right after the kill.
    pub in_broker_at_kill: usize,
    /// How many acknowledged events were still in the sink's queue (not settled) at the kill.
    pub queued_at_kill: usize,
    /// How many events the restarted daemon settled with the sink (`delivered_total`): the
    /// ones the broker did not have at the kill, and those it had but whose ack was lost.
    pub settled_after_restart: usize,
}

impl KillUnderLoad {
    /// Asserts that `published` (the event id of every message the broker holds, a copy as
    /// often as it is there) holds every acknowledged event and only events that were sent;
    /// returns the number of copies (messages beyond the first of their event).
    pub fn assert_published(&self, published: &[String]) -> usize {
        let mut counts: HashMap<&str, usize> = HashMap::new();
        for id in published {
            *counts.entry(id.as_str()).or_default() += 1;
        }
        let missing: Vec<&String> = self
            .acked
            .iter()
            .filter(|id| !counts.contains_key(id.as_str()))
            .collect();
        assert!(
            missing.is_empty(),
            "{} of {} acknowledged events are not in the broker after the restart: {missing:?}",
            missing.len(),
            self.acked.len()
        );
        let foreign: Vec<&&str> = counts
            .keys()
            .filter(|id| !self.sent.contains(**id))
            .collect();
        assert!(
            foreign.is_empty(),
            "the broker holds events never sent: {foreign:?}"
        );
        let copies = published.len() - counts.len();
        eprintln!(
            "kill -9 under load: {} events acknowledged before the kill ({} sent), {} of them \
             still queued; {} messages in the broker at the kill; {} settled after the restart; \
             {} messages at the end: {} events, {copies} copies",
            self.acked.len(),
            self.sent.len(),
            self.queued_at_kill,
            self.in_broker_at_kill,
            self.settled_after_restart,
            published.len(),
            counts.len()
        );
        copies
    }
}

/// The answer to one delivery of the load.
enum Answer {
    Accepted,
    /// Anything but 200 `accepted`: status and body.
    Refused(String),
    /// No answer: the daemon is gone.
    None,
}

/// Starts a daemon with `settings` (in a temp dir of its own), runs a load of [`LOAD`] unique
/// signed events from [`SENDERS`] concurrent senders, and kills it with SIGKILL once at least
/// [`KILL_AFTER`] were acknowledged and `in_broker` (how many messages the broker holds) says
/// that the sink `sink` is publishing ([`PUBLISHED_BEFORE_KILL`]). Asserts that the kill came while the load ran and with
/// acknowledged events still in the sink's queue (read from the killed daemon's store). Then restarts the daemon on the same store, waits
/// until the sink's queue is empty (with no dead letter), and stops it gracefully: the broker
/// then holds all that the daemon will ever publish, for the test to read.
pub async fn kill_9_under_load(
    settings: &Settings,
    sink: &str,
    mut in_broker: impl AsyncFnMut() -> usize,
) -> KillUnderLoad {
    let dir = temp_dir();
    let mut daemon = Daemon::start(dir.path(), settings).await;
    let acks = Arc::new(AtomicUsize::new(0));
    let deliveries: Vec<Delivery> = (0..LOAD).map(|_| kirim_event(&new_event_id())).collect();
    let mut senders = JoinSet::new();
    for share in deliveries.chunks(LOAD.div_ceil(SENDERS)) {
        let share = share.to_vec();
        let (client, acks) = (Client::new(daemon.addr), acks.clone());
        senders.spawn(async move {
            let mut answers = Vec::new();
            for delivery in share {
                let answer = match client.try_send(&delivery).await {
                    None => Answer::None,
                    Some(reply)
                        if reply.status == 200 && reply.json() == json!({"status": "accepted"}) =>
                    {
                        acks.fetch_add(1, Ordering::SeqCst);
                        Answer::Accepted
                    }
                    Some(reply) => Answer::Refused(format!("{} {}", reply.status, reply.body)),
                };
                let gone = matches!(answer, Answer::None);
                answers.push((delivery.event_id().to_owned(), answer));
                if gone {
                    break;
                }
            }
            answers
        });
    }
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        let (acked, published) = (acks.load(Ordering::SeqCst), in_broker().await);
        if acked >= KILL_AFTER && published >= PUBLISHED_BEFORE_KILL {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "waited {DEADLINE:?} for {KILL_AFTER} acknowledged events and \
             {PUBLISHED_BEFORE_KILL} in the broker: {acked} acknowledged, {published} in the \
             broker; stderr:\n{}",
            daemon.stderr_text()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    daemon.kill9().await;

    let mut outcome = KillUnderLoad {
        acked: HashSet::new(),
        sent: HashSet::new(),
        in_broker_at_kill: 0,
        queued_at_kill: 0,
        settled_after_restart: 0,
    };
    let mut refused = Vec::new();
    while let Some(answers) = senders.join_next().await {
        for (id, answer) in answers.expect("a sender task panicked") {
            match answer {
                Answer::Accepted => {
                    outcome.acked.insert(id.clone());
                }
                Answer::Refused(why) => refused.push(format!("{id}: {why}")),
                Answer::None => {}
            }
            outcome.sent.insert(id);
        }
    }
    outcome.in_broker_at_kill = in_broker().await;
    assert!(
        refused.is_empty(),
        "every distinct, validly signed event should be accepted; refused: {refused:?}"
    );
    assert!(
        outcome.acked.len() >= KILL_AFTER && outcome.sent.len() < LOAD,
        "the kill came after {} acknowledged events, with {} of {LOAD} sent: not while the load \
         ran; stderr:\n{}",
        outcome.acked.len(),
        outcome.sent.len(),
        daemon.stderr_text()
    );
    outcome.queued_at_kill = queued_event_ids(&daemon, sink)
        .await
        .intersection(&outcome.acked)
        .count();
    assert!(
        outcome.queued_at_kill > 0,
        "no acknowledged event was left in the sink's queue at the kill ({} acknowledged, {} \
         messages in the broker): the kill came with nothing left to publish",
        outcome.acked.len(),
        outcome.in_broker_at_kill
    );

    let mut daemon = daemon.restart(settings).await;
    let status = poll("the sink's queue to drain after the restart", || async {
        let status = get(&daemon, "/v1/status").await.json();
        let mine = status["sinks"]
            .as_array()
            .and_then(|sinks| sinks.iter().find(|s| s["name"] == sink))
            .cloned()
            .unwrap_or_default();
        if mine["queued"] == 0 {
            Ok(mine)
        } else {
            Err(format!("{status}\nstderr:\n{}", daemon.stderr_text()))
        }
    })
    .await;
    assert_eq!(status["dead_letters"], 0, "no dead letter: {status}");
    let delivered = format!("kirimhook_sink_delivered_total{{sink=\"{sink}\"}}");
    let metrics = get(&daemon, "/metrics").await.body;
    outcome.settled_after_restart = sample(&metrics, &delivered).unwrap_or_default() as usize;
    daemon.stop_gracefully().await;
    outcome
}
