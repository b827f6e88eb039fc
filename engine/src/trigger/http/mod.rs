//! `kind = "http"`: each request to `POST /v1/invoke/{pipeline}` (or the pipeline's own
//! `path`) is an event, in Lambda's function-URL shape.
//!
//! * `mode = "sync"` answers with the last step's output, like a function URL;
//!   failures map to statuses ([`answer`]).
//! * `mode = "async"` answers `202 {"id"}` once the request is kept in the state
//!   directory ([`spool`]); `GET /v1/events/{id}` says how it is going. A kill -9 loses
//!   no accepted request: kept requests run again at start-up until acknowledged.
//!
//! Requests are refused at once, never queued without bound: `429` with `Retry-After`
//! when the pipeline's queue is full, `413` over `max_body`. An `Idempotency-Key`
//! binds a request to the first one sent with it, through the ledger.

mod ack;
mod answer;
mod config;
mod endpoint;
mod request;
mod spool;

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use super::{Endpoint, Trigger, TriggerContext, TriggerKind, TriggerSpec};
use crate::config::diagnostics::Reporter;
use crate::error::EngineError;
use crate::event::{EventSink, Work};
pub use config::{HttpConfig, Mode, RawConfig};
use endpoint::HttpEndpoint;
use request::HttpWork;

/// The ledger's "bucket" for accepted (async) requests, keyed by event id.
pub const LEDGER_URL: &str = "http:";

/// `kind = "http"`.
pub struct HttpKind;

impl TriggerKind for HttpKind {
    const NAME: &'static str = "http";
    type Raw = RawConfig;
    type Config = HttpConfig;

    fn validate(raw: RawConfig, report: &mut Reporter<'_>) -> Option<HttpConfig> {
        raw.validate(report)
    }
}

impl TriggerSpec for HttpConfig {
    fn kind(&self) -> &'static str {
        HttpKind::NAME
    }

    fn check(&self, pipeline: &super::PipelineFacts<'_>, report: &mut Reporter<'_>) {
        self.check_credential(pipeline.trigger_span.clone(), report);
    }

    fn push_auth(&self) -> Option<&crate::auth::PushAuth> {
        Some(&self.auth)
    }

    fn build(&self, ctx: TriggerContext) -> Arc<dyn Trigger> {
        Arc::new(HttpTrigger { endpoint: Arc::new(HttpEndpoint::new(self.clone(), ctx)) })
    }

    fn revive(&self, record: &serde_json::Value) -> Result<Arc<dyn Work>, String> {
        HttpWork::revive(record, false).map(|work| Arc::new(work) as Arc<dyn Work>)
    }
}

struct HttpTrigger {
    endpoint: Arc<HttpEndpoint>,
}

#[async_trait::async_trait]
impl Trigger for HttpTrigger {
    async fn run(self: Arc<Self>, sink: EventSink, stop: CancellationToken) -> Result<(), EngineError> {
        self.endpoint.run(sink, stop).await
    }

    fn endpoint(self: Arc<Self>) -> Option<Arc<dyn Endpoint>> {
        Some(self.endpoint.clone())
    }
}
