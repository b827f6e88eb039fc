//! One invocation of one step: permits, deadline, retries with backoff.

use std::future::Future;
use std::sync::atomic::Ordering;
use std::time::Instant;

use tracing::Instrument;
use weir_functions::registry::Emitter;
use weir_functions::{Context, FunctionError, Item, Limits};

use super::{EventScope, PipelineRuntime, StepFailure};

/// Invokes step `index` on `item`, retrying retryable errors per the pipeline's
/// `[retry]` policy. Permits are held only while the function runs, not while
/// waiting to retry.
///
/// With `stream_to`, a streaming function sends its outputs there (and the returned
/// list is empty); it holds no permits, since it waits on the very steps it feeds.
pub(super) async fn step(
    rt: &PipelineRuntime,
    index: usize,
    item: Item,
    scope: &EventScope,
    stream_to: Option<tokio::sync::mpsc::Sender<Item>>,
) -> Result<Vec<Item>, StepFailure> {
    let step = &rt.pipeline.steps[index];
    let limits = &rt.pipeline.limits;
    let permits = stream_to.is_none();
    with_retries(rt, &step.name, scope.started, permits, |attempt| {
        let item = item.clone();
        let stream_to = stream_to.clone();
        async move {
            let described = item.describe();
            let span = tracing::info_span!("invoke", pipeline = %rt.name, step = %step.name, key = %described);
            let ctx = Context {
                stores: rt.stores.clone(),
                cancel: tokio_util::sync::CancellationToken::new(),
                deadline: Instant::now() + limits.timeout,
                pipeline: rt.name.clone(),
                step: std::sync::Arc::from(step.name.as_str()),
                attempt,
                limits: Limits { max_input_bytes: limits.max_input_bytes, max_pixels: limits.max_pixels },
                span: span.clone(),
                event: scope.trigger_event.clone(),
            };
            let started = Instant::now();
            let invocation = async {
                match stream_to {
                    Some(tx) => step.function.invoke_streaming(item, &ctx, &Emitter::new(tx)).await.map(|()| Vec::new()),
                    None => step.function.invoke(item, &ctx).await,
                }
            }
            .instrument(span);
            let result = match tokio::time::timeout(limits.timeout, invocation).await {
                Ok(result) => result,
                Err(_) => {
                    ctx.cancel.cancel();
                    Err(FunctionError::retryable(format!("{described}: step {:?} timed out after {:?}", step.name, limits.timeout)))
                }
            };
            let duration_ms = started.elapsed().as_secs_f64() * 1000.0;
            match &result {
                Ok(items) => tracing::info!(pipeline = %rt.name, step = %step.name, key = %described, duration_ms, outputs = items.len(), outcome = "ok", "invoked"),
                Err(e) => tracing::warn!(pipeline = %rt.name, step = %step.name, key = %described, duration_ms, outcome = if e.is_retryable() { "retryable" } else { "permanent" }, error = %e.chain(), "invoked"),
            }
            result
        }
    })
    .await
}

/// Runs `attempt` (one try, given its number from 1; called holding permits) until it
/// succeeds, fails permanently, runs out of attempts or the event gets older than `max_age`.
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
    let mut tries = 0;
    loop {
        tries += 1;
        let result = if hold_permits {
            let _global = rt.global.acquire().await.expect("permits are never closed");
            let _local = rt.local.acquire().await.expect("permits are never closed");
            let running = rt.stats.invocations_running.fetch_add(1, Ordering::SeqCst) + 1;
            rt.stats.invocations_high_water.fetch_max(running, Ordering::SeqCst);
            let result = attempt(tries).await;
            rt.stats.invocations_running.fetch_sub(1, Ordering::SeqCst);
            result
        } else {
            attempt(tries).await
        };
        match result {
            Ok(value) => return Ok(value),
            Err(error) => {
                let too_old = retry.max_age.is_some_and(|age| event_started.elapsed() >= age);
                if !error.is_retryable() || tries >= retry.max_attempts || too_old {
                    return Err(StepFailure { step: step.to_string(), error, attempts: tries });
                }
                let delay = retry.backoff.delay(tries, rand::random::<f64>());
                tracing::debug!(pipeline = %rt.name, step, attempt = tries, delay = ?delay, "retrying");
                tokio::time::sleep(delay).await;
            }
        }
    }
}
