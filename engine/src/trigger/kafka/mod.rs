//! `kind = "kafka"`: records on Kafka topics, consumed in a consumer group.
//!
//! ```text
//! librdkafka ──poll──▶ consumer thread ──chunks──▶ executor ──per record──▶ steps
//!     ▲                 (lanes, pauses)               │
//!     └──── commit ◀── offsets ◀── record finished ◀──┘
//! ```
//!
//! * [`consumer`]: a thread of its own polls librdkafka and groups each partition's
//!   records into [`chunk`]s, one event each: handing records over one at a time would
//!   cost more than a no-op function. `ordering` decides what may run side by side.
//! * [`offsets`]: commit after success. A record's offset is committed only when it
//!   and every record before it in its partition finished — done, or dead-lettered (a
//!   poison record never blocks its partition). Auto-commit is off; commits are
//!   batched — every `commit_interval`, or sooner once `commit_count` records have
//!   finished — and flushed on revoke and at shutdown.
//! * Backpressure: a partition holding too many records, or an executor whose queue
//!   stays full, is paused while the consumer keeps polling, so a slow function never
//!   makes the consumer overrun `max.poll.interval.ms` and leave its group.
//! * Rebalances: a revoked partition's records in flight get `rebalance_grace` to
//!   finish and be committed; the rest go to the next owner uncommitted.
//! * [`dead_letter`]: a dead-letter topic (`dead_letter = "kafka://topic"`).

pub mod chunk;
mod config;
mod consumer;
mod context;
pub mod dead_letter;
pub mod offsets;
mod run;

pub use config::{Batching, KafkaConfig, KafkaKind, NotifiedBucket, Ordering, RawConfig, RecordFormat, Start};
pub use run::{ChunkWork, RecordWork};

use std::sync::{Arc, Mutex};

use rdkafka::consumer::{BaseConsumer, Consumer};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use super::{Trigger, TriggerContext};
use crate::error::EngineError;
use crate::event::EventSink;
use chunk::Wake;
pub use config::valid_topic;
use context::KafkaContext;
use offsets::Partition;

/// A record as an event source. The value travels with the event (and into its dead
/// letter, base64), so a redrive needs no broker.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    pub topic: Arc<str>,
    pub partition: i32,
    pub offset: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    #[serde(with = "base64_bytes")]
    pub value: bytes::Bytes,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timestamp: Option<chrono::DateTime<chrono::Utc>>,
    /// The producer's headers, in order (names may repeat).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<RecordHeader>,
}

/// A record header. Kafka allows one without a value; it reads as empty here.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordHeader {
    pub name: String,
    #[serde(with = "base64_bytes")]
    pub value: bytes::Bytes,
}

impl Record {
    /// `topic/partition/offset`: the record's deterministic name (output keys use it).
    pub fn name(&self) -> String {
        format!("{}/{}/{}", self.topic, self.partition, self.offset)
    }

    /// The value of the first header called `name`.
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers.iter().find(|h| h.name == name).map(|h| &h.value[..])
    }

    pub fn partition_id(&self) -> Partition {
        (self.topic.clone(), self.partition)
    }
}

mod base64_bytes {
    use base64::Engine as _;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(bytes))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<bytes::Bytes, D::Error> {
        let text = String::deserialize(d)?;
        base64::engine::general_purpose::STANDARD.decode(text).map(Into::into).map_err(serde::de::Error::custom)
    }
}

/// The running trigger.
pub struct KafkaTrigger {
    config: Arc<KafkaConfig>,
    ctx: TriggerContext,
}

impl KafkaTrigger {
    pub fn new(config: KafkaConfig, ctx: TriggerContext) -> Self {
        Self { config: Arc::new(config), ctx }
    }
}

#[async_trait::async_trait]
impl Trigger for KafkaTrigger {
    async fn run(self: Arc<Self>, sink: EventSink, shutdown: CancellationToken) -> Result<(), EngineError> {
        let pipeline = self.ctx.pipeline.clone();
        let (wake_tx, wake_rx) = std::sync::mpsc::channel();
        // The engine's stop and the executor's drain reach the thread as wakes.
        let helpers = [
            tokio::spawn({
                let (tx, shutdown) = (wake_tx.clone(), shutdown.clone());
                async move {
                    shutdown.cancelled().await;
                    let _ = tx.send(Wake::Stop);
                }
            }),
            tokio::spawn({
                let (tx, sink) = (wake_tx.clone(), sink.clone());
                async move {
                    sink.drained().await;
                    let _ = tx.send(Wake::Drained);
                }
            }),
        ];
        let state = consumer::State::new(pipeline.clone(), self.config.clone(), sink, (wake_tx.clone(), wake_rx));
        let context = KafkaContext { pipeline: pipeline.clone(), state: Arc::new(Mutex::new(state)) };
        let mut consumer: BaseConsumer<KafkaContext> =
            self.config.client_config().create_with_context(context).map_err(|e| {
                let why = weir_functions::kafka::describe_error(&e, &self.config.librdkafka);
                EngineError::fatal(format!("creating a Kafka consumer for {}: {why}", self.config.brokers))
            })?;
        consumer.set_nonempty_callback(move || {
            let _ = wake_tx.send(Wake::Messages);
        });
        let topics: Vec<&str> = self.config.topics.iter().map(String::as_str).collect();
        consumer
            .subscribe(&topics)
            .map_err(|e| EngineError::fatal(format!("subscribing to {}: {e}", self.config.topics.join(", "))))?;
        tracing::info!(pipeline = %pipeline, brokers = %self.config.brokers, topics = ?self.config.topics,
            group = %self.config.group, ordering = ?self.config.ordering, "kafka trigger started");
        let (done_tx, done_rx) = tokio::sync::oneshot::channel();
        std::thread::Builder::new()
            .name(format!("kafka-{pipeline}"))
            .spawn(move || {
                consumer::run(consumer);
                let _ = done_tx.send(());
            })
            .map_err(|e| EngineError::transient(format!("starting the Kafka consumer thread: {e}")))?;
        let _ = done_rx.await;
        helpers.iter().for_each(|h| h.abort());
        Ok(())
    }
}
