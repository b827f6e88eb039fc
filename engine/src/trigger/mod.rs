//! Triggers turn the outside world into [`Event`]s.
//!
//! One trigger per file, each implementing [`Trigger`]: it pushes events into a
//! bounded [`EventSink`] (waiting when the executor is busy — backpressure) and is told
//! through [`Acknowledge`] when an event is finished, so it can commit (record the key,
//! commit the offset) only then.

pub mod cron;
pub mod kafka;
pub mod notification;
pub mod object_store;

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use toml::de::DeValue;

use crate::clock::Clock;
use crate::config::{section, Reporter, Value};
use crate::state::Ledger;
use weir_functions::Stores;

/// Something that happened, to be run through a pipeline.
pub struct Event {
    /// Unique per delivery; the run's id in the ledger.
    pub id: String,
    pub pipeline: Arc<str>,
    pub source: EventSource,
    pub received_at: SystemTime,
    /// Who to tell when the event is finished.
    pub acker: Arc<dyn Acknowledge>,
}

/// What the event is about. Serialized into dead-letter records, so a redrive can
/// rebuild the event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum EventSource {
    /// An object appeared or changed in a bucket.
    Object {
        url: String,
        key: String,
        size: u64,
        /// ETag or equivalent: a changed object has a new version and is processed again.
        version: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        last_modified: Option<chrono::DateTime<chrono::Utc>>,
    },
    /// An object was deleted (only for pipelines that ask for removals).
    ObjectRemoved { url: String, key: String },
    /// A schedule's tick. `time` is the logical time: the tick it stands for, however
    /// late it runs.
    Schedule { time: chrono::DateTime<chrono::Utc>, schedule: String },
    /// A Kafka record (a dead letter's, or one being redriven).
    Kafka { record: kafka::Record },
    /// Consecutive records of one partition, delivered together ([`kafka::chunk`]);
    /// each finishes, and is dead-lettered, on its own.
    KafkaChunk { records: Arc<[kafka::Record]> },
    /// A JSON document (HTTP request body, redriven item…).
    Json { value: serde_json::Value },
}

impl EventSource {
    /// A short description for log lines.
    pub fn describe(&self) -> String {
        match self {
            EventSource::Object { key, .. } => key.clone(),
            EventSource::ObjectRemoved { key, .. } => format!("{key} (removed)"),
            EventSource::Schedule { time, .. } => format!("tick {}", cron::tick_key(*time)),
            EventSource::Kafka { record } => record.name(),
            EventSource::KafkaChunk { records } => match (records.first(), records.last()) {
                (Some(first), Some(last)) if records.len() > 1 => format!("{}..={}", first.name(), last.offset),
                (Some(first), _) => first.name(),
                _ => "<no records>".into(),
            },
            EventSource::Json { .. } => "<json>".into(),
        }
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

    /// For events carrying several records (a Kafka chunk): record `index` finished
    /// (done, or its dead letter written). Called before `ack`, as records finish.
    fn ack_record(&self, _index: usize) {}

    /// False when the trigger no longer wants the event run (its partition was
    /// revoked while it waited in the queue): the executor skips it.
    fn wanted(&self) -> bool {
        true
    }
}

/// Counters about the trigger → executor queue, for tests and logs.
#[derive(Debug, Default)]
pub struct QueueStats {
    /// Most events ever waiting in the queue at once.
    pub high_water: AtomicUsize,
    pub submitted: AtomicU64,
    /// Records a trigger took from its source and holds, not yet queued (Kafka: the
    /// records waiting behind a partition's chunk in flight): the most ever at once.
    pub held_high_water: AtomicUsize,
    /// How often the trigger paused its source (Kafka partitions) because the
    /// executor was full or too much was held.
    pub pauses: AtomicU64,
    /// How often records already fetched were let go, to be fetched again later,
    /// because a partition held all it may (Kafka).
    pub refetches: AtomicU64,
    /// Cancelled once the executor has stopped and finished (or abandoned) its
    /// in-flight events: no acknowledgement comes after it.
    pub drained: CancellationToken,
}

/// The bounded queue's sending side. `send` waits while the queue is full.
#[derive(Clone)]
pub struct EventSink {
    tx: mpsc::Sender<Event>,
    stats: Arc<QueueStats>,
}

/// The executor is gone (shutting down).
#[derive(Debug, thiserror::Error)]
#[error("the executor has stopped accepting events")]
pub struct SinkClosed;

impl EventSink {
    pub fn new(capacity: usize) -> (Self, mpsc::Receiver<Event>, Arc<QueueStats>) {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        let stats = Arc::new(QueueStats::default());
        (Self { tx, stats: stats.clone() }, rx, stats)
    }

    pub async fn send(&self, event: Event) -> Result<(), SinkClosed> {
        self.tx.send(event).await.map_err(|_| SinkClosed)?;
        self.sent();
        Ok(())
    }

    /// Whether `try_send` would find room now. Reliable for a queue with one sender
    /// (a Kafka trigger's consumer thread).
    pub fn has_room(&self) -> bool {
        self.tx.capacity() > 0
    }

    /// Queues `event` without waiting (for triggers that run on their own thread).
    pub fn try_send(&self, event: Event) -> Result<(), Box<mpsc::error::TrySendError<Event>>> {
        self.tx.try_send(event).map_err(Box::new)?;
        self.sent();
        Ok(())
    }

    fn sent(&self) {
        let queued = self.tx.max_capacity() - self.tx.capacity();
        self.stats.high_water.fetch_max(queued, Ordering::Relaxed);
        self.stats.submitted.fetch_add(1, Ordering::Relaxed);
    }

    /// The queue's counters, for triggers that report into them.
    pub fn stats(&self) -> &QueueStats {
        &self.stats
    }

    /// Returns once the executor behind this sink has stopped and drained.
    pub async fn drained(&self) {
        self.stats.drained.cancelled().await
    }
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

/// A source of events for one pipeline.
#[async_trait::async_trait]
pub trait Trigger: Send + Sync {
    /// Produces events until `shutdown` is cancelled or the sink closes. Returning an
    /// error stops the pipeline (misconfiguration, unreachable store at start-up).
    async fn run(self: Arc<Self>, sink: EventSink, shutdown: CancellationToken) -> anyhow::Result<()>;

    /// Where pushed events (bucket notifications) for this trigger are delivered, if it
    /// takes any. Served by `weir run` at `POST /v1/notifications/{pipeline}`.
    fn inbox(self: Arc<Self>) -> Option<Arc<dyn Inbox>> {
        None
    }
}

/// A trigger's door for events pushed to it over HTTP.
#[async_trait::async_trait]
pub trait Inbox: Send + Sync {
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

/// The `[trigger]` table, by `kind`.
#[derive(Debug, Clone)]
pub enum TriggerConfig {
    ObjectStore(object_store::ObjectStoreConfig),
    Cron(cron::CronConfig),
    Kafka(kafka::KafkaConfig),
}

const KINDS: &str = "object_store, cron, kafka";

impl TriggerConfig {
    pub(crate) fn parse(value: &Value<'_>, report: &mut Reporter<'_>) -> Option<Self> {
        let DeValue::Table(table) = value.get_ref() else {
            report.error(value.span(), "[trigger] must be a table");
            return None;
        };
        let Some(kind) = table.get("kind") else {
            report.error(value.span(), format!("[trigger] needs `kind` (one of: {KINDS})"));
            return None;
        };
        let mut rest = table.clone();
        rest.remove("kind");
        let rest = toml::Spanned::new(value.span(), DeValue::Table(rest));
        match kind.get_ref().as_str() {
            Some("object_store") => {
                let config: object_store::RawConfig = section(&rest, report)?;
                config.validate(report).map(TriggerConfig::ObjectStore)
            }
            Some("cron") => {
                let config: cron::RawConfig = section(&rest, report)?;
                config.validate(report).map(TriggerConfig::Cron)
            }
            Some("kafka") => {
                let config: kafka::RawConfig = section(&rest, report)?;
                config.validate(report).map(TriggerConfig::Kafka)
            }
            Some(other) => {
                report.error(kind.span(), format!("unknown trigger kind {other:?} (supported: {KINDS})"));
                None
            }
            None => {
                report.error(kind.span(), format!("`kind` must be a string (one of: {KINDS})"));
                None
            }
        }
    }

    /// Whether an object written to `url` (None: the trigger's own bucket) under `key`
    /// would fire this trigger.
    pub fn would_fire_on(&self, url: Option<&str>, key: &str) -> bool {
        match self {
            TriggerConfig::ObjectStore(c) => url.is_none_or(|u| u == c.url) && c.filter.matches(key),
            TriggerConfig::Cron(_) | TriggerConfig::Kafka(_) => false,
        }
    }

    pub fn build(&self, ctx: TriggerContext) -> Arc<dyn Trigger> {
        match self {
            TriggerConfig::ObjectStore(c) => Arc::new(object_store::ObjectStoreTrigger::new(c.clone(), ctx)),
            TriggerConfig::Cron(c) => Arc::new(cron::CronTrigger::new(c.clone(), ctx)),
            TriggerConfig::Kafka(c) => Arc::new(kafka::KafkaTrigger::new(c.clone(), ctx)),
        }
    }

    /// The bucket URL events of this trigger come from, if any.
    pub fn url(&self) -> Option<&str> {
        match self {
            TriggerConfig::ObjectStore(c) => Some(&c.url),
            TriggerConfig::Cron(_) | TriggerConfig::Kafka(_) => None,
        }
    }
}
