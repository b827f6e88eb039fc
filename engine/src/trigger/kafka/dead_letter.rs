//! A dead-letter topic (`[retry] dead_letter = "kafka://TOPIC"`, on the trigger's
//! cluster): a failed record is produced there with its original key and value, and
//! the failure in `weir.*` headers — the way Kafka Connect's dead-letter queues carry
//! theirs — so any Kafka tool can read it and `weir dlq redrive` can run it again.

use std::collections::HashMap;
use std::time::Duration;

use futures::stream::BoxStream;
use futures::StreamExt;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use weir_functions::kafka::{Outgoing, RecordProducer};
use weir_functions::{ErrorKind, FunctionError};

use super::{KafkaConfig, Record};
use crate::error::EngineError;
use crate::event::dead_letter::Listed;
use crate::event::{DeadLetter, DeadLetterStore};
use crate::state::{Ledger, ObjectStatus};

/// Dead letters read back from a topic: (topic/partition/offset, the letter or why it
/// could not be read).
type Letters = Vec<Listed>;

/// The scheme of a dead-letter topic URL.
pub const SCHEME: &str = "kafka://";

/// How long a dead letter may wait for the broker before the write counts as failed.
const SEND_TIMEOUT: Duration = Duration::from_secs(30);

/// `kafka://TOPIC` → `TOPIC`.
pub fn topic_of(url: &str) -> Option<&str> {
    url.strip_prefix(SCHEME).map(|t| t.trim_end_matches('/'))
}

/// Where a Kafka pipeline's dead letters go. Records cannot be removed from a topic,
/// so the ledger remembers which ones were re-driven (by topic position), and only the
/// others are listed.
pub struct DeadLetterTopic {
    pub topic: String,
    producer: RecordProducer,
    config: KafkaConfig,
    ledger: Ledger,
}

impl DeadLetterTopic {
    /// A writer on the trigger's cluster, with its librdkafka options (security settings
    /// apply to both; consumer-only options are left out).
    pub fn new(topic: &str, config: &KafkaConfig, ledger: Ledger) -> Result<Self, EngineError> {
        let options: Vec<(String, String)> =
            config.librdkafka.iter().filter(|(k, _)| shared_option(k)).cloned().collect();
        let producer = RecordProducer::new(&config.brokers, &options).map_err(EngineError::fatal)?;
        Ok(Self { topic: topic.to_string(), producer, config: config.clone(), ledger })
    }

    /// The ledger's "bucket" for this topic's settled letters.
    fn ledger_url(&self) -> String {
        format!("{SCHEME}{}", self.topic)
    }

    /// Produces `letter`; done once the broker acknowledged it.
    async fn produce(&self, letter: &DeadLetter) -> Result<String, FunctionError> {
        let attempts = letter.attempts.to_string();
        let redrives = letter.redrives.to_string();
        let received = letter.received_at.to_rfc3339();
        let failed = letter.failed_at.to_rfc3339();
        let kind = match letter.error_kind {
            ErrorKind::Retryable => "retryable",
            ErrorKind::Unavailable => "unavailable",
            ErrorKind::Permanent => "permanent",
        };
        let mut headers: Vec<(&str, &[u8])> = vec![
            ("weir.pipeline", letter.pipeline.as_bytes()),
            ("weir.event_id", letter.id.as_bytes()),
            ("weir.step", letter.step.as_bytes()),
            ("weir.error", letter.error.as_bytes()),
            ("weir.error_kind", kind.as_bytes()),
            ("weir.attempts", attempts.as_bytes()),
            ("weir.redrives", redrives.as_bytes()),
            ("weir.received_at", received.as_bytes()),
            ("weir.failed_at", failed.as_bytes()),
        ];
        let (partition, offset, timestamp);
        let json;
        let record: Option<Record> = (letter.event.get("type").and_then(|t| t.as_str()) == Some("kafka"))
            .then(|| letter.event.get("record").cloned().and_then(|r| serde_json::from_value(r).ok()))
            .flatten();
        let (key, value) = match &record {
            Some(record) => {
                partition = record.partition.to_string();
                offset = record.offset.to_string();
                timestamp = record.timestamp.map(|t| t.to_rfc3339()).unwrap_or_default();
                headers.push(("weir.source.topic", record.topic.as_bytes()));
                headers.push(("weir.source.partition", partition.as_bytes()));
                headers.push(("weir.source.offset", offset.as_bytes()));
                if !timestamp.is_empty() {
                    headers.push(("weir.source.timestamp", timestamp.as_bytes()));
                }
                // The producer's own headers travel on, after weir's.
                headers.extend(
                    record
                        .headers
                        .iter()
                        .filter(|h| !h.name.starts_with("weir."))
                        .map(|h| (h.name.as_str(), &h.value[..])),
                );
                (record.key.as_deref().map(str::as_bytes), &record.value[..])
            }
            // Anything else (a malformed input) travels as the event's JSON.
            None => {
                json = serde_json::to_vec(&letter.event)
                    .map_err(|e| FunctionError::permanent(format!("cannot serialise dead letter: {e}")))?;
                (None, &json[..])
            }
        };
        let outgoing = Outgoing { topic: &self.topic, key, value, headers, timestamp_ms: None };
        let delivered = self.producer.send(&outgoing, SEND_TIMEOUT).await?;
        Ok(format!("{}/{}/{}", self.topic, delivered.partition, delivered.offset))
    }

    /// Every dead letter on the topic, oldest first per partition, up to the end the
    /// topic had when the call started. Read without a consumer group: nothing moves.
    async fn read_all(&self) -> Result<Letters, String> {
        let (topic, config) = (self.topic.clone(), self.config.clone());
        tokio::task::spawn_blocking(move || read_topic(&topic, &config))
            .await
            .map_err(|e| format!("reading topic {:?}: {e}", self.topic))?
    }

    /// Whether the letter at `position` was handled by an earlier redrive.
    async fn settled(&self, pipeline: &str, position: &str, letter: &DeadLetter) -> bool {
        let url = self.ledger_url();
        self.ledger.object_seen(pipeline, &url, position, &letter.id).await.unwrap_or(false)
    }
}

#[async_trait::async_trait]
impl DeadLetterStore for DeadLetterTopic {
    async fn write(&self, letter: &DeadLetter) -> Result<String, FunctionError> {
        self.produce(letter).await
    }

    fn list<'a>(&'a self, pipeline: &'a str) -> BoxStream<'a, Listed> {
        futures::stream::once(self.read_all())
            .flat_map(move |read| {
                let letters = read.unwrap_or_else(|e| vec![(self.ledger_url(), Err(e))]);
                futures::stream::iter(letters)
            })
            .filter_map(move |(position, letter)| async move {
                match &letter {
                    Ok(l) if l.pipeline != pipeline || self.settled(pipeline, &position, l).await => None,
                    _ => Some((position, letter)),
                }
            })
            .boxed()
    }

    async fn settle(&self, position: &str, letter: &DeadLetter) -> Result<(), EngineError> {
        let url = self.ledger_url();
        Ok(self.ledger.record_object(&letter.pipeline, &url, position, &letter.id, ObjectStatus::Done).await?)
    }

    /// A record that failed again is produced to the topic anew (redrives + 1), and the
    /// old one settled: superseded by the new.
    async fn replace(&self, position: &str, letter: &DeadLetter) -> Result<String, EngineError> {
        let at = self.produce(letter).await?;
        self.settle(position, letter).await?;
        Ok(at)
    }
}

/// librdkafka options that concern the connection (security, timeouts), not consuming.
fn shared_option(key: &str) -> bool {
    ["security.", "sasl.", "ssl.", "client.id", "socket.", "broker.", "metadata.", "reconnect.", "api.version"]
        .iter()
        .any(|prefix| key.starts_with(prefix))
}

fn read_topic(topic: &str, config: &KafkaConfig) -> Result<Letters, String> {
    let mut client = ClientConfig::new();
    for (key, value) in config.librdkafka.iter().filter(|(k, _)| shared_option(k)) {
        client.set(key, value);
    }
    // Assigning partitions needs a group id; nothing is ever committed under it.
    client
        .set("bootstrap.servers", &config.brokers)
        .set("group.id", format!("{}.dead-letter-reader", config.group))
        .set("enable.auto.commit", "false");
    let consumer: BaseConsumer = client.create().map_err(|e| {
        format!("creating a Kafka consumer: {}", weir_functions::kafka::describe_error(&e, &config.librdkafka))
    })?;
    let timeout = Duration::from_secs(10);
    let metadata = consumer
        .fetch_metadata(Some(topic), timeout)
        .map_err(|e| format!("reading the metadata of topic {topic:?} on {}: {e}", config.brokers))?;
    let mut ends = HashMap::new();
    let mut list = TopicPartitionList::new();
    for partition in metadata.topics().iter().flat_map(|t| t.partitions()) {
        let (low, high) = consumer
            .fetch_watermarks(topic, partition.id(), timeout)
            .map_err(|e| format!("reading the end of {topic}/{}: {e}", partition.id()))?;
        if high > low {
            ends.insert(partition.id(), high);
            list.add_partition_offset(topic, partition.id(), Offset::Offset(low)).map_err(|e| e.to_string())?;
        }
    }
    let mut letters = Vec::new();
    if ends.is_empty() {
        return Ok(letters);
    }
    consumer.assign(&list).map_err(|e| format!("reading topic {topic:?}: {e}"))?;
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !ends.is_empty() {
        if std::time::Instant::now() > deadline {
            return Err(format!("timed out reading topic {topic:?}"));
        }
        let Some(message) = consumer.poll(Duration::from_millis(200)) else { continue };
        let message = message.map_err(|e| format!("reading topic {topic:?}: {e}"))?;
        let position = format!("{topic}/{}/{}", message.partition(), message.offset());
        letters.push((position, letter_of(&message)));
        if ends.get(&message.partition()).is_some_and(|end| message.offset() + 1 >= *end) {
            ends.remove(&message.partition());
        }
    }
    Ok(letters)
}

/// A dead-letter record read back: the `weir.*` headers and the original key and value.
fn letter_of(message: &impl Message) -> Result<DeadLetter, String> {
    let mut fields: HashMap<&str, String> = HashMap::new();
    if let Some(headers) = message.headers() {
        for header in headers.iter() {
            if let Some(value) = header.value {
                fields.insert(header.key, String::from_utf8_lossy(value).into_owned());
            }
        }
    }
    let field = |name: &str| fields.get(name).cloned().ok_or_else(|| format!("no {name} header"));
    let time = |name: &str| -> Result<chrono::DateTime<chrono::Utc>, String> {
        let text = field(name)?;
        chrono::DateTime::parse_from_rfc3339(&text).map(|t| t.to_utc()).map_err(|e| format!("{name}: {e}"))
    };
    let number = |name: &str| -> Result<i64, String> { field(name)?.parse().map_err(|e| format!("{name}: {e}")) };
    let record = Record {
        topic: field("weir.source.topic")?.into(),
        partition: number("weir.source.partition")? as i32,
        offset: number("weir.source.offset")?,
        key: message.key().map(|k| String::from_utf8_lossy(k).into_owned()),
        value: message.payload().map(bytes::Bytes::copy_from_slice).unwrap_or_default(),
        timestamp: time("weir.source.timestamp").ok(),
        headers: super::consumer::headers_of(message).into_iter().filter(|h| !h.name.starts_with("weir.")).collect(),
    };
    Ok(DeadLetter {
        id: field("weir.event_id")?,
        pipeline: field("weir.pipeline")?,
        event: serde_json::json!({ "type": "kafka", "record": record }),
        step: field("weir.step")?,
        error: field("weir.error")?,
        error_kind: match field("weir.error_kind")?.as_str() {
            "retryable" => ErrorKind::Retryable,
            "unavailable" => ErrorKind::Unavailable,
            _ => ErrorKind::Permanent,
        },
        attempts: number("weir.attempts")? as u32,
        received_at: time("weir.received_at")?,
        failed_at: time("weir.failed_at")?,
        redrives: number("weir.redrives").unwrap_or(0) as u32,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_urls() {
        assert_eq!(topic_of("kafka://uploads.dlq"), Some("uploads.dlq"));
        assert_eq!(topic_of("file://./data"), None);
        assert!(shared_option("sasl.password") && shared_option("security.protocol"));
        assert!(!shared_option("max.poll.interval.ms") && !shared_option("group.protocol"));
    }
}
