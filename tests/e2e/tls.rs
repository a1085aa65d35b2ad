//! `[server.tls]`: with a self-signed certificate generated in the test, the daemon serves
//! HTTPS. A client that trusts that certificate gets its signed deliveries accepted and
//! streamed; plain HTTP on the TLS port gets no HTTP answer and reaches nothing; and a client
//! that never finishes its handshake cannot keep the only connection slot.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::client::conn::http1::SendRequest;
use hyper::Request;
use hyper_util::rt::TokioIo;
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::daemon::{temp_dir, Daemon, Settings, DEADLINE};
use crate::fixtures::{sentinel, Delivery, PATH};
use crate::http::Reply;

/// A self-signed certificate for `localhost` and `127.0.0.1`, written to `dir`.
struct TestCert {
    cert_file: PathBuf,
    key_file: PathBuf,
    der: CertificateDer<'static>,
}

impl TestCert {
    fn generate(dir: &Path) -> TestCert {
        let generated = rcgen::generate_simple_self_signed(vec![
            "localhost".to_owned(),
            "127.0.0.1".to_owned(),
        ])
        .expect("generate a test certificate");
        let cert_file = dir.join("cert.pem");
        let key_file = dir.join("key.pem");
        std::fs::write(&cert_file, generated.cert.pem()).expect("write cert.pem");
        std::fs::write(&key_file, generated.signing_key.serialize_pem()).expect("write key.pem");
        TestCert {
            cert_file,
            key_file,
            der: generated.cert.der().clone(),
        }
    }

    fn settings(&self) -> Settings {
        Settings {
            tls: Some((self.cert_file.clone(), self.key_file.clone())),
            ..Settings::default()
        }
    }

    /// A TLS client that trusts this certificate only and offers `h2` and `http/1.1`.
    fn connector(&self) -> TlsConnector {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.der.clone()).expect("a usable root");
        let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("default TLS versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        TlsConnector::from(Arc::new(config))
    }
}

/// One HTTPS connection to the daemon, with what the handshake showed.
struct HttpsConnection {
    sender: SendRequest<Full<Bytes>>,
    /// The certificate the daemon presented.
    presented: CertificateDer<'static>,
    /// The negotiated ALPN protocol.
    alpn: Option<Vec<u8>>,
}

impl HttpsConnection {
    /// Connects to `addr`, verifying the daemon's certificate for `name`.
    async fn open(addr: SocketAddr, connector: &TlsConnector, name: &str) -> HttpsConnection {
        let connect = async {
            let tcp = TcpStream::connect(addr)
                .await
                .unwrap_or_else(|e| panic!("cannot connect to the daemon at {addr}: {e}"));
            let name = ServerName::try_from(name.to_owned()).expect("a server name");
            let tls = connector
                .connect(name, tcp)
                .await
                .unwrap_or_else(|e| panic!("TLS handshake with the daemon failed: {e}"));
            let (_, session) = tls.get_ref();
            let presented = session
                .peer_certificates()
                .and_then(|chain| chain.first())
                .expect("the daemon presented a certificate")
                .clone()
                .into_owned();
            let alpn = session.alpn_protocol().map(<[u8]>::to_vec);
            let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
                .await
                .expect("HTTP/1 handshake over TLS");
            tokio::spawn(connection);
            HttpsConnection {
                sender,
                presented,
                alpn,
            }
        };
        tokio::time::timeout(DEADLINE, connect)
            .await
            .unwrap_or_else(|_| panic!("no TLS connection to the daemon within {DEADLINE:?}"))
    }

    /// POSTs `delivery` to the webhook path on this connection.
    async fn send(&mut self, delivery: &Delivery) -> Reply {
        let exchange = async {
            self.sender.ready().await.expect("connection still usable");
            let request = Request::post(PATH).header("host", "localhost");
            crate::http::exchange_on(
                &mut self.sender,
                request,
                &delivery.headers,
                delivery.body.clone(),
            )
            .await
        };
        tokio::time::timeout(DEADLINE, exchange)
            .await
            .unwrap_or_else(|_| panic!("no HTTPS answer within {DEADLINE:?}"))
    }
}

/// Writes `request` on a new plain TCP connection and reads whatever comes back until the
/// daemon closes the connection.
async fn plain_exchange(addr: SocketAddr, request: &[u8]) -> Vec<u8> {
    let exchange = async {
        let mut stream = TcpStream::connect(addr)
            .await
            .unwrap_or_else(|e| panic!("cannot connect to the daemon at {addr}: {e}"));
        stream.write_all(request).await.expect("write the request");
        let mut answer = Vec::new();
        // A reset also ends the exchange; what arrived before it is kept.
        let _ = stream.read_to_end(&mut answer).await;
        answer
    };
    tokio::time::timeout(DEADLINE, exchange)
        .await
        .unwrap_or_else(|_| panic!("the daemon kept the connection open for {DEADLINE:?}"))
}

/// The delivery as an HTTP/1.1 request, byte for byte.
fn plain_request(delivery: &Delivery) -> Vec<u8> {
    let mut request = format!(
        "POST {PATH} HTTP/1.1\r\nHost: localhost\r\nContent-Length: {}\r\nConnection: close\r\n",
        delivery.body.len()
    )
    .into_bytes();
    for (name, value) in &delivery.headers {
        request.extend_from_slice(format!("{name}: {value}\r\n").as_bytes());
    }
    request.extend_from_slice(b"\r\n");
    request.extend_from_slice(&delivery.body);
    request
}

#[tokio::test]
async fn signed_delivery_over_https_is_accepted_and_streamed() {
    let dir = temp_dir();
    let cert = TestCert::generate(dir.path());
    let mut daemon = Daemon::start(dir.path(), &cert.settings()).await;
    let connector = cert.connector();

    // By name, the way kirim.dev reaches https://hooks.example.com/...
    let mut https = HttpsConnection::open(daemon.addr, &connector, "localhost").await;
    assert_eq!(
        https.presented, cert.der,
        "the daemon serves the configured certificate"
    );
    assert_eq!(
        https.alpn.as_deref(),
        Some(&b"http/1.1"[..]),
        "only http/1.1 is offered, even to a client that prefers h2"
    );
    let first = sentinel();
    https.send(&first).await.expect(
        200,
        json!({"status": "accepted"}),
        "first delivery over TLS",
    );
    // A retry on the same (kept-alive) TLS connection.
    https.send(&first.clone().retry(2, &["A"])).await.expect(
        200,
        json!({"status": "duplicate"}),
        "retry over the same TLS connection",
    );

    // By IP address, on a new connection.
    let mut by_ip = HttpsConnection::open(daemon.addr, &connector, "127.0.0.1").await;
    let second = sentinel();
    by_ip.send(&second).await.expect(
        200,
        json!({"status": "accepted"}),
        "delivery over TLS by IP",
    );

    let event = daemon.wait_for_event(second.event_id()).await;
    assert_eq!(event.body_bytes(), second.body.as_slice());
    assert_eq!(
        daemon.event_ids(),
        [first.event_id(), second.event_id()],
        "each accepted event streamed once, in order"
    );
    daemon.stop_gracefully().await;
}

#[tokio::test]
async fn plain_http_to_the_tls_port_gets_no_answer() {
    let dir = temp_dir();
    let cert = TestCert::generate(dir.path());
    let mut daemon = Daemon::start(dir.path(), &cert.settings()).await;

    let refused = sentinel();
    let answer = plain_exchange(daemon.addr, &plain_request(&refused)).await;
    assert!(
        !answer.starts_with(b"HTTP/"),
        "a plain HTTP request to the TLS port must not get an HTTP answer, got {:?}",
        String::from_utf8_lossy(&answer)
    );

    // The daemon still serves TLS, and the plain request reached nothing.
    let mut https = HttpsConnection::open(daemon.addr, &cert.connector(), "localhost").await;
    let last = sentinel();
    https.send(&last).await.expect(
        200,
        json!({"status": "accepted"}),
        "TLS after a plain request",
    );
    daemon.wait_for_event(last.event_id()).await;
    assert_eq!(daemon.event_ids(), [last.event_id()]);
    // Failed handshakes are everyday internet noise: debug, never a warning or an error.
    let loud: Vec<String> = daemon
        .stderr
        .lines()
        .into_iter()
        .filter(|line| line.contains("\"level\":\"WARN\"") || line.contains("\"level\":\"ERROR\""))
        .collect();
    assert!(
        loud.is_empty(),
        "a failed handshake was logged loudly: {loud:?}"
    );
    daemon.stop_gracefully().await;
}

#[tokio::test]
async fn stalled_handshake_does_not_keep_the_only_connection_slot() {
    let dir = temp_dir();
    let cert = TestCert::generate(dir.path());
    let settings = Settings {
        extra_server: "max_connections = 1\nrequest_timeout_secs = 1\n".to_owned(),
        ..cert.settings()
    };
    let mut daemon = Daemon::start(dir.path(), &settings).await;

    // Connects and says nothing: it takes the only slot until the handshake times out.
    let mut silent = TcpStream::connect(daemon.addr)
        .await
        .expect("connect the silent client");
    let mut https = HttpsConnection::open(daemon.addr, &cert.connector(), "localhost").await;
    let delivery = sentinel();
    https.send(&delivery).await.expect(
        200,
        json!({"status": "accepted"}),
        "a delivery after a stalled handshake",
    );
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(DEADLINE, silent.read_to_end(&mut rest)).await;
    assert!(
        matches!(closed, Ok(Ok(0)) | Ok(Err(_))),
        "the silent connection should have been closed without an answer, got {closed:?} {rest:?}"
    );
    daemon.wait_for_event(delivery.event_id()).await;
    daemon.stop_gracefully().await;
}
