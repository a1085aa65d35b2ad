//! Sinks: where stored events go. Each sink reads from the store through [`crate::dispatch`],
//! never from the request, so a slow or failing sink never slows the receive path.
//!
//! A sink only delivers; progress, retries and back-off belong to the dispatcher.

pub mod stdout;

use std::future::Future;

use crate::store::StoredEvent;

/// Why a delivery to a sink failed.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// Trying again later may succeed (I/O error, timeout, 5xx, ...).
    #[error("retryable: {0}")]
    Retryable(String),
    /// Trying again cannot succeed for these events.
    #[error("permanent: {0}")]
    Permanent(String),
}

/// A destination for events.
pub trait Sink: Send + 'static {
    /// The configured name (also the key of this sink's progress in the store).
    fn name(&self) -> &str;

    /// Delivers `events` (in store order, never empty). `Ok` means every one of them is delivered.
    fn deliver(
        &mut self,
        events: &[StoredEvent],
    ) -> impl Future<Output = Result<(), SinkError>> + Send;
}
