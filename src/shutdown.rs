//! Turns SIGTERM and SIGINT into a cancelled [`CancellationToken`], and keeps SIGHUP from
//! killing the daemon.
//!
//! The first signal starts a graceful shutdown (stop accepting, drain, flush). A second signal
//! while draining exits at once: everything acknowledged is already on disk, so that loses
//! nothing that kirim.dev was told is safe.
//!
//! SIGHUP will mean "reload the config" once reloading exists; until then it is logged and
//! ignored, because its default action would terminate the process: a stray `kill -HUP` or
//! `systemctl kill -s HUP` must not stop the receiver. This module only watches signals;
//! telling systemd about the shutdown is `app`'s job.

use tokio::signal::unix::{signal, SignalKind};
use tokio_util::sync::CancellationToken;

/// Spawns the signal watchers and returns the token they cancel. SIGHUP is handled (logged
/// and ignored) from the moment this returns.
pub fn on_signals() -> std::io::Result<CancellationToken> {
    let token = CancellationToken::new();
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    tokio::spawn(async move {
        while hup.recv().await.is_some() {
            tracing::warn!(signal = "SIGHUP", "reload is not supported yet; ignoring");
        }
    });
    let cancel = token.clone();
    tokio::spawn(async move {
        let name = tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        };
        tracing::info!(signal = name, "shutting down gracefully");
        cancel.cancel();
        tokio::select! {
            _ = term.recv() => {},
            _ = int.recv() => {},
        }
        tracing::warn!("second signal: exiting now");
        std::process::exit(130);
    });
    Ok(token)
}
