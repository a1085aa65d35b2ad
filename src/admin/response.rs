//! How the admin listener answers: JSON and plain-text responses, and [`ApiError`], the one
//! error every failure on the request path becomes (`{"error": code, "message": text}`, with
//! `Allow` on a 405). Also [`printable`], for request text quoted in a message. Nothing here
//! knows the routes or the store beyond turning a store error into a 503.

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{HeaderValue, ALLOW, CONTENT_TYPE};
use hyper::{Response, StatusCode};
use serde::Serialize;

use super::api::ErrorBody;
use crate::store;

/// The response type of every admin request.
pub type AdminResponse = Response<AdminBody>;

/// An admin answer's body: whole (JSON, text), or a feed of chunks that ends when its sender
/// goes (`/v1/tail`).
#[derive(Debug)]
pub enum AdminBody {
    /// The whole answer, with its length.
    Whole(Full<Bytes>),
    /// Chunks as they come.
    Feed(tokio::sync::mpsc::Receiver<Bytes>),
}

impl From<Full<Bytes>> for AdminBody {
    fn from(body: Full<Bytes>) -> AdminBody {
        AdminBody::Whole(body)
    }
}

impl hyper::body::Body for AdminBody {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, Self::Error>>> {
        match self.get_mut() {
            AdminBody::Whole(body) => std::pin::Pin::new(body).poll_frame(cx),
            AdminBody::Feed(chunks) => chunks
                .poll_recv(cx)
                .map(|chunk| chunk.map(|bytes| Ok(hyper::body::Frame::data(bytes)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            AdminBody::Whole(body) => body.is_end_stream(),
            AdminBody::Feed(_) => false,
        }
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        match self {
            AdminBody::Whole(body) => body.size_hint(),
            AdminBody::Feed(_) => hyper::body::SizeHint::default(),
        }
    }
}

/// An error answer before or while handling a route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct ApiError {
    pub(super) status: StatusCode,
    pub(super) code: &'static str,
    pub(super) message: String,
    pub(super) allow: Option<&'static str>,
}

impl ApiError {
    /// An error with this status, stable code and message.
    pub(super) fn new(
        status: StatusCode,
        code: &'static str,
        message: impl Into<String>,
    ) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
            allow: None,
        }
    }

    /// A 400 `bad_request`.
    pub(super) fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    /// A 404 `not_found`.
    pub(super) fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    /// A 405 naming the method the path takes (also in `Allow`).
    pub(super) fn method(allow: &'static str) -> ApiError {
        ApiError {
            allow: Some(allow),
            ..ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                format!("this path takes {allow}"),
            )
        }
    }

    /// A 503 `store_unavailable`: the store did not answer.
    pub(super) fn store(error: &store::StoreError) -> ApiError {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "store_unavailable",
            format!("the store did not answer: {error}"),
        )
    }

    /// The error as a JSON answer.
    pub(super) fn response(&self) -> AdminResponse {
        let mut response = json(
            self.status,
            &ErrorBody {
                error: self.code.to_owned(),
                message: self.message.clone(),
            },
        );
        if let Some(allow) = self.allow {
            response
                .headers_mut()
                .insert(ALLOW, HeaderValue::from_static(allow));
        }
        response
    }
}

/// A pretty-printed JSON answer with this status.
pub(super) fn json<T: Serialize>(status: StatusCode, value: &T) -> AdminResponse {
    let mut body = serde_json::to_vec_pretty(value).unwrap_or_else(|e| {
        format!("{{\"error\":\"internal\",\"message\":\"cannot encode the answer: {e}\"}}")
            .into_bytes()
    });
    body.push(b'\n');
    let mut response = Response::new(Full::new(Bytes::from(body)).into());
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

/// A text answer with this status and content type.
pub(super) fn text(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> AdminResponse {
    let mut response = Response::new(Full::new(body.into()).into());
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

/// Control characters replaced, for text that came from a request and goes into a message.
pub(super) fn printable(text: &str) -> String {
    let mut out: String = text
        .chars()
        .take(200)
        .map(|c| if c.is_control() { '\u{FFFD}' } else { c })
        .collect();
    if text.chars().count() > 200 {
        out.push('…');
    }
    out
}
