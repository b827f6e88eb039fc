//! The `[trigger]` table of `kind = "kafka"`, and what the engine asks of it.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use serde::{Deserialize, Serialize};
use toml::Spanned;
use weir_functions::key_filter::bucket_name;
use weir_functions::KeyFilter;

use super::dead_letter::{self, DeadLetterTopic};
use super::run::RecordWork;
use super::KafkaTrigger;
use crate::config::diagnostics::Reporter;
use crate::config::units::HumanDuration;
use crate::error::EngineError;
use crate::event::{DeadLetterStore, Work};
use crate::state::Ledger;
use crate::trigger::object_store::key_filter;
use crate::trigger::{PipelineFacts, Trigger, TriggerContext, TriggerKind, TriggerSpec};

/// `kind = "kafka"`.
pub struct KafkaKind;

impl TriggerKind for KafkaKind {
    const NAME: &'static str = "kafka";
    type Raw = RawConfig;
    type Config = KafkaConfig;

    fn validate(raw: RawConfig, report: &mut Reporter<'_>) -> Option<KafkaConfig> {
        raw.validate(report)
    }

    fn dead_letter_scheme() -> Option<(&'static str, &'static str)> {
        Some((dead_letter::SCHEME, "a dead-letter topic needs a Kafka trigger (its cluster)"))
    }
}

impl TriggerSpec for KafkaConfig {
    fn kind(&self) -> &'static str {
        KafkaKind::NAME
    }

    fn health<'a>(&'a self, _stores: &'a weir_functions::Stores) -> futures::future::BoxFuture<'a, Result<(), String>> {
        let config = self.clone();
        Box::pin(async move {
            tokio::task::spawn_blocking(move || config.topics_answer()).await.map_err(|e| e.to_string())?
        })
    }

    /// `batch_size` hands the chunk to one step, which must be the only first step; a
    /// dead-letter topic must be a valid topic name.
    fn check(&self, pipeline: &PipelineFacts<'_>, report: &mut Reporter<'_>) {
        if self.batch.is_some() && pipeline.first_steps != 1 {
            report.error(
                pipeline.trigger_span.clone(),
                format!(
                    "batch_size needs exactly one first step (the one that takes the batch); found {}",
                    pipeline.first_steps
                ),
            );
        }
        if let Some((url, span)) = &pipeline.dead_letter {
            if let Some(topic) = dead_letter::topic_of(url).filter(|t| !valid_topic(t)) {
                report.error(span.clone(), format!("dead_letter {url:?}: invalid topic name {topic:?}"));
            }
        }
    }

    fn build(&self, ctx: TriggerContext) -> Arc<dyn Trigger> {
        Arc::new(KafkaTrigger::new(self.clone(), ctx))
    }

    fn revive(&self, record: &serde_json::Value) -> Result<Arc<dyn Work>, String> {
        RecordWork::revive(record, self)
    }

    fn dead_letters(&self, url: &str, ledger: &Ledger) -> Option<Result<Arc<dyn DeadLetterStore>, EngineError>> {
        let topic = dead_letter::topic_of(url)?;
        Some(
            DeadLetterTopic::new(topic, self, ledger.clone())
                .map(|t| Arc::new(t) as Arc<dyn DeadLetterStore>)
                .map_err(|e| e.context(url)),
        )
    }
}

/// The `[trigger]` table as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
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
    fn validate(self, report: &mut Reporter<'_>) -> Option<KafkaConfig> {
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
                continue;
            }
            // librdkafka checks names and values without connecting anywhere.
            let mut one = rdkafka::ClientConfig::new();
            one.set(key, value.get_ref());
            if let Err(e) = one.create_native_config() {
                let option = [(key.clone(), value.get_ref().clone())];
                report.error(value.span(), weir_functions::kafka::describe_error(&e, &option));
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
                let filter = key_filter(&self.prefix, &self.include, &self.exclude, report);
                let bucket = self.bucket.clone().or_else(|| bucket_name(url.get_ref()));
                match (filter, bucket) {
                    (Some(filter), Some(bucket)) => Some(NotifiedBucket { url: url.into_inner(), bucket, filter }),
                    (_, None) => {
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
        if batch.is_some() && format == RecordFormat::S3Event {
            report.error(
                self.format.span(),
                "batch_size does not combine with format = \"s3_event\" (each notification runs on its own)",
            );
            ok = false;
        }
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

/// librdkafka takes `^`-prefixed topics as regexes: refuse the ones that do not compile
/// at validate time.
fn regex_syntax_check(pattern: &str) -> Result<(), String> {
    regex::Regex::new(&format!("^{pattern}"))
        .map(|_| ())
        .map_err(|e| e.to_string().lines().last().unwrap_or("").trim().to_string())
}

impl KafkaConfig {
    /// Whether the brokers answer and every named topic exists (blocking: a metadata
    /// request with a short timeout).
    fn topics_answer(&self) -> Result<(), String> {
        use rdkafka::consumer::{BaseConsumer, Consumer};
        let consumer: BaseConsumer =
            self.client_config().create().map_err(|e| weir_functions::kafka::describe_error(&e, &self.librdkafka))?;
        let metadata = consumer.fetch_metadata(None, Duration::from_secs(5)).map_err(|e| {
            format!(
                "brokers {} do not answer: {}",
                self.brokers,
                weir_functions::kafka::describe_error(&e, &self.librdkafka)
            )
        })?;
        let present: Vec<&str> = metadata.topics().iter().map(|t| t.name()).collect();
        let missing: Vec<&str> =
            self.topics.iter().map(String::as_str).filter(|t| !t.starts_with('^') && !present.contains(t)).collect();
        match missing.is_empty() {
            true => Ok(()),
            false => Err(format!("topic(s) {} do not exist on {}", missing.join(", "), self.brokers)),
        }
    }

    /// Whether this trigger consumes `topic` (a listed name, or a `^regex` matching it).
    pub fn consumes(&self, topic: &str) -> bool {
        self.topics.iter().any(|t| match t.starts_with('^') {
            true => regex::Regex::new(t).is_ok_and(|re| re.is_match(topic)),
            false => t == topic,
        })
    }

    /// The consumer's librdkafka settings.
    pub fn client_config(&self) -> ClientConfig {
        let mut config = ClientConfig::new();
        config.set("statistics.interval.ms", "30000");
        // librdkafka waits a whole second (its default) before fetching again once its
        // local queue was full; weir drains that queue in bursts (a chunk at a time) and
        // pauses partitions itself when it must, so it wants fetching to resume at once.
        config.set("fetch.queue.backoff.ms", "10");
        // A partition weir resumes (its chunk is done) is fetched again only with the
        // next fetch request, and librdkafka's default lets the broker hold one for
        // 500 ms when it has nothing new: with `ordering = "partition"` on a fast broker
        // that wait, not the work, set the pace (23 k records/s instead of 230 k).
        config.set("fetch.wait.max.ms", "10");
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
