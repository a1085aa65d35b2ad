//! The receive path of one request: body limit -> verify -> classify -> admit.
//!
//! This is the only module that knows HTTP status codes. It reads at most `max_body_bytes`,
//! verifies the signature on the raw bytes before anything parses them, classifies the body,
//! and answers 200 only after [`Store::admit`] has the delivery on disk. It never answers 3xx,
//! never refuses an authentic delivery for its content (unrecognised bodies go to quarantine),
//! and never panics.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::body::Body;
use hyper::header::{HeaderMap, HeaderValue, ALLOW, CONTENT_LENGTH, CONTENT_TYPE, RETRY_AFTER};
use hyper::{Method, Request, Response, StatusCode};
use tracing::Instrument;

use crate::activity::{clip, What};
use crate::health::Health;
use crate::metrics::{Metrics, Outcome};
use crate::receive::envelope::{self, Classified, Hints};
use crate::receive::route::Routes;
use crate::receive::signature::{self, SigningSecret, VerifyError};
use crate::store::{self, Admission, Destination, NewDelivery, RecordMeta, Store};

/// The response type of every request.
pub type HttpResponse = Response<Full<Bytes>>;

/// Seconds a client is asked to wait after a 503.
const RETRY_AFTER_SECS: &str = "5";

/// Settings of the receive path.
#[derive(Debug, Clone)]
pub struct ReceiveSettings {
    /// The one path deliveries are accepted on.
    pub path: String,
    /// Largest body accepted.
    pub max_body_bytes: usize,
    /// Time allowed for the body to arrive.
    pub body_timeout: Duration,
    /// Allowed clock difference for the signature timestamp; 0 disables the check.
    pub tolerance_secs: u64,
    /// Secrets tried in order.
    pub secrets: Arc<[SigningSecret]>,
    /// Every sink with its filter: an event is queued for the sinks whose filter matches.
    /// Shared with the admin API and the reload, so a reloaded filter applies everywhere.
    pub routes: Routes,
    /// Where every answer, verified secret and accepted event is counted.
    pub metrics: Metrics,
    /// Whether deliveries may still be taken (a fault answers 503 before anything is read).
    pub health: Health,
}

/// What a reload (SIGHUP) may change on the receive path besides the routes (those are the
/// shared [`Routes`]).
#[derive(Debug, Clone)]
pub struct Live {
    /// Allowed clock difference for the signature timestamp; 0 disables the check.
    pub tolerance_secs: u64,
    /// Secrets tried in order.
    pub secrets: Arc<[SigningSecret]>,
}

/// What became of an authentic delivery (every one is answered 200).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accepted {
    /// A new event, durably stored and queued for its sinks.
    Event,
    /// A new delivery with an unrecognised body, durably kept in quarantine.
    Quarantined,
    /// Seen before: nothing new was stored.
    Duplicate,
}

/// Why a request was refused. [`Rejection::respond`] is the one mapping to a response.
#[derive(Debug)]
pub enum Rejection {
    /// Not the webhook path.
    NotFound,
    /// Not a POST.
    MethodNotAllowed,
    /// A fault stopped admissions (stdout's consumer gone, the store stopped).
    NotAccepting,
    /// The signature is missing, malformed, wrong or expired.
    Unauthorized(VerifyError),
    /// The body is over `max_body_bytes`.
    TooLarge,
    /// The body did not arrive within `request_timeout_secs`.
    BodyTimeout,
    /// The body could not be read.
    UnreadableBody,
    /// Free disk space is below `store.min_free_bytes`: nothing was stored.
    LowDisk,
    /// The store could not take the delivery (or its commit's outcome is unknown).
    StoreUnavailable,
}

impl Rejection {
    /// The metric outcome, status, body and extra header of this refusal.
    fn parts(
        &self,
    ) -> (
        Outcome,
        StatusCode,
        &'static str,
        Option<(hyper::header::HeaderName, &'static str)>,
    ) {
        let retry = Some((RETRY_AFTER, RETRY_AFTER_SECS));
        match self {
            Rejection::NotFound => (
                Outcome::NotFound,
                StatusCode::NOT_FOUND,
                r#"{"error":"not_found"}"#,
                None,
            ),
            Rejection::MethodNotAllowed => (
                Outcome::MethodNotAllowed,
                StatusCode::METHOD_NOT_ALLOWED,
                r#"{"error":"method_not_allowed"}"#,
                Some((ALLOW, "POST")),
            ),
            Rejection::NotAccepting => (
                Outcome::NotAccepting,
                StatusCode::SERVICE_UNAVAILABLE,
                r#"{"error":"not_accepting"}"#,
                retry,
            ),
            Rejection::Unauthorized(error) => {
                let body = match error.reason() {
                    "missing_signature" => r#"{"error":"missing_signature"}"#,
                    "signature_expired" => r#"{"error":"signature_expired"}"#,
                    _ => r#"{"error":"invalid_signature"}"#,
                };
                (
                    Outcome::of_verify_error(error),
                    StatusCode::UNAUTHORIZED,
                    body,
                    None,
                )
            }
            Rejection::TooLarge => (
                Outcome::BodyTooLarge,
                StatusCode::PAYLOAD_TOO_LARGE,
                r#"{"error":"body_too_large"}"#,
                None,
            ),
            Rejection::BodyTimeout => (
                Outcome::BodyTimeout,
                StatusCode::REQUEST_TIMEOUT,
                r#"{"error":"body_timeout"}"#,
                None,
            ),
            Rejection::UnreadableBody => (
                Outcome::UnreadableBody,
                StatusCode::BAD_REQUEST,
                r#"{"error":"unreadable_body"}"#,
                None,
            ),
            Rejection::LowDisk => (
                Outcome::LowDisk,
                StatusCode::SERVICE_UNAVAILABLE,
                r#"{"error":"low_disk"}"#,
                retry,
            ),
            Rejection::StoreUnavailable => (
                Outcome::StoreUnavailable,
                StatusCode::SERVICE_UNAVAILABLE,
                r#"{"error":"store_unavailable"}"#,
                retry,
            ),
        }
    }

    /// The response to this refusal (a 503 carries `Retry-After`: kirim.dev retries later),
    /// counted in `metrics`.
    pub fn respond(&self, metrics: &Metrics) -> HttpResponse {
        let (outcome, status, body, header) = self.parts();
        metrics.request(outcome);
        let mut response = json(status, body);
        if let Some((name, value)) = header {
            response
                .headers_mut()
                .insert(name, HeaderValue::from_static(value));
        }
        response
    }
}

impl Accepted {
    /// The 200 response for this outcome, counted in `metrics`.
    pub fn respond(self, metrics: &Metrics) -> HttpResponse {
        let (outcome, body) = match self {
            Accepted::Event => (Outcome::Accepted, r#"{"status":"accepted"}"#),
            Accepted::Quarantined => (Outcome::Quarantined, r#"{"status":"quarantined"}"#),
            Accepted::Duplicate => (Outcome::Duplicate, r#"{"status":"duplicate"}"#),
        };
        metrics.request(outcome);
        json(StatusCode::OK, body)
    }
}

/// The response to a request's result: the one place a result becomes a status code.
pub fn respond(result: Result<Accepted, Rejection>, metrics: &Metrics) -> HttpResponse {
    match result {
        Ok(accepted) => accepted.respond(metrics),
        Err(rejection) => rejection.respond(metrics),
    }
}

/// Which sinks an event is queued for, and which ones its filter kept out (counted only once
/// the event is new and stored: a duplicate or a refused delivery is not "filtered").
struct Routed {
    sinks: Vec<String>,
    /// Indexes into `table` of the sinks whose filter did not match.
    filtered: Vec<usize>,
    table: crate::receive::route::RouteTable,
}

impl Routed {
    /// Logs at debug and counts each sink the event was kept out of.
    fn count_filtered(
        &self,
        meta_type: Option<&str>,
        source: Option<crate::receive::envelope::Source>,
        metrics: &Metrics,
    ) {
        for &i in &self.filtered {
            let Some((name, _)) = self.table.get(i) else {
                continue;
            };
            tracing::debug!(
                sink = %name,
                event_type = meta_type.unwrap_or("-"),
                source = source.map(|s| s.as_str()).unwrap_or("-"),
                "not queued for this sink: its filter does not match"
            );
            metrics.sink_filtered(name);
        }
    }
}

/// The parts of a delivery a `kirimhook tail` line shows besides its type and source.
struct Shown {
    event_type: Option<String>,
    event_id: Option<String>,
    phone_number_id: Option<String>,
    delivery_id: Option<String>,
    attempt: Option<String>,
}

/// Handles requests against one store.
pub struct Receiver {
    settings: ReceiveSettings,
    /// The current reloadable part; starts as the `settings` values.
    live: std::sync::RwLock<Live>,
    store: Store,
    clock: fn() -> SystemTime,
}

impl Receiver {
    /// A receiver using the system clock.
    pub fn new(settings: ReceiveSettings, store: Store) -> Self {
        Self::with_clock(settings, store, SystemTime::now)
    }

    /// A receiver with an injected clock (tests).
    pub fn with_clock(settings: ReceiveSettings, store: Store, clock: fn() -> SystemTime) -> Self {
        let live = Live {
            tolerance_secs: settings.tolerance_secs,
            secrets: settings.secrets.clone(),
        };
        Receiver {
            settings,
            live: std::sync::RwLock::new(live),
            store,
            clock,
        }
    }

    /// Swaps in reloaded secrets and tolerance; requests that start verifying after this use
    /// them.
    pub fn reload(&self, live: Live) {
        match self.live.write() {
            Ok(mut current) => *current = live,
            Err(poisoned) => *poisoned.into_inner() = live,
        }
    }

    fn live(&self) -> Live {
        match self.live.read() {
            Ok(live) => live.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Answers one request. Infallible: every failure is a response.
    pub async fn handle<B>(self: Arc<Self>, req: Request<B>) -> Result<HttpResponse, Infallible>
    where
        B: Body,
        B::Error: std::error::Error + Send + Sync + 'static,
    {
        // Only while `kirimhook tail` watches: a refusal's line names the delivery.
        let activity = self.settings.metrics.activity();
        let delivery_id = activity
            .watched()
            .then(|| header_str(req.headers(), "x-kirim-delivery-id").map(clip))
            .flatten();
        let result = if req.uri().path() != self.settings.path {
            Err(Rejection::NotFound)
        } else if req.method() != Method::POST {
            Err(Rejection::MethodNotAllowed)
        } else {
            // A debug span: at the default level it is never built (nor its fields looked up),
            // which saves its cost on every request; the warnings and errors below carry the
            // ids themselves.
            let span = tracing::debug_span!(
                "delivery",
                delivery_id = ids(req.headers()).0,
                event_id = ids(req.headers()).1,
            );
            self.receive(req).instrument(span).await
        };
        if let Err(rejection) = &result {
            activity.publish(|| {
                let (outcome, status, _, _) = rejection.parts();
                What::Rejected {
                    status: status.as_u16(),
                    reason: outcome.as_str().to_owned(),
                    delivery_id,
                }
            });
        }
        Ok(respond(result, &self.settings.metrics))
    }

    async fn receive<B>(&self, req: Request<B>) -> Result<Accepted, Rejection>
    where
        B: Body,
        B::Error: std::error::Error + Send + Sync + 'static,
    {
        if let Some(fault) = self.settings.health.fault() {
            tracing::debug!(fault = %fault, "not taking deliveries; answering 503");
            return Err(Rejection::NotAccepting);
        }
        let received_at = (self.clock)();
        let (parts, body) = req.into_parts();
        let headers = &parts.headers;

        let primary = headers.get(signature::SIGNATURE_HEADER);
        let alternate = headers.get(signature::SIGNATURE_HEADER_ALT);
        if primary.is_none() && alternate.is_none() {
            return Err(self.unauthorized(VerifyError::Missing, headers));
        }

        let declared = headers
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|len| len > self.settings.max_body_bytes as u64) {
            return Err(self.too_large(headers));
        }
        let limited = Limited::new(body, self.settings.max_body_bytes);
        let body = match tokio::time::timeout(self.settings.body_timeout, limited.collect()).await {
            Err(_) => {
                let (delivery_id, event_id) = ids(headers);
                tracing::warn!(delivery_id, event_id, "request body did not arrive in time");
                return Err(Rejection::BodyTimeout);
            }
            Ok(Err(e)) if e.downcast_ref::<LengthLimitError>().is_some() => {
                return Err(self.too_large(headers));
            }
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "reading the request body failed");
                return Err(Rejection::UnreadableBody);
            }
            Ok(Ok(collected)) => collected.to_bytes(),
        };

        let now = received_at
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0);
        let live = self.live();
        // X-Kirim-Signature is preferred; when both headers are present, either verifying is
        // enough (spec 10, row 1), and a failure reports the preferred header's reason.
        let verify = |header: Option<&HeaderValue>| {
            signature::verify(
                header.map(HeaderValue::as_bytes),
                &body,
                &live.secrets,
                now,
                live.tolerance_secs,
            )
        };
        let verified = match verify(primary.or(alternate)) {
            Ok(verified) => verified,
            Err(first) => match (primary, alternate) {
                (Some(_), Some(_)) => match verify(alternate) {
                    Ok(verified) => verified,
                    Err(_) => return Err(self.unauthorized(first, headers)),
                },
                _ => return Err(self.unauthorized(first, headers)),
            },
        };

        // Authentic from here on: never refused for its content.
        self.settings.metrics.verified(verified.secret_id());
        let hints = Hints {
            source: header_str(headers, "x-kirim-source"),
            event: header_str(headers, "x-kirim-event"),
            event_id: header_str(headers, "x-kirim-event-id"),
        };
        let mut meta = RecordMeta {
            received_at_ms: store::millis(received_at),
            secret_id: String::new(),
            headers: kirim_headers(headers),
            keys: Vec::new(),
            shape: None,
            source: None,
            event_type: None,
            event_id: None,
            phone_number_ids: Vec::new(),
            quarantine_reason: None,
        };
        let mut quarantine_reason: Option<&'static str> = None;
        let destination = match envelope::classify(hints, &body) {
            Classified::Event(info) => {
                meta.keys = info.keys;
                meta.shape = Some(info.shape);
                meta.source = Some(info.source);
                meta.event_type = info.event_type;
                meta.event_id = info.event_id;
                meta.phone_number_ids = info.phone_number_ids;
                Destination::Events
            }
            Classified::Unrecognized(unrecognized) => {
                meta.keys = vec![unrecognized.key];
                meta.event_type = hints.event.map(str::to_owned);
                meta.event_id = hints.event_id.map(str::to_owned);
                quarantine_reason = Some(unrecognized.reason.as_str());
                meta.quarantine_reason = quarantine_reason.map(str::to_owned);
                Destination::Quarantine
            }
        };
        let counted = (meta.event_type.clone(), meta.source);
        // What a `kirimhook tail` line shows, gathered only while someone watches.
        let shown = self.settings.metrics.activity().watched().then(|| Shown {
            event_type: meta.event_type.as_deref().map(clip),
            event_id: meta.event_id.as_deref().map(clip),
            phone_number_id: meta.phone_number_ids.first().map(|id| clip(id)),
            delivery_id: header_str(headers, "x-kirim-delivery-id").map(clip),
            attempt: header_str(headers, "x-kirim-attempt").map(clip),
        });
        let mut routed = match destination {
            Destination::Events => Some(self.route(&meta)),
            Destination::Quarantine => None,
        };
        let delivery = NewDelivery {
            verified,
            destination,
            meta,
            body,
            sinks: routed
                .as_mut()
                .map(|r| std::mem::take(&mut r.sinks))
                .unwrap_or_default(),
        };

        let queued_for = match &shown {
            Some(_) => delivery.sinks.clone(),
            None => Vec::new(),
        };
        let started = std::time::Instant::now();
        let admitted = self.store.admit(delivery).await;
        let metrics = &self.settings.metrics;
        metrics.store_flush(started.elapsed());
        if let (Some(shown), Ok(admission)) = (shown, &admitted) {
            let (event_type, source) = (shown.event_type, counted.1.map(|s| s.as_str().to_owned()));
            metrics
                .activity()
                .publish(|| match (*admission, quarantine_reason) {
                    (Admission::New { seq }, None) => What::Accepted {
                        seq,
                        event_type,
                        source,
                        event_id: shown.event_id,
                        phone_number_id: shown.phone_number_id,
                        delivery_id: shown.delivery_id,
                        sinks: queued_for,
                    },
                    (Admission::New { seq }, Some(reason)) => What::Quarantined {
                        seq,
                        reason: reason.to_owned(),
                        event_type,
                        event_id: shown.event_id,
                        delivery_id: shown.delivery_id,
                    },
                    (Admission::Duplicate, _) => What::Duplicate {
                        event_type,
                        source,
                        event_id: shown.event_id,
                        delivery_id: shown.delivery_id,
                        attempt: shown.attempt,
                    },
                });
        }
        match admitted {
            Ok(Admission::New { seq }) => match quarantine_reason {
                None => {
                    tracing::debug!(seq, "accepted");
                    metrics.event_accepted(counted.0.as_deref(), counted.1);
                    if let Some(routed) = &routed {
                        routed.count_filtered(counted.0.as_deref(), counted.1, metrics);
                    }
                    Ok(Accepted::Event)
                }
                Some(reason) => {
                    let (delivery_id, event_id) = ids(headers);
                    tracing::error!(
                        seq,
                        reason,
                        delivery_id,
                        event_id,
                        "authentic delivery with an unrecognised body kept in quarantine"
                    );
                    Ok(Accepted::Quarantined)
                }
            },
            Ok(Admission::Duplicate) => {
                tracing::debug!("duplicate");
                Ok(Accepted::Duplicate)
            }
            Err(store::StoreError::LowDisk(reason)) => {
                // Logged once when the disk crossed the watermark; this is every refusal.
                tracing::debug!(reason, "disk nearly full; answering 503");
                Err(Rejection::LowDisk)
            }
            Err(e) => {
                let (delivery_id, event_id) = ids(headers);
                tracing::error!(
                    error = %e,
                    delivery_id,
                    event_id,
                    "store unavailable; answering 503"
                );
                Err(Rejection::StoreUnavailable)
            }
        }
    }

    /// The sinks whose filter takes this event, and those whose filter does not (logged at
    /// debug and counted in `kirimhook_sink_filtered_total` once the event is stored, so a
    /// filter that drops everything can be seen).
    fn route(&self, meta: &RecordMeta) -> Routed {
        let table = self.settings.routes.current();
        let mut routed = Routed {
            sinks: Vec::with_capacity(table.len()),
            filtered: Vec::new(),
            table: table.clone(),
        };
        for (i, (name, filter)) in table.iter().enumerate() {
            if filter.matches(meta) {
                routed.sinks.push(name.clone());
            } else {
                routed.filtered.push(i);
            }
        }
        routed
    }

    fn unauthorized(&self, error: VerifyError, headers: &HeaderMap) -> Rejection {
        let (delivery_id, event_id) = ids(headers);
        tracing::warn!(
            reason = error.reason(),
            detail = %error,
            attempt = header_str(headers, "x-kirim-attempt").unwrap_or("-"),
            delivery_id,
            event_id,
            "signature verification failed; answering 401",
        );
        Rejection::Unauthorized(error)
    }

    fn too_large(&self, headers: &HeaderMap) -> Rejection {
        let (delivery_id, event_id) = ids(headers);
        tracing::warn!(
            limit = self.settings.max_body_bytes,
            delivery_id,
            event_id,
            "request body over the limit; answering 413"
        );
        Rejection::TooLarge
    }
}

fn json(status: StatusCode, body: &'static str) -> HttpResponse {
    let mut response = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

/// A delivery's ids for a log line: its `X-Kirim-Delivery-Id` and `X-Kirim-Event-Id`, `-` when
/// absent.
fn ids(headers: &HeaderMap) -> (&str, &str) {
    (
        header_str(headers, "x-kirim-delivery-id").unwrap_or("-"),
        header_str(headers, "x-kirim-event-id").unwrap_or("-"),
    )
}

fn header_str<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|v| !v.is_empty())
}

/// Every `X-Kirim-*` header, lower-case name and value (non-UTF-8 bytes replaced).
fn kirim_headers(headers: &HeaderMap) -> Vec<(String, String)> {
    headers
        .iter()
        .filter(|(name, _)| name.as_str().starts_with("x-kirim-"))
        .map(|(name, value)| {
            (
                name.as_str().to_owned(),
                String::from_utf8_lossy(value.as_bytes()).into_owned(),
            )
        })
        .collect()
}
