//! The `weir` binary: the command line over the built-in functions.

/// mimalloc: a record through a pipeline allocates a handful of small objects on one
/// thread and frees them on another; glibc's allocator spends more time on that than
/// weir spends on the record (see benches/benches/kafka_throughput.rs).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    weir_engine::cli::main(weir_functions::Registry::builtin())
}
