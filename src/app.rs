//! Wires the daemon together: store, listener, receiver, sinks and sweeper, under one shutdown.
//! [`build`] starts everything but the webhook listener's serving; [`App::run_until_stopped`]
//! serves, applies reloads and drains; [`run`] is the two in a row.
//!
//! Start-up order: bind the webhook listener (or take over the one systemd passed) and the
//! admin listener, so that a port in use fails the start before a new store is created; open
//! the store (recovering whatever a crash left); start the sinks (they resume from their
//! durable queues), then serve and tell systemd `READY=1`. Shutdown order is the reverse: tell systemd
//! `STOPPING=1`, stop accepting and drain in-flight requests, let the sinks deliver what is
//! committed, then flush and close the store; all within one drain deadline. When systemd asks
//! for a watchdog, `WATCHDOG=1` is sent from start to exit.
//!
//! The admin listener (`[admin]`: health, readiness, metrics, the operator API) serves right
//! after the store opens, so `/healthz` answers while the rest starts; `/readyz` says ready
//! once the webhook listener serves. It stops accepting at the shutdown signal.
//!
//! A fault no retry heals ([`Health`]: stdout's consumer gone, the store's writer stopped)
//! stops admissions at once (503), shuts down like SIGTERM, and makes [`run`] return an error,
//! so the process exits non-zero for its supervisor.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::Context as _;
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::admin::{self, Admin};
use crate::config::{Config, PostgresConfig, ServerConfig, SinkConfig, StoreConfig, StoreEngine};
use crate::deliver::Plan;
use crate::health::{Fault, Health};
use crate::metrics::Metrics;
use crate::receive::handler::{Live, ReceiveSettings, Receiver};
use crate::receive::route::{RouteTable, Routes};
use crate::receive::server::{self, Limits};
use crate::receive::signature::DEMO_SECRET_WARNING;
use crate::shutdown::Signals;
use crate::store::postgres::{redact_url, PgSettings};
use crate::store::{Store, StoreOptions};
use crate::systemd::{self, Notifier, State};
use crate::tls::Tls;

/// How often the retention sweep runs.
const SWEEP_EVERY: Duration = Duration::from_secs(60);
/// How long a dispatcher's claim is leased on the embedded engine (one process: a lease
/// only ends early when a dispatcher is replaced on a reload).
const EMBEDDED_LEASE: Duration = Duration::from_secs(60);
/// How much longer than a sink's attempt timeout a claim is leased.
const LEASE_MARGIN: Duration = Duration::from_secs(2);

/// Runs the daemon until `shutdown` is cancelled and the drain has finished: [`build`], then
/// [`App::run_until_stopped`]. It serves on `activated` (a socket passed by systemd, see
/// [`systemd::take_activated_listener`]) when given, else it binds `server.listen`.
pub async fn run(
    config: Config,
    config_path: std::path::PathBuf,
    activated: Option<std::net::TcpListener>,
    signals: Signals,
) -> anyhow::Result<()> {
    let Signals { shutdown, reload } = signals;
    build(config, config_path, activated, shutdown)
        .await?
        .run_until_stopped(reload)
        .await
}

/// A daemon built and started but not serving yet: its listeners are bound, its store is
/// open, its sinks, sweeper and admin listener run. [`App::run_until_stopped`] serves.
pub struct App {
    config: Config,
    config_path: std::path::PathBuf,
    shutdown: CancellationToken,
    notifier: Notifier,
    watchdog: Option<tokio::task::JoinHandle<()>>,
    tls: Option<Arc<Tls>>,
    listener: TcpListener,
    addr: std::net::SocketAddr,
    store: Store,
    metrics: Metrics,
    health: Health,
    routes: Routes,
    admin: Option<(Arc<Admin>, tokio::task::JoinHandle<()>)>,
    stop_sinks: CancellationToken,
    sinks: SinkSet,
    sweeper: tokio::task::JoinHandle<()>,
    tolerance_tx: tokio::sync::watch::Sender<u64>,
    receiver: Arc<Receiver>,
    limits: Limits,
}

/// Builds the daemon from `config`: binds both listeners (or takes the one systemd passed),
/// opens the store, starts the sinks, the sweeper and the admin listener. Nothing is served
/// on the webhook listener yet. Everything stops when `shutdown` is cancelled.
pub async fn build(
    config: Config,
    config_path: std::path::PathBuf,
    activated: Option<std::net::TcpListener>,
    shutdown: CancellationToken,
) -> anyhow::Result<App> {
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

    // Both listeners first: a port in use fails the start before a new store is created.
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

    let admin_listener = bind_admin(&config).await?;

    let store = open_store(&config).await?;

    let secret_ids: Vec<&str> = config.verify.secrets.iter().map(|s| s.id()).collect();
    let sink_names: Vec<&str> = config.sinks.iter().map(|s| s.name.as_str()).collect();
    let metrics = Metrics::new(&secret_ids, &sink_names);
    let health = Health::new();
    let routes = Routes::new(route_table(&config.sinks));
    let admin = admin_listener
        .map(|listener| start_admin(listener, &store, &metrics, &health, &routes, &shutdown));

    let stop_sinks = CancellationToken::new();
    let sinks = SinkSet::start(
        &config.sinks,
        lease_of(&config.store),
        &store,
        &metrics,
        &stop_sinks,
    );

    let retention = Duration::from_secs(u64::from(config.store.retention_days) * 86_400);
    let (tolerance_tx, tolerance) = tokio::sync::watch::channel(config.verify.tolerance_secs);
    let sweeper = tokio::spawn(sweep_forever(
        store.clone(),
        retention,
        tolerance,
        config.store.keep_delivered,
    ));

    let receiver = Arc::new(Receiver::new(
        ReceiveSettings {
            path: config.server.path.clone(),
            max_body_bytes: config.server.max_body_bytes,
            body_timeout: config.server.request_timeout,
            tolerance_secs: config.verify.tolerance_secs,
            secrets: config.verify.secrets.clone().into(),
            routes: routes.clone(),
            metrics: metrics.clone(),
            health: health.clone(),
        },
        store.clone(),
    ));
    let limits = Limits {
        max_connections: config.server.max_connections,
        header_timeout: config.server.request_timeout,
    };
    for secret in config.verify.secrets.iter().filter(|s| s.is_demo()) {
        tracing::warn!(
            secret_id = secret.id(),
            "secret {} {DEMO_SECRET_WARNING}",
            secret.id()
        );
    }
    tracing::info!(
        addr = %addr,
        listener = source,
        tls = tls.is_some(),
        path = %config.server.path,
        store = %store_description(&config.store),
        secrets = config.verify.secrets.len(),
        sinks = config.sinks.len(),
        "listening"
    );

    Ok(App {
        config,
        config_path,
        shutdown,
        notifier,
        watchdog,
        tls,
        listener,
        addr,
        store,
        metrics,
        health,
        routes,
        admin,
        stop_sinks,
        sinks,
        sweeper,
        tolerance_tx,
        receiver,
        limits,
    })
}

impl App {
    /// Serves until `shutdown` is cancelled (or a fault stops the daemon), applying the
    /// reloads `reloads` asks for, then drains: in-flight requests, the sinks' deliveries of
    /// what is committed, the store. Returns an error for a fault, so the process exits
    /// non-zero for its supervisor.
    pub async fn run_until_stopped(
        self,
        mut reloads: tokio::sync::mpsc::Receiver<()>,
    ) -> anyhow::Result<()> {
        let App {
            config,
            config_path,
            shutdown,
            notifier,
            watchdog,
            tls,
            listener,
            addr,
            store,
            metrics,
            health,
            routes,
            admin,
            stop_sinks,
            mut sinks,
            sweeper,
            tolerance_tx,
            receiver,
            limits,
        } = self;
        let drain = config.server.shutdown_timeout;
        let receiver_handle = receiver.clone();
        let server = tokio::spawn(server::serve(
            "webhook",
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
        let status = format!("listening on {addr}");
        notifier.notify_or_log(&[State::Ready, State::Status(&status)]);
        let mut running = config;
        // The store's writer stops for good after a failed write (fjall refuses every later one):
        // then the daemon shuts down and exits non-zero, so its supervisor restarts it.
        let stopped = store.clone();
        let mut writer_gone = tokio::spawn(async move { stopped.stopped().await });
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = &mut writer_gone => {
                    let reason = store.failure().unwrap_or_else(|| "the store's writer stopped".into());
                    health.fail(Fault::StoreFailed(reason));
                    shutdown.cancel();
                    break;
                }
                Some(ended) = sinks.tasks.join_next() => match ended {
                    // A sink that can never deliver again (stdout's reader has gone): stop taking
                    // deliveries and exit non-zero; its queue waits for the next start.
                    Ok(Err(fault)) => {
                        health.fail(fault);
                        shutdown.cancel();
                        break;
                    }
                    Ok(Ok(())) => {}
                    Err(e) => tracing::error!(error = %e, "a sink task failed"),
                },
                Some(()) = reloads.recv() => {
                    notifier.notify_or_log(&[State::Reloading, State::Status("reloading")]);
                    // A shutdown during a reload wins: the reload stops where it is (at worst
                    // between halting the old sinks and starting the new ones, which leaves the
                    // queued events for the next start) and the drain begins at once.
                    tokio::select! {
                        fault = reload(&config_path, &mut running, &receiver_handle, &routes, &mut sinks, tls.clone(), &store, &metrics, &stop_sinks) => {
                            tolerance_tx.send_replace(running.verify.tolerance_secs);
                            // A sink that failed for good while being swapped still ends the run.
                            if let Some(fault) = fault {
                                health.fail(fault);
                                shutdown.cancel();
                                break;
                            }
                            notifier.notify_or_log(&[State::Ready, State::Status(&status)]);
                        }
                        _ = shutdown.cancelled() => break,
                    }
                }
            }
        }
        notifier.notify_or_log(&[State::Stopping, State::Status("draining")]);
        let deadline = tokio::time::Instant::now() + drain;
        if let Err(e) = server.await {
            tracing::error!(error = %e, "server task failed");
        }

        // No new events can arrive now; let every sink deliver what is committed.
        stop_sinks.cancel();
        let drained = tokio::time::timeout_at(deadline, async {
            while let Some(ended) = sinks.tasks.join_next().await {
                // Found while draining (stdout's reader left after SIGTERM): still exit non-zero.
                if let Ok(Err(fault)) = ended {
                    health.fail(fault);
                }
            }
        })
        .await;
        if drained.is_err() {
            tracing::warn!("sinks did not finish before the drain deadline; the rest is delivered after the next start");
            sinks.tasks.abort_all();
        }
        sweeper.abort();
        if let Some((_, task)) = admin {
            // It stopped accepting at the shutdown signal; in-flight requests had a short drain.
            let _ = task.await;
        }
        let closed = store.close().await;
        if let Some(fault) = health.fault() {
            if let Some(watchdog) = watchdog {
                watchdog.abort();
            }
            anyhow::bail!("{fault}; exiting so that the service manager restarts kirimhook");
        }
        closed.context("closing the store")?;
        if let Some(watchdog) = watchdog {
            watchdog.abort();
        }
        tracing::info!("stopped");
        Ok(())
    }
}

/// The running sink dispatchers.
struct SinkSet {
    tasks: JoinSet<Result<(), Fault>>,
    /// Cancelled to swap the sinks on a reload: in-flight deliveries finish, nothing new starts.
    halt: CancellationToken,
}

impl SinkSet {
    /// Starts one dispatcher per configured sink; `stop` drains them at shutdown.
    fn start(
        sinks: &[SinkConfig],
        lease: Duration,
        store: &Store,
        metrics: &Metrics,
        stop: &CancellationToken,
    ) -> SinkSet {
        let halt = CancellationToken::new();
        let mut tasks = JoinSet::new();
        for sink in sinks {
            let (store, stop, halt) = (store.clone(), stop.clone(), halt.clone());
            let metrics = metrics.clone();
            // A claim outlives the longest attempt, so that no other dispatcher takes over a
            // delivery that is still running.
            let plan = Plan {
                policy: sink.retry,
                lease: match sink.kind.attempt_timeout() {
                    Some(timeout) => lease.max(timeout + LEASE_MARGIN),
                    None => lease,
                },
            };
            let sink = crate::sinks::build(sink);
            tasks.spawn(crate::deliver::run_until(
                store, sink, plan, stop, halt, metrics,
            ));
        }
        SinkSet { tasks, halt }
    }

    /// Lets in-flight deliveries finish, then stops every dispatcher. Nothing is aborted: a
    /// delivery is bounded by its sink's timeout, and cutting one short could send an event
    /// twice at once (old and new dispatcher) or tear a stdout line.
    /// Returns the first fault a sink ended with meanwhile.
    async fn halt(&mut self) -> Option<Fault> {
        self.halt.cancel();
        let mut first = None;
        while let Some(ended) = self.tasks.join_next().await {
            if let Ok(Err(fault)) = ended {
                first.get_or_insert(fault);
            }
        }
        first
    }
}

/// Re-reads the config file and applies what can change while running: secrets, tolerance,
/// sink settings and filters, TLS certificates. An invalid file changes nothing. Settings that
/// need a restart (listen addresses, path, limits, store, admin, the set of sink names, turning
/// TLS on or off) are reported and left as they are. Returns the fault a sink ended with
/// while being swapped (stdout's reader gone), which ends the run.
#[allow(clippy::too_many_arguments)]
async fn reload(
    path: &std::path::Path,
    running: &mut Config,
    receiver: &Receiver,
    routes: &Routes,
    sinks: &mut SinkSet,
    tls: Option<Arc<Tls>>,
    store: &Store,
    metrics: &Metrics,
    stop: &CancellationToken,
) -> Option<Fault> {
    let file = path.to_owned();
    let loaded = tokio::task::spawn_blocking(move || Config::load(&file)).await;
    let new = match loaded {
        Ok(Ok(new)) => new,
        Ok(Err(e)) => {
            tracing::error!(key = e.key().unwrap_or("-"), error = %e, "reload refused; keeping the running configuration");
            return None;
        }
        Err(e) => {
            tracing::error!(error = %e, "reload refused; keeping the running configuration");
            return None;
        }
    };
    for (key, same) in [
        (
            "server",
            ServerConfig {
                tls: None,
                ..new.server.clone()
            } == ServerConfig {
                tls: None,
                ..running.server.clone()
            },
        ),
        ("store", new.store == running.store),
        ("admin", new.admin == running.admin),
        (
            "server.tls (on/off)",
            new.server.tls.is_some() == running.server.tls.is_some(),
        ),
    ] {
        if !same {
            tracing::warn!(key, "changed, but takes effect only after a restart");
        }
    }
    // TLS first: if the new certificate is unusable, nothing else changes either.
    let tls_switched = new.server.tls.is_some() != running.server.tls.is_some();
    if let (Some(tls), Some(files)) = (tls, new.server.tls.clone()) {
        // Reads the files: off the async runtime.
        let reloaded = tokio::task::spawn_blocking(move || tls.reload(&files)).await;
        match reloaded {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::error!(key = e.file().config_key(), error = %e, "reload refused; keeping the running configuration");
                return None;
            }
            Err(e) => {
                tracing::error!(error = %e, "reload refused; keeping the running configuration");
                return None;
            }
        }
    }
    let same_sinks = new
        .sinks
        .iter()
        .map(|s| &s.name)
        .eq(running.sinks.iter().map(|s| &s.name));
    let sinks_config = if same_sinks {
        new.sinks.clone()
    } else {
        tracing::warn!(
            key = "sinks",
            "sinks were added, removed or reordered: that takes a restart; the running sinks keep their settings"
        );
        running.sinks.clone()
    };
    receiver.reload(Live {
        tolerance_secs: new.verify.tolerance_secs,
        secrets: new.verify.secrets.clone().into(),
    });
    // One handle: the receive path and the admin API's replay see the new filters at once.
    routes.replace(route_table(&sinks_config));
    if same_sinks {
        if let Some(fault) = sinks.halt().await {
            // Not restarted: the daemon stops for its supervisor, the queue waits.
            return Some(fault);
        }
        *sinks = SinkSet::start(
            &sinks_config,
            lease_of(&running.store),
            store,
            metrics,
            stop,
        );
    }
    tracing::info!(
        secrets = new.verify.secrets.len(),
        sinks = sinks_config.len(),
        "configuration reloaded"
    );
    running.verify = new.verify;
    running.sinks = sinks_config;
    if !tls_switched {
        running.server.tls = new.server.tls;
    }
    None
}

/// Opens the store `[store]` names: the embedded one in `store.path` (recovering whatever a
/// crash left), or a connection pool to PostgreSQL (creating and migrating the schema). The
/// error says what is wrong and what to do.
async fn open_store(config: &Config) -> anyhow::Result<Store> {
    let sink_names: Vec<String> = config.sinks.iter().map(|s| s.name.clone()).collect();
    match &config.store.engine {
        StoreEngine::Embedded => {
            let store_path = config.store.path.clone();
            let options = StoreOptions {
                min_free_bytes: config.store.min_free_bytes,
                cache_bytes: config.store.cache_bytes,
                memtable_bytes: config.store.memtable_bytes,
                keep_delivered: !config.store.keep_delivered.is_zero(),
                ..StoreOptions::default()
            };
            Ok(tokio::task::spawn_blocking(move || {
                Store::open_embedded(&store_path, sink_names, options)
            })
            .await
            .context("store open task failed")??)
        }
        StoreEngine::Postgres(pg) => {
            let settings = postgres_settings(pg);
            let store = Store::connect_postgres(&settings).await.with_context(|| {
                format!(
                    "store.url: cannot use PostgreSQL ({})",
                    redact_url(pg.url.expose())
                )
            })?;
            tracing::info!(
                schema = %pg.schema,
                instance = %settings.instance,
                "connected to PostgreSQL; this instance shares the sinks' work with every other instance on the schema"
            );
            Ok(store)
        }
    }
}

/// The PostgreSQL engine's settings for `[store]`, with this process's lease owner id.
pub fn postgres_settings(pg: &PostgresConfig) -> PgSettings {
    PgSettings {
        url: pg.url.expose().to_owned(),
        schema: pg.schema.clone(),
        pool_size: pg.pool_size,
        instance: instance_id(),
    }
}

/// This process's name among the instances sharing a database: host, pid and 32 random bits.
fn instance_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "kirimhook".to_owned());
    format!("{host}-{}-{:08x}", std::process::id(), fastrand::u32(..))
}

/// How long a dispatcher's claims are leased with this `[store]`.
fn lease_of(store: &StoreConfig) -> Duration {
    match &store.engine {
        StoreEngine::Embedded => EMBEDDED_LEASE,
        StoreEngine::Postgres(pg) => pg.lease,
    }
}

/// The store in a few words, for the logs: its path, or PostgreSQL and the schema.
fn store_description(store: &StoreConfig) -> String {
    match &store.engine {
        StoreEngine::Embedded => store.path.display().to_string(),
        StoreEngine::Postgres(pg) => format!("postgres, schema {}", pg.schema),
    }
}

/// Binds the admin listener (`[admin] listen`); `None` when `[admin] enabled = false`.
async fn bind_admin(config: &Config) -> anyhow::Result<Option<TcpListener>> {
    if !config.admin.enabled {
        tracing::info!("admin listener disabled ([admin] enabled = false)");
        return Ok(None);
    }
    let listener = TcpListener::bind(config.admin.listen)
        .await
        .with_context(|| format!("cannot listen on {} (admin.listen)", config.admin.listen))?;
    Ok(Some(listener))
}

/// Starts serving the admin API on `listener`.
fn start_admin(
    listener: TcpListener,
    store: &Store,
    metrics: &Metrics,
    health: &Health,
    routes: &Routes,
    shutdown: &CancellationToken,
) -> (Arc<Admin>, tokio::task::JoinHandle<()>) {
    let addr = listener.local_addr().ok();
    if addr.is_some_and(|addr| !addr.ip().is_loopback()) {
        tracing::warn!(
            addr = ?addr,
            "the admin listener is not on a loopback address and has no authentication: \
             whoever reaches it can read stored events and drop dead letters"
        );
    }
    let admin = Arc::new(Admin::new(
        store.clone(),
        metrics.clone(),
        routes.clone(),
        health.clone(),
        shutdown.clone(),
    ));
    match addr {
        Some(addr) => tracing::info!(addr = %addr, "admin listening"),
        None => tracing::info!("admin listening"),
    }
    let task = tokio::spawn(admin::serve(listener, admin.clone(), shutdown.clone()));
    (admin, task)
}

/// Every sink's name with its filter, in config order.
fn route_table(sinks: &[SinkConfig]) -> RouteTable {
    sinks
        .iter()
        .map(|s| (s.name.clone(), s.filter.clone()))
        .collect()
}

/// How long a delivery's signed-content digest is kept: while a replay of it could still pass
/// the freshness check (twice the tolerance, and at least an hour), or the whole dedupe
/// retention when the check is off (`tolerance_secs = 0`).
fn keep_signatures(tolerance_secs: u64, retention: Duration) -> Duration {
    if tolerance_secs == 0 {
        retention
    } else {
        Duration::from_secs(tolerance_secs.saturating_mul(2).max(3600)).min(retention)
    }
}

/// Every [`SWEEP_EVERY`]: forgets dedupe keys older than `retention` and signed-content
/// digests no replay could use any more (`tolerance`, the running `verify.tolerance_secs`),
/// and removes events every sink has taken once they are older than `keep_delivered`
/// (`store.keep_delivered_hours`).
async fn sweep_forever(
    store: Store,
    retention: Duration,
    tolerance: tokio::sync::watch::Receiver<u64>,
    keep_delivered: Duration,
) {
    let mut every = tokio::time::interval(SWEEP_EVERY);
    loop {
        every.tick().await;
        let keep_signatures = keep_signatures(*tolerance.borrow(), retention);
        match store
            .sweep(
                SystemTime::now(),
                retention,
                keep_signatures,
                keep_delivered,
            )
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
