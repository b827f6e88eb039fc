//! Kafka records: running a chunk of one partition's consecutive records.
//!
//! Each record is its own unit of work — its own walk through the steps, its own
//! retries, its own dead letter — and is reported finished to the trigger as soon as
//! it is, so commits advance record by record. What may run side by side follows the
//! trigger's `ordering`: one record after another (`partition`), keys side by side but
//! each key in order (`key`), or everything within the concurrency limit (`none`).
//! With `batch_size`, the first step takes the chunk as one batch instead, and only the
//! records it reports as failed are retried or dead-lettered (partial batch failure).

use std::borrow::Cow;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering as AtomicOrdering};
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::Instant;

use futures::stream::{FuturesUnordered, StreamExt};
use weir_functions::trigger_event::{ObjectChange, RecordFacts};
use weir_functions::{FunctionError, Item, LazyEvent, Metadata, Payload, SourceAttributes, TriggerEvent};

use super::{graph, invoke, EventScope, PipelineRuntime, StepFailure};
use crate::trigger::kafka::{KafkaConfig, Ordering, Record, RecordFormat};
use crate::trigger::notification::{self, Change, Notification, ObjectNotice};
use crate::trigger::{Event, EventSource, Outcome, TriggerConfig};

/// Runs a chunk and acknowledges it. Records finished before a shutdown stay finished
/// (and get committed); the rest are delivered again.
pub(super) async fn process(rt: &PipelineRuntime, event: Event, records: Arc<[Record]>) -> Outcome {
    if !event.acker.wanted() {
        // Its partition was revoked while it waited: the next owner runs it.
        event.acker.ack(&event, Outcome::Abandoned).await;
        return Outcome::Abandoned;
    }
    let Some(config) = kafka_config(rt) else {
        tracing::error!(pipeline = %rt.name, "Kafka records for a pipeline without a Kafka trigger");
        event.acker.ack(&event, Outcome::Abandoned).await;
        return Outcome::Abandoned;
    };
    // Unconstrained by tokio's cooperative budget: quick records run back to back, and
    // a yield forced by the budget would look like a record waiting (and add a worker).
    tokio::task::unconstrained(run_chunk(rt, config, event, records)).await
}

async fn run_chunk(rt: &PipelineRuntime, config: &KafkaConfig, event: Event, records: Arc<[Record]>) -> Outcome {
    rt.stats.events_running.fetch_add(1, AtomicOrdering::Relaxed);
    let started = Instant::now();
    let run = Chunk {
        rt,
        config,
        event: &event,
        records: &records,
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
                let mut keys: Vec<(Option<&str>, Vec<usize>)> = Vec::new();
                for (index, record) in records.iter().enumerate() {
                    match keys.iter_mut().find(|(k, _)| *k == record.key.as_deref()) {
                        Some((_, indices)) => indices.push(index),
                        None => keys.push((record.key.as_deref(), vec![index])),
                    }
                }
                keys.into_iter().map(|(_, indices)| indices).collect()
            }
            Ordering::None => (0..records.len()).map(|i| vec![i]).collect(),
        };
        run.run_units(&units, rt.pipeline.limits.concurrency).await;
    }
    let dead = run.dead_lettered.load(AtomicOrdering::Relaxed);
    let abandoned = run.abandoned.load(AtomicOrdering::Relaxed);
    let outcome = match (abandoned, dead) {
        (true, _) => Outcome::Abandoned,
        (false, 0) => Outcome::Done,
        (false, _) => Outcome::DeadLettered,
    };
    event.acker.ack(&event, outcome).await;
    let (status, error) = match outcome {
        Outcome::Done => ("done", None),
        Outcome::DeadLettered => ("dead_letter", run.summary(dead)),
        Outcome::Abandoned => ("failed", run.summary(dead)),
    };
    let source = event.source.describe();
    tracing::debug!(pipeline = %rt.name, records = %source, count = records.len(), dead_lettered = dead,
        duration_ms = started.elapsed().as_millis() as u64, "records done");
    if let Err(e) = rt.ledger.run_recorded(&event.id, &rt.name, &source, status, 1, started.elapsed(), error).await {
        tracing::warn!(pipeline = %rt.name, error = %e, "cannot record run");
    }
    let stats = &rt.stats;
    stats.records_done.fetch_add((records.len() - dead) as u64, AtomicOrdering::Relaxed);
    stats.records_dead_lettered.fetch_add(dead as u64, AtomicOrdering::Relaxed);
    let counter = match outcome {
        Outcome::Done => &stats.events_done,
        Outcome::DeadLettered => &stats.events_dead_lettered,
        Outcome::Abandoned => &stats.events_abandoned,
    };
    counter.fetch_add(1, AtomicOrdering::Relaxed);
    stats.events_running.fetch_sub(1, AtomicOrdering::Relaxed);
    outcome
}

/// One record through the steps, outside any chunk (`weir dlq redrive`).
pub(super) async fn execute_one(rt: &PipelineRuntime, record: &Record) -> Result<usize, StepFailure> {
    let Some(config) = kafka_config(rt) else {
        return Err(load_failure(FunctionError::permanent(format!(
            "record {} is for a Kafka pipeline; {} has no Kafka trigger",
            record.name(),
            rt.name
        ))));
    };
    let records: Arc<[Record]> = Arc::from(vec![record.clone()]);
    run_record(rt, config, &Arc::from(config.brokers.as_str()), &records, 0).await
}

fn kafka_config(rt: &PipelineRuntime) -> Option<&KafkaConfig> {
    match &rt.pipeline.trigger {
        TriggerConfig::Kafka(config) => Some(config),
        _ => None,
    }
}

/// A chunk being run: what its records' outcomes add up to.
struct Chunk<'a> {
    rt: &'a PipelineRuntime,
    config: &'a KafkaConfig,
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
        match run_record(self.rt, self.config, &self.brokers, self.records, index).await {
            Ok(_) => {
                self.event.acker.ack_record(index);
                true
            }
            Err(failure) => Box::pin(self.fail(index, failure)).await,
        }
    }

    /// Dead-letters record `index`; true once the dead letter is written.
    async fn fail(&self, index: usize, failure: StepFailure) -> bool {
        let record = &self.records[index];
        let chain = failure.error.chain();
        tracing::error!(pipeline = %self.rt.name, key = %record.name(), step = %failure.step,
            attempts = failure.attempts, error = %chain, "record failed");
        let source = EventSource::Kafka { record: record.clone() };
        let id = uuid::Uuid::now_v7().to_string();
        match self.rt.write_dead_letter(&id, source, self.event.received_at, &failure).await {
            Ok(at) => {
                tracing::info!(pipeline = %self.rt.name, key = %record.name(), dead_letter = %at, "dead letter written");
                self.event.acker.ack_record(index);
                self.dead_lettered.fetch_add(1, AtomicOrdering::Relaxed);
                self.first_error.lock().unwrap_or_else(|p| p.into_inner()).get_or_insert(chain);
                true
            }
            Err(e) => {
                tracing::error!(pipeline = %self.rt.name, key = %record.name(), error = %e.chain(),
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
            match record_item(self.config.format, self.records, index) {
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
        let scope = EventScope {
            started: Instant::now(),
            trigger_event: Some(LazyEvent::new(move || {
                TriggerEvent::kafka_batch(&brokers, batch_indices.iter().map(|&i| facts(&brokers, &records[i])))
            })),
            quiet: true,
        };
        let Some(&root) = self.rt.graph_roots().first() else { return };
        let (outputs, failures) = invoke::batch(self.rt, root, items, &scope).await;
        let mut failed = vec![false; indices.len()];
        for (position, failure) in failures {
            failed[position] = true;
            self.fail(indices[position], failure).await;
        }
        let meta = Metadata { key: self.records.first().map(Record::name), ..Metadata::default() };
        match graph::run_after(self.rt, root, outputs, meta, &scope).await {
            Ok(_) => {
                for (position, &index) in indices.iter().enumerate() {
                    if !failed[position] {
                        self.event.acker.ack_record(index);
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

fn load_failure(error: FunctionError) -> StepFailure {
    StepFailure { step: "load".into(), error, attempts: 1 }
}

/// Record `index` of `records` through the steps.
async fn run_record(
    rt: &PipelineRuntime,
    config: &KafkaConfig,
    brokers: &Arc<str>,
    records: &Arc<[Record]>,
    index: usize,
) -> Result<usize, StepFailure> {
    let record = &records[index];
    if config.format == RecordFormat::S3Event {
        // Boxed, like every path records rarely take: each record's future is as large
        // as its largest path.
        return Box::pin(run_notification(rt, config, record)).await;
    }
    let item = record_item(config.format, records, index)?;
    let again = || record_item(config.format, records, index).ok();
    let (shared, brokers) = (records.clone(), brokers.clone());
    let scope = EventScope {
        started: Instant::now(),
        trigger_event: Some(LazyEvent::new(move || TriggerEvent::kafka(facts(&brokers, &shared[index])))),
        quiet: true,
    };
    graph::run(rt, item, Some(&again), &scope).await
}

/// A record's `{attr.topic}`, `{attr.partition}`, `{attr.offset}`, `{attr.record_key}`
/// and `{attr.header.<name>}` (as text), read from the record itself when asked.
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
            _ => {
                let value = record.header(name.strip_prefix("header.")?)?;
                Some(String::from_utf8_lossy(value))
            }
        }
    }

    fn names(&self) -> &'static [&'static str] {
        &["topic", "partition", "offset", "record_key"]
    }
}

/// Record `index`'s item: its value as bytes or JSON. `{key}` in output templates is
/// `topic/partition/offset`, so outputs of a redelivered record overwrite themselves.
fn record_item(format: RecordFormat, records: &Arc<[Record]>, index: usize) -> Result<Item, StepFailure> {
    let record = &records[index];
    let source = Arc::new(RecordAttributes { records: records.clone(), index });
    let meta = Metadata { key: Some(record.name()), source: Some(source), ..Metadata::default() };
    let payload = match format {
        RecordFormat::Json | RecordFormat::S3Event => {
            let value = serde_json::from_slice(&record.value).map_err(|e| {
                load_failure(FunctionError::permanent(format!("record {} is not JSON: {e}", record.name())))
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
async fn run_notification(rt: &PipelineRuntime, config: &KafkaConfig, record: &Record) -> Result<usize, StepFailure> {
    let Some(bucket) = &config.objects else {
        return Err(load_failure(FunctionError::permanent("format = \"s3_event\" without a bucket url")));
    };
    let notices = match notification::parse(&record.value) {
        Ok(Notification::Objects(notices)) => notices,
        Ok(Notification::Test | Notification::SubscriptionConfirmation { .. }) => Vec::new(),
        Err(e) => {
            return Err(load_failure(FunctionError::permanent(format!(
                "record {} is not a bucket notification: {e}",
                record.name()
            ))))
        }
    };
    let mut invocations = 0;
    for notice in notices {
        if notice.change != Change::Created || notice.bucket != bucket.bucket || !bucket.filter.matches(&notice.key) {
            tracing::debug!(pipeline = %rt.name, bucket = %notice.bucket, key = %notice.key, "notification ignored");
            continue;
        }
        invocations += run_object(rt, &bucket.url, &notice).await?;
    }
    Ok(invocations)
}

async fn run_object(rt: &PipelineRuntime, url: &str, notice: &ObjectNotice) -> Result<usize, StepFailure> {
    let limit = rt.pipeline.limits.max_input_bytes;
    if let Some(size) = notice.size.filter(|s| *s > limit) {
        return Err(load_failure(FunctionError::permanent(format!(
            "{} is {size} bytes, over max_input_bytes = {limit}",
            notice.key
        ))));
    }
    let scope = EventScope {
        started: Instant::now(),
        trigger_event: Some(LazyEvent::ready(s3_shape(rt, url, notice))),
        quiet: false,
    };
    let key = &notice.key;
    let item = invoke::with_retries(rt, "load", scope.started, true, |_| async move {
        let bytes = super::read_object(&rt.stores, url, key, limit).await?;
        Ok(Item::new(Payload::Bytes(bytes), Metadata::for_object(url.to_string(), key.clone())))
    })
    .await?;
    graph::run(rt, item, None, &scope).await
}

fn s3_shape(rt: &PipelineRuntime, url: &str, notice: &ObjectNotice) -> TriggerEvent {
    let full_key = rt
        .stores
        .resolve(url)
        .ok()
        .and_then(|b| b.path(&notice.key).ok())
        .map(|p| p.to_string())
        .unwrap_or_else(|| notice.key.clone());
    let scheme = url.split_once("://").map(|(s, _)| s).unwrap_or("s3");
    TriggerEvent::s3(ObjectChange {
        scheme,
        bucket: &notice.bucket,
        key: &full_key,
        event_name: notice.event_name.strip_prefix("s3:").unwrap_or(&notice.event_name),
        size: notice.size,
        etag: notice.etag.as_deref(),
        version_id: notice.version_id.as_deref(),
        sequencer: notice.sequencer.as_deref(),
        time: notice.time,
    })
}
