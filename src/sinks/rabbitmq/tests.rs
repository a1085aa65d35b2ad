//! Tests of the RabbitMQ sink against a real broker (`KIRIMHOOK_TEST_AMQP_URL`): what a
//! consumer gets, the confirm path, pipelining and how failures are classified. Each test
//! declares an exchange and queue of its own and deletes them at the end (best effort).
//! Without the variable a test says it was skipped and passes, unless
//! `KIRIMHOOK_REQUIRE_SERVICES=1` makes that a failure. The classification of a broker that
//! is not there needs no broker and always runs.

#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use lapin::options::{
    BasicGetOptions, ExchangeDeleteOptions, QueueBindOptions, QueueDeclareOptions,
    QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Channel, Connection, ConnectionProperties};

use super::config::{RabbitMqSinkConfig, Template};
use super::*;
use crate::config::SecretString;
use crate::receive::envelope::{Shape, Source};
use crate::sinks::Attempt;
use crate::store::model::RecordMeta;
use crate::store::StoredEvent;

const URL_VAR: &str = "KIRIMHOOK_TEST_AMQP_URL";

/// The broker URL, or `None` (the test was skipped) when it is not set.
fn amqp_url(test: &str) -> Option<String> {
    match std::env::var(URL_VAR) {
        Ok(url) if !url.is_empty() => Some(url),
        _ if std::env::var("KIRIMHOOK_REQUIRE_SERVICES").as_deref() == Ok("1") => panic!(
            "{test}: {URL_VAR} is not set, and KIRIMHOOK_REQUIRE_SERVICES=1 says the broker \
             must be there"
        ),
        _ => {
            eprintln!("skipped: {test}: {URL_VAR} is not set");
            None
        }
    }
}

/// A name of this test's own: `prefix`, the process id and 64 random bits.
fn unique_name(prefix: &str) -> String {
    format!("{prefix}_{}_{:016x}", std::process::id(), fastrand::u64(..))
}

/// A test's exchange and queue (bound with `#`), deleted when dropped.
struct Scratch {
    connection: Connection,
    channel: Channel,
    exchange: String,
    queue: String,
}

impl Scratch {
    /// Names for `prefix`; with `bind`, a durable queue bound to the exchange (which is
    /// declared here too, topic and durable, as the sink would).
    async fn new(url: &str, prefix: &str, bind: bool) -> Scratch {
        let connection = Connection::connect(url, ConnectionProperties::default())
            .await
            .unwrap();
        let channel = connection.create_channel().await.unwrap();
        let exchange = unique_name(&format!("{prefix}_x"));
        let queue = unique_name(&format!("{prefix}_q"));
        let scratch = Scratch {
            connection,
            channel,
            exchange,
            queue,
        };
        if bind {
            scratch.bind().await;
        }
        scratch
    }

    /// Declares the exchange (topic, durable, as the sink would) and a durable queue bound to
    /// it with `#`.
    async fn bind(&self) {
        let (exchange, queue) = (self.exchange.as_str(), self.queue.as_str());
        self.channel
            .exchange_declare(
                exchange.into(),
                lapin::ExchangeKind::Topic,
                ExchangeDeclareOptions {
                    durable: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .unwrap();
        self.channel
            .queue_declare(
                queue.into(),
                QueueDeclareOptions {
                    durable: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .unwrap();
        self.channel
            .queue_bind(
                queue.into(),
                exchange.into(),
                "#".into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .unwrap();
    }

    fn config(&self, url: &str) -> RabbitMqSinkConfig {
        RabbitMqSinkConfig {
            url: SecretString::new(url),
            exchange: self.exchange.clone(),
            declare: true,
            routing_key: Template::parse("{source}.{type}").unwrap(),
            concurrency: 64,
            timeout: Duration::from_secs(5),
            ca_file: None,
        }
    }

    /// The next message in the queue, if any.
    async fn get(&self) -> Option<lapin::message::BasicGetMessage> {
        self.channel
            .basic_get(self.queue.as_str().into(), BasicGetOptions { no_ack: true })
            .await
            .unwrap()
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

fn event(n: u64, phone: Option<&str>) -> Arc<StoredEvent> {
    let key = format!("\"kirim:evt_{n}\"");
    Arc::new(StoredEvent {
        seq: n,
        meta: RecordMeta {
            received_at_ms: 1_795_381_200_123,
            secret_id: "sec_A".into(),
            headers: vec![("x-kirim-delivery-id".into(), format!("wbd_{n}"))],
            keys: vec![serde_json::from_str(&key).unwrap()],
            shape: Some(Shape::KirimEnvelope),
            source: Some(if phone.is_some() {
                Source::Meta
            } else {
                Source::Kirim
            }),
            event_type: Some("message.received".into()),
            event_id: Some(format!("evt_{n}")),
            phone_number_ids: phone.into_iter().map(str::to_owned).collect(),
            quarantine_reason: None,
        },
        body: format!("{{\"id\":\"evt_{n}\",  \"n\":1.50}}\n").into_bytes(),
    })
}

fn attempt(event: Arc<StoredEvent>) -> Attempt {
    Attempt { event, attempt: 1 }
}

fn header(message: &lapin::message::BasicGetMessage, name: &str) -> Option<String> {
    let headers = message.delivery.properties.headers().as_ref()?;
    match headers.inner().get(name)? {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        other => panic!("{name} is {other:?}"),
    }
}

#[tokio::test]
async fn a_published_event_arrives_byte_exact_with_its_headers() {
    let Some(url) = amqp_url("a_published_event_arrives_byte_exact_with_its_headers") else {
        return;
    };
    let scratch = Scratch::new(&url, "sink_headers", true).await;
    let sink = RabbitMqSink::new("bus", &scratch.config(&url));
    let (kirim, meta) = (event(1, None), event(2, Some("1065")));
    sink.deliver(&[attempt(kirim.clone()), attempt(meta.clone())])
        .await
        .unwrap();

    let first = scratch.get().await.unwrap();
    assert_eq!(first.delivery.data, kirim.body);
    assert_eq!(
        first.delivery.routing_key.as_str(),
        "kirim.message.received"
    );
    let properties = &first.delivery.properties;
    assert_eq!(*properties.delivery_mode(), Some(2));
    assert_eq!(
        properties.content_type().as_ref().map(|s| s.as_str()),
        Some("application/json")
    );
    assert_eq!(
        properties.message_id().as_ref().map(|s| s.as_str()),
        Some("kirim:evt_1")
    );
    for (name, value) in [
        ("kirim-event-id", Some("evt_1")),
        ("kirim-event-type", Some("message.received")),
        ("kirim-source", Some("kirim")),
        ("kirim-delivery-id", Some("wbd_1")),
        ("kirim-received-at", Some("2026-11-22T21:00:00.123Z")),
        ("kirim-dedupe-key", Some("kirim:evt_1")),
        ("kirim-phone-number-id", None),
    ] {
        assert_eq!(header(&first, name).as_deref(), value, "{name}");
    }
    let second = scratch.get().await.unwrap();
    assert_eq!(second.delivery.data, meta.body);
    assert_eq!(
        second.delivery.routing_key.as_str(),
        "meta.message.received"
    );
    assert_eq!(
        header(&second, "kirim-phone-number-id").as_deref(),
        Some("1065")
    );
    assert!(scratch.get().await.is_none());
    drop(sink);
    scratch.delete().await;
}

/// `amqps://` with `ca_file`: the sink verifies the broker's certificate against a private CA
/// (a TLS front with the test's own certificate before the shared broker) and its publish is
/// confirmed; without `ca_file` the certificate is not trusted and the sink is unreachable.
#[tokio::test]
async fn amqps_with_a_private_ca() {
    use crate::sinks::testing::{assert_refused_quietly, TestCert, TlsFront};

    let Some(url) = amqp_url("amqps_with_a_private_ca") else {
        return;
    };
    let plain: lapin::uri::AMQPUri = url.parse().unwrap();
    let upstream = tokio::net::lookup_host((plain.authority.host.as_str(), plain.authority.port))
        .await
        .unwrap()
        .next()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cert = TestCert::generate(dir.path());
    let front = TlsFront::start(&cert, upstream).await;
    let tls_url = format!(
        "amqps://{}:{}@localhost:{}/{}",
        plain.authority.userinfo.username,
        plain.authority.userinfo.password,
        front.port,
        plain.vhost.replace('%', "%25").replace('/', "%2f")
    );

    let scratch = Scratch::new(&url, "sink_amqps", true).await;
    let mut config = scratch.config(&tls_url);
    config.ca_file = Some(cert.cert.clone());
    let sink = RabbitMqSink::new("bus", &config);
    let kirim = event(1, None);
    sink.deliver(&[attempt(kirim.clone())]).await.unwrap();
    let got = scratch.get().await.unwrap();
    assert_eq!(got.delivery.data, kirim.body);
    drop(sink);

    let untrusting = RabbitMqSink::new("bus", &scratch.config(&tls_url));
    let failure = untrusting
        .deliver(&[attempt(event(2, None))])
        .await
        .unwrap_err();
    assert_refused_quietly(&failure, "a CA it does not trust", &["guest:guest"]);
    assert!(scratch.get().await.is_none());
    drop(untrusting);
    scratch.delete().await;
}

#[tokio::test]
async fn many_publishes_in_flight_are_all_confirmed() {
    let Some(url) = amqp_url("many_publishes_in_flight_are_all_confirmed") else {
        return;
    };
    let scratch = Scratch::new(&url, "sink_pipelined", true).await;
    let sink = Arc::new(RabbitMqSink::new("bus", &scratch.config(&url)));
    let mut tasks = tokio::task::JoinSet::new();
    for n in 0..500 {
        let sink = sink.clone();
        tasks.spawn(async move { sink.deliver(&[attempt(event(n, None))]).await });
    }
    while let Some(result) = tasks.join_next().await {
        result.unwrap().unwrap();
    }
    let mut ids = std::collections::BTreeSet::new();
    while let Some(message) = scratch.get().await {
        ids.insert(header(&message, "kirim-event-id").unwrap());
    }
    assert_eq!(ids.len(), 500);
    drop(sink);
    scratch.delete().await;
}

#[tokio::test]
async fn an_unroutable_message_is_a_retryable_failure_with_its_code() {
    let Some(url) = amqp_url("an_unroutable_message_is_a_retryable_failure_with_its_code") else {
        return;
    };
    // The sink declares the exchange; no queue is bound to it.
    let scratch = Scratch::new(&url, "sink_unroutable", false).await;
    let sink = RabbitMqSink::new("bus", &scratch.config(&url));
    let failure = sink.deliver(&[attempt(event(1, None))]).await.unwrap_err();
    assert_eq!(failure.delivered, 0);
    assert_eq!(failure.code, Some(NO_ROUTE));
    assert!(
        matches!(&failure.error, SinkError::Retryable { message, .. } if message.contains("NO_ROUTE")),
        "{failure:?}"
    );
    // The channel still works.
    let failure = sink.deliver(&[attempt(event(2, None))]).await.unwrap_err();
    assert_eq!(failure.code, Some(NO_ROUTE));
    drop(sink);
    scratch.delete().await;
}

#[tokio::test]
async fn a_missing_exchange_without_declare_leaves_the_sink_unreachable_until_it_exists() {
    let test = "a_missing_exchange_without_declare_leaves_the_sink_unreachable_until_it_exists";
    let Some(url) = amqp_url(test) else {
        return;
    };
    let scratch = Scratch::new(&url, "sink_nodeclare", false).await;
    let mut config = scratch.config(&url);
    config.declare = false;
    let sink = RabbitMqSink::new("bus", &config);
    let failure = sink.deliver(&[attempt(event(1, None))]).await.unwrap_err();
    assert!(
        matches!(failure.error, SinkError::Unreachable { .. }),
        "{failure:?}"
    );
    // Once the exchange and a queue exist, the same sink connects again and publishes.
    scratch.bind().await;
    sink.deliver(&[attempt(event(1, None))]).await.unwrap();
    assert!(scratch.get().await.is_some());
    drop(sink);
    scratch.delete().await;
}

#[tokio::test]
async fn an_exchange_of_another_type_is_a_setup_failure() {
    let Some(url) = amqp_url("an_exchange_of_another_type_is_a_setup_failure") else {
        return;
    };
    let scratch = Scratch::new(&url, "sink_fanout", false).await;
    scratch
        .channel
        .exchange_declare(
            scratch.exchange.as_str().into(),
            lapin::ExchangeKind::Fanout,
            ExchangeDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let sink = RabbitMqSink::new("bus", &scratch.config(&url));
    let failure = sink.deliver(&[attempt(event(1, None))]).await.unwrap_err();
    match &failure.error {
        SinkError::Unreachable { message } => {
            assert!(message.contains("PRECONDITION"), "{message}")
        }
        other => panic!("{other:?}"),
    }
    drop(sink);
    scratch.delete().await;
}

/// Needs no broker: nothing listens on port 1.
#[tokio::test]
async fn a_refused_connection_is_unreachable_and_the_url_is_not_shown() {
    let config = RabbitMqSinkConfig {
        url: SecretString::new("amqp://guest:TOPSECRET@127.0.0.1:1/%2f"),
        exchange: "kirim".into(),
        declare: true,
        routing_key: Template::parse("{type}").unwrap(),
        concurrency: 4,
        timeout: Duration::from_secs(5),
        ca_file: None,
    };
    let sink = RabbitMqSink::new("bus", &config);
    let failure = sink.deliver(&[attempt(event(1, None))]).await.unwrap_err();
    match &failure.error {
        SinkError::Unreachable { message } => assert!(!message.contains("TOPSECRET"), "{message}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(failure.code, None);
}

#[test]
fn properties_without_a_dedupe_key_or_with_a_long_one_have_no_message_id() {
    let mut event = (*event(1, None)).clone();
    event.meta.keys.clear();
    let props = properties(&event);
    assert!(props.message_id().is_none());
    let headers = props.headers().as_ref().unwrap();
    assert!(headers.inner().get("kirim-dedupe-key").is_none());
    let long = format!("\"kirim:{}\"", "x".repeat(300));
    event.meta.keys = vec![serde_json::from_str(&long).unwrap()];
    let props = properties(&event);
    assert!(props.message_id().is_none());
    let headers = props.headers().as_ref().unwrap();
    assert!(headers.inner().get("kirim-dedupe-key").is_some());
}

#[test]
fn broker_errors_are_classified_by_their_reply_code() {
    use lapin::protocol::AMQPError;
    let amqp = |code: u16| -> lapin::Error {
        let error = AMQPError::from_id(code, "text".into()).unwrap();
        lapin::ErrorKind::ProtocolError(error).into()
    };
    for code in [403, 406, 311, 501] {
        let (error, got) = classify(&amqp(code));
        assert!(
            matches!(error, SinkError::Permanent { .. }),
            "{code}: {error:?}"
        );
        assert_eq!(got, Some(code));
    }
    for code in [404, 320] {
        let (error, got) = classify(&amqp(code));
        assert!(
            matches!(error, SinkError::Unreachable { .. }),
            "{code}: {error:?}"
        );
        assert_eq!(got, Some(code));
    }
    for code in [405, 506, 541] {
        let (error, _) = classify(&amqp(code));
        assert!(
            matches!(error, SinkError::Retryable { .. }),
            "{code}: {error:?}"
        );
    }
    let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
    let (error, code) = classify(&refused.into());
    assert!(matches!(error, SinkError::Unreachable { .. }), "{error:?}");
    assert_eq!(code, None);
}
