//! The contract between triggers and the executor.
//!
//! ```text
//! trigger ──Event { work, acker }──▶ EventSink (bounded) ──▶ executor
//!    ▲                                                         │ work.run(&dyn Runner)
//!    └──────────── acker.ack(event, Outcome) ◀─────────────────┘
//! ```
//! A trigger owns what its events mean ([`Work`]: the item, the Lambda-shaped event,
//! the ledger entry, the dead-letter form); the executor owns how steps run (the
//! [`Runner`] it implements: permits, retries, fan-out, dead letters). Neither imports
//! the other, so a new trigger needs nothing from the executor but this module.

mod ack;
pub mod dead_letter;
mod outputs;
mod sink;

use std::sync::Arc;
use std::time::{Instant, SystemTime};

use weir_functions::{FunctionError, Item, LazyEvent, Stores};

pub use ack::{LedgerAck, LedgerEntry, Release};
pub use dead_letter::{DeadLetter, DeadLetterStore};
pub use outputs::{Kept, Outputs, MAX_KEPT_BYTES};
pub use sink::{EventSink, QueueStats, SinkClosed};

/// Something that happened, to be run through a pipeline.
pub struct Event {
    /// Unique per delivery; the run's id in the ledger.
    pub id: String,
    pub pipeline: Arc<str>,
    /// What the event is about, as its trigger kind understands it.
    pub work: Arc<dyn Work>,
    pub received_at: SystemTime,
    /// Who to tell when the event is finished.
    pub acker: Arc<dyn Acknowledge>,
}

impl Event {
    pub fn new(pipeline: Arc<str>, work: Arc<dyn Work>, acker: Arc<dyn Acknowledge>) -> Self {
        Self { id: uuid::Uuid::now_v7().to_string(), pipeline, work, received_at: SystemTime::now(), acker }
    }
}

/// How an event ended, as far as its trigger is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Every step succeeded.
    Done,
    /// It failed and its dead-letter record is safely written: the trigger may move on.
    DeadLettered,
    /// Not finished (shutdown, or even the dead letter could not be written): the
    /// trigger must deliver it again later.
    Abandoned,
}

/// The trigger side of an acknowledgement. Called exactly once per event, after all
/// its sub-steps finished.
#[async_trait::async_trait]
pub trait Acknowledge: Send + Sync {
    async fn ack(&self, event: &Event, outcome: Outcome);

    /// For events made of several parts (a Kafka chunk's records): part `index`
    /// finished (done, or its dead letter written). Called before `ack`, as parts finish.
    fn ack_part(&self, _index: usize) {}

    /// False when the trigger no longer wants the event run (its partition was
    /// revoked while it waited in the queue): the executor skips it.
    fn wanted(&self) -> bool {
        true
    }
}

/// An event nobody is waiting for (a redrive, a test).
pub struct NoAck;

#[async_trait::async_trait]
impl Acknowledge for NoAck {
    async fn ack(&self, _event: &Event, _outcome: Outcome) {}
}

/// What an event is about, owned by the trigger kind that made it.
#[async_trait::async_trait]
pub trait Work: Send + Sync + 'static {
    /// A short description for log lines and `weir dlq list` (a key, a tick, a record).
    fn describe(&self) -> String;

    /// The event as its dead-letter record keeps it: a JSON object with a `type`, which
    /// the trigger kind's [`crate::trigger::TriggerSpec::revive`] turns back into work.
    fn record(&self) -> serde_json::Value;

    /// Where the ledger records this event once finished, if anywhere.
    fn ledger_entry(&self) -> Option<LedgerEntry> {
        None
    }

    /// Events too small to log each invocation of (Kafka records): their runs are
    /// recorded once, when they end, and their invocations log at debug level.
    fn quiet(&self) -> bool {
        false
    }

    /// Runs the event through the pipeline's steps.
    async fn run(&self, runner: &dyn Runner, event: &Event) -> Ran;
}

/// How running an event went.
pub enum Ran {
    /// Every step succeeded, after this many invocations.
    Done(usize),
    /// A step failed for good: the executor dead-letters the event.
    Failed(StepFailure),
    /// The work finished its parts one by one and dead-lettered the failed ones itself
    /// (a Kafka chunk): this is the whole event's outcome.
    Settled(Settled),
}

/// The outcome of an event whose parts finished on their own.
pub struct Settled {
    pub outcome: Outcome,
    /// What the run's ledger row says went wrong, if anything did.
    pub error: Option<String>,
    pub parts_done: u64,
    pub parts_dead_lettered: u64,
}

/// Why an event failed: the step, the error, how often it was tried.
#[derive(Debug)]
pub struct StepFailure {
    pub step: String,
    pub error: FunctionError,
    pub attempts: u32,
}

impl StepFailure {
    /// A failure before any step: the input itself could not be read or parsed.
    pub fn load(error: FunctionError) -> Self {
        Self { step: "load".into(), error, attempts: 1 }
    }
}

/// What every invocation of one event shares.
pub struct Scope {
    pub started: Instant,
    /// The event in Lambda's shape, built only if a function asks (`ctx.event`).
    pub trigger_event: Option<LazyEvent>,
    /// Log invocations at debug level (see [`Work::quiet`]).
    pub quiet: bool,
    /// Where the outputs of the last steps go when someone waits for them; None: they
    /// are dropped as they come.
    pub outputs: Option<Arc<Outputs>>,
}

impl Scope {
    pub fn new(trigger_event: Option<LazyEvent>, quiet: bool) -> Self {
        Self { started: Instant::now(), trigger_event, quiet, outputs: None }
    }

    /// Keeps the last steps' outputs in `outputs`.
    pub fn keeping(mut self, outputs: Arc<Outputs>) -> Self {
        self.outputs = Some(outputs);
        self
    }
}

/// Makes an item afresh for a retry (a Kafka record's item, from the record), so the
/// first try need not keep a copy.
pub type Rebuild<'a> = &'a (dyn Fn() -> Option<Item> + Send + Sync);

/// What the executor offers the work it runs: the pipeline's steps, with its permits,
/// timeouts, retries and dead letters.
#[async_trait::async_trait]
pub trait Runner: Send + Sync {
    fn pipeline(&self) -> &Arc<str>;
    fn stores(&self) -> &Stores;
    /// The pipeline's `limits.concurrency`.
    fn concurrency(&self) -> usize;
    /// The pipeline's `limits.max_input_bytes`: the largest event a source may hand
    /// over (objects are checked by [`Runner::load_object`], records by their trigger).
    fn max_input_bytes(&self) -> u64;

    /// Runs the step graph from the event's first item; returns the invocations made.
    async fn run(&self, root: Item, again: Option<Rebuild<'_>>, scope: &Scope) -> Result<usize, StepFailure>;

    /// An object as the event's first item: refused from its `size` when over
    /// `max_input_bytes`, else read as a bounded stream, retried per the pipeline's
    /// `[retry]` like a step. The one way events read the objects they are about.
    async fn load_object(&self, url: &str, key: &str, size: Option<u64>, scope: &Scope) -> Result<Item, StepFailure>;

    /// Hands `items` to the first step as one collection (a batch), then runs what it
    /// returned through the rest of the graph. Items the batch step reports as failed
    /// (a partial batch failure) are retried alone, per the policy.
    async fn run_batch(&self, items: Vec<Item>, scope: &Scope) -> BatchRan;

    /// Writes the dead letter of `work` (or of one of its parts); returns where it went.
    async fn dead_letter(
        &self,
        id: &str,
        work: &dyn Work,
        received_at: SystemTime,
        failure: &StepFailure,
    ) -> Result<String, FunctionError>;
}

/// How a batch went: the items that failed for good (by position), and how the steps
/// after the batch step went for the rest.
pub struct BatchRan {
    pub failed: Vec<(usize, StepFailure)>,
    pub after: Result<usize, StepFailure>,
}

/// A JSON document as an event: input that never became a trigger's event (a
/// malformed notification body) is dead-lettered as one, and a redrive runs it as a
/// JSON item.
pub struct JsonWork {
    pub value: serde_json::Value,
}

#[async_trait::async_trait]
impl Work for JsonWork {
    fn describe(&self) -> String {
        "<json>".into()
    }

    fn record(&self) -> serde_json::Value {
        serde_json::json!({ "type": "json", "value": self.value })
    }

    async fn run(&self, runner: &dyn Runner, _event: &Event) -> Ran {
        let item = Item::new(weir_functions::Payload::Json(self.value.clone()), Default::default());
        match runner.run(item, None, &Scope::new(None, false)).await {
            Ok(n) => Ran::Done(n),
            Err(failure) => Ran::Failed(failure),
        }
    }
}

impl JsonWork {
    /// The work a `{"type": "json", …}` dead-letter record stands for.
    pub fn revive(record: &serde_json::Value) -> Option<Arc<dyn Work>> {
        (record.get("type")?.as_str()? == "json")
            .then(|| Arc::new(JsonWork { value: record.get("value").cloned().unwrap_or_default() }) as Arc<dyn Work>)
    }
}

impl From<Result<usize, StepFailure>> for Ran {
    fn from(result: Result<usize, StepFailure>) -> Self {
        match result {
            Ok(n) => Ran::Done(n),
            Err(failure) => Ran::Failed(failure),
        }
    }
}
