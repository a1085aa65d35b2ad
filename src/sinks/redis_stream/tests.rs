//! Tests of the redis_stream sink: its entry fields (pure), and publishing against a real
//! Redis from `KIRIMHOOK_TEST_REDIS_URL` (skipped, saying so, without it; a failure with
//! `KIRIMHOOK_REQUIRE_SERVICES=1`). Each test writes under a stream key of its own and deletes
//! its keys when it ends (also on a panic), best effort.

#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::Value;

use super::*;
use crate::receive::envelope::{body_hash_key, Source};
use crate::store::model::RecordMeta;

const REDIS_URL_VAR: &str = "KIRIMHOOK_TEST_REDIS_URL";

/// The test Redis URL, or `None` after printing that `test` was skipped.
fn redis_url(test: &str) -> Option<String> {
    match std::env::var(REDIS_URL_VAR) {
        Ok(url) if !url.is_empty() => Some(url),
        _ if std::env::var("KIRIMHOOK_REQUIRE_SERVICES").as_deref() == Ok("1") => panic!(
            "{test}: {REDIS_URL_VAR} is not set, and KIRIMHOOK_REQUIRE_SERVICES=1 requires Redis"
        ),
        _ => {
            eprintln!("skipped: {test}: {REDIS_URL_VAR} is not set");
            None
        }
    }
}

/// A stream key no other test uses.
fn unique_stream(prefix: &str) -> String {
    format!(
        "kirimhook_test:{prefix}:{}:{:016x}",
        std::process::id(),
        fastrand::u64(..)
    )
}

fn config(url: &str, stream: &str, max_len: u64) -> RedisStreamConfig {
    RedisStreamConfig {
        url: SecretString::new(url),
        stream: stream.to_owned(),
        max_len,
        dedupe_ttl: Duration::from_secs(600),
        concurrency: 4,
        ca_file: None,
    }
}

fn event(seq: u64, body: &[u8], meta_source: bool) -> Attempt {
    let meta = RecordMeta {
        received_at_ms: 1_780_315_200_250,
        secret_id: "sec_A".to_owned(),
        headers: vec![("x-kirim-delivery-id".to_owned(), format!("dlv_{seq}"))],
        keys: vec![body_hash_key(body)],
        shape: None,
        source: Some(if meta_source {
            Source::Meta
        } else {
            Source::Kirim
        }),
        event_type: Some("message.received".to_owned()),
        event_id: Some(format!("evt_{seq}")),
        phone_number_ids: if meta_source {
            vec!["106540352242922".to_owned()]
        } else {
            Vec::new()
        },
        quarantine_reason: None,
    };
    Attempt {
        event: Arc::new(StoredEvent {
            seq,
            meta,
            body: body.to_vec(),
        }),
        attempt: 1,
    }
}

async fn connect(url: &str) -> MultiplexedConnection {
    redis::Client::open(url)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

/// The entries of `stream`, each as its field/value pairs.
async fn entries(conn: &mut MultiplexedConnection, stream: &str) -> Vec<Vec<(String, Vec<u8>)>> {
    let value: Value = redis::cmd("XRANGE")
        .arg(stream)
        .arg("-")
        .arg("+")
        .query_async(conn)
        .await
        .unwrap();
    let Value::Array(items) = value else {
        panic!("XRANGE answered {value:?}");
    };
    items
        .into_iter()
        .map(|item| {
            let (_id, fields): (String, Vec<(String, Vec<u8>)>) =
                redis::from_redis_value(item).unwrap();
            fields
        })
        .collect()
}

/// Deletes the stream and every key under `<stream>:` when dropped, also when the test
/// panics; best effort.
struct Cleanup<'a> {
    url: &'a str,
    stream: &'a str,
}

impl Drop for Cleanup<'_> {
    fn drop(&mut self) {
        let Ok(mut conn) = redis::Client::open(self.url).and_then(|c| c.get_connection()) else {
            return;
        };
        let markers: Vec<String> = redis::cmd("KEYS")
            .arg(format!("{}:*", self.stream))
            .query(&mut conn)
            .unwrap_or_default();
        let _: RedisResult<i64> = redis::cmd("DEL")
            .arg(self.stream)
            .arg(markers)
            .query(&mut conn);
    }
}

#[test]
fn entry_fields_carry_the_metadata() {
    let attempt = event(7, b"{\"a\":1}", true);
    let fields = entry_fields(&attempt.event);
    let key = body_hash_key(b"{\"a\":1}");
    assert_eq!(
        fields,
        [
            ("kirim-event-id", "evt_7".to_owned()),
            ("kirim-event-type", "message.received".to_owned()),
            ("kirim-source", "meta".to_owned()),
            ("kirim-delivery-id", "dlv_7".to_owned()),
            ("kirim-received-at", "2026-06-01T12:00:00.250Z".to_owned()),
            ("kirim-dedupe-key", key.as_str().to_owned()),
            ("kirim-phone-number-id", "106540352242922".to_owned()),
        ]
    );
    let kirim = event(8, b"{}", false);
    let names: Vec<&str> = entry_fields(&kirim.event).iter().map(|f| f.0).collect();
    assert!(!names.contains(&"kirim-phone-number-id"), "{names:?}");
    assert_eq!(
        dedupe_marker("s:1", "kirim:evt_1"),
        "s:1:dedupe:kirim:evt_1"
    );
}

/// A batch goes in whole and byte-exact; publishing an event again inside the TTL adds
/// nothing (also from another sink instance, and after the script cache was flushed).
#[tokio::test]
async fn a_republish_inside_the_ttl_is_dropped() {
    let test = "redis_stream::a_republish_inside_the_ttl_is_dropped";
    let Some(url) = redis_url(test) else {
        return;
    };
    let stream = unique_stream("republish");
    let _cleanup = Cleanup {
        url: &url,
        stream: &stream,
    };
    let mut conn = connect(&url).await;
    let binary: &[u8] = b"{\"x\":\"\xff\x00\r\n\"}";
    let batch = [
        event(1, b"{\"n\":1}", false),
        event(2, binary, true),
        event(3, b"{\"n\":3}", false),
    ];
    let sink = RedisStreamSink::new("bus", &config(&url, &stream, 1000));
    let first = sink.deliver(&batch).await;
    let second = sink.deliver(&batch[1..]).await;
    // Another process (a restart) with an empty script cache on the server.
    let _: () = redis::cmd("SCRIPT")
        .arg("FLUSH")
        .query_async(&mut conn)
        .await
        .unwrap();
    let restarted = RedisStreamSink::new("bus", &config(&url, &stream, 0));
    let third = restarted.deliver(&batch).await;
    let fresh = restarted.deliver(&[event(4, b"{\"n\":4}", false)]).await;
    let found = entries(&mut conn, &stream).await;
    let ttl: i64 = redis::cmd("TTL")
        .arg(dedupe_marker(&stream, batch[0].event.meta.keys[0].as_str()))
        .query_async(&mut conn)
        .await
        .unwrap();

    assert_eq!(first, Ok(()));
    assert_eq!(second, Ok(()));
    assert_eq!(third, Ok(()));
    assert_eq!(fresh, Ok(()));
    assert!((1..=600).contains(&ttl), "marker TTL {ttl}");
    assert_eq!(found.len(), 4, "{found:?}");
    let bodies: Vec<&[u8]> = found.iter().map(|f| f[0].1.as_slice()).collect();
    assert_eq!(
        bodies,
        [b"{\"n\":1}" as &[u8], binary, b"{\"n\":3}", b"{\"n\":4}"]
    );
    for (entry, attempt) in found.iter().zip(&batch) {
        assert_eq!(entry[0].0, "body");
        let expected: Vec<(String, Vec<u8>)> = entry_fields(&attempt.event)
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.into_bytes()))
            .collect();
        assert_eq!(entry[1..], expected[..]);
    }
}

/// A stream key holding another type is permanent, and leaves no dedupe marker behind (so
/// the event is published once the key is fixed).
#[tokio::test]
async fn wrongtype_is_permanent_and_sets_no_marker() {
    let test = "redis_stream::wrongtype_is_permanent_and_sets_no_marker";
    let Some(url) = redis_url(test) else {
        return;
    };
    let stream = unique_stream("wrongtype");
    let _cleanup = Cleanup {
        url: &url,
        stream: &stream,
    };
    let mut conn = connect(&url).await;
    let _: () = redis::cmd("SET")
        .arg(&stream)
        .arg("not a stream")
        .query_async(&mut conn)
        .await
        .unwrap();
    let sink = RedisStreamSink::new("bus", &config(&url, &stream, 1000));
    let batch = [event(1, b"{\"n\":1}", false)];
    let failed = sink.deliver(&batch).await;
    let _: i64 = redis::cmd("DEL")
        .arg(&stream)
        .query_async(&mut conn)
        .await
        .unwrap();
    let retried = sink.deliver(&batch).await;
    let found = entries(&mut conn, &stream).await;

    let failure = failed.unwrap_err();
    assert_eq!(failure.delivered, 0);
    assert!(
        matches!(&failure.error, SinkError::Permanent { message } if message.contains("WRONGTYPE")),
        "{failure:?}"
    );
    assert_eq!(retried, Ok(()));
    assert_eq!(found.len(), 1);
}

/// Nothing listening: unreachable, and the URL's password is not in the message.
#[tokio::test]
async fn connection_refused_is_unreachable() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    let url = format!("redis://:TOPSECRET@127.0.0.1:{port}/0");
    let sink = RedisStreamSink::new("bus", &config(&url, "s", 1000));
    let failure = sink.deliver(&[event(1, b"{}", false)]).await.unwrap_err();
    assert!(
        matches!(failure.error, SinkError::Unreachable { .. }),
        "{failure:?}"
    );
    assert!(
        !failure.error.to_string().contains("TOPSECRET"),
        "{failure:?}"
    );
}

/// A Redis of this test's own that speaks only TLS (a private CA) and requires a password:
/// the sink connects over `rediss://` with `ca_file` and its entry lands; a wrong password or
/// the public roots (which do not know the CA) are unreachable, and no error shows the
/// password.
#[tokio::test]
async fn tls_with_a_private_ca_and_a_password() {
    use crate::sinks::testing::{assert_refused_quietly, server_binary, PrivateServer, TestCert};

    let test = "sinks::redis_stream::tls_with_a_private_ca_and_a_password";
    let Some(binary) = server_binary(test, "redis-server") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let cert = TestCert::generate(dir.path());
    let port = PrivateServer::free_port();
    let args: Vec<String> = [
        "--port",
        "0",
        "--tls-port",
        &port.to_string(),
        "--bind",
        "127.0.0.1",
        "--tls-cert-file",
        cert.cert.to_str().unwrap(),
        "--tls-key-file",
        cert.key.to_str().unwrap(),
        "--tls-ca-cert-file",
        cert.cert.to_str().unwrap(),
        "--tls-auth-clients",
        "no",
        "--requirepass",
        "s3cret-pass",
        "--save",
        "",
        "--appendonly",
        "no",
    ]
    .map(str::to_owned)
    .to_vec();
    let _server = PrivateServer::start(&binary, &args, port, dir);

    let with = |password: &str, ca_file: Option<&std::path::Path>| {
        let url = format!("rediss://:{password}@localhost:{port}/0");
        let mut config = config(&url, "kirim:tls", 1000);
        config.ca_file = ca_file.map(ToOwned::to_owned);
        RedisStreamSink::new("bus", &config)
    };
    let good = with("s3cret-pass", Some(&cert.cert));
    good.deliver(&[event(1, b"{}", false)]).await.unwrap();

    for (sink, what) in [
        (with("wrong-pass", Some(&cert.cert)), "a wrong password"),
        (with("s3cret-pass", None), "the public roots"),
    ] {
        let failure = sink.deliver(&[event(2, b"{}", false)]).await.unwrap_err();
        assert_refused_quietly(&failure, what, &["s3cret", "wrong-pass"]);
    }
}
