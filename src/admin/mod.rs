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
//! | GET | `/v1/tail[?events=GLOB,..&sink=NAME]` | the live feed, one JSON object per line, until the client goes |
//!
//! Ready means: the webhook listener serves, the store answers a write round-trip within
//! [`READY_TIMEOUT`], and no shutdown is under way. Errors are JSON
//! `{"error": code, "message": text}`; an unknown sink is a 404 naming it.
//! Request bodies are bounded ([`MAX_BODY_BYTES`]) and timed ([`BODY_TIMEOUT`]); nothing on
//! the request path panics. Event bodies are shown (as JSON when they are JSON, else as lossy
//! text); secrets never are, and neither are the signature headers. Every change an operator
//! makes is logged at info. The API types are shared with [`crate::ops::admin_cli`], so the two
//! cannot drift apart.
//!
//! What it is not: a second way in for deliveries (it never admits an event), a place that
//! decides anything about sinks (it reads the running routes and the store, and asks the store
//! to change entries), or the operator CLI itself (that is [`crate::ops::admin_cli`], a client of this API).
//!
//! Layout: `api` holds the JSON types shared with the CLI; `routes` maps a method and path to a
//! `Route` (pure); `handlers` answers each route from the store; `tail` streams the live feed; `health` answers `/healthz`
//! and `/readyz`; `snapshot` computes and caches the gauges `/metrics` renders; `render` turns
//! stored records into the API's views (pure); `response` builds the JSON and text answers and
//! the one error type every failure becomes.

mod api;
mod handlers;
mod health;
mod render;
mod response;
mod routes;
mod snapshot;
mod tail;

use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hyper::body::Body;
use hyper::Request;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::health::Health;
use crate::metrics::{Metrics, Snapshot};
use crate::receive::route::Routes;
use crate::store::Store;

pub use crate::time::rfc3339_ms;
pub use api::{
    parse_rfc3339, BodyFormat, Changed, DeadLetterDetail, DeadLetterPage, DeadLetterSummary,
    ErrorBody, ErrorReport, EventDetail, QuarantinePage, QuarantineSummary, Readiness,
    ReplayRequest, Selection, SinkReport, StatusReport, DEFAULT_LIMIT, MAX_LIMIT, MAX_SEQS,
};
pub use response::{AdminBody, AdminResponse};

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
    /// frequent scrapes share one count for [`snapshot::SNAPSHOT_TTL`].
    snapshot_cache: tokio::sync::Mutex<Option<(std::time::Instant, Snapshot)>>,
}

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
    type Body = AdminBody;

    fn respond(
        self: Arc<Self>,
        req: Request<hyper::body::Incoming>,
    ) -> impl std::future::Future<Output = Result<AdminResponse, Infallible>> + Send {
        self.handle(req)
    }
}
