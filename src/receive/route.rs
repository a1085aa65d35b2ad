//! Routing: decides which sinks an event is queued for. Each sink carries a [`Filter`] built
//! from its `events`, `sources` and `phone_number_ids` keys; [`Filter::matches`] tells whether
//! a stored event's [`RecordMeta`] is for that sink, and [`glob_match`] is the event-type glob
//! it uses.
//!
//! The running routes (every sink with its filter) live in one [`Routes`] handle that the
//! receive path, the admin API's replay and `app`'s reload share: a reload that changes a
//! filter changes it everywhere at once.
//!
//! This module is pure: it does no I/O, does not read bodies (only the metadata the store kept),
//! and does not validate its inputs; `config` checks the keys before building a [`Filter`].

use std::sync::{Arc, RwLock};

use crate::receive::envelope::Source;
use crate::store::RecordMeta;

/// Every sink's name with its filter, in config order.
pub type RouteTable = Arc<[(String, Filter)]>;

/// The one shared handle on the running routes. Cheap to clone; every clone sees a
/// [`Routes::replace`] at once.
#[derive(Debug, Clone)]
pub struct Routes {
    table: Arc<RwLock<RouteTable>>,
}

impl Routes {
    /// Routes for these sinks and filters.
    pub fn new(table: impl Into<RouteTable>) -> Routes {
        Routes {
            table: Arc::new(RwLock::new(table.into())),
        }
    }

    /// The routes now (a snapshot: a replace later does not change it).
    pub fn current(&self) -> RouteTable {
        match self.table.read() {
            Ok(table) => table.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// The filter of `sink` now; a sink without routes gets everything.
    pub fn filter(&self, sink: &str) -> Filter {
        self.current()
            .iter()
            .find(|(name, _)| name == sink)
            .map(|(_, filter)| filter.clone())
            .unwrap_or_default()
    }

    /// Swaps in reloaded routes.
    pub fn replace(&self, table: impl Into<RouteTable>) {
        let table = table.into();
        match self.table.write() {
            Ok(mut current) => *current = table,
            Err(poisoned) => *poisoned.into_inner() = table,
        }
    }
}

/// Which events a sink takes. Every criterion that is given must match; a criterion left out
/// (`None`) matches everything, so [`Filter::default`] takes every event, quarantined ones
/// included.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    events: Option<Vec<Glob>>,
    sources: Option<Vec<Source>>,
    phone_number_ids: Option<Vec<String>>,
}

impl Filter {
    /// Builds a filter from a sink's `events` globs, `sources` and `phone_number_ids`.
    /// Inputs are taken as they are (the configuration validates them first); an empty list
    /// matches nothing.
    pub fn new(
        events: Option<Vec<String>>,
        sources: Option<Vec<Source>>,
        phone_number_ids: Option<Vec<String>>,
    ) -> Filter {
        Filter {
            events: events.map(|globs| globs.into_iter().map(Glob).collect()),
            sources,
            phone_number_ids,
        }
    }

    /// True when every given criterion matches: the event type matches any glob (an event
    /// without a type matches only a bare `*` glob), the source is one of `sources` (an event
    /// without a source never matches a sources filter), and, when `phone_number_ids` is
    /// given, at least one of the event's `phone_number_ids` is listed (events without any
    /// `phone_number_id`, which is every Kirim envelope, do NOT match a `phone_number_ids`
    /// filter).
    pub fn matches(&self, meta: &RecordMeta) -> bool {
        let event_ok = self.events.as_ref().is_none_or(|globs| {
            globs
                .iter()
                .any(|glob| glob.matches(meta.event_type.as_deref()))
        });
        let source_ok = self
            .sources
            .as_ref()
            .is_none_or(|sources| meta.source.is_some_and(|s| sources.contains(&s)));
        let phone_ok = self.phone_number_ids.as_ref().is_none_or(|wanted| {
            meta.phone_number_ids
                .iter()
                .any(|id| wanted.iter().any(|w| w == id))
        });
        event_ok && source_ok && phone_ok
    }

    /// The `events` globs, when given (`*` matches any run of characters, see
    /// [`glob_match`]): what an engine needs to push the filter down.
    pub fn event_globs(&self) -> Option<Vec<&str>> {
        self.events
            .as_ref()
            .map(|globs| globs.iter().map(|g| g.0.as_str()).collect())
    }

    /// The `sources`, when given.
    pub fn sources(&self) -> Option<&[Source]> {
        self.sources.as_deref()
    }

    /// The `phone_number_ids`, when given.
    pub fn phone_number_ids(&self) -> Option<&[String]> {
        self.phone_number_ids.as_deref()
    }

    /// True when the filter takes every event: no `sources` and no `phone_number_ids`, and
    /// either no `events` or an `events` list holding a bare `*`.
    pub fn is_everything(&self) -> bool {
        let all_events = self
            .events
            .as_ref()
            .is_none_or(|globs| globs.iter().any(Glob::is_bare_star));
        all_events && self.sources.is_none() && self.phone_number_ids.is_none()
    }
}

/// An event-type glob as written in the configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Glob(String);

impl Glob {
    /// Matches an event type; an event without one matches only a bare `*`.
    fn matches(&self, event_type: Option<&str>) -> bool {
        match event_type {
            Some(text) => glob_match(&self.0, text),
            None => self.is_bare_star(),
        }
    }

    /// `*` (or `**`, `***`...: the same glob): matches every event type and untyped events.
    fn is_bare_star(&self) -> bool {
        !self.0.is_empty() && self.0.bytes().all(|b| b == b'*')
    }
}

/// Glob match on event types: `*` matches any run of characters (including dots and the empty
/// string); everything else is literal. `"message.*"` matches `"message.received"` and
/// `"message.status"`, not `"messages"`; `"*"` matches all; `"contact.created"` matches only
/// itself.
///
/// Runs in O(pattern × text) time at worst, without recursion: on a mismatch it backtracks to
/// the last `*` and lets it swallow one more byte. Comparing bytes is exact for UTF-8, because a
/// literal can only match where a character starts.
///
/// ```
/// use kirimhook::receive::route::glob_match;
/// assert!(glob_match("message.*", "message.received"));
/// assert!(!glob_match("message.*", "messages"));
/// ```
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let (pattern, text) = (pattern.as_bytes(), text.as_bytes());
    let (mut p, mut t) = (0, 0);
    // After the last `*` seen: where the pattern resumes, and where in the text that `*`'s
    // match currently ends.
    let mut last_star: Option<(usize, usize)> = None;
    while t < text.len() {
        match pattern.get(p) {
            Some(b'*') => {
                p += 1;
                last_star = Some((p, t));
            }
            Some(&c) if c == text[t] => {
                p += 1;
                t += 1;
            }
            _ => match last_star {
                Some((resume, end)) => {
                    p = resume;
                    t = end + 1;
                    last_star = Some((resume, t));
                }
                None => return false,
            },
        }
    }
    pattern[p..].iter().all(|&b| b == b'*')
}

#[cfg(test)]
mod routes_tests {
    use super::*;

    #[test]
    fn every_clone_sees_a_replace() {
        let routes = Routes::new(vec![(
            "app".to_owned(),
            Filter::new(Some(vec!["message.*".into()]), None, None),
        )]);
        let reader = routes.clone();
        assert!(!reader.filter("app").is_everything());
        assert!(reader.filter("other").is_everything());
        routes.replace(vec![("app".to_owned(), Filter::default())]);
        assert!(reader.filter("app").is_everything());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::receive::envelope::Shape;

    #[test]
    fn glob_without_star_is_exact() {
        assert!(glob_match("contact.created", "contact.created"));
        assert!(!glob_match("contact.created", "contact.create"));
        assert!(!glob_match("contact.created", "contact.created.x"));
        assert!(!glob_match("contact.created", "Contact.created"));
        assert!(!glob_match("a", ""));
        assert!(glob_match("", ""));
        assert!(!glob_match("", "a"));
    }

    #[test]
    fn glob_bare_star_matches_everything() {
        for text in ["", "a", "message.received", "...", "é.ü"] {
            assert!(glob_match("*", text), "{text:?}");
            assert!(glob_match("**", text), "{text:?}");
        }
    }

    #[test]
    fn glob_trailing_star() {
        assert!(glob_match("message.*", "message.received"));
        assert!(glob_match("message.*", "message.status"));
        assert!(glob_match("message.*", "message."));
        assert!(glob_match("message.*", "message.a.b"));
        assert!(!glob_match("message.*", "messages"));
        assert!(!glob_match("message.*", "message"));
        assert!(!glob_match("message.*", "xmessage.received"));
    }

    #[test]
    fn glob_leading_star() {
        assert!(glob_match("*.created", "contact.created"));
        assert!(glob_match("*.created", ".created"));
        assert!(glob_match("*.created", "a.b.created"));
        assert!(!glob_match("*.created", "contact.created2"));
        assert!(!glob_match("*.created", "created"));
    }

    #[test]
    fn glob_star_dot_star() {
        assert!(glob_match("*.*", "message.received"));
        assert!(glob_match("*.*", "."));
        assert!(glob_match("*.*", "a.b.c"));
        assert!(!glob_match("*.*", "message"));
        assert!(!glob_match("*.*", ""));
    }

    #[test]
    fn glob_several_stars_backtrack() {
        assert!(glob_match("a*b*c", "abc"));
        assert!(glob_match("a*b*c", "aXbYc"));
        assert!(glob_match("a*b*c", "abbbcbc"));
        assert!(glob_match("a*b*c", "acbc"));
        assert!(!glob_match("a*b*c", "acb"));
        assert!(!glob_match("a*b*c", "abcx"));
        assert!(!glob_match("a*b*c", "xabc"));
        assert!(glob_match("*a*", "banana"));
        assert!(glob_match("*ana", "banana"));
        assert!(!glob_match("*anab", "banana"));
        assert!(glob_match("message.*.*", "message.status.read"));
        assert!(!glob_match("message.*.*", "message.status"));
    }

    #[test]
    fn glob_does_not_blow_up() {
        let text = "a".repeat(10_000);
        let pattern = format!("{}b", "a*".repeat(50));
        assert!(!glob_match(&pattern, &text));
        assert!(glob_match(&"*a".repeat(50), &text));
    }

    #[test]
    fn glob_is_byte_exact_on_unicode() {
        assert!(glob_match("é*ü", "éaü"));
        assert!(glob_match("*ü", "üü"));
        assert!(!glob_match("*ü", "üx"));
    }

    fn meta(
        source: Option<Source>,
        event_type: Option<&str>,
        phone_number_ids: &[&str],
    ) -> RecordMeta {
        RecordMeta {
            received_at_ms: 1_781_061_307_123,
            secret_id: "sec_A".into(),
            headers: vec![],
            keys: vec![],
            shape: source.map(|s| match s {
                Source::Kirim => Shape::KirimEnvelope,
                Source::Meta => Shape::MetaPassthrough,
            }),
            source,
            event_type: event_type.map(str::to_owned),
            event_id: Some("evt_1".into()),
            phone_number_ids: phone_number_ids.iter().map(|&id| id.to_owned()).collect(),
            quarantine_reason: None,
        }
    }

    fn kirim(event_type: &str) -> RecordMeta {
        meta(Some(Source::Kirim), Some(event_type), &[])
    }

    fn whatsapp(event_type: &str, phone_number_ids: &[&str]) -> RecordMeta {
        meta(Some(Source::Meta), Some(event_type), phone_number_ids)
    }

    fn quarantined() -> RecordMeta {
        RecordMeta {
            quarantine_reason: Some("not_json".into()),
            event_id: None,
            ..meta(None, None, &[])
        }
    }

    fn strings(items: &[&str]) -> Option<Vec<String>> {
        Some(items.iter().map(|&s| s.to_owned()).collect())
    }

    #[test]
    fn default_filter_takes_everything() {
        let filter = Filter::default();
        assert!(filter.is_everything());
        assert_eq!(filter, Filter::new(None, None, None));
        assert!(filter.matches(&kirim("contact.created")));
        assert!(filter.matches(&whatsapp("message.received", &["1"])));
        assert!(filter.matches(&quarantined()));
    }

    #[test]
    fn events_filter() {
        let filter = Filter::new(strings(&["message.*", "contact.created"]), None, None);
        assert!(!filter.is_everything());
        assert!(filter.matches(&kirim("message.received")));
        assert!(filter.matches(&whatsapp("message.status", &["1"])));
        assert!(filter.matches(&kirim("contact.created")));
        assert!(!filter.matches(&kirim("contact.updated")));
        assert!(!filter.matches(&kirim("messages")));
        // No event type: only a bare `*` matches.
        assert!(!filter.matches(&quarantined()));
        assert!(!filter.matches(&meta(Some(Source::Meta), None, &["1"])));

        let star = Filter::new(strings(&["contact.*", "*"]), None, None);
        assert!(star.is_everything());
        assert!(star.matches(&quarantined()));
        assert!(star.matches(&meta(Some(Source::Meta), None, &["1"])));
        let star_dot_star = Filter::new(strings(&["*.*"]), None, None);
        assert!(!star_dot_star.is_everything());
        assert!(!star_dot_star.matches(&quarantined()));
    }

    #[test]
    fn sources_filter() {
        let filter = Filter::new(None, Some(vec![Source::Meta]), None);
        assert!(!filter.is_everything());
        assert!(filter.matches(&whatsapp("message.received", &["1"])));
        assert!(filter.matches(&meta(Some(Source::Meta), None, &[])));
        assert!(!filter.matches(&kirim("message.received")));
        assert!(!filter.matches(&quarantined()));

        let both = Filter::new(None, Some(vec![Source::Kirim, Source::Meta]), None);
        assert!(!both.is_everything());
        assert!(both.matches(&kirim("contact.created")));
        assert!(both.matches(&whatsapp("message.received", &[])));
        // An event without a source never matches a sources filter.
        assert!(!both.matches(&quarantined()));
    }

    #[test]
    fn phone_number_ids_filter() {
        let filter = Filter::new(None, None, strings(&["106540352242922", "222"]));
        assert!(!filter.is_everything());
        assert!(filter.matches(&whatsapp("message.received", &["106540352242922"])));
        assert!(filter.matches(&whatsapp("message.status", &["999", "222"])));
        assert!(!filter.matches(&whatsapp("message.received", &["999"])));
        assert!(!filter.matches(&whatsapp("message.received", &["10654035224292"])));
        // No phone_number_id at all: every Kirim envelope, and quarantined deliveries.
        assert!(!filter.matches(&whatsapp("message.received", &[])));
        assert!(!filter.matches(&kirim("message.received")));
        assert!(!filter.matches(&quarantined()));
    }

    #[test]
    fn every_criterion_must_match() {
        let filter = Filter::new(
            strings(&["message.*"]),
            Some(vec![Source::Meta]),
            strings(&["111"]),
        );
        assert!(filter.matches(&whatsapp("message.received", &["111"])));
        assert!(!filter.matches(&whatsapp("contact.created", &["111"])));
        assert!(!filter.matches(&whatsapp("message.received", &["222"])));
        assert!(!filter.matches(&meta(
            Some(Source::Kirim),
            Some("message.received"),
            &["111"]
        )));
    }

    #[test]
    fn empty_lists_match_nothing() {
        let event = whatsapp("message.received", &["111"]);
        assert!(!Filter::new(Some(vec![]), None, None).matches(&event));
        assert!(!Filter::new(None, Some(vec![]), None).matches(&event));
        assert!(!Filter::new(None, None, Some(vec![])).matches(&event));
        assert!(!Filter::new(Some(vec![]), None, None).is_everything());
    }
}
