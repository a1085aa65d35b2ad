//! systemd integration: readiness and liveness notifications (the `sd_notify` datagram
//! protocol) and socket activation (a listening socket inherited as fd 3).
//!
//! Every part is a no-op outside systemd: without `NOTIFY_SOCKET` nothing is sent, without
//! `WATCHDOG_USEC` there is no watchdog, and unless `LISTEN_PID` names this process no socket
//! is taken over. Reading the environment is pure ([`NotifyTarget::parse`],
//! [`watchdog_period`], [`activated_fd_count`] take the values as arguments) and tested beside
//! it; the I/O is one datagram per notification and, at start-up, one inherited socket. This
//! module does not decide when the daemon is ready (`app` does), does not reload anything itself and
//! knows nothing about HTTP.
//!
//! Notifications are a few lines over std's `UnixDatagram` rather than the `sd-notify` crate,
//! which cannot reach an abstract (`@name`) `NOTIFY_SOCKET`. The inherited socket comes through
//! the `listenfd` crate, because turning a raw fd into a `TcpListener` needs `unsafe`, which
//! this crate forbids.

use std::fmt::Write as _;
use std::io;
use std::net::TcpListener;
use std::os::unix::net::{SocketAddr as UnixAddr, UnixDatagram};
use std::time::Duration;

/// A variable of the service manager's environment that is set but unusable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{var}={value:?}: {reason}")]
pub struct EnvError {
    /// The variable, such as `LISTEN_FDS`.
    pub var: &'static str,
    /// Its value as found (these variables never carry secrets).
    pub value: String,
    /// What is wrong with it.
    pub reason: &'static str,
}

fn invalid(var: &'static str, value: &str, reason: &'static str) -> EnvError {
    EnvError {
        var,
        value: value.to_owned(),
        reason,
    }
}

// ---------------------------------------------------------------------------------------------
// sd_notify

/// One state change told to the service manager (see `sd_notify(3)`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State<'a> {
    /// `READY=1`: start-up is finished; the listener accepts connections.
    Ready,
    /// `STOPPING=1`: a graceful shutdown has begun.
    Stopping,
    /// `RELOADING=1`: a configuration reload has begun (followed by `READY=1`).
    Reloading,
    /// `WATCHDOG=1`: still alive.
    Watchdog,
    /// `STATUS=...`: one line for `systemctl status`.
    Status(&'a str),
}

/// The datagram that carries `states`: one `KEY=VALUE` line each. Line breaks inside a status
/// become spaces, so a status cannot forge another assignment.
pub fn message(states: &[State<'_>]) -> String {
    let mut text = String::new();
    for state in states {
        match state {
            State::Ready => text.push_str("READY=1\n"),
            State::Stopping => text.push_str("STOPPING=1\n"),
            State::Reloading => text.push_str("RELOADING=1\n"),
            State::Watchdog => text.push_str("WATCHDOG=1\n"),
            State::Status(status) => {
                let status = status.replace(['\n', '\r'], " ");
                let _ = writeln!(text, "STATUS={status}");
            }
        }
    }
    text
}

/// Where notifications go: the address in `NOTIFY_SOCKET`.
#[derive(Debug, Clone)]
pub struct NotifyTarget(UnixAddr);

impl NotifyTarget {
    /// Parses `NOTIFY_SOCKET`: an absolute path, or `@name` for a Linux abstract socket.
    /// `Ok(None)` when unset or empty (not started by systemd, or not `Type=notify`).
    pub fn parse(value: Option<&str>) -> Result<Option<NotifyTarget>, EnvError> {
        const VAR: &str = "NOTIFY_SOCKET";
        let Some(value) = value.filter(|v| !v.is_empty()) else {
            return Ok(None);
        };
        let addr = if let Some(name) = value.strip_prefix('@') {
            abstract_addr(name.as_bytes())
                .map_err(|_| invalid(VAR, value, "abstract socket name too long"))?
        } else if value.starts_with('/') {
            UnixAddr::from_pathname(value).map_err(|_| invalid(VAR, value, "path too long"))?
        } else {
            return Err(invalid(
                VAR,
                value,
                "only an absolute path or an @abstract name is supported",
            ));
        };
        Ok(Some(NotifyTarget(addr)))
    }

    /// The address, for tests and logs.
    pub fn addr(&self) -> &UnixAddr {
        &self.0
    }
}

#[cfg(target_os = "linux")]
fn abstract_addr(name: &[u8]) -> io::Result<UnixAddr> {
    use std::os::linux::net::SocketAddrExt as _;
    UnixAddr::from_abstract_name(name)
}

#[cfg(not(target_os = "linux"))]
fn abstract_addr(_name: &[u8]) -> io::Result<UnixAddr> {
    Err(io::Error::new(
        io::ErrorKind::Unsupported,
        "abstract sockets exist on Linux only",
    ))
}

/// Sends state changes to the service manager; does nothing when `NOTIFY_SOCKET` is unset.
///
/// Each notification opens a fresh unbound datagram socket and sends one datagram, as
/// `sd_notify(3)` does, so nothing is held open between notifications.
#[derive(Debug, Clone)]
pub struct Notifier {
    target: Option<NotifyTarget>,
}

impl Notifier {
    /// Reads `NOTIFY_SOCKET`. An unusable value is logged and notifications are disabled.
    pub fn from_env() -> Notifier {
        let value = std::env::var("NOTIFY_SOCKET").ok();
        match NotifyTarget::parse(value.as_deref()) {
            Ok(target) => Notifier { target },
            Err(e) => {
                tracing::error!(error = %e, "cannot notify the service manager");
                Notifier::disabled()
            }
        }
    }

    /// A notifier that sends nothing.
    pub fn disabled() -> Notifier {
        Notifier { target: None }
    }

    /// A notifier that sends to `target`.
    pub fn to(target: NotifyTarget) -> Notifier {
        Notifier {
            target: Some(target),
        }
    }

    /// Whether notifications are sent at all.
    pub fn is_enabled(&self) -> bool {
        self.target.is_some()
    }

    /// Sends `states` in one datagram. `Ok` without sending when disabled.
    pub fn notify(&self, states: &[State<'_>]) -> io::Result<()> {
        let Some(target) = &self.target else {
            return Ok(());
        };
        let text = message(states);
        let sent = UnixDatagram::unbound()?.send_to_addr(text.as_bytes(), &target.0)?;
        if sent == text.len() {
            Ok(())
        } else {
            Err(io::Error::new(
                io::ErrorKind::WriteZero,
                "notification truncated",
            ))
        }
    }

    /// Like [`Notifier::notify`], logging a failure instead of returning it: a service manager
    /// that cannot be told is not a reason to stop receiving webhooks.
    pub fn notify_or_log(&self, states: &[State<'_>]) {
        if let Err(e) = self.notify(states) {
            tracing::warn!(error = %e, message = %message(states).trim_end(), "cannot notify the service manager");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Watchdog

/// How often to send `WATCHDOG=1`: half of `WATCHDOG_USEC`, as `sd_watchdog_enabled(3)`
/// advises. `Ok(None)` when there is no watchdog, or when `WATCHDOG_PID` names another process.
pub fn watchdog_period(
    own_pid: u32,
    watchdog_usec: Option<&str>,
    watchdog_pid: Option<&str>,
) -> Result<Option<Duration>, EnvError> {
    let Some(usec) = watchdog_usec.filter(|v| !v.is_empty()) else {
        return Ok(None);
    };
    let usec: u64 = usec
        .parse()
        .ok()
        .filter(|&usec| usec > 0)
        .ok_or_else(|| invalid("WATCHDOG_USEC", usec, "not a positive number"))?;
    if let Some(pid) = watchdog_pid.filter(|v| !v.is_empty()) {
        let pid: u32 = pid
            .parse()
            .map_err(|_| invalid("WATCHDOG_PID", pid, "not a process id"))?;
        if pid != own_pid {
            return Ok(None);
        }
    }
    Ok(Some(
        Duration::from_micros(usec / 2).max(Duration::from_millis(1)),
    ))
}

/// Reads `WATCHDOG_USEC` and `WATCHDOG_PID`; an unusable value is logged and means no watchdog.
pub fn watchdog_from_env() -> Option<Duration> {
    let usec = std::env::var("WATCHDOG_USEC").ok();
    let pid = std::env::var("WATCHDOG_PID").ok();
    watchdog_period(std::process::id(), usec.as_deref(), pid.as_deref()).unwrap_or_else(|e| {
        tracing::error!(error = %e, "watchdog disabled");
        None
    })
}

/// Sends `WATCHDOG=1` every `period`, starting at once, until the task is aborted.
pub async fn feed_watchdog(notifier: Notifier, period: Duration) {
    let mut every = tokio::time::interval(period);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        notifier.notify_or_log(&[State::Watchdog]);
    }
}

// ---------------------------------------------------------------------------------------------
// Socket activation

/// How many sockets the service manager passed to this process (from fd 3 on), following
/// `sd_listen_fds(3)`: 0 unless `LISTEN_PID` is set to `own_pid` and `LISTEN_FDS` is set.
pub fn activated_fd_count(
    own_pid: u32,
    listen_pid: Option<&str>,
    listen_fds: Option<&str>,
) -> Result<usize, EnvError> {
    let Some(pid) = listen_pid.filter(|v| !v.is_empty()) else {
        return Ok(0);
    };
    let pid: u32 = pid
        .parse()
        .map_err(|_| invalid("LISTEN_PID", pid, "not a process id"))?;
    if pid != own_pid {
        return Ok(0);
    }
    let Some(fds) = listen_fds.filter(|v| !v.is_empty()) else {
        return Ok(0);
    };
    fds.parse()
        .map_err(|_| invalid("LISTEN_FDS", fds, "not a number of file descriptors"))
}

/// Takes over the listening TCP socket the service manager passed as fd 3, if any.
///
/// Call it before any other thread exists: the `listenfd` crate that turns the fd into a
/// `TcpListener` (checking that it is a TCP socket, and marking it close-on-exec) also removes
/// `LISTEN_PID` and `LISTEN_FDS` from the environment, which is only sound single-threaded.
/// With more than one passed socket, the first is served and the others are left alone (logged).
/// The listener is returned blocking; [`into_tokio`] makes it non-blocking.
pub fn take_activated_listener() -> anyhow::Result<Option<TcpListener>> {
    use anyhow::Context as _;
    let pid = std::env::var("LISTEN_PID").ok();
    let fds = std::env::var("LISTEN_FDS").ok();
    let count = activated_fd_count(std::process::id(), pid.as_deref(), fds.as_deref())?;
    if count == 0 {
        return Ok(None);
    }
    if count > 1 {
        tracing::warn!(
            passed = count,
            "socket activation passed more than one socket; serving only the first (fd 3)"
        );
    }
    let listener = listenfd::ListenFd::from_env()
        .take_tcp_listener(0)
        .context(
            "socket activation: fd 3 is not a TCP listening socket (use ListenStream=ADDRESS:PORT)",
        )?
        .context("socket activation: LISTEN_FDS is set but no fd 3 was found")?;
    Ok(Some(listener))
}

/// Hands an inherited listener to tokio, switching it to non-blocking mode first.
pub fn into_tokio(listener: TcpListener) -> io::Result<tokio::net::TcpListener> {
    listener.set_nonblocking(true)?;
    tokio::net::TcpListener::from_std(listener)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_lines() {
        assert_eq!(message(&[State::Ready]), "READY=1\n");
        assert_eq!(
            message(&[State::Stopping, State::Status("draining")]),
            "STOPPING=1\nSTATUS=draining\n"
        );
        assert_eq!(message(&[State::Watchdog]), "WATCHDOG=1\n");
        // A status cannot smuggle in another assignment.
        assert_eq!(
            message(&[State::Status("a\nREADY=1\r")]),
            "STATUS=a READY=1 \n"
        );
        assert_eq!(message(&[]), "");
    }

    #[test]
    fn notify_socket_forms() {
        assert!(NotifyTarget::parse(None).unwrap().is_none());
        assert!(NotifyTarget::parse(Some("")).unwrap().is_none());

        let path = NotifyTarget::parse(Some("/run/systemd/notify"))
            .unwrap()
            .unwrap();
        assert_eq!(
            path.addr().as_pathname(),
            Some(std::path::Path::new("/run/systemd/notify"))
        );

        #[cfg(target_os = "linux")]
        {
            use std::os::linux::net::SocketAddrExt as _;
            let named = NotifyTarget::parse(Some("@sd-notify/42")).unwrap().unwrap();
            assert_eq!(named.addr().as_abstract_name(), Some(&b"sd-notify/42"[..]));
            assert_eq!(named.addr().as_pathname(), None);
        }

        for bad in ["run/notify", "vsock:2:1234", " /run/notify"] {
            let err = NotifyTarget::parse(Some(bad)).unwrap_err();
            assert_eq!(err.var, "NOTIFY_SOCKET");
            assert!(err.to_string().contains("absolute path"), "{err}");
        }
        let long = format!("/{}", "x".repeat(200));
        let err = NotifyTarget::parse(Some(&long)).unwrap_err();
        assert_eq!(err.reason, "path too long");
    }

    #[test]
    fn disabled_notifier_sends_nothing() {
        let notifier = Notifier::disabled();
        assert!(!notifier.is_enabled());
        notifier.notify(&[State::Ready]).unwrap();
    }

    #[test]
    fn notifier_sends_one_datagram_to_a_path_and_an_abstract_name() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify.sock");
        let manager = UnixDatagram::bind(&path).unwrap();
        let target = NotifyTarget::parse(Some(path.to_str().unwrap()))
            .unwrap()
            .unwrap();
        let notifier = Notifier::to(target);
        notifier
            .notify(&[State::Ready, State::Status("listening on 127.0.0.1:1")])
            .unwrap();
        let mut buf = [0u8; 256];
        let n = manager.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1\nSTATUS=listening on 127.0.0.1:1\n");

        #[cfg(target_os = "linux")]
        {
            let name = format!(
                "kirimhook-test-{}-{}",
                std::process::id(),
                fastrand::u64(..)
            );
            let manager =
                UnixDatagram::bind_addr(&abstract_addr(name.as_bytes()).unwrap()).unwrap();
            let target = NotifyTarget::parse(Some(&format!("@{name}")))
                .unwrap()
                .unwrap();
            Notifier::to(target).notify(&[State::Stopping]).unwrap();
            let n = manager.recv(&mut buf).unwrap();
            assert_eq!(&buf[..n], b"STOPPING=1\n");
        }

        // Nobody listening: an error, which notify_or_log only logs.
        drop(manager);
        std::fs::remove_file(&path).unwrap();
        assert!(notifier.notify(&[State::Watchdog]).is_err());
        notifier.notify_or_log(&[State::Watchdog]);
    }

    #[test]
    fn watchdog_period_is_half_the_timeout() {
        assert_eq!(watchdog_period(7, None, None), Ok(None));
        assert_eq!(watchdog_period(7, Some(""), None), Ok(None));
        assert_eq!(
            watchdog_period(7, Some("30000000"), None),
            Ok(Some(Duration::from_secs(15)))
        );
        assert_eq!(
            watchdog_period(7, Some("30000000"), Some("7")),
            Ok(Some(Duration::from_secs(15)))
        );
        // Meant for another process (a parent that exec'd us without clearing it).
        assert_eq!(watchdog_period(7, Some("30000000"), Some("8")), Ok(None));
        // Never a zero period, which would spin.
        assert_eq!(
            watchdog_period(7, Some("1"), None),
            Ok(Some(Duration::from_millis(1)))
        );
        for bad in ["0", "-1", "30s", " 1"] {
            let err = watchdog_period(7, Some(bad), None).unwrap_err();
            assert_eq!(err.var, "WATCHDOG_USEC", "{bad}");
        }
        let err = watchdog_period(7, Some("1000"), Some("me")).unwrap_err();
        assert_eq!(err.var, "WATCHDOG_PID");
    }

    #[test]
    fn activated_fds_only_for_this_process() {
        assert_eq!(activated_fd_count(42, None, None), Ok(0));
        assert_eq!(activated_fd_count(42, None, Some("1")), Ok(0));
        assert_eq!(activated_fd_count(42, Some(""), Some("1")), Ok(0));
        assert_eq!(activated_fd_count(42, Some("41"), Some("1")), Ok(0));
        assert_eq!(activated_fd_count(42, Some("42"), None), Ok(0));
        assert_eq!(activated_fd_count(42, Some("42"), Some("0")), Ok(0));
        assert_eq!(activated_fd_count(42, Some("42"), Some("1")), Ok(1));
        assert_eq!(activated_fd_count(42, Some("42"), Some("2")), Ok(2));

        let err = activated_fd_count(42, Some("x"), Some("1")).unwrap_err();
        assert_eq!(err.var, "LISTEN_PID");
        let err = activated_fd_count(42, Some("42"), Some("-1")).unwrap_err();
        assert_eq!(err.var, "LISTEN_FDS");
        assert_eq!(
            err.to_string(),
            "LISTEN_FDS=\"-1\": not a number of file descriptors"
        );
    }
}
