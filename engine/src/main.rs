//! The `weir` binary: the command line over the built-in functions.

/// mimalloc: a record through a pipeline allocates a handful of small objects on one
/// thread and frees them on another; glibc's allocator spends more time on that than
/// weir spends on the record (see benches/benches/kafka_throughput.rs).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// mimalloc 3's `mi_option_purge_delay` (its `include/mimalloc.h`); a test checks it
/// still names the option whose default is one second.
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

fn main() -> std::process::ExitCode {
    // mimalloc keeps freed pages for a second before it gives them back; a photo's
    // decoded frames and resize buffers are freed within milliseconds, so on a burst
    // the pages of many photos were held at once: 70–90 MiB of the headline job's peak
    // RSS was memory already freed. Given back at once, the peak is what is in use.
    // An explicit MIMALLOC_PURGE_DELAY still wins.
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        // SAFETY: sets an option before any other thread allocates.
        unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, 0) };
    }
    weir_engine::cli::main(weir_functions::Registry::builtin())
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_purge_delay_option_is_the_one_set() {
        // Its documented default (1000 ms), unless the environment set it.
        if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
            assert_eq!(unsafe { libmimalloc_sys::mi_option_get(super::MI_OPTION_PURGE_DELAY) }, 1000);
        }
    }
}
