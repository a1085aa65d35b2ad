//! Running under systemd, played by the test: a Unix datagram socket standing in for
//! `NOTIFY_SOCKET` (READY=1 only once connections are accepted, STOPPING=1 on SIGTERM,
//! WATCHDOG=1 when asked), and a listening socket passed as fd 3 with `LISTEN_FDS=1` and
//! `LISTEN_PID` (socket activation).
//!
//! These daemons need an environment and, for socket activation, an extra fd, so they are
//! spawned here rather than with [`Daemon`](crate::daemon::Daemon); their stdout and stderr go
//! to files in the test's temp dir. Passing fd 3 needs no `unsafe`: the listener becomes the
//! child's stdin (`Stdio` from an `OwnedFd`; the dup onto fd 0 clears close-on-exec), and a
//! `sh` moves it to fd 3 and then `exec`s the daemon, so `LISTEN_PID=$$` is the daemon's pid.

use std::fs::File;
use std::net::{SocketAddr, TcpListener};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use tokio::net::UnixDatagram;
use tokio::time::Instant;

use crate::daemon::{temp_dir, Settings, DEADLINE};
use crate::fixtures::sentinel;
use crate::http::{self, Client};

/// The variables of the service manager protocol. Those a test does not set are removed from
/// the child's environment, so that a test runner that itself runs under systemd cannot leak
/// its own into the tests.
const MANAGER_VARS: &[&str] = &[
    "NOTIFY_SOCKET",
    "LISTEN_PID",
    "LISTEN_FDS",
    "LISTEN_FDNAMES",
    "WATCHDOG_USEC",
    "WATCHDOG_PID",
];

/// Moves stdin to fd 3, then becomes the daemon with the socket-activation variables naming
/// its own pid (`exec` keeps the pid). `$0` is the binary, `$1` the config file. Also how
/// `faults` runs a daemon whose address it knows without reading its stderr.
pub const ACTIVATE: &str = "exec 3<&0 0</dev/null
export LISTEN_PID=$$ LISTEN_FDS=1
exec \"$0\" serve --config \"$1\" --log-format json";

/// A daemon started by a test playing systemd.
struct Managed {
    child: Child,
    exited: Option<ExitStatus>,
    dir: PathBuf,
}

impl Managed {
    /// Starts `command` (a `kirimhook serve`, possibly through `sh`) with stdout and stderr
    /// going to files in `dir`.
    fn spawn(dir: &Path, mut command: Command) -> Managed {
        let set: Vec<_> = command
            .get_envs()
            .map(|(name, _)| name.to_owned())
            .collect();
        for var in MANAGER_VARS {
            if !set.iter().any(|name| name == var) {
                command.env_remove(var);
            }
        }
        let stdout = File::create(dir.join("stdout")).expect("create the stdout file");
        let stderr = File::create(dir.join("stderr")).expect("create the stderr file");
        let child = command
            .env("RUST_LOG", "info")
            .stdout(stdout)
            .stderr(stderr)
            .spawn()
            .expect("spawn the daemon");
        Managed {
            child,
            exited: None,
            dir: dir.to_owned(),
        }
    }

    fn stdout(&self) -> String {
        std::fs::read_to_string(self.dir.join("stdout")).unwrap_or_default()
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(self.dir.join("stderr")).unwrap_or_default()
    }

    /// The fields of the daemon's "listening" log line, once it is there.
    fn listening_line(&self) -> Option<serde_json::Value> {
        self.stderr()
            .lines()
            .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
            .find(|json| json["message"] == "listening")
    }

    /// Waits for the next notification and returns its `KEY=VALUE` lines. Fails at the
    /// deadline, or as soon as the daemon has exited without sending one.
    async fn next_notification(&mut self, manager: &UnixDatagram) -> Vec<String> {
        let deadline = Instant::now() + DEADLINE;
        let mut buf = vec![0u8; 4096];
        loop {
            // Process exit has no async notification here: look at it between short waits.
            let wait = Instant::now() + Duration::from_millis(100);
            match tokio::time::timeout_at(wait.min(deadline), manager.recv(&mut buf)).await {
                Ok(Ok(n)) => return lines_of(&buf[..n]),
                Ok(Err(e)) => panic!("reading the notify socket failed: {e}"),
                Err(_) => {}
            }
            if self.exited.is_none() {
                self.exited = self.child.try_wait().expect("try_wait");
            }
            if let Some(status) = self.exited {
                // Whatever it sent before exiting is queued by now.
                if let Ok(n) = manager.try_recv(&mut buf) {
                    return lines_of(&buf[..n]);
                }
                panic!(
                    "the daemon exited ({status}) without notifying; stderr:\n{}",
                    self.stderr()
                );
            }
            assert!(
                Instant::now() < deadline,
                "no notification within {DEADLINE:?}; stderr:\n{}",
                self.stderr()
            );
        }
    }

    /// Waits for a notification that holds `line` and returns all of its lines; fails on any
    /// other notification except watchdog pings.
    async fn wait_for_notification(&mut self, manager: &UnixDatagram, line: &str) -> Vec<String> {
        loop {
            let lines = self.next_notification(manager).await;
            if lines.iter().any(|l| l == line) {
                return lines;
            }
            assert_eq!(
                lines,
                ["WATCHDOG=1"],
                "expected {line} (or a watchdog ping); stderr:\n{}",
                self.stderr()
            );
        }
    }

    /// Waits until a stderr line has `message`; fails at the deadline or when the daemon exits.
    async fn wait_for_log(&mut self, message: &str) {
        let deadline = Instant::now() + DEADLINE;
        let logged = |text: String| {
            text.lines()
                .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
                .any(|json| json["message"] == message)
        };
        while !logged(self.stderr()) {
            if self.exited.is_none() {
                self.exited = self.child.try_wait().expect("try_wait");
            }
            if let Some(status) = self.exited {
                panic!(
                    "the daemon exited ({status}) before logging {message:?}; stderr:\n{}",
                    self.stderr()
                );
            }
            assert!(
                Instant::now() < deadline,
                "no log line {message:?} within {DEADLINE:?}; stderr:\n{}",
                self.stderr()
            );
            // The log is a plain file: poll it briefly.
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn signal(&self, name: &str) {
        crate::daemon::send_signal(self.child.id(), name);
    }

    fn terminate(&self) {
        self.signal("TERM");
    }

    /// Waits for the process to exit and asserts exit code 0.
    async fn wait_exit_0(&mut self) {
        let dir = self.dir.clone();
        let stderr = move || std::fs::read_to_string(dir.join("stderr")).unwrap_or_default();
        let status = crate::daemon::wait_for_exit(&mut self.child, stderr).await;
        self.exited = Some(status);
        assert_eq!(
            status.code(),
            Some(0),
            "expected exit 0, got {status}; stderr:\n{}",
            self.stderr()
        );
    }
}

impl Drop for Managed {
    fn drop(&mut self) {
        if self.exited.is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The `KEY=VALUE` lines of one notification.
fn lines_of(datagram: &[u8]) -> Vec<String> {
    String::from_utf8_lossy(datagram)
        .lines()
        .map(str::to_owned)
        .collect()
}

/// Writes the usual test config, listening on `listen`, and returns its path.
fn write_config(dir: &Path, listen: &str) -> PathBuf {
    let text = Settings::default().config_toml(dir);
    let text = text.replacen(
        "listen = \"127.0.0.1:0\"",
        &format!("listen = \"{listen}\""),
        1,
    );
    assert!(text.contains(listen), "the config template changed: {text}");
    let path = dir.join("kirimhook.toml");
    std::fs::write(&path, text).expect("write the config");
    path
}

/// A bound socket playing systemd's notification socket.
fn notify_socket(dir: &Path) -> (UnixDatagram, PathBuf) {
    let path = dir.join("notify.sock");
    let socket = UnixDatagram::bind(&path).expect("bind the notify socket");
    (socket, path)
}

/// `kirimhook serve` on `config`, told to notify `notify`.
fn serve(config: &Path, notify: &Path) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_kirimhook"));
    command
        .arg("serve")
        .arg("--config")
        .arg(config)
        .args(["--log-format", "json"])
        .env("NOTIFY_SOCKET", notify)
        .stdin(Stdio::null());
    command
}

/// The address in the `STATUS=listening on ADDR` line of a READY notification.
fn status_addr(lines: &[String]) -> SocketAddr {
    lines
        .iter()
        .find_map(|l| l.strip_prefix("STATUS=listening on "))
        .unwrap_or_else(|| panic!("READY=1 came without the listening address: {lines:?}"))
        .parse()
        .expect("a socket address")
}

#[tokio::test]
async fn ready_only_when_accepting_and_stopping_on_sigterm() {
    let dir = temp_dir();
    let (manager, notify) = notify_socket(dir.path());
    let config = write_config(dir.path(), "127.0.0.1:0");
    let mut daemon = Managed::spawn(dir.path(), serve(&config, &notify));

    let ready = daemon.wait_for_notification(&manager, "READY=1").await;
    let addr = status_addr(&ready);
    // At READY=1 the listener already accepts: connect at once, no retry.
    let (status, answer) = http::raw(
        addr,
        b"GET / HTTP/1.1\r\nHost: kirimhook\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status, 404, "GET / right after READY=1: {answer}");
    let listening = daemon
        .listening_line()
        .expect("the listening line is logged before READY=1");
    assert_eq!(listening["addr"], addr.to_string());
    assert_eq!(listening["listener"], "server.listen");

    daemon.terminate();
    let stopping = daemon.wait_for_notification(&manager, "STOPPING=1").await;
    assert!(
        !stopping.iter().any(|l| l == "READY=1"),
        "STOPPING=1 came with READY=1: {stopping:?}"
    );
    daemon.wait_exit_0().await;
}

/// `systemctl reload` (SIGHUP) re-reads the config between `RELOADING=1` and `READY=1`, and
/// the receiver keeps serving throughout.
#[tokio::test]
async fn sighup_reloads_between_reloading_and_ready() {
    let dir = temp_dir();
    let (manager, notify) = notify_socket(dir.path());
    let config = write_config(dir.path(), "127.0.0.1:0");
    let mut daemon = Managed::spawn(dir.path(), serve(&config, &notify));
    let addr = status_addr(&daemon.wait_for_notification(&manager, "READY=1").await);

    daemon.signal("HUP");
    daemon.wait_for_notification(&manager, "RELOADING=1").await;
    daemon.wait_for_notification(&manager, "READY=1").await;
    daemon.wait_for_log("configuration reloaded").await;
    let delivery = sentinel();
    let reply = Client::new(addr).send(&delivery).await;
    reply.expect(
        200,
        serde_json::json!({"status": "accepted"}),
        "a delivery after SIGHUP",
    );
    daemon.terminate();
    daemon.wait_exit_0().await;
    assert!(
        daemon.stdout().contains(delivery.event_id()),
        "the event accepted after SIGHUP should be on stdout; stdout:\n{}",
        daemon.stdout()
    );
}

#[tokio::test]
async fn watchdog_pings_when_asked() {
    let dir = temp_dir();
    let (manager, notify) = notify_socket(dir.path());
    let config = write_config(dir.path(), "127.0.0.1:0");
    let mut command = serve(&config, &notify);
    // 200 ms: a ping every 100 ms.
    command.env("WATCHDOG_USEC", "200000");
    let mut daemon = Managed::spawn(dir.path(), command);

    daemon.wait_for_notification(&manager, "READY=1").await;
    for _ in 0..3 {
        let lines = daemon.next_notification(&manager).await;
        assert_eq!(lines, ["WATCHDOG=1"], "after READY=1, only watchdog pings");
    }
    daemon.terminate();
    daemon.wait_for_notification(&manager, "STOPPING=1").await;
    daemon.wait_exit_0().await;
}

#[tokio::test]
async fn serves_on_the_socket_passed_as_fd_3() {
    let dir = temp_dir();
    let (manager, notify) = notify_socket(dir.path());
    let passed = TcpListener::bind("127.0.0.1:0").expect("bind the passed socket");
    let addr = passed.local_addr().expect("local address");
    // server.listen names a port this test holds: had the daemon tried to bind it, it would
    // have failed to start instead of getting ready.
    let occupied = TcpListener::bind("127.0.0.1:0").expect("bind the occupied port");
    let config = write_config(
        dir.path(),
        &occupied.local_addr().expect("local address").to_string(),
    );

    let mut command = Command::new("sh");
    command
        .arg("-c")
        .arg(ACTIVATE)
        .arg(env!("CARGO_BIN_EXE_kirimhook"))
        .arg(&config)
        .env("NOTIFY_SOCKET", &notify)
        .stdin(Stdio::from(OwnedFd::from(passed)));
    // Spawning consumes the command, closing our copy of the socket: only the daemon's remains.
    let mut daemon = Managed::spawn(dir.path(), command);

    let ready = daemon.wait_for_notification(&manager, "READY=1").await;
    assert_eq!(status_addr(&ready), addr, "serving on the passed socket");
    let listening = daemon.listening_line().expect("the listening line");
    assert_eq!(listening["listener"], "systemd", "{listening}");
    assert_eq!(listening["addr"], addr.to_string());

    let delivery = sentinel();
    let event_id = delivery.event_id().to_owned();
    let reply = Client::new(addr).send(&delivery).await;
    reply.expect(
        200,
        serde_json::json!({"status": "accepted"}),
        "a signed delivery on the passed socket",
    );

    daemon.terminate();
    daemon.wait_for_notification(&manager, "STOPPING=1").await;
    daemon.wait_exit_0().await;
    assert!(
        daemon.stdout().contains(&event_id),
        "the accepted event should be on stdout; stdout:\n{}",
        daemon.stdout()
    );
    drop(occupied);
}

#[tokio::test]
async fn a_socket_meant_for_another_process_is_left_alone() {
    let dir = temp_dir();
    let (manager, notify) = notify_socket(dir.path());
    let config = write_config(dir.path(), "127.0.0.1:0");
    let passed = TcpListener::bind("127.0.0.1:0").expect("bind the passed socket");
    // LISTEN_PID names the shell's parent, as if a wrapper had forgotten to update it.
    let script = ACTIVATE.replace("LISTEN_PID=$$", "LISTEN_PID=$PPID");
    assert_ne!(script, ACTIVATE);
    let mut command = Command::new("sh");
    command
        .arg("-c")
        .arg(script)
        .arg(env!("CARGO_BIN_EXE_kirimhook"))
        .arg(&config)
        .env("NOTIFY_SOCKET", &notify)
        .stdin(Stdio::from(OwnedFd::from(passed)));
    let mut daemon = Managed::spawn(dir.path(), command);

    daemon.wait_for_notification(&manager, "READY=1").await;
    let listening = daemon.listening_line().expect("the listening line");
    assert_eq!(listening["listener"], "server.listen", "{listening}");
    daemon.terminate();
    daemon.wait_exit_0().await;
}
