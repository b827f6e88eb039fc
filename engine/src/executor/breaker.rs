//! A circuit breaker per step (each step talks to one destination: a bucket, a
//! broker). When a try finds the destination unavailable, the breaker opens: no event
//! tries that step again until a jittered delay has passed, and then only one — the
//! probe. The probe's answer closes the breaker (everyone goes on) or opens it again
//! for longer. So an outage costs one request per delay, not one per waiting event,
//! and the destination is not hammered by every event at once when it comes back.

use std::sync::Mutex;
use tokio::time::Instant;

use tokio::sync::watch;

use crate::config::units::Backoff;

#[derive(Debug)]
struct State {
    open: bool,
    /// Consecutive tries that found the destination unavailable.
    trips: u32,
    /// When the next probe may go.
    retry_at: Instant,
    /// A probe is under way: the others wait for its answer.
    probing: bool,
}

pub struct Breaker {
    state: Mutex<State>,
    /// Bumped on every change, so that waiters look again.
    changed: watch::Sender<u64>,
}

/// What [`Breaker::admit`] let through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admitted {
    /// The breaker is closed.
    Normal,
    /// The one try sent while the breaker is open.
    Probe,
}

impl Default for Breaker {
    fn default() -> Self {
        let state = State { open: false, trips: 0, retry_at: Instant::now(), probing: false };
        Breaker { state: Mutex::new(state), changed: watch::Sender::new(0) }
    }
}

impl Breaker {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn bump(&self) {
        self.changed.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// Waits until a try may go: at once while closed; while open, until the delay is
    /// over and no other probe is under way.
    pub async fn admit(&self) -> Admitted {
        let mut changes = self.changed.subscribe();
        loop {
            let wait = {
                let mut state = self.lock();
                if !state.open {
                    return Admitted::Normal;
                }
                let now = Instant::now();
                if !state.probing && now >= state.retry_at {
                    state.probing = true;
                    return Admitted::Probe;
                }
                (!state.probing).then(|| state.retry_at - now)
            };
            changes.mark_unchanged();
            match wait {
                Some(delay) => {
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = changes.changed() => {}
                    }
                }
                None => {
                    let _ = changes.changed().await;
                }
            }
        }
    }

    /// The destination answered (a result, or an error about the event itself).
    pub fn answered(&self) {
        let mut state = self.lock();
        let was_open = state.open;
        state.open = false;
        state.trips = 0;
        state.probing = false;
        drop(state);
        if was_open {
            self.bump();
        }
    }

    /// The destination did not answer: open (again) for the backoff's next delay,
    /// jittered so that breakers of several pipelines do not probe in step. Returns
    /// whether this try opened a closed breaker (worth one log line).
    pub fn unavailable(&self, backoff: &Backoff) -> bool {
        let mut state = self.lock();
        let opened = !state.open;
        state.trips = state.trips.saturating_add(1);
        state.open = true;
        state.probing = false;
        state.retry_at = Instant::now() + backoff.delay(state.trips, rand::random::<f64>());
        drop(state);
        self.bump();
        opened
    }

    /// A probe ended without an answer either way (its event was abandoned, say):
    /// another may go.
    pub fn release(&self, admitted: Admitted) {
        if admitted == Admitted::Probe {
            self.lock().probing = false;
            self.bump();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;

    fn backoff() -> Backoff {
        Backoff { min: Duration::from_millis(100), max: Duration::from_millis(100) }
    }

    #[tokio::test(start_paused = true)]
    async fn while_open_one_probe_goes_per_delay_and_an_answer_lets_everyone_through() {
        let breaker = Arc::new(Breaker::default());
        assert_eq!(breaker.admit().await, Admitted::Normal);
        assert!(breaker.unavailable(&backoff()));
        assert!(!breaker.unavailable(&backoff()), "already open");
        let admitted = Arc::new(AtomicUsize::new(0));
        let waiters: Vec<_> = (0..10)
            .map(|_| {
                let (breaker, admitted) = (breaker.clone(), admitted.clone());
                tokio::spawn(async move {
                    let how = breaker.admit().await;
                    admitted.fetch_add(1, Ordering::SeqCst);
                    how
                })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(admitted.load(Ordering::SeqCst), 0, "nobody goes before the delay");
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(admitted.load(Ordering::SeqCst), 1, "one probe after the delay");
        // The probe fails: still one at a time.
        breaker.unavailable(&backoff());
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(admitted.load(Ordering::SeqCst), 2);
        // The next probe is answered: the rest go at once.
        breaker.answered();
        let mut probes = 0;
        for waiter in waiters {
            probes += usize::from(waiter.await.unwrap() == Admitted::Probe);
        }
        assert_eq!(admitted.load(Ordering::SeqCst), 10);
        assert_eq!(probes, 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_released_probe_lets_another_one_go() {
        let breaker = Arc::new(Breaker::default());
        breaker.unavailable(&backoff());
        let probe = breaker.admit().await;
        assert_eq!(probe, Admitted::Probe);
        let next = tokio::spawn({
            let breaker = breaker.clone();
            async move { breaker.admit().await }
        });
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert!(!next.is_finished());
        breaker.release(probe);
        assert_eq!(next.await.unwrap(), Admitted::Probe);
    }
}
