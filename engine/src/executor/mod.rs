//! The executor: takes events off a pipeline's bounded queue and runs them through
//! the step graph within permits, then acknowledges them to their trigger.
//!
//! ```text
//! queue ──▶ event slot (≤ concurrency) ──▶ step graph ──▶ invocation permits
//!                                         (pipeline ≤ concurrency, engine ≤ global)
//! ```
//! An event is acknowledged only after all its sub-steps finished: `Done` if they all
//! succeeded, `DeadLettered` once its dead-letter record is written, and not at all if
//! the engine stopped first (the trigger delivers it again).

pub mod dead_letter;
mod graph;
mod invoke;
mod records;

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, Semaphore};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use weir_functions::trigger_event::ObjectChange;
use weir_functions::{ErrorKind, FunctionError, Item, LazyEvent, Metadata, Payload, Stores, TriggerEvent};

use crate::config::Pipeline;
use crate::state::Ledger;
use crate::trigger::{Event, EventSource, Outcome};
use dead_letter::{DeadLetter, DeadLetterTarget};

/// Live counters of one pipeline's executor. Tests assert on them; logs report them.
#[derive(Debug, Default)]
pub struct ExecutorStats {
    pub invocations_running: AtomicUsize,
    /// Most invocations of this pipeline ever running at once.
    pub invocations_high_water: AtomicUsize,
    pub events_running: AtomicUsize,
    pub events_done: AtomicU64,
    pub events_dead_lettered: AtomicU64,
    /// Events not finished because the engine stopped, or their dead letter failed.
    pub events_abandoned: AtomicU64,
    /// Kafka records finished: done, and dead-lettered (a chunk is one event).
    pub records_done: AtomicU64,
    pub records_dead_lettered: AtomicU64,
}

/// What every invocation of one event shares.
pub(crate) struct EventScope {
    pub started: Instant,
    pub trigger_event: Option<LazyEvent>,
    /// Log invocations at debug level (Kafka records: they log per chunk).
    pub quiet: bool,
}

/// Reads an object as a stream, refusing it as soon as it grows past `limit` bytes.
pub async fn read_object(stores: &Stores, url: &str, key: &str, limit: u64) -> Result<bytes::Bytes, FunctionError> {
    weir_functions::object::read_limited(&stores.resolve(url)?, key, limit).await
}

/// Why an event failed: the step, the error, how often it was tried.
#[derive(Debug)]
pub struct StepFailure {
    pub step: String,
    pub error: FunctionError,
    pub attempts: u32,
}

/// Everything needed to run one pipeline's events.
pub struct PipelineRuntime {
    pub pipeline: Arc<Pipeline>,
    pub name: Arc<str>,
    pub ledger: Ledger,
    pub stores: Stores,
    /// Invocation permits shared by every pipeline of the engine.
    pub global: Arc<Semaphore>,
    /// This pipeline's invocation permits (`limits.concurrency`).
    pub local: Arc<Semaphore>,
    /// Where failed events go, as configured (`file://…`, `kafka://topic`).
    pub dead_letter_url: String,
    pub dead_letters: DeadLetterTarget,
    pub stats: Arc<ExecutorStats>,
    /// Step names as shared strings, for each invocation's context.
    step_names: Vec<Arc<str>>,
    graph: graph::Graph,
}

impl PipelineRuntime {
    /// Fails only when a dead-letter topic's producer cannot be created.
    pub fn new(
        pipeline: Arc<Pipeline>,
        ledger: Ledger,
        stores: Stores,
        global: Arc<Semaphore>,
        default_dead_letter: String,
    ) -> Result<Self, String> {
        let graph = graph::Graph::new(&pipeline.steps);
        let dead_letter_url = pipeline.retry.dead_letter.clone().unwrap_or(default_dead_letter);
        let dead_letters = DeadLetterTarget::new(&dead_letter_url, &pipeline.trigger)?;
        Ok(Self {
            name: Arc::from(pipeline.name.as_str()),
            local: Arc::new(Semaphore::new(pipeline.limits.concurrency)),
            step_names: pipeline.steps.iter().map(|s| Arc::from(s.name.as_str())).collect(),
            dead_letter_url,
            dead_letters,
            pipeline,
            ledger,
            stores,
            global,
            stats: Default::default(),
            graph,
        })
    }

    pub(crate) fn graph_roots(&self) -> &[usize] {
        self.graph.roots()
    }

    /// Runs events from `queue` until `shutdown`, then lets in-flight events finish
    /// for up to `grace`. Events still queued are left unacknowledged.
    pub async fn serve(
        self: Arc<Self>,
        mut queue: mpsc::Receiver<Event>,
        shutdown: CancellationToken,
        grace: Duration,
    ) {
        let slots = Arc::new(Semaphore::new(self.pipeline.limits.concurrency));
        let mut running = JoinSet::new();
        loop {
            while running.try_join_next().is_some() {}
            let slot = tokio::select! {
                _ = shutdown.cancelled() => break,
                slot = slots.clone().acquire_owned() => slot.expect("slots are never closed"),
            };
            let event = tokio::select! {
                _ = shutdown.cancelled() => break,
                event = queue.recv() => match event { Some(e) => e, None => break },
            };
            let this = self.clone();
            running.spawn(async move {
                let _slot = slot;
                this.process(event).await;
            });
        }
        queue.close();
        while running.try_join_next().is_some() {}
        let in_flight = running.len();
        if in_flight > 0 {
            tracing::info!(pipeline = %self.name, in_flight, grace = ?grace, "draining in-flight events");
        }
        let drained = tokio::time::timeout(grace, async { while running.join_next().await.is_some() {} }).await;
        if drained.is_err() {
            let left = running.len();
            running.abort_all();
            while running.join_next().await.is_some() {}
            self.stats.events_abandoned.fetch_add(left as u64, Ordering::Relaxed);
            tracing::warn!(pipeline = %self.name, abandoned = left, "grace period over; unfinished events will be delivered again");
        }
    }

    /// One event's whole life: run, record, dead-letter on failure, acknowledge.
    pub async fn process(&self, event: Event) -> Outcome {
        if let EventSource::KafkaChunk { records } = &event.source {
            let records = records.clone();
            return records::process(self, event, records).await;
        }
        self.stats.events_running.fetch_add(1, Ordering::Relaxed);
        let started = Instant::now();
        let source = event.source.describe();
        if let Err(e) = self.ledger.run_started(&event.id, &self.name, &source).await {
            tracing::warn!(pipeline = %self.name, error = %e, "cannot record run start");
        }
        let (outcome, status, attempts, error) = match self.execute(&event.id, &event.source).await {
            Ok(invocations) => {
                tracing::info!(pipeline = %self.name, key = %source, invocations, duration_ms = started.elapsed().as_millis() as u64, "event done");
                (Outcome::Done, "done", 1, None)
            }
            Err(failure) => {
                let chain = failure.error.chain();
                tracing::error!(pipeline = %self.name, key = %source, step = %failure.step, attempts = failure.attempts, error = %chain, "event failed");
                match self.write_dead_letter(&event.id, event.source.clone(), event.received_at, &failure).await {
                    Ok(at) => {
                        tracing::info!(pipeline = %self.name, key = %source, dead_letter = %at, "dead letter written");
                        (Outcome::DeadLettered, "dead_letter", failure.attempts, Some(chain))
                    }
                    Err(e) => {
                        tracing::error!(pipeline = %self.name, key = %source, error = %e.chain(), "cannot write dead letter; the event will be retried later");
                        (Outcome::Abandoned, "failed", failure.attempts, Some(chain))
                    }
                }
            }
        };
        // Acknowledge first: a crash between the two leaves a finished event whose run
        // still reads "running" — never a run reported done whose event is redone.
        event.acker.ack(&event, outcome).await;
        if let Err(e) = self.ledger.run_finished(&event.id, status, attempts, started.elapsed(), error).await {
            tracing::warn!(pipeline = %self.name, error = %e, "cannot record run end");
        }
        let counter = match outcome {
            Outcome::Done => &self.stats.events_done,
            Outcome::DeadLettered => &self.stats.events_dead_lettered,
            Outcome::Abandoned => &self.stats.events_abandoned,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        self.stats.events_running.fetch_sub(1, Ordering::Relaxed);
        outcome
    }

    /// Runs an event's steps; returns how many invocations it took.
    pub async fn execute(&self, id: &str, source: &EventSource) -> Result<usize, StepFailure> {
        if let EventSource::Kafka { record } = source {
            return records::execute_one(self, record).await;
        }
        let scope = EventScope {
            started: Instant::now(),
            trigger_event: self.trigger_event(id, source).map(LazyEvent::ready),
            quiet: false,
        };
        let root = self.load(source, &scope).await?;
        graph::run(self, root, None, &scope).await
    }

    /// The event in AWS Lambda's shape, for functions that read it from their context.
    fn trigger_event(&self, id: &str, source: &EventSource) -> Option<TriggerEvent> {
        let (url, key, size, version, time, name) = match source {
            EventSource::Object { url, key, size, version, last_modified } => {
                (url, key, Some(*size), Some(version.as_str()), *last_modified, "ObjectCreated:Put")
            }
            EventSource::ObjectRemoved { url, key } => (url, key, None, None, None, "ObjectRemoved:Delete"),
            EventSource::Schedule { time, .. } => return Some(TriggerEvent::scheduled(id, &self.name, *time)),
            EventSource::Kafka { .. } | EventSource::KafkaChunk { .. } | EventSource::Json { .. } => return None,
        };
        let bucket = self.stores.resolve(url).ok()?;
        let full_key = bucket.path(key).ok()?.to_string();
        let (scheme, rest) = url.split_once("://")?;
        let bucket_name = rest.split('/').next().unwrap_or(rest);
        Some(TriggerEvent::s3(ObjectChange {
            scheme,
            bucket: bucket_name,
            key: &full_key,
            event_name: name,
            size,
            etag: version,
            time,
            ..Default::default()
        }))
    }

    /// The event's first item: the object's bytes, or the JSON document.
    async fn load(&self, source: &EventSource, scope: &EventScope) -> Result<Item, StepFailure> {
        match source {
            EventSource::Json { value } => Ok(Item::new(Payload::Json(value.clone()), Metadata::default())),
            EventSource::Schedule { time, schedule } => {
                let logical = crate::trigger::cron::tick_key(*time);
                let mut meta = Metadata::default();
                // For key templates: `reports/{attr.date}.json`, `{attr.scheduled_time}`.
                meta.attributes.insert("scheduled_time".into(), logical.clone());
                meta.attributes.insert("date".into(), time.format("%Y-%m-%d").to_string());
                meta.attributes.insert("hour".into(), time.format("%Y-%m-%dT%H").to_string());
                let body =
                    serde_json::json!({ "scheduled_time": logical, "schedule": schedule, "pipeline": &*self.name });
                Ok(Item::new(Payload::Json(body), meta))
            }
            EventSource::ObjectRemoved { url, key } => {
                Ok(Item::new(Payload::Empty, Metadata::for_object(url.clone(), key.clone())))
            }
            EventSource::Kafka { .. } | EventSource::KafkaChunk { .. } => Err(StepFailure {
                step: "load".into(),
                error: FunctionError::permanent("Kafka records run through executor::records"),
                attempts: 1,
            }),
            EventSource::Object { url, key, size, .. } => {
                let limit = self.pipeline.limits.max_input_bytes;
                if *size > limit {
                    return Err(StepFailure {
                        step: "load".into(),
                        error: FunctionError::permanent(format!(
                            "{key} is {size} bytes, over max_input_bytes = {limit}"
                        )),
                        attempts: 1,
                    });
                }
                invoke::with_retries(self, "load", scope.started, true, |_| async move {
                    let bytes = read_object(&self.stores, url, key, limit).await?;
                    Ok(Item::new(Payload::Bytes(bytes), Metadata::for_object(url.clone(), key.clone())))
                })
                .await
            }
        }
    }

    /// Writes a failed event's dead letter; returns where it went.
    pub(crate) async fn write_dead_letter(
        &self,
        id: &str,
        source: EventSource,
        received_at: std::time::SystemTime,
        failure: &StepFailure,
    ) -> Result<String, FunctionError> {
        let record = DeadLetter {
            id: id.to_string(),
            pipeline: self.name.to_string(),
            event: source,
            step: failure.step.clone(),
            error: failure.error.chain(),
            error_kind: if failure.error.is_retryable() { ErrorKind::Retryable } else { ErrorKind::Permanent },
            attempts: failure.attempts,
            received_at: received_at.into(),
            failed_at: chrono::Utc::now(),
            redrives: 0,
        };
        self.dead_letters.write(&self.stores, &record).await
    }

    /// Dead-letters input that never became an event (a malformed notification), so
    /// what was sent is kept next to the pipeline's other failures.
    pub async fn dead_letter_input(
        &self,
        source: EventSource,
        step: &str,
        error: &str,
    ) -> Result<String, FunctionError> {
        let now = chrono::Utc::now();
        let record = DeadLetter {
            id: uuid::Uuid::now_v7().to_string(),
            pipeline: self.name.to_string(),
            event: source,
            step: step.to_string(),
            error: error.to_string(),
            error_kind: ErrorKind::Permanent,
            attempts: 1,
            received_at: now,
            failed_at: now,
            redrives: 0,
        };
        self.dead_letters.write(&self.stores, &record).await
    }
}
