//! The operator commands `kirimhook status`, `dead-letters`, `quarantine` and `replay`: a small
//! HTTP client of a running daemon's admin listener ([`crate::admin`]), and the tables it
//! prints.
//!
//! Every command is one or two requests to `--admin URL` (default
//! [`crate::cli::DEFAULT_ADMIN_URL`]), bounded by [`REQUEST_TIMEOUT`] and [`MAX_ANSWER_BYTES`].
//! With `--json` the admin API's JSON answer is printed as it came (a body embedded byte for
//! byte); otherwise an aligned table or a short report. Text that came from the network has its
//! control characters replaced before it reaches the terminal. The answer types are
//! [`crate::admin`]'s, so client and server agree.
//!
//! This module knows nothing of the store, and of the config only where the admin listener is
//! (`--config`, through [`AdminConfig::read`]): otherwise only the admin API.

use std::error::Error as _;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::header::{ACCEPT, CONTENT_TYPE, USER_AGENT};
use hyper::{Method, Request, StatusCode, Uri};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::admin::{
    self, BodyFormat, Changed, DeadLetterDetail, DeadLetterPage, ErrorBody, EventDetail,
    QuarantinePage, ReplayRequest, Selection, StatusReport,
};
use crate::cli::{
    AdminArgs, AdminCommand, AdminTarget, DeadLettersCommand, QuarantineCommand, Selected,
};
use crate::config::AdminConfig;
use crate::ops::accounts::{encode_query_value, error_chain, printable};
use crate::units::human_bytes;

/// How long one request may take (a status of a long queue counts it).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// The largest answer read.
pub const MAX_ANSWER_BYTES: usize = 64 * 1024 * 1024;
/// The largest refusal read from a streamed request.
const MAX_ERROR_BYTES: usize = 64 * 1024;

const USER_AGENT_VALUE: &str = concat!("kirimhook/", env!("CARGO_PKG_VERSION"));

/// Why an operator command failed.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// `--admin` is not an `http://host:port` URL.
    #[error("--admin {url}: {reason}")]
    InvalidUrl {
        /// The value given.
        url: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A command-line value the API would refuse anyway.
    #[error("{0}")]
    InvalidArgument(String),
    /// Nothing answers at the URL.
    #[error(
        "cannot reach the admin listener at {url}: {cause}. Is `kirimhook serve` running, with \
         [admin] enabled (the default) and listening there? Give its `[admin] listen` address \
         with --admin http://HOST:PORT"
    )]
    Unreachable {
        /// The admin URL.
        url: String,
        /// The underlying error chain, rendered.
        cause: String,
    },
    /// No complete answer in time.
    #[error("no answer from the admin listener at {url} within {after:?}")]
    Timeout {
        /// The admin URL.
        url: String,
        /// The timeout.
        after: Duration,
    },
    /// The answer could not be read to its end.
    #[error("reading the answer from {url} failed: {cause}")]
    BodyRead {
        /// The admin URL.
        url: String,
        /// What happened.
        cause: String,
    },
    /// The admin API refused the request: unknown sink, no such ID, bad request, store down.
    #[error("{message} ({status})")]
    Api {
        /// The status.
        status: StatusCode,
        /// The API's error code (`unknown_sink`, `not_found`, ...).
        code: String,
        /// The API's message.
        message: String,
    },
    /// `--config` could not tell where the admin listener is.
    #[error("--config {path}: {reason}")]
    Config {
        /// The file given.
        path: String,
        /// What is wrong.
        reason: String,
    },
    /// Something answered, but not kirimhook's admin API.
    #[error(
        "{url} answered {status} but not with the admin API's JSON ({cause}); is --admin the \
         daemon's [admin] listen address (not its webhook port)?"
    )]
    InvalidAnswer {
        /// The admin URL.
        url: String,
        /// The status.
        status: StatusCode,
        /// What the parser said.
        cause: String,
    },
}

/// A validated `--admin` URL: `http://host[:port][/prefix]`, no trailing slash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminUrl(String);

impl AdminUrl {
    /// Validates `url`.
    pub fn parse(url: &str) -> Result<AdminUrl, AdminError> {
        let invalid = |reason| AdminError::InvalidUrl {
            url: url.to_owned(),
            reason,
        };
        let trimmed = crate::ops::client::base_url(url, |scheme| match scheme {
            Some("http") => Ok(()),
            Some("https") => Err("the admin listener speaks plain http:// (keep it on loopback)"),
            _ => Err("must start with http://, e.g. http://127.0.0.1:9090"),
        })
        .map_err(invalid)?;
        Ok(AdminUrl(trimmed))
    }

    /// `--admin URL`, or the `[admin]` of the `--config` file when given.
    pub fn choose(target: &AdminTarget) -> Result<AdminUrl, AdminError> {
        let Some(path) = &target.config else {
            return AdminUrl::parse(&target.admin);
        };
        let failed = |reason: String| AdminError::Config {
            path: path.display().to_string(),
            reason,
        };
        let admin = AdminConfig::read(path).map_err(|e| failed(e.to_string()))?;
        AdminUrl::parse(&format!("http://{}", reachable(&admin).map_err(failed)?))
    }

    pub(crate) fn uri(&self, path: &str) -> Result<Uri, AdminError> {
        format!("{}{path}", self.0)
            .parse()
            .map_err(|_| AdminError::InvalidUrl {
                url: self.0.clone(),
                reason: "not a URL once the API path is added",
            })
    }
}

impl std::fmt::Display for AdminUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Where to reach an admin listener configured as `admin`: its address, a wildcard address
/// reached on loopback; an error when it is off.
pub fn reachable(admin: &AdminConfig) -> Result<std::net::SocketAddr, String> {
    if !admin.enabled {
        return Err("the admin listener is off ([admin] enabled = false)".into());
    }
    let mut addr = admin.listen;
    if addr.ip().is_unspecified() {
        addr.set_ip(match addr {
            std::net::SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
            std::net::SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
        });
    }
    Ok(addr)
}

/// A client of one admin listener.
pub struct AdminClient {
    client: Client<HttpConnector, Full<Bytes>>,
    url: AdminUrl,
    timeout: Duration,
}

impl AdminClient {
    /// A client of the admin listener at `url`.
    pub fn new(url: AdminUrl) -> AdminClient {
        AdminClient {
            client: Client::builder(TokioExecutor::new()).build_http(),
            url,
            timeout: REQUEST_TIMEOUT,
        }
    }

    /// `GET path`, its answer parsed as `T`, with the raw answer.
    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<(T, Bytes), AdminError> {
        self.exchange(Method::GET, path, None).await
    }

    /// `POST path` with `body` as JSON, its answer parsed as `T`, with the raw answer.
    pub async fn post<T: DeserializeOwned>(
        &self,
        path: &str,
        body: &impl Serialize,
    ) -> Result<(T, Bytes), AdminError> {
        let body = serde_json::to_vec(body)
            .map_err(|e| AdminError::InvalidArgument(format!("cannot encode the request: {e}")))?;
        self.exchange(Method::POST, path, Some(body)).await
    }

    async fn exchange<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<(T, Bytes), AdminError> {
        let url = self.url.to_string();
        let exchange = async {
            let response = self.send(method, path, "application/json", body).await?;
            let status = response.status();
            let body = Limited::new(response.into_body(), MAX_ANSWER_BYTES)
                .collect()
                .await
                .map_err(|e| AdminError::BodyRead {
                    url: url.clone(),
                    cause: error_chain(e.as_ref()),
                })?
                .to_bytes();
            Ok((status, body))
        };
        let (status, body) = tokio::time::timeout(self.timeout, exchange)
            .await
            .map_err(|_| AdminError::Timeout {
                url: url.clone(),
                after: self.timeout,
            })??;
        if !status.is_success() {
            return Err(self.refusal(status, &body));
        }
        let value = serde_json::from_slice(&body).map_err(|e| self.invalid(status, &e))?;
        Ok((value, body))
    }

    /// `GET path` answered with a stream (`/v1/tail`): its body once the answer's head is
    /// there (within the request timeout), or the API's refusal.
    pub async fn stream(&self, path: &str) -> Result<hyper::body::Incoming, AdminError> {
        let url = self.url.to_string();
        let answered = async {
            let response = self
                .send(Method::GET, path, "application/x-ndjson", None)
                .await?;
            let status = response.status();
            if status.is_success() {
                return Ok(response.into_body());
            }
            let body = Limited::new(response.into_body(), MAX_ERROR_BYTES)
                .collect()
                .await
                .map(|collected| collected.to_bytes())
                .unwrap_or_default();
            Err(self.refusal(status, &body))
        };
        tokio::time::timeout(self.timeout, answered)
            .await
            .map_err(|_| AdminError::Timeout {
                url,
                after: self.timeout,
            })?
    }

    /// Sends one request; the answer's head, or why nothing answered.
    async fn send(
        &self,
        method: Method,
        path: &str,
        accept: &'static str,
        body: Option<Vec<u8>>,
    ) -> Result<hyper::Response<hyper::body::Incoming>, AdminError> {
        let mut request = Request::builder()
            .method(method)
            .uri(self.url.uri(path)?)
            .header(ACCEPT, accept)
            .header(USER_AGENT, USER_AGENT_VALUE);
        if body.is_some() {
            request = request.header(CONTENT_TYPE, "application/json");
        }
        let request = request
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|_| AdminError::InvalidUrl {
                url: self.url.to_string(),
                reason: "not a valid request URL",
            })?;
        self.client
            .request(request)
            .await
            .map_err(|e| AdminError::Unreachable {
                url: self.url.to_string(),
                cause: e.source().map_or_else(|| e.to_string(), error_chain),
            })
    }

    /// The error a refusal (`status`, not 2xx) with this answer stands for.
    fn refusal(&self, status: StatusCode, body: &[u8]) -> AdminError {
        match serde_json::from_slice::<ErrorBody>(body) {
            Ok(error) => AdminError::Api {
                status,
                code: error.error,
                message: printable(&error.message),
            },
            Err(e) => self.invalid(status, &e),
        }
    }

    /// An answer that is not the admin API's JSON.
    fn invalid(&self, status: StatusCode, cause: &serde_json::Error) -> AdminError {
        AdminError::InvalidAnswer {
            url: self.url.to_string(),
            status,
            cause: cause.to_string(),
        }
    }
}

/// What an operator command printed, and whether it did everything it was asked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// What to print on stdout.
    pub stdout: String,
    /// Set when IDs given to a retry or drop matched nothing: what to say on stderr, and the
    /// command exits non-zero.
    pub unmatched: Option<String>,
}

impl From<String> for Answer {
    fn from(stdout: String) -> Answer {
        Answer {
            stdout,
            unmatched: None,
        }
    }
}

/// Runs one operator command.
pub async fn run(command: &AdminCommand) -> Result<Answer, AdminError> {
    match command {
        AdminCommand::Status(args) => {
            let client = client(args)?;
            let (report, raw) = client.get::<StatusReport>("/v1/status").await?;
            Ok(output(args, raw, || status_table(&report)).into())
        }
        AdminCommand::DeadLetters(DeadLettersCommand::List { sink, page, admin }) => {
            let client = client(admin)?;
            let path = format!(
                "/v1/sinks/{}/dead-letters?after={}&limit={}",
                encode_query_value(sink),
                page.after,
                page.limit
            );
            let (list, raw) = client.get::<DeadLetterPage>(&path).await?;
            Ok(output(admin, raw, || dead_letter_table(&list)).into())
        }
        AdminCommand::DeadLetters(DeadLettersCommand::Show { sink, id, admin }) => {
            let client = client(admin)?;
            let path = format!("/v1/sinks/{}/dead-letters/{id}", encode_query_value(sink));
            let (detail, raw) = client.get::<DeadLetterDetail>(&path).await?;
            Ok(output(admin, raw, || dead_letter_report(&detail)).into())
        }
        AdminCommand::DeadLetters(DeadLettersCommand::Retry {
            sink,
            selected,
            admin,
        }) => {
            let path = format!("/v1/sinks/{}/dead-letters/retry", encode_query_value(sink));
            let what = Changing::dead_letters(sink, "back in the queue");
            change(admin, &path, selected, &what).await
        }
        AdminCommand::DeadLetters(DeadLettersCommand::Drop {
            sink,
            selected,
            admin,
        }) => {
            let path = format!("/v1/sinks/{}/dead-letters/drop", encode_query_value(sink));
            let what = Changing::dead_letters(sink, "gone for good");
            change(admin, &path, selected, &what).await
        }
        AdminCommand::Quarantine(QuarantineCommand::List { page, admin }) => {
            let client = client(admin)?;
            let path = format!("/v1/quarantine?after={}&limit={}", page.after, page.limit);
            let (list, raw) = client.get::<QuarantinePage>(&path).await?;
            Ok(output(admin, raw, || quarantine_table(&list)).into())
        }
        AdminCommand::Quarantine(QuarantineCommand::Show { id, admin }) => {
            let client = client(admin)?;
            let (detail, raw) = client
                .get::<EventDetail>(&format!("/v1/quarantine/{id}"))
                .await?;
            Ok(output(admin, raw, || event_report(&detail)).into())
        }
        AdminCommand::Quarantine(QuarantineCommand::Drop { selected, admin }) => {
            let what = Changing {
                what: "quarantined deliveries",
                one: "quarantined delivery".into(),
                outcome: "gone for good",
                list: "kirimhook quarantine list".into(),
            };
            change(admin, "/v1/quarantine/drop", selected, &what).await
        }
        AdminCommand::Replay(args) => {
            let since = since(&args.since, SystemTime::now())?;
            let client = client(&args.admin)?;
            let path = format!("/v1/sinks/{}/replay", encode_query_value(&args.sink));
            let (done, raw) = client
                .post::<Changed>(
                    &path,
                    &ReplayRequest {
                        since: since.clone(),
                    },
                )
                .await?;
            Ok(output(&args.admin, raw, || {
                format!(
                    "queued {} stored event(s) received since {since} for sink {} again\n",
                    done.count,
                    printable(&args.sink)
                )
            })
            .into())
        }
    }
}

fn client(args: &AdminArgs) -> Result<AdminClient, AdminError> {
    Ok(AdminClient::new(AdminUrl::choose(&args.target)?))
}

/// The raw JSON answer with `--json`, else the rendered text.
fn output(args: &AdminArgs, raw: Bytes, render: impl FnOnce() -> String) -> String {
    if args.json {
        let mut text = String::from_utf8_lossy(&raw).into_owned();
        if !text.ends_with('\n') {
            text.push('\n');
        }
        text
    } else {
        render()
    }
}

/// The words for what a retry or drop changes.
struct Changing {
    /// The entries, plural (`dead letters`).
    what: &'static str,
    /// One entry, with its owner (`dead letter of sink app`).
    one: String,
    /// What happened to them (`gone for good`).
    outcome: &'static str,
    /// The command that lists them.
    list: String,
}

impl Changing {
    fn dead_letters(sink: &str, outcome: &'static str) -> Changing {
        Changing {
            what: "dead letters",
            one: format!("dead letter of sink {}", printable(sink)),
            outcome,
            list: format!("kirimhook dead-letters list --sink {}", printable(sink)),
        }
    }
}

/// A retry or drop: the request, a line saying what happened and, when IDs matched nothing,
/// the error to exit with.
async fn change(
    admin: &AdminArgs,
    path: &str,
    selected: &Selected,
    what: &Changing,
) -> Result<Answer, AdminError> {
    let selection = if selected.all {
        Selection::all()
    } else {
        Selection::seqs(selected.ids.clone())
    };
    let client = client(admin)?;
    let (done, raw) = client.post::<Changed>(path, &selection).await?;
    let unmatched = unmatched(&done, selected, what);
    let stdout = output(admin, raw, || {
        if done.count == 0 && unmatched.is_some() {
            String::new()
        } else {
            change_report(&done, what)
        }
    });
    Ok(Answer { stdout, unmatched })
}

/// The error for IDs that matched nothing (a retry or drop by ID that did less than asked).
fn unmatched(done: &Changed, selected: &Selected, what: &Changing) -> Option<String> {
    // An ID given twice is one entry (the store acts on it once).
    let distinct: std::collections::BTreeSet<u64> = selected.ids.iter().copied().collect();
    let given = distinct.len();
    if selected.all || done.count as usize >= given {
        return None;
    }
    let ids = distinct
        .iter()
        .map(u64::to_string)
        .collect::<Vec<_>>()
        .join(", ");
    Some(if done.count == 0 {
        let which = if given == 1 {
            format!("no {} has ID {ids}", what.one)
        } else {
            format!("no {} has any of the IDs {ids}", what.one)
        };
        format!("{which}: nothing was done (see `{}`)", what.list)
    } else {
        format!(
            "{} of the {given} IDs given ({ids}) matched no {} (see `{}`)",
            given - done.count as usize,
            what.one,
            what.list
        )
    })
}

/// `--since`: an RFC 3339 time as it is, or a duration back from `now` as RFC 3339.
pub fn since(text: &str, now: SystemTime) -> Result<String, AdminError> {
    if admin::parse_rfc3339(text).is_ok() {
        return Ok(text.trim().to_owned());
    }
    match humantime::parse_duration(text.trim()) {
        Ok(back) => {
            // Before 1970 cannot be written as the RFC 3339 the API takes (humantime
            // panics on it), and no stored event is that old anyway.
            let ms = now
                .checked_sub(back)
                .and_then(|at| at.duration_since(UNIX_EPOCH).ok())
                .ok_or_else(|| {
                    AdminError::InvalidArgument(format!(
                        "--since {text}: too far back (before 1970-01-01T00:00:00Z)"
                    ))
                })?;
            Ok(crate::time::rfc3339_ms(ms.as_millis() as u64))
        }
        Err(_) => Err(AdminError::InvalidArgument(format!(
            "--since: {}; or give a duration back from now such as 90m or 2h",
            admin::parse_rfc3339(text).err().unwrap_or_default()
        ))),
    }
}

// ---------------------------------------------------------------------------------------------
// Rendering (pure).

/// An aligned table: a header line, then the rows; cells made printable.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let header: Vec<String> = header.iter().map(|h| (*h).to_owned()).collect();
    let rows: Vec<Vec<String>> = std::iter::once(header)
        .chain(
            rows.iter()
                .map(|row| row.iter().map(|c| printable(c)).collect()),
        )
        .collect();
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let mut widths = vec![0; columns];
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in &rows {
        let mut line = String::new();
        for (i, (cell, width)) in row.iter().zip(&widths).enumerate() {
            if i > 0 {
                line.push_str("  ");
            }
            line.push_str(cell);
            line.extend(std::iter::repeat_n(' ', width - cell.chars().count()));
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// A duration as its two largest units: `3m 20s`, `2days 4h`, `0s`.
pub fn short_age(secs: u64) -> String {
    let full = humantime::format_duration(Duration::from_secs(secs)).to_string();
    full.split(' ').take(2).collect::<Vec<_>>().join(" ")
}

fn or_dash(value: Option<&str>) -> String {
    match value.map(str::trim) {
        Some(v) if !v.is_empty() => v.to_owned(),
        _ => "-".to_owned(),
    }
}

/// `kirimhook status`.
pub fn status_table(report: &StatusReport) -> String {
    let rows: Vec<Vec<String>> = report
        .sinks
        .iter()
        .map(|sink| {
            vec![
                sink.name.clone(),
                sink.queued.to_string(),
                sink.oldest_age_secs.map_or_else(|| "-".into(), short_age),
                sink.dead_letters.to_string(),
            ]
        })
        .collect();
    let mut out = table(&["SINK", "QUEUED", "OLDEST", "DEAD_LETTERS"], &rows);
    out.push('\n');
    out.push_str(&format!(
        "quarantine: {} deliver{}\n",
        report.quarantined,
        if report.quarantined == 1 { "y" } else { "ies" }
    ));
    out.push_str(&format!(
        "store:      {} on disk, {} event(s) stored\n",
        human_bytes(report.store_bytes),
        report.events_stored
    ));
    if let Some(refusing) = &report.refusing {
        out.push_str(&format!("REFUSING:   {refusing}\n"));
    }
    if report.recovery_dropped > 0 {
        out.push_str(&format!(
            "DATA LOSS:  {} acknowledged deliver{} missing after recovery; last: {}\n",
            report.recovery_dropped,
            if report.recovery_dropped == 1 {
                "y"
            } else {
                "ies"
            },
            report.recovery_last.as_deref().unwrap_or("-")
        ));
    }
    out
}

/// The status (unless the message already says it) and the message.
fn error_text(error: &admin::ErrorReport) -> String {
    match error.status {
        Some(status) if !error.message.contains(&status.to_string()) => {
            format!("{status} {}", error.message)
        }
        _ => error.message.clone(),
    }
}

/// [`error_text`] on one line, cut to 60 characters.
fn last_error(error: Option<&admin::ErrorReport>) -> String {
    match error {
        None => "-".into(),
        Some(e) => {
            let text = error_text(e);
            let mut short: String = text.chars().take(60).collect();
            if text.chars().count() > 60 {
                short.push('…');
            }
            short.split_whitespace().collect::<Vec<_>>().join(" ")
        }
    }
}

/// `kirimhook dead-letters list`.
pub fn dead_letter_table(page: &DeadLetterPage) -> String {
    if page.dead_letters.is_empty() {
        return format!("sink {} has no dead letters\n", printable(&page.sink));
    }
    let rows: Vec<Vec<String>> = page
        .dead_letters
        .iter()
        .map(|d| {
            vec![
                d.seq.to_string(),
                or_dash(d.event_type.as_deref()),
                or_dash(d.event_id.as_deref()),
                d.received_at.clone(),
                d.attempts.to_string(),
                last_error(d.last_error.as_ref()),
            ]
        })
        .collect();
    let mut out = table(
        &[
            "ID",
            "TYPE",
            "EVENT_ID",
            "RECEIVED",
            "ATTEMPTS",
            "LAST_ERROR",
        ],
        &rows,
    );
    if let Some(after) = page.next_after {
        out.push_str(&format!(
            "more: kirimhook dead-letters list --sink {} --after {after}\n",
            printable(&page.sink)
        ));
    }
    out
}

/// `kirimhook quarantine list`.
pub fn quarantine_table(page: &QuarantinePage) -> String {
    if page.quarantine.is_empty() {
        return "the quarantine is empty\n".into();
    }
    let rows: Vec<Vec<String>> = page
        .quarantine
        .iter()
        .map(|q| {
            vec![
                q.seq.to_string(),
                or_dash(q.event_type.as_deref()),
                or_dash(q.event_id.as_deref()),
                q.received_at.clone(),
                or_dash(q.reason.as_deref()),
                q.body_bytes.to_string(),
            ]
        })
        .collect();
    let mut out = table(
        &["ID", "TYPE", "EVENT_ID", "RECEIVED", "REASON", "BYTES"],
        &rows,
    );
    if let Some(after) = page.next_after {
        out.push_str(&format!(
            "more: kirimhook quarantine list --after {after}\n"
        ));
    }
    out
}

/// `kirimhook dead-letters show`.
pub fn dead_letter_report(detail: &DeadLetterDetail) -> String {
    let s = &detail.summary;
    let mut out = format!("sink:             {}\n", printable(&detail.sink));
    out.push_str(&format!("attempts:         {}\n", s.attempts));
    out.push_str(&format!(
        "first attempt:    {}\n",
        or_dash(s.first_attempt_at.as_deref())
    ));
    out.push_str(&format!(
        "last attempt:     {}\n",
        or_dash(s.last_attempt_at.as_deref())
    ));
    out.push_str(&format!(
        "last error:       {}\n",
        s.last_error
            .as_ref()
            .map_or_else(|| "-".to_owned(), |e| printable(&error_text(e)))
    ));
    out.push_str(&event_report(&detail.event));
    out
}

/// `kirimhook quarantine show`, and the event part of `dead-letters show`.
pub fn event_report(event: &EventDetail) -> String {
    let mut out = String::new();
    let mut line = |key: &str, value: &str| {
        out.push_str(&format!("{:<18}{}\n", format!("{key}:"), printable(value)));
    };
    line("id", &event.seq.to_string());
    line("event id", &or_dash(event.event_id.as_deref()));
    line("type", &or_dash(event.event_type.as_deref()));
    line("source", &or_dash(event.source.as_deref()));
    line("received at", &event.received_at);
    line("secret id", &event.secret_id);
    line("dedupe keys", &event.keys.join(", "));
    if let Some(reason) = &event.quarantine_reason {
        line("quarantined", reason);
    }
    for (name, value) in &event.headers {
        line(name, value);
    }
    line(
        "body",
        &format!(
            "{} bytes, {}",
            event.body_bytes,
            match event.body_format {
                BodyFormat::Json => "JSON",
                BodyFormat::Text => "not JSON",
            }
        ),
    );
    let body = match event.body_format {
        BodyFormat::Json => indent_json(event.body.get()),
        BodyFormat::Text => serde_json::from_str::<String>(event.body.get())
            .unwrap_or_else(|_| event.body.get().to_owned()),
    };
    out.push_str(&printable_block(&body));
    if !out.ends_with('\n') {
        out.push('\n');
    }
    out
}

fn change_report(done: &Changed, what: &Changing) -> String {
    let sink = done
        .sink
        .as_deref()
        .map(|s| format!(" of sink {}", printable(s)))
        .unwrap_or_default();
    format!(
        "{} {} {}{sink}: {}\n",
        done.action, done.count, what.what, what.outcome
    )
}

/// Control characters replaced, line breaks and tabs kept.
fn printable_block(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c.is_control() && c != '\n' && c != '\t' {
                char::REPLACEMENT_CHARACTER
            } else {
                c
            }
        })
        .collect()
}

/// JSON text re-indented by two spaces, keys and values left exactly as they are (no
/// re-parsing, so key order and number spelling stay those of the original).
pub fn indent_json(json: &str) -> String {
    let mut out = String::with_capacity(json.len() * 2);
    let mut depth = 0usize;
    let mut in_string = false;
    let mut escaped = false;
    let mut chars = json.trim().chars().peekable();
    let newline = |out: &mut String, depth: usize| {
        out.push('\n');
        out.extend(std::iter::repeat_n("  ", depth));
    };
    while let Some(c) = chars.next() {
        if in_string {
            out.push(c);
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                in_string = false;
            }
            continue;
        }
        match c {
            '"' => {
                in_string = true;
                out.push(c);
            }
            '{' | '[' => {
                out.push(c);
                // Skip whitespace to see whether the container is empty.
                while chars.peek().is_some_and(|c| c.is_whitespace()) {
                    chars.next();
                }
                if matches!(chars.peek(), Some('}' | ']')) {
                    if let Some(close) = chars.next() {
                        out.push(close);
                    }
                } else {
                    depth += 1;
                    newline(&mut out, depth);
                }
            }
            '}' | ']' => {
                depth = depth.saturating_sub(1);
                newline(&mut out, depth);
                out.push(c);
            }
            ',' => {
                out.push(c);
                newline(&mut out, depth);
            }
            ':' => out.push_str(": "),
            c if c.is_whitespace() => {}
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::admin::{DeadLetterSummary, ErrorReport, QuarantineSummary, SinkReport};

    #[test]
    fn cli_defaults_match_the_daemon() {
        // `cli` imports nothing from the crate, so it spells these out; they must not drift.
        assert_eq!(crate::cli::DEFAULT_LIMIT, admin::DEFAULT_LIMIT);
        assert!(AdminUrl::parse(crate::cli::DEFAULT_ADMIN_URL).is_ok());
    }

    #[test]
    fn the_admin_address_of_a_config() {
        let at = |enabled: bool, listen: &str| {
            reachable(&AdminConfig {
                enabled,
                listen: listen.parse().unwrap(),
            })
        };
        assert_eq!(
            at(true, "127.0.0.2:9191").unwrap().to_string(),
            "127.0.0.2:9191"
        );
        assert_eq!(
            at(true, "0.0.0.0:9191").unwrap().to_string(),
            "127.0.0.1:9191"
        );
        assert_eq!(at(true, "[::]:9191").unwrap().to_string(), "[::1]:9191");
        assert!(at(false, "127.0.0.1:9090")
            .unwrap_err()
            .contains("enabled = false"));
    }

    #[test]
    fn admin_urls() {
        assert_eq!(
            AdminUrl::parse("http://127.0.0.1:9090/")
                .unwrap()
                .to_string(),
            "http://127.0.0.1:9090"
        );
        assert!(AdminUrl::parse("http://[::1]:9090").is_ok());
        for bad in [
            "127.0.0.1:9090",
            "https://127.0.0.1:9090",
            "http://",
            "http://x/?a=1",
            "ftp://x",
        ] {
            let e = AdminUrl::parse(bad).unwrap_err();
            assert!(
                e.to_string().starts_with(&format!("--admin {bad}: ")),
                "{e}"
            );
        }
    }

    #[test]
    fn status_is_a_table() {
        let report = StatusReport {
            version: "0.1.0".into(),
            sinks: vec![
                SinkReport {
                    name: "stdout".into(),
                    queued: 0,
                    oldest_received_at: None,
                    oldest_age_secs: None,
                    dead_letters: 0,
                },
                SinkReport {
                    name: "app".into(),
                    queued: 1234,
                    oldest_received_at: Some("2026-06-01T12:00:00.000Z".into()),
                    oldest_age_secs: Some(3723),
                    dead_letters: 2,
                },
            ],
            quarantined: 1,
            events_stored: 1300,
            store_bytes: 5 * 1024 * 1024 + 300 * 1024,
            recovery_dropped: 0,
            recovery_last: None,
            refusing: None,
        };
        assert_eq!(
            status_table(&report),
            "SINK    QUEUED  OLDEST  DEAD_LETTERS\n\
             stdout  0       -       0\n\
             app     1234    1h 2m   2\n\
             \n\
             quarantine: 1 delivery\n\
             store:      5.3 MiB on disk, 1300 event(s) stored\n"
        );
        let troubled = StatusReport {
            recovery_dropped: 1001,
            recovery_last: Some("2026-11-27T12:00:00Z: 1001 acknowledged deliveries".into()),
            refusing: Some("disk nearly full".into()),
            ..report
        };
        let text = status_table(&troubled);
        assert!(text.contains("REFUSING:   disk nearly full\n"), "{text}");
        assert!(
            text.contains("DATA LOSS:  1001 acknowledged deliveries missing after recovery"),
            "{text}"
        );
    }

    #[test]
    fn dead_letters_table_and_paging_hint() {
        let page = DeadLetterPage {
            sink: "app".into(),
            dead_letters: vec![DeadLetterSummary {
                seq: 7,
                event_id: Some("evt_1".into()),
                event_type: Some("contact.created".into()),
                source: Some("kirim".into()),
                received_at: "2026-06-01T12:00:00.000Z".into(),
                attempts: 1,
                first_attempt_at: None,
                last_attempt_at: None,
                last_error: Some(ErrorReport {
                    status: Some(400),
                    message: "bad\nrequest \u{1b}[31m".into(),
                }),
            }],
            next_after: Some(7),
        };
        let text = dead_letter_table(&page);
        assert!(
            text.starts_with("ID  TYPE             EVENT_ID  RECEIVED"),
            "{text}"
        );
        assert!(text.contains("7   contact.created  evt_1"), "{text}");
        assert!(text.contains("400 bad request \u{FFFD}[31m"), "{text}");
        assert!(
            text.ends_with("more: kirimhook dead-letters list --sink app --after 7\n"),
            "{text}"
        );
        let empty = DeadLetterPage {
            sink: "app".into(),
            dead_letters: vec![],
            next_after: None,
        };
        assert_eq!(dead_letter_table(&empty), "sink app has no dead letters\n");
        let q = QuarantinePage {
            quarantine: vec![QuarantineSummary {
                seq: 3,
                event_id: None,
                event_type: None,
                received_at: "2026-06-01T12:00:00.000Z".into(),
                reason: Some("not_json".into()),
                body_bytes: 12,
            }],
            next_after: None,
        };
        let text = quarantine_table(&q);
        assert!(
            text.contains("3   -     -         2026-06-01T12:00:00.000Z  not_json  12"),
            "{text}"
        );
    }

    #[test]
    fn show_renders_the_body() {
        let json = r#"{"sink":"app","summary":{"seq":5,"event_id":"evt_1","type":"t","source":"kirim",
            "received_at":"2026-06-01T12:00:00.000Z","attempts":2,"first_attempt_at":null,
            "last_attempt_at":"2026-06-01T12:00:01.000Z","last_error":{"status":400,"message":"no"}},
            "event":{"seq":5,"event_id":"evt_1","type":"t","source":"kirim",
            "received_at":"2026-06-01T12:00:00.000Z","secret_id":"sec_A","keys":["kirim:evt_1"],
            "headers":{"x-kirim-event":"t"},"quarantine_reason":null,"body_bytes":20,
            "body_format":"json","body":{"z":1,"a":[],"s":"x,y"}}}"#;
        let detail: DeadLetterDetail = serde_json::from_str(json).unwrap();
        let text = dead_letter_report(&detail);
        assert!(text.contains("last error:       400 no\n"), "{text}");
        assert!(text.contains("secret id:        sec_A\n"), "{text}");
        assert!(text.contains("x-kirim-event:    t\n"), "{text}");
        assert!(
            text.ends_with("{\n  \"z\": 1,\n  \"a\": [],\n  \"s\": \"x,y\"\n}\n"),
            "{text}"
        );
    }

    #[test]
    fn indenting_keeps_order_and_strings() {
        assert_eq!(
            indent_json(r#" {"b":{"c":[1, 2]},"a":"{\"q\":[]}" , "e":{} } "#),
            "{\n  \"b\": {\n    \"c\": [\n      1,\n      2\n    ]\n  },\n  \"a\": \"{\\\"q\\\":[]}\",\n  \"e\": {}\n}"
        );
        assert_eq!(indent_json("[]"), "[]");
        assert_eq!(indent_json("12"), "12");
    }

    #[test]
    fn small_formats() {
        assert_eq!(short_age(0), "0s");
        assert_eq!(short_age(59), "59s");
        assert_eq!(short_age(3723), "1h 2m");
        assert_eq!(short_age(2 * 86_400 + 5), "2days 5s");
    }

    #[test]
    fn since_takes_a_time_or_a_duration_back() {
        let now = admin::parse_rfc3339("2026-06-01T12:00:00Z").unwrap();
        assert_eq!(
            since("2026-05-31T00:00:00Z", now).unwrap(),
            "2026-05-31T00:00:00Z"
        );
        assert_eq!(since("2h", now).unwrap(), "2026-06-01T10:00:00.000Z");
        let e = since("yesterday", now).unwrap_err().to_string();
        assert!(e.contains("RFC 3339") && e.contains("90m"), "{e}");
    }

    #[test]
    fn ids_that_matched_nothing_are_an_error() {
        let what = Changing::dead_letters("app", "gone for good");
        let done = |count| Changed {
            sink: Some("app".into()),
            action: "dropped".into(),
            count,
        };
        let ids = |ids: &[u64]| Selected {
            ids: ids.to_vec(),
            all: false,
        };
        assert_eq!(
            unmatched(&done(0), &ids(&[99]), &what).as_deref(),
            Some(
                "no dead letter of sink app has ID 99: nothing was done \
                 (see `kirimhook dead-letters list --sink app`)"
            )
        );
        assert_eq!(
            unmatched(&done(1), &ids(&[4, 99]), &what).as_deref(),
            Some(
                "1 of the 2 IDs given (4, 99) matched no dead letter of sink app \
                 (see `kirimhook dead-letters list --sink app`)"
            )
        );
        assert_eq!(unmatched(&done(2), &ids(&[4, 5]), &what), None);
        assert_eq!(
            unmatched(&done(1), &ids(&[4, 4]), &what),
            None,
            "an ID given twice is done once"
        );
        let all = Selected {
            ids: vec![],
            all: true,
        };
        assert_eq!(unmatched(&done(0), &all, &what), None);
        assert_eq!(
            change_report(&done(2), &what),
            "dropped 2 dead letters of sink app: gone for good\n"
        );
    }

    #[test]
    fn since_never_panics_on_a_duration_too_far_back() {
        let now = admin::parse_rfc3339("2026-06-01T12:00:00Z").unwrap();
        for text in [
            "60years",
            "57years",
            "100000years",
            "18446744073709551615s",
            "584942417355years",
        ] {
            let e = since(text, now).unwrap_err().to_string();
            assert!(
                e.contains("too far back") || e.contains("RFC 3339"),
                "{text}: {e}"
            );
        }
        let far = since(
            "56years",
            admin::parse_rfc3339("2030-01-01T00:00:00Z").unwrap(),
        );
        assert!(
            far.as_deref().is_ok_and(|t| t.starts_with("1974-")),
            "{far:?}"
        );
        assert!(since("0s", UNIX_EPOCH).is_ok());
    }
}
