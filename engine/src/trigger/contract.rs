//! The trigger contract, beside the function contract: what a kind of trigger
//! implements to turn the outside world into events.
//!
//! ```text
//! TriggerKind (typed)  [trigger] as written ──serde──▶ Raw ──validate──▶ Config: TriggerSpec
//! TriggerSpec (object-safe)  checks, build ──▶ Trigger (running) ──▶ Events (Work + Acknowledge)
//!                            revive (dead letters), history (weir replay), dead-letter stores
//! ```
//! A kind is registered in [`super::Triggers`] (the built-ins in `Triggers::builtin`,
//! yours with `register`); the pipeline loader, the engine, `weir replay` and
//! `weir dlq` reach it only through [`TriggerSpec`].

use std::ops::Range;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;
use weir_functions::Stores;

use crate::auth::PushAuth;
use crate::clock::Clock;
use crate::config::diagnostics::Reporter;
use crate::error::EngineError;
use crate::event::{DeadLetterStore, EventSink, LedgerEntry, Work};
use crate::state::Ledger;

/// One kind of trigger, typed: `kind = NAME` in a `[trigger]` table.
pub trait TriggerKind: Send + Sync + 'static {
    /// What `kind = "…"` says.
    const NAME: &'static str;
    /// The table as written, less `kind` (serde with `deny_unknown_fields`; `Spanned`
    /// fields give errors their file:line:column).
    type Raw: DeserializeOwned;
    /// The table once valid.
    type Config: TriggerSpec;

    /// Checks what serde cannot (ranges, combinations), reporting every problem.
    fn validate(raw: Self::Raw, report: &mut Reporter<'_>) -> Option<Self::Config>;

    /// A dead-letter URL scheme this kind offers (`kafka://`) and what using it without
    /// this kind of trigger means, for `weir validate`.
    fn dead_letter_scheme() -> Option<(&'static str, &'static str)> {
        None
    }
}

/// A validated `[trigger]` section: everything the engine asks of a trigger kind.
pub trait TriggerSpec: Send + Sync + 'static {
    /// The kind's name.
    fn kind(&self) -> &'static str;

    /// Whether an object written to `url` (None: the event's own bucket) under `key`
    /// would fire this trigger, so that `weir validate` refuses self-triggering loops.
    fn watches(&self, _url: Option<&str>, _key: &str) -> bool {
        false
    }

    /// Who may push events to this trigger through `weir run`'s address, if it takes
    /// pushed events at all: an open door (`"none"`) is refused on any address but
    /// loopback, by `weir validate --listen` and by `weir run`.
    fn push_auth(&self) -> Option<&PushAuth> {
        None
    }

    /// Checks that need the rest of the pipeline (steps, `[retry]`).
    fn check(&self, _pipeline: &PipelineFacts<'_>, _report: &mut Reporter<'_>) {}

    /// The running trigger.
    fn build(&self, ctx: TriggerContext) -> Arc<dyn Trigger>;

    /// Whether the source answers (`weir run`'s start-up health check): the bucket is
    /// there and readable, the brokers answer and the topics exist. One short line.
    fn health<'a>(&'a self, _stores: &'a Stores) -> futures::future::BoxFuture<'a, Result<(), String>> {
        Box::pin(async { Ok(()) })
    }

    /// Tells `stores` how to reach what this trigger reads (its bucket's endpoint and
    /// credentials), once a pipeline is loaded: steps, replays and redrives then reach
    /// the trigger's source as the running trigger does.
    fn register_stores(&self, _stores: &Stores) {}

    /// Rebuilds an event from its dead-letter record ([`Work::record`]) for
    /// `weir dlq redrive`. A record this kind did not write is refused.
    fn revive(&self, record: &serde_json::Value) -> Result<Arc<dyn Work>, String>;

    /// What `weir replay` runs: the trigger's history in `window`.
    fn history(&self, _ctx: &HistoryContext, _window: &Window) -> Result<Box<dyn History>, EngineError> {
        Err(EngineError::fatal(format!("weir replay does not support {} pipelines yet", self.kind())))
    }

    /// Whether a replay runs one event at a time unless told otherwise (ticks, in order).
    fn replays_in_order(&self) -> bool {
        false
    }

    /// The dead-letter store behind a URL of this kind's scheme (see
    /// [`TriggerKind::dead_letter_scheme`]); None for URLs it does not know.
    fn dead_letters(&self, _url: &str, _ledger: &Ledger) -> Option<Result<Arc<dyn DeadLetterStore>, EngineError>> {
        None
    }
}

/// What [`TriggerSpec::check`] may look at, with the positions to report at.
pub struct PipelineFacts<'a> {
    /// The `[trigger]` table.
    pub trigger_span: Range<usize>,
    /// Steps that take the event's own item.
    pub first_steps: usize,
    /// `[retry] dead_letter`, if set.
    pub dead_letter: Option<(&'a str, Range<usize>)>,
}

/// What a trigger needs from the engine.
#[derive(Clone)]
pub struct TriggerContext {
    pub pipeline: Arc<str>,
    pub ledger: Ledger,
    pub stores: Stores,
    /// Wall-clock time for schedules (a manual clock in tests).
    pub clock: Arc<dyn Clock>,
}

/// A running source of events for one pipeline.
#[async_trait::async_trait]
pub trait Trigger: Send + Sync {
    /// Produces events until `shutdown` is cancelled or the sink closes. A transient
    /// error (a store briefly unreachable) makes the engine call `run` again after a
    /// backoff; a fatal one stops the engine with that one line.
    async fn run(self: Arc<Self>, sink: EventSink, shutdown: CancellationToken) -> Result<(), EngineError>;

    /// Where pushed events (bucket notifications) for this trigger are delivered, if it
    /// takes any. Served by `weir run` at `POST /v1/notifications/{pipeline}`.
    fn inbox(self: Arc<Self>) -> Option<Arc<dyn Inbox>> {
        None
    }

    /// Where requests this trigger answers itself (its events *are* HTTP requests) are
    /// delivered, if any. Served by `weir run` at `/v1/invoke/{pipeline}` and the
    /// endpoint's own path.
    fn endpoint(self: Arc<Self>) -> Option<Arc<dyn Endpoint>> {
        None
    }
}

/// A trigger that answers HTTP requests: it owns everything about them (auth, limits,
/// what a response says); `weir run`'s server only routes to it.
#[async_trait::async_trait]
pub trait Endpoint: Send + Sync {
    /// Who may call: `weir run` refuses an open endpoint on a non-loopback address.
    fn auth(&self) -> &PushAuth;

    /// A path of its own it is served at too (`/thumbnail`), besides `/v1/invoke/{pipeline}`.
    fn path(&self) -> Option<&str> {
        None
    }

    /// Answers one request.
    async fn call(&self, request: axum::extract::Request) -> axum::response::Response;

    /// How event `id` it accepted is going (`GET /v1/events/{id}`), asked with the
    /// caller's headers (the same credentials as a call); None when it is not its own.
    async fn event(&self, id: &str, headers: &axum::http::HeaderMap) -> Option<axum::response::Response>;
}

/// A trigger's door for events pushed to it over HTTP.
#[async_trait::async_trait]
pub trait Inbox: Send + Sync {
    /// Who may push (checked before the body is read).
    fn auth(&self) -> &PushAuth;

    /// Takes one request body. Returns once its events are durably accepted (recorded
    /// and queued), so the sender may forget them.
    async fn deliver(&self, body: &[u8]) -> Result<Delivery, InboxError>;
}

/// What became of a delivered body.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Delivery {
    /// Events queued for processing.
    pub queued: usize,
    /// Entries not for this pipeline: other buckets, filtered keys, removals not asked
    /// for, objects already processed in this version or gone.
    pub ignored: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum InboxError {
    /// The body is not something this trigger understands: the sender should not retry.
    #[error("{0}")]
    Malformed(String),
    /// Not accepting now (starting, shutting down): retry later.
    #[error("{0}")]
    Unavailable(String),
    /// Accepting failed (ledger, store): retry later.
    #[error("{0}")]
    Failed(String),
}

/// What to replay. Stored with the replay so `--resume` continues the same one.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Window {
    /// Objects modified (ticks scheduled) at or after this time.
    pub since: Option<DateTime<Utc>>,
    /// … and before this one. Ticks default to now.
    pub until: Option<DateTime<Utc>>,
    /// Only keys under this prefix (within the trigger's prefix).
    pub prefix: Option<String>,
    /// Reprocess items the ledger records as done.
    pub force: bool,
}

/// What a history is read with.
pub struct HistoryContext {
    pub stores: Stores,
    pub now: DateTime<Utc>,
}

/// A trigger's history, enumerated in bounded chunks for `weir replay`.
#[async_trait::async_trait]
pub trait History: Send {
    /// The next chunk, or None at the end.
    async fn next_chunk(&mut self) -> Result<Option<Vec<HistoryItem>>, EngineError>;
}

/// One thing to replay: its ledger entry and the work to run it as.
pub struct HistoryItem {
    pub entry: LedgerEntry,
    pub work: Arc<dyn Work>,
}
