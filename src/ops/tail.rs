//! `kirimhook tail`: watches a running daemon's live feed (`GET /v1/tail` on its admin
//! listener) and prints each line as it comes: aligned text, or with `--json` the feed's own
//! JSON objects, one per line, for jq.
//!
//! Text lines start with the time (UTC, to the millisecond) and what happened, coloured when
//! stdout is a terminal and `NO_COLOR` is not set. Text that came from the network has its
//! control characters replaced before it reaches the terminal. Once the daemon answered,
//! `watching ...` goes to stderr (stdout carries only the lines). The command ends when the
//! daemon closes the stream (it stopped), and fails when the connection breaks or no heartbeat
//! came for [`SILENCE`].
//!
//! This module knows nothing of the daemon's internals: only the admin API's feed and its
//! [`Line`] type.

use std::io::Write as _;
use std::time::Duration;

use bytes::BytesMut;
use http_body_util::BodyExt as _;

use crate::activity::{Line, SinkEvent, What};
use crate::cli::TailArgs;
use crate::ops::accounts::{encode_query_value, error_chain, printable};
use crate::ops::admin_cli::{AdminClient, AdminError, AdminUrl};

/// How long the daemon may stay silent (it sends an empty line every 15 s) before the
/// connection is taken for dead.
pub const SILENCE: Duration = Duration::from_secs(45);
/// The longest line read; a longer one is an error (the daemon's lines are far shorter).
const MAX_LINE_BYTES: usize = 1024 * 1024;

/// How `kirimhook tail` ended without an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// The daemon closed the stream: it is stopping.
    DaemonStopped,
    /// Whoever read stdout has gone (`kirimhook tail | head`).
    ReaderGone,
}

/// Watches the daemon `args` names until it stops or the reader of stdout goes; `stderr`
/// is told when the watching starts.
pub async fn run(args: &TailArgs, stderr: impl Fn(&str)) -> Result<Ended, AdminError> {
    let url = AdminUrl::choose(&args.target)?;
    let mut query = Vec::new();
    if !args.events.is_empty() {
        query.push(format!(
            "events={}",
            encode_query_value(&args.events.join(","))
        ));
    }
    if let Some(sink) = &args.sink {
        query.push(format!("sink={}", encode_query_value(sink)));
    }
    let path = match query.is_empty() {
        true => "/v1/tail".to_owned(),
        false => format!("/v1/tail?{}", query.join("&")),
    };
    let mut body = AdminClient::new(url.clone()).stream(&path).await?;
    stderr(&format!("watching {url} (times in UTC; Ctrl-C to stop)"));

    let style = Style::for_stdout();
    let mut pending = BytesMut::new();
    loop {
        let frame = match tokio::time::timeout(SILENCE, body.frame()).await {
            Err(_) => {
                return Err(AdminError::BodyRead {
                    url: url.to_string(),
                    cause: format!("nothing from the daemon for {} s", SILENCE.as_secs()),
                })
            }
            Ok(None) => return Ok(Ended::DaemonStopped),
            Ok(Some(Err(e))) => {
                return Err(AdminError::BodyRead {
                    url: url.to_string(),
                    cause: error_chain(&e),
                })
            }
            Ok(Some(Ok(frame))) => frame,
        };
        let Ok(data) = frame.into_data() else {
            continue;
        };
        pending.extend_from_slice(&data);
        let mut out = Vec::new();
        while let Some(end) = pending.iter().position(|&b| b == b'\n') {
            let line = pending.split_to(end + 1);
            let line = &line[..end];
            if line.is_empty() {
                continue; // a heartbeat
            }
            out.extend_from_slice(&print(line, args.json, style));
        }
        if pending.len() > MAX_LINE_BYTES {
            return Err(AdminError::BodyRead {
                url: url.to_string(),
                cause: format!("a line longer than {MAX_LINE_BYTES} bytes"),
            });
        }
        if !out.is_empty() && write_stdout(&out).is_err() {
            return Ok(Ended::ReaderGone);
        }
    }
}

/// What one line of the feed prints as.
fn print(raw: &[u8], json: bool, style: Style) -> Vec<u8> {
    if json {
        let mut out = raw.to_vec();
        out.push(b'\n');
        return out;
    }
    match serde_json::from_slice::<Line>(raw) {
        Ok(line) => render(&line, style).into_bytes(),
        // A kind this client does not know (a newer daemon): shown as it came.
        Err(_) => format!("{}\n", printable(&String::from_utf8_lossy(raw))).into_bytes(),
    }
}

/// Writes to stdout and flushes; an error means the reader has gone.
fn write_stdout(bytes: &[u8]) -> std::io::Result<()> {
    let mut stdout = std::io::stdout().lock();
    stdout.write_all(bytes).and_then(|()| stdout.flush())
}

/// Whether to colour.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Style {
    /// Plain text.
    Plain,
    /// ANSI colours.
    Colour,
}

impl Style {
    /// Colour when stdout is a terminal and `NO_COLOR` is unset or empty (no-color.org).
    pub fn for_stdout() -> Style {
        use std::io::IsTerminal as _;
        let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
        if std::io::stdout().is_terminal() && !no_color {
            Style::Colour
        } else {
            Style::Plain
        }
    }
}

/// One line as aligned text, ending in a newline.
pub fn render(line: &Line, style: Style) -> String {
    // HH:MM:SS.mmm of an RFC 3339 time; the whole text when it is not one.
    let time = line.at.get(11..23).unwrap_or(&line.at);
    let (kind, colour, fields) = describe(&line.what);
    let kind = match style {
        Style::Plain => format!("{kind:<12}"),
        Style::Colour => format!("\x1b[{colour}m{kind:<12}\x1b[0m"),
    };
    let fields: Vec<String> = fields
        .into_iter()
        .filter(|f| !f.is_empty())
        .map(|f| printable(&f))
        .collect();
    format!("{}  {kind} {}\n", printable(time), fields.join("  ")).replace(" \n", "\n")
}

/// A line's kind, its ANSI colour and its fields (empty ones are left out).
fn describe(what: &What) -> (&'static str, &'static str, Vec<String>) {
    let text = |value: &Option<String>| value.clone().unwrap_or_default();
    let or_dash = |value: &Option<String>| value.clone().unwrap_or_else(|| "-".into());
    let status = |status: &Option<u16>| status.map(|s| s.to_string()).unwrap_or_default();
    let attempt = |n: u32| {
        if n > 1 {
            format!("(attempt {n})")
        } else {
            String::new()
        }
    };
    let about = |e: &SinkEvent| vec![e.sink.clone(), or_dash(&e.event_type), text(&e.event_id)];
    const GREEN: &str = "32";
    const YELLOW: &str = "33";
    const RED: &str = "31";
    const MAGENTA: &str = "35";
    const DIM: &str = "2";
    match what {
        What::Accepted {
            event_type,
            source,
            event_id,
            phone_number_id,
            delivery_id,
            sinks,
            ..
        } => (
            "accepted",
            GREEN,
            vec![
                or_dash(event_type),
                text(source),
                text(event_id),
                phone_number_id
                    .as_ref()
                    .map(|id| format!("line {id}"))
                    .unwrap_or_default(),
                text(delivery_id),
                if sinks.is_empty() {
                    "-> no sink".into()
                } else {
                    format!("-> {}", sinks.join(", "))
                },
            ],
        ),
        What::Duplicate {
            event_type,
            source,
            event_id,
            delivery_id,
            attempt,
        } => (
            "duplicate",
            YELLOW,
            vec![
                or_dash(event_type),
                text(source),
                text(event_id),
                text(delivery_id),
                attempt
                    .as_ref()
                    .map(|n| format!("(attempt {n})"))
                    .unwrap_or_default(),
            ],
        ),
        What::Quarantined {
            reason,
            event_type,
            event_id,
            delivery_id,
            seq,
        } => (
            "quarantined",
            MAGENTA,
            vec![
                reason.clone(),
                text(event_type),
                text(event_id),
                text(delivery_id),
                format!("(kirimhook quarantine show {seq})"),
            ],
        ),
        What::Rejected {
            status,
            reason,
            delivery_id,
        } => (
            "rejected",
            RED,
            vec![format!("{status} {reason}"), text(delivery_id)],
        ),
        What::Delivered {
            event,
            attempt: n,
            latency_ms,
        } => (
            "delivered",
            GREEN,
            [about(event), vec![format!("{latency_ms} ms"), attempt(*n)]].concat(),
        ),
        What::Failed {
            event,
            attempt: n,
            latency_ms,
            status: code,
            error,
            retry_in_ms,
        } => (
            "failed",
            YELLOW,
            [
                about(event),
                vec![
                    status(code),
                    format!("{latency_ms} ms"),
                    attempt(*n),
                    match retry_in_ms {
                        Some(ms) => format!("retry in {}", seconds(*ms)),
                        None => "sink unreachable, probing".into(),
                    },
                    error.clone(),
                ],
            ]
            .concat(),
        ),
        What::DeadLettered {
            event,
            attempts,
            status: code,
            error,
        } => (
            "dead-letter",
            RED,
            [
                about(event),
                vec![
                    format!("after {attempts} attempt(s)"),
                    status(code),
                    error.clone(),
                    format!(
                        "(kirimhook dead-letters show --sink {} {})",
                        event.sink, event.seq
                    ),
                ],
            ]
            .concat(),
        ),
        What::Lost { lines } => (
            "lost",
            DIM,
            vec![format!(
                "{lines} line(s) not shown: this viewer fell behind"
            )],
        ),
    }
}

/// Milliseconds as `850 ms`, `2.1 s` or `3 min`.
fn seconds(ms: u64) -> String {
    match ms {
        0..=999 => format!("{ms} ms"),
        1_000..=119_999 => format!("{:.1} s", ms as f64 / 1000.0),
        _ => format!("{} min", ms / 60_000),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(what: What) -> Line {
        Line {
            at: "2026-12-07T10:21:07.312Z".into(),
            what,
        }
    }

    #[test]
    fn text_lines() {
        let accepted = line(What::Accepted {
            seq: 7,
            event_type: Some("message.received".into()),
            source: Some("meta".into()),
            event_id: Some("wamid.HBgN".into()),
            phone_number_id: Some("106540352242922".into()),
            delivery_id: Some("wbd_01J".into()),
            sinks: vec!["app".into(), "archive".into()],
        });
        assert_eq!(
            render(&accepted, Style::Plain),
            "10:21:07.312  accepted     message.received  meta  wamid.HBgN  line 106540352242922  \
             wbd_01J  -> app, archive\n"
        );
        let delivered = line(What::Delivered {
            event: SinkEvent {
                sink: "app".into(),
                seq: 7,
                event_type: Some("message.received".into()),
                event_id: None,
            },
            attempt: 1,
            latency_ms: 12,
        });
        assert_eq!(
            render(&delivered, Style::Plain),
            "10:21:07.312  delivered    app  message.received  12 ms\n"
        );
        let failed = line(What::Failed {
            event: SinkEvent {
                sink: "app".into(),
                seq: 7,
                event_type: None,
                event_id: None,
            },
            attempt: 2,
            latency_ms: 30,
            status: Some(503),
            error: "HTTP 503\u{1b}[2J".into(),
            retry_in_ms: Some(2100),
        });
        assert_eq!(
            render(&failed, Style::Plain),
            "10:21:07.312  failed       app  -  503  30 ms  (attempt 2)  retry in 2.1 s  \
             HTTP 503\u{FFFD}[2J\n"
        );
        let rejected = line(What::Rejected {
            status: 401,
            reason: "invalid_signature".into(),
            delivery_id: None,
        });
        assert_eq!(
            render(&rejected, Style::Colour),
            "10:21:07.312  \u{1b}[31mrejected    \u{1b}[0m 401 invalid_signature\n"
        );
        assert_eq!(
            render(&line(What::Lost { lines: 3 }), Style::Plain),
            "10:21:07.312  lost         3 line(s) not shown: this viewer fell behind\n"
        );
    }

    #[test]
    fn json_lines_pass_through_and_unknown_kinds_are_shown_as_they_came() {
        let raw = br#"{"at":"2026-12-07T10:21:07.312Z","kind":"lost","lines":1}"#;
        assert_eq!(print(raw, true, Style::Plain), [&raw[..], b"\n"].concat());
        assert_eq!(
            print(br#"{"kind":"new"}"#, false, Style::Plain),
            b"{\"kind\":\"new\"}\n"
        );
    }

    #[test]
    fn durations() {
        assert_eq!(seconds(850), "850 ms");
        assert_eq!(seconds(2100), "2.1 s");
        assert_eq!(seconds(600_000), "10 min");
    }
}
