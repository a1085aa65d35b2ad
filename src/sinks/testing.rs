//! Test support for the broker sinks: a broker of the test's own, started from the broker's
//! server binary with settings the shared test brokers do not have (TLS with a private CA, a
//! password), on a free local port, and stopped when the test ends.
//!
//! The skip rule is the one of the shared brokers: a server binary that is not installed is a
//! printed `skipped: ...` and a pass, unless `KIRIMHOOK_REQUIRE_SERVICES=1`, which makes it a
//! failure.

#![allow(clippy::unwrap_used)]

use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long a private broker may take to listen.
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// The path of the server binary `name` (looked up on `PATH`, then in `/usr/sbin`), or `None`
/// after printing that `test` was skipped.
pub fn server_binary(test: &str, name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let found = std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/usr/local/sbin")])
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file());
    if found.is_none() {
        if std::env::var("KIRIMHOOK_REQUIRE_SERVICES").as_deref() == Ok("1") {
            panic!(
                "{test}: `{name}` is not installed, and KIRIMHOOK_REQUIRE_SERVICES=1 requires it"
            );
        }
        eprintln!("skipped: {test}: `{name}` is not installed");
    }
    found
}

/// A self-signed certificate for `localhost` and `127.0.0.1` (its own CA), written as
/// `cert.pem` and `key.pem` in `dir`.
pub struct TestCert {
    /// The certificate, PEM; also the CA file a client trusts.
    pub cert: PathBuf,
    /// The private key, PEM.
    pub key: PathBuf,
}

impl TestCert {
    /// Generates the pair into `dir`.
    pub fn generate(dir: &Path) -> TestCert {
        let generated = rcgen::generate_simple_self_signed(vec![
            "localhost".to_owned(),
            "127.0.0.1".to_owned(),
        ])
        .unwrap();
        let cert = dir.join("cert.pem");
        let key = dir.join("key.pem");
        std::fs::write(&cert, generated.cert.pem()).unwrap();
        std::fs::write(&key, generated.signing_key.serialize_pem()).unwrap();
        TestCert { cert, key }
    }
}

/// A broker process of one test; killed (and its directory removed) when dropped.
pub struct PrivateServer {
    child: Child,
    /// Its working directory (certificates, data, log), removed after the process ends.
    _dir: tempfile::TempDir,
}

impl PrivateServer {
    /// A free local port: bound, then released for the server to take.
    pub fn free_port() -> u16 {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        listener.local_addr().unwrap().port()
    }

    /// Starts `binary` with `args` (its port among them, chosen by the caller from
    /// [`PrivateServer::free_port`]) in `dir`, and waits until `port` accepts connections.
    /// The server's output goes to `server.log` in `dir`, quoted if it does not start.
    pub fn start(binary: &Path, args: &[String], port: u16, dir: tempfile::TempDir) -> Self {
        let log_path = dir.path().join("server.log");
        let log = std::fs::File::create(&log_path).unwrap();
        let child = Command::new(binary)
            .args(args)
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", binary.display()));
        let mut server = PrivateServer { child, _dir: dir };
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        let started = Instant::now();
        let output = || std::fs::read_to_string(&log_path).unwrap_or_default();
        while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
            if let Ok(Some(status)) = server.child.try_wait() {
                panic!(
                    "{} exited at start: {status}\n{}",
                    binary.display(),
                    output()
                );
            }
            assert!(
                started.elapsed() < START_TIMEOUT,
                "{} does not listen on {addr} after {START_TIMEOUT:?}\n{}",
                binary.display(),
                output()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        server
    }
}

impl Drop for PrivateServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A TLS endpoint with a [`TestCert`] in front of a shared plain-TCP broker: it accepts TLS
/// on a local port and passes the decrypted bytes to `upstream` and back. It lets a test speak
/// TLS with a private CA to a broker that has no TLS listener. Stops when dropped.
pub struct TlsFront {
    /// The port it accepts TLS on.
    pub port: u16,
    task: tokio::task::JoinHandle<()>,
}

impl TlsFront {
    /// Starts accepting for `upstream` with `cert` as the server certificate.
    pub async fn start(cert: &TestCert, upstream: SocketAddr) -> TlsFront {
        let mut config = crate::tls::server_config(&crate::tls::TlsConfig {
            cert_file: cert.cert.clone(),
            key_file: cert.key.clone(),
        })
        .unwrap();
        config.alpn_protocols.clear();
        let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(config));
        let listener = tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .await
            .unwrap();
        let port = listener.local_addr().unwrap().port();
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let Ok(mut client) = acceptor.accept(client).await else {
                        return;
                    };
                    let Ok(mut server) = tokio::net::TcpStream::connect(upstream).await else {
                        return;
                    };
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                });
            }
        });
        TlsFront { port, task }
    }
}

impl Drop for TlsFront {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Asserts that `failure` (of a sink that cannot connect, because of `what`) delivered
/// nothing, counts as unreachable (no attempt counted), and shows none of `secrets`.
pub fn assert_refused_quietly(failure: &crate::sinks::Failure, what: &str, secrets: &[&str]) {
    assert_eq!(failure.delivered, 0, "{what}: {failure:?}");
    assert!(
        matches!(failure.error, crate::sinks::SinkError::Unreachable { .. }),
        "{what}: {failure:?}"
    );
    let text = format!("{failure:?} {}", failure.error);
    for secret in secrets {
        assert!(!text.contains(secret), "{what}: shows a secret: {text}");
    }
}
