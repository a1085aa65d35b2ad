//! TEMPORARY compile stub; replaced by the real module.
#![allow(missing_docs, dead_code)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Source { Kirim, Meta }
impl Source { pub fn as_str(self) -> &'static str { "kirim" } }
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Shape { KirimEnvelope, MetaPassthrough, AlternateMessage }
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
#[serde(transparent)]
pub struct DedupeKey(String);
impl DedupeKey { pub fn as_str(&self) -> &str { &self.0 } pub fn into_string(self) -> String { self.0 } }
#[derive(Debug, Clone, Copy, Default)]
pub struct Hints<'a> { pub source: Option<&'a str>, pub event: Option<&'a str>, pub event_id: Option<&'a str> }
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Classified { Event(EventInfo), Unrecognized(Unrecognized) }
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventInfo { pub shape: Shape, pub source: Source, pub event_type: Option<String>, pub event_id: Option<String>, pub keys: Vec<DedupeKey>, pub phone_number_ids: Vec<String> }
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unrecognized { pub reason: UnrecognizedReason, pub key: DedupeKey }
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnrecognizedReason { NotJson, UnknownShape }
impl UnrecognizedReason { pub fn as_str(self) -> &'static str { "not_json" } }
pub fn classify(_hints: Hints<'_>, body: &[u8]) -> Classified { Classified::Unrecognized(Unrecognized{reason: UnrecognizedReason::NotJson, key: body_hash_key(body)}) }
pub fn body_hash_key(_body: &[u8]) -> DedupeKey { DedupeKey("sha256:x".into()) }
