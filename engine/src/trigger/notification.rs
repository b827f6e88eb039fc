//! S3 bucket notifications, in the four shapes they arrive in.
//!
//! * AWS S3 `{"Records": [...]}` (as sent to SQS, Lambda, or a webhook),
//! * the same wrapped in an SNS `{"Type": "Notification", "Message": "<json>"}`,
//! * EventBridge `{"detail-type": "Object Created", "source": "aws.s3", "detail": {...}}`,
//! * MinIO's `{"EventName": ..., "Key": ..., "Records": [...]}`.
//!
//! Object keys in all of them are URL-encoded the way HTML forms are (`+` is a space,
//! `%2B` a plus): [`decode_key`] undoes that exactly once. The parser is shared by
//! every transport that carries notifications (HTTP today, a Kafka topic later).

use chrono::{DateTime, Utc};
use serde_json::Value;

/// What happened to the object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    Created,
    Removed,
}

/// One object change, with its key already decoded.
#[derive(Debug, Clone, PartialEq)]
pub struct ObjectNotice {
    pub bucket: String,
    pub key: String,
    pub change: Change,
    /// `ObjectCreated:Put`, `Object Created`… as sent, for logs and the function's event.
    pub event_name: String,
    pub size: Option<u64>,
    pub etag: Option<String>,
    pub version_id: Option<String>,
    pub sequencer: Option<String>,
    pub time: Option<DateTime<Utc>>,
}

/// A parsed notification body.
#[derive(Debug, PartialEq)]
pub enum Notification {
    /// Zero or more object changes (other event types, such as tagging, are dropped).
    Objects(Vec<ObjectNotice>),
    /// `s3:TestEvent`, sent when a notification configuration is saved: nothing to do.
    Test,
    /// SNS asks the endpoint to confirm its subscription by visiting this URL.
    SubscriptionConfirmation { subscribe_url: String },
}

/// A body that is not a notification weir understands.
#[derive(Debug, thiserror::Error, PartialEq)]
#[error("{0}")]
pub struct NotificationError(String);

fn bad(why: impl Into<String>) -> NotificationError {
    NotificationError(why.into())
}

/// Parses any of the supported shapes.
pub fn parse(body: &[u8]) -> Result<Notification, NotificationError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(bad("empty body"));
    }
    let value: Value = serde_json::from_slice(body).map_err(|e| bad(format!("not JSON: {e}")))?;
    parse_value(&value, 0)
}

fn parse_value(value: &Value, depth: u8) -> Result<Notification, NotificationError> {
    let Some(object) = value.as_object() else { return Err(bad("expected a JSON object")) };
    if let Some(records) = object.get("Records") {
        // AWS S3 and MinIO (which adds top-level EventName/Key next to the same Records).
        let records = records.as_array().ok_or_else(|| bad("`Records` must be an array"))?;
        let mut notices = Vec::with_capacity(records.len());
        for (i, record) in records.iter().enumerate() {
            if let Some(notice) = record_notice(record).map_err(|e| bad(format!("Records[{i}]: {e}")))? {
                notices.push(notice);
            }
        }
        return Ok(Notification::Objects(notices));
    }
    if object.get("Event").and_then(Value::as_str) == Some("s3:TestEvent") {
        return Ok(Notification::Test);
    }
    match object.get("Type").and_then(Value::as_str) {
        Some("Notification") if depth == 0 => {
            let message =
                object.get("Message").and_then(Value::as_str).ok_or_else(|| bad("SNS message without `Message`"))?;
            let inner: Value =
                serde_json::from_str(message).map_err(|e| bad(format!("SNS `Message` is not JSON: {e}")))?;
            return parse_value(&inner, depth + 1);
        }
        Some("SubscriptionConfirmation") => {
            let url = object.get("SubscribeURL").and_then(Value::as_str).unwrap_or_default();
            return Ok(Notification::SubscriptionConfirmation { subscribe_url: url.to_string() });
        }
        Some("UnsubscribeConfirmation") => return Ok(Notification::Objects(Vec::new())),
        _ => {}
    }
    if let Some(detail_type) = object.get("detail-type").and_then(Value::as_str) {
        if object.get("source").and_then(Value::as_str) != Some("aws.s3") {
            return Err(bad(format!("EventBridge event from {:?}, not aws.s3", object.get("source"))));
        }
        let change = match detail_type {
            "Object Created" => Change::Created,
            "Object Deleted" => Change::Removed,
            _ => return Ok(Notification::Objects(Vec::new())),
        };
        let detail = object.get("detail").ok_or_else(|| bad("EventBridge event without `detail`"))?;
        let bucket = str_at(detail, &["bucket", "name"]).ok_or_else(|| bad("missing detail.bucket.name"))?;
        let key = str_at(detail, &["object", "key"]).ok_or_else(|| bad("missing detail.object.key"))?;
        let object_detail = detail.get("object").unwrap_or(&Value::Null);
        return Ok(Notification::Objects(vec![ObjectNotice {
            bucket: bucket.to_string(),
            key: decode_key(key)?,
            change,
            event_name: detail_type.to_string(),
            size: number(object_detail.get("size")),
            etag: object_detail.get("etag").and_then(Value::as_str).map(unquote),
            version_id: object_detail.get("version-id").and_then(Value::as_str).map(str::to_string),
            sequencer: object_detail.get("sequencer").and_then(Value::as_str).map(str::to_string),
            time: object.get("time").and_then(Value::as_str).and_then(|t| t.parse().ok()),
        }]));
    }
    Err(bad("not an S3, SNS, EventBridge or MinIO notification (no `Records`, `Type` or `detail-type`)"))
}

/// One `Records[]` entry; None for event types other than created/removed.
fn record_notice(record: &Value) -> Result<Option<ObjectNotice>, NotificationError> {
    let name = record.get("eventName").and_then(Value::as_str).ok_or_else(|| bad("missing eventName"))?;
    // AWS writes `ObjectCreated:Put`, MinIO `s3:ObjectCreated:Put`.
    let bare = name.strip_prefix("s3:").unwrap_or(name);
    let change = if bare.starts_with("ObjectCreated:") {
        Change::Created
    } else if bare.starts_with("ObjectRemoved:") {
        Change::Removed
    } else {
        return Ok(None);
    };
    let s3 = record.get("s3").ok_or_else(|| bad("missing s3"))?;
    let bucket = str_at(s3, &["bucket", "name"]).ok_or_else(|| bad("missing s3.bucket.name"))?;
    let key = str_at(s3, &["object", "key"]).ok_or_else(|| bad("missing s3.object.key"))?;
    let object = s3.get("object").unwrap_or(&Value::Null);
    Ok(Some(ObjectNotice {
        bucket: bucket.to_string(),
        key: decode_key(key)?,
        change,
        event_name: name.to_string(),
        size: number(object.get("size")),
        etag: object.get("eTag").or_else(|| object.get("etag")).and_then(Value::as_str).map(unquote),
        version_id: object.get("versionId").and_then(Value::as_str).filter(|v| !v.is_empty()).map(str::to_string),
        sequencer: object.get("sequencer").and_then(Value::as_str).map(str::to_string),
        time: record.get("eventTime").and_then(Value::as_str).and_then(|t| t.parse().ok()),
    }))
}

fn str_at<'a>(value: &'a Value, path: &[&str]) -> Option<&'a str> {
    path.iter().try_fold(value, |v, field| v.get(field))?.as_str()
}

/// Sizes come as numbers, and from some emitters as strings.
fn number(value: Option<&Value>) -> Option<u64> {
    match value? {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => s.parse().ok(),
        _ => None,
    }
}

fn unquote(etag: &str) -> String {
    etag.trim_matches('"').to_string()
}

/// Decodes a notification key once: `+` → space, then `%XX` escapes, as UTF-8.
pub fn decode_key(encoded: &str) -> Result<String, NotificationError> {
    let spaced = encoded.replace('+', " ");
    percent_encoding::percent_decode_str(&spaced)
        .decode_utf8()
        .map(|key| key.into_owned())
        .map_err(|_| bad(format!("object key {encoded:?} does not decode to UTF-8")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use weir_functions::trigger_event::encode_key;

    fn objects(body: &str) -> Vec<ObjectNotice> {
        match parse(body.as_bytes()).unwrap() {
            Notification::Objects(n) => n,
            other => panic!("expected objects, got {other:?}"),
        }
    }

    #[test]
    fn keys_are_decoded_exactly_once() {
        assert_eq!(decode_key("red+flower.jpg").unwrap(), "red flower.jpg");
        assert_eq!(decode_key("c%2B%2B/a%2Bb.jpg").unwrap(), "c++/a+b.jpg");
        assert_eq!(decode_key("100%25.jpg").unwrap(), "100%.jpg");
        assert_eq!(decode_key("100%2525.jpg").unwrap(), "100%25.jpg", "decoded once, not twice");
        assert_eq!(decode_key("inbox%2Fcaf%C3%A9+%E6%97%A5.jpg").unwrap(), "inbox/café 日.jpg");
        assert!(decode_key("bad%FF.jpg").is_err());
        for key in ["a b+c%d/é 日.jpg", "plain.jpg", "x%2By"] {
            assert_eq!(decode_key(&encode_key(key)).unwrap(), key);
        }
    }

    #[test]
    fn s3_records_and_minio() {
        let aws = r#"{"Records":[{"eventVersion":"2.1","eventSource":"aws:s3","eventTime":"2026-11-24T10:00:00.000Z",
            "eventName":"ObjectCreated:Put","s3":{"bucket":{"name":"photos"},
            "object":{"key":"inbox/red+flower.jpg","size":1024,"eTag":"abc","sequencer":"0A"}}},
            {"eventName":"ObjectRemoved:Delete","s3":{"bucket":{"name":"photos"},"object":{"key":"inbox/old.jpg"}}},
            {"eventName":"ObjectTagging:Put","s3":{"bucket":{"name":"photos"},"object":{"key":"inbox/t.jpg"}}}]}"#;
        let n = objects(aws);
        assert_eq!(n.len(), 2);
        assert_eq!(
            (n[0].key.as_str(), n[0].size, n[0].etag.as_deref()),
            ("inbox/red flower.jpg", Some(1024), Some("abc"))
        );
        assert_eq!(n[0].change, Change::Created);
        assert_eq!(n[1].change, Change::Removed);

        let minio = r#"{"EventName":"s3:ObjectCreated:Put","Key":"photos/inbox/a b.jpg","Records":[{"eventName":
            "s3:ObjectCreated:Put","eventSource":"minio:s3","s3":{"bucket":{"name":"photos"},"object":{"key":
            "inbox%2Fa+b.jpg","size":"7","eTag":"\"e1\""}}}]}"#;
        let n = objects(minio);
        assert_eq!((n[0].key.as_str(), n[0].size, n[0].etag.as_deref()), ("inbox/a b.jpg", Some(7), Some("e1")));
    }

    #[test]
    fn sns_and_eventbridge_envelopes() {
        let inner = r#"{"Records":[{"eventName":"ObjectCreated:Put","s3":{"bucket":{"name":"b"},"object":{"key":"k%25.jpg"}}}]}"#;
        let sns = serde_json::json!({"Type": "Notification", "MessageId": "1", "Message": inner}).to_string();
        assert_eq!(objects(&sns)[0].key, "k%.jpg");

        let eb = r#"{"version":"0","detail-type":"Object Created","source":"aws.s3","time":"2026-11-24T10:00:00Z",
            "detail":{"bucket":{"name":"b"},"object":{"key":"dir/x+y.jpg","size":5,"etag":"e","version-id":"v1"}}}"#;
        let n = objects(eb);
        assert_eq!((n[0].key.as_str(), n[0].version_id.as_deref()), ("dir/x y.jpg", Some("v1")));

        let test = r#"{"Service":"Amazon S3","Event":"s3:TestEvent","Bucket":"b"}"#;
        assert_eq!(parse(test.as_bytes()).unwrap(), Notification::Test);
        let wrapped_test = serde_json::json!({"Type": "Notification", "Message": test}).to_string();
        assert_eq!(parse(wrapped_test.as_bytes()).unwrap(), Notification::Test);
        let confirm = r#"{"Type":"SubscriptionConfirmation","SubscribeURL":"http://sns/confirm"}"#;
        assert!(matches!(parse(confirm.as_bytes()).unwrap(), Notification::SubscriptionConfirmation { .. }));
    }

    #[test]
    fn malformed_bodies_get_a_reason() {
        for (body, reason) in [
            ("", "empty body"),
            ("{not json", "not JSON"),
            ("[1]", "expected a JSON object"),
            (r#"{"hello":1}"#, "not an S3"),
            (r#"{"Records":{}}"#, "must be an array"),
            (r#"{"Records":[{"eventName":"ObjectCreated:Put"}]}"#, "Records[0]: missing s3"),
            (r#"{"Type":"Notification","Message":"{"}"#, "SNS `Message` is not JSON"),
            (r#"{"detail-type":"Object Created","source":"aws.ec2"}"#, "not aws.s3"),
        ] {
            let err = parse(body.as_bytes()).unwrap_err().to_string();
            assert!(err.contains(reason), "{body}: {err}");
        }
    }
}
