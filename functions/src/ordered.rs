//! An ordered parallel map over a stream: pieces are read on one thread, worked on
//! in the CPU pool, and handed back in the order they were read. A conversion or a
//! jq filter thereby uses every core while its output stays byte-for-byte what a
//! sequential run writes (a redelivered input rewrites an identical object).
//!
//! ```text
//! caller's thread: first piece ──(the only one? worked on inline: no thread, no pool)
//! reader thread:   next piece ─▶ rayon::spawn(work) ─┐
//!                       └─ its reply slot, in order ─▶ next() ◀┘
//! ```
//!
//! The work runs in rayon's global pool, the one every CPU-bound function shares
//! ([`crate::cpu`]), so this never oversubscribes the machine. One piece per pool
//! thread and one more are in flight: memory is bounded by the piece size, not the
//! input.
//! Dropping the map stops the reader at its next send.

use std::sync::mpsc;
use std::sync::Arc;

use crate::FunctionError;

type Reply<T> = std::thread::Result<T>;

enum Pending<T> {
    Ready(T),
    Waiting(mpsc::Receiver<Reply<T>>),
    Failed(FunctionError),
}

/// The results of `work` over each piece, in input order.
pub struct Ordered<T> {
    order: mpsc::Receiver<Pending<T>>,
}

impl<T: Send + 'static> Ordered<T> {
    /// Starts reading with `read`, which returns the next piece and whether it is the
    /// last; the first piece is read on this thread.
    pub fn start<P, R, W>(mut read: R, work: W) -> Self
    where
        P: Send + 'static,
        R: FnMut() -> Result<(P, bool), FunctionError> + Send + 'static,
        W: Fn(P) -> T + Send + Sync + 'static,
    {
        let depth = rayon::current_num_threads().max(1) + 1;
        let (order_tx, order) = mpsc::sync_channel(depth);
        match read() {
            Err(e) => {
                let _ = order_tx.send(Pending::Failed(e));
            }
            Ok((piece, true)) => {
                let _ = order_tx.send(Pending::Ready(work(piece)));
            }
            Ok((first, false)) => {
                let work = Arc::new(work);
                let reader = move || {
                    let mut next = Ok((first, false));
                    loop {
                        let (pending, last) = match next {
                            Err(e) => (Pending::Failed(e), true),
                            Ok((piece, last)) => (spawn(&work, piece), last),
                        };
                        if order_tx.send(pending).is_err() || last {
                            return;
                        }
                        next = std::panic::catch_unwind(std::panic::AssertUnwindSafe(&mut read))
                            .unwrap_or_else(|_| Err(FunctionError::permanent("reading the input panicked")));
                    }
                };
                if let Err(e) = std::thread::Builder::new().name("weir-reader".into()).spawn(reader) {
                    let (tx, order) = mpsc::sync_channel(1);
                    let _ = tx.send(Pending::Failed(FunctionError::retryable(format!(
                        "could not start a reading thread: {e}"
                    ))));
                    return Self { order };
                }
            }
        }
        Self { order }
    }
}

impl<T> Iterator for Ordered<T> {
    type Item = Result<T, FunctionError>;

    /// The oldest piece's result, waiting for it; None after the last.
    fn next(&mut self) -> Option<Result<T, FunctionError>> {
        let result = match self.order.recv().ok()? {
            Pending::Ready(result) => Ok(result),
            Pending::Failed(e) => Err(e),
            Pending::Waiting(reply) => match reply.recv() {
                Ok(Ok(result)) => Ok(result),
                Ok(Err(_)) => Err(FunctionError::permanent("the work on a piece of the input panicked")),
                Err(_) => Err(FunctionError::permanent("the CPU pool dropped a piece of the input")),
            },
        };
        Some(result)
    }
}

impl<T> Ordered<T> {
    /// One with nothing to hand back.
    pub fn empty() -> Self {
        Self { order: mpsc::sync_channel(0).1 }
    }
}

fn spawn<P, T, W>(work: &Arc<W>, piece: P) -> Pending<T>
where
    P: Send + 'static,
    T: Send + 'static,
    W: Fn(P) -> T + Send + Sync + 'static,
{
    let (reply, result) = mpsc::sync_channel(1);
    let work = work.clone();
    rayon::spawn(move || {
        let _ = reply.send(std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| work(piece))));
    });
    Pending::Waiting(result)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn results_come_back_in_input_order() {
        let mut n = 0u64;
        let mut ordered = Ordered::start(
            move || {
                n += 1;
                Ok((n, n == 200))
            },
            |n: u64| {
                // Later pieces finish first.
                std::thread::sleep(std::time::Duration::from_micros(200 - n));
                n * 2
            },
        );
        let got: Vec<u64> = std::iter::from_fn(|| ordered.next()).map(Result::unwrap).collect();
        assert_eq!(got, (1..=200).map(|n| n * 2).collect::<Vec<_>>());
    }

    #[test]
    fn a_read_error_ends_the_results_after_the_pieces_before_it() {
        let mut n = 0;
        let mut ordered = Ordered::start(
            move || {
                n += 1;
                if n == 3 {
                    return Err(FunctionError::permanent("line 3: broken"));
                }
                Ok((n, false))
            },
            |n: i32| n,
        );
        assert_eq!(ordered.next().unwrap().unwrap(), 1);
        assert_eq!(ordered.next().unwrap().unwrap(), 2);
        assert!(ordered.next().unwrap().unwrap_err().message().contains("line 3"));
        assert!(ordered.next().is_none());
    }

    #[test]
    fn a_single_piece_is_worked_on_inline() {
        let caller = std::thread::current().id();
        let mut ordered = Ordered::start(|| Ok(((), true)), move |()| std::thread::current().id() == caller);
        assert!(ordered.next().unwrap().unwrap());
        assert!(ordered.next().is_none());
    }

    #[test]
    fn a_panic_in_the_work_is_an_error_not_an_abort() {
        let mut n = 0;
        let mut ordered = Ordered::start(
            move || {
                n += 1;
                Ok((n, n == 2))
            },
            |n: i32| {
                if n == 2 {
                    panic!("boom");
                }
                n
            },
        );
        assert_eq!(ordered.next().unwrap().unwrap(), 1);
        assert!(ordered.next().unwrap().is_err());
    }
}
