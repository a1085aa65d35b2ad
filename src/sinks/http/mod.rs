//! The HTTP relay sink: POSTs each event to the user's own service, as kirim.dev would have.
//!
//! The original body goes byte-for-byte with `Content-Type: application/json`, the original
//! `X-Kirim-Source`, `X-Kirim-Event`, `X-Kirim-Event-Id` and `X-Kirim-Delivery-Id`, and
//! `X-Kirimhook-Attempt` (this sink's attempt number). With a secret, every attempt is signed
//! afresh in kirim.dev's own scheme (`X-Kirim-Signature: t=<now>,v1=<hex>`), so a service that
//! already verifies kirim.dev keeps working with the relay's secret; without one, no signature
//! header is sent. Only 2xx is success; what is retried is decided by [`classify`], and the
//! status of a failed attempt goes with its [`Failure`] as the attempt's code (a dead letter's
//! `last_error.status`). The sink's keys are read by [`config`]. A pooled keep-alive client is
//! shared by the sink's deliveries; the dispatcher bounds how many are in flight.

pub mod classify;
pub mod config;

pub use config::HttpSinkConfig;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::header::{HeaderName, HeaderValue, CONTENT_TYPE, RETRY_AFTER, USER_AGENT};
use hyper::{Request, Uri};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use self::classify::{classify_status, parse_retry_after, Verdict};
use super::{Attempt, Failure, Sink, SinkError};
use crate::receive::signature::SigningSecret;
use crate::store::model::ERROR_EXCERPT_BYTES;

/// The original headers passed on to the relay target.
const PASSED_HEADERS: [&str; 4] = [
    "x-kirim-source",
    "x-kirim-event",
    "x-kirim-event-id",
    "x-kirim-delivery-id",
];
/// Most bytes of a response body read (the rest is dropped with the connection).
const MAX_RESPONSE_BYTES: usize = 64 * 1024;

/// POSTs events to one URL.
pub struct HttpSink {
    name: String,
    url: Uri,
    timeout: Duration,
    concurrency: usize,
    secret: Option<SigningSecret>,
    client: Client<HttpConnector, Full<Bytes>>,
}

impl HttpSink {
    /// A relay sink named `name` configured by `config`.
    pub fn new(name: impl Into<String>, config: &HttpSinkConfig) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(config.timeout));
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .pool_max_idle_per_host(config.concurrency)
            .build(connector);
        HttpSink {
            name: name.into(),
            url: config.url.clone(),
            timeout: config.timeout,
            concurrency: config.concurrency,
            secret: config.secret.clone(),
            client,
        }
    }

    /// POSTs one event; a failure is of the first attempt of a batch of one.
    async fn post(&self, attempt: &Attempt) -> Result<(), Failure> {
        let request = self.request(attempt).map_err(Failure::new)?;
        let deadline = tokio::time::Instant::now() + self.timeout;
        let response = match tokio::time::timeout_at(deadline, self.client.request(request)).await {
            Err(_) => {
                return Err(Failure::new(SinkError::retryable(format!(
                    "no answer within {} s",
                    self.timeout.as_secs()
                ))))
            }
            Ok(Err(e)) if e.is_connect() => {
                return Err(Failure::new(SinkError::Unreachable {
                    message: error_chain(&e),
                }))
            }
            Ok(Err(e)) => return Err(Failure::new(SinkError::retryable(error_chain(&e)))),
            Ok(Ok(response)) => response,
        };
        let status = response.status().as_u16();
        let retry_after = response
            .headers()
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(parse_retry_after);
        // The status decides. The body is read (bounded, within the same deadline) so the
        // connection can be reused and an error can quote it; a slow or broken body after a 2xx
        // does not turn a delivery into a failure.
        let body = tokio::time::timeout_at(
            deadline,
            Limited::new(response.into_body(), MAX_RESPONSE_BYTES).collect(),
        )
        .await
        .ok()
        .and_then(Result::ok)
        .map(|b| b.to_bytes())
        .unwrap_or_default();
        let message = || {
            let excerpt = &body[..body.len().min(ERROR_EXCERPT_BYTES)];
            format!("HTTP {status}: {}", String::from_utf8_lossy(excerpt))
        };
        let error = match classify_status(status) {
            Verdict::Success => return Ok(()),
            Verdict::Retry => SinkError::Retryable {
                message: message(),
                retry_after: if status == 429 || status == 503 {
                    retry_after
                } else {
                    None
                },
            },
            Verdict::Permanent => SinkError::permanent(message()),
        };
        Err(Failure::new(error).with_code(status))
    }

    fn request(&self, attempt: &Attempt) -> Result<Request<Full<Bytes>>, SinkError> {
        let event = &attempt.event;
        let mut request = Request::post(self.url.clone())
            .header(CONTENT_TYPE, "application/json")
            .header(USER_AGENT, concat!("kirimhook/", env!("CARGO_PKG_VERSION")))
            .header("x-kirimhook-attempt", attempt.attempt);
        for name in PASSED_HEADERS {
            if let Some(value) = event
                .meta
                .header(name)
                .and_then(|v| HeaderValue::from_str(v).ok())
            {
                request = request.header(HeaderName::from_static(name), value);
            }
        }
        if let Some(secret) = &self.secret {
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs() as i64)
                .unwrap_or(0);
            request = request.header("x-kirim-signature", secret.sign(now, &event.body));
        }
        request
            .body(Full::new(Bytes::copy_from_slice(&event.body)))
            .map_err(|e| SinkError::permanent(format!("cannot build the request: {e}")))
    }
}

impl Sink for HttpSink {
    fn name(&self) -> &str {
        &self.name
    }

    fn concurrency(&self) -> usize {
        self.concurrency
    }

    async fn deliver(&self, batch: &[Attempt]) -> Result<(), Failure> {
        for (delivered, attempt) in batch.iter().enumerate() {
            self.post(attempt)
                .await
                .map_err(|failure| failure.after(delivered))?;
        }
        Ok(())
    }
}

/// An error and its causes, e.g. "client error (Connect): tcp connect error: Connection refused".
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
