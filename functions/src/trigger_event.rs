//! The event that started a run, in AWS Lambda's shapes (`aws_lambda_events`), so a
//! function written against Lambda's S3 event reads the same fields here.

use aws_lambda_events::eventbridge::EventBridgeEvent;
use aws_lambda_events::s3::{S3Bucket, S3Entity, S3Event, S3EventRecord, S3Object};
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
