//! `/healthz` and `/readyz`. Healthy means the process answers. Ready means the webhook
//! listener serves, no fault stops admissions (see [`crate::health`]) and the disk is not
//! nearly full, no shutdown is under way, and the store answers a write round-trip within
//! [`READY_TIMEOUT`]. The reason deliveries are refused is also shown by `/v1/status`. Nothing
//! here changes state.

use std::sync::atomic::Ordering;

use hyper::StatusCode;

use super::api::Readiness;
use super::response::{json, text, AdminResponse};
use super::{Admin, READY_TIMEOUT};

/// `/healthz`: 200 `ok` while the process runs.
pub(super) fn healthz() -> AdminResponse {
    text(StatusCode::OK, "text/plain; charset=utf-8", "ok\n")
}

impl Admin {
    /// `/readyz`: 200 when ready to take deliveries, else 503 with the reason.
    pub(super) async fn readyz(&self) -> AdminResponse {
        let not_ready = |reason: String| {
            json(
                StatusCode::SERVICE_UNAVAILABLE,
                &Readiness {
                    ready: false,
                    reason: Some(reason),
                },
            )
        };
        if let Some(refusing) = self.refusing() {
            return not_ready(refusing);
        }
        if self.shutdown.is_cancelled() {
            return not_ready("shutting down".into());
        }
        if !self.serving.load(Ordering::Acquire) {
            return not_ready("the webhook listener is not serving yet".into());
        }
        // A round trip through the engine (the embedded writer's empty batch, or a query).
        match tokio::time::timeout(READY_TIMEOUT, self.store.ping()).await {
            Err(_) => not_ready(format!("the store did not answer within {READY_TIMEOUT:?}")),
            Ok(Err(e)) => not_ready(format!("the store is not usable: {e}")),
            Ok(Ok(())) if self.shutdown.is_cancelled() => not_ready("shutting down".into()),
            Ok(Ok(())) => json(
                StatusCode::OK,
                &Readiness {
                    ready: true,
                    reason: None,
                },
            ),
        }
    }

    /// Why deliveries are refused right now (503), in words, if they are.
    pub(super) fn refusing(&self) -> Option<String> {
        if let Some(fault) = self.health.fault() {
            return Some(format!("not taking deliveries: {fault}"));
        }
        self.store.low_disk().map(|free| {
            format!(
                "disk nearly full: {} free, below store.min_free_bytes; deliveries get 503 \
                 until space is freed",
                crate::units::human_bytes(free)
            )
        })
    }
}
