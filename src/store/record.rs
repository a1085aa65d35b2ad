//! The on-disk encoding of one stored delivery.
//!
//! A record is `[version: u8][received_at_ms: u64 BE][meta length: u32 BE][meta][raw body]`.
//! The body is kept byte-for-byte after the metadata, never re-encoded. Version 2 (written
//! now) encodes the metadata in a compact binary form: decoding it costs a few copies instead
//! of a JSON parse, and the receive time sits at a fixed offset for the retention sweep.
//! Version 1 records (`[1][meta length: u32 BE][meta as JSON][raw body]`, written by earlier
//! versions) are still read. This module does no I/O and knows no engine: both engines store
//! records in this form.
//!
//! Version 2 metadata, in order: `secret_id`; `headers` (count, then name and value of each);
//! `keys` (count, then each); `shape` and `source` (one byte each, 0 for none); `event_type`,
//! `event_id`, `quarantine_reason` (one byte 0 for none, 1 then the string); and
//! `phone_number_ids` (count, then each). A string is its length (u32 BE) then its UTF-8
//! bytes; a count is a u32 BE.

use super::model::{RecordMeta, StoredEvent};
use crate::receive::envelope::{DedupeKey, Shape, Source};

const VERSION_JSON: u8 = 1;
const VERSION: u8 = 2;
const JSON_HEADER_LEN: usize = 1 + 4;
const HEADER_LEN: usize = 1 + 8 + 4;

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
    let mut out = Vec::with_capacity(HEADER_LEN + 256 + body.len());
    out.push(VERSION);
    out.extend_from_slice(&meta.received_at_ms.to_be_bytes());
    out.extend_from_slice(&[0; 4]);
    put_str(&mut out, &meta.secret_id);
    put_count(&mut out, meta.headers.len());
    for (name, value) in &meta.headers {
        put_str(&mut out, name);
        put_str(&mut out, value);
    }
    put_count(&mut out, meta.keys.len());
    for key in &meta.keys {
        put_str(&mut out, key.as_str());
    }
    out.push(match meta.shape {
        None => 0,
        Some(Shape::KirimEnvelope) => 1,
        Some(Shape::MetaPassthrough) => 2,
        Some(Shape::AlternateMessage) => 3,
    });
    out.push(match meta.source {
        None => 0,
        Some(Source::Kirim) => 1,
        Some(Source::Meta) => 2,
    });
    for optional in [&meta.event_type, &meta.event_id, &meta.quarantine_reason] {
        match optional {
            None => out.push(0),
            Some(s) => {
                out.push(1);
                put_str(&mut out, s);
            }
        }
    }
    put_count(&mut out, meta.phone_number_ids.len());
    for id in &meta.phone_number_ids {
        put_str(&mut out, id);
    }
    let meta_len = out.len() - HEADER_LEN;
    out[HEADER_LEN - 4..HEADER_LEN].copy_from_slice(&len_u32(meta_len).to_be_bytes());
    out.extend_from_slice(body);
    out
}

/// Decodes a record written by [`encode`] (or by an earlier version in JSON).
pub fn decode(seq: u64, bytes: &[u8]) -> Result<StoredEvent, DecodeError> {
    let (meta, body) = match bytes.first() {
        None => return Err(DecodeError("empty".into())),
        Some(&VERSION) => {
            let (received_at_ms, meta, body) = split(bytes)?;
            (decode_meta(received_at_ms, meta)?, body)
        }
        Some(&VERSION_JSON) => {
            let (json, body) = split_json(bytes)?;
            let meta = serde_json::from_slice(json).map_err(|e| DecodeError(e.to_string()))?;
            (meta, body)
        }
        Some(version) => return Err(DecodeError(format!("unknown version {version}"))),
    };
    Ok(StoredEvent {
        seq,
        meta,
        body: body.to_vec(),
    })
}

/// When the record's delivery was received (ms since the Unix epoch), without decoding the
/// rest of a version 2 record.
pub fn received_at_ms(bytes: &[u8]) -> Result<u64, DecodeError> {
    match bytes.first() {
        Some(&VERSION) => split(bytes).map(|(received_at_ms, _, _)| received_at_ms),
        _ => decode(0, bytes).map(|event| event.meta.received_at_ms),
    }
}

/// A version 2 record's receive time, metadata bytes and body.
fn split(bytes: &[u8]) -> Result<(u64, &[u8], &[u8]), DecodeError> {
    let header = bytes
        .get(..HEADER_LEN)
        .ok_or_else(|| DecodeError("truncated header".into()))?;
    let received_at_ms = be_u64(&header[1..9]);
    let meta_len = be_u32(&header[9..HEADER_LEN]) as usize;
    let rest = &bytes[HEADER_LEN..];
    if rest.len() < meta_len {
        return Err(DecodeError("truncated metadata".into()));
    }
    let (meta, body) = rest.split_at(meta_len);
    Ok((received_at_ms, meta, body))
}

/// A version 1 record's JSON metadata and body.
fn split_json(bytes: &[u8]) -> Result<(&[u8], &[u8]), DecodeError> {
    let header = bytes
        .get(..JSON_HEADER_LEN)
        .ok_or_else(|| DecodeError("truncated header".into()))?;
    let len = be_u32(&header[1..]) as usize;
    let rest = &bytes[JSON_HEADER_LEN..];
    if rest.len() < len {
        return Err(DecodeError("truncated metadata".into()));
    }
    Ok(rest.split_at(len))
}

fn decode_meta(received_at_ms: u64, bytes: &[u8]) -> Result<RecordMeta, DecodeError> {
    let mut r = Reader(bytes);
    let secret_id = r.string()?;
    let headers = (0..r.count()?)
        .map(|_| Ok((r.string()?, r.string()?)))
        .collect::<Result<_, DecodeError>>()?;
    let keys = (0..r.count()?)
        .map(|_| r.string().map(DedupeKey::from_stored))
        .collect::<Result<_, _>>()?;
    let shape = match r.byte()? {
        0 => None,
        1 => Some(Shape::KirimEnvelope),
        2 => Some(Shape::MetaPassthrough),
        3 => Some(Shape::AlternateMessage),
        other => return Err(DecodeError(format!("unknown shape {other}"))),
    };
    let source = match r.byte()? {
        0 => None,
        1 => Some(Source::Kirim),
        2 => Some(Source::Meta),
        other => return Err(DecodeError(format!("unknown source {other}"))),
    };
    let event_type = r.optional()?;
    let event_id = r.optional()?;
    let quarantine_reason = r.optional()?;
    let phone_number_ids = (0..r.count()?)
        .map(|_| r.string())
        .collect::<Result<_, _>>()?;
    if !r.0.is_empty() {
        return Err(DecodeError(format!(
            "{} unexpected bytes after the metadata",
            r.0.len()
        )));
    }
    Ok(RecordMeta {
        received_at_ms,
        secret_id,
        headers,
        keys,
        shape,
        source,
        event_type,
        event_id,
        phone_number_ids,
        quarantine_reason,
    })
}

/// Reads version 2 metadata front to back; every read checks the bytes are there.
struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], DecodeError> {
        if self.0.len() < n {
            return Err(DecodeError("truncated metadata".into()));
        }
        let (taken, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(taken)
    }

    fn byte(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1)?[0])
    }

    fn count(&mut self) -> Result<usize, DecodeError> {
        let n = be_u32(self.take(4)?) as usize;
        // Every item takes at least 4 bytes: a count beyond that is damage, not an
        // allocation to make.
        if n > self.0.len() / 4 {
            return Err(DecodeError(format!("count {n} exceeds the metadata")));
        }
        Ok(n)
    }

    fn string(&mut self) -> Result<String, DecodeError> {
        let len = be_u32(self.take(4)?) as usize;
        let bytes = self.take(len)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| DecodeError("a string is not UTF-8".into()))
    }

    fn optional(&mut self) -> Result<Option<String>, DecodeError> {
        match self.byte()? {
            0 => Ok(None),
            1 => self.string().map(Some),
            other => Err(DecodeError(format!("unknown option tag {other}"))),
        }
    }
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&len_u32(s.len()).to_be_bytes());
    out.extend_from_slice(s.as_bytes());
}

fn put_count(out: &mut Vec<u8>, n: usize) {
    out.extend_from_slice(&len_u32(n).to_be_bytes());
}

/// A length as stored. Metadata comes from one bounded request (headers and body are capped
/// far below 4 GiB), so it always fits.
fn len_u32(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

fn be_u32(b: &[u8]) -> u32 {
    let mut a = [0; 4];
    a.copy_from_slice(&b[..4]);
    u32::from_be_bytes(a)
}

fn be_u64(b: &[u8]) -> u64 {
    let mut a = [0; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_be_bytes(a)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta() -> RecordMeta {
        RecordMeta {
            received_at_ms: 1_781_061_307_123,
            secret_id: "sec_A".into(),
            headers: vec![
                ("x-kirim-delivery-id".into(), "wbd_1".into()),
                ("x-kirim-attempt".into(), " 3".into()),
            ],
            keys: vec![DedupeKey::from_stored("kirim:evt_1".into())],
            shape: Some(Shape::KirimEnvelope),
            source: Some(Source::Kirim),
            event_type: Some("contact.created".into()),
            event_id: Some("evt_1".into()),
            phone_number_ids: vec![],
            quarantine_reason: None,
        }
    }

    /// Every field set to something other than its default, each shape and source.
    fn varied() -> Vec<RecordMeta> {
        let shapes = [
            (Some(Shape::MetaPassthrough), Some(Source::Meta)),
            (Some(Shape::AlternateMessage), Some(Source::Kirim)),
            (None, None),
        ];
        shapes
            .into_iter()
            .map(|(shape, source)| RecordMeta {
                shape,
                source,
                event_type: None,
                phone_number_ids: vec!["106540352242922".into(), "ünïcode".into()],
                quarantine_reason: Some("not_json".into()),
                keys: vec![],
                headers: vec![],
                secret_id: String::new(),
                ..meta()
            })
            .collect()
    }

    /// A version 1 record as earlier versions wrote it.
    fn encode_v1(meta: &RecordMeta, body: &[u8]) -> Vec<u8> {
        let json = serde_json::to_vec(meta).unwrap();
        let mut out = vec![VERSION_JSON];
        out.extend_from_slice(&(json.len() as u32).to_be_bytes());
        out.extend_from_slice(&json);
        out.extend_from_slice(body);
        out
    }

    #[test]
    fn round_trips_body_bytes_exactly() {
        let body = b"{\"a\":1,\n \"b\" : [1.0e3]}\xff";
        let bytes = encode(&meta(), body);
        assert_eq!(bytes[0], VERSION);
        let ev = decode(7, &bytes).unwrap();
        assert_eq!(ev.seq, 7);
        assert_eq!(ev.meta, meta());
        assert_eq!(ev.body, body);
        assert_eq!(ev.meta.delivery_id(), Some("wbd_1"));
        assert_eq!(ev.meta.attempt(), Some(3));
        assert_eq!(received_at_ms(&bytes).unwrap(), 1_781_061_307_123);
    }

    #[test]
    fn round_trips_every_field() {
        for meta in varied() {
            let decoded = decode(1, &encode(&meta, b"")).unwrap();
            assert_eq!(decoded.meta, meta);
            assert!(decoded.body.is_empty());
        }
    }

    #[test]
    fn reads_version_1_records_of_earlier_versions() {
        let mut all = varied();
        all.push(meta());
        for meta in all {
            let bytes = encode_v1(&meta, b"{\"x\":1}");
            let ev = decode(3, &bytes).unwrap();
            assert_eq!(ev.meta, meta);
            assert_eq!(ev.body, b"{\"x\":1}");
            assert_eq!(received_at_ms(&bytes).unwrap(), meta.received_at_ms);
        }
    }

    #[test]
    fn rejects_truncated_damaged_and_unknown_versions() {
        for bytes in [encode(&meta(), b"{}"), encode_v1(&meta(), b"{}")] {
            assert!(decode(1, &bytes[..3]).is_err());
            assert!(decode(1, &bytes[..20]).is_err());
            let mut other = bytes.clone();
            other[0] = 9;
            assert!(decode(1, &other).is_err());
        }
        assert!(decode(1, &[]).is_err());
        assert!(received_at_ms(&[]).is_err());
        // Every cut inside the metadata is refused, never misread.
        let bytes = encode(&meta(), b"");
        for cut in 0..bytes.len() {
            assert!(
                decode(1, &bytes[..cut]).is_err(),
                "a cut at {cut} was accepted"
            );
        }
        // A damaged count asks for no allocation beyond the bytes that are there.
        let mut damaged = bytes.clone();
        let count_at = HEADER_LEN + 4 + "sec_A".len();
        damaged[count_at..count_at + 4].copy_from_slice(&u32::MAX.to_be_bytes());
        assert!(decode(1, &damaged).is_err());
        let mut bad_shape = encode(&varied()[2], b"");
        let shape_at = HEADER_LEN + 4 + 4 + 4;
        assert_eq!(bad_shape[shape_at], 0);
        bad_shape[shape_at] = 9;
        assert!(decode(1, &bad_shape).is_err());
    }

    #[test]
    fn binary_metadata_is_smaller_than_json() {
        let binary = encode(&meta(), b"");
        let json = encode_v1(&meta(), b"");
        assert!(
            binary.len() < json.len(),
            "{} >= {}",
            binary.len(),
            json.len()
        );
    }
}
