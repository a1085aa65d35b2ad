//! Throughput and latency of kirimhook's full receive path, compared with a minimal hyper server
//! measured in the same run on the same machine.
//!
//! Each round starts its servers as separate processes on `127.0.0.1:0`, one after the other:
//! "minimal" (this binary re-executed with `KIRIMHOOK_BENCH_ROLE=minimal`: a hyper 1.x HTTP/1.1
//! server on a multi-threaded tokio runtime that reads the body and answers 200), "memory" (the
//! same with `KIRIMHOOK_BENCH_ROLE=memory`, which also verifies, classifies and dedupes in
//! memory with kirimhook's own functions), "kirimhook"
//! (the real daemon, `kirimhook serve`, on a fresh temporary store, stdout sink),
//! "kirimhook+relay" (the same daemon with an `http` relay sink as well, pointed at a 2xx target
//! served inside this process) and, when a PostgreSQL URL is given
//! (`KIRIMHOOK_BENCH_POSTGRES_URL`, else `KIRIMHOOK_TEST_POSTGRES_URL`), "kirimhook-pg" (the
//! daemon on the PostgreSQL engine in a fresh schema, stdout sink) and "kirimhook-pg x2" (two
//! such daemons sharing one fresh schema, the connections split evenly between them), and, per
//! broker whose URL is given (`KIRIMHOOK_BENCH_{NATS,AMQP,REDIS}_URL`, else
//! `KIRIMHOOK_TEST_*`), "kirimhook+nats", "kirimhook+rabbitmq", "kirimhook+redis" (the daemon
//! with the stdout sink and that broker sink, publishing to fresh names that a consumer in
//! this process reads, see `receive/brokers.rs`). A load generator in this process drives each
//! with the same pre-signed, unique Kirim deliveries over N keep-alive connections, one request
//! in flight per connection, and reports the rate of 200 answers and the latency from send to
//! the end of the response body. For the relay variant it also reports the rate at which events
//! reached the target and the delivery lag (target arrival - the load generator's 200), and
//! checks that every accepted event arrives; the broker variants get the same figures from
//! their consumer. For the PostgreSQL variants it counts the admitted deliveries in the schema
//! and the sink work left.
//! With `BENCH_TAIL=1`, every daemon has a `kirimhook tail --json` watching it (output
//! discarded), to compare with a run without: what a watching operator costs.
//! The store alone ("durable path only") is measured by `benches/store.rs`.
//!
//! It does not fix or tune anything, does not talk to kirim.dev, and proves nothing about another
//! machine: the load generator shares the CPUs with the server, so only figures from one run are
//! comparable with each other. See `bench/README.md` for the settings and how to read the output.

use std::collections::{HashMap, HashSet};
use std::convert::Infallible;
use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::SocketAddr;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Context as _};
use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::body::Incoming;
use hyper::header::{HeaderName, HeaderValue, CONTENT_TYPE, HOST, USER_AGENT};
use hyper::{Method, Request, Response, StatusCode, Uri};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};

use kirimhook::receive::envelope::{self, Classified, DedupeKey, Hints};
use kirimhook::receive::signature::{self, SigningSecret};

#[path = "receive/brokers.rs"]
mod brokers;
#[path = "receive/daemon.rs"]
mod daemon;
#[path = "../bench/procfs.rs"]
mod procfs;

use brokers::{Broker, Bus};
use daemon::{Daemon, Engine, KillOnDrop, PgSchema};

/// Selects what this process is: unset for the benchmark, `minimal` or `memory` for a baseline
/// server (see [`Baseline`]).
const ROLE_ENV: &str = "KIRIMHOOK_BENCH_ROLE";
/// The memory baseline's signature tolerance: the daemon's default `verify.tolerance_secs`.
const MEMORY_TOLERANCE_SECS: u64 = 300;
const SECRET_ID: &str = "sec_BENCH0000000000000000000000";
const SECRET_VALUE: &str = "whsec_YmVuY2gtb25seS1raXJpbWhvb2stc2VjcmV0";
const PATH: &str = "/webhooks/kirim";
/// Requests per second assumed before any run has been measured (sizes the first pool).
const FIRST_RATE_GUESS: f64 = 100_000.0;
/// Pre-built requests per expected request, so that a faster run does not run out.
const POOL_MARGIN: f64 = 1.6;
/// How long a server may take to say where it listens.
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// Target from the issue: kirimhook's rate at least this share of the minimal server's (and,
/// in the efficiency targets, of the memory baseline's) ...
const TARGET_RATIO: f64 = 0.5;
/// ... with a p99 below this.
const TARGET_P99_MS: f64 = 5.0;
/// Relay and broker targets from the issues: delivered/s at least this share of accepted/s
/// ("keeps up") ...
const KEEP_UP_RATIO: f64 = 0.95;
/// ... with a delivery lag p99 below this (relay) ...
const RELAY_TARGET_LAG_P99_MS: f64 = 50.0;
/// ... or this (broker sinks).
const BROKER_TARGET_LAG_P99_MS: f64 = 100.0;
/// After the window, how long the relay or a broker sink may take to deliver every accepted
/// event.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
/// The relay target's path.
const RELAY_PATH: &str = "/hooks";
/// Where the PostgreSQL rows find their database, in this order.
const POSTGRES_URL_VARS: [&str; 2] = [
    "KIRIMHOOK_BENCH_POSTGRES_URL",
    "KIRIMHOOK_TEST_POSTGRES_URL",
];
/// PostgreSQL target: two daemons on one schema reach at least this many accepted/s ...
const PG_TARGET_RATE: f64 = 5000.0;
/// ... with a p99 below this.
const PG_TARGET_P99_MS: f64 = 20.0;
/// Efficiency targets (with [`TARGET_RATIO`] and [`TARGET_P99_MS`] against the memory
/// baseline): kirimhook's server CPU per request at most this many times the memory baseline's
/// ...
const EFF_CPU_RATIO: f64 = 3.0;
/// ... kirimhook+relay's accepted/s at least this share of kirimhook's ...
const EFF_RELAY_RATIO: f64 = 0.7;
/// ... relayed at least this share of accepted (with [`RELAY_TARGET_LAG_P99_MS`]) ...
const EFF_RELAYED_RATIO: f64 = 0.99;
/// ... and kirimhook's peak RSS at most this many MiB.
const EFF_RSS_MIB: f64 = 64.0;
/// The backlog case: how long the relay may take to deliver the whole backlog.
const BACKLOG_DRAIN_TIMEOUT: Duration = Duration::from_secs(600);
/// The backlog case: a window longer than any load, so that the deliveries run out first.
const BACKLOG_WINDOW: Duration = Duration::from_secs(24 * 3600);

fn main() -> anyhow::Result<()> {
    match std::env::var(ROLE_ENV).as_deref() {
        Ok("minimal") => return baseline_server(Baseline::Minimal),
        Ok("memory") => return baseline_server(Baseline::Memory),
        _ => {}
    }
    let settings = Settings::from_env()?;
    bench(&settings)
}

// ---------------------------------------------------------------------------------------------
// Settings

struct Settings {
    rounds: usize,
    window: Duration,
    warmup: Duration,
    connections: usize,
    /// `concurrency` of the relay sink in the kirimhook+relay variant.
    relay_concurrency: usize,
    /// `concurrency` of the broker sinks; `None` keeps each sink's default.
    broker_concurrency: Option<usize>,
    /// `RUST_LOG` for the daemon; `None` keeps its default filter.
    rust_log: Option<String>,
    /// The PostgreSQL database of the kirimhook-pg rows and the variable that named it; `None`:
    /// those rows are skipped.
    postgres: Option<(String, &'static str)>,
    /// Each broker sink kind with its URL and the variable that named it; `None`: its row is
    /// skipped.
    brokers: Vec<(Broker, Option<(String, &'static str)>)>,
    /// Not run by `cargo bench` (no `--bench` argument): a short smoke run.
    smoke: bool,
    /// Deliveries of the backlog case (`BENCH_BACKLOG`); `None`: not run.
    backlog: Option<usize>,
}

impl Settings {
    fn from_env() -> anyhow::Result<Settings> {
        let smoke = !std::env::args().any(|a| a == "--bench");
        let (rounds, secs, warmup) = if smoke { (1, 0.5, 0.2) } else { (3, 5.0, 1.0) };
        Ok(Settings {
            rounds: env_parse("BENCH_ROUNDS", rounds)?,
            window: secs_env("BENCH_SECS", secs)?,
            warmup: secs_env("BENCH_WARMUP_SECS", warmup)?,
            connections: env_parse("BENCH_CONNS", 32)?,
            relay_concurrency: env_parse("BENCH_RELAY_CONCURRENCY", 32)?,
            broker_concurrency: match std::env::var("BENCH_BROKER_CONCURRENCY") {
                Ok(_) => Some(env_parse("BENCH_BROKER_CONCURRENCY", 0)?),
                Err(_) => None,
            },
            rust_log: std::env::var("BENCH_RUST_LOG").ok(),
            postgres: service_url(POSTGRES_URL_VARS),
            brokers: Broker::ALL
                .into_iter()
                .map(|b| (b, service_url(b.url_vars())))
                .collect(),
            smoke,
            backlog: Some(env_parse("BENCH_BACKLOG", 0)?).filter(|&n| n > 0),
        })
        .and_then(|s: Settings| {
            if s.rounds == 0 || s.connections == 0 || s.window.is_zero() {
                bail!("BENCH_ROUNDS, BENCH_CONNS and BENCH_SECS must be greater than 0");
            }
            if !(1..=256).contains(&s.relay_concurrency) {
                bail!("BENCH_RELAY_CONCURRENCY must be in 1..=256 (the daemon's own range)");
            }
            if s.broker_concurrency
                .is_some_and(|n| !(1..=256).contains(&n))
            {
                bail!(
                    "BENCH_BROKER_CONCURRENCY must be in 1..=256 (a range every broker sink takes)"
                );
            }
            Ok(s)
        })
    }
}

impl Settings {
    /// The load of one row: its connections, warm-up and window.
    fn load(&self) -> Load {
        Load {
            connections: self.connections,
            warmup: self.warmup,
            window: self.window,
        }
    }
}

/// How [`drive`] loads the servers.
#[derive(Clone, Copy)]
struct Load {
    connections: usize,
    warmup: Duration,
    window: Duration,
}

/// The first of `vars` that is set and not blank, with its value.
fn service_url(vars: [&'static str; 2]) -> Option<(String, &'static str)> {
    vars.into_iter().find_map(|var| {
        std::env::var(var)
            .ok()
            .filter(|url| !url.trim().is_empty())
            .map(|url| (url, var))
    })
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

// ---------------------------------------------------------------------------------------------
// The benchmark

#[derive(Clone, Copy, PartialEq, Eq)]
enum Server {
    Minimal,
    /// The minimal server that also verifies, classifies and dedupes in memory (no disk).
    Memory,
    Kirimhook,
    /// kirimhook with the stdout sink and an HTTP relay sink to [`RelayTarget`].
    KirimhookRelay,
    /// kirimhook on PostgreSQL (a fresh schema), stdout sink.
    KirimhookPg,
    /// Two kirimhook daemons on one fresh PostgreSQL schema, stdout sink on both; half the
    /// connections go to each.
    KirimhookPg2,
    /// kirimhook with the stdout sink and a broker sink to fresh names read by a [`Bus`].
    KirimhookBroker(Broker),
}

impl Server {
    fn name(self) -> &'static str {
        match self {
            Server::Minimal => "minimal",
            Server::Memory => "memory",
            Server::Kirimhook => "kirimhook",
            Server::KirimhookRelay => "kirimhook+relay",
            Server::KirimhookPg => "kirimhook-pg",
            Server::KirimhookPg2 => "kirimhook-pg x2",
            Server::KirimhookBroker(Broker::Nats) => "kirimhook+nats",
            Server::KirimhookBroker(Broker::Rabbitmq) => "kirimhook+rabbitmq",
            Server::KirimhookBroker(Broker::Redis) => "kirimhook+redis",
        }
    }

    /// The baseline server of this variant, `None` for the daemon variants.
    fn baseline(self) -> Option<Baseline> {
        match self {
            Server::Minimal => Some(Baseline::Minimal),
            Server::Memory => Some(Baseline::Memory),
            _ => None,
        }
    }

    /// How many daemons serve this variant (0 for the baseline servers).
    fn daemons(self) -> usize {
        match self {
            Server::Minimal | Server::Memory => 0,
            Server::Kirimhook
            | Server::KirimhookRelay
            | Server::KirimhookPg
            | Server::KirimhookBroker(_) => 1,
            Server::KirimhookPg2 => 2,
        }
    }

    fn on_postgres(self) -> bool {
        matches!(self, Server::KirimhookPg | Server::KirimhookPg2)
    }

    /// For the variants whose sink delivers to a reader in this process: how its lines name
    /// the sink and its deliveries, and the target's lag p99 in ms.
    fn delivery(self) -> Option<(&'static str, &'static str, f64)> {
        match self {
            Server::KirimhookRelay => Some(("relay", "relayed", RELAY_TARGET_LAG_P99_MS)),
            Server::KirimhookBroker(b) => Some((b.kind(), "published", BROKER_TARGET_LAG_P99_MS)),
            _ => None,
        }
    }
}

/// What one timed window measured.
#[derive(Default)]
struct Measured {
    /// 200 answers completed in the window (for kirimhook: accepted, quarantined or duplicate).
    ok: u64,
    /// Of those, answered `duplicate` (nothing was written, no fsync).
    duplicates: u64,
    /// Non-200 answers, unexpected bodies and transport errors, warm-up included.
    errors: u64,
    first_error: Option<String>,
    /// Latency of each `ok` request in microseconds.
    latencies_us: Vec<u32>,
    window: Duration,
    /// The pre-built requests ran out before the window ended: the rate is too low.
    exhausted: bool,
    /// Every OK answer, warm-up and late ones included: (pool index, when its 200 arrived).
    acks: Vec<(usize, Instant)>,
    /// Start and end of the timed window (set by `drive`).
    span: Option<(Instant, Instant)>,
    /// CPU seconds (user + system, all threads) the server processes used in the window, summed
    /// over them (set by `drive`; `None`: not read).
    server_cpu_secs: Option<f64>,
    /// The largest peak RSS (`VmHWM`) of the server processes at the end of the window, in KiB.
    server_peak_kib: Option<u64>,
}

impl Measured {
    fn rate(&self) -> f64 {
        self.ok as f64 / self.window.as_secs_f64()
    }

    fn merge(&mut self, other: Measured) {
        self.ok += other.ok;
        self.duplicates += other.duplicates;
        self.errors += other.errors;
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
        self.latencies_us.extend(other.latencies_us);
        self.exhausted |= other.exhausted;
        self.acks.extend(other.acks);
    }
}

/// Figures of one row of the table.
struct Row {
    round: usize,
    server: Server,
    rate: f64,
    /// OK answers other than `duplicate` in the window, per second.
    accepted: f64,
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
    duplicates: u64,
    errors: u64,
    /// Server CPU per OK answer in the window, in microseconds.
    cpu_us: Option<f64>,
    /// The server's peak RSS at the end of the window, in MiB.
    peak_rss_mib: Option<f64>,
    /// The relay or broker sink's figures (see [`Server::delivery`]).
    delivery: Option<DeliveryFigures>,
    /// The PostgreSQL variants' schema figures.
    pg: Option<PgFigures>,
}

impl Row {
    fn new(round: usize, server: Server, mut m: Measured) -> Row {
        m.latencies_us.sort_unstable();
        let q = |p: f64| percentile_ms(&m.latencies_us, p);
        Row {
            round,
            server,
            rate: m.rate(),
            accepted: (m.ok - m.duplicates) as f64 / m.window.as_secs_f64(),
            p50_ms: q(0.50),
            p99_ms: q(0.99),
            max_ms: q(1.0),
            duplicates: m.duplicates,
            errors: m.errors,
            cpu_us: m
                .server_cpu_secs
                .filter(|_| m.ok > 0)
                .map(|secs| secs * 1e6 / m.ok as f64),
            peak_rss_mib: m.server_peak_kib.map(mib),
            delivery: None,
            pg: None,
        }
    }

    fn print(&self) {
        println!(
            "{:<6} {:<18} {:>8.0} {:>7.2} {:>7.2} {:>7.2} {:>8} {:>7} {:>7} {:>7}",
            self.round,
            self.server.name(),
            self.rate,
            self.p50_ms,
            self.p99_ms,
            self.max_ms,
            self.duplicates,
            self.errors,
            or_unknown(self.cpu_us),
            or_unknown(self.peak_rss_mib),
        );
        if let (Some(r), Some((label, verb, _))) = (&self.delivery, self.server.delivery()) {
            println!(
                "{:<6} {label}: {:.0} {verb}/s ({:.2} x accepted), lag p50 {:.2} p99 {:.2} max \
                 {:.2} ms (min {:.2}), {} of {} accepted never arrived (lag covers the arrived ones), {}",
                "",
                r.rate,
                if self.rate > 0.0 {
                    r.rate / self.rate
                } else {
                    0.0
                },
                r.lag_p50_ms,
                r.lag_p99_ms,
                r.lag_max_ms,
                r.lag_min_ms,
                r.never,
                r.accepted,
                match r.drained_after {
                    Some(d) => format!("the last one {:.2} s after the window", d.as_secs_f64()),
                    None => format!(
                        "gave up {} s after the window",
                        DRAIN_TIMEOUT.as_secs()
                    ),
                },
            );
        }
        if let Some(pg) = &self.pg {
            let count = |n: Option<i64>| n.map_or_else(|| "?".to_owned(), |n| n.to_string());
            println!(
                "{:<6} pg: {} daemon(s) on schema {}: {} deliveries answered 200 (warm-up \
                 included), {} admitted in the schema, {} left for the stdout sink(s) right \
                 after the window",
                "",
                pg.daemons,
                pg.schema,
                pg.acknowledged,
                count(pg.stored),
                count(pg.backlog),
            );
        }
    }
}

/// What the schema of a PostgreSQL run held right after its window.
struct PgFigures {
    daemons: usize,
    schema: String,
    /// Deliveries answered 200 (warm-up and late answers included).
    acknowledged: usize,
    /// Admitted deliveries in the schema (rows of `signatures`); `None`: could not count.
    stored: Option<i64>,
    /// Sink work not yet done (rows of `queue`); `None`: could not count.
    backlog: Option<i64>,
}

/// What the relay target or a broker's consumer saw for one kirimhook+relay or kirimhook+<broker>
/// run.
struct DeliveryFigures {
    /// Distinct events that reached the target (consumer) inside the timed window, per second.
    rate: f64,
    /// Delivery lag of the events answered 200 inside the window (arrival - 200 at the load
    /// generator), clamped at 0.
    lag_p50_ms: f64,
    lag_p99_ms: f64,
    lag_max_ms: f64,
    /// The smallest lag before clamping (negative when the relay beat the 200 to the bench).
    lag_min_ms: f64,
    /// Events answered 200 (warm-up included).
    accepted: usize,
    /// Of those, how many never reached the target within the drain timeout.
    never: usize,
    /// When the last accepted event arrived, counted from the end of the window (`None`: some
    /// never did).
    drained_after: Option<Duration>,
    /// Arrivals of an event the target had already received (at-least-once repeats).
    repeats: u64,
    /// Arrivals without an `X-Kirim-Event-Id` or with one the load generator never got a 200 for.
    unknown: usize,
    /// Arrivals whose `X-Kirimhook-Attempt` was not 1 (retries).
    retries: u64,
}

/// KiB in MiB.
fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// `value` with one decimal, `?` when unknown.
fn or_unknown(value: Option<f64>) -> String {
    value.map_or_else(|| "?".to_owned(), |v| format!("{v:.1}"))
}

/// Nearest-rank percentile of sorted microseconds, in milliseconds (0 when empty).
fn percentile_ms(sorted_us: &[u32], p: f64) -> f64 {
    if sorted_us.is_empty() {
        return 0.0;
    }
    let rank = ((p * sorted_us.len() as f64).ceil() as usize).clamp(1, sorted_us.len());
    f64::from(sorted_us[rank - 1]) / 1000.0
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    match values.len() {
        0 => 0.0,
        n if n % 2 == 1 => values[n / 2],
        n => (values[n / 2 - 1] + values[n / 2]) / 2.0,
    }
}

/// The median of `f` over the rows of `server`.
fn median_of(rows: &[Row], server: Server, f: impl Fn(&Row) -> f64) -> f64 {
    let mut v: Vec<f64> = rows.iter().filter(|r| r.server == server).map(f).collect();
    median(&mut v)
}

/// The broker sinks' settings, as the lines about them say it.
fn broker_setup(settings: &Settings) -> String {
    match settings.broker_concurrency {
        Some(n) => format!("concurrency {n} (BENCH_BROKER_CONCURRENCY), other settings default"),
        None => "its defaults".to_owned(),
    }
}

/// The medians of `rate` and of the p99 over the rows of `server`.
fn rate_p99(rows: &[Row], server: Server, rate: fn(&Row) -> f64) -> (f64, f64) {
    (
        median_of(rows, server, rate),
        median_of(rows, server, |r| r.p99_ms),
    )
}

/// How a summary line judges a target.
fn verdict(settings: &Settings, met: bool) -> &'static str {
    match (settings.smoke, met) {
        (true, _) => "not judged in a smoke run",
        (false, true) => "MET",
        (false, false) => "MISSED",
    }
}

/// `a / b`, 0 when `b` is not positive.
fn share(a: f64, b: f64) -> f64 {
    if b > 0.0 {
        a / b
    } else {
        0.0
    }
}

fn bench(settings: &Settings) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Runtime::new().context("cannot start the tokio runtime")?;
    let secret = SigningSecret::new(SECRET_ID, SECRET_VALUE);
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let sample = delivery(0, 0).body;
    serde_json::from_slice::<serde_json::Value>(&sample).context("the bench's body is not JSON")?;
    println!(
        "kirimhook receive bench{}: {} connections, {}-byte bodies, {:.1} s warm-up, {:.1} s \
         window, {} round(s), RUST_LOG={}, {} CPU(s) shared by the load generator and the server",
        if settings.smoke {
            " (smoke run: pass --bench or use cargo bench)"
        } else {
            ""
        },
        settings.connections,
        sample.len(),
        settings.warmup.as_secs_f64(),
        settings.window.as_secs_f64(),
        settings.rounds,
        settings.rust_log.as_deref().unwrap_or("(daemon default)"),
        cpus,
    );

    println!();
    println!(
        "kirimhook+relay: stdout sink + http sink to a 2xx target in this process, relay \
         concurrency {} (BENCH_RELAY_CONCURRENCY)",
        settings.relay_concurrency
    );
    let mut servers = vec![
        Server::Minimal,
        Server::Memory,
        Server::Kirimhook,
        Server::KirimhookRelay,
    ];
    for (broker, url) in &settings.brokers {
        let server = Server::KirimhookBroker(*broker);
        let name = server.name();
        let [first, second] = broker.url_vars();
        match url {
            Some((url, var)) => {
                // One set-up and clean-up before the first round: the broker answers, and the
                // names can be created and deleted.
                drop(
                    runtime
                        .block_on(Bus::start(*broker, url, 0, None))
                        .with_context(|| format!("{var} is set, but {name} cannot be set up"))?,
                );
                println!(
                    "{name}: stdout sink + {} sink ({}), broker from {var}, {}; deleted after \
                     each run",
                    broker.kind(),
                    broker_setup(settings),
                    broker.describe()
                );
                servers.push(server);
            }
            None => println!(
                "{name}: skipped, because neither {first} nor {second} is set (set one to a URL \
                 such as {})",
                broker.example_url()
            ),
        }
    }
    match &settings.postgres {
        Some((url, var)) => {
            let version = runtime
                .block_on(daemon::pg_version(url))
                .with_context(|| format!("{var} is set, but PostgreSQL does not answer"))?;
            println!(
                "kirimhook-pg, kirimhook-pg x2: PostgreSQL {version} from {var}, a fresh schema \
                 per run (dropped after it), stdout sink, pool_size 16, lease_secs 60; x2: two \
                 daemons on one schema, {} connections to each",
                settings.connections.div_ceil(2)
            );
            servers.extend([Server::KirimhookPg, Server::KirimhookPg2]);
        }
        None => println!(
            "kirimhook-pg, kirimhook-pg x2: skipped, because neither {} nor {} is set (set one \
             to a PostgreSQL URL such as postgres://postgres@127.0.0.1:5432/test)",
            POSTGRES_URL_VARS[0], POSTGRES_URL_VARS[1]
        ),
    }
    println!();
    println!(
        "{:<6} {:<18} {:>8} {:>7} {:>7} {:>7} {:>8} {:>7} {:>7} {:>7}",
        "round",
        "server",
        "req/s",
        "p50_ms",
        "p99_ms",
        "max_ms",
        "dup",
        "errors",
        "cpu_us",
        "rss_MiB"
    );
    let mut rows: Vec<Row> = Vec::new();
    let mut notes: Vec<String> = Vec::new();
    let mut best_rate = FIRST_RATE_GUESS;
    let mut run_number = 0u64;
    for round in 1..=settings.rounds {
        for &server in &servers {
            run_number += 1;
            let pool = Pool::build(
                pool_size(best_rate, settings),
                run_number,
                &secret,
                unix_now(),
            );
            let run = Run {
                runtime: &runtime,
                settings,
                round,
                number: run_number,
                server,
            };
            let (measured, delivery, pg) = match server.baseline() {
                Some(baseline) => {
                    let child = BaselineChild::start(baseline)?;
                    let pids = [child.child.id()];
                    let measured =
                        runtime.block_on(drive(&[child.addr], &pids, pool, settings.load()))?;
                    (measured, None, None)
                }
                None => run.daemons(pool, &mut notes)?,
            };
            if measured.exhausted {
                notes.push(format!(
                    "round {round} {}: ran out of pre-built requests before the window ended; \
                     its rate is understated (the next runs build more)",
                    server.name()
                ));
            }
            if let Some(e) = &measured.first_error {
                notes.push(format!("round {round} {}: first error: {e}", server.name()));
            }
            best_rate = best_rate.max(measured.rate());
            let mut row = Row::new(round, server, measured);
            row.delivery = delivery;
            row.pg = pg;
            row.print();
            rows.push(row);
        }
    }

    let (min_rate, min_p99) = rate_p99(&rows, Server::Minimal, |r| r.rate);
    let (kh_rate, kh_p99) = rate_p99(&rows, Server::Kirimhook, |r| r.rate);
    let ratio = share(kh_rate, min_rate);
    println!();
    println!(
        "median minimal {min_rate:.0} req/s p99 {min_p99:.2} ms | kirimhook {kh_rate:.0} req/s \
         p99 {kh_p99:.2} ms | ratio {ratio:.2}"
    );
    let met = ratio >= TARGET_RATIO && kh_p99 < TARGET_P99_MS;
    println!(
        "target (kirimhook >= {TARGET_RATIO:.2} x minimal, p99 < {TARGET_P99_MS} ms, {} \
         connections): {}",
        settings.connections,
        verdict(settings, met)
    );
    let relay_setup = format!("relay concurrency {}", settings.relay_concurrency);
    delivery_summary(
        &rows,
        Server::KirimhookRelay,
        settings,
        kh_rate,
        &relay_setup,
    );
    for (broker, _) in &settings.brokers {
        let setup = format!("{} sink, {}", broker.kind(), broker_setup(settings));
        delivery_summary(
            &rows,
            Server::KirimhookBroker(*broker),
            settings,
            kh_rate,
            &setup,
        );
    }
    if settings.postgres.is_some() {
        pg_summary(&rows, settings, kh_rate, kh_p99);
    }
    efficiency_summary(&rows, &servers, settings);
    let duplicates: u64 = rows
        .iter()
        .filter(|r| r.server != Server::Minimal)
        .map(|r| r.duplicates)
        .sum();
    if duplicates > 0 {
        let mut which: Vec<&str> = rows
            .iter()
            .filter(|r| r.duplicates > 0)
            .map(|r| r.server.name())
            .collect();
        which.dedup();
        println!(
            "WARNING: kirimhook answered {duplicates} unique deliveries as duplicates ({}): \
             those wrote nothing and waited for no fsync, so those rows do not measure the \
             durable path (do distinct events get the same dedupe key from envelope::classify?)",
            which.join(", ")
        );
    }
    for note in notes {
        println!("note: {note}");
    }
    if let Some(n) = settings.backlog {
        backlog_case(&runtime, settings, &secret, n, run_number + 1)?;
    }
    Ok(())
}

/// One run of one variant in one round: what starting its daemons and reporting on them needs.
struct Run<'a> {
    runtime: &'a tokio::runtime::Runtime,
    settings: &'a Settings,
    round: usize,
    /// Numbers the runs of the whole bench (unique delivery ids, schema names).
    number: u64,
    server: Server,
}

impl Run<'_> {
    /// Starts the variant's daemons (on a fresh store or schema), drives them with `pool`, and
    /// returns what was measured; adds the run's notes (daemon WARN and ERROR lines, relay and
    /// schema anomalies) to `notes`.
    fn daemons(
        &self,
        pool: Arc<Pool>,
        notes: &mut Vec<String>,
    ) -> anyhow::Result<(Measured, Option<DeliveryFigures>, Option<PgFigures>)> {
        let (runtime, settings, round, server) =
            (self.runtime, self.settings, self.round, self.server);
        // Declared before the daemons, so dropped (the schema with it) after they are killed.
        let schema = match &settings.postgres {
            Some((url, _)) if server.on_postgres() => Some(PgSchema::unique(url, self.number)),
            _ => None,
        };
        let engine = match &schema {
            Some(schema) => Engine::Postgres {
                url: schema.url(),
                schema: schema.name(),
            },
            None => Engine::Embedded,
        };
        let target = match server {
            Server::KirimhookRelay => Some(runtime.block_on(RelayTarget::start(any_port()))?),
            _ => None,
        };
        // Declared before the daemons, so dropped (its names deleted) after they are killed.
        let bus = match server {
            Server::KirimhookBroker(broker) => {
                let url = settings.brokers.iter().find(|(b, _)| *b == broker);
                let (url, _) = url
                    .and_then(|(_, url)| url.as_ref())
                    .context("a broker row runs only with its URL")?;
                let concurrency = settings.broker_concurrency;
                Some(runtime.block_on(Bus::start(broker, url, self.number, concurrency))?)
            }
            _ => None,
        };
        let sink = match (&target, &bus) {
            (Some(t), _) => Some(daemon::relay_sink(t.addr, settings.relay_concurrency)),
            (_, Some(bus)) => Some(bus.sink.clone()),
            _ => None,
        };
        let daemons = (0..server.daemons())
            .map(|_| Daemon::start(settings.rust_log.as_deref(), engine, sink.as_deref()))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let addrs: Vec<SocketAddr> = daemons.iter().map(|d| d.addr).collect();
        let pids: Vec<u32> = daemons.iter().map(Daemon::pid).collect();
        let measured = runtime.block_on(drive(&addrs, &pids, pool.clone(), settings.load()))?;

        let arrivals = target
            .as_ref()
            .map(|t| &t.arrivals)
            .or(bus.as_ref().map(|b| &b.arrivals));
        let delivery = arrivals.map(|arrivals| {
            let figures =
                runtime.block_on(delivery_figures(&pool, &measured, arrivals, DRAIN_TIMEOUT));
            if figures.repeats + figures.retries > 0 || figures.unknown > 0 {
                notes.push(format!(
                    "round {round} {}: the target got {} repeated event(s), {} retry \
                     attempt(s) and {} arrival(s) of unknown events",
                    server.name(),
                    figures.repeats,
                    figures.retries,
                    figures.unknown
                ));
            }
            figures
        });
        let pg = schema
            .as_ref()
            .map(|schema| self.pg_figures(schema, &measured, notes));
        for (i, daemon) in daemons.iter().enumerate() {
            let (total, warn, error) = daemon.log.counts();
            if warn + error == 0 {
                continue;
            }
            let who = match daemons.len() {
                1 => server.name().to_owned(),
                _ => format!("{} (daemon {})", server.name(), i + 1),
            };
            let mut note = format!(
                "round {round}: {who} logged {error} ERROR and {warn} WARN line(s) ({total} \
                 lines in all); the first ones:"
            );
            for line in daemon.log.alerts() {
                note.push_str("\n      ");
                note.push_str(&line);
            }
            notes.push(note);
        }
        Ok((measured, delivery, pg))
    }

    /// Counts what `schema` holds right after the window (the daemons still run).
    fn pg_figures(&self, schema: &PgSchema, m: &Measured, notes: &mut Vec<String>) -> PgFigures {
        let name = self.server.name();
        let round = self.round;
        let (stored, backlog) = match self.runtime.block_on(schema.counts()) {
            Ok((stored, backlog)) => (Some(stored), Some(backlog)),
            Err(e) => {
                notes.push(format!("round {round} {name}: {e:#}"));
                (None, None)
            }
        };
        let acknowledged = m.acks.len();
        if let Some(stored) = stored.filter(|&n| usize::try_from(n).unwrap_or(0) < acknowledged) {
            notes.push(format!(
                "round {round} {name}: {acknowledged} deliveries were answered 200 but schema \
                 {} holds only {stored} admitted ones",
                schema.name()
            ));
        }
        PgFigures {
            daemons: self.server.daemons(),
            schema: schema.name().to_owned(),
            acknowledged,
            stored,
            backlog,
        }
    }
}

/// The summary lines of a variant whose sink delivers to a reader in this process (the relay,
/// the broker sinks): the medians over its rounds next to the plain kirimhook's rate, and its
/// target (keeps up: delivered/s >= [`KEEP_UP_RATIO`] x accepted/s, the lag p99 under the
/// variant's limit, none lost). `setup` names the sink's settings. Nothing without such rows.
fn delivery_summary(rows: &[Row], server: Server, settings: &Settings, kh_rate: f64, setup: &str) {
    let Some((label, verb, lag_target)) = server.delivery() else {
        return;
    };
    if !rows.iter().any(|r| r.server == server) {
        return;
    }
    let med = |f: &dyn Fn(&Row) -> f64| median_of(rows, server, f);
    let fig = |f: fn(&DeliveryFigures) -> f64| med(&|r| r.delivery.as_ref().map_or(0.0, f));
    let (rate, p99) = rate_p99(rows, server, |r| r.rate);
    let (delivered, lag_p50, lag_p99, lag_max) = (
        fig(|d| d.rate),
        fig(|d| d.lag_p50_ms),
        fig(|d| d.lag_p99_ms),
        fig(|d| d.lag_max_ms),
    );
    let keep_up = med(&|r| share(r.delivery.as_ref().map_or(0.0, |d| d.rate), r.rate));
    let never: usize = rows
        .iter()
        .filter(|r| r.server == server)
        .filter_map(|r| r.delivery.as_ref())
        .map(|d| d.never)
        .sum();
    println!(
        "median {} {rate:.0} req/s p99 {p99:.2} ms ({:.2} x kirimhook) | {verb} \
         {delivered:.0}/s ({keep_up:.2} x accepted) | lag p50 {lag_p50:.2} p99 {lag_p99:.2} max \
         {lag_max:.2} ms | never arrived {never} (all rounds) | {setup}",
        server.name(),
        share(rate, kh_rate),
    );
    let met = keep_up >= KEEP_UP_RATIO && lag_p99 < lag_target && never == 0;
    println!(
        "{label} target ({label} keeps up with the receive rate at {} connections: {verb}/s >= \
         {KEEP_UP_RATIO:.2} x accepted/s, lag p99 < {lag_target} ms, none lost; {setup}): {}",
        settings.connections,
        match never {
            0 => verdict(settings, met),
            _ => "MISSED (accepted events did not arrive within 10 s)",
        }
    );
}

/// The efficiency lines of the summary: the medians of the server CPU per request and the peak
/// RSS of every row, then the efficiency targets (kirimhook against the memory baseline,
/// kirimhook+relay against kirimhook, kirimhook's peak RSS).
fn efficiency_summary(rows: &[Row], servers: &[Server], settings: &Settings) {
    let cpu = |server| median_of(rows, server, |r| r.cpu_us.unwrap_or(0.0));
    let rss = |server| median_of(rows, server, |r| r.peak_rss_mib.unwrap_or(0.0));
    let figures: Vec<String> = servers
        .iter()
        .map(|&s| format!("{} {:.1} µs {:.1} MiB", s.name(), cpu(s), rss(s)))
        .collect();
    println!(
        "median server CPU per request and peak RSS: {}",
        figures.join(" | ")
    );
    let (kh_cpu, mem_cpu) = (cpu(Server::Kirimhook), cpu(Server::Memory));
    let cpu_ratio = share(kh_cpu, mem_cpu);
    println!(
        "efficiency: kirimhook CPU {kh_cpu:.1} µs/request = {cpu_ratio:.2} x memory's \
         {mem_cpu:.1} (target <= {EFF_CPU_RATIO:.1} x): {}",
        verdict(settings, cpu_ratio > 0.0 && cpu_ratio <= EFF_CPU_RATIO)
    );
    let (kh_rate, kh_p99) = rate_p99(rows, Server::Kirimhook, |r| r.accepted);
    let (mem_rate, _) = rate_p99(rows, Server::Memory, |r| r.accepted);
    let rate_ratio = share(kh_rate, mem_rate);
    println!(
        "efficiency: kirimhook {kh_rate:.0} accepted/s = {rate_ratio:.2} x memory's \
         {mem_rate:.0}, p99 {kh_p99:.2} ms (target >= {TARGET_RATIO:.2} x, p99 < \
         {TARGET_P99_MS} ms): {}",
        verdict(
            settings,
            rate_ratio >= TARGET_RATIO && kh_p99 < TARGET_P99_MS
        )
    );
    let relay = Server::KirimhookRelay;
    let (relay_rate, _) = rate_p99(rows, relay, |r| r.accepted);
    let relay_ratio = share(relay_rate, kh_rate);
    let fig = |f: fn(&Row, &DeliveryFigures) -> f64| {
        median_of(rows, relay, |r| {
            r.delivery.as_ref().map_or(0.0, |d| f(r, d))
        })
    };
    let relayed = fig(|r, d| share(d.rate, r.accepted));
    let lag_p99 = fig(|_, d| d.lag_p99_ms);
    println!(
        "efficiency: kirimhook+relay {relay_rate:.0} accepted/s = {relay_ratio:.2} x kirimhook, \
         relayed {relayed:.2} x accepted, lag p99 {lag_p99:.2} ms (target >= \
         {EFF_RELAY_RATIO:.2} x, >= {EFF_RELAYED_RATIO:.2}, < {RELAY_TARGET_LAG_P99_MS} ms; relay \
         concurrency {}): {}",
        settings.relay_concurrency,
        verdict(
            settings,
            relay_ratio >= EFF_RELAY_RATIO
                && relayed >= EFF_RELAYED_RATIO
                && lag_p99 < RELAY_TARGET_LAG_P99_MS
        )
    );
    let kh_rss = rss(Server::Kirimhook);
    println!(
        "efficiency: kirimhook peak RSS {kh_rss:.1} MiB (target <= {EFF_RSS_MIB:.0} MiB): {}",
        verdict(settings, kh_rss > 0.0 && kh_rss <= EFF_RSS_MIB)
    );
}

/// The backlog case (`BENCH_BACKLOG=n`): a daemon with the stdout sink and an `http` sink to a
/// port where nothing listens yet receives `n` unique deliveries as fast as the load generator
/// sends them; then the relay target comes up on that port and the bench times the drain until
/// it has every delivery answered 200. Prints the daemon's CPU and RSS along the way.
fn backlog_case(
    runtime: &tokio::runtime::Runtime,
    settings: &Settings,
    secret: &SigningSecret,
    n: usize,
    run: u64,
) -> anyhow::Result<()> {
    // A free port, released at once; the target binds it again once the load is over.
    let target_addr = std::net::TcpListener::bind(any_port())
        .and_then(|l| l.local_addr())
        .context("cannot find a free port for the backlog's target")?;
    let sink = daemon::backlog_sink(target_addr, settings.relay_concurrency);
    let daemon = Daemon::start(settings.rust_log.as_deref(), Engine::Embedded, Some(&sink))?;
    let pid = daemon.pid();
    let pool = Pool::build(n, run, secret, unix_now());
    println!();
    println!(
        "backlog: {n} unique deliveries over {} connections to a daemon (embedded store, stdout \
         sink + http sink to {target_addr}, where nothing listens yet; relay concurrency {}, \
         retries every 0.1-1 s)",
        settings.connections, settings.relay_concurrency
    );
    let rss = || {
        let kib = |field| procfs::status_kib(pid, field).map(mib);
        format!(
            "RSS {} MiB, peak {} MiB",
            or_unknown(kib("VmRSS:")),
            or_unknown(kib("VmHWM:"))
        )
    };
    let cpu_since = |before: Option<f64>, requests: usize| {
        let used = procfs::pid_cpu_secs(pid).zip(before).map(|(a, b)| a - b);
        let per = used
            .filter(|_| requests > 0)
            .map(|s| s * 1e6 / requests as f64);
        format!(
            "daemon CPU {} s ({} µs per delivery)",
            or_unknown(used),
            or_unknown(per)
        )
    };
    let load = Load {
        connections: settings.connections,
        warmup: Duration::ZERO,
        window: BACKLOG_WINDOW,
    };
    let cpu_before = procfs::pid_cpu_secs(pid);
    let started = Instant::now();
    let mut m = runtime.block_on(drive(&[daemon.addr], &[], pool.clone(), load))?;
    let load_time = started.elapsed();
    let accepted = m.acks.len();
    m.latencies_us.sort_unstable();
    println!(
        "backlog: load: {accepted} answered 200 in {:.2} s ({:.0}/s, p50 {:.2} p99 {:.2} ms), {} \
         error(s); {}; at its end {}",
        load_time.as_secs_f64(),
        accepted as f64 / load_time.as_secs_f64(),
        percentile_ms(&m.latencies_us, 0.50),
        percentile_ms(&m.latencies_us, 0.99),
        m.errors,
        cpu_since(cpu_before, accepted),
        rss()
    );
    if let Some(e) = &m.first_error {
        println!("backlog: first error: {e}");
    }

    let cpu_before = procfs::pid_cpu_secs(pid);
    let target_up = Instant::now();
    let target = runtime.block_on(RelayTarget::start(target_addr))?;
    // The drain is timed from the target's start: the figures' "window" ends there.
    m.span = Some((started, target_up));
    let figures = runtime.block_on(delivery_figures(
        &pool,
        &m,
        &target.arrivals,
        BACKLOG_DRAIN_TIMEOUT,
    ));
    let first = target
        .arrivals
        .lock()
        .ok()
        .and_then(|a| a.first.values().min().copied());
    let secs_after_up = |at: Option<Instant>| {
        at.map_or_else(
            || "?".to_owned(),
            |at| {
                format!(
                    "{:.2}",
                    at.saturating_duration_since(target_up).as_secs_f64()
                )
            },
        )
    };
    match figures.drained_after {
        Some(drain) => println!(
            "backlog: drain: all {accepted} relayed {:.2} s after the target came up ({:.0}/s; \
             the first {} s after); {}; after it {}",
            drain.as_secs_f64(),
            share(accepted as f64, drain.as_secs_f64()),
            secs_after_up(first),
            cpu_since(cpu_before, accepted),
            rss()
        ),
        None => println!(
            "backlog: drain: {} of {accepted} never arrived within {} s of the target coming up; \
             {}",
            figures.never,
            BACKLOG_DRAIN_TIMEOUT.as_secs(),
            rss()
        ),
    }
    if figures.repeats + figures.retries > 0 || figures.unknown > 0 {
        println!(
            "backlog: the target got {} repeated event(s), {} retry attempt(s) and {} arrival(s) \
             of unknown events",
            figures.repeats, figures.retries, figures.unknown
        );
    }
    Ok(())
}

/// The PostgreSQL lines of the summary: the medians of the kirimhook-pg rows next to those of
/// the embedded kirimhook rows of the same rounds, and the PostgreSQL target.
fn pg_summary(rows: &[Row], settings: &Settings, kh_rate: f64, kh_p99: f64) {
    let (one_rate, one_p99) = rate_p99(rows, Server::KirimhookPg, |r| r.accepted);
    let (two_rate, two_p99) = rate_p99(rows, Server::KirimhookPg2, |r| r.accepted);
    println!(
        "median kirimhook (embedded) {kh_rate:.0} req/s p99 {kh_p99:.2} ms | kirimhook-pg \
         {one_rate:.0} accepted/s p99 {one_p99:.2} ms ({:.2} x embedded) | kirimhook-pg x2 \
         {two_rate:.0} accepted/s p99 {two_p99:.2} ms ({:.2} x embedded, {:.2} x one instance) | {} connections",
        share(one_rate, kh_rate),
        share(two_rate, kh_rate),
        share(two_rate, one_rate),
        settings.connections,
    );
    let met = two_rate >= PG_TARGET_RATE && two_p99 < PG_TARGET_P99_MS;
    println!(
        "PostgreSQL x2 >= {PG_TARGET_RATE:.0} accepted/s and p99 < {PG_TARGET_P99_MS:.0} ms: {}",
        verdict(settings, met)
    );
}

fn pool_size(rate: f64, settings: &Settings) -> usize {
    let secs = (settings.warmup + settings.window).as_secs_f64();
    (rate * secs * POOL_MARGIN) as usize + settings.connections * 4
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

// ---------------------------------------------------------------------------------------------
// Pre-built deliveries

/// One signed delivery, built before the clock starts so that signing costs nothing in the
/// window.
struct Prebuilt {
    body: Bytes,
    event_id: HeaderValue,
    delivery_id: HeaderValue,
    signature: HeaderValue,
}

/// Deliveries handed out once each, in order, to every connection of one run.
struct Pool {
    items: Vec<Prebuilt>,
    next: AtomicUsize,
}

impl Pool {
    /// `n` unique deliveries (ids unique across runs through `run`), signed at `now`.
    fn build(n: usize, run: u64, secret: &SigningSecret, now: i64) -> Arc<Pool> {
        let threads = std::thread::available_parallelism().map_or(1, |t| t.get());
        let per = n.div_ceil(threads);
        let items = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..threads)
                .map(|t| {
                    let range = (t * per).min(n)..((t + 1) * per).min(n);
                    scope.spawn(move || {
                        range
                            .map(|i| {
                                let d = delivery(run, i as u64);
                                let signature = secret.sign(now, &d.body);
                                Prebuilt {
                                    body: Bytes::from(d.body),
                                    event_id: header(d.event_id),
                                    delivery_id: header(d.delivery_id),
                                    signature: header(signature),
                                }
                            })
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            handles
                .into_iter()
                .flat_map(|h| h.join().expect("building requests does not panic"))
                .collect()
        });
        Arc::new(Pool {
            items,
            next: AtomicUsize::new(0),
        })
    }

    /// The next unused delivery and its index.
    fn take(&self) -> Option<(usize, &Prebuilt)> {
        let i = self.next.fetch_add(1, Ordering::Relaxed);
        self.items.get(i).map(|item| (i, item))
    }
}

fn header(value: String) -> HeaderValue {
    HeaderValue::try_from(value).expect("ids and signatures are visible ASCII")
}

/// The parts of one delivery: a ~420-byte `contact.created` envelope like fixture F7, unique ids.
struct Delivery {
    body: Vec<u8>,
    event_id: String,
    delivery_id: String,
}

fn delivery(run: u64, i: u64) -> Delivery {
    let event_id = format!("evt_{}", ulid_like(run, i, 0));
    let contact_id = format!("ctc_{}", ulid_like(run, i, 1));
    let delivery_id = format!("wbd_{}", ulid_like(run, i, 2));
    let body = format!(
        concat!(
            r#"{{"id":"{event_id}","type":"contact.created","created_at":"2026-06-10T03:15:07Z","#,
            r#""livemode":true,"data":{{"contact":{{"id":"{contact_id}","object":"contact","#,
            r#""phone_number":"+6281398765432","name":"Siti Rahmawati","email":null,"#,
            r#""metadata":null,"whatsapp_account":{{"phone_number":"+62 815-1122-3344"}},"#,
            r#""created_at":"2026-06-10T03:15:07Z","updated_at":"2026-06-10T03:15:07Z"}}}}}}"#,
        ),
        event_id = event_id,
        contact_id = contact_id,
    );
    Delivery {
        body: body.into_bytes(),
        event_id,
        delivery_id,
    }
}

/// 26 Crockford base32 characters, unique for each (run, i, kind), shaped like a ULID.
fn ulid_like(run: u64, i: u64, kind: u8) -> String {
    const ALPHABET: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";
    let value = (u128::from(run) << 72) | (u128::from(kind) << 64) | u128::from(i);
    (0..26)
        .rev()
        .map(|k| char::from(ALPHABET[((value >> (5 * k)) & 31) as usize]))
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Load generator

/// Drives `addrs` with one task per connection for warm-up + window, then returns the figures
/// of all connections together. Connection `i` goes to `addrs[i % addrs.len()]`, so the
/// connections are split evenly over the addresses; all of them share `pool`. The CPU time of
/// the server processes `pids` is read at the start and at the end of the window, their peak
/// RSS at its end (none: not read).
async fn drive(
    addrs: &[SocketAddr],
    pids: &[u32],
    pool: Arc<Pool>,
    load: Load,
) -> anyhow::Result<Measured> {
    if addrs.is_empty() {
        bail!("no server to drive");
    }
    // Connect everything before the clock starts.
    let mut senders = Vec::with_capacity(load.connections);
    for i in 0..load.connections {
        let addr = addrs[i % addrs.len()];
        let sender = connect(addr)
            .await
            .with_context(|| format!("cannot connect to {addr}"))?;
        let host = HeaderValue::try_from(addr.to_string()).context("an address is a valid Host")?;
        senders.push((addr, host, sender));
    }
    let start = Instant::now();
    let window_start = start + load.warmup;
    let window_end = window_start + load.window;
    let sampler = (!pids.is_empty()).then(|| {
        let pids = pids.to_vec();
        let cpu =
            |pids: &[u32]| -> Option<f64> { pids.iter().map(|&p| procfs::pid_cpu_secs(p)).sum() };
        tokio::spawn(async move {
            tokio::time::sleep_until(window_start.into()).await;
            let before = cpu(&pids);
            tokio::time::sleep_until(window_end.into()).await;
            let after = cpu(&pids);
            let peak = pids
                .iter()
                .filter_map(|&p| procfs::status_kib(p, "VmHWM:"))
                .max();
            (after.zip(before).map(|(a, b)| a - b), peak)
        })
    });
    let uri: Uri = PATH.parse().context("the request path is a valid URI")?;
    let tasks: Vec<_> = senders
        .into_iter()
        .map(|(addr, host, sender)| {
            let ctx = ConnCtx {
                addr,
                pool: pool.clone(),
                uri: uri.clone(),
                host,
                window_start,
                window_end,
            };
            tokio::spawn(ctx.run(sender))
        })
        .collect();
    let mut total = Measured {
        window: load.window,
        span: Some((window_start, window_end)),
        ..Measured::default()
    };
    for task in tasks {
        total.merge(task.await.context("a load task panicked")?);
    }
    if let Some(sampler) = sampler {
        (total.server_cpu_secs, total.server_peak_kib) =
            sampler.await.context("the /proc sampler panicked")?;
    }
    Ok(total)
}

type Sender = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

async fn connect(addr: SocketAddr) -> anyhow::Result<Sender> {
    let stream = TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        // Errors surface on the sender too; nothing to add here.
        let _ = connection.await;
    });
    Ok(sender)
}

struct ConnCtx {
    addr: SocketAddr,
    pool: Arc<Pool>,
    uri: Uri,
    host: HeaderValue,
    window_start: Instant,
    window_end: Instant,
}

enum Answer {
    Ok,
    Duplicate,
}

impl ConnCtx {
    async fn run(self, mut sender: Sender) -> Measured {
        let mut m = Measured::default();
        let error = |m: &mut Measured, e: String| {
            m.errors += 1;
            if m.first_error.is_none() {
                m.first_error = Some(e);
            }
        };
        loop {
            if Instant::now() >= self.window_end {
                break;
            }
            let Some((index, item)) = self.pool.take() else {
                m.exhausted = true;
                break;
            };
            let request = self.request(item);
            let sent = Instant::now();
            let answer = self.send(&mut sender, request).await;
            let done = Instant::now();
            let in_window = done >= self.window_start && done < self.window_end;
            if answer.is_ok() {
                m.acks.push((index, done));
            }
            match answer {
                Ok(answer) if in_window => {
                    m.ok += 1;
                    if matches!(answer, Answer::Duplicate) {
                        m.duplicates += 1;
                    }
                    let us = done.duration_since(sent).as_micros();
                    m.latencies_us.push(u32::try_from(us).unwrap_or(u32::MAX));
                }
                Ok(_) => {}
                Err(SendError::Answer(e)) => error(&mut m, e),
                Err(SendError::Transport(e)) => {
                    error(&mut m, e);
                    // The connection may be dead: open a new one and carry on.
                    match connect(self.addr).await {
                        Ok(fresh) => sender = fresh,
                        Err(e) => {
                            error(&mut m, format!("reconnect failed: {e:#}"));
                            tokio::time::sleep(Duration::from_millis(10)).await;
                        }
                    }
                }
            }
        }
        m
    }

    fn request(&self, item: &Prebuilt) -> Request<Full<Bytes>> {
        const EVENT_ID: HeaderName = HeaderName::from_static("x-kirim-event-id");
        const DELIVERY_ID: HeaderName = HeaderName::from_static("x-kirim-delivery-id");
        const SIGNATURE: HeaderName = HeaderName::from_static("x-kirim-signature");
        const SOURCE: HeaderName = HeaderName::from_static("x-kirim-source");
        const EVENT: HeaderName = HeaderName::from_static("x-kirim-event");
        const ATTEMPT: HeaderName = HeaderName::from_static("x-kirim-attempt");
        let mut request = Request::new(Full::new(item.body.clone()));
        *request.method_mut() = Method::POST;
        *request.uri_mut() = self.uri.clone();
        let h = request.headers_mut();
        h.insert(HOST, self.host.clone());
        h.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        h.insert(USER_AGENT, HeaderValue::from_static("Kirim-Webhook/1.0"));
        h.insert(SOURCE, HeaderValue::from_static("kirim"));
        h.insert(EVENT, HeaderValue::from_static("contact.created"));
        h.insert(EVENT_ID, item.event_id.clone());
        h.insert(DELIVERY_ID, item.delivery_id.clone());
        h.insert(ATTEMPT, HeaderValue::from_static("1"));
        h.insert(SIGNATURE, item.signature.clone());
        request
    }

    async fn send(
        &self,
        sender: &mut Sender,
        request: Request<Full<Bytes>>,
    ) -> Result<Answer, SendError> {
        let transport = |e: hyper::Error| SendError::Transport(e.to_string());
        sender.ready().await.map_err(transport)?;
        let response = sender.send_request(request).await.map_err(transport)?;
        let status = response.status();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(transport)?
            .to_bytes();
        if status != StatusCode::OK {
            return Err(SendError::Answer(format!(
                "HTTP {status}: {}",
                String::from_utf8_lossy(&body)
            )));
        }
        let has = |word: &[u8]| body.windows(word.len()).any(|w| w == word);
        if has(b"\"accepted\"") || has(b"\"quarantined\"") {
            Ok(Answer::Ok)
        } else if has(b"\"duplicate\"") {
            Ok(Answer::Duplicate)
        } else {
            Err(SendError::Answer(format!(
                "HTTP 200 with an unexpected body: {}",
                String::from_utf8_lossy(&body)
            )))
        }
    }
}

enum SendError {
    /// The server answered, but not 200 with an expected body.
    Answer(String),
    /// The request or its response could not be exchanged.
    Transport(String),
}

// ---------------------------------------------------------------------------------------------
// Child processes

/// A baseline server (minimal or memory), started from this binary. Killed when dropped; it
/// also exits by itself when its stdin closes, so it cannot outlive the bench even if the bench
/// is killed.
struct BaselineChild {
    child: Child,
    _stdin: ChildStdin,
    addr: SocketAddr,
}

impl BaselineChild {
    fn start(baseline: Baseline) -> anyhow::Result<BaselineChild> {
        let exe = std::env::current_exe().context("cannot find the bench binary")?;
        let mut child = Command::new(&exe)
            .env(ROLE_ENV, baseline.role())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("cannot start the minimal server {}", exe.display()))?;
        let stdin = child.stdin.take().context("minimal server has no stdin")?;
        let stdout = child
            .stdout
            .take()
            .context("minimal server has no stdout")?;
        // Keep ownership in a guard from here on, so that a failure below still kills it.
        let mut guard = KillOnDrop(Some(child));
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = tx.send(BufReader::new(stdout).read_line(&mut line).map(|_| line));
        });
        let line = match rx.recv_timeout(START_TIMEOUT) {
            Ok(Ok(line)) => line,
            Ok(Err(e)) => bail!("reading the minimal server's address failed: {e}"),
            Err(_) => bail!("the minimal server did not print its address in time"),
        };
        let addr = line.trim().parse().with_context(|| {
            format!("the minimal server printed {line:?} instead of its address")
        })?;
        let child = guard.0.take().context("the guard holds the child")?;
        Ok(BaselineChild {
            child,
            _stdin: stdin,
            addr,
        })
    }
}

impl Drop for BaselineChild {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---------------------------------------------------------------------------------------------
// The relay target (kirimhook+relay)

/// What the relay target (or a broker's consumer) has seen.
#[derive(Default)]
struct Arrivals {
    /// First arrival of each `X-Kirim-Event-Id`.
    first: HashMap<Box<str>, Instant>,
    /// Arrivals of an id already in `first`.
    repeats: u64,
    /// Arrivals with `X-Kirimhook-Attempt` other than 1.
    retries: u64,
    /// Arrivals without a usable `X-Kirim-Event-Id`.
    no_id: usize,
}

impl Arrivals {
    /// One arrival at `at` of the event `id` (`None`: it had none); `retry`: not its first
    /// attempt.
    fn record(&mut self, id: Option<&str>, retry: bool, at: Instant) {
        if retry {
            self.retries += 1;
        }
        match id {
            None => self.no_id += 1,
            Some(id) => {
                if self.first.contains_key(id) {
                    self.repeats += 1;
                } else {
                    self.first.insert(id.into(), at);
                }
            }
        }
    }
}

/// A hyper HTTP/1.1 server in the bench process, on the bench's runtime, that answers every
/// request 200 at once and records when each event id arrived. Stops accepting when dropped.
/// Listens on the address given to [`RelayTarget::start`] ([`any_port`]: a free one).
struct RelayTarget {
    addr: SocketAddr,
    arrivals: Arc<Mutex<Arrivals>>,
    accept: tokio::task::JoinHandle<()>,
}

impl RelayTarget {
    async fn start(addr: SocketAddr) -> anyhow::Result<RelayTarget> {
        let listener = TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot bind the relay target to {addr}"))?;
        let addr = listener.local_addr()?;
        let arrivals = Arc::new(Mutex::new(Arrivals::default()));
        let shared = arrivals.clone();
        let accept = tokio::spawn(async move {
            loop {
                let stream = match listener.accept().await {
                    Ok((stream, _)) => stream,
                    Err(_) => {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let arrivals = shared.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                        let at = Instant::now();
                        record(&arrivals, &req, at);
                        async move {
                            let _ = req.into_body().collect().await;
                            Ok::<_, Infallible>(Response::new(Full::new(Bytes::new())))
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .keep_alive(true)
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Ok(RelayTarget {
            addr,
            arrivals,
            accept,
        })
    }
}

impl Drop for RelayTarget {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

/// `127.0.0.1:0`: any free port.
fn any_port() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

fn record(arrivals: &Mutex<Arrivals>, req: &Request<Incoming>, at: Instant) {
    let id = req
        .headers()
        .get("x-kirim-event-id")
        .and_then(|v| v.to_str().ok());
    let retry = req
        .headers()
        .get("x-kirimhook-attempt")
        .is_some_and(|v| v.as_bytes() != b"1");
    if let Ok(mut a) = arrivals.lock() {
        a.record(id, retry, at);
    }
}

/// Waits (up to `timeout`) for every event answered 200 to be in `arrivals` (the relay
/// target's or a broker consumer's), then computes the delivery figures of the run.
async fn delivery_figures(
    pool: &Pool,
    m: &Measured,
    arrivals: &Mutex<Arrivals>,
    timeout: Duration,
) -> DeliveryFigures {
    let (window_start, window_end) = m.span.unwrap_or_else(|| {
        let now = Instant::now();
        (now, now)
    });
    let id = |index: usize| pool.items[index].event_id.to_str().unwrap_or_default();
    let lock = || {
        arrivals
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    };
    // Wait for the stragglers, rechecking only the ones still missing.
    let deadline = Instant::now() + timeout;
    let mut missing: Vec<usize> = m.acks.iter().map(|&(index, _)| index).collect();
    loop {
        {
            let a = lock();
            missing.retain(|&index| !a.first.contains_key(id(index)));
        }
        if missing.is_empty() || Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let a = lock();
    let acked: std::collections::HashSet<&str> = m.acks.iter().map(|&(i, _)| id(i)).collect();
    let in_window = a
        .first
        .values()
        .filter(|&&at| at >= window_start && at < window_end)
        .count();
    let mut lags_us: Vec<u32> = Vec::new();
    let mut min_lag_us = i128::MAX;
    for &(index, ok_at) in &m.acks {
        if ok_at < window_start || ok_at >= window_end {
            continue;
        }
        if let Some(&arrived) = a.first.get(id(index)) {
            let lag = if arrived >= ok_at {
                arrived.duration_since(ok_at).as_micros() as i128
            } else {
                -(ok_at.duration_since(arrived).as_micros() as i128)
            };
            min_lag_us = min_lag_us.min(lag);
            lags_us.push(u32::try_from(lag.max(0)).unwrap_or(u32::MAX));
        }
    }
    lags_us.sort_unstable();
    let last = m
        .acks
        .iter()
        .filter_map(|&(i, _)| a.first.get(id(i)))
        .max()
        .copied();
    DeliveryFigures {
        rate: in_window as f64 / m.window.as_secs_f64(),
        lag_p50_ms: percentile_ms(&lags_us, 0.50),
        lag_p99_ms: percentile_ms(&lags_us, 0.99),
        lag_max_ms: percentile_ms(&lags_us, 1.0),
        lag_min_ms: if lags_us.is_empty() {
            0.0
        } else {
            min_lag_us as f64 / 1000.0
        },
        accepted: m.acks.len(),
        never: missing.len(),
        drained_after: match (missing.is_empty(), last) {
            (true, Some(last)) => Some(last.saturating_duration_since(window_end)),
            (true, None) => Some(Duration::ZERO),
            (false, _) => None,
        },
        repeats: a.repeats,
        retries: a.retries,
        unknown: a.no_id + a.first.keys().filter(|k| !acked.contains(&***k)).count(),
    }
}

// ---------------------------------------------------------------------------------------------
// The baseline servers (KIRIMHOOK_BENCH_ROLE=minimal, KIRIMHOOK_BENCH_ROLE=memory)

/// What a baseline server does with each request.
#[derive(Clone, Copy)]
enum Baseline {
    /// Reads the body and answers `accepted`.
    Minimal,
    /// Reads the body, verifies its signature and classifies it with kirimhook's own functions
    /// (as the daemon's handler calls them), and dedupes its keys in memory: `accepted` (or
    /// `quarantined`) when none was seen, else `duplicate`. No disk.
    Memory,
}

impl Baseline {
    /// The value of [`ROLE_ENV`] that starts it.
    fn role(self) -> &'static str {
        match self {
            Baseline::Minimal => "minimal",
            Baseline::Memory => "memory",
        }
    }
}

/// The memory baseline's state, shared by all its connections.
struct MemoryState {
    secrets: Vec<SigningSecret>,
    /// Every dedupe key admitted so far.
    seen: Mutex<HashSet<String>>,
}

impl MemoryState {
    /// The status and body of the answer to a delivery with these headers and body.
    fn admit(&self, headers: &hyper::HeaderMap, body: &[u8]) -> (StatusCode, &'static [u8]) {
        let header = headers
            .get(signature::SIGNATURE_HEADER)
            .or_else(|| headers.get(signature::SIGNATURE_HEADER_ALT))
            .map(HeaderValue::as_bytes);
        let verified = signature::verify(
            header,
            body,
            &self.secrets,
            unix_now(),
            MEMORY_TOLERANCE_SECS,
        );
        if verified.is_err() {
            return (StatusCode::UNAUTHORIZED, br#"{"status":"rejected"}"#);
        }
        let text = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
        let hints = Hints {
            source: text("x-kirim-source"),
            event: text("x-kirim-event"),
            event_id: text("x-kirim-event-id"),
        };
        let (keys, answer): (Vec<DedupeKey>, &'static [u8]) = match envelope::classify(hints, body)
        {
            Classified::Event(info) => (info.keys, br#"{"status":"accepted"}"#),
            Classified::Unrecognized(u) => (vec![u.key], br#"{"status":"quarantined"}"#),
        };
        let mut seen = self
            .seen
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if keys.iter().any(|key| seen.contains(key.as_str())) {
            return (StatusCode::OK, br#"{"status":"duplicate"}"#);
        }
        seen.extend(keys.into_iter().map(DedupeKey::into_string));
        (StatusCode::OK, answer)
    }
}

/// A hyper 1.x HTTP/1.1 server on a multi-threaded runtime, configured like kirimhook's (nodelay,
/// keep-alive, header timeout), that reads each body and answers with kirimhook's JSON (see
/// [`Baseline`]). Prints its address on stdout; exits when stdin closes.
fn baseline_server(baseline: Baseline) -> anyhow::Result<()> {
    std::thread::spawn(|| {
        let mut buf = [0u8; 64];
        let mut stdin = std::io::stdin();
        while matches!(stdin.read(&mut buf), Ok(n) if n > 0) {}
        std::process::exit(0);
    });
    let memory = match baseline {
        Baseline::Minimal => None,
        Baseline::Memory => Some(Arc::new(MemoryState {
            secrets: vec![SigningSecret::new(SECRET_ID, SECRET_VALUE)],
            seen: Mutex::new(HashSet::new()),
        })),
    };
    let runtime = tokio::runtime::Runtime::new().context("cannot start the tokio runtime")?;
    runtime.block_on(async {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let mut out = std::io::stdout();
        writeln!(out, "{}", listener.local_addr()?)?;
        out.flush()?;
        loop {
            let (stream, _) = match listener.accept().await {
                Ok(accepted) => accepted,
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let _ = stream.set_nodelay(true);
            let memory = memory.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let memory = memory.clone();
                    async move {
                        let (parts, body) = req.into_parts();
                        let body = body.collect().await.map(|b| b.to_bytes());
                        let (status, answer) = match (&memory, body) {
                            (None, _) => (StatusCode::OK, &br#"{"status":"accepted"}"#[..]),
                            (Some(state), Ok(body)) => state.admit(&parts.headers, &body),
                            (Some(_), Err(_)) => {
                                (StatusCode::BAD_REQUEST, &br#"{"status":"unreadable"}"#[..])
                            }
                        };
                        let mut response = Response::new(Full::new(Bytes::from_static(answer)));
                        *response.status_mut() = status;
                        response
                            .headers_mut()
                            .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
                        Ok::<_, Infallible>(response)
                    }
                });
                let mut builder = hyper::server::conn::http1::Builder::new();
                builder
                    .timer(TokioTimer::new())
                    .header_read_timeout(Duration::from_secs(10))
                    .keep_alive(true);
                let _ = builder
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    })
}
