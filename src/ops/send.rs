//! `kirimhook sign` and `kirimhook send`: play kirim.dev's part by hand.
//!
//! `send` posts a file as a delivery with every `X-Kirim-*` header, a fresh `wbd_` delivery id
//! and a signature made now, then prints the status and the response body. Headers it is not
//! given are taken from the body the way a receiver would read them. `http://`, or `https://`
//! (HTTP/1.1 over rustls, verified against the public web roots or the certificates of
//! `--cacert`): it is a tool to try a receiver, not a kirim.dev replacement. Both commands take
//! only a secret the config would take ([`crate::config::check_secret`]).

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context as _};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, Uri};
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::TlsConnector;

use crate::cli::{SecretArg, SendArgs};
use crate::receive::envelope::{self, Classified, Hints, Source};
use crate::receive::signature::SigningSecret;

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

/// The secret of `--secret` or `--secret-env`, held to the rule the config applies to
/// secrets (`whsec_` and more, no whitespace); the error never shows the value.
pub fn signing_secret(arg: &SecretArg) -> anyhow::Result<SigningSecret> {
    let value = arg.resolve()?;
    let given_as = match (&arg.secret, &arg.secret_env) {
        (None, Some(var)) => format!("--secret-env {var}"),
        _ => "--secret".to_owned(),
    };
    crate::config::check_secret(&value, &given_as)?;
    Ok(SigningSecret::new("cli", value))
}

/// A TLS client for `send`: the public web roots, or only the certificates in `cacert`.
/// HTTP/1.1 only, like the receiver.
pub fn tls_connector(cacert: Option<&Path>) -> anyhow::Result<TlsConnector> {
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .context("TLS: no usable protocol version")?;
    let builder = match cacert {
        None => hyper_rustls::ConfigBuilderExt::with_webpki_roots(builder),
        Some(path) => builder.with_root_certificates(read_roots(path)?),
    };
    let mut config = builder.with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsConnector::from(Arc::new(config)))
}

/// The certificates of a PEM file, as roots to trust (read as the server reads its own).
fn read_roots(path: &Path) -> anyhow::Result<rustls::RootCertStore> {
    let shown = path.display();
    let mut roots = rustls::RootCertStore::empty();
    for cert in crate::tls::read_certs(path).map_err(|e| anyhow::anyhow!("--cacert: {e}"))? {
        roots
            .add(cert)
            .with_context(|| format!("--cacert {shown}: a certificate rustls cannot use"))?;
    }
    Ok(roots)
}

/// Runs `kirimhook send`: returns the HTTP status and the response body.
pub async fn send(args: &SendArgs) -> anyhow::Result<(u16, String)> {
    let secret = signing_secret(&args.secret)?;
    let body = std::fs::read(&args.file)
        .with_context(|| format!("cannot read {}", args.file.display()))?;
    let uri: Uri = args
        .url
        .parse()
        .with_context(|| format!("--url: not a URL: {}", args.url))?;
    let tls = match uri.scheme_str() {
        Some("http") if args.cacert.is_some() => {
            bail!("--cacert is for https:// URLs (got {})", args.url)
        }
        Some("http") => None,
        Some("https") => Some(tls_connector(args.cacert.as_deref())?),
        _ => bail!(
            "--url: must start with http:// or https:// (got {})",
            args.url
        ),
    };
    let host = uri.host().context("--url: no host")?;
    let port = uri
        .port_u16()
        .unwrap_or(if tls.is_some() { 443 } else { 80 });
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

    let host = host.trim_matches(['[', ']']);
    let exchange = async {
        let stream = tokio::net::TcpStream::connect((host, port))
            .await
            .with_context(|| format!("cannot connect to {host}:{port}"))?;
        match tls {
            None => exchange(stream, request).await,
            Some(connector) => {
                let name = ServerName::try_from(host.to_owned())
                    .with_context(|| format!("--url: `{host}` is not a valid TLS server name"))?;
                let stream = connector
                    .connect(name, stream)
                    .await
                    .with_context(|| format!("TLS handshake with {host}:{port} failed"))?;
                exchange(stream, request).await
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(15), exchange)
        .await
        .context("no answer within 15 s")?
}

/// One HTTP/1.1 request on `stream`: the status and the body as text.
async fn exchange<S>(stream: S, request: Request<Full<Bytes>>) -> anyhow::Result<(u16, String)>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(connection);
    let response = sender.send_request(request).await?;
    let status = response.status().as_u16();
    let body = response.into_body().collect().await?.to_bytes();
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
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
