//! What the kernel-timing examples share: the timing loop and their deterministic inputs.

use std::time::Instant;

/// The fastest of 9 calls of `f` after one warm-up call, in milliseconds.
pub fn fastest_ms(f: impl Fn()) -> f64 {
    f();
    (0..9)
        .map(|_| {
            let start = Instant::now();
            f();
            start.elapsed().as_secs_f64() * 1e3
        })
        .fold(f64::INFINITY, f64::min)
}

/// A deterministic ramp of `n` values in [0, 1).
pub fn ramp(n: usize, period: usize) -> Vec<f32> {
    (0..n).map(|i| (i % period) as f32 / period as f32).collect()
}
