//! Dead letters run again, once their cause is fixed: `weir dlq redrive` and the status
//! page's redrive button go through here, so a redrive means the same everywhere — the
//! record is revived by its own trigger kind (which refuses records it did not write),
//! run through the pipeline's steps, then settled (gone from the list, the ledger
//! entry done) or kept with the new error and one more redrive counted.

use crate::error::EngineError;
use crate::event::DeadLetter;
use crate::executor::PipelineRuntime;
use crate::state::ObjectStatus;

/// How a redrive went.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum Redriven {
    Done { source: String },
    FailedAgain { source: String, error: String, at: String },
}

/// Runs `letter`, listed at `position` in the pipeline's dead letters, again. An error
/// is about the record or the dead-letter store, not the event.
pub async fn redrive(
    runtime: &PipelineRuntime,
    position: &str,
    mut letter: DeadLetter,
) -> Result<Redriven, EngineError> {
    let work = crate::trigger::revive(&*runtime.pipeline.trigger, &letter.event)
        .map_err(|e| EngineError::fatal(format!("{position}: not an event of this pipeline: {e}")))?;
    let source = work.describe();
    let started = std::time::Instant::now();
    match runtime.execute(work.clone()).await {
        Ok(_) => {
            runtime.dead_letters.settle(position, &letter).await?;
            // Its run no longer reads dead-lettered (`weir runs`, the status page).
            let ran = runtime.ledger.run_finished(&letter.id, "redriven", 1, started.elapsed(), None).await;
            if let Err(e) = ran {
                tracing::warn!(pipeline = %runtime.name, error = %e, "cannot record a redrive");
            }
            if let Some(entry) = work.ledger_entry() {
                runtime
                    .ledger
                    .record_object(&runtime.name, &entry.url, &entry.key, &entry.version, ObjectStatus::Done)
                    .await?;
            }
            Ok(Redriven::Done { source })
        }
        Err(failure) => {
            letter.redrives += 1;
            letter.error = failure.error.chain();
            letter.step = failure.step;
            letter.attempts = failure.attempts;
            letter.failed_at = chrono::Utc::now();
            let at = runtime.dead_letters.replace(position, &letter).await?;
            Ok(Redriven::FailedAgain { source, error: letter.error, at })
        }
    }
}

/// Finds dead letter `id` among the pipeline's and redrives it; None if it is not there.
pub async fn redrive_id(runtime: &PipelineRuntime, id: &str) -> Result<Option<Redriven>, EngineError> {
    use futures::StreamExt;
    let letters = runtime.dead_letters.list(&runtime.name);
    futures::pin_mut!(letters);
    while let Some((position, letter)) = letters.next().await {
        match letter {
            Ok(letter) if letter.id == id => return redrive(runtime, &position, letter).await.map(Some),
            _ => {}
        }
    }
    Ok(None)
}
