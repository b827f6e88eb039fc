//! One invocation of one step: permits, deadline, retries with backoff.

use std::future::Future;
use std::sync::atomic::Ordering;
use std::task::Poll;
use std::time::Instant;

use tracing::Instrument;
use weir_functions::Emitter;
use weir_functions::{Context, FunctionError, Item, Limits, Metadata, Payload};

use super::PipelineRuntime;
use crate::event::{Rebuild, Scope as EventScope, StepFailure};

/// Invokes step `index` on `item`, retrying retryable errors per the pipeline's
/// `[retry]` policy. Permits are held only while the function runs, not while
/// waiting to retry.
///
/// With `stream_to`, a streaming function sends its outputs there (and the returned
/// list is empty); it holds no permits, since it waits on the very steps it feeds.
///
/// `again` rebuilds the item for a retry (a Kafka record's item, from the record), so
/// the first try need not keep a copy.
pub(super) async fn step(
    rt: &PipelineRuntime,
    index: usize,
    item: Item,
    again: Option<Rebuild<'_>>,
    scope: &EventScope,
    stream_to: Option<tokio::sync::mpsc::Sender<Item>>,
) -> Result<Vec<Item>, StepFailure> {
    let step = &rt.pipeline.steps[index];
    let permits = stream_to.is_none();
    let mut item = Some(item);
    with_retries(rt, &step.name, scope.started, permits, |attempt| {
        // Each try gets a copy to retry with (payloads share their bytes and pixels), as
        // an outage may call for any number of tries — unless the item can be rebuilt.
        let this = match again {
            Some(rebuild) if attempt > 1 => rebuild(),
            Some(_) => item.take(),
            None => item.clone(),
        };
        let stream_to = stream_to.clone();
        async move {
            let this = this.ok_or_else(|| FunctionError::permanent("no item left to retry with"))?;
            once(rt, index, this, scope, attempt, stream_to).await
        }
    })
    .await
}

/// One try of step `index`: deadline, cancellation, a log line.
async fn once(
    rt: &PipelineRuntime,
    index: usize,
    item: Item,
    scope: &EventScope,
    attempt: u32,
    stream_to: Option<tokio::sync::mpsc::Sender<Item>>,
) -> Result<Vec<Item>, FunctionError> {
    let step = &rt.pipeline.steps[index];
    let limits = &rt.pipeline.limits;
    // Kafka records log per chunk, not per invocation: a line each would cost more
    // than the function.
    let span = if scope.quiet {
        tracing::debug_span!("invoke", pipeline = %rt.name, step = %step.name, key = %item.describe())
    } else {
        tracing::info_span!("invoke", pipeline = %rt.name, step = %step.name, key = %item.describe())
    };
    let ctx = Context {
        stores: rt.stores.clone(),
        cancel: tokio_util::sync::CancellationToken::new(),
        deadline: Instant::now() + limits.timeout,
        pipeline: rt.name.clone(),
        step: rt.step_names[index].clone(),
        attempt,
        limits: Limits { max_input_bytes: limits.max_input_bytes, max_pixels: limits.max_pixels },
        span: span.clone(),
        event: scope.trigger_event.clone(),
    };
    // However this try ends (done, timed out, abandoned by a stop), CPU work it left
    // on the pool stops at its next stage.
    let _stop_cpu_work = ctx.cancel.clone().drop_guard();
    // What the log lines call the item; quiet invocations name it only at debug level.
    let label = (!scope.quiet || tracing::enabled!(tracing::Level::DEBUG)).then(|| item.describe());
    let bytes_in = crate::metrics::payload_bytes(&item.payload);
    let started = Instant::now();
    let invocation = async {
        match stream_to {
            Some(tx) => step.function.invoke_streaming(item, &ctx, &Emitter::new(tx)).await.map(|()| Vec::new()),
            None => step.function.invoke(item, &ctx).await,
        }
    }
    .instrument(span);
    let mut invocation = std::pin::pin!(invocation);
    // Most invocations of small functions finish on their first poll: arm the timer
    // only for those that do not.
    let first = futures::poll!(invocation.as_mut());
    let result = match first {
        Poll::Ready(result) => result,
        Poll::Pending => match tokio::time::timeout_at(ctx.deadline.into(), invocation).await {
            Ok(result) => result,
            Err(_) => {
                ctx.cancel.cancel();
                let what = label.as_deref().unwrap_or("an item");
                Err(FunctionError::timed_out(format!(
                    "{what}: step {:?} timed out after {:?}",
                    step.name, limits.timeout
                )))
            }
        },
    };
    let took = started.elapsed();
    rt.meters.steps[index].invoked(result.as_ref().err(), took);
    if let Ok(items) = &result {
        rt.meters.steps[index].moved(bytes_in, items.iter().map(|i| crate::metrics::payload_bytes(&i.payload)).sum());
    }
    let duration_ms = label.as_ref().map(|_| took.as_secs_f64() * 1000.0);
    let key = label.as_deref().unwrap_or("");
    match (&result, scope.quiet) {
        (Ok(items), false) => tracing::info!(pipeline = %rt.name, step = %step.name, key, duration_ms,
            outputs = items.len(), outcome = "ok", "invoked"),
        (Ok(items), true) => tracing::debug!(pipeline = %rt.name, step = %step.name, key, duration_ms,
            outputs = items.len(), outcome = "ok", "invoked"),
        (Err(e), _) => tracing::warn!(pipeline = %rt.name, step = %step.name, key, duration_ms, attempt,
            outcome = if e.is_retryable() { "retryable" } else { "permanent" }, error = %e.brief(), "invoked"),
    }
    result
}

/// Runs `attempt` (one try, given its number from 1; called holding permits) until it
/// succeeds, fails permanently, or the retry policy gives up ([`crate::config::Retry::again`]).
/// While a destination is unavailable the event keeps its slot and waits: with every
/// slot waiting, the executor takes no new events and the trigger holds its source, so
/// an outage pauses the pipeline and it resumes by itself.
pub(super) async fn with_retries<T, F, Fut>(
    rt: &PipelineRuntime,
    step: &str,
    event_started: Instant,
    hold_permits: bool,
    mut attempt: F,
) -> Result<T, StepFailure>
where
    F: FnMut(u32) -> Fut,
    Fut: Future<Output = Result<T, FunctionError>>,
{
    let retry = &rt.pipeline.retry;
    let breaker = rt.breaker(step);
    let mut tries = 0;
    loop {
        tries += 1;
        let admitted = breaker.admit().await;
        let probe = ProbeGuard { breaker, admitted, settled: false };
        let result = if hold_permits {
            let _permits = Permits::take(rt).await;
            attempt(tries).await
        } else {
            attempt(tries).await
        };
        let unavailable = result.as_ref().err().is_some_and(FunctionError::is_unavailable);
        probe.settle(rt, step, result.as_ref().err(), unavailable);
        match result {
            Ok(value) => return Ok(value),
            Err(error) => {
                if !retry.again(&error, tries, event_started.elapsed()) {
                    return Err(StepFailure { step: step.to_string(), error, attempts: tries });
                }
                // While unavailable, the breaker paces the next try.
                if !unavailable {
                    backoff(rt, step, tries).await;
                }
            }
        }
    }
}

/// A try admitted by a step's breaker, reported back to it once the try is over —
/// or released, should the try be dropped half-way (its event abandoned at a stop).
struct ProbeGuard<'a> {
    breaker: &'a super::breaker::Breaker,
    admitted: super::breaker::Admitted,
    settled: bool,
}

impl ProbeGuard<'_> {
    fn settle(mut self, rt: &PipelineRuntime, step: &str, error: Option<&FunctionError>, unavailable: bool) {
        self.settled = true;
        if !unavailable {
            if self.admitted == super::breaker::Admitted::Probe {
                tracing::info!(pipeline = %rt.name, step, "destination answers again: resuming");
            }
            self.breaker.answered();
        } else if self.breaker.unavailable(&rt.pipeline.retry.backoff) {
            let error = error.map(FunctionError::brief).unwrap_or_default();
            tracing::warn!(pipeline = %rt.name, step, error = %error,
                "destination unavailable: holding this step's events and probing until it answers (or max_age)");
        }
    }
}

impl Drop for ProbeGuard<'_> {
    fn drop(&mut self) {
        if !self.settled {
            self.breaker.release(self.admitted);
        }
    }
}

async fn backoff(rt: &PipelineRuntime, step: &str, tries: u32) {
    rt.meters.retried(step);
    let delay = rt.pipeline.retry.backoff.delay(tries, rand::random::<f64>());
    tracing::debug!(pipeline = %rt.name, step, attempt = tries, delay = ?delay, "retrying");
    tokio::time::sleep(delay).await;
}

/// An engine-wide and a pipeline permit, counted while held.
struct Permits<'a> {
    rt: &'a PipelineRuntime,
    _global: tokio::sync::SemaphorePermit<'a>,
    _local: tokio::sync::SemaphorePermit<'a>,
}

impl<'a> Permits<'a> {
    async fn take(rt: &'a PipelineRuntime) -> Permits<'a> {
        let _global = rt.global.acquire().await.expect("permits are never closed");
        let _local = rt.local.acquire().await.expect("permits are never closed");
        let running = rt.stats.invocations_running.fetch_add(1, Ordering::SeqCst) + 1;
        rt.stats.invocations_high_water.fetch_max(running, Ordering::SeqCst);
        Permits { rt, _global, _local }
    }
}

impl Drop for Permits<'_> {
    fn drop(&mut self) {
        self.rt.stats.invocations_running.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Invokes the batch step `index` on `items` as one collection. A partial batch
/// failure retries only the failed items (a smaller batch), per the retry policy; a
/// whole failure retries them all. Returns every output, and the items that failed
/// for good as (position in `items`, failure).
pub(super) async fn batch(
    rt: &PipelineRuntime,
    index: usize,
    items: Vec<Item>,
    scope: &EventScope,
) -> (Vec<Item>, Vec<(usize, StepFailure)>) {
    let step = &rt.pipeline.steps[index].name;
    let retry = &rt.pipeline.retry;
    let meta = Metadata { key: items.first().and_then(|i| i.meta.key.clone()), ..Metadata::default() };
    let mut pending: Vec<(usize, Item)> = items.into_iter().enumerate().collect();
    let mut outputs = Vec::new();
    let mut failed = Vec::new();
    let mut tries = 0;
    while !pending.is_empty() {
        tries += 1;
        let collection = Item::new(Payload::Collection(pending.iter().map(|(_, i)| i.clone()).collect()), meta.clone());
        let probe = ProbeGuard { breaker: rt.breaker(step), admitted: rt.breaker(step).admit().await, settled: false };
        let result = {
            let _permits = Permits::take(rt).await;
            once(rt, index, collection, scope, tries, None).await
        };
        let unavailable = result.as_ref().err().is_some_and(FunctionError::is_unavailable);
        probe.settle(rt, step, result.as_ref().err(), unavailable);
        let can_retry = |e: &FunctionError| retry.again(e, tries, scope.started.elapsed());
        let error = match result {
            Ok(items) => {
                outputs.extend(items);
                break;
            }
            Err(error) => error,
        };
        match error.into_partial_batch() {
            Ok(partial) => {
                outputs.extend(partial.outputs);
                let mut again = Vec::new();
                let mut reported = vec![false; pending.len()];
                for (position, error) in partial.failures {
                    let Some(slot) = reported.get_mut(position) else { continue };
                    *slot = true;
                    let (original, item) = pending[position].clone();
                    if can_retry(&error) {
                        again.push((original, item));
                    } else {
                        failed.push((original, StepFailure { step: step.clone(), error, attempts: tries }));
                    }
                }
                pending = again;
            }
            Err(error) if can_retry(&error) => {}
            Err(error) => {
                for (original, _) in pending.drain(..) {
                    failed.push((original, StepFailure { step: step.clone(), error: error.copied(), attempts: tries }));
                }
            }
        }
        if !pending.is_empty() {
            backoff(rt, step, tries).await;
        }
    }
    (outputs, failed)
}
