//! The status page at `GET /`: one HTML file embedded in the binary (no CDN, no build
//! step, works offline) that reads `/metrics` every second and `/v1/status` every two.
//! The page shows the numbers Prometheus scrapes, so the two never disagree; what
//! metrics cannot say (which pipelines there are, recent runs and their errors) comes
//! from [`snapshot`].

use serde::Serialize;

use crate::metrics::Observed;
use crate::state::{Ledger, ReplaySummary, RunRow};

pub const PAGE: &str = include_str!("status.html");

/// Runs the page lists: enough to see a burst's dead letters, small enough to send
/// every two seconds.
const RECENT_RUNS: usize = 50;

#[derive(Serialize)]
pub struct Status {
    pub pipelines: Vec<PipelineInfo>,
    pub runs: Vec<RunRow>,
    /// The latest backfills. `weir replay` and `weir run` never share a state
    /// directory at once, so one still `running` here was interrupted: `--resume`
    /// continues it from `items_done`.
    pub replays: Vec<ReplaySummary>,
}

#[derive(Serialize)]
pub struct PipelineInfo {
    pub name: String,
    pub trigger: &'static str,
    pub description: Option<String>,
    pub steps: Vec<String>,
    /// `limits.queue`: a queue this deep pauses the trigger (or, for HTTP, answers 429).
    pub queue: usize,
}

/// Every running pipeline and the ledger's most recent runs.
pub async fn snapshot(observed: &[Observed], ledger: &Ledger) -> Result<Status, String> {
    let pipelines = observed
        .iter()
        .map(|p| PipelineInfo {
            name: p.name.to_string(),
            trigger: p.pipeline.trigger.kind(),
            description: p.pipeline.description.clone(),
            steps: p.pipeline.steps.iter().map(|s| s.name.clone()).collect(),
            queue: p.pipeline.limits.queue,
        })
        .collect();
    let runs = ledger.recent_runs(RECENT_RUNS, None).await.map_err(|e| e.to_string())?;
    let replays = ledger.recent_replays(5).await.map_err(|e| e.to_string())?;
    Ok(Status { pipelines, runs, replays })
}
