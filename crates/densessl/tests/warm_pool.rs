//! The warm pool (`runtime::WarmPool`): while it lives the pool's other thread takes parallel
//! work (results unchanged); it stops polling when idle and when it finds its core shared,
//! `tick` starts it again, and dropping the guard stops it. One test per binary: it makes
//! the test's thread a member of rayon's global pool, as the binary does with its main
//! thread. Linux with glibc only: the CPU time comes from `getrusage`, through the `libc` the
//! crate has there, and the shared-core check needs the thread CPU clock.
#![cfg(all(target_os = "linux", target_env = "gnu"))]

use std::time::{Duration, Instant};

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use densessl::runtime::WarmPool;
use rayon::prelude::*;

fn wait_until(what: &str, done: impl Fn() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < Duration::from_secs(30), "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// About `micros` of CPU work that the optimiser cannot drop.
fn busy(micros: u64) -> u64 {
    let start = Instant::now();
    let mut x = 1u64;
    while start.elapsed() < Duration::from_micros(micros) {
        x = std::hint::black_box(x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1));
    }
    x
}

/// The process's CPU seconds (user + system) while this thread sleeps `seconds`.
fn cpu_seconds_while_sleeping(seconds: f64) -> f64 {
    fn used() -> f64 {
        // SAFETY: `getrusage` fills the zeroed struct it is given.
        let usage = unsafe {
            let mut usage: libc::rusage = std::mem::zeroed();
            assert_eq!(libc::getrusage(libc::RUSAGE_SELF, &mut usage), 0);
            usage
        };
        let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 * 1e-6;
        secs(usage.ru_utime) + secs(usage.ru_stime)
    }
    let before = used();
    std::thread::sleep(Duration::from_secs_f64(seconds));
    used() - before
}

#[test]
fn warm_pool_takes_work_parks_when_idle_backs_off_when_shared_and_stops() {
    assert!(WarmPool::start().is_none(), "a thread outside the pool cannot keep it warm");
    rayon::ThreadPoolBuilder::new().num_threads(2).use_current_thread().build_global().expect("the global pool is built once");
    assert_eq!(rayon::current_thread_index(), Some(0));

    let warm = WarmPool::start().expect("the test's thread is in a 2-thread pool");
    wait_until("the other thread polls", || {
        warm.tick();
        warm.pollers() == 1
    });
    let ran: Vec<(u64, usize)> = (0..400u64)
        .into_par_iter()
        .map(|i| {
            busy(250);
            (i * i, rayon::current_thread_index().expect("pool work runs on pool threads"))
        })
        .collect();
    assert_eq!(ran.iter().map(|r| r.0).sum::<u64>(), (0..400u64).map(|i| i * i).sum::<u64>());
    let on_other = ran.iter().filter(|r| r.1 == 1).count();
    assert!(on_other > 0, "the polling thread took none of 400 tasks of 0.25 ms");

    // With no work for 10 ms the poller returns and its thread parks as rayon's do.
    wait_until("the idle poller returns", || warm.pollers() == 0);
    let parked = cpu_seconds_while_sleeping(0.5);
    assert!(parked < 0.1, "the pool used {parked:.3} s of CPU in 0.5 s with the poller idle");
    wait_until("tick starts the poller again", || {
        warm.tick();
        warm.pollers() == 1
    });

    // Threads outside the pool that keep every core busy: the poller, fed work, finds its
    // core shared and backs off; while the back-off lasts (1 s), `tick` starts no poller.
    let hogging = Arc::new(AtomicBool::new(true));
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    let hogs: Vec<_> = (0..2 * cores)
        .map(|_| {
            let hogging = hogging.clone();
            std::thread::spawn(move || {
                while hogging.load(Ordering::Relaxed) {
                    busy(1000);
                }
            })
        })
        .collect();
    let start = Instant::now();
    while warm.backoffs() == 0 {
        assert!(start.elapsed() < Duration::from_secs(30), "the poller never found its core shared by {} busy threads", 2 * cores);
        warm.tick();
        let _: u64 = (0..64u64).into_par_iter().map(|_| busy(100)).sum();
    }
    wait_until("the backed-off poller returns", || warm.pollers() == 0);
    warm.tick();
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(warm.pollers(), 0, "tick started a poller during the back-off");
    hogging.store(false, Ordering::Relaxed);
    for hog in hogs {
        hog.join().expect("a busy thread panicked");
    }

    // Once dropped, the other thread parks as rayon's threads do.
    drop(warm);
    let parked = cpu_seconds_while_sleeping(0.5);
    assert!(parked < 0.1, "the pool used {parked:.3} s of CPU in 0.5 s after the warm pool was dropped");
    let indices = rayon::broadcast(|thread| thread.index());
    assert_eq!(indices, vec![0, 1]);
    let again = WarmPool::start().expect("a second warm pool starts after the first stopped");
    wait_until("the second poller starts", || {
        again.tick();
        again.pollers() == 1
    });
    drop(again);
}
