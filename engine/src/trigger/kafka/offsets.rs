//! Commit-after-success bookkeeping: per partition, the offset that may be committed
//! is the lowest one not finished yet — never past a record that is in flight, being
//! retried, or was abandoned at shutdown — or one past the highest finished record
//! when nothing is in flight. Finished means done or safely dead-lettered.
//!
//! Records travel in chunks ([`super::chunk`]); a chunk's [`Progress`] says which of
//! its records finished, so the commit advances record by record inside a chunk.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use super::chunk::Progress;

/// A topic partition.
pub type Partition = (Arc<str>, i32);

#[derive(Debug, Default)]
struct PartitionState {
    /// Chunks handed to the executor and not fully finished, in offset order.
    chunks: VecDeque<Arc<Progress>>,
    highest_finished: Option<i64>,
    /// What was last handed out for committing.
    committed: Option<i64>,
}

impl PartitionState {
    /// Kafka commits the next offset to read.
    fn committable(&mut self) -> Option<i64> {
        while let Some(front) = self.chunks.front() {
            match front.first_unfinished() {
                Some(i) => return Some(front.offsets[i]),
                None => {
                    self.highest_finished = self.highest_finished.max(front.offsets.last().copied());
                    self.chunks.pop_front();
                }
            }
        }
        self.highest_finished.map(|h| h + 1)
    }
}

/// Offsets of every assigned partition.
#[derive(Debug, Default)]
pub struct Offsets {
    partitions: HashMap<Partition, PartitionState>,
}

impl Offsets {
    /// A chunk was handed to the executor.
    pub fn started(&mut self, partition: &Partition, chunk: Arc<Progress>) {
        self.partitions.entry(partition.clone()).or_default().chunks.push_back(chunk);
    }

    /// Chunks of `partition` whose events have not ended.
    pub fn running(&self, partition: &Partition) -> usize {
        self.partitions.get(partition).map_or(0, |s| s.chunks.iter().filter(|c| !c.ended()).count())
    }

    /// Marks every chunk of `partition` not started yet as revoked (the executor skips it).
    pub fn revoke(&self, partition: &Partition) {
        if let Some(state) = self.partitions.get(partition) {
            state.chunks.iter().for_each(|c| c.revoke());
        }
    }

    /// Offsets that advanced since the last call: (partition, next offset to read).
    pub fn take_commits(&mut self) -> Vec<(Partition, i64)> {
        let mut commits = Vec::new();
        for (partition, state) in &mut self.partitions {
            if let Some(offset) = state.committable() {
                if state.committed.is_none_or(|c| offset > c) {
                    state.committed = Some(offset);
                    commits.push((partition.clone(), offset));
                }
            }
        }
        commits.sort();
        commits
    }

    /// Like [`Offsets::take_commits`], for one partition only.
    pub fn take_commit(&mut self, partition: &Partition) -> Option<i64> {
        let state = self.partitions.get_mut(partition)?;
        let offset = state.committable()?;
        if state.committed.is_some_and(|c| offset <= c) {
            return None;
        }
        state.committed = Some(offset);
        Some(offset)
    }

    /// A commit of `offset` did not reach the broker: hand it out again next time.
    pub fn commit_failed(&mut self, partition: &Partition, offset: i64) {
        if let Some(state) = self.partitions.get_mut(partition) {
            if state.committed == Some(offset) {
                state.committed = None;
            }
        }
    }

    /// Forgets a partition (revoked): records of it still in flight will be delivered
    /// again to whoever owns it now.
    pub fn forget(&mut self, partition: &Partition) {
        self.partitions.remove(partition);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(n: i32) -> Partition {
        (Arc::from("photos"), n)
    }

    fn chunk(id: u64, offsets: std::ops::RangeInclusive<i64>) -> Arc<Progress> {
        Arc::new(Progress::new(id, offsets.collect()))
    }

    #[test]
    fn a_commit_never_passes_an_unfinished_record() {
        let mut offsets = Offsets::default();
        let c = chunk(1, 5..=8);
        offsets.started(&p(0), c.clone());
        assert_eq!(offsets.take_commits(), [(p(0), 5)], "nothing finished: the start position");
        c.finish(2); // offset 7
        assert_eq!(offsets.take_commits(), [], "7 finished before 5: the commit stays at 5");
        c.finish(0);
        assert_eq!(offsets.take_commits(), [(p(0), 6)]);
        c.finish(1);
        assert_eq!(offsets.take_commits(), [(p(0), 8)], "5, 6 and 7 done: 8 is next");
        c.finish(3);
        assert_eq!(offsets.take_commits(), [(p(0), 9)]);
        assert_eq!(offsets.take_commits(), [], "nothing new");
        offsets.commit_failed(&p(0), 9);
        assert_eq!(offsets.take_commits(), [(p(0), 9)], "a failed commit is handed out again");
    }

    #[test]
    fn chunks_of_a_partition_commit_in_order() {
        let mut offsets = Offsets::default();
        let (first, second) = (chunk(1, 0..=2), chunk(2, 3..=5));
        offsets.started(&p(0), first.clone());
        offsets.started(&p(0), second.clone());
        (0..3).for_each(|i| second.finish(i));
        assert_eq!(offsets.take_commits(), [(p(0), 0)], "the later chunk finished first: still 0");
        (0..3).for_each(|i| first.finish(i));
        assert_eq!(offsets.take_commits(), [(p(0), 6)]);
        // Gaps (compacted topics) are fine: the next chunk starts wherever it starts.
        let gappy = Arc::new(Progress::new(3, vec![10, 14].into()));
        offsets.started(&p(0), gappy.clone());
        assert_eq!(offsets.take_commits(), [(p(0), 10)], "nothing lies between 6 and 10");
        gappy.finish(1);
        assert_eq!(offsets.take_commits(), [], "10 not finished");
        gappy.finish(0);
        assert_eq!(offsets.take_commits(), [(p(0), 15)]);
    }

    #[test]
    fn partitions_advance_independently_and_revoked_ones_are_forgotten() {
        let mut offsets = Offsets::default();
        let (a, b) = (chunk(1, 10..=10), chunk(2, 3..=3));
        offsets.started(&p(0), a.clone());
        offsets.started(&p(1), b.clone());
        b.finish(0);
        assert_eq!(offsets.take_commits(), [(p(0), 10), (p(1), 4)]);
        assert_eq!(offsets.running(&p(0)), 1);
        offsets.revoke(&p(0));
        assert!(a.is_revoked());
        offsets.forget(&p(0));
        a.finish(0);
        assert_eq!(offsets.take_commits(), [], "a late finish of a revoked partition commits nothing");
    }
}
