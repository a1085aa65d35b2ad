//! The Redis Streams sink: appends each event to one stream with `XADD`, the original body
//! bytes in the field `body` and the event's metadata beside it (`kirim-event-id`,
//! `kirim-event-type`, `kirim-source`, `kirim-delivery-id`, `kirim-received-at`,
//! `kirim-dedupe-key`, and `kirim-phone-number-id` for Meta events; a field whose value is not
//! known is left out).
//!
//! Each event is published by one Lua script ([`PUBLISH_SCRIPT`]), which Redis runs alone: if
//! the dedupe marker `<stream>:dedupe:<first dedupe key>` exists, the event was published
//! within `dedupe_ttl_secs` and nothing is added; else the entry is added (`MAXLEN ~ max_len`
//! unless 0) and then the marker is set with that TTL. So a republish after a crash or a retry
//! after a lost answer is dropped, and markers are namespaced per stream. The marker is set
//! after the `XADD`, not before: a script is not rolled back, and a marker set before an `XADD`
//! that fails (`OOM`, `WRONGTYPE`) would drop the event's retry, a loss; this order can only
//! publish twice (when the `SET` alone fails), never lose. An event is settled only after its
//! script answered. A batch goes as one pipeline of `EVALSHA`s on one multiplexed connection
//! (re-established by the client's connection manager), loading the script once when Redis
//! answers `NOSCRIPT`. Failures are classified in [`classify`](mod@classify); the keys are read by
//! [`config`]. The URL (it may hold a password) is never logged.

pub mod classify;
pub mod config;

pub use config::RedisStreamConfig;

use std::path::PathBuf;
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{Cmd, RedisResult, Script, ServerErrorKind};
use tokio::sync::OnceCell;

use self::classify::classify;
use super::{Attempt, Failure, InFlight, Sink, SinkError};
use crate::config::SecretString;
use crate::store::StoredEvent;

/// Most events in one pipeline.
const MAX_BATCH: usize = 64;
/// Time allowed to open a connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Time allowed for an answer to a pipeline.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(10);
/// Time allowed for one whole delivery (connecting, a pipeline, loading the script and the
/// pipeline again): what [`crate::sinks::SinkKind::attempt_timeout`] reports.
pub const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(30);

/// The publishing script. `KEYS[1]`: the stream; `KEYS[2]`, when given: the dedupe marker.
/// `ARGV[1]`: the marker's TTL in seconds; `ARGV[2]`: MAXLEN (`0`: no trimming); `ARGV[3..]`: the
/// entry's fields and values. Returns 1 when the entry was added, 0 when the marker said the
/// event was published already.
pub const PUBLISH_SCRIPT: &str = r"
if KEYS[2] and redis.call('EXISTS', KEYS[2]) == 1 then
  return 0
end
if ARGV[2] == '0' then
  redis.call('XADD', KEYS[1], '*', unpack(ARGV, 3))
else
  redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[2], '*', unpack(ARGV, 3))
end
if KEYS[2] then
  redis.call('SET', KEYS[2], '1', 'EX', ARGV[1])
end
return 1
";

/// Appends events to a Redis stream.
pub struct RedisStreamSink {
    name: String,
    url: SecretString,
    stream: String,
    max_len: u64,
    dedupe_ttl_secs: u64,
    concurrency: usize,
    ca_file: Option<PathBuf>,
    script: Script,
    connection: OnceCell<ConnectionManager>,
}

impl RedisStreamSink {
    /// A sink named `name` configured by `config`. Connects on its first delivery.
    pub fn new(name: impl Into<String>, config: &RedisStreamConfig) -> Self {
        RedisStreamSink {
            name: name.into(),
            url: config.url.clone(),
            stream: config.stream.clone(),
            max_len: config.max_len,
            dedupe_ttl_secs: config.dedupe_ttl.as_secs(),
            concurrency: config.concurrency,
            ca_file: config.ca_file.clone(),
            script: Script::new(PUBLISH_SCRIPT),
            connection: OnceCell::new(),
        }
    }

    /// The connection, opened on first use; a failure to open it is tried again by the next
    /// delivery.
    async fn connection(&self) -> Result<ConnectionManager, SinkError> {
        self.connection
            .get_or_try_init(|| async {
                let client = match &self.ca_file {
                    None => redis::Client::open(self.url.expose()),
                    Some(path) => {
                        let root_cert =
                            crate::tls::read_ca_pem(path).map_err(|e| SinkError::Unreachable {
                                message: format!("ca_file: {e}"),
                            })?;
                        let certificates = redis::TlsCertificates {
                            client_tls: None,
                            root_cert: Some(root_cert),
                        };
                        redis::Client::build_with_tls(self.url.expose(), certificates)
                    }
                }
                .map_err(|_| {
                    // Checked by the config already; the URL is not quoted.
                    SinkError::Unreachable {
                        message: "the Redis URL cannot be read".to_owned(),
                    }
                })?;
                let config = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(CONNECT_TIMEOUT))
                    .set_response_timeout(Some(RESPONSE_TIMEOUT))
                    .set_number_of_retries(1)
                    .set_min_delay(Duration::from_millis(100))
                    .set_max_delay(Duration::from_secs(2));
                ConnectionManager::new_with_config(client, config)
                    .await
                    .map_err(|e| classify(&e))
            })
            .await
            .cloned()
    }

    /// The `EVALSHA` that publishes `event`.
    fn publish_command(&self, event: &StoredEvent) -> Cmd {
        let meta = &event.meta;
        let dedupe_key = meta.keys.first().map(|k| k.as_str());
        let mut cmd = redis::cmd("EVALSHA");
        cmd.arg(self.script.get_hash())
            .arg(if dedupe_key.is_some() { 2 } else { 1 })
            .arg(&self.stream);
        if let Some(key) = dedupe_key {
            cmd.arg(dedupe_marker(&self.stream, key));
        }
        cmd.arg(self.dedupe_ttl_secs)
            .arg(self.max_len)
            .arg("body")
            .arg(&event.body[..]);
        for (field, value) in entry_fields(event) {
            cmd.arg(field).arg(value);
        }
        cmd
    }

    /// Publishes `batch` as pipelines; a failure says how many at the front were published.
    async fn publish(&self, batch: &[Attempt]) -> Result<(), Failure> {
        let mut conn = self.connection().await.map_err(Failure::new)?;
        let mut start = 0;
        let mut loaded = false;
        while start < batch.len() {
            let mut pipe = redis::pipe();
            pipe.ignore_errors();
            for attempt in &batch[start..] {
                pipe.add_command(self.publish_command(&attempt.event));
            }
            let results: Vec<RedisResult<i64>> = pipe
                .query_async(&mut conn)
                .await
                .map_err(|e| Failure::new(classify(&e)).after(start))?;
            let published = results.iter().take_while(|r| r.is_ok()).count();
            let Some(Err(error)) = results.get(published) else {
                return Ok(());
            };
            start += published;
            let no_script = error.kind() == redis::ErrorKind::Server(ServerErrorKind::NoScript);
            if no_script && !loaded {
                self.script
                    .load_async(&mut conn)
                    .await
                    .map_err(|e| Failure::new(classify(&e)).after(start))?;
                loaded = true;
                continue;
            }
            return Err(Failure::new(classify(error)).after(start));
        }
        Ok(())
    }
}

/// The key of the dedupe marker for `dedupe_key` in `stream`.
pub fn dedupe_marker(stream: &str, dedupe_key: &str) -> String {
    format!("{stream}:dedupe:{dedupe_key}")
}

/// The metadata fields of `event`'s entry (all but `body`), in a fixed order, leaving out the
/// ones whose value is not known. `kirim-phone-number-id` is the first of the event's Meta phone
/// number ids, as on the stdout sink.
pub fn entry_fields(event: &StoredEvent) -> Vec<(&'static str, String)> {
    let meta = &event.meta;
    let mut fields = Vec::with_capacity(7);
    let mut push = |name: &'static str, value: Option<String>| {
        if let Some(value) = value {
            fields.push((name, value));
        }
    };
    push("kirim-event-id", meta.event_id.clone());
    push("kirim-event-type", meta.event_type.clone());
    push("kirim-source", meta.source.map(|s| s.as_str().to_owned()));
    push("kirim-delivery-id", meta.delivery_id().map(str::to_owned));
    push(
        "kirim-received-at",
        Some(crate::time::rfc3339_ms(meta.received_at_ms)),
    );
    push(
        "kirim-dedupe-key",
        meta.keys.first().map(|k| k.as_str().to_owned()),
    );
    push(
        "kirim-phone-number-id",
        meta.phone_number_ids.first().cloned(),
    );
    fields
}

impl Sink for RedisStreamSink {
    fn name(&self) -> &str {
        &self.name
    }

    /// Pipelines in flight: `concurrency` counts events, sent in pipelines of up to
    /// [`MAX_BATCH`].
    fn concurrency(&self) -> usize {
        InFlight::of(self.concurrency, MAX_BATCH).batches
    }

    fn max_batch(&self) -> usize {
        InFlight::of(self.concurrency, MAX_BATCH).batch
    }

    async fn deliver(&self, batch: &[Attempt]) -> Result<(), Failure> {
        match tokio::time::timeout(ATTEMPT_TIMEOUT, self.publish(batch)).await {
            Ok(result) => result,
            // What the script did for the unanswered events is not known: they are tried
            // again, and the dedupe marker drops the ones that were published.
            Err(_) => Err(Failure::new(SinkError::retryable(format!(
                "redis: no answer within {} s",
                ATTEMPT_TIMEOUT.as_secs()
            )))),
        }
    }
}

#[cfg(test)]
#[path = "tests.rs"]
mod tests;
