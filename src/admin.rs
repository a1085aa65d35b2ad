//! The admin listener: health, readiness, Prometheus metrics, and the JSON API behind the
//! operator commands (`kirimhook status`, `dead-letters`, `quarantine`, `replay`).
//!
//! It is a second hyper HTTP/1.1 listener, on loopback by default (`[admin] listen`), never on
//! the public port (the config refuses that). It has no authentication, so it must stay on a
//! trusted interface. Routes:
//!
//! | method | path | answer |
//! |---|---|---|
//! | GET | `/healthz` | 200 `ok` while the process runs |
//! | GET | `/readyz` | 200 when ready to take deliveries, else 503 with the reason |
//! | GET | `/metrics` | OpenMetrics text ([`crate::metrics`]), gauges read from the store per scrape |
//! | GET | `/v1/status` | per sink: queue depth, oldest queued event, dead letters; quarantine size; store size |
//! | GET | `/v1/sinks/{sink}/dead-letters[?after=SEQ&limit=N]` | one page of a sink's dead letters |
//! | GET | `/v1/sinks/{sink}/dead-letters/{seq}` | one dead letter with its event and body |
//! | POST | `/v1/sinks/{sink}/dead-letters/retry` | `{"seqs":[..]}` or `{"all":true}`: back into the queue |
//! | POST | `/v1/sinks/{sink}/dead-letters/drop` | same body: forget them |
//! | GET | `/v1/quarantine[?after=SEQ&limit=N]` | one page of quarantined deliveries |
//! | GET | `/v1/quarantine/{seq}` | one quarantined delivery with its body |
//! | POST | `/v1/quarantine/drop` | `{"seqs":[..]}` or `{"all":true}` |
//! | POST | `/v1/sinks/{sink}/replay` | `{"since":"RFC 3339"}`: queue retained events again for one sink |
//!
//! Ready means: the webhook listener serves, the store answers a write round-trip within
//! [`READY_TIMEOUT`], and no shutdown is under way. Errors are JSON
//! `{"error": code, "message": text}`; an unknown sink is a 404 naming it.
//! Request bodies are bounded ([`MAX_BODY_BYTES`]) and timed ([`BODY_TIMEOUT`]); nothing on
//! the request path panics. Event bodies are shown (as JSON when they are JSON, else as lossy
//! text); secrets never are, and neither are the signature headers. Every change an operator
//! makes is logged at info. The API types are shared with [`crate::ops::admin_cli`], so the two
//! cannot drift apart.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::body::Body;
use hyper::header::{HeaderValue, ALLOW, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::health::Health;
use crate::metrics::{self, Metrics, SinkSnapshot, Snapshot};
use crate::receive::route::Routes;
use crate::store::{self, DeadLetter, Store, StoredEvent};

/// Largest request body the admin API reads.
pub const MAX_BODY_BYTES: usize = 64 * 1024;
/// Time allowed for a request's headers, and separately for its body.
pub const BODY_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections served at once; more wait in the backlog.
pub const MAX_CONNECTIONS: usize = 64;
/// How long `/readyz` waits for the store's write round-trip.
pub const READY_TIMEOUT: Duration = Duration::from_secs(1);
/// How long in-flight admin requests may finish after shutdown starts.
const DRAIN: Duration = Duration::from_secs(2);
/// Page size of the list endpoints when `limit` is not given.
pub const DEFAULT_LIMIT: usize = 100;
/// Largest page of the list endpoints.
pub const MAX_LIMIT: usize = 1000;
/// Most seqs in one retry or drop request.
pub const MAX_SEQS: usize = 10_000;
/// Headers never shown by `show`: they carry signatures, not information.
const HIDDEN_HEADERS: &[&str] = &["x-kirim-signature", "x-kirim-signature-256"];

/// The response type of every admin request.
pub type AdminResponse = Response<Full<Bytes>>;

// ---------------------------------------------------------------------------------------------
// API types, shared with the CLI.

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
    fn resolve(self) -> Result<Option<Vec<u64>>, ApiError> {
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

// ---------------------------------------------------------------------------------------------
// Routing (pure).

/// What a request asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Route {
    Healthz,
    Readyz,
    Metrics,
    Status,
    DeadLetters(String),
    DeadLetter(String, u64),
    RetryDeadLetters(String),
    DropDeadLetters(String),
    Quarantine,
    QuarantineEntry(u64),
    DropQuarantine,
    Replay(String),
}

/// An error answer before or while handling a route.
#[derive(Debug, Clone, PartialEq, Eq)]
struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    allow: Option<&'static str>,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
            allow: None,
        }
    }

    fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    fn method(allow: &'static str) -> ApiError {
        ApiError {
            allow: Some(allow),
            ..ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                format!("this path takes {allow}"),
            )
        }
    }

    fn store(error: &store::StoreError) -> ApiError {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "store_unavailable",
            format!("the store did not answer: {error}"),
        )
    }

    fn response(&self) -> AdminResponse {
        let mut response = json(
            self.status,
            &ErrorBody {
                error: self.code.to_owned(),
                message: self.message.clone(),
            },
        );
        if let Some(allow) = self.allow {
            response
                .headers_mut()
                .insert(ALLOW, HeaderValue::from_static(allow));
        }
        response
    }
}

/// Maps a method and path to a route. Sinks are not checked here.
fn route(method: &Method, path: &str) -> Result<Route, ApiError> {
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let get = |route: Route| {
        if method == Method::GET || method == Method::HEAD {
            Ok(route)
        } else {
            Err(ApiError::method("GET"))
        }
    };
    let post = |route: Route| {
        if method == Method::POST {
            Ok(route)
        } else {
            Err(ApiError::method("POST"))
        }
    };
    let seq = |text: &str| {
        text.parse::<u64>().map_err(|_| {
            ApiError::bad_request(format!("`{}` is not a seq (a number)", printable(text)))
        })
    };
    match segments.as_slice() {
        ["healthz"] => get(Route::Healthz),
        ["readyz"] => get(Route::Readyz),
        ["metrics"] => get(Route::Metrics),
        ["v1", "status"] => get(Route::Status),
        ["v1", "sinks", sink, "dead-letters"] => get(Route::DeadLetters((*sink).to_owned())),
        ["v1", "sinks", sink, "dead-letters", "retry"] => {
            post(Route::RetryDeadLetters((*sink).to_owned()))
        }
        ["v1", "sinks", sink, "dead-letters", "drop"] => {
            post(Route::DropDeadLetters((*sink).to_owned()))
        }
        ["v1", "sinks", sink, "dead-letters", id] => {
            get(Route::DeadLetter((*sink).to_owned(), seq(id)?))
        }
        ["v1", "sinks", sink, "replay"] => post(Route::Replay((*sink).to_owned())),
        ["v1", "quarantine"] => get(Route::Quarantine),
        ["v1", "quarantine", "drop"] => post(Route::DropQuarantine),
        ["v1", "quarantine", id] => get(Route::QuarantineEntry(seq(id)?)),
        _ => Err(ApiError::not_found(format!(
            "no such admin endpoint: {}",
            printable(path)
        ))),
    }
}

/// `after` and `limit` of a list request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct PageQuery {
    after: u64,
    limit: usize,
}

fn page_query(query: Option<&str>) -> Result<PageQuery, ApiError> {
    let mut page = PageQuery {
        after: 0,
        limit: DEFAULT_LIMIT,
    };
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        match key {
            "after" => {
                page.after = value.parse().map_err(|_| {
                    ApiError::bad_request(format!("after: `{}` is not a seq", printable(value)))
                })?;
            }
            "limit" => {
                page.limit = value
                    .parse()
                    .ok()
                    .filter(|n| (1..=MAX_LIMIT).contains(n))
                    .ok_or_else(|| {
                        ApiError::bad_request(format!(
                            "limit: `{}` is not a number from 1 to {MAX_LIMIT}",
                            printable(value)
                        ))
                    })?;
            }
            other => {
                return Err(ApiError::bad_request(format!(
                    "unknown query parameter `{}` (known: after, limit)",
                    printable(other)
                )))
            }
        }
    }
    Ok(page)
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

pub use crate::time::rfc3339_ms;

fn optional_time(ms: u64) -> Option<String> {
    (ms > 0).then(|| rfc3339_ms(ms))
}

/// Control characters replaced, for text that came from a request and goes into a message.
fn printable(text: &str) -> String {
    let mut out: String = text
        .chars()
        .take(200)
        .map(|c| if c.is_control() { '\u{FFFD}' } else { c })
        .collect();
    if text.chars().count() > 200 {
        out.push('…');
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Rendering stored data (pure).

fn summary(letter: &DeadLetter) -> DeadLetterSummary {
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

fn quarantine_summary(event: &StoredEvent) -> QuarantineSummary {
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
pub fn render_body(body: &[u8]) -> (BodyFormat, Box<RawValue>) {
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

fn event_detail(event: &StoredEvent) -> EventDetail {
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

fn json<T: Serialize>(status: StatusCode, value: &T) -> AdminResponse {
    let mut body = serde_json::to_vec_pretty(value).unwrap_or_else(|e| {
        format!("{{\"error\":\"internal\",\"message\":\"cannot encode the answer: {e}\"}}")
            .into_bytes()
    });
    body.push(b'\n');
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

fn text(status: StatusCode, content_type: &'static str, body: impl Into<Bytes>) -> AdminResponse {
    let mut response = Response::new(Full::new(body.into()));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

// ---------------------------------------------------------------------------------------------
// Handling.

/// The admin API of one daemon: its store, metrics and configured sinks.
pub struct Admin {
    store: Store,
    metrics: Metrics,
    sinks: Vec<String>,
    health: Health,
    /// Each sink's filter (the running routes), so a replay queues only what the sink would
    /// have been given.
    routes: Routes,
    shutdown: CancellationToken,
    serving: AtomicBool,
    /// The last gauges computed for `/metrics`: counting queues is O(queue), so concurrent or
    /// frequent scrapes share one count for [`SNAPSHOT_TTL`].
    snapshot_cache: tokio::sync::Mutex<Option<(std::time::Instant, Snapshot)>>,
}

/// How long `/metrics` reuses the gauges it computed.
const SNAPSHOT_TTL: Duration = Duration::from_secs(5);

impl Admin {
    /// An admin API over `store` and the running `routes` (the configured sinks, whose filters
    /// `replay` honours). `/readyz` answers 503 until [`Admin::set_serving`] says the public
    /// listener serves, and once `shutdown` is cancelled.
    pub fn new(
        store: Store,
        metrics: Metrics,
        routes: Routes,
        health: Health,
        shutdown: CancellationToken,
    ) -> Admin {
        // A reload never changes the set of sink names (that takes a restart).
        let sinks = routes
            .current()
            .iter()
            .map(|(name, _)| name.clone())
            .collect();
        Admin {
            store,
            metrics,
            sinks,
            health,
            routes,
            shutdown,
            serving: AtomicBool::new(false),
            snapshot_cache: tokio::sync::Mutex::new(None),
        }
    }

    /// Whether the public listener serves (for `/readyz`).
    pub fn set_serving(&self, serving: bool) {
        self.serving.store(serving, Ordering::Release);
    }

    /// Answers one request. Infallible: every failure is a response.
    pub async fn handle<B>(self: Arc<Self>, req: Request<B>) -> Result<AdminResponse, Infallible>
    where
        B: Body,
        B::Error: std::error::Error + Send + Sync + 'static,
    {
        let response = match self.dispatch(req).await {
            Ok(response) => response,
            Err(error) => error.response(),
        };
        Ok(response)
    }

    async fn dispatch<B>(&self, req: Request<B>) -> Result<AdminResponse, ApiError>
    where
        B: Body,
        B::Error: std::error::Error + Send + Sync + 'static,
    {
        let route = route(req.method(), req.uri().path())?;
        let query = req.uri().query().map(str::to_owned);
        match route {
            Route::Healthz => Ok(text(StatusCode::OK, "text/plain; charset=utf-8", "ok\n")),
            Route::Readyz => Ok(self.readyz().await),
            Route::Metrics => Ok(text(
                StatusCode::OK,
                metrics::CONTENT_TYPE,
                self.metrics.render(&self.cached_snapshot().await),
            )),
            Route::Status => self.status().await.map(|s| json(StatusCode::OK, &s)),
            Route::DeadLetters(sink) => {
                let sink = self.sink(&sink)?;
                let page = page_query(query.as_deref())?;
                let letters = self
                    .store
                    .dead_letters(sink, page.after, page.limit)
                    .await
                    .map_err(|e| ApiError::store(&e))?;
                let next_after = (letters.len() == page.limit)
                    .then(|| letters.last().map(|l| l.event.seq))
                    .flatten();
                Ok(json(
                    StatusCode::OK,
                    &DeadLetterPage {
                        sink: sink.to_owned(),
                        dead_letters: letters.iter().map(summary).collect(),
                        next_after,
                    },
                ))
            }
            Route::DeadLetter(sink, seq) => {
                let sink = self.sink(&sink)?;
                let letter = self
                    .store
                    .dead_letters(sink, seq.saturating_sub(1), 1)
                    .await
                    .map_err(|e| ApiError::store(&e))?
                    .into_iter()
                    .find(|l| l.event.seq == seq && seq > 0)
                    .ok_or_else(|| {
                        ApiError::not_found(format!("sink {sink} has no dead letter {seq}"))
                    })?;
                Ok(json(
                    StatusCode::OK,
                    &DeadLetterDetail {
                        sink: sink.to_owned(),
                        summary: summary(&letter),
                        event: event_detail(&letter.event),
                    },
                ))
            }
            Route::RetryDeadLetters(sink) => {
                let sink = self.sink(&sink)?;
                let selection = read_json::<Selection, B>(req).await?.resolve()?;
                let n = self
                    .store
                    .retry_dead_letters(sink, selection.clone())
                    .await
                    .map_err(|e| ApiError::store(&e))?;
                tracing::info!(
                    sink, retried = n, seqs = ?selection,
                    "admin: dead letters put back into the queue"
                );
                Ok(changed(Some(sink), "retried", n))
            }
            Route::DropDeadLetters(sink) => {
                let sink = self.sink(&sink)?;
                let selection = read_json::<Selection, B>(req).await?.resolve()?;
                let n = self
                    .store
                    .drop_dead_letters(sink, selection.clone())
                    .await
                    .map_err(|e| ApiError::store(&e))?;
                tracing::info!(sink, dropped = n, seqs = ?selection, "admin: dead letters dropped");
                Ok(changed(Some(sink), "dropped", n))
            }
            Route::Quarantine => {
                let page = page_query(query.as_deref())?;
                let entries = self
                    .store
                    .read_quarantine(page.after, page.limit)
                    .await
                    .map_err(|e| ApiError::store(&e))?;
                let next_after = (entries.len() == page.limit)
                    .then(|| entries.last().map(|e| e.seq))
                    .flatten();
                Ok(json(
                    StatusCode::OK,
                    &QuarantinePage {
                        quarantine: entries.iter().map(quarantine_summary).collect(),
                        next_after,
                    },
                ))
            }
            Route::QuarantineEntry(seq) => {
                let event = self
                    .store
                    .read_quarantine(seq.saturating_sub(1), 1)
                    .await
                    .map_err(|e| ApiError::store(&e))?
                    .into_iter()
                    .find(|e| e.seq == seq && seq > 0)
                    .ok_or_else(|| ApiError::not_found(format!("no quarantined delivery {seq}")))?;
                Ok(json(StatusCode::OK, &event_detail(&event)))
            }
            Route::DropQuarantine => {
                let selection = read_json::<Selection, B>(req).await?.resolve()?;
                let n = self
                    .store
                    .drop_quarantine(selection.clone())
                    .await
                    .map_err(|e| ApiError::store(&e))?;
                tracing::info!(
                    dropped = n, seqs = ?selection,
                    "admin: quarantined deliveries dropped"
                );
                Ok(changed(None, "dropped", n))
            }
            Route::Replay(sink) => {
                let sink = self.sink(&sink)?;
                let request = read_json::<ReplayRequest, B>(req).await?;
                let since = parse_rfc3339(&request.since)
                    .map_err(|e| ApiError::bad_request(format!("since: {e}")))?;
                let filter = self.routes.filter(sink);
                let n = self
                    .store
                    .replay(sink, since, &filter)
                    .await
                    .map_err(|e| ApiError::store(&e))?;
                tracing::info!(
                    sink, queued = n, since = %request.since,
                    "admin: stored events queued again"
                );
                Ok(changed(Some(sink), "queued", n))
            }
        }
    }

    /// The configured sink called `name`, or a 404 naming it.
    fn sink<'a>(&'a self, name: &str) -> Result<&'a str, ApiError> {
        self.sinks
            .iter()
            .find(|s| *s == name)
            .map(String::as_str)
            .ok_or_else(|| {
                ApiError::new(
                    StatusCode::NOT_FOUND,
                    "unknown_sink",
                    format!(
                        "no sink named `{}` is configured (configured: {})",
                        printable(name),
                        self.sinks.join(", ")
                    ),
                )
            })
    }

    async fn readyz(&self) -> AdminResponse {
        let not_ready = |reason: String| {
            json(
                StatusCode::SERVICE_UNAVAILABLE,
                &Readiness {
                    ready: false,
                    reason: Some(reason),
                },
            )
        };
        if let Some(refusing) = self.refusing() {
            return not_ready(refusing);
        }
        if self.shutdown.is_cancelled() {
            return not_ready("shutting down".into());
        }
        if !self.serving.load(Ordering::Acquire) {
            return not_ready("the webhook listener is not serving yet".into());
        }
        // A round trip through the engine (the embedded writer's empty batch, or a query).
        match tokio::time::timeout(READY_TIMEOUT, self.store.ping()).await {
            Err(_) => not_ready(format!(
                "the store did not answer a write within {READY_TIMEOUT:?}"
            )),
            Ok(Err(e)) => not_ready(format!("the store refused a write: {e}")),
            Ok(Ok(())) if self.shutdown.is_cancelled() => not_ready("shutting down".into()),
            Ok(Ok(())) => json(
                StatusCode::OK,
                &Readiness {
                    ready: true,
                    reason: None,
                },
            ),
        }
    }

    async fn status(&self) -> Result<StatusReport, ApiError> {
        let now = store::millis(SystemTime::now());
        let mut sinks = Vec::with_capacity(self.sinks.len());
        for name in &self.sinks {
            let status = self
                .store
                .sink_status(name)
                .await
                .map_err(|e| ApiError::store(&e))?;
            sinks.push(SinkReport {
                name: name.clone(),
                queued: status.queued as u64,
                oldest_received_at: status.oldest_received_ms.map(rfc3339_ms),
                oldest_age_secs: status
                    .oldest_received_ms
                    .map(|ms| now.saturating_sub(ms) / 1000),
                dead_letters: status.dead_letters as u64,
            });
        }
        let counts = self.store.counts().await.map_err(|e| ApiError::store(&e))?;
        Ok(StatusReport {
            version: env!("CARGO_PKG_VERSION").to_owned(),
            sinks,
            quarantined: counts.quarantine,
            events_stored: counts.events,
            store_bytes: self.store_bytes().await,
            recovery_dropped: self.store.recovery_loss().dropped_total,
            recovery_last: self.store.recovery_loss().last,
            refusing: self.refusing(),
        })
    }

    /// Why deliveries are refused right now (503), in words, if they are.
    fn refusing(&self) -> Option<String> {
        if let Some(fault) = self.health.fault() {
            return Some(format!("not taking deliveries: {fault}"));
        }
        self.store.low_disk().map(|free| {
            format!(
                "disk nearly full: {} free, below store.min_free_bytes; deliveries get 503 \
                 until space is freed",
                crate::units::human_bytes(free)
            )
        })
    }

    /// [`Admin::snapshot`], reused for [`SNAPSHOT_TTL`]; one computation at a time.
    async fn cached_snapshot(&self) -> Snapshot {
        let mut cache = self.snapshot_cache.lock().await;
        if let Some((at, snapshot)) = cache.as_ref() {
            if at.elapsed() < SNAPSHOT_TTL {
                return snapshot.clone();
            }
        }
        let snapshot = self.snapshot().await;
        *cache = Some((std::time::Instant::now(), snapshot.clone()));
        snapshot
    }

    /// The gauges' values; a sink whose status cannot be read is left out (and logged).
    async fn snapshot(&self) -> Snapshot {
        let now = store::millis(SystemTime::now());
        let mut sinks = Vec::with_capacity(self.sinks.len());
        for name in &self.sinks {
            match self.store.sink_status(name).await {
                Ok(status) => sinks.push(SinkSnapshot {
                    name: name.clone(),
                    queued: status.queued as u64,
                    oldest_age: status
                        .oldest_received_ms
                        .map(|ms| Duration::from_millis(now.saturating_sub(ms)))
                        .unwrap_or_default(),
                    dead_letters: status.dead_letters as u64,
                }),
                Err(e) => {
                    tracing::warn!(sink = %name, error = %e, "metrics: cannot read the sink's status")
                }
            }
        }
        let quarantined = match self.store.counts().await {
            Ok(counts) => counts.quarantine,
            Err(e) => {
                tracing::warn!(error = %e, "metrics: cannot read the store's counts");
                0
            }
        };
        Snapshot {
            sinks,
            quarantined,
            store_bytes: self.store_bytes().await,
            store_free_bytes: self.store.free_bytes(),
            low_disk: self.store.low_disk().is_some(),
            recovery_dropped: self.store.recovery_loss().dropped_total,
            log_write_failures: crate::telemetry::log_write_failures(),
        }
    }

    async fn store_bytes(&self) -> u64 {
        match self.store.disk_space().await {
            Ok(bytes) => bytes,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the store's disk space");
                0
            }
        }
    }
}

fn changed(sink: Option<&str>, action: &str, count: usize) -> AdminResponse {
    json(
        StatusCode::OK,
        &Changed {
            sink: sink.map(str::to_owned),
            action: action.to_owned(),
            count: count as u64,
        },
    )
}

/// Reads a bounded, timed JSON body.
async fn read_json<T, B>(req: Request<B>) -> Result<T, ApiError>
where
    T: serde::de::DeserializeOwned,
    B: Body,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    let limited = Limited::new(req.into_body(), MAX_BODY_BYTES);
    let body = match tokio::time::timeout(BODY_TIMEOUT, limited.collect()).await {
        Err(_) => {
            return Err(ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                "body_timeout",
                format!("the request body did not arrive within {BODY_TIMEOUT:?}"),
            ))
        }
        Ok(Err(e)) if e.downcast_ref::<LengthLimitError>().is_some() => {
            return Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "body_too_large",
                format!("request bodies are limited to {MAX_BODY_BYTES} bytes"),
            ))
        }
        Ok(Err(e)) => {
            return Err(ApiError::bad_request(format!(
                "cannot read the request body: {e}"
            )))
        }
        Ok(Ok(collected)) => collected.to_bytes(),
    };
    serde_json::from_slice(&body).map_err(|e| {
        ApiError::bad_request(format!("the request body is not the expected JSON: {e}"))
    })
}

/// Serves `listener` until `shutdown` is cancelled, then lets in-flight requests finish for a
/// short while (the webhook listener's accept loop, with the admin limits).
pub async fn serve(listener: TcpListener, admin: Arc<Admin>, shutdown: CancellationToken) {
    let limits = crate::receive::server::Limits {
        max_connections: MAX_CONNECTIONS,
        header_timeout: BODY_TIMEOUT,
    };
    crate::receive::server::serve("admin", listener, admin, limits, None, shutdown, DRAIN).await;
}

impl crate::receive::server::Handler for Admin {
    fn respond(
        self: Arc<Self>,
        req: Request<hyper::body::Incoming>,
    ) -> impl std::future::Future<Output = Result<AdminResponse, Infallible>> + Send {
        self.handle(req)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::receive::route::Filter;
    use crate::receive::signature::{self, SigningSecret};
    use crate::store::{
        Admission, AttemptState, Change, Destination, LastError, NewDelivery, RecordMeta,
    };

    #[test]
    fn routes() {
        let ok = |method: Method, path: &str| route(&method, path).unwrap();
        assert_eq!(ok(Method::GET, "/healthz"), Route::Healthz);
        assert_eq!(ok(Method::HEAD, "/readyz"), Route::Readyz);
        assert_eq!(ok(Method::GET, "/metrics"), Route::Metrics);
        assert_eq!(ok(Method::GET, "/v1/status"), Route::Status);
        assert_eq!(
            ok(Method::GET, "/v1/sinks/app/dead-letters"),
            Route::DeadLetters("app".into())
        );
        assert_eq!(
            ok(Method::GET, "/v1/sinks/app/dead-letters/42"),
            Route::DeadLetter("app".into(), 42)
        );
        assert_eq!(
            ok(Method::POST, "/v1/sinks/app/dead-letters/retry"),
            Route::RetryDeadLetters("app".into())
        );
        assert_eq!(
            ok(Method::POST, "/v1/sinks/app/dead-letters/drop"),
            Route::DropDeadLetters("app".into())
        );
        assert_eq!(
            ok(Method::POST, "/v1/sinks/app/replay"),
            Route::Replay("app".into())
        );
        assert_eq!(ok(Method::GET, "/v1/quarantine"), Route::Quarantine);
        assert_eq!(
            ok(Method::GET, "/v1/quarantine/7"),
            Route::QuarantineEntry(7)
        );
        assert_eq!(
            ok(Method::POST, "/v1/quarantine/drop"),
            Route::DropQuarantine
        );

        let err = |method: Method, path: &str| route(&method, path).unwrap_err();
        assert_eq!(err(Method::GET, "/").status, StatusCode::NOT_FOUND);
        assert_eq!(
            err(Method::GET, "/v1/sinks/app").status,
            StatusCode::NOT_FOUND
        );
        assert_eq!(
            err(Method::GET, "/webhooks/kirim").status,
            StatusCode::NOT_FOUND
        );
        let wrong = err(Method::POST, "/healthz");
        assert_eq!(wrong.status, StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(wrong.allow, Some("GET"));
        let wrong = err(Method::GET, "/v1/sinks/app/dead-letters/retry");
        assert_eq!(wrong.status, StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(wrong.allow, Some("POST"));
        let bad = err(Method::GET, "/v1/sinks/app/dead-letters/abc");
        assert_eq!(bad.status, StatusCode::BAD_REQUEST);
        assert!(bad.message.contains("`abc`"), "{bad:?}");
    }

    #[test]
    fn page_queries() {
        assert_eq!(
            page_query(None).unwrap(),
            PageQuery {
                after: 0,
                limit: DEFAULT_LIMIT
            }
        );
        assert_eq!(
            page_query(Some("after=5&limit=2")).unwrap(),
            PageQuery { after: 5, limit: 2 }
        );
        for bad in ["limit=0", "limit=1001", "after=x", "after=-1", "page=2"] {
            let e = page_query(Some(bad)).unwrap_err();
            assert_eq!(e.status, StatusCode::BAD_REQUEST, "{bad}");
        }
    }

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

    fn delivery(event_id: &str, body: &[u8], destination: Destination) -> NewDelivery {
        let secret = SigningSecret::new("sec_T", "whsec_test");
        let header = secret.sign(1000, body);
        let verified =
            signature::verify(Some(header.as_bytes()), body, &[secret], 1000, 300).unwrap();
        NewDelivery {
            verified,
            destination,
            meta: RecordMeta {
                received_at_ms: 1_780_315_200_000,
                secret_id: String::new(),
                headers: vec![
                    ("x-kirim-event-id".into(), event_id.into()),
                    ("x-kirim-signature".into(), header.clone()),
                ],
                keys: vec![serde_json::from_value(format!("kirim:{event_id}").into()).unwrap()],
                shape: None,
                source: None,
                event_type: Some("contact.created".into()),
                event_id: Some(event_id.into()),
                phone_number_ids: vec![],
                quarantine_reason: (destination == Destination::Quarantine)
                    .then(|| "not_json".to_owned()),
            },
            body: bytes::Bytes::copy_from_slice(body),
            sinks: vec!["app".into()],
        }
    }

    async fn call(
        admin: &Arc<Admin>,
        method: Method,
        uri: &str,
        body: &str,
    ) -> (StatusCode, String) {
        let request = Request::builder()
            .method(method)
            .uri(uri)
            .body(Full::new(Bytes::from(body.to_owned())))
            .unwrap();
        let response = admin.clone().handle(request).await.unwrap();
        let status = response.status();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8(body.to_vec()).unwrap())
    }

    #[tokio::test]
    async fn the_api_over_a_store() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), vec!["app".into()]).unwrap();
        let Admission::New { seq } = store
            .admit(delivery("evt_1", br#"{"id":"evt_1"}"#, Destination::Events))
            .await
            .unwrap()
        else {
            panic!("not new")
        };
        let state = AttemptState {
            attempts: 2,
            first_attempt_ms: 1_780_315_201_000,
            last_attempt_ms: 1_780_315_202_000,
            next_attempt_ms: 0,
            last_error: Some(LastError::new(Some(400), "bad request")),
        };
        store
            .embedded()
            .expect("an embedded store")
            .apply_changes_durably("app", vec![Change::DeadLetter(seq, state)])
            .await
            .unwrap();
        let Admission::New { seq: q } = store
            .admit(delivery("evt_q", b"plain text", Destination::Quarantine))
            .await
            .unwrap()
        else {
            panic!("not new")
        };

        let shutdown = CancellationToken::new();
        let admin = Arc::new(Admin::new(
            store.clone(),
            Metrics::new(&["sec_T"], &["app"]),
            Routes::new(vec![("app".to_owned(), Filter::default())]),
            Health::new(),
            shutdown.clone(),
        ));

        let (status, body) = call(&admin, Method::GET, "/healthz", "").await;
        assert_eq!((status, body.as_str()), (StatusCode::OK, "ok\n"));
        let (status, body) = call(&admin, Method::GET, "/readyz", "").await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
        assert!(body.contains("not serving"), "{body}");
        admin.set_serving(true);
        let (status, body) = call(&admin, Method::GET, "/readyz", "").await;
        assert_eq!(status, StatusCode::OK, "{body}");

        let (status, body) = call(&admin, Method::GET, "/v1/status", "").await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let report: StatusReport = serde_json::from_str(&body).unwrap();
        assert_eq!(report.sinks.len(), 1);
        assert_eq!(report.sinks[0].dead_letters, 1);
        assert_eq!(report.sinks[0].queued, 0);

        let (status, body) = call(&admin, Method::GET, "/v1/sinks/app/dead-letters", "").await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let page: DeadLetterPage = serde_json::from_str(&body).unwrap();
        assert_eq!(page.dead_letters.len(), 1);
        assert_eq!(page.dead_letters[0].seq, seq);
        assert_eq!(page.dead_letters[0].attempts, 2);
        assert_eq!(page.next_after, None);
        assert_eq!(
            page.dead_letters[0].last_error,
            Some(ErrorReport {
                status: Some(400),
                message: "bad request".into()
            })
        );

        let (status, body) = call(
            &admin,
            Method::GET,
            &format!("/v1/sinks/app/dead-letters/{seq}"),
            "",
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let detail: DeadLetterDetail = serde_json::from_str(&body).unwrap();
        assert_eq!(detail.event.body_format, BodyFormat::Json);
        assert_eq!(detail.event.body.get(), r#"{"id":"evt_1"}"#);
        assert_eq!(detail.event.secret_id, "sec_T");
        assert!(!body.contains("x-kirim-signature"), "{body}");
        assert!(!body.contains("whsec_"), "{body}");

        let (status, body) = call(&admin, Method::GET, "/v1/sinks/app/dead-letters/999", "").await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
        let (status, body) = call(&admin, Method::GET, "/v1/sinks/nope/dead-letters", "").await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
        assert!(
            body.contains("unknown_sink") && body.contains("`nope`"),
            "{body}"
        );
        let (status, body) = call(
            &admin,
            Method::POST,
            "/v1/sinks/app/dead-letters/retry",
            "{",
        )
        .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
        let big = format!("{{\"seqs\":[{}1]}}", "1,".repeat(MAX_BODY_BYTES / 2));
        let (status, _) = call(
            &admin,
            Method::POST,
            "/v1/sinks/app/dead-letters/drop",
            &big,
        )
        .await;
        assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);

        let (status, body) = call(
            &admin,
            Method::POST,
            "/v1/sinks/app/dead-letters/retry",
            r#"{"all":true}"#,
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let done: Changed = serde_json::from_str(&body).unwrap();
        assert_eq!((done.action.as_str(), done.count), ("retried", 1));
        assert_eq!(store.queue_len("app").await.unwrap(), 1);

        let (status, body) = call(&admin, Method::GET, "/v1/quarantine", "").await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let page: QuarantinePage = serde_json::from_str(&body).unwrap();
        assert_eq!(page.quarantine.len(), 1);
        assert_eq!(page.quarantine[0].reason.as_deref(), Some("not_json"));
        let (status, body) = call(&admin, Method::GET, &format!("/v1/quarantine/{q}"), "").await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let detail: EventDetail = serde_json::from_str(&body).unwrap();
        assert_eq!(detail.body_format, BodyFormat::Text);
        assert_eq!(detail.body.get(), "\"plain text\"");
        let (status, body) = call(
            &admin,
            Method::POST,
            "/v1/quarantine/drop",
            &serde_json::to_string(&Selection::seqs(vec![q])).unwrap(),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert!(body.contains("\"count\": 1"), "{body}");

        let (status, body) = call(
            &admin,
            Method::POST,
            "/v1/sinks/app/replay",
            r#"{"since":"soon"}"#,
        )
        .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
        assert!(body.contains("since"), "{body}");

        let (status, body) = call(&admin, Method::GET, "/metrics", "").await;
        assert_eq!(status, StatusCode::OK);
        assert!(
            body.contains("kirimhook_sink_queue_depth{sink=\"app\"} 1"),
            "{body}"
        );

        shutdown.cancel();
        let (status, body) = call(&admin, Method::GET, "/readyz", "").await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(body.contains("shutting down"), "{body}");
        store.close().await.unwrap();
    }
}
