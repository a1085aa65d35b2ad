//! The daemon's live activity: what happened to each delivery (accepted, duplicate,
//! quarantined, rejected) and to each event at each sink (delivered, failed, dead-lettered), as
//! a feed that `kirimhook tail` watches through the admin listener (`GET /v1/tail`).
//!
//! It is a view, not a sink, and never holds anything back:
//! - [`Activity::publish`] never waits. Lines go into a ring of [`RING_LINES`]; a viewer that
//!   falls further behind loses the oldest ones and is told how many ([`What::Lost`]).
//! - With nobody watching it costs one atomic load: the line is never even built.
//! - Up to [`MAX_VIEWERS`] viewers watch at once, each at its own pace.
//!
//! Order: lines are in the order they were published. An event's `accepted` line is
//! published when the receive path hears that the commit is durable, which is also when the
//! sinks are woken for it; a sink answers after at least a claim and a delivery, so its lines
//! come later in practice, but a very quick sink (stdout) on a busy machine can come first.
//! `seq` ties the lines of one event together.
//!
//! Lines carry what the logs carry (types, ids, sink names, status codes, error texts), never
//! an event's body, a header value beyond the ids, or a secret; text from a request is cut to
//! [`MAX_FIELD_BYTES`]. Nothing here is stored: a line
//! published while nobody watches is gone.
//!
//! What it is not: the HTTP side of the feed (that is `admin`'s `/v1/tail`, which filters and
//! writes the lines as JSON) or its client (`ops::tail`).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;

use crate::receive::route::glob_match;

/// Lines kept for the slowest viewer; past that, it loses the oldest.
pub const RING_LINES: usize = 4096;
/// Longest text a line takes from a request (ids, types, attempt): a sender may put hundreds
/// of kilobytes into a header, which would otherwise sit in the ring for every slow viewer.
pub const MAX_FIELD_BYTES: usize = 200;
/// Viewers at once; one more is refused.
pub const MAX_VIEWERS: usize = 16;

/// One thing that happened, with when (RFC 3339, milliseconds, UTC).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Line {
    /// When it happened.
    pub at: String,
    /// What happened.
    #[serde(flatten)]
    pub what: What,
}

/// What happened. In JSON, `kind` names the variant (`accepted`, `delivered`, ...).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum What {
    /// A new event, stored and queued for `sinks`.
    Accepted {
        /// Its seq in the store.
        seq: u64,
        /// Its event type.
        event_type: Option<String>,
        /// `kirim` or `meta`.
        source: Option<String>,
        /// Its event id (or wamid).
        event_id: Option<String>,
        /// The line (WhatsApp phone_number_id) it is about, when one.
        phone_number_id: Option<String>,
        /// `X-Kirim-Delivery-Id`.
        delivery_id: Option<String>,
        /// The sinks it was queued for.
        sinks: Vec<String>,
    },
    /// Seen before: nothing was stored.
    Duplicate {
        /// Its event type.
        event_type: Option<String>,
        /// `kirim` or `meta`.
        source: Option<String>,
        /// Its event id.
        event_id: Option<String>,
        /// `X-Kirim-Delivery-Id`.
        delivery_id: Option<String>,
        /// `X-Kirim-Attempt`.
        attempt: Option<String>,
    },
    /// Authentic, body not recognised: kept in quarantine.
    Quarantined {
        /// Its seq in the quarantine.
        seq: u64,
        /// Why it was not recognised.
        reason: String,
        /// `X-Kirim-Event`, when sent.
        event_type: Option<String>,
        /// `X-Kirim-Event-Id`, when sent.
        event_id: Option<String>,
        /// `X-Kirim-Delivery-Id`.
        delivery_id: Option<String>,
    },
    /// Refused: not authentic, too large, the wrong path, or the daemon could not take it.
    Rejected {
        /// The status answered.
        status: u16,
        /// Why (`invalid_signature`, `body_too_large`, ...).
        reason: String,
        /// `X-Kirim-Delivery-Id`, when sent.
        delivery_id: Option<String>,
    },
    /// A sink has the event.
    Delivered {
        /// The sink and the event.
        #[serde(flatten)]
        event: SinkEvent,
        /// This sink's attempt at it (1-based).
        attempt: u32,
        /// How long the attempt took (the whole batch it went in).
        latency_ms: u64,
    },
    /// An attempt failed.
    Failed {
        /// The sink and the event.
        #[serde(flatten)]
        event: SinkEvent,
        /// This sink's attempt at it (1-based).
        attempt: u32,
        /// How long the attempt took.
        latency_ms: u64,
        /// The sink's own status code (an HTTP status), when it gave one.
        status: Option<u16>,
        /// What went wrong.
        error: String,
        /// When the next attempt goes, in milliseconds; `None` when the sink is unreachable
        /// (it is probed with back-off and the event keeps its attempts).
        retry_in_ms: Option<u64>,
    },
    /// A sink gave up on the event: it is in the sink's dead letters.
    DeadLettered {
        /// The sink and the event.
        #[serde(flatten)]
        event: SinkEvent,
        /// Attempts made.
        attempts: u32,
        /// The sink's own status code of the last attempt, when it gave one.
        status: Option<u16>,
        /// What went wrong last.
        error: String,
    },
    /// This viewer fell behind and missed `lines` lines (before filtering).
    Lost {
        /// How many.
        lines: u64,
    },
}

impl What {
    /// The sink and event a sink's outcome is about.
    pub fn sink_event(&self) -> Option<&SinkEvent> {
        match self {
            What::Delivered { event, .. }
            | What::Failed { event, .. }
            | What::DeadLettered { event, .. } => Some(event),
            _ => None,
        }
    }

    /// The event type this line is about, when it is about an event.
    pub fn event_type(&self) -> Option<&str> {
        match self {
            What::Accepted { event_type, .. }
            | What::Duplicate { event_type, .. }
            | What::Quarantined { event_type, .. } => event_type.as_deref(),
            other => other.sink_event()?.event_type.as_deref(),
        }
    }
}

/// `text` cut to at most [`MAX_FIELD_BYTES`] bytes (on a character boundary, `…` added), for a
/// field that came from a request.
pub fn clip(text: &str) -> String {
    if text.len() <= MAX_FIELD_BYTES {
        return text.to_owned();
    }
    let mut end = MAX_FIELD_BYTES - '…'.len_utf8();
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

/// Which sink and which event a sink's outcome line is about (flattened into the line).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SinkEvent {
    /// The sink.
    pub sink: String,
    /// The event's seq.
    pub seq: u64,
    /// Its event type.
    pub event_type: Option<String>,
    /// Its event id.
    pub event_id: Option<String>,
}

/// Which lines a viewer wants: `events` (event-type globs, as in a sink's `events` filter)
/// and one `sink`. Empty: every line.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    /// Event-type globs; a line must be about an event whose type matches one.
    pub events: Vec<String>,
    /// With a sink: that sink's outcomes, and the events accepted for it.
    pub sink: Option<String>,
}

impl Filter {
    /// Whether `what` passes. [`What::Lost`] always does: a viewer must know it missed lines.
    pub fn passes(&self, what: &What) -> bool {
        if matches!(what, What::Lost { .. }) {
            return true;
        }
        if let Some(wanted) = &self.sink {
            let about_it = match what {
                What::Accepted { sinks, .. } => sinks.iter().any(|s| s == wanted),
                other => other.sink_event().is_some_and(|e| &e.sink == wanted),
            };
            if !about_it {
                return false;
            }
        }
        if self.events.is_empty() {
            return true;
        }
        what.event_type()
            .is_some_and(|t| self.events.iter().any(|glob| glob_match(glob, t)))
    }
}

/// The feed. Cheap to clone; every clone publishes to the same viewers.
#[derive(Clone)]
pub struct Activity {
    inner: Arc<Inner>,
}

struct Inner {
    sender: broadcast::Sender<Arc<Published>>,
    viewers: AtomicUsize,
}

impl std::fmt::Debug for Activity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Activity")
            .field("viewers", &self.viewers())
            .finish()
    }
}

impl Default for Activity {
    fn default() -> Self {
        Activity::new()
    }
}

impl Activity {
    /// A feed nobody watches yet.
    pub fn new() -> Activity {
        let (sender, _) = broadcast::channel(RING_LINES);
        Activity {
            inner: Arc::new(Inner {
                sender,
                viewers: AtomicUsize::new(0),
            }),
        }
    }

    /// Whether anyone watches: a caller may skip gathering a line's parts when not.
    pub fn watched(&self) -> bool {
        self.inner.viewers.load(Ordering::Relaxed) > 0
    }

    /// Viewers watching now.
    pub fn viewers(&self) -> usize {
        self.inner.viewers.load(Ordering::Relaxed)
    }

    /// Publishes the line `what` builds, stamped now, when someone watches; never waits.
    pub fn publish(&self, what: impl FnOnce() -> What) {
        if !self.watched() {
            return;
        }
        // An error means the last viewer left meanwhile: nobody to tell.
        let _ = self.inner.sender.send(Published::now(what()));
    }

    /// A new viewer, seeing every line published from now on; `None` when [`MAX_VIEWERS`]
    /// already watch.
    pub fn watch(&self) -> Option<Viewer> {
        let claimed = self
            .inner
            .viewers
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < MAX_VIEWERS).then_some(n + 1)
            });
        claimed.ok()?;
        Some(Viewer {
            receiver: self.inner.sender.subscribe(),
            activity: self.clone(),
        })
    }
}

/// One viewer's place in the feed. Dropping it stops the watching.
pub struct Viewer {
    receiver: broadcast::Receiver<Arc<Published>>,
    activity: Activity,
}

impl Drop for Viewer {
    fn drop(&mut self) {
        self.activity.inner.viewers.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Viewer {
    /// The next line, or a [`What::Lost`] line when this viewer fell behind. Waits for one.
    pub async fn next(&mut self) -> Arc<Published> {
        match self.receiver.recv().await {
            Ok(line) => line,
            Err(broadcast::error::RecvError::Lagged(lines)) => Published::now(What::Lost { lines }),
            // The sender lives in `activity`, which this viewer holds.
            Err(broadcast::error::RecvError::Closed) => std::future::pending().await,
        }
    }

    /// The next line if one is waiting, without waiting.
    pub fn try_next(&mut self) -> Option<Arc<Published>> {
        match self.receiver.try_recv() {
            Ok(line) => Some(line),
            Err(broadcast::error::TryRecvError::Lagged(lines)) => {
                Some(Published::now(What::Lost { lines }))
            }
            Err(_) => None,
        }
    }
}

/// A line as the viewers share it: its JSON is encoded once, by the first viewer that writes
/// it, however many viewers pass it on.
#[derive(Debug)]
pub struct Published {
    /// The line.
    pub line: Line,
    json: OnceLock<Vec<u8>>,
}

impl Published {
    /// `what`, stamped now.
    fn now(what: What) -> Arc<Published> {
        Arc::new(Published {
            line: Line {
                at: crate::time::rfc3339_ms(crate::store::millis(std::time::SystemTime::now())),
                what,
            },
            json: OnceLock::new(),
        })
    }

    /// The line as JSON (one object, no newline).
    pub fn json(&self) -> &[u8] {
        // A line is plain data: encoding it cannot fail.
        self.json
            .get_or_init(|| serde_json::to_vec(&self.line).unwrap_or_default())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn rejected(status: u16) -> What {
        What::Rejected {
            status,
            reason: "invalid_signature".into(),
            delivery_id: None,
        }
    }

    fn delivered(sink: &str, event_type: &str) -> What {
        What::Delivered {
            event: SinkEvent {
                sink: sink.into(),
                seq: 1,
                event_type: Some(event_type.into()),
                event_id: None,
            },
            attempt: 1,
            latency_ms: 3,
        }
    }

    #[tokio::test]
    async fn nothing_is_built_without_a_viewer() {
        let activity = Activity::new();
        let mut built = false;
        activity.publish(|| {
            built = true;
            rejected(401)
        });
        assert!(!built);
        assert!(!activity.watched());
    }

    #[tokio::test]
    async fn viewers_see_lines_in_order_and_are_counted() {
        let activity = Activity::new();
        let mut a = activity.watch().unwrap();
        let mut b = activity.watch().unwrap();
        assert_eq!(activity.viewers(), 2);
        activity.publish(|| rejected(401));
        activity.publish(|| rejected(413));
        for viewer in [&mut a, &mut b] {
            assert_eq!(viewer.next().await.line.what, rejected(401));
            assert_eq!(viewer.try_next().unwrap().line.what, rejected(413));
            assert!(viewer.try_next().is_none());
        }
        drop(a);
        assert_eq!(activity.viewers(), 1);
        drop(b);
        assert!(!activity.watched());
    }

    #[tokio::test]
    async fn viewers_share_one_line_and_its_json() {
        let activity = Activity::new();
        let (mut a, mut b) = (activity.watch().unwrap(), activity.watch().unwrap());
        activity.publish(|| rejected(401));
        let (x, y) = (a.next().await, b.next().await);
        assert!(Arc::ptr_eq(&x, &y));
        assert_eq!(x.json(), serde_json::to_vec(&y.line).unwrap());
        assert!(std::ptr::eq(x.json(), y.json()), "encoded once");
    }

    #[tokio::test]
    async fn a_slow_viewer_loses_the_oldest_lines_and_is_told_how_many() {
        let activity = Activity::new();
        let mut viewer = activity.watch().unwrap();
        for _ in 0..RING_LINES + 10 {
            activity.publish(|| rejected(401));
        }
        assert_eq!(viewer.next().await.line.what, What::Lost { lines: 10 });
        let mut seen = 0;
        while viewer.try_next().is_some() {
            seen += 1;
        }
        assert_eq!(seen, RING_LINES);
    }

    #[test]
    fn viewers_are_bounded() {
        let activity = Activity::new();
        let viewers: Vec<Viewer> = (0..MAX_VIEWERS)
            .map(|_| activity.watch().unwrap())
            .collect();
        assert!(activity.watch().is_none());
        drop(viewers);
        assert!(activity.watch().is_some());
    }

    #[test]
    fn filters() {
        let all = Filter::default();
        assert!(all.passes(&rejected(401)));
        let messages = Filter {
            events: vec!["message.*".into()],
            sink: None,
        };
        assert!(messages.passes(&delivered("app", "message.received")));
        assert!(!messages.passes(&delivered("app", "contact.updated")));
        assert!(!messages.passes(&rejected(401)));
        assert!(messages.passes(&What::Lost { lines: 1 }));
        let app = Filter {
            events: Vec::new(),
            sink: Some("app".into()),
        };
        assert!(app.passes(&delivered("app", "x")));
        assert!(!app.passes(&delivered("archive", "x")));
        assert!(!app.passes(&rejected(401)));
        let accepted = |sinks: &[&str]| What::Accepted {
            seq: 1,
            event_type: None,
            source: None,
            event_id: None,
            phone_number_id: None,
            delivery_id: None,
            sinks: sinks.iter().map(|s| s.to_string()).collect(),
        };
        assert!(app.passes(&accepted(&["archive", "app"])));
        assert!(!app.passes(&accepted(&["archive"])));
    }

    #[test]
    fn fields_from_requests_are_clipped() {
        assert_eq!(clip("wbd_1"), "wbd_1");
        let long = "é".repeat(300);
        let clipped = clip(&long);
        assert!(clipped.len() <= MAX_FIELD_BYTES, "{}", clipped.len());
        assert!(clipped.ends_with('…') && clipped.starts_with("éé"));
    }

    #[test]
    fn json_names_the_kind() {
        let line = Line {
            at: "2026-12-07T10:21:07.312Z".into(),
            what: rejected(401),
        };
        let json = serde_json::to_string(&line).unwrap();
        assert_eq!(
            json,
            r#"{"at":"2026-12-07T10:21:07.312Z","kind":"rejected","status":401,"reason":"invalid_signature","delivery_id":null}"#
        );
        assert_eq!(serde_json::from_str::<Line>(&json).unwrap(), line);

        // A sink's outcome: the sink and event fields sit beside the others.
        let line = Line {
            at: "2026-12-07T10:21:07.312Z".into(),
            what: delivered("app", "message.received"),
        };
        let json = serde_json::to_string(&line).unwrap();
        assert_eq!(
            json,
            r#"{"at":"2026-12-07T10:21:07.312Z","kind":"delivered","sink":"app","seq":1,"event_type":"message.received","event_id":null,"attempt":1,"latency_ms":3}"#
        );
        assert_eq!(serde_json::from_str::<Line>(&json).unwrap(), line);
    }
}
