//! The `redis_stream` sink over the real daemon and a real Redis (`KIRIMHOOK_TEST_REDIS_URL`;
//! skipped without it, a failure with `KIRIMHOOK_REQUIRE_SERVICES=1`): every fixture lands in
//! the stream byte-exact with its metadata fields, a sender's retry is not published again
//! (neither by the daemon that accepted it nor by a second daemon with a store of its own that
//! publishes into the same stream: Redis' dedupe marker drops it), filters apply, Redis taken
//! away (through a [`Proxy`]) and given back loses and dead-letters nothing, and after a kill
//! -9 under load every acknowledged event is in the stream once. Each test
//! uses a stream key of its own ([`unique_name`]), deleted with its markers when the test ends
//! ([`StreamGuard`]).

use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::Value;
use serde_json::json;

use crate::admin::{get, sample, wait_for_sample};
use crate::brokers::{assert_nothing_dead_or_queued, kill_9_under_load, wait_paused, SLOW_ANSWERS};
use crate::daemon::{temp_dir, Daemon, Settings, DEADLINE};
use crate::fixtures::{self, sentinel, Delivery};
use crate::http::Client;
use crate::proxy::{url_addr, via, Proxy};
use crate::services::{service_url, unique_name};

/// The variable naming the Redis of the broker tests.
const REDIS_URL_VAR: &str = "KIRIMHOOK_TEST_REDIS_URL";

/// One `[[sinks]]` table of kind `redis_stream` named `name`, with quick retries and the
/// `filters` lines verbatim.
fn sink_toml(name: &str, url: &str, stream: &str, filters: &str) -> String {
    format!(
        "[[sinks]]\nname = \"{name}\"\nkind = \"redis_stream\"\nurl = \"{url}\"\n\
         stream = \"{stream}\"\n{filters}\n\
         [sinks.retry]\ninitial_backoff_ms = 50\nmax_backoff_secs = 1\nmax_attempts = 20\n\n"
    )
}

/// The sink's settled deliveries, as `/metrics` renders them.
const DELIVERED: &str = "kirimhook_sink_delivered_total{sink=\"bus\"}";
/// The sink's dead letters, as `/metrics` renders them.
const DEAD_LETTERED: &str = "kirimhook_sink_dead_lettered_total{sink=\"bus\"}";

async fn connect(url: &str) -> MultiplexedConnection {
    redis::Client::open(url)
        .expect("a valid KIRIMHOOK_TEST_REDIS_URL")
        .get_multiplexed_async_connection()
        .await
        .unwrap_or_else(|e| panic!("cannot connect to {REDIS_URL_VAR}: {e}"))
}

/// One stream entry: its fields in order.
type Entry = Vec<(String, Vec<u8>)>;

/// Every entry of `stream`, oldest first.
async fn entries(conn: &mut MultiplexedConnection, stream: &str) -> Vec<Entry> {
    let value: Value = redis::cmd("XRANGE")
        .arg(stream)
        .arg("-")
        .arg("+")
        .query_async(conn)
        .await
        .expect("XRANGE");
    let items = match value {
        Value::Array(items) => items,
        other => panic!("XRANGE answered {other:?}"),
    };
    items
        .into_iter()
        .map(|item| {
            let (_id, fields): (String, Entry) =
                redis::from_redis_value(item).expect("an entry of field/value pairs");
            fields
        })
        .collect()
}

/// How many entries `stream` holds (`XLEN`).
async fn count(conn: &mut MultiplexedConnection, stream: &str) -> usize {
    redis::cmd("XLEN")
        .arg(stream)
        .query_async(conn)
        .await
        .expect("XLEN")
}

/// The `kirim-event-id` of every entry of `stream`, oldest first.
async fn event_ids(conn: &mut MultiplexedConnection, stream: &str) -> Vec<String> {
    entries(conn, stream)
        .await
        .iter()
        .map(|e| {
            field(e, "kirim-event-id")
                .expect("kirim-event-id")
                .to_owned()
        })
        .collect()
}

/// Polls `stream` until it holds `count` entries or the deadline passes; the entries then.
async fn wait_for_entries(
    conn: &mut MultiplexedConnection,
    stream: &str,
    count: usize,
) -> Vec<Entry> {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        let found = entries(conn, stream).await;
        if found.len() >= count || tokio::time::Instant::now() >= deadline {
            return found;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A test's own stream key; the stream and its dedupe markers (`<stream>:dedupe:*`) are deleted
/// when the guard is dropped, also when the test panics. Best effort: a key left behind costs
/// memory, not a wrong result, since every name is unique.
struct StreamGuard {
    url: String,
    key: String,
}

impl StreamGuard {
    /// A guard for a new stream key `kirimhook:<unique name>` in the Redis at `url`.
    fn unique(url: &str, prefix: &str) -> StreamGuard {
        StreamGuard {
            url: url.to_owned(),
            key: format!("kirimhook:{}", unique_name(prefix)),
        }
    }
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        // A blocking connection: this may run while a runtime unwinds.
        let Ok(mut conn) = redis::Client::open(self.url.as_str()).and_then(|c| c.get_connection())
        else {
            return;
        };
        let markers: Vec<String> = redis::cmd("KEYS")
            .arg(format!("{}:dedupe:*", self.key))
            .query(&mut conn)
            .unwrap_or_default();
        let _: redis::RedisResult<i64> = redis::cmd("DEL")
            .arg(&self.key)
            .arg(markers)
            .query(&mut conn);
    }
}

/// The value of `field` in `entry` as text.
fn field<'a>(entry: &'a Entry, name: &str) -> Option<&'a str> {
    entry
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| std::str::from_utf8(v).expect("a metadata field is UTF-8"))
}

/// Sends `delivery` and asserts kirim.dev is told `status` (`accepted`, `duplicate`).
async fn send_expecting(client: &mut Client, delivery: &Delivery, status: &str, what: &str) {
    let reply = client.send(delivery).await;
    reply.expect(200, json!({ "status": status }), what);
}

async fn send_accepted(client: &mut Client, delivery: &Delivery, what: &str) {
    send_expecting(client, delivery, "accepted", what).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_fixture_lands_byte_exact_with_its_fields_and_a_retry_is_not_published_again() {
    let test = "redis_stream::every_fixture_lands_byte_exact_with_its_fields";
    let Some(url) = service_url(test, REDIS_URL_VAR) else {
        return;
    };
    let guard = StreamGuard::unique(&url, "e2e_fixtures");
    let stream = guard.key.clone();
    let mut conn = connect(&url).await;
    // The stdout sink runs beside it: its lines say what the daemon knew of each event.
    let settings = Settings {
        extra_sinks: sink_toml("bus", &url, &stream, ""),
        ..Settings::default()
    };
    let dir = temp_dir();
    let mut daemon = Daemon::start(dir.path(), &settings).await;
    let mut client = daemon.client();

    let all = fixtures::all();
    let mut sent = Vec::new();
    for fixture in &all {
        let delivery = fixture.signed_now();
        send_accepted(&mut client, &delivery, &fixture.name).await;
        sent.push(delivery);
    }
    let first = wait_for_entries(&mut conn, &stream, all.len()).await;
    // kirim.dev retries every delivery (same event, attempt 2): a duplicate, not published
    // again.
    for (fixture, delivery) in all.iter().zip(&sent) {
        let secrets: Vec<&str> = fixture.secrets.iter().map(String::as_str).collect();
        let retry = delivery.clone().retry(2, &secrets);
        let what = format!("{} retry", fixture.name);
        send_expecting(&mut client, &retry, "duplicate", &what).await;
    }
    // A second daemon with a store of its own publishes the same events into the same stream
    // (as after losing the first one's store): Redis drops every one of them.
    let other_dir = temp_dir();
    let mut other = Daemon::start(other_dir.path(), &settings).await;
    let mut other_client = other.client();
    for (fixture, delivery) in all.iter().zip(&sent) {
        send_accepted(
            &mut other_client,
            delivery,
            &format!("{} again", fixture.name),
        )
        .await;
    }
    // Each daemon settles every event with the sink (the second one's as dropped by Redis).
    let count = all.len() as f64;
    wait_for_sample(&other, DELIVERED, count).await;
    wait_for_sample(&daemon, DELIVERED, count).await;
    let dead = [
        sample(&get(&daemon, "/metrics").await.body, DEAD_LETTERED),
        sample(&get(&other, "/metrics").await.body, DEAD_LETTERED),
    ];
    other.stop_gracefully().await;
    daemon.stop_gracefully().await;
    let last = entries(&mut conn, &stream).await;
    drop(guard);

    assert_eq!(
        first.len(),
        all.len(),
        "one entry per fixture; the stream holds {first:?}"
    );
    assert_eq!(
        last.len(),
        all.len(),
        "retries and a second daemon's republish added entries"
    );
    let events = daemon.events();
    for fixture in &all {
        let entry = first
            .iter()
            .find(|e| field(e, "kirim-event-id") == Some(fixture.event_id()))
            .unwrap_or_else(|| panic!("{}: no entry for {}", fixture.name, fixture.event_id()));
        let line = events
            .iter()
            .find(|e| e.event_id() == Some(fixture.event_id()))
            .unwrap_or_else(|| panic!("{}: no stdout line", fixture.name));
        let what = &fixture.name;
        assert_eq!(entry[0].0, "body", "{what}: body is the first field");
        assert_eq!(entry[0].1, fixture.body, "{what}: body bytes");
        assert_eq!(
            field(entry, "kirim-event-type"),
            Some(fixture.header("X-Kirim-Event")),
            "{what}"
        );
        assert_eq!(
            field(entry, "kirim-source"),
            Some(fixture.source()),
            "{what}"
        );
        assert_eq!(
            field(entry, "kirim-delivery-id"),
            Some(fixture.header("X-Kirim-Delivery-Id")),
            "{what}"
        );
        assert_eq!(
            field(entry, "kirim-received-at"),
            line.str("received_at"),
            "{what}"
        );
        assert_eq!(
            field(entry, "kirim-dedupe-key"),
            Some(fixture.dedupe_keys[0].as_str()),
            "{what}"
        );
        assert_eq!(
            field(entry, "kirim-phone-number-id"),
            line.str("phone_number_id"),
            "{what}"
        );
        if fixture.source() == "meta" {
            assert!(
                field(entry, "kirim-phone-number-id").is_some(),
                "{what}: a Meta event carries its phone number id"
            );
        }
        let received = field(entry, "kirim-received-at").expect("received-at");
        assert!(
            received.ends_with('Z') && received.len() == "2026-06-01T12:00:00.250Z".len(),
            "{what}: {received}"
        );
    }
    assert_eq!(dead, [Some(0.0), Some(0.0)], "nothing was dead-lettered");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filters_choose_which_events_the_stream_gets() {
    let test = "redis_stream::filters_choose_which_events_the_stream_gets";
    let Some(url) = service_url(test, REDIS_URL_VAR) else {
        return;
    };
    let guard = StreamGuard::unique(&url, "e2e_filters");
    let stream = guard.key.clone();
    let mut conn = connect(&url).await;
    let settings = Settings {
        extra_sinks: sink_toml("bus", &url, &stream, "sources = [\"kirim\"]"),
        ..Settings::default()
    };
    let dir = temp_dir();
    let mut daemon = Daemon::start(dir.path(), &settings).await;
    let mut client = daemon.client();
    let all = fixtures::all();
    for fixture in &all {
        send_accepted(&mut client, &fixture.signed_now(), &fixture.name).await;
    }
    for fixture in &all {
        daemon.wait_for_event(fixture.event_id()).await;
    }
    let kirim: Vec<&str> = all
        .iter()
        .filter(|f| f.source() == "kirim")
        .map(|f| f.event_id())
        .collect();
    let found = wait_for_entries(&mut conn, &stream, kirim.len()).await;
    daemon.stop_gracefully().await;
    let last = entries(&mut conn, &stream).await;
    drop(guard);

    assert!(kirim.len() < all.len(), "the fixtures hold Meta events too");
    let ids: Vec<&str> = found
        .iter()
        .map(|e| field(e, "kirim-event-id").expect("event id"))
        .collect();
    let mut sorted_ids = ids.clone();
    sorted_ids.sort_unstable();
    let mut expected = kirim.clone();
    expected.sort_unstable();
    assert_eq!(
        sorted_ids, expected,
        "only the kirim events reach the stream"
    );
    assert_eq!(
        last.len(),
        kirim.len(),
        "nothing more after a graceful stop"
    );
}

/// The settings of a daemon whose only sink is `sinks`.
fn only(sinks: String) -> Settings {
    Settings {
        stdout_sink: false,
        extra_sinks: sinks,
        ..Settings::default()
    }
}

/// Redis taken away from the daemon (a [`Proxy`] between them is cut) while events are
/// accepted, then given back: every accepted event is in the stream exactly once, and nothing
/// is dead-lettered or left queued, though the sink may try an event only 3 times (an outage
/// counted as failed attempts would dead-letter events).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_and_back_loses_nothing_and_dead_letters_nothing() {
    let test = "redis_stream::redis_down_and_back_loses_nothing_and_dead_letters_nothing";
    let Some(url) = service_url(test, REDIS_URL_VAR) else {
        return;
    };
    let guard = StreamGuard::unique(&url, "e2e_down");
    let stream = guard.key.clone();
    let mut conn = connect(&url).await;
    let proxy = Proxy::start(url_addr(&url, 6379)).await;
    let sink = sink_toml("bus", &via(&url, proxy.addr), &stream, "")
        .replace("max_attempts = 20", "max_attempts = 3");
    let dir = temp_dir();
    let mut daemon = Daemon::start(dir.path(), &only(sink)).await;
    let mut client = daemon.client();

    let first = sentinel();
    send_accepted(&mut client, &first, "before the outage").await;
    wait_for_entries(&mut conn, &stream, 1).await;

    proxy.cut();
    let mut ids = vec![first.event_id().to_owned()];
    for i in 0..20 {
        let event = sentinel();
        send_accepted(&mut client, &event, &format!("event {i} during the outage")).await;
        ids.push(event.event_id().to_owned());
    }
    wait_paused(&daemon, "bus").await;
    proxy.restore();
    wait_for_entries(&mut conn, &stream, ids.len()).await;
    daemon.stop_gracefully().await;

    let mut found = event_ids(&mut conn, &stream).await;
    found.sort_unstable();
    ids.sort_unstable();
    assert_eq!(found, ids, "every accepted event exactly once");
    assert_nothing_dead_or_queued(&daemon, "bus").await;
    drop(guard);
}

/// kill -9 of a daemon under a concurrent load, while its `redis_stream` sink publishes, then a
/// restart on the same store: every acknowledged event is in the stream, and none twice (the
/// restarted daemon publishes again what Redis added but the daemon had not recorded, and the
/// dedupe marker makes the script drop those copies).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_under_load_then_restart_adds_every_acknowledged_event_once() {
    let test = "redis_stream::kill_9_under_load_then_restart_adds_every_acknowledged_event_once";
    let Some(url) = service_url(test, REDIS_URL_VAR) else {
        return;
    };
    let guard = StreamGuard::unique(&url, "e2e_kill");
    let stream = guard.key.clone();
    let mut conn = connect(&url).await;
    let proxy = Proxy::start_slow(url_addr(&url, 6379), SLOW_ANSWERS).await;
    let sink = sink_toml("bus", &via(&url, proxy.addr), &stream, "");
    let outcome = kill_9_under_load(&only(sink), "bus", async || {
        count(&mut conn.clone(), &stream).await
    })
    .await;

    let published = event_ids(&mut conn, &stream).await;
    let copies = outcome.assert_published(&published);
    assert_eq!(copies, 0, "no event twice in the stream");
    drop(guard);
}
