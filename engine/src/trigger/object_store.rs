//! `kind = "object_store"`: objects appearing in a bucket.
//!
//! Detection, in layers, so nothing is missed and nothing is read half-written:
//! * a listing at start-up (objects that arrived while weir was down),
//! * for `file://` buckets, inotify events — but only "closed after writing" and
//!   "renamed into place", never "created", which fires before any data is written,
//! * a periodic re-listing (`rescan_interval`) that catches whatever the watcher
//!   missed (inotify queue overflow, a directory created and filled in one go).
//!
//! Each candidate is checked against the ledger by (key, version): an object already
//! processed in this version is skipped, a changed one runs again. An object is only
//! recorded after its event finished (see [`Acknowledge`]), so a crash re-runs it.

use std::collections::HashSet;
use std::path::{Path as FsPath, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use anyhow::Context as _;
use futures::StreamExt;
use globset::{GlobBuilder, GlobSet, GlobSetBuilder};
use object_store::{ObjectMeta, ObjectStoreExt};
use serde::Deserialize;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use toml::Spanned;
use weir_functions::Bucket;

use super::{Acknowledge, Event, EventSink, EventSource, Outcome, Trigger, TriggerContext};
use crate::config::units::HumanDuration;
use crate::config::Reporter;
use crate::state::ObjectStatus;

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
    #[serde(default = "default_rescan")]
    rescan_interval: HumanDuration,
    #[serde(default = "default_settle")]
    settle: HumanDuration,
}

fn default_rescan() -> HumanDuration {
    HumanDuration(Duration::from_secs(30))
}
fn default_settle() -> HumanDuration {
    HumanDuration(Duration::from_millis(500))
}

/// A validated object-store trigger configuration.
#[derive(Debug, Clone)]
pub struct ObjectStoreConfig {
    pub url: String,
    pub filter: KeyFilter,
    /// How often the whole prefix is listed again as a fallback.
    pub rescan_interval: Duration,
    /// Objects modified more recently than this are left for the next look: a writer
    /// may still be at work. (inotify's close-after-write event reports them anyway.)
    pub settle: Duration,
}

impl RawConfig {
    pub(crate) fn validate(self, report: &mut Reporter<'_>) -> Option<ObjectStoreConfig> {
        let include = compile_globs(&self.include, report);
        let exclude = compile_globs(&self.exclude, report);
        let (include, exclude) = (include?, exclude?);
        if self.prefix.starts_with('/') || self.prefix.split('/').any(|s| s == "..") {
            report.error(0..0, format!("trigger prefix {:?} must be a relative key prefix", self.prefix));
            return None;
        }
        Some(ObjectStoreConfig {
            url: self.url,
            filter: KeyFilter { prefix: self.prefix, include, exclude },
            rescan_interval: self.rescan_interval.0.max(Duration::from_millis(10)),
            settle: self.settle.0,
        })
    }
}

fn compile_globs(globs: &[Spanned<String>], report: &mut Reporter<'_>) -> Option<Option<GlobSet>> {
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
}

/// The running trigger.
pub struct ObjectStoreTrigger {
    config: ObjectStoreConfig,
    ctx: TriggerContext,
    /// Keys submitted and not yet acknowledged: never submit the same key twice at once.
    in_flight: Arc<Mutex<HashSet<String>>>,
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

/// What the file watcher saw.
enum Change {
    /// A file finished being written or was renamed into place.
    File(PathBuf),
    /// Something the watcher cannot describe precisely (overflow, new directory): list again.
    Rescan,
}

impl ObjectStoreTrigger {
    pub fn new(config: ObjectStoreConfig, ctx: TriggerContext) -> Self {
        Self { config, ctx, in_flight: Default::default() }
    }

    fn acker(&self) -> Arc<dyn Acknowledge> {
        Arc::new(ObjectAcker { ctx: self.ctx.clone(), in_flight: self.in_flight.clone() })
    }

    /// Lists the prefix as a stream and submits every new or changed object. Returns
    /// whether some objects were too fresh and should be looked at again soon.
    async fn scan(
        &self,
        bucket: &Bucket,
        sink: &EventSink,
        acker: &Arc<dyn Acknowledge>,
        shutdown: &CancellationToken,
    ) -> anyhow::Result<bool> {
        let prefix_dir = self.config.filter.prefix.rsplit_once('/').map(|(d, _)| d).unwrap_or("");
        let list_prefix = if prefix_dir.is_empty() { bucket.prefix.clone() } else { bucket.path(prefix_dir)? };
        let mut listing = bucket.store.list(Some(&list_prefix));
        let mut deferred = false;
        while let Some(meta) = listing.next().await {
            if shutdown.is_cancelled() {
                break;
            }
            let meta = match meta {
                Ok(meta) => meta,
                Err(e) => {
                    tracing::warn!(pipeline = %self.ctx.pipeline, url = %bucket.url, error = %e, "listing entry skipped");
                    continue;
                }
            };
            deferred |= self.consider(bucket, meta, sink, acker).await? == Consider::TooFresh;
        }
        Ok(deferred)
    }

    async fn consider(
        &self,
        bucket: &Bucket,
        meta: ObjectMeta,
        sink: &EventSink,
        acker: &Arc<dyn Acknowledge>,
    ) -> anyhow::Result<Consider> {
        let Some(key) = bucket.key_of(&meta.location) else { return Ok(Consider::Skipped) };
        if !self.config.filter.matches(&key) {
            return Ok(Consider::Skipped);
        }
        let age = SystemTime::now().duration_since(meta.last_modified.into()).unwrap_or_default();
        if age < self.config.settle {
            return Ok(Consider::TooFresh);
        }
        let version =
            meta.e_tag.clone().unwrap_or_else(|| format!("{}-{}", meta.size, meta.last_modified.timestamp_micros()));
        if self.in_flight.lock().expect("in-flight lock").contains(&key) {
            return Ok(Consider::Skipped);
        }
        if self.ctx.ledger.object_seen(&self.ctx.pipeline, &bucket.url, &key, &version).await? {
            return Ok(Consider::Skipped);
        }
        self.in_flight.lock().expect("in-flight lock").insert(key.clone());
        let event = Event {
            id: uuid::Uuid::now_v7().to_string(),
            pipeline: self.ctx.pipeline.clone(),
            source: EventSource::Object {
                url: bucket.url.clone(),
                key,
                size: meta.size,
                version,
                last_modified: Some(meta.last_modified),
            },
            received_at: SystemTime::now(),
            acker: acker.clone(),
        };
        if sink.send(event).await.is_err() {
            anyhow::bail!("executor stopped");
        }
        Ok(Consider::Submitted)
    }

    /// A file the watcher reported: look it up and consider it like a listed object.
    async fn changed_file(
        &self,
        bucket: &Bucket,
        root: &FsPath,
        path: &FsPath,
        sink: &EventSink,
        acker: &Arc<dyn Acknowledge>,
    ) -> anyhow::Result<Consider> {
        let Some(key) = key_of_file(root, path) else { return Ok(Consider::Skipped) };
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
                self.consider(bucket, meta, sink, acker).await
            }
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Consider {
    Submitted,
    Skipped,
    TooFresh,
}

/// The object key of a file under `root`, if it is one ('/'-separated, UTF-8).
fn key_of_file(root: &FsPath, path: &FsPath) -> Option<String> {
    let rel = path.strip_prefix(root).ok()?;
    let parts: Option<Vec<&str>> = rel.components().map(|c| c.as_os_str().to_str()).collect();
    Some(parts?.join("/"))
}

/// Starts inotify on `dir`; changes arrive on the returned bounded channel. When the
/// channel is full the watcher thread waits, the kernel queue fills and overflows, and
/// the overflow is reported as a rescan: memory stays bounded under any burst.
fn watch(dir: &FsPath) -> anyhow::Result<(notify::RecommendedWatcher, mpsc::Receiver<Change>)> {
    use notify::event::{AccessKind, AccessMode, CreateKind, ModifyKind, RenameMode};
    use notify::{EventKind, RecursiveMode, Watcher};
    let (tx, rx) = mpsc::channel(1024);
    let mut watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        let changes: Vec<Change> = match res {
            Err(_) => vec![Change::Rescan],
            Ok(event) if event.need_rescan() => vec![Change::Rescan],
            Ok(event) => match event.kind {
                EventKind::Access(AccessKind::Close(AccessMode::Write)) => {
                    event.paths.into_iter().map(Change::File).collect()
                }
                EventKind::Modify(ModifyKind::Name(RenameMode::To)) => {
                    event.paths.into_iter().map(Change::File).collect()
                }
                EventKind::Modify(ModifyKind::Name(RenameMode::Both)) => {
                    event.paths.into_iter().skip(1).map(Change::File).collect()
                }
                // Files written right after a directory is created can be missed by a
                // recursive watch: list again to be sure.
                EventKind::Create(CreateKind::Folder) => vec![Change::Rescan],
                _ => vec![],
            },
        };
        for change in changes {
            if tx.blocking_send(change).is_err() {
                return;
            }
        }
    })?;
    watcher.watch(dir, RecursiveMode::Recursive)?;
    Ok((watcher, rx))
}

#[async_trait::async_trait]
impl Trigger for ObjectStoreTrigger {
    async fn run(self: Arc<Self>, sink: EventSink, shutdown: CancellationToken) -> anyhow::Result<()> {
        let bucket = self.ctx.stores.resolve(&self.config.url)?;
        let acker = self.acker();
        // Watch the deepest directory the prefix names (created if missing).
        let watched = match &bucket.local_root {
            Some(root) => {
                let prefix_dir = self.config.filter.prefix.rsplit_once('/').map(|(d, _)| d).unwrap_or("");
                let dir = root.join(prefix_dir);
                std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
                let (watcher, changes) = watch(&dir).with_context(|| format!("watching {}", dir.display()))?;
                Some((root.clone(), watcher, changes))
            }
            None => None,
        };
        let (root, _watcher, mut changes) = match watched {
            Some((root, watcher, changes)) => (Some(root), Some(watcher), Some(changes)),
            None => (None, None, None),
        };
        tracing::info!(pipeline = %self.ctx.pipeline, url = %bucket.url, prefix = %self.config.filter.prefix,
            watching = root.is_some(), "object_store trigger started");

        let mut next_scan = tokio::time::Instant::now();
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                _ = tokio::time::sleep_until(next_scan) => {
                    let deferred = match self.scan(&bucket, &sink, &acker, &shutdown).await {
                        Ok(deferred) => deferred,
                        Err(e) if shutdown.is_cancelled() => { tracing::debug!(error = %e, "scan stopped by shutdown"); return Ok(()) }
                        Err(e) => { tracing::warn!(pipeline = %self.ctx.pipeline, error = %e, "listing failed; will retry"); false }
                    };
                    let wait = if deferred { self.config.settle.max(Duration::from_millis(50)) } else { self.config.rescan_interval };
                    next_scan = tokio::time::Instant::now() + wait;
                }
                Some(change) = recv(&mut changes) => match change {
                    Change::Rescan => next_scan = tokio::time::Instant::now(),
                    Change::File(path) => {
                        let root = root.as_deref().expect("changes only exist with a local root");
                        match self.changed_file(&bucket, root, &path, &sink, &acker).await {
                            Ok(Consider::TooFresh) => next_scan = next_scan.min(tokio::time::Instant::now() + self.config.settle),
                            Ok(_) => {}
                            Err(e) if shutdown.is_cancelled() => { tracing::debug!(error = %e, "stopped by shutdown"); return Ok(()) }
                            Err(e) => tracing::warn!(pipeline = %self.ctx.pipeline, path = %path.display(), error = %e, "cannot consider changed file"),
                        }
                    }
                },
            }
        }
    }
}

async fn recv(changes: &mut Option<mpsc::Receiver<Change>>) -> Option<Change> {
    match changes {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
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

    #[test]
    fn file_paths_become_keys() {
        let root = FsPath::new("/data");
        assert_eq!(key_of_file(root, FsPath::new("/data/inbox/a b.jpg")).as_deref(), Some("inbox/a b.jpg"));
        assert_eq!(key_of_file(root, FsPath::new("/elsewhere/a.jpg")), None);
    }
}
