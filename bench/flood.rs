//! Whether real deliveries still get through while hostile connections flood the public port
//! (issue 8, section 2: "Connection floods starve real deliveries").
//!
//! Starts the real daemon (`kirimhook serve`) on `127.0.0.1:0` with a fresh temporary store, one
//! secret, a `stdout` sink (to `/dev/null`) and the default server limits (`max_connections`
//! 1024, `request_timeout_secs` 10). Then, all from 127.0.0.1:
//!
//! - a baseline: a few probes, one a second, before any attack;
//! - the flood: idle connections (connect, send nothing) and slowloris connections (one byte of
//!   a request head a second, never finished). Every attacker connection that the server closes
//!   is opened again, with all connection attempts together paced to a bounded rate, so the
//!   pressure stays for the whole run;
//! - meanwhile, once a second, a probe: a NEW connection carrying one valid signed delivery (a
//!   unique `conversation.assigned` event, like fixture F5), timed from the start of the connect
//!   to the end of the response, given up after 12 s (kirim.dev gives up after 10 s);
//! - after the flood, a few probes to show whether the daemon recovers.
//!
//! A sampler reads the daemon's open file descriptors (`/proc/<pid>/fd`), its resident memory
//! and the length of its listen socket's accept queue (`/proc/net/tcp`) once a second. The bench
//! prints figures per 10-second window, a summary and the issue's target with PASS or MISS.
//!
//! It only measures: it exits 0 whether the target is met or not, and non-zero only when it
//! cannot set up (no daemon, too low a file limit, bad settings). It never talks to anything but
//! 127.0.0.1, and closes every connection and kills the daemon at the end. It proves nothing
//! about another machine: attacker, prober and daemon share the same CPUs. See
//! `bench/README.md` for the settings and how to read the output.

#[allow(dead_code)] // flood reads memory only, not CPU time
#[path = "procfs.rs"]
mod procfs;

use std::io::{BufRead as _, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Context as _};
use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::header::{HeaderValue, CONTENT_TYPE, HOST, USER_AGENT};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio::task::JoinSet;

use kirimhook::receive::signature::SigningSecret;

const SECRET_ID: &str = "sec_BENCH0000000000000000000000";
const SECRET_VALUE: &str = "whsec_YmVuY2gtb25seS1raXJpbWhvb2stc2VjcmV0";
const PATH: &str = "/webhooks/kirim";
/// The daemon's default `server.max_connections` (only printed; the config leaves it unset).
const DEFAULT_MAX_CONNECTIONS: usize = 1024;
/// One probe is started this often, whether the earlier ones have answered or not.
const PROBE_INTERVAL: Duration = Duration::from_secs(1);
/// A probe gives up after this; kirim.dev gives up after 10 s and counts a failure.
const PROBE_TIMEOUT: Duration = Duration::from_secs(12);
/// Target from the issue: p99 of the probes during the flood below this.
const TARGET_P99: Duration = Duration::from_secs(1);
/// Probes after the flood, to see the daemon recover.
const AFTER_PROBES: usize = 3;
/// Length of one reporting window.
const WINDOW: Duration = Duration::from_secs(10);
/// An attacker gives up a connect attempt after this and tries again.
const ATTACK_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// A slowloris connection sends one byte of its request head this often.
const SLOWLORIS_EVERY: Duration = Duration::from_secs(1);
/// The slowloris request head; after it, the header value goes on with `a` bytes forever.
const SLOWLORIS_HEAD: &[u8] =
    b"POST /webhooks/kirim HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nX-Pad: ";
/// How often the sampler reads the daemon's fds, memory and accept queue.
const SAMPLE_EVERY: Duration = Duration::from_secs(1);
/// How long the daemon may take to log `listening`.
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// The open-file limit asked for (the soft limit is raised to this, or to the hard limit if that
/// is lower), the same as `LimitNOFILE=` in `systemd/kirimhook.service`. The daemon inherits it.
const WANTED_NOFILE: u64 = 65_536;
/// File descriptors the bench needs besides its attacker connections.
const SPARE_FDS: u64 = 256;

fn main() -> anyhow::Result<()> {
    let settings = Settings::from_env()?;
    bench(&settings)
}

// ---------------------------------------------------------------------------------------------
// Settings

struct Settings {
    /// Idle attacker connections held open (`FLOOD_IDLE`).
    idle: usize,
    /// Slowloris attacker connections held open (`FLOOD_SLOWLORIS`).
    slowloris: usize,
    /// How long the flood is held while probes are sent (`FLOOD_SECS`).
    secs: Duration,
    /// Attacker connection attempts per second, all connections together (`FLOOD_CONNECT_RATE`).
    connect_rate: u32,
    /// Probes before the flood (`FLOOD_BASELINE`).
    baseline: usize,
    /// "fds bounded": the most open fds the daemon may have (`FLOOD_MAX_FDS`).
    max_fds: usize,
    /// "RSS bounded": the most resident memory the daemon may reach, MiB (`FLOOD_MAX_RSS_MIB`).
    max_rss_mib: u64,
    /// Not run by `cargo bench` (no `--bench` argument): a short, small smoke run.
    smoke: bool,
}

impl Settings {
    fn from_env() -> anyhow::Result<Settings> {
        let smoke = !std::env::args().any(|a| a == "--bench");
        let (idle, slowloris, secs, baseline) = if smoke {
            (100, 30, 3.0, 2)
        } else {
            (5_000, 1_500, 60.0, 10)
        };
        let s = Settings {
            idle: env_parse("FLOOD_IDLE", idle)?,
            slowloris: env_parse("FLOOD_SLOWLORIS", slowloris)?,
            secs: secs_env("FLOOD_SECS", secs)?,
            connect_rate: env_parse("FLOOD_CONNECT_RATE", 2_000)?,
            baseline: env_parse("FLOOD_BASELINE", baseline)?,
            max_fds: env_parse("FLOOD_MAX_FDS", 2 * DEFAULT_MAX_CONNECTIONS)?,
            max_rss_mib: env_parse("FLOOD_MAX_RSS_MIB", 128)?,
            smoke,
        };
        if s.secs.is_zero() || s.connect_rate == 0 {
            bail!("FLOOD_SECS and FLOOD_CONNECT_RATE must be greater than 0");
        }
        if s.idle + s.slowloris > 20_000 {
            // Reconnects and TIME_WAIT need ports besides the open ones.
            bail!("FLOOD_IDLE + FLOOD_SLOWLORIS must be at most 20000 (ephemeral ports)");
        }
        if s.secs > Duration::from_secs(3_600) {
            bail!("FLOOD_SECS must be at most 3600");
        }
        Ok(s)
    }

    fn attackers(&self) -> usize {
        self.idle + self.slowloris
    }
}

fn env_parse<T: std::str::FromStr>(name: &str, default: T) -> anyhow::Result<T> {
    match std::env::var(name) {
        Ok(text) => text
            .trim()
            .parse()
            .map_err(|_| anyhow!("{name}={text:?} is not a valid number")),
        Err(_) => Ok(default),
    }
}

fn secs_env(name: &str, default: f64) -> anyhow::Result<Duration> {
    let secs: f64 = env_parse(name, default)?;
    Duration::try_from_secs_f64(secs).map_err(|_| anyhow!("{name}={secs} is not a duration"))
}

/// Raises this process's soft `RLIMIT_NOFILE` when it is below `needed` (to [`WANTED_NOFILE`],
/// or the hard limit if lower); the daemon, started later, inherits it. Returns (soft, hard).
fn raise_nofile(needed: u64) -> anyhow::Result<(Option<u64>, Option<u64>)> {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    let limit = getrlimit(Resource::Nofile);
    if limit.current.is_none_or(|soft| soft >= needed) {
        return Ok((limit.current, limit.maximum));
    }
    let soft = limit.maximum.map_or(WANTED_NOFILE.max(needed), |hard| {
        hard.min(WANTED_NOFILE.max(needed))
    });
    if soft < needed {
        bail!(
            "the open-file hard limit is {soft}, the flood needs {needed}: raise it (ulimit -Hn) \
             or lower FLOOD_IDLE / FLOOD_SLOWLORIS"
        );
    }
    setrlimit(
        Resource::Nofile,
        Rlimit {
            current: Some(soft),
            maximum: limit.maximum,
        },
    )
    .context("cannot raise the open-file soft limit")?;
    Ok((Some(soft), limit.maximum))
}

// ---------------------------------------------------------------------------------------------
// The benchmark

fn bench(settings: &Settings) -> anyhow::Result<()> {
    let needed = settings.attackers() as u64 + SPARE_FDS;
    let (soft, hard) = raise_nofile(needed)?;
    let show = |v: Option<u64>| v.map_or_else(|| "unlimited".to_owned(), |v| v.to_string());
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!(
        "kirimhook flood bench{}: {} idle + {} slowloris attacker connections from 127.0.0.1, \
         reopened when closed, connection attempts paced to {}/s in all; a probe every {} s (a \
         new connection, one signed delivery, {} s timeout); {} baseline probe(s), {:.0} s of \
         flood, {AFTER_PROBES} probes after; {cpus} CPU(s) shared by attacker, prober and daemon",
        if settings.smoke {
            " (smoke run: pass --bench or use cargo bench)"
        } else {
            ""
        },
        settings.idle,
        settings.slowloris,
        settings.connect_rate,
        PROBE_INTERVAL.as_secs(),
        PROBE_TIMEOUT.as_secs(),
        settings.baseline,
        settings.secs.as_secs_f64(),
    );

    let daemon = Daemon::start()?;
    println!(
        "daemon pid {} on {}: default server limits (max_connections {DEFAULT_MAX_CONNECTIONS}, \
         request_timeout_secs 10), open-file limit {} (bench: soft {}, hard {})",
        daemon.child.id(),
        daemon.addr,
        daemon_nofile(daemon.child.id()).unwrap_or_else(|| "unknown".to_owned()),
        show(soft),
        show(hard),
    );

    let attack_runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the attacker's runtime")?;
    // The prober has a runtime of its own, so that thousands of attacker tasks do not delay
    // its timestamps.
    let probe_runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the prober's runtime")?;
    let prober = Prober::new(daemon.addr);
    let stats = Arc::new(Attackers::default());
    let sampler = Sampler::start(daemon.child.id(), daemon.addr.port(), stats.clone());

    println!(
        "baseline: {} probe(s), then the flood for {:.0} s...",
        settings.baseline,
        settings.secs.as_secs_f64()
    );
    let baseline = probe_runtime.block_on(prober.run(settings.baseline, None));

    let flood_start = Instant::now();
    let attack =
        attack_runtime.block_on(async { Attack::start(daemon.addr, settings, stats.clone()) });
    let probes_end = flood_start + settings.secs;
    // The flood stays on until the last probe sent during it has its answer or times out.
    let during = probe_runtime.block_on(prober.run(usize::MAX, Some(probes_end)));
    let flood_end = Instant::now();
    let at_end = [stats.idle.snapshot(), stats.slowloris.snapshot()];
    attack_runtime.block_on(attack.stop());
    drop(attack_runtime);
    let after = probe_runtime.block_on(prober.run(AFTER_PROBES, None));
    let samples = sampler.stop();
    let peak_rss_kib = procfs::status_kib(daemon.child.id(), "VmHWM:");
    let log = daemon.log.clone();
    drop(daemon);

    let report = Report {
        settings,
        flood_start,
        probes_end,
        flood_end,
        baseline,
        during,
        after,
        samples,
        at_end,
        peak_rss_kib,
        log_counts: log.counts(),
        log_alerts: log.alerts(),
    };
    report.print();
    Ok(())
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

// ---------------------------------------------------------------------------------------------
// The prober

/// What one probe got.
enum Outcome {
    /// HTTP 200 with `accepted`, `duplicate` or `quarantined`.
    Ok,
    /// Any other answer.
    Http(StatusCode),
    /// No full answer within [`PROBE_TIMEOUT`] of the connect's start.
    Timeout,
    /// The connection failed or closed before the answer.
    Error(String),
}

struct Probe {
    /// When its connect started.
    sent: Instant,
    /// From the start of its connect to the end of the response (or the failure).
    elapsed: Duration,
    outcome: Outcome,
}

impl Probe {
    /// The latency that counts against the target: a probe that did not get 200 counts as the
    /// client timeout, since kirim.dev counts it as a failed delivery.
    fn counted(&self) -> Duration {
        match self.outcome {
            Outcome::Ok => self.elapsed,
            _ => PROBE_TIMEOUT,
        }
    }
}

struct Prober {
    addr: SocketAddr,
    secret: SigningSecret,
    /// Numbers each probe's ids; unique within the run (the store is fresh).
    next: AtomicU64,
    /// Makes ids unique across runs too.
    run: u64,
}

impl Prober {
    fn new(addr: SocketAddr) -> Prober {
        Prober {
            addr,
            secret: SigningSecret::new(SECRET_ID, SECRET_VALUE),
            next: AtomicU64::new(0),
            run: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64),
        }
    }

    /// Starts a probe every [`PROBE_INTERVAL`], `count` of them or until `until`, whichever
    /// comes first, and waits for all of them to finish.
    async fn run(&self, count: usize, until: Option<Instant>) -> Vec<Probe> {
        let mut tasks = JoinSet::new();
        let mut tick = tokio::time::interval(PROBE_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        for _ in 0..count {
            tick.tick().await;
            if until.is_some_and(|end| Instant::now() >= end) {
                break;
            }
            let n = self.next.fetch_add(1, Ordering::Relaxed);
            let request = self.request(n);
            let addr = self.addr;
            tasks.spawn(async move {
                let sent = Instant::now();
                let outcome =
                    match tokio::time::timeout(PROBE_TIMEOUT, deliver(addr, request)).await {
                        Ok(Ok(outcome)) => outcome,
                        Ok(Err(e)) => Outcome::Error(format!("{e:#}")),
                        Err(_) => Outcome::Timeout,
                    };
                Probe {
                    sent,
                    elapsed: sent.elapsed(),
                    outcome,
                }
            });
        }
        let mut probes = Vec::new();
        while let Some(done) = tasks.join_next().await {
            if let Ok(probe) = done {
                probes.push(probe);
            }
        }
        probes.sort_by_key(|p| p.sent);
        probes
    }

    /// Probe `n`'s delivery, signed now: a `conversation.assigned` envelope shaped like fixture
    /// F5, with fresh ids.
    fn request(&self, n: u64) -> Request<Full<Bytes>> {
        let event_id = format!("evt_{}", ulid_like(self.run, n, 0));
        let body = format!(
            concat!(
                r#"{{"id":"{event_id}","type":"conversation.assigned","#,
                r#""created_at":"2026-06-10T03:29:59Z","livemode":true,"data":{{"conversation":"#,
                r#"{{"id":"cnv_{conversation}","object":"conversation","status":"open"}},"#,
                r#""assignee":{{"user_id":"usr_T81RRMHBZ1YA9Y7189BN7AFEW3","#,
                r#""team_id":"Xk3pQ9vL2mRt","previous_user_id":null}}}}}}"#,
            ),
            event_id = event_id,
            conversation = ulid_like(self.run, n, 1),
        );
        let signature = self.secret.sign(unix_now(), body.as_bytes());
        let mut request = Request::new(Full::new(Bytes::from(body)));
        *request.method_mut() = Method::POST;
        *request.uri_mut() = hyper::Uri::from_static(PATH);
        let h = request.headers_mut();
        let mut set = |name: &'static str, value: String| {
            if let Ok(value) = HeaderValue::try_from(value) {
                h.insert(name, value);
            }
        };
        set("x-kirim-event-id", event_id);
        set(
            "x-kirim-delivery-id",
            format!("wbd_{}", ulid_like(self.run, n, 2)),
        );
        set("x-kirim-signature", signature);
        set("x-kirim-source", "kirim".into());
        set("x-kirim-event", "conversation.assigned".into());
        set("x-kirim-attempt", "1".into());
        set(HOST.as_str(), self.addr.to_string());
        h.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        h.insert(USER_AGENT, HeaderValue::from_static("Kirim-Webhook/1.0"));
        request
    }
}

/// Connects to `addr`, sends `request` and reads the whole response.
async fn deliver(addr: SocketAddr, request: Request<Full<Bytes>>) -> anyhow::Result<Outcome> {
    let stream = TcpStream::connect(addr).await.context("connect")?;
    stream.set_nodelay(true)?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .context("handshake")?;
    let connection = tokio::spawn(connection);
    let response = sender.send_request(request).await.context("request")?;
    let status = response.status();
    let body = response
        .into_body()
        .collect()
        .await
        .context("response body")?
        .to_bytes();
    drop(sender);
    connection.abort();
    if status != StatusCode::OK {
        return Ok(Outcome::Http(status));
    }
    let has = |word: &[u8]| body.windows(word.len()).any(|w| w == word);
    if has(b"\"accepted\"") || has(b"\"duplicate\"") || has(b"\"quarantined\"") {
        Ok(Outcome::Ok)
    } else {
        bail!(
            "HTTP 200 with an unexpected body: {}",
            String::from_utf8_lossy(&body)
        )
    }
}

/// 26 Crockford base32 characters, unique for each (run, n, kind), shaped like a ULID.
fn ulid_like(run: u64, n: u64, kind: u8) -> String {
    const ALPHABET: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";
    let value = (u128::from(run) << 72) | (u128::from(kind) << 64) | u128::from(n);
    (0..26)
        .rev()
        .map(|k| char::from(ALPHABET[((value >> (5 * k)) & 31) as usize]))
        .collect()
}

// ---------------------------------------------------------------------------------------------
// The attacker

/// Counters of the idle and of the slowloris connections.
#[derive(Default)]
struct Attackers {
    idle: AttackStats,
    slowloris: AttackStats,
}

impl Attackers {
    fn of(&self, kind: Kind) -> &AttackStats {
        match kind {
            Kind::Idle => &self.idle,
            Kind::Slowloris => &self.slowloris,
        }
    }

    /// Both kinds together.
    fn snapshot(&self) -> AttackSnapshot {
        self.idle.snapshot().plus(self.slowloris.snapshot())
    }
}

/// Counters shared by the attacker connections of one kind.
#[derive(Default)]
struct AttackStats {
    /// Connected now (as the attacker sees it: the kernel may still hold some of them in the
    /// daemon's accept queue).
    open: AtomicI64,
    /// Connect attempts in progress now (for example SYNs dropped by a full accept queue and
    /// being retried by the kernel).
    connecting: AtomicI64,
    /// Successful connects.
    opened: AtomicU64,
    /// Connect attempts after the first of each attacker connection.
    reconnects: AtomicU64,
    /// Connections the server closed (EOF or reset).
    closed: AtomicU64,
    /// Of those, how many got some bytes from the server first (such as a 408 or 503).
    answered: AtomicU64,
    /// Sum over the closed connections of the time from connect to the server's close, ms.
    held_ms: AtomicU64,
    /// Connect attempts that failed or timed out after [`ATTACK_CONNECT_TIMEOUT`].
    connect_failed: AtomicU64,
}

/// A copy of [`AttackStats`] at one moment.
#[derive(Clone, Copy, Default)]
struct AttackSnapshot {
    open: i64,
    connecting: i64,
    opened: u64,
    reconnects: u64,
    closed: u64,
    answered: u64,
    held_ms: u64,
    connect_failed: u64,
}

impl AttackSnapshot {
    fn plus(self, o: AttackSnapshot) -> AttackSnapshot {
        AttackSnapshot {
            open: self.open + o.open,
            connecting: self.connecting + o.connecting,
            opened: self.opened + o.opened,
            reconnects: self.reconnects + o.reconnects,
            closed: self.closed + o.closed,
            answered: self.answered + o.answered,
            held_ms: self.held_ms + o.held_ms,
            connect_failed: self.connect_failed + o.connect_failed,
        }
    }
}

impl AttackStats {
    fn snapshot(&self) -> AttackSnapshot {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        AttackSnapshot {
            open: self.open.load(Ordering::Relaxed),
            connecting: self.connecting.load(Ordering::Relaxed),
            opened: get(&self.opened),
            reconnects: get(&self.reconnects),
            closed: get(&self.closed),
            answered: get(&self.answered),
            held_ms: get(&self.held_ms),
            connect_failed: get(&self.connect_failed),
        }
    }
}

/// Hands out connection-attempt times at most `rate` a second, for all attackers together.
struct Pacer {
    next: Mutex<tokio::time::Instant>,
    gap: Duration,
}

impl Pacer {
    async fn wait(&self) {
        let at = {
            let mut next = self.next.lock().unwrap_or_else(|e| e.into_inner());
            let at = (*next).max(tokio::time::Instant::now());
            *next = at + self.gap;
            at
        };
        tokio::time::sleep_until(at).await;
    }
}

#[derive(Clone, Copy)]
enum Kind {
    Idle,
    Slowloris,
}

/// The attacker connections, each a task that keeps one connection open and reopens it when
/// the server closes it.
struct Attack {
    tasks: JoinSet<()>,
}

impl Attack {
    /// Spawns the attacker tasks; call inside the attacker's runtime.
    fn start(addr: SocketAddr, settings: &Settings, stats: Arc<Attackers>) -> Attack {
        let pacer = Arc::new(Pacer {
            next: Mutex::new(tokio::time::Instant::now()),
            gap: Duration::from_secs(1) / settings.connect_rate,
        });
        let mut tasks = JoinSet::new();
        let kinds = std::iter::repeat_n(Kind::Idle, settings.idle)
            .chain(std::iter::repeat_n(Kind::Slowloris, settings.slowloris));
        for kind in kinds {
            tasks.spawn(hold(addr, kind, pacer.clone(), stats.clone()));
        }
        Attack { tasks }
    }

    /// Ends every attacker task, which closes its connection.
    async fn stop(mut self) {
        self.tasks.shutdown().await;
    }
}

/// Keeps one attacker connection of `kind` open for as long as the task runs.
async fn hold(addr: SocketAddr, kind: Kind, pacer: Arc<Pacer>, all: Arc<Attackers>) {
    let stats = all.of(kind);
    let mut first = true;
    loop {
        pacer.wait().await;
        if !first {
            stats.reconnects.fetch_add(1, Ordering::Relaxed);
        }
        first = false;
        stats.connecting.fetch_add(1, Ordering::Relaxed);
        let connected =
            tokio::time::timeout(ATTACK_CONNECT_TIMEOUT, TcpStream::connect(addr)).await;
        stats.connecting.fetch_sub(1, Ordering::Relaxed);
        let Ok(Ok(stream)) = connected else {
            stats.connect_failed.fetch_add(1, Ordering::Relaxed);
            continue;
        };
        stats.opened.fetch_add(1, Ordering::Relaxed);
        stats.open.fetch_add(1, Ordering::Relaxed);
        let since = Instant::now();
        let answered = match kind {
            Kind::Idle => idle(stream).await,
            Kind::Slowloris => slowloris(stream).await,
        };
        stats.open.fetch_sub(1, Ordering::Relaxed);
        stats.closed.fetch_add(1, Ordering::Relaxed);
        let held = u64::try_from(since.elapsed().as_millis()).unwrap_or(u64::MAX);
        stats.held_ms.fetch_add(held, Ordering::Relaxed);
        if answered {
            stats.answered.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Sends nothing and waits for the server to close; true when it sent something first.
async fn idle(mut stream: TcpStream) -> bool {
    let mut buf = [0u8; 1024];
    let mut answered = false;
    while let Ok(1..) = stream.read(&mut buf).await {
        answered = true;
    }
    answered
}

/// Sends one byte of a request head a second, never finishing it, until the server closes;
/// true when the server sent something first.
async fn slowloris(stream: TcpStream) -> bool {
    let _ = stream.set_nodelay(true);
    let (mut read, mut write) = stream.into_split();
    // Spread the connections' writes over the second instead of sending them in bursts.
    let phase = SLOWLORIS_EVERY.mul_f64(fastrand::f64());
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + phase, SLOWLORIS_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut buf = [0u8; 1024];
    let mut answered = false;
    let mut sent = 0usize;
    // The first byte goes out at once.
    if write.write_all(&SLOWLORIS_HEAD[..1]).await.is_err() {
        return false;
    }
    sent += 1;
    loop {
        tokio::select! {
            read = read.read(&mut buf) => match read {
                Ok(1..) => answered = true,
                _ => return answered,
            },
            _ = tick.tick() => {
                let byte = SLOWLORIS_HEAD.get(sent).copied().unwrap_or(b'a');
                if write.write_all(&[byte]).await.is_err() {
                    return answered;
                }
                sent += 1;
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The sampler

/// What the sampler read at one moment.
struct Sample {
    at: Instant,
    /// Entries of `/proc/<pid>/fd`.
    fds: Option<usize>,
    /// `VmRSS`, KiB.
    rss_kib: Option<u64>,
    /// Connections waiting in the listen socket's accept queue.
    accept_queue: Option<u64>,
    attack: AttackSnapshot,
}

/// A thread that reads the daemon's figures every [`SAMPLE_EVERY`].
struct Sampler {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<Vec<Sample>>,
}

impl Sampler {
    fn start(pid: u32, port: u16, stats: Arc<Attackers>) -> Sampler {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut samples = Vec::new();
            let mut next = Instant::now();
            while !flag.load(Ordering::Relaxed) {
                samples.push(Sample {
                    at: Instant::now(),
                    fds: std::fs::read_dir(format!("/proc/{pid}/fd"))
                        .ok()
                        .map(|d| d.count()),
                    rss_kib: procfs::status_kib(pid, "VmRSS:"),
                    accept_queue: accept_queue(port),
                    attack: stats.snapshot(),
                });
                next += SAMPLE_EVERY;
                // Sleep in short steps so that stopping is quick.
                while !flag.load(Ordering::Relaxed) && Instant::now() < next {
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
            samples
        });
        Sampler { stop, thread }
    }

    fn stop(self) -> Vec<Sample> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().unwrap_or_default()
    }
}

/// The soft "Max open files" of `/proc/<pid>/limits`.
fn daemon_nofile(pid: u32) -> Option<String> {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    Some(line.split_whitespace().nth(3)?.to_owned())
}

/// The accept-queue length of the IPv4 socket listening on `127.0.0.1:port`: the `rx_queue` of
/// its `/proc/net/tcp` line. Listening sockets come first in that file, so the read stops early.
fn accept_queue(port: u16) -> Option<u64> {
    let file = std::fs::File::open("/proc/net/tcp").ok()?;
    let local = format!("0100007F:{port:04X}");
    for line in BufReader::new(file).lines().skip(1) {
        let line = line.ok()?;
        let mut fields = line.split_whitespace();
        let (_, addr, _, state, queues) = (
            fields.next()?,
            fields.next()?,
            fields.next()?,
            fields.next()?,
            fields.next()?,
        );
        if state != "0A" {
            // Past the listening sockets.
            return None;
        }
        if addr == local {
            return u64::from_str_radix(queues.split(':').nth(1)?, 16).ok();
        }
    }
    None
}

// ---------------------------------------------------------------------------------------------
// The report

struct Report<'a> {
    settings: &'a Settings,
    flood_start: Instant,
    /// When the last probe of the flood could start.
    probes_end: Instant,
    /// When the attack was stopped (every flood probe answered or timed out).
    flood_end: Instant,
    baseline: Vec<Probe>,
    during: Vec<Probe>,
    after: Vec<Probe>,
    samples: Vec<Sample>,
    /// The attacker's counters just before it stopped: idle, slowloris.
    at_end: [AttackSnapshot; 2],
    peak_rss_kib: Option<u64>,
    /// Daemon log lines: all, WARN, ERROR.
    log_counts: (usize, usize, usize),
    log_alerts: Vec<String>,
}

/// Counts and latency percentiles of some probes.
struct ProbeFigures {
    sent: usize,
    ok: usize,
    http: usize,
    timeouts: usize,
    errors: usize,
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
}

impl ProbeFigures {
    fn of<'p>(probes: impl Iterator<Item = &'p Probe>) -> ProbeFigures {
        let mut f = ProbeFigures {
            sent: 0,
            ok: 0,
            http: 0,
            timeouts: 0,
            errors: 0,
            p50_ms: 0.0,
            p99_ms: 0.0,
            max_ms: 0.0,
        };
        let mut counted: Vec<Duration> = Vec::new();
        for p in probes {
            f.sent += 1;
            match p.outcome {
                Outcome::Ok => f.ok += 1,
                Outcome::Http(_) => f.http += 1,
                Outcome::Timeout => f.timeouts += 1,
                Outcome::Error(_) => f.errors += 1,
            }
            counted.push(p.counted());
        }
        counted.sort_unstable();
        let q = |p: f64| -> f64 {
            if counted.is_empty() {
                return 0.0;
            }
            let rank = ((p * counted.len() as f64).ceil() as usize).clamp(1, counted.len());
            counted[rank - 1].as_secs_f64() * 1000.0
        };
        f.p50_ms = q(0.50);
        f.p99_ms = q(0.99);
        f.max_ms = q(1.0);
        f
    }

    fn failed(&self) -> usize {
        self.http + self.timeouts + self.errors
    }
}

/// The daemon-side figures of the samples in one span.
struct SampleFigures {
    fds_max: Option<usize>,
    rss_max_kib: Option<u64>,
    accept_queue_max: Option<u64>,
}

impl SampleFigures {
    fn of<'s>(samples: impl Iterator<Item = &'s Sample> + Clone) -> SampleFigures {
        SampleFigures {
            fds_max: samples.clone().filter_map(|s| s.fds).max(),
            rss_max_kib: samples.clone().filter_map(|s| s.rss_kib).max(),
            accept_queue_max: samples.filter_map(|s| s.accept_queue).max(),
        }
    }
}

fn opt<T: std::fmt::Display>(v: Option<T>) -> String {
    v.map_or_else(|| "-".to_owned(), |v| v.to_string())
}

fn mib(kib: Option<u64>) -> String {
    kib.map_or_else(|| "-".to_owned(), |k| format!("{:.0}", k as f64 / 1024.0))
}

impl Report<'_> {
    fn print(&self) {
        println!();
        println!(
            "{:<11} {:>6} {:>4} {:>4} {:>4} {:>8} {:>8} {:>8} | {:>6} {:>6} {:>6} {:>6} | {:>5} \
             {:>7} {:>7}",
            "window",
            "probes",
            "200",
            "t/o",
            "err",
            "p50_ms",
            "p99_ms",
            "max_ms",
            "open",
            "conn'g",
            "reconn",
            "closed",
            "fds",
            "rss_mib",
            "acceptq"
        );
        self.row("baseline", &self.baseline, None);
        let mut start = self.flood_start;
        while start < self.probes_end {
            let end = (start + WINDOW).min(self.probes_end);
            let name = format!(
                "{}-{}s",
                start.duration_since(self.flood_start).as_secs(),
                end.duration_since(self.flood_start).as_secs_f64().round()
            );
            let probes: Vec<&Probe> = self
                .during
                .iter()
                .filter(|p| p.sent >= start && p.sent < end)
                .collect();
            self.row_of(&name, probes.into_iter(), Some((start, end)));
            start = end;
        }
        if self.flood_end > self.probes_end {
            self.row_of(
                "(answers)",
                std::iter::empty(),
                Some((self.probes_end, self.flood_end)),
            );
        }
        self.row("after", &self.after, None);
        self.print_failures();
        self.print_summary();
    }

    fn row(&self, name: &str, probes: &[Probe], span: Option<(Instant, Instant)>) {
        self.row_of(name, probes.iter(), span);
    }

    /// One line: the probes sent in the window, then the attacker and daemon figures sampled in
    /// `span` (attacker: open and connecting at its last sample, reopened and closed during it).
    fn row_of<'p>(
        &self,
        name: &str,
        probes: impl Iterator<Item = &'p Probe>,
        span: Option<(Instant, Instant)>,
    ) {
        let f = ProbeFigures::of(probes);
        let ms = |v: f64| {
            if f.sent == 0 {
                "-".to_owned()
            } else {
                format!("{v:.1}")
            }
        };
        let probe_part = format!(
            "{:<11} {:>6} {:>4} {:>4} {:>4} {:>8} {:>8} {:>8}",
            name,
            f.sent,
            f.ok,
            f.timeouts,
            f.errors + f.http,
            ms(f.p50_ms),
            ms(f.p99_ms),
            ms(f.max_ms)
        );
        let Some((start, end)) = span else {
            println!("{probe_part} |");
            return;
        };
        let inside = self.samples.iter().filter(|s| s.at >= start && s.at < end);
        let before = self
            .samples
            .iter()
            .rev()
            .find(|s| s.at < start)
            .map_or_else(AttackSnapshot::default, |s| s.attack);
        let last = inside.clone().next_back().map_or(before, |s| s.attack);
        let d = SampleFigures::of(inside);
        println!(
            "{probe_part} | {:>6} {:>6} {:>6} {:>6} | {:>5} {:>7} {:>7}",
            last.open,
            last.connecting,
            last.reconnects - before.reconnects,
            last.closed - before.closed,
            opt(d.fds_max),
            mib(d.rss_max_kib),
            opt(d.accept_queue_max)
        );
    }

    fn print_failures(&self) {
        const SHOWN: usize = 10;
        let failed: Vec<(&str, &Probe)> = [
            ("baseline", &self.baseline),
            ("flood", &self.during),
            ("after", &self.after),
        ]
        .into_iter()
        .flat_map(|(phase, probes)| probes.iter().map(move |p| (phase, p)))
        .filter(|(_, p)| !matches!(p.outcome, Outcome::Ok))
        .collect();
        if failed.is_empty() {
            return;
        }
        println!();
        println!(
            "probes without a 200 ({} in all; the first {SHOWN}):",
            failed.len()
        );
        for (phase, p) in failed.iter().take(SHOWN) {
            let at = if p.sent >= self.flood_start {
                format!(
                    "+{:.1}s",
                    p.sent.duration_since(self.flood_start).as_secs_f64()
                )
            } else {
                format!(
                    "-{:.1}s",
                    self.flood_start.duration_since(p.sent).as_secs_f64()
                )
            };
            let what = match &p.outcome {
                Outcome::Ok => "200".to_owned(),
                Outcome::Http(status) => format!("HTTP {status}"),
                Outcome::Timeout => format!("timeout ({} s)", PROBE_TIMEOUT.as_secs()),
                Outcome::Error(e) => format!("error: {e}"),
            };
            println!(
                "  {phase:<8} sent {at:>7} (from the flood's start): {what} after {:.0} ms",
                p.elapsed.as_secs_f64() * 1000.0
            );
        }
    }

    fn print_summary(&self) {
        let s = self.settings;
        let base = ProbeFigures::of(self.baseline.iter());
        let flood = ProbeFigures::of(self.during.iter());
        let after = ProbeFigures::of(self.after.iter());
        let in_flood = self
            .samples
            .iter()
            .filter(|x| x.at >= self.flood_start && x.at < self.flood_end);
        let d = SampleFigures::of(in_flood);
        let idle = SampleFigures::of(self.samples.iter().filter(|x| x.at < self.flood_start));
        let held = self
            .flood_end
            .duration_since(self.flood_start)
            .as_secs_f64();
        let full = self
            .samples
            .iter()
            .find(|x| x.attack.open >= s.attackers() as i64)
            .map(|x| x.at.duration_since(self.flood_start).as_secs_f64());
        println!();
        println!(
            "baseline: {} probes, {} x 200, p50 {:.1} ms, max {:.1} ms | after the flood: {} \
             probes, {} x 200, max {:.1} ms",
            base.sent, base.ok, base.p50_ms, base.max_ms, after.sent, after.ok, after.max_ms
        );
        println!(
            "flood probes: {} sent, {} x 200, {} timeouts, {} errors, {} other HTTP answers; \
             latency p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms (a probe without a 200 counts as \
             {} s)",
            flood.sent,
            flood.ok,
            flood.timeouts,
            flood.errors,
            flood.http,
            flood.p50_ms,
            flood.p99_ms,
            flood.max_ms,
            PROBE_TIMEOUT.as_secs()
        );
        println!(
            "attacker, held {held:.1} s; all {} connections open at once: {}",
            s.attackers(),
            full.map_or_else(
                || "never (in no 1 s sample)".to_owned(),
                |t| format!("first {t:.1} s into the flood")
            ),
        );
        for (name, count, a) in [
            ("idle", s.idle, self.at_end[0]),
            ("slowloris", s.slowloris, self.at_end[1]),
        ] {
            println!(
                "  {name:<9} ({count}): at the end {} connected, {} connecting; {} connects, {} \
                 attempts after the first, {} failed or timed out; {} closed by the server, \
                 after {} on average ({} after it sent something)",
                a.open,
                a.connecting,
                a.opened,
                a.reconnects,
                a.connect_failed,
                a.closed,
                if a.closed > 0 {
                    format!("{:.1} s", a.held_ms as f64 / a.closed as f64 / 1000.0)
                } else {
                    "-".to_owned()
                },
                a.answered,
            );
        }
        println!(
            "daemon: open fds before the flood {} (max), during it max {}; RSS before {} MiB, \
             during max {} MiB, peak (VmHWM) {} MiB; accept queue max {} during the flood; log \
             lines {} ({} WARN, {} ERROR)",
            opt(idle.fds_max),
            opt(d.fds_max),
            mib(idle.rss_max_kib),
            mib(d.rss_max_kib),
            mib(self.peak_rss_kib),
            opt(d.accept_queue_max),
            self.log_counts.0,
            self.log_counts.1,
            self.log_counts.2,
        );
        for line in &self.log_alerts {
            println!("  daemon log: {line}");
        }
        let verdict = |ok: bool| if ok { "PASS" } else { "MISS" };
        let all_ok = flood.sent > 0 && flood.failed() == 0;
        let p99_ok = flood.sent > 0 && flood.p99_ms < TARGET_P99.as_secs_f64() * 1000.0;
        let fds_ok = d.fds_max.is_some_and(|f| f <= s.max_fds);
        let rss_ok = self.peak_rss_kib.is_some_and(|k| k <= s.max_rss_mib * 1024);
        println!();
        println!(
            "target (issue 8: with {} idle and {} slowloris connections held open, valid \
             deliveries sent once a second keep getting 200, p99 under {} s, fds and RSS \
             bounded){}:",
            s.idle,
            s.slowloris,
            TARGET_P99.as_secs(),
            if s.smoke {
                " -- not judged in a smoke run"
            } else {
                ""
            }
        );
        println!(
            "  every probe 200:        {} ({} of {})",
            verdict(all_ok),
            flood.ok,
            flood.sent
        );
        println!(
            "  p99 < {} ms:          {} ({:.1} ms)",
            TARGET_P99.as_millis(),
            verdict(p99_ok),
            flood.p99_ms
        );
        println!(
            "  fds <= {} (FLOOD_MAX_FDS): {} (max {})",
            s.max_fds,
            verdict(fds_ok),
            opt(d.fds_max)
        );
        println!(
            "  peak RSS <= {} MiB (FLOOD_MAX_RSS_MIB): {} ({} MiB)",
            s.max_rss_mib,
            verdict(rss_ok),
            mib(self.peak_rss_kib)
        );
        println!(
            "  overall: {}",
            verdict(all_ok && p99_ok && fds_ok && rss_ok)
        );
    }
}

// ---------------------------------------------------------------------------------------------
// The daemon

/// The real daemon on a fresh store in a temporary directory, killed when dropped (before the
/// directory is removed).
struct Daemon {
    child: Child,
    addr: SocketAddr,
    log: Arc<LogTail>,
    _dir: tempfile::TempDir,
}

/// Counts of the daemon's stderr lines, and the first WARN and ERROR ones, read by a thread
/// that keeps the pipe drained so the daemon never blocks on logging.
#[derive(Default)]
struct LogTail {
    total: AtomicUsize,
    warn: AtomicUsize,
    error: AtomicUsize,
    alerts: Mutex<Vec<String>>,
    /// The last lines, for a start that fails.
    last: Mutex<Vec<String>>,
}

impl LogTail {
    const KEEP_ALERTS: usize = 5;
    const KEEP_LAST: usize = 20;

    fn push(&self, line: String) {
        self.total.fetch_add(1, Ordering::Relaxed);
        let counter = if line.contains(r#""level":"ERROR""#) {
            Some(&self.error)
        } else if line.contains(r#""level":"WARN""#) {
            Some(&self.warn)
        } else {
            None
        };
        if let Some(counter) = counter {
            counter.fetch_add(1, Ordering::Relaxed);
            if let Ok(mut alerts) = self.alerts.lock() {
                if alerts.len() < Self::KEEP_ALERTS {
                    alerts.push(line.clone());
                }
            }
        }
        if let Ok(mut last) = self.last.lock() {
            if last.len() == Self::KEEP_LAST {
                last.remove(0);
            }
            last.push(line);
        }
    }

    fn counts(&self) -> (usize, usize, usize) {
        (
            self.total.load(Ordering::Relaxed),
            self.warn.load(Ordering::Relaxed),
            self.error.load(Ordering::Relaxed),
        )
    }

    fn alerts(&self) -> Vec<String> {
        self.alerts.lock().map(|a| a.clone()).unwrap_or_default()
    }

    fn dump(&self) -> String {
        self.last.lock().map(|l| l.join("\n")).unwrap_or_default()
    }
}

/// Kills a child that has not been handed over yet.
struct KillOnDrop(Option<Child>);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Some(child) = &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Daemon {
    fn start() -> anyhow::Result<Daemon> {
        let dir = tempfile::tempdir().context("cannot create a temporary directory")?;
        let config = dir.path().join("kirimhook.toml");
        std::fs::write(&config, daemon_config(&dir.path().join("store")))
            .context("cannot write the config")?;
        let exe = PathBuf::from(env!("CARGO_BIN_EXE_kirimhook"));
        let mut child = Command::new(&exe)
            .env_remove("RUST_LOG")
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
            });
        }
        let deadline = Instant::now() + START_TIMEOUT;
        let addr = loop {
            match rx.recv_timeout(Duration::from_millis(50)) {
                Ok(addr) => break addr,
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    std::thread::sleep(Duration::from_millis(100));
                    bail!(
                        "kirimhook closed stderr before logging `listening`; its stderr:\n{}",
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
                    "kirimhook did not log `listening` within {START_TIMEOUT:?}; its stderr:\n{}",
                    log.dump()
                );
            }
        };
        let child = guard.0.take().context("the guard holds the child")?;
        Ok(Daemon {
            child,
            addr,
            log,
            _dir: dir,
        })
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Port 0, a temporary store, one secret and a stdout sink; every server limit at its default.
fn daemon_config(store: &std::path::Path) -> String {
    let store = serde_json::Value::String(store.display().to_string());
    format!(
        r#"[server]
listen = "127.0.0.1:0"
path = "{PATH}"

[[verify.secrets]]
id = "{SECRET_ID}"
value = "{SECRET_VALUE}"

[store]
path = {store}

[admin]
listen = "127.0.0.1:0"

[[sinks]]
name = "stdout"
kind = "stdout"
"#
    )
}

/// The `addr` of the JSON log line whose message is `listening`.
fn listening_addr(line: &str) -> Option<SocketAddr> {
    let value: serde_json::Value = serde_json::from_str(line).ok()?;
    if value.get("message")?.as_str()? != "listening" {
        return None;
    }
    let addr = value
        .get("addr")
        .or_else(|| value.get("fields")?.get("addr"))?;
    addr.as_str()?.parse().ok()
}
