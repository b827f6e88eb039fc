//! What a request is answered with, as a Lambda function URL would answer: the last
//! step's output (a JPEG, a JSON document; or a Lambda-style `{"statusCode", "headers",
//! "body"}`), or an error mapped to a status: `400` when the input is at fault, `503`
//! with `Retry-After` when trying again may work, `504` when a step timed out.

use axum::http::{header, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use bytes::Bytes;
use weir_functions::{ErrorKind, Item, Payload};

use super::request::Failure;
use crate::event::{Kept, Outcome};
use crate::state::StoredAnswer;

/// Seconds a client is asked to wait before trying again.
pub const RETRY_AFTER_SECS: u64 = 1;

/// A response, in a form the ledger can keep for an idempotent retry.
#[derive(Debug, Clone, PartialEq)]
pub struct Answer {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Bytes,
}

impl Answer {
    fn new(status: u16, content_type: &str, body: impl Into<Bytes>) -> Self {
        Self { status, headers: vec![("content-type".into(), content_type.into())], body: body.into() }
    }

    pub fn json(status: u16, value: serde_json::Value) -> Self {
        Self::new(status, "application/json", value.to_string())
    }

    /// An error: a JSON body naming it, and `Retry-After` for statuses worth a retry.
    pub fn error(status: u16, message: impl Into<String>, id: Option<&str>) -> Self {
        let mut answer = Self::json(status, serde_json::json!({ "error": message.into(), "id": id }));
        if matches!(status, 429 | 503) {
            answer.headers.push(("retry-after".into(), RETRY_AFTER_SECS.to_string()));
        }
        answer
    }

    /// How a finished event is answered.
    pub fn of(id: &str, outcome: Outcome, kept: Kept, failure: Option<Failure>) -> Self {
        match (outcome, failure) {
            (Outcome::Done, _) => Self::outputs(kept),
            (Outcome::DeadLettered, Some(f)) => {
                let status = match f.kind {
                    _ if f.timed_out => 504,
                    ErrorKind::Permanent => 400,
                    ErrorKind::Retryable | ErrorKind::Unavailable => 503,
                };
                let mut answer = Self::error(status, "", Some(id));
                let body = serde_json::json!({ "error": f.message, "step": f.step, "kind": f.kind, "id": id });
                answer.body = body.to_string().into();
                answer
            }
            (Outcome::DeadLettered, None) => Self::error(500, "the event failed", Some(id)),
            (Outcome::Abandoned, _) => Self::error(503, "weir stopped before the request was answered", Some(id)),
        }
    }

    /// The last steps' outputs: one is the answer itself, several a JSON list of them.
    fn outputs(kept: Kept) -> Self {
        let Kept { mut items, cut, .. } = kept;
        if items.len() == 1 && cut == 0 {
            return Self::item(items.remove(0));
        }
        let outputs: Vec<serde_json::Value> = items.iter().map(describe).collect();
        Self::json(200, serde_json::json!({ "outputs": outputs }))
    }

    fn item(item: Item) -> Self {
        match item.payload {
            Payload::Empty => Self { status: 204, headers: Vec::new(), body: Bytes::new() },
            Payload::Bytes(bytes) => {
                let ct = item.meta.content_type.as_deref().unwrap_or("application/octet-stream");
                Self::new(200, ct, bytes)
            }
            Payload::Json(value) => lambda_response(&value).unwrap_or_else(|| Self::json(200, value)),
            Payload::Image(_) => Self::error(
                500,
                "the last step returned decoded pixels: end the pipeline with a step that encodes them",
                None,
            ),
            Payload::Collection(items) => {
                Self::json(200, serde_json::json!({ "outputs": items.iter().map(describe).collect::<Vec<_>>() }))
            }
        }
    }

    pub fn stored(&self) -> StoredAnswer {
        StoredAnswer {
            status: self.status,
            headers: serde_json::to_string(&self.headers).unwrap_or_default(),
            body: self.body.to_vec(),
        }
    }

    pub fn from_stored(stored: StoredAnswer) -> Self {
        Self {
            status: stored.status,
            headers: serde_json::from_str(&stored.headers).unwrap_or_default(),
            body: stored.body.into(),
        }
    }

    pub fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut response = (status, self.body).into_response();
        for (name, value) in self.headers {
            if let (Ok(name), Ok(value)) = (name.parse::<HeaderName>(), HeaderValue::from_str(&value)) {
                if name == header::SET_COOKIE {
                    response.headers_mut().append(name, value);
                } else {
                    response.headers_mut().insert(name, value);
                }
            }
        }
        if status == StatusCode::NO_CONTENT {
            response.headers_mut().remove(header::CONTENT_TYPE);
        }
        response
    }
}

/// An output in a list: JSON as it is, anything else by its facts.
fn describe(item: &Item) -> serde_json::Value {
    match &item.payload {
        Payload::Json(value) => value.clone(),
        other => serde_json::json!({
            "key": item.meta.key,
            "variant": item.meta.variant,
            "content_type": item.meta.content_type,
            "kind": other.kind(),
            "bytes": match other { Payload::Bytes(b) => Some(b.len()), _ => None },
        }),
    }
}

/// A function's JSON in the shape Lambda function URLs turn into a response:
/// `{"statusCode": 201, "headers": {...}, "body": "...", "isBase64Encoded": false}`.
fn lambda_response(value: &serde_json::Value) -> Option<Answer> {
    let status = value.get("statusCode")?.as_u64().filter(|s| (100..=599).contains(s))? as u16;
    let mut headers: Vec<(String, String)> = value
        .get("headers")
        .and_then(|h| h.as_object())
        .map(|h| h.iter().filter_map(|(k, v)| Some((k.to_ascii_lowercase(), v.as_str()?.to_string()))).collect())
        .unwrap_or_default();
    let body = match value.get("body") {
        None | Some(serde_json::Value::Null) => Bytes::new(),
        Some(serde_json::Value::String(text)) if value.get("isBase64Encoded") == Some(&true.into()) => {
            base64::engine::general_purpose::STANDARD.decode(text).ok()?.into()
        }
        Some(serde_json::Value::String(text)) => Bytes::from(text.clone()),
        Some(other) => Bytes::from(other.to_string()),
    };
    if !headers.iter().any(|(k, _)| k == "content-type") && !body.is_empty() {
        headers.push(("content-type".into(), "application/json".into()));
    }
    Some(Answer { status, headers, body })
}

#[cfg(test)]
mod tests {
    use super::*;
    use weir_functions::Metadata;

    fn kept(items: Vec<Item>) -> Kept {
        let outputs = crate::event::Outputs::default();
        outputs.keep(&items);
        outputs.take()
    }

    fn failure(kind: ErrorKind, timed_out: bool) -> Option<Failure> {
        Some(Failure { step: "s".into(), kind, timed_out, message: "why".into() })
    }

    #[test]
    fn every_error_class_maps_to_its_status() {
        let none = || kept(vec![]);
        assert_eq!(Answer::of("i", Outcome::DeadLettered, none(), failure(ErrorKind::Permanent, false)).status, 400);
        let retry = Answer::of("i", Outcome::DeadLettered, none(), failure(ErrorKind::Retryable, false));
        assert_eq!(retry.status, 503);
        assert!(retry.headers.contains(&("retry-after".into(), "1".into())));
        assert_eq!(Answer::of("i", Outcome::DeadLettered, none(), failure(ErrorKind::Unavailable, false)).status, 503);
        assert_eq!(Answer::of("i", Outcome::DeadLettered, none(), failure(ErrorKind::Retryable, true)).status, 504);
        assert_eq!(Answer::of("i", Outcome::Abandoned, none(), None).status, 503);
        let body: serde_json::Value = serde_json::from_slice(
            &Answer::of("i", Outcome::DeadLettered, none(), failure(ErrorKind::Permanent, false)).body,
        )
        .unwrap();
        assert_eq!(
            (body["error"].as_str(), body["step"].as_str(), body["kind"].as_str()),
            (Some("why"), Some("s"), Some("permanent"))
        );
    }

    #[test]
    fn one_output_is_the_answer_several_a_list_and_lambda_shapes_are_honoured() {
        let meta = Metadata { content_type: Some("image/jpeg".into()), ..Metadata::default() };
        let jpeg = Item::new(Payload::Bytes(Bytes::from_static(b"\xFF\xD8")), meta);
        let one = Answer::of("i", Outcome::Done, kept(vec![jpeg.clone()]), None);
        assert_eq!((one.status, one.body.as_ref()), (200, &b"\xFF\xD8"[..]));
        assert!(one.headers.contains(&("content-type".into(), "image/jpeg".into())));
        let json = Item::new(Payload::Json(serde_json::json!({"key": "a"})), Metadata::default());
        let two = Answer::of("i", Outcome::Done, kept(vec![json.clone(), jpeg]), None);
        let body: serde_json::Value = serde_json::from_slice(&two.body).unwrap();
        assert_eq!(body["outputs"][0]["key"], "a");
        assert_eq!(body["outputs"][1]["bytes"], 2);
        let lambda =
            serde_json::json!({"statusCode": 201, "headers": {"X-A": "b"}, "body": "aGk=", "isBase64Encoded": true});
        let made =
            Answer::of("i", Outcome::Done, kept(vec![Item::new(Payload::Json(lambda), Metadata::default())]), None);
        assert_eq!((made.status, made.body.as_ref()), (201, &b"hi"[..]));
        assert!(made.headers.contains(&("x-a".into(), "b".into())));
        assert_eq!(Answer::of("i", Outcome::Done, kept(vec![]), None).status, 200);
        assert_eq!(Answer::from_stored(one.stored()), one);
    }
}
