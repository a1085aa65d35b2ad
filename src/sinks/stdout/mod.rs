//! The stdout sink: one JSON object per line per event, for piping into the user's own code.
//!
//! A line carries the event's identity and routing fields and the original body embedded
//! byte-for-byte (never re-serialised). The only change ever made to the body: CR and LF bytes,
//! which in valid JSON can only be insignificant whitespace between tokens, become spaces, so that
//! one event is always exactly one line. Lines are written and flushed as soon as they are read
//! from the store; nothing waits in a buffer. Logs never come here (they go to stderr). A broken
//! pipe is [`SinkError::Gone`] (the reader cannot come back); any other write error is
//! retryable. The sink takes no keys of its own ([`config`]).

pub mod config;

use serde::Serialize;
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::Mutex;

use super::{Attempt, Failure, Sink, SinkError};
use crate::receive::envelope::{DedupeKey, Source};
use crate::store::StoredEvent;

/// Most lines written in one go.
const MAX_BATCH: usize = 512;

/// Writes events as JSON lines to stdout (or any writer, in tests).
pub struct StdoutSink<W = tokio::io::Stdout> {
    name: String,
    out: Mutex<Output<W>>,
}

struct Output<W> {
    writer: W,
    buf: Vec<u8>,
}

impl StdoutSink {
    /// A sink named `name` writing to the process's stdout.
    pub fn new(name: impl Into<String>) -> Self {
        Self::with_writer(name, tokio::io::stdout())
    }
}

impl<W> StdoutSink<W> {
    /// A sink writing to `out`.
    pub fn with_writer(name: impl Into<String>, out: W) -> Self {
        StdoutSink {
            name: name.into(),
            out: Mutex::new(Output {
                writer: out,
                buf: Vec::with_capacity(64 * 1024),
            }),
        }
    }

    /// The writer (tests read back what was written).
    pub fn into_writer(self) -> W {
        self.out.into_inner().writer
    }
}

impl<W: AsyncWrite + Unpin + Send + 'static> Sink for StdoutSink<W> {
    fn name(&self) -> &str {
        &self.name
    }

    fn max_batch(&self) -> usize {
        MAX_BATCH
    }

    async fn deliver(&self, batch: &[Attempt]) -> Result<(), Failure> {
        let mut out = self.out.lock().await;
        let Output { writer, buf } = &mut *out;
        buf.clear();
        for attempt in batch {
            write_line(&attempt.event, buf);
        }
        let written = async {
            writer.write_all(buf).await?;
            writer.flush().await
        };
        // A failed write may have put part of the batch out; the whole batch is retried, so a
        // consumer can see a line twice after a write error (at least once, never lost). A
        // broken pipe cannot heal: the reader has exited, and only a restart of the pipeline
        // brings a new one.
        written.await.map_err(|e| {
            Failure::new(match e.kind() {
                std::io::ErrorKind::BrokenPipe => SinkError::Gone {
                    message: format!("stdout consumer has gone ({e})"),
                },
                _ => SinkError::retryable(format!("writing to stdout: {e}")),
            })
        })
    }
}

#[derive(Serialize)]
struct Line<'a> {
    event_id: Option<&'a str>,
    keys: &'a [DedupeKey],
    #[serde(rename = "type")]
    event_type: Option<&'a str>,
    source: Option<Source>,
    delivery_id: Option<&'a str>,
    attempt: Option<u32>,
    received_at: String,
    secret_id: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    phone_number_id: Option<&'a str>,
}

/// Appends the JSON line of `event` (with its trailing newline) to `out`.
pub fn write_line(event: &StoredEvent, out: &mut Vec<u8>) {
    let meta = &event.meta;
    let line = Line {
        event_id: meta.event_id.as_deref(),
        keys: &meta.keys,
        event_type: meta.event_type.as_deref(),
        source: meta.source,
        delivery_id: meta.delivery_id(),
        attempt: meta.attempt(),
        received_at: crate::time::rfc3339_ms(meta.received_at_ms),
        secret_id: &meta.secret_id,
        phone_number_id: meta.phone_number_ids.first().map(String::as_str),
    };
    let start = out.len();
    // Serialising plain strings and numbers into a Vec cannot fail.
    serde_json::to_writer(&mut *out, &line).expect("a Line always serialises");
    // Replace the closing brace with the body field.
    if out.last() == Some(&b'}') && out.len() > start {
        out.pop();
    }
    out.extend_from_slice(b",\"body\":");
    out.extend(event.body.iter().map(|&b| match b {
        b'\r' | b'\n' => b' ',
        other => other,
    }));
    out.extend_from_slice(b"}\n");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::receive::envelope::Shape;
    use crate::store::RecordMeta;

    fn event(body: &[u8], phone: Vec<String>) -> StoredEvent {
        StoredEvent {
            seq: 1,
            meta: RecordMeta {
                received_at_ms: 1_795_381_200_123,
                secret_id: "sec_A".into(),
                headers: vec![
                    ("x-kirim-delivery-id".into(), "wbd_X".into()),
                    ("x-kirim-attempt".into(), "2".into()),
                ],
                keys: vec![serde_json::from_str("\"kirim:evt_1\"").unwrap()],
                shape: Some(Shape::KirimEnvelope),
                source: Some(Source::Kirim),
                event_type: Some("contact.created".into()),
                event_id: Some("evt_1".into()),
                phone_number_ids: phone,
                quarantine_reason: None,
            },
            body: body.to_vec(),
        }
    }

    #[test]
    fn line_embeds_body_bytes_and_names_every_field() {
        let body = br#"{"id":"evt_1","n":1.50,"z":1,"a":2}"#;
        let mut out = Vec::new();
        write_line(&event(body, vec![]), &mut out);
        let text = String::from_utf8(out).unwrap();
        assert_eq!(
            text,
            concat!(
                r#"{"event_id":"evt_1","keys":["kirim:evt_1"],"type":"contact.created","source":"kirim","#,
                r#""delivery_id":"wbd_X","attempt":2,"received_at":"2026-11-22T21:00:00.123Z","secret_id":"sec_A","#,
                r#""body":{"id":"evt_1","n":1.50,"z":1,"a":2}}"#,
                "\n"
            )
        );
        let parsed: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(parsed["body"]["a"], 2);
    }

    #[test]
    fn a_received_at_past_year_9999_is_clamped() {
        let mut late = event(b"{}", vec![]);
        late.meta.received_at_ms = u64::MAX;
        let mut out = Vec::new();
        write_line(&late, &mut out);
        let parsed: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(parsed["received_at"], "9999-12-31T23:59:59.999Z");
    }

    #[test]
    fn multi_line_body_stays_one_line_and_phone_number_id_is_added() {
        let body = b"{\r\n  \"object\": \"x\"\n}";
        let mut out = Vec::new();
        write_line(&event(body, vec!["1065".into(), "2".into()]), &mut out);
        assert_eq!(out.iter().filter(|&&b| b == b'\n').count(), 1);
        assert_eq!(out.last(), Some(&b'\n'));
        let parsed: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(parsed["phone_number_id"], "1065");
        assert_eq!(parsed["body"]["object"], "x");
    }

    /// A writer whose reader has gone.
    struct ClosedPipe;

    impl AsyncWrite for ClosedPipe {
        fn poll_write(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
            _: &[u8],
        ) -> std::task::Poll<std::io::Result<usize>> {
            std::task::Poll::Ready(Err(std::io::ErrorKind::BrokenPipe.into()))
        }

        fn poll_flush(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            std::task::Poll::Ready(Ok(()))
        }

        fn poll_shutdown(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            std::task::Poll::Ready(Ok(()))
        }
    }

    #[tokio::test]
    async fn a_broken_pipe_means_the_consumer_is_gone() {
        let sink = StdoutSink::with_writer("stdout", ClosedPipe);
        let batch = [Attempt {
            event: std::sync::Arc::new(event(b"{}", vec![])),
            attempt: 1,
        }];
        let failure = sink.deliver(&batch).await.unwrap_err();
        assert_eq!(failure.delivered, 0);
        assert!(
            matches!(&failure.error, SinkError::Gone { message } if message.contains("stdout consumer has gone")),
            "{failure:?}"
        );
    }

    #[tokio::test]
    async fn deliver_writes_one_line_per_event_in_order() {
        let sink = StdoutSink::with_writer("stdout", Vec::<u8>::new());
        let mut a = event(b"{\"a\":1}", vec![]);
        let mut b = event(b"{\"b\":2}", vec![]);
        a.seq = 1;
        b.seq = 2;
        let batch = [a, b].map(|event| Attempt {
            event: std::sync::Arc::new(event),
            attempt: 1,
        });
        sink.deliver(&batch).await.unwrap();
        let written = String::from_utf8(sink.into_writer()).unwrap();
        let lines: Vec<&str> = written.lines().collect();
        assert_eq!(lines.len(), 2);
        assert!(lines[0].ends_with(r#""body":{"a":1}}"#));
        assert!(lines[1].ends_with(r#""body":{"b":2}}"#));
    }
}
