//! Acknowledgements that record events in the ledger: the one place where an
//! [`Outcome`] becomes a ledger status, used by live triggers, replays and redrives.

use std::sync::Arc;

use super::{Acknowledge, Event, Outcome};
use crate::state::{Ledger, ObjectStatus};

/// Where the ledger records an event: the "bucket" (a URL, or `schedule:`), the key
/// and the version that was processed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LedgerEntry {
    pub url: String,
    pub key: String,
    pub version: String,
}

impl Outcome {
    /// The ledger status of a finished event; None while it must be delivered again
    /// (it stays *pending*, so the next start redelivers it).
    pub fn ledger_status(self) -> Option<ObjectStatus> {
        match self {
            Outcome::Done => Some(ObjectStatus::Done),
            Outcome::DeadLettered => Some(ObjectStatus::DeadLettered),
            Outcome::Abandoned => None,
        }
    }
}

/// Called once an event's acknowledgement is recorded (a trigger lets the key go, or
/// the next tick through).
pub type Release = Box<dyn Fn(&Event) + Send + Sync>;

/// Records each finished event's [`LedgerEntry`](super::Work::ledger_entry) with its
/// outcome, then calls `release`.
pub struct LedgerAck {
    ledger: Ledger,
    release: Option<Release>,
}

impl LedgerAck {
    pub fn new(ledger: Ledger, release: Option<Release>) -> Arc<Self> {
        Arc::new(Self { ledger, release })
    }
}

#[async_trait::async_trait]
impl Acknowledge for LedgerAck {
    async fn ack(&self, event: &Event, outcome: Outcome) {
        if let (Some(status), Some(entry)) = (outcome.ledger_status(), event.work.ledger_entry()) {
            let recorded =
                self.ledger.record_object(&event.pipeline, &entry.url, &entry.key, &entry.version, status).await;
            if let Err(e) = recorded {
                // Not recorded means processed again after a restart: safe, outputs are idempotent.
                tracing::error!(pipeline = %event.pipeline, key = %entry.key, error = %e, "cannot record in the ledger");
            }
        }
        if let Some(release) = &self.release {
            release(event);
        }
    }
}
