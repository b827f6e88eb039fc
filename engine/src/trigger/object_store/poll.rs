//! Polling: the prefix listed as a stream, one bounded page at a time.
//!
//! A page examines at most `poll_page` keys, checks them against the ledger in chunks
//! (one SQLite call per chunk), queues the new and changed ones, and saves the last key
//! as the cursor. The next page lists *after* the cursor (S3 `start-after`), so memory
//! is one chunk whatever the bucket size, and a restart resumes the pass where it was.
//!
//! With `keys = "any"` a finished pass clears the cursor and the next one starts from
//! the beginning: every key is compared again, which finds changed objects but costs a
//! full listing per pass. With `keys = "ascending"` the cursor is never cleared: each
//! poll lists only what sorts after the newest key seen — cheap on huge buckets, but
//! blind to keys that sort earlier and to changes of old objects.
//!
//! Local directories list in no particular order, so they are walked whole each pass,
//! without a cursor (still streamed, still chunked).

use futures::StreamExt;
use object_store::{ObjectMeta, ObjectStoreExt};
use tokio_util::sync::CancellationToken;
use weir_functions::Bucket;

use super::{Candidate, Consider, KeyOrder, ObjectStoreTrigger};
use crate::event::EventSink;

/// Keys checked against the ledger in one call.
const CHUNK: usize = 500;

/// Lookups in flight when a listing left ETags out.
const HEAD_CONCURRENCY: usize = 8;

/// How a poll ended.
#[derive(Debug, PartialEq, Eq)]
pub(in crate::trigger) enum Pass {
    /// The listing reached the end of the prefix.
    Finished,
    /// The page was full: continue from the cursor.
    MoreToList,
    /// Some objects were too recently modified: look again after `settle`.
    TooFresh,
}

impl ObjectStoreTrigger {
    pub(super) async fn poll(
        &self,
        bucket: &Bucket,
        sink: &EventSink,
        shutdown: &CancellationToken,
    ) -> anyhow::Result<Pass> {
        let (pipeline, url) = (&*self.ctx.pipeline, bucket.url.as_str());
        let dir = self.config.filter.dir();
        let list_prefix = if dir.is_empty() { bucket.prefix.clone() } else { bucket.path(dir)? };
        let paged = bucket.local_root.is_none();
        let cursor = if paged { self.ctx.ledger.cursor(pipeline, url).await? } else { None };
        let mut listing = match &cursor {
            Some(after) => bucket.store.list_with_offset(Some(&list_prefix), &bucket.path(after)?),
            None => bucket.store.list(Some(&list_prefix)),
        };
        let page = if paged { self.config.poll_page } else { usize::MAX };
        let mut examined = 0;
        let mut last_key = cursor.clone();
        let mut fresh = false;
        let mut chunk = Vec::with_capacity(CHUNK.min(page));
        let mut ended = false;
        while examined < page && !ended {
            chunk.clear();
            while chunk.len() < CHUNK && examined < page {
                match listing.next().await {
                    Some(Ok(meta)) => {
                        examined += 1;
                        chunk.push(meta);
                    }
                    Some(Err(e)) if paged => return Err(e.into()),
                    Some(Err(e)) => tracing::warn!(pipeline, url, error = %e, "listing entry skipped"),
                    None => {
                        ended = true;
                        break;
                    }
                }
            }
            if shutdown.is_cancelled() {
                return Ok(Pass::MoreToList);
            }
            let (advanced_to, chunk_fresh, stop) = self.check_chunk(bucket, &chunk, sink).await?;
            fresh |= chunk_fresh;
            if let Some(key) = advanced_to {
                last_key = Some(key);
            }
            if stop {
                // Ascending keys: an unsettled object holds the cursor back until it settles.
                if paged {
                    self.ctx.ledger.set_cursor(pipeline, url, last_key).await?;
                }
                return Ok(Pass::TooFresh);
            }
        }
        if !paged {
            return Ok(if fresh { Pass::TooFresh } else { Pass::Finished });
        }
        let finished = ended;
        let keep = match (finished, self.config.keys) {
            (false, _) | (true, KeyOrder::Ascending) => last_key,
            (true, KeyOrder::Any) => None,
        };
        if keep != cursor {
            self.ctx.ledger.set_cursor(pipeline, url, keep).await?;
        }
        Ok(match (finished, fresh) {
            (false, _) => Pass::MoreToList,
            (true, true) => Pass::TooFresh,
            (true, false) => Pass::Finished,
        })
    }

    /// Filters a chunk, asks the ledger which are new in one call, submits those.
    /// Returns the key the cursor may advance to, whether some objects were too fresh,
    /// and whether the pass must stop here (an unsettled object with ascending keys).
    async fn check_chunk(
        &self,
        bucket: &Bucket,
        chunk: &[ObjectMeta],
        sink: &EventSink,
    ) -> anyhow::Result<(Option<String>, bool, bool)> {
        let mut candidates = Vec::with_capacity(chunk.len());
        let mut advanced_to = None;
        let mut fresh = false;
        let mut stop = false;
        for meta in chunk {
            let Some(key) = bucket.key_of(&meta.location) else { continue };
            if self.config.filter.matches(&key) {
                if self.too_fresh(meta) {
                    fresh = true;
                    if self.config.keys == KeyOrder::Ascending {
                        stop = true;
                        break;
                    }
                } else if !self.in_flight.lock().expect("in-flight lock").contains(&key) {
                    candidates.push(Candidate::from_meta(key.clone(), meta));
                }
            }
            advanced_to = Some(key);
        }
        let mut unseen = self.unseen(bucket, candidates).await?;
        if bucket.local_root.is_none() {
            unseen = self.with_listing_etags(bucket, unseen).await?;
        }
        for candidate in unseen {
            if self.submit(bucket, candidate, sink).await? == Consider::Submitted {
                tracing::debug!(pipeline = %self.ctx.pipeline, "queued from listing");
            }
        }
        Ok((advanced_to, fresh, stop))
    }

    /// The candidates the ledger has not seen finished under their version.
    async fn unseen(&self, bucket: &Bucket, candidates: Vec<Candidate>) -> anyhow::Result<Vec<Candidate>> {
        if candidates.is_empty() {
            return Ok(candidates);
        }
        let versions = candidates.iter().map(|c| (c.key.clone(), c.version.clone())).collect();
        let unseen = self.ctx.ledger.unseen_objects(&self.ctx.pipeline, &bucket.url, versions).await?;
        let mut candidates: Vec<Option<Candidate>> = candidates.into_iter().map(Some).collect();
        Ok(unseen.into_iter().filter_map(|i| candidates.get_mut(i).and_then(Option::take)).collect())
    }

    /// S3 lists every object with its ETag, which is also what notifications carry, so
    /// both detection paths record the same version. A server that leaves ETags out of
    /// listings (s3s-fs does) would make hybrid detection process objects twice, so
    /// those objects are looked up (HEAD) before they are judged new: one request per
    /// unseen-looking object per pass, paid only on such servers.
    async fn with_listing_etags(&self, bucket: &Bucket, candidates: Vec<Candidate>) -> anyhow::Result<Vec<Candidate>> {
        let (mut tagged, untagged): (Vec<_>, Vec<_>) = candidates.into_iter().partition(|c| c.listed_etag);
        if untagged.is_empty() {
            return Ok(tagged);
        }
        let looked_up: Vec<anyhow::Result<Option<Candidate>>> = futures::stream::iter(untagged)
            .map(|c| async move {
                match bucket.store.head(&bucket.path(&c.key)?).await {
                    Ok(meta) => Ok(Some(Candidate::from_meta(c.key, &meta))),
                    Err(object_store::Error::NotFound { .. }) => Ok(None),
                    Err(e) => Err(anyhow::Error::new(e).context(format!("looking up {} in {}", c.key, bucket.url))),
                }
            })
            .buffered(HEAD_CONCURRENCY)
            .collect()
            .await;
        let mut found = Vec::new();
        for candidate in looked_up {
            found.extend(candidate?);
        }
        tagged.extend(self.unseen(bucket, found).await?);
        Ok(tagged)
    }
}
