//! The daemon's Prometheus metrics: counters the hot paths bump, and gauges read from the
//! store at scrape time.
//!
//! [`Metrics`] is cheap to clone (an `Arc`) and cheap to call: the counters a request or a
//! delivery touches are created once, up front, for every outcome, configured secret and
//! configured sink, and kept in plain arrays and maps, so counting takes no lock and allocates
//! nothing. Only two paths go through a prometheus-client `Family` lookup: accepted events by
//! type and source (types are open-ended, so that label set is built per accepted event), and a
//! secret id that was not configured at start-up (added by a reload). The
//! flush latency histogram has prometheus-client's own short mutex.
//!
//! The gauges (queue depth, oldest undelivered age, dead letters, quarantine size, store
//! bytes) are not kept here: [`Metrics::render`] takes a [`Snapshot`] that the admin listener
//! reads from the store for each scrape, so a gauge is never stale and never left behind.
//!
//! The live feed `kirimhook tail` watches ([`Activity`]) rides along: every part that counts
//! an outcome holds this handle, and the same places publish it (free while nobody watches).
//!
//! This module does no I/O and knows nothing of HTTP; `handler`, `dispatch` and `admin` call it.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::text::{encode_eof, encode_registry};
use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Registry, Unit};

use crate::activity::Activity;
use crate::receive::envelope::Source;
use crate::receive::signature::VerifyError;

/// The `Content-Type` of [`Metrics::render`]'s output.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The prefix of every metric name.
const PREFIX: &str = "kirimhook";

/// How a request to the public listener ended: the `outcome` label of
/// `kirimhook_requests_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// 200 `accepted`: a new event, on disk.
    Accepted,
    /// 200 `duplicate`: every dedupe key was known.
    Duplicate,
    /// 200 `quarantined`: authentic, body not recognised.
    Quarantined,
    /// 401: no signature header.
    MissingSignature,
    /// 401: malformed signature or no secret matched.
    InvalidSignature,
    /// 401: timestamp outside the tolerance.
    SignatureExpired,
    /// 413.
    BodyTooLarge,
    /// 408: the body did not arrive in time.
    BodyTimeout,
    /// 400: the body could not be read (connection error mid-body).
    UnreadableBody,
    /// 503: the store did not take the delivery.
    StoreUnavailable,
    /// 503: free disk space is below `store.min_free_bytes`; nothing was written.
    LowDisk,
    /// 503: a fault no retry heals stopped admissions (stdout's consumer gone, store gone).
    NotAccepting,
    /// 404: another path.
    NotFound,
    /// 405: another method on the webhook path.
    MethodNotAllowed,
}

impl Outcome {
    /// Every outcome, in label order.
    pub const ALL: [Outcome; 14] = [
        Outcome::Accepted,
        Outcome::Duplicate,
        Outcome::Quarantined,
        Outcome::MissingSignature,
        Outcome::InvalidSignature,
        Outcome::SignatureExpired,
        Outcome::BodyTooLarge,
        Outcome::BodyTimeout,
        Outcome::UnreadableBody,
        Outcome::StoreUnavailable,
        Outcome::LowDisk,
        Outcome::NotAccepting,
        Outcome::NotFound,
        Outcome::MethodNotAllowed,
    ];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Accepted => "accepted",
            Outcome::Duplicate => "duplicate",
            Outcome::Quarantined => "quarantined",
            Outcome::MissingSignature => "missing_signature",
            Outcome::InvalidSignature => "invalid_signature",
            Outcome::SignatureExpired => "signature_expired",
            Outcome::BodyTooLarge => "body_too_large",
            Outcome::BodyTimeout => "body_timeout",
            Outcome::UnreadableBody => "unreadable_body",
            Outcome::StoreUnavailable => "store_unavailable",
            Outcome::LowDisk => "low_disk",
            Outcome::NotAccepting => "not_accepting",
            Outcome::NotFound => "not_found",
            Outcome::MethodNotAllowed => "method_not_allowed",
        }
    }

    /// The outcome of a failed verification (the same split as the 401 bodies).
    pub fn of_verify_error(error: &VerifyError) -> Outcome {
        match error {
            VerifyError::Missing => Outcome::MissingSignature,
            VerifyError::Expired { .. } => Outcome::SignatureExpired,
            VerifyError::Malformed(_) | VerifyError::NoMatch => Outcome::InvalidSignature,
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

impl EncodeLabelValue for Outcome {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        encoder.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: Outcome,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SecretLabels {
    secret_id: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EventLabels {
    r#type: String,
    source: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SinkLabels {
    sink: String,
}

/// The counters of one sink, handed to its dispatcher. Cloning shares them.
#[derive(Debug, Clone, Default)]
pub struct SinkCounters {
    delivered: Counter,
    failed_attempts: Counter,
    dead_lettered: Counter,
    filtered: Counter,
}

impl SinkCounters {
    /// `n` events delivered (2xx, or written to stdout).
    pub fn delivered(&self, n: usize) {
        if n > 0 {
            self.delivered.inc_by(n as u64);
        }
    }

    /// One attempt failed (retryable, permanent, or the sink was unreachable).
    pub fn failed_attempt(&self) {
        self.failed_attempts.inc();
    }

    /// One event moved to the dead letters.
    pub fn dead_lettered(&self) {
        self.dead_lettered.inc();
    }
}

/// What the store and the process say at scrape time, for the gauges.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Snapshot {
    /// Per configured sink.
    pub sinks: Vec<SinkSnapshot>,
    /// Quarantined deliveries (exact).
    pub quarantined: u64,
    /// Bytes the store's files take on disk.
    pub store_bytes: u64,
    /// Free bytes on the store's filesystem at the last sample.
    pub store_free_bytes: u64,
    /// Whether deliveries are refused because free space is below `store.min_free_bytes`.
    pub low_disk: bool,
    /// Acknowledged deliveries the store found missing at recovery, over its life.
    pub recovery_dropped: u64,
    /// Log lines that could not be written to stderr since the start.
    pub log_write_failures: u64,
}

/// One sink's gauges.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SinkSnapshot {
    /// The sink's name.
    pub name: String,
    /// Events in its queue.
    pub queued: u64,
    /// Age of the oldest event in its queue (zero when empty).
    pub oldest_age: Duration,
    /// Events in its dead letters.
    pub dead_letters: u64,
}

/// The daemon's metrics. Cheap to clone.
#[derive(Clone)]
pub struct Metrics {
    inner: Arc<Inner>,
}

struct Inner {
    registry: Registry,
    requests: [Counter; Outcome::ALL.len()],
    verified: Family<SecretLabels, Counter>,
    verified_by_id: HashMap<String, Counter>,
    events: Family<EventLabels, Counter>,
    flush: Histogram,
    sinks: HashMap<String, SinkCounters>,
    activity: Activity,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new(&[], &[])
    }
}

impl Metrics {
    /// Metrics for a daemon with these secret ids and sink names; their series exist (at 0)
    /// from the start, so that rates and alerts work before the first event.
    pub fn new(secret_ids: &[&str], sink_names: &[&str]) -> Metrics {
        let mut registry = Registry::with_prefix(PREFIX);

        let by_outcome = Family::<OutcomeLabels, Counter>::default();
        let requests =
            Outcome::ALL.map(|outcome| by_outcome.get_or_create_owned(&OutcomeLabels { outcome }));
        registry.register(
            "requests",
            "Requests to the webhook listener, by how they were answered",
            by_outcome,
        );

        let verified = Family::<SecretLabels, Counter>::default();
        let verified_by_id = secret_ids
            .iter()
            .map(|id| {
                let labels = SecretLabels {
                    secret_id: (*id).to_owned(),
                };
                ((*id).to_owned(), verified.get_or_create_owned(&labels))
            })
            .collect();
        registry.register(
            "verified",
            "Deliveries whose signature verified, by the id of the secret that matched",
            verified.clone(),
        );

        let events = Family::<EventLabels, Counter>::default();
        registry.register(
            "events_accepted",
            "New events accepted (on disk), by event type and source",
            events.clone(),
        );

        // 100 µs to ~3.3 s: a group commit is one fdatasync, normally well under 10 ms.
        let flush = Histogram::new(exponential_buckets(0.0001, 2.0, 16));
        registry.register_with_unit(
            "store_flush",
            "Time from handing a verified delivery to the store to its answer (dedupe check, \
             group commit and fdatasync)",
            Unit::Seconds,
            flush.clone(),
        );

        let delivered = Family::<SinkLabels, Counter>::default();
        let failed = Family::<SinkLabels, Counter>::default();
        let dead = Family::<SinkLabels, Counter>::default();
        let filtered = Family::<SinkLabels, Counter>::default();
        let sinks = sink_names
            .iter()
            .map(|name| {
                let labels = SinkLabels {
                    sink: (*name).to_owned(),
                };
                let counters = SinkCounters {
                    delivered: delivered.get_or_create_owned(&labels),
                    failed_attempts: failed.get_or_create_owned(&labels),
                    dead_lettered: dead.get_or_create_owned(&labels),
                    filtered: filtered.get_or_create_owned(&labels),
                };
                ((*name).to_owned(), counters)
            })
            .collect();
        registry.register(
            "sink_delivered",
            "Events a sink delivered (2xx from an http sink, a line written by stdout)",
            delivered,
        );
        registry.register(
            "sink_failed_attempts",
            "Failed delivery attempts of a sink, retried or not, probes of an unreachable \
             sink included",
            failed,
        );
        registry.register(
            "sink_dead_lettered",
            "Events a sink gave up on and moved to its dead letters",
            dead,
        );
        registry.register(
            "sink_filtered",
            "Accepted events not queued for a sink because its filter (events, sources, \
             phone_number_ids) did not match",
            filtered,
        );

        Metrics {
            inner: Arc::new(Inner {
                registry,
                requests,
                verified,
                verified_by_id,
                events,
                flush,
                sinks,
                activity: Activity::new(),
            }),
        }
    }

    /// The live feed of what happens, for `kirimhook tail`.
    pub fn activity(&self) -> &Activity {
        &self.inner.activity
    }

    /// Counts one request to the webhook listener.
    pub fn request(&self, outcome: Outcome) {
        self.inner.requests[outcome.index()].inc();
    }

    /// Counts one delivery verified by the secret `secret_id`.
    pub fn verified(&self, secret_id: &str) {
        match self.inner.verified_by_id.get(secret_id) {
            Some(counter) => {
                counter.inc();
            }
            None => {
                let labels = SecretLabels {
                    secret_id: secret_id.to_owned(),
                };
                self.inner.verified.get_or_create(&labels).inc();
            }
        }
    }

    /// Counts one new event of `event_type` (`-` when it has none) from `source`.
    pub fn event_accepted(&self, event_type: Option<&str>, source: Option<Source>) {
        let labels = EventLabels {
            r#type: event_type.unwrap_or("-").to_owned(),
            source: source.map_or("-", Source::as_str),
        };
        self.inner.events.get_or_create(&labels).inc();
    }

    /// Records how long the store took to answer one admission.
    pub fn store_flush(&self, took: Duration) {
        self.inner.flush.observe(took.as_secs_f64());
    }

    /// The counters of sink `name` (fresh, unregistered ones for a sink not configured at
    /// start-up, so a caller never has to handle "missing").
    pub fn sink(&self, name: &str) -> SinkCounters {
        self.inner.sinks.get(name).cloned().unwrap_or_default()
    }

    /// Counts one accepted event that `sink`'s filter kept out of its queue.
    pub fn sink_filtered(&self, sink: &str) {
        if let Some(counters) = self.inner.sinks.get(sink) {
            counters.filtered.inc();
        }
    }

    /// Every metric in the OpenMetrics text format ([`CONTENT_TYPE`]): the counters, then
    /// gauges made from `snapshot`.
    pub fn render(&self, snapshot: &Snapshot) -> String {
        let mut gauges = Registry::with_prefix(PREFIX);
        let queued = Family::<SinkLabels, Gauge>::default();
        let oldest = Family::<SinkLabels, Gauge<f64, std::sync::atomic::AtomicU64>>::default();
        let dead = Family::<SinkLabels, Gauge>::default();
        for sink in &snapshot.sinks {
            let labels = SinkLabels {
                sink: sink.name.clone(),
            };
            queued
                .get_or_create(&labels)
                .set(i64::try_from(sink.queued).unwrap_or(i64::MAX));
            oldest
                .get_or_create(&labels)
                .set(sink.oldest_age.as_secs_f64());
            dead.get_or_create(&labels)
                .set(i64::try_from(sink.dead_letters).unwrap_or(i64::MAX));
        }
        gauges.register(
            "sink_queue_depth",
            "Events waiting in a sink's queue, those waiting for a retry included",
            queued,
        );
        gauges.register_with_unit(
            "sink_oldest_undelivered_age",
            "Age of the oldest event in a sink's queue; 0 when the queue is empty",
            Unit::Seconds,
            oldest,
        );
        gauges.register(
            "sink_dead_letters",
            "Events in a sink's dead letters (kirimhook dead-letters list --sink NAME)",
            dead,
        );
        let quarantined = Gauge::<i64>::default();
        quarantined.set(i64::try_from(snapshot.quarantined).unwrap_or(i64::MAX));
        gauges.register(
            "quarantine_size",
            "Authentic deliveries kept in quarantine because their body was not recognised",
            quarantined,
        );
        let bytes = Gauge::<i64>::default();
        bytes.set(i64::try_from(snapshot.store_bytes).unwrap_or(i64::MAX));
        gauges.register_with_unit(
            "store",
            "Disk space the store's files take",
            Unit::Bytes,
            bytes,
        );
        let free = Gauge::<i64>::default();
        free.set(i64::try_from(snapshot.store_free_bytes).unwrap_or(i64::MAX));
        gauges.register_with_unit(
            "store_free",
            "Free space on the store's filesystem at the last sample",
            Unit::Bytes,
            free,
        );
        let low = Gauge::<i64>::default();
        low.set(i64::from(snapshot.low_disk));
        gauges.register(
            "store_low_disk",
            "1 while deliveries are refused (503) because free space is below \
             store.min_free_bytes",
            low,
        );
        let dropped = Counter::<u64>::default();
        dropped.inc_by(snapshot.recovery_dropped);
        gauges.register(
            "store_recovery_dropped",
            "Acknowledged deliveries the store found missing when it recovered (a truncated \
             or damaged journal), over the store's life",
            dropped,
        );
        let log_failures = Counter::<u64>::default();
        log_failures.inc_by(snapshot.log_write_failures);
        gauges.register(
            "log_write_failures",
            "Log lines dropped because stderr could not be written",
            log_failures,
        );

        let mut out = String::with_capacity(4096);
        // Writing into a String cannot fail; prometheus-client's own encoders return Ok.
        let rendered = encode_registry(&mut out, &self.inner.registry)
            .and_then(|()| encode_registry(&mut out, &gauges))
            .and_then(|()| encode_eof(&mut out));
        if let Err(e) = rendered {
            let _ = writeln!(out, "# encoding failed: {e}");
        }
        out
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// The value of the sample `name` (with its labels exactly as rendered), if present.
    fn sample(text: &str, series: &str) -> Option<f64> {
        text.lines()
            .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
            .map(|v| v.split(' ').next().unwrap().parse().unwrap())
    }

    #[test]
    fn every_series_exists_from_the_start() {
        let metrics = Metrics::new(&["sec_A", "sec_B"], &["stdout", "app"]);
        let text = metrics.render(&Snapshot::default());
        for outcome in Outcome::ALL {
            let series = format!(
                "kirimhook_requests_total{{outcome=\"{}\"}}",
                outcome.as_str()
            );
            assert_eq!(sample(&text, &series), Some(0.0), "{series} in\n{text}");
        }
        for id in ["sec_A", "sec_B"] {
            let series = format!("kirimhook_verified_total{{secret_id=\"{id}\"}}");
            assert_eq!(sample(&text, &series), Some(0.0), "{series} in\n{text}");
        }
        for sink in ["stdout", "app"] {
            for name in [
                "sink_delivered_total",
                "sink_failed_attempts_total",
                "sink_dead_lettered_total",
            ] {
                let series = format!("kirimhook_{name}{{sink=\"{sink}\"}}");
                assert_eq!(sample(&text, &series), Some(0.0), "{series} in\n{text}");
            }
        }
        assert!(text.ends_with("# EOF\n"), "{text}");
        assert_eq!(text.matches("# EOF").count(), 1, "{text}");
    }

    #[test]
    fn counters_count() {
        let metrics = Metrics::new(&["sec_A"], &["app"]);
        metrics.request(Outcome::Accepted);
        metrics.request(Outcome::Accepted);
        metrics.request(Outcome::InvalidSignature);
        metrics.verified("sec_A");
        metrics.verified("sec_LATE");
        metrics.event_accepted(Some("message.received"), Some(Source::Meta));
        metrics.event_accepted(Some("message.received"), Some(Source::Meta));
        metrics.event_accepted(None, None);
        let app = metrics.sink("app");
        app.delivered(3);
        app.failed_attempt();
        app.dead_lettered();
        metrics.sink("unknown").delivered(5);
        metrics.store_flush(Duration::from_micros(300));

        let text = metrics.render(&Snapshot::default());
        let value =
            |series: &str| sample(&text, series).unwrap_or_else(|| panic!("{series} in\n{text}"));
        assert_eq!(value("kirimhook_requests_total{outcome=\"accepted\"}"), 2.0);
        assert_eq!(
            value("kirimhook_requests_total{outcome=\"invalid_signature\"}"),
            1.0
        );
        assert_eq!(
            value("kirimhook_requests_total{outcome=\"duplicate\"}"),
            0.0
        );
        assert_eq!(value("kirimhook_verified_total{secret_id=\"sec_A\"}"), 1.0);
        assert_eq!(
            value("kirimhook_verified_total{secret_id=\"sec_LATE\"}"),
            1.0
        );
        assert_eq!(
            value("kirimhook_events_accepted_total{type=\"message.received\",source=\"meta\"}"),
            2.0
        );
        assert_eq!(
            value("kirimhook_events_accepted_total{type=\"-\",source=\"-\"}"),
            1.0
        );
        assert_eq!(value("kirimhook_sink_delivered_total{sink=\"app\"}"), 3.0);
        assert_eq!(
            value("kirimhook_sink_failed_attempts_total{sink=\"app\"}"),
            1.0
        );
        assert_eq!(
            value("kirimhook_sink_dead_lettered_total{sink=\"app\"}"),
            1.0
        );
        assert!(!text.contains("sink=\"unknown\""), "{text}");
        assert_eq!(value("kirimhook_store_flush_seconds_count"), 1.0);
        assert_eq!(
            value("kirimhook_store_flush_seconds_bucket{le=\"0.0004\"}"),
            1.0
        );
        assert_eq!(
            value("kirimhook_store_flush_seconds_bucket{le=\"0.0002\"}"),
            0.0
        );
        assert!(
            text.contains("# TYPE kirimhook_store_flush_seconds histogram"),
            "{text}"
        );
    }

    #[test]
    fn gauges_come_from_the_snapshot() {
        let metrics = Metrics::new(&[], &["app"]);
        let snapshot = Snapshot {
            sinks: vec![SinkSnapshot {
                name: "app".into(),
                queued: 7,
                oldest_age: Duration::from_millis(2500),
                dead_letters: 2,
            }],
            quarantined: 1,
            store_bytes: 4096,
            store_free_bytes: 1 << 30,
            low_disk: true,
            recovery_dropped: 1001,
            log_write_failures: 3,
        };
        metrics.sink_filtered("app");
        let text = metrics.render(&snapshot);
        let value =
            |series: &str| sample(&text, series).unwrap_or_else(|| panic!("{series} in\n{text}"));
        assert_eq!(value("kirimhook_sink_queue_depth{sink=\"app\"}"), 7.0);
        assert_eq!(
            value("kirimhook_sink_oldest_undelivered_age_seconds{sink=\"app\"}"),
            2.5
        );
        assert_eq!(value("kirimhook_sink_dead_letters{sink=\"app\"}"), 2.0);
        assert_eq!(value("kirimhook_quarantine_size"), 1.0);
        assert_eq!(value("kirimhook_store_bytes"), 4096.0);
        assert_eq!(value("kirimhook_store_free_bytes"), f64::from(1u32 << 30));
        assert_eq!(value("kirimhook_store_low_disk"), 1.0);
        assert_eq!(value("kirimhook_store_recovery_dropped_total"), 1001.0);
        assert_eq!(value("kirimhook_log_write_failures_total"), 3.0);
        assert_eq!(value("kirimhook_sink_filtered_total{sink=\"app\"}"), 1.0);
        assert!(
            text.contains("# TYPE kirimhook_sink_queue_depth gauge"),
            "{text}"
        );
        assert!(
            text.contains("# UNIT kirimhook_store_bytes bytes"),
            "{text}"
        );
        assert!(text.ends_with("# EOF\n"), "{text}");
    }

    #[test]
    fn verify_errors_map_to_the_401_reasons() {
        let expired = VerifyError::Expired {
            timestamp: 1,
            skew_secs: 400,
            tolerance_secs: 300,
        };
        for error in [
            VerifyError::Missing,
            expired,
            VerifyError::Malformed("no t element"),
            VerifyError::NoMatch,
        ] {
            assert_eq!(Outcome::of_verify_error(&error).as_str(), error.reason());
        }
        for (i, outcome) in Outcome::ALL.iter().enumerate() {
            assert_eq!(outcome.index(), i);
        }
    }
}
