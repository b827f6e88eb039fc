//! The event that started a run, in AWS Lambda's shapes (`aws_lambda_events`), so a
//! function written against Lambda's S3 event reads the same fields here.

use aws_lambda_events::encodings::MillisecondTimestamp;
use aws_lambda_events::eventbridge::EventBridgeEvent;
use aws_lambda_events::kafka::{KafkaEvent, KafkaRecord};
pub use aws_lambda_events::lambda_function_urls::LambdaFunctionUrlRequest;
use aws_lambda_events::s3::{S3Bucket, S3Entity, S3Event, S3EventRecord, S3Object};
use std::sync::{Arc, OnceLock};

use chrono::{DateTime, Utc};

/// What triggered the run, as Lambda would have delivered it.
#[derive(Clone, Debug, PartialEq)]
pub enum TriggerEvent {
    /// An object was created (or removed) in a bucket. One record, key URL-encoded as
    /// in S3's own notifications, `url_decoded_key` filled in.
    S3(S3Event),
    /// A schedule's tick, as EventBridge Scheduler delivers it: `time` is the tick's
    /// logical time, not when it ran.
    Scheduled(EventBridgeEvent),
    /// A Kafka record, as Lambda's Kafka event source mapping delivers it (one record;
    /// key and value base64-encoded, records grouped under `topic-partition`).
    Kafka(KafkaEvent),
    /// An HTTP request, as a Lambda function URL delivers it (API Gateway's payload
    /// format 2.0): method, path, headers, query, body (base64 when not UTF-8 text).
    Http(Box<LambdaFunctionUrlRequest>),
}

/// A [`TriggerEvent`] built the first time a function asks for it. Most functions
/// never do, and Lambda's shape of a Kafka record (its value in base64) would cost
/// more to build than a small function takes to run. Cheap to clone.
#[derive(Clone)]
pub struct LazyEvent(Arc<Lazy<dyn Fn() -> TriggerEvent + Send + Sync>>);

/// The builder is the last field, unsized, so event and builder share one allocation.
struct Lazy<F: ?Sized> {
    event: OnceLock<TriggerEvent>,
    make: F,
}

impl LazyEvent {
    /// An event `make` builds when it is first read.
    pub fn new(make: impl Fn() -> TriggerEvent + Send + Sync + 'static) -> Self {
        Self(Arc::new(Lazy { event: OnceLock::new(), make }))
    }

    /// An event that is already built.
    pub fn ready(event: TriggerEvent) -> Self {
        Self(Arc::new(Lazy { event: OnceLock::from(event), make: || unreachable!("already built") }))
    }

    pub fn get(&self) -> &TriggerEvent {
        self.0.event.get_or_init(|| (self.0.make)())
    }
}

impl std::fmt::Debug for LazyEvent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("LazyEvent").field(&self.0.event.get()).finish()
    }
}

/// The facts about a Kafka record that make up Lambda's Kafka event.
#[derive(Clone, Debug, Default)]
pub struct RecordFacts<'a> {
    pub bootstrap_servers: &'a str,
    pub topic: &'a str,
    pub partition: i32,
    pub offset: i64,
    pub timestamp: Option<DateTime<Utc>>,
    pub key: Option<&'a [u8]>,
    pub value: &'a [u8],
    pub headers: Vec<(&'a str, &'a [u8])>,
}

/// The facts about an object change that make up an S3 event record.
#[derive(Clone, Debug, Default)]
pub struct ObjectChange<'a> {
    /// `s3`, `gcs`, `azure`, `file`, `memory`: becomes `eventSource` (`aws:s3`, `weir:file`).
    pub scheme: &'a str,
    pub bucket: &'a str,
    /// The full key in the bucket, decoded.
    pub key: &'a str,
    /// `ObjectCreated:Put` and the like.
    pub event_name: &'a str,
    pub size: Option<u64>,
    pub etag: Option<&'a str>,
    pub version_id: Option<&'a str>,
    pub sequencer: Option<&'a str>,
    pub time: Option<DateTime<Utc>>,
}

impl TriggerEvent {
    pub fn s3(change: ObjectChange<'_>) -> Self {
        let mut object = S3Object::default();
        object.key = Some(encode_key(change.key));
        object.url_decoded_key = Some(change.key.to_string());
        object.size = change.size.and_then(|s| i64::try_from(s).ok());
        object.e_tag = change.etag.map(str::to_string);
        object.version_id = change.version_id.map(str::to_string);
        object.sequencer = change.sequencer.map(str::to_string);
        let mut bucket = S3Bucket::default();
        bucket.name = Some(change.bucket.to_string());
        bucket.arn = (change.scheme == "s3").then(|| format!("arn:aws:s3:::{}", change.bucket));
        let mut entity = S3Entity::default();
        entity.schema_version = Some("1.0".into());
        entity.bucket = bucket;
        entity.object = object;
        let mut record = S3EventRecord::default();
        record.event_version = Some("2.1".into());
        record.event_source =
            Some(if change.scheme == "s3" { "aws:s3".into() } else { format!("weir:{}", change.scheme) });
        record.event_time = change.time.unwrap_or_else(Utc::now);
        record.event_name = Some(change.event_name.to_string());
        record.s3 = entity;
        let mut event = S3Event::default();
        event.records = vec![record];
        TriggerEvent::S3(event)
    }
}

impl TriggerEvent {
    /// A scheduled event for `pipeline`'s tick at `time`.
    pub fn scheduled(id: &str, pipeline: &str, time: DateTime<Utc>) -> Self {
        let mut event = EventBridgeEvent::default();
        event.version = Some("0".into());
        event.id = Some(id.to_string());
        event.detail_type = "Scheduled Event".into();
        event.source = "aws.events".into();
        event.time = Some(time);
        event.resources = Some(vec![format!("weir:schedule/{pipeline}")]);
        event.detail = serde_json::json!({});
        TriggerEvent::Scheduled(event)
    }
}

impl TriggerEvent {
    /// One record, as Lambda delivers a batch of one.
    pub fn kafka(facts: RecordFacts<'_>) -> Self {
        let servers = facts.bootstrap_servers;
        Self::kafka_batch(servers, std::iter::once(facts))
    }

    /// A batch of records, grouped under `topic-partition` in arrival order.
    pub fn kafka_batch<'a>(bootstrap_servers: &str, records: impl IntoIterator<Item = RecordFacts<'a>>) -> Self {
        use base64::Engine as _;
        let encode = |bytes: &[u8]| base64::engine::general_purpose::STANDARD.encode(bytes);
        let mut event = KafkaEvent::default();
        event.event_source = Some("SelfManagedKafka".into());
        event.bootstrap_servers = Some(bootstrap_servers.to_string());
        for facts in records {
            let mut record = KafkaRecord::default();
            record.topic = Some(facts.topic.to_string());
            record.partition = i64::from(facts.partition);
            record.offset = facts.offset;
            record.timestamp = MillisecondTimestamp(facts.timestamp.unwrap_or_default());
            record.timestamp_type = Some("CREATE_TIME".into());
            record.key = facts.key.map(encode);
            record.value = Some(encode(facts.value));
            // Lambda's shape: one single-entry map per header, the value as signed bytes.
            record.headers = facts
                .headers
                .iter()
                .map(|(name, value)| [(name.to_string(), value.iter().map(|b| *b as i8).collect())].into())
                .collect();
            event.records.entry(format!("{}-{}", facts.topic, facts.partition)).or_default().push(record);
        }
        TriggerEvent::Kafka(event)
    }
}

/// Encodes a key as S3 does in notifications: form encoding (`+` for space), `/` kept.
pub fn encode_key(key: &str) -> String {
    url::form_urlencoded::byte_serialize(key.as_bytes()).collect::<String>().replace("%2F", "/")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn s3_shape_serializes_like_lambda() {
        let event = TriggerEvent::s3(ObjectChange {
            scheme: "s3",
            bucket: "photos",
            key: "inbox/red flower+1.jpg",
            event_name: "ObjectCreated:Put",
            size: Some(42),
            etag: Some("abc"),
            ..Default::default()
        });
        let TriggerEvent::S3(s3) = event else { panic!("an S3 event") };
        let json = serde_json::to_value(&s3).unwrap();
        let object = &json["Records"][0]["s3"]["object"];
        assert_eq!(object["key"], "inbox/red+flower%2B1.jpg");
        assert_eq!(object["urlDecodedKey"], "inbox/red flower+1.jpg");
        assert_eq!(object["size"], 42);
        assert_eq!(json["Records"][0]["eventSource"], "aws:s3");
        assert_eq!(json["Records"][0]["s3"]["bucket"]["arn"], "arn:aws:s3:::photos");
    }

    #[test]
    fn kafka_shape_serializes_like_lambdas_kafka_event() {
        let TriggerEvent::Kafka(event) = TriggerEvent::kafka(RecordFacts {
            bootstrap_servers: "127.0.0.1:9092",
            topic: "events",
            partition: 2,
            offset: 15,
            key: Some(b"k1"),
            value: b"{\"a\":1}",
            headers: vec![("trace", b"t1")],
            ..Default::default()
        }) else {
            panic!("a Kafka event")
        };
        let json = serde_json::to_value(&event).unwrap();
        assert_eq!(json["eventSource"], "SelfManagedKafka");
        let record = &json["records"]["events-2"][0];
        assert_eq!((record["partition"].as_i64(), record["offset"].as_i64()), (Some(2), Some(15)));
        assert_eq!(record["key"], "azE=");
        assert_eq!(record["value"], "eyJhIjoxfQ==");
        assert_eq!(record["headers"], serde_json::json!([{"trace": [116, 49]}]));
    }

    #[test]
    fn scheduled_shape_serializes_like_eventbridge() {
        let time = DateTime::parse_from_rfc3339("2026-11-25T02:30:00Z").unwrap().with_timezone(&Utc);
        let TriggerEvent::Scheduled(event) = TriggerEvent::scheduled("id-1", "nightly", time) else {
            panic!("a scheduled event")
        };
        let json = serde_json::to_value(&event).unwrap();
        assert_eq!(json["detail-type"], "Scheduled Event");
        assert_eq!(json["source"], "aws.events");
        assert_eq!(json["time"], "2026-11-25T02:30:00Z");
        assert_eq!(json["resources"][0], "weir:schedule/nightly");
    }
}
