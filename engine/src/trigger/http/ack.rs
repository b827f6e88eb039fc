//! How a request's event is acknowledged: its answer computed once, kept in the
//! ledger when someone may ask again (an `Idempotency-Key`, `GET /v1/events/{id}`),
//! its ledger entry recorded (async), its kept body removed, and the waiting request
//! (sync) handed the answer.

use std::sync::{Arc, Mutex};

use tokio::sync::oneshot;

use super::answer::Answer;
use super::request::HttpWork;
use super::spool::Spool;
use crate::event::{Acknowledge, Event, LedgerAck, Outcome};
use crate::state::Ledger;

pub struct HttpAck {
    pub work: Arc<HttpWork>,
    pub ledger: Ledger,
    /// Keep the answer in the ledger.
    pub keep_answer: bool,
    /// Async: the request's copy in the state directory, removed once finished.
    pub spool: Option<Arc<Spool>>,
    /// Sync: the request waiting.
    pub waiter: Mutex<Option<oneshot::Sender<Answer>>>,
}

#[async_trait::async_trait]
impl Acknowledge for HttpAck {
    async fn ack(&self, event: &Event, outcome: Outcome) {
        let failure = self.work.failure.lock().unwrap_or_else(|p| p.into_inner()).take();
        let answer = Answer::of(&self.work.id, outcome, self.work.outputs.take(), failure);
        if outcome != Outcome::Abandoned {
            if self.keep_answer {
                if let Err(e) = self.ledger.answer_request(&event.pipeline, &self.work.id, answer.stored()).await {
                    tracing::warn!(pipeline = %event.pipeline, id = %self.work.id, error = %e, "cannot keep a request's answer");
                }
            }
            // The one place ledger entries are written; then the kept body can go.
            LedgerAck::new(self.ledger.clone(), None).ack(event, outcome).await;
            if let Some(spool) = &self.spool {
                spool.remove(&self.work.id).await;
            }
        } else if self.spool.is_none() && self.keep_answer {
            // A sync request cut short: its key is free for the client's retry.
            let _ = self.ledger.release_request(&event.pipeline, &self.work.id).await;
        }
        if let Some(waiter) = self.waiter.lock().unwrap_or_else(|p| p.into_inner()).take() {
            let _ = waiter.send(answer);
        }
    }
}
