//! `object.expire`: delete the objects under a prefix older than a given age — the
//! retention half of a nightly job.
//!
//! The listing streams straight into object_store's (bulk, on S3) deletes, so the
//! number of objects only costs time, never memory. Age is measured from the event's
//! logical time when it is a schedule tick (`attr.scheduled_time`), so running or
//! replaying the tick for a given night expires the same objects, and from now
//! otherwise.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::{StreamExt, TryStreamExt};
use object_store::ObjectStore as _;
use serde::Deserialize;

use super::target_bucket;
use crate::{BuildError, Context, Function, FunctionError, FunctionSpec, Item, Param, Payload};

/// Keys listed in the summary item, so a dry run shows what it would delete.
const SAMPLE: usize = 20;

/// What the listing matched.
#[derive(Default)]
struct Tally {
    matched: u64,
    bytes: u64,
    sample: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ExpireParams {
    url: Option<String>,
    #[serde(default)]
    prefix: String,
    older_than: String,
    #[serde(default)]
    dry_run: bool,
}

pub fn spec() -> FunctionSpec {
    FunctionSpec::new(
        "object.expire",
        "Delete the objects under a prefix last modified longer ago than `older_than` (measured from a \
         schedule tick's logical time, else from now). Passes on one JSON summary: matched, deleted, bytes, \
         a sample of keys.",
        &[
            Param {
                name: "older_than",
                kind: "duration",
                default: None,
                doc: "Minimum age of an object to delete (\"30d\", \"12h\").",
            },
            Param { name: "prefix", kind: "string", default: Some("\"\""), doc: "Only keys under this prefix." },
            Param {
                name: "url",
                kind: "string (URL)",
                default: Some("the event's bucket"),
                doc: "Bucket to expire objects in.",
            },
            Param {
                name: "dry_run",
                kind: "bool",
                default: Some("false"),
                doc: "Count and list what would be deleted; delete nothing.",
            },
        ],
        |p: ExpireParams| {
            let older_than = humantime::parse_duration(&p.older_than)
                .map_err(|e| BuildError::param("older_than", format!("invalid duration {:?}: {e}", p.older_than)))?;
            if p.prefix.starts_with('/') || p.prefix.split('/').any(|s| s == "..") {
                return Err(BuildError::param("prefix", format!("{:?} must be a relative key prefix", p.prefix)));
            }
            // Listings match whole path segments: "logs/" and "logs" mean the same.
            let prefix = p.prefix.trim_end_matches('/').to_string();
            Ok(Expire { url: p.url, prefix, older_than, dry_run: p.dry_run })
        },
    )
}

pub struct Expire {
    url: Option<String>,
    prefix: String,
    older_than: Duration,
    dry_run: bool,
}

#[async_trait::async_trait]
impl Function for Expire {
    async fn invoke(&self, item: Item, ctx: &Context) -> Result<Vec<Item>, FunctionError> {
        let bucket = target_bucket(self.url.as_deref(), &item, ctx)?;
        let age = chrono::Duration::from_std(self.older_than).unwrap_or(chrono::Duration::MAX);
        let cutoff = super::age_reference(&item).checked_sub_signed(age).unwrap_or(DateTime::<Utc>::MIN_UTC);
        let prefix = if self.prefix.is_empty() { bucket.prefix.clone() } else { bucket.path(&self.prefix)? };
        let failed = |what: &str, e| FunctionError::from_store(format!("{what} {}/{}", bucket.url, self.prefix), e);

        // The listing stream is handed to the delete stream, which must own it: the
        // tally it keeps on the way is shared.
        let tally = Arc::new(Mutex::new(Tally::default()));
        let expired = bucket.store.list(Some(&prefix)).try_filter_map({
            let (tally, bucket) = (tally.clone(), bucket.clone());
            move |meta| {
                let old = meta.last_modified < cutoff;
                if old {
                    let mut tally = tally.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
                    tally.matched += 1;
                    tally.bytes += meta.size;
                    if tally.sample.len() < SAMPLE {
                        tally.sample.push(bucket.key_of(&meta.location).unwrap_or_else(|| meta.location.to_string()));
                    }
                }
                futures::future::ready(Ok(old.then_some(meta.location)))
            }
        });
        let mut deleted = 0u64;
        if self.dry_run {
            let mut expired = std::pin::pin!(expired);
            while let Some(listed) = expired.next().await {
                listed.map_err(|e| failed("listing", e))?;
                if ctx.cancel.is_cancelled() {
                    return Err(FunctionError::retryable("cancelled while listing"));
                }
            }
        } else {
            let mut deletes = bucket.store.delete_stream(expired.boxed());
            while let Some(done) = deletes.next().await {
                match done {
                    Ok(_) => deleted += 1,
                    // Gone already (a redelivered run): the goal is met.
                    Err(object_store::Error::NotFound { .. }) => {}
                    Err(e) => return Err(failed("expiring objects in", e)),
                }
                if ctx.cancel.is_cancelled() {
                    return Err(FunctionError::retryable("cancelled while deleting"));
                }
            }
        }
        let Tally { matched, bytes, sample } = std::mem::take(&mut *tally.lock().unwrap_or_else(|p| p.into_inner()));
        tracing::info!(url = %bucket.url, prefix = %self.prefix, cutoff = %cutoff, matched, deleted, dry_run = self.dry_run, "expired objects");
        let summary = serde_json::json!({
            "url": bucket.url, "prefix": self.prefix, "cutoff": cutoff.to_rfc3339(),
            "matched": matched, "deleted": deleted, "bytes": bytes, "dry_run": self.dry_run, "sample": sample,
        });
        Ok(vec![Item::new(Payload::Json(summary), item.meta)])
    }
}

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use super::*;
    use crate::{Metadata, Params, Registry, Stores};

    fn file_aged(dir: &std::path::Path, key: &str, days: u64) {
        let path = dir.join(key);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, b"0123456789").unwrap();
        let when = SystemTime::now() - Duration::from_secs(days * 86_400);
        std::fs::File::options().write(true).open(&path).unwrap().set_modified(when).unwrap();
    }

    /// Builds the function from `key = value` lines.
    fn build(params: &str) -> Result<std::sync::Arc<dyn Function>, BuildError> {
        let inline = format!("{{ {} }}", params.lines().collect::<Vec<_>>().join(", "));
        Registry::builtin().build("object.expire", Params::parse(&inline).unwrap()).map(|b| b.function)
    }

    async fn expire(url: &str, params: &str, item: Item) -> serde_json::Value {
        let function = build(&format!("url = {url:?}\n{params}")).unwrap_or_else(|e| panic!("{e}"));
        let out = function.invoke(item, &Context::standalone(Stores::new())).await.unwrap();
        let Payload::Json(summary) = &out[0].payload else { panic!("a JSON summary") };
        summary.clone()
    }

    #[tokio::test]
    async fn deletes_only_old_objects_under_the_prefix_and_dry_run_deletes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        file_aged(dir.path(), "logs/old-1.txt", 10);
        file_aged(dir.path(), "logs/deep/old-2.txt", 40);
        file_aged(dir.path(), "logs/new.txt", 1);
        file_aged(dir.path(), "keep/old.txt", 99);
        let url = format!("file://{}", dir.path().display());
        let item = Item::new(Payload::Empty, Metadata::default());

        let dry = expire(&url, "prefix = \"logs/\"\nolder_than = \"7days\"\ndry_run = true", item.clone()).await;
        assert_eq!(
            (dry["matched"].as_u64(), dry["deleted"].as_u64(), dry["bytes"].as_u64()),
            (Some(2), Some(0), Some(20))
        );
        assert!(dir.path().join("logs/old-1.txt").exists(), "a dry run deletes nothing");

        let real = expire(&url, "prefix = \"logs\"\nolder_than = \"7days\"", item.clone()).await;
        assert_eq!((real["matched"].as_u64(), real["deleted"].as_u64()), (Some(2), Some(2)));
        assert!(!dir.path().join("logs/old-1.txt").exists() && !dir.path().join("logs/deep/old-2.txt").exists());
        assert!(dir.path().join("logs/new.txt").exists() && dir.path().join("keep/old.txt").exists());

        let again = expire(&url, "prefix = \"logs\"\nolder_than = \"7days\"", item).await;
        assert_eq!(again["deleted"].as_u64(), Some(0), "a rerun finds nothing left to do");
    }

    #[tokio::test]
    async fn age_counts_from_the_ticks_logical_time() {
        let dir = tempfile::tempdir().unwrap();
        file_aged(dir.path(), "a.txt", 5);
        let url = format!("file://{}", dir.path().display());
        let mut meta = Metadata::default();
        // A tick 10 days ago: the 5-day-old object did not exist yet, so is not 3 days old then.
        let tick = Utc::now() - chrono::Duration::days(10);
        meta.attributes.insert("scheduled_time".into(), tick.to_rfc3339());
        let summary = expire(&url, "older_than = \"3days\"", Item::new(Payload::Empty, meta)).await;
        assert_eq!(summary["matched"].as_u64(), Some(0));
    }

    #[test]
    fn bad_parameters_are_refused() {
        let error = |p: &str| build(p).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(error("older_than = \"soon\"").contains("invalid duration \"soon\""));
        assert!(error("older_than = \"1d\"\nprefix = \"../etc\"").contains("relative key prefix"));
    }
}
