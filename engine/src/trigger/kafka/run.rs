//! Running Kafka records: a chunk of one partition's consecutive records, or one record
//! on its own (`weir dlq redrive`).
//!
//! Each record is its own unit of work — its own walk through the steps, its own
//! retries, its own dead letter — and is reported finished to the trigger as soon as
//! it is, so commits advance record by record. What may run side by side follows the
//! trigger's `ordering`: one record after another (`partition`), keys side by side but
//! each key in order (`key`), or everything within the concurrency limit (`none`).
//! With `batch_size`, the first step takes the chunk as one batch instead, and only the
//! records it reports as failed are retried or dead-lettered (partial batch failure).

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering as AtomicOrdering};
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::Instant;

use futures::stream::{FuturesUnordered, StreamExt};
use weir_functions::trigger_event::RecordFacts;
use weir_functions::{FunctionError, Item, LazyEvent, Metadata, Payload, SourceAttributes, TriggerEvent};

use super::{KafkaConfig, Ordering, Record, RecordFormat};
use crate::event::{Event, Outcome, Ran, Runner, Scope, Settled, StepFailure, Work};
use crate::trigger::notification::{self, Change, Notification};
use crate::trigger::object_store::ObjectRun;

/// Consecutive records of one partition, delivered together ([`super::chunk`]); each
/// finishes, and is dead-lettered, on its own.
pub struct ChunkWork {
    pub config: Arc<KafkaConfig>,
    pub records: Arc<[Record]>,
}

#[async_trait::async_trait]
impl Work for ChunkWork {
    fn describe(&self) -> String {
        let records = &self.records;
        match (records.first(), records.last()) {
            (Some(first), Some(last)) if records.len() > 1 => format!("{}..={}", first.name(), last.offset),
            (Some(first), _) => first.name(),
            _ => "<no records>".into(),
        }
    }

    /// Never dead-lettered whole (its records are, one by one, as [`RecordWork`]).
    fn record(&self) -> serde_json::Value {
        serde_json::json!({ "type": "kafka_chunk", "records": &*self.records })
    }

    fn quiet(&self) -> bool {
        true
    }

    /// Records finished before a shutdown stay finished (and get committed); the rest
    /// are delivered again.
    async fn run(&self, runner: &dyn Runner, event: &Event) -> Ran {
        // Unconstrained by tokio's cooperative budget: quick records run back to back, and
        // a yield forced by the budget would look like a record waiting (and add a worker).
        Ran::Settled(tokio::task::unconstrained(self.run_chunk(runner, event)).await)
    }
}

impl ChunkWork {
    async fn run_chunk(&self, runner: &dyn Runner, event: &Event) -> Settled {
        let (config, records) = (&self.config, &self.records);
        let started = Instant::now();
        let run = Chunk {
            runner,
            config,
            event,
            records,
            brokers: Arc::from(config.brokers.as_str()),
            dead_lettered: AtomicUsize::new(0),
            first_error: Mutex::new(None),
            abandoned: AtomicBool::new(false),
        };
        if config.batch.is_some() {
            run.as_batch().await;
        } else {
            // Units of records that run in order, one after another; units side by side.
            let units: Vec<Vec<usize>> = match config.ordering {
                Ordering::Partition => vec![(0..records.len()).collect()],
                Ordering::Key => {
                    // Units in the order their keys first appear; a map, since a chunk
                    // of 500 records may well hold 500 keys.
                    let mut units: Vec<Vec<usize>> = Vec::new();
                    let mut unit_of: HashMap<Option<&str>, usize> = HashMap::with_capacity(records.len());
                    for (index, record) in records.iter().enumerate() {
                        let unit = *unit_of.entry(record.key.as_deref()).or_insert_with(|| {
                            units.push(Vec::new());
                            units.len() - 1
                        });
                        units[unit].push(index);
                    }
                    units
                }
                Ordering::None => (0..records.len()).map(|i| vec![i]).collect(),
            };
            run.run_units(&units, runner.concurrency()).await;
        }
        let dead = run.dead_lettered.load(AtomicOrdering::Relaxed);
        let abandoned = run.abandoned.load(AtomicOrdering::Relaxed);
        let outcome = match (abandoned, dead) {
            (true, _) => Outcome::Abandoned,
            (false, 0) => Outcome::Done,
            (false, _) => Outcome::DeadLettered,
        };
        tracing::debug!(pipeline = %runner.pipeline(), records = %self.describe(), count = records.len(),
            dead_lettered = dead, duration_ms = started.elapsed().as_millis() as u64, "records done");
        Settled {
            outcome,
            error: run.summary(dead),
            parts_done: (records.len() - dead) as u64,
            parts_dead_lettered: dead as u64,
        }
    }
}

/// One record (a dead letter being re-driven). Its dead-letter record is
/// `{"type": "kafka", "record": {…}}`.
pub struct RecordWork {
    pub config: Arc<KafkaConfig>,
    pub record: Record,
}

#[async_trait::async_trait]
impl Work for RecordWork {
    fn describe(&self) -> String {
        self.record.name()
    }

    fn record(&self) -> serde_json::Value {
        serde_json::json!({ "type": "kafka", "record": &self.record })
    }

    fn quiet(&self) -> bool {
        true
    }

    async fn run(&self, runner: &dyn Runner, _event: &Event) -> Ran {
        let records: Arc<[Record]> = Arc::from(vec![self.record.clone()]);
        let brokers = Arc::from(self.config.brokers.as_str());
        run_record(runner, &self.config, &brokers, &records, 0).await.into()
    }
}

impl RecordWork {
    /// The work a `{"type": "kafka", …}` dead-letter record stands for.
    pub fn revive(record: &serde_json::Value, config: &KafkaConfig) -> Result<Arc<dyn Work>, String> {
        if record.get("type").and_then(|t| t.as_str()) != Some("kafka") {
            return Err("not a Kafka record".into());
        }
        let value = record.get("record").cloned().unwrap_or_default();
        let record: Record = serde_json::from_value(value).map_err(|e| format!("not a Kafka record: {e}"))?;
        if !config.consumes(&record.topic) {
            return Err(format!(
                "the record is from topic {:?}, which this pipeline does not consume ({})",
                record.topic,
                config.topics.join(", ")
            ));
        }
        Ok(Arc::new(RecordWork { config: Arc::new(config.clone()), record }))
    }
}

/// A chunk being run: what its records' outcomes add up to.
struct Chunk<'a> {
    runner: &'a dyn Runner,
    config: &'a Arc<KafkaConfig>,
    event: &'a Event,
    records: &'a Arc<[Record]>,
    brokers: Arc<str>,
    dead_lettered: AtomicUsize,
    first_error: Mutex<Option<String>>,
    abandoned: AtomicBool,
}

impl Chunk<'_> {
    /// Runs `units` (record indices, each unit in order) with as many workers as keep
    /// them moving: one to start, one more whenever all are waiting, up to `limit`.
    /// Quick records thus run back to back on one worker, with nothing allocated per
    /// record, and slow ones get up to `limit` side by side.
    async fn run_units(&self, units: &[Vec<usize>], limit: usize) {
        let next = AtomicUsize::new(0);
        let worker = || async {
            while let Some(unit) = units.get(next.fetch_add(1, AtomicOrdering::Relaxed)) {
                for &index in unit {
                    if !self.one(index).await {
                        break;
                    }
                }
            }
        };
        let mut workers = FuturesUnordered::new();
        workers.push(worker());
        std::future::poll_fn(|cx| loop {
            match workers.poll_next_unpin(cx) {
                Poll::Ready(Some(())) => continue,
                Poll::Ready(None) => return Poll::Ready(()),
                Poll::Pending => {
                    if next.load(AtomicOrdering::Relaxed) < units.len() && workers.len() < limit.max(1) {
                        workers.push(worker());
                        continue;
                    }
                    return Poll::Pending;
                }
            }
        })
        .await
    }

    /// Runs record `index`; false if it could not be finished (its dead letter failed),
    /// so that records after it in an ordered lane wait for a redelivery too.
    async fn one(&self, index: usize) -> bool {
        if self.abandoned.load(AtomicOrdering::Relaxed) && self.config.ordering != Ordering::None {
            return false;
        }
        match run_record(self.runner, self.config, &self.brokers, self.records, index).await {
            Ok(_) => {
                self.event.acker.ack_part(index);
                true
            }
            Err(failure) => Box::pin(self.fail(index, failure)).await,
        }
    }

    /// Dead-letters record `index`; true once the dead letter is written.
    async fn fail(&self, index: usize, failure: StepFailure) -> bool {
        let record = &self.records[index];
        let chain = failure.error.chain();
        let pipeline = self.runner.pipeline();
        tracing::error!(pipeline = %pipeline, key = %record.name(), step = %failure.step,
            attempts = failure.attempts, error = %chain, "record failed");
        let work = RecordWork { config: self.config.clone(), record: record.clone() };
        let id = uuid::Uuid::now_v7().to_string();
        match self.runner.dead_letter(&id, &work, self.event.received_at, &failure).await {
            Ok(at) => {
                tracing::info!(pipeline = %pipeline, key = %record.name(), dead_letter = %at, "dead letter written");
                self.event.acker.ack_part(index);
                self.dead_lettered.fetch_add(1, AtomicOrdering::Relaxed);
                self.first_error.lock().unwrap_or_else(|p| p.into_inner()).get_or_insert(chain);
                true
            }
            Err(e) => {
                tracing::error!(pipeline = %pipeline, key = %record.name(), error = %e.brief(),
                    "cannot write dead letter; the record will be delivered again");
                self.abandoned.store(true, AtomicOrdering::Relaxed);
                false
            }
        }
    }

    fn summary(&self, dead: usize) -> Option<String> {
        let first = self.first_error.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let abandoned = self.abandoned.load(AtomicOrdering::Relaxed);
        match (first, abandoned) {
            (Some(first), _) => {
                Some(format!("{dead} of {} record(s) dead-lettered; first: {first}", self.records.len()))
            }
            (None, true) => Some("a dead letter could not be written; unfinished records are delivered again".into()),
            (None, false) => None,
        }
    }

    /// `batch_size`: the first step gets the chunk as one collection. Records it reports
    /// failed (a partial batch failure) are retried on their own, then dead-lettered;
    /// a failure after it fails every record the batch step passed.
    async fn as_batch(&self) {
        let mut items = Vec::with_capacity(self.records.len());
        let mut indices = Vec::with_capacity(self.records.len());
        for index in 0..self.records.len() {
            match record_item(self.config.format, self.records, index, self.runner.max_input_bytes()) {
                Ok(item) => {
                    items.push(item);
                    indices.push(index);
                }
                Err(failure) => {
                    self.fail(index, failure).await;
                }
            }
        }
        if items.is_empty() {
            return;
        }
        let records = self.records.clone();
        let brokers = self.brokers.clone();
        let batch_indices = indices.clone();
        let lambda = LazyEvent::new(move || {
            TriggerEvent::kafka_batch(&brokers, batch_indices.iter().map(|&i| facts(&brokers, &records[i])))
        });
        let scope = Scope::new(Some(lambda), true);
        let ran = self.runner.run_batch(items, &scope).await;
        let mut failed = vec![false; indices.len()];
        for (position, failure) in ran.failed {
            failed[position] = true;
            self.fail(indices[position], failure).await;
        }
        match ran.after {
            Ok(_) => {
                for (position, &index) in indices.iter().enumerate() {
                    if !failed[position] {
                        self.event.acker.ack_part(index);
                    }
                }
            }
            Err(failure) => {
                for (position, &index) in indices.iter().enumerate() {
                    if !failed[position] {
                        let copy = StepFailure {
                            step: failure.step.clone(),
                            error: failure.error.copied(),
                            attempts: failure.attempts,
                        };
                        self.fail(index, copy).await;
                    }
                }
            }
        }
    }
}

fn facts<'a>(brokers: &'a str, record: &'a Record) -> RecordFacts<'a> {
    RecordFacts {
        bootstrap_servers: brokers,
        topic: &record.topic,
        partition: record.partition,
        offset: record.offset,
        timestamp: record.timestamp,
        key: record.key.as_deref().map(str::as_bytes),
        value: &record.value,
        headers: record.headers.iter().map(|h| (h.name.as_str(), &h.value[..])).collect(),
    }
}

/// Record `index` of `records` through the steps.
async fn run_record(
    runner: &dyn Runner,
    config: &KafkaConfig,
    brokers: &Arc<str>,
    records: &Arc<[Record]>,
    index: usize,
) -> Result<usize, StepFailure> {
    let record = &records[index];
    let limit = runner.max_input_bytes();
    if config.format == RecordFormat::S3Event {
        within_limit(record, limit)?;
        // Boxed, like every path records rarely take: each record's future is as large
        // as its largest path.
        return Box::pin(run_notification(runner, config, record)).await;
    }
    let item = record_item(config.format, records, index, limit)?;
    let again = || record_item(config.format, records, index, limit).ok();
    let (shared, brokers) = (records.clone(), brokers.clone());
    let lambda = LazyEvent::new(move || TriggerEvent::kafka(facts(&brokers, &shared[index])));
    runner.run(item, Some(&again), &Scope::new(Some(lambda), true)).await
}

/// A record's `{attr.topic}`, `{attr.partition}`, `{attr.offset}`, `{attr.record_key}`,
/// `{attr.header.<name>}` (as text) and its timestamp's `{attr.timestamp}`,
/// `{attr.date}` and `{attr.hour}` (UTC, for hourly keys like the Kafka Connect S3
/// sink's time-based partitioner), read from the record itself when asked.
struct RecordAttributes {
    records: Arc<[Record]>,
    index: usize,
}

impl SourceAttributes for RecordAttributes {
    fn get(&self, name: &str) -> Option<Cow<'_, str>> {
        let record = self.records.get(self.index)?;
        match name {
            "topic" => Some(Cow::Borrowed(&record.topic)),
            "partition" => Some(Cow::Owned(record.partition.to_string())),
            "offset" => Some(Cow::Owned(record.offset.to_string())),
            "record_key" => record.key.as_deref().map(Cow::Borrowed),
            "timestamp" => record.timestamp.map(|t| Cow::Owned(t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))),
            "date" => record.timestamp.map(|t| Cow::Owned(t.format("%Y-%m-%d").to_string())),
            "hour" => record.timestamp.map(|t| Cow::Owned(t.format("%H").to_string())),
            _ => {
                let value = record.header(name.strip_prefix("header.")?)?;
                Some(String::from_utf8_lossy(value))
            }
        }
    }

    fn names(&self) -> &'static [&'static str] {
        &["topic", "partition", "offset", "record_key", "timestamp", "date", "hour"]
    }
}

/// Record `index`'s item: its value as bytes or JSON. `{key}` in output templates is
/// `topic/partition/offset`, so outputs of a redelivered record overwrite themselves.
/// A record over `max_input_bytes` is dead-lettered like an oversized object: the
/// limit bounds what one event may make the functions hold, whatever its source.
fn within_limit(record: &Record, limit: u64) -> Result<(), StepFailure> {
    let size = record.value.len() as u64;
    if size > limit {
        return Err(StepFailure::load(FunctionError::permanent(format!(
            "record {} is {size} bytes, over max_input_bytes = {limit}",
            record.name()
        ))));
    }
    Ok(())
}

fn record_item(format: RecordFormat, records: &Arc<[Record]>, index: usize, limit: u64) -> Result<Item, StepFailure> {
    let record = &records[index];
    within_limit(record, limit)?;
    let source = Arc::new(RecordAttributes { records: records.clone(), index });
    let meta = Metadata { key: Some(record.name()), source: Some(source), ..Metadata::default() };
    let payload = match format {
        RecordFormat::Json | RecordFormat::S3Event => {
            let value = serde_json::from_slice(&record.value).map_err(|e| {
                StepFailure::load(FunctionError::permanent(format!("record {} is not JSON: {e}", record.name())))
            })?;
            Payload::Json(value)
        }
        RecordFormat::Bytes => Payload::Bytes(record.value.clone()),
    };
    Ok(Item::new(payload, meta))
}

/// `format = "s3_event"`: each created object the notification names, in the trigger's
/// bucket and under its filter, is read and run through the steps like an object-store
/// trigger's event (`{key}` is the object key, `ctx.event` Lambda's S3 event). The
/// record is finished when all of them are.
async fn run_notification(runner: &dyn Runner, config: &KafkaConfig, record: &Record) -> Result<usize, StepFailure> {
    let Some(bucket) = &config.objects else {
        return Err(StepFailure::load(FunctionError::permanent("format = \"s3_event\" without a bucket url")));
    };
    let notices = match notification::parse(&record.value) {
        Ok(Notification::Objects(notices)) => notices,
        Ok(Notification::Test | Notification::SubscriptionConfirmation { .. }) => Vec::new(),
        Err(e) => {
            return Err(StepFailure::load(FunctionError::permanent(format!(
                "record {} is not a bucket notification: {e}",
                record.name()
            ))))
        }
    };
    let mut invocations = 0;
    for notice in notices {
        if notice.change != Change::Created || notice.bucket != bucket.bucket || !bucket.filter.matches(&notice.key) {
            tracing::debug!(pipeline = %runner.pipeline(), bucket = %notice.bucket, key = %notice.key, "notification ignored");
            continue;
        }
        let object = ObjectRun {
            url: &bucket.url,
            key: &notice.key,
            size: notice.size,
            etag: notice.etag.as_deref(),
            time: notice.time,
            event_name: &notice.event_name,
            bucket: Some(&notice.bucket),
            version_id: notice.version_id.as_deref(),
            sequencer: notice.sequencer.as_deref(),
        };
        invocations += object.run(runner).await?;
    }
    Ok(invocations)
}
