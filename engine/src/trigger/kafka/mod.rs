//! `kind = "kafka"`: records on Kafka topics, consumed in a consumer group.
//!
//! Offsets are committed only after success: a record's offset is handed to
//! [`offsets::Offsets`] when it is queued and released when its event finished (done,
//! or dead-lettered — a poison record never blocks its partition); commits, batched
//! every `commit_interval` and flushed on revoke and at shutdown, never pass an
//! unfinished record. Auto-commit is off.
//!
//! Ordering (`ordering`): `partition` runs one record per partition at a time (like
//! Lambda), `key` one per key, `none` as many as the executor admits. Held-back records
//! pause their partition, and a full executor pauses the whole assignment while the
//! consumer keeps polling, so a slow function never makes the consumer overrun
//! `max.poll.interval.ms` and leave its group. Consumer lag per partition is logged
//! every `statistics.interval.ms` (30 s by default).

pub mod offsets;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use anyhow::Context as _;
use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use toml::Spanned;

use super::{Acknowledge, Event, EventSink, EventSource, Outcome, Trigger, TriggerContext};
use crate::config::units::HumanDuration;
use crate::config::Reporter;
use offsets::{Offsets, Partition};

/// The `[trigger]` table as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawConfig {
    brokers: Spanned<String>,
    topics: Vec<Spanned<String>>,
    group: Spanned<String>,
    #[serde(default)]
    start: Start,
    #[serde(default)]
    format: RecordFormat,
    #[serde(default)]
    ordering: Ordering,
    #[serde(default)]
    commit_interval: Option<HumanDuration>,
    #[serde(default)]
    librdkafka: BTreeMap<String, Spanned<String>>,
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
}

/// Which records may run side by side.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Ordering {
    /// One record per partition at a time, in offset order.
    #[default]
    Partition,
    /// One record per key at a time, in offset order per key; keys run in parallel.
    Key,
    /// In parallel within the executor's limits.
    None,
}

/// A validated Kafka trigger configuration.
#[derive(Debug, Clone)]
pub struct KafkaConfig {
    pub brokers: String,
    pub topics: Vec<String>,
    pub group: String,
    pub start: Start,
    pub format: RecordFormat,
    pub ordering: Ordering,
    pub commit_interval: Duration,
    /// Passed to librdkafka as is (`security.protocol`, `sasl.*`, …); never logged.
    pub librdkafka: Vec<(String, String)>,
}

/// Settings weir owns: setting them would break commit-after-success.
const RESERVED: [&str; 5] =
    ["enable.auto.commit", "enable.auto.offset.store", "group.id", "bootstrap.servers", "auto.offset.reset"];

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
            } else if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || "._-".contains(c)) {
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
        ok.then(|| KafkaConfig {
            brokers: self.brokers.into_inner(),
            topics: self.topics.into_iter().map(Spanned::into_inner).collect(),
            group: self.group.into_inner(),
            start: self.start,
            format: self.format,
            ordering: self.ordering,
            commit_interval: self.commit_interval.map(|d| d.0).unwrap_or(Duration::from_secs(1)),
            librdkafka: self.librdkafka.into_iter().map(|(k, v)| (k, v.into_inner())).collect(),
        })
    }
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
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    #[serde(with = "base64_bytes")]
    pub value: Vec<u8>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timestamp: Option<chrono::DateTime<chrono::Utc>>,
}

impl Record {
    /// `topic/partition/offset`: the record's deterministic name (output keys use it).
    pub fn name(&self) -> String {
        format!("{}/{}/{}", self.topic, self.partition, self.offset)
    }

    fn partition_id(&self) -> Partition {
        (self.topic.clone(), self.partition)
    }
}

mod base64_bytes {
    use base64::Engine as _;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(bytes))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let text = String::deserialize(d)?;
        base64::engine::general_purpose::STANDARD.decode(text).map_err(serde::de::Error::custom)
    }
}

/// Records that must run one at a time: a partition, or a key within one.
type Lane = (Partition, Option<String>);

/// A finished record, reported by the acker to the consuming loop.
struct Finished {
    partition: Partition,
    offset: i64,
    lane: Option<Lane>,
}

/// Routes librdkafka's logs into tracing and commits on revoke.
struct KafkaContext {
    pipeline: Arc<str>,
    offsets: Arc<Mutex<Offsets>>,
}

impl ClientContext for KafkaContext {
    fn log(&self, level: RDKafkaLogLevel, facility: &str, message: &str) {
        match level {
            RDKafkaLogLevel::Emerg | RDKafkaLogLevel::Alert | RDKafkaLogLevel::Critical | RDKafkaLogLevel::Error => {
                tracing::error!(pipeline = %self.pipeline, facility, "kafka: {message}")
            }
            RDKafkaLogLevel::Warning => tracing::warn!(pipeline = %self.pipeline, facility, "kafka: {message}"),
            _ => tracing::debug!(pipeline = %self.pipeline, facility, "kafka: {message}"),
        }
    }

    /// Every `statistics.interval.ms` (30 s unless set): consumer lag per partition.
    fn stats(&self, statistics: rdkafka::Statistics) {
        let mut lags = Vec::new();
        for (topic, t) in &statistics.topics {
            for (partition, p) in &t.partitions {
                if *partition >= 0 && p.consumer_lag >= 0 {
                    lags.push((format!("{topic}/{partition}"), p.consumer_lag));
                }
            }
        }
        if lags.is_empty() {
            return;
        }
        lags.sort();
        let total: i64 = lags.iter().map(|(_, lag)| lag).sum();
        let per_partition = lags.iter().map(|(p, lag)| format!("{p}={lag}")).collect::<Vec<_>>().join(" ");
        tracing::info!(pipeline = %self.pipeline, total, partitions = %per_partition, "consumer lag");
    }

    fn error(&self, error: rdkafka::error::KafkaError, reason: &str) {
        tracing::warn!(pipeline = %self.pipeline, error = %error, "kafka: {reason}");
    }
}

impl ConsumerContext for KafkaContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let Rebalance::Revoke(revoked) = rebalance else { return };
        // Commit what finished of the revoked partitions, then forget them: their
        // unfinished records go to the next owner.
        let mut offsets = self.offsets.lock().unwrap_or_else(|p| p.into_inner());
        let commits = offsets.take_commits();
        let list = commit_list(&commits);
        if list.count() > 0 {
            if let Err(e) = consumer.commit(&list, CommitMode::Sync) {
                tracing::warn!(pipeline = %self.pipeline, error = %e, "commit on revoke failed");
            }
        }
        for element in revoked.elements() {
            offsets.forget(&(element.topic().to_string(), element.partition()));
        }
        tracing::info!(pipeline = %self.pipeline, partitions = revoked.count(), "partitions revoked");
    }

    fn post_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(assigned) = rebalance {
            tracing::info!(pipeline = %self.pipeline, partitions = assigned.count(), "partitions assigned");
        }
    }
}

fn commit_list(commits: &[(Partition, i64)]) -> TopicPartitionList {
    let mut list = TopicPartitionList::new();
    for ((topic, partition), offset) in commits {
        // Only fails for an invalid offset, which `Offsets` never produces.
        let _ = list.add_partition_offset(topic, *partition, Offset::Offset(*offset));
    }
    list
}

/// The running trigger.
pub struct KafkaTrigger {
    config: KafkaConfig,
    ctx: TriggerContext,
}

impl KafkaTrigger {
    pub fn new(config: KafkaConfig, ctx: TriggerContext) -> Self {
        Self { config, ctx }
    }
}

/// Tells the consuming loop that a record finished (or was abandoned: then nothing).
struct RecordAcker {
    finished: mpsc::UnboundedSender<Finished>,
    lane: Option<Lane>,
}

#[async_trait::async_trait]
impl Acknowledge for RecordAcker {
    async fn ack(&self, event: &Event, outcome: Outcome) {
        let EventSource::Kafka { record } = &event.source else { return };
        if outcome == Outcome::Abandoned {
            // Not finished: its offset stays uncommitted and it is delivered again.
            return;
        }
        let _ = self.finished.send(Finished {
            partition: record.partition_id(),
            offset: record.offset,
            lane: self.lane.clone(),
        });
    }
}

/// The consuming loop's state.
struct Consuming<'a> {
    trigger: &'a KafkaTrigger,
    consumer: &'a StreamConsumer<KafkaContext>,
    sink: &'a EventSink,
    offsets: Arc<Mutex<Offsets>>,
    finished_tx: mpsc::UnboundedSender<Finished>,
    /// Lanes with a record running, and the records waiting behind it.
    lanes: HashMap<Lane, VecDeque<Record>>,
    /// Records waiting per partition (held back by ordering).
    waiting: HashMap<Partition, usize>,
    paused: std::collections::HashSet<Partition>,
    /// Records that arrived while the executor was full (before the pause took effect).
    overflow: VecDeque<Record>,
}

/// Records held back per partition before it is paused (`ordering = "key"`).
const HOLD_BACK: usize = 64;

/// How long a record may wait for room in the executor before fetching is paused
/// (well under librdkafka's `max.poll.interval.ms`, which is minutes by default).
const PAUSE_AFTER: Duration = Duration::from_millis(200);

impl Consuming<'_> {
    fn lane_of(&self, record: &Record) -> Option<Lane> {
        match self.trigger.config.ordering {
            Ordering::None => None,
            Ordering::Partition => Some((record.partition_id(), None)),
            Ordering::Key => Some((record.partition_id(), Some(record.key.clone().unwrap_or_default()))),
        }
    }

    /// A record from the broker: run it now, or hold it behind its lane.
    async fn take(&mut self, record: Record) -> Result<(), super::SinkClosed> {
        self.offsets.lock().unwrap_or_else(|p| p.into_inner()).started(&record.partition_id(), record.offset);
        let lane = self.lane_of(&record);
        if let Some(lane) = &lane {
            if let Some(queue) = self.lanes.get_mut(lane) {
                let partition = record.partition_id();
                queue.push_back(record);
                let held = self.waiting.entry(partition.clone()).or_default();
                *held += 1;
                let limit = if self.trigger.config.ordering == Ordering::Partition { 1 } else { HOLD_BACK };
                if *held >= limit {
                    self.pause(&partition);
                }
                return Ok(());
            }
            self.lanes.insert(lane.clone(), VecDeque::new());
        }
        self.submit(record, lane).await
    }

    /// A record finished: commit bookkeeping, and the next record of its lane.
    async fn finished(&mut self, done: Finished) -> Result<(), super::SinkClosed> {
        self.offsets.lock().unwrap_or_else(|p| p.into_inner()).finished(&done.partition, done.offset);
        let Some(lane) = done.lane else { return Ok(()) };
        let next = self.lanes.get_mut(&lane).and_then(VecDeque::pop_front);
        match next {
            Some(record) => {
                let partition = record.partition_id();
                if let Some(held) = self.waiting.get_mut(&partition) {
                    *held = held.saturating_sub(1);
                    if *held == 0 {
                        self.waiting.remove(&partition);
                        self.resume(&partition);
                    }
                }
                self.submit(record, Some(lane)).await
            }
            None => {
                self.lanes.remove(&lane);
                Ok(())
            }
        }
    }

    async fn submit(&mut self, record: Record, lane: Option<Lane>) -> Result<(), super::SinkClosed> {
        let acker = Arc::new(RecordAcker { finished: self.finished_tx.clone(), lane });
        let event = Event {
            id: uuid::Uuid::now_v7().to_string(),
            pipeline: self.trigger.ctx.pipeline.clone(),
            source: EventSource::Kafka { record },
            received_at: SystemTime::now(),
            acker,
        };
        let (sink, consumer) = (self.sink, self.consumer);
        let mut send = std::pin::pin!(sink.send(event));
        // A queue full for a moment is normal (a fetched batch is larger than it); only
        // an executor that stays full is worth pausing for — every pause makes
        // librdkafka drop what it prefetched.
        tokio::select! {
            sent = &mut send => return sent,
            _ = tokio::time::sleep(PAUSE_AFTER) => {}
        }
        // The executor is full: stop fetching, but keep polling (group membership,
        // rebalances) until it takes the event.
        let assignment = consumer.assignment().unwrap_or_default();
        let _ = consumer.pause(&assignment);
        tracing::debug!(pipeline = %self.trigger.ctx.pipeline, "executor full: fetching paused");
        let result = loop {
            tokio::select! {
                sent = &mut send => break sent,
                polled = consumer.recv() => if let Ok(message) = polled {
                    // Fetched before the pause took effect: taken after this one.
                    self.overflow.push_back(record_of(&message));
                },
            }
        };
        let mut resume = TopicPartitionList::new();
        for element in assignment.elements() {
            let partition = (element.topic().to_string(), element.partition());
            if !self.paused.contains(&partition) {
                let _ = resume.add_partition_offset(element.topic(), element.partition(), Offset::Invalid);
            }
        }
        let _ = consumer.resume(&resume);
        result
    }

    fn pause(&mut self, partition: &Partition) {
        if self.paused.insert(partition.clone()) {
            let mut list = TopicPartitionList::new();
            let _ = list.add_partition_offset(&partition.0, partition.1, Offset::Invalid);
            let _ = self.consumer.pause(&list);
        }
    }

    fn resume(&mut self, partition: &Partition) {
        if self.paused.remove(partition) {
            let mut list = TopicPartitionList::new();
            let _ = list.add_partition_offset(&partition.0, partition.1, Offset::Invalid);
            let _ = self.consumer.resume(&list);
        }
    }

    fn commit(&self) {
        let commits = self.offsets.lock().unwrap_or_else(|p| p.into_inner()).take_commits();
        if commits.is_empty() {
            return;
        }
        let list = commit_list(&commits);
        match self.consumer.commit(&list, CommitMode::Async) {
            Ok(()) => {
                tracing::debug!(pipeline = %self.trigger.ctx.pipeline, partitions = commits.len(), "offsets committed")
            }
            Err(e) => tracing::warn!(pipeline = %self.trigger.ctx.pipeline, error = %e, "commit failed; will retry"),
        }
    }
}

fn record_of(message: &rdkafka::message::BorrowedMessage<'_>) -> Record {
    Record {
        topic: message.topic().to_string(),
        partition: message.partition(),
        offset: message.offset(),
        key: message.key().map(|k| String::from_utf8_lossy(k).into_owned()),
        value: message.payload().map(<[u8]>::to_vec).unwrap_or_default(),
        timestamp: message.timestamp().to_millis().and_then(chrono::DateTime::from_timestamp_millis),
    }
}

#[async_trait::async_trait]
impl Trigger for KafkaTrigger {
    async fn run(self: Arc<Self>, sink: EventSink, shutdown: CancellationToken) -> anyhow::Result<()> {
        let offsets = Arc::new(Mutex::new(Offsets::default()));
        let context = KafkaContext { pipeline: self.ctx.pipeline.clone(), offsets: offsets.clone() };
        let consumer: StreamConsumer<KafkaContext> = self
            .config
            .client_config()
            .create_with_context(context)
            .with_context(|| format!("creating a Kafka consumer for {}", self.config.brokers))?;
        let topics: Vec<&str> = self.config.topics.iter().map(String::as_str).collect();
        consumer.subscribe(&topics).with_context(|| format!("subscribing to {}", self.config.topics.join(", ")))?;
        tracing::info!(pipeline = %self.ctx.pipeline, brokers = %self.config.brokers, topics = ?self.config.topics,
            group = %self.config.group, ordering = ?self.config.ordering, "kafka trigger started");

        let (finished_tx, mut finished_rx) = mpsc::unbounded_channel();
        let mut loop_state = Consuming {
            trigger: &self,
            consumer: &consumer,
            sink: &sink,
            offsets,
            finished_tx,
            lanes: HashMap::new(),
            waiting: HashMap::new(),
            paused: Default::default(),
            overflow: VecDeque::new(),
        };
        let mut commit_every = tokio::time::interval(self.config.commit_interval);
        commit_every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            if let Some(record) = loop_state.overflow.pop_front() {
                if loop_state.take(record).await.is_err() {
                    break;
                }
                continue;
            }
            let step = tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = commit_every.tick() => { loop_state.commit(); Ok(()) }
                Some(done) = finished_rx.recv() => loop_state.finished(done).await,
                message = consumer.recv() => match message {
                    Ok(message) => {
                        let record = record_of(&message);
                        loop_state.take(record).await
                    }
                    Err(e) => {
                        tracing::warn!(pipeline = %self.ctx.pipeline, error = %e, "kafka consume error");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        Ok(())
                    }
                },
            };
            if step.is_err() {
                break;
            }
        }
        // Stopping: no new records; the executor finishes what it has (within its grace
        // period). Keep recording what finishes until it is gone, then commit once more.
        let _ = consumer.pause(&consumer.assignment().unwrap_or_default());
        loop {
            tokio::select! {
                _ = sink.drained() => break,
                Some(done) = finished_rx.recv() => {
                    loop_state.offsets.lock().unwrap_or_else(|p| p.into_inner()).finished(&done.partition, done.offset);
                }
                _ = consumer.recv() => {}
            }
        }
        while let Ok(done) = finished_rx.try_recv() {
            loop_state.offsets.lock().unwrap_or_else(|p| p.into_inner()).finished(&done.partition, done.offset);
        }
        let commits = loop_state.offsets.lock().unwrap_or_else(|p| p.into_inner()).take_commits();
        if !commits.is_empty() {
            if let Err(e) = consumer.commit(&commit_list(&commits), CommitMode::Sync) {
                tracing::warn!(pipeline = %self.ctx.pipeline, error = %e, "final commit failed; uncommitted records will be delivered again");
            }
        }
        tracing::info!(pipeline = %self.ctx.pipeline, "kafka trigger stopped");
        Ok(())
    }
}
