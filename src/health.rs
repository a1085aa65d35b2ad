//! Whether the daemon may still take deliveries: the one place a fault that no retry can heal
//! is recorded (the stdout consumer has gone, the store vanished), so that the receive path
//! answers 503 + `Retry-After` instead of 200, `/readyz` says not ready, and `app` shuts down
//! and exits non-zero for the service manager to restart the pipeline.
//!
//! The first fault wins and is logged once, at error level; later ones are only debug-logged.
//! A low-disk refusal is not a fault here: it heals by itself, and the store reports it
//! ([`crate::store::Store::low_disk`]).

use std::sync::Arc;

use tokio::sync::watch;

/// A fault that no retry can heal while this process runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// A sink can never deliver again in this process (stdout's reader has exited).
    SinkGone {
        /// The sink's name.
        sink: String,
        /// What happened.
        message: String,
    },
    /// The store cannot take writes any more (its directory vanished, a write failed).
    StoreFailed(String),
}

impl std::fmt::Display for Fault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Fault::SinkGone { sink, message } => write!(f, "sink {sink}: {message}"),
            Fault::StoreFailed(message) => write!(f, "store: {message}"),
        }
    }
}

/// The daemon's health. Cheap to clone; every clone sees the same state.
#[derive(Debug, Clone)]
pub struct Health {
    fault: Arc<watch::Sender<Option<Fault>>>,
}

impl Default for Health {
    fn default() -> Self {
        Health::new()
    }
}

impl Health {
    /// A healthy daemon.
    pub fn new() -> Health {
        Health {
            fault: Arc::new(watch::Sender::new(None)),
        }
    }

    /// Records `fault` (the first one wins) and logs it once.
    pub fn fail(&self, fault: Fault) {
        let first = self.fault.send_if_modified(|current| {
            if current.is_some() {
                return false;
            }
            *current = Some(fault.clone());
            true
        });
        if first {
            tracing::error!(fault = %fault, "deliveries are refused from now on (503); shutting down so the service manager restarts kirimhook");
        } else {
            tracing::debug!(fault = %fault, "another fault after the first");
        }
    }

    /// The recorded fault, if any.
    pub fn fault(&self) -> Option<Fault> {
        self.fault.borrow().clone()
    }

    /// Returns once a fault is recorded.
    pub async fn failed(&self) -> Fault {
        let mut rx = self.fault.subscribe();
        loop {
            if let Some(fault) = rx.borrow_and_update().clone() {
                return fault;
            }
            // The sender lives in `self`, so this cannot end while we wait.
            if rx.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_first_fault_wins_and_wakes_waiters() {
        let health = Health::new();
        assert_eq!(health.fault(), None);
        let waiter = tokio::spawn({
            let health = health.clone();
            async move { health.failed().await }
        });
        // The waiter is waiting before the fault is recorded.
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        let gone = Fault::SinkGone {
            sink: "stdout".into(),
            message: "stdout consumer has gone".into(),
        };
        health.fail(gone.clone());
        health.fail(Fault::StoreFailed("later".into()));
        assert_eq!(health.fault(), Some(gone.clone()));
        assert_eq!(waiter.await.unwrap(), gone);
        assert_eq!(health.failed().await, gone, "an already recorded fault");
    }
}
