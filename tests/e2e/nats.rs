//! The NATS JetStream sink over the real daemon and a real NATS server
//! (`KIRIMHOOK_TEST_NATS_URL`): every fixture published byte for byte with its metadata
//! headers and `Nats-Msg-Id`, a sender's retry not published again, filters, NATS taken
//! away (through a [`Proxy`]) and given back with nothing lost or dead-lettered, and a kill -9
//! under load after which every acknowledged event is in the stream once. Each test uses its
//! own stream and subject prefix ([`unique_name`]) and deletes its stream at the end (best
//! effort: a stream left by a failed test has a name no other test uses).
//!
//! The stream is read back message by message (JetStream's direct read by sequence), which
//! shows exactly what was stored: subject, headers and payload.

use std::collections::HashSet;
use std::time::Duration;

use async_nats::jetstream::{self, message::StreamMessage};
use serde_json::json;

use crate::brokers::{assert_nothing_dead_or_queued, kill_9_under_load, wait_paused, SLOW_ANSWERS};
use crate::daemon::{temp_dir, Daemon, Settings, DEADLINE};
use crate::fixtures::{self, sentinel, PHONE_NUMBER_ID};
use crate::proxy::{url_addr, Proxy};
use crate::services::{nats_url, unique_name};

/// One `[[sinks]]` table of kind `nats` publishing to `<prefix>.{source}.{type}` in the
/// stream `<prefix>` (created by the sink), with quick retries and `extra` lines verbatim.
fn nats_sink(name: &str, url: &str, prefix: &str, extra: &str) -> String {
    format!(
        "[[sinks]]\nname = \"{name}\"\nkind = \"nats\"\nurl = \"{url}\"\n\
         subject = \"{prefix}.{{source}}.{{type}}\"\nstream = \"{prefix}\"\ntimeout_secs = 5\n\
         {extra}\n[sinks.retry]\ninitial_backoff_ms = 50\nmax_backoff_secs = 1\n\n"
    )
}

/// A test's view of its stream.
struct TestStream {
    jetstream: jetstream::Context,
    name: String,
}

impl TestStream {
    async fn connect(url: &str, name: &str) -> TestStream {
        let client = async_nats::connect(url)
            .await
            .unwrap_or_else(|e| panic!("cannot connect to the NATS server at {url}: {e}"));
        TestStream {
            jetstream: jetstream::new(client),
            name: name.to_owned(),
        }
    }

    /// Every message in the stream, in stream order (empty while the stream does not exist).
    async fn messages(&self) -> Vec<StreamMessage> {
        let Ok(mut stream) = self.jetstream.get_stream(&self.name).await else {
            return Vec::new();
        };
        let state = &stream.info().await.expect("stream info").state;
        let (count, first, last) = (state.messages, state.first_sequence, state.last_sequence);
        let mut messages = Vec::new();
        if count == 0 {
            return messages;
        }
        for seq in first..=last {
            if let Ok(message) = stream.get_raw_message(seq).await {
                messages.push(message);
            }
        }
        messages
    }

    /// How many messages the stream holds (0 while it does not exist).
    async fn count(&self) -> usize {
        match self.jetstream.get_stream(&self.name).await {
            Ok(mut stream) => stream
                .info()
                .await
                .map_or(0, |info| info.state.messages as usize),
            Err(_) => 0,
        }
    }

    /// The stream's messages once one of them is `kirim-event-id` = `event_id`; fails after
    /// [`DEADLINE`].
    async fn wait_for_event(&self, event_id: &str) -> Vec<StreamMessage> {
        let deadline = tokio::time::Instant::now() + DEADLINE;
        loop {
            let messages = self.messages().await;
            if messages
                .iter()
                .any(|m| header(m, "kirim-event-id") == Some(event_id))
            {
                return messages;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{event_id} did not reach stream {} within {DEADLINE:?}; it holds {} messages",
                self.name,
                messages.len()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Deletes the stream, ignoring every failure.
    async fn delete(self) {
        let _ = self.jetstream.delete_stream(&self.name).await;
    }
}

fn header<'a>(message: &'a StreamMessage, name: &str) -> Option<&'a str> {
    message.headers.get(name).map(|v| v.as_str())
}

/// The settings of a daemon whose only sink is `sinks`.
fn settings(sinks: String) -> Settings {
    Settings {
        stdout_sink: false,
        extra_sinks: sinks,
        ..Settings::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_fixture_is_published_once_byte_for_byte_with_its_headers() {
    let test = "nats::every_fixture_is_published_once_byte_for_byte_with_its_headers";
    let Some(url) = nats_url(test) else {
        return;
    };
    let prefix = unique_name("nats_fixtures");
    let stream = TestStream::connect(&url, &prefix).await;
    let dir = temp_dir();
    let mut daemon =
        Daemon::start(dir.path(), &settings(nats_sink("bus", &url, &prefix, ""))).await;
    let mut client = daemon.client();

    let all = fixtures::all();
    let mut sent = Vec::new();
    for fixture in &all {
        let delivery = fixture.signed_now();
        client
            .send(&delivery)
            .await
            .expect(200, json!({"status": "accepted"}), &fixture.name);
        sent.push((fixture.clone(), delivery));
    }
    // kirim.dev retries each of them: the daemon answers duplicate and publishes nothing more.
    for (fixture, delivery) in &sent {
        let retry = delivery.clone().retry(2, &["A", "B"]);
        let reply = client.send(&retry).await;
        assert_eq!(
            reply.status, 200,
            "{} retried: {}",
            fixture.name, reply.body
        );
    }
    let last = sentinel();
    client
        .send(&last)
        .await
        .expect(200, json!({"status": "accepted"}), "sentinel");
    let mut messages = stream.wait_for_event(last.event_id()).await;
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while messages.len() < all.len() + 1 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
        messages = stream.messages().await;
    }
    daemon.stop_gracefully().await;
    let messages = stream.messages().await;

    assert_eq!(
        messages.len(),
        all.len() + 1,
        "one message per accepted event (no retry published again); got subjects {:?}",
        messages
            .iter()
            .map(|m| m.subject.to_string())
            .collect::<Vec<_>>()
    );
    for (fixture, delivery) in &sent {
        let name = &fixture.name;
        let mine: Vec<&StreamMessage> = messages
            .iter()
            .filter(|m| header(m, "kirim-event-id") == Some(fixture.event_id()))
            .collect();
        assert_eq!(mine.len(), 1, "{name} published exactly once");
        let message = mine[0];
        let file = std::fs::read(&fixture.file).expect("read the fixture file");
        assert!(
            message.payload[..] == file[..],
            "{name}: the payload must be byte-identical to {}; published:\n{}",
            fixture.file.display(),
            String::from_utf8_lossy(&message.payload)
        );
        let event_type = fixture.header("X-Kirim-Event");
        assert_eq!(
            message.subject.as_str(),
            format!("{prefix}.{}.{event_type}", fixture.source()),
            "{name} subject"
        );
        let expected = [
            ("kirim-event-id", Some(fixture.event_id())),
            ("kirim-event-type", Some(event_type)),
            ("kirim-source", Some(fixture.source())),
            ("kirim-delivery-id", delivery.header("X-Kirim-Delivery-Id")),
            ("kirim-dedupe-key", Some(fixture.dedupe_keys[0].as_str())),
            ("Nats-Msg-Id", Some(fixture.dedupe_keys[0].as_str())),
            (
                "kirim-phone-number-id",
                (fixture.source() == "meta").then_some(PHONE_NUMBER_ID),
            ),
        ];
        for (header_name, value) in expected {
            assert_eq!(header(message, header_name), value, "{name} {header_name}");
        }
        let received_at = header(message, "kirim-received-at")
            .unwrap_or_else(|| panic!("{name} has no kirim-received-at"));
        let at = humantime::parse_rfc3339(received_at)
            .unwrap_or_else(|e| panic!("{name} kirim-received-at {received_at:?}: {e}"));
        let age = std::time::SystemTime::now()
            .duration_since(at)
            .unwrap_or_default();
        assert!(
            age < Duration::from_secs(120),
            "{name} received {age:?} ago"
        );
        assert_eq!(
            received_at.len(),
            "2026-06-01T12:00:00.250Z".len(),
            "{received_at}"
        );
    }
    stream.delete().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filters_choose_which_events_are_published() {
    let test = "nats::filters_choose_which_events_are_published";
    let Some(url) = nats_url(test) else {
        return;
    };
    let prefix = unique_name("nats_filters");
    let stream = TestStream::connect(&url, &prefix).await;
    // concurrency = 1: published strictly in order, so once the sentinel is in the stream
    // every earlier event that matched is too.
    let sink = nats_sink(
        "kirim_only",
        &url,
        &prefix,
        "concurrency = 1\nsources = [\"kirim\"]\n",
    );
    let dir = temp_dir();
    let mut daemon = Daemon::start(dir.path(), &settings(sink)).await;
    let mut client = daemon.client();
    let all = fixtures::all();
    for fixture in &all {
        client.send(&fixture.signed_now()).await.expect(
            200,
            json!({"status": "accepted"}),
            &fixture.name,
        );
    }
    let last = sentinel();
    client
        .send(&last)
        .await
        .expect(200, json!({"status": "accepted"}), "sentinel");
    let messages = stream.wait_for_event(last.event_id()).await;
    daemon.stop_gracefully().await;

    let got: HashSet<&str> = messages
        .iter()
        .filter_map(|m| header(m, "kirim-event-id"))
        .collect();
    let mut wanted: HashSet<&str> = all
        .iter()
        .filter(|f| f.source() == "kirim")
        .map(|f| f.event_id())
        .collect();
    wanted.insert(last.event_id());
    assert_eq!(got, wanted, "only the kirim events, each once");
    assert_eq!(messages.len(), wanted.len(), "no event twice");
    stream.delete().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_down_and_back_loses_nothing_and_dead_letters_nothing() {
    let test = "nats::nats_down_and_back_loses_nothing_and_dead_letters_nothing";
    let Some(url) = nats_url(test) else {
        return;
    };
    let prefix = unique_name("nats_down");
    let stream = TestStream::connect(&url, &prefix).await;
    let proxy = Proxy::start(url_addr(&url, 4222)).await;
    // Few attempts: an outage misread as a failed attempt would soon dead-letter events.
    let sink = nats_sink("bus", &format!("nats://{}", proxy.addr), &prefix, "").replace(
        "max_backoff_secs = 1\n",
        "max_backoff_secs = 1\nmax_attempts = 3\n",
    );
    let dir = temp_dir();
    let mut daemon = Daemon::start(dir.path(), &settings(sink)).await;
    let mut client = daemon.client();

    let first = sentinel();
    client
        .send(&first)
        .await
        .expect(200, json!({"status": "accepted"}), "before the outage");
    stream.wait_for_event(first.event_id()).await;

    proxy.cut();
    let mut ids = vec![first.event_id().to_owned()];
    for i in 0..20 {
        let event = sentinel();
        client.send(&event).await.expect(
            200,
            json!({"status": "accepted"}),
            &format!("event {i} during the outage"),
        );
        ids.push(event.event_id().to_owned());
    }
    wait_paused(&daemon, "bus").await;
    proxy.restore();

    let deadline = tokio::time::Instant::now() + DEADLINE;
    let messages = loop {
        let messages = stream.messages().await;
        let got: HashSet<&str> = messages
            .iter()
            .filter_map(|m| header(m, "kirim-event-id"))
            .collect();
        if ids.iter().all(|id| got.contains(id.as_str())) {
            break messages;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "after NATS came back, {} of {} events reached the stream within {DEADLINE:?}; stderr:\n{}",
            got.len(),
            ids.len(),
            daemon.stderr_text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    daemon.stop_gracefully().await;
    assert_eq!(messages.len(), ids.len(), "every event exactly once");

    assert_nothing_dead_or_queued(&daemon, "bus").await;
    stream.delete().await;
}

/// kill -9 of a daemon under a concurrent load, while its `nats` sink publishes, then a
/// restart on the same store: every acknowledged event is in the stream, and none twice (the
/// restarted daemon publishes again what the broker stored but the daemon had not recorded,
/// and JetStream drops those copies by their `Nats-Msg-Id`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_under_load_then_restart_publishes_every_acknowledged_event_once() {
    let test = "nats::kill_9_under_load_then_restart_publishes_every_acknowledged_event_once";
    let Some(url) = nats_url(test) else {
        return;
    };
    let prefix = unique_name("nats_kill");
    let stream = TestStream::connect(&url, &prefix).await;
    let proxy = Proxy::start_slow(url_addr(&url, 4222), SLOW_ANSWERS).await;
    let sink = nats_sink("bus", &format!("nats://{}", proxy.addr), &prefix, "");
    let outcome = kill_9_under_load(&settings(sink), "bus", async || stream.count().await).await;

    let published: Vec<String> = stream
        .messages()
        .await
        .iter()
        .map(|m| {
            header(m, "kirim-event-id")
                .expect("kirim-event-id")
                .to_owned()
        })
        .collect();
    let copies = outcome.assert_published(&published);
    assert_eq!(copies, 0, "no event twice in the stream");
    stream.delete().await;
}
