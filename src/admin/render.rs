//! Stored records as the API shows them, pure: a dead letter as a [`DeadLetterSummary`], a
//! quarantined delivery as a [`QuarantineSummary`], either as an [`EventDetail`] with its body
//! (embedded JSON when it is JSON, else lossy text). Signature headers are left out and secrets
//! are never stored, so neither can show. No I/O.

use serde_json::value::RawValue;

use super::api::{BodyFormat, DeadLetterSummary, ErrorReport, EventDetail, QuarantineSummary};
use crate::store::{DeadLetter, StoredEvent};
use crate::time::rfc3339_ms;

/// Headers never shown by `show`: they carry signatures, not information.
const HIDDEN_HEADERS: &[&str] = &["x-kirim-signature", "x-kirim-signature-256"];

fn optional_time(ms: u64) -> Option<String> {
    (ms > 0).then(|| rfc3339_ms(ms))
}

/// A dead letter in a list: the event's ids and its attempts.
pub(super) fn summary(letter: &DeadLetter) -> DeadLetterSummary {
    let meta = &letter.event.meta;
    DeadLetterSummary {
        seq: letter.event.seq,
        event_id: meta.event_id.clone(),
        event_type: meta.event_type.clone(),
        source: meta.source.map(|s| s.as_str().to_owned()),
        received_at: rfc3339_ms(meta.received_at_ms),
        attempts: letter.state.attempts,
        first_attempt_at: optional_time(letter.state.first_attempt_ms),
        last_attempt_at: optional_time(letter.state.last_attempt_ms),
        last_error: letter.state.last_error.as_ref().map(|e| ErrorReport {
            status: e.status,
            message: e.message.clone(),
        }),
    }
}

/// A quarantined delivery in a list.
pub(super) fn quarantine_summary(event: &StoredEvent) -> QuarantineSummary {
    QuarantineSummary {
        seq: event.seq,
        event_id: event.meta.event_id.clone(),
        event_type: event.meta.event_type.clone(),
        received_at: rfc3339_ms(event.meta.received_at_ms),
        reason: event.meta.quarantine_reason.clone(),
        body_bytes: event.body.len(),
    }
}

/// The body as embedded JSON when it is JSON, else as a JSON string of its lossy UTF-8.
pub(super) fn render_body(body: &[u8]) -> (BodyFormat, Box<RawValue>) {
    let json = std::str::from_utf8(body)
        .ok()
        .filter(|text| !text.trim().is_empty())
        .and_then(|text| serde_json::from_str::<Box<RawValue>>(text).ok());
    match json {
        Some(raw) => (BodyFormat::Json, raw),
        None => {
            let text = String::from_utf8_lossy(body);
            let raw =
                serde_json::value::to_raw_value(&text).expect("a string always serialises to JSON");
            (BodyFormat::Text, raw)
        }
    }
}

/// A stored delivery with its body, signature headers left out.
pub(super) fn event_detail(event: &StoredEvent) -> EventDetail {
    let meta = &event.meta;
    let (body_format, body) = render_body(&event.body);
    EventDetail {
        seq: event.seq,
        event_id: meta.event_id.clone(),
        event_type: meta.event_type.clone(),
        source: meta.source.map(|s| s.as_str().to_owned()),
        received_at: rfc3339_ms(meta.received_at_ms),
        secret_id: meta.secret_id.clone(),
        keys: meta.keys.iter().map(|k| k.as_str().to_owned()).collect(),
        headers: meta
            .headers
            .iter()
            .filter(|(name, _)| !HIDDEN_HEADERS.contains(&name.as_str()))
            .cloned()
            .collect(),
        quarantine_reason: meta.quarantine_reason.clone(),
        body_bytes: event.body.len(),
        body_format,
        body,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_are_json_or_text() {
        let (format, raw) = render_body(br#"{"b":1, "a":[true]}"#);
        assert_eq!(format, BodyFormat::Json);
        assert_eq!(raw.get(), r#"{"b":1, "a":[true]}"#);
        let (format, raw) = render_body(b"not json \xff");
        assert_eq!(format, BodyFormat::Text);
        assert_eq!(raw.get(), "\"not json \u{FFFD}\"");
        let (format, _) = render_body(b"");
        assert_eq!(format, BodyFormat::Text);
    }
}
