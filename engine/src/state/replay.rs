//! Replays in the ledger: one row per `weir replay` (its options, so `--resume` can
//! continue it) and one row per finished item while it runs — the checkpoint. Items
//! are checked against it chunk by chunk, so a resumed replay skips what it finished
//! without holding the list in memory; the rows are deleted when the replay finishes.

use rusqlite::{params, OptionalExtension};

use super::{Ledger, LedgerError, ObjectStatus, RECORD_OBJECT};

/// A replay as recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplayRecord {
    pub id: String,
    pub pipeline: String,
    /// The replay's options as JSON (the CLI's business).
    pub options: String,
    pub started_at: String,
}

/// A replay as the status page lists it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ReplaySummary {
    pub id: String,
    pub pipeline: String,
    pub status: String,
    pub started_at: String,
    pub finished_at: Option<String>,
    /// What it did, once finished (the CLI's summary line).
    pub summary: Option<String>,
    /// Items finished so far (its checkpoint), while unfinished.
    pub items_done: u64,
}

impl Ledger {
    /// The most recent replays, newest first.
    pub async fn recent_replays(&self, limit: usize) -> Result<Vec<ReplaySummary>, LedgerError> {
        self.with(move |c| {
            let mut stmt = c.prepare(
                "SELECT r.id, r.pipeline, r.status, r.started_at, r.finished_at, r.summary,
                 (SELECT COUNT(*) FROM replay_items i WHERE i.replay = r.id)
                 FROM replays r ORDER BY r.started_at DESC, r.id DESC LIMIT ?1",
            )?;
            let rows = stmt.query_map(params![limit as i64], |r| {
                Ok(ReplaySummary {
                    id: r.get(0)?,
                    pipeline: r.get(1)?,
                    status: r.get(2)?,
                    started_at: r.get(3)?,
                    finished_at: r.get(4)?,
                    summary: r.get(5)?,
                    items_done: r.get::<_, i64>(6)? as u64,
                })
            })?;
            rows.collect()
        })
        .await
    }

    /// Records a new replay, running. An interrupted replay of the same pipeline can no
    /// longer be resumed after that (it is marked superseded and its checkpoint dropped).
    pub async fn start_replay(&self, id: &str, pipeline: &str, options: &str) -> Result<(), LedgerError> {
        let (id, pipeline, options) = (id.to_owned(), pipeline.to_owned(), options.to_owned());
        self.with(move |c| {
            c.execute(
                "DELETE FROM replay_items WHERE replay IN
                 (SELECT id FROM replays WHERE pipeline = ?1 AND status = 'running')",
                params![pipeline],
            )?;
            c.execute(
                "UPDATE replays SET status = 'superseded' WHERE pipeline = ?1 AND status = 'running'",
                params![pipeline],
            )?;
            c.execute(
                "INSERT INTO replays (id, pipeline, options, status) VALUES (?1, ?2, ?3, 'running')",
                params![id, pipeline, options],
            )?;
            Ok(())
        })
        .await
    }

    /// The newest replay of `pipeline` that never finished (interrupted or killed).
    pub async fn unfinished_replay(&self, pipeline: &str) -> Result<Option<ReplayRecord>, LedgerError> {
        let pipeline = pipeline.to_owned();
        self.with(move |c| {
            c.query_row(
                "SELECT id, pipeline, options, started_at FROM replays WHERE pipeline = ?1 AND status = 'running'
                 ORDER BY started_at DESC, id DESC LIMIT 1",
                params![pipeline],
                |r| Ok(ReplayRecord { id: r.get(0)?, pipeline: r.get(1)?, options: r.get(2)?, started_at: r.get(3)? }),
            )
            .optional()
        })
        .await
    }

    /// Of `keys`, the indexes of those this replay has not finished yet.
    pub async fn unfinished_replay_items(&self, replay: &str, keys: Vec<String>) -> Result<Vec<usize>, LedgerError> {
        let replay = replay.to_owned();
        self.with(move |c| {
            let mut stmt = c.prepare_cached("SELECT 1 FROM replay_items WHERE replay = ?1 AND key = ?2")?;
            let mut unfinished = Vec::new();
            for (i, key) in keys.iter().enumerate() {
                if stmt.query_row(params![replay, key], |_| Ok(())).optional()?.is_none() {
                    unfinished.push(i);
                }
            }
            Ok(unfinished)
        })
        .await
    }

    /// Records a finished replay item, its object (or tick) and its run's status in one
    /// transaction, so the checkpoint, the ledger and `weir runs` never disagree after
    /// a crash.
    #[allow(clippy::too_many_arguments)]
    pub async fn record_replay_item(
        &self,
        replay: &str,
        run: &str,
        pipeline: &str,
        url: &str,
        key: &str,
        version: &str,
        status: ObjectStatus,
    ) -> Result<(), LedgerError> {
        let (replay, run, pipeline, url, key, version) = (
            replay.to_owned(),
            run.to_owned(),
            pipeline.to_owned(),
            url.to_owned(),
            key.to_owned(),
            version.to_owned(),
        );
        self.with(move |c| {
            c.prepare_cached("INSERT OR REPLACE INTO replay_items (replay, key, status) VALUES (?1, ?2, ?3)")?
                .execute(params![replay, key, status.as_str()])?;
            c.prepare_cached(RECORD_OBJECT)?.execute(params![pipeline, url, key, version, status.as_str()])?;
            c.prepare_cached("UPDATE runs SET status = ?2 WHERE id = ?1")?.execute(params![run, status.as_str()])?;
            Ok(())
        })
        .await
    }

    /// Marks a replay finished with its summary and drops its checkpoint rows.
    pub async fn finish_replay(&self, id: &str, summary: &str) -> Result<(), LedgerError> {
        let (id, summary) = (id.to_owned(), summary.to_owned());
        self.with(move |c| {
            c.execute(
                "UPDATE replays SET status = 'finished', summary = ?2,
                 finished_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now') WHERE id = ?1",
                params![id, summary],
            )?;
            c.execute("DELETE FROM replay_items WHERE replay = ?1", params![id])?;
            Ok(())
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_replay_checkpoint_survives_reopening_and_is_dropped_when_finished() {
        let dir = tempfile::tempdir().unwrap();
        let ledger = Ledger::open(dir.path()).unwrap();
        ledger.start_replay("r1", "p", "{}").await.unwrap();
        ledger.record_replay_item("r1", "run", "p", "file:///b", "a", "v1", ObjectStatus::Done).await.unwrap();
        ledger.record_replay_item("r1", "run", "p", "file:///b", "c", "v1", ObjectStatus::DeadLettered).await.unwrap();
        drop(ledger);

        let ledger = Ledger::open(dir.path()).unwrap();
        let replay = ledger.unfinished_replay("p").await.unwrap().expect("an unfinished replay");
        assert_eq!((replay.id.as_str(), replay.options.as_str()), ("r1", "{}"));
        assert_eq!(ledger.unfinished_replay("other").await.unwrap(), None);
        let keys = vec!["a".to_string(), "b".to_string(), "c".to_string()];
        assert_eq!(ledger.unfinished_replay_items("r1", keys.clone()).await.unwrap(), vec![1]);
        let listed = ledger.recent_replays(5).await.unwrap();
        assert_eq!((listed[0].status.as_str(), listed[0].items_done), ("running", 2), "progress while unfinished");
        assert!(ledger.object_seen("p", "file:///b", "a", "v1").await.unwrap(), "the object is recorded too");

        ledger.finish_replay("r1", "{\"done\":1}").await.unwrap();
        assert_eq!(ledger.unfinished_replay("p").await.unwrap(), None);
        assert_eq!(ledger.unfinished_replay_items("r1", keys).await.unwrap(), vec![0, 1, 2]);
        let listed = ledger.recent_replays(5).await.unwrap();
        assert_eq!(listed[0].summary.as_deref(), Some("{\"done\":1}"));
    }
}
