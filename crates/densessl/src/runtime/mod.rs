//! Process-wide CPU settings the binary applies before any work starts (issue 9).
//!
//! - **The main thread joins rayon's pool** (`use_current_thread`): training code calls the
//!   kernels from the main thread, and rayon would otherwise have it hand every parallel
//!   region to the pool's threads and sleep until they finish — one more thread than cores,
//!   and two wake-ups per region (about 6,000 context switches per ResNet-18 step on 2
//!   cores, against 200 with the main thread in the pool).
//! - **glibc keeps freed memory** (`mallopt`): the kernels' tasks each call `gemm`, which
//!   allocates its packing buffers per call; with glibc's adaptive thresholds those came
//!   back as fresh mappings, and the page faults tripled a stem convolution's time.
//!
//! - **The training loops keep the pool warm** ([`WarmPool`], `warm_pool.rs`): the pool's
//!   other threads poll for work between parallel regions instead of parking, and stop
//!   when idle or when they find the CPU shared. `DENSESSL_WARM_POOL=off` turns it off.
//!
//! `DENSESSL_RUNTIME=default` leaves the first two as the platform sets them (for A/B measurements:
//! docs/BENCHMARKS.md, "Attempt 7").

mod warm_pool;

pub use warm_pool::{WarmPool, keep_pool_warm};

/// Applies the settings above once; call it first in `main`, before anything uses rayon.
/// Returns what was applied, for the log.
pub fn configure() -> Vec<&'static str> {
    if std::env::var("DENSESSL_RUNTIME").is_ok_and(|v| v == "default") {
        return Vec::new();
    }
    let mut applied = Vec::new();
    // With one thread the pool would be the main thread alone, and work that other threads
    // hand to the pool (the data loader's decoding) would wait for the main thread, which may
    // be waiting for that very loader: a deadlock. Rayon's default stays there.
    if pool_threads() >= 2 && rayon::ThreadPoolBuilder::new().use_current_thread().build_global().is_ok() {
        applied.push("main thread in rayon's pool");
    }
    if keep_freed_memory() {
        applied.push("glibc keeps freed memory");
    }
    applied
}

/// The size rayon gives its global pool: `RAYON_NUM_THREADS` (the experiment runner shares
/// the cores out through it), else one thread per core.
fn pool_threads() -> usize {
    std::env::var("RAYON_NUM_THREADS")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .filter(|&n| n > 0)
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn keep_freed_memory() -> bool {
    // Allocations below 32 MB (glibc's largest mmap threshold) come from the heap, and up to
    // 512 MB of free heap top stays mapped; setting them turns glibc's adaptive thresholds off.
    const MMAP_THRESHOLD: i32 = 32 << 20;
    const TRIM_THRESHOLD: i32 = 512 << 20;
    const TOP_PAD: i32 = 64 << 20;
    // SAFETY: `mallopt` only changes allocator parameters; no allocation is in flight that
    // the call could invalidate.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1
            && libc::mallopt(libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
            && libc::mallopt(libc::M_TOP_PAD, TOP_PAD) == 1
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn keep_freed_memory() -> bool {
    false
}
