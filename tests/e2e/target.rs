//! The fake user service that the HTTP relay sink posts to: a hyper 1.x HTTP/1.1 server with
//! keep-alive, in the test process on 127.0.0.1, that records every request and answers from a
//! script.
//!
//! Every request becomes a [`Hit`] (method, path, headers, body bytes, arrival time, and what
//! was answered when). Answers come from a [`Plan`]: first the plans queued for the request's
//! `X-Kirim-Event-Id` (consumed in order), then that event's standing plan, then the global
//! queue (consumed in order), then the default (200). A target can also be "down": take a port
//! that refuses connections with [`refused_addr`] and start the target on it later with
//! [`Target::start_on`]. Waiting is polling with a deadline ([`DEADLINE`]); nothing here sleeps
//! to synchronise. This module knows nothing of the daemon.

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::HeaderMap;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::task::{JoinHandle, JoinSet};

use crate::daemon::DEADLINE;

/// The path the relay sinks of the tests post to.
pub const PATH: &str = "/hooks/kirim";
/// How often the waiting helpers look again.
const POLL: Duration = Duration::from_millis(15);
/// How long [`Target::start_on`] keeps trying to bind a port that is briefly still in use.
const BIND_RETRY: Duration = Duration::from_secs(5);

/// How the target answers one request.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Status code.
    pub status: u16,
    /// Extra response headers (`Retry-After`, ...).
    pub headers: Vec<(String, String)>,
    /// Response body.
    pub body: String,
    /// Wait before answering.
    pub delay: Duration,
}

impl Plan {
    /// Answers `status` at once, with a short body.
    pub fn status(status: u16) -> Plan {
        Plan {
            status,
            headers: Vec::new(),
            body: format!("fake target answered {status}"),
            delay: Duration::ZERO,
        }
    }

    /// Answers 200 at once.
    pub fn ok() -> Plan {
        Plan::status(200)
    }

    /// The same plan with one more response header.
    pub fn with_header(mut self, name: &str, value: &str) -> Plan {
        self.headers.push((name.to_owned(), value.to_owned()));
        self
    }

    /// The same plan with this response body.
    pub fn with_body(mut self, body: &str) -> Plan {
        self.body = body.to_owned();
        self
    }

    /// The same plan, answered only after `delay`.
    pub fn after(mut self, delay: Duration) -> Plan {
        self.delay = delay;
        self
    }
}

/// One request the target received.
#[derive(Debug, Clone)]
pub struct Hit {
    /// Position among every request this target received (0-based).
    pub index: usize,
    /// Request method.
    pub method: String,
    /// Request path.
    pub path: String,
    /// Request headers.
    pub headers: HeaderMap,
    /// Request body, exactly as received.
    pub body: Bytes,
    /// When the whole request had arrived.
    pub arrived: Instant,
    /// When the target answered and with which status (`None` while it waits, or when the
    /// client went away before the planned delay was over).
    pub answered: Option<(Instant, u16)>,
}

impl Hit {
    /// A request header's value, if present and text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// How many times the request carries header `name`.
    pub fn header_count(&self, name: &str) -> usize {
        self.headers.get_all(name).iter().count()
    }

    /// `X-Kirim-Event-Id` (empty when absent).
    pub fn event_id(&self) -> &str {
        self.header("x-kirim-event-id").unwrap_or("")
    }

    /// `X-Kirimhook-Attempt` as a number (`None` when absent or not a number).
    pub fn attempt(&self) -> Option<u32> {
        self.header("x-kirimhook-attempt")
            .and_then(|a| a.trim().parse().ok())
    }

    /// Whether the target answered 2xx.
    pub fn acknowledged(&self) -> bool {
        matches!(self.answered, Some((_, status)) if (200..300).contains(&status))
    }

    /// A one-line summary for assertion messages.
    pub fn summary(&self) -> String {
        format!(
            "#{} {} {} event={} attempt={} answered={}",
            self.index,
            self.method,
            self.path,
            self.event_id(),
            self.header("x-kirimhook-attempt").unwrap_or("-"),
            match self.answered {
                Some((_, status)) => status.to_string(),
                None => "-".into(),
            }
        )
    }
}

/// What the target answers, in order of precedence.
struct Script {
    per_event: HashMap<String, VecDeque<Plan>>,
    standing: HashMap<String, Plan>,
    queue: VecDeque<Plan>,
    default: Plan,
}

impl Script {
    fn next(&mut self, event_id: &str) -> Plan {
        if let Some(plan) = self
            .per_event
            .get_mut(event_id)
            .and_then(VecDeque::pop_front)
        {
            return plan;
        }
        if let Some(plan) = self.standing.get(event_id) {
            return plan.clone();
        }
        self.queue
            .pop_front()
            .unwrap_or_else(|| self.default.clone())
    }
}

struct Shared {
    hits: Mutex<Vec<Hit>>,
    script: Mutex<Script>,
}

/// A running fake service. Dropping it stops the server and closes its connections.
pub struct Target {
    /// Where it listens.
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    server: JoinHandle<()>,
}

impl Drop for Target {
    fn drop(&mut self) {
        // Aborting the accept task drops its JoinSet, which aborts every connection task.
        self.server.abort();
    }
}

/// An address on 127.0.0.1 that refuses connections: a port bound and released at once. A
/// target can be started there later with [`Target::start_on`].
pub fn refused_addr() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    let addr = listener.local_addr().expect("a local address");
    drop(listener);
    addr
}

impl Target {
    /// Starts a target on a free port of 127.0.0.1.
    pub async fn start() -> Target {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the fake target");
        Target::serve(listener)
    }

    /// Starts a target on `addr` (a port from [`refused_addr`]), retrying the bind for a short
    /// while in case the port is still held.
    pub async fn start_on(addr: SocketAddr) -> Target {
        let deadline = Instant::now() + BIND_RETRY;
        loop {
            match TcpListener::bind(addr).await {
                Ok(listener) => return Target::serve(listener),
                Err(_) if Instant::now() < deadline => tokio::time::sleep(POLL).await,
                Err(e) => panic!("cannot start the fake target on {addr}: {e}"),
            }
        }
    }

    fn serve(listener: TcpListener) -> Target {
        let addr = listener.local_addr().expect("a local address");
        let shared = Arc::new(Shared {
            hits: Mutex::new(Vec::new()),
            script: Mutex::new(Script {
                per_event: HashMap::new(),
                standing: HashMap::new(),
                queue: VecDeque::new(),
                default: Plan::ok(),
            }),
        });
        let server = tokio::spawn(accept_loop(listener, shared.clone()));
        Target {
            addr,
            shared,
            server,
        }
    }

    /// The URL a relay sink should post to.
    pub fn url(&self) -> String {
        format!("http://{}{PATH}", self.addr)
    }

    /// Queues `plan` for the next request that has no plan of its own.
    pub fn plan(&self, plan: Plan) {
        self.script().queue.push_back(plan);
    }

    /// Queues `plans` for the next requests carrying `X-Kirim-Event-Id: event_id`, in order.
    pub fn plan_for(&self, event_id: &str, plans: impl IntoIterator<Item = Plan>) {
        self.script()
            .per_event
            .entry(event_id.to_owned())
            .or_default()
            .extend(plans);
    }

    /// Answers every request for `event_id` with `plan` (once its queued plans are used up).
    pub fn always_for(&self, event_id: &str, plan: Plan) {
        self.script().standing.insert(event_id.to_owned(), plan);
    }

    /// The answer when no other plan applies (at first: 200 at once).
    pub fn set_default(&self, plan: Plan) {
        self.script().default = plan;
    }

    fn script(&self) -> std::sync::MutexGuard<'_, Script> {
        self.shared.script.lock().expect("script lock")
    }

    /// Every request so far, in arrival order.
    pub fn hits(&self) -> Vec<Hit> {
        self.shared.hits.lock().expect("hits lock").clone()
    }

    /// Every request so far for `event_id`, in arrival order.
    pub fn hits_for(&self, event_id: &str) -> Vec<Hit> {
        self.hits()
            .into_iter()
            .filter(|h| h.event_id() == event_id)
            .collect()
    }

    /// Every request so far, one line each, for assertion messages.
    pub fn summary(&self) -> String {
        let hits = self.hits();
        if hits.is_empty() {
            return "(no requests)".into();
        }
        hits.iter().map(Hit::summary).collect::<Vec<_>>().join("\n")
    }

    /// Polls until `check` returns `Some` for the requests so far; panics after [`DEADLINE`]
    /// saying `what` was awaited.
    pub async fn wait_until<T>(&self, what: &str, mut check: impl FnMut(&[Hit]) -> Option<T>) -> T {
        let deadline = Instant::now() + DEADLINE;
        loop {
            if let Some(found) = check(&self.hits()) {
                return found;
            }
            assert!(
                Instant::now() < deadline,
                "the fake target at {} waited {DEADLINE:?} for {what}; it received:\n{}",
                self.addr,
                self.summary()
            );
            tokio::time::sleep(POLL).await;
        }
    }

    /// Waits until every event of `event_ids` was answered 2xx at least once.
    pub async fn wait_acknowledged(&self, event_ids: &[String]) {
        let what = format!("{} events to be acknowledged", event_ids.len());
        self.wait_until(&what, |hits| {
            event_ids
                .iter()
                .all(|id| hits.iter().any(|h| h.event_id() == id && h.acknowledged()))
                .then_some(())
        })
        .await;
    }

    /// Waits until `event_id` has had `n` requests, each answered, and returns them.
    pub async fn wait_answered(&self, event_id: &str, n: usize) -> Vec<Hit> {
        let what = format!("{n} answered requests for {event_id}");
        self.wait_until(&what, |hits| {
            let mine: Vec<Hit> = hits
                .iter()
                .filter(|h| h.event_id() == event_id)
                .cloned()
                .collect();
            (mine.len() >= n && mine.iter().take(n).all(|h| h.answered.is_some())).then_some(mine)
        })
        .await
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    let mut connections = JoinSet::new();
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(_) => continue,
        };
        let _ = stream.set_nodelay(true);
        let shared = shared.clone();
        connections.spawn(async move {
            let service = service_fn(move |request| answer(shared.clone(), request));
            let _ = http1::Builder::new()
                .keep_alive(true)
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
        // Reap finished connections so the set does not grow without bound.
        while connections.try_join_next().is_some() {}
    }
}

async fn answer(
    shared: Arc<Shared>,
    request: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let (parts, body) = request.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let event_id = parts
        .headers
        .get("x-kirim-event-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let plan = shared.script.lock().expect("script lock").next(&event_id);
    let index = {
        let mut hits = shared.hits.lock().expect("hits lock");
        let index = hits.len();
        hits.push(Hit {
            index,
            method: parts.method.to_string(),
            path: parts.uri.path().to_owned(),
            headers: parts.headers,
            body,
            arrived: Instant::now(),
            answered: None,
        });
        index
    };
    if !plan.delay.is_zero() {
        tokio::time::sleep(plan.delay).await;
    }
    shared.hits.lock().expect("hits lock")[index].answered = Some((Instant::now(), plan.status));
    let mut response = Response::new(Full::new(Bytes::from(plan.body)));
    *response.status_mut() = StatusCode::from_u16(plan.status).expect("a valid status code");
    for (name, value) in &plan.headers {
        response.headers_mut().insert(
            hyper::header::HeaderName::from_bytes(name.as_bytes()).expect("a header name"),
            value.parse().expect("a header value"),
        );
    }
    Ok(response)
}
