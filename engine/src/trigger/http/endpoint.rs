//! The door requests come in by: credentials, limits, idempotency, then the event —
//! answered when it finished (sync) or at once with its id (async).

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use axum::body::Body;
use axum::http::{header, HeaderMap, HeaderValue};
use axum::response::Response;
use tokio::sync::{mpsc::error::TrySendError, oneshot, watch};
use tokio_util::sync::CancellationToken;

use super::ack::HttpAck;
use super::answer::Answer;
use super::config::{HttpConfig, Mode};
use super::request::{HttpWork, Request};
use super::spool::{self, Spool};
use super::LEDGER_URL;
use crate::auth::PushAuth;
use crate::error::EngineError;
use crate::event::{Event, EventSink};
use crate::state::Claim;
use crate::trigger::{Endpoint, TriggerContext};

/// A client must send its body within this.
const BODY_TIMEOUT: Duration = Duration::from_secs(30);
/// How often answers older than the idempotency window are pruned.
const PRUNE_EVERY: Duration = Duration::from_secs(3600);
/// Longest `Idempotency-Key` taken (Stripe's limit).
const MAX_KEY: usize = 255;
/// How long a request waits for a trigger that is starting.
const STARTUP_WAIT: Duration = Duration::from_secs(5);

pub struct HttpEndpoint {
    config: HttpConfig,
    ctx: TriggerContext,
    spool: Arc<Spool>,
    running: watch::Sender<Door>,
}

/// Whether requests can be taken.
#[derive(Clone)]
enum Door {
    /// The engine started, the trigger not yet (or it restarts after a failure):
    /// requests wait for it, up to [`STARTUP_WAIT`].
    Starting,
    Open(EventSink, CancellationToken),
    Closed,
}

impl HttpEndpoint {
    pub fn new(config: HttpConfig, ctx: TriggerContext) -> Self {
        let state_dir = ctx.ledger.path().parent().map(|p| p.to_path_buf()).unwrap_or_default();
        let spool = Arc::new(Spool::new(&state_dir, &ctx.pipeline));
        Self { config, ctx, spool, running: watch::Sender::new(Door::Starting) }
    }

    /// Runs the requests kept from before (accepted, never finished), then opens the
    /// door until `stop`.
    pub async fn run(&self, sink: EventSink, stop: CancellationToken) -> Result<(), EngineError> {
        let pipeline = &self.ctx.pipeline;
        for id in self
            .spool
            .pending()
            .await
            .map_err(|e| EngineError::transient(format!("{pipeline}: cannot read kept requests: {e}")))?
        {
            if self.ctx.ledger.object_seen(pipeline, LEDGER_URL, &id, "").await? {
                // Finished, acknowledged, then killed before the file went.
                self.spool.remove(&id).await;
                continue;
            }
            let work = match self.spool.read(&id).await.map_err(|e| e.to_string()).and_then(|bytes| {
                let record = serde_json::from_slice(&bytes).map_err(|e| e.to_string())?;
                HttpWork::revive(&record, true)
            }) {
                Ok(work) => Arc::new(work),
                Err(why) => {
                    tracing::error!(pipeline = %pipeline, id = %id, error = %why, "a kept request cannot be read; set aside");
                    self.spool.set_aside(&id).await;
                    continue;
                }
            };
            let event = self.event(work, true, None);
            tokio::select! {
                _ = stop.cancelled() => return Ok(()),
                sent = sink.send(event) => if sent.is_err() { return Ok(()) },
            }
        }
        self.running.send_replace(Door::Open(sink, stop.clone()));
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tokio::time::sleep(PRUNE_EVERY) => {
                    if let Err(e) = self.ctx.ledger.prune_requests(pipeline, self.config.idempotency_window).await {
                        tracing::warn!(pipeline = %pipeline, error = %e, "cannot prune old requests");
                    }
                }
            }
        }
        self.running.send_replace(Door::Closed);
        Ok(())
    }

    /// `keep_answer`: someone may ask again (async, or an `Idempotency-Key`).
    fn event(&self, work: Arc<HttpWork>, keep_answer: bool, waiter: Option<oneshot::Sender<Answer>>) -> Event {
        let durable = work.durable;
        let acker = Arc::new(HttpAck {
            work: work.clone(),
            ledger: self.ctx.ledger.clone(),
            keep_answer,
            spool: durable.then(|| self.spool.clone()),
            waiter: Mutex::new(waiter),
        });
        Event { id: work.id.clone(), pipeline: self.ctx.pipeline.clone(), work, received_at: SystemTime::now(), acker }
    }

    async fn accept(&self, request: axum::extract::Request) -> Answer {
        let pipeline = &self.ctx.pipeline;
        let (parts, body) = request.into_parts();
        if let Err(why) = self.config.auth.check(&parts.headers) {
            tracing::warn!(pipeline = %pipeline, reason = why, "request refused: not authorized");
            return unauthorized(why);
        }
        let max = self.config.max_body;
        let declared = parts.headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
        if declared.is_some_and(|n| n > max as u64) {
            return Answer::error(
                413,
                format!("body of {} bytes is over max_body = {max} bytes", declared.unwrap_or(0)),
                None,
            );
        }
        let body = match tokio::time::timeout(BODY_TIMEOUT, axum::body::to_bytes(Body::new(body), max)).await {
            Ok(Ok(body)) => body,
            Ok(Err(_)) => return Answer::error(413, format!("body over max_body = {max} bytes, or cut short"), None),
            Err(_) => return Answer::error(408, format!("body not received within {BODY_TIMEOUT:?}"), None),
        };
        if let Err(why) = self.config.auth.verify(&parts.headers, &body).await {
            tracing::warn!(pipeline = %pipeline, reason = %why, "request refused: signature");
            return unauthorized(&why);
        }
        let key = match parts.headers.get("idempotency-key").map(|v| v.to_str()) {
            None => None,
            Some(Ok(key)) if !key.is_empty() && key.len() <= MAX_KEY => Some(key.to_string()),
            Some(_) => {
                return Answer::error(
                    400,
                    format!("Idempotency-Key must be 1 to {MAX_KEY} visible ASCII characters"),
                    None,
                )
            }
        };
        let mut door = self.running.subscribe();
        let door = match tokio::time::timeout(STARTUP_WAIT, door.wait_for(|d| !matches!(d, Door::Starting))).await {
            Ok(Ok(door)) => door.clone(),
            _ => return Answer::error(503, "the pipeline is starting", None),
        };
        let Door::Open(sink, stop) = door else {
            return Answer::error(503, "the pipeline is stopping", None);
        };
        if stop.is_cancelled() {
            return Answer::error(503, "the pipeline is stopping", None);
        }
        let durable = self.config.mode == Mode::Async;
        let id = uuid::Uuid::now_v7().to_string();
        if durable || key.is_some() {
            let claim =
                self.ctx.ledger.claim_request(pipeline, &id, key.as_deref(), self.config.idempotency_window).await;
            match claim {
                Ok(Claim::New) => {}
                Ok(Claim::Taken(first)) => return replay(durable, first),
                Err(e) => {
                    tracing::error!(pipeline = %pipeline, error = %e, "cannot record a request");
                    return Answer::error(503, "the ledger is not available", None);
                }
            }
        }
        let work = Arc::new(HttpWork::new(id.clone(), Arc::new(Request::new(&id, &parts, body)), durable));
        let refused = |answer: Answer| async {
            if durable || key.is_some() {
                let _ = self.ctx.ledger.release_request(pipeline, &id).await;
            }
            answer
        };
        if durable {
            let record = serde_json::to_vec(&crate::event::Work::record(&*work)).unwrap_or_default();
            if let Err(e) = self.spool.put(&id, record).await {
                tracing::error!(pipeline = %pipeline, error = %e, "cannot keep a request in the state directory");
                return refused(Answer::error(503, "cannot keep the request", None)).await;
            }
            if let Err(full) = sink.try_send(self.event(work, true, None)) {
                self.spool.remove(&id).await;
                return refused(busy(*full)).await;
            }
            let mut answer = Answer::json(202, serde_json::json!({ "id": id, "status": format!("/v1/events/{id}") }));
            answer.headers.push(("location".into(), format!("/v1/events/{id}")));
            return answer;
        }
        let (tx, rx) = oneshot::channel();
        if let Err(full) = sink.try_send(self.event(work, key.is_some(), Some(tx))) {
            return refused(busy(*full)).await;
        }
        match tokio::time::timeout(self.config.timeout, rx).await {
            Ok(Ok(answer)) => answer,
            Ok(Err(_)) => Answer::error(503, "the event ended without an answer", Some(&id)),
            Err(_) => Answer::error(
                504,
                format!("no answer within {:?}; the event goes on (GET /v1/events/{id})", self.config.timeout),
                Some(&id),
            ),
        }
    }
}

fn unauthorized(why: &str) -> Answer {
    let mut answer = Answer::error(401, why, None);
    answer.headers.push(("www-authenticate".into(), "Bearer".into()));
    answer
}

/// The queue had no room (429), or the executor is gone (503).
fn busy(refused: TrySendError<Event>) -> Answer {
    match refused {
        TrySendError::Full(_) => Answer::error(429, "the pipeline's queue is full", None),
        TrySendError::Closed(_) => Answer::error(503, "the pipeline is stopping", None),
    }
}

/// A request whose `Idempotency-Key` came before: the first one's answer (sync), its
/// event (async), or `409` while the first is still running.
fn replay(durable: bool, first: crate::state::RequestRow) -> Answer {
    let mut answer = match (first.answer, durable) {
        (_, true) => {
            let mut answer =
                Answer::json(202, serde_json::json!({ "id": first.id, "status": format!("/v1/events/{}", first.id) }));
            answer.headers.push(("location".into(), format!("/v1/events/{}", first.id)));
            answer
        }
        (Some(stored), false) => Answer::from_stored(stored),
        (None, false) => Answer::error(409, "a request with this Idempotency-Key is still running", Some(&first.id)),
    };
    answer.headers.push(("idempotent-replayed".into(), "true".into()));
    answer
}

#[async_trait::async_trait]
impl Endpoint for HttpEndpoint {
    fn auth(&self) -> &PushAuth {
        &self.config.auth
    }

    fn path(&self) -> Option<&str> {
        self.config.path.as_deref()
    }

    async fn call(&self, request: axum::extract::Request) -> Response {
        let mut response = self.accept(request).await.into_response();
        response.headers_mut().insert(
            "x-weir-pipeline",
            HeaderValue::from_str(&self.ctx.pipeline).unwrap_or(HeaderValue::from_static("?")),
        );
        response
    }

    async fn event(&self, id: &str, headers: &HeaderMap) -> Option<Response> {
        if !spool::is_id(id) {
            return None;
        }
        let ledger = &self.ctx.ledger;
        let row = ledger.request(&self.ctx.pipeline, id).await.ok().flatten();
        let kept = self.spool.contains(id);
        if row.is_none() && !kept {
            return None;
        }
        // Webhook senders sign bodies; a status request has none, so it signs the id.
        let authorized = self.config.auth.check(headers).map_err(str::to_string);
        if let Err(why) = match authorized {
            Ok(()) => self.config.auth.verify(headers, id.as_bytes()).await,
            Err(why) => Err(why),
        } {
            return Some(unauthorized(&why).into_response());
        }
        let run = ledger.run_status(id).await.ok().flatten();
        let state = match (&row, kept, run.as_deref()) {
            (Some(crate::state::RequestRow { answer: Some(_), .. }), _, Some("dead_letter")) => "dead_lettered",
            (Some(crate::state::RequestRow { answer: Some(_), .. }), _, _) => "done",
            (_, _, Some("running")) => "running",
            _ => "queued",
        };
        let mut body = serde_json::json!({ "id": id, "pipeline": &*self.ctx.pipeline, "state": state });
        if let Some(answer) = row.and_then(|r| r.answer).map(Answer::from_stored) {
            body["status"] = answer.status.into();
            body["output"] = match serde_json::from_slice::<serde_json::Value>(&answer.body) {
                Ok(json) => json,
                Err(_) => serde_json::json!({ "bytes": answer.body.len(), "headers": answer.headers }),
            };
        }
        Some(Answer::json(200, body).into_response())
    }
}
