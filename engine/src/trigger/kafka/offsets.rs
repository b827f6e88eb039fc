//! Commit-after-success bookkeeping: per partition, the offset that may be committed
//! is the lowest one still unfinished — never past a record that is in flight, being
//! retried, or was abandoned at shutdown — or one past the highest finished record when
//! nothing is in flight. Finished means done or safely dead-lettered.

use std::collections::{BTreeSet, HashMap};

/// A topic partition.
pub type Partition = (String, i32);

#[derive(Debug, Default)]
struct PartitionState {
    in_flight: BTreeSet<i64>,
    highest_finished: Option<i64>,
    /// What was last handed out for committing.
    committed: Option<i64>,
}

impl PartitionState {
    /// Kafka commits the next offset to read.
    fn committable(&self) -> Option<i64> {
        match self.in_flight.first() {
            Some(lowest) => Some(*lowest),
            None => self.highest_finished.map(|h| h + 1),
        }
    }
}

/// Offsets of every assigned partition.
#[derive(Debug, Default)]
pub struct Offsets {
    partitions: HashMap<Partition, PartitionState>,
}

impl Offsets {
    /// A record was taken from the broker and handed to the executor.
    pub fn started(&mut self, partition: &Partition, offset: i64) {
        self.partitions.entry(partition.clone()).or_default().in_flight.insert(offset);
    }

    /// A record's event finished (done, or its dead letter is written).
    pub fn finished(&mut self, partition: &Partition, offset: i64) {
        if let Some(state) = self.partitions.get_mut(partition) {
            if state.in_flight.remove(&offset) {
                state.highest_finished = state.highest_finished.max(Some(offset));
            }
        }
    }

    /// Records of `partition` still in flight.
    pub fn in_flight(&self, partition: &Partition) -> usize {
        self.partitions.get(partition).map_or(0, |s| s.in_flight.len())
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
        ("photos".to_string(), n)
    }

    #[test]
    fn a_commit_never_passes_an_unfinished_record() {
        let mut offsets = Offsets::default();
        for o in 5..=8 {
            offsets.started(&p(0), o);
        }
        assert_eq!(offsets.take_commits(), [(p(0), 5)], "nothing finished: the start position");
        offsets.finished(&p(0), 7);
        assert_eq!(offsets.take_commits(), [], "7 finished before 5: the commit stays at 5");
        offsets.finished(&p(0), 5);
        assert_eq!(offsets.take_commits(), [(p(0), 6)]);
        offsets.finished(&p(0), 6);
        assert_eq!(offsets.take_commits(), [(p(0), 8)], "5, 6 and 7 done: 8 is next");
        offsets.finished(&p(0), 8);
        assert_eq!(offsets.take_commits(), [(p(0), 9)]);
        assert_eq!(offsets.take_commits(), [], "nothing new");
    }

    #[test]
    fn partitions_advance_independently_and_revoked_ones_are_forgotten() {
        let mut offsets = Offsets::default();
        offsets.started(&p(0), 10);
        offsets.started(&p(1), 3);
        offsets.finished(&p(1), 3);
        assert_eq!(offsets.take_commits(), [(p(0), 10), (p(1), 4)]);
        assert_eq!(offsets.in_flight(&p(0)), 1);
        offsets.forget(&p(0));
        offsets.finished(&p(0), 10);
        assert_eq!(offsets.take_commits(), [], "a late ack of a revoked partition commits nothing");
    }
}
