use std::process::ExitCode;

use super::StateArgs;
use crate::state::Ledger;

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    state: StateArgs,
    /// How many runs to show.
    #[arg(long, default_value_t = 20)]
    limit: usize,
    /// Only this pipeline's runs.
    #[arg(long)]
    pipeline: Option<String>,
}

pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let ledger = Ledger::open(&args.state.state_dir)?;
    let runs = ledger.recent_runs(args.limit, args.pipeline).await?;
    println!("{:<24} {:<18} {:<11} {:>3} {:>9}  {:<40} ERROR", "STARTED", "PIPELINE", "STATUS", "TRY", "MS", "SOURCE");
    for r in runs {
        let ms = r.duration_ms.map(|d| d.to_string()).unwrap_or_else(|| "-".into());
        let error: String = r.error.unwrap_or_default().chars().take(100).collect();
        println!(
            "{:<24} {:<18} {:<11} {:>3} {:>9}  {:<40} {}",
            r.started_at, r.pipeline, r.status, r.attempts, ms, r.source, error
        );
    }
    Ok(ExitCode::SUCCESS)
}
