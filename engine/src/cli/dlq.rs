use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use futures::StreamExt;
use tokio::sync::Semaphore;

use super::StateArgs;
use crate::event::DeadLetter;
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

pub async fn run(command: Command, engine: Engine) -> anyhow::Result<ExitCode> {
    let (path, state, only) = match &command {
        Command::List { pipeline, state } => (pipeline, state, None),
        Command::Redrive { pipeline, id, state } => (pipeline, state, Some(id.clone())),
    };
    visit(engine.state_dir(state.state_dir.clone()), path, only).await
}

/// Lists the dead letters of the pipeline in `path` (`only` is None), or re-drives
/// them (`Some(None)`: all; `Some(Some(id))`: one). Exit code 1 if any failed again.
pub async fn visit(engine: Engine, path: &std::path::Path, only: Option<Option<String>>) -> anyhow::Result<ExitCode> {
    let pipeline = engine.load(&[path.to_path_buf()]).map_err(|d| anyhow::anyhow!("{d}"))?.remove(0);
    let ledger = engine.ledger()?;
    let runtime = engine.runtime(pipeline, &ledger, Arc::new(Semaphore::new(engine.global_concurrency)))?;
    let store = runtime.dead_letters.clone();
    let letters = store.list(&runtime.name);
    futures::pin_mut!(letters);
    let (mut count, mut failed) = (0, 0);
    if only.is_none() {
        print_header();
    }
    while let Some((position, letter)) = letters.next().await {
        let letter = match letter {
            Ok(letter) => letter,
            Err(e) => {
                eprintln!("skipping {position}: {e}");
                continue;
            }
        };
        let work = match crate::trigger::revive(&*runtime.pipeline.trigger, &letter.event) {
            Ok(work) => work,
            Err(e) => {
                eprintln!("skipping {position}: not an event of this pipeline: {e}");
                continue;
            }
        };
        let work_id = letter.id.clone();
        match &only {
            None => print_row(&letter, &work.describe()),
            Some(Some(id)) if *id != letter.id => continue,
            Some(_) => match crate::redrive::redrive(&runtime, &position, letter).await? {
                crate::redrive::Redriven::Done { source } => println!("redriven: {} ({source})", work_id),
                crate::redrive::Redriven::FailedAgain { source, error, at } => {
                    failed += 1;
                    println!("failed again: {work_id} ({source}): {error} (now at {at})");
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

fn print_row(record: &DeadLetter, source: &str) {
    let error: String = record.error.chars().take(100).collect();
    println!(
        "{:<38} {:<24} {:<10} {:>3}  {:<40} {error}",
        record.id,
        record.failed_at.format("%Y-%m-%dT%H:%M:%S%.3fZ"),
        record.step,
        record.attempts,
        source
    );
}
