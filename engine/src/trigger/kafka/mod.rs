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
mod consumer;
mod context;
pub mod dead_letter;
pub mod offsets;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::consumer::{BaseConsumer, Consumer};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;
use toml::Spanned;

use super::object_store::KeyFilter;
use super::{EventSink, Trigger, TriggerContext};
use crate::config::units::HumanDuration;
use crate::config::Reporter;
use chunk::Wake;
use context::KafkaContext;
use offsets::Partition;

/// The `[trigger]` table as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawConfig {
    brokers: Spanned<String>,
    topics: Vec<Spanned<String>>,
    group: Spanned<String>,
    #[serde(default)]
    start: Start,
    #[serde(default = "default_format")]
    format: Spanned<RecordFormat>,
    #[serde(default)]
    ordering: Ordering,
    #[serde(default)]
    commit_interval: Option<HumanDuration>,
    #[serde(default)]
    commit_count: Option<Spanned<usize>>,
    #[serde(default)]
    batch_size: Option<Spanned<usize>>,
    #[serde(default)]
    batch_window: Option<Spanned<HumanDuration>>,
    #[serde(default)]
    rebalance_grace: Option<HumanDuration>,
    /// `format = "s3_event"`: the bucket the notifications are about.
    #[serde(default)]
    url: Option<Spanned<String>>,
    #[serde(default)]
    bucket: Option<String>,
    #[serde(default)]
    prefix: String,
    #[serde(default)]
    include: Vec<Spanned<String>>,
    #[serde(default)]
    exclude: Vec<Spanned<String>>,
    #[serde(default)]
    librdkafka: BTreeMap<String, Spanned<String>>,
}

fn default_format() -> Spanned<RecordFormat> {
    Spanned::new(0..0, RecordFormat::Bytes)
}

/// Where a group with no committed offsets starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Start {
    /// Only records produced from now on.
    #[default]
    Latest,
    /// Everything the topic still holds.
    Earliest,
    /// Committed offsets only: a group without them is an error, not a guess.
    Committed,
}

/// How a record's value becomes the event's item.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RecordFormat {
    #[default]
    Bytes,
    /// Parsed as JSON; a record that is not JSON is dead-lettered.
    Json,
    /// An S3 / SNS / EventBridge / MinIO bucket notification: each object it names is
    /// read from `url` and runs through the steps like an object-store trigger's.
    S3Event,
}

/// Which records may run side by side.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Ordering {
    /// One record per partition at a time, in offset order.
    #[default]
    Partition,
    /// Within a partition, one record per key at a time, in offset order per key.
    Key,
    /// In parallel within the executor's limits.
    None,
}

/// `batch_size` / `batch_window`: the first step takes records in batches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Batching {
    pub size: usize,
    pub window: Duration,
}

/// `format = "s3_event"`: the bucket whose notifications arrive on the topic.
#[derive(Debug, Clone)]
pub struct NotifiedBucket {
    /// Where the objects are read from (`s3://photos`, `file://./data`).
    pub url: String,
    /// The bucket name notifications must carry; others are ignored.
    pub bucket: String,
    pub filter: KeyFilter,
}

/// A validated Kafka trigger configuration.
#[derive(Clone)]
pub struct KafkaConfig {
    pub brokers: String,
    pub topics: Vec<String>,
    pub group: String,
    pub start: Start,
    pub format: RecordFormat,
    pub ordering: Ordering,
    pub commit_interval: Duration,
    /// Commit as soon as this many records finished, without waiting for the interval.
    pub commit_count: Option<usize>,
    pub batch: Option<Batching>,
    pub rebalance_grace: Duration,
    pub objects: Option<NotifiedBucket>,
    /// Passed to librdkafka as is (`security.protocol`, `sasl.*`, …); never logged.
    pub librdkafka: Vec<(String, String)>,
}

impl std::fmt::Debug for KafkaConfig {
    /// Option values may be secrets (`sasl.password`): only their names are shown.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaConfig")
            .field("brokers", &self.brokers)
            .field("topics", &self.topics)
            .field("group", &self.group)
            .field("ordering", &self.ordering)
            .field("format", &self.format)
            .field("librdkafka", &self.librdkafka.iter().map(|(k, _)| k).collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

/// Settings weir owns: setting them would break commit-after-success.
const RESERVED: [&str; 5] =
    ["enable.auto.commit", "enable.auto.offset.store", "group.id", "bootstrap.servers", "auto.offset.reset"];

/// Largest `batch_size` (Lambda's limit for Kafka).
const MAX_BATCH: usize = 10_000;

impl RawConfig {
    pub(crate) fn validate(self, report: &mut Reporter<'_>) -> Option<KafkaConfig> {
        let mut ok = true;
        if self.brokers.get_ref().trim().is_empty() {
            report.error(self.brokers.span(), "brokers must list at least one host:port");
            ok = false;
        }
        if self.topics.is_empty() {
            report.error(0..0, "topics must name at least one topic (or a ^regex)");
            ok = false;
        }
        for topic in &self.topics {
            let name = topic.get_ref();
            if let Some(pattern) = name.strip_prefix('^') {
                if let Err(e) = regex_syntax_check(pattern) {
                    report.error(topic.span(), format!("invalid topic regex {name:?}: {e}"));
                    ok = false;
                }
            } else if !valid_topic(name) {
                report.error(topic.span(), format!("invalid topic name {name:?} (letters, digits, . _ -)"));
                ok = false;
            }
        }
        if self.group.get_ref().trim().is_empty() {
            report.error(self.group.span(), "group must not be empty");
            ok = false;
        }
        for (key, value) in &self.librdkafka {
            if RESERVED.contains(&key.as_str()) {
                report
                    .error(value.span(), format!("librdkafka option {key:?} is set by weir (use brokers/group/start)"));
                ok = false;
            }
        }
        if let Some(count) = self.commit_count.as_ref().filter(|c| *c.get_ref() == 0) {
            report.error(
                count.span(),
                "commit_count must be at least 1 (leave it out to commit by commit_interval only)",
            );
            ok = false;
        }
        let batch = match (&self.batch_size, &self.batch_window) {
            (None, None) => None,
            (None, Some(window)) => {
                report.error(window.span(), "batch_window needs batch_size");
                ok = false;
                None
            }
            (Some(size), window) => {
                if *size.get_ref() == 0 || *size.get_ref() > MAX_BATCH {
                    report.error(size.span(), format!("batch_size must be 1..={MAX_BATCH}"));
                    ok = false;
                }
                // Lambda's default batching window for Kafka.
                let window = window.as_ref().map(|w| w.get_ref().0).unwrap_or(Duration::from_millis(500));
                Some(Batching { size: *size.get_ref(), window })
            }
        };
        let format = *self.format.get_ref();
        let objects = match (format, self.url) {
            (RecordFormat::S3Event, Some(url)) => {
                let include = super::object_store::compile_globs(&self.include, report);
                let exclude = super::object_store::compile_globs(&self.exclude, report);
                let bucket = self.bucket.clone().or_else(|| bucket_name(url.get_ref()));
                match (include, exclude, bucket) {
                    (Some(include), Some(exclude), Some(bucket)) => Some(NotifiedBucket {
                        url: url.into_inner(),
                        bucket,
                        filter: KeyFilter::new(self.prefix.clone(), include, exclude),
                    }),
                    (_, _, None) => {
                        report.error(url.span(), "cannot tell the bucket's name from this url: set `bucket`");
                        ok = false;
                        None
                    }
                    _ => {
                        ok = false;
                        None
                    }
                }
            }
            (RecordFormat::S3Event, None) => {
                report.error(self.format.span(), "format = \"s3_event\" needs `url`: the bucket to read objects from");
                ok = false;
                None
            }
            (_, Some(url)) => {
                report.error(url.span(), "`url` only applies to format = \"s3_event\"");
                ok = false;
                None
            }
            (_, None) => None,
        };
        if format != RecordFormat::S3Event
            && (self.bucket.is_some()
                || !self.prefix.is_empty()
                || !self.include.is_empty()
                || !self.exclude.is_empty())
        {
            report.error(self.format.span(), "bucket/prefix/include/exclude only apply to format = \"s3_event\"");
            ok = false;
        }
        ok.then(|| KafkaConfig {
            brokers: self.brokers.into_inner(),
            topics: self.topics.into_iter().map(Spanned::into_inner).collect(),
            group: self.group.into_inner(),
            start: self.start,
            format,
            ordering: self.ordering,
            commit_interval: self.commit_interval.map(|d| d.0).unwrap_or(Duration::from_secs(1)),
            commit_count: self.commit_count.map(Spanned::into_inner),
            batch,
            rebalance_grace: self.rebalance_grace.map(|d| d.0).unwrap_or(Duration::from_secs(10)),
            objects,
            librdkafka: self.librdkafka.into_iter().map(|(k, v)| (k, v.into_inner())).collect(),
        })
    }
}

/// Kafka's rules for topic names.
pub fn valid_topic(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 249
        && name != "."
        && name != ".."
        && name.chars().all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
}

/// `s3://photos/inbox` → `photos`; `file:///srv/buckets/photos` → `photos`.
fn bucket_name(url: &str) -> Option<String> {
    let (scheme, rest) = url.split_once("://")?;
    let name =
        if scheme == "file" { rest.trim_end_matches('/').rsplit('/').next()? } else { rest.split('/').next()? };
    (!name.is_empty() && name != ".").then(|| name.to_string())
}

/// librdkafka takes `^`-prefixed topics as POSIX regexes; catch the obvious mistakes
/// (unbalanced brackets and parentheses) at validate time.
fn regex_syntax_check(pattern: &str) -> Result<(), String> {
    let mut depth: (i32, i32) = (0, 0);
    for c in pattern.chars() {
        match c {
            '(' => depth.0 += 1,
            ')' => depth.0 -= 1,
            '[' => depth.1 += 1,
            ']' => depth.1 -= 1,
            _ => {}
        }
        if depth.0 < 0 || depth.1 < 0 {
            return Err("unbalanced brackets".into());
        }
    }
    if depth != (0, 0) {
        return Err("unbalanced brackets".into());
    }
    Ok(())
}

impl KafkaConfig {
    /// The consumer's librdkafka settings.
    pub fn client_config(&self) -> ClientConfig {
        let mut config = ClientConfig::new();
        config.set("statistics.interval.ms", "30000");
        // librdkafka waits a whole second (its default) before fetching again once its
        // local queue was full; weir drains that queue in bursts (a chunk at a time) and
        // pauses partitions itself when it must, so it wants fetching to resume at once.
        config.set("fetch.queue.backoff.ms", "10");
        for (key, value) in &self.librdkafka {
            config.set(key, value);
        }
        let reset = match self.start {
            Start::Latest => "latest",
            Start::Earliest => "earliest",
            Start::Committed => "error",
        };
        config
            .set("bootstrap.servers", &self.brokers)
            .set("group.id", &self.group)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", reset)
            .set_log_level(RDKafkaLogLevel::Warning);
        config
    }
}

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
    async fn run(self: Arc<Self>, sink: EventSink, shutdown: CancellationToken) -> anyhow::Result<()> {
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
        let mut consumer: BaseConsumer<KafkaContext> = self
            .config
            .client_config()
            .create_with_context(context)
            .with_context(|| format!("creating a Kafka consumer for {}", self.config.brokers))?;
        consumer.set_nonempty_callback(move || {
            let _ = wake_tx.send(Wake::Messages);
        });
        let topics: Vec<&str> = self.config.topics.iter().map(String::as_str).collect();
        consumer.subscribe(&topics).with_context(|| format!("subscribing to {}", self.config.topics.join(", ")))?;
        tracing::info!(pipeline = %pipeline, brokers = %self.config.brokers, topics = ?self.config.topics,
            group = %self.config.group, ordering = ?self.config.ordering, "kafka trigger started");
        let (done_tx, done_rx) = tokio::sync::oneshot::channel();
        std::thread::Builder::new()
            .name(format!("kafka-{pipeline}"))
            .spawn(move || {
                consumer::run(consumer);
                let _ = done_tx.send(());
            })
            .context("starting the Kafka consumer thread")?;
        let _ = done_rx.await;
        helpers.iter().for_each(|h| h.abort());
        Ok(())
    }
}
