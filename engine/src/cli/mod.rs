//! The `weir` command line. Embedders call [`main`] with their own registry to get the
//! same CLI over their own functions.

pub mod dlq;
mod functions;
mod invoke;
mod replay;
mod run;
mod runs;
mod validate;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use weir_functions::Registry;

use crate::trigger::Triggers;
use crate::Engine;

/// weir: a self-hosted event-pipeline engine. Triggers (a bucket, a schedule, a Kafka
/// topic) feed native functions declared in TOML pipelines.
#[derive(Parser, Debug)]
#[command(name = "weir", version, about, long_about = None)]
pub struct Cli {
    /// Log format: readable text, or one JSON object per line for machines.
    #[arg(long, global = true, value_enum, default_value = "text", env = "WEIR_LOG_FORMAT")]
    log_format: LogFormat,

    /// Memory that image decoders may hold beyond the pixels they output, shared by
    /// everything in flight: a progressive JPEG keeps all its coefficients until the
    /// last scan (3–6 bytes a pixel at full size), so large ones take turns within
    /// this. `"256MiB"`, `"1GB"`; default 48 MiB per core.
    #[arg(long, global = true, env = "WEIR_DECODE_MEMORY", value_name = "SIZE")]
    decode_memory: Option<weir_functions::units::ByteSize>,

    #[command(subcommand)]
    command: Command,
}

#[derive(Copy, Clone, Debug, ValueEnum, PartialEq, Eq)]
enum LogFormat {
    Text,
    Json,
}

/// Where the ledger lives; shared by the commands that read or write state.
#[derive(clap::Args, Debug, Clone)]
pub struct StateArgs {
    /// State directory: the SQLite ledger and the default dead-letter bucket.
    #[arg(long, env = "WEIR_STATE_DIR", default_value = "data/.weir")]
    pub state_dir: PathBuf,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run pipelines until Ctrl-C / SIGTERM, then drain in-flight work and exit 0.
    ///
    /// Validates every pipeline first (like `weir validate`) and refuses to start on
    /// any error. A second Ctrl-C exits at once; unfinished events run again next time.
    Run(run::Args),
    /// Push history through a pipeline: a bucket's existing objects or a schedule's
    /// past ticks, skipping what the ledger records as done. Resumable (`--resume`).
    Replay(replay::Args),
    /// Check pipeline files; print every error as file:line:column and exit 1 if any.
    Validate(validate::Args),
    /// Run one function on a local file, like `sam local invoke`.
    Invoke(invoke::Args),
    /// List the registered functions and their parameters.
    Functions,
    /// Show recent runs from the ledger.
    Runs(runs::Args),
    /// Inspect and re-drive dead-lettered events.
    #[command(subcommand)]
    Dlq(dlq::Command),
}

/// Parses the command line, runs the command, and maps errors to exit codes
/// (1 for failures, with the error chain printed). Triggers: the built-ins.
pub fn main(registry: Registry) -> ExitCode {
    main_with(registry, Triggers::builtin())
}

/// [`main`] with your own trigger kinds besides (or instead of) the built-ins.
pub fn main_with(registry: Registry, triggers: Triggers) -> ExitCode {
    let cli = Cli::parse();
    let default_level = if matches!(cli.command, Command::Run(_)) { "info" } else { "warn" };
    init_logging(cli.log_format, default_level);
    if let Some(weir_functions::units::ByteSize(bytes)) = cli.decode_memory {
        weir_functions::image::scratch::set_capacity(bytes);
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let engine = Engine::new(registry).triggers(triggers);
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Run(args) => run::run(args, engine).await,
            Command::Replay(args) => replay::run(args, engine).await,
            Command::Validate(args) => validate::run(args, &engine),
            Command::Invoke(args) => invoke::run(args, &engine.registry).await,
            Command::Functions => functions::run(&engine.registry),
            Command::Runs(args) => runs::run(args).await,
            Command::Dlq(command) => dlq::run(command, engine).await,
        }
    });
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(format: LogFormat, default_level: &str) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("WEIR_LOG")
        .or_else(|_| EnvFilter::try_from_default_env())
        .unwrap_or_else(|_| EnvFilter::new(default_level));
    use std::io::IsTerminal;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}
