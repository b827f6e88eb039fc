//! HTTP requests in the ledger: which event an `Idempotency-Key` started, and the
//! answer a finished request gave, so a retried request gets the first one's answer
//! (Stripe's and AWS Lambda Powertools' idempotency) and `GET /v1/events/{id}` can
//! say how an accepted request ended. Rows older than the pipeline's idempotency
//! window are pruned.

use rusqlite::{params, OptionalExtension};

use super::{Ledger, LedgerError};

/// A finished request's answer, as sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredAnswer {
    pub status: u16,
    /// The response's headers, as JSON (the HTTP trigger's business).
    pub headers: String,
    pub body: Vec<u8>,
}

/// A request recorded in the ledger.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestRow {
    pub id: String,
    /// None until the request's event finished (done or dead-lettered).
    pub answer: Option<StoredAnswer>,
}

/// What [`Ledger::claim_request`] found.
#[derive(Debug, PartialEq, Eq)]
pub enum Claim {
    /// The key is new (or its row older than the window): recorded for this request.
    New,
    /// A request with the same key came first.
    Taken(RequestRow),
}

fn now() -> f64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or_default()
}

fn row(r: &rusqlite::Row<'_>) -> rusqlite::Result<RequestRow> {
    let status: Option<u16> = r.get(1)?;
    Ok(RequestRow {
        id: r.get(0)?,
        answer: match status {
            Some(status) => Some(StoredAnswer { status, headers: r.get(2)?, body: r.get(3)? }),
            None => None,
        },
    })
}

impl Ledger {
    /// Records request `id` of `pipeline` under `key` (an `Idempotency-Key`, or none),
    /// unless a request with that key was recorded less than `window` ago.
    pub async fn claim_request(
        &self,
        pipeline: &str,
        id: &str,
        key: Option<&str>,
        window: std::time::Duration,
    ) -> Result<Claim, LedgerError> {
        let (pipeline, id, key) = (pipeline.to_owned(), id.to_owned(), key.map(str::to_owned));
        let oldest = now() - window.as_secs_f64();
        self.with(move |c| {
            if let Some(key) = &key {
                c.execute(
                    "DELETE FROM http_requests WHERE pipeline = ?1 AND idempotency_key = ?2 AND created_at < ?3",
                    params![pipeline, key, oldest],
                )?;
                let first = c
                    .query_row(
                        "SELECT id, status, headers, body FROM http_requests
                         WHERE pipeline = ?1 AND idempotency_key = ?2",
                        params![pipeline, key],
                        row,
                    )
                    .optional()?;
                if let Some(first) = first {
                    return Ok(Claim::Taken(first));
                }
            }
            c.execute(
                "INSERT OR REPLACE INTO http_requests (pipeline, id, idempotency_key, created_at) VALUES (?1, ?2, ?3, ?4)",
                params![pipeline, id, key, now()],
            )?;
            Ok(Claim::New)
        })
        .await
    }

    /// Lets request `id` go unrecorded (it was refused before it ran: a full queue),
    /// so a retry with the same key runs.
    pub async fn release_request(&self, pipeline: &str, id: &str) -> Result<(), LedgerError> {
        let (pipeline, id) = (pipeline.to_owned(), id.to_owned());
        self.with(move |c| {
            c.execute("DELETE FROM http_requests WHERE pipeline = ?1 AND id = ?2", params![pipeline, id]).map(|_| ())
        })
        .await
    }

    /// Stores how request `id` was answered (recording it if it was not yet, as a
    /// request accepted just before a crash).
    pub async fn answer_request(&self, pipeline: &str, id: &str, answer: StoredAnswer) -> Result<(), LedgerError> {
        let (pipeline, id) = (pipeline.to_owned(), id.to_owned());
        self.with(move |c| {
            c.execute(
                "INSERT INTO http_requests (pipeline, id, created_at, status, headers, body)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                 ON CONFLICT (pipeline, id) DO UPDATE SET status = excluded.status,
                 headers = excluded.headers, body = excluded.body",
                params![pipeline, id, now(), answer.status, answer.headers, answer.body],
            )
            .map(|_| ())
        })
        .await
    }

    /// Request `id` of `pipeline`, if recorded.
    pub async fn request(&self, pipeline: &str, id: &str) -> Result<Option<RequestRow>, LedgerError> {
        let (pipeline, id) = (pipeline.to_owned(), id.to_owned());
        self.with(move |c| {
            c.query_row(
                "SELECT id, status, headers, body FROM http_requests WHERE pipeline = ?1 AND id = ?2",
                params![pipeline, id],
                row,
            )
            .optional()
        })
        .await
    }

    /// The status of run `id` in the runs table (`running`, `done`, `dead_letter`…).
    pub async fn run_status(&self, id: &str) -> Result<Option<String>, LedgerError> {
        let id = id.to_owned();
        self.with(move |c| c.query_row("SELECT status FROM runs WHERE id = ?1", params![id], |r| r.get(0)).optional())
            .await
    }

    /// Forgets `pipeline`'s requests older than `window`; returns how many.
    pub async fn prune_requests(&self, pipeline: &str, window: std::time::Duration) -> Result<usize, LedgerError> {
        let pipeline = pipeline.to_owned();
        let oldest = now() - window.as_secs_f64();
        self.with(move |c| {
            c.execute(
                "DELETE FROM http_requests WHERE pipeline = ?1 AND created_at < ?2 AND status IS NOT NULL",
                params![pipeline, oldest],
            )
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn a_key_is_claimed_once_within_its_window_and_answers_are_kept() {
        let dir = tempfile::tempdir().unwrap();
        let ledger = Ledger::open(dir.path()).unwrap();
        let day = Duration::from_secs(86_400);
        assert_eq!(ledger.claim_request("p", "a", Some("k1"), day).await.unwrap(), Claim::New);
        let Claim::Taken(first) = ledger.claim_request("p", "b", Some("k1"), day).await.unwrap() else {
            panic!("the key was taken")
        };
        assert_eq!((first.id.as_str(), first.answer), ("a", None));
        assert_eq!(ledger.claim_request("other", "c", Some("k1"), day).await.unwrap(), Claim::New, "per pipeline");
        let answer = StoredAnswer { status: 200, headers: "[]".into(), body: vec![0xFF, 0xD8] };
        ledger.answer_request("p", "a", answer.clone()).await.unwrap();
        let Claim::Taken(first) = ledger.claim_request("p", "d", Some("k1"), day).await.unwrap() else { panic!() };
        assert_eq!(first.answer, Some(answer));
        // Past the window the key is free again.
        assert_eq!(ledger.claim_request("p", "e", Some("k1"), Duration::ZERO).await.unwrap(), Claim::New);
        ledger.release_request("p", "e").await.unwrap();
        assert_eq!(ledger.request("p", "e").await.unwrap(), None);
        // Requests without a key never collide.
        assert_eq!(ledger.claim_request("p", "f", None, day).await.unwrap(), Claim::New);
        assert_eq!(ledger.claim_request("p", "g", None, day).await.unwrap(), Claim::New);
    }
}
