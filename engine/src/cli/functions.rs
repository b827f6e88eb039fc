use std::process::ExitCode;

use weir_functions::Registry;

pub fn run(registry: &Registry) -> anyhow::Result<ExitCode> {
    for spec in registry.specs() {
        println!("{}\n    {}", spec.name, spec.summary);
        for p in spec.params {
            let default = p.default.map(|d| format!(" (default: {d})")).unwrap_or_else(|| " (required)".into());
            println!("    {:<12} {}{}\n                 {}", p.name, p.kind, default, p.doc);
        }
        println!();
    }
    Ok(ExitCode::SUCCESS)
}
