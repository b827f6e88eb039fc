//! An object event: what the object-store trigger queues, and what a bucket
//! notification on a Kafka topic runs for each object it names. One way to read the
//! object (size limit, then a bounded read) and one builder of Lambda's S3 event.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use weir_functions::key_filter::{bucket_name, KeyFilter};
use weir_functions::trigger_event::ObjectChange;
use weir_functions::{Item, LazyEvent, Metadata, Payload, Stores, TriggerEvent};

use crate::event::{Event, LedgerEntry, Ran, Runner, Scope, StepFailure, Work};

/// An object that appeared, changed or went. Serialized as its dead-letter record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ObjectWork {
    /// An object appeared or changed in a bucket.
    Object {
        url: String,
        key: String,
        size: u64,
        /// ETag or equivalent: a changed object has a new version and is processed again.
        version: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        last_modified: Option<DateTime<Utc>>,
    },
    /// An object was deleted (only for pipelines that ask for removals).
    ObjectRemoved { url: String, key: String },
}

#[async_trait::async_trait]
impl Work for ObjectWork {
    fn describe(&self) -> String {
        match self {
            ObjectWork::Object { key, .. } => key.clone(),
            ObjectWork::ObjectRemoved { key, .. } => format!("{key} (removed)"),
        }
    }

    fn record(&self) -> serde_json::Value {
        serde_json::to_value(self).unwrap_or_default()
    }

    fn ledger_entry(&self) -> Option<LedgerEntry> {
        match self {
            ObjectWork::Object { url, key, version, .. } => {
                Some(LedgerEntry { url: url.clone(), key: key.clone(), version: version.clone() })
            }
            ObjectWork::ObjectRemoved { .. } => None,
        }
    }

    async fn run(&self, runner: &dyn Runner, _event: &Event) -> Ran {
        match self {
            ObjectWork::Object { url, key, size, version, last_modified } => {
                let object = ObjectRun {
                    url,
                    key,
                    size: Some(*size),
                    etag: Some(version),
                    time: *last_modified,
                    event_name: "ObjectCreated:Put",
                    bucket: None,
                    version_id: None,
                    sequencer: None,
                };
                object.run(runner).await.into()
            }
            ObjectWork::ObjectRemoved { url, key } => {
                let object = ObjectRun { url, key, event_name: "ObjectRemoved:Delete", ..ObjectRun::default() };
                let scope = Scope::new(Some(LazyEvent::ready(object.lambda(runner.stores()))), false);
                let item = Item::new(Payload::Empty, Metadata::for_object(url.clone(), key.clone()));
                runner.run(item, None, &scope).await.into()
            }
        }
    }
}

impl ObjectWork {
    /// The work an `object` or `object_removed` dead-letter record stands for, if it is
    /// about the trigger's own bucket: a record naming another bucket is refused, so a
    /// planted record cannot make a redrive read from elsewhere.
    /// A dead-letter record is a file anyone with access to the dead-letter bucket can
    /// edit: only objects this trigger could have delivered (its bucket, its prefix and
    /// globs, a safe key) are revived.
    pub fn revive(record: &serde_json::Value, url: &str, filter: &KeyFilter) -> Result<Arc<dyn Work>, String> {
        let work: ObjectWork =
            serde_json::from_value(record.clone()).map_err(|e| format!("not an object event: {e}"))?;
        let (ObjectWork::Object { url: from, key, .. } | ObjectWork::ObjectRemoved { url: from, key }) = &work;
        if from != url {
            return Err(format!("the record is about {from}, not this pipeline's bucket {url}"));
        }
        weir_functions::store::check_key(key).map_err(|why| format!("unsafe key {key:?}: {why}"))?;
        if !filter.matches(key) {
            return Err(format!("{key:?} is outside this pipeline's prefix and globs"));
        }
        Ok(Arc::new(work))
    }
}

/// One object through the steps, with what is known of it.
#[derive(Default)]
pub(crate) struct ObjectRun<'a> {
    pub url: &'a str,
    pub key: &'a str,
    pub size: Option<u64>,
    pub etag: Option<&'a str>,
    pub time: Option<DateTime<Utc>>,
    /// `ObjectCreated:Put` and the like, as the notification said.
    pub event_name: &'a str,
    /// The bucket's name as a notification gave it (else read from the URL).
    pub bucket: Option<&'a str>,
    pub version_id: Option<&'a str>,
    pub sequencer: Option<&'a str>,
}

impl ObjectRun<'_> {
    /// Reads the object and runs it through the steps, `ctx.event` being Lambda's S3 event.
    pub async fn run(&self, runner: &dyn Runner) -> Result<usize, StepFailure> {
        let scope = Scope::new(Some(LazyEvent::ready(self.lambda(runner.stores()))), false);
        let item = runner.load_object(self.url, self.key, self.size, &scope).await?;
        runner.run(item, None, &scope).await
    }

    /// The event in Lambda's S3 shape: the key as the bucket knows it (with the URL's
    /// prefix), the bucket's name, and what the notification carried.
    pub fn lambda(&self, stores: &Stores) -> TriggerEvent {
        let full_key = stores
            .resolve(self.url)
            .ok()
            .and_then(|b| b.path(self.key).ok())
            .map(|p| p.to_string())
            .unwrap_or_else(|| self.key.to_string());
        let named = bucket_name(self.url).unwrap_or_default();
        TriggerEvent::s3(ObjectChange {
            scheme: self.url.split_once("://").map(|(s, _)| s).unwrap_or("s3"),
            bucket: self.bucket.unwrap_or(&named),
            key: &full_key,
            event_name: self.event_name.strip_prefix("s3:").unwrap_or(self.event_name),
            size: self.size,
            etag: self.etag,
            version_id: self.version_id,
            sequencer: self.sequencer,
            time: self.time,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A planted dead letter (`file:///etc` + `passwd`) must not make a redrive read
    /// outside the pipeline's bucket, prefix and globs.
    #[test]
    fn revive_takes_only_objects_this_trigger_could_deliver() {
        let filter = KeyFilter::new("inbox/", &["*.jpg"], &[] as &[&str]).unwrap();
        let record = |url: &str, key: &str| serde_json::json!({"type": "object", "url": url, "key": key, "size": 1, "version": "v"});
        let url = "file:///srv/photos";
        assert!(ObjectWork::revive(&record(url, "inbox/cat.jpg"), url, &filter).is_ok());
        for (from, key, why) in [
            ("file:///etc", "passwd", "not this pipeline's bucket"),
            (url, "../../etc/passwd", "unsafe key"),
            (url, "private/cat.jpg", "outside this pipeline's prefix"),
            (url, "inbox/notes.txt", "outside this pipeline's prefix and globs"),
        ] {
            let refused = ObjectWork::revive(&record(from, key), url, &filter).err().expect("refused");
            assert!(refused.contains(why), "{from} {key}: {refused}");
        }
    }
}
