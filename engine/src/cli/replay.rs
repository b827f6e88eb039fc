use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, NaiveDate, NaiveDateTime, Utc};
use tokio_util::sync::CancellationToken;

use super::StateArgs;
use crate::config::units::parse_duration;
use crate::replay::progress::{Display, Progress};
use crate::replay::{Counters, Plan, Window};
use crate::Engine;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// The pipeline file to replay.
    pipeline: PathBuf,
    /// First time to include: objects modified (ticks scheduled) at or after it.
    /// RFC 3339 (`2026-11-01T00:00:00Z`), a UTC date or date-time (`2026-11-01`,
    /// `2026-11-01T06:00`), or a duration ago (`36h`).
    #[arg(long, value_parser = parse_time)]
    since: Option<DateTime<Utc>>,
    /// End of the window, excluded (same forms). Default: everything (objects), now (ticks).
    #[arg(long, value_parser = parse_time)]
    until: Option<DateTime<Utc>>,
    /// Only keys under this prefix (inside the trigger's prefix).
    #[arg(long)]
    prefix: Option<String>,
    /// Print what would run and how many; change nothing.
    #[arg(long)]
    dry_run: bool,
    /// Most items started per second: `50`, `50/s`, `600/m`, `3600/h`.
    #[arg(long, value_parser = parse_rate)]
    rate: Option<f64>,
    /// Items in flight at once (default: 1 for schedules, so ticks run in order; the
    /// pipeline's `limits.concurrency` for buckets).
    #[arg(long)]
    concurrency: Option<usize>,
    /// Continue this pipeline's interrupted replay (Ctrl-C, kill -9) from its checkpoint,
    /// with the window it started with.
    #[arg(long, conflicts_with_all = ["since", "until", "prefix", "force"])]
    resume: bool,
    /// Also reprocess items the ledger records as done.
    #[arg(long)]
    force: bool,
    /// How long in-flight items may take to finish after Ctrl-C.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    grace: Duration,
    /// Progress display: a bar on a terminal, else a line every `--progress-every`.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    progress_every: Duration,
    #[command(flatten)]
    state: StateArgs,
}

pub async fn run(args: Args, engine: Engine) -> anyhow::Result<ExitCode> {
    let engine = engine.state_dir(args.state.state_dir.clone()).grace(args.grace);
    let mut pipelines = engine.load(std::slice::from_ref(&args.pipeline)).map_err(|d| {
        eprintln!("{d}");
        anyhow::anyhow!("{} error(s) in {}; nothing replayed", d.0.len(), args.pipeline.display())
    })?;
    if pipelines.len() != 1 {
        anyhow::bail!(
            "{} holds {} pipelines; replay takes one pipeline file",
            args.pipeline.display(),
            pipelines.len()
        );
    }
    let pipeline = pipelines.remove(0);
    let name = pipeline.name.clone();
    let mut plan = Plan {
        window: Window { since: args.since, until: args.until, prefix: args.prefix, force: args.force },
        dry_run: args.dry_run,
        resume: None,
        rate: args.rate,
        concurrency: args.concurrency,
    };
    if args.resume {
        let ledger = engine.ledger()?;
        let Some(record) = ledger.unfinished_replay(&name).await? else {
            anyhow::bail!("pipeline {name} has no interrupted replay to resume");
        };
        plan.window = serde_json::from_str(&record.options)
            .map_err(|e| anyhow::anyhow!("replay {} in the ledger is unreadable: {e}", record.id))?;
        eprintln!("resuming replay {} of {name} (started {})", record.id, record.started_at);
        plan.resume = Some(record.id);
    }

    let stop = CancellationToken::new();
    tokio::spawn(super::run::stop_on_signals(stop.clone()));
    let counters = Arc::new(Counters::default());
    let display = match (args.dry_run, std::io::stderr().is_terminal()) {
        (true, _) => Display::Hidden,
        (false, true) => Display::Bar,
        (false, false) => Display::Lines(args.progress_every),
    };
    let progress = Progress::start(counters.clone(), display);
    let mut stdout = std::io::BufWriter::new(std::io::stdout());
    let dry_run = args.dry_run;
    let result = crate::replay::replay(&engine, pipeline, plan, counters, stop, |source| {
        if dry_run {
            let _ = writeln!(stdout, "would run: {}", source.describe());
        }
    })
    .await;
    let _ = stdout.flush();
    progress.finish();
    let summary = result?;

    let seconds = summary.elapsed_ms as f64 / 1000.0;
    if dry_run {
        let would = summary.found - summary.skipped;
        println!(
            "dry run: {would} would run, {} skipped (already done), {} found; nothing changed",
            summary.skipped, summary.found
        );
        return Ok(ExitCode::SUCCESS);
    }
    eprintln!(
        "replay {}: {} found, {} done, {} failed, {} skipped (already done), {} unfinished in {seconds:.1}s",
        summary.replay.as_deref().unwrap_or("-"),
        summary.found,
        summary.done,
        summary.failed,
        summary.skipped,
        summary.unfinished
    );
    if summary.interrupted || summary.unfinished > 0 {
        eprintln!("interrupted: `weir replay --resume {}` continues it", args.pipeline.display());
        return Ok(ExitCode::from(130));
    }
    if summary.failed > 0 {
        eprintln!("{} item(s) failed: see `weir dlq list {}`", summary.failed, args.pipeline.display());
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

/// `2026-11-01T00:00:00Z`, `2026-11-01T01:00:00+01:00`, `2026-11-01` (UTC midnight),
/// `2026-11-01T06:00` (UTC), or a duration before now (`36h`, `7d`).
fn parse_time(text: &str) -> Result<DateTime<Utc>, String> {
    let text = text.trim();
    if let Ok(t) = DateTime::parse_from_rfc3339(text) {
        return Ok(t.with_timezone(&Utc));
    }
    for format in ["%Y-%m-%dT%H:%M:%S", "%Y-%m-%dT%H:%M", "%Y-%m-%d %H:%M:%S", "%Y-%m-%d %H:%M"] {
        if let Ok(t) = NaiveDateTime::parse_from_str(text, format) {
            return Ok(t.and_utc());
        }
    }
    if let Ok(d) = NaiveDate::parse_from_str(text, "%Y-%m-%d") {
        return Ok(d.and_hms_opt(0, 0, 0).map(|t| t.and_utc()).unwrap_or_default());
    }
    let ago = humantime::parse_duration(text).map_err(|_| {
        format!("invalid time {text:?} (examples: 2026-11-01T00:00:00Z, 2026-11-01, 2026-11-01T06:00, 36h)")
    })?;
    chrono::Duration::from_std(ago)
        .ok()
        .and_then(|ago| Utc::now().checked_sub_signed(ago))
        .ok_or_else(|| format!("{text:?} reaches too far back"))
}

/// `50`, `50/s`, `600/m`, `3600/h` → items per second.
fn parse_rate(text: &str) -> Result<f64, String> {
    let (count, per) = text.trim().split_once('/').unwrap_or((text.trim(), "s"));
    let seconds = match per.trim() {
        "s" | "sec" | "second" => 1.0,
        "m" | "min" | "minute" => 60.0,
        "h" | "hour" => 3600.0,
        other => return Err(format!("invalid rate unit {other:?} (use N/s, N/m or N/h)")),
    };
    match count.trim().parse::<f64>() {
        Ok(n) if n > 0.0 && n.is_finite() => Ok(n / seconds),
        _ => Err(format!("invalid rate {text:?} (a positive number, e.g. 50/s)")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_take_rfc3339_dates_and_durations_ago() {
        assert_eq!(parse_time("2026-11-01T01:00:00+01:00").unwrap().to_rfc3339(), "2026-11-01T00:00:00+00:00");
        assert_eq!(parse_time("2026-11-01").unwrap().to_rfc3339(), "2026-11-01T00:00:00+00:00");
        assert_eq!(parse_time("2026-11-01T06:30").unwrap().to_rfc3339(), "2026-11-01T06:30:00+00:00");
        let ago = Utc::now() - parse_time("36h").unwrap();
        assert!((ago.num_seconds() - 36 * 3600).abs() < 5);
        let error = parse_time("yesterday-ish").unwrap_err();
        assert!(error.contains("\"yesterday-ish\""), "{error}");
    }

    #[test]
    fn rates_take_a_unit() {
        assert_eq!(parse_rate("50").unwrap(), 50.0);
        assert_eq!(parse_rate("600/m").unwrap(), 10.0);
        assert_eq!(parse_rate("3600/h").unwrap(), 1.0);
        assert!(parse_rate("0/s").is_err());
        assert!(parse_rate("5/fortnight").is_err());
    }
}
