//! A process-wide budget for decoder scratch memory.
//!
//! A progressive JPEG cannot be turned into pixels until its last scan has arrived,
//! so libjpeg keeps every DCT coefficient of the whole image, at full resolution,
//! whatever the shrink-on-load scale: 54 MB for a 13-megapixel photo, several times
//! its decoded frame. Two such decodes at once were the peak of a burst (two copies
//! of the same large photo side by side), so the burst's peak depended on which
//! photos happened to meet. Reserving that scratch here makes large decodes take
//! turns while the rest of the work (resizing, encoding, smaller decodes) goes on
//! beside them: the peak holds at one large decode plus frames, whatever arrives.
//!
//! The budget is per process, since the memory is: by default 48 MiB per core (on two
//! cores, one 16-megapixel progressive decode beside a small one, never two large),
//! so a machine with more cores decodes more large photos at once; `weir
//! --decode-memory` sets it. A decode larger than the whole budget still runs, alone.
//! Waiters are served in arrival order, so a large photo is not starved by a stream of
//! smaller ones. What it costs: a photo waiting for its turn idles its CPU thread, so
//! the budget trades some throughput on runs of large progressive photos for a peak
//! that does not depend on which photos meet (figures in the README).

use std::sync::{Condvar, Mutex, OnceLock};

/// Per core; see the module documentation.
pub const DEFAULT_PER_CORE: u64 = 48 << 20;

static BUDGET: OnceLock<Budget> = OnceLock::new();

/// Sets the process-wide budget; only before the first decode (returns false after).
pub fn set_capacity(bytes: u64) -> bool {
    BUDGET.set(Budget::new(bytes)).is_ok()
}

fn budget() -> &'static Budget {
    BUDGET.get_or_init(|| {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as u64;
        Budget::new(DEFAULT_PER_CORE * cores.max(2))
    })
}

/// Blocks until `bytes` of scratch memory may be used (at most the whole budget), and
/// returns the reservation that gives it back when dropped. Call from a CPU-pool
/// thread, never from the async reactor, and hold it only while no other CPU job is
/// waited for (a decode, not a parallel encode), so a holder always finishes.
pub fn reserve(bytes: u64) -> Reservation<'static> {
    budget().reserve(bytes)
}

pub struct Budget {
    capacity: u64,
    state: Mutex<State>,
    changed: Condvar,
}

#[derive(Default)]
struct State {
    used: u64,
    /// Tickets: `next` is handed to the next caller, `serving` is the one that may go.
    next: u64,
    serving: u64,
}

pub struct Reservation<'a> {
    budget: &'a Budget,
    bytes: u64,
}

impl Budget {
    pub fn new(capacity: u64) -> Self {
        Budget { capacity: capacity.max(1), state: Mutex::new(State::default()), changed: Condvar::new() }
    }

    pub fn reserve(&self, bytes: u64) -> Reservation<'_> {
        let bytes = bytes.min(self.capacity);
        let mut state = self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let ticket = state.next;
        state.next += 1;
        while state.serving != ticket || state.used + bytes > self.capacity {
            state = self.changed.wait(state).unwrap_or_else(|poisoned| poisoned.into_inner());
        }
        state.used += bytes;
        state.serving += 1;
        drop(state);
        // The next in line may fit beside this one.
        self.changed.notify_all();
        Reservation { budget: self, bytes }
    }

    #[cfg(test)]
    fn used(&self) -> u64 {
        self.state.lock().unwrap().used
    }
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        let mut state = self.budget.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        state.used -= self.bytes;
        drop(state);
        self.budget.changed.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;

    #[test]
    fn reservations_within_the_budget_go_together_and_larger_ones_wait() {
        let budget = Arc::new(Budget::new(100));
        let a = budget.reserve(40);
        let b = budget.reserve(50);
        assert_eq!(budget.used(), 90);
        let waited = {
            let budget = budget.clone();
            std::thread::spawn(move || {
                let started = std::time::Instant::now();
                let _c = budget.reserve(30);
                started.elapsed()
            })
        };
        std::thread::sleep(Duration::from_millis(100));
        assert_eq!(budget.used(), 90, "30 more does not fit beside 90");
        drop(a);
        assert!(waited.join().unwrap() >= Duration::from_millis(90));
        drop(b);
        assert_eq!(budget.used(), 0);
    }

    #[test]
    fn more_than_the_budget_runs_alone() {
        let budget = Budget::new(100);
        let huge = budget.reserve(1 << 40);
        assert_eq!(budget.used(), 100);
        drop(huge);
        let _small = budget.reserve(1);
    }

    #[test]
    fn the_peak_never_exceeds_the_budget_and_everyone_gets_a_turn() {
        let budget = Arc::new(Budget::new(100));
        let (now, peak, done) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let threads: Vec<_> = (0..8u64)
            .map(|i| {
                let (budget, now, peak, done) = (budget.clone(), now.clone(), peak.clone(), done.clone());
                std::thread::spawn(move || {
                    for round in 0..20u64 {
                        let bytes = 10 + (i * 7 + round * 13) % 80;
                        let _r = budget.reserve(bytes);
                        let held = now.fetch_add(bytes, Ordering::SeqCst) + bytes;
                        peak.fetch_max(held, Ordering::SeqCst);
                        std::thread::sleep(Duration::from_micros(200));
                        now.fetch_sub(bytes, Ordering::SeqCst);
                    }
                    done.fetch_add(1, Ordering::SeqCst);
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(done.load(Ordering::SeqCst), 8);
        let peak = peak.load(Ordering::SeqCst);
        assert!(peak <= 100 && peak > 80, "peak {peak}: bounded, and decodes did overlap");
    }
}
