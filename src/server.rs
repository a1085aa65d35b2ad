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

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_rustls::server::TlsStream;
use tokio_util::sync::CancellationToken;

use crate::handler::Receiver;
use crate::tls::Tls;

/// What answers the requests of one listener.
pub trait Handler: Send + Sync + 'static {
    /// Answers one request; every failure is a response.
    fn respond(
        self: Arc<Self>,
        req: Request<Incoming>,
    ) -> impl Future<Output = Result<Response<Full<Bytes>>, Infallible>> + Send;
}

impl Handler for Receiver {
    fn respond(
        self: Arc<Self>,
        req: Request<Incoming>,
    ) -> impl Future<Output = Result<Response<Full<Bytes>>, Infallible>> + Send {
        self.handle(req)
    }
}

/// Limits of the listener.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Most connections open at once; further clients wait in the kernel's backlog.
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
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    loop {
        let permit = tokio::select! {
            permit = permits.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break,
            },
            _ = shutdown.cancelled() => break,
        };
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
        let _ = stream.set_nodelay(true);
        let handler = handler.clone();
        let service = service_fn(move |req| handler.clone().respond(req));
        let mut builder = http1::Builder::new();
        builder
            .timer(TokioTimer::new())
            .header_read_timeout(limits.header_timeout)
            .keep_alive(true);
        let Some(tls) = &tls else {
            let connection = builder.serve_connection(TokioIo::new(stream), service);
            let connection = graceful.watch(connection);
            tokio::spawn(async move {
                if let Err(e) = connection.await {
                    tracing::debug!(%peer, error = %e, "connection ended with an error");
                }
                drop(permit);
            });
            continue;
        };
        // The watcher is taken now, so that the drain also waits for (or, once shutdown has
        // begun, closes) a connection whose handshake is still running.
        let (tls, watcher, stopping) = (tls.clone(), graceful.watcher(), shutdown.clone());
        tokio::spawn(async move {
            let _permit = permit;
            let Some(stream) =
                handshake(&tls, stream, peer, limits.header_timeout, &stopping).await
            else {
                return;
            };
            let connection = builder.serve_connection(TokioIo::new(stream), service);
            if let Err(e) = watcher.watch(connection).await {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
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
