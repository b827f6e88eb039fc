//! The CPU pool: decode, resize and encode run here, never on the async reactor.
//!
//! rayon's global pool is sized to the cores, so however many invocations are in
//! flight, CPU-bound work never oversubscribes the machine, and nested `par_iter`
//! inside a job (variants encoded in parallel) shares the same threads.

use crate::FunctionError;

/// Runs `work` on the CPU pool and awaits its result. A panic inside `work` becomes a
/// permanent error instead of tearing down the engine.
pub async fn run<T, F>(work: F) -> Result<T, FunctionError>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T, FunctionError> + Send + 'static,
{
    let (tx, rx) = tokio::sync::oneshot::channel();
    rayon::spawn(move || {
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

#[cfg(test)]
mod tests {
    use super::*;

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
