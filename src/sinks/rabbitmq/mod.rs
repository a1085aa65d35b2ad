//! The RabbitMQ sink: publishes each event to an AMQP 0-9-1 exchange, with publisher
//! confirms, and settles it only after the broker's ack.
//!
//! Each event goes as one persistent message (delivery mode 2) whose body is the original
//! body bytes, `content_type` `application/json`, `message_id` the event's first dedupe key,
//! and the headers `kirim-event-id`, `kirim-event-type`, `kirim-source`, `kirim-delivery-id`,
//! `kirim-received-at` (RFC 3339, ms), `kirim-dedupe-key` and, for Meta events,
//! `kirim-phone-number-id`. The routing key is the sink's [`config::Template`] filled in.
//!
//! Messages are published `mandatory`: one that no queue is bound to take comes back
//! (`basic.return`, 312 NO_ROUTE) instead of being dropped by the exchange, and counts as a
//! retryable failure (a consumer that has not declared its queue yet gets it later; one that
//! never will sees it dead-lettered after the sink's `max_attempts`, never silently lost).
//! Choose what a sink publishes with its `events` / `sources` / `phone_number_ids` filters.
//!
//! One connection and one confirm-mode channel are shared by all of the sink's deliveries and
//! opened again after a failure. A delivery is a batch of up to [`MAX_BATCH`] events, written
//! in one go, whose confirms are then awaited together (the broker acks in batches); up to
//! `concurrency` publishes (`concurrency / MAX_BATCH` batches) are in flight at once, so there
//! is no round trip per event. How a broker's answer maps onto [`SinkError`] is
//! [`classify`]'s business. A broker error that closes the channel fails every publish in
//! flight on it and does not say which message it was about; so the first such error is
//! retryable, and the sink then publishes one at a time for [`CAREFUL_FOR`], when a permanent
//! error can be pinned on its own event. The URL (it may hold a password) is never logged.

pub mod config;

pub use config::RabbitMqSinkConfig;

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use lapin::options::{BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions};
use lapin::protocol::{AMQPErrorKind, AMQPHardError, AMQPSoftError};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Channel, Confirmation, Connection, ConnectionProperties};
use lapin::{ErrorKind, ExchangeKind};
use tokio::sync::{Mutex, RwLock};

use super::{Attempt, Failure, InFlight, Sink, SinkError};
use crate::store::model::ERROR_EXCERPT_BYTES;
use crate::store::StoredEvent;

/// How long the sink publishes one event at a time after a broker error that closed the
/// channel under several publishes.
pub const CAREFUL_FOR: Duration = Duration::from_secs(30);
/// Most events published in one batch (and awaited together).
const MAX_BATCH: usize = 64;
/// AMQP reply code of a message returned because no queue was bound to take it.
pub const NO_ROUTE: u16 = 312;

/// The connection and confirm-mode channel in use.
struct Link {
    connection: Connection,
    channel: Channel,
}

/// Publishes events to one RabbitMQ exchange.
pub struct RabbitMqSink {
    name: String,
    config: RabbitMqSinkConfig,
    /// `None` until the first delivery, and after a failure that broke the connection.
    link: Mutex<Option<Link>>,
    /// Publishes hold it shared; while careful, each holds it alone.
    gate: RwLock<()>,
    /// Until when (ms since the epoch) publishes go one at a time.
    careful_until_ms: AtomicU64,
}

impl RabbitMqSink {
    /// A RabbitMQ sink named `name` configured by `config`. Connects on its first delivery.
    pub fn new(name: impl Into<String>, config: &RabbitMqSinkConfig) -> Self {
        RabbitMqSink {
            name: name.into(),
            config: config.clone(),
            link: Mutex::new(None),
            gate: RwLock::new(()),
            careful_until_ms: AtomicU64::new(0),
        }
    }

    /// The channel to publish on, opening the connection (and declaring the exchange) or a new
    /// channel when there is none that works. Every failure here is the broker's, not the
    /// event's: it is [`SinkError::Unreachable`].
    async fn channel(&self) -> Result<Channel, Failure> {
        let timeout = self.config.timeout;
        tokio::time::timeout(timeout, self.channel_now())
            .await
            .unwrap_or_else(|_| {
                Err(unreachable(format!(
                    "no connection to the broker within {} s",
                    timeout.as_secs()
                )))
            })
    }

    /// [`RabbitMqSink::channel`] without its time limit.
    async fn channel_now(&self) -> Result<Channel, Failure> {
        let mut link = self.link.lock().await;
        if let Some(current) = link.as_ref() {
            if current.channel.status().connected() {
                return Ok(current.channel.clone());
            }
        }
        let connection = link
            .take()
            .map(|old| old.connection)
            .filter(|c| c.status().connected());
        let new = self
            .open(connection)
            .await
            .map_err(|e| unreachable(describe(&e)))?;
        let channel = new.channel.clone();
        *link = Some(new);
        Ok(channel)
    }

    /// Connects (unless `connection` still works), opens a channel in confirm mode and
    /// declares the exchange.
    async fn open(&self, connection: Option<Connection>) -> lapin::Result<Link> {
        let connection = match connection {
            Some(connection) => connection,
            None => {
                let properties = ConnectionProperties::default()
                    .with_connection_name(format!("kirimhook {}", self.name).into());
                match &self.config.ca_file {
                    None => Connection::connect(self.config.url.expose(), properties).await?,
                    Some(path) => {
                        let pem = crate::tls::read_ca_pem(path)
                            .map_err(|e| e.to_string())
                            .and_then(|bytes| {
                                String::from_utf8(bytes)
                                    .map_err(|_| format!("{} is not PEM text", path.display()))
                            })
                            .map_err(|message| {
                                lapin::Error::from(lapin::ErrorKind::IOError(std::sync::Arc::new(
                                    std::io::Error::other(format!("ca_file: {message}")),
                                )))
                            })?;
                        let tls = lapin::tcp::OwnedTLSConfig {
                            identity: None,
                            cert_chain: Some(pem),
                        };
                        let runtime = lapin::runtime::default_runtime()?;
                        Connection::connect_with_config(
                            self.config.url.expose(),
                            properties,
                            tls,
                            runtime,
                        )
                        .await?
                    }
                }
            }
        };
        let channel = connection.create_channel().await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        if self.config.declare {
            channel
                .exchange_declare(
                    short(&self.config.exchange),
                    ExchangeKind::Topic,
                    ExchangeDeclareOptions {
                        durable: true,
                        ..ExchangeDeclareOptions::default()
                    },
                    FieldTable::default(),
                )
                .await?;
        }
        Ok(Link {
            connection,
            channel,
        })
    }

    /// Whether publishes go one at a time now.
    fn careful(&self) -> bool {
        now_ms() < self.careful_until_ms.load(Ordering::Relaxed)
    }

    /// The routing key of `event`; a key too long for AMQP is the event's fault (permanent).
    fn routing_key(&self, event: &StoredEvent) -> Result<ShortString, Failure> {
        ShortString::try_new(self.config.routing_key.render(event)).map_err(|e| {
            Failure::new(SinkError::permanent(format!(
                "the routing key of this event is too long: {e}"
            )))
        })
    }

    /// Sends `event` on `channel`; the returned future resolves to the broker's confirm.
    async fn send(
        &self,
        channel: &Channel,
        event: &StoredEvent,
        routing_key: ShortString,
    ) -> lapin::Result<lapin::PublisherConfirm> {
        channel
            .basic_publish(
                short(&self.config.exchange),
                routing_key,
                BasicPublishOptions {
                    mandatory: true,
                    immediate: false,
                },
                &event.body,
                properties(event),
            )
            .await
    }

    /// Takes a hold on the gate: shared, or alone while careful; waits at most `timeout`.
    async fn hold_gate(&self, alone: bool) -> Result<Gate<'_>, Failure> {
        let timeout = self.config.timeout;
        let gate = async {
            if alone {
                Gate::Alone(self.gate.write().await)
            } else {
                Gate::Shared(self.gate.read().await)
            }
        };
        tokio::time::timeout(timeout, gate).await.map_err(|_| {
            Failure::new(SinkError::retryable(format!(
                "no turn to publish within {} s (publishing one at a time after a broker error)",
                timeout.as_secs()
            )))
        })
    }

    /// Publishes one event and waits for the broker's confirm (while careful); a failure is
    /// of the first attempt of a batch of one.
    async fn publish_alone(&self, attempt: &Attempt) -> Result<(), Failure> {
        let event = &attempt.event;
        let routing_key = self.routing_key(event)?;
        let _gate = self.hold_gate(true).await?;
        let channel = self.channel().await?;
        let publish = async { self.send(&channel, event, routing_key).await?.await };
        self.confirmed(
            tokio::time::timeout(self.config.timeout, publish).await,
            true,
        )
    }

    /// Publishes `batch` in one go on the shared channel, then awaits the confirms in order:
    /// the broker acks them in batches, so a batch costs about one round trip. A failure
    /// counts the events confirmed before it as delivered.
    async fn publish_batch(&self, batch: &[Attempt]) -> Result<(), Failure> {
        let deadline = tokio::time::Instant::now() + self.config.timeout;
        let _gate = self.hold_gate(false).await?;
        let channel = self.channel().await?;
        let mut pending = Vec::with_capacity(batch.len());
        let mut stopped: Option<Failure> = None;
        for attempt in batch {
            let routing_key = match self.routing_key(&attempt.event) {
                Ok(key) => key,
                Err(failure) => {
                    stopped = Some(failure);
                    break;
                }
            };
            let sent =
                tokio::time::timeout_at(deadline, self.send(&channel, &attempt.event, routing_key))
                    .await;
            match sent {
                Ok(Ok(confirm)) => pending.push(confirm),
                Ok(Err(e)) => {
                    stopped = self.confirmed(Ok(Err(e)), false).err();
                    break;
                }
                Err(elapsed) => {
                    stopped = self.confirmed(Err(elapsed), false).err();
                    break;
                }
            }
        }
        let sent = pending.len();
        for (delivered, confirm) in pending.into_iter().enumerate() {
            let answer = tokio::time::timeout_at(deadline, confirm).await;
            self.confirmed(answer, false)
                .map_err(|failure| failure.after(delivered))?;
        }
        match stopped {
            Some(failure) => Err(failure.after(sent)),
            None => Ok(()),
        }
    }

    /// What the broker's answer to one publish means; `alone`: no other publish was in flight
    /// on the channel, so a permanent error is this event's.
    fn confirmed(
        &self,
        answer: Result<lapin::Result<Confirmation>, tokio::time::error::Elapsed>,
        alone: bool,
    ) -> Result<(), Failure> {
        let timeout = self.config.timeout;
        match answer {
            Err(_) => Err(Failure::new(SinkError::retryable(format!(
                "no confirm from the broker within {} s",
                timeout.as_secs()
            )))),
            Ok(Ok(Confirmation::Ack(None))) => Ok(()),
            Ok(Ok(Confirmation::Ack(Some(returned)))) => {
                let code = returned.reply_code;
                Err(Failure::new(SinkError::retryable(format!(
                    "the broker returned the message: {code} {} (no queue is bound to \
                     exchange `{}` for this routing key)",
                    returned.reply_text, self.config.exchange
                )))
                .with_code(code))
            }
            Ok(Ok(Confirmation::Nack(_))) => Err(Failure::new(SinkError::retryable(
                "the broker refused the message (basic.nack)",
            ))),
            Ok(Ok(Confirmation::NotRequested)) => Err(Failure::new(SinkError::retryable(
                "the channel is not in confirm mode",
            ))),
            Ok(Err(e)) => {
                let (error, code) = classify(&e);
                let error = match error {
                    SinkError::Permanent { message } if !alone => {
                        // Not pinned on this event yet: retry everything that was in flight
                        // one at a time.
                        self.careful_until_ms
                            .store(now_ms() + CAREFUL_FOR.as_millis() as u64, Ordering::Relaxed);
                        SinkError::retryable(format!(
                            "{message} (with other publishes in flight; retrying them one at \
                             a time)"
                        ))
                    }
                    error => error,
                };
                let failure = Failure::new(error);
                Err(match code {
                    Some(code) => failure.with_code(code),
                    None => failure,
                })
            }
        }
    }
}

/// A publish's hold on [`RabbitMqSink::gate`].
enum Gate<'a> {
    Shared(#[allow(dead_code, reason = "held, never read")] tokio::sync::RwLockReadGuard<'a, ()>),
    Alone(#[allow(dead_code, reason = "held, never read")] tokio::sync::RwLockWriteGuard<'a, ()>),
}

impl Sink for RabbitMqSink {
    fn name(&self) -> &str {
        &self.name
    }

    /// Batches in flight: `concurrency` counts publishes awaiting a confirm, sent in batches
    /// of up to [`MAX_BATCH`].
    fn concurrency(&self) -> usize {
        InFlight::of(self.config.concurrency, MAX_BATCH).batches
    }

    fn max_batch(&self) -> usize {
        InFlight::of(self.config.concurrency, MAX_BATCH).batch
    }

    async fn deliver(&self, batch: &[Attempt]) -> Result<(), Failure> {
        if !self.careful() {
            return self.publish_batch(batch).await;
        }
        for (delivered, attempt) in batch.iter().enumerate() {
            self.publish_alone(attempt)
                .await
                .map_err(|failure| failure.after(delivered))?;
        }
        Ok(())
    }
}

impl Drop for RabbitMqSink {
    /// Closes the connection (best effort) when the sink goes away, on a reload or at exit.
    fn drop(&mut self) {
        let Some(link) = self.link.get_mut().take() else {
            return;
        };
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                let _ = link
                    .connection
                    .close(200, short("kirimhook sink closed"))
                    .await;
            });
        }
    }
}

/// The message properties of `event`: persistent, JSON, `message_id` = first dedupe key, and
/// the `kirim-*` headers.
pub fn properties(event: &StoredEvent) -> BasicProperties {
    let meta = &event.meta;
    let mut headers = FieldTable::default();
    let mut put = |name: &str, value: Option<&str>| {
        if let Some(value) = value {
            headers.insert(short(name), AMQPValue::LongString(LongString::from(value)));
        }
    };
    put("kirim-event-id", meta.event_id.as_deref());
    put("kirim-event-type", meta.event_type.as_deref());
    put("kirim-source", meta.source.map(|s| s.as_str()));
    put("kirim-delivery-id", meta.delivery_id());
    put(
        "kirim-received-at",
        Some(&crate::time::rfc3339_ms(meta.received_at_ms)),
    );
    let first_key = meta.keys.first().map(|k| k.as_str());
    put("kirim-dedupe-key", first_key);
    put(
        "kirim-phone-number-id",
        meta.phone_number_ids.first().map(String::as_str),
    );
    let mut properties = BasicProperties::default()
        .with_delivery_mode(2)
        .with_content_type(short("application/json"))
        .with_app_id(short("kirimhook"))
        .with_timestamp(meta.received_at_ms / 1000)
        .with_headers(headers);
    // A key longer than a short string cannot be a message_id; the header still carries it.
    if let Some(id) = first_key.and_then(|k| ShortString::try_new(k).ok()) {
        properties = properties.with_message_id(id);
    }
    properties
}

/// How a client or broker error during a publish counts, with the AMQP reply code when the
/// broker gave one. Lost connection or channel, broker going away, exchange gone (declared
/// again on reconnect) = unreachable; refused access, a message or frame too large =
/// permanent; anything else = retryable.
pub fn classify(error: &lapin::Error) -> (SinkError, Option<u16>) {
    let message = describe(error);
    match error.kind() {
        ErrorKind::ProtocolError(amqp) => {
            let code = Some(amqp.get_id());
            let error = match amqp.kind() {
                AMQPErrorKind::Soft(AMQPSoftError::ACCESSREFUSED)
                | AMQPErrorKind::Soft(AMQPSoftError::PRECONDITIONFAILED)
                | AMQPErrorKind::Soft(AMQPSoftError::CONTENTTOOLARGE)
                | AMQPErrorKind::Hard(AMQPHardError::FRAMEERROR) => SinkError::permanent(message),
                AMQPErrorKind::Soft(AMQPSoftError::NOTFOUND)
                | AMQPErrorKind::Hard(AMQPHardError::CONNECTIONFORCED) => {
                    SinkError::Unreachable { message }
                }
                _ => SinkError::retryable(message),
            };
            (error, code)
        }
        ErrorKind::IOError(_)
        | ErrorKind::InvalidConnectionState(_)
        | ErrorKind::InvalidChannelState(..)
        | ErrorKind::MissingHeartbeatError => (SinkError::Unreachable { message }, None),
        _ => (SinkError::retryable(message), None),
    }
}

/// The error's text, bounded. lapin's errors name the broker's reply, never the URL.
fn describe(error: &lapin::Error) -> String {
    let mut text = error.to_string();
    if text.len() > ERROR_EXCERPT_BYTES {
        let mut end = ERROR_EXCERPT_BYTES;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
    }
    text
}

fn unreachable(message: String) -> Failure {
    Failure::new(SinkError::Unreachable { message })
}

/// A short string known to fit (names checked at config time, fixed text).
fn short(text: &str) -> ShortString {
    ShortString::try_new(text).unwrap_or_default()
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests;
