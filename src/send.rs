//! `kirimhook sign` and `kirimhook send`: play kirim.dev's part by hand.
//!
//! `send` posts a file as a delivery with every `X-Kirim-*` header, a fresh `wbd_` delivery id
//! and a signature made now, then prints the status and the response body. Headers it is not
//! given are taken from the body the way a receiver would read them. Plain `http://` only: it is
//! a tool for a local receiver, not a kirim.dev replacement.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context as _};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, Uri};
use hyper_util::rt::TokioIo;

use crate::cli::SendArgs;
use crate::envelope::{self, Classified, Hints, Source};
use crate::signature::SigningSecret;

/// Crockford base32 alphabet (no I, L, O, U).
const CROCKFORD: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";

/// A new delivery id: `wbd_` + 26 Crockford characters (48-bit millisecond time, 80 random bits).
pub fn new_delivery_id(now: SystemTime) -> String {
    let ms = now
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0);
    let value: u128 = ((ms & 0xFFFF_FFFF_FFFF) << 80) | (fastrand::u128(..) >> 48);
    let mut id = String::with_capacity(30);
    id.push_str("wbd_");
    for i in (0..26).rev() {
        let index = ((value >> (i * 5)) & 31) as usize;
        id.push(char::from(CROCKFORD[index]));
    }
    id
}

/// Current Unix time in seconds.
pub fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// The headers `send` puts on a delivery of `body`.
pub fn delivery_headers(
    args: &SendArgs,
    secret: &SigningSecret,
    body: &[u8],
    now: SystemTime,
) -> Vec<(&'static str, String)> {
    let sniffed = match envelope::classify(Hints::default(), body) {
        Classified::Event(info) => Some(info),
        Classified::Unrecognized(_) => None,
    };
    let source = args
        .source
        .clone()
        .unwrap_or_else(|| match sniffed.as_ref().map(|i| i.source) {
            Some(Source::Meta) => "meta".into(),
            _ => "kirim".into(),
        });
    let event = args
        .event
        .clone()
        .or_else(|| sniffed.as_ref().and_then(|i| i.event_type.clone()));
    let event_id = args
        .event_id
        .clone()
        .or_else(|| sniffed.as_ref().and_then(|i| i.event_id.clone()));
    let t = now
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let mut headers = vec![
        ("content-type", "application/json".to_owned()),
        (
            "user-agent",
            concat!("kirimhook-send/", env!("CARGO_PKG_VERSION")).to_owned(),
        ),
        ("x-kirim-source", source),
    ];
    if let Some(event) = event {
        headers.push(("x-kirim-event", event));
    }
    if let Some(event_id) = event_id {
        headers.push(("x-kirim-event-id", event_id));
    }
    headers.push(("x-kirim-delivery-id", new_delivery_id(now)));
    headers.push(("x-kirim-attempt", args.attempt.to_string()));
    headers.push(("x-kirim-signature", secret.sign(t, body)));
    headers
}

/// Runs `kirimhook send`: returns the HTTP status and the response body.
pub async fn send(args: &SendArgs) -> anyhow::Result<(u16, String)> {
    let secret = SigningSecret::new("cli", args.secret.resolve()?);
    let body = std::fs::read(&args.file)
        .with_context(|| format!("cannot read {}", args.file.display()))?;
    let uri: Uri = args
        .url
        .parse()
        .with_context(|| format!("--url: not a URL: {}", args.url))?;
    if uri.scheme_str() != Some("http") {
        bail!("--url: only http:// URLs are supported (got {})", args.url);
    }
    let host = uri.host().context("--url: no host")?;
    let port = uri.port_u16().unwrap_or(80);
    let authority = uri
        .authority()
        .map(|a| a.as_str().to_owned())
        .unwrap_or_default();
    let path = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");

    let mut request = Request::post(path).header("host", authority);
    for (name, value) in delivery_headers(args, &secret, &body, SystemTime::now()) {
        request = request.header(name, value);
    }
    let request = request.body(Full::new(Bytes::from(body)))?;

    let exchange = async {
        let stream = tokio::net::TcpStream::connect((host.trim_matches(['[', ']']), port))
            .await
            .with_context(|| format!("cannot connect to {host}:{port}"))?;
        let (mut sender, connection) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(connection);
        let response = sender.send_request(request).await?;
        let status = response.status().as_u16();
        let body = response.into_body().collect().await?.to_bytes();
        anyhow::Ok((status, String::from_utf8_lossy(&body).into_owned()))
    };
    tokio::time::timeout(Duration::from_secs(15), exchange)
        .await
        .context("no answer within 15 s")?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delivery_ids_have_the_kirim_shape_and_differ() {
        let now = SystemTime::now();
        let a = new_delivery_id(now);
        let b = new_delivery_id(now);
        assert_ne!(a, b);
        assert_eq!(a.len(), 30);
        assert!(a.starts_with("wbd_"));
        assert!(a[4..].bytes().all(|c| CROCKFORD.contains(&c)));
    }
}
