//! Classification of a verified delivery body (spec sections 5.1 to 5.4 and 9.1): which shape it
//! has (Kirim envelope, Meta passthrough, or the low-confidence alternate message envelope), which
//! family it belongs to, its event type and id, the Meta `phone_number_id`s it concerns, and the
//! deduplication keys under which it must be admitted.
//!
//! The signature covers the body only, so the body decides the shape and the keys wherever it
//! can: the `X-Kirim-*` headers cannot make a captured body a different or a new event. The body
//! is sniffed first and `X-Kirim-Source` is consulted only for a body that fits no shape by itself
//! (spec 5.1 reads the header first; for a body that fits two shapes the two orders disagree, and
//! the header must not choose). `X-Kirim-Event-Id` keys only an alternate message envelope whose
//! body has no `data.message.id` (spec 9.1 puts the header first there); every other key comes
//! from the body. `X-Kirim-Event` and `X-Kirim-Event-Id` still name the event's type and id.
//!
//! The body is parsed once, into small borrowed structs that keep only the fields classification
//! needs and skip everything else; fields of an unexpected type, and numbers out of the `f64`
//! range where a field is read, are treated as absent, so an authentic body is never rejected
//! for its content: anything unrecognised (including a body that is not UTF-8, which is not JSON
//! text) comes back as [`Classified::Unrecognized`] with a hash key, to be stored in quarantine.
//!
//! This module does no I/O and does not check signatures (call `signature::verify` first). It
//! does not interpret event payloads (`data`, message contents, status details), validate id
//! formats, or decide what to answer the client.

use std::borrow::Cow;
use std::collections::HashSet;
use std::fmt;
use std::marker::PhantomData;

use serde::de::{self, Deserialize, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use sha2::{Digest, Sha256};

/// Which family a delivery belongs to; serialises as `"kirim"` / `"meta"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    /// Kirim-originated (envelope or alternate message envelope).
    Kirim,
    /// Meta-originated (WhatsApp Cloud API body passed through).
    Meta,
}

impl Source {
    /// `"kirim"` or `"meta"`, as in the serialised form.
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Kirim => "kirim",
            Source::Meta => "meta",
        }
    }
}

/// Recognised body shape. serde: `"kirim_envelope"`, `"meta_passthrough"`, `"alternate_message"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Shape {
    /// `{id, type, created_at, livemode?, data}` (spec 5.2).
    KirimEnvelope,
    /// `{object: "whatsapp_business_account", entry: [...]}` (spec 5.3).
    MetaPassthrough,
    /// `{id: "wbd_…", event, delivered_at, data: {message}}` (spec 5.4, low confidence).
    AlternateMessage,
}

/// A deduplication key, e.g. `"kirim:evt_…"`, `"meta:msg:wamid…"`,
/// `"meta:status:wamid…:delivered"`, `"sha256:<64 hex>"` (spec 9.1). In a status key, `%` and
/// `:` inside the id or the status are written `%25` and `%3A`.
#[derive(
    Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(transparent)]
pub struct DedupeKey(String);

impl DedupeKey {
    /// The key as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The key as an owned `String`.
    pub fn into_string(self) -> String {
        self.0
    }

    /// A key read back from the store, as it was written (not parsed again).
    pub(crate) fn from_stored(key: String) -> Self {
        DedupeKey(key)
    }

    /// `prefix` followed by `parts`, built with one allocation.
    fn build(prefix: &str, parts: &[&str]) -> Self {
        let len = prefix.len() + parts.iter().map(|p| p.len()).sum::<usize>();
        let mut key = String::with_capacity(len);
        key.push_str(prefix);
        for part in parts {
            key.push_str(part);
        }
        DedupeKey(key)
    }

    /// `meta:status:<id>:<status>`, with `%` and `:` inside `id` and `status` written `%25`
    /// and `%3A`, so that the key names one pair only. Real wamids and statuses hold neither
    /// character, so their keys are exactly the spec's.
    fn status(id: &str, status: &str) -> Self {
        let mut key = String::with_capacity("meta:status::".len() + id.len() + status.len());
        key.push_str("meta:status:");
        push_escaped(&mut key, id);
        key.push(':');
        push_escaped(&mut key, status);
        DedupeKey(key)
    }
}

/// Appends `part` with `%` written `%25` and `:` written `%3A`.
fn push_escaped(key: &mut String, part: &str) {
    if !part.contains(['%', ':']) {
        key.push_str(part);
        return;
    }
    for c in part.chars() {
        match c {
            '%' => key.push_str("%25"),
            ':' => key.push_str("%3A"),
            c => key.push(c),
        }
    }
}

impl AsRef<str> for DedupeKey {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for DedupeKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The `X-Kirim-*` header values that classification reads (raw, as received; `None` when
/// absent). Surrounding spaces and tabs are ignored, and an empty value counts as absent. They
/// are not signed: they never change the shape or keys of a body that has its own (see
/// [`classify`]).
#[derive(Debug, Clone, Copy, Default)]
pub struct Hints<'a> {
    /// `X-Kirim-Source`: `kirim` or `kirimdev` (any case) lets a body that fits no shape be an
    /// envelope without the `evt_` prefix or `data`; any other value changes nothing.
    pub source: Option<&'a str>,
    /// `X-Kirim-Event`: preferred over the type found in the body.
    pub event: Option<&'a str>,
    /// `X-Kirim-Event-Id`: preferred over the id found in the body as the event id; a dedupe
    /// key only for an alternate message envelope without `data.message.id`.
    pub event_id: Option<&'a str>,
}

/// What the body is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Classified {
    /// A recognised shape.
    Event(EventInfo),
    /// Authentic but not understood: store in quarantine.
    Unrecognized(Unrecognized),
}

/// A recognised delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventInfo {
    /// The body shape that matched.
    pub shape: Shape,
    /// The family, decided by the shape (not by the header): envelope and alternate are
    /// [`Source::Kirim`], Meta passthrough is [`Source::Meta`].
    pub source: Source,
    /// `X-Kirim-Event` if present and non-empty; else the envelope `type` or alternate `event`;
    /// for Meta, `message.received` if the body holds any message, else `message.status` if it
    /// holds any status, else `None`.
    pub event_type: Option<String>,
    /// `X-Kirim-Event-Id` if present and non-empty; else the envelope `id`; for Meta the first
    /// `messages[].id`, else the first `statuses[].id`; for the alternate shape
    /// `data.message.id`; else `None`.
    pub event_id: Option<String>,
    /// Deduplication keys (spec 9.1): never empty, without duplicates, in body order; taken
    /// from the body, except `event:<X-Kirim-Event-Id>` for an alternate message envelope
    /// without `data.message.id`.
    pub keys: Vec<DedupeKey>,
    /// Meta only: every distinct `entry[].changes[].value.metadata.phone_number_id`, in body
    /// order; empty for other shapes.
    pub phone_number_ids: Vec<String>,
}

/// A delivery whose body was not recognised.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unrecognized {
    /// Why it was not recognised.
    pub reason: UnrecognizedReason,
    /// [`body_hash_key`] of the body.
    pub key: DedupeKey,
}

/// Why a body was not recognised.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnrecognizedReason {
    /// Not a single JSON value (empty, truncated, trailing data, a byte-order mark, …).
    NotJson,
    /// Not UTF-8 (JSON text is UTF-8, RFC 8259 section 8.1), even where it is otherwise
    /// well-formed JSON.
    NotUtf8,
    /// Valid JSON, but not an object of any known shape.
    UnknownShape,
}

impl UnrecognizedReason {
    /// `"not_json"`, `"not_utf8"` or `"unknown_shape"`, for logs and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            UnrecognizedReason::NotJson => "not_json",
            UnrecognizedReason::NotUtf8 => "not_utf8",
            UnrecognizedReason::UnknownShape => "unknown_shape",
        }
    }
}

/// `"sha256:"` followed by the lower-case hex SHA-256 of the raw body.
#[must_use]
pub fn body_hash_key(body: &[u8]) -> DedupeKey {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let digest = Sha256::digest(body);
    let mut key = String::with_capacity("sha256:".len() + 2 * digest.len());
    key.push_str("sha256:");
    for byte in digest {
        key.push(char::from(HEX[usize::from(byte >> 4)]));
        key.push(char::from(HEX[usize::from(byte & 0x0f)]));
    }
    DedupeKey(key)
}

/// Classifies a verified body (spec 5.1). Never fails: anything not recognised is
/// [`Classified::Unrecognized`].
///
/// The body decides its shape and keys: it is sniffed first (Meta passthrough, then envelope with
/// an `id` starting `evt_`, a string `type` and an object `data`, then alternate message envelope
/// with a string `event` and an object `data`). The unsigned headers never override what the
/// body says: only a body that fits no shape by itself is taken as an envelope when
/// `X-Kirim-Source` is `kirim` / `kirimdev` (any case) and it has a non-empty string `id` and a
/// string `type`; and `X-Kirim-Event-Id` keys an alternate message envelope only when its body
/// has no `data.message.id`.
#[must_use]
pub fn classify(hints: Hints<'_>, body: &[u8]) -> Classified {
    let Ok(text) = std::str::from_utf8(body) else {
        return unrecognized(UnrecognizedReason::NotUtf8, body);
    };
    let zeroed: String;
    let parsed = match parse(text) {
        Ok(Some(parsed)) => parsed,
        Ok(None) => return unrecognized(UnrecognizedReason::UnknownShape, body),
        Err(_) if serde_json::from_str::<IgnoredAny>(text).is_err() => {
            return unrecognized(UnrecognizedReason::NotJson, body)
        }
        // Valid JSON that the typed pass refused: a number out of the f64 range (serde_json
        // refuses `1e400` as soon as it is read as a value, even where a string is expected)
        // or a duplicate key. The classifier reads no number, so read it again with every
        // number set to 0; a duplicate key still fails and is ambiguous, so of no known shape.
        Err(_) => {
            zeroed = zero_numbers(text);
            match parse(&zeroed) {
                Ok(Some(parsed)) => parsed,
                _ => return unrecognized(UnrecognizedReason::UnknownShape, body),
            }
        }
    };

    let kirim_named = hints
        .source
        .and_then(non_empty)
        .is_some_and(|s| s.eq_ignore_ascii_case("kirim") || s.eq_ignore_ascii_case("kirimdev"));
    let shape = parsed
        .sniff()
        .or_else(|| (kirim_named && parsed.is_named_envelope()).then_some(Shape::KirimEnvelope));

    let hint_event = hints.event.and_then(non_empty);
    let hint_event_id = hints.event_id.and_then(non_empty);
    match shape {
        Some(Shape::KirimEnvelope) => {
            let id = parsed.id.as_deref().unwrap_or_default();
            Classified::Event(EventInfo {
                shape: Shape::KirimEnvelope,
                source: Source::Kirim,
                event_type: hint_event.or(parsed.kind.as_deref()).map(str::to_owned),
                event_id: hint_event_id.or(Some(id)).map(str::to_owned),
                keys: vec![DedupeKey::build("kirim:", &[id])],
                phone_number_ids: Vec::new(),
            })
        }
        Some(Shape::MetaPassthrough) => {
            Classified::Event(meta_info(&parsed, hint_event, hint_event_id, body))
        }
        Some(Shape::AlternateMessage) => {
            let message_id = parsed
                .data
                .as_ref()
                .and_then(|data| data.message.as_ref())
                .and_then(|message| message.id.as_deref())
                .filter(|id| !id.is_empty());
            // The body's id first: a header is not signed, so it may only key a body that
            // carries no id of its own (the top-level `wbd_` id is a delivery id, new on
            // every attempt, so it is no key).
            let key = match (message_id, hint_event_id) {
                (Some(message_id), _) => DedupeKey::build("message:", &[message_id]),
                (None, Some(event_id)) => DedupeKey::build("event:", &[event_id]),
                (None, None) => body_hash_key(body),
            };
            Classified::Event(EventInfo {
                shape: Shape::AlternateMessage,
                source: Source::Kirim,
                event_type: hint_event.or(parsed.event.as_deref()).map(str::to_owned),
                event_id: hint_event_id.or(message_id).map(str::to_owned),
                keys: vec![key],
                phone_number_ids: Vec::new(),
            })
        }
        None => unrecognized(UnrecognizedReason::UnknownShape, body),
    }
}

/// The typed view of `text`, `None` when it is JSON but not an object.
fn parse(text: &str) -> Result<Option<Body<'_>>, serde_json::Error> {
    serde_json::from_str::<Lenient<Body<'_>>>(text).map(|parsed| parsed.0)
}

/// A copy of `json` (valid JSON) in which every number is `0`; strings are left untouched.
fn zero_numbers(json: &str) -> String {
    let bytes = json.as_bytes();
    let mut out = String::with_capacity(json.len());
    let mut copied = 0;
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'"' => {
                i += 1;
                while i < bytes.len() && bytes[i] != b'"' {
                    i += if bytes[i] == b'\\' { 2 } else { 1 };
                }
                i += 1;
            }
            b'-' | b'0'..=b'9' => {
                let end = bytes[i..]
                    .iter()
                    .position(|b| !matches!(b, b'0'..=b'9' | b'-' | b'+' | b'.' | b'e' | b'E'))
                    .map_or(bytes.len(), |len| i + len);
                out.push_str(&json[copied..i]);
                out.push('0');
                copied = end;
                i = end;
            }
            _ => i += 1,
        }
    }
    out.push_str(json.get(copied..).unwrap_or_default());
    out
}

fn unrecognized(reason: UnrecognizedReason, body: &[u8]) -> Classified {
    Classified::Unrecognized(Unrecognized {
        reason,
        key: body_hash_key(body),
    })
}

/// A header value without surrounding spaces and tabs, or `None` if nothing is left.
fn non_empty(value: &str) -> Option<&str> {
    Some(value.trim_matches([' ', '\t'])).filter(|v| !v.is_empty())
}

/// Walks every entry, change, message and status of a Meta passthrough body (spec 5.3, 9.1).
fn meta_info(
    parsed: &Body<'_>,
    hint_event: Option<&str>,
    hint_event_id: Option<&str>,
    body: &[u8],
) -> EventInfo {
    let mut keys = Vec::new();
    let mut phone_number_ids: Vec<String> = Vec::new();
    let mut any_message = false;
    let mut any_status = false;
    let mut first_message_id: Option<&str> = None;
    let mut first_status_id: Option<&str> = None;

    let values = parsed
        .entry
        .iter()
        .flatten()
        .filter_map(|item| item.as_ref())
        .flat_map(|entry| entry.changes.iter().flatten())
        .filter_map(|item| item.as_ref())
        .filter_map(|change| change.value.as_ref());
    for value in values {
        if let Some(id) = value
            .metadata
            .as_ref()
            .and_then(|m| m.phone_number_id.as_deref())
        {
            if !id.is_empty() {
                phone_number_ids.push(id.to_owned());
            }
        }
        for message in value
            .messages
            .iter()
            .flatten()
            .filter_map(|item| item.as_ref())
        {
            any_message = true;
            if let Some(id) = message.id.as_deref().filter(|id| !id.is_empty()) {
                first_message_id.get_or_insert(id);
                keys.push(DedupeKey::build("meta:msg:", &[id]));
            }
        }
        for status in value
            .statuses
            .iter()
            .flatten()
            .filter_map(|item| item.as_ref())
        {
            any_status = true;
            let id = status.id.as_deref().filter(|id| !id.is_empty());
            if let Some(id) = id {
                first_status_id.get_or_insert(id);
            }
            let state = status.status.as_deref().filter(|s| !s.is_empty());
            if let (Some(id), Some(state)) = (id, state) {
                keys.push(DedupeKey::status(id, state));
            }
        }
    }

    dedupe_in_order(&mut keys);
    dedupe_in_order(&mut phone_number_ids);
    if keys.is_empty() {
        keys.push(body_hash_key(body));
    }
    let derived_type = if any_message {
        Some("message.received")
    } else if any_status {
        Some("message.status")
    } else {
        None
    };
    EventInfo {
        shape: Shape::MetaPassthrough,
        source: Source::Meta,
        event_type: hint_event.or(derived_type).map(str::to_owned),
        event_id: hint_event_id
            .or(first_message_id)
            .or(first_status_id)
            .map(str::to_owned),
        keys,
        phone_number_ids,
    }
}

/// Removes later duplicates, keeping the first occurrence of each item in place.
fn dedupe_in_order<T: AsRef<str>>(items: &mut Vec<T>) {
    if items.len() < 2 {
        return;
    }
    if items.len() <= 16 {
        // Quadratic but allocation-free for the usual handful of items.
        let mut kept = 0;
        for i in 0..items.len() {
            if !items[..kept]
                .iter()
                .any(|k| k.as_ref() == items[i].as_ref())
            {
                items.swap(kept, i);
                kept += 1;
            }
        }
        items.truncate(kept);
    } else {
        let keep: Vec<bool> = {
            let mut seen = HashSet::with_capacity(items.len());
            items
                .iter()
                .map(|item| seen.insert(item.as_ref()))
                .collect()
        };
        let mut keep = keep.into_iter();
        items.retain(|_| keep.next().unwrap_or(true));
    }
}

// ---------------------------------------------------------------------------------------------
// The typed view of a body. One struct covers every shape, so the body is parsed once. Each
// field is wrapped in a lenient type that reads the expected JSON type and treats any other as
// absent; unknown fields are skipped by serde without being built.

/// Top-level fields of every recognised shape.
#[derive(Default, serde::Deserialize)]
#[serde(default)]
struct Body<'a> {
    #[serde(borrow)]
    object: Str<'a>,
    #[serde(borrow)]
    entry: Seq<Lenient<Entry<'a>>>,
    #[serde(borrow)]
    id: Str<'a>,
    #[serde(borrow, rename = "type")]
    kind: Str<'a>,
    #[serde(borrow)]
    event: Str<'a>,
    #[serde(borrow)]
    data: Lenient<Data<'a>>,
}

impl Body<'_> {
    /// Spec 5.1: `"object": "whatsapp_business_account"` and an `entry` array.
    fn is_meta(&self) -> bool {
        self.object.as_deref() == Some("whatsapp_business_account") && self.entry.is_some()
    }

    /// Envelope when the header names it: non-empty string `id`, string `type`.
    fn is_named_envelope(&self) -> bool {
        self.id.as_deref().is_some_and(|id| !id.is_empty()) && self.kind.is_some()
    }

    /// Envelope by sniffing: `id` starting `evt_`, string `type`, object `data`.
    fn is_sniffed_envelope(&self) -> bool {
        self.id.as_deref().is_some_and(|id| id.starts_with("evt_"))
            && self.kind.is_some()
            && self.data.is_some()
    }

    /// Alternate message envelope: string `event`, object `data`.
    fn is_alternate(&self) -> bool {
        self.event.is_some() && self.data.is_some()
    }

    fn sniff(&self) -> Option<Shape> {
        if self.is_meta() {
            Some(Shape::MetaPassthrough)
        } else if self.is_sniffed_envelope() {
            Some(Shape::KirimEnvelope)
        } else if self.is_alternate() {
            Some(Shape::AlternateMessage)
        } else {
            None
        }
    }
}

/// `entry[]` of a Meta body.
#[derive(Default, serde::Deserialize)]
#[serde(default)]
struct Entry<'a> {
    #[serde(borrow)]
    changes: Seq<Lenient<Change<'a>>>,
}

/// `entry[].changes[]`.
#[derive(Default, serde::Deserialize)]
#[serde(default)]
struct Change<'a> {
    #[serde(borrow)]
    value: Lenient<ChangeValue<'a>>,
}

/// `entry[].changes[].value`.
#[derive(Default, serde::Deserialize)]
#[serde(default)]
struct ChangeValue<'a> {
    #[serde(borrow)]
    metadata: Lenient<Metadata<'a>>,
    #[serde(borrow)]
    messages: Seq<Lenient<IdOnly<'a>>>,
    #[serde(borrow)]
    statuses: Seq<Lenient<Status<'a>>>,
}

/// `value.metadata`.
#[derive(Default, serde::Deserialize)]
#[serde(default)]
struct Metadata<'a> {
    #[serde(borrow)]
    phone_number_id: Str<'a>,
}

/// Any object of which only `id` matters: `messages[]`, alternate `data.message`.
#[derive(Default, serde::Deserialize)]
#[serde(default)]
struct IdOnly<'a> {
    #[serde(borrow)]
    id: Str<'a>,
}

/// `value.statuses[]`.
#[derive(Default, serde::Deserialize)]
#[serde(default)]
struct Status<'a> {
    #[serde(borrow)]
    id: Str<'a>,
    #[serde(borrow)]
    status: Str<'a>,
}

/// `data` of the envelope or alternate shape; only `data.message.id` is read.
#[derive(Default, serde::Deserialize)]
#[serde(default)]
struct Data<'a> {
    #[serde(borrow)]
    message: Lenient<IdOnly<'a>>,
}

/// Implements the `Visitor` methods that treat a JSON type as "absent" (`Default`).
macro_rules! absent_for {
    (scalars) => {
        fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
            Ok(Default::default())
        }
        fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> {
            Ok(Default::default())
        }
        fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> {
            Ok(Default::default())
        }
        fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
            Ok(Default::default())
        }
        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(Default::default())
        }
        fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(Default::default())
        }
        fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
            d.deserialize_any(self)
        }
    };
    (str) => {
        fn visit_str<E: de::Error>(self, _: &str) -> Result<Self::Value, E> {
            Ok(Default::default())
        }
    };
    (seq) => {
        fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
            IgnoredAny.visit_seq(seq).map(|_| Default::default())
        }
    };
    (map) => {
        fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
            IgnoredAny.visit_map(map).map(|_| Default::default())
        }
    };
}

/// A JSON string, or `None` when absent or of another type. Borrows unless the string had
/// escapes.
#[derive(Default)]
struct Str<'a>(Option<Cow<'a, str>>);

impl<'a> std::ops::Deref for Str<'a> {
    type Target = Option<Cow<'a, str>>;
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for Str<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct StrVisitor<'a>(PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for StrVisitor<'a> {
            type Value = Str<'a>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Str(Some(Cow::Borrowed(v))))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Str(Some(Cow::Owned(v.to_owned()))))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
                Ok(Str(Some(Cow::Owned(v))))
            }
            absent_for!(scalars);
            absent_for!(seq);
            absent_for!(map);
        }
        deserializer.deserialize_any(StrVisitor(PhantomData))
    }
}

/// A JSON array of `T`, or `None` when absent or of another type.
struct Seq<T>(Option<Vec<T>>);

impl<T> Default for Seq<T> {
    fn default() -> Self {
        Seq(None)
    }
}

impl<T> std::ops::Deref for Seq<T> {
    type Target = Option<Vec<T>>;
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Seq<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct SeqVisitor<T>(PhantomData<T>);
        impl<'de, T: Deserialize<'de>> Visitor<'de> for SeqVisitor<T> {
            type Value = Seq<T>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let mut items = Vec::new();
                while let Some(item) = seq.next_element()? {
                    items.push(item);
                }
                Ok(Seq(Some(items)))
            }
            absent_for!(scalars);
            absent_for!(str);
            absent_for!(map);
        }
        deserializer.deserialize_any(SeqVisitor(PhantomData))
    }
}

/// A JSON object read as `T`, or `None` when absent or of another type (never an array read
/// positionally).
struct Lenient<T>(Option<T>);

impl<T> Default for Lenient<T> {
    fn default() -> Self {
        Lenient(None)
    }
}

impl<T> std::ops::Deref for Lenient<T> {
    type Target = Option<T>;
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Lenient<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ObjectVisitor<T>(PhantomData<T>);
        impl<'de, T: Deserialize<'de>> Visitor<'de> for ObjectVisitor<T> {
            type Value = Lenient<T>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
                T::deserialize(de::value::MapAccessDeserializer::new(map)).map(|v| Lenient(Some(v)))
            }
            absent_for!(scalars);
            absent_for!(str);
            absent_for!(seq);
        }
        deserializer.deserialize_any(ObjectVisitor(PhantomData))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const F1: &[u8] = include_bytes!("../../tests/fixtures/f1.json");
    const F2: &[u8] = include_bytes!("../../tests/fixtures/f2.json");
    const F3: &[u8] = include_bytes!("../../tests/fixtures/f3.json");
    const F4: &[u8] = include_bytes!("../../tests/fixtures/f4.json");
    const F5: &[u8] = include_bytes!("../../tests/fixtures/f5.json");
    const F6: &[u8] = include_bytes!("../../tests/fixtures/f6.json");
    const F7: &[u8] = include_bytes!("../../tests/fixtures/f7.json");
    const F8: &[u8] = include_bytes!("../../tests/fixtures/f8.json");
    const F9: &[u8] = include_bytes!("../../tests/fixtures/f9.json");

    const F1_WAMID: &str = "wamid.HBgNNjI4MTM5ODc2NTQzMhUCABIYFjNFQjA4QkQxNjY1NzYxRTJDRTQ1RjQzMwA=";

    /// (body, X-Kirim-Source, X-Kirim-Event, X-Kirim-Event-Id, expected keys) from spec 11.
    const FIXTURES: [(&[u8], &str, &str, &str, &str); 9] = [
        (F1, "meta", "message.received", F1_WAMID, "meta:msg:wamid.HBgNNjI4MTM5ODc2NTQzMhUCABIYFjNFQjA4QkQxNjY1NzYxRTJDRTQ1RjQzMwA="),
        (F2, "meta", "message.received", "wamid.HBgNNjI4MTM5ODc2NTQzMhUCABIYFjNFQjAzODdCODZDQzFFOURDN0Q5NUU4MQA=", "meta:msg:wamid.HBgNNjI4MTM5ODc2NTQzMhUCABIYFjNFQjAzODdCODZDQzFFOURDN0Q5NUU4MQA="),
        (F3, "meta", "message.status", "wamid.HBgNNjI4MTM5ODc2NTQzMhUCABIYFjNFQjA0MjA5RkUxNUE5RURDRDU0NDM0OQA=", "meta:status:wamid.HBgNNjI4MTM5ODc2NTQzMhUCABIYFjNFQjA0MjA5RkUxNUE5RURDRDU0NDM0OQA=:delivered"),
        (F4, "meta", "message.status", "wamid.HBgNNjI4MTM5ODc2NTQzMhUCABIYFjNFQjBFQkRBNDdBMzI1MkY0MDM3N0Q3MwA=", "meta:status:wamid.HBgNNjI4MTM5ODc2NTQzMhUCABIYFjNFQjBFQkRBNDdBMzI1MkY0MDM3N0Q3MwA=:failed"),
        (F5, "kirim", "conversation.assigned", "evt_01KTQS8SV70MZ1TS9G3WX529XC", "kirim:evt_01KTQS8SV70MZ1TS9G3WX529XC"),
        (F6, "kirim", "conversation.closed", "evt_01KTQWQ0CBGHDVVK0FHV7YW1N0", "kirim:evt_01KTQWQ0CBGHDVVK0FHV7YW1N0"),
        (F7, "kirim", "contact.created", "evt_01KTQRDK8RGHFQWW3MZQZN8B5H", "kirim:evt_01KTQRDK8RGHFQWW3MZQZN8B5H"),
        (F8, "kirim", "contact.updated", "evt_01KTQXAPGVKW11H4R7BH8A57BH", "kirim:evt_01KTQXAPGVKW11H4R7BH8A57BH"),
        (F9, "kirimdev", "contact.updated", "evt_01KTQXR82PJ05YY62FEXEXHSK4", "kirim:evt_01KTQXR82PJ05YY62FEXEXHSK4"),
    ];

    fn event(hints: Hints<'_>, body: &[u8]) -> EventInfo {
        match classify(hints, body) {
            Classified::Event(info) => info,
            other => panic!(
                "expected an event for {}, got {other:?}",
                String::from_utf8_lossy(body)
            ),
        }
    }

    fn unknown(body: &[u8]) -> Unrecognized {
        match classify(Hints::default(), body) {
            Classified::Unrecognized(u) => u,
            other => panic!(
                "expected unrecognized for {:?}, got {other:?}",
                String::from_utf8_lossy(body)
            ),
        }
    }

    fn keys(info: &EventInfo) -> Vec<&str> {
        info.keys.iter().map(DedupeKey::as_str).collect()
    }

    fn source(s: &str) -> Hints<'_> {
        Hints {
            source: Some(s),
            ..Hints::default()
        }
    }

    #[test]
    fn fixture_dedupe_keys_match_the_spec() {
        for (i, (body, src, ev, id, key)) in FIXTURES.iter().enumerate() {
            let hints = Hints {
                source: Some(src),
                event: Some(ev),
                event_id: Some(id),
            };
            let info = event(hints, body);
            assert_eq!(keys(&info), [*key], "F{}", i + 1);
            assert_eq!(info.event_type.as_deref(), Some(*ev), "F{}", i + 1);
            assert_eq!(info.event_id.as_deref(), Some(*id), "F{}", i + 1);
            // Sniffing alone, with no headers at all, gives the same answers.
            let sniffed = event(Hints::default(), body);
            assert_eq!(sniffed.keys, info.keys, "F{} sniffed", i + 1);
            assert_eq!(sniffed.shape, info.shape, "F{} sniffed", i + 1);
            assert_eq!(sniffed.event_type, info.event_type, "F{} sniffed", i + 1);
            assert_eq!(sniffed.event_id, info.event_id, "F{} sniffed", i + 1);
        }
    }

    #[test]
    fn f1_details() {
        let hints = Hints {
            source: Some("meta"),
            event: Some("message.received"),
            event_id: Some(F1_WAMID),
        };
        let info = event(hints, F1);
        assert_eq!(info.shape, Shape::MetaPassthrough);
        assert_eq!(info.source, Source::Meta);
        assert_eq!(info.event_type.as_deref(), Some("message.received"));
        assert_eq!(info.event_id.as_deref(), Some(F1_WAMID));
        assert_eq!(info.phone_number_ids, ["109283746501928"]);
    }

    #[test]
    fn f3_without_headers_is_a_status() {
        let info = event(Hints::default(), F3);
        assert_eq!(info.event_type.as_deref(), Some("message.status"));
        assert_eq!(
            info.event_id.as_deref(),
            Some("wamid.HBgNNjI4MTM5ODc2NTQzMhUCABIYFjNFQjA0MjA5RkUxNUE5RURDRDU0NDM0OQA=")
        );
        assert_eq!(info.phone_number_ids, ["109283746501928"]);
    }

    #[test]
    fn f5_details() {
        let hints = Hints {
            source: Some("kirim"),
            event: Some("conversation.assigned"),
            event_id: Some("evt_01KTQS8SV70MZ1TS9G3WX529XC"),
        };
        let info = event(hints, F5);
        assert_eq!(info.shape, Shape::KirimEnvelope);
        assert_eq!(info.source, Source::Kirim);
        assert_eq!(info.event_type.as_deref(), Some("conversation.assigned"));
        assert_eq!(
            info.event_id.as_deref(),
            Some("evt_01KTQS8SV70MZ1TS9G3WX529XC")
        );
        assert!(info.phone_number_ids.is_empty());
        assert_eq!(keys(&info), ["kirim:evt_01KTQS8SV70MZ1TS9G3WX529XC"]);
    }

    #[test]
    fn f9_with_kirimdev_and_no_livemode() {
        for src in ["kirimdev", "KirimDev", " kirimdev\t", "KIRIM"] {
            let info = event(source(src), F9);
            assert_eq!(info.shape, Shape::KirimEnvelope, "{src:?}");
            assert_eq!(info.source, Source::Kirim);
            assert_eq!(info.event_type.as_deref(), Some("contact.updated"));
            assert_eq!(
                info.event_id.as_deref(),
                Some("evt_01KTQXR82PJ05YY62FEXEXHSK4")
            );
            assert_eq!(keys(&info), ["kirim:evt_01KTQXR82PJ05YY62FEXEXHSK4"]);
        }
    }

    #[test]
    fn missing_livemode_is_accepted() {
        let body = br#"{"id":"evt_01KTQS8SV70MZ1TS9G3WX529XC","type":"contact.created","created_at":"2026-06-10T03:29:59Z","data":{}}"#;
        for hints in [Hints::default(), source("kirim")] {
            assert_eq!(event(hints, body).shape, Shape::KirimEnvelope);
        }
    }

    fn status_body(wamid: &str, status: &str) -> String {
        format!(
            r#"{{"object":"whatsapp_business_account","entry":[{{"id":"1","changes":[{{"value":{{"messaging_product":"whatsapp","metadata":{{"display_phone_number":"1","phone_number_id":"109283746501928"}},"statuses":[{{"id":"{wamid}","status":"{status}","timestamp":"1781061648","recipient_id":"6281398765432"}}]}},"field":"messages"}}]}}]}}"#
        )
    }

    #[test]
    fn sent_delivered_read_of_one_wamid_give_three_keys() {
        let wamid = "wamid.HBgNNjI4MTM5ODc2NTQzMhUCABIYFjNFQjA0MjA5RkUxNUE5RURDRDU0NDM0OQA=";
        let mut all = Vec::new();
        for status in ["sent", "delivered", "read"] {
            let info = event(source("meta"), status_body(wamid, status).as_bytes());
            assert_eq!(keys(&info), [format!("meta:status:{wamid}:{status}")]);
            assert_eq!(info.event_id.as_deref(), Some(wamid));
            all.extend(info.keys);
        }
        all.sort();
        all.dedup();
        assert_eq!(all.len(), 3);
    }

    #[test]
    fn a_meta_body_with_two_messages_gives_two_keys() {
        let body = br#"{"object":"whatsapp_business_account","entry":[{"changes":[{"value":{"metadata":{"phone_number_id":"111"},"messages":[{"id":"wamid.A","type":"text"},{"id":"wamid.B","type":"text"},{"id":"wamid.A"}]}}]}]}"#;
        let info = event(source("meta"), body);
        assert_eq!(keys(&info), ["meta:msg:wamid.A", "meta:msg:wamid.B"]);
        assert_eq!(info.event_id.as_deref(), Some("wamid.A"));
        assert_eq!(info.event_type.as_deref(), Some("message.received"));
    }

    #[test]
    fn every_entry_and_change_is_walked() {
        let body = br#"{"object":"whatsapp_business_account","entry":[
            {"changes":[{"value":{"metadata":{"phone_number_id":"111"},"messages":[{"id":"wamid.A"}]}},
                        {"value":{"metadata":{"phone_number_id":"111"},"statuses":[{"id":"wamid.S","status":"read"}]}}]},
            {"changes":[{"value":{"metadata":{"phone_number_id":"222"},"messages":[{"id":"wamid.B"}]}}]}]}"#;
        let info = event(Hints::default(), body);
        assert_eq!(info.phone_number_ids, ["111", "222"]);
        assert_eq!(
            keys(&info),
            [
                "meta:msg:wamid.A",
                "meta:status:wamid.S:read",
                "meta:msg:wamid.B"
            ]
        );
        assert_eq!(info.event_type.as_deref(), Some("message.received"));
    }

    #[test]
    fn many_duplicate_keys_are_removed_in_order() {
        let messages: Vec<String> = (0..100)
            .map(|i| format!(r#"{{"id":"wamid.{}"}}"#, i % 40))
            .collect();
        let body = format!(
            r#"{{"object":"whatsapp_business_account","entry":[{{"changes":[{{"value":{{"messages":[{}]}}}}]}}]}}"#,
            messages.join(",")
        );
        let info = event(Hints::default(), body.as_bytes());
        let expected: Vec<String> = (0..40).map(|i| format!("meta:msg:wamid.{i}")).collect();
        assert_eq!(keys(&info), expected);
    }

    #[test]
    fn odd_typed_meta_fields_are_tolerated() {
        let body = br#"{"object":"whatsapp_business_account","entry":[7,"x",null,{"changes":{"no":"array"}},
            {"changes":[null,{"value":[1]},{"value":{"metadata":5,"messages":null,"statuses":"x"}},{"value":{"metadata":{"phone_number_id":""}}},
                        {"value":{"metadata":{"phone_number_id":109283746501928},"messages":[1,{"id":42},{"id":""},{"from":"1"}],
                                  "statuses":[{"id":"wamid.S"},{"status":"read"},{"id":"wamid.T","status":["read"]}]}}]}]}"#;
        let info = event(source("meta"), body);
        assert_eq!(info.shape, Shape::MetaPassthrough);
        assert!(info.phone_number_ids.is_empty());
        assert_eq!(keys(&info), [body_hash_key(body).as_str()]);
        assert_eq!(info.event_type.as_deref(), Some("message.received"));
        assert_eq!(info.event_id.as_deref(), Some("wamid.S"));
    }

    #[test]
    fn meta_event_header_takes_precedence() {
        let hints = Hints {
            source: Some("meta"),
            event: Some("message.status_updated"),
            event_id: None,
        };
        let info = event(hints, F3);
        assert_eq!(info.event_type.as_deref(), Some("message.status_updated"));
        assert_eq!(
            keys(&info),
            ["meta:status:wamid.HBgNNjI4MTM5ODc2NTQzMhUCABIYFjNFQjA0MjA5RkUxNUE5RURDRDU0NDM0OQA=:delivered"]
        );
    }

    #[test]
    fn meta_event_id_prefers_the_first_message_over_statuses() {
        let body = br#"{"object":"whatsapp_business_account","entry":[{"changes":[{"value":{"statuses":[{"id":"wamid.S","status":"sent"}]}},{"value":{"messages":[{"id":"wamid.M"}]}}]}]}"#;
        let info = event(Hints::default(), body);
        assert_eq!(info.event_id.as_deref(), Some("wamid.M"));
        assert_eq!(info.event_type.as_deref(), Some("message.received"));
        assert_eq!(
            keys(&info),
            ["meta:status:wamid.S:sent", "meta:msg:wamid.M"]
        );
    }

    #[test]
    fn a_meta_body_without_ids_gets_the_hash_key() {
        let body = br#"{"object":"whatsapp_business_account","entry":[]}"#;
        let info = event(source("meta"), body);
        assert_eq!(info.shape, Shape::MetaPassthrough);
        assert_eq!(info.keys, [body_hash_key(body)]);
        assert_eq!(info.event_type, None);
        assert_eq!(info.event_id, None);
    }

    #[test]
    fn escaped_strings_are_unescaped() {
        let body = br#"{"object":"whatsapp_business_account","entry":[{"changes":[{"value":{"messages":[{"id":"wamid.a\/b\u003d"}]}}]}]}"#;
        assert_eq!(
            keys(&event(Hints::default(), body)),
            ["meta:msg:wamid.a/b="]
        );
    }

    #[test]
    fn header_says_meta_but_body_is_an_envelope() {
        let info = event(source("meta"), F5);
        assert_eq!(info.shape, Shape::KirimEnvelope);
        assert_eq!(info.source, Source::Kirim);
        assert_eq!(keys(&info), ["kirim:evt_01KTQS8SV70MZ1TS9G3WX529XC"]);
    }

    #[test]
    fn header_says_kirim_but_body_is_meta() {
        let info = event(source("kirim"), F1);
        assert_eq!(info.shape, Shape::MetaPassthrough);
        assert_eq!(info.source, Source::Meta);
    }

    #[test]
    fn unknown_source_header_sniffs() {
        for src in ["", "whatsapp", "kckit"] {
            assert_eq!(event(source(src), F1).shape, Shape::MetaPassthrough);
            assert_eq!(event(source(src), F5).shape, Shape::KirimEnvelope);
        }
    }

    #[test]
    fn kirim_header_relaxes_the_envelope_test() {
        // No evt_ prefix and no data: an envelope only when the header says so.
        let body = br#"{"id":"ev-123","type":"contact.deleted"}"#;
        for src in ["kirim", "kirimdev", "KirimDev", " KIRIM\t"] {
            let info = event(source(src), body);
            assert_eq!(info.shape, Shape::KirimEnvelope, "{src:?}");
            assert_eq!(info.source, Source::Kirim);
            assert_eq!(keys(&info), ["kirim:ev-123"]);
            assert_eq!(info.event_type.as_deref(), Some("contact.deleted"));
            assert_eq!(info.event_id.as_deref(), Some("ev-123"));
        }
        for src in ["meta", "kirim.dev", "kckit"] {
            assert!(
                matches!(classify(source(src), body), Classified::Unrecognized(_)),
                "{src:?}"
            );
        }
        assert_eq!(unknown(body).reason, UnrecognizedReason::UnknownShape);
        // An empty id is not enough even then.
        let body = br#"{"id":"","type":"contact.deleted","data":{}}"#;
        assert!(matches!(
            classify(source("kirim"), body),
            Classified::Unrecognized(_)
        ));
    }

    #[test]
    fn unknown_event_type_is_accepted() {
        let body = br#"{"id":"evt_01KTQS8SV70MZ1TS9G3WX529XC","type":"broadcast.completed","created_at":"2026-06-10T03:29:59Z","livemode":false,"data":{"broadcast":{"id":"brd_1"}},"extra":[1,2]}"#;
        let info = event(Hints::default(), body);
        assert_eq!(info.event_type.as_deref(), Some("broadcast.completed"));
        assert_eq!(keys(&info), ["kirim:evt_01KTQS8SV70MZ1TS9G3WX529XC"]);
    }

    #[test]
    fn event_headers_take_precedence_and_empty_ones_are_ignored() {
        let hints = Hints {
            source: Some("kirim"),
            event: Some("contact.renamed"),
            event_id: Some("evt_FROMHEADER"),
        };
        let info = event(hints, F5);
        assert_eq!(info.event_type.as_deref(), Some("contact.renamed"));
        assert_eq!(info.event_id.as_deref(), Some("evt_FROMHEADER"));
        // The dedupe key always comes from the body.
        assert_eq!(keys(&info), ["kirim:evt_01KTQS8SV70MZ1TS9G3WX529XC"]);
        let hints = Hints {
            source: Some("kirim"),
            event: Some(" "),
            event_id: Some(""),
        };
        let info = event(hints, F5);
        assert_eq!(info.event_type.as_deref(), Some("conversation.assigned"));
        assert_eq!(
            info.event_id.as_deref(),
            Some("evt_01KTQS8SV70MZ1TS9G3WX529XC")
        );
    }

    const ALTERNATE: &[u8] = br#"{"id":"wbd_01KTQRDK4HC6FXC9PDQN0GCBWY","event":"message.received","delivered_at":"2026-06-10T03:15:07Z","data":{"message":{"id":"msg_01KTQRDK4HC6FXC9PDQN0GCBWY","content":"Halo"}}}"#;

    #[test]
    fn alternate_with_event_id_header() {
        let hints = Hints {
            source: Some("kirim"),
            event: None,
            event_id: Some("evt_01KTQRDK8RGHFQWW3MZQZN8B5H"),
        };
        let info = event(hints, ALTERNATE);
        assert_eq!(info.shape, Shape::AlternateMessage);
        assert_eq!(info.source, Source::Kirim);
        assert_eq!(info.event_type.as_deref(), Some("message.received"));
        assert_eq!(
            info.event_id.as_deref(),
            Some("evt_01KTQRDK8RGHFQWW3MZQZN8B5H")
        );
        // The key comes from the body's message id, not from the unsigned header.
        assert_eq!(keys(&info), ["message:msg_01KTQRDK4HC6FXC9PDQN0GCBWY"]);
    }

    #[test]
    fn alternate_without_event_id_header() {
        let info = event(Hints::default(), ALTERNATE);
        assert_eq!(info.shape, Shape::AlternateMessage);
        assert_eq!(
            info.event_id.as_deref(),
            Some("msg_01KTQRDK4HC6FXC9PDQN0GCBWY")
        );
        assert_eq!(keys(&info), ["message:msg_01KTQRDK4HC6FXC9PDQN0GCBWY"]);
    }

    #[test]
    fn alternate_without_message_id() {
        for body in [
            &br#"{"id":"wbd_1","event":"message.status_updated","data":{"message":{"status":"read"}}}"#[..],
            br#"{"event":"message.received","data":{"message":"text"}}"#,
            br#"{"event":"message.received","data":{"message":{"id":7}}}"#,
            br#"{"event":"message.received","data":{}}"#,
        ] {
            let info = event(Hints::default(), body);
            assert_eq!(info.shape, Shape::AlternateMessage);
            assert_eq!(info.event_id, None);
            assert_eq!(info.keys, [body_hash_key(body)]);
        }
    }

    #[test]
    fn not_json_gets_not_json_and_the_hash_key() {
        for body in [
            &b"not json"[..],
            b"",
            b"{\"id\":",
            b"{\"a\":1} trailing",
            b"{\"a\":1}{\"a\":1}",
            b"\xEF\xBB\xBF{\"a\":1}",
        ] {
            let u = unknown(body);
            assert_eq!(u.reason, UnrecognizedReason::NotJson, "{body:?}");
            assert_eq!(u.key, body_hash_key(body));
        }
    }

    #[test]
    fn json_of_no_known_shape_is_unknown_shape() {
        for body in [
            &b"[1,2]"[..],
            b"{\"a\":1}",
            b"null",
            b"\"evt_1\"",
            b"42",
            b" {} \n",
            b"{\"object\":\"whatsapp_business_account\"}",
            b"{\"object\":\"page\",\"entry\":[]}",
            b"{\"object\":\"whatsapp_business_account\",\"entry\":{}}",
            b"{\"id\":\"evt_1\",\"type\":\"x\"}",
            b"{\"id\":\"evt_1\",\"type\":\"x\",\"data\":[]}",
            b"{\"id\":\"evt_1\",\"type\":7,\"data\":{}}",
            b"{\"event\":\"message.received\",\"data\":\"x\"}",
            // Duplicate keys are valid JSON but ambiguous.
            b"{\"id\":\"evt_1\",\"id\":\"evt_2\",\"type\":\"x\",\"data\":{}}",
        ] {
            let u = unknown(body);
            assert_eq!(
                u.reason,
                UnrecognizedReason::UnknownShape,
                "{:?}",
                String::from_utf8_lossy(body)
            );
            assert_eq!(u.key, body_hash_key(body));
        }
    }

    #[test]
    fn body_hash_key_known_answers() {
        assert_eq!(
            body_hash_key(b"").as_str(),
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert_eq!(
            body_hash_key(b"abc").as_str(),
            "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn names_and_serde_forms() {
        assert_eq!(Source::Kirim.as_str(), "kirim");
        assert_eq!(Source::Meta.as_str(), "meta");
        assert_eq!(UnrecognizedReason::NotJson.as_str(), "not_json");
        assert_eq!(UnrecognizedReason::NotUtf8.as_str(), "not_utf8");
        assert_eq!(UnrecognizedReason::UnknownShape.as_str(), "unknown_shape");
        let json = serde_json::to_string(&(
            Source::Meta,
            Shape::KirimEnvelope,
            Shape::MetaPassthrough,
            Shape::AlternateMessage,
        ))
        .expect("serialises");
        assert_eq!(
            json,
            r#"["meta","kirim_envelope","meta_passthrough","alternate_message"]"#
        );
        let key = body_hash_key(b"abc");
        assert_eq!(
            serde_json::to_string(&key).expect("serialises"),
            format!("\"{key}\"")
        );
        let back: DedupeKey = serde_json::from_str("\"kirim:evt_1\"").expect("deserialises");
        assert_eq!(back.clone().into_string(), "kirim:evt_1");
        assert_eq!(back.to_string(), back.as_str());
        let source: Source = serde_json::from_str("\"kirim\"").expect("deserialises");
        assert_eq!(source, Source::Kirim);
    }

    /// Bodies that classify as an event with no headers at all, including ones that fit two
    /// shapes (alternate and relaxed envelope; Meta and envelope).
    const HEADER_PROOF_BODIES: [&[u8]; 4] = [
        ALTERNATE,
        br#"{"id":"x1","type":"t","event":"message.received","data":{"message":{"id":"m1"}}}"#,
        br#"{"object":"whatsapp_business_account","entry":[],"id":"evt_1","type":"t","data":{}}"#,
        F3,
    ];

    #[test]
    fn unsigned_headers_never_change_the_keys_or_shape_of_a_body() {
        let sources = [
            None,
            Some("kirim"),
            Some("kirimdev"),
            Some("meta"),
            Some("x"),
        ];
        let event_ids = [None, Some("evt_A"), Some("evt_B"), Some("wamid.X")];
        let mut bodies: Vec<&[u8]> = HEADER_PROOF_BODIES.to_vec();
        bodies.extend(FIXTURES.iter().map(|f| f.0));
        for body in bodies {
            let plain = event(Hints::default(), body);
            for source in sources {
                for event_id in event_ids {
                    let hints = Hints {
                        source,
                        event: Some("other.type"),
                        event_id,
                    };
                    let info = event(hints, body);
                    let text = String::from_utf8_lossy(body);
                    assert_eq!(info.keys, plain.keys, "{source:?} {event_id:?} {text}");
                    assert_eq!(info.shape, plain.shape, "{source:?} {event_id:?} {text}");
                    assert_eq!(info.source, plain.source, "{source:?} {event_id:?} {text}");
                }
            }
        }
    }

    #[test]
    fn a_body_of_two_shapes_is_keyed_by_its_sniffed_shape() {
        let body = HEADER_PROOF_BODIES[1];
        for src in [None, Some("kirim"), Some("kirimdev")] {
            let hints = Hints {
                source: src,
                ..Hints::default()
            };
            let info = event(hints, body);
            assert_eq!(info.shape, Shape::AlternateMessage, "{src:?}");
            assert_eq!(keys(&info), ["message:m1"], "{src:?}");
        }
        let body = HEADER_PROOF_BODIES[2];
        let info = event(source("kirim"), body);
        assert_eq!(info.shape, Shape::MetaPassthrough);
        assert_eq!(info.keys, [body_hash_key(body)]);
    }

    #[test]
    fn alternate_without_any_body_id_falls_back_to_the_event_id_header() {
        let body =
            br#"{"id":"wbd_1","event":"message.received","data":{"message":{"status":"read"}}}"#;
        let hints = Hints {
            event_id: Some("evt_01KTQRDK8RGHFQWW3MZQZN8B5H"),
            ..Hints::default()
        };
        let info = event(hints, body);
        assert_eq!(info.shape, Shape::AlternateMessage);
        assert_eq!(keys(&info), ["event:evt_01KTQRDK8RGHFQWW3MZQZN8B5H"]);
        assert_eq!(event(Hints::default(), body).keys, [body_hash_key(body)]);
    }

    #[test]
    fn a_body_that_is_not_utf8_is_not_utf8() {
        for body in [
            &b"{\"id\":\"evt_R3\",\"type\":\"t\",\"data\":{\"text\":\"\xff\xfe\"}}"[..],
            b"{\"object\":\"whatsapp_business_account\",\"entry\":[],\"x\":\"\xc0\x80\"}",
            b"{\"event\":\"message.received\",\"data\":{},\"x\":\"\xed\xa0\x80\"}",
            b"\xff\xfe",
        ] {
            for hints in [Hints::default(), source("kirim"), source("meta")] {
                let Classified::Unrecognized(u) = classify(hints, body) else {
                    panic!("{:?} should be unrecognised", String::from_utf8_lossy(body));
                };
                assert_eq!(u.reason, UnrecognizedReason::NotUtf8, "{body:?}");
                assert_eq!(u.key, body_hash_key(body));
            }
        }
        assert_eq!(UnrecognizedReason::NotUtf8.as_str(), "not_utf8");
    }

    #[test]
    fn status_keys_are_unambiguous() {
        let a = event(Hints::default(), status_body("a:b", "c").as_bytes());
        let b = event(Hints::default(), status_body("a", "b:c").as_bytes());
        assert_ne!(a.keys, b.keys);
        assert_eq!(keys(&a), ["meta:status:a%3Ab:c"]);
        assert_eq!(keys(&b), ["meta:status:a:b%3Ac"]);
        // `%` is escaped too, so an escaped-looking id cannot meet a real `:`.
        let c = event(Hints::default(), status_body("a%3Ab", "c").as_bytes());
        assert_eq!(keys(&c), ["meta:status:a%253Ab:c"]);
        // Real wamids and statuses hold neither character: the spec's keys, unchanged.
        let wamid = "wamid.HBgNNjI4MTM5ODc2NTQzMhUCABIYFjNFQjA0MjA5RkUxNUE5RURDRDU0NDM0OQA=";
        let d = event(Hints::default(), status_body(wamid, "read").as_bytes());
        assert_eq!(keys(&d), [format!("meta:status:{wamid}:read")]);
    }

    #[test]
    fn an_out_of_range_number_in_a_field_read_counts_as_absent() {
        // Each field the classifier reads, with a number serde_json cannot hold as an f64;
        // the body stays what it is without that field.
        let cases: [(&str, Shape, &[&str]); 16] = [
            (
                r#"{"object":1e400,"id":"evt_1","type":"t","data":{}}"#,
                Shape::KirimEnvelope,
                &["kirim:evt_1"],
            ),
            (
                r#"{"object":"whatsapp_business_account","entry":-1e400,"id":"evt_1","type":"t","data":{}}"#,
                Shape::KirimEnvelope,
                &["kirim:evt_1"],
            ),
            (
                r#"{"object":"whatsapp_business_account","entry":[1e400,{"changes":[{"value":{"messages":[{"id":"wamid.A"}]}}]}]}"#,
                Shape::MetaPassthrough,
                &["meta:msg:wamid.A"],
            ),
            (
                r#"{"object":"whatsapp_business_account","entry":[{"changes":1e400}]}"#,
                Shape::MetaPassthrough,
                &[],
            ),
            (
                r#"{"object":"whatsapp_business_account","entry":[{"changes":[1e400,{"value":1e400},{"value":{"messages":[{"id":"wamid.A"}]}}]}]}"#,
                Shape::MetaPassthrough,
                &["meta:msg:wamid.A"],
            ),
            (
                r#"{"object":"whatsapp_business_account","entry":[{"changes":[{"value":{"metadata":1e400,"messages":[{"id":"wamid.A"}]}}]}]}"#,
                Shape::MetaPassthrough,
                &["meta:msg:wamid.A"],
            ),
            (
                r#"{"object":"whatsapp_business_account","entry":[{"changes":[{"value":{"metadata":{"phone_number_id":1e400},"messages":[{"id":"wamid.A"}]}}]}]}"#,
                Shape::MetaPassthrough,
                &["meta:msg:wamid.A"],
            ),
            (
                r#"{"object":"whatsapp_business_account","entry":[{"changes":[{"value":{"messages":1e400,"statuses":[{"id":"wamid.S","status":"read"}]}}]}]}"#,
                Shape::MetaPassthrough,
                &["meta:status:wamid.S:read"],
            ),
            (
                r#"{"object":"whatsapp_business_account","entry":[{"changes":[{"value":{"messages":[1e400,{"id":1e400},{"id":"wamid.A"}]}}]}]}"#,
                Shape::MetaPassthrough,
                &["meta:msg:wamid.A"],
            ),
            (
                r#"{"object":"whatsapp_business_account","entry":[{"changes":[{"value":{"statuses":1e400,"messages":[{"id":"wamid.A"}]}}]}]}"#,
                Shape::MetaPassthrough,
                &["meta:msg:wamid.A"],
            ),
            (
                r#"{"object":"whatsapp_business_account","entry":[{"changes":[{"value":{"statuses":[1e400,{"id":1e400,"status":"read"},{"id":"wamid.S","status":1e400},{"id":"wamid.T","status":"sent"}]}}]}]}"#,
                Shape::MetaPassthrough,
                &["meta:status:wamid.T:sent"],
            ),
            (
                r#"{"id":1e400,"event":"message.received","data":{"message":{"id":"m1"}}}"#,
                Shape::AlternateMessage,
                &["message:m1"],
            ),
            (
                r#"{"id":"evt_1","type":1e400,"event":"message.received","data":{"message":{"id":"m1"}}}"#,
                Shape::AlternateMessage,
                &["message:m1"],
            ),
            (
                r#"{"id":"evt_1","type":"t","event":1e400,"data":{"message":{"id":"m1"}}}"#,
                Shape::KirimEnvelope,
                &["kirim:evt_1"],
            ),
            (
                r#"{"id":"wbd_1","event":"message.received","data":{"message":1e400,"text":"1e400"}}"#,
                Shape::AlternateMessage,
                &[],
            ),
            (
                r#"{"id":"wbd_1","event":"message.received","data":{"message":{"id":1e400}}}"#,
                Shape::AlternateMessage,
                &[],
            ),
        ];
        for (body, shape, expected) in cases {
            let info = event(Hints::default(), body.as_bytes());
            assert_eq!(info.shape, shape, "{body}");
            if expected.is_empty() {
                assert_eq!(info.keys, [body_hash_key(body.as_bytes())], "{body}");
            } else {
                assert_eq!(keys(&info), expected, "{body}");
            }
        }
        // `data` itself out of range: absent, so no shape, and still JSON.
        let body = br#"{"id":"evt_1","type":"t","data":1e400}"#;
        assert_eq!(unknown(body).reason, UnrecognizedReason::UnknownShape);
        // Strings that look like numbers are left alone.
        let body =
            br#"{"id":"evt_1e400","type":"1e400","data":{"x":[1e400,"-2e999",{"y":-9e9999}]}}"#;
        let info = event(Hints::default(), body);
        assert_eq!(keys(&info), ["kirim:evt_1e400"]);
        assert_eq!(info.event_type.as_deref(), Some("1e400"));
        // A duplicate key is still refused after the numbers are set aside.
        let body = br#"{"id":"evt_1","id":"evt_2","type":"t","data":{"n":1e400}}"#;
        assert_eq!(unknown(body).reason, UnrecognizedReason::UnknownShape);
    }
}
