//! Per-sink queue entries and dead letters: their types and on-disk encoding.
//!
//! A queue entry is keyed `sink name ++ 0x00 ++ seq (u64 BE)`; its value is the sink's attempt
//! state for that event (empty while it has never been attempted). A dead letter uses the same
//! key in its own keyspace and holds the final attempt state plus a full copy of the event record,
//! so it survives the event's removal. No I/O here.

use serde::{Deserialize, Serialize};

use super::record::{self, StoredEvent};

/// Longest error excerpt kept (bytes of the response body or error text).
pub const ERROR_EXCERPT_BYTES: usize = 512;

/// What went wrong on the last attempt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LastError {
    /// HTTP status, when the sink answered.
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

/// The key of `seq` in `sink`'s queue (and dead letters).
pub fn key(sink: &str, seq: u64) -> Vec<u8> {
    let mut key = prefix(sink);
    key.extend_from_slice(&seq.to_be_bytes());
    key
}

/// The prefix of every key of `sink`.
pub fn prefix(sink: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(sink.len() + 9);
    key.extend_from_slice(sink.as_bytes());
    key.push(0);
    key
}

/// The sink of a key made by [`key`].
pub fn sink_of(key: &[u8]) -> String {
    let end = key.iter().position(|&b| b == 0).unwrap_or(key.len());
    String::from_utf8_lossy(&key[..end]).into_owned()
}

/// The seq of a key made by [`key`].
pub fn seq_of(key: &[u8]) -> u64 {
    key.len()
        .checked_sub(8)
        .and_then(|start| key.get(start..))
        .map(super::be_u64)
        .unwrap_or(0)
}

/// Encodes an attempt state (empty for a never-attempted entry).
pub fn encode_state(state: &AttemptState) -> Vec<u8> {
    if state.attempts == 0 && state.last_error.is_none() {
        return Vec::new();
    }
    serde_json::to_vec(state).expect("AttemptState always serialises")
}

/// Decodes an attempt state; an empty or unreadable value is a fresh entry.
pub fn decode_state(bytes: &[u8]) -> AttemptState {
    if bytes.is_empty() {
        return AttemptState::default();
    }
    serde_json::from_slice(bytes).unwrap_or_default()
}

/// Encodes a dead letter value: `[state length u32 BE][state JSON][event record]`.
pub fn encode_dead_letter(state: &AttemptState, record: &[u8]) -> Vec<u8> {
    let json = serde_json::to_vec(state).expect("AttemptState always serialises");
    let mut out = Vec::with_capacity(4 + json.len() + record.len());
    out.extend_from_slice(&(json.len() as u32).to_be_bytes());
    out.extend_from_slice(&json);
    out.extend_from_slice(record);
    out
}

/// Splits a dead letter value into its state JSON and the event record it holds.
fn split_dead_letter(bytes: &[u8]) -> Result<(&[u8], &[u8]), record::DecodeError> {
    let bad = |what: &str| record::DecodeError::new(format!("dead letter: {what}"));
    let (len, rest) = bytes
        .split_first_chunk::<4>()
        .ok_or_else(|| bad("truncated"))?;
    let len = u32::from_be_bytes(*len) as usize;
    if rest.len() < len {
        return Err(bad("truncated state"));
    }
    Ok(rest.split_at(len))
}

/// The event record kept in a dead letter value, as stored (not decoded).
pub fn dead_letter_record(bytes: &[u8]) -> Result<&[u8], record::DecodeError> {
    split_dead_letter(bytes).map(|(_, record)| record)
}

/// Decodes a dead letter written by [`encode_dead_letter`].
pub fn decode_dead_letter(
    sink: &str,
    seq: u64,
    bytes: &[u8],
) -> Result<DeadLetter, record::DecodeError> {
    let (json, record) = split_dead_letter(bytes)?;
    let state = serde_json::from_slice(json)
        .map_err(|e| record::DecodeError::new(format!("dead letter: {e}")))?;
    Ok(DeadLetter {
        sink: sink.to_owned(),
        state,
        event: record::decode(seq, record)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_sort_by_sink_then_seq_and_give_back_the_seq() {
        assert!(key("a", 2) < key("a", 10));
        assert!(key("a", u64::MAX) < key("ab", 0));
        assert_eq!(seq_of(&key("app", 77)), 77);
        assert!(key("a", 5).starts_with(&prefix("a")));
        assert!(!key("ab", 5).starts_with(&prefix("a")));
    }

    #[test]
    fn fresh_state_is_empty_and_round_trips() {
        assert!(encode_state(&AttemptState::default()).is_empty());
        assert_eq!(decode_state(&[]), AttemptState::default());
        let state = AttemptState {
            attempts: 3,
            first_attempt_ms: 1,
            last_attempt_ms: 2,
            next_attempt_ms: 3,
            last_error: Some(LastError::new(Some(503), "busy")),
        };
        assert_eq!(decode_state(&encode_state(&state)), state);
    }

    #[test]
    fn error_excerpt_is_bounded_on_a_char_boundary() {
        let long = "é".repeat(ERROR_EXCERPT_BYTES);
        let e = LastError::new(None, &long);
        assert!(e.message.len() <= ERROR_EXCERPT_BYTES);
        assert!(e.message.chars().all(|c| c == 'é'));
    }
}
