//! Drains the store into one sink, in seq order, and records the sink's progress durably.
//!
//! One task per sink: read the next events after the sink's cursor, deliver them, then move the
//! cursor (an fsync'd write through the store's group commit). An event is therefore delivered
//! at least once: a crash between delivery and cursor write delivers it again after restart,
//! never zero times. When there is nothing to read the task sleeps until the store commits new
//! events. A failing sink is retried with capped exponential back-off and blocks no one else.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::sinks::{Sink, SinkError};
use crate::store::Store;

/// Most events handed to a sink in one call.
const BATCH: usize = 512;
/// First and largest pause after a failure.
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(30);

/// Runs `sink` until `stop` is cancelled and every committed event has been delivered
/// (or until a failure stops progress after `stop`).
pub async fn run<S: Sink>(store: Store, mut sink: S, stop: CancellationToken) {
    let name = sink.name().to_owned();
    let mut committed = store.subscribe();
    let mut cursor = loop {
        match store.cursor(&name) {
            Ok(cursor) => break cursor,
            Err(e) => {
                tracing::error!(sink = %name, error = %e, "cannot read the sink's cursor");
                if pause(&stop, BACKOFF_MAX).await {
                    return;
                }
            }
        }
    };
    tracing::info!(sink = %name, cursor, "sink started");
    let mut backoff = BACKOFF_MIN;
    loop {
        committed.borrow_and_update();
        let events = match store.read_after(cursor, BATCH).await {
            Ok(events) => events,
            Err(e) => {
                tracing::error!(sink = %name, error = %e, "reading events failed");
                if pause(&stop, backoff).await {
                    return;
                }
                backoff = (backoff * 2).min(BACKOFF_MAX);
                continue;
            }
        };
        let Some(last) = events.last().map(|e| e.seq) else {
            if stop.is_cancelled() {
                tracing::info!(sink = %name, cursor, "sink drained");
                return;
            }
            tokio::select! {
                changed = committed.changed() => if changed.is_err() { return },
                _ = stop.cancelled() => {}
            }
            continue;
        };
        match sink.deliver(&events).await {
            Ok(()) => {
                backoff = BACKOFF_MIN;
                cursor = last;
                if let Err(e) = store.ack(&name, last).await {
                    // Delivered but not recorded: after a restart these are delivered again.
                    tracing::error!(sink = %name, seq = last, error = %e, "recording sink progress failed");
                }
            }
            Err(e) => {
                let kind = match e {
                    SinkError::Retryable(_) => "retryable",
                    SinkError::Permanent(_) => "permanent",
                };
                tracing::warn!(sink = %name, first_seq = events[0].seq, kind, error = %e, retry_in_ms = backoff.as_millis() as u64, "delivery failed; will retry");
                if pause(&stop, backoff).await {
                    return;
                }
                backoff = (backoff * 2).min(BACKOFF_MAX);
            }
        }
    }
}

/// Sleeps for `d`; returns true if `stop` was cancelled meanwhile (give up, events stay stored).
async fn pause(stop: &CancellationToken, d: Duration) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(d) => false,
        _ = stop.cancelled() => true,
    }
}
