//! The HTTP/1.1 accept loop: one task per connection, a bound on open connections, header and
//! body timeouts, and a graceful drain when shutdown is requested.
//!
//! It knows nothing about deliveries: every request goes to a [`Handler`] (the webhook
//! [`Receiver`], or the admin API). On shutdown it stops accepting at once, lets in-flight
//! requests finish (keep-alive connections are closed after their current request) and gives
//! up on stragglers at the drain deadline.
//!
//! With [`Tls`], each connection's task first runs the TLS handshake (never the accept loop,
//! so a slow client cannot stall it), bounded by the header timeout, and then serves HTTP/1.1
//! over the encrypted stream with the same limits. Failed handshakes are everyday noise on the
//! internet (scanners, plain HTTP to the TLS port) and are logged at debug only.
//!
//! **Overload.** The accept loop never waits for room: a sender left in the kernel's backlog
//! behind idle or slow connections would time out (kirim.dev gives up after 10 s, and counts a
//! failure towards disabling the subscription). Like nginx and Envoy's overload manager, it
//! keeps the connections that are doing work and sheds the others:
//! - at `max_connections`, the connections that are not handling a request (idle keep-alive
//!   ones, and ones that have not finished their request head: slowloris) are closed, the
//!   longest-idle first, down to [`HEADROOM`] below the limit; a request being handled (its
//!   answer's body included, such as the admin listener's streamed live feed) is never cut;
//! - from three quarters of the limit on, new connections get a header timeout of at most
//!   [`PRESSURE_HEADER_TIMEOUT`];
//! - when every connection is handling a request, a new one is answered `503` with
//!   `Retry-After` (plain HTTP) or closed (TLS) at once, instead of waiting.
//!
//! So open connections (and file descriptors) stay at most `max_connections` plus those being
//! answered, and a real sender's fresh connection, which sends its head at once, is the last
//! to be shed.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::server::TlsStream;
use tokio_util::sync::CancellationToken;

use crate::receive::handler::Receiver;
use crate::tls::Tls;

/// What answers the requests of one listener.
pub trait Handler: Send + Sync + 'static {
    /// The body of its answers.
    type Body: hyper::body::Body<Data = Bytes, Error = Infallible> + Send + Unpin + 'static;

    /// Answers one request; every failure is a response.
    fn respond(
        self: Arc<Self>,
        req: Request<Incoming>,
    ) -> impl Future<Output = Result<Response<Self::Body>, Infallible>> + Send;
}

impl Handler for Receiver {
    type Body = Full<Bytes>;

    fn respond(
        self: Arc<Self>,
        req: Request<Incoming>,
    ) -> impl Future<Output = Result<Response<Full<Bytes>>, Infallible>> + Send {
        self.handle(req)
    }
}

/// Header timeout of connections accepted under pressure (at least three quarters of
/// `max_connections` open), when the configured one is longer.
pub const PRESSURE_HEADER_TIMEOUT: Duration = Duration::from_secs(2);
/// Share of `max_connections` freed at once when the limit is reached (so that shedding is
/// not redone on every new connection).
pub const HEADROOM: usize = 10;

/// The answer to a connection beyond the limit when every open one is handling a request.
const OVERLOADED: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n\
retry-after: 1\r\nconnection: close\r\ncontent-length: 23\r\n\r\n{\"error\":\"overloaded\"}";

/// Limits of the listener.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Most connections served at once; beyond it, idle and unfinished ones are shed (see
    /// the module doc).
    pub max_connections: usize,
    /// Time allowed for a request's headers to arrive (also closes idle keep-alive connections),
    /// and for the TLS handshake of a new connection.
    pub header_timeout: Duration,
}

/// Serves `listener` with `handler` until `shutdown` is cancelled, then drains until `drain`
/// has passed. With `tls`, every connection speaks HTTPS, with the certificate current when it
/// connected. `name` labels the log lines (`webhook`, `admin`).
pub async fn serve<H: Handler>(
    name: &'static str,
    listener: TcpListener,
    handler: Arc<H>,
    limits: Limits,
    tls: Option<Arc<Tls>>,
    shutdown: CancellationToken,
    drain: Duration,
) {
    let graceful = GracefulShutdown::new();
    let registry = Arc::new(Registry::default());
    let max = limits.max_connections.max(1);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // EMFILE and friends: back off briefly instead of spinning.
                    tracing::warn!(listener = name, error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.cancelled() => break,
        };
        let open = registry.len();
        if open >= max {
            let target = max.saturating_sub((max / HEADROOM).max(1));
            let shed = registry.shed_idle(open.saturating_sub(target).max(1));
            if shed == 0 {
                // Every connection is handling a request: answer at once, never queue.
                tracing::debug!(listener = name, %peer, open, "every connection is busy; refusing a new one");
                if tls.is_none() {
                    let _ = stream.try_write(OVERLOADED);
                }
                continue;
            }
            tracing::debug!(
                listener = name,
                open,
                shed,
                "connection limit reached; closed idle and unfinished connections"
            );
        }
        let _ = stream.set_nodelay(true);
        let header_timeout = if open >= max - max / 4 {
            limits.header_timeout.min(PRESSURE_HEADER_TIMEOUT)
        } else {
            limits.header_timeout
        };
        let (id, conn) = registry.add();
        let service = {
            let (handler, conn) = (handler.clone(), conn.clone());
            service_fn(move |req| {
                let (handler, conn) = (handler.clone(), conn.clone());
                async move {
                    // Busy until the answer's body is written out: a streamed answer (the
                    // admin listener's live feed) is a request being handled, never shed.
                    let busy = conn.begin();
                    let response = handler.respond(req).await?;
                    Ok::<_, Infallible>(response.map(|body| Answering { body, _busy: busy }))
                }
            })
        };
        let mut builder = http1::Builder::new();
        builder
            .timer(TokioTimer::new())
            .header_read_timeout(header_timeout)
            .keep_alive(true);
        // The watcher is taken now, so that the drain also waits for (or, once shutdown has
        // begun, closes) a connection whose handshake is still running.
        let (tls, watcher, stopping, registry) = (
            tls.clone(),
            graceful.watcher(),
            shutdown.clone(),
            registry.clone(),
        );
        tokio::spawn(async move {
            let served = async {
                match &tls {
                    None => {
                        let connection = builder.serve_connection(TokioIo::new(stream), service);
                        if let Err(e) = watcher.watch(connection).await {
                            tracing::debug!(%peer, error = %e, "connection ended with an error");
                        }
                    }
                    Some(tls) => {
                        let Some(stream) =
                            handshake(tls, stream, peer, header_timeout, &stopping).await
                        else {
                            return;
                        };
                        let connection = builder.serve_connection(TokioIo::new(stream), service);
                        if let Err(e) = watcher.watch(connection).await {
                            tracing::debug!(%peer, error = %e, "connection ended with an error");
                        }
                    }
                }
            };
            tokio::select! {
                () = served => {}
                // Shed: dropping the connection closes it. Only idle ones are shed, so no
                // request is cut short.
                () = conn.shed.notified() => tracing::debug!(%peer, "idle connection closed under load"),
            }
            registry.remove(id);
        });
    }
    drop(listener);
    let open = graceful.count();
    tracing::info!(
        listener = name,
        open_connections = open,
        "stopped accepting; draining"
    );
    tokio::select! {
        _ = graceful.shutdown() => tracing::info!(listener = name, "all connections drained"),
        _ = tokio::time::sleep(drain) => {
            tracing::warn!(listener = name, deadline_secs = drain.as_secs(), "drain deadline passed; closing remaining connections");
        }
    }
}

/// The open connections of one listener, for shedding under load.
#[derive(Default)]
struct Registry {
    conns: Mutex<HashMap<u64, Arc<Conn>>>,
    next_id: AtomicU64,
}

/// One open connection: whether it is handling a request, and since when it is idle.
struct Conn {
    busy: AtomicBool,
    /// Milliseconds since [`Conn::epoch`] at which it last finished a request (or opened).
    idle_since_ms: AtomicU64,
    epoch: Instant,
    shed: tokio::sync::Notify,
}

/// Marks a connection busy while alive.
struct Busy(Arc<Conn>);

/// An answer's body, keeping its connection busy until hyper has written it and dropped it.
struct Answering<B> {
    body: B,
    _busy: Busy,
}

impl<B> hyper::body::Body for Answering<B>
where
    B: hyper::body::Body + Unpin,
{
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<B::Data>, B::Error>>> {
        std::pin::Pin::new(&mut self.get_mut().body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.body.size_hint()
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.0
            .idle_since_ms
            .store(self.0.epoch.elapsed().as_millis() as u64, Ordering::Relaxed);
        self.0.busy.store(false, Ordering::Release);
    }
}

impl Conn {
    /// Marks the connection busy until the guard is dropped.
    fn begin(self: &Arc<Self>) -> Busy {
        self.busy.store(true, Ordering::Release);
        Busy(self.clone())
    }
}

impl Registry {
    fn len(&self) -> usize {
        lock(&self.conns).len()
    }

    fn add(&self) -> (u64, Arc<Conn>) {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let conn = Arc::new(Conn {
            busy: AtomicBool::new(false),
            idle_since_ms: AtomicU64::new(0),
            epoch: Instant::now(),
            shed: tokio::sync::Notify::new(),
        });
        lock(&self.conns).insert(id, conn.clone());
        (id, conn)
    }

    fn remove(&self, id: u64) {
        lock(&self.conns).remove(&id);
    }

    /// Closes up to `n` connections that are not handling a request, the longest idle
    /// first; returns how many. They leave the registry at once.
    fn shed_idle(&self, n: usize) -> usize {
        let now = Instant::now();
        let mut conns = lock(&self.conns);
        let mut idle: Vec<(Duration, u64)> = conns
            .iter()
            .filter(|(_, c)| !c.busy.load(Ordering::Acquire))
            .map(|(id, c)| {
                let since =
                    c.epoch + Duration::from_millis(c.idle_since_ms.load(Ordering::Relaxed));
                (now.saturating_duration_since(since), *id)
            })
            .collect();
        let n = n.min(idle.len());
        if n == 0 {
            return 0;
        }
        if n < idle.len() {
            idle.select_nth_unstable_by(n - 1, |a, b| b.0.cmp(&a.0));
        }
        for (_, id) in &idle[..n] {
            if let Some(conn) = conns.remove(id) {
                conn.shed.notify_one();
            }
        }
        n
    }
}

/// Locks a mutex whose data stays valid even if a holder panicked.
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Runs the TLS handshake of one new connection, with the certificate current now. `None`
/// when it fails, takes longer than `timeout`, or shutdown begins first; failures are logged
/// at debug, since scanners and plain-HTTP clients cause them all the time.
async fn handshake(
    tls: &Tls,
    stream: TcpStream,
    peer: SocketAddr,
    timeout: Duration,
    shutdown: &CancellationToken,
) -> Option<TlsStream<TcpStream>> {
    let accept = tokio::time::timeout(timeout, tls.acceptor().accept(stream));
    tokio::select! {
        done = accept => match done {
            Ok(Ok(stream)) => Some(stream),
            Ok(Err(e)) => {
                tracing::debug!(%peer, error = %e, "TLS handshake failed");
                None
            }
            Err(_) => {
                tracing::debug!(%peer, timeout_secs = timeout.as_secs(), "TLS handshake timed out");
                None
            }
        },
        _ = shutdown.cancelled() => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shedding_closes_the_longest_idle_first_and_never_a_busy_one() {
        let registry = Registry::default();
        let (_, oldest) = registry.add();
        let (_, busy) = registry.add();
        let (_, newer) = registry.add();
        // `busy` started first but handles a request; `oldest` has been idle longest.
        let _working = busy.begin();
        oldest.idle_since_ms.store(0, Ordering::Relaxed);
        newer.idle_since_ms.store(
            newer.epoch.elapsed().as_millis() as u64 + 1,
            Ordering::Relaxed,
        );
        std::thread::sleep(Duration::from_millis(5));
        assert_eq!(registry.shed_idle(1), 1);
        assert_eq!(registry.len(), 2);
        let left: Vec<bool> = lock(&registry.conns)
            .values()
            .map(|c| Arc::ptr_eq(c, &oldest))
            .collect();
        assert!(!left.contains(&true), "the longest-idle one goes first");
        // Only idle ones: asking for more sheds just `newer`.
        assert_eq!(registry.shed_idle(5), 1);
        assert_eq!(registry.len(), 1, "the busy connection stays");
        assert_eq!(registry.shed_idle(5), 0);
    }
}
