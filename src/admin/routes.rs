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
