//! Wall-clock time for schedules, injectable so tests can run days of a schedule in
//! milliseconds.
//!
//! Schedules follow the wall clock (UTC), not a monotonic timer: after a suspend or an
//! NTP step the next tick is computed from the real time again. The system clock
//! therefore sleeps in bounded slices and re-reads the time after each.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::watch;

/// Longest single sleep of the system clock before it re-reads the time.
const MAX_SLICE: Duration = Duration::from_secs(30);

#[async_trait::async_trait]
pub trait Clock: Send + Sync {
    fn now(&self) -> DateTime<Utc>;
    /// Returns once `now() >= at`.
    async fn sleep_until(&self, at: DateTime<Utc>);
}

/// The machine's clock.
pub struct SystemClock;

#[async_trait::async_trait]
impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }

    async fn sleep_until(&self, at: DateTime<Utc>) {
        loop {
            let Ok(left) = (at - Utc::now()).to_std() else { return };
            if left.is_zero() {
                return;
            }
            tokio::time::sleep(left.min(MAX_SLICE)).await;
        }
    }
}

/// A clock that only moves when told to, for tests.
#[derive(Clone)]
pub struct ManualClock {
    now: Arc<watch::Sender<DateTime<Utc>>>,
}

impl ManualClock {
    pub fn new(start: DateTime<Utc>) -> Self {
        Self { now: Arc::new(watch::Sender::new(start)) }
    }

    /// Moves the clock to `to` (never backwards), waking every sleeper whose time came.
    pub fn set(&self, to: DateTime<Utc>) {
        self.now.send_if_modified(|now| {
            let later = to > *now;
            if later {
                *now = to;
            }
            later
        });
    }

    pub fn advance(&self, by: Duration) {
        let by = chrono::Duration::from_std(by).unwrap_or(chrono::Duration::MAX);
        self.set(self.now() + by);
    }
}

#[async_trait::async_trait]
impl Clock for ManualClock {
    fn now(&self) -> DateTime<Utc> {
        *self.now.borrow()
    }

    async fn sleep_until(&self, at: DateTime<Utc>) {
        let mut changes = self.now.subscribe();
        // The sender lives as long as the clock, which outlives every sleeper.
        let _ = changes.wait_for(|now| *now >= at).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn manual_clock_wakes_sleepers_when_their_time_comes() {
        let start = Utc::now();
        let clock = ManualClock::new(start);
        let sleeper = {
            let clock = clock.clone();
            tokio::spawn(async move { clock.sleep_until(start + chrono::Duration::hours(1)).await })
        };
        clock.advance(Duration::from_secs(1800));
        tokio::task::yield_now().await;
        assert!(!sleeper.is_finished());
        clock.advance(Duration::from_secs(1800));
        sleeper.await.unwrap();
        clock.set(start);
        assert_eq!(clock.now(), start + chrono::Duration::hours(1), "never backwards");
    }
}
