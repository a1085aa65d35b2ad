//! The HTTP/1.1 accept loop: one task per connection, a bound on open connections, header and
//! body timeouts, and a graceful drain when shutdown is requested.
//!
//! It knows nothing about deliveries: every request goes to [`Receiver::handle`]. On shutdown it
//! stops accepting at once, lets in-flight requests finish (keep-alive connections are closed
//! after their current request) and gives up on stragglers at the drain deadline.

use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::handler::Receiver;

/// Limits of the listener.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Most connections open at once; further clients wait in the kernel's backlog.
    pub max_connections: usize,
    /// Time allowed for a request's headers to arrive (also closes idle keep-alive connections).
    pub header_timeout: Duration,
}

/// Serves `listener` until `shutdown` is cancelled, then drains until `drain` has passed.
pub async fn serve(
    listener: TcpListener,
    receiver: Arc<Receiver>,
    limits: Limits,
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
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.cancelled() => break,
        };
        let _ = stream.set_nodelay(true);
        let receiver = receiver.clone();
        let service = service_fn(move |req| receiver.clone().handle(req));
        let mut builder = http1::Builder::new();
        builder
            .timer(TokioTimer::new())
            .header_read_timeout(limits.header_timeout)
            .keep_alive(true);
        let connection = builder.serve_connection(TokioIo::new(stream), service);
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
            drop(permit);
        });
    }
    drop(listener);
    let open = graceful.count();
    tracing::info!(open_connections = open, "stopped accepting; draining");
    tokio::select! {
        _ = graceful.shutdown() => tracing::info!("all connections drained"),
        _ = tokio::time::sleep(drain) => {
            tracing::warn!(deadline_secs = drain.as_secs(), "drain deadline passed; closing remaining connections");
        }
    }
}
