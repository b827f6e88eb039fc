//! One HTTP request as an event: the Lambda function-URL event functions see, the
//! item the first step gets (the body), and the record its dead letter and its copy
//! in the state directory keep.

use std::sync::{Arc, Mutex};

use axum::http::request::Parts;
use base64::Engine as _;
use bytes::Bytes;
use weir_functions::trigger_event::LambdaFunctionUrlRequest;
use weir_functions::{ErrorKind, FunctionError, Item, LazyEvent, Metadata, Payload, TriggerEvent};

use super::LEDGER_URL;
use crate::event::{Event, LedgerEntry, Outputs, Ran, Runner, Scope, StepFailure, Work};

/// A request, kept as Lambda would hand it over, with its body as sent.
pub struct Request {
    /// The function-URL event, less its body (see [`Request::lambda_event`]).
    head: LambdaFunctionUrlRequest,
    pub body: Bytes,
}

impl Request {
    pub fn new(id: &str, parts: &Parts, body: Bytes) -> Self {
        let mut head = LambdaFunctionUrlRequest::default();
        head.version = Some("2.0".into());
        head.raw_path = Some(parts.uri.path().to_string());
        head.raw_query_string = Some(parts.uri.query().unwrap_or_default().to_string());
        head.headers = parts.headers.clone();
        // weir's own credential is no business of the function's, and must not reach
        // dead letters or the kept copy of the request.
        head.headers.remove(axum::http::header::AUTHORIZATION);
        head.headers.remove(axum::http::header::PROXY_AUTHORIZATION);
        head.cookies = {
            let cookies: Vec<String> = parts
                .headers
                .get_all(axum::http::header::COOKIE)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .flat_map(|v| v.split(';').map(|c| c.trim().to_string()))
                .filter(|c| !c.is_empty())
                .collect();
            (!cookies.is_empty()).then_some(cookies)
        };
        head.query_string_parameters = url::form_urlencoded::parse(parts.uri.query().unwrap_or_default().as_bytes())
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect();
        let now = chrono::Utc::now();
        let context = &mut head.request_context;
        context.account_id = Some("anonymous".into());
        context.request_id = Some(id.to_string());
        context.domain_name =
            parts.headers.get(axum::http::header::HOST).and_then(|h| h.to_str().ok()).map(str::to_string);
        context.time = Some(now.format("%d/%b/%Y:%H:%M:%S %z").to_string());
        context.time_epoch = now.timestamp_millis();
        context.http.method = Some(parts.method.to_string());
        context.http.path = Some(parts.uri.path().to_string());
        context.http.protocol = Some(format!("{:?}", parts.version));
        context.http.user_agent =
            parts.headers.get(axum::http::header::USER_AGENT).and_then(|h| h.to_str().ok()).map(str::to_string);
        Self { head, body }
    }

    pub fn content_type(&self) -> Option<&str> {
        self.head.headers.get(axum::http::header::CONTENT_TYPE).and_then(|v| v.to_str().ok())
    }

    pub fn method(&self) -> &str {
        self.head.request_context.http.method.as_deref().unwrap_or("POST")
    }

    pub fn path(&self) -> &str {
        self.head.raw_path.as_deref().unwrap_or("/")
    }

    /// The event as a function URL delivers it: the body as text when it is text,
    /// base64 otherwise.
    pub fn lambda_event(&self) -> LambdaFunctionUrlRequest {
        let mut event = self.head.clone();
        match std::str::from_utf8(&self.body) {
            Ok(text) if textual(self.content_type()) => {
                event.body = Some(text.to_string());
                event.is_base64_encoded = false;
            }
            _ if self.body.is_empty() => event.body = None,
            _ => {
                event.body = Some(base64::engine::general_purpose::STANDARD.encode(&self.body));
                event.is_base64_encoded = true;
            }
        }
        event
    }

    /// Back from [`Request::lambda_event`]'s JSON.
    pub fn from_lambda_event(value: &serde_json::Value) -> Result<Self, String> {
        let mut head: LambdaFunctionUrlRequest =
            serde_json::from_value(value.clone()).map_err(|e| format!("not a function URL event: {e}"))?;
        let body = match head.body.take() {
            None => Bytes::new(),
            Some(b) if head.is_base64_encoded => base64::engine::general_purpose::STANDARD
                .decode(b)
                .map(Bytes::from)
                .map_err(|e| format!("body is not base64: {e}"))?,
            Some(text) => Bytes::from(text),
        };
        head.is_base64_encoded = false;
        Ok(Self { head, body })
    }
}

/// Bodies a function URL hands over as text rather than base64.
fn textual(content_type: Option<&str>) -> bool {
    let Some(ct) = content_type else { return false };
    let ct = ct.split(';').next().unwrap_or_default().trim().to_ascii_lowercase();
    ct.starts_with("text/")
        || ct.ends_with("json")
        || ct.ends_with("+xml")
        || ct == "application/xml"
        || ct == "application/x-www-form-urlencoded"
        || ct == "application/javascript"
}

/// The file extension a content type usually has, so that functions which go by a
/// key's extension (`table.convert` reading `.csv`) see the right one.
fn extension(content_type: Option<&str>) -> Option<&'static str> {
    let ct = content_type?.split(';').next()?.trim().to_ascii_lowercase();
    Some(match ct.as_str() {
        "image/jpeg" | "image/jpg" => "jpg",
        "image/png" => "png",
        "image/webp" => "webp",
        "image/gif" => "gif",
        "application/json" => "json",
        "application/x-ndjson" | "application/jsonl" | "application/jsonlines" => "jsonl",
        "text/csv" => "csv",
        "text/plain" => "txt",
        "application/zip" => "zip",
        "application/gzip" | "application/x-gzip" => "gz",
        "application/x-tar" => "tar",
        "application/vnd.apache.parquet" | "application/x-parquet" => "parquet",
        _ => return None,
    })
}

/// Why an event failed, kept for the request waiting on it.
#[derive(Debug, Clone)]
pub struct Failure {
    pub step: String,
    pub kind: ErrorKind,
    pub timed_out: bool,
    pub message: String,
}

impl From<&StepFailure> for Failure {
    fn from(f: &StepFailure) -> Self {
        Self { step: f.step.clone(), kind: f.error.kind, timed_out: f.error.is_timeout(), message: f.error.chain() }
    }
}

/// A request as work for the pipeline.
pub struct HttpWork {
    pub id: String,
    pub request: Arc<Request>,
    /// Accepted for later (async): acknowledged in the ledger under [`LEDGER_URL`].
    pub durable: bool,
    /// The last steps' outputs, for the answer.
    pub outputs: Arc<Outputs>,
    pub failure: Mutex<Option<Failure>>,
}

impl HttpWork {
    pub fn new(id: String, request: Arc<Request>, durable: bool) -> Self {
        Self { id, request, durable, outputs: Default::default(), failure: Mutex::new(None) }
    }

    /// The work a dead-letter record or a request kept in the state directory stands for.
    pub fn revive(record: &serde_json::Value, durable: bool) -> Result<Self, String> {
        if record.get("type").and_then(|t| t.as_str()) != Some("http") {
            return Err("not an http request".into());
        }
        let id = record.get("id").and_then(|i| i.as_str()).ok_or("an http request without `id`")?;
        let request = Request::from_lambda_event(record.get("request").unwrap_or(&serde_json::Value::Null))?;
        Ok(Self::new(id.to_string(), Arc::new(request), durable))
    }

    fn item(&self) -> Item {
        let ext = extension(self.request.content_type());
        let key = match ext {
            Some(ext) => format!("{}.{ext}", self.id),
            None => self.id.clone(),
        };
        let mut meta = Metadata { key: Some(key), ..Metadata::default() };
        meta.content_type = self.request.content_type().map(str::to_string);
        meta.format_ext = ext.map(str::to_string);
        meta.attributes.insert("request_id".into(), self.id.clone());
        meta.attributes.insert("method".into(), self.request.method().to_string());
        meta.attributes.insert("path".into(), self.request.path().to_string());
        for (name, value) in &self.request.head.query_string_parameters {
            meta.attributes.insert(format!("query.{name}"), value.clone());
        }
        Item::new(Payload::Bytes(self.request.body.clone()), meta)
    }
}

#[async_trait::async_trait]
impl Work for HttpWork {
    fn describe(&self) -> String {
        format!("{} {} #{}", self.request.method(), self.request.path(), self.id)
    }

    fn record(&self) -> serde_json::Value {
        serde_json::json!({
            "type": "http",
            "id": self.id,
            "request": serde_json::to_value(self.request.lambda_event()).unwrap_or_default(),
        })
    }

    /// A sync request is answered to the caller, who sees its outcome: its run is
    /// recorded once, when it ends (one ledger write, not two), and its invocations
    /// log at debug level; "event done" still logs each.
    fn quiet(&self) -> bool {
        !self.durable
    }

    fn ledger_entry(&self) -> Option<LedgerEntry> {
        self.durable.then(|| LedgerEntry { url: LEDGER_URL.into(), key: self.id.clone(), version: String::new() })
    }

    async fn run(&self, runner: &dyn Runner, _event: &Event) -> Ran {
        let limit = runner.max_input_bytes();
        if self.request.body.len() as u64 > limit {
            let error = FunctionError::permanent(format!(
                "request body of {} bytes is over max_input_bytes = {limit}",
                self.request.body.len()
            ));
            let failure = StepFailure::load(error);
            *self.failure.lock().unwrap_or_else(|p| p.into_inner()) = Some((&failure).into());
            return Ran::Failed(failure);
        }
        let request = self.request.clone();
        let lambda = LazyEvent::new(move || TriggerEvent::Http(Box::new(request.lambda_event())));
        let scope = Scope::new(Some(lambda), false).keeping(self.outputs.clone());
        match runner.run(self.item(), None, &scope).await {
            Ok(n) => Ran::Done(n),
            Err(failure) => {
                *self.failure.lock().unwrap_or_else(|p| p.into_inner()) = Some((&failure).into());
                Ran::Failed(failure)
            }
        }
    }
}
