//! The RabbitMQ sink over the real daemon and a real broker (`KIRIMHOOK_TEST_AMQP_URL`), seen
//! from a consumer: every fixture arrives byte for byte as a persistent message with its
//! `kirim-*` headers and `message_id` = its dedupe key, a sender's retry is not published
//! again, a sink's filters choose what it publishes, a broker cut off for a while loses
//! nothing, and after a kill -9 under load every acknowledged event is in the queue (a copy
//! only under the same `message_id`).
//!
//! Each test declares a queue of its own bound to an exchange of its own (both unique names),
//! and deletes them at the end, best effort. The queue is read after a graceful stop, when
//! every event the daemon settled has been confirmed by the broker. Without the variable a
//! test says it was skipped and passes, unless `KIRIMHOOK_REQUIRE_SERVICES=1`.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use lapin::message::BasicGetMessage;
use lapin::options::{
    BasicGetOptions, ExchangeDeclareOptions, ExchangeDeleteOptions, QueueBindOptions,
    QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Channel, Connection, ConnectionProperties, ExchangeKind};
use serde_json::json;

use crate::brokers::{assert_nothing_dead_or_queued, kill_9_under_load, wait_paused, SLOW_ANSWERS};
use crate::daemon::{temp_dir, Daemon, Settings};
use crate::fixtures::{self, kirim_event, new_event_id, Fixture, PHONE_NUMBER_ID};
use crate::proxy::{via, Proxy};
use crate::services::{service_url, unique_name};

/// The variable naming the broker.
const AMQP_URL_VAR: &str = "KIRIMHOOK_TEST_AMQP_URL";
/// How long a test waits for the messages it expects.
const DEADLINE: Duration = Duration::from_secs(30);

/// A test's exchange (topic, durable) and durable queue bound to it with `#`.
struct Bus {
    connection: Connection,
    channel: Channel,
    exchange: String,
    queue: String,
}

impl Bus {
    async fn new(url: &str, prefix: &str) -> Bus {
        let connection = Connection::connect(url, ConnectionProperties::default())
            .await
            .expect("connect to the broker");
        let channel = connection.create_channel().await.expect("a channel");
        let exchange = unique_name(&format!("{prefix}_x"));
        let queue = unique_name(&format!("{prefix}_q"));
        channel
            .exchange_declare(
                exchange.as_str().into(),
                ExchangeKind::Topic,
                ExchangeDeclareOptions {
                    durable: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .expect("declare the exchange");
        channel
            .queue_declare(
                queue.as_str().into(),
                QueueDeclareOptions {
                    durable: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .expect("declare the queue");
        channel
            .queue_bind(
                queue.as_str().into(),
                exchange.as_str().into(),
                "#".into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .expect("bind the queue");
        Bus {
            connection,
            channel,
            exchange,
            queue,
        }
    }

    /// A `[[sinks]]` table of kind `rabbitmq` publishing to this exchange, with `extra` lines.
    fn sink(&self, url: &str, name: &str, extra: &str) -> String {
        format!(
            "[[sinks]]\nname = \"{name}\"\nkind = \"rabbitmq\"\nurl = \"{url}\"\n\
             exchange = \"{}\"\nrouting_key = \"{{source}}.{{type}}\"\ntimeout_secs = 5\n{extra}\n\
             [sinks.retry]\ninitial_backoff_ms = 50\nmax_backoff_secs = 1\n\n",
            self.exchange
        )
    }

    /// Every message in the queue now (taken off it).
    async fn drain(&self) -> Vec<BasicGetMessage> {
        let mut messages = Vec::new();
        while let Some(message) = self
            .channel
            .basic_get(self.queue.as_str().into(), BasicGetOptions { no_ack: true })
            .await
            .expect("basic.get")
        {
            messages.push(message);
        }
        messages
    }

    /// How many messages the queue holds.
    async fn count(&self) -> u32 {
        self.channel
            .queue_declare(
                self.queue.as_str().into(),
                QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .expect("passive declare")
            .message_count()
    }

    /// Waits until the queue holds at least `n` messages.
    async fn wait_for(&self, n: u32) {
        let start = Instant::now();
        loop {
            let count = self.count().await;
            if count >= n {
                return;
            }
            assert!(
                start.elapsed() < DEADLINE,
                "queue {} holds {count} messages, expected {n} within {DEADLINE:?}",
                self.queue
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn delete(self) {
        let _ = self
            .channel
            .queue_delete(self.queue.as_str().into(), QueueDeleteOptions::default())
            .await;
        let _ = self
            .channel
            .exchange_delete(
                self.exchange.as_str().into(),
                ExchangeDeleteOptions::default(),
            )
            .await;
        let _ = self.connection.close(200, "done".into()).await;
    }
}

/// A string header of `message`.
fn header(message: &BasicGetMessage, name: &str) -> Option<String> {
    let headers = message.delivery.properties.headers().as_ref()?;
    match headers.inner().get(name)? {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        other => panic!("header {name} is not a string: {other:?}"),
    }
}

/// The messages by `kirim-event-id`, asserting there is one per event.
fn by_event_id(messages: Vec<BasicGetMessage>) -> HashMap<String, BasicGetMessage> {
    let mut map = HashMap::new();
    for message in messages {
        let id = header(&message, "kirim-event-id").expect("kirim-event-id");
        assert!(
            map.insert(id.clone(), message).is_none(),
            "{id} published twice"
        );
    }
    map
}

fn settings(sinks: String) -> Settings {
    Settings {
        stdout_sink: false,
        extra_sinks: sinks,
        ..Settings::default()
    }
}

fn assert_message(message: &BasicGetMessage, fixture: &Fixture) {
    let name = &fixture.name;
    let file = std::fs::read(&fixture.file).expect("read the fixture file");
    assert!(
        message.delivery.data == file,
        "{name}: the body must be byte-identical to {}; published:\n{}",
        fixture.file.display(),
        String::from_utf8_lossy(&message.delivery.data)
    );
    let properties = &message.delivery.properties;
    assert_eq!(*properties.delivery_mode(), Some(2), "{name}: persistent");
    assert_eq!(
        properties.content_type().as_ref().map(|s| s.as_str()),
        Some("application/json"),
        "{name}: content_type"
    );
    assert_eq!(
        properties.message_id().as_ref().map(|s| s.as_str()),
        Some(fixture.dedupe_keys[0].as_str()),
        "{name}: message_id is the first dedupe key"
    );
    let event_type = fixture.header("X-Kirim-Event");
    let source = fixture.source();
    assert_eq!(
        message.delivery.routing_key.as_str(),
        format!("{source}.{event_type}"),
        "{name}: routing key"
    );
    let phone = (source == "meta").then_some(PHONE_NUMBER_ID);
    for (header_name, expected) in [
        ("kirim-event-id", Some(fixture.event_id())),
        ("kirim-event-type", Some(event_type)),
        ("kirim-source", Some(source)),
        (
            "kirim-delivery-id",
            Some(fixture.header("X-Kirim-Delivery-Id")),
        ),
        ("kirim-dedupe-key", Some(fixture.dedupe_keys[0].as_str())),
        ("kirim-phone-number-id", phone),
    ] {
        assert_eq!(
            header(message, header_name).as_deref(),
            expected,
            "{name}: header {header_name}"
        );
    }
    let received_at = header(message, "kirim-received-at").expect("kirim-received-at");
    assert!(
        humantime::parse_rfc3339(&received_at).is_ok() && received_at.ends_with('Z'),
        "{name}: kirim-received-at {received_at:?} is RFC 3339"
    );
    assert_eq!(
        received_at.len(),
        "2026-06-01T12:00:00.250Z".len(),
        "{name}: ms"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_fixture_is_published_once_byte_exact_with_its_headers() {
    let test = "rabbitmq::every_fixture_is_published_once_byte_exact_with_its_headers";
    let Some(url) = service_url(test, AMQP_URL_VAR) else {
        return;
    };
    let bus = Bus::new(&url, "e2e_fixtures").await;
    let dir = temp_dir();
    let mut daemon = Daemon::start(dir.path(), &settings(bus.sink(&url, "bus", ""))).await;
    let mut client = daemon.client();
    let all = fixtures::all();
    for fixture in &all {
        client.send(&fixture.signed_now()).await.expect(
            200,
            json!({"status": "accepted"}),
            &fixture.name,
        );
    }
    bus.wait_for(all.len() as u32).await;
    // A sender's retry of an event already published: answered duplicate, not published.
    let f5 = fixtures::get("f5");
    client.send(&f5.signed_now().retry(2, &["A"])).await.expect(
        200,
        json!({"status": "duplicate"}),
        "F5 retried",
    );
    daemon.stop_gracefully().await;

    let messages = by_event_id(bus.drain().await);
    assert_eq!(
        messages.len(),
        all.len(),
        "one message per fixture: {:?}",
        messages.keys().collect::<Vec<_>>()
    );
    for fixture in &all {
        let message = messages
            .get(fixture.event_id())
            .unwrap_or_else(|| panic!("{} was not published", fixture.name));
        assert_message(message, fixture);
    }
    bus.delete().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filters_choose_what_a_rabbitmq_sink_publishes() {
    let test = "rabbitmq::filters_choose_what_a_rabbitmq_sink_publishes";
    let Some(url) = service_url(test, AMQP_URL_VAR) else {
        return;
    };
    let contacts = Bus::new(&url, "e2e_contacts").await;
    let meta = Bus::new(&url, "e2e_meta").await;
    let sinks = format!(
        "{}{}",
        contacts.sink(&url, "contacts", "events = [\"contact.*\"]"),
        meta.sink(
            &url,
            "meta",
            &format!("phone_number_ids = [\"{PHONE_NUMBER_ID}\"]")
        )
    );
    let dir = temp_dir();
    let mut daemon = Daemon::start(dir.path(), &settings(sinks)).await;
    let mut client = daemon.client();
    let all = fixtures::all();
    for fixture in &all {
        client.send(&fixture.signed_now()).await.expect(
            200,
            json!({"status": "accepted"}),
            &fixture.name,
        );
    }
    contacts.wait_for(3).await;
    meta.wait_for(4).await;
    daemon.stop_gracefully().await;

    let names = |messages: Vec<BasicGetMessage>| -> Vec<String> {
        let ids = by_event_id(messages);
        let mut names: Vec<String> = all
            .iter()
            .filter(|f| ids.contains_key(f.event_id()))
            .map(|f| f.name.clone())
            .collect();
        names.sort();
        assert_eq!(names.len(), ids.len(), "only fixtures were published");
        names
    };
    assert_eq!(names(contacts.drain().await), ["f7", "f8", "f9"]);
    assert_eq!(names(meta.drain().await), ["f1", "f2", "f3", "f4"]);
    contacts.delete().await;
    meta.delete().await;
}

/// The broker's host:port, from its URL.
fn amqp_addr(url: &str) -> std::net::SocketAddr {
    let uri: lapin::uri::AMQPUri = url.parse().expect("an AMQP URL");
    let host = uri.authority.host.replace("localhost", "127.0.0.1");
    format!("{host}:{}", uri.authority.port)
        .parse()
        .expect("the broker's host:port")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_cut_off_for_a_while_loses_nothing_and_dead_letters_nothing() {
    let test = "rabbitmq::a_broker_cut_off_for_a_while_loses_nothing_and_dead_letters_nothing";
    let Some(url) = service_url(test, AMQP_URL_VAR) else {
        return;
    };
    let bus = Bus::new(&url, "e2e_cut").await;
    let proxy = Proxy::start(amqp_addr(&url)).await;
    let dir = temp_dir();
    let sink = bus.sink(&via(&url, proxy.addr), "bus", "");
    let mut daemon = Daemon::start(dir.path(), &settings(sink)).await;
    let mut client = daemon.client();
    let mut ids = Vec::new();
    let send = async |client: &mut crate::http::Client, ids: &mut Vec<String>| {
        let delivery = kirim_event(&new_event_id());
        client
            .send(&delivery)
            .await
            .expect(200, json!({"status": "accepted"}), "an event");
        ids.push(
            delivery
                .header("X-Kirim-Event-Id")
                .expect("an id")
                .to_owned(),
        );
    };
    for _ in 0..5 {
        send(&mut client, &mut ids).await;
    }
    bus.wait_for(5).await;

    proxy.cut();
    for _ in 0..20 {
        send(&mut client, &mut ids).await;
    }
    wait_paused(&daemon, "bus").await;
    proxy.restore();
    bus.wait_for(ids.len() as u32).await;
    daemon.stop_gracefully().await;

    // Every event is there; one whose confirm was lost in the cut may be there twice, with the
    // same message_id.
    let mut seen: HashMap<String, String> = HashMap::new();
    for message in bus.drain().await {
        let id = header(&message, "kirim-event-id").expect("kirim-event-id");
        let message_id = message
            .delivery
            .properties
            .message_id()
            .as_ref()
            .map(|m| m.as_str().to_owned())
            .expect("a message_id");
        if let Some(earlier) = seen.insert(id.clone(), message_id.clone()) {
            assert_eq!(earlier, message_id, "{id}: a copy has the same message_id");
        }
    }
    for id in &ids {
        assert!(seen.contains_key(id), "{id} was not published");
    }
    assert_eq!(seen.len(), ids.len(), "only the events sent were published");

    assert_nothing_dead_or_queued(&daemon, "bus").await;
    bus.delete().await;
}

/// kill -9 of a daemon under a concurrent load, while its `rabbitmq` sink publishes, then a
/// restart on the same store: every acknowledged event is in the queue. RabbitMQ keeps the copy
/// that the restarted daemon publishes of a message whose confirm the kill lost; such a copy
/// must carry the same `message_id` as the first, the event's dedupe key, for a consumer to
/// drop it. The copies are counted in the assertion messages.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_under_load_then_restart_publishes_every_acknowledged_event_under_its_message_id() {
    let test = "rabbitmq::kill_9_under_load_then_restart_publishes_every_acknowledged_event";
    let Some(url) = service_url(test, AMQP_URL_VAR) else {
        return;
    };
    let bus = Bus::new(&url, "e2e_kill").await;
    let proxy = Proxy::start_slow(amqp_addr(&url), SLOW_ANSWERS).await;
    let sink = bus.sink(&via(&url, proxy.addr), "bus", "");
    let outcome =
        kill_9_under_load(&settings(sink), "bus", async || bus.count().await as usize).await;

    let messages = bus.drain().await;
    let published: Vec<String> = messages
        .iter()
        .map(|m| header(m, "kirim-event-id").expect("kirim-event-id"))
        .collect();
    let copies = outcome.assert_published(&published);
    // Every message, a copy as much as the first, carries the event's dedupe key as its
    // message_id: so a copy has the same message_id as the first.
    for (message, id) in messages.iter().zip(&published) {
        let message_id = message.delivery.properties.message_id().as_ref();
        assert_eq!(
            message_id.map(|m| m.as_str()),
            Some(format!("kirim:{id}").as_str()),
            "{id}: the message_id is the dedupe key ({copies} copies among {} messages)",
            messages.len()
        );
        assert_eq!(
            header(message, "kirim-dedupe-key").as_deref(),
            message_id.map(|m| m.as_str()),
            "{id}: kirim-dedupe-key is the message_id ({copies} copies among {} messages)",
            messages.len()
        );
    }
    eprintln!(
        "rabbitmq kill -9: {copies} of {} messages are copies, each with its first's message_id",
        messages.len()
    );
    bus.delete().await;
}
