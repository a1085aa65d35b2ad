//! A small HTTP/1.1 client for the tests: hyper over one keep-alive connection, plus raw TCP
//! requests for what a well-behaved client would not send (chunked bodies over the limit).
//!
//! The connection is dropped after any answer other than 200, since the daemon may close it
//! when it answered without reading the body; the next request opens a new one.

use std::net::SocketAddr;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper::header::HeaderMap;
use hyper::{Method, Request};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::daemon::DEADLINE;
use crate::fixtures::{Delivery, PATH};

/// An HTTP answer.
#[derive(Debug, Clone)]
pub struct Reply {
    /// Status code.
    pub status: u16,
    /// Response headers.
    pub headers: HeaderMap,
    /// Response body (lossy UTF-8).
    pub body: String,
}

impl Reply {
    /// The body as JSON (`Null` when it is not JSON).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or(serde_json::Value::Null)
    }

    /// Asserts the status and the JSON body, saying what the user saw otherwise.
    #[track_caller]
    pub fn expect(&self, status: u16, body: serde_json::Value, what: &str) {
        assert_eq!(
            (self.status, self.json()),
            (status, body.clone()),
            "{what}: expected {status} {body}, the sender saw {} {:?}",
            self.status,
            self.body
        );
    }
}

/// A client of one daemon.
pub struct Client {
    addr: SocketAddr,
    sender: Option<SendRequest<Full<Bytes>>>,
}

impl Client {
    /// A client of the daemon at `addr`; connects on first use.
    pub fn new(addr: SocketAddr) -> Client {
        Client { addr, sender: None }
    }

    /// POSTs `delivery` to the webhook path.
    pub async fn send(&mut self, delivery: &Delivery) -> Reply {
        self.request(Method::POST, PATH, &delivery.headers, delivery.body.clone())
            .await
    }

    /// POSTs `delivery` on a new connection; `None` when the daemon cannot be reached or drops
    /// the connection before answering (as kirim.dev sees a dead instance: it retries).
    pub async fn try_send(&self, delivery: &Delivery) -> Option<Reply> {
        let exchange = async {
            let stream = TcpStream::connect(self.addr).await.ok()?;
            let (mut sender, connection) =
                hyper::client::conn::http1::handshake(TokioIo::new(stream))
                    .await
                    .ok()?;
            tokio::spawn(connection);
            let mut request = Request::builder()
                .method(Method::POST)
                .uri(PATH)
                .header("host", self.addr.to_string());
            for (name, value) in &delivery.headers {
                request = request.header(name.as_str(), value.as_str());
            }
            let request = request
                .body(Full::new(Bytes::from(delivery.body.clone())))
                .expect("a valid request");
            let response = sender.send_request(request).await.ok()?;
            let status = response.status().as_u16();
            let headers = response.headers().clone();
            let body = response.into_body().collect().await.ok()?.to_bytes();
            Some(Reply {
                status,
                headers,
                body: String::from_utf8_lossy(&body).into_owned(),
            })
        };
        tokio::time::timeout(DEADLINE, exchange)
            .await
            .ok()
            .flatten()
    }

    /// Any request; `Content-Length` is set from `body`.
    pub async fn request(
        &mut self,
        method: Method,
        path: &str,
        headers: &[(String, String)],
        body: Vec<u8>,
    ) -> Reply {
        let exchange = async {
            let reusable = match self.sender.take() {
                Some(mut sender) => sender.ready().await.is_ok().then_some(sender),
                None => None,
            };
            let mut sender = match reusable {
                Some(sender) => sender,
                None => self.connect().await,
            };
            let request = Request::builder()
                .method(method)
                .uri(path)
                .header("host", self.addr.to_string());
            let reply = exchange_on(&mut sender, request, headers, body).await;
            if reply.status == 200 {
                self.sender = Some(sender);
            }
            reply
        };
        tokio::time::timeout(DEADLINE, exchange)
            .await
            .unwrap_or_else(|_| panic!("no answer from the daemon within {DEADLINE:?}"))
    }

    async fn connect(&self) -> SendRequest<Full<Bytes>> {
        let stream = TcpStream::connect(self.addr)
            .await
            .unwrap_or_else(|e| panic!("cannot connect to the daemon at {}: {e}", self.addr));
        let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .expect("HTTP/1 handshake");
        tokio::spawn(connection);
        sender
    }
}

/// Sends one request on `sender` (adding `headers` and `body`) and reads the whole answer.
pub async fn exchange_on(
    sender: &mut SendRequest<Full<Bytes>>,
    mut request: hyper::http::request::Builder,
    headers: &[(String, String)],
    body: Vec<u8>,
) -> Reply {
    for (name, value) in headers {
        request = request.header(name.as_str(), value.as_str());
    }
    let request = request
        .body(Full::new(Bytes::from(body)))
        .expect("a valid request");
    let response = sender
        .send_request(request)
        .await
        .unwrap_or_else(|e| panic!("no HTTP answer from the daemon: {e}"));
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let body = response
        .into_body()
        .collect()
        .await
        .unwrap_or_else(|e| panic!("reading the answer body failed: {e}"))
        .to_bytes();
    Reply {
        status,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    }
}

/// Writes `request` on a new connection in one go and reads one HTTP/1.1 answer (the daemon's
/// answers always carry `Content-Length`). Returns the status and the whole answer text.
pub async fn raw(addr: SocketAddr, request: &[u8]) -> (u16, String) {
    let exchange = async {
        let mut stream = TcpStream::connect(addr)
            .await
            .unwrap_or_else(|e| panic!("cannot connect to the daemon at {addr}: {e}"));
        stream.write_all(request).await.expect("write the request");
        let mut answer = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            if let Some(end) = complete_length(&answer) {
                answer.truncate(end);
                break;
            }
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => answer.extend_from_slice(&buf[..n]),
            }
        }
        let text = String::from_utf8_lossy(&answer).into_owned();
        let status = text
            .strip_prefix("HTTP/1.1 ")
            .and_then(|rest| rest.get(..3))
            .and_then(|code| code.parse().ok())
            .unwrap_or_else(|| panic!("not an HTTP/1.1 answer: {text:?}"));
        (status, text)
    };
    tokio::time::timeout(DEADLINE, exchange)
        .await
        .unwrap_or_else(|_| panic!("no answer from the daemon within {DEADLINE:?}"))
}

/// The length of the first complete answer in `data` (head plus `Content-Length` body), if it
/// has fully arrived.
fn complete_length(data: &[u8]) -> Option<usize> {
    let head_end = data.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let head = String::from_utf8_lossy(&data[..head_end]).to_ascii_lowercase();
    let length: usize = head
        .lines()
        .find_map(|line| line.strip_prefix("content-length:"))
        .map(|v| v.trim().parse().expect("a numeric content-length"))
        .unwrap_or(0);
    (data.len() >= head_end + length).then_some(head_end + length)
}

/// A complete `POST` of `delivery` to the webhook path with a chunked body (no
/// `Content-Length`), in chunks of at most `chunk` bytes.
pub fn chunked_request(delivery: &Delivery, chunk: usize) -> Vec<u8> {
    let mut request = format!("POST {PATH} HTTP/1.1\r\nHost: kirimhook\r\n").into_bytes();
    for (name, value) in &delivery.headers {
        request.extend_from_slice(format!("{name}: {value}\r\n").as_bytes());
    }
    request.extend_from_slice(b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n");
    for piece in delivery.body.chunks(chunk) {
        request.extend_from_slice(format!("{:x}\r\n", piece.len()).as_bytes());
        request.extend_from_slice(piece);
        request.extend_from_slice(b"\r\n");
    }
    request.extend_from_slice(b"0\r\n\r\n");
    request
}
