//! A warm pool: the pool's other threads poll for work while a training loop runs (issue 9,
//! docs/BENCHMARKS.md, attempts 15 and 16).
//!
//! Rayon parks an idle thread after a few dozen rounds (microseconds), and waking it takes a
//! futex call and, on a virtual machine, a halted vCPU to be run again: `perf sched` measured
//! 0.57 ms from wake-up to running on the 2-core VM, and 14,446 wake-ups of the pool's other
//! thread in a 60-step mini fine-tune, whose parallel regions are separated by short serial
//! operations (burn's element-wise ops and SGD). So the main thread did most tasks itself
//! before the other thread was running again.
//!
//! A poller is a job on every pool thread but the caller's that takes pending work with
//! `rayon::yield_now` as soon as it appears, the way OpenMP's threads spin between PyTorch's
//! parallel regions, and yields to the OS between idle polls so the data loader still runs.
//! Spinning is only worth it on a core nobody else wants, so a poller bounds itself, as
//! libgomp's spin-then-sleep does:
//! - after [`IDLE_LIMIT`] without work it returns, and its thread parks as rayon's do;
//! - every [`WINDOW`] it compares its thread's CPU time with the wall time; below
//!   [`MIN_CPU_SHARE`] the core is shared (another process, or a hypervisor taking the
//!   vCPU), and spinning takes time from the run itself: the poller returns, and no poller
//!   starts again for a back-off that doubles while the sharing lasts. It checks the same
//!   before an idle return, since a poller kept off its core also looks idle.
//!
//! [`WarmPool::tick`], once a step, starts the pollers again where they have returned.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// A poller returns after this long without work. Gaps between a step's parallel regions
/// stayed under 5 ms in the mini fine-tune (all but 1 of about 32,000 in 100 steps).
pub const IDLE_LIMIT: Duration = Duration::from_millis(10);
/// How often a poller checks that it has its core.
pub const WINDOW: Duration = Duration::from_millis(50);
/// The share of a [`WINDOW`]'s wall time a poller must get on its core to keep polling; with
/// the core to itself it gets all of it, less the loader's turns.
pub const MIN_CPU_SHARE: f64 = 0.75;
/// The pollers' first back-off after finding the core shared; it doubles, up to
/// [`MAX_BACKOFF`], while each retry finds it shared again.
pub const FIRST_BACKOFF: Duration = Duration::from_secs(1);
pub const MAX_BACKOFF: Duration = Duration::from_secs(32);

/// Keeps the pool's other threads polling for work while it lives; see the module's doc.
/// Dropping it stops the pollers and waits until they have returned.
pub struct WarmPool {
    shared: Arc<Shared>,
    caller: usize,
}

struct Shared {
    stop: AtomicBool,
    /// Poller jobs broadcast and not yet returned, queued or running.
    outstanding: AtomicUsize,
    /// Pollers running now.
    polling: AtomicUsize,
    /// Nanoseconds after `epoch` before which [`WarmPool::tick`] starts no pollers.
    resume_at_ns: AtomicU64,
    /// The back-off the next finding of a shared core sets, in nanoseconds.
    backoff_ns: AtomicU64,
    backoffs: AtomicUsize,
    epoch: Instant,
}

/// A [`WarmPool`] for the caller's training loop, unless `DENSESSL_WARM_POOL=off`, or the
/// platform cannot tell a poller's CPU time (then only `DENSESSL_WARM_POOL=on` asks for
/// one, without the shared-core check); `None` where it cannot work (see
/// [`WarmPool::start`]).
pub fn keep_pool_warm() -> Option<WarmPool> {
    match std::env::var("DENSESSL_WARM_POOL").as_deref() {
        Ok("off") => None,
        Ok("on") => WarmPool::start(),
        _ if thread_cpu_time().is_some() => WarmPool::start(),
        _ => None,
    }
}

impl WarmPool {
    /// Starts polling on the global pool's threads other than the caller's. `None` where the
    /// caller is not in the pool (the binary puts the main thread there,
    /// [`super::configure`]) or the pool has no other thread.
    pub fn start() -> Option<WarmPool> {
        let caller = rayon::current_thread_index()?;
        if rayon::current_num_threads() < 2 {
            return None;
        }
        let pool = WarmPool { shared: Arc::new(Shared::new()), caller };
        pool.tick();
        Some(pool)
    }

    /// Starts the pollers again where they have returned, unless a back-off is in force.
    /// Call it once a step: while they poll it costs one atomic load.
    pub fn tick(&self) {
        let shared = &self.shared;
        if shared.outstanding.load(Ordering::SeqCst) > 0 || shared.now_ns() < shared.resume_at_ns.load(Ordering::SeqCst) {
            return;
        }
        let others = rayon::current_num_threads() - 1;
        if shared.outstanding.compare_exchange(0, others, Ordering::SeqCst, Ordering::SeqCst).is_err() {
            return; // another thread's tick started them
        }
        let (shared, caller) = (self.shared.clone(), self.caller);
        rayon::spawn_broadcast(move |thread| {
            if thread.index() != caller {
                shared.poll();
                shared.outstanding.fetch_sub(1, Ordering::SeqCst);
            }
        });
    }

    /// How many pool threads are polling now (a started poller runs once its thread next
    /// looks for work).
    pub fn pollers(&self) -> usize {
        self.shared.polling.load(Ordering::SeqCst)
    }

    /// How many times the pollers found their core shared and backed off.
    pub fn backoffs(&self) -> usize {
        self.shared.backoffs.load(Ordering::SeqCst)
    }
}

impl Drop for WarmPool {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        // A queued poller sees the flag when it starts and returns at once.
        while self.shared.outstanding.load(Ordering::SeqCst) > 0 {
            std::thread::yield_now();
        }
        let backoffs = self.backoffs();
        if backoffs > 0 {
            tracing::debug!("warm pool: the pollers found their core shared and backed off {backoffs} times");
        }
    }
}

impl Shared {
    fn new() -> Shared {
        Shared {
            stop: AtomicBool::new(false),
            outstanding: AtomicUsize::new(0),
            polling: AtomicUsize::new(0),
            resume_at_ns: AtomicU64::new(0),
            backoff_ns: AtomicU64::new(FIRST_BACKOFF.as_nanos() as u64),
            backoffs: AtomicUsize::new(0),
            epoch: Instant::now(),
        }
    }

    fn now_ns(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64
    }

    /// One poller's life on its thread: poll until stopped, idle for [`IDLE_LIMIT`], or the
    /// core is found shared.
    fn poll(&self) {
        if self.stop.load(Ordering::SeqCst) {
            return;
        }
        self.polling.fetch_add(1, Ordering::SeqCst);
        let mut last_work = Instant::now();
        let mut window = (last_work, thread_cpu_time());
        let mut idle_polls = 0u32;
        while !self.stop.load(Ordering::SeqCst) {
            if rayon::yield_now() == Some(rayon::Yield::Executed) {
                idle_polls = 0;
                last_work = Instant::now();
            } else {
                idle_polls = idle_polls.wrapping_add(1);
                if idle_polls.is_multiple_of(64) {
                    std::thread::yield_now();
                } else {
                    std::hint::spin_loop();
                }
            }
            let now = Instant::now();
            // A poller kept off its core long enough also looks idle, so the share is checked
            // before an idle return too, over the window so far where it is long enough.
            let idle = now - last_work > IDLE_LIMIT;
            if idle || now - window.0 >= WINDOW {
                let cpu = thread_cpu_time();
                if let (Some(before), Some(after)) = (window.1, cpu)
                    && now - window.0 >= IDLE_LIMIT
                {
                    let share = (after.saturating_sub(before)).as_secs_f64() / (now - window.0).as_secs_f64();
                    if share < MIN_CPU_SHARE {
                        self.back_off();
                        break;
                    }
                    if !idle {
                        self.backoff_ns.store(FIRST_BACKOFF.as_nanos() as u64, Ordering::SeqCst);
                    }
                }
                if idle {
                    break;
                }
                window = (now, cpu);
            }
        }
        self.polling.fetch_sub(1, Ordering::SeqCst);
    }

    fn back_off(&self) {
        let backoff = self.backoff_ns.load(Ordering::SeqCst);
        self.resume_at_ns.store(self.now_ns() + backoff, Ordering::SeqCst);
        self.backoff_ns.store((backoff * 2).min(MAX_BACKOFF.as_nanos() as u64), Ordering::SeqCst);
        self.backoffs.fetch_add(1, Ordering::SeqCst);
    }
}

/// The calling thread's CPU time, where the platform reports it.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn thread_cpu_time() -> Option<Duration> {
    // SAFETY: `clock_gettime` fills the zeroed struct it is given.
    let time = unsafe {
        let mut time: libc::timespec = std::mem::zeroed();
        (libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut time) == 0).then_some(time)?
    };
    Some(Duration::new(time.tv_sec as u64, time.tv_nsec as u32))
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn thread_cpu_time() -> Option<Duration> {
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn back_offs_double_up_to_the_limit() {
        let shared = Shared::new();
        let mut expected = FIRST_BACKOFF.as_nanos() as u64;
        for n in 1..=8 {
            let before = shared.now_ns();
            shared.back_off();
            let resume = shared.resume_at_ns.load(Ordering::SeqCst);
            assert!(resume >= before + expected && resume <= shared.now_ns() + expected, "back-off {n} is not {expected} ns");
            assert_eq!(shared.backoffs.load(Ordering::SeqCst), n);
            expected = (expected * 2).min(MAX_BACKOFF.as_nanos() as u64);
        }
        assert_eq!(shared.backoff_ns.load(Ordering::SeqCst), MAX_BACKOFF.as_nanos() as u64);
    }
}
