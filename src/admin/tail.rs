//! `GET /v1/tail`: the live feed ([`crate::activity`]) as JSON lines, one object per line
//! (`application/x-ndjson`), for `kirimhook tail` or `curl -N ... | jq`.
//!
//! Each request becomes one viewer and one task that reads the feed, keeps the lines its
//! [`Filter`] passes, and hands them to the response body through a channel of
//! [`CHUNKS`] chunks (each at most [`LINES_PER_CHUNK`] lines, or about [`CHUNK_BYTES`]). A
//! client that stops reading fills that channel; the task then waits,
//! the feed moves on without it, and once it reads again it is told how many lines it lost.
//! So a stalled viewer holds back neither the receive path nor a sink. An empty line every
//! [`HEARTBEAT`] without a chunk shows that the daemon is there while nothing (or nothing the
//! filter keeps) happens (and lets a gone client
//! be noticed); the stream ends at shutdown.
//!
//! What it is not: the feed itself, or its filters (both in `activity`).

use std::time::Duration;

use bytes::Bytes;
use hyper::header::{HeaderValue, CACHE_CONTROL, CONTENT_TYPE};
use hyper::{Response, StatusCode};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::response::{AdminBody, AdminResponse, ApiError};
use super::Admin;
use crate::activity::{Filter, Viewer, MAX_VIEWERS};

/// Chunks waiting for a client to read them; past that, the viewer falls behind.
const CHUNKS: usize = 8;
/// Most lines written in one chunk.
const LINES_PER_CHUNK: usize = 256;
/// A chunk takes no more lines once it is this large.
const CHUNK_BYTES: usize = 64 * 1024;
/// How often an idle stream carries an empty line.
pub const HEARTBEAT: Duration = Duration::from_secs(15);

impl Admin {
    /// Starts one viewer of the feed with `filter`, answering with its stream; 503 when
    /// [`MAX_VIEWERS`] already watch.
    pub(super) fn tail(&self, filter: Filter) -> Result<AdminResponse, ApiError> {
        let viewer = self.metrics.activity().watch().ok_or_else(|| {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "too_many_viewers",
                format!("{MAX_VIEWERS} viewers already watch this daemon; stop one first"),
            )
        })?;
        let (chunks, body) = mpsc::channel(CHUNKS);
        tokio::spawn(feed(viewer, filter, chunks, self.shutdown.clone()));
        let mut response = Response::new(AdminBody::Feed(body));
        *response.status_mut() = StatusCode::OK;
        let headers = response.headers_mut();
        headers.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("application/x-ndjson"),
        );
        headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
        Ok(response)
    }
}

/// Reads `viewer` into `chunks` until the client goes or `shutdown` is cancelled.
async fn feed(
    mut viewer: Viewer,
    filter: Filter,
    chunks: mpsc::Sender<Bytes>,
    shutdown: CancellationToken,
) {
    // Counted from the last chunk sent, not the last line seen: lines the filter drops do not
    // keep the stream silent.
    let mut last_sent = tokio::time::Instant::now();
    loop {
        let first = tokio::select! {
            line = viewer.next() => Some(line),
            () = tokio::time::sleep_until(last_sent + HEARTBEAT) => None,
            () = chunks.closed() => return,
            () = shutdown.cancelled() => return,
        };
        let mut chunk = Vec::new();
        match first {
            None => chunk.push(b'\n'),
            Some(line) => {
                let mut next = Some(line);
                let mut taken = 0;
                while let Some(line) = next {
                    if filter.passes(&line.line.what) {
                        chunk.extend_from_slice(line.json());
                        chunk.push(b'\n');
                    }
                    taken += 1;
                    next = if taken < LINES_PER_CHUNK && chunk.len() < CHUNK_BYTES {
                        viewer.try_next()
                    } else {
                        None
                    };
                }
                if chunk.is_empty() {
                    continue;
                }
            }
        }
        tokio::select! {
            sent = chunks.send(Bytes::from(chunk)) => if sent.is_err() { return },
            () = shutdown.cancelled() => return,
        }
        last_sent = tokio::time::Instant::now();
    }
}
