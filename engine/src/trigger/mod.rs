//! Triggers turn the outside world into [`Event`](crate::event::Event)s, one folder per
//! kind behind one contract ([`contract`]), registered in one list ([`Triggers`]):
//!
//! * [`object_store`]: objects appearing in a bucket (watch, poll, notifications);
//! * [`cron`]: a schedule's ticks, each with its logical time;
//! * [`kafka`]: records in a consumer group, committed after success;
//! * [`http`]: requests to `weir run`'s address, answered with the last step's output
//!   or accepted for later.
//!
//! Each kind owns its `[trigger]` table, its events' item and Lambda-shaped event, how
//! they are acknowledged (a ledger entry, an offset commit), how `weir replay` reads
//! its history and how `weir dlq redrive` revives its dead letters. The executor knows
//! none of them.

pub mod contract;
pub mod cron;
pub mod http;
pub mod kafka;
pub mod notification;
pub mod object_store;
mod registry;

pub use contract::{
    Delivery, Endpoint, History, HistoryContext, HistoryItem, Inbox, InboxError, PipelineFacts, Trigger,
    TriggerContext, TriggerKind, TriggerSpec, Window,
};
pub use registry::Triggers;

use std::sync::Arc;

use crate::event::{JsonWork, Work};

/// The work a dead-letter record stands for: the trigger kind's own events, or the
/// JSON of an input that never became one (a malformed notification).
pub fn revive(spec: &dyn TriggerSpec, record: &serde_json::Value) -> Result<Arc<dyn Work>, String> {
    if let Some(work) = JsonWork::revive(record) {
        return Ok(work);
    }
    spec.revive(record)
}
