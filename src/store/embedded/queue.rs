//! Per-sink queue entries and dead letters: their types and on-disk encoding.
//!
//! A queue entry is keyed `sink name ++ 0x00 ++ seq (u64 BE)`; its value is the sink's attempt
//! state for that event (empty while it has never been attempted). A dead letter uses the same
//! key in its own keyspace and holds the final attempt state plus a full copy of the event record,
//! so it survives the event's removal. No I/O here.

use crate::store::model::{AttemptState, DeadLetter};
use crate::store::record;

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
    use crate::store::model::LastError;

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
}
