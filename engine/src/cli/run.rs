use std::path::PathBuf;
use std::process::ExitCode;

use tokio_util::sync::CancellationToken;

use super::StateArgs;
use crate::config::units::parse_duration;
use crate::Engine;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Pipeline files, or directories of *.toml files.
    #[arg(required = true)]
    paths: Vec<PathBuf>,
    #[command(flatten)]
    state: StateArgs,
    /// How long in-flight events may take to finish after Ctrl-C / SIGTERM.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    grace: std::time::Duration,
    /// Invocations running at once across all pipelines (default: 4 × cores).
    #[arg(long)]
    max_concurrency: Option<usize>,
    /// Address of the HTTP endpoint: `/v1/health`, `/v1/ready`, `/metrics`, the status
    /// page, bucket notifications (`POST /v1/notifications/{pipeline}`) and HTTP
    /// triggers (`POST /v1/invoke/{pipeline}`) [default: 127.0.0.1:9750; when that is
    /// taken, weir runs without it unless a pipeline takes notifications or requests]
    #[arg(long, env = "WEIR_LISTEN")]
    listen: Option<std::net::SocketAddr>,
    /// Exit 1 if a start-up health check fails (a bucket missing or unreadable, brokers
    /// not answering, a topic missing) instead of warning and waiting for it.
    #[arg(long)]
    require_healthy: bool,
}

pub async fn run(args: Args, engine: Engine) -> anyhow::Result<ExitCode> {
    let mut engine = engine.state_dir(args.state.state_dir).grace(args.grace);
    engine = match args.listen {
        Some(addr) => engine.listen(addr).serve(crate::Serve::Always),
        None => engine.serve(crate::Serve::IfFree),
    };
    if let Some(n) = args.max_concurrency {
        engine.global_concurrency = n.max(1);
    }
    let pipelines = match engine.load(&args.paths) {
        Ok(p) => p,
        Err(diagnostics) => {
            eprintln!("{diagnostics}");
            anyhow::bail!("{} error(s) in pipeline files; nothing started", diagnostics.0.len());
        }
    };
    let images = pipelines.iter().any(|p| p.steps.iter().any(|s| s.function_name.starts_with("image.")));
    if images && !weir_functions::image::jpeg::SIMD {
        tracing::warn!(
            "this weir was built without nasm: JPEG runs without libjpeg's SIMD kernels, the headline job \
             about 10% slower (apt-get install nasm, cargo clean -p mozjpeg-sys, build again)"
        );
    }
    let problems = crate::health::check(&engine.stores, &pipelines).await;
    for problem in &problems {
        tracing::warn!(pipeline = %problem.pipeline, part = %problem.part, error = %problem.error, "health check failed");
    }
    if args.require_healthy && !problems.is_empty() {
        for problem in &problems {
            eprintln!("unhealthy: {problem}");
        }
        return Ok(ExitCode::from(1));
    }
    let stop = CancellationToken::new();
    tokio::spawn(stop_on_signals(stop.clone()));
    engine.run(pipelines, stop).await?;
    Ok(ExitCode::SUCCESS)
}

/// First SIGINT/SIGTERM: stop intake and drain. Second: exit at once (unfinished
/// events are not acknowledged, so they run again on the next start).
pub(super) async fn stop_on_signals(stop: CancellationToken) {
    wait_for_signal().await;
    tracing::info!("stopping: no new events; finishing in-flight ones (signal again to exit at once)");
    stop.cancel();
    wait_for_signal().await;
    tracing::warn!("second signal: exiting now");
    std::process::exit(130);
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
