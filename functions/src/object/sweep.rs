//! `object.sweep`: list a prefix and fan out one item per object — the "for every file
//! under here" half of a scheduled job (re-process, archive, audit).
//!
//! A streaming function (see [`Function::invoke_streaming`]): the listing is consumed
//! as the next steps take items, so a prefix of millions of objects costs time, not
//! memory. Each item describes its object (payload `{url, key, size, last_modified}`,
//! metadata pointing at it) so `object.copy`, `object.delete` or `image.*` steps act on
//! it; with `read = true` the payload is the object's bytes instead.

use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::StreamExt;
use object_store::{ObjectMeta, ObjectStore as _};
use serde::Deserialize;

use super::{age_reference, target_bucket};
use crate::function::Emitter;
use crate::key_filter::KeyFilter;
use crate::{BuildError, Context, Function, FunctionError, FunctionSpec, Item, Metadata, Param, Payload};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SweepParams {
    url: Option<String>,
    #[serde(default)]
    prefix: String,
    older_than: Option<String>,
    newer_than: Option<String>,
    #[serde(default)]
    include: Vec<String>,
    #[serde(default)]
    exclude: Vec<String>,
    #[serde(default)]
    read: bool,
}

pub fn spec() -> FunctionSpec {
    FunctionSpec::new(
        "object.sweep",
        "List a prefix as a stream and fan out one item per object (filtered by age and globs) to the next \
         steps. Ages count from a schedule tick's logical time, else from now.",
        &[
            Param { name: "prefix", kind: "string", default: Some("\"\""), doc: "Only keys under this prefix." },
            Param { name: "url", kind: "string (URL)", default: Some("the event's bucket"), doc: "Bucket to list." },
            Param {
                name: "older_than",
                kind: "duration",
                default: Some("none"),
                doc: "Only objects last modified longer ago than this (\"7d\").",
            },
            Param {
                name: "newer_than",
                kind: "duration",
                default: Some("none"),
                doc: "Only objects last modified within this (\"1h\": the hour before the tick).",
            },
            Param {
                name: "include",
                kind: "[glob]",
                default: Some("all"),
                doc: "Globs on the key after `prefix` (\"*.jpg\"), case-insensitive.",
            },
            Param { name: "exclude", kind: "[glob]", default: Some("none"), doc: "Globs to leave out." },
            Param {
                name: "read",
                kind: "bool",
                default: Some("false"),
                doc: "Pass each object's bytes (up to max_input_bytes) instead of its description.",
            },
        ],
        |p: SweepParams| {
            let age = |name: &'static str, text: &Option<String>| -> Result<Option<Duration>, BuildError> {
                text.as_deref()
                    .map(|t| {
                        humantime::parse_duration(t)
                            .map_err(|e| BuildError::param(name, format!("invalid duration {t:?}: {e}")))
                    })
                    .transpose()
            };
            let filter = KeyFilter::new(&p.prefix, &p.include, &p.exclude).map_err(|bad| {
                let first = &bad[0];
                BuildError::param(first.list, first.message.clone())
            })?;
            Ok(Sweep {
                url: p.url,
                older_than: age("older_than", &p.older_than)?,
                newer_than: age("newer_than", &p.newer_than)?,
                filter,
                read: p.read,
            })
        },
    )
}

pub struct Sweep {
    url: Option<String>,
    filter: KeyFilter,
    older_than: Option<Duration>,
    newer_than: Option<Duration>,
    read: bool,
}

impl Sweep {
    fn wanted(&self, key: &str, meta: &ObjectMeta, reference: DateTime<Utc>) -> bool {
        let age = reference.signed_duration_since(meta.last_modified);
        let older = |d: &Duration| chrono::Duration::from_std(*d).is_ok_and(|d| age > d);
        let newer =
            |d: &Duration| chrono::Duration::from_std(*d).is_ok_and(|d| age <= d && age >= chrono::Duration::zero());
        self.filter.matches(key)
            && self.older_than.as_ref().is_none_or(older)
            && self.newer_than.as_ref().is_none_or(newer)
    }
}

#[async_trait::async_trait]
impl Function for Sweep {
    /// Collects the whole sweep: for `weir invoke` and tests. Pipelines stream it.
    async fn invoke(&self, item: Item, ctx: &Context) -> Result<Vec<Item>, FunctionError> {
        let (tx, mut rx) = tokio::sync::mpsc::channel(256);
        let produce = async move {
            let emitter = Emitter::new(tx);
            self.invoke_streaming(item, ctx, &emitter).await
        };
        let collect = async {
            let mut items = Vec::new();
            while let Some(item) = rx.recv().await {
                items.push(item);
            }
            items
        };
        let (swept, items) = futures::join!(produce, collect);
        swept.map(|()| items)
    }

    fn streams(&self) -> bool {
        true
    }

    async fn invoke_streaming(&self, item: Item, ctx: &Context, out: &Emitter) -> Result<(), FunctionError> {
        let bucket = target_bucket(self.url.as_deref(), &item, ctx)?;
        let reference = age_reference(&item);
        // Listings match whole segments: list the prefix's directory, filter the rest.
        let dir = self.filter.dir();
        let list_prefix = if dir.is_empty() { bucket.prefix.clone() } else { bucket.path(dir)? };
        let failed = |e| FunctionError::from_store(format!("listing {}/{}", bucket.url, self.filter.prefix), e);
        let mut listing = bucket.store.list(Some(&list_prefix));
        let (mut listed, mut emitted) = (0u64, 0u64);
        while let Some(meta) = listing.next().await {
            let meta = meta.map_err(failed)?;
            listed += 1;
            if ctx.expired() {
                return Err(FunctionError::retryable(format!(
                    "sweep of {}/{} cancelled",
                    bucket.url, self.filter.prefix
                )));
            }
            let Some(key) = bucket.key_of(&meta.location) else { continue };
            if !self.wanted(&key, &meta, reference) {
                continue;
            }
            let mut metadata = Metadata {
                attributes: item.meta.attributes.clone(),
                source: item.meta.source.clone(),
                ..Metadata::for_object(bucket.url.clone(), key.clone())
            };
            metadata.attributes.insert("size".into(), meta.size.to_string());
            metadata.attributes.insert("last_modified".into(), meta.last_modified.to_rfc3339());
            let payload = if self.read {
                Payload::Bytes(super::read_limited(&bucket, &key, ctx.limits.max_input_bytes).await?)
            } else {
                Payload::Json(serde_json::json!({
                    "url": bucket.url, "key": key, "size": meta.size,
                    "last_modified": meta.last_modified.to_rfc3339(),
                }))
            };
            out.emit(Item::new(payload, metadata)).await?;
            emitted += 1;
        }
        tracing::info!(url = %bucket.url, prefix = %self.filter.prefix, listed, emitted, "swept");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use super::*;
    use crate::{Params, Registry, Stores};

    fn file_aged(dir: &std::path::Path, key: &str, hours: u64) {
        let path = dir.join(key);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, key.as_bytes()).unwrap();
        let when = SystemTime::now() - Duration::from_secs(hours * 3600);
        std::fs::File::options().write(true).open(&path).unwrap().set_modified(when).unwrap();
    }

    fn build(params: &str) -> Result<std::sync::Arc<dyn Function>, BuildError> {
        Registry::builtin().build("object.sweep", Params::parse(params).unwrap()).map(|b| b.function)
    }

    async fn keys(url: &str, params: &str) -> Vec<String> {
        let function = build(&format!("{{ url = {url:?}, {params} }}")).unwrap_or_else(|e| panic!("{e}"));
        assert!(function.streams());
        let item = Item::new(Payload::Empty, Metadata::default());
        let items = function.invoke(item, &Context::standalone(Stores::new())).await.unwrap();
        let mut keys: Vec<String> = items.into_iter().map(|i| i.meta.key.unwrap()).collect();
        keys.sort();
        keys
    }

    #[tokio::test]
    async fn filters_by_prefix_age_and_globs() {
        let dir = tempfile::tempdir().unwrap();
        file_aged(dir.path(), "photos/a.jpg", 1);
        file_aged(dir.path(), "photos/deep/b.JPG", 30);
        file_aged(dir.path(), "photos/c.png", 30);
        file_aged(dir.path(), "photos/.hidden.jpg", 30);
        file_aged(dir.path(), "photos-old/d.jpg", 30);
        file_aged(dir.path(), "other/e.jpg", 30);
        let url = format!("file://{}", dir.path().display());

        assert_eq!(keys(&url, "prefix = \"photos/\"").await, ["photos/a.jpg", "photos/c.png", "photos/deep/b.JPG"]);
        assert_eq!(keys(&url, "prefix = \"photos\"").await.len(), 4, "a prefix need not end at a slash");
        assert_eq!(
            keys(&url, "prefix = \"photos/\", include = [\"*.jpg\"], older_than = \"1day\"").await,
            ["photos/deep/b.JPG"]
        );
        assert_eq!(keys(&url, "prefix = \"photos/\", newer_than = \"2h\"").await, ["photos/a.jpg"]);
        assert_eq!(keys(&url, "prefix = \"photos/\", exclude = [\"deep/**\"]").await, ["photos/a.jpg", "photos/c.png"]);
    }

    #[tokio::test]
    async fn items_point_at_their_objects_and_read_gives_bytes() {
        let dir = tempfile::tempdir().unwrap();
        file_aged(dir.path(), "in/x.txt", 0);
        let url = format!("file://{}", dir.path().display());
        let function = build(&format!("{{ url = {url:?}, read = true }}")).unwrap();
        let out = function
            .invoke(Item::new(Payload::Empty, Metadata::default()), &Context::standalone(Stores::new()))
            .await
            .unwrap();
        assert_eq!(out.len(), 1);
        assert_eq!(
            (out[0].meta.source_url.as_deref(), out[0].meta.key.as_deref()),
            (Some(url.as_str()), Some("in/x.txt"))
        );
        let Payload::Bytes(bytes) = &out[0].payload else { panic!("bytes") };
        assert_eq!(&bytes[..], b"in/x.txt");
        assert_eq!(out[0].meta.attributes["size"], "8");
    }

    #[test]
    fn bad_parameters_are_refused() {
        let error = |p: &str| build(p).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(error("{ older_than = \"soon\" }").contains("invalid duration \"soon\""));
        assert!(error("{ include = [\"a[\"] }").contains("invalid glob"));
        assert!(error("{ prefix = \"../x\" }").contains("relative key prefix"));
    }
}
