//! `kirimhook accounts`: list the organisation's connected lines from kirim.dev's
//! `GET /v1/accounts`, so that a user can copy the `phone_number_id`s the events carry.
//!
//! The API key is read from an environment variable (never from an argument, which `ps` would
//! show) and goes only into the `Authorization` header, marked sensitive; it is never printed.
//! Pages are followed through `has_more`/`next_cursor`, at most [`MAX_PAGES`] of them, each
//! request bounded by [`REQUEST_TIMEOUT`] and each answer by [`MAX_BODY_BYTES`]. Parsing is
//! lenient: unknown fields are ignored and missing ones are shown as `-`.
//!
//! This module talks to kirim.dev's REST API only; it knows nothing of the daemon, its store or
//! its configuration. `main` prints what [`to_table`] or [`to_json`] render.

use std::error::Error as _;
use std::fmt;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper::header::{HeaderValue, ACCEPT, AUTHORIZATION, LOCATION, USER_AGENT};
use hyper::{Request, StatusCode, Uri};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde::{Deserialize, Deserializer, Serialize};

use crate::cli::AccountsArgs;

/// How long one request (connect, TLS, headers and body) may take.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);
/// The largest answer read; a larger one is an error.
pub const MAX_BODY_BYTES: usize = 4 * 1024 * 1024;
/// How many pages are followed before giving up (a cursor going round in circles).
pub const MAX_PAGES: usize = 100;
/// Longest kirim.dev error message repeated to the user.
const MAX_DETAIL_CHARS: usize = 300;

const USER_AGENT_VALUE: &str = concat!("kirimhook/", env!("CARGO_PKG_VERSION"));

/// One connected line, as `GET /v1/accounts` describes it. Every field is optional: what
/// kirim.dev leaves out (or sends as something other than a string or number) is `None`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
pub struct Account {
    /// kirim.dev's own id of the account row (`wba_...`).
    #[serde(default, deserialize_with = "lenient_string")]
    pub id: Option<String>,
    /// Meta's digit-only id of the line: what events carry and what line-scoped endpoints take.
    #[serde(default, deserialize_with = "lenient_string")]
    pub phone_number_id: Option<String>,
    /// The number as shown to people, e.g. `+62 811 1222 333`.
    #[serde(default, deserialize_with = "lenient_string")]
    pub display_phone_number: Option<String>,
    /// The business name Meta verified.
    #[serde(default, deserialize_with = "lenient_string")]
    pub verified_name: Option<String>,
    /// Meta's quality rating (`GREEN`, `YELLOW`, `RED`, ...).
    #[serde(default, deserialize_with = "lenient_string")]
    pub quality_rating: Option<String>,
    /// kirim.dev's status of the line (`approved`, ...).
    #[serde(default, deserialize_with = "lenient_string")]
    pub status: Option<String>,
}

/// One page of the paginated list object.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct Page {
    /// The accounts on this page.
    pub data: Vec<Account>,
    /// Whether another page follows.
    #[serde(default, deserialize_with = "lenient_bool")]
    pub has_more: bool,
    /// The cursor of the next page, when `has_more`.
    #[serde(default, deserialize_with = "lenient_string")]
    pub next_cursor: Option<String>,
}

/// Why listing the accounts failed. Messages never contain the API key.
#[derive(Debug, thiserror::Error)]
pub enum AccountsError {
    /// The environment variable holding the key is unset, empty or not Unicode.
    #[error(
        "environment variable {var} is not set or empty: put your kirim.dev API key in it \
         (or name another variable with --api-key-env)"
    )]
    MissingKey {
        /// The variable's name.
        var: String,
    },
    /// The key cannot be sent in an HTTP header (a newline or other control character).
    #[error("the API key in {var} contains characters that cannot go in an HTTP header")]
    MalformedKey {
        /// The variable's name.
        var: String,
    },
    /// `--api-base` is not an http(s) base URL.
    #[error("--api-base {base}: {reason}")]
    InvalidBase {
        /// The value given.
        base: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// Connecting failed: DNS, refused or reset connection, TLS.
    #[error("cannot reach {base}: {cause}")]
    Unreachable {
        /// The API base.
        base: String,
        /// The underlying error chain, rendered.
        cause: String,
    },
    /// No complete answer within the request timeout ([`REQUEST_TIMEOUT`]).
    #[error("no answer from {base} within {after:?}")]
    Timeout {
        /// The API base.
        base: String,
        /// The timeout.
        after: Duration,
    },
    /// The answer's body could not be read to its end.
    #[error("reading the answer from {base} failed: {cause}")]
    BodyRead {
        /// The API base.
        base: String,
        /// The underlying error chain, rendered.
        cause: String,
    },
    /// The answer is larger than [`MAX_BODY_BYTES`].
    #[error("the answer from {base} is larger than {} MiB", MAX_BODY_BYTES / (1024 * 1024))]
    BodyTooLarge {
        /// The API base.
        base: String,
    },
    /// kirim.dev answered 401.
    #[error("kirim.dev rejected the API key (401): check {var}")]
    Unauthorized {
        /// The variable the key was read from.
        var: String,
    },
    /// kirim.dev answered with another status outside 2xx.
    #[error("kirim.dev answered {status}{detail}")]
    Status {
        /// The status.
        status: StatusCode,
        /// kirim.dev's error message and hints, starting with `: `, or empty.
        detail: String,
    },
    /// A 2xx answer that is not a JSON account list.
    #[error("kirim.dev answered {status} but not with a JSON account list: {cause}")]
    InvalidJson {
        /// The status.
        status: StatusCode,
        /// What the parser said.
        cause: String,
    },
    /// `has_more` was true without a `next_cursor` to follow.
    #[error("kirim.dev said has_more but gave no next_cursor; the list is incomplete")]
    MissingCursor,
    /// More than [`MAX_PAGES`] pages.
    #[error(
        "more than {MAX_PAGES} pages of accounts; stopped (is the cursor going round in circles?)"
    )]
    TooManyPages,
}

/// The API key, read from the environment. Its `Debug` is redacted.
pub struct ApiKey {
    var: String,
    header: HeaderValue,
}

impl fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ApiKey")
            .field("var", &self.var)
            .field("value", &"<redacted>")
            .finish()
    }
}

impl ApiKey {
    /// Reads the key from the environment variable `var` (surrounding whitespace trimmed).
    pub fn from_env(var: &str) -> Result<ApiKey, AccountsError> {
        let value = std::env::var(var).unwrap_or_default();
        ApiKey::new(var, &value)
    }

    /// A key with `value`, said to come from `var`.
    pub fn new(var: &str, value: &str) -> Result<ApiKey, AccountsError> {
        let value = value.trim();
        if value.is_empty() {
            return Err(AccountsError::MissingKey {
                var: var.to_owned(),
            });
        }
        let mut header = HeaderValue::from_str(&format!("Bearer {value}")).map_err(|_| {
            AccountsError::MalformedKey {
                var: var.to_owned(),
            }
        })?;
        header.set_sensitive(true);
        Ok(ApiKey {
            var: var.to_owned(),
            header,
        })
    }
}

/// A validated `--api-base`: `http(s)://host[:port][/prefix]`, without a trailing slash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiBase(String);

impl ApiBase {
    /// Validates `base`.
    pub fn parse(base: &str) -> Result<ApiBase, AccountsError> {
        let invalid = |reason| AccountsError::InvalidBase {
            base: base.to_owned(),
            reason,
        };
        let trimmed = crate::ops::client::base_url(base, |scheme| match scheme {
            Some("https" | "http") => Ok(()),
            _ => Err("must start with https:// (or http://)"),
        })
        .map_err(invalid)?;
        Ok(ApiBase(trimmed))
    }

    /// The URL of the accounts page at `cursor` (the first page when `None`).
    pub fn accounts_uri(&self, cursor: Option<&str>) -> Result<Uri, AccountsError> {
        let mut url = format!("{}/v1/accounts", self.0);
        if let Some(cursor) = cursor {
            url.push_str("?cursor=");
            url.push_str(&encode_query_value(cursor));
        }
        url.parse().map_err(|_| AccountsError::InvalidBase {
            base: self.0.clone(),
            reason: "not a URL once /v1/accounts is added",
        })
    }
}

impl fmt::Display for ApiBase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A client of kirim.dev's REST API for one key and base.
pub struct Api {
    client: Client<HttpsConnector<HttpConnector>, Empty<Bytes>>,
    base: ApiBase,
    key: ApiKey,
    timeout: Duration,
}

impl Api {
    /// A client over HTTPS (webpki roots) or plain HTTP, HTTP/1.1.
    pub fn new(base: ApiBase, key: ApiKey) -> Api {
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_webpki_roots()
            .https_or_http()
            .enable_http1()
            .build();
        Api {
            client: Client::builder(TokioExecutor::new()).build(connector),
            base,
            key,
            timeout: REQUEST_TIMEOUT,
        }
    }

    /// The same client with another per-request timeout.
    pub fn with_timeout(self, timeout: Duration) -> Api {
        Api { timeout, ..self }
    }

    /// Every connected line, following the cursor through at most [`MAX_PAGES`] pages.
    pub async fn list_accounts(&self) -> Result<Vec<Account>, AccountsError> {
        let mut accounts = Vec::new();
        let mut cursor: Option<String> = None;
        for _ in 0..MAX_PAGES {
            let page = self.fetch_page(cursor.as_deref()).await?;
            accounts.extend(page.data);
            if !page.has_more {
                return Ok(accounts);
            }
            cursor = Some(
                page.next_cursor
                    .filter(|c| !c.is_empty())
                    .ok_or(AccountsError::MissingCursor)?,
            );
        }
        Err(AccountsError::TooManyPages)
    }

    /// One page: the request, bounded in time and size, and its answer classified.
    async fn fetch_page(&self, cursor: Option<&str>) -> Result<Page, AccountsError> {
        let request = Request::get(self.base.accounts_uri(cursor)?)
            .header(AUTHORIZATION, self.key.header.clone())
            .header(ACCEPT, "application/json")
            .header(USER_AGENT, USER_AGENT_VALUE)
            .body(Empty::new())
            .map_err(|_| AccountsError::InvalidBase {
                base: self.base.to_string(),
                reason: "not a valid request URL",
            })?;
        let exchange = async {
            // Connect errors (DNS, refused, TLS) and a connection closed before the answer.
            let response =
                self.client
                    .request(request)
                    .await
                    .map_err(|e| AccountsError::Unreachable {
                        base: self.base.to_string(),
                        // Skip hyper-util's own "client error (Connect)".
                        cause: e.source().map_or_else(|| e.to_string(), error_chain),
                    })?;
            let status = response.status();
            let location = response.headers().get(LOCATION).cloned();
            let body = Limited::new(response.into_body(), MAX_BODY_BYTES)
                .collect()
                .await
                .map_err(|e| {
                    if e.is::<http_body_util::LengthLimitError>() {
                        AccountsError::BodyTooLarge {
                            base: self.base.to_string(),
                        }
                    } else {
                        AccountsError::BodyRead {
                            base: self.base.to_string(),
                            cause: error_chain(e.as_ref()),
                        }
                    }
                })?
                .to_bytes();
            Ok((status, location, body))
        };
        let (status, location, body) = tokio::time::timeout(self.timeout, exchange)
            .await
            .map_err(|_| AccountsError::Timeout {
                base: self.base.to_string(),
                after: self.timeout,
            })??;
        classify(status, location.as_ref(), &body, &self.key.var)
    }
}

/// Runs `kirimhook accounts`: every connected line of the organisation whose key is in
/// `--api-key-env`.
pub async fn list(args: &AccountsArgs) -> Result<Vec<Account>, AccountsError> {
    let key = ApiKey::from_env(&args.api_key_env)?;
    let base = ApiBase::parse(&args.api_base)?;
    Api::new(base, key).list_accounts().await
}

/// Turns one answer into a page or the error the user should see. `key_var` names the
/// environment variable the key came from.
pub fn classify(
    status: StatusCode,
    location: Option<&HeaderValue>,
    body: &[u8],
    key_var: &str,
) -> Result<Page, AccountsError> {
    if status == StatusCode::UNAUTHORIZED {
        return Err(AccountsError::Unauthorized {
            var: key_var.to_owned(),
        });
    }
    if !status.is_success() {
        let mut detail = error_message(body)
            .map(|m| format!(": {m}"))
            .unwrap_or_default();
        if status.is_redirection() {
            let to = location
                .and_then(|l| l.to_str().ok())
                .map(|l| format!(" to {}", printable(l)))
                .unwrap_or_default();
            detail.push_str(&format!(
                " (a redirect{to}, not followed: check --api-base)"
            ));
        } else if status == StatusCode::NOT_FOUND {
            detail.push_str(" (check --api-base)");
        }
        return Err(AccountsError::Status { status, detail });
    }
    parse_page(body).map_err(|e| AccountsError::InvalidJson {
        status,
        cause: e.to_string(),
    })
}

/// Parses a `GET /v1/accounts` answer, leniently.
pub fn parse_page(body: &[u8]) -> Result<Page, serde_json::Error> {
    serde_json::from_slice(body)
}

/// kirim.dev's error message from an error body (`{"error":{"code","message"}}`, or
/// `{"error":"..."}`, or `{"message":"..."}`), made printable and short.
pub fn error_message(body: &[u8]) -> Option<String> {
    let json: serde_json::Value = serde_json::from_slice(body).ok()?;
    fn text(value: Option<&serde_json::Value>) -> Option<&str> {
        value
            .and_then(|v| v.as_str())
            .map(str::trim)
            .filter(|s| !s.is_empty())
    }
    let message = match json.get("error") {
        Some(serde_json::Value::Object(error)) => {
            match (text(error.get("code")), text(error.get("message"))) {
                (Some(code), Some(message)) => format!("{message} ({code})"),
                (None, Some(message)) => message.to_owned(),
                (Some(code), None) => code.to_owned(),
                (None, None) => return None,
            }
        }
        Some(other) => text(Some(other))?.to_owned(),
        None => text(json.get("message"))?.to_owned(),
    };
    let mut message = printable(&message);
    if message.chars().count() > MAX_DETAIL_CHARS {
        message = message.chars().take(MAX_DETAIL_CHARS).collect();
        message.push('…');
    }
    Some(message)
}

/// The accounts as an aligned table with a header line, or one line saying there are none.
pub fn to_table(accounts: &[Account]) -> String {
    if accounts.is_empty() {
        return "no connected lines: this organisation has no WhatsApp numbers connected\n".into();
    }
    let header = [
        "PHONE_NUMBER_ID",
        "DISPLAY_NUMBER",
        "VERIFIED_NAME",
        "QUALITY",
        "STATUS",
    ];
    let cell = |value: &Option<String>| match value.as_deref().map(str::trim) {
        Some(value) if !value.is_empty() => printable(value),
        _ => "-".to_owned(),
    };
    let mut rows = vec![header.map(str::to_owned)];
    rows.extend(accounts.iter().map(|a| {
        [
            cell(&a.phone_number_id),
            cell(&a.display_phone_number),
            cell(&a.verified_name),
            cell(&a.quality_rating),
            cell(&a.status),
        ]
    }));
    let mut widths = [0; 5];
    for row in &rows {
        for (width, value) in widths.iter_mut().zip(row) {
            *width = (*width).max(value.chars().count());
        }
    }
    let mut out = String::new();
    for row in &rows {
        let mut line = String::new();
        for (i, (value, width)) in row.iter().zip(widths).enumerate() {
            if i > 0 {
                line.push_str("  ");
            }
            line.push_str(value);
            line.extend(std::iter::repeat_n(' ', width - value.chars().count()));
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// The accounts as one JSON array (absent fields as `null`), with a final newline.
pub fn to_json(accounts: &[Account]) -> String {
    let mut out = serde_json::to_string_pretty(accounts)
        .expect("a list of structs of optional strings always serialises");
    out.push('\n');
    out
}

/// `value` with control characters (terminal escapes, newlines) replaced, since it came from
/// the network and goes to a terminal.
pub(crate) fn printable(value: &str) -> String {
    value
        .chars()
        .map(|c| {
            if c.is_control() {
                char::REPLACEMENT_CHARACTER
            } else {
                c
            }
        })
        .collect()
}

/// Percent-encodes everything but RFC 3986 unreserved characters.
pub(crate) fn encode_query_value(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for byte in value.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// An error and its sources, `outer: inner: ...`, without repeating a message its source
/// already carries.
pub(crate) fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = vec![error.to_string()];
    let mut source = error.source();
    while let Some(e) = source {
        let text = e.to_string();
        if parts.last().is_none_or(|last| !last.ends_with(&text)) {
            parts.push(text);
        }
        source = e.source();
    }
    parts.join(": ")
}

/// A string, or a number as its decimal text; anything else (null, bool, object) is `None`.
fn lenient_string<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    Ok(match serde_json::Value::deserialize(d)? {
        serde_json::Value::String(s) => Some(s),
        serde_json::Value::Number(n) => Some(n.to_string()),
        _ => None,
    })
}

/// A boolean; `null` or anything else is `false`.
fn lenient_bool<'de, D: Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    Ok(matches!(
        serde_json::Value::deserialize(d)?,
        serde_json::Value::Bool(true)
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SPEC_PAGE: &str = r#"{
      "data": [
        {
          "id": "wba_01J8Z3M6Q9T2V5X7Y0B4C6D8E1",
          "phone_number_id": "106540352242922",
          "display_phone_number": "+62 811 1222 333",
          "verified_name": "Acme Inc",
          "quality_rating": "GREEN",
          "status": "approved"
        }
      ],
      "has_more": false,
      "next_cursor": null
    }"#;

    fn acme() -> Account {
        Account {
            id: Some("wba_01J8Z3M6Q9T2V5X7Y0B4C6D8E1".into()),
            phone_number_id: Some("106540352242922".into()),
            display_phone_number: Some("+62 811 1222 333".into()),
            verified_name: Some("Acme Inc".into()),
            quality_rating: Some("GREEN".into()),
            status: Some("approved".into()),
        }
    }

    #[test]
    fn parses_the_spec_example() {
        let page = parse_page(SPEC_PAGE.as_bytes()).unwrap();
        assert_eq!(
            page,
            Page {
                data: vec![acme()],
                has_more: false,
                next_cursor: None,
            }
        );
    }

    #[test]
    fn parsing_ignores_unknown_fields_and_tolerates_missing_or_odd_ones() {
        let body = br#"{"object":"list","data":[
            {"phone_number_id":106540352242922,"verified_name":null,"extra":{"a":1},"status":true},
            {}
          ],"has_more":true,"next_cursor":"c2","url":"/v1/accounts"}"#;
        let page = parse_page(body).unwrap();
        assert!(page.has_more);
        assert_eq!(page.next_cursor.as_deref(), Some("c2"));
        assert_eq!(
            page.data,
            vec![
                Account {
                    phone_number_id: Some("106540352242922".into()),
                    ..Account::default()
                },
                Account::default(),
            ]
        );
        // has_more and next_cursor may be absent or null.
        let page = parse_page(br#"{"data":[],"has_more":null}"#).unwrap();
        assert_eq!(page, Page::default());
    }

    #[test]
    fn parsing_rejects_what_is_not_an_account_list() {
        assert!(parse_page(b"<html>hello</html>").is_err());
        assert!(parse_page(br#"{"has_more":false}"#).is_err());
        assert!(parse_page(br#"{"data":{}}"#).is_err());
    }

    #[test]
    fn table_is_aligned_with_a_header_and_dashes_for_missing_fields() {
        let other = Account {
            phone_number_id: Some("109283746501928".into()),
            display_phone_number: Some("6281511223344".into()),
            verified_name: Some("Toko Siti Jaya Abadi".into()),
            quality_rating: None,
            status: Some("".into()),
            ..Account::default()
        };
        let table = to_table(&[acme(), other]);
        let expected = "\
PHONE_NUMBER_ID  DISPLAY_NUMBER    VERIFIED_NAME         QUALITY  STATUS
106540352242922  +62 811 1222 333  Acme Inc              GREEN    approved
109283746501928  6281511223344     Toko Siti Jaya Abadi  -        -
";
        assert_eq!(table, expected);
    }

    #[test]
    fn table_counts_characters_not_bytes_and_neutralises_control_characters() {
        let accounts = [
            Account {
                phone_number_id: Some("1".into()),
                verified_name: Some("Kafé Ñandú Ümlaut".into()),
                quality_rating: Some("GREEN".into()),
                ..Account::default()
            },
            Account {
                phone_number_id: Some("2".into()),
                verified_name: Some("Evil\u{1b}[31m\nName".into()),
                quality_rating: Some("RED".into()),
                ..Account::default()
            },
        ];
        let table = to_table(&accounts);
        assert!(!table.contains('\u{1b}'), "{table:?}");
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 3, "{table:?}");
        assert_eq!(
            lines[2],
            "2                -               Evil\u{fffd}[31m\u{fffd}Name     RED      -"
        );
        // QUALITY starts at the same character column on every line.
        let quality_column =
            |line: &str, word: &str| line[..line.find(word).unwrap()].chars().count();
        assert_eq!(
            quality_column(lines[0], "QUALITY"),
            quality_column(lines[1], "GREEN")
        );
        assert_eq!(
            quality_column(lines[0], "QUALITY"),
            quality_column(lines[2], "RED")
        );
    }

    #[test]
    fn empty_list_says_so() {
        assert!(to_table(&[]).starts_with("no connected lines"));
        assert_eq!(to_json(&[]), "[]\n");
    }

    #[test]
    fn json_is_one_array_with_every_field() {
        let missing = Account {
            phone_number_id: Some("2".into()),
            ..Account::default()
        };
        let json: serde_json::Value = serde_json::from_str(&to_json(&[acme(), missing])).unwrap();
        assert_eq!(
            json,
            serde_json::json!([
                {
                    "id": "wba_01J8Z3M6Q9T2V5X7Y0B4C6D8E1",
                    "phone_number_id": "106540352242922",
                    "display_phone_number": "+62 811 1222 333",
                    "verified_name": "Acme Inc",
                    "quality_rating": "GREEN",
                    "status": "approved"
                },
                {
                    "id": null,
                    "phone_number_id": "2",
                    "display_phone_number": null,
                    "verified_name": null,
                    "quality_rating": null,
                    "status": null
                }
            ])
        );
    }

    #[test]
    fn classify_names_the_key_variable_on_401_and_kirims_message_otherwise() {
        let body = br#"{"error":{"code":"unauthorized","message":"Invalid API key"}}"#;
        let err = classify(StatusCode::UNAUTHORIZED, None, body, "MY_KEY").unwrap_err();
        assert_eq!(
            err.to_string(),
            "kirim.dev rejected the API key (401): check MY_KEY"
        );

        let body = br#"{"error":{"code":"forbidden","message":"Key lacks accounts:read"}}"#;
        let err = classify(StatusCode::FORBIDDEN, None, body, "K").unwrap_err();
        assert_eq!(
            err.to_string(),
            "kirim.dev answered 403 Forbidden: Key lacks accounts:read (forbidden)"
        );

        let err = classify(StatusCode::NOT_FOUND, None, b"<html>", "K").unwrap_err();
        assert_eq!(
            err.to_string(),
            "kirim.dev answered 404 Not Found (check --api-base)"
        );

        let location = HeaderValue::from_static("https://api.kirim.chat/v1/accounts");
        let err = classify(StatusCode::MOVED_PERMANENTLY, Some(&location), b"", "K").unwrap_err();
        assert!(
            err.to_string()
                .contains("to https://api.kirim.chat/v1/accounts, not followed"),
            "{err}"
        );

        let err = classify(StatusCode::OK, None, b"not json", "K").unwrap_err();
        assert!(
            err.to_string()
                .starts_with("kirim.dev answered 200 OK but not with a JSON account list"),
            "{err}"
        );

        let page = classify(StatusCode::OK, None, SPEC_PAGE.as_bytes(), "K").unwrap();
        assert_eq!(page.data, vec![acme()]);
    }

    #[test]
    fn error_messages_are_read_leniently() {
        assert_eq!(
            error_message(br#"{"error":{"message":"  boom "}}"#).as_deref(),
            Some("boom")
        );
        assert_eq!(
            error_message(br#"{"error":{"code":"rate_limited"}}"#).as_deref(),
            Some("rate_limited")
        );
        assert_eq!(
            error_message(br#"{"error":"nope"}"#).as_deref(),
            Some("nope")
        );
        assert_eq!(error_message(br#"{"message":"hm"}"#).as_deref(), Some("hm"));
        assert_eq!(error_message(br#"{"error":{}}"#), None);
        assert_eq!(error_message(b"Bad Gateway"), None);
        let long = format!(r#"{{"error":{{"message":"{}\n"}}}}"#, "x".repeat(1000));
        let message = error_message(long.as_bytes()).unwrap();
        assert_eq!(message.chars().count(), MAX_DETAIL_CHARS + 1);
    }

    #[test]
    fn api_base_accepts_http_and_https_and_builds_the_accounts_url() {
        let base = ApiBase::parse("https://api.kirim.chat/").unwrap();
        assert_eq!(
            base.accounts_uri(None).unwrap().to_string(),
            "https://api.kirim.chat/v1/accounts"
        );
        let base = ApiBase::parse("http://127.0.0.1:8081/kirim").unwrap();
        assert_eq!(
            base.accounts_uri(Some("c2/+ =&")).unwrap().to_string(),
            "http://127.0.0.1:8081/kirim/v1/accounts?cursor=c2%2F%2B%20%3D%26"
        );
        for bad in [
            "api.kirim.chat",
            "ftp://api.kirim.chat",
            "https://api.kirim.chat/?x=1",
            "https://",
            "",
        ] {
            assert!(
                matches!(ApiBase::parse(bad), Err(AccountsError::InvalidBase { .. })),
                "{bad:?} should be refused"
            );
        }
    }

    #[test]
    fn api_key_is_required_redacted_and_header_safe() {
        for empty in ["", "  "] {
            let err = ApiKey::new("KIRIM_API_KEY", empty).unwrap_err();
            assert!(err.to_string().contains("KIRIM_API_KEY"), "{err}");
        }
        let err = ApiKey::new("K", "kdv_live_a\nb").unwrap_err();
        assert!(matches!(err, AccountsError::MalformedKey { .. }));
        assert!(!err.to_string().contains("kdv_live"), "{err}");

        let key = ApiKey::new("K", " kdv_live_secret\n").unwrap();
        assert!(!format!("{key:?}").contains("kdv_live_secret"));
        assert!(key.header.is_sensitive());
        assert_eq!(key.header.to_str().unwrap(), "Bearer kdv_live_secret");
    }

    #[tokio::test]
    async fn a_silent_server_times_out() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = ApiBase::parse(&format!("http://{}", listener.local_addr().unwrap())).unwrap();
        // Accept and hold the connection without ever answering.
        let silent = tokio::spawn(async move {
            let (stream, _) = listener.accept().await.unwrap();
            std::future::pending::<()>().await;
            drop(stream);
        });
        let api = Api::new(base, ApiKey::new("K", "kdv_test").unwrap())
            .with_timeout(Duration::from_millis(200));
        let err = api.list_accounts().await.unwrap_err();
        assert!(matches!(err, AccountsError::Timeout { .. }), "{err}");
        assert!(
            err.to_string()
                .starts_with("no answer from http://127.0.0.1:"),
            "{err}"
        );
        assert_eq!(
            AccountsError::Timeout {
                base: "B".into(),
                after: REQUEST_TIMEOUT
            }
            .to_string(),
            "no answer from B within 15s"
        );
        silent.abort();
    }

    #[tokio::test]
    async fn an_oversized_answer_is_refused() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = ApiBase::parse(&format!("http://{}", listener.local_addr().unwrap())).unwrap();
        let server = tokio::spawn(async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let (mut stream, _) = listener.accept().await.unwrap();
            let mut request = [0u8; 4096];
            let _ = stream.read(&mut request).await;
            let len = MAX_BODY_BYTES + 1;
            let head = format!("HTTP/1.1 200 OK\r\ncontent-length: {len}\r\n\r\n");
            let _ = stream.write_all(head.as_bytes()).await;
            let _ = stream.write_all(&vec![b' '; len]).await;
        });
        let api = Api::new(base, ApiKey::new("K", "kdv_test").unwrap());
        let err = api.list_accounts().await.unwrap_err();
        assert!(matches!(err, AccountsError::BodyTooLarge { .. }), "{err}");
        assert!(err.to_string().ends_with("is larger than 4 MiB"), "{err}");
        server.abort();
    }
}
