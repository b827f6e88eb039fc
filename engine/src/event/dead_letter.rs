//! Dead letters: one record per failed event, holding everything needed to understand
//! the failure and to re-drive the event. Where they go is a [`DeadLetterStore`]: a
//! bucket by default (one JSON file per event under `{pipeline}/{event id}.json`), or
//! what a trigger kind offers (a Kafka dead-letter topic).

use std::sync::Arc;

use futures::stream::BoxStream;
use futures::StreamExt;
use object_store::{ObjectStoreExt, PutPayload};
use serde::{Deserialize, Serialize};
use weir_functions::{Bucket, ErrorKind, FunctionError, Stores};

use crate::error::EngineError;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct DeadLetter {
    /// The id of the event (and of its run in the ledger).
    pub id: String,
    pub pipeline: String,
    /// The original event, as its trigger kind records it ([`super::Work::record`]).
    pub event: serde_json::Value,
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

/// A dead letter as listed: where it is, and the letter (or why it cannot be read).
pub type Listed = (String, Result<DeadLetter, String>);

/// Where a pipeline's dead letters are kept, and how `weir dlq` reads them back.
#[async_trait::async_trait]
pub trait DeadLetterStore: Send + Sync {
    /// Writes `letter`; returns where it went.
    async fn write(&self, letter: &DeadLetter) -> Result<String, FunctionError>;

    /// The letters of `pipeline` not yet settled, as (position, letter).
    fn list<'a>(&'a self, pipeline: &'a str) -> BoxStream<'a, Listed>;

    /// The letter at `position` was re-driven successfully: it is no longer listed.
    async fn settle(&self, position: &str, letter: &DeadLetter) -> Result<(), EngineError>;

    /// The letter at `position` failed again: keep `letter` (error, attempts and
    /// redrive count updated) in its place; returns where it is now.
    async fn replace(&self, position: &str, letter: &DeadLetter) -> Result<String, EngineError>;
}

/// Dead letters as JSON files in a bucket (the default: `data/.weir/dead-letter`).
pub struct BucketDeadLetters {
    pub url: String,
    stores: Stores,
}

impl BucketDeadLetters {
    pub fn new(url: &str, stores: &Stores) -> Arc<Self> {
        Arc::new(Self { url: url.to_string(), stores: stores.clone() })
    }

    fn bucket(&self) -> Result<Bucket, FunctionError> {
        self.stores.resolve(&self.url)
    }
}

#[async_trait::async_trait]
impl DeadLetterStore for BucketDeadLetters {
    async fn write(&self, letter: &DeadLetter) -> Result<String, FunctionError> {
        let bucket = self.bucket()?;
        let key = letter.key();
        let body = serde_json::to_vec_pretty(letter)
            .map_err(|e| FunctionError::permanent(format!("cannot serialise dead letter: {e}")))?;
        bucket
            .store
            .put(&bucket.path(&key)?, PutPayload::from(body))
            .await
            .map_err(|e| FunctionError::from_store(format!("writing dead letter {key} to {}", bucket.url), e))?;
        Ok(format!("{}/{key}", self.url.trim_end_matches('/')))
    }

    fn list<'a>(&'a self, pipeline: &'a str) -> BoxStream<'a, Listed> {
        let bucket = match self.bucket().and_then(|b| Ok((b.path(pipeline)?, b))) {
            Ok(found) => found,
            Err(e) => return futures::stream::iter([(self.url.clone(), Err(e.to_string()))]).boxed(),
        };
        let (prefix, bucket) = bucket;
        let listing = bucket.store.list(Some(&prefix));
        listing
            .then(move |meta| {
                let bucket = bucket.clone();
                async move {
                    let meta = match meta {
                        Ok(meta) => meta,
                        Err(e) => return (bucket.url.clone(), Err(e.to_string())),
                    };
                    let key = bucket.key_of(&meta.location).unwrap_or_else(|| meta.location.to_string());
                    let read = async {
                        let bytes = bucket.store.get(&meta.location).await?.bytes().await?;
                        Ok::<_, object_store::Error>(bytes)
                    };
                    let letter = match read.await {
                        Ok(bytes) => {
                            serde_json::from_slice(&bytes).map_err(|e| format!("not a dead-letter record: {e}"))
                        }
                        Err(e) => Err(e.to_string()),
                    };
                    (key, letter)
                }
            })
            .boxed()
    }

    async fn settle(&self, position: &str, _letter: &DeadLetter) -> Result<(), EngineError> {
        let bucket = self.bucket()?;
        bucket
            .store
            .delete(&bucket.path(position)?)
            .await
            .map_err(|e| FunctionError::from_store(format!("deleting dead letter {position}"), e).into())
    }

    async fn replace(&self, _position: &str, letter: &DeadLetter) -> Result<String, EngineError> {
        // Same event, same key: the file is overwritten.
        Ok(self.write(letter).await?)
    }
}
