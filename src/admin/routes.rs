//! Routing, pure: a method and a path become a [`Route`], a query string becomes a
//! [`PageQuery`]. A wrong method is a 405 naming the right one, an unknown path a 404, a seq
//! that is not a number a 400. Whether a named sink is configured is not checked here (the
//! handlers do that); nothing here reads a body or the store.

use hyper::Method;

use super::api::{DEFAULT_LIMIT, MAX_LIMIT};
use super::response::{printable, ApiError};

/// What a request asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Route {
    Healthz,
    Readyz,
    Metrics,
    Status,
    DeadLetters(String),
    DeadLetter(String, u64),
    RetryDeadLetters(String),
    DropDeadLetters(String),
    Quarantine,
    QuarantineEntry(u64),
    DropQuarantine,
    Replay(String),
    Tail,
}

/// Maps a method and path to a route. Sinks are not checked here.
pub(super) fn route(method: &Method, path: &str) -> Result<Route, ApiError> {
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let get = |route: Route| {
        if method == Method::GET || method == Method::HEAD {
            Ok(route)
        } else {
            Err(ApiError::method("GET"))
        }
    };
    let post = |route: Route| {
        if method == Method::POST {
            Ok(route)
        } else {
            Err(ApiError::method("POST"))
        }
    };
    let seq = |text: &str| {
        text.parse::<u64>().map_err(|_| {
            ApiError::bad_request(format!("`{}` is not a seq (a number)", printable(text)))
        })
    };
    match segments.as_slice() {
        ["healthz"] => get(Route::Healthz),
        ["readyz"] => get(Route::Readyz),
        ["metrics"] => get(Route::Metrics),
        ["v1", "status"] => get(Route::Status),
        ["v1", "sinks", sink, "dead-letters"] => get(Route::DeadLetters((*sink).to_owned())),
        ["v1", "sinks", sink, "dead-letters", "retry"] => {
            post(Route::RetryDeadLetters((*sink).to_owned()))
        }
        ["v1", "sinks", sink, "dead-letters", "drop"] => {
            post(Route::DropDeadLetters((*sink).to_owned()))
        }
        ["v1", "sinks", sink, "dead-letters", id] => {
            get(Route::DeadLetter((*sink).to_owned(), seq(id)?))
        }
        ["v1", "sinks", sink, "replay"] => post(Route::Replay((*sink).to_owned())),
        ["v1", "tail"] => get(Route::Tail),
        ["v1", "quarantine"] => get(Route::Quarantine),
        ["v1", "quarantine", "drop"] => post(Route::DropQuarantine),
        ["v1", "quarantine", id] => get(Route::QuarantineEntry(seq(id)?)),
        _ => Err(ApiError::not_found(format!(
            "no such admin endpoint: {}",
            printable(path)
        ))),
    }
}

/// `after` and `limit` of a list request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct PageQuery {
    pub(super) after: u64,
    pub(super) limit: usize,
}

/// Parses `after` and `limit` of a list request; anything else is a 400.
pub(super) fn page_query(query: Option<&str>) -> Result<PageQuery, ApiError> {
    let mut page = PageQuery {
        after: 0,
        limit: DEFAULT_LIMIT,
    };
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        match key {
            "after" => {
                page.after = value.parse().map_err(|_| {
                    ApiError::bad_request(format!("after: `{}` is not a seq", printable(value)))
                })?;
            }
            "limit" => {
                page.limit = value
                    .parse()
                    .ok()
                    .filter(|n| (1..=MAX_LIMIT).contains(n))
                    .ok_or_else(|| {
                        ApiError::bad_request(format!(
                            "limit: `{}` is not a number from 1 to {MAX_LIMIT}",
                            printable(value)
                        ))
                    })?;
            }
            other => {
                return Err(ApiError::bad_request(format!(
                    "unknown query parameter `{}` (known: after, limit)",
                    printable(other)
                )))
            }
        }
    }
    Ok(page)
}

/// Parses the filter of a `/v1/tail` request: `events` (comma-separated event-type globs)
/// and `sink`; anything else is a 400.
pub(super) fn tail_query(query: Option<&str>) -> Result<crate::activity::Filter, ApiError> {
    let mut filter = crate::activity::Filter::default();
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let value = decode_query_value(value).ok_or_else(|| {
            ApiError::bad_request(format!(
                "{}: `{}` is not percent-encoded UTF-8",
                printable(key),
                printable(value)
            ))
        })?;
        match key {
            "events" => filter.events.extend(
                value
                    .split(',')
                    .map(str::trim)
                    .filter(|glob| !glob.is_empty())
                    .map(str::to_owned),
            ),
            "sink" if !value.is_empty() => filter.sink = Some(value),
            "sink" => return Err(ApiError::bad_request("sink: give a sink's name")),
            other => {
                return Err(ApiError::bad_request(format!(
                    "unknown query parameter `{}` (known: events, sink)",
                    printable(other)
                )))
            }
        }
    }
    Ok(filter)
}

/// A query value with `%XX` escapes and `+` decoded; `None` when that is not UTF-8 or an
/// escape is cut short.
fn decode_query_value(value: &str) -> Option<String> {
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            byte => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use hyper::StatusCode;

    use super::*;

    #[test]
    fn routes() {
        let ok = |method: Method, path: &str| route(&method, path).unwrap();
        assert_eq!(ok(Method::GET, "/healthz"), Route::Healthz);
        assert_eq!(ok(Method::HEAD, "/readyz"), Route::Readyz);
        assert_eq!(ok(Method::GET, "/metrics"), Route::Metrics);
        assert_eq!(ok(Method::GET, "/v1/status"), Route::Status);
        assert_eq!(
            ok(Method::GET, "/v1/sinks/app/dead-letters"),
            Route::DeadLetters("app".into())
        );
        assert_eq!(
            ok(Method::GET, "/v1/sinks/app/dead-letters/42"),
            Route::DeadLetter("app".into(), 42)
        );
        assert_eq!(
            ok(Method::POST, "/v1/sinks/app/dead-letters/retry"),
            Route::RetryDeadLetters("app".into())
        );
        assert_eq!(
            ok(Method::POST, "/v1/sinks/app/dead-letters/drop"),
            Route::DropDeadLetters("app".into())
        );
        assert_eq!(
            ok(Method::POST, "/v1/sinks/app/replay"),
            Route::Replay("app".into())
        );
        assert_eq!(ok(Method::GET, "/v1/quarantine"), Route::Quarantine);
        assert_eq!(
            ok(Method::GET, "/v1/quarantine/7"),
            Route::QuarantineEntry(7)
        );
        assert_eq!(
            ok(Method::POST, "/v1/quarantine/drop"),
            Route::DropQuarantine
        );

        let err = |method: Method, path: &str| route(&method, path).unwrap_err();
        assert_eq!(err(Method::GET, "/").status, StatusCode::NOT_FOUND);
        assert_eq!(
            err(Method::GET, "/v1/sinks/app").status,
            StatusCode::NOT_FOUND
        );
        assert_eq!(
            err(Method::GET, "/webhooks/kirim").status,
            StatusCode::NOT_FOUND
        );
        let wrong = err(Method::POST, "/healthz");
        assert_eq!(wrong.status, StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(wrong.allow, Some("GET"));
        let wrong = err(Method::GET, "/v1/sinks/app/dead-letters/retry");
        assert_eq!(wrong.status, StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(wrong.allow, Some("POST"));
        let bad = err(Method::GET, "/v1/sinks/app/dead-letters/abc");
        assert_eq!(bad.status, StatusCode::BAD_REQUEST);
        assert!(bad.message.contains("`abc`"), "{bad:?}");
    }

    #[test]
    fn tail_queries() {
        assert_eq!(route(&Method::GET, "/v1/tail").unwrap(), Route::Tail);
        assert_eq!(
            tail_query(None).unwrap(),
            crate::activity::Filter::default()
        );
        let filter = tail_query(Some("events=message.%2A%2C%20contact.updated&sink=app")).unwrap();
        assert_eq!(filter.events, ["message.*", "contact.updated"]);
        assert_eq!(filter.sink.as_deref(), Some("app"));
        for bad in ["sink=", "events=%ZZ", "events=%C3", "events=%", "limit=2"] {
            let e = tail_query(Some(bad)).unwrap_err();
            assert_eq!(e.status, StatusCode::BAD_REQUEST, "{bad}");
        }
    }

    #[test]
    fn page_queries() {
        assert_eq!(
            page_query(None).unwrap(),
            PageQuery {
                after: 0,
                limit: DEFAULT_LIMIT
            }
        );
        assert_eq!(
            page_query(Some("after=5&limit=2")).unwrap(),
            PageQuery { after: 5, limit: 2 }
        );
        for bad in ["limit=0", "limit=1001", "after=x", "after=-1", "page=2"] {
            let e = page_query(Some(bad)).unwrap_err();
            assert_eq!(e.status, StatusCode::BAD_REQUEST, "{bad}");
        }
    }
}
