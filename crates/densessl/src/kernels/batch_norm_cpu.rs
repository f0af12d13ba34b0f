//! Training-mode batch normalisation on contiguous NCHW `f32` buffers, in few passes.
//!
//! burn's generic `batch_norm_train` (which burn-flex does not override) reaches each
//! channel's values through a transposed copy, once for the mean and once for the variance,
//! and builds the output and the gradients from whole-tensor elementwise operations: about
//! ten passes over the activation forward and as many backward. Here each channel's values
//! are read where they lie (one `H·W` plane per image), so the forward pass reads `x` three
//! times and writes once, and the backward pass reads `x` and the output gradient twice each
//! and writes once.
//!
//! Shapes: `x`, output and output gradient `[N, C, S]` (`S = H·W`, any rank flattened the
//! same way); `gamma`, `beta`, mean and variance `[C]`. The variance is the biased one, as
//! burn and PyTorch normalise with.

use rayon::prelude::*;

/// Sizes of an `[N, C, S]` activation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Planes {
    /// Images.
    pub batch: usize,
    /// Channels.
    pub channels: usize,
    /// Values per image and channel (`H·W`).
    pub plane: usize,
}

impl Planes {
    /// Values per channel over the batch.
    fn count(&self) -> f64 {
        (self.batch * self.plane) as f64
    }

    /// Channel `c`'s plane of image `n`.
    fn of<'a>(&self, data: &'a [f32], n: usize, c: usize) -> &'a [f32] {
        let start = (n * self.channels + c) * self.plane;
        &data[start..start + self.plane]
    }
}

/// Sum of `f(value)` over a plane, in eight `f32` lanes (so it vectorises) added in `f64`.
fn lane_sum(values: &[f32], f: impl Fn(f32) -> f32) -> f64 {
    let mut lanes = [0.0f32; 8];
    let chunks = values.chunks_exact(8);
    let rest: f32 = chunks.remainder().iter().map(|&v| f(v)).sum();
    for chunk in chunks {
        for (lane, &v) in lanes.iter_mut().zip(chunk) {
            *lane += f(v);
        }
    }
    lanes.iter().map(|&l| f64::from(l)).sum::<f64>() + f64::from(rest)
}

/// Sum of `f(a, b)` over two planes of equal length, as [`lane_sum`].
fn lane_sum2(a: &[f32], b: &[f32], f: impl Fn(f32, f32) -> f32) -> f64 {
    let mut lanes = [0.0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let rest: f32 = ca.remainder().iter().zip(cb.remainder()).map(|(&x, &y)| f(x, y)).sum();
    for (xa, xb) in ca.zip(cb) {
        for ((lane, &x), &y) in lanes.iter_mut().zip(xa).zip(xb) {
            *lane += f(x, y);
        }
    }
    lanes.iter().map(|&l| f64::from(l)).sum::<f64>() + f64::from(rest)
}

/// Per-channel batch mean and biased variance (two passes: the mean, then squared deviations).
pub fn statistics(x: &[f32], p: Planes) -> (Vec<f32>, Vec<f32>) {
    assert_eq!(x.len(), p.batch * p.channels * p.plane, "x is not [N, C, S]");
    (0..p.channels)
        .into_par_iter()
        .map(|c| {
            let sum: f64 = (0..p.batch).map(|n| lane_sum(p.of(x, n, c), |v| v)).sum();
            let mean = (sum / p.count()) as f32;
            let squares: f64 = (0..p.batch).map(|n| lane_sum(p.of(x, n, c), |v| (v - mean) * (v - mean))).sum();
            (mean, (squares / p.count()) as f32)
        })
        .unzip()
}

/// Writes `a[c]·value + b[c]` of every value of `x` (or of `a·dy + b·(x − shift) + d`, see
/// [`backward`]) plane by plane into a new buffer.
fn map_planes(p: Planes, write: impl Fn(usize, usize, &mut [f32]) + Sync) -> Vec<f32> {
    let mut out = vec![0.0f32; p.batch * p.channels * p.plane];
    if p.plane == 0 {
        return out;
    }
    out.par_chunks_mut(p.plane).enumerate().for_each(|(index, plane)| write(index / p.channels, index % p.channels, plane));
    out
}

/// Training-mode forward: `(output, mean, variance)`, with
/// `output = (x − mean) / sqrt(variance + epsilon) · gamma + beta` per channel.
pub fn forward(x: &[f32], gamma: &[f32], beta: &[f32], epsilon: f64, p: Planes) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    forward_then(x, gamma, beta, epsilon, p, Epilogue::default())
}

/// What the forward pass applies to each normalised value before it writes it, so that a
/// ResNet's `relu(bn(x))` and `relu(bn(x) + identity)` take one pass instead of three.
#[derive(Debug, Clone, Copy, Default)]
pub struct Epilogue<'a> {
    /// Added to the normalised value (`[N, C, S]`, as `x`).
    pub residual: Option<&'a [f32]>,
    /// Then `max(·, 0)`.
    pub relu: bool,
}

/// [`forward`], then the `epilogue`: `output = relu?(bn(x) + residual?)`.
pub fn forward_then(x: &[f32], gamma: &[f32], beta: &[f32], epsilon: f64, p: Planes, epilogue: Epilogue) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    assert!(gamma.len() == p.channels && beta.len() == p.channels, "gamma and beta must be [C]");
    assert!(epilogue.residual.is_none_or(|r| r.len() == x.len()), "the residual must be shaped as x");
    let (mean, variance) = statistics(x, p);
    // y = scale·x + shift, folded per channel.
    let scale: Vec<f32> = (0..p.channels).map(|c| gamma[c] / (f64::from(variance[c]) + epsilon).sqrt() as f32).collect();
    let shift: Vec<f32> = (0..p.channels).map(|c| beta[c] - mean[c] * scale[c]).collect();
    let output = map_planes(p, |n, c, out| {
        let (xs, (a, b)) = (p.of(x, n, c), (scale[c], shift[c]));
        // One loop per case, so each stays branch-free and vectorises.
        match (epilogue.residual.map(|r| p.of(r, n, c)), epilogue.relu) {
            (None, false) => out.iter_mut().zip(xs).for_each(|(o, &v)| *o = v * a + b),
            (None, true) => out.iter_mut().zip(xs).for_each(|(o, &v)| *o = (v * a + b).max(0.0)),
            (Some(rs), false) => out.iter_mut().zip(xs).zip(rs).for_each(|((o, &v), &r)| *o = (v * a + b) + r),
            (Some(rs), true) => out.iter_mut().zip(xs).zip(rs).for_each(|((o, &v), &r)| *o = ((v * a + b) + r).max(0.0)),
        }
    });
    (output, mean, variance)
}

/// ReLU's backward pass: `dy` where the ReLU's `output` is positive, else 0.
pub fn relu_gradient(output: &[f32], dy: &[f32]) -> Vec<f32> {
    assert_eq!(output.len(), dy.len(), "the output and its gradient differ in size");
    let mut masked = vec![0.0f32; dy.len()];
    const CHUNK: usize = 1 << 14;
    masked.par_chunks_mut(CHUNK).zip(output.par_chunks(CHUNK).zip(dy.par_chunks(CHUNK))).for_each(|(m, (ys, gs))| {
        m.iter_mut().zip(ys).zip(gs).for_each(|((m, &y), &g)| *m = if y > 0.0 { g } else { 0.0 });
    });
    masked
}

/// Gradients of [`forward`] given the output gradient `dy`: `(dx, dgamma, dbeta)`.
///
/// With `s = 1/sqrt(variance + epsilon)`, `x̂ = (x − mean)·s` and `M = N·S` values per channel:
/// `dbeta = Σ dy`, `dgamma = Σ dy·x̂`, `dx = gamma·s·(dy − dbeta/M − x̂·dgamma/M)`.
pub fn backward(
    x: &[f32],
    gamma: &[f32],
    mean: &[f32],
    variance: &[f32],
    epsilon: f64,
    dy: &[f32],
    p: Planes,
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    assert_eq!(x.len(), dy.len(), "x and its output gradient differ in size");
    assert!(gamma.len() == p.channels && mean.len() == p.channels && variance.len() == p.channels, "per-channel inputs must be [C]");
    let inv_std: Vec<f32> = variance.iter().map(|&v| (1.0 / (f64::from(v) + epsilon).sqrt()) as f32).collect();
    let (dbeta, dgamma): (Vec<f32>, Vec<f32>) = (0..p.channels)
        .into_par_iter()
        .map(|c| {
            let (mut sum, mut centred) = (0.0f64, 0.0f64);
            for n in 0..p.batch {
                let (xs, gs) = (p.of(x, n, c), p.of(dy, n, c));
                sum += lane_sum(gs, |g| g);
                centred += lane_sum2(xs, gs, |v, g| g * (v - mean[c]));
            }
            (sum as f32, (centred * f64::from(inv_std[c])) as f32)
        })
        .unzip();
    // dx = a·dy + b·(x − mean) + d per channel.
    let m = p.count() as f32;
    let a: Vec<f32> = (0..p.channels).map(|c| gamma[c] * inv_std[c]).collect();
    let b: Vec<f32> = (0..p.channels).map(|c| -a[c] * inv_std[c] * dgamma[c] / m).collect();
    let d: Vec<f32> = (0..p.channels).map(|c| -a[c] * dbeta[c] / m).collect();
    let dx = map_planes(p, |n, c, out| {
        for ((o, &v), &g) in out.iter_mut().zip(p.of(x, n, c)).zip(p.of(dy, n, c)) {
            *o = a[c] * g + b[c] * (v - mean[c]) + d[c];
        }
    });
    (dx, dgamma, dbeta)
}
