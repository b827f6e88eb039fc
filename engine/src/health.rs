//! Start-up health checks, as Vector's: before `weir run` takes events, every trigger's
//! source and every bucket a step writes to is asked whether it is there and readable,
//! so a misspelt bucket or a wrong key is one line naming it (`NoSuchBucket:
//! s3://photos-out: …`) instead of a dead letter per event or a WARN every few seconds.
//! A problem does not stop `weir run` unless `--require-healthy`: triggers retry with
//! backoff and steps wait out unavailable stores.

use std::collections::BTreeSet;
use std::time::Duration;

use weir_functions::Stores;

use crate::config::Pipeline;

/// How long one check may take.
const CHECK_TIME: Duration = Duration::from_secs(10);

/// One thing that is not healthy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub pipeline: String,
    /// `trigger` or `step <name>`.
    pub part: String,
    pub error: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "pipeline {}: {}: {}", self.pipeline, self.part, self.error)
    }
}

/// Checks every pipeline's trigger and output buckets, side by side.
pub async fn check(stores: &Stores, pipelines: &[Pipeline]) -> Vec<Problem> {
    let mut checks = Vec::new();
    for pipeline in pipelines {
        let name = pipeline.name.clone();
        let (trigger, trigger_stores) = (pipeline.trigger.clone(), stores.clone());
        checks.push(tokio::spawn(async move {
            let answer = timed(trigger.health(&trigger_stores)).await;
            answer.err().map(|error| Problem { pipeline: name, part: "trigger".into(), error })
        }));
        let mut seen = BTreeSet::new();
        for step in &pipeline.steps {
            for output in step.function.writes() {
                let Some(url) = output.url else { continue };
                if !seen.insert(url.clone()) {
                    continue;
                }
                let (name, part, stores) = (pipeline.name.clone(), format!("step {}", step.name), stores.clone());
                checks.push(tokio::spawn(async move {
                    let answer = match stores.resolve(&url) {
                        Ok(bucket) => timed(async move { bucket.reachable("").await }).await,
                        Err(e) => Err(e.to_string()),
                    };
                    answer.err().map(|error| Problem { pipeline: name, part, error })
                }));
            }
        }
    }
    let mut problems = Vec::new();
    for check in checks {
        if let Ok(Some(problem)) = check.await {
            problems.push(problem);
        }
    }
    problems
}

async fn timed(check: impl std::future::Future<Output = Result<(), String>>) -> Result<(), String> {
    tokio::time::timeout(CHECK_TIME, check)
        .await
        .unwrap_or_else(|_| Err(format!("no answer within {}s", CHECK_TIME.as_secs())))
}
