//! The broker side of the receive bench (the kirimhook+nats, kirimhook+rabbitmq and
//! kirimhook+redis rows): for one run, fresh names on the broker, the `[[sinks]]` table that
//! publishes to them, and a consumer in the bench process that records when each
//! `kirim-event-id` arrived (into the same [`Arrivals`] as the relay target).
//!
//! It computes no figures (that is `receive.rs`, shared with the relay row) and never reuses a
//! name: every run gets a new one ([`unique_name`]), deleted (best effort) when its [`Bus`] is
//! dropped, after the daemon.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use anyhow::Context as _;
use futures_util::StreamExt as _;

use super::daemon::{run_detached, toml_string, unique_name};
use super::Arrivals;

/// Where the bench finds a broker's URL, in this order, per broker.
const NATS_URL_VARS: [&str; 2] = ["KIRIMHOOK_BENCH_NATS_URL", "KIRIMHOOK_TEST_NATS_URL"];
const AMQP_URL_VARS: [&str; 2] = ["KIRIMHOOK_BENCH_AMQP_URL", "KIRIMHOOK_TEST_AMQP_URL"];
const REDIS_URL_VARS: [&str; 2] = ["KIRIMHOOK_BENCH_REDIS_URL", "KIRIMHOOK_TEST_REDIS_URL"];
/// Messages a JetStream pull request asks for at once.
const NATS_BATCH: usize = 1000;
/// Entries one XREAD returns at most, and how long it blocks when there are none (well under
/// the client's 500 ms response timeout).
const XREAD_COUNT: usize = 1000;
const XREAD_BLOCK_MS: u64 = 100;
/// Keys one UNLINK removes when the dedupe markers are cleaned up.
const UNLINK_CHUNK: usize = 10_000;

/// A broker sink kind of the bench.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Broker {
    Nats,
    Rabbitmq,
    Redis,
}

impl Broker {
    pub const ALL: [Broker; 3] = [Broker::Nats, Broker::Rabbitmq, Broker::Redis];

    /// The sink's `kind`.
    pub fn kind(self) -> &'static str {
        match self {
            Broker::Nats => "nats",
            Broker::Rabbitmq => "rabbitmq",
            Broker::Redis => "redis_stream",
        }
    }

    /// The variables naming the broker, in the order they are looked at.
    pub fn url_vars(self) -> [&'static str; 2] {
        match self {
            Broker::Nats => NATS_URL_VARS,
            Broker::Rabbitmq => AMQP_URL_VARS,
            Broker::Redis => REDIS_URL_VARS,
        }
    }

    pub fn example_url(self) -> &'static str {
        match self {
            Broker::Nats => "nats://127.0.0.1:4222",
            Broker::Rabbitmq => "amqp://guest:guest@127.0.0.1:5672/%2f",
            Broker::Redis => "redis://127.0.0.1:6379/0",
        }
    }

    /// What a run creates, and how the bench reads it.
    pub fn describe(self) -> &'static str {
        match self {
            Broker::Nats => {
                "a fresh stream (file storage, subjects <name>.>) per run, read by an ephemeral \
                 JetStream pull consumer (ack none)"
            }
            Broker::Rabbitmq => {
                "a fresh durable topic exchange per run, read through a fresh durable classic \
                 queue bound with # (basic.consume, no-ack)"
            }
            Broker::Redis => "a fresh stream key per run, read with XREAD BLOCK",
        }
    }
}

/// One run's names on a broker and the consumer reading them. Declare it before the daemon:
/// dropped after it, it stops the consumer and deletes the names (and the redis_stream sink's
/// dedupe markers).
pub struct Bus {
    /// When each event reached the consumer.
    pub arrivals: Arc<Mutex<Arrivals>>,
    /// The `[[sinks]]` table publishing to the run's names.
    pub sink: String,
    reader: tokio::task::JoinHandle<()>,
    _names: Names,
}

impl Bus {
    /// Creates fresh names for run number `run` on the broker at `url`, and starts reading them
    /// on the current runtime before any event is published; `concurrency`: the sink's
    /// `concurrency` (`None`: its default).
    pub async fn start(
        broker: Broker,
        url: &str,
        run: u64,
        concurrency: Option<usize>,
    ) -> anyhow::Result<Bus> {
        let name = unique_name(run);
        let arrivals = Arc::new(Mutex::new(Arrivals::default()));
        let names = Names {
            broker,
            url: url.to_owned(),
            name: match broker {
                Broker::Redis => format!("kirimhook:{name}"),
                _ => name,
            },
        };
        let shared = arrivals.clone();
        let name = names.name.as_str();
        let reader = match broker {
            Broker::Nats => nats_reader(url, name, shared).await,
            Broker::Rabbitmq => amqp_reader(url, name, shared).await,
            Broker::Redis => redis_reader(url, name, shared).await,
        }
        .with_context(|| format!("cannot set up {name} for the {} sink", broker.kind()))?;
        let target = match broker {
            Broker::Nats => format!(
                "subject = {}\nstream = {}",
                toml_string(&format!("{name}.{{source}}.{{type}}")),
                toml_string(name)
            ),
            Broker::Rabbitmq => format!("exchange = {}", toml_string(name)),
            Broker::Redis => format!("stream = {}", toml_string(name)),
        };
        let concurrency = concurrency.map_or_else(String::new, |n| format!("concurrency = {n}\n"));
        let sink = format!(
            "\n[[sinks]]\nname = \"bus\"\nkind = \"{}\"\nurl = {}\n{target}\n{concurrency}",
            broker.kind(),
            toml_string(url)
        );
        Ok(Bus {
            arrivals,
            sink,
            reader,
            _names: names,
        })
    }
}

impl Drop for Bus {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

/// Records one arrival.
fn arrived(arrivals: &Mutex<Arrivals>, event_id: Option<&str>, at: Instant) {
    if let Ok(mut a) = arrivals.lock() {
        a.record(event_id, false, at);
    }
}

async fn nats_reader(
    url: &str,
    name: &str,
    arrivals: Arc<Mutex<Arrivals>>,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    use async_nats::jetstream::{self, consumer, stream};
    let jetstream = jetstream::new(async_nats::connect(url).await?);
    // Created here, so that the consumer exists before the first publish; the sink finds it.
    let stream = jetstream
        .create_stream(stream::Config {
            name: name.to_owned(),
            subjects: vec![format!("{name}.>")],
            storage: stream::StorageType::File,
            ..Default::default()
        })
        .await?;
    let consumer = stream
        .create_consumer(consumer::pull::Config {
            ack_policy: consumer::AckPolicy::None,
            ..Default::default()
        })
        .await?;
    let mut messages = consumer
        .stream()
        .max_messages_per_batch(NATS_BATCH)
        .messages()
        .await?;
    Ok(tokio::spawn(async move {
        // An error (a missed heartbeat, say) is not the end of the stream.
        while let Some(message) = messages.next().await {
            let at = Instant::now();
            if let Ok(message) = message {
                let id = message
                    .headers
                    .as_ref()
                    .and_then(|h| h.get("kirim-event-id"));
                arrived(&arrivals, id.map(|v| v.as_str()), at);
            }
        }
    }))
}

async fn amqp_reader(
    url: &str,
    name: &str,
    arrivals: Arc<Mutex<Arrivals>>,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    use lapin::options::{
        BasicConsumeOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
    };
    use lapin::types::{AMQPValue, FieldTable};
    use lapin::{Connection, ConnectionProperties, ExchangeKind};
    let connection = Connection::connect(url, ConnectionProperties::default()).await?;
    let channel = connection.create_channel().await?;
    let no_args = FieldTable::default;
    // The exchange as the sink declares it (topic, durable), so that its own declare agrees;
    // a durable queue, as a consumer that must not lose events would have.
    let (exchange, queue) = (name.into(), name.into());
    let topic = ExchangeKind::Topic;
    let durable_exchange = ExchangeDeclareOptions {
        durable: true,
        ..Default::default()
    };
    channel
        .exchange_declare(exchange, topic, durable_exchange, no_args())
        .await?;
    let durable_queue = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    channel
        .queue_declare(queue, durable_queue, no_args())
        .await?;
    let (queue, exchange, all) = (name.into(), name.into(), "#".into());
    let bind = QueueBindOptions::default();
    channel
        .queue_bind(queue, exchange, all, bind, no_args())
        .await?;
    let options = BasicConsumeOptions {
        no_ack: true,
        ..Default::default()
    };
    let mut consumer = channel
        .basic_consume(name.into(), "bench".into(), options, no_args())
        .await?;
    Ok(tokio::spawn(async move {
        // Kept open while the consumer reads.
        let _connection = connection;
        while let Some(delivery) = consumer.next().await {
            let at = Instant::now();
            let Ok(delivery) = delivery else { break };
            let headers = delivery.properties.headers().as_ref();
            let id = match headers.and_then(|h| h.inner().get("kirim-event-id")) {
                Some(AMQPValue::LongString(s)) => std::str::from_utf8(s.as_bytes()).ok(),
                _ => None,
            };
            arrived(&arrivals, id, at);
        }
    }))
}

/// One XREAD answer: per stream key, its entries (id, field/value pairs).
type XreadReply = Option<Vec<(String, Vec<(String, Vec<(String, Vec<u8>)>)>)>>;

async fn redis_reader(
    url: &str,
    key: &str,
    arrivals: Arc<Mutex<Arrivals>>,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let mut conn = redis::Client::open(url)?
        .get_multiplexed_async_connection()
        .await?;
    let key = key.to_owned();
    Ok(tokio::spawn(async move {
        let mut last = "0-0".to_owned();
        loop {
            let reply: redis::RedisResult<XreadReply> = redis::cmd("XREAD")
                .arg("COUNT")
                .arg(XREAD_COUNT)
                .arg("BLOCK")
                .arg(XREAD_BLOCK_MS)
                .arg("STREAMS")
                .arg(&key)
                .arg(&last)
                .query_async(&mut conn)
                .await;
            let at = Instant::now();
            let Ok(reply) = reply else {
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                continue;
            };
            for (id, fields) in reply.into_iter().flatten().flat_map(|(_, entries)| entries) {
                let event_id = fields
                    .iter()
                    .find(|(field, _)| field == "kirim-event-id")
                    .and_then(|(_, value)| std::str::from_utf8(value).ok());
                arrived(&arrivals, event_id, at);
                last = id;
            }
        }
    }))
}

/// A run's names on a broker, deleted (best effort, on a thread of its own) when dropped.
struct Names {
    broker: Broker,
    url: String,
    name: String,
}

impl Drop for Names {
    fn drop(&mut self) {
        let (broker, url, name) = (self.broker, self.url.clone(), self.name.clone());
        if let Err(e) = run_detached(move || async move { delete(broker, &url, &name).await }) {
            eprintln!(
                "note: could not delete {} of the {} sink: {e:#}",
                self.name,
                self.broker.kind()
            );
        }
    }
}

async fn delete(broker: Broker, url: &str, name: &str) -> anyhow::Result<()> {
    match broker {
        Broker::Nats => {
            let jetstream = async_nats::jetstream::new(async_nats::connect(url).await?);
            jetstream.delete_stream(name).await?;
        }
        Broker::Rabbitmq => {
            use lapin::options::{ExchangeDeleteOptions, QueueDeleteOptions};
            let connection =
                lapin::Connection::connect(url, lapin::ConnectionProperties::default()).await?;
            let channel = connection.create_channel().await?;
            channel
                .queue_delete(name.into(), QueueDeleteOptions::default())
                .await?;
            channel
                .exchange_delete(name.into(), ExchangeDeleteOptions::default())
                .await?;
            let _ = connection.close(200, "done".into()).await;
        }
        Broker::Redis => {
            let mut conn = redis::Client::open(url)?
                .get_multiplexed_async_connection()
                .await?;
            let mut keys: Vec<String> = redis::cmd("KEYS")
                .arg(format!("{name}:dedupe:*"))
                .query_async(&mut conn)
                .await?;
            keys.push(name.to_owned());
            for chunk in keys.chunks(UNLINK_CHUNK) {
                let _: i64 = redis::cmd("UNLINK")
                    .arg(chunk)
                    .query_async(&mut conn)
                    .await?;
            }
        }
    }
    Ok(())
}
