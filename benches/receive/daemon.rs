//! The daemon side of the receive bench: starting `kirimhook serve` as a child process on a
//! fresh store (embedded, in a temporary directory, or PostgreSQL, in a schema of its own),
//! reading its log, and the PostgreSQL schema that a run uses and drops afterwards (and the
//! unique names and detached clean-up that the broker rows share with it).
//!
//! It does not generate load or compute figures (that is `receive.rs`), and it never reuses a
//! schema: every PostgreSQL run gets a new unique name, dropped (`DROP SCHEMA ... CASCADE`, best
//! effort) when its guard goes.

use std::collections::VecDeque;
use std::io::{BufRead as _, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};

use super::{PATH, RELAY_PATH, SECRET_ID, SECRET_VALUE, START_TIMEOUT};

/// `[store] pool_size` of the PostgreSQL daemons (the engine's default).
const PG_POOL_SIZE: usize = 16;
/// `[store] lease_secs` of the PostgreSQL daemons (the engine's default).
const PG_LEASE_SECS: u64 = 60;

/// Where a daemon keeps its events.
#[derive(Clone, Copy)]
pub enum Engine<'a> {
    /// The embedded engine in a fresh temporary directory.
    Embedded,
    /// `engine = "postgres"` on `schema` of the database at `url` (shared by every daemon of
    /// the run that gets the same schema).
    Postgres { url: &'a str, schema: &'a str },
}

/// Kills a child that has not been handed over yet.
pub struct KillOnDrop(pub Option<Child>);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Some(child) = &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The real daemon on a fresh store (see [`Engine`]); its config file lives in a temporary
/// directory. Killed when dropped (before the directory is removed).
pub struct Daemon {
    child: Child,
    /// Where it listens for deliveries.
    pub addr: SocketAddr,
    /// Its stderr.
    pub log: Arc<LogTail>,
    /// With `BENCH_TAIL=1`: a `kirimhook tail --json` watching it, its output discarded.
    _viewer: Option<KillOnDrop>,
    _dir: tempfile::TempDir,
}

/// What the daemon wrote on stderr: counts and the last lines, read by a thread that keeps the
/// pipe drained so the daemon never blocks on logging.
#[derive(Default)]
pub struct LogTail {
    lines: Mutex<VecDeque<String>>,
    /// The first WARN and ERROR lines.
    alerts: Mutex<Vec<String>>,
    total: AtomicUsize,
    warn: AtomicUsize,
    error: AtomicUsize,
}

impl LogTail {
    const KEEP: usize = 40;
    const KEEP_ALERTS: usize = 5;

    fn push(&self, line: String) {
        self.total.fetch_add(1, Ordering::Relaxed);
        let alert = if line.contains(r#""level":"ERROR""#) {
            Some(&self.error)
        } else if line.contains(r#""level":"WARN""#) {
            Some(&self.warn)
        } else {
            None
        };
        if let Some(counter) = alert {
            counter.fetch_add(1, Ordering::Relaxed);
            if let Ok(mut alerts) = self.alerts.lock() {
                if alerts.len() < Self::KEEP_ALERTS {
                    alerts.push(line.clone());
                }
            }
        }
        if let Ok(mut lines) = self.lines.lock() {
            if lines.len() == Self::KEEP {
                lines.pop_front();
            }
            lines.push_back(line);
        }
    }

    /// Lines in all, WARN lines and ERROR lines so far.
    pub fn counts(&self) -> (usize, usize, usize) {
        (
            self.total.load(Ordering::Relaxed),
            self.warn.load(Ordering::Relaxed),
            self.error.load(Ordering::Relaxed),
        )
    }

    /// The first WARN and ERROR lines, at most [`Self::KEEP_ALERTS`].
    pub fn alerts(&self) -> Vec<String> {
        self.alerts.lock().map(|a| a.clone()).unwrap_or_default()
    }

    /// The first kept line for which `f` says something.
    fn find_map<T>(&self, f: impl Fn(&str) -> Option<T>) -> Option<T> {
        let lines = self.lines.lock().ok()?;
        lines.iter().find_map(|line| f(line))
    }

    fn dump(&self) -> String {
        self.lines
            .lock()
            .map(|l| l.iter().cloned().collect::<Vec<_>>().join("\n"))
            .unwrap_or_default()
    }
}

impl Daemon {
    /// Starts the daemon with a `stdout` sink on `engine`; `sink`: a second `[[sinks]]` table
    /// (such as [`relay_sink`]'s), verbatim. Returns once it has logged `listening`.
    pub fn start(
        rust_log: Option<&str>,
        engine: Engine<'_>,
        sink: Option<&str>,
    ) -> anyhow::Result<Daemon> {
        let dir = tempfile::tempdir().context("cannot create a temporary directory")?;
        let config = dir.path().join("kirimhook.toml");
        let text = daemon_config(
            &store_table(engine, &dir.path().join("store")),
            sink.unwrap_or_default(),
        );
        std::fs::write(&config, text).context("cannot write the config")?;
        let exe = PathBuf::from(env!("CARGO_BIN_EXE_kirimhook"));
        let mut command = Command::new(&exe);
        // Unset, the daemon uses its production default filter.
        match rust_log {
            Some(filter) => command.env("RUST_LOG", filter),
            None => command.env_remove("RUST_LOG"),
        };
        let mut child = command
            .args(["--log-format", "json", "serve", "--config"])
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("cannot start {}", exe.display()))?;
        let stderr = child.stderr.take().context("the daemon has no stderr")?;
        let mut guard = KillOnDrop(Some(child));

        let log = Arc::new(LogTail::default());
        let (tx, rx) = mpsc::channel();
        {
            let log = log.clone();
            std::thread::spawn(move || {
                let mut reader = BufReader::new(stderr);
                let mut buf = Vec::new();
                let mut tx = Some(tx);
                while matches!(reader.read_until(b'\n', &mut buf), Ok(n) if n > 0) {
                    let line = String::from_utf8_lossy(&buf).trim_end().to_owned();
                    buf.clear();
                    if let Some(addr) = tx.as_ref().and_then(|_| listening_addr(&line)) {
                        if let Some(tx) = tx.take() {
                            let _ = tx.send(addr);
                        }
                    }
                    log.push(line);
                }
                // Drain anything left (not UTF-8 lines, say) so the daemon never blocks.
                let _ = std::io::copy(&mut reader.into_inner(), &mut std::io::sink());
            });
        }

        let deadline = Instant::now() + START_TIMEOUT;
        let addr = loop {
            match rx.recv_timeout(Duration::from_millis(50)) {
                Ok(addr) => break addr,
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    // Give the reader a moment to record the last lines before reporting.
                    std::thread::sleep(Duration::from_millis(100));
                    bail!(
                        "kirimhook exited or closed stderr before logging `listening` \
                         ({}); its stderr:\n{}",
                        guard
                            .0
                            .as_mut()
                            .and_then(|c| c.try_wait().ok().flatten())
                            .map_or_else(|| "still running".to_owned(), |s| s.to_string()),
                        log.dump()
                    );
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
            }
            if let Some(status) = guard.0.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                std::thread::sleep(Duration::from_millis(100));
                bail!(
                    "kirimhook exited with {status} before listening; its stderr:\n{}",
                    log.dump()
                );
            }
            if Instant::now() > deadline {
                bail!(
                    "kirimhook did not log `listening` within {:?} (BENCH_RUST_LOG must keep \
                     kirimhook::app at info); its stderr:\n{}",
                    START_TIMEOUT,
                    log.dump()
                );
            }
        };
        let viewer = match std::env::var("BENCH_TAIL").as_deref() {
            Ok("1") => Some(watch(&exe, &log)?),
            _ => None,
        };
        let child = guard.0.take().context("the guard holds the child")?;
        Ok(Daemon {
            child,
            addr,
            log,
            _viewer: viewer,
            _dir: dir,
        })
    }
}

impl Daemon {
    /// Its process id (for `/proc`).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The `[store]` table for `engine`; `dir` is the embedded engine's directory.
fn store_table(engine: Engine<'_>, dir: &std::path::Path) -> String {
    match engine {
        Engine::Embedded => format!(
            "[store]\npath = {}\n",
            toml_string(&dir.display().to_string())
        ),
        Engine::Postgres { url, schema } => format!(
            "[store]\nengine = \"postgres\"\nurl = {}\nschema = {}\npool_size = \
             {PG_POOL_SIZE}\nlease_secs = {PG_LEASE_SECS}\n",
            toml_string(url),
            toml_string(schema)
        ),
    }
}

/// The `[[sinks]]` table of the kirimhook+relay variant: an `http` sink to `addr` with this
/// concurrency.
pub fn relay_sink(addr: SocketAddr, concurrency: usize) -> String {
    format!(
        r#"
[[sinks]]
name = "app"
kind = "http"
url = "http://{addr}{RELAY_PATH}"
concurrency = {concurrency}
"#
    )
}

/// The `[[sinks]]` table of the backlog case: [`relay_sink`] with retries every 0.1-1 s and
/// (practically) never dead-lettered, so that the backlog is delivered soon after its target
/// comes up.
pub fn backlog_sink(addr: SocketAddr, concurrency: usize) -> String {
    format!(
        "{}\n[sinks.retry]\ninitial_backoff_ms = 100\nmax_backoff_secs = 1\nmax_attempts = 1000\n",
        relay_sink(addr, concurrency)
    )
}

/// A JSON string is a valid TOML basic string.
pub fn toml_string(s: &str) -> String {
    serde_json::Value::String(s.to_owned()).to_string()
}

fn daemon_config(store: &str, sink: &str) -> String {
    format!(
        r#"[server]
listen = "127.0.0.1:0"
path = "{PATH}"

[[verify.secrets]]
id = "{SECRET_ID}"
value = "{SECRET_VALUE}"

{store}
[admin]
listen = "127.0.0.1:0"

[[sinks]]
name = "stdout"
kind = "stdout"
{sink}"#
    )
}

/// Starts `kirimhook tail --json` on the admin listener the daemon logged (`admin
/// listening`, logged before `listening`), its output discarded: what a watching operator
/// costs the daemon. It connects during the warm-up.
fn watch(exe: &std::path::Path, log: &LogTail) -> anyhow::Result<KillOnDrop> {
    let admin = log
        .find_map(|line| logged_addr(line, "admin listening"))
        .context("BENCH_TAIL=1: the daemon logged no `admin listening` address")?;
    let child = Command::new(exe)
        .args(["tail", "--json", "--admin", &format!("http://{admin}")])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("cannot start {} tail", exe.display()))?;
    Ok(KillOnDrop(Some(child)))
}

/// The `addr` of the JSON log line whose message is `listening`.
fn listening_addr(line: &str) -> Option<SocketAddr> {
    logged_addr(line, "listening")
}

/// The `addr` of the JSON log line whose message is `message`.
fn logged_addr(line: &str, message: &str) -> Option<SocketAddr> {
    let value: serde_json::Value = serde_json::from_str(line).ok()?;
    if value.get("message")?.as_str()? != message {
        return None;
    }
    let addr = value
        .get("addr")
        .or_else(|| value.get("fields")?.get("addr"))?;
    addr.as_str()?.parse().ok()
}

// ---------------------------------------------------------------------------------------------
// PostgreSQL: the schema of one run

/// The schema of one PostgreSQL run, `bench_<pid>_<run>_<random>`, created by the daemons (their
/// migrations) and dropped with `DROP SCHEMA ... CASCADE` when this guard is dropped, after the
/// daemons (declare it before them). Dropping is best effort: a failure is printed on stderr
/// and the schema stays behind.
pub struct PgSchema {
    url: String,
    name: String,
}

impl PgSchema {
    /// A new unique schema name for run number `run` in the database at `url`.
    pub fn unique(url: &str, run: u64) -> PgSchema {
        PgSchema {
            url: url.to_owned(),
            name: unique_name(run),
        }
    }

    /// The database's URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The name, for `store.schema`: `[a-z0-9_]` only, so it needs no escaping.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Events admitted (rows of `signatures`, one per admitted delivery) and sink work not yet
    /// done (rows of `queue`) in the schema now.
    pub async fn counts(&self) -> anyhow::Result<(i64, i64)> {
        let client = pg_connect(&self.url).await?;
        let row = client
            .query_one(
                &format!(
                    "SELECT (SELECT count(*) FROM \"{0}\".signatures), \
                     (SELECT count(*) FROM \"{0}\".queue)",
                    self.name
                ),
                &[],
            )
            .await
            .with_context(|| format!("cannot count the rows of schema {}", self.name))?;
        Ok((row.try_get(0)?, row.try_get(1)?))
    }
}

impl Drop for PgSchema {
    fn drop(&mut self) {
        let (url, name) = (self.url.clone(), self.name.clone());
        let dropped = run_detached(move || async move {
            let client = pg_connect(&url).await?;
            client
                .batch_execute(&format!("DROP SCHEMA IF EXISTS \"{name}\" CASCADE"))
                .await?;
            anyhow::Ok(())
        });
        if let Err(e) = dropped {
            eprintln!(
                "note: could not drop PostgreSQL schema {}: {e:#}",
                self.name
            );
        }
    }
}

/// A new name for run number `run`, `bench_<pid>_<run>_<4 hex digits>`: `[a-z0-9_]` only, so
/// it is valid unquoted as a PostgreSQL schema and as a stream, subject, exchange, queue or key.
pub fn unique_name(run: u64) -> String {
    format!(
        "bench_{}_{run}_{:04x}",
        std::process::id(),
        fastrand::u16(..)
    )
}

/// Runs the future that `work` makes to its end on a thread with a runtime of its own, so that
/// it works inside or outside a runtime (the clean-ups of the guards' `Drop`s).
pub fn run_detached<F, Fut>(work: F) -> anyhow::Result<()>
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
            .block_on(work())
    })
    .join()
    .unwrap_or_else(|_| Err(anyhow::anyhow!("the clean-up panicked")))
}

/// A connection to `url` (without TLS), driven by a task on the current runtime.
pub async fn pg_connect(url: &str) -> anyhow::Result<tokio_postgres::Client> {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .context("cannot connect to PostgreSQL")?;
    tokio::spawn(async move {
        // Errors surface on the client's calls too.
        let _ = connection.await;
    });
    Ok(client)
}

/// The server's version, to check before the first round that the database answers.
pub async fn pg_version(url: &str) -> anyhow::Result<String> {
    let client = pg_connect(url).await?;
    let row = client
        .query_one("SHOW server_version", &[])
        .await
        .context("PostgreSQL did not answer SHOW server_version")?;
    Ok(row.try_get(0)?)
}
