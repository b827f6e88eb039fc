//! Bucket notifications for an object-store trigger (`detect = "notifications"` or
//! `"hybrid"`), posted to `/v1/notifications/{pipeline}`.
//!
//! A notification is answered only after its objects are recorded as pending in the
//! ledger and queued, so a 2xx means "will be processed, even across a crash"; the
//! queue being full slows the answer down (backpressure to the sender) rather than
//! buffering without bound.

use std::sync::Arc;

use object_store::ObjectStoreExt;
use weir_functions::key_filter::bucket_name;

use super::{Candidate, Consider, ObjectStoreTrigger, ObjectWork};
use crate::auth::PushAuth;
use crate::event::{Event, NoAck};
use crate::trigger::notification::{self, Change, Notification, ObjectNotice};
use crate::trigger::{Delivery, Inbox, InboxError};

/// Most records one request may carry (S3, SNS and EventBridge send one): a body of
/// 15,000 records for missing keys must not become 15,000 lookups and log lines.
pub const MAX_RECORDS: usize = 100;

/// How long a notification arriving during start-up waits for the trigger.
const STARTUP_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// Why a notified object was not queued.
enum Ignored {
    OtherBucket,
    Filtered,
    AlreadyDone,
    Gone,
}

#[async_trait::async_trait]
impl Inbox for ObjectStoreTrigger {
    fn auth(&self) -> &PushAuth {
        &self.config.auth
    }

    async fn deliver(&self, body: &[u8]) -> Result<Delivery, InboxError> {
        let mut started = self.running.subscribe();
        let (sink, stop) = match tokio::time::timeout(STARTUP_WAIT, started.wait_for(Option::is_some)).await {
            Ok(Ok(running)) => running.clone().expect("waited for Some"),
            _ => return Err(InboxError::Unavailable("the pipeline's trigger has not started yet".into())),
        };
        let sink = &sink;
        if stop.is_cancelled() {
            return Err(InboxError::Unavailable("shutting down".into()));
        }
        let notices = match notification::parse(body).map_err(|e| InboxError::Malformed(e.to_string()))? {
            Notification::Objects(notices) if notices.len() > MAX_RECORDS => {
                return Err(InboxError::Malformed(format!(
                    "{} records in one request, over {MAX_RECORDS}",
                    notices.len()
                )));
            }
            Notification::Objects(notices) => notices,
            Notification::Test => {
                tracing::info!(pipeline = %self.ctx.pipeline, "test notification received");
                return Ok(Delivery::default());
            }
            Notification::SubscriptionConfirmation { subscribe_url } => {
                let pipeline = &*self.ctx.pipeline;
                match self.config.auth.confirm_subscription(&subscribe_url).await {
                    Some(Ok(())) => tracing::info!(pipeline, "SNS subscription confirmed"),
                    // SNS sends the confirmation again if this is answered with an error.
                    Some(Err(why)) => {
                        return Err(InboxError::Failed(format!("confirming the SNS subscription: {why}")))
                    }
                    None => tracing::warn!(pipeline, subscribe_url = ?subscribe_url,
                        "SNS subscription confirmation received: visit the URL to confirm the subscription \
                         (or set notify_auth = \"sns\" to confirm signed ones by themselves)"),
                }
                return Ok(Delivery::default());
            }
        };
        let bucket = self.ctx.stores.resolve(&self.config.url).map_err(|e| InboxError::Failed(e.to_string()))?;
        let mut delivery = Delivery::default();
        for notice in notices {
            match self.take(&bucket, notice, sink).await {
                Ok(None) => delivery.queued += 1,
                Ok(Some(_why)) => delivery.ignored += 1,
                Err(e) => return Err(InboxError::Failed(format!("{e:#}"))),
            }
        }
        Ok(delivery)
    }
}

impl ObjectStoreTrigger {
    /// Queues one notified object; `Some(reason)` if it was not queued.
    async fn take(
        &self,
        bucket: &weir_functions::Bucket,
        notice: ObjectNotice,
        sink: &crate::event::EventSink,
    ) -> anyhow::Result<Option<Ignored>> {
        let pipeline = &*self.ctx.pipeline;
        let Some(key) = relative_key(bucket, &notice) else {
            // Debug-formatted: a newline in a posted field must not forge a log line.
            tracing::warn!(pipeline, bucket = ?notice.bucket, key = ?notice.key, url = %bucket.url,
                "notification for another bucket or outside the URL's prefix; ignored");
            return Ok(Some(Ignored::OtherBucket));
        };
        if weir_functions::store::check_key(&key).is_err() || !self.config.filter.matches(&key) {
            return Ok(Some(Ignored::Filtered));
        }
        if notice.change == Change::Removed {
            if !self.config.removals {
                return Ok(Some(Ignored::Filtered));
            }
            // Removals have nothing to record.
            let work = ObjectWork::ObjectRemoved { url: bucket.url.clone(), key };
            let event = Event::new(self.ctx.pipeline.clone(), Arc::new(work), Arc::new(NoAck));
            sink.send(event).await.map_err(|e| anyhow::anyhow!(e))?;
            return Ok(None);
        }
        let candidate = match (&notice.etag, notice.size, self.config.verify) {
            (Some(etag), Some(size), false) => {
                Candidate { key, size, version: etag.clone(), last_modified: notice.time, listed_etag: true }
            }
            // Verify it still exists, or learn the size and version the notice left out.
            _ => match bucket.store.head(&bucket.path(&key)?).await {
                Ok(meta) => Candidate::from_meta(key, &meta),
                Err(object_store::Error::NotFound { .. }) => {
                    tracing::info!(pipeline, key = ?key, "notified object no longer exists; ignored");
                    return Ok(Some(Ignored::Gone));
                }
                // About this notice alone (a key no store can hold, access refused): the
                // rest of the request goes on.
                Err(e) if weir_functions::error::store_error_is_permanent(&e) => {
                    tracing::info!(pipeline, key = ?key, error = %e, "notified object cannot be looked up; ignored");
                    return Ok(Some(Ignored::Gone));
                }
                Err(e) => return Err(anyhow::Error::new(e).context(format!("looking up {key} in {}", bucket.url))),
            },
        };
        if self.ctx.ledger.object_seen(pipeline, &bucket.url, &candidate.key, &candidate.version).await? {
            return Ok(Some(Ignored::AlreadyDone));
        }
        Ok(match self.submit(bucket, candidate, sink).await? {
            Consider::Submitted => None,
            // Already in flight: the running event covers it.
            _ => Some(Ignored::AlreadyDone),
        })
    }
}

/// The notice's key relative to the trigger's URL, if it is in the URL's bucket and prefix.
fn relative_key(bucket: &weir_functions::Bucket, notice: &ObjectNotice) -> Option<String> {
    // A local bucket answers to its URL's last segment or its directory's name
    // (`file://.` is the directory weir runs in).
    let local_name = bucket.local_root.as_ref().and_then(|root| root.file_name()).and_then(|n| n.to_str());
    if Some(&notice.bucket) != bucket_name(&bucket.url).as_ref() && Some(notice.bucket.as_str()) != local_name {
        return None;
    }
    let prefix = bucket.prefix.as_ref();
    if prefix.is_empty() {
        return Some(notice.key.clone());
    }
    notice.key.strip_prefix(prefix)?.strip_prefix('/').map(str::to_string)
}
