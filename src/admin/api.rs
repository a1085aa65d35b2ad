//! The admin API's JSON: the request and response types of every `/v1` endpoint and of
//! `/readyz`, the page and selection limits, and the RFC 3339 parser for `since`. These types
//! are shared with the operator CLI ([`crate::ops::admin_cli`]) so the two cannot drift apart.
//! Nothing here reads the store or builds a response; the one piece of server-side logic is
//! [`Selection::resolve`], which refuses a retry or drop body that says neither or both.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use super::response::{printable, ApiError};

/// Page size of the list endpoints when `limit` is not given.
pub const DEFAULT_LIMIT: usize = 100;
/// Largest page of the list endpoints.
pub const MAX_LIMIT: usize = 1000;
/// Most seqs in one retry or drop request.
pub const MAX_SEQS: usize = 10_000;

/// `GET /v1/status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusReport {
    /// The daemon's version.
    pub version: String,
    /// Every configured sink, in config order.
    pub sinks: Vec<SinkReport>,
    /// Quarantined deliveries.
    pub quarantined: u64,
    /// Events still stored: queued, or kept for replay.
    pub events_stored: u64,
    /// Bytes the store's files take on disk.
    pub store_bytes: u64,
    /// Acknowledged deliveries the store found missing at recovery, over its life.
    #[serde(default)]
    pub recovery_dropped: u64,
    /// The last such finding, in words.
    #[serde(default)]
    pub recovery_last: Option<String>,
    /// Why deliveries are refused right now (503), if they are.
    #[serde(default)]
    pub refusing: Option<String>,
}

/// One sink in [`StatusReport`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SinkReport {
    /// The sink's name.
    pub name: String,
    /// Events in its queue, those waiting for a retry included.
    pub queued: u64,
    /// When the oldest queued event arrived (RFC 3339), if any is queued.
    pub oldest_received_at: Option<String>,
    /// How old the oldest queued event is, in seconds, if any is queued.
    pub oldest_age_secs: Option<u64>,
    /// Events in its dead letters.
    pub dead_letters: u64,
}

/// The last error of a sink's attempts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorReport {
    /// HTTP status, when the sink answered.
    pub status: Option<u16>,
    /// Error text or an excerpt of the answer.
    pub message: String,
}

/// One dead letter in a list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeadLetterSummary {
    /// The event's seq: the ID the CLI takes.
    pub seq: u64,
    /// The event id (`X-Kirim-Event-Id` or from the body).
    pub event_id: Option<String>,
    /// The event type.
    #[serde(rename = "type")]
    pub event_type: Option<String>,
    /// `kirim` or `meta`.
    pub source: Option<String>,
    /// When kirimhook received it (RFC 3339).
    pub received_at: String,
    /// Attempts made.
    pub attempts: u32,
    /// When the first attempt was made (RFC 3339).
    pub first_attempt_at: Option<String>,
    /// When the last attempt was made (RFC 3339).
    pub last_attempt_at: Option<String>,
    /// Why the last attempt failed.
    pub last_error: Option<ErrorReport>,
}

/// `GET /v1/sinks/{sink}/dead-letters`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeadLetterPage {
    /// The sink.
    pub sink: String,
    /// Up to `limit` dead letters, in seq order.
    pub dead_letters: Vec<DeadLetterSummary>,
    /// Pass as `after` for the next page; `None` when this is the last one.
    pub next_after: Option<u64>,
}

/// `GET /v1/sinks/{sink}/dead-letters/{seq}`.
#[derive(Debug, Serialize, Deserialize)]
pub struct DeadLetterDetail {
    /// The sink.
    pub sink: String,
    /// The attempts, as in the list.
    pub summary: DeadLetterSummary,
    /// The event as stored.
    pub event: EventDetail,
}

/// One quarantined delivery in a list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QuarantineSummary {
    /// Its seq: the ID the CLI takes.
    pub seq: u64,
    /// `X-Kirim-Event-Id`, when it came with one.
    pub event_id: Option<String>,
    /// `X-Kirim-Event`, when it came with one.
    #[serde(rename = "type")]
    pub event_type: Option<String>,
    /// When kirimhook received it (RFC 3339).
    pub received_at: String,
    /// Why it was not recognised (`not_utf8`, `not_json`, `unknown_shape`).
    pub reason: Option<String>,
    /// Body size in bytes.
    pub body_bytes: usize,
}

/// `GET /v1/quarantine`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QuarantinePage {
    /// Up to `limit` deliveries, in seq order.
    pub quarantine: Vec<QuarantineSummary>,
    /// Pass as `after` for the next page; `None` when this is the last one.
    pub next_after: Option<u64>,
}

/// How [`EventDetail::body`] is given.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BodyFormat {
    /// The body is JSON and embedded as it was received.
    Json,
    /// The body is not JSON: a string, invalid UTF-8 replaced.
    Text,
}

/// A stored delivery with its body (`show`). Signature headers and secrets are left out; the
/// id of the secret that verified it is shown.
#[derive(Debug, Serialize, Deserialize)]
pub struct EventDetail {
    /// Its seq.
    pub seq: u64,
    /// The event id.
    pub event_id: Option<String>,
    /// The event type.
    #[serde(rename = "type")]
    pub event_type: Option<String>,
    /// `kirim` or `meta` (none for a quarantined delivery).
    pub source: Option<String>,
    /// When kirimhook received it (RFC 3339).
    pub received_at: String,
    /// Id of the configured secret that verified it (never the secret).
    pub secret_id: String,
    /// Its dedupe keys.
    pub keys: Vec<String>,
    /// The `X-Kirim-*` headers it came with, signatures left out.
    pub headers: BTreeMap<String, String>,
    /// Why it is quarantined, for a quarantined delivery.
    pub quarantine_reason: Option<String>,
    /// Body size in bytes.
    pub body_bytes: usize,
    /// How `body` is given.
    pub body_format: BodyFormat,
    /// The body: the JSON as received, or a string.
    pub body: Box<RawValue>,
}

/// The body of the retry and drop requests: `{"seqs":[..]}` or `{"all":true}`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Selection {
    /// These seqs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seqs: Option<Vec<u64>>,
    /// Every one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub all: Option<bool>,
}

impl Selection {
    /// Every entry.
    pub fn all() -> Selection {
        Selection {
            seqs: None,
            all: Some(true),
        }
    }

    /// These seqs.
    pub fn seqs(seqs: Vec<u64>) -> Selection {
        Selection {
            seqs: Some(seqs),
            all: None,
        }
    }

    /// `None` for all, else the seqs; an error when the body says neither or both.
    pub(super) fn resolve(self) -> Result<Option<Vec<u64>>, ApiError> {
        match (self.seqs, self.all) {
            (None, Some(true)) => Ok(None),
            (Some(seqs), None | Some(false)) if !seqs.is_empty() => {
                if seqs.len() > MAX_SEQS {
                    return Err(ApiError::bad_request(format!(
                        "at most {MAX_SEQS} seqs per request"
                    )));
                }
                Ok(Some(seqs))
            }
            _ => Err(ApiError::bad_request(
                "give either {\"seqs\":[...]} with at least one seq, or {\"all\":true}",
            )),
        }
    }
}

/// The answer of a retry or drop: how many entries it touched.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Changed {
    /// The sink, for dead letters and replay.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sink: Option<String>,
    /// What was done: `retried`, `dropped` or `queued`.
    pub action: String,
    /// How many entries.
    pub count: u64,
}

/// The body of `POST /v1/sinks/{sink}/replay`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReplayRequest {
    /// Replay events received at or after this time: RFC 3339 with `Z` or an offset.
    pub since: String,
}

/// An error answer: `{"error": code, "message": text}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// A stable code (`unknown_sink`, `not_found`, `bad_request`, ...).
    pub error: String,
    /// What went wrong, for a person.
    pub message: String,
}

/// `GET /readyz`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Readiness {
    /// Whether the daemon is ready.
    pub ready: bool,
    /// Why not, when it is not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// Parses an RFC 3339 time with a zone: `Z` or `±HH:MM` (`2026-06-01T12:00:00Z`,
/// `2026-06-01T19:00:00.5+07:00`).
pub fn parse_rfc3339(text: &str) -> Result<SystemTime, String> {
    let text = text.trim();
    let bytes = text.as_bytes();
    let invalid = || {
        format!(
            "`{}` is not an RFC 3339 time such as 2026-06-01T12:00:00Z or \
             2026-06-01T19:00:00+07:00",
            printable(text)
        )
    };
    let (local, offset_secs): (&str, i64) = match bytes.last() {
        Some(b'Z' | b'z') => (&text[..text.len() - 1], 0),
        _ if bytes.len() >= 6
            && matches!(bytes[bytes.len() - 6], b'+' | b'-')
            && bytes[bytes.len() - 3] == b':' =>
        {
            let zone = &bytes[bytes.len() - 5..];
            let digits = |a: u8, b: u8| -> Option<i64> {
                Some(i64::from(
                    (a as char).to_digit(10)? * 10 + (b as char).to_digit(10)?,
                ))
            };
            let (hours, minutes) = digits(zone[0], zone[1])
                .zip(digits(zone[3], zone[4]))
                .filter(|(h, m)| *h < 24 && *m < 60)
                .ok_or_else(invalid)?;
            let sign = if bytes[bytes.len() - 6] == b'-' {
                -1
            } else {
                1
            };
            (
                &text[..text.len() - 6],
                sign * (hours * 3600 + minutes * 60),
            )
        }
        _ => {
            return Err(format!(
                "{}: add a time zone, `Z` for UTC or an offset such as +07:00",
                invalid()
            ))
        }
    };
    if !matches!(local.as_bytes().get(10), Some(b'T' | b't' | b' ')) || local.len() < 19 {
        return Err(invalid());
    }
    let mut normalised = local.to_owned();
    normalised.replace_range(10..11, "T");
    let as_utc = humantime::parse_rfc3339_weak(&normalised).map_err(|_| invalid())?;
    let shift = Duration::from_secs(offset_secs.unsigned_abs());
    let utc = if offset_secs >= 0 {
        as_utc.checked_sub(shift)
    } else {
        as_utc.checked_add(shift)
    };
    utc.ok_or_else(invalid)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::time::rfc3339_ms;

    #[test]
    fn selections() {
        assert_eq!(Selection::all().resolve().unwrap(), None);
        assert_eq!(
            Selection::seqs(vec![3, 4]).resolve().unwrap(),
            Some(vec![3, 4])
        );
        let parse = |text: &str| serde_json::from_str::<Selection>(text);
        assert_eq!(parse(r#"{"all":true}"#).unwrap().resolve().unwrap(), None);
        for bad in [
            r#"{}"#,
            r#"{"all":false}"#,
            r#"{"seqs":[]}"#,
            r#"{"seqs":[1],"all":true}"#,
        ] {
            assert!(parse(bad).unwrap().resolve().is_err(), "{bad}");
        }
        assert!(parse(r#"{"every":true}"#).is_err());
        assert!(Selection::seqs(vec![1; MAX_SEQS + 1]).resolve().is_err());
    }

    #[test]
    fn rfc3339_times() {
        let at = |s: &str| parse_rfc3339(s).unwrap();
        let base = at("2026-06-01T12:00:00Z");
        assert_eq!(
            base.duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_secs(),
            1_780_315_200
        );
        assert_eq!(at("2026-06-01T19:00:00+07:00"), base);
        assert_eq!(at("2026-06-01T08:30:00-03:30"), base);
        assert_eq!(at("2026-06-01 12:00:00+00:00"), base);
        assert_eq!(
            at("2026-06-01T12:00:00.250Z"),
            base + Duration::from_millis(250)
        );
        for bad in [
            "2026-06-01T12:00:00",
            "2026-06-01",
            "yesterday",
            "2026-06-01T12:00:00+7:00",
            "2026-06-01T12:00:00+25:00",
            "",
            "é",
            "2026-13-01T12:00:00Z",
        ] {
            assert!(parse_rfc3339(bad).is_err(), "{bad}");
        }
        assert!(parse_rfc3339("2026-06-01T12:00:00")
            .unwrap_err()
            .contains("time zone"));
        assert_eq!(rfc3339_ms(1_780_315_200_250), "2026-06-01T12:00:00.250Z");
        // A stored time from a broken clock, past year 9999: clamped, no panic.
        assert_eq!(rfc3339_ms(u64::MAX), "9999-12-31T23:59:59.999Z");
        assert_eq!(rfc3339_ms(253_402_300_800_000), "9999-12-31T23:59:59.999Z");
    }
}
