//! Verification of the `X-Kirim-Signature` header (spec sections 4.2 to 4.4): parsing the
//! `t=…,v1=…` header, the freshness check against a clock value passed in by the caller, and
//! the HMAC-SHA256 comparison of every received `v1` against every configured secret in
//! constant time. A successful check yields a [`Verified`], which only [`verify`] can build.
//!
//! This module does no I/O: it does not read headers out of a request, does not read the system
//! clock, does not log, and does not parse the body (that is `envelope`'s job, and only after
//! verification succeeded). It does not decide HTTP status codes either; the caller maps a
//! [`VerifyError`] to its answer, using [`VerifyError::reason`] for the client-visible reason.

use std::fmt;
use std::sync::Arc;

use hmac::{Hmac, Mac};
use sha2::Sha256;
use subtle::{Choice, ConstantTimeEq};

type HmacSha256 = Hmac<Sha256>;

/// Name of the signature header (lower case), read first.
pub const SIGNATURE_HEADER: &str = "x-kirim-signature";

/// Alternative spelling of the signature header (lower case), read only when
/// [`SIGNATURE_HEADER`] is absent (spec section 3, docs conflict 1).
pub const SIGNATURE_HEADER_ALT: &str = "x-kirim-signature-256";

/// Length in bytes of an HMAC-SHA256 digest, and so of a decoded `v1`.
const DIGEST_LEN: usize = 32;

/// A configured signing secret: kirim.dev's id (`sec_…`, fine to show in logs) and the secret
/// value (never shown).
///
/// The HMAC key is the complete `whsec_…` string as UTF-8, prefix included and not
/// base64-decoded (spec 4.1). The key is absorbed into a pre-keyed HMAC state once, at
/// construction, so that verifying a request only clones that state. `Debug` prints the id and
/// `<redacted>` in place of the value.
#[derive(Clone)]
pub struct SigningSecret {
    id: Arc<str>,
    mac: HmacSha256,
    /// Whether the value is [`DEMO_SECRET`].
    demo: bool,
}

/// The demo secret of `config.example.toml`: published, so anyone can sign with it. The daemon
/// and `check-config` warn while it is configured.
pub const DEMO_SECRET: &str = "whsec_DEMO_ONLY_replace_me_before_production";

/// What the daemon and `check-config` say of a configured [`DEMO_SECRET`], after its id.
pub const DEMO_SECRET_WARNING: &str = "is the demo secret of config.example.toml: it is \
     published, so anyone can sign deliveries with it; replace it with your kirim.dev secret";

impl SigningSecret {
    /// Builds a secret from its id (`sec_…`, or any label the operator chose) and its value
    /// (the whole `whsec_…` string as given by kirim.dev).
    ///
    /// Does not panic: HMAC accepts keys of any length, including empty.
    pub fn new(id: impl Into<String>, value: impl Into<String>) -> Self {
        let value: String = value.into();
        let mac = HmacSha256::new_from_slice(value.as_bytes())
            .expect("HMAC-SHA256 accepts keys of any length");
        Self {
            id: Arc::from(id.into()),
            mac,
            demo: value == DEMO_SECRET,
        }
    }

    /// Whether this is the published demo secret of `config.example.toml` ([`DEMO_SECRET`]).
    pub fn is_demo(&self) -> bool {
        self.demo
    }

    /// The secret's id, safe to log.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Signs `body` at `timestamp` with this secret, the way Kirim does, and returns a header
    /// value `"t=<timestamp>,v1=<lower-case hex>"`.
    ///
    /// Meant for tests and tooling. [`verify`] only accepts a non-negative `timestamp`
    /// (the grammar's `t` is `1*DIGIT`).
    #[must_use]
    pub fn sign(&self, timestamp: i64, body: &[u8]) -> String {
        let t = timestamp.to_string();
        let digest = self.digest(t.as_bytes(), body);
        format!("t={t},v1={}", hex::encode(digest))
    }

    /// HMAC-SHA256 over `t_raw || '.' || body` (spec 4.3).
    fn digest(&self, t_raw: &[u8], body: &[u8]) -> [u8; DIGEST_LEN] {
        let mut mac = self.mac.clone();
        mac.update(t_raw);
        mac.update(b".");
        mac.update(body);
        let mut out = [0u8; DIGEST_LEN];
        out.copy_from_slice(&mac.finalize().into_bytes());
        out
    }
}

impl fmt::Debug for SigningSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SigningSecret")
            .field("id", &self.id)
            .field("value", &"<redacted>")
            .finish()
    }
}

/// Proof that a delivery's signature verified. Only [`verify`] can build one.
#[derive(Debug, Clone)]
pub struct Verified {
    secret_id: Arc<str>,
    timestamp: i64,
}

impl Verified {
    /// Id of the first configured secret (in configuration order) that matched any `v1`.
    pub fn secret_id(&self) -> &str {
        &self.secret_id
    }

    /// The signed `t` from the header (Unix seconds).
    pub fn timestamp(&self) -> i64 {
        self.timestamp
    }
}

/// Why a delivery failed verification.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum VerifyError {
    /// Neither signature header was present.
    #[error("no signature header")]
    Missing,
    /// The header does not follow the grammar of spec 4.2.
    #[error("malformed signature header: {0}")]
    Malformed(&'static str),
    /// `t` is further from the current time than the tolerance allows.
    #[error("timestamp {timestamp} is {skew_secs}s away from now (tolerance {tolerance_secs}s)")]
    Expired {
        /// The `t` from the header.
        timestamp: i64,
        /// Absolute distance between `t` and the current time, in seconds.
        skew_secs: u64,
        /// The configured tolerance, in seconds.
        tolerance_secs: u64,
    },
    /// The header was well formed and fresh, but no configured secret produced any of its `v1`.
    #[error("no configured secret matches any v1 signature")]
    NoMatch,
}

impl VerifyError {
    /// The reason sent to the client in the 401 body and used as a metric label:
    /// `missing_signature`, `signature_expired`, or `invalid_signature` (malformed header or no
    /// matching secret).
    pub fn reason(&self) -> &'static str {
        match self {
            VerifyError::Missing => "missing_signature",
            VerifyError::Expired { .. } => "signature_expired",
            VerifyError::Malformed(_) | VerifyError::NoMatch => "invalid_signature",
        }
    }
}

/// A parsed header, borrowing from the raw value. `v1` values are re-read from `header` when
/// needed, so parsing allocates nothing.
struct ParsedHeader<'a> {
    header: &'a str,
    /// `t` exactly as it appears in the header: it is what was signed.
    t_raw: &'a str,
    t: i64,
}

impl<'a> ParsedHeader<'a> {
    /// Parses per spec 4.2: elements split on `,`, trimmed of spaces and tabs, each split at its
    /// first `=`. Elements without `=`, empty elements and unknown keys are ignored.
    fn parse(header: &'a [u8]) -> Result<Self, VerifyError> {
        if !header.is_ascii() {
            return Err(VerifyError::Malformed("not ASCII"));
        }
        let header =
            std::str::from_utf8(header).map_err(|_| VerifyError::Malformed("not ASCII"))?;
        if header.trim_matches(is_ows).is_empty() {
            return Err(VerifyError::Malformed("empty header"));
        }
        let mut t_raw = None;
        let mut has_v1 = false;
        for (key, value) in elements(header) {
            match key {
                "t" if t_raw.is_some() => return Err(VerifyError::Malformed("more than one t")),
                "t" => t_raw = Some(value),
                "v1" => has_v1 = true,
                _ => {}
            }
        }
        let t_raw = t_raw.ok_or(VerifyError::Malformed("no t element"))?;
        if !has_v1 {
            return Err(VerifyError::Malformed("no v1 element"));
        }
        let t = parse_unix_time(t_raw).ok_or(VerifyError::Malformed("t is not a unix time"))?;
        Ok(Self { header, t_raw, t })
    }

    /// Every `v1` value in header order, as raw text.
    fn v1s(&self) -> impl Iterator<Item = &'a str> {
        elements(self.header).filter_map(|(key, value)| (key == "v1").then_some(value))
    }
}

fn is_ows(c: char) -> bool {
    c == ' ' || c == '\t'
}

/// The `(key, value)` pairs of a header; elements without `=` are skipped.
fn elements(header: &str) -> impl Iterator<Item = (&str, &str)> {
    header
        .split(',')
        .filter_map(|element| element.trim_matches(is_ows).split_once('='))
}

/// `1*DIGIT` that fits an `i64`.
fn parse_unix_time(raw: &str) -> Option<i64> {
    if raw.is_empty() || !raw.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    raw.parse().ok()
}

/// Verifies one delivery per spec 4.4.
///
/// `header` is the raw value of `X-Kirim-Signature`, or of `X-Kirim-Signature-256` when the first
/// is absent (the caller picks), `None` when both are absent. `body` is the request body exactly
/// as received. `secrets` are tried in order; the first one that matches any `v1` is reported in
/// [`Verified::secret_id`]. `now_unix` is the current Unix time in seconds; `tolerance_secs == 0`
/// disables the freshness check, otherwise `|now - t| > tolerance_secs` is rejected.
///
/// Order: parse header, then freshness, then HMAC. Each secret's HMAC is computed once and
/// compared against every `v1` with a constant-time 32-byte comparison; a `v1` that is not 64
/// hex characters (either case) never matches but is not an error.
///
/// # Errors
///
/// [`VerifyError::Missing`] when `header` is `None`; [`VerifyError::Malformed`] when it breaks
/// the grammar (not ASCII, empty, no `t`, several `t`, `t` not `1*DIGIT` in `i64` range, no
/// `v1`); [`VerifyError::Expired`] when `t` is outside the tolerance; [`VerifyError::NoMatch`]
/// when no secret produced any `v1` (including when `secrets` is empty).
pub fn verify(
    header: Option<&[u8]>,
    body: &[u8],
    secrets: &[SigningSecret],
    now_unix: i64,
    tolerance_secs: u64,
) -> Result<Verified, VerifyError> {
    let header = header.ok_or(VerifyError::Missing)?;
    let parsed = ParsedHeader::parse(header)?;

    let skew_secs = now_unix.abs_diff(parsed.t);
    if tolerance_secs != 0 && skew_secs > tolerance_secs {
        return Err(VerifyError::Expired {
            timestamp: parsed.t,
            skew_secs,
            tolerance_secs,
        });
    }

    for secret in secrets {
        let expected = secret.digest(parsed.t_raw.as_bytes(), body);
        // Compare against every v1 without stopping early; stop after the first matching
        // secret, which reveals nothing the result does not.
        let mut matched = Choice::from(0u8);
        for v1 in parsed.v1s() {
            let mut received = [0u8; DIGEST_LEN];
            if hex::decode_to_slice(v1, &mut received).is_ok() {
                matched |= expected[..].ct_eq(&received[..]);
            }
        }
        if bool::from(matched) {
            return Ok(Verified {
                secret_id: Arc::clone(&secret.id),
                timestamp: parsed.t,
            });
        }
    }
    Err(VerifyError::NoMatch)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET_A: &str = "whsec_dGVzdC1vbmx5LWtpcmltLWZpeHR1cmUtc2VjcmV0";
    const SECRET_B: &str = "whsec_cm90YXRlZC10ZXN0LXNlY3JldC0yMDI2LTA2";

    fn a() -> SigningSecret {
        SigningSecret::new("sec_A", SECRET_A)
    }
    fn b() -> SigningSecret {
        SigningSecret::new("sec_B", SECRET_B)
    }

    /// A fixture from spec section 11: body bytes, signature header, signing time.
    struct Fixture {
        name: &'static str,
        body: &'static [u8],
        header: &'static str,
        t: i64,
        len: usize,
    }

    const FIXTURES: [Fixture; 9] = [
        Fixture {
            name: "F1",
            body: include_bytes!("../../tests/fixtures/f1.json"),
            header: "t=1781061307,v1=22768e52e3a90d9a49a061d23da4707a0eede8014eabad1c01af9d0d5a07528a",
            t: 1781061307,
            len: 534,
        },
        Fixture {
            name: "F2",
            body: include_bytes!("../../tests/fixtures/f2.json"),
            header: "t=1781061421,v1=9b9b220c1cfdb53af6681844713813c2ee226fdfa3df1d174ff137b132325791",
            t: 1781061421,
            len: 641,
        },
        Fixture {
            name: "F3",
            body: include_bytes!("../../tests/fixtures/f3.json"),
            header: "t=1781061650,v1=bc8d80fd719f6cd126a34c15fc87a7d393dd26e5371bbf687eb2e0b495bdf157",
            t: 1781061650,
            len: 561,
        },
        Fixture {
            name: "F4",
            body: include_bytes!("../../tests/fixtures/f4.json"),
            header: "t=1781062012,v1=e1875565441d03380b13dc2acc5168ee89e3f6887907f15db7f88b03956ecb80",
            t: 1781062012,
            len: 718,
        },
        Fixture {
            name: "F5",
            body: include_bytes!("../../tests/fixtures/f5.json"),
            header: "t=1781062200,v1=92d780ec71a032cbcd8e196ca56a9271ded792ba49c3a0a712447edcf9aea535",
            t: 1781062200,
            len: 331,
        },
        Fixture {
            name: "F6",
            body: include_bytes!("../../tests/fixtures/f6.json"),
            header: "t=1781065811,v1=70c0a52ca97d1ce46d749bc30178dc87a9f5ec8f288dc07c8810489f93163b56",
            t: 1781065811,
            len: 281,
        },
        Fixture {
            name: "F7",
            body: include_bytes!("../../tests/fixtures/f7.json"),
            header: "t=1781061308,v1=1a39e3bdc29f19b381ce6f179e990bc73006514ce9ebb4417cf87e3fc7597460",
            t: 1781061308,
            len: 407,
        },
        Fixture {
            name: "F8",
            body: include_bytes!("../../tests/fixtures/f8.json"),
            header: "t=1781066500,v1=323c504658ae1758ae58ccf52f2f1c4d2c4202e71c92dea62a2be25c836f8351,v1=d810daaf304194e3324077b5d1128866b9b99a7841c006d8860c5d5055db2757",
            t: 1781066500,
            len: 462,
        },
        Fixture {
            name: "F9",
            body: include_bytes!("../../tests/fixtures/f9.json"),
            header: "t=1781066900,v1=0c69f3a4af217edb85442e9098cf1ff58b71aa72a9753f442f1fd74c3344f400",
            t: 1781066900,
            len: 443,
        },
    ];

    fn f(n: usize) -> &'static Fixture {
        &FIXTURES[n - 1]
    }

    fn check(
        header: &str,
        body: &[u8],
        secrets: &[SigningSecret],
        now: i64,
    ) -> Result<Verified, VerifyError> {
        verify(Some(header.as_bytes()), body, secrets, now, 300)
    }

    #[test]
    fn fixture_bodies_have_the_spec_lengths() {
        for fx in &FIXTURES {
            assert_eq!(fx.body.len(), fx.len, "{}", fx.name);
            assert_ne!(
                fx.body.last(),
                Some(&b'\n'),
                "{} has a trailing newline",
                fx.name
            );
        }
    }

    #[test]
    fn known_answers_f1_to_f9_verify_with_secret_a() {
        for fx in &FIXTURES {
            let v = check(fx.header, fx.body, &[a()], fx.t)
                .unwrap_or_else(|e| panic!("{} failed: {e}", fx.name));
            assert_eq!(v.secret_id(), "sec_A", "{}", fx.name);
            assert_eq!(v.timestamp(), fx.t, "{}", fx.name);
        }
    }

    #[test]
    fn known_answers_are_rejected_with_secret_b_only_except_f8() {
        for fx in &FIXTURES {
            let result = check(fx.header, fx.body, &[b()], fx.t);
            if fx.name == "F8" {
                assert!(result.is_ok(), "F8 is signed by B too");
            } else {
                assert_eq!(result.map(|_| ()), Err(VerifyError::NoMatch), "{}", fx.name);
            }
        }
    }

    #[test]
    fn sign_reproduces_the_fixture_headers() {
        for fx in &FIXTURES {
            let signed = a().sign(fx.t, fx.body);
            if fx.name == "F8" {
                // F8's second v1 is secret A's.
                assert!(fx.header.ends_with(&signed["t=1781066500,".len()..]), "F8");
            } else {
                assert_eq!(signed, fx.header, "{}", fx.name);
            }
        }
        let f8 = f(8);
        let b_sig = b().sign(f8.t, f8.body);
        assert!(f8.header.starts_with(&b_sig), "F8 first v1 is B's");
    }

    #[test]
    fn manifest_matches_the_fixture_files_and_verifies() {
        let manifest: serde_json::Value =
            serde_json::from_str(include_str!("../../tests/fixtures/fixtures.json"))
                .expect("fixtures.json is JSON");
        let entries = manifest.as_array().expect("fixtures.json is an array");
        assert_eq!(entries.len(), 9);
        for (entry, fx) in entries.iter().zip(&FIXTURES) {
            let name = entry["name"].as_str().expect("name");
            assert_eq!(name, fx.name.to_ascii_lowercase());
            assert_eq!(
                entry["file"].as_str(),
                Some(format!("{name}.json").as_str())
            );
            assert_eq!(entry["t"].as_i64(), Some(fx.t));
            let headers = &entry["headers"];
            let header = headers["X-Kirim-Signature"]
                .as_str()
                .or_else(|| headers["X-Kirim-Signature-256"].as_str())
                .expect("a signature header");
            assert_eq!(header, fx.header, "{name}");
            let secrets: Vec<SigningSecret> = entry["secrets"]
                .as_array()
                .expect("secrets")
                .iter()
                .map(|s| match s.as_str() {
                    Some("A") => a(),
                    Some("B") => b(),
                    other => panic!("unknown secret {other:?}"),
                })
                .collect();
            // Each listed secret verifies on its own.
            for secret in &secrets {
                let v = check(header, fx.body, std::slice::from_ref(secret), fx.t)
                    .unwrap_or_else(|e| panic!("{name}: {e}"));
                assert_eq!(v.secret_id(), secret.id());
            }
        }
        // F9 is the only fixture using the alternative header spelling.
        assert!(entries[8]["headers"]["X-Kirim-Signature"].is_null());
        assert!(entries[8]["headers"]["X-Kirim-Signature-256"].is_string());
    }

    #[test]
    fn tampered_body_does_not_match() {
        for fx in &FIXTURES {
            for pos in [0, fx.body.len() / 2, fx.body.len() - 1] {
                let mut body = fx.body.to_vec();
                body[pos] ^= 0x01;
                assert_eq!(
                    check(fx.header, &body, &[a(), b()], fx.t).map(|_| ()),
                    Err(VerifyError::NoMatch),
                    "{} byte {pos}",
                    fx.name
                );
            }
        }
        // A trailing newline (a re-serialised body) breaks it too.
        let mut body = f(1).body.to_vec();
        body.push(b'\n');
        assert_eq!(
            check(f(1).header, &body, &[a()], f(1).t).map(|_| ()),
            Err(VerifyError::NoMatch)
        );
    }

    #[test]
    fn tampered_timestamp_does_not_match() {
        let fx = f(1);
        let header = fx.header.replace("t=1781061307", "t=1781061308");
        assert_eq!(
            check(&header, fx.body, &[a()], fx.t).map(|_| ()),
            Err(VerifyError::NoMatch)
        );
        // Leading zeros are a different signed string: t is signed as it appears.
        let header = fx.header.replace("t=1781061307", "t=01781061307");
        assert_eq!(
            check(&header, fx.body, &[a()], fx.t).map(|_| ()),
            Err(VerifyError::NoMatch)
        );
    }

    #[test]
    fn expired_and_future_timestamps_are_rejected() {
        let fx = f(1);
        assert_eq!(
            check(fx.header, fx.body, &[a()], fx.t + 301).map(|_| ()),
            Err(VerifyError::Expired {
                timestamp: fx.t,
                skew_secs: 301,
                tolerance_secs: 300
            })
        );
        assert_eq!(
            check(fx.header, fx.body, &[a()], fx.t - 301).map(|_| ()),
            Err(VerifyError::Expired {
                timestamp: fx.t,
                skew_secs: 301,
                tolerance_secs: 300
            })
        );
    }

    #[test]
    fn timestamps_exactly_at_the_edge_pass() {
        let fx = f(1);
        assert!(check(fx.header, fx.body, &[a()], fx.t + 300).is_ok());
        assert!(check(fx.header, fx.body, &[a()], fx.t - 300).is_ok());
    }

    #[test]
    fn freshness_is_checked_before_the_hmac() {
        // A stale header with a wrong signature reports the staleness.
        let fx = f(1);
        let err = check(fx.header, b"other body", &[a()], fx.t + 1000).map(|_| ());
        assert!(matches!(err, Err(VerifyError::Expired { .. })), "{err:?}");
    }

    #[test]
    fn tolerance_zero_accepts_any_timestamp() {
        let fx = f(1);
        for now in [0, fx.t - 10_000_000, fx.t + 40 * 86_400, i64::MAX, i64::MIN] {
            assert!(
                verify(Some(fx.header.as_bytes()), fx.body, &[a()], now, 0).is_ok(),
                "now={now}"
            );
        }
    }

    #[test]
    fn f8_verifies_with_a_only_b_only_both_and_not_neither() {
        let fx = f(8);
        let only_a = check(fx.header, fx.body, &[a()], fx.t).expect("A");
        assert_eq!(only_a.secret_id(), "sec_A");
        let only_b = check(fx.header, fx.body, &[b()], fx.t).expect("B");
        assert_eq!(only_b.secret_id(), "sec_B");
        assert!(check(fx.header, fx.body, &[a(), b()], fx.t).is_ok());
        let other = SigningSecret::new("sec_C", "whsec_c29tZXRoaW5nLWVsc2U");
        assert_eq!(
            check(fx.header, fx.body, &[other], fx.t).map(|_| ()),
            Err(VerifyError::NoMatch)
        );
        assert_eq!(
            check(fx.header, fx.body, &[], fx.t).map(|_| ()),
            Err(VerifyError::NoMatch)
        );
    }

    #[test]
    fn secret_id_is_the_first_matching_configured_secret() {
        let fx = f(8);
        let v = check(fx.header, fx.body, &[a(), b()], fx.t).expect("verifies");
        assert_eq!(v.secret_id(), "sec_A");
        let v = check(fx.header, fx.body, &[b(), a()], fx.t).expect("verifies");
        assert_eq!(v.secret_id(), "sec_B");
        // A non-matching secret first is skipped.
        let other = SigningSecret::new("sec_C", "whsec_c29tZXRoaW5nLWVsc2U");
        let v = check(f(5).header, f(5).body, &[other, b(), a()], f(5).t).expect("verifies");
        assert_eq!(v.secret_id(), "sec_A");
    }

    #[test]
    fn several_v1_where_only_the_second_matches() {
        let fx = f(5);
        let good = fx.header.split_once(",v1=").map(|(_, v)| v).expect("v1");
        let wrong = b().sign(fx.t, fx.body);
        let wrong = wrong.split_once(",v1=").map(|(_, v)| v).expect("v1");
        let header = format!("t={},v1={wrong},v1={good}", fx.t);
        let v = check(&header, fx.body, &[a()], fx.t).expect("second v1 matches");
        assert_eq!(v.secret_id(), "sec_A");
        // And with a malformed v1 first.
        let header = format!("t={},v1=zz,v1={good}", fx.t);
        assert!(check(&header, fx.body, &[a()], fx.t).is_ok());
    }

    #[test]
    fn missing_header() {
        assert_eq!(
            verify(None, b"{}", &[a()], 0, 300).map(|_| ()),
            Err(VerifyError::Missing)
        );
    }

    #[test]
    fn malformed_headers() {
        let body = f(1).body;
        let t = f(1).t;
        let v1 = "22768e52e3a90d9a49a061d23da4707a0eede8014eabad1c01af9d0d5a07528a";
        let cases: [(String, &str); 9] = [
            (String::new(), "empty header"),
            ("  \t ".to_string(), "empty header"),
            (format!("v1={v1}"), "no t element"),
            (format!("T={t},v1={v1}"), "no t element"),
            (format!("t={t}"), "no v1 element"),
            (format!("t={t},v2={v1}"), "no v1 element"),
            (format!("t={t},t={t},v1={v1}"), "more than one t"),
            (format!("t=abc,v1={v1}"), "t is not a unix time"),
            (format!("t=,v1={v1}"), "t is not a unix time"),
        ];
        for (header, why) in &cases {
            assert_eq!(
                check(header, body, &[a()], t).map(|_| ()),
                Err(VerifyError::Malformed(why)),
                "{header:?}"
            );
        }
        for header in [
            format!("t=-{t},v1={v1}"),
            format!("t=+{t},v1={v1}"),
            format!("t={t}.5,v1={v1}"),
            format!("t=99999999999999999999,v1={v1}"),
        ] {
            assert_eq!(
                check(&header, body, &[a()], t).map(|_| ()),
                Err(VerifyError::Malformed("t is not a unix time")),
                "{header:?}"
            );
        }
        let non_ascii = format!("t={t},v1={v1},x=é");
        assert_eq!(
            check(&non_ascii, body, &[a()], t).map(|_| ()),
            Err(VerifyError::Malformed("not ASCII"))
        );
        assert_eq!(
            verify(Some(b"t=1,v1=\xff"), body, &[a()], 1, 300).map(|_| ()),
            Err(VerifyError::Malformed("not ASCII"))
        );
    }

    #[test]
    fn v1_with_bad_hex_never_matches_and_is_not_malformed() {
        let fx = f(1);
        let good = "22768e52e3a90d9a49a061d23da4707a0eede8014eabad1c01af9d0d5a07528a";
        for bad in [
            "zz",
            "",
            &good[..63],
            &good[..62],
            "22768e52e3a90d9a49a061d23da4707a0eede8014eabad1c01af9d0d5a07528a00",
            "g2768e52e3a90d9a49a061d23da4707a0eede8014eabad1c01af9d0d5a07528a",
        ] {
            let header = format!("t={},v1={bad}", fx.t);
            assert_eq!(
                check(&header, fx.body, &[a()], fx.t).map(|_| ()),
                Err(VerifyError::NoMatch),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn uppercase_hex_is_accepted() {
        let fx = f(1);
        let header = fx
            .header
            .to_ascii_uppercase()
            .replacen("T=", "t=", 1)
            .replacen("V1=", "v1=", 1);
        assert!(header.contains("22768E52"));
        assert!(check(&header, fx.body, &[a()], fx.t).is_ok());
    }

    #[test]
    fn spaces_and_tabs_around_elements_are_accepted() {
        let fx = f(8);
        let header = fx.header.replace(',', " ,\t ");
        let header = format!(" \t{header}  ");
        assert!(check(&header, fx.body, &[a()], fx.t).is_ok());
        assert!(check(&header, fx.body, &[b()], fx.t).is_ok());
    }

    #[test]
    fn unknown_keys_and_odd_elements_are_ignored() {
        let fx = f(1);
        let (t, v1) = fx.header.split_once(',').expect("two elements");
        let header = format!("v2=abcdef,{t},foo=bar=baz,,novalue,{v1},v0=1");
        assert!(check(&header, fx.body, &[a()], fx.t).is_ok());
    }

    #[test]
    fn sign_round_trips_through_verify() {
        let body = br#"{"hello":"world"}"#;
        let secret = SigningSecret::new("sec_X", "whsec_anything-at-all");
        let header = secret.sign(1_700_000_000, body);
        assert!(header.starts_with("t=1700000000,v1="));
        assert_eq!(header.len(), "t=1700000000,v1=".len() + 64);
        let v = verify(Some(header.as_bytes()), body, &[secret], 1_700_000_100, 300).expect("ok");
        assert_eq!(v.secret_id(), "sec_X");
        assert_eq!(v.timestamp(), 1_700_000_000);
    }

    #[test]
    fn the_key_is_the_whole_secret_string() {
        // Stripping the prefix or base64-decoding would give a different key.
        let fx = f(1);
        let stripped = SigningSecret::new("sec_S", SECRET_A.trim_start_matches("whsec_"));
        assert_eq!(
            check(fx.header, fx.body, &[stripped], fx.t).map(|_| ()),
            Err(VerifyError::NoMatch)
        );
    }

    #[test]
    fn debug_does_not_show_the_secret_value() {
        let secret = a();
        let shown = format!("{secret:?} {:?}", vec![secret.clone(), b()]);
        assert!(!shown.contains(SECRET_A), "{shown}");
        assert!(!shown.contains("dGVzdC1vbmx5"), "{shown}");
        assert!(shown.contains("sec_A"), "{shown}");
        assert!(shown.contains("<redacted>"), "{shown}");
        assert_eq!(secret.id(), "sec_A");
    }

    #[test]
    fn reasons() {
        assert_eq!(VerifyError::Missing.reason(), "missing_signature");
        assert_eq!(
            VerifyError::Malformed("no t element").reason(),
            "invalid_signature"
        );
        assert_eq!(VerifyError::NoMatch.reason(), "invalid_signature");
        let expired = VerifyError::Expired {
            timestamp: 1,
            skew_secs: 400,
            tolerance_secs: 300,
        };
        assert_eq!(expired.reason(), "signature_expired");
        assert_eq!(
            expired.to_string(),
            "timestamp 1 is 400s away from now (tolerance 300s)"
        );
    }
}
