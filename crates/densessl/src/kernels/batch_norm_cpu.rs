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

use std::mem::MaybeUninit;

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

/// About how many floats one task of a plane-by-plane pass writes: planes of a ResNet's last
/// stage hold 9 values, and a task per plane would cost more than its work.
const TASK_FLOATS: usize = 1 << 14;

/// Planes per task of a plane-by-plane pass (at least one).
fn planes_per_task(p: Planes) -> usize {
    (TASK_FLOATS / p.plane.max(1)).max(1)
}

/// One plane of an output being written (`[N, C, S]`, not yet initialised).
type PlaneSlots<'a> = &'a mut [MaybeUninit<f32>];

/// Runs `write(n, c, plane, second_plane)` for every plane of `out` and, where there is one,
/// the same plane of `second` (both `[N, C, S]`, not yet initialised), in parallel tasks of
/// whole planes.
fn for_each_plane(
    out: &mut [MaybeUninit<f32>],
    second: Option<&mut [MaybeUninit<f32>]>,
    p: Planes,
    write: impl Fn(usize, usize, PlaneSlots, Option<PlaneSlots>) + Sync,
) {
    if p.plane == 0 {
        return;
    }
    let planes = planes_per_task(p);
    let chunk = planes * p.plane;
    let run = |task: usize, outs: &mut [MaybeUninit<f32>], mut seconds: Option<&mut [MaybeUninit<f32>]>| {
        for (i, plane) in outs.chunks_exact_mut(p.plane).enumerate() {
            let index = task * planes + i;
            let second = seconds.as_deref_mut().map(|s| &mut s[i * p.plane..][..p.plane]);
            write(index / p.channels, index % p.channels, plane, second);
        }
    };
    match second {
        Some(second) => {
            out.par_chunks_mut(chunk).zip(second.par_chunks_mut(chunk)).enumerate().for_each(|(task, (o, s))| run(task, o, Some(s)))
        }
        None => out.par_chunks_mut(chunk).enumerate().for_each(|(task, o)| run(task, o, None)),
    }
}

/// A new `[N, C, S]` buffer whose planes `write(n, c, plane)` fills, every value of it.
fn map_planes(p: Planes, write: impl Fn(usize, usize, PlaneSlots) + Sync) -> Vec<f32> {
    let len = p.batch * p.channels * p.plane;
    let mut out = Vec::with_capacity(len);
    for_each_plane(&mut out.spare_capacity_mut()[..len], None, p, |n, c, plane, _| write(n, c, plane));
    // SAFETY: every plane was handed to `write`, whose contract is to fill it.
    unsafe { out.set_len(len) };
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
    forward_grouped(x, gamma, beta, epsilon, p, p.batch, epilogue)
}

/// [`forward_then`] with batch statistics per group of `images_per_group` consecutive images
/// (the last group may hold fewer): `(output, means, variances)`, the statistics `[G, C]`.
/// Each group's output and statistics are exactly those of [`forward_then`] on that group alone.
pub fn forward_grouped(
    x: &[f32],
    gamma: &[f32],
    beta: &[f32],
    epsilon: f64,
    p: Planes,
    images_per_group: usize,
    epilogue: Epilogue,
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    assert!(gamma.len() == p.channels && beta.len() == p.channels, "gamma and beta must be [C]");
    assert_eq!(x.len(), p.batch * p.channels * p.plane, "x is not [N, C, S]");
    assert!(epilogue.residual.is_none_or(|r| r.len() == x.len()), "the residual must be shaped as x");
    let images_per_group = images_per_group.clamp(1, p.batch.max(1));
    let image_len = p.channels * p.plane;
    let groups = GroupStatistics::new(x, images_per_group * image_len, gamma, beta, epsilon, |group| {
        statistics(group, Planes { batch: group.len() / image_len.max(1), ..p })
    });
    let output = map_planes(p, |n, c, out| {
        let at = (n / images_per_group) * p.channels + c;
        let (xs, (a, b)) = (p.of(x, n, c), (groups.scale[at], groups.shift[at]));
        // One loop per case, so each stays branch-free and vectorises.
        match (epilogue.residual.map(|r| p.of(r, n, c)), epilogue.relu) {
            (None, false) => out.iter_mut().zip(xs).for_each(|(o, &v)| _ = o.write(v * a + b)),
            (None, true) => out.iter_mut().zip(xs).for_each(|(o, &v)| _ = o.write((v * a + b).max(0.0))),
            (Some(rs), false) => out.iter_mut().zip(xs).zip(rs).for_each(|((o, &v), &r)| _ = o.write((v * a + b) + r)),
            (Some(rs), true) => out.iter_mut().zip(xs).zip(rs).for_each(|((o, &v), &r)| _ = o.write(((v * a + b) + r).max(0.0))),
        }
    });
    (output, groups.mean, groups.variance)
}

/// Batch statistics of each group of consecutive values, and the forward's coefficients
/// from them; every field `[G, C]`.
pub(super) struct GroupStatistics {
    pub mean: Vec<f32>,
    pub variance: Vec<f32>,
    /// Per group and channel, so that the forward output is `scale·x + shift`.
    pub scale: Vec<f32>,
    pub shift: Vec<f32>,
}

impl GroupStatistics {
    /// The statistics of each `group_len` consecutive values of `x` (the last group may be
    /// shorter; an empty `x` is one empty group), as `statistics` computes them for one group.
    pub(super) fn new(
        x: &[f32],
        group_len: usize,
        gamma: &[f32],
        beta: &[f32],
        epsilon: f64,
        statistics: impl Fn(&[f32]) -> (Vec<f32>, Vec<f32>),
    ) -> Self {
        let group_len = group_len.max(1);
        let groups = x.len().div_ceil(group_len).max(1);
        let mut all = GroupStatistics { mean: Vec::new(), variance: Vec::new(), scale: Vec::new(), shift: Vec::new() };
        for g in 0..groups {
            let group = &x[(g * group_len).min(x.len())..((g + 1) * group_len).min(x.len())];
            let (mean, variance) = statistics(group);
            let (scale, shift) = scale_and_shift(gamma, beta, &mean, &variance, epsilon);
            all.mean.extend(mean);
            all.variance.extend(variance);
            all.scale.extend(scale);
            all.shift.extend(shift);
        }
        all
    }
}

/// `(scale, shift)` per channel, so that the forward output is `scale·x + shift`.
fn scale_and_shift(gamma: &[f32], beta: &[f32], mean: &[f32], variance: &[f32], epsilon: f64) -> (Vec<f32>, Vec<f32>) {
    let scale: Vec<f32> = (0..gamma.len()).map(|c| gamma[c] / (f64::from(variance[c]) + epsilon).sqrt() as f32).collect();
    let shift: Vec<f32> = (0..gamma.len()).map(|c| beta[c] - mean[c] * scale[c]).collect();
    (scale, shift)
}

/// `1/sqrt(variance + epsilon)` per channel.
pub(super) fn inverse_std(variance: &[f32], epsilon: f64) -> Vec<f32> {
    variance.iter().map(|&v| (1.0 / (f64::from(v) + epsilon).sqrt()) as f32).collect()
}

/// `[a, b, d]` per channel, with which `dx = a·g + b·(x − mean) + d` (`count` values per channel).
pub(super) fn dx_coefficients(gamma: &[f32], inv_std: &[f32], dgamma: &[f32], dbeta: &[f32], count: f32) -> [Vec<f32>; 3] {
    let a: Vec<f32> = (0..gamma.len()).map(|c| gamma[c] * inv_std[c]).collect();
    let b: Vec<f32> = (0..gamma.len()).map(|c| -a[c] * inv_std[c] * dgamma[c] / count).collect();
    let d: Vec<f32> = (0..gamma.len()).map(|c| -a[c] * dbeta[c] / count).collect();
    [a, b, d]
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
    let statistics = Statistics { gamma, mean, variance, epsilon };
    let (dx, dgamma, dbeta, _) = backward_through(x, statistics, dy, None, p);
    (dx, dgamma, dbeta)
}

/// The forward pass's per-channel inputs that its gradients need.
#[derive(Debug, Clone, Copy)]
pub struct Statistics<'a> {
    /// γ, `[C]`.
    pub gamma: &'a [f32],
    /// Batch mean, `[C]`.
    pub mean: &'a [f32],
    /// Biased batch variance, `[C]`.
    pub variance: &'a [f32],
    /// As in the forward pass.
    pub epsilon: f64,
}

/// Gradients of `relu(bn(x) + residual?)` (see [`forward_then`]) given its `output` and the
/// output gradient `dy`: `(dx, dgamma, dbeta, masked)`, where `masked` (`dy` where the output
/// is positive, else 0: the gradient of the residual) is returned only if `keep_masked`.
/// The mask is applied as the values are read, in the same two passes as [`backward`].
pub fn backward_through_relu(
    x: &[f32],
    statistics: Statistics,
    output: &[f32],
    dy: &[f32],
    keep_masked: bool,
    p: Planes,
) -> (Vec<f32>, Vec<f32>, Vec<f32>, Option<Vec<f32>>) {
    assert_eq!(output.len(), dy.len(), "the output and its gradient differ in size");
    backward_through(x, statistics, dy, Some((output, keep_masked)), p)
}

/// `g` where `y > 0`, else 0, without a branch: the signs of a ReLU's inputs follow no
/// pattern, and a branch here mispredicted half the time.
#[inline(always)]
pub(super) fn keep_where_positive(g: f32, y: f32) -> f32 {
    f32::from_bits(g.to_bits() & u32::from(y > 0.0).wrapping_neg())
}

/// `(Σ g, Σ g·(x − mean))` over one plane, `g` the output gradient masked by the ReLU's
/// output where there is one; eight `f32` lanes per sum (so it vectorises), added in `f64`.
fn plane_sums(xs: &[f32], gs: &[f32], ys: Option<&[f32]>, mean: f32) -> (f64, f64) {
    let (mut sums, mut centred) = ([0.0f32; 8], [0.0f32; 8]);
    let (xc, gc) = (xs.chunks_exact(8), gs.chunks_exact(8));
    let (mut sum_rest, mut centred_rest) = (0.0f32, 0.0f32);
    let whole = xs.len() / 8 * 8;
    match ys {
        None => xc.zip(gc).for_each(|(x8, g8)| {
            for lane in 0..8 {
                sums[lane] += g8[lane];
                centred[lane] += g8[lane] * (x8[lane] - mean);
            }
        }),
        Some(ys) => xc.zip(gc).zip(ys.chunks_exact(8)).for_each(|((x8, g8), y8)| {
            for lane in 0..8 {
                let g = keep_where_positive(g8[lane], y8[lane]);
                sums[lane] += g;
                centred[lane] += g * (x8[lane] - mean);
            }
        }),
    }
    for i in whole..xs.len() {
        let g = ys.map_or(gs[i], |ys| keep_where_positive(gs[i], ys[i]));
        sum_rest += g;
        centred_rest += g * (xs[i] - mean);
    }
    let total = |lanes: [f32; 8], rest: f32| lanes.iter().map(|&l| f64::from(l)).sum::<f64>() + f64::from(rest);
    (total(sums, sum_rest), total(centred, centred_rest))
}

/// [`backward`] and [`backward_through_relu`]: `relu` is the ReLU's output and whether to
/// return the masked gradient.
pub(super) fn backward_through(
    x: &[f32],
    statistics: Statistics,
    dy: &[f32],
    relu: Option<(&[f32], bool)>,
    p: Planes,
) -> (Vec<f32>, Vec<f32>, Vec<f32>, Option<Vec<f32>>) {
    let Statistics { gamma, mean, variance, epsilon } = statistics;
    assert_eq!(x.len(), dy.len(), "x and its output gradient differ in size");
    assert_eq!(x.len(), p.batch * p.channels * p.plane, "x is not [N, C, S]");
    assert!(gamma.len() == p.channels && mean.len() == p.channels && variance.len() == p.channels, "per-channel inputs must be [C]");
    let output = relu.map(|(output, _)| output);
    let inv_std = inverse_std(variance, epsilon);
    let (dbeta, dgamma): (Vec<f32>, Vec<f32>) = (0..p.channels)
        .into_par_iter()
        .map(|c| {
            let (mut sum, mut centred) = (0.0f64, 0.0f64);
            for n in 0..p.batch {
                let (s, t) = plane_sums(p.of(x, n, c), p.of(dy, n, c), output.map(|y| p.of(y, n, c)), mean[c]);
                sum += s;
                centred += t;
            }
            (sum as f32, (centred * f64::from(inv_std[c])) as f32)
        })
        .unzip();
    let [a, b, d] = dx_coefficients(gamma, &inv_std, &dgamma, &dbeta, p.count() as f32);
    // One pass writes dx, and the masked gradient where it is kept.
    let keep = relu.is_some_and(|(_, keep)| keep);
    let len = x.len();
    let (mut dx, mut kept) = (Vec::with_capacity(len), Vec::with_capacity(if keep { len } else { 0 }));
    let kept_slots = keep.then(|| &mut kept.spare_capacity_mut()[..len]);
    for_each_plane(&mut dx.spare_capacity_mut()[..len], kept_slots, p, |n, c, out, kept_plane| {
        let (xs, gs, (a, b, d, mean)) = (p.of(x, n, c), p.of(dy, n, c), (a[c], b[c], d[c], mean[c]));
        let Some(ys) = output.map(|ys| p.of(ys, n, c)) else {
            out.iter_mut().zip(xs).zip(gs).for_each(|((o, &v), &g)| _ = o.write(a * g + b * (v - mean) + d));
            return;
        };
        let values = out.iter_mut().zip(xs).zip(gs.iter().zip(ys).map(|(&g, &y)| keep_where_positive(g, y)));
        match kept_plane {
            Some(ms) => values.zip(ms).for_each(|(((o, &v), g), m)| {
                o.write(a * g + b * (v - mean) + d);
                m.write(g);
            }),
            None => values.for_each(|((o, &v), g)| _ = o.write(a * g + b * (v - mean) + d)),
        }
    });
    // SAFETY: `for_each_plane` handed every plane of dx (and of `kept` when kept) to the
    // closure above, which wrote all of its values.
    unsafe {
        dx.set_len(len);
        if keep {
            kept.set_len(len);
        }
    }
    (dx, dgamma, dbeta, keep.then_some(kept))
}
