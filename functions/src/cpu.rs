//! The CPU pool: decode, resize and encode run here, never on the async reactor.
//!
//! rayon's global pool is sized to the cores, so however many invocations are in
//! flight, CPU-bound work never oversubscribes the machine, and nested `par_iter`
//! inside a job (variants encoded in parallel) shares the same threads.

use tokio_util::sync::CancellationToken;

use crate::FunctionError;

/// Runs `work` on the CPU pool and awaits its result. A panic inside `work` becomes a
/// permanent error instead of tearing down the engine. A job whose caller stopped
/// waiting (its invocation timed out or was abandoned) before the pool got to it is
/// skipped: retries must not pile up CPU work and memory behind each other.
pub async fn run<T, F>(work: F) -> Result<T, FunctionError>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T, FunctionError> + Send + 'static,
{
    let (tx, rx) = tokio::sync::oneshot::channel();
    rayon::spawn(move || {
        if tx.is_closed() {
            return;
        }
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(work));
        let _ = tx.send(outcome);
    });
    match rx.await {
        Ok(Ok(result)) => result,
        Ok(Err(panic)) => {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".into());
            Err(FunctionError::permanent(format!("function panicked: {what}")))
        }
        Err(_) => Err(FunctionError::retryable("CPU pool dropped the job")),
    }
}

/// Between the stages of a CPU job (decode, each resize, each encode): stop if the
/// invocation's deadline passed or it was abandoned, so a timed-out job frees its
/// memory instead of finishing work nobody waits for.
pub fn check(cancel: &CancellationToken, what: &str) -> Result<(), FunctionError> {
    match cancel.is_cancelled() {
        true => Err(FunctionError::retryable(format!("{what}: stopped, the invocation timed out or was abandoned"))),
        false => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;

    /// Each pool thread busy, then a job whose caller gives up at once: it never runs.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_job_nobody_waits_for_is_skipped() {
        let busy: Vec<_> = (0..rayon::current_num_threads())
            .map(|_| {
                tokio::spawn(run(|| {
                    std::thread::sleep(Duration::from_millis(300));
                    Ok(())
                }))
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(50)).await;
        let ran = Arc::new(AtomicBool::new(false));
        let flag = ran.clone();
        let abandoned = tokio::time::timeout(
            Duration::from_millis(10),
            run(move || {
                flag.store(true, Ordering::SeqCst);
                Ok(())
            }),
        )
        .await;
        assert!(abandoned.is_err(), "the pool was busy");
        for job in busy {
            job.await.unwrap().unwrap();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(!ran.load(Ordering::SeqCst), "an abandoned job ran");
    }

    #[tokio::test]
    async fn runs_off_the_reactor_and_returns() {
        let reactor = std::thread::current().id();
        let worker = run(move || Ok(std::thread::current().id())).await.unwrap();
        assert_ne!(reactor, worker);
    }

    #[tokio::test]
    async fn a_panic_is_a_permanent_error() {
        let err = run::<(), _>(|| panic!("boom")).await.unwrap_err();
        assert!(!err.is_retryable());
        assert!(err.message().contains("boom"), "{}", err.message());
    }
}
