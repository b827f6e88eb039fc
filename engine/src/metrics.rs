//! Prometheus metrics at `GET /metrics`, by the `metrics` facade and its Prometheus
//! exporter (text format 0.0.4, which `promtool check metrics` and every scraper read).
//!
//! Two kinds of figure, each counted once:
//! * what the engine already counts for itself ([`ExecutorStats`], [`QueueStats`]: events
//!   by outcome, in flight, queue depth, pauses) is copied into the recorder at each
//!   scrape, so a counter has one source of truth;
//! * what only metrics need (durations, invocations by step and outcome, retries) is
//!   recorded where it happens, through a pipeline's [`PipelineMeters`], made when its
//!   runtime is built. Without a recorder installed by then, they are no-ops.
//!
//! The recorder is process-wide (the facade's global): an application embedding two
//! engines sees their pipelines side by side, labelled by pipeline name.

use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime};

use metrics::{counter, gauge, histogram, Counter, Histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::event::QueueStats;
use crate::executor::ExecutorStats;

/// Histogram buckets for every `_seconds` metric: 1 ms to 5 min, the range from a
/// thumbnail to a large conversion.
const SECONDS_BUCKETS: &[f64] =
    &[0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0];

/// How often histogram samples (8 bytes each, kept until then) are folded into their
/// buckets, whether or not anyone scrapes: at 400,000 Kafka records a second, about
/// 3 MB wait at most.
pub const UPKEEP_EVERY: Duration = Duration::from_secs(1);

/// The process's recorder, installed on first use; `None` when the application
/// embedding weir installed a recorder of its own first (its metrics win; weir's
/// `/metrics` then says so).
pub fn recorder() -> Option<&'static PrometheusHandle> {
    static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), SECONDS_BUCKETS)
                .expect("the bucket list is not empty");
            let recorder = builder.build_recorder();
            let handle = recorder.handle();
            match metrics::set_global_recorder(recorder) {
                Ok(()) => {
                    describe();
                    Some(handle)
                }
                Err(_) => {
                    tracing::warn!("another metrics recorder is installed; weir's /metrics stays empty");
                    None
                }
            }
        })
        .as_ref()
}

fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_counter!("weir_events_received_total", "Events a trigger queued for the executor.");
    describe_counter!("weir_events_total", "Events finished, by outcome (done, dead_lettered, abandoned).");
    describe_counter!("weir_records_total", "Records of batched events (Kafka chunks) finished, by outcome.");
    describe_gauge!("weir_events_in_flight", "Events being run now.");
    describe_gauge!("weir_invocations_in_flight", "Function invocations running now.");
    describe_gauge!("weir_queue_depth", "Events queued for the executor, not yet taken.");
    describe_counter!(
        "weir_step_input_bytes_total",
        Unit::Bytes,
        "Encoded payload bytes handed to a step (objects it streams itself are not counted)."
    );
    describe_counter!("weir_step_output_bytes_total", Unit::Bytes, "Encoded payload bytes a step returned.");
    describe_counter!("weir_trigger_pauses_total", "Times a trigger paused its source because the executor was full.");
    describe_gauge!(
        "weir_trigger_up",
        "1 while the pipeline's trigger runs, 0 while it waits to retry after a failure."
    );
    describe_counter!("weir_trigger_failures_total", "Times a pipeline's trigger failed and was started again.");
    describe_counter!("weir_invocations_total", "Function invocations, by pipeline, step and outcome.");
    describe_counter!("weir_retries_total", "Invocations retried after a retryable error, by pipeline and step.");
    describe_histogram!(
        "weir_invocation_duration_seconds",
        Unit::Seconds,
        "Time one function invocation took, by pipeline and step."
    );
    describe_histogram!(
        "weir_event_duration_seconds",
        Unit::Seconds,
        "Time from the executor taking an event to its acknowledgement."
    );
    describe_histogram!(
        "weir_event_latency_seconds",
        Unit::Seconds,
        "Time from a trigger receiving an event to its acknowledgement (queueing included)."
    );
    describe_counter!("weir_http_requests_total", "Requests to weir's HTTP endpoint, by route and status.");
    describe_counter!(
        "weir_notification_objects_total",
        "Objects named by accepted bucket notifications: queued, or ignored (filtered, seen, other buckets)."
    );
    describe_gauge!("weir_kafka_consumer_lag", "Records behind the partition's end, per librdkafka's statistics.");
    describe_counter!("weir_kafka_commits_total", "Offset commits, by result.");
    describe_gauge!("process_resident_memory_bytes", Unit::Bytes, "Resident memory of the weir process.");
    describe_gauge!("process_open_fds", "Open file descriptors of the weir process.");
    describe_gauge!("weir_ledger_bytes", Unit::Bytes, "Size of the SQLite ledger (with its write-ahead log).");
}

/// What a scrape (and the status page) reads of one running pipeline.
#[derive(Clone)]
pub struct Observed {
    pub name: Arc<str>,
    pub pipeline: Arc<crate::config::Pipeline>,
    pub queue: Arc<QueueStats>,
    pub executor: Arc<ExecutorStats>,
}

/// The exposition: the engine's own counters copied in, then everything rendered.
pub fn render(handle: &PrometheusHandle, pipelines: &[Observed], ledger: Option<&std::path::Path>) -> String {
    for p in pipelines {
        let name = p.name.to_string();
        let (e, q) = (&p.executor, &p.queue);
        counter!("weir_events_received_total", "pipeline" => name.clone())
            .absolute(q.submitted.load(Ordering::Relaxed));
        for (outcome, value) in
            [("done", &e.events_done), ("dead_lettered", &e.events_dead_lettered), ("abandoned", &e.events_abandoned)]
        {
            counter!("weir_events_total", "pipeline" => name.clone(), "outcome" => outcome)
                .absolute(value.load(Ordering::Relaxed));
        }
        for (outcome, value) in [("done", &e.records_done), ("dead_lettered", &e.records_dead_lettered)] {
            counter!("weir_records_total", "pipeline" => name.clone(), "outcome" => outcome)
                .absolute(value.load(Ordering::Relaxed));
        }
        gauge!("weir_events_in_flight", "pipeline" => name.clone())
            .set(e.events_running.load(Ordering::Relaxed) as f64);
        gauge!("weir_invocations_in_flight", "pipeline" => name.clone())
            .set(e.invocations_running.load(Ordering::Relaxed) as f64);
        gauge!("weir_queue_depth", "pipeline" => name.clone()).set(q.depth() as f64);
        counter!("weir_trigger_pauses_total", "pipeline" => name.clone()).absolute(q.pauses.load(Ordering::Relaxed));
        gauge!("weir_trigger_up", "pipeline" => name.clone()).set(if q.trigger_up() { 1.0 } else { 0.0 });
        counter!("weir_trigger_failures_total", "pipeline" => name)
            .absolute(q.trigger_failures.load(Ordering::Relaxed));
    }
    if let Some(rss) = resident_bytes() {
        gauge!("process_resident_memory_bytes").set(rss as f64);
    }
    if let Ok(fds) = std::fs::read_dir("/proc/self/fd") {
        gauge!("process_open_fds").set(fds.count() as f64);
    }
    if let Some(ledger) = ledger {
        let size: u64 = ["ledger.db", "ledger.db-wal"]
            .iter()
            .filter_map(|f| std::fs::metadata(ledger.join(f)).ok())
            .map(|m| m.len())
            .sum();
        gauge!("weir_ledger_bytes").set(size as f64);
    }
    handle.render()
}

/// The process's resident set, from `/proc/self/statm` (Linux; `None` elsewhere).
fn resident_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4096)
}

/// A pipeline's meters for what only metrics count, made once when its runtime is
/// built (a Kafka record's invocation must not format label strings).
pub struct PipelineMeters {
    event_duration: Histogram,
    event_latency: Histogram,
    /// By step index.
    pub steps: Vec<StepMeters>,
    /// By step name, and `load` (reading an event's input).
    retries: std::collections::HashMap<String, Counter>,
}

pub struct StepMeters {
    duration: Histogram,
    /// ok, retryable, unavailable, permanent.
    outcomes: [Counter; 4],
    /// Payload bytes handed to the step, and returned by it.
    bytes_in: Counter,
    bytes_out: Counter,
}

impl PipelineMeters {
    pub fn new(pipeline: &str, steps: &[Arc<str>]) -> Self {
        let p = pipeline.to_string();
        let meters = steps
            .iter()
            .map(|step| {
                let s = step.to_string();
                let outcome = |o: &'static str| {
                    counter!("weir_invocations_total", "pipeline" => p.clone(), "step" => s.clone(), "outcome" => o)
                };
                StepMeters {
                    duration: histogram!("weir_invocation_duration_seconds", "pipeline" => p.clone(), "step" => s.clone()),
                    outcomes: [outcome("ok"), outcome("retryable"), outcome("unavailable"), outcome("permanent")],
                    bytes_in: counter!("weir_step_input_bytes_total", "pipeline" => p.clone(), "step" => s.clone()),
                    bytes_out: counter!("weir_step_output_bytes_total", "pipeline" => p.clone(), "step" => s.clone()),
                }
            })
            .collect();
        let retries = steps
            .iter()
            .map(|s| s.to_string())
            .chain(["load".to_string()])
            .map(|s| (s.clone(), counter!("weir_retries_total", "pipeline" => p.clone(), "step" => s)))
            .collect();
        PipelineMeters {
            event_duration: histogram!("weir_event_duration_seconds", "pipeline" => p.clone()),
            event_latency: histogram!("weir_event_latency_seconds", "pipeline" => p),
            steps: meters,
            retries,
        }
    }

    /// An event was acknowledged, `ran` after the executor took it.
    pub fn event_finished(&self, ran: Duration, received_at: SystemTime) {
        self.event_duration.record(ran.as_secs_f64());
        if let Ok(since) = received_at.elapsed() {
            self.event_latency.record(since.as_secs_f64());
        }
    }

    /// `step` (or `load`) is tried again after a retryable error.
    pub fn retried(&self, step: &str) {
        if let Some(counter) = self.retries.get(step) {
            counter.increment(1);
        }
    }
}

impl StepMeters {
    /// One invocation ended after `took`: `Ok`, or its error.
    pub fn invoked(&self, error: Option<&weir_functions::FunctionError>, took: Duration) {
        self.duration.record(took.as_secs_f64());
        let outcome = match error {
            None => 0,
            Some(e) if e.is_unavailable() => 2,
            Some(e) if e.is_retryable() => 1,
            Some(_) => 3,
        };
        self.outcomes[outcome].increment(1);
    }

    /// A successful invocation took `input` payload bytes and returned `output`.
    pub fn moved(&self, input: u64, output: u64) {
        self.bytes_in.increment(input);
        self.bytes_out.increment(output);
    }
}

/// The encoded bytes an item carries. Decoded pixels and JSON values count as none:
/// pixels are no data read or written, and sizing JSON would mean serializing it.
pub fn payload_bytes(payload: &weir_functions::Payload) -> u64 {
    use weir_functions::Payload;
    match payload {
        Payload::Bytes(bytes) => bytes.len() as u64,
        Payload::Collection(items) => items.iter().map(|i| payload_bytes(&i.payload)).sum(),
        Payload::Empty | Payload::Image(_) | Payload::Json(_) => 0,
    }
}
