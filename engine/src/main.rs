//! The `weir` binary: the command line over the built-in functions.

fn main() -> std::process::ExitCode {
    weir_engine::cli::main(weir_functions::Registry::builtin())
}
