//! The NATS JetStream sink: publishes each event's original body bytes to a subject rendered
//! from the sink's template, and settles it only after JetStream acknowledged storing it.
//!
//! Every message carries the event's metadata as headers (`kirim-event-id`,
//! `kirim-event-type`, `kirim-source`, `kirim-delivery-id`, `kirim-received-at` in RFC 3339
//! with milliseconds, `kirim-dedupe-key`, `kirim-phone-number-id` for Meta events; a header
//! whose value is unknown is left out) and `Nats-Msg-Id` = the event's first dedupe key, so
//! JetStream drops a republish (after a crash or a lost ack) inside the stream's duplicate
//! window. A batch is pipelined: every message of it is written before the first ack is
//! awaited, all within one deadline (`timeout_secs`). Failures are read by [`classify`].
//!
//! The sink connects on its first delivery (and, with `stream`, creates the stream if it is
//! missing); the client reconnects by itself after that, and while it is disconnected a
//! delivery fails as unreachable at once. The sink's keys are read by [`config`].

pub mod classify;
pub mod config;

pub use config::NatsSinkConfig;

use std::time::Duration;

use async_nats::jetstream::context::PublishError;
use async_nats::jetstream::message::PublishMessage;
use async_nats::jetstream::{self, stream};
use async_nats::{ConnectOptions, HeaderMap};
use bytes::Bytes;
use tokio::sync::OnceCell;
use tokio::time::{timeout_at, Instant};

use self::classify::{classify, Verdict};
use self::config::NatsAuth;
use super::{Attempt, Failure, InFlight, Sink, SinkError};
use crate::store::model::RecordMeta;

/// Most messages handed over in one delivery (all of them in flight at once).
const MAX_BATCH: usize = 64;
/// The duplicate window of a stream the sink creates (JetStream's default).
const DUPLICATE_WINDOW: Duration = Duration::from_secs(120);

/// Publishes events to NATS JetStream.
pub struct NatsSink {
    name: String,
    config: NatsSinkConfig,
    connection: OnceCell<Connection>,
}

/// An open client and its JetStream context.
struct Connection {
    client: async_nats::Client,
    jetstream: jetstream::Context,
}

impl NatsSink {
    /// A sink named `name` configured by `config`. Opens nothing yet.
    pub fn new(name: impl Into<String>, config: &NatsSinkConfig) -> Self {
        NatsSink {
            name: name.into(),
            config: config.clone(),
            connection: OnceCell::new(),
        }
    }

    /// The connection, opened (and the stream ensured) on first use.
    async fn connection(&self) -> Result<&Connection, SinkError> {
        let connection = self.connection.get_or_try_init(|| self.connect()).await?;
        match connection.client.connection_state() {
            async_nats::connection::State::Connected => Ok(connection),
            state => Err(SinkError::Unreachable {
                message: format!("not connected to the NATS server ({state:?})"),
            }),
        }
    }

    async fn connect(&self) -> Result<Connection, SinkError> {
        let unreachable = |message: String| SinkError::Unreachable { message };
        let mut options = ConnectOptions::new()
            .name(format!("kirimhook sink {}", self.name))
            .connection_timeout(self.config.timeout);
        match &self.config.auth {
            NatsAuth::None => {}
            NatsAuth::Token(token) => options = options.token(token.expose().to_owned()),
            NatsAuth::UserPassword { user, password } => {
                options = options.user_and_password(user.clone(), password.expose().to_owned())
            }
            NatsAuth::CredsFile(path) => {
                options = options.credentials_file(path).await.map_err(|e| {
                    unreachable(format!("cannot read creds_file {}: {e}", path.display()))
                })?
            }
        }
        if let Some(path) = &self.config.ca_file {
            crate::tls::read_ca_pem(path).map_err(|e| unreachable(format!("ca_file: {e}")))?;
            options = options.add_root_certificates(path.clone());
        }
        let client = options
            .connect(self.config.url.as_str())
            .await
            .map_err(|e| unreachable(format!("cannot connect to the NATS server: {e}")))?;
        let mut jetstream = jetstream::new(client.clone());
        jetstream.set_timeout(self.config.timeout);
        if let Some(name) = &self.config.stream {
            self.ensure_stream(&jetstream, name).await?;
        }
        Ok(Connection { client, jetstream })
    }

    /// Creates the stream `name` if it is missing (file storage, the template's subjects);
    /// warns when an existing one does not list the sink's subject filter.
    async fn ensure_stream(&self, js: &jetstream::Context, name: &str) -> Result<(), SinkError> {
        let filter = self.config.subject.stream_filter().unwrap_or_default();
        let stream = js
            .get_or_create_stream(stream::Config {
                name: name.to_owned(),
                subjects: vec![filter.clone()],
                storage: stream::StorageType::File,
                duplicate_window: DUPLICATE_WINDOW,
                ..Default::default()
            })
            .await
            .map_err(|e| SinkError::Unreachable {
                message: format!("cannot create or read stream {name}: {e}"),
            })?;
        let subjects = &stream.cached_info().config.subjects;
        if !subjects.iter().any(|s| covers(s, &filter)) {
            tracing::warn!(
                sink = %self.name,
                stream = name,
                subject = %filter,
                "the stream's subjects do not cover the sink's subject: publishes go to \
                 whichever stream does, or fail as unreachable (no responders)"
            );
        }
        Ok(())
    }

    /// Publishes `batch` within one deadline: every message first, then every ack in order.
    async fn publish(&self, batch: &[Attempt]) -> Result<(), Failure> {
        let deadline = Instant::now() + self.config.timeout;
        let too_slow = || {
            SinkError::retryable(format!(
                "no JetStream ack within {} s",
                self.config.timeout.as_secs()
            ))
        };
        let connection = match timeout_at(deadline, self.connection()).await {
            Err(_) => return Err(Failure::new(too_slow())),
            Ok(result) => result.map_err(Failure::new)?,
        };
        let mut acks = Vec::with_capacity(batch.len());
        let mut send_failure = None;
        for attempt in batch {
            let meta = &attempt.event.meta;
            let subject = self.config.subject.render(meta);
            let message = message(meta, &attempt.event.body);
            match timeout_at(
                deadline,
                connection.jetstream.send_publish(subject, message),
            )
            .await
            {
                Err(_) => send_failure = Some(too_slow()),
                Ok(Err(e)) => send_failure = Some(sink_error(&e)),
                Ok(Ok(ack)) => {
                    acks.push(ack);
                    continue;
                }
            }
            break;
        }
        let sent = acks.len();
        for (delivered, ack) in acks.into_iter().enumerate() {
            match timeout_at(deadline, std::future::IntoFuture::into_future(ack)).await {
                Err(_) => return Err(Failure::new(too_slow()).after(delivered)),
                Ok(Err(e)) => return Err(Failure::new(sink_error(&e)).after(delivered)),
                Ok(Ok(_ack)) => {} // stored, or a duplicate JetStream already had
            }
        }
        match send_failure {
            Some(error) => Err(Failure::new(error).after(sent)),
            None => Ok(()),
        }
    }
}

impl Sink for NatsSink {
    fn name(&self) -> &str {
        &self.name
    }

    /// Batches in flight at once: `concurrency` publishes in batches of up to 64.
    fn concurrency(&self) -> usize {
        InFlight::of(self.config.concurrency, MAX_BATCH).batches
    }

    fn max_batch(&self) -> usize {
        InFlight::of(self.config.concurrency, MAX_BATCH).batch
    }

    async fn deliver(&self, batch: &[Attempt]) -> Result<(), Failure> {
        self.publish(batch).await
    }
}

/// The message of one event: its body bytes, its metadata headers and `Nats-Msg-Id`.
fn message(meta: &RecordMeta, body: &[u8]) -> PublishMessage {
    let mut headers = HeaderMap::new();
    let received_at = crate::time::rfc3339_ms(meta.received_at_ms);
    let dedupe_key = meta.keys.first().map(|k| k.as_str());
    let values = [
        ("kirim-event-id", meta.event_id.as_deref()),
        ("kirim-event-type", meta.event_type.as_deref()),
        ("kirim-source", meta.source.map(|s| s.as_str())),
        ("kirim-delivery-id", meta.delivery_id()),
        ("kirim-received-at", Some(received_at.as_str())),
        ("kirim-dedupe-key", dedupe_key),
        (
            "kirim-phone-number-id",
            meta.phone_number_ids.first().map(String::as_str),
        ),
    ];
    for (name, value) in values {
        if let Some(value) = value.filter(|v| is_header_value(v)) {
            headers.insert(name, value);
        }
    }
    let mut publish = PublishMessage::build()
        .payload(Bytes::copy_from_slice(body))
        .headers(headers);
    if let Some(key) = dedupe_key.filter(|v| is_header_value(v)) {
        publish = publish.message_id(key);
    }
    publish
}

/// Whether `value` can be sent as a header value (no line breaks or other control characters).
fn is_header_value(value: &str) -> bool {
    !value.is_empty() && !value.chars().any(char::is_control)
}

/// A publish error in the dispatcher's terms.
fn sink_error(error: &PublishError) -> SinkError {
    let code = std::error::Error::source(error)
        .and_then(|source| source.downcast_ref::<jetstream::Error>())
        .map(|e| e.error_code());
    let message = match std::error::Error::source(error) {
        Some(source) => format!("JetStream publish failed: {error}: {source}"),
        None => format!("JetStream publish failed: {error}"),
    };
    match classify(error.kind(), code) {
        Verdict::Unreachable => SinkError::Unreachable { message },
        Verdict::Retry => SinkError::retryable(message),
        Verdict::Permanent => SinkError::permanent(message),
    }
}

/// Whether the stream subject `pattern` matches every subject the filter `filter` does
/// (`kirim.>` covers `kirim.>` and `kirim.a.>`; `>` covers everything; `*` one token).
fn covers(pattern: &str, filter: &str) -> bool {
    let mut pattern = pattern.split('.');
    let mut filter = filter.split('.');
    loop {
        match (pattern.next(), filter.next()) {
            (Some(">"), Some(_)) => return true,
            (Some("*"), Some(token)) if token != ">" => {}
            (Some(p), Some(f)) if p == f => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::path::PathBuf;
    use std::sync::Arc;

    use super::config::{NatsAuth, SubjectTemplate};
    use super::*;
    use crate::receive::envelope::{DedupeKey, Source};
    use crate::store::StoredEvent;

    /// The NATS server of these tests, from `KIRIMHOOK_TEST_NATS_URL`, with the skip rule of
    /// the e2e tests: unset -> `skipped: ...` and pass, unless `KIRIMHOOK_REQUIRE_SERVICES=1`.
    fn nats_url(test: &str) -> Option<String> {
        match std::env::var("KIRIMHOOK_TEST_NATS_URL") {
            Ok(url) if !url.is_empty() => Some(url),
            _ if std::env::var("KIRIMHOOK_REQUIRE_SERVICES").is_ok_and(|v| v == "1") => {
                panic!(
                    "{test}: KIRIMHOOK_TEST_NATS_URL is not set and KIRIMHOOK_REQUIRE_SERVICES=1"
                )
            }
            _ => {
                eprintln!("skipped: {test}: KIRIMHOOK_TEST_NATS_URL is not set");
                None
            }
        }
    }

    /// A name of this test's own: `prefix`, the process id and random bits.
    fn unique(prefix: &str) -> String {
        format!("{prefix}_{}_{:016x}", std::process::id(), fastrand::u64(..))
    }

    fn sink(url: &str, prefix: &str, stream: Option<&str>, concurrency: usize) -> NatsSink {
        let config = NatsSinkConfig {
            url: url.to_owned(),
            subject: SubjectTemplate::parse(&format!("{prefix}.{{source}}.{{type}}")).unwrap(),
            stream: stream.map(str::to_owned),
            concurrency,
            timeout: Duration::from_secs(5),
            auth: NatsAuth::None,
            ca_file: None,
        };
        NatsSink::new("bus", &config)
    }

    fn attempt(seq: u64, body: Vec<u8>) -> Attempt {
        let id = format!("evt_{seq:04}");
        let meta = RecordMeta {
            received_at_ms: 1_780_000_000_250,
            secret_id: "sec_A".to_owned(),
            headers: vec![("x-kirim-delivery-id".to_owned(), format!("wbd_{seq}"))],
            keys: vec![
                serde_json::from_value::<DedupeKey>(serde_json::json!(format!("kirim:{id}")))
                    .unwrap(),
            ],
            shape: None,
            source: Some(Source::Kirim),
            event_type: Some("contact.created".to_owned()),
            event_id: Some(id),
            phone_number_ids: Vec::new(),
            quarantine_reason: None,
        };
        Attempt {
            event: Arc::new(StoredEvent { seq, meta, body }),
            attempt: 1,
        }
    }

    async fn stream_count(url: &str, name: &str) -> u64 {
        let js = jetstream::new(async_nats::connect(url).await.unwrap());
        let mut stream = js.get_stream(name).await.unwrap();
        stream.info().await.unwrap().state.messages
    }

    async fn delete_stream(url: &str, name: &str) {
        if let Ok(client) = async_nats::connect(url).await {
            let _ = jetstream::new(client).delete_stream(name).await;
        }
    }

    #[tokio::test]
    async fn a_batch_is_published_once_and_a_republish_is_dropped_by_the_stream() {
        let test =
            "sinks::nats::a_batch_is_published_once_and_a_republish_is_dropped_by_the_stream";
        let Some(url) = nats_url(test) else { return };
        let name = unique("nats_unit_batch");
        let sink = sink(&url, &name, Some(&name), 64);
        let batch: Vec<Attempt> = (1..=64)
            .map(|seq| attempt(seq, format!("{{\"n\":{seq}}}").into_bytes()))
            .collect();
        sink.deliver(&batch).await.unwrap();
        assert_eq!(stream_count(&url, &name).await, 64);
        // After a crash the same events go again: JetStream drops them (same Nats-Msg-Id).
        sink.deliver(&batch).await.unwrap();
        assert_eq!(stream_count(&url, &name).await, 64);

        let js = jetstream::new(async_nats::connect(&url).await.unwrap());
        let stream = js.get_stream(&name).await.unwrap();
        let first = stream.get_raw_message(1).await.unwrap();
        assert_eq!(
            first.subject.as_str(),
            format!("{name}.kirim.contact.created")
        );
        assert_eq!(&first.payload[..], b"{\"n\":1}");
        let header = |n: &str| first.headers.get(n).map(|v| v.as_str().to_owned());
        assert_eq!(header("Nats-Msg-Id").as_deref(), Some("kirim:evt_0001"));
        assert_eq!(
            header("kirim-dedupe-key").as_deref(),
            Some("kirim:evt_0001")
        );
        assert_eq!(header("kirim-delivery-id").as_deref(), Some("wbd_1"));
        assert_eq!(
            header("kirim-received-at").as_deref(),
            Some("2026-05-28T20:26:40.250Z")
        );
        assert_eq!(header("kirim-phone-number-id"), None);
        let info = stream.cached_info();
        assert_eq!(info.config.subjects, vec![format!("{name}.>")]);
        assert_eq!(info.config.storage, stream::StorageType::File);
        delete_stream(&url, &name).await;
    }

    #[tokio::test]
    async fn a_message_too_large_is_permanent_after_the_ones_before_it() {
        let test = "sinks::nats::a_message_too_large_is_permanent_after_the_ones_before_it";
        let Some(url) = nats_url(test) else { return };
        let name = unique("nats_unit_large");
        let sink = sink(&url, &name, Some(&name), 64);
        let huge = vec![b'x'; 16 * 1024 * 1024];
        let batch = vec![
            attempt(1, b"{}".to_vec()),
            attempt(2, huge),
            attempt(3, b"{}".to_vec()),
        ];
        let failure = sink.deliver(&batch).await.unwrap_err();
        assert_eq!(failure.delivered, 1, "{failure:?}");
        assert!(
            matches!(failure.error, SinkError::Permanent { .. }),
            "{failure:?}"
        );
        delete_stream(&url, &name).await;
    }

    #[tokio::test]
    async fn no_stream_for_the_subject_or_no_server_is_unreachable() {
        let test = "sinks::nats::no_stream_for_the_subject_or_no_server_is_unreachable";
        let Some(url) = nats_url(test) else { return };
        let sink = sink(&url, &unique("nats_unit_nostream"), None, 64);
        let failure = sink
            .deliver(&[attempt(1, b"{}".to_vec())])
            .await
            .unwrap_err();
        assert!(
            matches!(failure.error, SinkError::Unreachable { .. }),
            "{failure:?}"
        );

        // A port nothing listens on (bound, then released).
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let down = self::sink(&format!("nats://127.0.0.1:{port}"), "x", None, 64);
        let failure = down
            .deliver(&[attempt(1, b"{}".to_vec())])
            .await
            .unwrap_err();
        assert_eq!(failure.delivered, 0);
        assert!(
            matches!(failure.error, SinkError::Unreachable { .. }),
            "{failure:?}"
        );
    }

    /// A NATS server of this test's own that requires TLS (a private CA) and a user name and
    /// password: the sink connects with `ca_file` and `user` + `password_env` and its publish
    /// is acknowledged; a wrong password or the system's roots (which do not know the CA) are
    /// unreachable, and no error shows the password.
    #[tokio::test]
    async fn tls_with_a_private_ca_and_a_password() {
        use crate::config::SecretString;
        use crate::sinks::testing::{
            assert_refused_quietly, server_binary, PrivateServer, TestCert,
        };

        let test = "sinks::nats::tls_with_a_private_ca_and_a_password";
        let Some(binary) = server_binary(test, "nats-server") else {
            return;
        };
        let dir = tempfile::tempdir().unwrap();
        let cert = TestCert::generate(dir.path());
        let port = PrivateServer::free_port();
        let args: Vec<String> = [
            "-a",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-js",
            "-sd",
            "js",
            "--user",
            "kirimhook",
            "--pass",
            "s3cret-pass",
            "--tls",
            "--tlscert",
            cert.cert.to_str().unwrap(),
            "--tlskey",
            cert.key.to_str().unwrap(),
        ]
        .map(str::to_owned)
        .to_vec();
        let _server = PrivateServer::start(&binary, &args, port, dir);

        let url = format!("tls://localhost:{port}");
        let with = |password: &str, ca_file: Option<PathBuf>| {
            let mut sink = sink(&url, "kirim", Some("KIRIM_TLS"), 4);
            sink.config.auth = NatsAuth::UserPassword {
                user: "kirimhook".to_owned(),
                password: SecretString::new(password),
            };
            sink.config.ca_file = ca_file;
            sink
        };
        let good = with("s3cret-pass", Some(cert.cert.clone()));
        good.deliver(&[attempt(1, b"{}".to_vec())]).await.unwrap();

        for (sink, what) in [
            (
                with("wrong-pass", Some(cert.cert.clone())),
                "a wrong password",
            ),
            (with("s3cret-pass", None), "the system's roots"),
        ] {
            let failure = sink
                .deliver(&[attempt(2, b"{}".to_vec())])
                .await
                .unwrap_err();
            assert_refused_quietly(&failure, what, &["s3cret", "wrong-pass"]);
        }
    }

    #[test]
    fn stream_subjects_cover_filters() {
        assert!(covers("kirim.>", "kirim.>"));
        assert!(covers(">", "kirim.>"));
        assert!(covers("kirim.>", "kirim.a.>"));
        assert!(covers("*.>", "kirim.>"));
        assert!(covers("kirim.x", "kirim.x"));
        assert!(!covers("kirim.*", "kirim.>"));
        assert!(!covers("other.>", "kirim.>"));
        assert!(!covers("kirim.a.>", "kirim.>"));
        assert!(!covers("kirim", "kirim.>"));
    }

    #[test]
    fn header_values_without_line_breaks() {
        assert!(is_header_value("evt_1"));
        assert!(!is_header_value(""));
        assert!(!is_header_value("a\r\nb"));
    }
}
