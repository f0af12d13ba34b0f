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
//! - **Opt-in, `DENSESSL_WARM_POOL=on`**: the training loops keep the pool's other threads
//!   polling for work instead of parking ([`WarmPool`]).
//!
//! `DENSESSL_RUNTIME=default` leaves the first two as the platform sets them (for A/B measurements:
//! docs/BENCHMARKS.md, "Attempt 7").

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

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

/// Keeps the pool's other threads polling for work while it lives (issue 9; opt-in with
/// `DENSESSL_WARM_POOL=on`).
///
/// Rayon parks an idle thread after a few dozen rounds (microseconds), and waking it takes a
/// futex call and, on a virtual machine, a halted vCPU to be run again: `perf sched` measured
/// 0.57 ms from wake-up to running on the 2-core VM, and 14,446 wake-ups of the pool's other
/// thread in a 60-step mini fine-tune, whose parallel regions are separated by short serial
/// operations. While a `WarmPool` lives, every pool thread but the caller runs a job that
/// takes pending work with `rayon::yield_now` as soon as it appears (the way OpenMP's threads
/// spin between PyTorch's parallel regions) and yields to the OS scheduler between idle polls,
/// so the data loader's thread still gets its turn. It made tiny steps up to 1.85× faster and
/// the mini fine-tune ~5 %, but runs slower while the shared VM it was measured on was
/// loaded, so it is off by default (docs/BENCHMARKS.md, "Attempt 15"). Dropping it stops the
/// pollers and waits until they have.
pub struct WarmPool {
    stop: Arc<AtomicBool>,
    pollers: Arc<AtomicUsize>,
}

/// A [`WarmPool`] for the caller's training loop where `DENSESSL_WARM_POOL=on` asks for one
/// and it can work (see [`WarmPool::start`]); `None` otherwise.
pub fn keep_pool_warm() -> Option<WarmPool> {
    if std::env::var("DENSESSL_WARM_POOL").is_ok_and(|v| v == "on") { WarmPool::start() } else { None }
}

impl WarmPool {
    /// Starts polling on the global pool's threads other than the caller's. `None` where the
    /// caller is not in the pool (the binary puts the main thread there, [`configure`]) or the
    /// pool has no other thread.
    pub fn start() -> Option<WarmPool> {
        let caller = rayon::current_thread_index()?;
        if rayon::current_num_threads() < 2 {
            return None;
        }
        let stop = Arc::new(AtomicBool::new(false));
        let pollers = Arc::new(AtomicUsize::new(0));
        let (stopped, running) = (stop.clone(), pollers.clone());
        rayon::spawn_broadcast(move |thread| {
            if thread.index() == caller {
                return;
            }
            running.fetch_add(1, Ordering::SeqCst);
            let mut idle_polls = 0u32;
            while !stopped.load(Ordering::SeqCst) {
                if rayon::yield_now() == Some(rayon::Yield::Executed) {
                    idle_polls = 0;
                } else {
                    idle_polls = idle_polls.wrapping_add(1);
                    if idle_polls % 64 == 0 {
                        std::thread::yield_now();
                    } else {
                        std::hint::spin_loop();
                    }
                }
            }
            running.fetch_sub(1, Ordering::SeqCst);
        });
        Some(WarmPool { stop, pollers })
    }

    /// How many pool threads are polling now (they start as soon as they next look for work).
    pub fn pollers(&self) -> usize {
        self.pollers.load(Ordering::SeqCst)
    }
}

impl Drop for WarmPool {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // A poller that starts after this sees the flag and returns at once.
        while self.pollers.load(Ordering::SeqCst) > 0 {
            std::hint::spin_loop();
        }
    }
}
