//! Runs the real `kirimhook serve` binary for one test: config and store in a temp dir, port 0,
//! stdout (the event stream) and stderr (JSON logs) collected line by line.
//!
//! Waiting is always "until a condition holds or the deadline passes", driven by the reader
//! threads' notifications; nothing here sleeps to synchronise. A [`Daemon`] is killed with
//! SIGKILL when dropped, so a failing test leaves no process behind.

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

use crate::fixtures::{SECRET_A, SECRET_B};
use crate::http::Client;

/// How long any wait may take before the test fails.
pub const DEADLINE: Duration = Duration::from_secs(20);

/// What the test config says, beyond the fixed parts (port 0, store in the dir).
#[derive(Debug, Clone)]
pub struct Settings {
    /// `verify.tolerance_secs`.
    pub tolerance_secs: u64,
    /// `server.max_body_bytes`; the daemon's default when `None`.
    pub max_body_bytes: Option<usize>,
    /// Whether secret A (`sec_A`) is configured.
    pub secret_a: bool,
    /// Whether secret B (`sec_B`) is configured after secret A (`sec_A`).
    pub secret_b: bool,
    /// Whether the config has the sink `stdout` of kind `stdout` (the event stream).
    pub stdout_sink: bool,
    /// TOML appended verbatim at the end of the config: more `[[sinks]]` tables.
    pub extra_sinks: String,
    /// Whether the admin listener runs (on `127.0.0.1:0`; see [`Daemon::admin_addr`]).
    pub admin: bool,
    /// `store.keep_delivered_hours`.
    pub keep_delivered_hours: u32,
    /// Lines added verbatim to the `[server]` table, such as `"request_timeout_secs = 1\n"`.
    pub extra_server: String,
    /// `[server.tls]`: the certificate and key files; plain HTTP when `None`.
    pub tls: Option<(PathBuf, PathBuf)>,
    /// Whether the daemon's stdout is closed at once (its consumer has gone); `stdout` then
    /// stays empty.
    pub stdout_closed: bool,
    /// `store.path`; `dir/store` when `None`.
    pub store_dir: Option<PathBuf>,
    /// Lines added verbatim to the `[store]` table, such as `"min_free_bytes = 0\n"`
    /// (embedded engine only).
    pub extra_store: String,
    /// The PostgreSQL engine instead of the embedded one: `engine`, `url`, `schema` and
    /// `lease_secs` of `[store]` (then `store_dir` and `extra_store` are not used).
    pub postgres: Option<PostgresStore>,
}

/// `[store]` on PostgreSQL.
#[derive(Debug, Clone)]
pub struct PostgresStore {
    /// `url`.
    pub url: String,
    /// `schema`.
    pub schema: String,
    /// `lease_secs`.
    pub lease_secs: u64,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            tolerance_secs: 300,
            max_body_bytes: None,
            secret_a: true,
            secret_b: true,
            stdout_sink: true,
            extra_sinks: String::new(),
            admin: true,
            keep_delivered_hours: 0,
            extra_server: String::new(),
            tls: None,
            stdout_closed: false,
            store_dir: None,
            // A test machine's /tmp may have less than the default watermark free; the tests
            // that are about the watermark set it themselves.
            extra_store: "min_free_bytes = 0\n".into(),
            postgres: None,
        }
    }
}

impl Settings {
    /// The config file text for a daemon whose files live in `dir`.
    pub fn config_toml(&self, dir: &Path) -> String {
        let mut text = String::from("[server]\nlisten = \"127.0.0.1:0\"\npath = \"/webhooks/kirim\"\nshutdown_timeout_secs = 5\n");
        if let Some(max) = self.max_body_bytes {
            text.push_str(&format!("max_body_bytes = {max}\n"));
        }
        text.push_str(&self.extra_server);
        if let Some((cert, key)) = &self.tls {
            text.push_str(&format!(
                "\n[server.tls]\ncert_file = {}\nkey_file = {}\n",
                toml_string(cert),
                toml_string(key)
            ));
        }
        text.push_str(&format!(
            "\n[verify]\ntolerance_secs = {}\n",
            self.tolerance_secs
        ));
        if self.secret_a {
            text.push_str(&format!(
                "\n[[verify.secrets]]\nid = \"sec_A\"\nvalue = \"{SECRET_A}\"\n"
            ));
        }
        if self.secret_b {
            text.push_str(&format!(
                "\n[[verify.secrets]]\nid = \"sec_B\"\nvalue = \"{SECRET_B}\"\n"
            ));
        }
        match &self.postgres {
            Some(pg) => text.push_str(&format!(
                "\n[store]\nengine = \"postgres\"\nurl = \"{}\"\nschema = \"{}\"\nlease_secs = {}\nkeep_delivered_hours = {}\n",
                pg.url, pg.schema, pg.lease_secs, self.keep_delivered_hours,
            )),
            None => text.push_str(&format!(
                "\n[store]\npath = {}\nkeep_delivered_hours = {}\n{}",
                toml_string(&self.store_dir.clone().unwrap_or_else(|| store_path(dir))),
                self.keep_delivered_hours,
                self.extra_store
            )),
        }
        text.push_str(&format!(
            "\n[admin]\nenabled = {}\nlisten = \"127.0.0.1:0\"\n",
            self.admin
        ));
        if self.stdout_sink {
            text.push_str("\n[[sinks]]\nname = \"stdout\"\nkind = \"stdout\"\n");
        }
        if !self.extra_sinks.is_empty() {
            text.push('\n');
            text.push_str(&self.extra_sinks);
        }
        text
    }
}

/// The store directory of a daemon whose files live in `dir`.
pub fn store_path(dir: &Path) -> PathBuf {
    dir.join("store")
}

/// A path as a TOML basic string.
fn toml_string(path: &Path) -> String {
    let text = path.to_str().expect("temp paths are UTF-8");
    format!("\"{}\"", text.replace('\\', "\\\\").replace('"', "\\\""))
}

/// The lines a child process writes to one of its pipes, as they arrive.
#[derive(Clone, Default)]
pub struct Lines {
    inner: Arc<LinesInner>,
}

#[derive(Default)]
struct LinesInner {
    state: Mutex<LinesState>,
    changed: Notify,
}

#[derive(Default)]
struct LinesState {
    lines: Vec<String>,
    closed: bool,
}

impl Lines {
    /// Starts a thread that reads `pipe` until EOF.
    pub fn collect(pipe: impl Read + Send + 'static, name: &str) -> Lines {
        let lines = Lines::default();
        let writer = lines.clone();
        std::thread::Builder::new()
            .name(format!("e2e-{name}"))
            .spawn(move || {
                let mut reader = BufReader::new(pipe);
                let mut buf = Vec::new();
                loop {
                    buf.clear();
                    match reader.read_until(b'\n', &mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(_) => {
                            if buf.last() == Some(&b'\n') {
                                buf.pop();
                            }
                            let line = String::from_utf8(buf.clone()).unwrap_or_else(|_| {
                                format!("<not UTF-8> {}", String::from_utf8_lossy(&buf))
                            });
                            writer.update(|state| state.lines.push(line));
                        }
                    }
                }
                writer.update(|state| state.closed = true);
            })
            .expect("spawn reader thread");
        lines
    }

    fn update(&self, change: impl FnOnce(&mut LinesState)) {
        change(&mut self.inner.state.lock().expect("lines lock"));
        self.inner.changed.notify_waiters();
    }

    /// Every line so far.
    pub fn lines(&self) -> Vec<String> {
        self.inner.state.lock().expect("lines lock").lines.clone()
    }

    /// Waits until `check` returns `Some` for the lines so far (it also sees whether the pipe
    /// is closed), or returns `None` at the deadline.
    pub async fn wait_for<T>(
        &self,
        mut check: impl FnMut(&[String], bool) -> Option<T>,
    ) -> Option<T> {
        let deadline = Instant::now() + DEADLINE;
        loop {
            let changed = self.inner.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            {
                let state = self.inner.state.lock().expect("lines lock");
                if let Some(found) = check(&state.lines, state.closed) {
                    return Some(found);
                }
            }
            if tokio::time::timeout_at(deadline, changed).await.is_err() {
                return None;
            }
        }
    }

    /// Waits until the pipe is closed.
    pub async fn wait_closed(&self) {
        let closed = self.wait_for(|_, closed| closed.then_some(())).await;
        assert!(
            closed.is_some(),
            "the daemon's pipe was still open after {DEADLINE:?}"
        );
    }
}

/// One line of the event stream, parsed.
#[derive(Debug, Clone)]
pub struct Event {
    /// The line as written.
    pub raw: String,
    /// The line as JSON.
    pub json: serde_json::Value,
}

impl Event {
    /// Parses a stdout line; panics when it is not a JSON object.
    pub fn parse(line: &str) -> Event {
        let json: serde_json::Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("stdout carried a line that is not JSON ({e}): {line}"));
        assert!(json.is_object(), "stdout carried a JSON non-object: {line}");
        Event {
            raw: line.to_owned(),
            json,
        }
    }

    /// A top-level string field.
    pub fn str(&self, key: &str) -> Option<&str> {
        self.json.get(key).and_then(|v| v.as_str())
    }

    /// The `event_id` field.
    pub fn event_id(&self) -> Option<&str> {
        self.str("event_id")
    }

    /// The `keys` field as strings.
    pub fn keys(&self) -> Vec<String> {
        self.json["keys"]
            .as_array()
            .unwrap_or_else(|| panic!("event line without a keys array: {}", self.raw))
            .iter()
            .map(|k| k.as_str().expect("keys are strings").to_owned())
            .collect()
    }

    /// The raw bytes of the embedded `body`: everything after the first `,"body":` up to the
    /// final `}` of the line.
    pub fn body_bytes(&self) -> &[u8] {
        let start = self
            .raw
            .find(",\"body\":")
            .unwrap_or_else(|| panic!("event line without a body field: {}", self.raw))
            + ",\"body\":".len();
        let rest = &self.raw[start..];
        let rest = rest
            .strip_suffix('}')
            .unwrap_or_else(|| panic!("event line does not end with }}: {}", self.raw));
        rest.as_bytes()
    }
}

/// A running `kirimhook serve`.
pub struct Daemon {
    child: Child,
    exited: Option<ExitStatus>,
    /// Where it listens.
    pub addr: SocketAddr,
    /// Where its admin listener listens (`None` when [`Settings::admin`] is off).
    pub admin_addr: Option<SocketAddr>,
    /// Its stdout: the event stream.
    pub stdout: Lines,
    /// Its stderr: JSON log lines.
    pub stderr: Lines,
    dir: PathBuf,
}

impl Daemon {
    /// Writes the config for `settings` into `dir` (store in `dir/store`), starts the daemon and
    /// waits for its "listening" log line. Starting again on the same `dir` reuses the store.
    pub async fn start(dir: &Path, settings: &Settings) -> Daemon {
        let config = dir.join("kirimhook.toml");
        std::fs::write(&config, settings.config_toml(dir)).expect("write the config");
        let mut child = Command::new(env!("CARGO_BIN_EXE_kirimhook"))
            .arg("serve")
            .arg("--config")
            .arg(&config)
            .args(["--log-format", "json"])
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn kirimhook serve");
        let stdout = child.stdout.take().expect("stdout piped");
        let stdout = if settings.stdout_closed {
            drop(stdout);
            Lines::collect(std::io::empty(), "stdout")
        } else {
            Lines::collect(stdout, "stdout")
        };
        let stderr = Lines::collect(child.stderr.take().expect("stderr piped"), "stderr");
        let listening = stderr
            .wait_for(|lines, closed| {
                let addr = lines.iter().find_map(|line| listening_addr(line));
                match addr {
                    Some(addr) => Some(Ok(addr)),
                    None if closed => Some(Err(())),
                    None => None,
                }
            })
            .await;
        let mut daemon = Daemon {
            child,
            exited: None,
            addr: "0.0.0.0:0".parse().expect("an address"),
            admin_addr: None,
            stdout,
            stderr,
            dir: dir.to_owned(),
        };
        match listening {
            Some(Ok(addr)) => {
                daemon.addr = addr;
                // Logged before "listening", so it is there by now when the listener runs.
                daemon.admin_addr = daemon
                    .stderr
                    .lines()
                    .iter()
                    .find_map(|line| logged_addr(line, "admin listening"));
            }
            Some(Err(())) => panic!(
                "kirimhook serve exited before listening; stderr:\n{}",
                daemon.stderr_text()
            ),
            None => panic!(
                "kirimhook serve logged no \"listening\" line within {DEADLINE:?}; stderr:\n{}",
                daemon.stderr_text()
            ),
        }
        daemon
    }

    /// Starts the daemon again on the same directory and store, with `settings`.
    pub async fn restart(&self, settings: &Settings) -> Daemon {
        assert!(
            self.exited.is_some(),
            "restart() needs the daemon stopped first"
        );
        Daemon::start(&self.dir, settings).await
    }

    /// Rewrites the daemon's config file for `settings` (takes effect on SIGHUP).
    pub fn rewrite_config(&self, settings: &Settings) {
        std::fs::write(
            self.dir.join("kirimhook.toml"),
            settings.config_toml(&self.dir),
        )
        .expect("rewrite the config");
    }

    /// Sends the daemon a signal (`"HUP"`, `"TERM"`, ...).
    pub fn signal(&self, name: &str) {
        send_signal(self.child.id(), name);
    }

    /// A new HTTP client for this daemon.
    pub fn client(&self) -> Client {
        Client::new(self.addr)
    }

    /// The daemon's store directory (open it with `Store::open` once the daemon has exited).
    pub fn store_path(&self) -> PathBuf {
        store_path(&self.dir)
    }

    /// Every stderr line, for assertion messages.
    pub fn stderr_text(&self) -> String {
        self.stderr.lines().join("\n")
    }

    /// Every stdout line, parsed as events.
    pub fn events(&self) -> Vec<Event> {
        self.stdout
            .lines()
            .iter()
            .map(|l| Event::parse(l))
            .collect()
    }

    /// The event ids of every stdout line so far.
    pub fn event_ids(&self) -> Vec<String> {
        self.events()
            .iter()
            .map(|e| e.event_id().unwrap_or("<no event_id>").to_owned())
            .collect()
    }

    /// Waits until stdout has a line for `event_id` and returns it.
    pub async fn wait_for_event(&self, event_id: &str) -> Event {
        let found = self
            .stdout
            .wait_for(|lines, _| {
                lines
                    .iter()
                    .map(|l| Event::parse(l))
                    .find(|e| e.event_id() == Some(event_id))
            })
            .await;
        found.unwrap_or_else(|| {
            panic!(
                "event {event_id} did not appear on stdout within {DEADLINE:?}; stdout:\n{}\nstderr:\n{}",
                self.stdout.lines().join("\n"),
                self.stderr_text()
            )
        })
    }

    /// SIGTERM, then waits for the process to exit and its pipes to close; asserts exit code 0.
    pub async fn stop_gracefully(&mut self) {
        self.signal("TERM");
        let status = wait_for_exit(&mut self.child, || self.stderr.lines().join("\n")).await;
        self.exited = Some(status);
        self.stdout.wait_closed().await;
        self.stderr.wait_closed().await;
        assert_eq!(
            status.code(),
            Some(0),
            "the daemon should exit 0 after SIGTERM, got {status}; stderr:\n{}",
            self.stderr_text()
        );
    }

    /// Waits for the daemon to exit by itself and its pipes to close; returns how it exited.
    pub async fn wait_exit(&mut self) -> ExitStatus {
        let status = wait_for_exit(&mut self.child, || self.stderr.lines().join("\n")).await;
        self.exited = Some(status);
        self.stdout.wait_closed().await;
        self.stderr.wait_closed().await;
        status
    }

    /// SIGKILL, then waits for the process to be gone and its pipes to close.
    pub async fn kill9(&mut self) {
        self.child.kill().expect("SIGKILL the daemon");
        let status = self.child.wait().expect("wait for the killed daemon");
        self.exited = Some(status);
        self.stdout.wait_closed().await;
        self.stderr.wait_closed().await;
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if self.exited.is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The `addr` of the daemon's `listening` log line, if `line` is that line.
fn listening_addr(line: &str) -> Option<SocketAddr> {
    logged_addr(line, "listening")
}

/// The `addr` of a JSON log line whose message is `message`, if `line` is that line.
fn logged_addr(line: &str, message: &str) -> Option<SocketAddr> {
    let json: serde_json::Value = serde_json::from_str(line).ok()?;
    if json.get("message")?.as_str()? != message {
        return None;
    }
    json.get("addr")?.as_str()?.parse().ok()
}

/// Sends process `pid` the signal `name` (`"HUP"`, `"TERM"`, ...) with `kill`.
pub fn send_signal(pid: u32, name: &str) {
    let pid = pid.to_string();
    let sent = Command::new("kill")
        .args([&format!("-{name}"), pid.as_str()])
        .status()
        .expect("run kill");
    assert!(sent.success(), "kill -{name} {pid} failed");
}

/// Waits (at most [`DEADLINE`]) for `child` to exit; `stderr` gives the log for the failure
/// message.
pub async fn wait_for_exit(child: &mut Child, stderr: impl Fn() -> String) -> ExitStatus {
    let deadline = Instant::now() + DEADLINE;
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return status;
        }
        assert!(
            Instant::now() < deadline,
            "the daemon did not exit within {DEADLINE:?}; stderr:\n{}",
            stderr()
        );
        // Process exit has no async notification here; poll it briefly.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A temp dir for one test's config and store.
pub fn temp_dir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("kirimhook-e2e-")
        .tempdir()
        .expect("create a temp dir")
}
