use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use futures::StreamExt;
use tokio::sync::Semaphore;
use weir_functions::Registry;

use super::StateArgs;
use crate::executor::dead_letter::{self, DeadLetter, DeadLetterTarget};
use crate::executor::PipelineRuntime;
use crate::state::{Ledger, ObjectStatus};
use crate::trigger::kafka::dead_letter::DeadLetterTopic;
use crate::trigger::EventSource;
use crate::Engine;

#[derive(clap::Subcommand, Debug)]
pub enum Command {
    /// List a pipeline's dead-lettered events.
    List {
        pipeline: PathBuf,
        #[command(flatten)]
        state: StateArgs,
    },
    /// Run dead-lettered events through the pipeline again. A success removes the
    /// record; a failure updates it (error, attempts, redrive count).
    Redrive {
        pipeline: PathBuf,
        /// Only this event id (default: all).
        #[arg(long)]
        id: Option<String>,
        #[command(flatten)]
        state: StateArgs,
    },
}

pub async fn run(command: Command, registry: Registry) -> anyhow::Result<ExitCode> {
    let (path, state, only) = match &command {
        Command::List { pipeline, state } => (pipeline, state, None),
        Command::Redrive { pipeline, id, state } => (pipeline, state, Some(id.clone())),
    };
    let engine = Engine::new(registry).state_dir(state.state_dir.clone());
    let pipeline = engine.load(std::slice::from_ref(path)).map_err(|d| anyhow::anyhow!("{d}"))?.remove(0);
    let ledger = engine.ledger()?;
    let runtime = engine.runtime(pipeline, &ledger, Arc::new(Semaphore::new(engine.global_concurrency)))?;
    if let DeadLetterTarget::Topic(topic) = &runtime.dead_letters {
        return from_topic(&runtime, topic, &ledger, only).await;
    }
    let bucket = engine.stores.resolve(&runtime.dead_letter_url)?;
    let records = dead_letter::list(&bucket, &runtime.name);
    futures::pin_mut!(records);
    let mut failed = 0;
    let mut count = 0;
    if only.is_none() {
        print_header();
    }
    while let Some(record) = records.next().await {
        let (key, mut record) = match record {
            Ok(r) => r,
            Err(e) => {
                eprintln!("skipping unreadable record: {e}");
                continue;
            }
        };
        match &only {
            None => print_row(&record),
            Some(Some(id)) if *id != record.id => continue,
            Some(_) => match runtime.execute(&record.id, &record.event).await {
                Ok(_) => {
                    dead_letter::remove(&bucket, &key).await?;
                    if let EventSource::Object { url, key, version, .. } = &record.event {
                        ledger.record_object(&runtime.name, url, key, version, ObjectStatus::Done).await?;
                    }
                    println!("redriven: {} ({})", record.id, record.event.describe());
                }
                Err(failure) => {
                    failed += 1;
                    record.redrives += 1;
                    record.error = failure.error.chain();
                    record.step = failure.step;
                    record.attempts = failure.attempts;
                    record.failed_at = chrono::Utc::now();
                    dead_letter::write(&bucket, &record).await?;
                    println!("failed again: {} ({}): {}", record.id, record.event.describe(), record.error);
                }
            },
        }
        count += 1;
    }
    if only.is_some() {
        println!("{count} record(s) re-driven, {failed} failed again");
    }
    Ok(if failed > 0 { ExitCode::FAILURE } else { ExitCode::SUCCESS })
}

fn print_header() {
    println!("{:<38} {:<24} {:<10} {:>3}  {:<40} ERROR", "ID", "FAILED_AT", "STEP", "TRY", "SOURCE");
}

fn print_row(record: &DeadLetter) {
    let error: String = record.error.chars().take(100).collect();
    println!(
        "{:<38} {:<24} {:<10} {:>3}  {:<40} {error}",
        record.id,
        record.failed_at.format("%Y-%m-%dT%H:%M:%S%.3fZ"),
        record.step,
        record.attempts,
        record.event.describe()
    );
}

/// A dead-letter topic: records cannot be removed from it, so the ledger remembers
/// which ones were re-driven (by topic position), and `list` shows only the others. A
/// record that fails again is produced to the topic anew (redrives + 1).
async fn from_topic(
    runtime: &PipelineRuntime,
    topic: &DeadLetterTopic,
    ledger: &Ledger,
    only: Option<Option<String>>,
) -> anyhow::Result<ExitCode> {
    let url = format!("{}{}", crate::trigger::kafka::dead_letter::SCHEME, topic.topic);
    let letters = topic.read_all().await.map_err(anyhow::Error::msg)?;
    if only.is_none() {
        print_header();
    }
    let (mut count, mut failed) = (0, 0);
    for (position, letter) in letters {
        let mut letter = match letter {
            Ok(letter) => letter,
            Err(e) => {
                eprintln!("skipping {position}: not a weir dead letter: {e}");
                continue;
            }
        };
        if letter.pipeline != *runtime.name || ledger.object_seen(&runtime.name, &url, &position, &letter.id).await? {
            continue;
        }
        match &only {
            None => print_row(&letter),
            Some(Some(id)) if *id != letter.id => continue,
            Some(_) => {
                match runtime.execute(&letter.id, &letter.event).await {
                    Ok(_) => println!("redriven: {} ({})", letter.id, letter.event.describe()),
                    Err(failure) => {
                        failed += 1;
                        letter.redrives += 1;
                        letter.error = failure.error.chain();
                        letter.step = failure.step;
                        letter.attempts = failure.attempts;
                        letter.failed_at = chrono::Utc::now();
                        let at = topic.write(&letter).await?;
                        println!(
                            "failed again: {} ({}): {} (now at {at})",
                            letter.id,
                            letter.event.describe(),
                            letter.error
                        );
                    }
                }
                // Handled either way: redriven, or superseded by the record written anew.
                ledger.record_object(&runtime.name, &url, &position, &letter.id, ObjectStatus::Done).await?;
            }
        }
        count += 1;
    }
    if only.is_some() {
        println!("{count} record(s) re-driven, {failed} failed again");
    }
    Ok(if failed > 0 { ExitCode::FAILURE } else { ExitCode::SUCCESS })
}
