//! Turns SIGTERM and SIGINT into a cancelled [`CancellationToken`], and SIGHUP into a reload
//! request.
//!
//! The first signal starts a graceful shutdown (stop accepting, drain, flush). A second signal
//! while draining exits at once: everything acknowledged is already on disk, so that loses
//! nothing that kirim.dev was told is safe.
//!
//! SIGHUP asks `app` to reload the config (several signals in a row coalesce into one
//! reload). Its default action would terminate the process, so it is handled from the moment
//! [`on_signals`] returns. This module only watches signals; reloading and telling systemd are
//! `app`'s job.

use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// What the signal watchers produce.
pub struct Signals {
    /// Cancelled by the first SIGTERM or SIGINT.
    pub shutdown: CancellationToken,
    /// Receives one message per SIGHUP (coalesced while a reload is pending).
    pub reload: mpsc::Receiver<()>,
}

/// Spawns the signal watchers. SIGHUP is handled from the moment this returns.
pub fn on_signals() -> std::io::Result<Signals> {
    let token = CancellationToken::new();
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    let (reload_tx, reload) = mpsc::channel(1);
    tokio::spawn(async move {
        while hup.recv().await.is_some() {
            tracing::info!(signal = "SIGHUP", "reload requested");
            // A full channel means a reload is already pending: it will read the newest file.
            let _ = reload_tx.try_send(());
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
    Ok(Signals {
        shutdown: token,
        reload,
    })
}
