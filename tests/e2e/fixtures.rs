//! The spec fixtures F1-F9 (`tests/fixtures/`) and the deliveries the tests send.
//!
//! A [`Fixture`] is one entry of `fixtures.json` with its exact body bytes. A [`Delivery`] is a
//! request ready to go on the wire: headers and body, signed with the test secrets at a chosen
//! time. Nothing here talks to the daemon; see `http.rs` for that.

use std::path::PathBuf;
use std::time::SystemTime;

use kirimhook::receive::signature::SigningSecret;

/// Test secret A of the spec (section 11).
pub const SECRET_A: &str = "whsec_dGVzdC1vbmx5LWtpcmltLWZpeHR1cmUtc2VjcmV0";
/// Test secret B of the spec (added by a rotation before F8).
pub const SECRET_B: &str = "whsec_cm90YXRlZC10ZXN0LXNlY3JldC0yMDI2LTA2";
/// A well-formed secret that the daemon does not know.
pub const SECRET_WRONG: &str = "whsec_bm90LWNvbmZpZ3VyZWQtYW55d2hlcmUtYXQtYWxs";
/// The webhook path the daemon is configured with.
pub const PATH: &str = "/webhooks/kirim";
/// The Meta `phone_number_id` of the business number in every Meta fixture.
pub const PHONE_NUMBER_ID: &str = "109283746501928";
/// F5's event id, which [`kirim_event`] swaps for a fresh one.
const F5_EVENT_ID: &str = "evt_01KTQS8SV70MZ1TS9G3WX529XC";
/// Crockford base32 alphabet (no I, L, O, U).
const CROCKFORD: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";

/// The secret with the spec's name `"A"` or `"B"` (any other name: [`SECRET_WRONG`]), with the
/// id the test config gives it.
pub fn secret(name: &str) -> SigningSecret {
    match name {
        "A" => SigningSecret::new("sec_A", SECRET_A),
        "B" => SigningSecret::new("sec_B", SECRET_B),
        _ => SigningSecret::new("sec_WRONG", SECRET_WRONG),
    }
}

/// The current Unix time in seconds.
pub fn now() -> i64 {
    kirimhook::ops::send::unix_now()
}

/// The fixture directory.
pub fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// One spec fixture.
#[derive(Debug, Clone)]
pub struct Fixture {
    /// `f1` ... `f9`.
    pub name: String,
    /// Path of the body file.
    pub file: PathBuf,
    /// The exact signed body bytes.
    pub body: Vec<u8>,
    /// The original request headers, in manifest order.
    pub headers: Vec<(String, String)>,
    /// Names of the secrets that signed it, in `v1` order.
    pub secrets: Vec<String>,
    /// The expected dedupe keys.
    pub dedupe_keys: Vec<String>,
}

/// Every fixture, F1 to F9.
pub fn all() -> Vec<Fixture> {
    let manifest = std::fs::read_to_string(dir().join("fixtures.json")).expect("fixtures.json");
    let manifest: serde_json::Value = serde_json::from_str(&manifest).expect("fixtures.json");
    let strings = |v: &serde_json::Value| -> Vec<String> {
        v.as_array()
            .expect("an array")
            .iter()
            .map(|s| s.as_str().expect("a string").to_owned())
            .collect()
    };
    manifest
        .as_array()
        .expect("fixtures.json is an array")
        .iter()
        .map(|entry| {
            let file = dir().join(entry["file"].as_str().expect("file"));
            Fixture {
                name: entry["name"].as_str().expect("name").to_owned(),
                body: std::fs::read(&file).expect("fixture body"),
                file,
                headers: entry["headers"]
                    .as_object()
                    .expect("headers")
                    .iter()
                    .map(|(k, v)| (k.clone(), v.as_str().expect("header value").to_owned()))
                    .collect(),
                secrets: strings(&entry["secrets"]),
                dedupe_keys: strings(&entry["dedupe_keys"]),
            }
        })
        .collect()
}

/// The fixture named `name` (`"f1"` ... `"f9"`).
pub fn get(name: &str) -> Fixture {
    all()
        .into_iter()
        .find(|f| f.name == name)
        .unwrap_or_else(|| panic!("no fixture {name}"))
}

impl Fixture {
    /// An original header's value (name compared case-insensitively).
    pub fn header(&self, name: &str) -> &str {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .unwrap_or_else(|| panic!("{} has no {name} header", self.name))
    }

    /// `X-Kirim-Event-Id`.
    pub fn event_id(&self) -> &str {
        self.header("X-Kirim-Event-Id")
    }

    /// The source the daemon should report: `meta`, or `kirim` (also for `kirimdev`).
    pub fn source(&self) -> &str {
        match self.header("X-Kirim-Source") {
            "meta" => "meta",
            _ => "kirim",
        }
    }

    /// The request exactly as the spec gives it, original signature included.
    pub fn original(&self) -> Delivery {
        Delivery {
            headers: self.headers.clone(),
            body: self.body.clone(),
        }
    }

    /// The original request re-signed now by the same secrets, in the same `v1` order.
    pub fn signed_now(&self) -> Delivery {
        let secrets: Vec<&str> = self.secrets.iter().map(String::as_str).collect();
        self.original().signed(&secrets, now())
    }
}

/// A request ready to send to the webhook path.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// Request headers, in order.
    pub headers: Vec<(String, String)>,
    /// Body bytes.
    pub body: Vec<u8>,
}

impl Delivery {
    /// A header's value, if present (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Sets a header, replacing any with the same name.
    pub fn with_header(mut self, name: &str, value: &str) -> Self {
        match self
            .headers
            .iter_mut()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
        {
            Some(slot) => slot.1 = value.to_owned(),
            None => self.headers.push((name.to_owned(), value.to_owned())),
        }
        self
    }

    /// Removes a header.
    pub fn without_header(mut self, name: &str) -> Self {
        self.headers.retain(|(k, _)| !k.eq_ignore_ascii_case(name));
        self
    }

    /// Replaces the body (the signature is left as it is).
    pub fn with_body(mut self, body: impl Into<Vec<u8>>) -> Self {
        self.body = body.into();
        self
    }

    /// A retry of the same event, the way kirim.dev sends one: new delivery id, `attempt`, and a
    /// signature made now by `secrets`.
    pub fn retry(self, attempt: u32, secrets: &[&str]) -> Self {
        self.with_header("X-Kirim-Delivery-Id", &new_delivery_id())
            .with_header("X-Kirim-Attempt", &attempt.to_string())
            .signed(secrets, now())
    }

    /// Signs the current body at `t` with the named secrets (one `v1` each, in order). The
    /// signature goes into whichever signature header is present (`X-Kirim-Signature` when
    /// there is none).
    pub fn signed(self, secrets: &[&str], t: i64) -> Self {
        let mut value = format!("t={t}");
        for name in secrets {
            let one = secret(name).sign(t, &self.body);
            let v1 = one.split_once(",v1=").expect("sign() gives t=..,v1=..").1;
            value.push_str(",v1=");
            value.push_str(v1);
        }
        let name = if self.header("X-Kirim-Signature").is_none()
            && self.header("X-Kirim-Signature-256").is_some()
        {
            "X-Kirim-Signature-256"
        } else {
            "X-Kirim-Signature"
        };
        self.with_header(name, &value)
    }

    /// `X-Kirim-Event-Id`.
    pub fn event_id(&self) -> &str {
        self.header("X-Kirim-Event-Id")
            .expect("delivery has an X-Kirim-Event-Id")
    }
}

/// A fresh delivery id (`wbd_` + 26 Crockford characters).
pub fn new_delivery_id() -> String {
    kirimhook::ops::send::new_delivery_id(SystemTime::now())
}

/// A fresh, never used event id (`evt_` + 26 Crockford characters).
pub fn new_event_id() -> String {
    let mut id = String::from("evt_");
    for _ in 0..26 {
        id.push(char::from(CROCKFORD[fastrand::usize(..32)]));
    }
    id
}

/// A Kirim envelope with `headers` for a Kirim-originated event, signed now by secret A.
pub fn kirim_delivery(event_id: &str, event_type: &str, body: Vec<u8>) -> Delivery {
    Delivery {
        headers: vec![
            ("Content-Type".into(), "application/json".into()),
            ("User-Agent".into(), "Kirim-Webhook/1.0".into()),
            ("X-Kirim-Source".into(), "kirim".into()),
            ("X-Kirim-Event".into(), event_type.into()),
            ("X-Kirim-Event-Id".into(), event_id.into()),
            ("X-Kirim-Delivery-Id".into(), new_delivery_id()),
            ("X-Kirim-Attempt".into(), "1".into()),
        ],
        body,
    }
    .signed(&["A"], now())
}

/// A new `conversation.assigned` event (F5's body with the event id `event_id`), signed now by
/// secret A. Used as a sentinel and for bursts.
pub fn kirim_event(event_id: &str) -> Delivery {
    let body = std::fs::read_to_string(dir().join("f5.json")).expect("F5 is UTF-8");
    assert!(body.contains(F5_EVENT_ID));
    let body = body.replace(F5_EVENT_ID, event_id);
    kirim_delivery(event_id, "conversation.assigned", body.into_bytes())
}

/// A new event with a fresh id, signed now by secret A.
pub fn sentinel() -> Delivery {
    kirim_event(&new_event_id())
}
