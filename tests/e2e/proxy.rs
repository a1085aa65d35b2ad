//! A TCP pass-through between a daemon and a real service (PostgreSQL, a broker), which a test can cut
//! and restore: from the daemon's side, the service goes down (every open connection is
//! closed, new ones are refused) and comes back, while the service itself keeps running for
//! the other tests that share it. Bytes pass untouched; nothing is faked.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// A running pass-through to one upstream address.
pub struct Proxy {
    /// Where it listens (give this to the daemon instead of the service's address).
    pub addr: SocketAddr,
    up: Arc<AtomicBool>,
    /// Bumped on every cut: each connection task ends when it changes.
    cuts: watch::Sender<u64>,
    task: JoinHandle<()>,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
        self.cuts.send_modify(|n| *n += 1);
    }
}

impl Proxy {
    /// Starts a pass-through on 127.0.0.1 to `upstream`.
    pub async fn start(upstream: SocketAddr) -> Proxy {
        Proxy::start_slow(upstream, Duration::ZERO).await
    }

    /// Starts a pass-through on 127.0.0.1 to `upstream` that passes what the service answers
    /// `delay` late (a slow path back): the service has a request while its answer is still on
    /// the way, as when a client dies before the answer arrives.
    pub async fn start_slow(upstream: SocketAddr, delay: Duration) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the proxy");
        let addr = listener.local_addr().expect("a local address");
        let up = Arc::new(AtomicBool::new(true));
        let (cuts, _) = watch::channel(0u64);
        let task = tokio::spawn(accept_loop(
            listener,
            upstream,
            delay,
            up.clone(),
            cuts.clone(),
        ));
        Proxy {
            addr,
            up,
            cuts,
            task,
        }
    }

    /// The service "goes down": open connections are closed, new ones are closed at once.
    pub fn cut(&self) {
        self.up.store(false, Ordering::SeqCst);
        self.cuts.send_modify(|n| *n += 1);
    }

    /// The service is reachable again.
    pub fn restore(&self) {
        self.up.store(true, Ordering::SeqCst);
    }
}

async fn accept_loop(
    listener: TcpListener,
    upstream: SocketAddr,
    delay: Duration,
    up: Arc<AtomicBool>,
    cuts: watch::Sender<u64>,
) {
    while let Ok((client, _)) = listener.accept().await {
        if !up.load(Ordering::SeqCst) {
            drop(client);
            continue;
        }
        let mut cut = cuts.subscribe();
        tokio::spawn(async move {
            let Ok(server) = TcpStream::connect(upstream).await else {
                return;
            };
            tokio::select! {
                _ = pass(client, server, delay) => {}
                _ = cut.changed() => {}
            }
        });
    }
}

/// Passes bytes both ways until either side closes, each piece of the server's answers
/// `delay` after it was read (a latency, not a limit on the rate).
async fn pass(mut client: TcpStream, mut server: TcpStream, delay: Duration) {
    if delay.is_zero() {
        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
        return;
    }
    let (mut client_read, mut client_write) = client.split();
    let (mut server_read, mut server_write) = server.split();
    let (late, mut due) = mpsc::unbounded_channel::<(Instant, Vec<u8>)>();
    let read = async move {
        let mut buf = vec![0u8; 64 * 1024];
        while let Ok(n @ 1..) = server_read.read(&mut buf).await {
            if late
                .send((Instant::now() + delay, buf[..n].to_vec()))
                .is_err()
            {
                return;
            }
        }
    };
    let write = async move {
        while let Some((at, bytes)) = due.recv().await {
            tokio::time::sleep_until(at).await;
            if client_write.write_all(&bytes).await.is_err() {
                return;
            }
        }
    };
    tokio::select! {
        _ = tokio::io::copy(&mut client_read, &mut server_write) => {}
        _ = async { tokio::join!(read, write) } => {}
    }
}

/// The host:port of a `postgres://user@host:port/db` URL.
pub fn postgres_addr(url: &str) -> SocketAddr {
    url_addr(url, 5432)
}

/// The host:port of a `scheme://[user@]host[:port][/path]` URL (such as `redis://`), with
/// `default_port` when it names none.
pub fn url_addr(url: &str, default_port: u16) -> SocketAddr {
    let rest = url.split_once("://").map(|(_, rest)| rest).unwrap_or(url);
    let host_port = rest.split('/').next().unwrap_or(rest);
    let host_port = host_port.rsplit('@').next().unwrap_or(host_port);
    let host_port = if host_port.contains(':') {
        host_port.to_owned()
    } else {
        format!("{host_port}:{default_port}")
    };
    let host_port = host_port.replace("localhost", "127.0.0.1");
    host_port
        .parse()
        .unwrap_or_else(|e| panic!("the host:port {host_port} of a test service URL: {e}"))
}

/// `url` with its host:port replaced by `addr`.
pub fn via(url: &str, addr: SocketAddr) -> String {
    let (scheme, rest) = url.split_once("://").expect("a URL with a scheme");
    let (authority, path) = match rest.split_once('/') {
        Some((a, p)) => (a, format!("/{p}")),
        None => (rest, String::new()),
    };
    let user = authority
        .rsplit_once('@')
        .map(|(user, _)| format!("{user}@"))
        .unwrap_or_default();
    format!("{scheme}://{user}{addr}{path}")
}
