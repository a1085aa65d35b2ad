//! Sinks: where stored events go. Each sink is fed from the store by [`crate::deliver`],
//! never from the request, so a slow or failing sink never slows the receive path or another
//! sink.
//!
//! A sink only delivers and says how it went; queueing, retries, back-off and dead letters
//! belong to the dispatcher.

pub mod http;
pub mod stdout;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use crate::store::StoredEvent;

/// One event to deliver, with this sink's attempt number for it (1 for the first try).
#[derive(Debug, Clone)]
pub struct Attempt {
    /// The event.
    pub event: Arc<StoredEvent>,
    /// 1-based attempt number of this sink for this event.
    pub attempt: u32,
}

/// Why a delivery to a sink failed.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum SinkError {
    /// Trying again later may succeed (I/O error, timeout, 408, 429, 5xx, ...).
    #[error("{message}")]
    Retryable {
        /// HTTP status, when the sink answered.
        status: Option<u16>,
        /// What happened (bounded).
        message: String,
        /// How long the sink asked us to wait (`Retry-After`).
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
    /// Trying again cannot succeed (3xx, most 4xx): dead-letter at once.
    #[error("{message}")]
    Permanent {
        /// HTTP status, when the sink answered.
        status: Option<u16>,
        /// What happened (bounded).
        message: String,
    },
}

impl SinkError {
    /// A retryable error without a status.
    pub fn retryable(message: impl Into<String>) -> Self {
        SinkError::Retryable {
            status: None,
            message: message.into(),
            retry_after: None,
        }
    }

    /// The HTTP status, when the sink answered.
    pub fn status(&self) -> Option<u16> {
        match self {
            SinkError::Retryable { status, .. } | SinkError::Permanent { status, .. } => *status,
            SinkError::Unreachable { .. } | SinkError::Gone { .. } => None,
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
