//! Training-mode batch normalisation on channels-last `f32` buffers (see [`super::layout`]):
//! the same passes as [`batch_norm_cpu`](super::batch_norm_cpu), over rows of channels
//! instead of planes.
//!
//! In `[N, H, W, C]` order a channel's values are strided, so each pass runs over tasks of
//! whole rows (one pixel's `C` channels, which vectorise), and each per-channel sum is one
//! `f32` partial per task, the partials added in task order in `f64` (so the result does not
//! depend on which thread ran which task).
//!
//! Shapes: `x`, output and output gradient `[R, C]` (`R = N·H·W`); `gamma`, `beta`, mean and
//! variance `[C]`. The variance is the biased one.

use std::mem::MaybeUninit;

use rayon::prelude::*;

use super::batch_norm_cpu::{dx_coefficients, inverse_std, keep_where_positive, Epilogue, GroupStatistics, Statistics};

/// Sizes of an `[R, C]` activation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rows {
    /// Pixels over the batch (`N·H·W`).
    pub rows: usize,
    /// Channels.
    pub channels: usize,
}

/// About how many floats one task of a row-by-row pass reads.
const TASK_FLOATS: usize = 1 << 14;

impl Rows {
    fn len(&self) -> usize {
        self.rows * self.channels
    }

    /// Values per task: whole rows, about [`TASK_FLOATS`].
    fn task_len(&self) -> usize {
        (TASK_FLOATS / self.channels.max(1)).max(1) * self.channels
    }
}

/// Per-channel sums over all rows, `sums` of them side by side (`[sums, C]`): each task of
/// rows (`[rows, C]` slices of the inputs, read by `add`) adds into its own zeroed `f32`
/// partial; the partials are added in task order in `f64`.
fn channel_sums(r: Rows, sums: usize, add: impl Fn(usize, &mut [f32]) + Sync) -> Vec<f64> {
    let tasks = r.len().div_ceil(r.task_len().max(1));
    let partials: Vec<Vec<f32>> = (0..tasks)
        .into_par_iter()
        .map(|task| {
            let mut partial = vec![0.0f32; sums * r.channels];
            add(task, &mut partial);
            partial
        })
        .collect();
    let mut total = vec![0.0f64; sums * r.channels];
    for partial in &partials {
        total.iter_mut().zip(partial).for_each(|(t, &p)| *t += f64::from(p));
    }
    total
}

/// Task `task`'s rows of `values` (`[R, C]`).
fn task_rows(values: &[f32], r: Rows, task: usize) -> &[f32] {
    let start = task * r.task_len();
    &values[start..(start + r.task_len()).min(values.len())]
}

/// Per-channel batch mean and biased variance (two passes: the mean, then squared deviations).
pub fn statistics(x: &[f32], r: Rows) -> (Vec<f32>, Vec<f32>) {
    assert_eq!(x.len(), r.len(), "x is not [R, C]");
    let count = r.rows as f64;
    let sums = channel_sums(r, 1, |task, acc| {
        for row in task_rows(x, r, task).chunks_exact(r.channels) {
            acc.iter_mut().zip(row).for_each(|(a, &v)| *a += v);
        }
    });
    let mean: Vec<f32> = sums.iter().map(|&s| (s / count) as f32).collect();
    let squares = channel_sums(r, 1, |task, acc| {
        for row in task_rows(x, r, task).chunks_exact(r.channels) {
            acc.iter_mut().zip(row).zip(&mean).for_each(|((a, &v), &m)| *a += (v - m) * (v - m));
        }
    });
    (mean, squares.iter().map(|&s| (s / count) as f32).collect())
}

/// A new `[R, C]` buffer whose task chunks `write(task, chunk)` fills, every value of each.
fn map_tasks(r: Rows, write: impl Fn(usize, &mut [MaybeUninit<f32>]) + Sync) -> Vec<f32> {
    let len = r.len();
    let mut out = Vec::with_capacity(len);
    out.spare_capacity_mut()[..len].par_chunks_mut(r.task_len().max(1)).enumerate().for_each(|(task, chunk)| write(task, chunk));
    // SAFETY: the chunks tile all `len` slots and `write`'s contract is to fill its chunk.
    unsafe { out.set_len(len) };
    out
}

/// [`batch_norm_cpu::forward_then`](super::batch_norm_cpu::forward_then) on channels-last
/// values: `(relu?(bn(x) + residual?), mean, variance)`.
pub fn forward_then(x: &[f32], gamma: &[f32], beta: &[f32], epsilon: f64, r: Rows, epilogue: Epilogue) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    forward_grouped(x, gamma, beta, epsilon, r, r.rows, epilogue)
}

/// [`forward_then`] with batch statistics per group of `group_rows` consecutive rows (whole
/// images; the last group may hold fewer rows): `(output, means, variances)`, the statistics
/// `[G, C]`. Each group's output and statistics are exactly those of [`forward_then`] on that
/// group alone.
pub fn forward_grouped(
    x: &[f32],
    gamma: &[f32],
    beta: &[f32],
    epsilon: f64,
    r: Rows,
    group_rows: usize,
    epilogue: Epilogue,
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    assert!(gamma.len() == r.channels && beta.len() == r.channels, "gamma and beta must be [C]");
    assert_eq!(x.len(), r.len(), "x is not [R, C]");
    assert!(epilogue.residual.is_none_or(|res| res.len() == x.len()), "the residual must be shaped as x");
    let c = r.channels;
    let group_rows = group_rows.clamp(1, r.rows.max(1));
    let groups = GroupStatistics::new(x, group_rows * c, gamma, beta, epsilon, |group| {
        statistics(group, Rows { rows: group.len() / c, channels: c })
    });
    let output = map_tasks(r, |task, out| {
        let xs = task_rows(x, r, task);
        let first_row = task * r.task_len() / c;
        let residual = epilogue.residual.map(|res| task_rows(res, r, task));
        for (row, (o, xr)) in out.chunks_exact_mut(c).zip(xs.chunks_exact(c)).enumerate() {
            let at = (first_row + row) / group_rows * c;
            let ab = groups.scale[at..at + c].iter().zip(&groups.shift[at..at + c]);
            // One loop per case, so each stays branch-free and vectorises.
            match (residual.map(|res| &res[row * c..][..c]), epilogue.relu) {
                (None, false) => o.iter_mut().zip(xr).zip(ab).for_each(|((o, &v), (a, b))| _ = o.write(v * a + b)),
                (None, true) => o.iter_mut().zip(xr).zip(ab).for_each(|((o, &v), (a, b))| _ = o.write((v * a + b).max(0.0))),
                (Some(rr), false) => {
                    o.iter_mut().zip(xr).zip(ab).zip(rr).for_each(|(((o, &v), (a, b)), &q)| _ = o.write((v * a + b) + q))
                }
                (Some(rr), true) => {
                    o.iter_mut().zip(xr).zip(ab).zip(rr).for_each(|(((o, &v), (a, b)), &q)| _ = o.write(((v * a + b) + q).max(0.0)))
                }
            }
        }
    });
    (output, groups.mean, groups.variance)
}

/// [`batch_norm_cpu`](super::batch_norm_cpu)'s backward pass on channels-last values:
/// `(dx, dgamma, dbeta, masked)`, through the ReLU whose `output` `relu` gives (with whether
/// to return the masked gradient), or through the batch norm alone without it.
pub fn backward_through(
    x: &[f32],
    statistics: Statistics,
    dy: &[f32],
    relu: Option<(&[f32], bool)>,
    r: Rows,
) -> (Vec<f32>, Vec<f32>, Vec<f32>, Option<Vec<f32>>) {
    let Statistics { gamma, mean, variance, epsilon } = statistics;
    let c = r.channels;
    assert_eq!(x.len(), r.len(), "x is not [R, C]");
    assert_eq!(x.len(), dy.len(), "x and its output gradient differ in size");
    assert!(relu.is_none_or(|(y, _)| y.len() == x.len()), "the output and its gradient differ in size");
    assert!(gamma.len() == c && mean.len() == c && variance.len() == c, "per-channel inputs must be [C]");
    let output = relu.map(|(output, _)| output);
    let inv_std = inverse_std(variance, epsilon);
    // [Σ g, Σ g·(x − mean)] per channel, g masked by the ReLU's output where there is one.
    let sums = channel_sums(r, 2, |task, acc| {
        let (sum, centred) = acc.split_at_mut(c);
        let (xs, gs) = (task_rows(x, r, task), task_rows(dy, r, task));
        let ys = output.map(|y| task_rows(y, r, task));
        for (row, (xr, gr)) in xs.chunks_exact(c).zip(gs.chunks_exact(c)).enumerate() {
            let values = sum.iter_mut().zip(centred.iter_mut()).zip(xr.iter().zip(&mean[..]));
            match ys.map(|ys| &ys[row * c..][..c]) {
                None => values.zip(gr).for_each(|(((s, t), (&v, &m)), &g)| {
                    *s += g;
                    *t += g * (v - m);
                }),
                Some(yr) => values.zip(gr.iter().zip(yr)).for_each(|(((s, t), (&v, &m)), (&g, &y))| {
                    let g = keep_where_positive(g, y);
                    *s += g;
                    *t += g * (v - m);
                }),
            }
        }
    });
    let dbeta: Vec<f32> = sums[..c].iter().map(|&s| s as f32).collect();
    let dgamma: Vec<f32> = sums[c..].iter().zip(&inv_std).map(|(&t, &s)| (t * f64::from(s)) as f32).collect();
    // dx = a·g + b·(x − mean) + d per channel.
    let [a, b, d] = dx_coefficients(gamma, &inv_std, &dgamma, &dbeta, r.rows as f32);
    let keep = relu.is_some_and(|(_, keep)| keep);
    let len = x.len();
    let (mut dx, mut kept) = (Vec::with_capacity(len), Vec::with_capacity(if keep { len } else { 0 }));
    let task_len = r.task_len().max(1);
    let write = |task: usize, out: &mut [MaybeUninit<f32>], mut kept: Option<&mut [MaybeUninit<f32>]>| {
        let (xs, gs) = (task_rows(x, r, task), task_rows(dy, r, task));
        let ys = output.map(|y| task_rows(y, r, task));
        for (row, (o, (xr, gr))) in out.chunks_exact_mut(c).zip(xs.chunks_exact(c).zip(gs.chunks_exact(c))).enumerate() {
            let coefficients = a.iter().zip(&b).zip(d.iter().zip(mean));
            let Some(yr) = ys.map(|ys| &ys[row * c..][..c]) else {
                o.iter_mut().zip(xr).zip(gr).zip(coefficients).for_each(|(((o, &v), &g), ((a, b), (d, m)))| _ = o.write(a * g + b * (v - m) + d));
                continue;
            };
            let values = o.iter_mut().zip(xr).zip(gr.iter().zip(yr).map(|(&g, &y)| keep_where_positive(g, y))).zip(coefficients);
            match kept.as_deref_mut().map(|k| &mut k[row * c..][..c]) {
                Some(kr) => values.zip(kr).for_each(|((((o, &v), g), ((a, b), (d, m))), k)| {
                    o.write(a * g + b * (v - m) + d);
                    k.write(g);
                }),
                None => values.for_each(|(((o, &v), g), ((a, b), (d, m)))| _ = o.write(a * g + b * (v - m) + d)),
            }
        }
    };
    let dx_slots = dx.spare_capacity_mut()[..len].par_chunks_mut(task_len);
    if keep {
        let kept_slots = kept.spare_capacity_mut()[..len].par_chunks_mut(task_len);
        dx_slots.zip(kept_slots).enumerate().for_each(|(task, (o, k))| write(task, o, Some(k)));
    } else {
        dx_slots.enumerate().for_each(|(task, o)| write(task, o, None));
    }
    // SAFETY: the task chunks tile all `len` slots of dx (and of `kept` when kept), and
    // `write` filled every row of each.
    unsafe {
        dx.set_len(len);
        if keep {
            kept.set_len(len);
        }
    }
    (dx, dgamma, dbeta, keep.then_some(kept))
}
