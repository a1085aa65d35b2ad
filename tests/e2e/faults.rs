//! What happens on each fault the operator cannot prevent: stderr's reader goes away, stdout's
//! consumer goes away. Each test plays the fault for real (a pipe the test closes) and asserts
//! what the user sees: answers, exit code, and the event stream after a restart.

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::os::fd::OwnedFd;
use std::process::{Command, Stdio};

use crate::daemon::{listening_addr, temp_dir, wait_for_exit, Daemon, Lines, Settings, DEADLINE};
use crate::fixtures::{kirim_event, new_event_id};
use crate::http::Client;

/// Moves stdin (a listening socket) to fd 3 and becomes the daemon with socket activation, so
/// the test knows the address without reading stderr. `$0` is the binary, `$1` the config.
const ACTIVATE: &str = "exec 3<&0 0</dev/null
export LISTEN_PID=$$ LISTEN_FDS=1
exec \"$0\" serve --config \"$1\" --log-format json";

/// stderr is a pipe whose reader exits after one line: the daemon still serves, streams what
/// it accepts, and stops with exit 0 on SIGTERM.
#[tokio::test]
async fn a_closed_stderr_neither_stops_nor_kills_the_daemon() {
    let dir = temp_dir();
    let settings = Settings {
        admin: false,
        ..Settings::default()
    };
    let config = dir.path().join("kirimhook.toml");
    std::fs::write(&config, settings.config_toml(dir.path())).expect("write the config");
    let passed = TcpListener::bind("127.0.0.1:0").expect("bind the passed socket");
    let addr = passed.local_addr().expect("local address");
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(ACTIVATE)
        .arg(env!("CARGO_BIN_EXE_kirimhook"))
        .arg(&config)
        .env("RUST_LOG", "debug")
        .env_remove("NOTIFY_SOCKET")
        .stdin(Stdio::from(OwnedFd::from(passed)))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn kirimhook serve");
    let stdout = Lines::collect(child.stdout.take().expect("stdout piped"), "stdout");
    {
        // Read one log line, then close the pipe: every later log write fails with EPIPE.
        let mut stderr = BufReader::new(child.stderr.take().expect("stderr piped"));
        let mut first = String::new();
        stderr
            .read_line(&mut first)
            .expect("read the first log line");
        assert!(!first.is_empty(), "the daemon wrote no log line");
    }

    let mut client = Client::new(addr);
    let mut sent = Vec::new();
    for _ in 0..3 {
        let event_id = new_event_id();
        client.send(&kirim_event(&event_id)).await.expect(
            200,
            serde_json::json!({"status": "accepted"}),
            "a delivery after stderr closed",
        );
        sent.push(event_id);
    }
    let streamed = stdout
        .wait_for(|lines, _| {
            sent.iter()
                .all(|id| lines.iter().any(|l| l.contains(id.as_str())))
                .then_some(())
        })
        .await;
    assert!(
        streamed.is_some(),
        "accepted events should be streamed; stdout:\n{}",
        stdout.lines().join("\n")
    );

    crate::daemon::send_signal(child.id(), "TERM");
    let status = wait_for_exit(&mut child, || "(stderr was closed by the test)".into()).await;
    assert_eq!(status.code(), Some(0), "exit after SIGTERM: {status}");
}

/// stdout's consumer exits: the daemon stops taking deliveries, says so once, and exits
/// non-zero; nothing accepted is dead-lettered, and a restart with a reader streams it all.
#[tokio::test]
async fn a_gone_stdout_consumer_stops_the_daemon_and_loses_nothing() {
    let dir = temp_dir();
    let settings = Settings::default();
    let config = dir.path().join("kirimhook.toml");
    std::fs::write(&config, settings.config_toml(dir.path())).expect("write the config");
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
    // The consumer is gone before the first event.
    drop(child.stdout.take());
    let stderr = Lines::collect(child.stderr.take().expect("stderr piped"), "stderr");
    let addr = stderr
        .wait_for(|lines, closed| {
            lines
                .iter()
                .find_map(|l| listening_addr(l))
                .map(Some)
                .or(closed.then_some(None))
        })
        .await
        .flatten()
        .unwrap_or_else(|| panic!("no listening line; stderr:\n{}", stderr.lines().join("\n")));

    let mut accepted = Vec::new();
    let mut refused = 0;
    for _ in 0..3 {
        let event_id = new_event_id();
        // After the fault a delivery is refused: 503, or no connection once the daemon exited.
        match tokio::time::timeout(DEADLINE, try_send(addr, &event_id)).await {
            Ok(Some(200)) => accepted.push(event_id),
            Ok(Some(503) | None) => refused += 1,
            Ok(Some(other)) => panic!("unexpected answer {other} after stdout closed"),
            Err(_) => panic!("a delivery got no answer within {DEADLINE:?}"),
        }
    }
    assert!(
        !accepted.is_empty(),
        "the first delivery is stored before the fault shows"
    );

    let status = wait_for_exit(&mut child, || stderr.lines().join("\n")).await;
    stderr.wait_closed().await;
    let log = stderr.lines().join("\n");
    assert_ne!(status.code(), Some(0), "must exit non-zero; stderr:\n{log}");
    assert!(
        status.code().is_some(),
        "exited, not killed by a signal: {status}"
    );
    assert!(log.contains("stdout consumer has gone"), "stderr:\n{log}");
    assert!(
        !log.contains("dead letter"),
        "nothing is dead-lettered; stderr:\n{log}"
    );
    eprintln!("accepted {}, refused {refused}", accepted.len());

    let daemon = Daemon::start(dir.path(), &settings).await;
    for event_id in &accepted {
        daemon.wait_for_event(event_id).await;
    }
}

/// Sends one new event on a fresh connection: its status, or `None` when no connection or
/// answer could be had (the daemon is exiting).
async fn try_send(addr: std::net::SocketAddr, event_id: &str) -> Option<u16> {
    let delivery = kirim_event(event_id);
    let stream = tokio::net::TcpStream::connect(addr).await.ok()?;
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .ok()?;
    tokio::spawn(connection);
    let mut request = hyper::Request::builder()
        .method(hyper::Method::POST)
        .uri(crate::fixtures::PATH);
    for (name, value) in &delivery.headers {
        request = request.header(name.as_str(), value.as_str());
    }
    let request = request
        .body(http_body_util::Full::new(bytes::Bytes::from(delivery.body)))
        .ok()?;
    let response = sender.send_request(request).await.ok()?;
    Some(response.status().as_u16())
}
