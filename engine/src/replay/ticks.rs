//! Replaying a schedule: every tick in `[since, until)`, oldest first, each with its
//! own logical time — an Airflow-style backfill.

use chrono::{DateTime, Utc};

use super::{ItemSource, ReplayItem, Window};
use crate::trigger::cron::{tick_key, CronConfig, Schedule, LEDGER_URL};
use crate::trigger::EventSource;

/// Ticks per chunk.
const CHUNK: usize = 500;

pub(crate) struct Ticks {
    schedule: Schedule,
    /// The last tick handed out (ticks come strictly after it).
    after: DateTime<Utc>,
    until: DateTime<Utc>,
}

impl Ticks {
    pub fn new(config: &CronConfig, window: &Window, now: DateTime<Utc>) -> anyhow::Result<Self> {
        let Some(since) = window.since else {
            anyhow::bail!("replaying a schedule needs --since (the first logical time to run)");
        };
        if window.prefix.is_some() {
            anyhow::bail!("--prefix applies to bucket pipelines, not schedules");
        }
        let until = window.until.unwrap_or(now);
        if until <= since {
            anyhow::bail!("--until ({until}) must be after --since ({since})");
        }
        // Ticks are whole milliseconds: the first one at or after `since`.
        Ok(Self { schedule: config.schedule.clone(), after: since - chrono::Duration::milliseconds(1), until })
    }
}

#[async_trait::async_trait]
impl ItemSource for Ticks {
    async fn next_chunk(&mut self) -> anyhow::Result<Option<Vec<ReplayItem>>> {
        let chunk: Vec<ReplayItem> = self
            .schedule
            .ticks(self.after, self.until)
            .filter(|t| *t < self.until)
            .take(CHUNK)
            .map(|time| ReplayItem {
                key: tick_key(time),
                version: String::new(),
                source: EventSource::Schedule { time, schedule: self.schedule.text().to_string() },
            })
            .collect();
        let Some(last) = chunk.last() else { return Ok(None) };
        if let EventSource::Schedule { time, .. } = &last.source {
            self.after = *time;
        }
        Ok(Some(chunk))
    }

    fn ledger_url(&self) -> &str {
        LEDGER_URL
    }
}
