//! `weir replay`: history pushed through a pipeline's own steps — a backfill.
//!
//! A replay enumerates what the pipeline's trigger would have delivered: the objects
//! under its bucket prefix ([`objects`]) or every tick of its schedule ([`ticks`]) in a
//! time window. They come as bounded chunks, are checked against the ledger a chunk at
//! a time, and go through the same bounded queue into the same executor `weir run`
//! uses, so the listing never runs ahead of the processing and memory stays flat
//! however long the history.
//!
//! Each finished item is recorded in one ledger transaction as both the replay's
//! checkpoint and the object's (or tick's) record, *before* its run is reported
//! finished. That is what `--resume` continues from after Ctrl-C or kill -9, and what
//! later replays and the live trigger skip unless `--force`.

pub mod progress;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;

use serde::Serialize;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::config::Pipeline;
use crate::event::{Acknowledge, Event, EventSink, Outcome, Work};
use crate::state::Ledger;
pub use crate::trigger::Window;
use crate::trigger::{HistoryContext, HistoryItem};
use crate::Engine;

/// How to run a replay.
#[derive(Debug, Clone, Default)]
pub struct Plan {
    pub window: Window,
    /// Print what would run; change nothing.
    pub dry_run: bool,
    /// Continue this interrupted replay (its id) instead of starting one.
    pub resume: Option<String>,
    /// Most items started per second.
    pub rate: Option<f64>,
    /// Events in flight at once (default: 1 for schedules, so ticks run in order; the
    /// pipeline's `limits.concurrency` for objects).
    pub concurrency: Option<usize>,
}

/// Live counts, read by the progress display.
#[derive(Debug, Default)]
pub struct Counters {
    /// Items enumerated so far (listed objects in the window, ticks).
    pub found: AtomicU64,
    /// Skipped: done before (or by this replay before it was interrupted).
    pub skipped: AtomicU64,
    pub submitted: AtomicU64,
    pub done: AtomicU64,
    /// Dead-lettered.
    pub failed: AtomicU64,
    /// Enumeration finished: `found` is the total.
    pub enumerated: AtomicBool,
}

/// How a replay ended.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Summary {
    pub replay: Option<String>,
    pub found: u64,
    pub skipped: u64,
    pub done: u64,
    pub failed: u64,
    /// Submitted but not finished (stopped first): a `--resume` runs them.
    pub unfinished: u64,
    /// Stopped before everything was enumerated and run.
    pub interrupted: bool,
    pub elapsed_ms: u64,
}

/// Replays `pipeline` per `plan` until everything ran or `stop` is cancelled; what was
/// in flight then finishes within the engine's grace period. With `on_item`, each item
/// that would run is reported as it is submitted (`--dry-run` prints them).
pub async fn replay(
    engine: &Engine,
    mut pipeline: Pipeline,
    plan: Plan,
    counters: Arc<Counters>,
    stop: CancellationToken,
    mut on_item: impl FnMut(&dyn Work) + Send,
) -> anyhow::Result<Summary> {
    let started = Instant::now();
    let _lock = if plan.dry_run { None } else { Some(crate::state::StateLock::acquire(&engine.state_dir)?) };
    // A dry run creates nothing, not even the ledger: without one, nothing is done yet.
    let ledger_exists = engine.state_dir.join(crate::state::LEDGER_FILE).exists();
    let ledger = if plan.dry_run && !ledger_exists { None } else { Some(engine.ledger()?) };
    let name: Arc<str> = Arc::from(pipeline.name.as_str());
    let history_ctx = HistoryContext { stores: engine.stores.clone(), now: engine.clock.now() };
    let mut source = pipeline.trigger.history(&history_ctx, &plan.window)?;
    let in_order = pipeline.trigger.replays_in_order();
    let concurrency = plan.concurrency.unwrap_or(if in_order { 1 } else { pipeline.limits.concurrency });
    pipeline.limits.concurrency = concurrency.max(1);

    let replay_id = match (&plan.resume, &ledger) {
        (Some(id), _) => Some(id.clone()),
        (None, Some(ledger)) if !plan.dry_run => {
            let id = uuid::Uuid::now_v7().to_string();
            let window = serde_json::to_string(&plan.window)?;
            ledger.start_replay(&id, &name, &window).await?;
            Some(id)
        }
        (None, _) => None,
    };
    let executor = match &ledger {
        Some(ledger) if !plan.dry_run => {
            let global = Arc::new(Semaphore::new(engine.global_concurrency.max(concurrency)));
            let runtime = engine.runtime(pipeline, ledger, global)?;
            let (sink, queue, _) = EventSink::new(concurrency * 2);
            let drain = CancellationToken::new();
            let serving = tokio::spawn(runtime.serve(queue, drain.clone(), engine.grace));
            Some((sink, drain, serving))
        }
        _ => None,
    };
    let acker: Option<Arc<dyn Acknowledge>> = match (&ledger, &replay_id) {
        (Some(ledger), Some(id)) if !plan.dry_run => {
            Some(Arc::new(ReplayAcker { ledger: ledger.clone(), replay: id.clone(), counters: counters.clone() }))
        }
        _ => None,
    };

    let mut pace = plan.rate.filter(|r| *r > 0.0).map(Pace::new);
    let mut interrupted = false;
    'chunks: loop {
        let chunk = tokio::select! {
            _ = stop.cancelled() => { interrupted = true; break }
            chunk = source.next_chunk() => chunk?,
        };
        let Some(chunk) = chunk else { break };
        counters.found.fetch_add(chunk.len() as u64, Ordering::Relaxed);
        let chunk = to_run(ledger.as_ref(), &name, plan.resume.as_deref(), plan.window.force, chunk).await?;
        for (item, skipped) in chunk {
            if skipped {
                counters.skipped.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            if let Some(pace) = &mut pace {
                tokio::select! {
                    _ = stop.cancelled() => { interrupted = true; break 'chunks }
                    _ = pace.wait() => {}
                }
            }
            on_item(&*item.work);
            let (Some((sink, _, _)), Some(acker)) = (&executor, &acker) else {
                counters.submitted.fetch_add(1, Ordering::Relaxed);
                continue;
            };
            let event = Event::new(name.clone(), item.work, acker.clone());
            tokio::select! {
                _ = stop.cancelled() => { interrupted = true; break 'chunks }
                sent = sink.send(event) => {
                    sent.context("the executor stopped")?;
                    counters.submitted.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }
    if !interrupted {
        counters.enumerated.store(true, Ordering::Relaxed);
    }
    if let Some((sink, drain, serving)) = executor {
        drop(sink);
        // Normally the executor runs the queue dry and returns; a stop makes it finish
        // only what is in flight (within the grace period).
        let stopped = stop.clone();
        let watcher = tokio::spawn(async move {
            stopped.cancelled().await;
            drain.cancel();
        });
        serving.await.context("the executor failed")?;
        watcher.abort();
        interrupted |= stop.is_cancelled();
    }

    let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
    let submitted = load(&counters.submitted);
    let (done, failed) = if plan.dry_run { (0, 0) } else { (load(&counters.done), load(&counters.failed)) };
    let summary = Summary {
        replay: replay_id.clone(),
        found: load(&counters.found),
        skipped: load(&counters.skipped),
        done,
        failed,
        unfinished: if plan.dry_run { 0 } else { submitted.saturating_sub(done + failed) },
        interrupted,
        elapsed_ms: started.elapsed().as_millis() as u64,
    };
    if let (Some(id), Some(ledger), false, false) =
        (&replay_id, &ledger, plan.dry_run, interrupted || summary.unfinished > 0)
    {
        ledger.finish_replay(id, &serde_json::to_string(&summary)?).await?;
    }
    Ok(summary)
}

/// Pairs each item of a chunk with whether it is skipped: finished already by the
/// replay being resumed, or recorded as done in the ledger (unless `force`). Without a
/// ledger (a dry run on a fresh machine) nothing is done yet.
async fn to_run(
    ledger: Option<&Ledger>,
    pipeline: &str,
    resumed: Option<&str>,
    force: bool,
    chunk: Vec<HistoryItem>,
) -> anyhow::Result<Vec<(HistoryItem, bool)>> {
    let mut skip = vec![false; chunk.len()];
    let Some(ledger) = ledger else { return Ok(chunk.into_iter().zip(skip).collect()) };
    // A chunk comes from one listing: its items share their ledger "bucket".
    let Some(url) = chunk.first().map(|i| i.entry.url.clone()) else { return Ok(Vec::new()) };
    if let Some(replay) = resumed {
        let keys = chunk.iter().map(|i| i.entry.key.clone()).collect();
        let unfinished = ledger.unfinished_replay_items(replay, keys).await?;
        skip.iter_mut().for_each(|s| *s = true);
        unfinished.into_iter().for_each(|i| skip[i] = false);
    }
    if !force {
        let candidates: Vec<_> = chunk.iter().map(|i| (i.entry.key.clone(), i.entry.version.clone())).collect();
        let unseen = ledger.unseen_objects(pipeline, &url, candidates).await?;
        let mut seen = vec![true; chunk.len()];
        unseen.into_iter().for_each(|i| seen[i] = false);
        skip.iter_mut().zip(seen).for_each(|(s, seen)| *s |= seen);
    }
    Ok(chunk.into_iter().zip(skip).collect())
}

/// Records finished items: checkpoint and ledger in one transaction.
struct ReplayAcker {
    ledger: Ledger,
    replay: String,
    counters: Arc<Counters>,
}

#[async_trait::async_trait]
impl Acknowledge for ReplayAcker {
    async fn ack(&self, event: &Event, outcome: Outcome) {
        let Some(status) = outcome.ledger_status() else { return };
        let counter = if outcome == Outcome::Done { &self.counters.done } else { &self.counters.failed };
        let Some(entry) = event.work.ledger_entry() else { return };
        let (url, key, version) = (&entry.url, &entry.key, &entry.version);
        match self.ledger.record_replay_item(&self.replay, &event.id, &event.pipeline, url, key, version, status).await
        {
            Ok(()) => {
                counter.fetch_add(1, Ordering::Relaxed);
            }
            // Not recorded: a resume runs it again (outputs are idempotent).
            Err(e) => {
                tracing::error!(pipeline = %event.pipeline, key = %key, error = %e, "cannot record replayed item")
            }
        }
    }
}

/// Spaces submissions `1/rate` apart. Lateness up to `SLACK` is made up (the timer
/// resolves milliseconds, so faster rates need it); a longer stall is not burst away.
struct Pace {
    period: Duration,
    next: tokio::time::Instant,
}

impl Pace {
    fn new(rate: f64) -> Self {
        Self { period: Duration::from_secs_f64(1.0 / rate), next: tokio::time::Instant::now() }
    }

    async fn wait(&mut self) {
        const SLACK: Duration = Duration::from_millis(20);
        let now = tokio::time::Instant::now();
        self.next = self.next.max(now.checked_sub(SLACK).unwrap_or(now));
        if self.next > now {
            tokio::time::sleep_until(self.next).await;
        }
        self.next += self.period;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn pace_keeps_the_rate_without_bursting_after_a_stall() {
        let mut pace = Pace::new(4000.0);
        let started = tokio::time::Instant::now();
        for _ in 0..4000 {
            pace.wait().await;
        }
        let took = started.elapsed();
        // Sub-millisecond spacing despite the millisecond timer; generous for busy machines.
        assert!(took >= Duration::from_millis(980) && took <= Duration::from_millis(1500), "{took:?}");
        // After a long stall, at most SLACK's worth (80 items) goes out at once.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let stalled = tokio::time::Instant::now();
        for _ in 0..400 {
            pace.wait().await;
        }
        assert!(stalled.elapsed() >= Duration::from_millis(75), "{:?}", stalled.elapsed());
    }
}
