//! The on-disk encoding of one stored delivery.
//!
//! A record is `[version: u8][meta length: u32 BE][meta JSON][raw body bytes]`. The metadata is
//! small JSON (serde) so that fields can be added later without a migration; the body is kept
//! byte-for-byte after it, never re-encoded. This module does no I/O and knows no engine: both engines store records in this form.

use super::model::{RecordMeta, StoredEvent};

const VERSION: u8 = 1;
const HEADER_LEN: usize = 1 + 4;

/// A record that cannot be decoded.
#[derive(Debug, thiserror::Error)]
#[error("undecodable record: {0}")]
pub struct DecodeError(String);

impl DecodeError {
    /// A decode error saying `what` was wrong.
    pub fn new(what: impl Into<String>) -> Self {
        DecodeError(what.into())
    }
}

/// Encodes a record.
pub fn encode(meta: &RecordMeta, body: &[u8]) -> Vec<u8> {
    // Serialising a struct of strings and vectors cannot fail.
    let json = serde_json::to_vec(meta).expect("RecordMeta always serialises");
    let mut out = Vec::with_capacity(HEADER_LEN + json.len() + body.len());
    out.push(VERSION);
    out.extend_from_slice(&(json.len() as u32).to_be_bytes());
    out.extend_from_slice(&json);
    out.extend_from_slice(body);
    out
}

/// Decodes a record written by [`encode`].
pub fn decode(seq: u64, bytes: &[u8]) -> Result<StoredEvent, DecodeError> {
    let (&version, rest) = bytes
        .split_first()
        .ok_or_else(|| DecodeError("empty".into()))?;
    if version != VERSION {
        return Err(DecodeError(format!("unknown version {version}")));
    }
    let (len, rest) = rest
        .split_first_chunk::<4>()
        .ok_or_else(|| DecodeError("truncated header".into()))?;
    let len = u32::from_be_bytes(*len) as usize;
    if rest.len() < len {
        return Err(DecodeError("truncated metadata".into()));
    }
    let (json, body) = rest.split_at(len);
    let meta = serde_json::from_slice(json).map_err(|e| DecodeError(e.to_string()))?;
    Ok(StoredEvent {
        seq,
        meta,
        body: body.to_vec(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::receive::envelope::{Shape, Source};

    fn meta() -> RecordMeta {
        RecordMeta {
            received_at_ms: 1_781_061_307_123,
            secret_id: "sec_A".into(),
            headers: vec![
                ("x-kirim-delivery-id".into(), "wbd_1".into()),
                ("x-kirim-attempt".into(), " 3".into()),
            ],
            keys: vec![],
            shape: Some(Shape::KirimEnvelope),
            source: Some(Source::Kirim),
            event_type: Some("contact.created".into()),
            event_id: Some("evt_1".into()),
            phone_number_ids: vec![],
            quarantine_reason: None,
        }
    }

    #[test]
    fn round_trips_body_bytes_exactly() {
        let body = b"{\"a\":1,\n \"b\" : [1.0e3]}\xff";
        let bytes = encode(&meta(), body);
        let ev = decode(7, &bytes).unwrap();
        assert_eq!(ev.seq, 7);
        assert_eq!(ev.meta, meta());
        assert_eq!(ev.body, body);
        assert_eq!(ev.meta.delivery_id(), Some("wbd_1"));
        assert_eq!(ev.meta.attempt(), Some(3));
    }

    #[test]
    fn rejects_truncated_and_unknown_versions() {
        let bytes = encode(&meta(), b"{}");
        assert!(decode(1, &bytes[..3]).is_err());
        assert!(decode(1, &bytes[..10]).is_err());
        assert!(decode(1, &[]).is_err());
        let mut other = bytes.clone();
        other[0] = 9;
        assert!(decode(1, &other).is_err());
    }
}
