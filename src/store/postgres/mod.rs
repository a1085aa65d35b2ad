//! The PostgreSQL store engine: several kirimhook instances share one database (each
//! deployment in its own schema) and hand the sinks' work out between them with leases.
//!
//! Layout: [`schema`](self) validates the schema name and migrates it; `admit` is the
//! admission group commit (one background task batching concurrent admissions into one
//! transaction); `claims` leases queue rows to this instance and settles them, fenced by a
//! lease generation; `maintenance` holds dead letters, quarantine, replay, counts and the
//! sweep; `listen` turns `NOTIFY` into wake-ups for [`PgWork`]. Events are stored in the
//! engine-neutral [`record`](crate::store::record) encoding, with the columns a replay
//! filters on beside it. No engine type leaves this module: errors become [`StoreError`].
//!
//! Connections: admissions use their own small pool with `synchronous_commit=on`, so an
//! admission is answered only once it is durable; claims, settles and maintenance use a pool
//! of `pool_size` connections with `synchronous_commit=off` (a settle lost in a crash only
//! means a redelivery). Every wait is bounded: when PostgreSQL is down, calls fail with
//! [`StoreError::Unavailable`] within a few seconds.

mod admit;
mod claims;
mod listen;
mod maintenance;
mod schema;
#[cfg(test)]
pub(crate) mod testing;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_connection;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_postgres::config::SslMode;
use tokio_postgres_rustls::MakeRustlsConnect;
use tokio_util::sync::CancellationToken;

pub use listen::PgWork;

use super::StoreError;
use schema::Schema;

/// How long a connection attempt may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// How long a call waits for a pooled connection (or for a new one to be made).
const POOL_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a claim, a settle or a read may take before it is given up as unavailable.
const OP_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a readiness probe may take.
const PING_TIMEOUT: Duration = Duration::from_secs(2);
/// Shortest time between two notifications of new work to the other instances.
const ANNOUNCE_EVERY: Duration = Duration::from_millis(10);
/// Oldest PostgreSQL supported (`server_version_num`).
const MIN_SERVER_VERSION: i32 = 150_000;

/// How to reach PostgreSQL and where to keep kirimhook's tables.
#[derive(Clone)]
pub struct PgSettings {
    /// A libpq-style URL (`postgres://user:password@host:5432/db?sslmode=require`) or
    /// key-value string. With `sslmode=require` the connection uses TLS (rustls, verified
    /// against the webpki roots); otherwise it is plain TCP.
    pub url: String,
    /// Schema holding this deployment's tables (default `kirimhook`); created if missing.
    pub schema: String,
    /// Connections for claims, settles and maintenance (admissions have their own two).
    pub pool_size: usize,
    /// This instance's lease owner id (e.g. `host-pid-random`): unique per running process.
    pub instance: String,
}

impl std::fmt::Debug for PgSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgSettings")
            .field("url", &redact_url(&self.url))
            .field("schema", &self.schema)
            .field("pool_size", &self.pool_size)
            .field("instance", &self.instance)
            .finish()
    }
}

/// `url` with any password replaced by `***` (URL user info, `password=` parameters).
pub fn redact_url(url: &str) -> String {
    let mut out = url.to_owned();
    if let Some(scheme_end) = out.find("://") {
        let rest = &out[scheme_end + 3..];
        let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
        if let Some(at) = rest[..authority_end].rfind('@') {
            if let Some(colon) = rest[..at].find(':') {
                let (start, end) = (scheme_end + 3 + colon + 1, scheme_end + 3 + at);
                out.replace_range(start..end, "***");
            }
        }
    }
    // `password=...` in a query string or a key-value string.
    let mut search = 0;
    while let Some(found) = out[search..].find("password=") {
        let at = search + found;
        let boundary = at == 0 || matches!(out.as_bytes()[at - 1], b'?' | b'&' | b' ');
        let start = at + "password=".len();
        if !boundary {
            search = start;
            continue;
        }
        let end = out[start..]
            .find(['&', ' '])
            .map_or(out.len(), |e| start + e);
        out.replace_range(start..end, "***");
        search = start + 3;
    }
    out
}

/// The PostgreSQL engine. Cheap to clone: every clone shares the pools and background tasks.
#[derive(Clone)]
pub struct PgStore {
    inner: Arc<Inner>,
}

struct Inner {
    schema: Schema,
    instance: String,
    /// Claims, settles, maintenance (`synchronous_commit=off`).
    pool: Pool,
    /// Admissions (`synchronous_commit=on`).
    admit_pool: Pool,
    admit_tx: mpsc::Sender<admit::AdmitJob>,
    /// Bumped whenever new work may exist (a NOTIFY arrived, or this instance made some).
    work: watch::Sender<u64>,
    /// Asks the announcer task to tell the other instances about new queue rows (one
    /// `NOTIFY` for however many admissions asked meanwhile).
    announce: Arc<tokio::sync::Notify>,
    cancel: CancellationToken,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

impl PgStore {
    /// Connects, creates the schema if missing and migrates it (embedded versioned SQL,
    /// under `pg_advisory_xact_lock` so instances starting together do not race), and starts
    /// the admission group-commit task and the LISTEN task.
    pub async fn connect(settings: &PgSettings) -> Result<PgStore, StoreError> {
        let schema = Schema::new(&settings.schema)?;
        let (config, tls) = pg_config(settings)?;
        // Migrate over a connection of its own, before any pool hands one out.
        let (mut client, connection) = connect_once(&config, &tls, settings).await?;
        let conn_task = tokio::spawn(async move {
            let _ = connection.await;
        });
        let migrated = schema::migrate(&mut client, &schema).await;
        drop(client);
        let _ = conn_task.await;
        migrated?;

        let pool = build_pool(&config, &tls, "off", settings.pool_size.max(1))?;
        let admit_pool = build_pool(&config, &tls, "on", admit::WORKERS)?;
        let (admit_tx, admit_rx) = mpsc::channel(admit::QUEUE);
        let (work, _) = watch::channel(0u64);
        let cancel = CancellationToken::new();
        let inner = Arc::new(Inner {
            schema: schema.clone(),
            instance: settings.instance.clone(),
            pool,
            admit_pool,
            admit_tx,
            work,
            announce: Arc::new(tokio::sync::Notify::new()),
            cancel: cancel.clone(),
            tasks: Mutex::new(Vec::new()),
        });
        let mut tasks = admit::spawn_workers(&inner, admit_rx);
        tasks.push(tokio::spawn(announce(
            inner.announce.clone(),
            Arc::downgrade(&inner),
            cancel.clone(),
        )));
        tasks.push(tokio::spawn(listen::run(
            config,
            tls,
            schema.channel().to_owned(),
            inner.work.clone(),
            cancel,
        )));
        *lock(&inner.tasks) = tasks;
        Ok(PgStore { inner })
    }

    /// For `check-config`: connects once and returns the server version (e.g. `"15.20"`), or
    /// says what is wrong (unreachable, refused, older than PostgreSQL 15, bad schema name).
    pub async fn check(settings: &PgSettings) -> Result<String, StoreError> {
        Schema::new(&settings.schema)?;
        let (config, tls) = pg_config(settings)?;
        let (client, connection) = connect_once(&config, &tls, settings).await?;
        let conn_task = tokio::spawn(async move {
            let _ = connection.await;
        });
        let row = client
            .query_one(
                "SELECT current_setting('server_version'), \
                 current_setting('server_version_num')::int",
                &[],
            )
            .await
            .map_err(|e| StoreError::Open(format!("PostgreSQL: {}", describe(&e))));
        drop(client);
        let _ = conn_task.await;
        let row = row?;
        let version: String = row.get(0);
        let number: i32 = row.get(1);
        if number < MIN_SERVER_VERSION {
            return Err(StoreError::Open(format!(
                "PostgreSQL {version} is too old: kirimhook needs PostgreSQL 15 or later"
            )));
        }
        // "15.20 (Debian 15.20-0+deb12u1)" -> "15.20"
        Ok(version
            .split_whitespace()
            .next()
            .unwrap_or(&version)
            .to_owned())
    }

    /// A handle that waits until new work may exist for any sink (see [`PgWork::wait`]).
    pub fn work(&self) -> PgWork {
        PgWork::new(self.inner.work.subscribe())
    }

    /// Readiness: one pooled `SELECT 1`, within about two seconds.
    pub async fn ping(&self) -> Result<(), StoreError> {
        let inner = self.inner.clone();
        timed(PING_TIMEOUT, "ping", async move {
            let client = inner.client().await?;
            client.simple_query("SELECT 1").await.map_err(engine)?;
            Ok(())
        })
        .await?
    }

    /// Bytes the schema's tables take, with their indexes and TOAST.
    pub async fn disk_space(&self) -> Result<u64, StoreError> {
        let client = self.inner.client().await?;
        let row = timed(
            OP_TIMEOUT,
            "disk_space",
            client.query_one(
                "SELECT coalesce(sum(pg_total_relation_size(c.oid)), 0)::bigint \
                 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
                 WHERE n.nspname = $1 AND c.relkind IN ('r', 'm')",
                &[&self.inner.schema.name()],
            ),
        )
        .await?
        .map_err(engine)?;
        Ok(row.get::<_, i64>(0).max(0) as u64)
    }

    /// Stops the background tasks (an admission batch being committed is finished first;
    /// admissions still waiting are answered [`StoreError::WriterGone`]) and closes the pools.
    pub async fn close(&self) {
        self.inner.cancel.cancel();
        let tasks = std::mem::take(&mut *lock(&self.inner.tasks));
        for task in tasks {
            let _ = task.await;
        }
        self.inner.pool.close();
        self.inner.admit_pool.close();
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        // The last PgStore is gone without close(): stop the LISTEN task too.
        self.cancel.cancel();
    }
}

impl Inner {
    /// A connection of the claims pool.
    async fn client(&self) -> Result<deadpool_postgres::Object, StoreError> {
        get(&self.pool).await
    }

    /// `sql` qualified with this store's schema.
    fn sql(&self, sql: &str) -> String {
        self.schema.sql(sql)
    }

    /// Tells this instance's waiters that work may exist (other instances learn it by NOTIFY).
    fn wake(&self) {
        self.work.send_modify(|n| *n = n.wrapping_add(1));
    }
}

/// Sends one `NOTIFY` on the schema's channel each time admissions asked for it, on a pooled
/// connection with asynchronous commit (a lost notification only costs the others' one-second
/// poll), at most one per [`ANNOUNCE_EVERY`]: under load, every notification wakes every
/// other instance's dispatchers, and one per admission batch would keep them claiming for
/// nothing. Ends when the store is cancelled or dropped.
async fn announce(
    asked: Arc<tokio::sync::Notify>,
    store: std::sync::Weak<Inner>,
    cancel: CancellationToken,
) {
    loop {
        tokio::select! {
            _ = asked.notified() => {}
            _ = cancel.cancelled() => return,
        }
        let Some(inner) = store.upgrade() else {
            return;
        };
        let sent = async {
            let client = inner.client().await?;
            client
                .execute("SELECT pg_notify($1, '')", &[&inner.schema.channel()])
                .await
                .map_err(engine)
        };
        if let Err(e) = timed(PING_TIMEOUT, "a notification", sent)
            .await
            .and_then(|r| r)
        {
            tracing::debug!(error = %e, "cannot notify the other instances; they find the work by polling");
        }
        drop(inner);
        tokio::select! {
            _ = tokio::time::sleep(ANNOUNCE_EVERY) => {}
            _ = cancel.cancelled() => return,
        }
    }
}

/// A connection from `pool`, or [`StoreError::Unavailable`] once the pool's bounded wait is
/// over (PostgreSQL down or every connection busy).
async fn get(pool: &Pool) -> Result<deadpool_postgres::Object, StoreError> {
    pool.get().await.map_err(|e| {
        let why = match &e {
            deadpool_postgres::PoolError::Backend(e) => describe(e),
            other => other.to_string(),
        };
        StoreError::Unavailable(format!("no PostgreSQL connection: {why}"))
    })
}

/// Runs `fut` for at most `limit`; past it, the outcome is unknown: `Unavailable`.
async fn timed<T>(
    limit: Duration,
    what: &str,
    fut: impl std::future::Future<Output = T>,
) -> Result<T, StoreError> {
    tokio::time::timeout(limit, fut).await.map_err(|_| {
        StoreError::Unavailable(format!(
            "PostgreSQL did not answer {what} within {}",
            humantime::format_duration(limit)
        ))
    })
}

/// An engine error as a [`StoreError`]: a lost or refused connection is `Unavailable` (the
/// outcome of what was under way is unknown), anything else `Engine`.
fn engine(e: tokio_postgres::Error) -> StoreError {
    if e.as_db_error().is_none() || e.is_closed() {
        StoreError::Unavailable(describe(&e))
    } else {
        StoreError::Engine(describe(&e))
    }
}

/// Words for a PostgreSQL error: the server's message when there is one, with its source.
fn describe(e: &tokio_postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        return format!("{} ({})", db.message(), db.code().code());
    }
    match std::error::Error::source(e) {
        Some(source) => format!("{e}: {source}"),
        None => e.to_string(),
    }
}

/// Locks a mutex, ignoring poisoning (the data is a list of task handles).
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The parsed URL with kirimhook's timeouts. `prefer` (the default) is turned into
/// `disable`: TLS is used only when asked for with `sslmode=require`.
fn pg_config(
    settings: &PgSettings,
) -> Result<(tokio_postgres::Config, MakeRustlsConnect), StoreError> {
    let (url, rootcert) = split_rootcert(&settings.url);
    let mut config: tokio_postgres::Config = url.parse().map_err(|e| {
        StoreError::Open(format!(
            "store.url {} is not a PostgreSQL URL: {e}",
            redact_url(&settings.url)
        ))
    })?;
    if config.get_ssl_mode() != SslMode::Require {
        config.ssl_mode(SslMode::Disable);
    }
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(CONNECT_TIMEOUT);
    }
    if config.get_application_name().is_none() {
        config.application_name("kirimhook");
    }
    config.keepalives_idle(Duration::from_secs(30));
    config.tcp_user_timeout(Duration::from_secs(10));
    Ok((config, tls(rootcert.as_deref())?))
}

/// Takes `sslrootcert=PATH` out of a URL's query string (the client library does not know
/// it): the PEM file of the CA certificates that a `sslmode=require` connection is verified
/// against, instead of the public roots (a managed database's own CA, a private CA).
fn split_rootcert(url: &str) -> (String, Option<std::path::PathBuf>) {
    let Some((base, query)) = url.split_once('?') else {
        return (url.to_owned(), None);
    };
    let mut rootcert = None;
    let kept: Vec<&str> = query
        .split('&')
        .filter(|pair| match pair.strip_prefix("sslrootcert=") {
            Some(path) => {
                rootcert = Some(std::path::PathBuf::from(path));
                false
            }
            None => true,
        })
        .collect();
    let url = if kept.is_empty() {
        base.to_owned()
    } else {
        format!("{base}?{}", kept.join("&"))
    };
    (url, rootcert)
}

/// rustls for `sslmode=require`: verified against the public (webpki) roots, or only against
/// the certificates of `rootcert`.
fn tls(rootcert: Option<&std::path::Path>) -> Result<MakeRustlsConnect, StoreError> {
    let roots = match rootcert {
        None => rustls::RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
        },
        Some(path) => {
            let mut roots = rustls::RootCertStore::empty();
            let certs = crate::tls::read_certs(path)
                .map_err(|e| StoreError::Open(format!("store.url sslrootcert: {e}")))?;
            for cert in certs {
                roots.add(cert).map_err(|e| {
                    StoreError::Open(format!(
                        "store.url sslrootcert {}: not a usable CA certificate: {e}",
                        path.display()
                    ))
                })?;
            }
            roots
        }
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| StoreError::Open(format!("TLS setup for PostgreSQL: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(MakeRustlsConnect::new(config))
}

type PgConnection = tokio_postgres::Connection<
    tokio_postgres::Socket,
    <MakeRustlsConnect as tokio_postgres::tls::MakeTlsConnect<tokio_postgres::Socket>>::Stream,
>;

/// One connection outside the pools, or an `Open` error saying what to check.
async fn connect_once(
    config: &tokio_postgres::Config,
    tls: &MakeRustlsConnect,
    settings: &PgSettings,
) -> Result<(tokio_postgres::Client, PgConnection), StoreError> {
    let open = |why: String| {
        StoreError::Open(format!(
            "cannot connect to PostgreSQL at {}: {why}; check store.url and that \
             the server is running and accepts this user",
            redact_url(&settings.url)
        ))
    };
    match tokio::time::timeout(CONNECT_TIMEOUT * 2, config.connect(tls.clone())).await {
        Ok(Ok(pair)) => Ok(pair),
        Ok(Err(e)) => Err(open(describe(&e))),
        Err(_) => Err(open("timed out".into())),
    }
}

/// A pool of connections whose sessions run with `synchronous_commit` set to `sync`.
fn build_pool(
    config: &tokio_postgres::Config,
    tls: &MakeRustlsConnect,
    sync: &str,
    size: usize,
) -> Result<Pool, StoreError> {
    let mut config = config.clone();
    let options = match config.get_options() {
        Some(o) if !o.is_empty() => format!("{o} -c synchronous_commit={sync}"),
        _ => format!("-c synchronous_commit={sync}"),
    };
    config.options(&options);
    let manager = Manager::from_config(
        config,
        tls.clone(),
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    Pool::builder(manager)
        .max_size(size)
        .runtime(Runtime::Tokio1)
        .wait_timeout(Some(POOL_TIMEOUT))
        .create_timeout(Some(POOL_TIMEOUT))
        .recycle_timeout(Some(POOL_TIMEOUT))
        .build()
        .map_err(|e| StoreError::Open(format!("PostgreSQL pool: {e}")))
}

/// A seq or a time in milliseconds as PostgreSQL's `bigint`.
fn int8(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// A `bigint` read back as u64 (negative values, which kirimhook never writes, as 0).
fn uint8(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

#[cfg(test)]
mod unit_tests {
    use super::*;

    #[test]
    fn debug_redacts_the_password() {
        let settings = PgSettings {
            url: "postgres://kh:s3cret@db.example:5432/app?sslmode=require".into(),
            schema: "kirimhook".into(),
            pool_size: 4,
            instance: "host-1".into(),
        };
        let shown = format!("{settings:?}");
        assert!(!shown.contains("s3cret"), "{shown}");
        assert!(shown.contains("postgres://kh:***@db.example:5432/app?sslmode=require"));
    }

    #[test]
    fn redacts_every_spelling_of_a_password() {
        assert_eq!(
            redact_url("host=db user=kh password=s3cret dbname=app"),
            "host=db user=kh password=*** dbname=app"
        );
        assert_eq!(
            redact_url("postgres://kh@db/app?password=s3cret&sslmode=require"),
            "postgres://kh@db/app?password=***&sslmode=require"
        );
        assert_eq!(redact_url("postgres://kh@db/app"), "postgres://kh@db/app");
        assert_eq!(
            redact_url("postgres://u:p@ss@db/a"),
            "postgres://u:***@db/a"
        );
    }
}

#[cfg(test)]
mod url_tests {
    use super::*;

    #[test]
    fn sslrootcert_is_taken_out_of_the_url_and_the_rest_kept() {
        let (url, ca) = split_rootcert(
            "postgres://u:p@db:5432/kh?sslmode=require&sslrootcert=/etc/kh/ca.pem&application_name=x",
        );
        assert_eq!(
            url,
            "postgres://u:p@db:5432/kh?sslmode=require&application_name=x"
        );
        assert_eq!(ca.as_deref(), Some(std::path::Path::new("/etc/kh/ca.pem")));
        let (url, ca) = split_rootcert("postgres://db/kh?sslrootcert=/ca.pem");
        assert_eq!(url, "postgres://db/kh");
        assert_eq!(ca.as_deref(), Some(std::path::Path::new("/ca.pem")));
        let (url, ca) = split_rootcert("postgres://db/kh");
        assert_eq!((url.as_str(), ca), ("postgres://db/kh", None));
    }

    #[test]
    fn a_missing_rootcert_file_is_an_open_error_naming_the_key() {
        let settings = PgSettings {
            url: "postgres://db/kh?sslmode=require&sslrootcert=/nonexistent/ca.pem".into(),
            schema: "kirimhook".into(),
            pool_size: 1,
            instance: "t".into(),
        };
        let Err(StoreError::Open(message)) = pg_config(&settings) else {
            panic!("a missing CA file must fail");
        };
        assert!(message.contains("sslrootcert"), "{message}");
        assert!(message.contains("/nonexistent/ca.pem"), "{message}");
    }
}
