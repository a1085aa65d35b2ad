//! Wires the daemon together: store, listener, receiver, sinks and sweeper, under one shutdown.
//!
//! Start-up order: open the store (recovering whatever a crash left), bind the listener (or
//! take over the one systemd passed), start the sinks (they resume from their durable queues),
//! then serve and tell systemd `READY=1`. Shutdown order is the reverse: tell systemd
//! `STOPPING=1`, stop accepting and drain in-flight requests, let the sinks deliver what is
//! committed, then flush and close the store; all within one drain deadline. When systemd asks
//! for a watchdog, `WATCHDOG=1` is sent from start to exit.
//!
//! The admin listener (`[admin]`: health, readiness, metrics, the operator API) is bound right
//! after the store opens, so `/healthz` answers while the rest starts; `/readyz` says ready
//! once the webhook listener serves. It stops accepting at the shutdown signal.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::Context as _;
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::admin::{self, Admin};
use crate::config::{Config, SinkKind};
use crate::handler::{ReceiveSettings, Receiver};
use crate::metrics::Metrics;
use crate::server::{self, Limits};
use crate::sinks::http::HttpSink;
use crate::sinks::stdout::StdoutSink;
use crate::store::Store;
use crate::systemd::{self, Notifier, State};
use crate::tls::Tls;

/// How often the retention sweep runs.
const SWEEP_EVERY: Duration = Duration::from_secs(60);

/// Runs the daemon until `shutdown` is cancelled and the drain has finished. It serves on
/// `activated` (a socket passed by systemd, see [`systemd::take_activated_listener`]) when
/// given, else it binds `server.listen`.
pub async fn run(
    config: Config,
    activated: Option<std::net::TcpListener>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let notifier = Notifier::from_env();
    let watchdog = systemd::watchdog_from_env()
        .filter(|_| notifier.is_enabled())
        .map(|period| tokio::spawn(systemd::feed_watchdog(notifier.clone(), period)));

    // The certificate and key are read again here (validation read them too): a reload will
    // call `reload` on this same handle, and every new connection uses what it holds.
    let tls: Option<Arc<Tls>> = match config.server.tls.clone() {
        Some(files) => Some(Arc::new(
            tokio::task::spawn_blocking(move || Tls::load(&files))
                .await
                .context("TLS load task failed")?
                .map_err(|e| anyhow::anyhow!("{}: {e}", e.file().config_key()))?,
        )),
        None => None,
    };

    let sink_names = config.sinks.iter().map(|s| s.name.clone()).collect();
    let store_path = config.store.path.clone();
    let store = tokio::task::spawn_blocking(move || Store::open(&store_path, sink_names))
        .await
        .context("store open task failed")?
        .with_context(|| format!("cannot open the store at {}", config.store.path.display()))?;

    let secret_ids: Vec<&str> = config.verify.secrets.iter().map(|s| s.id()).collect();
    let sink_names: Vec<&str> = config.sinks.iter().map(|s| s.name.as_str()).collect();
    let metrics = Metrics::new(&secret_ids, &sink_names);
    let admin = start_admin(&config, &store, &metrics, &shutdown).await?;

    let (listener, source) = match activated {
        Some(inherited) => (
            systemd::into_tokio(inherited).context("cannot use the socket passed by systemd")?,
            "systemd",
        ),
        None => (
            TcpListener::bind(config.server.listen)
                .await
                .with_context(|| {
                    format!("cannot listen on {} (server.listen)", config.server.listen)
                })?,
            "server.listen",
        ),
    };
    let addr = listener
        .local_addr()
        .context("listener has no local address")?;

    let stop_sinks = CancellationToken::new();
    let mut sinks = JoinSet::new();
    for sink in &config.sinks {
        let (store, stop, policy) = (store.clone(), stop_sinks.clone(), sink.retry);
        match &sink.kind {
            SinkKind::Stdout => {
                let stdout = StdoutSink::new(sink.name.clone());
                sinks.spawn(crate::dispatch::run(
                    store,
                    stdout,
                    policy,
                    stop,
                    metrics.clone(),
                ));
            }
            SinkKind::Http(http) => {
                let relay = HttpSink::new(sink.name.clone(), http);
                sinks.spawn(crate::dispatch::run(
                    store,
                    relay,
                    policy,
                    stop,
                    metrics.clone(),
                ));
            }
        }
    }

    let sweeper = tokio::spawn(sweep_forever(
        store.clone(),
        Duration::from_secs(u64::from(config.store.retention_days) * 86_400),
        config.store.keep_delivered,
    ));

    let receiver = Arc::new(Receiver::new(
        ReceiveSettings {
            path: config.server.path.clone(),
            max_body_bytes: config.server.max_body_bytes,
            body_timeout: config.server.request_timeout,
            tolerance_secs: config.verify.tolerance_secs,
            secrets: config.verify.secrets.clone().into(),
            routes: config
                .sinks
                .iter()
                .map(|s| (s.name.clone(), s.filter.clone()))
                .collect(),
            metrics: metrics.clone(),
        },
        store.clone(),
    ));
    let limits = Limits {
        max_connections: config.server.max_connections,
        header_timeout: config.server.request_timeout,
    };
    let drain = config.server.shutdown_timeout;
    tracing::info!(
        addr = %addr,
        listener = source,
        tls = tls.is_some(),
        path = %config.server.path,
        store = %config.store.path.display(),
        secrets = config.verify.secrets.len(),
        sinks = config.sinks.len(),
        "listening"
    );

    let server = tokio::spawn(server::serve(
        listener,
        receiver,
        limits,
        tls.clone(),
        shutdown.clone(),
        drain,
    ));
    if let Some((admin, _)) = &admin {
        admin.set_serving(true);
    }
    notifier.notify_or_log(&[State::Ready, State::Status(&format!("listening on {addr}"))]);
    shutdown.cancelled().await;
    notifier.notify_or_log(&[State::Stopping, State::Status("draining")]);
    let deadline = tokio::time::Instant::now() + drain;
    if let Err(e) = server.await {
        tracing::error!(error = %e, "server task failed");
    }

    // No new events can arrive now; let every sink deliver what is committed.
    stop_sinks.cancel();
    let drained = tokio::time::timeout_at(deadline, async {
        while sinks.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!("sinks did not finish before the drain deadline; the rest is delivered after the next start");
        sinks.abort_all();
    }
    sweeper.abort();
    if let Some((_, task)) = admin {
        // It stopped accepting at the shutdown signal; in-flight requests had a short drain.
        let _ = task.await;
    }
    store.close().await.context("closing the store")?;
    if let Some(watchdog) = watchdog {
        watchdog.abort();
    }
    tracing::info!("stopped");
    Ok(())
}

/// Binds the admin listener (`[admin] listen`) and starts serving it; `None` when `[admin]
/// enabled = false`.
async fn start_admin(
    config: &Config,
    store: &Store,
    metrics: &Metrics,
    shutdown: &CancellationToken,
) -> anyhow::Result<Option<(Arc<Admin>, tokio::task::JoinHandle<()>)>> {
    if !config.admin.enabled {
        tracing::info!("admin listener disabled ([admin] enabled = false)");
        return Ok(None);
    }
    let listener = TcpListener::bind(config.admin.listen)
        .await
        .with_context(|| format!("cannot listen on {} (admin.listen)", config.admin.listen))?;
    let addr = listener
        .local_addr()
        .context("admin listener has no local address")?;
    if !addr.ip().is_loopback() {
        tracing::warn!(
            addr = %addr,
            "the admin listener is not on a loopback address and has no authentication: \
             whoever reaches it can read stored events and drop dead letters"
        );
    }
    let admin = Arc::new(Admin::new(
        store.clone(),
        metrics.clone(),
        config.sinks.iter().map(|s| s.name.clone()).collect(),
        shutdown.clone(),
    ));
    tracing::info!(addr = %addr, "admin listening");
    let task = tokio::spawn(admin::serve(listener, admin.clone(), shutdown.clone()));
    Ok(Some((admin, task)))
}

/// Every [`SWEEP_EVERY`]: forgets dedupe keys older than `retention` and removes events every
/// sink has taken once they are older than `keep_delivered` (`store.keep_delivered_hours`).
async fn sweep_forever(store: Store, retention: Duration, keep_delivered: Duration) {
    let mut every = tokio::time::interval(SWEEP_EVERY);
    loop {
        every.tick().await;
        match store
            .sweep(SystemTime::now(), retention, keep_delivered)
            .await
        {
            Ok(swept) if swept.keys > 0 || swept.events > 0 => {
                tracing::info!(keys = swept.keys, events = swept.events, "retention sweep");
            }
            Ok(_) => {}
            Err(e) => tracing::error!(error = %e, "retention sweep failed"),
        }
    }
}
