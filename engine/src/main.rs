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
    fix_the_c_allocators_mmap_threshold();
    weir_engine::cli::main(weir_functions::Registry::builtin())
}

/// The C libraries (libjpeg-turbo, SQLite, librdkafka) allocate through glibc's malloc,
/// whose threshold for giving a large block its own mapping rises to the largest block
/// freed so far: after the first progressive photo, its 50 MB coefficient buffers came
/// from the heaps of whichever threads decoded, and stayed there between photos (the
/// headline job's peak: 163 MiB with the moving threshold, 119–129 MiB fixed). Fixed at
/// 1 MiB, large blocks are mapped and unmapped, and smaller ones reuse the heap.
/// `MALLOC_MMAP_THRESHOLD_` in the environment still wins.
fn fix_the_c_allocators_mmap_threshold() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if std::env::var_os("MALLOC_MMAP_THRESHOLD_").is_none() {
        // SAFETY: mallopt only changes a malloc parameter; called before other threads start.
        unsafe { libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 20) };
    }
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
