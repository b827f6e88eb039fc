use std::path::PathBuf;
use std::process::ExitCode;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Pipeline files, or directories of *.toml files.
    #[arg(required = true)]
    paths: Vec<PathBuf>,
    /// The address `weir run` will listen on: a pipeline open to anyone (`auth =
    /// "none"`, `notify_auth = "none"`) is refused unless it is loopback.
    #[arg(long, default_value = "127.0.0.1:9750")]
    listen: std::net::SocketAddr,
}

pub fn run(args: Args, engine: &crate::Engine) -> anyhow::Result<ExitCode> {
    match engine.load(&args.paths) {
        Ok(pipelines) => {
            let mut open = 0;
            for p in &pipelines {
                if !args.listen.ip().is_loopback() && p.trigger.push_auth().is_some_and(|auth| auth.is_open()) {
                    open += 1;
                    println!(
                        "{}: pipeline {} takes events from anyone (auth \"none\"), which is only allowed on a \
                         loopback address, not {}: give it a token",
                        p.file.display(),
                        p.name,
                        args.listen
                    );
                    continue;
                }
                println!("{}: ok ({} steps)", p.file.display(), p.steps.len());
            }
            Ok(if open == 0 { ExitCode::SUCCESS } else { ExitCode::FAILURE })
        }
        Err(diagnostics) => {
            println!("{diagnostics}");
            eprintln!("{} error(s)", diagnostics.0.len());
            Ok(ExitCode::FAILURE)
        }
    }
}
