//! `kafka.produce`: send the item to a Kafka topic, and succeed only once the broker
//! acknowledged it.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Deserialize;

use super::producer::{Outgoing, RecordProducer};
use crate::template::TextTemplate;
use crate::ErrorKind;
use crate::{BuildError, Context, Function, FunctionError, FunctionSpec, Item, Param, Payload};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ProduceParams {
    brokers: String,
    topic: String,
    #[serde(default)]
    key: Option<String>,
    #[serde(default)]
    headers: BTreeMap<String, String>,
    #[serde(default)]
    librdkafka: BTreeMap<String, String>,
}

pub fn spec() -> FunctionSpec {
    FunctionSpec::new(
        "kafka.produce",
        "Send the item (bytes, or JSON as text) to a Kafka topic; done once the broker acknowledged it.",
        &[
            Param { name: "brokers", kind: "string", default: None, doc: "host:port[,host:port…] of the cluster." },
            Param {
                name: "topic",
                kind: "string (template)",
                default: None,
                doc: "Topic to write to, e.g. \"thumbnails\" or \"out-{attr.topic}\".",
            },
            Param {
                name: "key",
                kind: "string (template)",
                default: Some("none (spread over partitions)"),
                doc: "Record key, e.g. \"{key}\": records with one key keep their order.",
            },
            Param {
                name: "headers",
                kind: "table of string templates",
                default: Some("{}"),
                doc: "Record headers, e.g. { source = \"{key}\", variant = \"{variant}\" }.",
            },
            Param {
                name: "librdkafka",
                kind: "table of strings",
                default: Some("{}"),
                doc: "Producer options passed to librdkafka (SASL/SSL, compression.type…); \
                      idempotence and acks=all are always on.",
            },
        ],
        |p: ProduceParams| {
            let template = |param: &'static str, text: &str| {
                TextTemplate::parse(text).map_err(|e| BuildError::param(param, e.message))
            };
            let topic = template("topic", &p.topic)?;
            let key = p.key.as_deref().map(|k| template("key", k)).transpose()?;
            let headers = p
                .headers
                .iter()
                .map(|(name, value)| Ok((name.clone(), template("headers", value)?)))
                .collect::<Result<Vec<_>, BuildError>>()?;
            let options: Vec<(String, String)> = p.librdkafka.into_iter().collect();
            let producer = RecordProducer::new(&p.brokers, &options).map_err(|e| BuildError::param("librdkafka", e))?;
            Ok(Produce { producer: Arc::new(producer), topic, key, headers })
        },
    )
}

pub struct Produce {
    producer: Arc<RecordProducer>,
    topic: TextTemplate,
    key: Option<TextTemplate>,
    headers: Vec<(String, TextTemplate)>,
}

#[async_trait::async_trait]
impl Function for Produce {
    async fn invoke(&self, item: Item, ctx: &Context) -> Result<Vec<Item>, FunctionError> {
        let value = match &item.payload {
            Payload::Bytes(b) => b.clone(),
            Payload::Json(v) => bytes::Bytes::from(
                serde_json::to_vec(v)
                    .map_err(|e| FunctionError::permanent(format!("cannot serialise {}: {e}", item.describe())))?,
            ),
            Payload::Empty => bytes::Bytes::new(),
            other => {
                return Err(FunctionError::permanent(format!(
                    "kafka.produce needs bytes or JSON, got a {} payload for {} (encode it first)",
                    other.kind(),
                    item.describe()
                )))
            }
        };
        let topic = self.topic.render(&item, ctx)?;
        let key = self.key.as_ref().map(|k| k.render(&item, ctx)).transpose()?;
        let headers = self
            .headers
            .iter()
            .map(|(name, value)| Ok((name.as_str(), value.render(&item, ctx)?)))
            .collect::<Result<Vec<_>, FunctionError>>()?;
        let record = Outgoing {
            topic: &topic,
            key: key.as_deref().map(str::as_bytes),
            value: &value,
            headers: headers.iter().map(|(name, value)| (*name, value.as_bytes())).collect(),
            timestamp_ms: None,
        };
        let left = ctx.deadline.saturating_duration_since(Instant::now()).max(Duration::from_millis(1));
        // No acknowledgement before the step's deadline is the brokers being away, not
        // the record being bad: answered as an outage (which waits) just before the
        // step would time out (which dead-letters once attempts run out). The record
        // may still land later; a retry then sends it twice, as at-least-once allows.
        let wait = left.saturating_sub(Duration::from_millis(500)).max(left / 2);
        let sent = tokio::time::timeout(wait, self.producer.send(&record, left)).await.map_err(|_| {
            FunctionError::unavailable(format!(
                "{}: no acknowledgement from {} within {wait:?}",
                item.describe(),
                self.producer.brokers()
            ))
        })?;
        let delivered = sent.map_err(|e| {
            let kind = match e.kind {
                ErrorKind::Unavailable => FunctionError::unavailable,
                ErrorKind::Retryable => FunctionError::retryable,
                ErrorKind::Permanent => FunctionError::permanent,
            };
            kind(format!("{}: {}", item.describe(), e.message()))
        })?;
        let mut meta = item.meta;
        meta.attributes.insert("output_topic".into(), topic.clone());
        meta.attributes.insert("output_partition".into(), delivered.partition.to_string());
        meta.attributes.insert("output_offset".into(), delivered.offset.to_string());
        let reference =
            serde_json::json!({ "topic": topic, "partition": delivered.partition, "offset": delivered.offset });
        Ok(vec![Item::new(Payload::Json(reference), meta)])
    }
}
