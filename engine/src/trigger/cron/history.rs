//! A schedule's history for `weir replay`: every tick in `[since, until)`, oldest
//! first, each with its own logical time — an Airflow-style backfill.

use std::sync::Arc;

use chrono::{DateTime, Utc};

use super::{CronConfig, Schedule, TickWork};
use crate::error::EngineError;
use crate::event::Work;
use crate::trigger::{History, HistoryItem, Window};

/// Ticks per chunk.
const CHUNK: usize = 500;

pub(crate) struct Ticks {
    schedule: Schedule,
    /// The last tick handed out (ticks come strictly after it).
    after: DateTime<Utc>,
    until: DateTime<Utc>,
}

impl Ticks {
    pub fn new(config: &CronConfig, window: &Window, now: DateTime<Utc>) -> Result<Self, EngineError> {
        let Some(since) = window.since else {
            return Err(EngineError::fatal("replaying a schedule needs --since (the first logical time to run)"));
        };
        if window.prefix.is_some() {
            return Err(EngineError::fatal("--prefix applies to bucket pipelines, not schedules"));
        }
        let until = window.until.unwrap_or(now);
        if until <= since {
            return Err(EngineError::fatal(format!("--until ({until}) must be after --since ({since})")));
        }
        // Ticks are whole milliseconds: the first one at or after `since`.
        Ok(Self { schedule: config.schedule.clone(), after: since - chrono::Duration::milliseconds(1), until })
    }
}

#[async_trait::async_trait]
impl History for Ticks {
    async fn next_chunk(&mut self) -> Result<Option<Vec<HistoryItem>>, EngineError> {
        let ticks: Vec<_> =
            self.schedule.ticks(self.after, self.until).filter(|t| *t < self.until).take(CHUNK).collect();
        let Some(last) = ticks.last() else { return Ok(None) };
        self.after = *last;
        let chunk = ticks
            .into_iter()
            .filter_map(|time| {
                let work = TickWork { time, schedule: self.schedule.text().to_string() };
                Some(HistoryItem { entry: work.ledger_entry()?, work: Arc::new(work) })
            })
            .collect();
        Ok(Some(chunk))
    }
}
