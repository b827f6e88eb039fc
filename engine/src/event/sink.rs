//! The bounded queue between a trigger and its pipeline's executor: a full executor
//! makes `send` wait (backpressure), never a buffer that grows.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::Event;

/// Counters about the trigger → executor queue, for tests, logs and `/metrics`.
#[derive(Debug, Default)]
pub struct QueueStats {
    /// Most events ever waiting in the queue at once.
    pub high_water: AtomicUsize,
    pub submitted: AtomicU64,
    /// Records a trigger took from its source and holds, not yet queued (Kafka: the
    /// records waiting behind a partition's chunk in flight): the most ever at once.
    pub held_high_water: AtomicUsize,
    /// How often the trigger paused its source (Kafka partitions) because the
    /// executor was full or too much was held.
    pub pauses: AtomicU64,
    /// How often records already fetched were let go, to be fetched again later,
    /// because a partition held all it may (Kafka).
    pub refetches: AtomicU64,
    /// Cancelled once the executor has stopped and finished (or abandoned) its
    /// in-flight events: no acknowledgement comes after it.
    pub drained: CancellationToken,
    /// Set while the trigger waits to be started again after a failure (a bucket or
    /// broker out of reach): `/v1/ready` and `weir_trigger_up` read it.
    pub trigger_down: AtomicBool,
    pub trigger_failures: AtomicU64,
    /// The queue itself, weakly, to read its depth without keeping it open.
    queue: OnceLock<mpsc::WeakSender<Event>>,
}

impl QueueStats {
    /// Events waiting in the queue now.
    pub fn depth(&self) -> usize {
        match self.queue.get().and_then(mpsc::WeakSender::upgrade) {
            Some(tx) => tx.max_capacity() - tx.capacity(),
            None => 0,
        }
    }

    pub fn trigger_up(&self) -> bool {
        !self.trigger_down.load(Ordering::Relaxed)
    }
}

/// The bounded queue's sending side. `send` waits while the queue is full.
#[derive(Clone)]
pub struct EventSink {
    tx: mpsc::Sender<Event>,
    stats: Arc<QueueStats>,
}

/// The executor is gone (shutting down).
#[derive(Debug, thiserror::Error)]
#[error("the executor has stopped accepting events")]
pub struct SinkClosed;

impl EventSink {
    pub fn new(capacity: usize) -> (Self, mpsc::Receiver<Event>, Arc<QueueStats>) {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        let stats = Arc::new(QueueStats::default());
        let _ = stats.queue.set(tx.downgrade());
        (Self { tx, stats: stats.clone() }, rx, stats)
    }

    pub async fn send(&self, event: Event) -> Result<(), SinkClosed> {
        self.tx.send(event).await.map_err(|_| SinkClosed)?;
        self.sent();
        Ok(())
    }

    /// Whether `try_send` would find room now. Reliable for a queue with one sender
    /// (a Kafka trigger's consumer thread).
    pub fn has_room(&self) -> bool {
        self.tx.capacity() > 0
    }

    /// Queues `event` without waiting (for triggers that run on their own thread).
    pub fn try_send(&self, event: Event) -> Result<(), Box<mpsc::error::TrySendError<Event>>> {
        self.tx.try_send(event).map_err(Box::new)?;
        self.sent();
        Ok(())
    }

    fn sent(&self) {
        let queued = self.tx.max_capacity() - self.tx.capacity();
        self.stats.high_water.fetch_max(queued, Ordering::Relaxed);
        self.stats.submitted.fetch_add(1, Ordering::Relaxed);
    }

    /// The queue's counters, for triggers that report into them.
    pub fn stats(&self) -> &QueueStats {
        &self.stats
    }

    /// Returns once the executor behind this sink has stopped and drained.
    pub async fn drained(&self) {
        self.stats.drained.cancelled().await
    }
}
