//! Wake-ups: a dedicated connection LISTENs on the schema's channel and bumps a watch on every
//! NOTIFY (new queue rows, a retry or release, a dead letter put back, a replay), so
//! dispatchers of every instance learn of new work at once. [`PgWork`] waits on that watch,
//! and polls anyway (every second): a NOTIFY missed while the connection was down costs at
//! most one polling interval. The connection comes back by itself, with back-off.

use std::future::poll_fn;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;
use tokio_postgres::AsyncMessage;
use tokio_postgres_rustls::MakeRustlsConnect;
use tokio_util::sync::CancellationToken;

use super::describe;

/// Longest wait between two looks for work, NOTIFY or not.
pub const POLL_INTERVAL: Duration = Duration::from_secs(1);
/// First and longest pause before the LISTEN connection is made again.
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(10);

/// Waits for new work on any sink of a [`super::PgStore`].
#[derive(Debug, Clone)]
pub struct PgWork {
    rx: watch::Receiver<u64>,
}

impl PgWork {
    pub(super) fn new(rx: watch::Receiver<u64>) -> PgWork {
        PgWork { rx }
    }

    /// Returns when new work may exist (a NOTIFY arrived since the last call, or this
    /// instance made work), when `deadline` passes, or after [`POLL_INTERVAL`], whichever
    /// comes first. Works without the LISTEN connection too: then it just polls.
    pub async fn wait(&mut self, deadline: Option<Instant>) {
        let poll = Instant::now() + POLL_INTERVAL;
        let until = deadline.map_or(poll, |d| d.min(poll));
        tokio::select! {
            changed = self.rx.changed() => {
                if changed.is_err() {
                    // The store was closed: nothing will wake us but time.
                    tokio::time::sleep_until(until).await;
                }
            }
            _ = tokio::time::sleep_until(until) => {}
        }
    }
}

/// The LISTEN task: (re)connects, listens, and bumps `work` on every notification and every
/// reconnection (work may have arrived while it was away), until `cancel`.
pub(super) async fn run(
    config: tokio_postgres::Config,
    tls: MakeRustlsConnect,
    channel: String,
    work: watch::Sender<u64>,
    cancel: CancellationToken,
) {
    let mut backoff = BACKOFF_MIN;
    loop {
        let started = Instant::now();
        match listen_once(&config, &tls, &channel, &work, &cancel).await {
            Ok(()) => return,
            Err(why) => {
                if started.elapsed() > BACKOFF_MAX {
                    backoff = BACKOFF_MIN;
                }
                tracing::warn!(
                    error = %why,
                    retry_in = ?backoff,
                    "PostgreSQL LISTEN connection lost: polling for work until it is back"
                );
            }
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

/// One LISTEN connection's life: `Ok` when cancelled, `Err` when the connection is lost.
async fn listen_once(
    config: &tokio_postgres::Config,
    tls: &MakeRustlsConnect,
    channel: &str,
    work: &watch::Sender<u64>,
    cancel: &CancellationToken,
) -> Result<(), String> {
    let connect = tokio::time::timeout(super::CONNECT_TIMEOUT * 2, config.connect(tls.clone()));
    let (client, mut connection) = tokio::select! {
        _ = cancel.cancelled() => return Ok(()),
        r = connect => r.map_err(|_| "connect timed out".to_owned())?.map_err(|e| describe(&e))?,
    };
    let statement = format!("LISTEN \"{channel}\"");
    let listen = client.batch_execute(&statement);
    tokio::pin!(listen);
    let mut listening = false;
    let bump = || work.send_modify(|n| *n = n.wrapping_add(1));
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return Ok(()),
            done = &mut listen, if !listening => {
                done.map_err(|e| describe(&e))?;
                listening = true;
                bump();
            }
            message = poll_fn(|cx| connection.poll_message(cx)) => match message {
                Some(Ok(AsyncMessage::Notification(_))) => bump(),
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(describe(&e)),
                None => return Err("connection closed".into()),
            },
        }
    }
}
