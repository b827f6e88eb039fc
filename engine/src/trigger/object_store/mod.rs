//! `kind = "object_store"`: objects appearing in a bucket (`file://`, `s3://`, `gs://`,
//! `az://`, `memory://`).
//!
//! Detection (`detect`), in layers, so nothing is missed and nothing is read half-written:
//! * `poll`: the prefix is listed as a stream, page by page ([`poll`]); the listing
//!   position is a cursor in the ledger, so a pass over millions of keys resumes after a
//!   restart and never holds more than a page in memory.
//! * `notifications`: S3-style bucket notifications delivered to weir's HTTP endpoint
//!   ([`inbox`]); `hybrid` adds a reconciling poll that catches anything not notified.
//! * `watch` (the default for `file://`): inotify's "closed after writing" and "renamed
//!   into place" events ([`watch`]), plus a periodic re-listing.
//!
//! Every candidate is checked against the ledger by (key, version): an object already
//! processed in this version is skipped, a changed one runs again. Before an event is
//! queued its object is recorded as *pending*, and only marked done after its event
//! finished (see [`Acknowledge`]), so a crash at any point re-delivers it on the next
//! start, and a notification answered with 2xx is never lost.

mod config;
mod event;
mod history;
mod inbox;
mod poll;
mod watch;

pub(crate) use config::key_filter;
pub use config::{Detect, KeyOrder, ObjectStoreConfig, ObjectStoreKind, RawConfig};
pub(crate) use event::ObjectRun;
pub use event::ObjectWork;

use std::collections::HashSet;
use std::path::Path as FsPath;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use anyhow::Context as _;
use futures::StreamExt;
use object_store::{ObjectMeta, ObjectStoreExt};
use tokio_util::sync::CancellationToken;
use weir_functions::Bucket;

use super::{Inbox, Trigger, TriggerContext};
use crate::error::EngineError;
use crate::event::{Acknowledge, Event, EventSink, LedgerAck};
use crate::state::ObjectStatus;
use watch::Change;

/// Watched files looked at together (and side by side) when a burst arrives.
const WATCH_BATCH: usize = 64;

/// The running trigger.
pub struct ObjectStoreTrigger {
    config: ObjectStoreConfig,
    ctx: TriggerContext,
    /// Keys submitted and not yet acknowledged: never submit the same key twice at once.
    in_flight: Arc<Mutex<HashSet<String>>>,
    /// Set when `run` starts: where notifications are queued, and when to refuse them.
    /// A watch rather than a plain cell so a notification arriving while the engine is
    /// still starting waits for the trigger instead of being refused.
    running: tokio::sync::watch::Sender<Option<(EventSink, CancellationToken)>>,
}

/// An object that may need processing, from a listing, a watcher or a notification.
pub(super) struct Candidate {
    key: String,
    size: u64,
    version: String,
    last_modified: Option<chrono::DateTime<chrono::Utc>>,
    /// Whether `version` is the object's ETag (rather than size and time).
    listed_etag: bool,
}

impl Candidate {
    fn from_meta(key: String, meta: &ObjectMeta) -> Self {
        Self {
            key,
            size: meta.size,
            version: version_of(meta),
            last_modified: Some(meta.last_modified),
            listed_etag: meta.e_tag.is_some(),
        }
    }
}

/// The version an object is recorded under: its ETag without quotes (listings quote it,
/// notifications do not), or size and modification time where there is no ETag.
pub(crate) fn version_of(meta: &ObjectMeta) -> String {
    match &meta.e_tag {
        Some(tag) => tag.trim_matches('"').to_string(),
        None => format!("{}-{}", meta.size, meta.last_modified.timestamp_micros()),
    }
}

#[derive(Debug, PartialEq, Eq)]
pub(super) enum Consider {
    Submitted,
    Skipped,
    TooFresh,
}

impl ObjectStoreTrigger {
    pub fn new(config: ObjectStoreConfig, ctx: TriggerContext) -> Self {
        Self { config, ctx, in_flight: Default::default(), running: tokio::sync::watch::Sender::new(None) }
    }

    /// Records the object as done or dead-lettered, then lets its key be submitted again.
    fn acker(&self) -> Arc<dyn Acknowledge> {
        let in_flight = self.in_flight.clone();
        LedgerAck::new(
            self.ctx.ledger.clone(),
            Some(Box::new(move |event: &Event| {
                if let Some(entry) = event.work.ledger_entry() {
                    in_flight.lock().expect("in-flight lock").remove(&entry.key);
                }
            })),
        )
    }

    /// Queues an object that the ledger says is new or changed: recorded as pending
    /// first, so that from here on a crash cannot lose it.
    async fn submit(&self, bucket: &Bucket, candidate: Candidate, sink: &EventSink) -> anyhow::Result<Consider> {
        if !self.in_flight.lock().expect("in-flight lock").insert(candidate.key.clone()) {
            return Ok(Consider::Skipped);
        }
        let pending = self
            .ctx
            .ledger
            .record_object(&self.ctx.pipeline, &bucket.url, &candidate.key, &candidate.version, ObjectStatus::Pending)
            .await;
        if let Err(e) = pending {
            self.in_flight.lock().expect("in-flight lock").remove(&candidate.key);
            return Err(e.into());
        }
        let work = ObjectWork::Object {
            url: bucket.url.clone(),
            key: candidate.key,
            size: candidate.size,
            version: candidate.version,
            last_modified: candidate.last_modified,
        };
        let event = Event::new(self.ctx.pipeline.clone(), Arc::new(work), self.acker());
        if sink.send(event).await.is_err() {
            anyhow::bail!("executor stopped");
        }
        Ok(Consider::Submitted)
    }

    /// Checks one listed or reported object against the filter, `settle` and the
    /// ledger, and submits it if it needs processing.
    async fn consider(&self, bucket: &Bucket, meta: ObjectMeta, sink: &EventSink) -> anyhow::Result<Consider> {
        let Some(key) = bucket.key_of(&meta.location) else { return Ok(Consider::Skipped) };
        if !self.config.filter.matches(&key) {
            return Ok(Consider::Skipped);
        }
        if self.too_fresh(&meta) {
            return Ok(Consider::TooFresh);
        }
        let candidate = Candidate::from_meta(key, &meta);
        if self.in_flight.lock().expect("in-flight lock").contains(&candidate.key) {
            return Ok(Consider::Skipped);
        }
        if self.ctx.ledger.object_seen(&self.ctx.pipeline, &bucket.url, &candidate.key, &candidate.version).await? {
            return Ok(Consider::Skipped);
        }
        self.submit(bucket, candidate, sink).await
    }

    fn too_fresh(&self, meta: &ObjectMeta) -> bool {
        let age = SystemTime::now().duration_since(meta.last_modified.into()).unwrap_or_default();
        age < self.config.settle
    }

    /// Objects left pending by an earlier run (crash, kill -9, drain timeout): looked up
    /// again and queued before anything new.
    async fn redeliver_pending(&self, bucket: &Bucket, sink: &EventSink) -> anyhow::Result<usize> {
        let pending = self.ctx.ledger.pending_objects(&self.ctx.pipeline).await?;
        let mut count = 0;
        for (url, key, _version) in pending.into_iter().filter(|(url, _, _)| *url == bucket.url) {
            let location = match bucket.path(&key) {
                Ok(location) => location,
                Err(e) => {
                    tracing::warn!(pipeline = %self.ctx.pipeline, key = %key, error = %e, "dropping pending object");
                    self.ctx.ledger.forget_object(&self.ctx.pipeline, &url, &key).await?;
                    continue;
                }
            };
            match bucket.store.head(&location).await {
                Ok(meta) => {
                    self.submit(bucket, Candidate::from_meta(key, &meta), sink).await?;
                    count += 1;
                }
                Err(object_store::Error::NotFound { .. }) => {
                    tracing::info!(pipeline = %self.ctx.pipeline, key = %key, "pending object is gone; forgotten");
                    self.ctx.ledger.forget_object(&self.ctx.pipeline, &url, &key).await?;
                }
                Err(e) => return Err(e).with_context(|| format!("looking up pending {key} in {url}")),
            }
        }
        Ok(count)
    }

    /// A file the watcher reported: look it up and consider it like a listed object.
    async fn changed_file(
        &self,
        bucket: &Bucket,
        root: &FsPath,
        path: &FsPath,
        sink: &EventSink,
    ) -> anyhow::Result<Consider> {
        let Some(key) = watch::key_of_file(root, path) else { return Ok(Consider::Skipped) };
        if !self.config.filter.matches(&key) {
            return Ok(Consider::Skipped);
        }
        let Ok(location) = bucket.path(&key) else { return Ok(Consider::Skipped) };
        match bucket.store.head(&location).await {
            // Gone again (a temp file renamed away): nothing to do. A symlink: never
            // followed, and reported by the listings.
            Err(object_store::Error::NotFound { .. } | object_store::Error::PermissionDenied { .. }) => {
                Ok(Consider::Skipped)
            }
            Err(e) => Err(e).with_context(|| format!("reading metadata of {key} in {}", bucket.url)),
            Ok(mut meta) => {
                // The writer closed the file: it is complete however recent.
                meta.last_modified = meta.last_modified.min(chrono::Utc::now() - self.config.settle);
                self.consider(bucket, meta, sink).await
            }
        }
    }

    fn log_poll_error(&self, e: &anyhow::Error) {
        let error = weir_functions::error::short_store_message(&format!("{e:#}"));
        tracing::warn!(pipeline = %self.ctx.pipeline, url = %self.config.url, error, "listing failed; will retry");
    }
}

#[async_trait::async_trait]
impl Trigger for ObjectStoreTrigger {
    async fn run(self: Arc<Self>, sink: EventSink, shutdown: CancellationToken) -> Result<(), EngineError> {
        self.watch_and_poll(sink, shutdown).await.map_err(EngineError::from_anyhow)
    }

    fn inbox(self: Arc<Self>) -> Option<Arc<dyn Inbox>> {
        matches!(self.config.detect, Detect::Notifications | Detect::Hybrid).then(|| self as Arc<dyn Inbox>)
    }
}

impl ObjectStoreTrigger {
    async fn watch_and_poll(self: Arc<Self>, sink: EventSink, shutdown: CancellationToken) -> anyhow::Result<()> {
        let bucket = self.ctx.stores.resolve(&self.config.url)?;
        // Watch the deepest directory the prefix names (created if missing).
        let (root, _watcher, mut changes) = match (&bucket.local_root, self.config.detect) {
            (Some(root), Detect::Watch) => {
                let dir = root.join(self.config.filter.dir());
                std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
                let (watcher, changes) = watch::watch(&dir).with_context(|| format!("watching {}", dir.display()))?;
                (Some(root.clone()), Some(watcher), Some(changes))
            }
            _ => (None, None, None),
        };
        // Take notifications from now on; one for an object being redelivered is
        // deduplicated by `in_flight`.
        self.running.send_replace(Some((sink.clone(), shutdown.clone())));
        let redelivered = self.redeliver_pending(&bucket, &sink).await?;
        tracing::info!(pipeline = %self.ctx.pipeline, url = %bucket.url, prefix = %self.config.filter.prefix,
            detect = ?self.config.detect, redelivered, "object_store trigger started");

        let polls = self.config.detect != Detect::Notifications;
        metrics::describe_counter!("weir_poll_passes_total", "Listing passes of a polled bucket, by result.");
        metrics::describe_histogram!(
            "weir_poll_pass_duration_seconds",
            metrics::Unit::Seconds,
            "Time one listing pass took."
        );
        let mut next_poll = tokio::time::Instant::now();
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                _ = tokio::time::sleep_until(next_poll), if polls => {
                    let started = std::time::Instant::now();
                    let pass = self.poll(&bucket, &sink, &shutdown).await;
                    let result = if pass.is_ok() { "ok" } else { "failed" };
                    let pipeline = self.ctx.pipeline.to_string();
                    metrics::counter!("weir_poll_passes_total", "pipeline" => pipeline.clone(), "result" => result).increment(1);
                    metrics::histogram!("weir_poll_pass_duration_seconds", "pipeline" => pipeline).record(started.elapsed().as_secs_f64());
                    let wait = match pass {
                        Ok(poll::Pass::Finished) => self.config.poll_interval,
                        Ok(poll::Pass::MoreToList) => Duration::ZERO,
                        Ok(poll::Pass::TooFresh) => self.config.settle.max(Duration::from_millis(50)).min(self.config.poll_interval),
                        Err(e) if shutdown.is_cancelled() => { tracing::debug!(error = %e, "poll stopped by shutdown"); return Ok(()) }
                        Err(e) => { self.log_poll_error(&e); self.config.poll_interval.min(Duration::from_secs(5)) }
                    };
                    next_poll = tokio::time::Instant::now() + wait;
                }
                Some(change) = watch::recv(&mut changes) => {
                    let mut files = Vec::new();
                    for change in watch::with_waiting(&mut changes, change, WATCH_BATCH) {
                        match change {
                            Change::Rescan => next_poll = tokio::time::Instant::now(),
                            Change::File(path) if !files.contains(&path) => files.push(path),
                            Change::File(_) => {}
                        }
                    }
                    let root = root.as_deref().expect("changes only exist with a local root");
                    // Side by side: one file's stat and ledger round trips do not wait
                    // for another's. The queue still takes them one at a time.
                    let (this, bucket, sink) = (&*self, &bucket, &sink);
                    let mut considered = futures::stream::iter(files)
                        .map(move |path| async move {
                            let result = this.changed_file(bucket, root, &path, sink).await;
                            (path, result)
                        })
                        .buffer_unordered(WATCH_BATCH);
                    while let Some((path, result)) = considered.next().await {
                        match result {
                            Ok(Consider::TooFresh) => next_poll = next_poll.min(tokio::time::Instant::now() + self.config.settle),
                            Ok(_) => {}
                            Err(e) if shutdown.is_cancelled() => { tracing::debug!(error = %e, "stopped by shutdown"); return Ok(()) }
                            Err(e) => tracing::warn!(pipeline = %self.ctx.pipeline, path = %path.display(), error = %e, "cannot consider changed file"),
                        }
                    }
                }
            }
        }
    }
}
