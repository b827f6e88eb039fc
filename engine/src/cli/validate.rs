use std::path::PathBuf;
use std::process::ExitCode;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Pipeline files, or directories of *.toml files.
    #[arg(required = true)]
    paths: Vec<PathBuf>,
}

pub fn run(args: Args, engine: &crate::Engine) -> anyhow::Result<ExitCode> {
    match engine.load(&args.paths) {
        Ok(pipelines) => {
            for p in &pipelines {
                println!("{}: ok ({} steps)", p.file.display(), p.steps.len());
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(diagnostics) => {
            println!("{diagnostics}");
            eprintln!("{} error(s)", diagnostics.0.len());
            Ok(ExitCode::FAILURE)
        }
    }
}
