//! The store's domain types, shared by every engine: what is admitted, what is stored, what a
//! sink owes, claims and their outcomes, counts. No engine, no encoding, no I/O here.
//!
//! How a sink's work flows through these types: [`crate::store::Store::claim`] hands out
//! [`Claim`]s (an event with its attempt state, leased to this instance for a while and
//! fenced by a [`ClaimToken`]); the dispatcher delivers them and reports one [`Settlement`]
//! per claim ([`Outcome::Delivered`], [`Outcome::Retry`], [`Outcome::DeadLetter`] or
//! [`Outcome::Release`]). A settlement whose claim was taken over after its lease expired is
//! fenced: it does not apply.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::receive::envelope::{DedupeKey, Shape, Source};
use crate::receive::signature::Verified;

/// Longest error excerpt kept (bytes of the response body or error text).
pub const ERROR_EXCERPT_BYTES: usize = 512;

/// Everything kirimhook knows about a delivery apart from its body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordMeta {
    /// When the request was received, in milliseconds since the Unix epoch.
    pub received_at_ms: u64,
    /// Id of the configured secret whose signature matched.
    pub secret_id: String,
    /// The `X-Kirim-*` headers as received (lower-case names, in request order).
    pub headers: Vec<(String, String)>,
    /// Dedupe keys of the delivery.
    pub keys: Vec<DedupeKey>,
    /// Recognised body shape; `None` for a quarantined delivery.
    pub shape: Option<Shape>,
    /// Event family decided from the body; `None` for a quarantined delivery.
    pub source: Option<Source>,
    /// Event type (`X-Kirim-Event` or taken from the body).
    pub event_type: Option<String>,
    /// Event id (`X-Kirim-Event-Id` or taken from the body).
    pub event_id: Option<String>,
    /// Meta `phone_number_id`s the event belongs to (Meta passthrough only).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub phone_number_ids: Vec<String>,
    /// Why a quarantined delivery was not recognised (`not_utf8`, `not_json`, `unknown_shape`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quarantine_reason: Option<String>,
}

impl RecordMeta {
    /// Value of the `X-Kirim-*` header `name` (lower case), if it was present.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// `X-Kirim-Delivery-Id`, if present.
    pub fn delivery_id(&self) -> Option<&str> {
        self.header("x-kirim-delivery-id")
    }

    /// `X-Kirim-Attempt` as a number, if present and numeric.
    pub fn attempt(&self) -> Option<u32> {
        self.header("x-kirim-attempt")
            .and_then(|a| a.trim().parse().ok())
    }
}

/// A delivery as read back from the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredEvent {
    /// Position in the store: unique, never reused. The embedded engine hands them out in
    /// admission order; on PostgreSQL, concurrent admissions may commit out of seq order.
    pub seq: u64,
    /// Metadata.
    pub meta: RecordMeta,
    /// The exact body bytes that were verified.
    pub body: Vec<u8>,
}

/// Where a delivery goes once admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Destination {
    /// A recognised event: queued for the sinks whose filters match.
    Events,
    /// An authentic delivery with an unrecognised body: kept for an operator, not forwarded.
    Quarantine,
}

/// A verified delivery ready to be admitted. Building one needs a [`Verified`], so
/// unauthenticated input cannot reach the store.
#[derive(Debug)]
pub struct NewDelivery {
    /// Proof of authenticity (and the matched secret).
    pub verified: Verified,
    /// Where it goes.
    pub destination: Destination,
    /// Metadata to store; `secret_id` is overwritten from `verified`.
    pub meta: RecordMeta,
    /// The exact body bytes.
    pub body: bytes::Bytes,
    /// Sinks the event is queued for (their filters matched). Ignored for quarantine.
    pub sinks: Vec<String>,
}

impl NewDelivery {
    /// SHA-256 of the delivery's signed content (its `t` and its body): a captured delivery
    /// sent again with other unsigned headers has the same digest, and is a duplicate.
    pub fn signed_digest(&self) -> [u8; 32] {
        signed_digest(self.verified.timestamp(), &self.body)
    }
}

/// SHA-256 of `t` (i64 BE) followed by `body`.
pub fn signed_digest(t: i64, body: &[u8]) -> [u8; 32] {
    use sha2::Digest as _;
    let mut hasher = sha2::Sha256::new();
    hasher.update(t.to_be_bytes());
    hasher.update(body);
    hasher.finalize().into()
}

/// Milliseconds since the Unix epoch of `t` (0 before it).
pub fn millis(t: std::time::SystemTime) -> u64 {
    t.duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Outcome of an admission.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// At least one key was new: the delivery is durably stored under this seq.
    New {
        /// Its sequence number.
        seq: u64,
    },
    /// Every key was already known, or this signed content was admitted before: nothing
    /// new was stored.
    Duplicate,
}

/// What went wrong on the last attempt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LastError {
    /// HTTP status, when the sink answered over HTTP.
    pub status: Option<u16>,
    /// Error text or a bounded excerpt of the response body.
    pub message: String,
}

impl LastError {
    /// An error with `message` cut to [`ERROR_EXCERPT_BYTES`] on a character boundary.
    pub fn new(status: Option<u16>, message: &str) -> Self {
        let mut end = message.len().min(ERROR_EXCERPT_BYTES);
        while !message.is_char_boundary(end) {
            end -= 1;
        }
        LastError {
            status,
            message: message[..end].to_owned(),
        }
    }
}

/// A sink's attempts at one event so far.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttemptState {
    /// Attempts made (0: never attempted).
    pub attempts: u32,
    /// Time of the first attempt (ms since the epoch; 0 when none).
    pub first_attempt_ms: u64,
    /// Time of the last attempt (ms since the epoch; 0 when none).
    pub last_attempt_ms: u64,
    /// Earliest time of the next attempt (ms since the epoch).
    pub next_attempt_ms: u64,
    /// Error of the last attempt.
    pub last_error: Option<LastError>,
}

/// One event waiting for one sink.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueEntry {
    /// The event's seq.
    pub seq: u64,
    /// Attempts so far.
    pub state: AttemptState,
}

/// An event a sink gave up on, with why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    /// The sink.
    pub sink: String,
    /// Final attempt state (attempts, first/last attempt time, last error).
    pub state: AttemptState,
    /// The event as it was stored.
    pub event: StoredEvent,
}

/// Fences a claim: a settlement carries the token it was claimed with, and applies only
/// while no later claim of the same entry was handed out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ClaimToken(pub u64);

/// One queued event leased to this instance for delivery to one sink.
#[derive(Debug, Clone)]
pub struct Claim {
    /// The event's seq.
    pub seq: u64,
    /// The sink's attempts at it so far.
    pub state: AttemptState,
    /// The event.
    pub event: Arc<StoredEvent>,
    /// What a settlement of this claim must carry.
    pub token: ClaimToken,
}

/// In which order a sink's entries may be claimed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClaimOrder {
    /// Any due entry, lowest seq first.
    Any,
    /// Strictly in seq order: while the earliest entry waits for a retry (or is leased),
    /// nothing later is handed out (a sink with concurrency 1, such as stdout).
    Strict,
}

/// What one claim call handed out.
#[derive(Debug, Clone, Default)]
pub struct Claimed {
    /// The claims, in seq order.
    pub claims: Vec<Claim>,
    /// When an entry not handed out now becomes due (ms since the epoch), if the engine
    /// knows: the next retry, or the end of another claim's lease.
    pub next_due_ms: Option<u64>,
}

/// What became of one claim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Delivered: the queue entry goes.
    Delivered,
    /// Failed, try again later: the entry keeps this state and is due at its
    /// `next_attempt_ms`.
    Retry(AttemptState),
    /// Given up: the entry moves to the sink's dead letters with this final state.
    DeadLetter(AttemptState),
    /// Not attempted (the sink was unreachable or stopped): the entry is due again at once,
    /// its state unchanged.
    Release,
}

/// A sink's outcome for one claim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settlement {
    /// The event's seq.
    pub seq: u64,
    /// The token of the claim.
    pub token: ClaimToken,
    /// What became of it.
    pub outcome: Outcome,
}

impl Settlement {
    /// The settlement of `claim` with `outcome`.
    pub fn of(claim: &Claim, outcome: Outcome) -> Settlement {
        Settlement {
            seq: claim.seq,
            token: claim.token,
            outcome,
        }
    }
}

/// What a settle call did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Settled {
    /// Settlements that applied.
    pub applied: usize,
    /// Settlements refused because their claim was taken over (or is gone).
    pub fenced: usize,
}

/// Counts from one retention sweep.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Swept {
    /// Dedupe keys forgotten because they were older than the retention.
    pub keys: usize,
    /// Events removed because no configured sink had them queued any more.
    pub events: usize,
}

/// What a sink owes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SinkStatus {
    /// Events waiting in the sink's queue (including those waiting for a retry).
    pub queued: usize,
    /// When the oldest queued event arrived (ms since the epoch), if any is queued.
    pub oldest_received_ms: Option<u64>,
    /// Events in the sink's dead letters.
    pub dead_letters: usize,
}

/// What the store holds, exactly.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counts {
    /// Stored events (queued for a sink, or kept for replay).
    pub events: u64,
    /// Quarantined deliveries.
    pub quarantine: u64,
    /// Queue depth per sink (sinks with an empty queue may be missing).
    pub queued: BTreeMap<String, u64>,
    /// Dead letters per sink (sinks with none may be missing).
    pub dead_letters: BTreeMap<String, u64>,
}

impl Counts {
    /// The queue depth of `sink`.
    pub fn queued(&self, sink: &str) -> u64 {
        self.queued.get(sink).copied().unwrap_or(0)
    }

    /// The dead letters of `sink`.
    pub fn dead_letters(&self, sink: &str) -> u64 {
        self.dead_letters.get(sink).copied().unwrap_or(0)
    }
}

/// What recovery found missing, over the store's life.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecoveryLoss {
    /// Acknowledged admissions that recovery found missing, in total.
    pub dropped_total: u64,
    /// The last such finding, in words (when, how many, which seqs, which journal).
    pub last: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_excerpt_is_bounded_on_a_char_boundary() {
        let long = "é".repeat(ERROR_EXCERPT_BYTES);
        let e = LastError::new(None, &long);
        assert!(e.message.len() <= ERROR_EXCERPT_BYTES);
        assert!(e.message.chars().all(|c| c == 'é'));
    }
}
