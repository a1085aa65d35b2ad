//! The route handlers: each [`Route`] answered from the store. A named sink must be configured
//! (else a 404 naming it), list pages honour `after` and `limit`, request bodies are read
//! bounded ([`MAX_BODY_BYTES`]) and timed ([`BODY_TIMEOUT`]), and every change an operator
//! makes is logged at info. Parsing the path is left to [`super::routes`], readiness to
//! [`super::health`], the metrics gauges to [`super::snapshot`].

use std::time::SystemTime;

use http_body_util::{BodyExt, LengthLimitError, Limited};
use hyper::body::Body;
use hyper::{Request, StatusCode};

use super::api::{
    parse_rfc3339, Changed, DeadLetterDetail, DeadLetterPage, QuarantinePage, ReplayRequest,
    Selection, SinkReport, StatusReport,
};
use super::render::{event_detail, quarantine_summary, summary};
use super::response::{json, printable, text, AdminResponse, ApiError};
use super::routes::{page_query, route, tail_query, Route};
use super::{health, Admin, BODY_TIMEOUT, MAX_BODY_BYTES};
use crate::metrics;
use crate::store;
use crate::time::rfc3339_ms;

impl Admin {
    /// Routes one request and answers it; a failure is an [`ApiError`], made a response by
    /// [`Admin::handle`].
    pub(super) async fn dispatch<B>(&self, req: Request<B>) -> Result<AdminResponse, ApiError>
    where
        B: Body,
        B::Error: std::error::Error + Send + Sync + 'static,
    {
        let route = route(req.method(), req.uri().path())?;
        let query = req.uri().query().map(str::to_owned);
        match route {
            Route::Healthz => Ok(health::healthz()),
            Route::Readyz => Ok(self.readyz().await),
            Route::Metrics => Ok(text(
                StatusCode::OK,
                metrics::CONTENT_TYPE,
                self.metrics.render(&self.cached_snapshot().await),
            )),
            Route::Status => self.status().await.map(|s| json(StatusCode::OK, &s)),
            Route::DeadLetters(sink) => self.dead_letters(&sink, query.as_deref()).await,
            Route::DeadLetter(sink, seq) => self.dead_letter(&sink, seq).await,
            Route::RetryDeadLetters(sink) => self.retry_dead_letters(&sink, req).await,
            Route::DropDeadLetters(sink) => self.drop_dead_letters(&sink, req).await,
            Route::Quarantine => self.quarantine(query.as_deref()).await,
            Route::QuarantineEntry(seq) => self.quarantine_entry(seq).await,
            Route::DropQuarantine => self.drop_quarantine(req).await,
            Route::Replay(sink) => self.replay(&sink, req).await,
            Route::Tail => {
                let filter = tail_query(query.as_deref())?;
                if let Some(sink) = &filter.sink {
                    self.sink(sink)?;
                }
                self.tail(filter)
            }
        }
    }

    /// `GET /v1/sinks/{sink}/dead-letters`: one page.
    async fn dead_letters(
        &self,
        sink: &str,
        query: Option<&str>,
    ) -> Result<AdminResponse, ApiError> {
        let sink = self.sink(sink)?;
        let page = page_query(query)?;
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

    /// `GET /v1/sinks/{sink}/dead-letters/{seq}`: one dead letter with its event.
    async fn dead_letter(&self, sink: &str, seq: u64) -> Result<AdminResponse, ApiError> {
        let sink = self.sink(sink)?;
        let letter = self
            .store
            .dead_letters(sink, seq.saturating_sub(1), 1)
            .await
            .map_err(|e| ApiError::store(&e))?
            .into_iter()
            .find(|l| l.event.seq == seq && seq > 0)
            .ok_or_else(|| ApiError::not_found(format!("sink {sink} has no dead letter {seq}")))?;
        Ok(json(
            StatusCode::OK,
            &DeadLetterDetail {
                sink: sink.to_owned(),
                summary: summary(&letter),
                event: event_detail(&letter.event),
            },
        ))
    }

    /// `POST /v1/sinks/{sink}/dead-letters/retry`: back into the queue.
    async fn retry_dead_letters<B>(
        &self,
        sink: &str,
        req: Request<B>,
    ) -> Result<AdminResponse, ApiError>
    where
        B: Body,
        B::Error: std::error::Error + Send + Sync + 'static,
    {
        let sink = self.sink(sink)?;
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

    /// `POST /v1/sinks/{sink}/dead-letters/drop`: forget them.
    async fn drop_dead_letters<B>(
        &self,
        sink: &str,
        req: Request<B>,
    ) -> Result<AdminResponse, ApiError>
    where
        B: Body,
        B::Error: std::error::Error + Send + Sync + 'static,
    {
        let sink = self.sink(sink)?;
        let selection = read_json::<Selection, B>(req).await?.resolve()?;
        let n = self
            .store
            .drop_dead_letters(sink, selection.clone())
            .await
            .map_err(|e| ApiError::store(&e))?;
        tracing::info!(sink, dropped = n, seqs = ?selection, "admin: dead letters dropped");
        Ok(changed(Some(sink), "dropped", n))
    }

    /// `GET /v1/quarantine`: one page.
    async fn quarantine(&self, query: Option<&str>) -> Result<AdminResponse, ApiError> {
        let page = page_query(query)?;
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

    /// `GET /v1/quarantine/{seq}`: one quarantined delivery with its body.
    async fn quarantine_entry(&self, seq: u64) -> Result<AdminResponse, ApiError> {
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

    /// `POST /v1/quarantine/drop`.
    async fn drop_quarantine<B>(&self, req: Request<B>) -> Result<AdminResponse, ApiError>
    where
        B: Body,
        B::Error: std::error::Error + Send + Sync + 'static,
    {
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

    /// `POST /v1/sinks/{sink}/replay`: queue retained events again, through the sink's filter.
    async fn replay<B>(&self, sink: &str, req: Request<B>) -> Result<AdminResponse, ApiError>
    where
        B: Body,
        B::Error: std::error::Error + Send + Sync + 'static,
    {
        let sink = self.sink(sink)?;
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

    /// The configured sink called `name`, or a 404 naming it.
    pub(super) fn sink<'a>(&'a self, name: &str) -> Result<&'a str, ApiError> {
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

    /// `GET /v1/status`: every sink's queue and dead letters, the quarantine, the store.
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
}

/// The answer of a retry, drop or replay.
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

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::sync::Arc;

    use bytes::Bytes;
    use http_body_util::Full;
    use hyper::Method;
    use tokio_util::sync::CancellationToken;

    use super::*;
    use crate::admin::api::{BodyFormat, ErrorReport, EventDetail};
    use crate::health::Health;
    use crate::metrics::Metrics;
    use crate::receive::route::{Filter, Routes};
    use crate::receive::signature::{self, SigningSecret};
    use crate::store::{
        Admission, AttemptState, Change, Destination, LastError, NewDelivery, RecordMeta, Store,
    };

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
