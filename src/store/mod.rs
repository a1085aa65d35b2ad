//! The durable store: the only code in kirimhook that knows a storage engine.
//!
//! [`model`] holds the domain types every engine shares; [`record`] the engine-neutral
//! encoding of one stored delivery; [`embedded`] the fjall engine (the default, one machine).

pub mod embedded;
pub mod model;
pub mod postgres;
pub mod record;

pub use embedded::guard;
pub use embedded::{check_not_damaged, Change, Store, StoreOptions};
pub use model::{
    millis, signed_digest, Admission, AttemptState, Claim, ClaimOrder, ClaimToken, Claimed, Counts,
    DeadLetter, Destination, LastError, NewDelivery, Outcome, QueueEntry, RecordMeta, RecoveryLoss,
    Settled, Settlement, SinkStatus, StoredEvent, Swept,
};

/// Errors of the store, whatever its engine. Engine errors arrive here as text: no engine
/// type crosses this boundary.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The engine failed (I/O error, a lost connection, a failed query, ...).
    #[error("storage engine: {0}")]
    Engine(String),
    /// The store could not be opened; the message says what is wrong and what to do.
    #[error("{0}")]
    Open(String),
    /// Another process holds the store, or is creating it (its `version` file is not there
    /// yet, or it is damaged); the message says which and what to do.
    #[error("{0}")]
    InUse(String),
    /// Free disk space is below `store.min_free_bytes`: nothing was written.
    #[error("{0}")]
    LowDisk(String),
    /// A batch could not be written or checked, or its commit's outcome is unknown: the
    /// caller must not answer 2xx for it.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// The store was closed, or its writer stopped.
    #[error("store writer is not running")]
    WriterGone,
    /// A stored record could not be decoded.
    #[error("record {seq}: {source}")]
    Decode {
        /// Sequence number of the record.
        seq: u64,
        /// What was wrong.
        source: record::DecodeError,
    },
    /// A blocking read task panicked or was cancelled.
    #[error("store read task failed: {0}")]
    Task(String),
}
