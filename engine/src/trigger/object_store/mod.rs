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

mod inbox;
mod poll;
mod watch;

use std::collections::{BTreeMap, HashSet};
use std::path::Path as FsPath;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use anyhow::Context as _;
use globset::{GlobBuilder, GlobSet, GlobSetBuilder};
use object_store::{ObjectMeta, ObjectStoreExt};
use serde::Deserialize;
use tokio_util::sync::CancellationToken;
use toml::Spanned;
use weir_functions::Bucket;

use super::{Acknowledge, Event, EventSink, EventSource, Inbox, Outcome, Trigger, TriggerContext};
use crate::config::units::HumanDuration;
use crate::config::Reporter;
use crate::state::ObjectStatus;
use watch::Change;

/// The `[trigger]` table as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawConfig {
    url: String,
    #[serde(default)]
    prefix: String,
    #[serde(default)]
    include: Vec<Spanned<String>>,
    #[serde(default)]
    exclude: Vec<Spanned<String>>,
    #[serde(default)]
    detect: Option<Detect>,
    #[serde(default, alias = "rescan_interval")]
    poll_interval: Option<HumanDuration>,
    #[serde(default = "default_poll_page")]
    poll_page: Spanned<usize>,
    #[serde(default)]
    keys: KeyOrder,
    #[serde(default)]
    settle: Option<HumanDuration>,
    #[serde(default = "default_events")]
    events: Vec<Spanned<String>>,
    #[serde(default)]
    verify: bool,
    #[serde(default)]
    options: BTreeMap<Spanned<String>, String>,
}

fn default_poll_page() -> Spanned<usize> {
    Spanned::new(0..0, 1000)
}
fn default_events() -> Vec<Spanned<String>> {
    vec![Spanned::new(0..0, "created".to_string())]
}

/// How new objects are noticed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Detect {
    /// List the prefix every `poll_interval`.
    Poll,
    /// Only bucket notifications posted to `/v1/notifications/{pipeline}`.
    Notifications,
    /// Notifications for latency, plus a reconciling poll every `poll_interval`.
    Hybrid,
    /// inotify (`file://` only), plus a re-listing every `poll_interval`.
    Watch,
}

/// Whether new keys always sort after old ones, which lets polls start after the last
/// key seen instead of passing over the whole prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KeyOrder {
    /// Keys arrive in any order: every pass lists the whole prefix (page by page).
    #[default]
    Any,
    /// Keys only grow (timestamped or sequenced names): polls continue after the last
    /// key seen and never go back. Changes to old keys are not noticed.
    Ascending,
}

/// A validated object-store trigger configuration.
#[derive(Debug, Clone)]
pub struct ObjectStoreConfig {
    pub url: String,
    pub filter: KeyFilter,
    pub detect: Detect,
    /// How often the prefix is listed (poll, hybrid, watch).
    pub poll_interval: Duration,
    /// Most keys examined per listing page; the cursor is saved after each page.
    pub poll_page: usize,
    pub keys: KeyOrder,
    /// Objects modified more recently than this are left for the next look: a writer
    /// may still be at work (local directories; cloud objects appear complete).
    pub settle: Duration,
    /// Also deliver `ObjectRemoved` notifications.
    pub removals: bool,
    /// HEAD each notified object before queueing it (skips objects deleted since).
    pub verify: bool,
    /// object_store configuration keys for this URL (`aws_endpoint`, …).
    pub options: Vec<(String, String)>,
}

impl RawConfig {
    pub(crate) fn validate(self, report: &mut Reporter<'_>) -> Option<ObjectStoreConfig> {
        let include = compile_globs(&self.include, report);
        let exclude = compile_globs(&self.exclude, report);
        let (include, exclude) = (include?, exclude?);
        let mut ok = true;
        if self.prefix.starts_with('/') || self.prefix.split('/').any(|s| s == "..") {
            report.error(0..0, format!("trigger prefix {:?} must be a relative key prefix", self.prefix));
            ok = false;
        }
        let scheme = self.url.split_once("://").map(|(s, _)| s).unwrap_or("");
        if !matches!(scheme, "file" | "memory" | "s3" | "s3a" | "gs" | "az" | "azure" | "abfs" | "abfss" | "adl") {
            report.error(0..0, format!("trigger url {:?}: use file://, memory://, s3://, gs:// or az://", self.url));
            ok = false;
        }
        let local = scheme == "file";
        let detect = self.detect.unwrap_or(if local { Detect::Watch } else { Detect::Poll });
        if detect == Detect::Watch && !local {
            report.error(0..0, format!("detect = \"watch\" needs a file:// bucket, not {}", self.url));
            ok = false;
        }
        if *self.poll_page.get_ref() == 0 {
            report.error(self.poll_page.span(), "poll_page must be at least 1");
            ok = false;
        }
        let mut removals = false;
        for event in &self.events {
            match event.get_ref().as_str() {
                "created" => {}
                "removed" => removals = true,
                other => {
                    report.error(event.span(), format!("unknown event {other:?} (created, removed)"));
                    ok = false;
                }
            }
        }
        let options: Vec<(String, String)> =
            self.options.iter().map(|(k, v)| (k.get_ref().clone(), v.clone())).collect();
        if !local && scheme != "memory" {
            for unknown in weir_functions::store::unknown_option_keys(&self.url, &options) {
                let span = self.options.keys().find(|k| *k.get_ref() == unknown).map(|k| k.span()).unwrap_or(0..0);
                report.error(span, format!("unknown object_store option {unknown:?} for {scheme}:// (see object_store's config keys, e.g. aws_endpoint)"));
                ok = false;
            }
        } else if let Some(key) = self.options.keys().next() {
            report.error(key.span(), format!("[trigger.options] only apply to cloud stores, not {scheme}://"));
            ok = false;
        }
        ok.then(|| ObjectStoreConfig {
            url: self.url,
            filter: KeyFilter { prefix: self.prefix, include, exclude },
            detect,
            poll_interval: self
                .poll_interval
                .map(|d| d.0)
                .unwrap_or(Duration::from_secs(30))
                .max(Duration::from_millis(10)),
            poll_page: *self.poll_page.get_ref(),
            keys: self.keys,
            settle: self.settle.map(|d| d.0).unwrap_or(if local { Duration::from_millis(500) } else { Duration::ZERO }),
            removals,
            verify: self.verify,
            options,
        })
    }
}

pub(crate) fn compile_globs(globs: &[Spanned<String>], report: &mut Reporter<'_>) -> Option<Option<GlobSet>> {
    if globs.is_empty() {
        return Some(None);
    }
    let mut set = GlobSetBuilder::new();
    let mut ok = true;
    for glob in globs {
        // Case-insensitive, `*` crosses `/`: "*.jpg" means "any key ending in .jpg/.JPG",
        // like an S3 suffix filter.
        match GlobBuilder::new(glob.get_ref()).case_insensitive(true).literal_separator(false).build() {
            Ok(g) => {
                set.add(g);
            }
            Err(e) => {
                report.error(glob.span(), format!("invalid glob {:?}: {}", glob.get_ref(), e.kind()));
                ok = false;
            }
        }
    }
    if !ok {
        return None;
    }
    match set.build() {
        Ok(set) => Some(Some(set)),
        Err(e) => {
            report.error(globs[0].span(), format!("invalid globs: {e}"));
            None
        }
    }
}

/// Which keys a trigger cares about.
#[derive(Debug, Clone)]
pub struct KeyFilter {
    pub prefix: String,
    /// Matched against the key after `prefix`. None: everything.
    include: Option<GlobSet>,
    exclude: Option<GlobSet>,
}

impl KeyFilter {
    pub(crate) fn new(prefix: String, include: Option<GlobSet>, exclude: Option<GlobSet>) -> Self {
        Self { prefix, include, exclude }
    }

    /// True if `key` is under the prefix, included, not excluded, and no segment is
    /// hidden (`.name`: editor and rsync temp files, weir's own state directory).
    pub fn matches(&self, key: &str) -> bool {
        let Some(rest) = key.strip_prefix(&self.prefix) else { return false };
        if rest.is_empty() || key.split('/').any(|s| s.starts_with('.')) {
            return false;
        }
        self.include.as_ref().is_none_or(|g| g.is_match(rest))
            && !self.exclude.as_ref().is_some_and(|g| g.is_match(rest))
    }

    /// The directory part of the prefix: what to list or watch.
    pub(crate) fn dir(&self) -> &str {
        self.prefix.rsplit_once('/').map(|(d, _)| d).unwrap_or("")
    }
}

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

/// Records finished objects in the ledger and releases them from `in_flight`.
struct ObjectAcker {
    ctx: TriggerContext,
    in_flight: Arc<Mutex<HashSet<String>>>,
}

#[async_trait::async_trait]
impl Acknowledge for ObjectAcker {
    async fn ack(&self, event: &Event, outcome: Outcome) {
        if let EventSource::Object { url, key, version, .. } = &event.source {
            let status = match outcome {
                Outcome::Done => Some(ObjectStatus::Done),
                Outcome::DeadLettered => Some(ObjectStatus::DeadLettered),
                // Stays pending: delivered again on the next start (or the next poll).
                Outcome::Abandoned => None,
            };
            if let Some(status) = status {
                if let Err(e) = self.ctx.ledger.record_object(&self.ctx.pipeline, url, key, version, status).await {
                    // Not recorded means processed again after a restart: safe, outputs are idempotent.
                    tracing::error!(pipeline = %self.ctx.pipeline, key = %key, error = %e, "cannot record object in the ledger");
                }
            }
            self.in_flight.lock().expect("in-flight lock").remove(key);
        }
    }
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
        if !config.options.is_empty() {
            ctx.stores.set_options(&config.url, config.options.clone());
        }
        Self { config, ctx, in_flight: Default::default(), running: tokio::sync::watch::Sender::new(None) }
    }

    fn acker(&self) -> Arc<dyn Acknowledge> {
        Arc::new(ObjectAcker { ctx: self.ctx.clone(), in_flight: self.in_flight.clone() })
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
        let event = Event {
            id: uuid::Uuid::now_v7().to_string(),
            pipeline: self.ctx.pipeline.clone(),
            source: EventSource::Object {
                url: bucket.url.clone(),
                key: candidate.key,
                size: candidate.size,
                version: candidate.version,
                last_modified: candidate.last_modified,
            },
            received_at: SystemTime::now(),
            acker: self.acker(),
        };
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
            // Gone again (a temp file renamed away): nothing to do.
            Err(object_store::Error::NotFound { .. }) => Ok(Consider::Skipped),
            Err(e) => Err(e).with_context(|| format!("reading metadata of {key} in {}", bucket.url)),
            Ok(mut meta) => {
                // The writer closed the file: it is complete however recent.
                meta.last_modified = meta.last_modified.min(chrono::Utc::now() - self.config.settle);
                self.consider(bucket, meta, sink).await
            }
        }
    }

    fn log_poll_error(&self, e: &anyhow::Error) {
        tracing::warn!(pipeline = %self.ctx.pipeline, url = %self.config.url, error = format!("{e:#}"), "listing failed; will retry");
    }
}

#[async_trait::async_trait]
impl Trigger for ObjectStoreTrigger {
    async fn run(self: Arc<Self>, sink: EventSink, shutdown: CancellationToken) -> anyhow::Result<()> {
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
        let mut next_poll = tokio::time::Instant::now();
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                _ = tokio::time::sleep_until(next_poll), if polls => {
                    let wait = match self.poll(&bucket, &sink, &shutdown).await {
                        Ok(poll::Pass::Finished) => self.config.poll_interval,
                        Ok(poll::Pass::MoreToList) => Duration::ZERO,
                        Ok(poll::Pass::TooFresh) => self.config.settle.max(Duration::from_millis(50)).min(self.config.poll_interval),
                        Err(e) if shutdown.is_cancelled() => { tracing::debug!(error = %e, "poll stopped by shutdown"); return Ok(()) }
                        Err(e) => { self.log_poll_error(&e); self.config.poll_interval.min(Duration::from_secs(5)) }
                    };
                    next_poll = tokio::time::Instant::now() + wait;
                }
                Some(change) = watch::recv(&mut changes) => match change {
                    Change::Rescan => next_poll = tokio::time::Instant::now(),
                    Change::File(path) => {
                        let root = root.as_deref().expect("changes only exist with a local root");
                        match self.changed_file(&bucket, root, &path, &sink).await {
                            Ok(Consider::TooFresh) => next_poll = next_poll.min(tokio::time::Instant::now() + self.config.settle),
                            Ok(_) => {}
                            Err(e) if shutdown.is_cancelled() => { tracing::debug!(error = %e, "stopped by shutdown"); return Ok(()) }
                            Err(e) => tracing::warn!(pipeline = %self.ctx.pipeline, path = %path.display(), error = %e, "cannot consider changed file"),
                        }
                    }
                },
            }
        }
    }

    fn inbox(self: Arc<Self>) -> Option<Arc<dyn Inbox>> {
        matches!(self.config.detect, Detect::Notifications | Detect::Hybrid).then(|| self as Arc<dyn Inbox>)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn filter(prefix: &str, include: &[&str], exclude: &[&str]) -> KeyFilter {
        let globs = |g: &[&str]| -> Option<GlobSet> {
            if g.is_empty() {
                return None;
            }
            let mut b = GlobSetBuilder::new();
            for p in g {
                b.add(GlobBuilder::new(p).case_insensitive(true).build().unwrap());
            }
            Some(b.build().unwrap())
        };
        KeyFilter { prefix: prefix.into(), include: globs(include), exclude: globs(exclude) }
    }

    #[test]
    fn filter_honours_prefix_globs_and_hidden_files() {
        let f = filter("inbox/", &["*.jpg", "*.png"], &["tmp/**"]);
        assert!(f.matches("inbox/a.jpg"));
        assert!(f.matches("inbox/deep/er/A.JPG"));
        assert!(!f.matches("inbox/a.gif"));
        assert!(!f.matches("processed/a.jpg"));
        assert!(!f.matches("inbox/tmp/a.jpg"));
        assert!(!f.matches("inbox/.a.jpg.tmp"));
        assert!(!f.matches("inbox/.weir/x.jpg"));
        assert!(!f.matches("inbox/"));
    }
}
