//! A bucket's history for `weir replay`: the trigger's prefix listed as a stream,
//! filtered by the trigger's globs, `--prefix` and the last-modified window, in chunks.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use futures::stream::BoxStream;
use futures::StreamExt;
use object_store::ObjectMeta;
use weir_functions::{Bucket, KeyFilter};

use super::{version_of, ObjectStoreConfig, ObjectWork};
use crate::error::EngineError;
use crate::event::LedgerEntry;
use crate::trigger::{History, HistoryContext, HistoryItem, Window};

/// Objects examined per chunk (one ledger call each).
const CHUNK: usize = 500;

pub(crate) struct Listing {
    bucket: Bucket,
    filter: KeyFilter,
    /// `--prefix`, when narrower than the trigger's.
    prefix: String,
    since: Option<DateTime<Utc>>,
    until: Option<DateTime<Utc>>,
    listing: BoxStream<'static, object_store::Result<ObjectMeta>>,
}

impl Listing {
    pub fn new(ctx: &HistoryContext, config: &ObjectStoreConfig, window: &Window) -> Result<Self, EngineError> {
        let bucket = ctx.stores.resolve(&config.url)?;
        let trigger_prefix = &config.filter.prefix;
        let prefix = match window.prefix.as_deref() {
            None => trigger_prefix.clone(),
            Some(p) if p.starts_with(trigger_prefix.as_str()) => p.to_string(),
            Some(p) if trigger_prefix.starts_with(p) => trigger_prefix.clone(),
            Some(p) => {
                return Err(EngineError::fatal(format!(
                    "--prefix {p:?} is outside the trigger's prefix {trigger_prefix:?}"
                )))
            }
        };
        let dir = prefix.rsplit_once('/').map(|(d, _)| d).unwrap_or("");
        let list_prefix = if dir.is_empty() { bucket.prefix.clone() } else { bucket.path(dir)? };
        let listing = bucket.store.list(Some(&list_prefix));
        Ok(Self { bucket, filter: config.filter.clone(), prefix, since: window.since, until: window.until, listing })
    }

    fn in_window(&self, meta: &ObjectMeta) -> bool {
        self.since.is_none_or(|t| meta.last_modified >= t) && self.until.is_none_or(|t| meta.last_modified < t)
    }
}

#[async_trait::async_trait]
impl History for Listing {
    async fn next_chunk(&mut self) -> Result<Option<Vec<HistoryItem>>, EngineError> {
        let mut chunk = Vec::new();
        let mut examined = 0;
        while examined < CHUNK {
            let meta = match self.listing.next().await {
                None if examined == 0 => return Ok(None),
                None => break,
                Some(meta) => meta.map_err(|e| {
                    let permanent = weir_functions::error::store_error_is_permanent(&e);
                    let message = format!("listing {}: {e}", self.bucket.url);
                    if permanent {
                        EngineError::fatal(message)
                    } else {
                        EngineError::transient(message)
                    }
                })?,
            };
            examined += 1;
            let Some(key) = self.bucket.key_of(&meta.location) else { continue };
            if !key.starts_with(&self.prefix) || !self.filter.matches(&key) || !self.in_window(&meta) {
                continue;
            }
            let version = version_of(&meta);
            let entry = LedgerEntry { url: self.bucket.url.clone(), key: key.clone(), version: version.clone() };
            let work = ObjectWork::Object {
                url: self.bucket.url.clone(),
                key,
                size: meta.size,
                version,
                last_modified: Some(meta.last_modified),
            };
            chunk.push(HistoryItem { entry, work: Arc::new(work) });
        }
        Ok(Some(chunk))
    }
}
