//! Sustained load against the real daemon, reported in fixed windows, to show whether anything
//! periodic (the retention sweep runs once a minute) stalls admissions.
//!
//! Each mode starts `kirimhook serve` as a child process with the default configuration except
//! for port 0 on both listeners, a temporary store, one secret and a `stdout` sink whose output
//! this process reads and throws away. `open` sends unique signed Kirim deliveries on a fixed
//! schedule (one every 1/rate s, whatever the answers) over a pool of keep-alive connections and
//! measures each latency from the request's scheduled time, so a stall shows up as latency and
//! not as fewer requests. `closed` sends as fast as N connections allow, one request in flight on
//! each. Every window prints answers, rate and latency; the end of each mode prints the targets of
//! issue 8 (section 1) with PASS or MISS, the daemon's CPU time per request and its peak RSS.
//!
//! It asserts nothing and changes nothing in the daemon; only setup errors make it exit non-zero.
//! All traffic goes to 127.0.0.1. The load generator shares the CPUs with the daemon, so its
//! figures only compare with other runs on the same machine. See `bench/README.md`.

#[path = "procfs.rs"]
mod procfs;

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Context as _};
use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::header::{HeaderName, HeaderValue, CONTENT_TYPE, HOST, USER_AGENT};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use procfs::cpu_secs;
use tokio::net::TcpStream;

use kirimhook::receive::signature::SigningSecret;

const SECRET_ID: &str = "sec_SUSTAINED0000000000000000000";
const SECRET_VALUE: &str = "whsec_c3VzdGFpbmVkLWJlbmNoLW9ubHktc2VjcmV0";
/// The daemon's default `server.path` (the config leaves it unset).
const PATH: &str = "/webhooks/kirim";
/// How long the daemon may take to log `listening`.
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// A request without an answer after this long is counted as failed and its connection replaced.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a (re)connection may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// kirim.dev gives up on a delivery after this long and counts a failure.
const KIRIM_GIVES_UP: Duration = Duration::from_secs(10);
/// Open loop: after the schedule ends, how long the queued and in-flight requests may take.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(60);
/// The span compared at the start and the end of a run for the throughput target.
const MINUTE: Duration = Duration::from_secs(60);
/// Targets of issue 8, section 1.
const TARGET_P99_MS: f64 = 50.0;
const TARGET_MAX_MS: f64 = 1000.0;
const OPEN_THROUGHPUT_TOLERANCE: f64 = 0.10;
const CLOSED_THROUGHPUT_TOLERANCE: f64 = 0.20;

fn main() -> anyhow::Result<()> {
    let settings = Settings::from_env()?;
    let runtime = tokio::runtime::Runtime::new().context("cannot start the tokio runtime")?;
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!(
        "kirimhook sustained bench{}: modes {}, {} s windows, daemon RUST_LOG={}, {cpus} CPU(s) \
         shared by the load generator and the daemon",
        if settings.smoke {
            " (smoke run: pass --bench or use cargo bench)"
        } else {
            ""
        },
        settings
            .modes
            .iter()
            .map(|m| m.name())
            .collect::<Vec<_>>()
            .join(" then "),
        settings.window.as_secs_f64(),
        settings.rust_log.as_deref().unwrap_or("(default)"),
    );
    for (run, &mode) in settings.modes.iter().enumerate() {
        let daemon = Daemon::start(settings.rust_log.as_deref())?;
        let signer = Arc::new(Signer::new(run as u64 + 1, daemon.addr)?);
        println!();
        let outcome = runtime.block_on(measure(mode, &settings, &daemon, signer))?;
        outcome.summarize(&settings, &daemon);
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Settings

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Open,
    Closed,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Open => "open",
            Mode::Closed => "closed",
        }
    }
}

struct Settings {
    modes: Vec<Mode>,
    /// Open loop: deliveries scheduled per second.
    rate: f64,
    /// Open loop: keep-alive connections the scheduled requests share.
    open_connections: usize,
    /// Closed loop: connections, one request in flight on each.
    closed_connections: usize,
    open_length: Duration,
    closed_length: Duration,
    window: Duration,
    /// `RUST_LOG` for the daemon; `None` keeps its default filter.
    rust_log: Option<String>,
    /// Not run by `cargo bench` (no `--bench` argument): a few seconds per mode, not judged.
    smoke: bool,
}

impl Settings {
    fn from_env() -> anyhow::Result<Settings> {
        let smoke = !std::env::args().any(|a| a == "--bench");
        let modes = match std::env::var("BENCH_MODE").as_deref() {
            Err(_) | Ok("both") => vec![Mode::Open, Mode::Closed],
            Ok("open") => vec![Mode::Open],
            Ok("closed") => vec![Mode::Closed],
            Ok(other) => bail!("BENCH_MODE={other:?}: expected open, closed or both"),
        };
        let (open_secs, closed_secs, window, rate) = if smoke {
            (4.0, 4.0, 2.0, 200.0)
        } else {
            (300.0, 180.0, 15.0, 2000.0)
        };
        let secs: Option<f64> = std::env::var("BENCH_SECS")
            .ok()
            .map(|_| env_parse("BENCH_SECS", 0.0))
            .transpose()?;
        let s = Settings {
            modes,
            rate: env_parse("BENCH_RATE", rate)?,
            open_connections: env_parse("BENCH_OPEN_CONNS", 64)?,
            closed_connections: env_parse("BENCH_CONNS", 32)?,
            open_length: seconds("BENCH_SECS", secs.unwrap_or(open_secs))?,
            closed_length: seconds("BENCH_SECS", secs.unwrap_or(closed_secs))?,
            window: seconds("BENCH_WINDOW_SECS", env_parse("BENCH_WINDOW_SECS", window)?)?,
            rust_log: std::env::var("BENCH_RUST_LOG").ok(),
            smoke,
        };
        if !(s.rate > 0.0 && s.rate <= 1_000_000.0) {
            bail!("BENCH_RATE must be in (0, 1000000]");
        }
        if !(1..=1000).contains(&s.open_connections) || !(1..=1000).contains(&s.closed_connections)
        {
            bail!("BENCH_OPEN_CONNS and BENCH_CONNS must be in 1..=1000 (the daemon allows 1024)");
        }
        if s.open_length < Duration::from_secs(1) || s.closed_length < Duration::from_secs(1) {
            bail!("BENCH_SECS must be at least 1");
        }
        if s.window < Duration::from_millis(100) {
            bail!("BENCH_WINDOW_SECS must be at least 0.1");
        }
        Ok(s)
    }

    fn length(&self, mode: Mode) -> Duration {
        match mode {
            Mode::Open => self.open_length,
            Mode::Closed => self.closed_length,
        }
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

fn seconds(name: &str, secs: f64) -> anyhow::Result<Duration> {
    Duration::try_from_secs_f64(secs).map_err(|_| anyhow!("{name}={secs} is not a duration"))
}

// ---------------------------------------------------------------------------------------------
// The daemon

/// `kirimhook serve` on a fresh store in a temporary directory. Its stdout (the event stream) and
/// stderr (the log) are read by threads so that it never blocks on them. Killed when dropped,
/// before the directory is removed.
struct Daemon {
    child: Child,
    pid: u32,
    addr: SocketAddr,
    log: Arc<LogWatch>,
    /// Lines the stdout sink wrote.
    streamed: Arc<AtomicU64>,
    _dir: tempfile::TempDir,
}

/// What the bench keeps from the daemon's JSON log.
#[derive(Default)]
struct LogWatch {
    /// When each `retention sweep` line arrived, with its `events` and `keys`.
    sweeps: Mutex<Vec<(Instant, u64, u64)>>,
    warn: AtomicU64,
    error: AtomicU64,
    /// The first WARN and ERROR lines, and the last lines (for a failed start).
    alerts: Mutex<Vec<String>>,
    tail: Mutex<Vec<String>>,
}

impl LogWatch {
    /// The sweeps logged in `range`, with their time since `origin`.
    fn sweeps_in(&self, origin: Instant, range: std::ops::Range<Instant>) -> String {
        let Ok(sweeps) = self.sweeps.lock() else {
            return String::new();
        };
        let text: Vec<String> = sweeps
            .iter()
            .filter(|(at, ..)| range.contains(at))
            .map(|(at, events, keys)| {
                let t = at.saturating_duration_since(origin).as_secs_f64();
                format!("at {t:.1} s: {events} events, {keys} keys")
            })
            .collect();
        text.join("; ")
    }

    fn read(&self, line: &str) -> Option<SocketAddr> {
        let value: serde_json::Value = serde_json::from_str(line).ok()?;
        let level = value.get("level").and_then(|l| l.as_str()).unwrap_or("");
        let counter = match level {
            "WARN" => Some(&self.warn),
            "ERROR" => Some(&self.error),
            _ => None,
        };
        if let Some(counter) = counter {
            if counter.fetch_add(1, Ordering::Relaxed) < 5 {
                if let Ok(mut alerts) = self.alerts.lock() {
                    alerts.push(line.to_owned());
                }
            }
        }
        let number = |key: &str| value.get(key).and_then(serde_json::Value::as_u64);
        match value.get("message")?.as_str()? {
            "retention sweep" => {
                if let Ok(mut sweeps) = self.sweeps.lock() {
                    let (events, keys) = (number("events")?, number("keys")?);
                    sweeps.push((Instant::now(), events, keys));
                }
                None
            }
            "listening" => value.get("addr")?.as_str()?.parse().ok(),
            _ => None,
        }
    }
}

impl Daemon {
    fn start(rust_log: Option<&str>) -> anyhow::Result<Daemon> {
        let dir = tempfile::tempdir().context("cannot create a temporary directory")?;
        let config = dir.path().join("kirimhook.toml");
        let store = serde_json::Value::String(dir.path().join("store").display().to_string());
        std::fs::write(
            &config,
            format!(
                "[server]\nlisten = \"127.0.0.1:0\"\n\n[[verify.secrets]]\nid = \"{SECRET_ID}\"\n\
                 value = \"{SECRET_VALUE}\"\n\n[store]\npath = {store}\n\n[admin]\n\
                 listen = \"127.0.0.1:0\"\n\n[[sinks]]\nname = \"stdout\"\nkind = \"stdout\"\n"
            ),
        )
        .context("cannot write the config")?;
        let exe = PathBuf::from(env!("CARGO_BIN_EXE_kirimhook"));
        let mut command = Command::new(&exe);
        match rust_log {
            Some(filter) => command.env("RUST_LOG", filter),
            None => command.env_remove("RUST_LOG"),
        };
        let mut child = command
            .args(["--log-format", "json", "serve", "--config"])
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("cannot start {}", exe.display()))?;
        let (stdout, stderr) = (child.stdout.take(), child.stderr.take());
        let mut daemon = Daemon {
            pid: child.id(),
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            log: Arc::new(LogWatch::default()),
            streamed: Arc::new(AtomicU64::new(0)),
            _dir: dir,
        };
        let (mut stdout, stderr) = stdout.zip(stderr).context("the daemon has no pipes")?;
        let streamed = daemon.streamed.clone();
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 64 * 1024];
            while let Ok(n @ 1..) = stdout.read(&mut buf) {
                let lines = buf[..n].iter().filter(|&&b| b == b'\n').count();
                streamed.fetch_add(lines as u64, Ordering::Relaxed);
            }
        });
        let (tx, rx) = mpsc::channel();
        let log = daemon.log.clone();
        // BENCH_DAEMON_LOG=FILE keeps the daemon's whole log (with BENCH_RUST_LOG, to see
        // what the storage engine did during a slow window).
        let mut keep = match std::env::var_os("BENCH_DAEMON_LOG") {
            Some(path) => Some(std::fs::File::create(&path).context("BENCH_DAEMON_LOG")?),
            None => None,
        };
        let started = Instant::now();
        std::thread::spawn(move || {
            let mut reader = BufReader::new(stderr);
            let mut buf = Vec::new();
            while let Ok(1..) = reader.read_until(b'\n', &mut buf) {
                let line = String::from_utf8_lossy(&buf).trim_end().to_owned();
                buf.clear();
                if let Some(file) = keep.as_mut() {
                    let at = started.elapsed().as_secs_f64();
                    if writeln!(file, "{at:9.3} {line}").is_err() {
                        keep = None;
                    }
                }
                if let Some(addr) = log.read(&line) {
                    let _ = tx.send(addr);
                }
                if let Ok(mut tail) = log.tail.lock() {
                    if tail.len() == 30 {
                        tail.remove(0);
                    }
                    tail.push(line);
                }
            }
        });
        let deadline = Instant::now() + START_TIMEOUT;
        daemon.addr = loop {
            if let Ok(addr) = rx.recv_timeout(Duration::from_millis(50)) {
                break addr;
            }
            let exited = daemon.child.try_wait().ok().flatten();
            if exited.is_some() || Instant::now() > deadline {
                std::thread::sleep(Duration::from_millis(100));
                let tail = daemon.log.tail.lock().map(|t| t.join("\n"));
                bail!(
                    "kirimhook did not log `listening` (exit status: {exited:?}; BENCH_RUST_LOG \
                     must keep kirimhook::app at info); its stderr:\n{}",
                    tail.unwrap_or_default()
                );
            }
        };
        Ok(daemon)
    }

    /// CPU seconds (user + system) the daemon has used so far.
    fn cpu_secs(&self) -> Option<f64> {
        procfs::pid_cpu_secs(self.pid)
    }

    /// The daemon's peak resident set (`VmHWM`), in KiB.
    fn peak_rss_kib(&self) -> Option<u64> {
        procfs::status_kib(self.pid, "VmHWM:")
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---------------------------------------------------------------------------------------------
// Deliveries

/// Builds unique signed deliveries shaped like fixture F5 (`conversation.assigned`), signed
/// when they are sent so that no timestamp goes stale in a long run.
struct Signer {
    secret: SigningSecret,
    run: u64,
    next: AtomicU64,
    host: HeaderValue,
}

impl Signer {
    fn new(run: u64, addr: SocketAddr) -> anyhow::Result<Signer> {
        Ok(Signer {
            secret: SigningSecret::new(SECRET_ID, SECRET_VALUE),
            run,
            next: AtomicU64::new(0),
            host: HeaderValue::try_from(addr.to_string()).context("an address is a Host")?,
        })
    }

    fn request(&self) -> Request<Full<Bytes>> {
        const SOURCE: HeaderName = HeaderName::from_static("x-kirim-source");
        const EVENT: HeaderName = HeaderName::from_static("x-kirim-event");
        const EVENT_ID: HeaderName = HeaderName::from_static("x-kirim-event-id");
        const DELIVERY_ID: HeaderName = HeaderName::from_static("x-kirim-delivery-id");
        const ATTEMPT: HeaderName = HeaderName::from_static("x-kirim-attempt");
        const SIGNATURE: HeaderName = HeaderName::from_static("x-kirim-signature");
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let id = |kind: u8| ulid(now.as_millis() as u64, kind, self.run, n);
        let event_id = format!("evt_{}", id(0));
        let body = format!(
            r#"{{"id":"{event_id}","type":"conversation.assigned","created_at":"2026-06-10T03:29:59Z","livemode":true,"data":{{"conversation":{{"id":"cnv_{}","object":"conversation","status":"open"}},"assignee":{{"user_id":"usr_T81RRMHBZ1YA9Y7189BN7AFEW3","team_id":"Xk3pQ9vL2mRt","previous_user_id":null}}}}}}"#,
            id(1)
        );
        let signature = self.secret.sign(now.as_secs() as i64, body.as_bytes());
        let mut request = Request::new(Full::new(Bytes::from(body)));
        *request.method_mut() = Method::POST;
        *request.uri_mut() = hyper::Uri::from_static(PATH);
        let ascii = |s: String| HeaderValue::try_from(s).expect("ids and signatures are ASCII");
        let h = request.headers_mut();
        h.insert(HOST, self.host.clone());
        h.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        h.insert(USER_AGENT, HeaderValue::from_static("Kirim-Webhook/1.0"));
        h.insert(SOURCE, HeaderValue::from_static("kirim"));
        h.insert(EVENT, HeaderValue::from_static("conversation.assigned"));
        h.insert(EVENT_ID, ascii(event_id));
        h.insert(DELIVERY_ID, ascii(format!("wbd_{}", id(2))));
        h.insert(ATTEMPT, HeaderValue::from_static("1"));
        h.insert(SIGNATURE, ascii(signature));
        request
    }
}

/// A ULID-shaped id (26 Crockford base32 characters): the time in ms, then bits unique to
/// (kind, run, n).
fn ulid(millis: u64, kind: u8, run: u64, n: u64) -> String {
    const ALPHABET: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";
    let value = (u128::from(millis & 0xFFFF_FFFF_FFFF) << 80)
        | (u128::from(kind) << 72)
        | (u128::from(run & 0xFF) << 64)
        | u128::from(n);
    (0..26)
        .rev()
        .map(|k| char::from(ALPHABET[((value >> (5 * k)) & 31) as usize]))
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Connections

type Sender = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

/// One keep-alive HTTP/1.1 connection, reopened after a transport error or a timeout.
struct Conn {
    addr: SocketAddr,
    sender: Option<Sender>,
}

/// A failed exchange: the text of the first one is printed.
struct Failure(String);

impl Conn {
    async fn open(addr: SocketAddr) -> anyhow::Result<Conn> {
        let mut conn = Conn { addr, sender: None };
        conn.ready().await.map_err(|Failure(e)| anyhow!(e))?;
        Ok(conn)
    }

    /// A sender ready for a request: the current one, or a new connection if it was closed.
    async fn ready(&mut self) -> Result<&mut Sender, Failure> {
        if let Some(sender) = &mut self.sender {
            if sender.ready().await.is_err() {
                self.sender = None;
            }
        }
        if self.sender.is_none() {
            let connect = async {
                let stream = TcpStream::connect(self.addr).await?;
                stream.set_nodelay(true)?;
                let (sender, connection) =
                    hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
                tokio::spawn(connection);
                anyhow::Ok(sender)
            };
            let sender = tokio::time::timeout(CONNECT_TIMEOUT, connect)
                .await
                .map_err(|_| Failure(format!("no connection to {} in 5 s", self.addr)))?
                .map_err(|e| Failure(format!("cannot connect to {}: {e:#}", self.addr)))?;
            self.sender = Some(sender);
        }
        self.sender
            .as_mut()
            .ok_or_else(|| Failure("no connection".into()))
    }

    /// Sends `request` and reads the whole answer. Only a 200 whose body says `accepted` or
    /// `quarantined` is a success; `Ok(false)` is a 200 `duplicate`.
    async fn exchange(&mut self, request: Request<Full<Bytes>>) -> Result<bool, Failure> {
        let sender = self.ready().await?;
        let answer = async {
            let response = sender.send_request(request).await?;
            let status = response.status();
            let body = response.into_body().collect().await?.to_bytes();
            Ok::<_, hyper::Error>((status, body))
        };
        let (status, body) = match tokio::time::timeout(REQUEST_TIMEOUT, answer).await {
            Ok(Ok(answer)) => answer,
            Ok(Err(e)) => {
                self.sender = None;
                return Err(Failure(format!("transport error: {e}")));
            }
            Err(_) => {
                self.sender = None;
                return Err(Failure(format!(
                    "no answer in {} s",
                    REQUEST_TIMEOUT.as_secs()
                )));
            }
        };
        let has = |word: &[u8]| body.windows(word.len()).any(|w| w == word);
        match status {
            StatusCode::OK if has(b"\"accepted\"") || has(b"\"quarantined\"") => Ok(true),
            StatusCode::OK if has(b"\"duplicate\"") => Ok(false),
            _ => Err(Failure(format!(
                "HTTP {status}: {}",
                String::from_utf8_lossy(&body)
                    .chars()
                    .take(200)
                    .collect::<String>()
            ))),
        }
    }
}

async fn open_all(addr: SocketAddr, n: usize) -> anyhow::Result<Vec<Conn>> {
    let mut conns = Vec::with_capacity(n);
    for _ in 0..n {
        conns.push(Conn::open(addr).await?);
    }
    Ok(conns)
}

// ---------------------------------------------------------------------------------------------
// Recording

/// Answers sorted into windows by the time they arrived; the last bucket holds those that came
/// after the run's end.
struct Recorder {
    start: Instant,
    window: Duration,
    length: Duration,
    tally: Mutex<Tally>,
}

#[derive(Default)]
struct Tally {
    buckets: Vec<Bucket>,
    /// 200 answers per second of the run.
    per_second: Vec<u64>,
    duplicates: u64,
    first_failure: Option<String>,
}

#[derive(Default)]
struct Bucket {
    /// Latency of every exchange that ended in the bucket (answered or failed), in µs.
    latencies_us: Vec<u32>,
    ok: u64,
    failed: u64,
    /// Exchanges that took longer than kirim.dev waits.
    over_10s: u64,
}

impl Recorder {
    fn new(start: Instant, window: Duration, length: Duration) -> Recorder {
        let windows = length.as_nanos().div_ceil(window.as_nanos()) as usize;
        let tally = Tally {
            buckets: (0..=windows).map(|_| Bucket::default()).collect(),
            per_second: vec![0; length.as_secs() as usize],
            ..Tally::default()
        };
        Recorder {
            start,
            window,
            length,
            tally: Mutex::new(tally),
        }
    }

    /// Records an exchange that began (open loop: was scheduled) at `since` and ends now. The
    /// time is read under the lock, so a window is complete once its end has passed.
    fn record(&self, since: Instant, result: Result<bool, Failure>) {
        let Ok(mut t) = self.tally.lock() else { return };
        let now = Instant::now();
        let offset = now.saturating_duration_since(self.start);
        let last = t.buckets.len() - 1;
        let index = if offset >= self.length {
            last
        } else {
            ((offset.as_nanos() / self.window.as_nanos()) as usize).min(last - 1)
        };
        let latency = now.saturating_duration_since(since);
        match result {
            Ok(unique) => {
                t.duplicates += u64::from(!unique);
                t.buckets[index].ok += 1;
                if let Some(count) = t.per_second.get_mut(offset.as_secs() as usize) {
                    *count += 1;
                }
            }
            Err(Failure(e)) => {
                t.buckets[index].failed += 1;
                t.first_failure.get_or_insert(e);
            }
        }
        let b = &mut t.buckets[index];
        b.over_10s += u64::from(latency > KIRIM_GIVES_UP);
        b.latencies_us
            .push(u32::try_from(latency.as_micros()).unwrap_or(u32::MAX));
    }

    fn take(&self, index: usize) -> Bucket {
        self.tally
            .lock()
            .map(|mut t| std::mem::take(&mut t.buckets[index]))
            .unwrap_or_default()
    }

    fn windows(&self) -> usize {
        self.tally.lock().map_or(0, |t| t.buckets.len() - 1)
    }
}

/// The printed figures of one window.
struct Figures {
    ok: u64,
    failed: u64,
    over_10s: u64,
    /// 200 answers per second (`None` after the end of the run, which has no span).
    rate: Option<f64>,
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
}

impl Figures {
    fn of(bucket: &mut Bucket, span: Option<Duration>) -> Figures {
        bucket.latencies_us.sort_unstable();
        let q = |p: f64| percentile_ms(&bucket.latencies_us, p);
        Figures {
            ok: bucket.ok,
            failed: bucket.failed,
            over_10s: bucket.over_10s,
            rate: span.map(|s| bucket.ok as f64 / s.as_secs_f64().max(1e-9)),
            p50_ms: q(0.50),
            p99_ms: q(0.99),
            max_ms: q(1.0),
        }
    }

    /// Nothing ended in the window: its latency figures are unknown, not 0.
    fn is_empty(&self) -> bool {
        self.ok + self.failed == 0
    }

    fn ms(&self, value: f64) -> String {
        if self.is_empty() {
            "-".into()
        } else {
            format!("{value:.2}")
        }
    }
}

/// Nearest-rank percentile of sorted microseconds, in milliseconds (0 when empty).
fn percentile_ms(sorted_us: &[u32], p: f64) -> f64 {
    if sorted_us.is_empty() {
        return 0.0;
    }
    let rank = ((p * sorted_us.len() as f64).ceil() as usize).clamp(1, sorted_us.len());
    f64::from(sorted_us[rank - 1]) / 1000.0
}

/// Prints each window as soon as it ends, with the daemon's CPU use in it and the sweeps the
/// daemon logged in it; returns the figures of all windows and all latencies.
async fn print_windows(
    recorder: Arc<Recorder>,
    log: Arc<LogWatch>,
    pid: u32,
) -> (Vec<Figures>, Vec<u32>) {
    println!(
        "window      span_s  answers   rate/s   p50_ms   p99_ms    max_ms  non200 over10s \
         srv_cpu%  sweep"
    );
    let stat = format!("/proc/{pid}/stat");
    let (start, window, length) = (recorder.start, recorder.window, recorder.length);
    let mut cpu_before = cpu_secs(&stat);
    let (mut figures, mut all) = (Vec::new(), Vec::new());
    for w in 0..recorder.windows() {
        let (from, to) = (window * w as u32, (window * (w as u32 + 1)).min(length));
        tokio::time::sleep_until((start + to).into()).await;
        let mut bucket = recorder.take(w);
        let f = Figures::of(&mut bucket, Some(to - from));
        all.extend_from_slice(&bucket.latencies_us);
        let cpu_now = cpu_secs(&stat);
        let cpu = cpu_before.zip(cpu_now).map_or("-".into(), |(a, b)| {
            format!("{:.0}", (b - a) * 100.0 / (to - from).as_secs_f64())
        });
        cpu_before = cpu_now;
        let span = format!("{:.0}-{:.0}", from.as_secs_f64(), to.as_secs_f64());
        let sweeps = log.sweeps_in(start, start + from..start + to);
        print_row(&(w + 1).to_string(), &span, &f, &cpu, &sweeps);
        figures.push(f);
    }
    (figures, all)
}

fn print_row(label: &str, span: &str, f: &Figures, cpu: &str, note: &str) {
    let row = format!(
        "{label:>6} {span:>11} {:>8} {:>8} {:>8} {:>8} {:>9} {:>7} {:>7} {cpu:>8}  {note}",
        f.ok,
        f.rate.map_or("-".into(), |r| format!("{r:.1}")),
        f.ms(f.p50_ms),
        f.ms(f.p99_ms),
        f.ms(f.max_ms),
        f.failed,
        f.over_10s,
    );
    println!("{}", row.trim_end());
}

// ---------------------------------------------------------------------------------------------
// The load

/// What one mode measured.
struct Outcome {
    mode: Mode,
    windows: Vec<Figures>,
    /// Every exchange's latency, in µs (after-the-end ones included).
    latencies_us: Vec<u32>,
    /// Answers after the end of the run (the open loop's backlog, the closed loop's last ones).
    after: Figures,
    /// Open loop: requests scheduled; closed loop: requests sent.
    sent: u64,
    per_second: Vec<u64>,
    duplicates: u64,
    first_failure: Option<String>,
    /// The daemon's CPU seconds over the load, and the bench process's.
    daemon_cpu: Option<f64>,
    bench_cpu: Option<f64>,
    started: Instant,
}

async fn measure(
    mode: Mode,
    s: &Settings,
    daemon: &Daemon,
    signer: Arc<Signer>,
) -> anyhow::Result<Outcome> {
    let length = s.length(mode);
    let conns = match mode {
        Mode::Open => s.open_connections,
        Mode::Closed => s.closed_connections,
    };
    match mode {
        Mode::Open => println!(
            "open loop: {} deliveries/s on schedule for {} s over {conns} keep-alive \
             connections; latency from the scheduled time",
            s.rate,
            length.as_secs_f64()
        ),
        Mode::Closed => println!(
            "closed loop: {conns} connections at full speed, one request in flight on each, for \
             {} s; latency from the send",
            length.as_secs_f64()
        ),
    }
    let pool = open_all(daemon.addr, conns)
        .await
        .context("cannot open the connections")?;
    let cpu = (daemon.cpu_secs(), cpu_secs("/proc/self/stat"));
    let started = Instant::now();
    let recorder = Arc::new(Recorder::new(started, s.window, length));
    let printer = tokio::spawn(print_windows(
        recorder.clone(),
        daemon.log.clone(),
        daemon.pid,
    ));
    let sent = match mode {
        Mode::Open => open_loop(pool, s.rate, &recorder, signer).await?,
        Mode::Closed => closed_loop(pool, &recorder, signer).await?,
    };
    let (windows, mut latencies_us) = printer.await.context("the printer panicked")?;
    let daemon_cpu = daemon.cpu_secs().zip(cpu.0).map(|(b, a)| b - a);
    let bench_cpu = cpu_secs("/proc/self/stat").zip(cpu.1).map(|(b, a)| b - a);
    let mut after = recorder.take(recorder.windows());
    latencies_us.extend_from_slice(&after.latencies_us);
    let after = Figures::of(&mut after, None);
    let mut tally = recorder
        .tally
        .lock()
        .map_err(|_| anyhow!("poisoned tally"))?;
    Ok(Outcome {
        mode,
        windows,
        latencies_us,
        after,
        sent,
        per_second: std::mem::take(&mut tally.per_second),
        duplicates: tally.duplicates,
        first_failure: tally.first_failure.take(),
        daemon_cpu,
        bench_cpu,
        started,
    })
}

/// Schedules one request every 1/rate s until the end of the run, whatever the answers; the
/// connections take them from a queue in order. Returns how many were scheduled.
async fn open_loop(
    pool: Vec<Conn>,
    rate: f64,
    recorder: &Arc<Recorder>,
    signer: Arc<Signer>,
) -> anyhow::Result<u64> {
    let (start, length) = (recorder.start, recorder.length);
    let deadline = start + length + DRAIN_TIMEOUT;
    let (queue, jobs) = tokio::sync::mpsc::unbounded_channel::<Instant>();
    let jobs = Arc::new(tokio::sync::Mutex::new(jobs));
    let mut workers = tokio::task::JoinSet::new();
    for mut conn in pool {
        let (jobs, recorder, signer) = (jobs.clone(), recorder.clone(), signer.clone());
        workers.spawn(async move {
            loop {
                let next = jobs.lock().await.recv().await;
                let Some(due) = next else { break };
                let result = conn.exchange(signer.request()).await;
                recorder.record(due, result);
            }
        });
    }
    let total = (rate * length.as_secs_f64()).round() as u64;
    let mut scheduled = 0u64;
    while scheduled < total {
        let due = start + Duration::from_secs_f64(scheduled as f64 / rate);
        if due > Instant::now() {
            tokio::time::sleep_until(due.into()).await;
        }
        // Everything due by now, so a late timer never thins out the schedule.
        let now = Instant::now();
        loop {
            let due = start + Duration::from_secs_f64(scheduled as f64 / rate);
            if scheduled >= total || due > now {
                break;
            }
            queue.send(due).context("the workers are gone")?;
            scheduled += 1;
        }
    }
    drop(queue);
    let drained = tokio::time::timeout_at(deadline.into(), async {
        while workers.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        workers.abort_all();
    }
    Ok(scheduled)
}

/// Every connection sends its next request as soon as the last one is answered, until the end
/// of the run. Returns how many were sent.
async fn closed_loop(
    pool: Vec<Conn>,
    recorder: &Arc<Recorder>,
    signer: Arc<Signer>,
) -> anyhow::Result<u64> {
    let end = recorder.start + recorder.length;
    let sent = Arc::new(AtomicU64::new(0));
    let mut workers = tokio::task::JoinSet::new();
    for mut conn in pool {
        let (recorder, signer, sent) = (recorder.clone(), signer.clone(), sent.clone());
        workers.spawn(async move {
            while Instant::now() < end {
                let request = signer.request();
                sent.fetch_add(1, Ordering::Relaxed);
                let began = Instant::now();
                let result = conn.exchange(request).await;
                recorder.record(began, result);
            }
        });
    }
    // An exchange ends within REQUEST_TIMEOUT (plus a reconnection); never wait longer.
    let deadline = end + REQUEST_TIMEOUT + CONNECT_TIMEOUT * 2;
    let finished = tokio::time::timeout_at(deadline.into(), async {
        while workers.join_next().await.is_some() {}
    })
    .await;
    if finished.is_err() {
        workers.abort_all();
    }
    Ok(sent.load(Ordering::Relaxed))
}

// ---------------------------------------------------------------------------------------------
// Summary

impl Outcome {
    fn summarize(mut self, s: &Settings, daemon: &Daemon) {
        let end = format!("{:.0}-", s.length(self.mode).as_secs_f64());
        print_row("after", &end, &self.after, "", "");
        let ok: u64 = self.windows.iter().map(|w| w.ok).sum::<u64>() + self.after.ok;
        let failed = self.windows.iter().map(|w| w.failed).sum::<u64>() + self.after.failed;
        self.latencies_us.sort_unstable();
        let q = |p: f64| percentile_ms(&self.latencies_us, p);
        println!(
            "\n{} summary: {} {}, {ok} answered 200, {failed} failed, {} never answered; all \
             exchanges p50 {:.2} p99 {:.2} p99.9 {:.2} max {:.2} ms",
            self.mode.name(),
            self.sent,
            if self.mode == Mode::Open {
                "scheduled"
            } else {
                "sent"
            },
            self.sent.saturating_sub(ok + failed),
            q(0.5),
            q(0.99),
            q(0.999),
            q(1.0)
        );
        self.print_targets(s);
        let per_request = |cpu: Option<f64>| match cpu {
            Some(c) if ok + failed > 0 => format!(
                "{c:.1} CPU s, {:.3} ms per request",
                c * 1000.0 / (ok + failed) as f64
            ),
            _ => "unknown".into(),
        };
        let rss = daemon.peak_rss_kib();
        println!(
            "  daemon: {}; peak RSS {}; stdout sink wrote {} lines",
            per_request(self.daemon_cpu),
            rss.map_or("unknown".into(), |k| format!(
                "{:.1} MiB",
                k as f64 / 1024.0
            )),
            daemon.streamed.load(Ordering::Relaxed)
        );
        println!("  load generator: {}", per_request(self.bench_cpu));
        let far = self.started + Duration::from_secs(86_400);
        let sweeps = daemon.log.sweeps_in(self.started, self.started..far);
        println!(
            "  retention sweeps logged: {}",
            if sweeps.is_empty() { "none" } else { &sweeps }
        );
        if self.duplicates > 0 {
            println!(
                "  note: {} unique deliveries were answered `duplicate`",
                self.duplicates
            );
        }
        if let Some(e) = &self.first_failure {
            println!("  note: first failure: {e}");
        }
        let warn = daemon.log.warn.load(Ordering::Relaxed);
        let error = daemon.log.error.load(Ordering::Relaxed);
        if warn + error > 0 {
            println!("  note: the daemon logged {error} ERROR and {warn} WARN line(s); the first:");
            for line in daemon
                .log
                .alerts
                .lock()
                .map(|a| a.clone())
                .unwrap_or_default()
            {
                println!("    {line}");
            }
        }
    }

    /// The targets of issue 8, section 1. A window in which nothing ended counts as a miss.
    fn print_targets(&self, s: &Settings) {
        let judge = |pass: bool| match (s.smoke, pass) {
            (true, _) => "not judged (smoke run)",
            (false, true) => "PASS",
            (false, false) => "MISS",
        };
        let w = &self.windows;
        for (what, limit, f) in [
            ("p99", TARGET_P99_MS, (|x| x.p99_ms) as fn(&Figures) -> f64),
            ("max", TARGET_MAX_MS, |x| x.max_ms),
        ] {
            let bad = w.iter().filter(|x| x.is_empty() || f(x) >= limit).count();
            let empty = w.iter().filter(|x| x.is_empty()).count();
            let worst = (0..w.len())
                .filter(|&i| !w[i].is_empty())
                .max_by(|&i, &j| f(&w[i]).total_cmp(&f(&w[j])))
                .map_or(String::new(), |i| {
                    format!("; worst {:.2} ms in window {}", f(&w[i]), i + 1)
                });
            println!(
                "  target: every window {what} < {limit} ms: {} ({bad} of {} windows over, {empty} \
                 with no answer at all{worst})",
                judge(bad == 0),
                w.len()
            );
        }
        let tolerance = match self.mode {
            Mode::Open => OPEN_THROUGHPUT_TOLERANCE,
            Mode::Closed => CLOSED_THROUGHPUT_TOLERANCE,
        };
        let minute = MINUTE.min(s.length(self.mode) / 2).as_secs() as usize;
        let secs = self.per_second.len();
        let first: u64 = self.per_second[..minute.min(secs)].iter().sum();
        let last: u64 = self.per_second[secs.saturating_sub(minute)..].iter().sum();
        let ratio = if first > 0 {
            last as f64 / first as f64
        } else {
            0.0
        };
        let per_sec = |n: u64| n as f64 / minute.max(1) as f64;
        println!(
            "  target: last {minute} s throughput within {:.0}% of the first {minute} s: {} \
             (first {:.1}/s, last {:.1}/s, ratio {ratio:.3})",
            tolerance * 100.0,
            judge(first > 0 && (ratio - 1.0).abs() <= tolerance),
            per_sec(first),
            per_sec(last),
        );
    }
}
