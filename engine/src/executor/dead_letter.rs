//! Dead-letter records: one JSON object per failed event, in the pipeline's
//! `dead_letter` bucket under `{pipeline}/{event id}.json`, holding everything needed
//! to understand the failure and to re-drive the event — or, for Kafka pipelines, a
//! record on a dead-letter topic (`kafka://TOPIC`, see
//! [`crate::trigger::kafka::dead_letter`]).

use std::sync::Arc;

use futures::{Stream, StreamExt};
use object_store::{ObjectStoreExt, PutPayload};
use serde::{Deserialize, Serialize};
use weir_functions::{Bucket, ErrorKind, FunctionError};

use crate::trigger::kafka::dead_letter::{self as topic, DeadLetterTopic};
use crate::trigger::{EventSource, TriggerConfig};

/// Where a pipeline's dead letters go.
#[derive(Clone)]
pub enum DeadLetterTarget {
    /// A bucket URL: one JSON file per failed event.
    Bucket(String),
    /// A Kafka topic on the trigger's cluster.
    Topic(Arc<DeadLetterTopic>),
}

impl DeadLetterTarget {
    /// The target `url` names. `kafka://` needs a Kafka trigger (`weir validate` checks).
    pub fn new(url: &str, trigger: &TriggerConfig) -> Result<Self, String> {
        match (topic::topic_of(url), trigger) {
            (None, _) => Ok(Self::Bucket(url.to_string())),
            (Some(name), TriggerConfig::Kafka(config)) => {
                Ok(Self::Topic(Arc::new(DeadLetterTopic::new(name, config).map_err(|e| format!("{url}: {e}"))?)))
            }
            (Some(_), _) => Err(format!("dead letter {url}: a kafka:// dead-letter topic needs a Kafka trigger")),
        }
    }

    /// Writes `record`; returns where it went (`file:///…/x.json`, `topic/partition/offset`).
    pub async fn write(&self, stores: &weir_functions::Stores, record: &DeadLetter) -> Result<String, FunctionError> {
        match self {
            Self::Bucket(url) => {
                let bucket = stores.resolve(url)?;
                let key = write(&bucket, record).await?;
                Ok(format!("{}/{key}", url.trim_end_matches('/')))
            }
            Self::Topic(topic) => topic.write(record).await,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct DeadLetter {
    /// The id of the event (and of its run in the ledger).
    pub id: String,
    pub pipeline: String,
    /// The original event, as the trigger delivered it.
    pub event: EventSource,
    /// The step that failed (`load` when the input could not even be read).
    pub step: String,
    /// The error and its causes, `: `-separated.
    pub error: String,
    pub error_kind: ErrorKind,
    pub attempts: u32,
    pub received_at: chrono::DateTime<chrono::Utc>,
    pub failed_at: chrono::DateTime<chrono::Utc>,
    /// How many times this event was already re-driven and failed again.
    #[serde(default)]
    pub redrives: u32,
}

impl DeadLetter {
    pub fn key(&self) -> String {
        format!("{}/{}.json", self.pipeline, self.id)
    }
}

/// Writes a record; returns its key. Overwrites a record of the same event.
pub async fn write(bucket: &Bucket, record: &DeadLetter) -> Result<String, FunctionError> {
    let key = record.key();
    let body = serde_json::to_vec_pretty(record)
        .map_err(|e| FunctionError::permanent(format!("cannot serialise dead letter: {e}")))?;
    bucket
        .store
        .put(&bucket.path(&key)?, PutPayload::from(body))
        .await
        .map_err(|e| FunctionError::from_store(format!("writing dead letter {key} to {}", bucket.url), e))?;
    Ok(key)
}

/// Every record of `pipeline`, streamed from the bucket. A record that cannot be read
/// is reported as an error item rather than stopping the listing.
pub fn list<'a>(bucket: &'a Bucket, pipeline: &str) -> impl Stream<Item = Result<(String, DeadLetter), String>> + 'a {
    let prefix = bucket.path(pipeline);
    futures::stream::iter(prefix.map_err(|e| e.to_string()))
        .flat_map(move |prefix| bucket.store.list(Some(&prefix)))
        .then(move |meta| async move {
            let meta = meta.map_err(|e| e.to_string())?;
            let key = bucket.key_of(&meta.location).unwrap_or_else(|| meta.location.to_string());
            let bytes = bucket
                .store
                .get(&meta.location)
                .await
                .map_err(|e| format!("{key}: {e}"))?
                .bytes()
                .await
                .map_err(|e| format!("{key}: {e}"))?;
            let record = serde_json::from_slice(&bytes).map_err(|e| format!("{key}: not a dead-letter record: {e}"))?;
            Ok((key, record))
        })
}

pub async fn remove(bucket: &Bucket, key: &str) -> Result<(), FunctionError> {
    bucket
        .store
        .delete(&bucket.path(key)?)
        .await
        .map_err(|e| FunctionError::from_store(format!("deleting dead letter {key}"), e))
}
