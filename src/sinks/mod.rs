//! Sinks: where stored events go. Each sink is fed from the store by [`crate::deliver`],
//! never from the request, so a slow or failing sink never slows the receive path or another
//! sink.
//!
//! A sink only delivers and says how it went; queueing, retries, back-off and dead letters
//! belong to the dispatcher. This module holds what every kind shares: the [`Sink`] trait,
//! [`SinkError`] (retryable, unreachable, gone or permanent, and nothing kind-specific),
//! [`SinkKind`] (one variant per kind, with its validated settings) and [`build`]. Each kind
//! lives in its own folder (`stdout/`, `http/`, `redis_stream/`, `nats/`, `rabbitmq/`) and owns its config keys (`<kind>/config.rs`,
//! registered in [`config::KINDS`]) and the way its own failures map onto [`SinkError`] (an
//! HTTP status is classified in [`http::classify`], not here).
//!
//! Adding a kind: a folder with `mod.rs` (the `Sink`) and `config.rs` (its keys, a
//! [`config::Kind`] and its validated settings), one line in [`config::KINDS`], a
//! [`SinkKind`] variant and an [`AnySink`] variant.

pub mod config;
pub mod http;
pub mod nats;
pub mod rabbitmq;
pub mod redis_stream;
pub mod stdout;
#[cfg(test)]
pub(crate) mod testing;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use crate::config::SinkConfig;
use crate::store::StoredEvent;

/// One event to deliver, with this sink's attempt number for it (1 for the first try).
#[derive(Debug, Clone)]
pub struct Attempt {
    /// The event.
    pub event: Arc<StoredEvent>,
    /// 1-based attempt number of this sink for this event.
    pub attempt: u32,
}

/// Why a delivery to a sink failed, in the dispatcher's terms: whether trying again may help.
/// What the kind's own protocol said (an HTTP status, say) is not part of it; see
/// [`Failure::code`].
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum SinkError {
    /// Trying again later may succeed (I/O error, timeout, an answer the kind counts as
    /// temporary, ...).
    #[error("{message}")]
    Retryable {
        /// What happened (bounded).
        message: String,
        /// How long the sink asked us to wait (HTTP's `Retry-After`, for one).
        retry_after: Option<Duration>,
    },
    /// The sink could not be reached at all (connection refused, no route): nothing was
    /// delivered and the event is not to blame, so the attempt does not count; the whole sink
    /// pauses and probes with back-off.
    #[error("{message}")]
    Unreachable {
        /// What happened.
        message: String,
    },
    /// The sink can never work again in this process (stdout's reader has exited): nothing
    /// counts against the event, it stays queued for the next start, and the daemon stops so
    /// that its supervisor restarts the pipeline.
    #[error("{message}")]
    Gone {
        /// What happened.
        message: String,
    },
    /// Trying again cannot succeed (the kind says so: most HTTP 4xx, a request that cannot
    /// be built): dead-letter at once.
    #[error("{message}")]
    Permanent {
        /// What happened (bounded).
        message: String,
    },
}

impl SinkError {
    /// A retryable error with no wait asked for.
    pub fn retryable(message: impl Into<String>) -> Self {
        SinkError::Retryable {
            message: message.into(),
            retry_after: None,
        }
    }

    /// A permanent error.
    pub fn permanent(message: impl Into<String>) -> Self {
        SinkError::Permanent {
            message: message.into(),
        }
    }
}

/// A delivery that stopped at `batch[delivered]`: every attempt before it was delivered, the
/// ones after it were not tried.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// How many attempts at the front of the batch were delivered.
    pub delivered: usize,
    /// Why the next one failed.
    pub error: SinkError,
    /// The sink's own status code for that failed attempt, when its protocol has one: the
    /// HTTP status for http (set by [`http`]), none for stdout. Recorded with the attempt
    /// (a dead letter's `last_error.status`) and never used to decide a retry: the kind has
    /// already done that in [`Failure::error`].
    pub code: Option<u16>,
}

impl Failure {
    /// A failure of the first attempt of the batch, without a code.
    pub fn new(error: SinkError) -> Self {
        Failure {
            delivered: 0,
            error,
            code: None,
        }
    }

    /// The same failure with the sink's status code for the attempt.
    pub fn with_code(self, code: u16) -> Self {
        Failure {
            code: Some(code),
            ..self
        }
    }

    /// The same failure after `delivered` attempts of the batch went through.
    pub fn after(self, delivered: usize) -> Self {
        Failure { delivered, ..self }
    }
}

/// How a sink whose `concurrency` counts events in flight sends them: batches of up to a
/// maximum size, as many batches at once as that count takes (the broker sinks).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InFlight {
    /// Events per batch: [`Sink::max_batch`].
    pub batch: usize,
    /// Batches at once: [`Sink::concurrency`].
    pub batches: usize,
}

impl InFlight {
    /// `events` in flight, in batches of at most `max_batch`.
    pub fn of(events: usize, max_batch: usize) -> Self {
        let batch = events.clamp(1, max_batch.max(1));
        InFlight {
            batch,
            batches: events.div_ceil(batch).max(1),
        }
    }
}

/// A destination for events.
pub trait Sink: Send + Sync + 'static {
    /// The configured name (also the key of this sink's queue in the store).
    fn name(&self) -> &str;

    /// Most deliveries in flight at once. A sink with 1 gets events strictly in store order.
    fn concurrency(&self) -> usize {
        1
    }

    /// Most events handed over in one call.
    fn max_batch(&self) -> usize {
        1
    }

    /// Delivers `batch` (never empty, in store order, at most [`Sink::max_batch`] long).
    fn deliver(&self, batch: &[Attempt]) -> impl Future<Output = Result<(), Failure>> + Send;
}

/// The kind of a sink, from its `kind` key, with the settings of its kind-specific keys.
#[derive(Debug, Clone)]
#[allow(
    clippy::large_enum_variant,
    reason = "built once at startup; boxing would only make matching clumsier"
)]
pub enum SinkKind {
    /// `kind = "stdout"`: writes one JSON event per line to standard output.
    Stdout,
    /// `kind = "http"`: POSTs each event to a URL (a relay target).
    Http(http::HttpSinkConfig),
    /// `kind = "redis_stream"`: appends each event to a Redis stream.
    RedisStream(redis_stream::RedisStreamConfig),
    /// `kind = "nats"`: publishes each event to NATS JetStream.
    Nats(nats::NatsSinkConfig),
    /// `kind = "rabbitmq"`: publishes each event to a RabbitMQ exchange, with confirms.
    RabbitMq(rabbitmq::RabbitMqSinkConfig),
}

impl SinkKind {
    /// The longest one delivery attempt can take, when the kind bounds it (http's
    /// `timeout_secs`): a claim must outlive it.
    pub fn attempt_timeout(&self) -> Option<Duration> {
        match self {
            SinkKind::Stdout => None,
            SinkKind::Http(http) => Some(http.timeout),
            SinkKind::RedisStream(_) => Some(redis_stream::ATTEMPT_TIMEOUT),
            SinkKind::Nats(nats) => Some(nats.timeout),
            // Waiting for a turn, connecting and the confirm are bounded by `timeout_secs`
            // each.
            SinkKind::RabbitMq(rabbit) => Some(rabbit.timeout * 3),
        }
    }
}

/// A sink of any kind: what [`build`] makes of a [`SinkConfig`]. Implements [`Sink`] by
/// handing every call to the sink inside.
#[allow(
    clippy::large_enum_variant,
    reason = "one per sink, built at startup and moved once into its dispatcher"
)]
pub enum AnySink {
    /// A stdout sink.
    Stdout(stdout::StdoutSink),
    /// An HTTP relay sink.
    Http(http::HttpSink),
    /// A Redis Streams sink.
    RedisStream(redis_stream::RedisStreamSink),
    /// A NATS JetStream sink.
    Nats(nats::NatsSink),
    /// A RabbitMQ sink.
    RabbitMq(rabbitmq::RabbitMqSink),
}

/// The sink `config` describes, ready to be fed by a dispatcher. Opens nothing yet: an HTTP
/// NATS or RabbitMQ sink connects on its first delivery.
pub fn build(config: &SinkConfig) -> AnySink {
    match &config.kind {
        SinkKind::Stdout => AnySink::Stdout(stdout::StdoutSink::new(config.name.clone())),
        SinkKind::Http(http) => AnySink::Http(http::HttpSink::new(config.name.clone(), http)),
        SinkKind::RedisStream(redis) => AnySink::RedisStream(redis_stream::RedisStreamSink::new(
            config.name.clone(),
            redis,
        )),
        SinkKind::Nats(nats) => AnySink::Nats(nats::NatsSink::new(config.name.clone(), nats)),
        SinkKind::RabbitMq(rabbit) => {
            AnySink::RabbitMq(rabbitmq::RabbitMqSink::new(config.name.clone(), rabbit))
        }
    }
}

impl Sink for AnySink {
    fn name(&self) -> &str {
        match self {
            AnySink::Stdout(sink) => sink.name(),
            AnySink::Http(sink) => sink.name(),
            AnySink::RedisStream(sink) => sink.name(),
            AnySink::Nats(sink) => sink.name(),
            AnySink::RabbitMq(sink) => sink.name(),
        }
    }

    fn concurrency(&self) -> usize {
        match self {
            AnySink::Stdout(sink) => sink.concurrency(),
            AnySink::Http(sink) => sink.concurrency(),
            AnySink::RedisStream(sink) => sink.concurrency(),
            AnySink::Nats(sink) => sink.concurrency(),
            AnySink::RabbitMq(sink) => sink.concurrency(),
        }
    }

    fn max_batch(&self) -> usize {
        match self {
            AnySink::Stdout(sink) => sink.max_batch(),
            AnySink::Http(sink) => sink.max_batch(),
            AnySink::RedisStream(sink) => sink.max_batch(),
            AnySink::Nats(sink) => sink.max_batch(),
            AnySink::RabbitMq(sink) => sink.max_batch(),
        }
    }

    async fn deliver(&self, batch: &[Attempt]) -> Result<(), Failure> {
        match self {
            AnySink::Stdout(sink) => sink.deliver(batch).await,
            AnySink::Http(sink) => sink.deliver(batch).await,
            AnySink::RedisStream(sink) => sink.deliver(batch).await,
            AnySink::Nats(sink) => sink.deliver(batch).await,
            AnySink::RabbitMq(sink) => sink.deliver(batch).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::InFlight;

    /// Events in flight become batches of up to the maximum, as many as it takes.
    #[test]
    fn events_in_flight_split_into_batches() {
        for (events, batch, batches) in [
            (1, 1, 1),
            (8, 8, 1),
            (64, 64, 1),
            (65, 64, 2),
            (256, 64, 4),
            (1000, 64, 16),
        ] {
            assert_eq!(
                InFlight::of(events, 64),
                InFlight { batch, batches },
                "{events} events in flight"
            );
        }
    }
}
