//! The typed pipeline the engine runs: its trigger, limits, retry policy and steps
//! with their functions built.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use weir_functions::Function;

use super::units::{Backoff, ByteSize, HumanDuration};
use crate::trigger::TriggerSpec;

/// A validated pipeline with its step functions built and ready to invoke.
pub struct Pipeline {
    pub name: String,
    pub description: Option<String>,
    /// The file it was loaded from.
    pub file: PathBuf,
    pub trigger: Arc<dyn TriggerSpec>,
    pub limits: Limits,
    pub retry: Retry,
    /// In file order; `after` refers to indices in this list.
    pub steps: Vec<Step>,
}

impl std::fmt::Debug for Pipeline {
    // Deliberately terse: configs may hold secrets from the environment.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pipeline").field("name", &self.name).field("file", &self.file).finish_non_exhaustive()
    }
}

/// `[limits]`: how much one pipeline may do at once and how big its inputs may be.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsConfig {
    /// Invocations of this pipeline's functions running at once (Lambda's reserved
    /// concurrency). Also the number of events in flight.
    #[serde(default = "default_concurrency")]
    pub concurrency: std::num::NonZeroUsize,
    /// Deadline of one invocation; on expiry it is cancelled and counts as retryable.
    #[serde(default = "default_timeout")]
    pub timeout: HumanDuration,
    #[serde(default = "default_max_input_bytes")]
    pub max_input_bytes: ByteSize,
    #[serde(default = "default_max_pixels")]
    pub max_pixels: std::num::NonZeroU64,
    /// Events waiting between the trigger and the executor. When full, the trigger waits.
    #[serde(default)]
    pub queue: Option<std::num::NonZeroUsize>,
    /// Most items a `collect` step gathers for one event (they are all in memory).
    #[serde(default = "default_max_collect")]
    pub max_collect: std::num::NonZeroUsize,
}

/// The effective limits of a pipeline.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub concurrency: usize,
    pub timeout: Duration,
    pub max_input_bytes: u64,
    pub max_pixels: u64,
    pub queue: usize,
    pub max_collect: usize,
}

fn default_concurrency() -> std::num::NonZeroUsize {
    std::thread::available_parallelism().unwrap_or(std::num::NonZeroUsize::MIN)
}
fn default_timeout() -> HumanDuration {
    HumanDuration(Duration::from_secs(30))
}
fn default_max_input_bytes() -> ByteSize {
    ByteSize(64 << 20)
}
fn default_max_collect() -> std::num::NonZeroUsize {
    std::num::NonZeroUsize::new(100_000).expect("non-zero")
}
fn default_max_pixels() -> std::num::NonZeroU64 {
    std::num::NonZeroU64::new(100_000_000).expect("non-zero")
}

impl From<LimitsConfig> for Limits {
    fn from(c: LimitsConfig) -> Self {
        let concurrency = c.concurrency.get();
        Self {
            concurrency,
            timeout: c.timeout.0,
            max_input_bytes: c.max_input_bytes.0,
            max_pixels: c.max_pixels.get(),
            queue: c.queue.map(|q| q.get()).unwrap_or(concurrency * 2),
            max_collect: c.max_collect.get(),
        }
    }
}

/// `[retry]`: what happens when an invocation fails.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetryConfig {
    /// Tries per invocation, the first included. Only retryable errors are retried.
    #[serde(default = "default_max_attempts")]
    pub max_attempts: std::num::NonZeroU32,
    /// No retry starts once the event is older than this. Retryable errors stop at
    /// `max_attempts` or `max_age`, whichever comes first; a store or broker being
    /// unavailable (an outage) is retried until `max_age` only, 1 hour unless set.
    #[serde(default)]
    pub max_age: Option<HumanDuration>,
    #[serde(default)]
    pub backoff: Backoff,
    /// Where failed events are recorded (a bucket URL). Default: `dead-letter/` in the
    /// state directory, so nothing is ever dropped silently.
    #[serde(default)]
    pub dead_letter: Option<String>,
}

fn default_max_attempts() -> std::num::NonZeroU32 {
    std::num::NonZeroU32::new(3).expect("non-zero")
}

#[derive(Debug, Clone)]
pub struct Retry {
    pub max_attempts: u32,
    pub max_age: Option<Duration>,
    pub backoff: Backoff,
    pub dead_letter: Option<String>,
}

/// How long an event may wait out an outage when `max_age` is not set: long enough for
/// a store restart or a broker failover, short enough that a destination gone for good
/// shows up as dead letters the same day.
pub const OUTAGE_MAX_AGE: Duration = Duration::from_secs(3600);

impl Retry {
    /// Whether a failed try may be followed by another: `tries` made so far, the event
    /// `age`. Unavailable destinations do not use up attempts, only time.
    pub fn again(&self, error: &weir_functions::FunctionError, tries: u32, age: Duration) -> bool {
        if !error.is_retryable() {
            return false;
        }
        if error.is_unavailable() {
            return age < self.max_age.unwrap_or(OUTAGE_MAX_AGE);
        }
        tries < self.max_attempts && self.max_age.is_none_or(|max| age < max)
    }
}

impl From<RetryConfig> for Retry {
    fn from(c: RetryConfig) -> Self {
        Self {
            max_attempts: c.max_attempts.get(),
            max_age: c.max_age.map(|d| d.0),
            backoff: c.backoff,
            dead_letter: c.dead_letter,
        }
    }
}

/// One `[[step]]`, its function built.
pub struct Step {
    pub name: String,
    pub function_name: String,
    pub function: Arc<dyn Function>,
    /// How long building the function took (warm-up, like a Lambda init).
    pub init: Duration,
    /// Indices of the steps whose output items feed this one; empty for a root step,
    /// which receives the event's item.
    pub after: Vec<usize>,
    /// Fan-in: invoked once per event with every item its `after` steps produced.
    pub collect: bool,
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use weir_functions::FunctionError;

    use super::*;

    #[test]
    fn outages_use_up_time_not_attempts() {
        let retry = Retry { max_attempts: 3, max_age: None, backoff: Default::default(), dead_letter: None };
        let (flaky, down, bad) = (
            FunctionError::retryable("timed out"),
            FunctionError::unavailable("503 SlowDown"),
            FunctionError::permanent("not an image"),
        );
        let minute = Duration::from_secs(60);
        assert!(retry.again(&flaky, 2, minute) && !retry.again(&flaky, 3, minute));
        assert!(retry.again(&down, 1_000, 10 * minute), "a 10-minute outage is waited out");
        assert!(!retry.again(&down, 1, OUTAGE_MAX_AGE), "an hour is the default limit");
        assert!(!retry.again(&bad, 1, Duration::ZERO));
        let short = Retry { max_age: Some(minute), ..retry };
        assert!(!short.again(&down, 1, minute) && !short.again(&flaky, 1, minute), "max_age bounds both");
    }
}
