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

mod breaker;
mod graph;
mod invoke;
mod runner;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, Semaphore};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use weir_functions::{FunctionError, Stores};

use crate::config::Pipeline;
use crate::event::{DeadLetter, DeadLetterStore, Event, NoAck, Outcome, Ran, Settled, StepFailure, Work};
use crate::state::Ledger;

/// An event that was in flight this many times when the process died (an abort, an
/// out-of-memory kill) is dead-lettered as a poison event instead of run again: one
/// input must not crash-loop the engine.
pub const POISON_CRASHES: u32 = 2;

/// How long events cut short by the grace period get to acknowledge as abandoned.
const ABANDON_TIME: Duration = Duration::from_secs(1);

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
    /// Parts of events that finish one by one (a Kafka chunk's records): done, and
    /// dead-lettered.
    pub records_done: AtomicU64,
    pub records_dead_lettered: AtomicU64,
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
    /// Where failed events go (a bucket, or what the trigger kind offers).
    pub dead_letters: Arc<dyn DeadLetterStore>,
    pub stats: Arc<ExecutorStats>,
    /// Durations and outcomes only `/metrics` reports.
    pub(crate) meters: crate::metrics::PipelineMeters,
    /// Step names as shared strings, for each invocation's context.
    step_names: Vec<Arc<str>>,
    /// Sources whose runs were in flight when a weir process died, and how often: see
    /// [`POISON_CRASHES`].
    crashes: std::sync::Mutex<HashMap<String, u32>>,
    graph: graph::Graph,
    /// One per step, and one for loading the event's input (see [`breaker`]).
    breakers: HashMap<String, breaker::Breaker>,
}

impl PipelineRuntime {
    pub fn new(
        pipeline: Arc<Pipeline>,
        ledger: Ledger,
        stores: Stores,
        global: Arc<Semaphore>,
        dead_letters: Arc<dyn DeadLetterStore>,
    ) -> Self {
        let graph = graph::Graph::new(&pipeline.steps);
        let breakers = pipeline.steps.iter().map(|s| s.name.clone()).chain(["load".to_string()]);
        let breakers = breakers.map(|name| (name, breaker::Breaker::default())).collect();
        let step_names: Vec<Arc<str>> = pipeline.steps.iter().map(|s| Arc::from(s.name.as_str())).collect();
        Self {
            name: Arc::from(pipeline.name.as_str()),
            local: Arc::new(Semaphore::new(pipeline.limits.concurrency)),
            meters: crate::metrics::PipelineMeters::new(&pipeline.name, &step_names),
            step_names,
            dead_letters,
            pipeline,
            ledger,
            stores,
            global,
            stats: Default::default(),
            crashes: Default::default(),
            graph,
            breakers,
        }
    }

    /// The circuit breaker of `step` (or of `"load"`, reading the event's input).
    pub(crate) fn breaker(&self, step: &str) -> &breaker::Breaker {
        &self.breakers[step]
    }

    /// Runs events from `queue` until `shutdown`, then lets in-flight events finish
    /// for up to `grace`. Events still queued, and those the grace period cut short, are
    /// acknowledged as abandoned: their trigger delivers them again, and it learns at
    /// once that they are no longer running (a Kafka consumer leaving its group does not
    /// wait for them on top of the grace period).
    pub async fn serve(
        self: Arc<Self>,
        mut queue: mpsc::Receiver<Event>,
        shutdown: CancellationToken,
        grace: Duration,
    ) {
        let slots = Arc::new(Semaphore::new(self.pipeline.limits.concurrency));
        let abandon = CancellationToken::new();
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
            let (this, abandon) = (self.clone(), abandon.clone());
            running.spawn(async move {
                let _slot = slot;
                this.process_until(event, abandon).await;
            });
        }
        queue.close();
        while let Ok(event) = queue.try_recv() {
            event.acker.ack(&event, Outcome::Abandoned).await;
        }
        while running.try_join_next().is_some() {}
        let in_flight = running.len();
        if in_flight > 0 {
            tracing::info!(pipeline = %self.name, in_flight, grace = ?grace, "draining in-flight events");
        }
        let drained = tokio::time::timeout(grace, async { while running.join_next().await.is_some() {} }).await;
        if drained.is_err() {
            tracing::warn!(pipeline = %self.name, abandoned = running.len(), "grace period over; unfinished events will be delivered again");
            abandon.cancel();
            // Abandoning is a ledger write and a message to the trigger; a task that
            // cannot manage that in a second is cut off.
            let acked = tokio::time::timeout(ABANDON_TIME, async { while running.join_next().await.is_some() {} });
            if acked.await.is_err() {
                running.abort_all();
                while running.join_next().await.is_some() {}
            }
        }
    }

    /// One event's whole life: run, record, dead-letter on failure, acknowledge.
    pub async fn process(&self, event: Event) -> Outcome {
        self.process_until(event, CancellationToken::new()).await
    }

    /// [`Self::process`], giving the event up as abandoned once `abandon` is cancelled.
    async fn process_until(&self, event: Event, abandon: CancellationToken) -> Outcome {
        if !event.acker.wanted() {
            // Its trigger let it go while it waited (a revoked partition): the next
            // owner runs it.
            event.acker.ack(&event, Outcome::Abandoned).await;
            return Outcome::Abandoned;
        }
        self.stats.events_running.fetch_add(1, Ordering::Relaxed);
        let started = Instant::now();
        let work = event.work.clone();
        let quiet = work.quiet();
        let source = work.describe();
        if !quiet {
            if let Err(e) = self.ledger.run_started(&event.id, &self.name, &source).await {
                tracing::warn!(pipeline = %self.name, error = %e, "cannot record run start");
            }
        }
        let crashes = if quiet { 0 } else { self.crashes_of(&source) };
        let ran = tokio::select! {
            ran = async {
                if crashes >= POISON_CRASHES {
                    return Ran::Failed(StepFailure {
                        step: "poison".into(),
                        error: FunctionError::permanent(format!(
                            "{source} was being processed when weir died {crashes} times (an abort or an \
                             out-of-memory kill); not run again"
                        )),
                        attempts: 0,
                    });
                }
                work.run(self, &event).await
            } => ran,
            _ = abandon.cancelled() => Ran::Settled(Settled {
                outcome: Outcome::Abandoned,
                error: Some("abandoned: the engine stopped before the event finished".into()),
                parts_done: 0,
                parts_dead_lettered: 0,
            }),
        };
        let (outcome, status, attempts, error) = match ran {
            Ran::Done(invocations) => {
                tracing::info!(pipeline = %self.name, key = %source, invocations, duration_ms = started.elapsed().as_millis() as u64, "event done");
                (Outcome::Done, "done", 1, None)
            }
            Ran::Failed(failure) => {
                let chain = failure.error.chain();
                tracing::error!(pipeline = %self.name, key = %source, step = %failure.step, attempts = failure.attempts, error = %failure.error.brief(), "event failed");
                match self.write_dead_letter(&event.id, &*work, event.received_at, &failure).await {
                    Ok(at) => {
                        tracing::info!(pipeline = %self.name, key = %source, dead_letter = %at, "dead letter written");
                        (Outcome::DeadLettered, "dead_letter", failure.attempts, Some(chain))
                    }
                    Err(e) => {
                        tracing::error!(pipeline = %self.name, key = %source, error = %e.brief(), "cannot write dead letter; the event will be retried later");
                        (Outcome::Abandoned, "failed", failure.attempts, Some(chain))
                    }
                }
            }
            Ran::Settled(settled) => {
                self.stats.records_done.fetch_add(settled.parts_done, Ordering::Relaxed);
                self.stats.records_dead_lettered.fetch_add(settled.parts_dead_lettered, Ordering::Relaxed);
                let status = match settled.outcome {
                    Outcome::Done => "done",
                    Outcome::DeadLettered => "dead_letter",
                    Outcome::Abandoned => "abandoned",
                };
                (settled.outcome, status, 1, settled.error)
            }
        };
        // Acknowledge first: a crash between the two leaves a finished event whose run
        // still reads "running" — never a run reported done whose event is redone.
        event.acker.ack(&event, outcome).await;
        let recorded = if quiet {
            self.ledger.run_recorded(&event.id, &self.name, &source, status, attempts, started.elapsed(), error).await
        } else {
            self.ledger.run_finished(&event.id, status, attempts, started.elapsed(), error).await
        };
        if let Err(e) = recorded {
            tracing::warn!(pipeline = %self.name, error = %e, "cannot record run end");
        }
        let counter = match outcome {
            Outcome::Done => &self.stats.events_done,
            Outcome::DeadLettered => &self.stats.events_dead_lettered,
            Outcome::Abandoned => &self.stats.events_abandoned,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        self.stats.events_running.fetch_sub(1, Ordering::Relaxed);
        self.meters.event_finished(started.elapsed(), event.received_at);
        if crashes > 0 && outcome != Outcome::Abandoned {
            self.crashes.lock().unwrap_or_else(|p| p.into_inner()).remove(&source);
            if let Err(e) = self.ledger.crashes_over(&self.name, &source).await {
                tracing::warn!(pipeline = %self.name, error = %e, "cannot record that a crashed event finished");
            }
        }
        outcome
    }

    /// Remembers which sources of this pipeline were in flight when a weir process
    /// died (from [`Ledger::crashed_runs`] at start-up).
    pub fn remember_crashes(&self, crashes: HashMap<String, u32>) {
        for (source, count) in &crashes {
            tracing::warn!(pipeline = %self.name, key = ?source, crashes = count, "was in flight when weir died");
        }
        *self.crashes.lock().unwrap_or_else(|p| p.into_inner()) = crashes;
    }

    fn crashes_of(&self, source: &str) -> u32 {
        let crashes = self.crashes.lock().unwrap_or_else(|p| p.into_inner());
        if crashes.is_empty() {
            return 0;
        }
        crashes.get(source).copied().unwrap_or(0)
    }

    /// Runs an event's steps outside any trigger (`weir dlq redrive`); returns how many
    /// invocations it took.
    pub async fn execute(&self, work: Arc<dyn Work>) -> Result<usize, StepFailure> {
        let event = Event::new(self.name.clone(), work.clone(), Arc::new(NoAck));
        match work.run(self, &event).await {
            Ran::Done(invocations) => Ok(invocations),
            Ran::Failed(failure) => Err(failure),
            Ran::Settled(settled) if settled.outcome == Outcome::Done => Ok(0),
            Ran::Settled(settled) => {
                Err(StepFailure::load(FunctionError::permanent(settled.error.unwrap_or_else(|| "not finished".into()))))
            }
        }
    }

    /// Writes a failed event's dead letter; returns where it went.
    pub(crate) async fn write_dead_letter(
        &self,
        id: &str,
        work: &dyn Work,
        received_at: std::time::SystemTime,
        failure: &StepFailure,
    ) -> Result<String, FunctionError> {
        let record = DeadLetter {
            id: id.to_string(),
            pipeline: self.name.to_string(),
            event: work.record(),
            step: failure.step.clone(),
            error: failure.error.chain(),
            error_kind: failure.error.kind,
            attempts: failure.attempts,
            received_at: received_at.into(),
            failed_at: chrono::Utc::now(),
            redrives: 0,
        };
        self.dead_letters.write(&record).await
    }

    /// Dead-letters input that never became an event (a malformed notification), so
    /// what was sent is kept next to the pipeline's other failures.
    pub async fn dead_letter_input(&self, work: &dyn Work, step: &str, error: &str) -> Result<String, FunctionError> {
        let failure = StepFailure { step: step.to_string(), error: FunctionError::permanent(error), attempts: 1 };
        self.write_dead_letter(&uuid::Uuid::now_v7().to_string(), work, std::time::SystemTime::now(), &failure).await
    }
}
