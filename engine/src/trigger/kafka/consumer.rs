//! The consumer thread: polls librdkafka, groups records into chunks, hands them to
//! the executor, pauses what must wait, and commits what finished.
//!
//! A thread of its own, not an async task, for two reasons: librdkafka runs rebalance
//! callbacks inside `poll`, and a revoke must be able to wait there (up to
//! `rebalance_grace`) for the revoked partitions' records to finish without stalling
//! the async runtime; and polling — which keeps the consumer in its group — must go on
//! however busy the executor is. It sleeps on one channel ([`Wake`]) that librdkafka
//! (queue no longer empty), the executor (a chunk ended) and the engine (stop,
//! drained) all write to.

use std::collections::{HashMap, VecDeque};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::{Offset, TopicPartitionList};

use super::chunk::{self, ChunkAcker, FinishedCount, Progress, Wake};
use super::context::KafkaContext;
use super::offsets::{Offsets, Partition};
use super::run::ChunkWork;
use super::{KafkaConfig, Ordering, Record, RecordHeader};
use crate::event::{Event, EventSink};

/// Messages taken per poll round before chunks are handed over.
const POLL_BUDGET: usize = 2_000;
/// Records (or bytes) held for one partition before it is paused (a batch holds more);
/// past twice that, records are let go and fetched again later (see [`State::take`]).
const HOLD_BACK: usize = chunk::MAX_RECORDS;
const HOLD_BACK_BYTES: usize = chunk::MAX_BYTES;
/// The same with `ordering` (see [`State::hold_back`]).
const ORDERED_HOLD_BACK: usize = 8 * chunk::MAX_RECORDS;
/// How long the executor's queue may stay full before fetching is paused: a queue
/// full for a moment is normal, and every pause drops what librdkafka prefetched.
const PAUSE_AFTER: Duration = Duration::from_millis(200);
/// Longest sleep: librdkafka wakes the thread when records arrive, this is a backstop.
const MAX_SLEEP: Duration = Duration::from_millis(100);
/// How often a full executor queue is looked at again.
const FULL_RETRY: Duration = Duration::from_millis(1);

/// One partition's records that are not handed over yet.
#[derive(Default)]
struct Lane {
    open: VecDeque<Record>,
    open_bytes: usize,
    /// When the oldest open record arrived (batch windows count from it).
    since: Option<Instant>,
    /// With ordering, the chunk in flight: the next one waits for it.
    running: Option<u64>,
    paused: bool,
    /// Records were let go from this offset on: fetch again from it.
    rewind: Option<i64>,
    /// After a rewind, the offset the partition must start again with; what comes
    /// before it (records librdkafka had queued already) is dropped.
    awaiting: Option<i64>,
    /// The last offset taken: a record at or before it is one fetched twice.
    last_taken: Option<i64>,
}

impl Lane {
    /// Whether `offset` continues the partition where it left off.
    fn continues(&mut self, offset: i64) -> bool {
        match self.awaiting {
            Some(expected) if offset != expected => false,
            Some(_) => {
                self.awaiting = None;
                true
            }
            None => self.last_taken.is_none_or(|last| offset > last),
        }
    }
}

/// Everything the consumer thread and librdkafka's callbacks share. Callbacks run on
/// the consumer thread, inside `poll`, so the lock is never contended; it is released
/// before every poll.
pub(super) struct State {
    pipeline: Arc<str>,
    config: Arc<KafkaConfig>,
    sink: EventSink,
    wake_tx: Sender<Wake>,
    wake_rx: Receiver<Wake>,
    pub(super) offsets: Offsets,
    lanes: HashMap<Partition, Lane>,
    next_id: u64,
    /// Since when the executor's queue has had no room.
    full_since: Option<Instant>,
    last_commit: Instant,
    /// With `commit_count`: records finished since the last commit.
    finished: Option<Arc<FinishedCount>>,
    stopping: bool,
    drained: bool,
    /// The last poll round ended on its budget: more records are waiting.
    more: bool,
    pub(super) records_taken: u64,
}

impl State {
    pub(super) fn new(
        pipeline: Arc<str>,
        config: Arc<KafkaConfig>,
        sink: EventSink,
        wake: (Sender<Wake>, Receiver<Wake>),
    ) -> Self {
        let finished = config.commit_count.map(|n| Arc::new(FinishedCount::new(n)));
        Self {
            pipeline,
            config,
            sink,
            wake_tx: wake.0,
            wake_rx: wake.1,
            offsets: Offsets::default(),
            lanes: HashMap::new(),
            next_id: 0,
            full_since: None,
            last_commit: Instant::now(),
            finished,
            stopping: false,
            drained: false,
            more: false,
            records_taken: 0,
        }
    }

    fn ordered(&self) -> bool {
        self.config.ordering != Ordering::None
    }

    /// Most records held for one partition: a chunk's worth, or a whole batch. With
    /// ordering a partition runs one chunk at a time, so records wait behind it; held
    /// back only a chunk's worth, the partition was paused after every chunk, and
    /// librdkafka drops what it prefetched for a paused partition: each record was
    /// fetched about twice, and a resumed partition waited for a fetch round trip.
    /// [`HOLD_BACK_BYTES`] still bounds what a partition holds.
    fn hold_back(&self) -> usize {
        let records = if self.ordered() { ORDERED_HOLD_BACK } else { HOLD_BACK };
        self.config.batch.map_or(records, |b| b.size.max(records))
    }

    fn handle(&mut self, wake: Wake) {
        match wake {
            Wake::Messages => {}
            Wake::Ended { partition, id } => {
                if let Some(lane) = self.lanes.get_mut(&partition) {
                    if lane.running == Some(id) {
                        lane.running = None;
                    }
                }
            }
            // `commit` sees the count itself.
            Wake::CommitDue => {}
            Wake::Stop => self.stopping = true,
            Wake::Drained => self.drained = true,
        }
    }

    /// Sleeps until something happens or `limit` passes, then takes every pending wake.
    fn wait(&mut self, limit: Duration) {
        if !limit.is_zero() {
            match self.wake_rx.recv_timeout(limit) {
                Ok(wake) => self.handle(wake),
                Err(RecvTimeoutError::Timeout) => {}
                // Cannot happen: this state holds a sender itself.
                Err(RecvTimeoutError::Disconnected) => self.stopping = true,
            }
        }
        while let Ok(wake) = self.wake_rx.try_recv() {
            self.handle(wake);
        }
    }

    /// How long the thread may sleep before there is something to do.
    fn sleep_time(&self) -> Duration {
        if self.more {
            return Duration::ZERO;
        }
        let now = Instant::now();
        let mut until = now + MAX_SLEEP;
        until = until.min(self.last_commit + self.config.commit_interval);
        for lane in self.lanes.values() {
            if lane.open.is_empty() || (self.ordered() && lane.running.is_some()) {
                continue;
            }
            match (&self.config.batch, lane.since) {
                (Some(batch), Some(since)) => until = until.min(since + batch.window),
                // Ready to go but the executor's queue is full: look again soon.
                _ => until = until.min(now + FULL_RETRY),
            }
        }
        until.saturating_duration_since(now)
    }

    /// Records from one poll round, to the open chunks of their partitions. A partition
    /// already holding all it may is not given more: the rest are let go, and fetched
    /// again from the first of them once it has room (it is paused meanwhile), so
    /// what weir holds stays bounded however much librdkafka had prefetched.
    fn take(&mut self, records: impl Iterator<Item = Record>) {
        let now = Instant::now();
        let hold_back = self.hold_back();
        for record in records {
            let partition = record.partition_id();
            let lane = self.lanes.entry(partition.clone()).or_default();
            if lane.rewind.is_some() || !lane.continues(record.offset) {
                continue;
            }
            let over = |lane: &Lane| lane.open.len() >= 2 * hold_back || lane.open_bytes >= 2 * HOLD_BACK_BYTES;
            if over(lane) {
                // Full chunks go first, if the executor has room for them.
                self.dispatch_lane(&partition, false);
            }
            let Some(lane) = self.lanes.get_mut(&partition) else { continue };
            if over(lane) {
                lane.rewind = Some(record.offset);
                lane.awaiting = Some(record.offset);
                continue;
            }
            lane.last_taken = Some(record.offset);
            self.records_taken += 1;
            lane.since.get_or_insert(now);
            lane.open_bytes += record.value.len();
            lane.open.push_back(record);
        }
        let held = self.lanes.values().map(|l| l.open.len()).sum();
        self.sink.stats().held_high_water.fetch_max(held, std::sync::atomic::Ordering::Relaxed);
    }

    /// Hands over every chunk that is ready and has room in the executor's queue.
    /// `quiet`: the last poll found nothing more, so partial chunks go now.
    fn dispatch(&mut self, quiet: bool) {
        let partitions: Vec<Partition> = self.lanes.keys().cloned().collect();
        for partition in partitions {
            if !self.dispatch_lane(&partition, quiet) {
                return;
            }
        }
    }

    /// Hands over `partition`'s ready chunks; false when the executor's queue is full
    /// (or gone), so that no other lane need try.
    fn dispatch_lane(&mut self, partition: &Partition, quiet: bool) -> bool {
        let ordered = self.ordered();
        let (max_records, window) = match &self.config.batch {
            Some(batch) => (batch.size, Some(batch.window)),
            None => (chunk::MAX_RECORDS, None),
        };
        let now = Instant::now();
        while let Some(lane) = self.lanes.get_mut(partition) {
            if lane.open.is_empty() || (ordered && lane.running.is_some()) {
                break;
            }
            let full = lane.open.len() >= max_records || lane.open_bytes >= chunk::MAX_BYTES;
            let due = match (window, lane.since) {
                (Some(window), Some(since)) => now >= since + window,
                (Some(_), None) => false,
                (None, _) => quiet,
            };
            if !(full || due) {
                break;
            }
            if !self.sink.has_room() {
                self.full_since.get_or_insert(now);
                return false;
            }
            self.full_since = None;
            let mut records = Vec::with_capacity(lane.open.len().min(max_records));
            let mut bytes = 0;
            while let Some(record) = lane.open.front() {
                if records.len() >= max_records
                    || (!records.is_empty() && bytes + record.value.len() > chunk::MAX_BYTES)
                {
                    break;
                }
                bytes += record.value.len();
                records.extend(lane.open.pop_front());
            }
            lane.open_bytes -= bytes;
            lane.since = if lane.open.is_empty() { None } else { Some(now) };
            self.next_id += 1;
            let id = self.next_id;
            if ordered {
                lane.running = Some(id);
            }
            let progress = Arc::new(Progress::new(id, records.iter().map(|r| r.offset).collect()));
            self.offsets.started(partition, progress.clone());
            let work = ChunkWork { config: self.config.clone(), records: records.into() };
            let acker = ChunkAcker {
                progress,
                partition: partition.clone(),
                wake: self.wake_tx.clone(),
                count: self.finished.clone(),
            };
            let event = Event::new(self.pipeline.clone(), Arc::new(work), Arc::new(acker));
            if self.sink.try_send(event).is_err() {
                // The executor is gone: we are stopping.
                self.stopping = true;
                return false;
            }
        }
        true
    }

    /// Pauses partitions that hold too much or whose records cannot be handed over, and
    /// resumes the rest. The consumer keeps polling either way.
    fn reconcile_pauses(&mut self, consumer: &BaseConsumer<KafkaContext>) {
        let executor_full = self.stopping || self.full_since.is_some_and(|t| t.elapsed() >= PAUSE_AFTER);
        let hold_back = self.hold_back();
        let mut pause = TopicPartitionList::new();
        let mut resume = TopicPartitionList::new();
        let mut rewinds = Vec::new();
        for ((topic, partition), lane) in &mut self.lanes {
            if let Some(offset) = lane.rewind.take() {
                rewinds.push((topic.clone(), *partition, offset));
            }
            let want = executor_full || lane.open.len() >= hold_back || lane.open_bytes >= HOLD_BACK_BYTES;
            if want != lane.paused {
                lane.paused = want;
                let list = if want { &mut pause } else { &mut resume };
                let _ = list.add_partition_offset(topic, *partition, Offset::Invalid);
            }
        }
        if pause.count() > 0 {
            self.sink.stats().pauses.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            tracing::debug!(pipeline = %self.pipeline, partitions = pause.count(), executor_full, "fetching paused");
            if let Err(e) = consumer.pause(&pause) {
                tracing::warn!(pipeline = %self.pipeline, error = %e, "cannot pause partitions");
            }
        }
        for (topic, partition, offset) in rewinds {
            self.sink.stats().refetches.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            // Paused above: fetching starts again from here once it is resumed.
            if let Err(e) = consumer.seek(&topic, partition, Offset::Offset(offset), Duration::ZERO) {
                tracing::warn!(pipeline = %self.pipeline, error = %e, "cannot rewind {topic}/{partition} to {offset}");
            }
        }
        if resume.count() > 0 {
            tracing::debug!(pipeline = %self.pipeline, partitions = resume.count(), "fetching resumed");
            if let Err(e) = consumer.resume(&resume) {
                tracing::warn!(pipeline = %self.pipeline, error = %e, "cannot resume partitions");
            }
        }
    }

    /// Commits what advanced, every `commit_interval` or once `commit_count` records
    /// finished (or now, with `force`). Waits for the broker's answer (a round trip a
    /// second, by default): a commit that failed is then known to have failed, and its
    /// offsets go out again with the next one.
    fn commit(&mut self, consumer: &BaseConsumer<KafkaContext>, force: bool) {
        let counted = self.finished.as_ref().is_some_and(|count| count.due());
        if !force && !counted && self.last_commit.elapsed() < self.config.commit_interval {
            return;
        }
        if let Some(count) = &self.finished {
            count.reset();
        }
        self.last_commit = Instant::now();
        let commits = self.offsets.take_commits();
        if commits.is_empty() {
            return;
        }
        let committed = consumer.commit(&commit_list(&commits), CommitMode::Sync);
        let result = if committed.is_ok() { "ok" } else { "failed" };
        metrics::counter!("weir_kafka_commits_total", "pipeline" => self.pipeline.to_string(), "result" => result)
            .increment(1);
        match committed {
            Ok(()) => tracing::debug!(pipeline = %self.pipeline, partitions = commits.len(), "offsets committed"),
            Err(e) => {
                tracing::warn!(pipeline = %self.pipeline, error = %e, "commit failed; will retry");
                for (partition, offset) in &commits {
                    self.offsets.commit_failed(partition, *offset);
                }
            }
        }
    }

    /// librdkafka is taking `revoked` away (rebalance, or leaving the group): stop
    /// handing their records over, give the ones in flight up to `rebalance_grace` to
    /// finish, commit what finished, and forget them. Unfinished records go to the next
    /// owner uncommitted — never committed without having been processed.
    pub(super) fn revoke(&mut self, consumer: &BaseConsumer<KafkaContext>, revoked: &TopicPartitionList) {
        let partitions: Vec<Partition> =
            revoked.elements().iter().map(|e| (Arc::from(e.topic()), e.partition())).collect();
        for partition in &partitions {
            self.lanes.remove(partition);
            self.offsets.revoke(partition);
        }
        let deadline = Instant::now() + self.config.rebalance_grace;
        let waiting = |s: &Self| partitions.iter().map(|p| s.offsets.running(p)).sum::<usize>();
        let mut left = waiting(self);
        if left > 0 {
            tracing::info!(pipeline = %self.pipeline, chunks = left, grace = ?self.config.rebalance_grace,
                "partitions revoked: letting their records in flight finish");
        }
        while left > 0 && Instant::now() < deadline {
            self.wait(deadline.saturating_duration_since(Instant::now()).min(MAX_SLEEP));
            left = waiting(self);
        }
        let mut list = TopicPartitionList::new();
        for partition in &partitions {
            if let Some(offset) = self.offsets.take_commit(partition) {
                let _ = list.add_partition_offset(&partition.0, partition.1, Offset::Offset(offset));
            }
            self.offsets.forget(partition);
        }
        if list.count() > 0 {
            if let Err(e) = consumer.commit(&list, CommitMode::Sync) {
                tracing::warn!(pipeline = %self.pipeline, error = %e, "commit on revoke failed");
            }
        }
        if left > 0 {
            tracing::warn!(pipeline = %self.pipeline, chunks = left,
                "grace period over: records still running on revoked partitions will be delivered again");
        }
        tracing::info!(pipeline = %self.pipeline, partitions = partitions.len(), "partitions revoked");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Offers `offset` to the lane as `State::take` does; true if it was taken.
    fn offer(lane: &mut Lane, offset: i64) -> bool {
        let taken = lane.continues(offset);
        if taken {
            lane.last_taken = Some(offset);
        }
        taken
    }

    #[test]
    fn a_rewound_partition_starts_again_exactly_where_it_was_let_go() {
        let mut lane = Lane::default();
        assert!(offer(&mut lane, 10));
        assert!(!offer(&mut lane, 10), "fetched twice");
        assert!(offer(&mut lane, 12), "gaps (compaction) are fine");
        // 13 and after were let go: only 13 may start the partition again.
        lane.awaiting = Some(13);
        assert!(!offer(&mut lane, 15), "queued before the rewind: dropped");
        assert!(offer(&mut lane, 13));
        assert!(offer(&mut lane, 14));
        assert!(!offer(&mut lane, 13), "the re-fetch of what was taken already");
    }
}

pub(super) fn commit_list(commits: &[(Partition, i64)]) -> TopicPartitionList {
    let mut list = TopicPartitionList::new();
    for ((topic, partition), offset) in commits {
        // Only fails for an invalid offset, which `Offsets` never produces.
        let _ = list.add_partition_offset(topic, *partition, Offset::Offset(*offset));
    }
    list
}

/// Topic names as shared strings: one allocation per topic, not per record.
#[derive(Default)]
struct Topics(Vec<Arc<str>>);

impl Topics {
    fn get(&mut self, name: &str) -> Arc<str> {
        if let Some(found) = self.0.iter().find(|t| &***t == name) {
            return found.clone();
        }
        let topic: Arc<str> = Arc::from(name);
        self.0.push(topic.clone());
        topic
    }
}

fn record_of(message: &BorrowedMessage<'_>, topics: &mut Topics) -> Record {
    Record {
        topic: topics.get(message.topic()),
        partition: message.partition(),
        offset: message.offset(),
        key: message.key().map(|k| String::from_utf8_lossy(k).into_owned()),
        value: message.payload().map(bytes::Bytes::copy_from_slice).unwrap_or_default(),
        timestamp: message.timestamp().to_millis().and_then(chrono::DateTime::from_timestamp_millis),
        headers: headers_of(message),
    }
}

/// A message's headers (no allocation when it has none).
pub(super) fn headers_of(message: &impl Message) -> Vec<RecordHeader> {
    use rdkafka::message::Headers as _;
    message.headers().map_or_else(Vec::new, |headers| {
        headers
            .iter()
            .map(|h| RecordHeader {
                name: h.key.to_string(),
                value: h.value.map(bytes::Bytes::copy_from_slice).unwrap_or_default(),
            })
            .collect()
    })
}

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The consumer thread's loop, until a stop is requested and the executor drained.
pub(super) fn run(consumer: BaseConsumer<KafkaContext>) {
    let shared = consumer.context().state.clone();
    let pipeline = lock(&shared).pipeline.clone();
    let mut topics = Topics::default();
    let mut polled = Vec::with_capacity(POLL_BUDGET);
    loop {
        {
            let mut state = lock(&shared);
            let sleep = state.sleep_time();
            state.wait(sleep);
            if state.stopping {
                break;
            }
        }
        // Poll without the lock: rebalance callbacks inside `poll` take it.
        let mut quiet = false;
        let mut misses = 0;
        while polled.len() < POLL_BUDGET {
            match consumer.poll(Duration::ZERO) {
                Some(Ok(message)) => {
                    misses = 0;
                    polled.push(record_of(&message, &mut topics));
                }
                Some(Err(e)) => {
                    tracing::warn!(pipeline = %pipeline, error = %e, "kafka consume error");
                    break;
                }
                // None also follows a served event (rebalance, commit result): look twice.
                None => {
                    misses += 1;
                    if misses >= 2 {
                        quiet = true;
                        break;
                    }
                }
            }
        }
        let mut state = lock(&shared);
        state.take(polled.drain(..));
        state.more = !quiet;
        state.dispatch(quiet);
        state.reconcile_pauses(&consumer);
        state.commit(&consumer, false);
    }
    drain(&consumer, &shared);
}

/// Stopping: hand nothing more over, keep polling (group membership) until the executor
/// has finished or abandoned what it has, then commit one last time.
fn drain(consumer: &BaseConsumer<KafkaContext>, shared: &Mutex<State>) {
    {
        let mut state = lock(shared);
        for lane in state.lanes.values_mut() {
            lane.open.clear();
            lane.open_bytes = 0;
        }
        state.reconcile_pauses(consumer);
        if let Ok(assignment) = consumer.assignment() {
            let _ = consumer.pause(&assignment);
        }
    }
    loop {
        {
            let mut state = lock(shared);
            if state.drained {
                break;
            }
            state.wait(MAX_SLEEP);
        }
        // Records that still arrive are not handed over (and so not committed).
        while consumer.poll(Duration::ZERO).is_some() {}
    }
    let mut state = lock(shared);
    state.wait(Duration::ZERO);
    state.commit(consumer, true);
    tracing::info!(pipeline = %state.pipeline, records = state.records_taken, "kafka consumer stopped");
}
