//! The state ledger: what was processed, every run, in SQLite.
//!
//! One SQLite file per state directory (`./data/.weir/ledger.db` by default), WAL mode
//! so `weir runs` can read while `weir run` writes. Calls are blocking, so every
//! method hands its work to the one thread that owns the connection ([`writer`]),
//! which commits the calls that arrive together in one transaction.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rusqlite::{params, Connection, OptionalExtension};

mod http;
mod lock;
mod replay;
mod writer;
pub use http::{Claim, RequestRow, StoredAnswer};
pub use lock::{StateLock, LOCK_FILE};
pub use replay::{ReplayRecord, ReplaySummary};

#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    #[error("ledger {path}: {source}")]
    Sqlite { path: PathBuf, source: rusqlite::Error },
    #[error("cannot create state directory {path}: {source}")]
    Dir { path: PathBuf, source: std::io::Error },
    #[error("ledger {0}: the call ended without an answer (it panicked, or the writer stopped)")]
    Stopped(PathBuf),
}

/// How an object's processing ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ObjectStatus {
    /// Accepted (listed, notified) and not finished yet. Written before a notification is
    /// answered, so a crash after the answer redelivers it on the next start.
    Pending,
    Done,
    DeadLettered,
    /// Deliberately not run (a schedule tick dropped by `overlap = "skip"`).
    Skipped,
}

impl ObjectStatus {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            ObjectStatus::Pending => "pending",
            ObjectStatus::Done => "done",
            ObjectStatus::DeadLettered => "dead_letter",
            ObjectStatus::Skipped => "skipped",
        }
    }
}

/// One row of `weir runs` (and of the status page).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct RunRow {
    pub id: String,
    pub pipeline: String,
    pub source: String,
    pub status: String,
    pub attempts: u32,
    pub started_at: String,
    pub duration_ms: Option<i64>,
    pub error: Option<String>,
}

#[derive(Clone)]
pub struct Ledger {
    writer: writer::Writer,
    path: Arc<PathBuf>,
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS objects (
    pipeline   TEXT NOT NULL,
    url        TEXT NOT NULL,
    key        TEXT NOT NULL,
    version    TEXT NOT NULL,
    status     TEXT NOT NULL,
    updated_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    PRIMARY KEY (pipeline, url, key)
);
CREATE TABLE IF NOT EXISTS runs (
    id          TEXT PRIMARY KEY,
    pipeline    TEXT NOT NULL,
    source      TEXT NOT NULL,
    status      TEXT NOT NULL,
    attempts    INTEGER NOT NULL DEFAULT 0,
    started_at  TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    duration_ms INTEGER,
    error       TEXT
);
CREATE INDEX IF NOT EXISTS objects_by_status ON objects (pipeline, status);
CREATE TABLE IF NOT EXISTS cursors (
    pipeline   TEXT NOT NULL,
    url        TEXT NOT NULL,
    position   TEXT NOT NULL,
    updated_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    PRIMARY KEY (pipeline, url)
);
CREATE INDEX IF NOT EXISTS runs_by_pipeline ON runs (pipeline, started_at);
CREATE TABLE IF NOT EXISTS replays (
    id          TEXT PRIMARY KEY,
    pipeline    TEXT NOT NULL,
    options     TEXT NOT NULL,
    status      TEXT NOT NULL,
    started_at  TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    finished_at TEXT,
    summary     TEXT
);
CREATE TABLE IF NOT EXISTS replay_items (
    replay TEXT NOT NULL,
    key    TEXT NOT NULL,
    status TEXT NOT NULL,
    PRIMARY KEY (replay, key)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS http_requests (
    pipeline        TEXT NOT NULL,
    id              TEXT NOT NULL,
    idempotency_key TEXT,
    created_at      REAL NOT NULL,
    status          INTEGER,
    headers         TEXT,
    body            BLOB,
    PRIMARY KEY (pipeline, id)
);
CREATE UNIQUE INDEX IF NOT EXISTS http_requests_by_key ON http_requests (pipeline, idempotency_key);
";

/// The ledger's file name in the state directory.
pub const LEDGER_FILE: &str = "ledger.db";

/// Upserts an object's (key, version, status).
const RECORD_OBJECT: &str = "INSERT INTO objects (pipeline, url, key, version, status) VALUES (?1, ?2, ?3, ?4, ?5)
     ON CONFLICT (pipeline, url, key) DO UPDATE SET version = excluded.version,
     status = excluded.status, updated_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now')";

impl Ledger {
    /// Opens (creating if needed) the ledger in `dir`.
    pub fn open(dir: &Path) -> Result<Self, LedgerError> {
        std::fs::create_dir_all(dir).map_err(|source| LedgerError::Dir { path: dir.to_path_buf(), source })?;
        let path = dir.join(LEDGER_FILE);
        let sqlite = |source| LedgerError::Sqlite { path: path.clone(), source };
        let conn = Connection::open(&path).map_err(sqlite)?;
        conn.busy_timeout(Duration::from_secs(10)).map_err(sqlite)?;
        conn.pragma_update(None, "journal_mode", "WAL").map_err(sqlite)?;
        // NORMAL in WAL mode: a power cut may lose the last commits, never corrupt; a lost
        // commit only means an object is processed again (outputs are idempotent).
        conn.pragma_update(None, "synchronous", "NORMAL").map_err(sqlite)?;
        conn.execute_batch(SCHEMA).map_err(sqlite)?;
        // Every statement the ledger runs stays parsed (rusqlite keeps 16 by default).
        conn.set_prepared_statement_cache_capacity(64);
        let writer =
            writer::Writer::start(conn).map_err(|source| LedgerError::Dir { path: dir.to_path_buf(), source })?;
        Ok(Self { writer, path: Arc::new(path) })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    async fn with<T: Send + 'static>(
        &self,
        work: impl FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> Result<T, LedgerError> {
        let done = self.writer.call(work).await.ok_or_else(|| LedgerError::Stopped(self.path.to_path_buf()))?;
        done.map_err(|source| LedgerError::Sqlite { path: self.path.to_path_buf(), source })
    }

    /// Whether this version of the object was already processed (or dead-lettered).
    pub async fn object_seen(&self, pipeline: &str, url: &str, key: &str, version: &str) -> Result<bool, LedgerError> {
        let unseen = self.unseen_objects(pipeline, url, vec![(key.to_owned(), version.to_owned())]).await?;
        Ok(unseen.is_empty())
    }

    /// Of `candidates` (key, version), the indexes of those not yet processed in that
    /// version. One blocking call for a whole listing page.
    pub async fn unseen_objects(
        &self,
        pipeline: &str,
        url: &str,
        candidates: Vec<(String, String)>,
    ) -> Result<Vec<usize>, LedgerError> {
        let (pipeline, url) = (pipeline.to_owned(), url.to_owned());
        self.with(move |c| {
            let mut stmt = c.prepare_cached(
                "SELECT 1 FROM objects WHERE pipeline = ?1 AND url = ?2 AND key = ?3 AND version = ?4
                 AND status IN ('done', 'dead_letter')",
            )?;
            let mut unseen = Vec::new();
            for (i, (key, version)) in candidates.iter().enumerate() {
                if stmt.query_row(params![pipeline, url, key, version], |_| Ok(())).optional()?.is_none() {
                    unseen.push(i);
                }
            }
            Ok(unseen)
        })
        .await
    }

    /// Objects accepted but never finished (the process stopped or crashed first), to be
    /// delivered again at start-up: (url, key, version).
    pub async fn pending_objects(&self, pipeline: &str) -> Result<Vec<(String, String, String)>, LedgerError> {
        let pipeline = pipeline.to_owned();
        self.with(move |c| {
            let mut stmt = c.prepare(
                "SELECT url, key, version FROM objects WHERE pipeline = ?1 AND status = 'pending' ORDER BY key",
            )?;
            let rows = stmt.query_map(params![pipeline], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
            rows.collect()
        })
        .await
    }

    /// The greatest key recorded under `url`, whatever its status (a schedule's newest tick).
    pub async fn last_key(&self, pipeline: &str, url: &str) -> Result<Option<String>, LedgerError> {
        let (pipeline, url) = (pipeline.to_owned(), url.to_owned());
        self.with(move |c| {
            c.query_row("SELECT max(key) FROM objects WHERE pipeline = ?1 AND url = ?2", params![pipeline, url], |r| {
                r.get(0)
            })
        })
        .await
    }

    /// Forgets an object (a pending one that no longer exists).
    pub async fn forget_object(&self, pipeline: &str, url: &str, key: &str) -> Result<(), LedgerError> {
        let (pipeline, url, key) = (pipeline.to_owned(), url.to_owned(), key.to_owned());
        self.with(move |c| {
            c.execute("DELETE FROM objects WHERE pipeline = ?1 AND url = ?2 AND key = ?3", params![pipeline, url, key])
                .map(|_| ())
        })
        .await
    }

    /// Where a trigger's paged listing of `url` stopped (start-after key), if anywhere.
    pub async fn cursor(&self, pipeline: &str, url: &str) -> Result<Option<String>, LedgerError> {
        let (pipeline, url) = (pipeline.to_owned(), url.to_owned());
        self.with(move |c| {
            c.query_row("SELECT position FROM cursors WHERE pipeline = ?1 AND url = ?2", params![pipeline, url], |r| {
                r.get(0)
            })
            .optional()
        })
        .await
    }

    /// Saves (or, with `None`, clears) a trigger's listing cursor.
    pub async fn set_cursor(&self, pipeline: &str, url: &str, position: Option<String>) -> Result<(), LedgerError> {
        let (pipeline, url) = (pipeline.to_owned(), url.to_owned());
        self.with(move |c| {
            match position {
                Some(position) => c.execute(
                    "INSERT INTO cursors (pipeline, url, position) VALUES (?1, ?2, ?3)
                     ON CONFLICT (pipeline, url) DO UPDATE SET position = excluded.position,
                     updated_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now')",
                    params![pipeline, url, position],
                ),
                None => c.execute("DELETE FROM cursors WHERE pipeline = ?1 AND url = ?2", params![pipeline, url]),
            }
            .map(|_| ())
        })
        .await
    }

    pub async fn record_object(
        &self,
        pipeline: &str,
        url: &str,
        key: &str,
        version: &str,
        status: ObjectStatus,
    ) -> Result<(), LedgerError> {
        let (pipeline, url, key, version) = (pipeline.to_owned(), url.to_owned(), key.to_owned(), version.to_owned());
        self.with(move |c| {
            c.prepare_cached(RECORD_OBJECT)?.execute(params![pipeline, url, key, version, status.as_str()]).map(|_| ())
        })
        .await
    }

    /// Number of objects recorded for a pipeline, by status.
    pub async fn object_count(&self, pipeline: &str, status: ObjectStatus) -> Result<u64, LedgerError> {
        let pipeline = pipeline.to_owned();
        self.with(move |c| {
            c.query_row(
                "SELECT count(*) FROM objects WHERE pipeline = ?1 AND status = ?2",
                params![pipeline, status.as_str()],
                |r| r.get::<_, i64>(0),
            )
            .map(|n| n as u64)
        })
        .await
    }

    pub async fn run_started(&self, id: &str, pipeline: &str, source: &str) -> Result<(), LedgerError> {
        let (id, pipeline, source) = (id.to_owned(), pipeline.to_owned(), source.to_owned());
        self.with(move |c| {
            c.prepare_cached(
                "INSERT OR REPLACE INTO runs (id, pipeline, source, status) VALUES (?1, ?2, ?3, 'running')",
            )?
            .execute(params![id, pipeline, source])
            .map(|_| ())
        })
        .await
    }

    pub async fn run_finished(
        &self,
        id: &str,
        status: &str,
        attempts: u32,
        duration: Duration,
        error: Option<String>,
    ) -> Result<(), LedgerError> {
        let (id, status) = (id.to_owned(), status.to_owned());
        let ms = duration.as_millis() as i64;
        self.with(move |c| {
            c.prepare_cached("UPDATE runs SET status = ?2, attempts = ?3, duration_ms = ?4, error = ?5 WHERE id = ?1")?
                .execute(params![id, status, attempts, ms, error])
                .map(|_| ())
        })
        .await
    }

    /// Marks the runs a dead process left "running" as crashed — one writer holds the
    /// state directory, so at start-up every one of them is — and returns, per
    /// (pipeline, source), how many of its runs crashed and were not followed by one
    /// that finished.
    pub async fn crashed_runs(&self) -> Result<HashMap<(String, String), u32>, LedgerError> {
        self.with(|c| {
            c.execute("UPDATE runs SET status = 'crashed' WHERE status = 'running'", [])?;
            let mut query = c.prepare(
                "SELECT pipeline, source, COUNT(*) FROM runs WHERE status = 'crashed' GROUP BY pipeline, source",
            )?;
            let rows = query.query_map([], |r| Ok(((r.get(0)?, r.get(1)?), r.get(2)?)))?;
            rows.collect()
        })
        .await
    }

    /// A source that crashed before has finished: its crashes no longer count.
    pub async fn crashes_over(&self, pipeline: &str, source: &str) -> Result<(), LedgerError> {
        let (pipeline, source) = (pipeline.to_owned(), source.to_owned());
        self.with(move |c| {
            c.execute(
                "UPDATE runs SET status = 'crashed, then finished' WHERE pipeline = ?1 AND source = ?2 AND status = 'crashed'",
                params![pipeline, source],
            )
            .map(|_| ())
        })
        .await
    }

    /// A run recorded in one write, once it is over (Kafka chunks: a row per chunk,
    /// not two per record).
    #[allow(clippy::too_many_arguments)]
    pub async fn run_recorded(
        &self,
        id: &str,
        pipeline: &str,
        source: &str,
        status: &str,
        attempts: u32,
        duration: Duration,
        error: Option<String>,
    ) -> Result<(), LedgerError> {
        let (id, pipeline, source, status) = (id.to_owned(), pipeline.to_owned(), source.to_owned(), status.to_owned());
        let ms = duration.as_millis() as i64;
        self.with(move |c| {
            c.prepare_cached(
                "INSERT OR REPLACE INTO runs (id, pipeline, source, status, attempts, duration_ms, error)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            )?
            .execute(params![id, pipeline, source, status, attempts, ms, error])
            .map(|_| ())
        })
        .await
    }

    /// The most recent runs, newest first.
    pub async fn recent_runs(&self, limit: usize, pipeline: Option<String>) -> Result<Vec<RunRow>, LedgerError> {
        self.with(move |c| {
            let mut stmt = c.prepare(
                "SELECT id, pipeline, source, status, attempts, started_at, duration_ms, error FROM runs
                 WHERE (?1 IS NULL OR pipeline = ?1) ORDER BY started_at DESC, id DESC LIMIT ?2",
            )?;
            let rows = stmt.query_map(params![pipeline, limit as i64], |r| {
                Ok(RunRow {
                    id: r.get(0)?,
                    pipeline: r.get(1)?,
                    source: r.get(2)?,
                    status: r.get(3)?,
                    attempts: r.get(4)?,
                    started_at: r.get(5)?,
                    duration_ms: r.get(6)?,
                    error: r.get(7)?,
                })
            })?;
            rows.collect()
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn objects_are_seen_per_version() {
        let dir = tempfile::tempdir().unwrap();
        let ledger = Ledger::open(dir.path()).unwrap();
        assert!(!ledger.object_seen("p", "u", "k", "v1").await.unwrap());
        ledger.record_object("p", "u", "k", "v1", ObjectStatus::Done).await.unwrap();
        assert!(ledger.object_seen("p", "u", "k", "v1").await.unwrap());
        assert!(!ledger.object_seen("p", "u", "k", "v2").await.unwrap(), "a changed object runs again");
        assert!(!ledger.object_seen("other", "u", "k", "v1").await.unwrap());
        // Reopening keeps everything.
        drop(ledger);
        let ledger = Ledger::open(dir.path()).unwrap();
        assert!(ledger.object_seen("p", "u", "k", "v1").await.unwrap());
    }

    #[tokio::test]
    async fn pending_objects_are_not_seen_and_are_listed_for_redelivery() {
        let dir = tempfile::tempdir().unwrap();
        let ledger = Ledger::open(dir.path()).unwrap();
        ledger.record_object("p", "u", "a", "v1", ObjectStatus::Done).await.unwrap();
        ledger.record_object("p", "u", "a", "v2", ObjectStatus::Pending).await.unwrap();
        ledger.record_object("p", "u", "b", "v1", ObjectStatus::Pending).await.unwrap();
        assert!(!ledger.object_seen("p", "u", "a", "v2").await.unwrap());
        let unseen = ledger
            .unseen_objects(
                "p",
                "u",
                vec![("a".into(), "v2".into()), ("c".into(), "v1".into()), ("b".into(), "v1".into())],
            )
            .await
            .unwrap();
        assert_eq!(unseen, vec![0, 1, 2]);
        let pending = ledger.pending_objects("p").await.unwrap();
        assert_eq!(pending.iter().map(|(_, k, v)| format!("{k}@{v}")).collect::<Vec<_>>(), ["a@v2", "b@v1"]);
        ledger.record_object("p", "u", "a", "v2", ObjectStatus::Done).await.unwrap();
        ledger.forget_object("p", "u", "b").await.unwrap();
        assert!(ledger.pending_objects("p").await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn cursors_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let ledger = Ledger::open(dir.path()).unwrap();
        assert_eq!(ledger.cursor("p", "s3://b").await.unwrap(), None);
        ledger.set_cursor("p", "s3://b", Some("inbox/0042.jpg".into())).await.unwrap();
        drop(ledger);
        let ledger = Ledger::open(dir.path()).unwrap();
        assert_eq!(ledger.cursor("p", "s3://b").await.unwrap().as_deref(), Some("inbox/0042.jpg"));
        ledger.set_cursor("p", "s3://b", None).await.unwrap();
        assert_eq!(ledger.cursor("p", "s3://b").await.unwrap(), None);
    }

    #[tokio::test]
    async fn runs_are_listed_newest_first() {
        let dir = tempfile::tempdir().unwrap();
        let ledger = Ledger::open(dir.path()).unwrap();
        ledger.run_started("a", "p", "k1").await.unwrap();
        ledger.run_started("b", "p", "k2").await.unwrap();
        ledger.run_finished("b", "failed", 3, Duration::from_millis(5), Some("boom".into())).await.unwrap();
        let runs = ledger.recent_runs(10, Some("p".into())).await.unwrap();
        assert_eq!(runs.len(), 2);
        let b = runs.iter().find(|r| r.id == "b").unwrap();
        assert_eq!((b.status.as_str(), b.attempts, b.error.as_deref()), ("failed", 3, Some("boom")));
    }
}
