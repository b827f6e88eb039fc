//! Chunks: consecutive records of one partition, handed to the executor as one event.
//!
//! Handing records over one by one costs more than a no-op function; a chunk carries
//! whatever one poll brought for a partition (up to [`MAX_RECORDS`] / [`MAX_BYTES`], or
//! a pipeline's `batch_size`). Records still finish one by one: the executor marks
//! each in the chunk's [`Progress`] as it is done or dead-lettered, so commits advance
//! record by record, and a slow record holds back only the commit, not its neighbours
//! (with `ordering = "none"`).

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::Arc;

use super::offsets::Partition;
use crate::event::{Acknowledge, Event, Outcome};

/// Most records in a chunk (without `batch_size`).
pub const MAX_RECORDS: usize = 500;
/// A chunk closes once its values add up to this many bytes (a single larger record
/// still travels, alone), which bounds what the executor's queue holds.
pub const MAX_BYTES: usize = 4 << 20;

/// What the executor tells the trigger about one chunk, shared by both.
#[derive(Debug)]
pub struct Progress {
    pub id: u64,
    /// Offsets of the chunk's records, in order.
    pub offsets: Box<[i64]>,
    finished: Box<[AtomicBool]>,
    /// The event ended (every record finished, or the rest abandoned).
    ended: AtomicBool,
    /// The partition was revoked before the chunk started: do not run it.
    revoked: AtomicBool,
}

impl Progress {
    pub fn new(id: u64, offsets: Box<[i64]>) -> Self {
        let finished = offsets.iter().map(|_| AtomicBool::new(false)).collect();
        Self { id, offsets, finished, ended: AtomicBool::new(false), revoked: AtomicBool::new(false) }
    }

    /// Index of the first record not finished, or None when all are.
    pub fn first_unfinished(&self) -> Option<usize> {
        self.finished.iter().position(|f| !f.load(Ordering::Acquire))
    }

    pub fn finish(&self, index: usize) {
        if let Some(flag) = self.finished.get(index) {
            flag.store(true, Ordering::Release);
        }
    }

    pub fn ended(&self) -> bool {
        self.ended.load(Ordering::Acquire)
    }

    pub fn revoke(&self) {
        self.revoked.store(true, Ordering::Release);
    }

    pub fn is_revoked(&self) -> bool {
        self.revoked.load(Ordering::Acquire)
    }
}

/// Why the consumer thread is woken.
#[derive(Debug)]
pub enum Wake {
    /// librdkafka's queue went from empty to non-empty.
    Messages,
    /// A chunk's event ended.
    Ended { partition: Partition, id: u64 },
    /// `commit_count` records finished since the last commit.
    CommitDue,
    /// Stop requested.
    Stop,
    /// The executor stopped and has no event in flight any more.
    Drained,
}

/// Records finished since the last commit, for `commit_count`: one shared counter,
/// so that the consumer thread is woken once the count is reached, not per record.
#[derive(Debug)]
pub struct FinishedCount {
    finished: AtomicUsize,
    commit_count: usize,
}

impl FinishedCount {
    pub fn new(commit_count: usize) -> Self {
        Self { finished: AtomicUsize::new(0), commit_count }
    }

    /// Counts one record; true when it makes a commit due.
    fn add_one(&self) -> bool {
        self.finished.fetch_add(1, Ordering::Relaxed) + 1 == self.commit_count
    }

    pub fn due(&self) -> bool {
        self.finished.load(Ordering::Relaxed) >= self.commit_count
    }

    /// A commit is going out: count again from zero.
    pub fn reset(&self) {
        self.finished.store(0, Ordering::Relaxed);
    }
}

/// The trigger's side of a chunk's acknowledgement.
pub struct ChunkAcker {
    pub progress: Arc<Progress>,
    pub partition: Partition,
    pub wake: mpsc::Sender<Wake>,
    /// With `commit_count`.
    pub count: Option<Arc<FinishedCount>>,
}

#[async_trait::async_trait]
impl Acknowledge for ChunkAcker {
    async fn ack(&self, _event: &Event, _outcome: Outcome) {
        // Which records finished is already in `progress`; abandoned ones stay unfinished
        // and uncommitted, to be delivered again.
        self.progress.ended.store(true, Ordering::Release);
        let _ = self.wake.send(Wake::Ended { partition: self.partition.clone(), id: self.progress.id });
    }

    fn ack_part(&self, index: usize) {
        self.progress.finish(index);
        if self.count.as_ref().is_some_and(|count| count.add_one()) {
            let _ = self.wake.send(Wake::CommitDue);
        }
    }

    fn wanted(&self) -> bool {
        !self.progress.is_revoked()
    }
}
