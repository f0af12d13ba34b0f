//! The training-mode batch-norm kernels (`densessl::kernels::batch_norm`) against burn's own
//! `batch_norm_train`, which `train_step.rs` and `seg_step.rs` tie to PyTorch: output,
//! statistics and the three gradients through autodiff; the module path's running
//! statistics; a hand-checked case of the slice functions; random shapes. The same for the
//! fused `relu(bn(x) [+ residual])` of `densessl::kernels::batch_norm_relu`, against burn's
//! batch norm, addition and ReLU.

use burn::nn::{BatchNorm, BatchNormConfig};
use burn::tensor::activation::relu;
use burn::tensor::module::batch_norm_train;
use burn::tensor::{Device, Distribution, Tensor};
use densessl::kernels::batch_norm::{batch_norm_batch_stats, batch_norm_module};
use densessl::kernels::batch_norm_cpu::{self, Planes};
use densessl::kernels::batch_norm_relu::{batch_norm_relu_batch_stats, batch_norm_relu_module};
use proptest::prelude::*;

mod kernel_parity;
use kernel_parity::{max_relative_difference, random_activation, values};

/// Float32 sums over up to a few thousand values in another order (and in `f64` here),
/// relative to the largest value or to 1, whichever is larger: the γ and β gradients are
/// sums of O(1) terms that can cancel to near 0, where only an absolute bound is meaningful.
const TOLERANCE: f32 = 2e-5;

fn difference(got: &[f32], expected: &[f32]) -> f32 {
    assert_eq!(got.len(), expected.len());
    let scale = expected.iter().fold(1.0f32, |m, v| m.max(v.abs()));
    got.iter().zip(expected).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max) / scale
}

/// Output, mean, variance and the gradients of `loss = Σ bn(x) ⊙ r` for x, gamma and beta,
/// through the kernels and through burn; returns the six largest differences.
fn compare(dims: [usize; 4]) -> [f32; 6] {
    compare_laid_out(dims, false)
}

/// [`compare`] with `x` channels-last where `channels_last` (and `r` in the other order).
fn compare_laid_out(dims: [usize; 4], channels_last: bool) -> [f32; 6] {
    let device = Device::flex().autodiff();
    let channels = dims[1];
    // An offset mean and a wide spread: the statistics must not lose the small deviations.
    let x = random_activation(dims, Distribution::Normal(3.0, 2.0), &device, channels_last);
    let gamma = Tensor::<1>::random([channels], Distribution::Normal(1.0, 0.5), &device);
    let beta = Tensor::<1>::random([channels], Distribution::Normal(0.0, 0.5), &device);
    let r = random_activation(dims, Distribution::Normal(0.0, 1.0), &device, !channels_last);
    let run = |ours: bool| {
        let (x, gamma, beta) = (x.clone().require_grad(), gamma.clone().require_grad(), beta.clone().require_grad());
        let (y, mean, variance) = if ours {
            batch_norm_batch_stats(x.clone(), gamma.clone(), beta.clone(), 1e-5)
        } else {
            let result = batch_norm_train(x.clone(), gamma.clone(), beta.clone(), 1e-5);
            (result.output, result.mean, result.variance)
        };
        assert_eq!(y.dims(), dims);
        let grads = (y.clone() * r.clone()).sum().backward();
        let grad = |t: &Tensor<1>| values(t.grad(&grads).unwrap());
        [values(y), values(mean), values(variance), values(x.grad(&grads).unwrap()), grad(&gamma), grad(&beta)]
    };
    let (ours, burn) = (run(true), run(false));
    std::array::from_fn(|i| difference(&ours[i], &burn[i]))
}

const NAMES: [&str; 6] = ["output", "mean", "variance", "x gradient", "gamma gradient", "beta gradient"];

fn assert_matches_burn(dims: [usize; 4]) {
    let differences = compare(dims);
    for (name, d) in NAMES.iter().zip(differences) {
        assert!(d < TOLERANCE, "{dims:?}: {name} differs by {d:.1e} (tolerance {TOLERANCE:.0e})");
    }
}

#[test]
fn resnet_shapes_match_burn() {
    for dims in [
        [8, 16, 24, 24], // a stem's output: planes longer than the 8 lanes
        [4, 64, 6, 6],   // deep layers
        [16, 128, 1, 1], // a 1×1 map: one value per image and channel
        [1, 8, 5, 7],    // one image, odd sides (lane remainders)
        [2, 3, 3, 3],
    ] {
        assert_matches_burn(dims);
    }
}

/// The module path updates the running statistics as burn's `BatchNorm::forward` does, and
/// returns the same output; without autodiff it normalises with the running statistics.
#[test]
fn module_path_keeps_running_statistics_like_burn() {
    let device = Device::flex().autodiff();
    let x = Tensor::<4>::random([4, 6, 5, 5], Distribution::Normal(1.0, 2.0), &device);
    let ours: BatchNorm = BatchNormConfig::new(6).with_momentum(0.3).init(&device);
    let burns = ours.clone();
    for _ in 0..2 {
        let (a, b) = (batch_norm_module(&ours, x.clone()), burns.forward(x.clone()));
        assert!(max_relative_difference(&values(a), &values(b)) < TOLERANCE);
    }
    let running = |bn: &BatchNorm| (values(bn.running_mean.value()), values(bn.running_var.value()));
    let ((mean_a, var_a), (mean_b, var_b)) = (running(&ours), running(&burns));
    assert!(max_relative_difference(&mean_a, &mean_b) < TOLERANCE, "{mean_a:?} vs {mean_b:?}");
    assert!(max_relative_difference(&var_a, &var_b) < TOLERANCE, "{var_a:?} vs {var_b:?}");
    // Two updates from zero mean with momentum 0.3 moved the running mean towards 1.
    assert!(mean_a.iter().all(|&m| m > 0.2), "{mean_a:?}");

    // Without autodiff, the running statistics (mean 0, variance 1 when fresh) normalise.
    let inference = Device::flex();
    let fresh: BatchNorm = BatchNormConfig::new(6).init(&inference);
    let x = Tensor::<4>::random([4, 6, 5, 5], Distribution::Normal(1.0, 2.0), &inference);
    let expected = x.clone().div_scalar((1.0f32 + 1e-5).sqrt());
    let y = batch_norm_module(&fresh, x);
    assert!(max_relative_difference(&values(y), &values(expected)) < 1e-6);
    assert_eq!(values(fresh.running_mean.value()), vec![0.0; 6]);
}

#[test]
fn slice_functions_by_hand() {
    // One channel, two images of two values: 1, 3 | 5, 7 → mean 4, variance 5.
    let p = Planes { batch: 2, channels: 1, plane: 2 };
    let x = [1.0, 3.0, 5.0, 7.0];
    let (y, mean, variance) = batch_norm_cpu::forward(&x, &[2.0], &[1.0], 0.0, p);
    assert_eq!((mean[0], variance[0]), (4.0, 5.0));
    let s = 1.0 / 5.0f32.sqrt();
    for (got, v) in y.iter().zip(x) {
        assert!((got - (2.0 * (v - 4.0) * s + 1.0)).abs() < 1e-6);
    }
    // A constant output gradient moves the mean only, which normalisation undoes: dx = 0.
    let (dx, dgamma, dbeta) = batch_norm_cpu::backward(&x, &[2.0], &mean, &variance, 0.0, &[1.0; 4], p);
    assert!(dx.iter().all(|d| d.abs() < 1e-6), "{dx:?}");
    assert_eq!(dbeta, vec![4.0]);
    assert!(dgamma[0].abs() < 1e-6);
}

/// `relu(bn(x) + r)` (or `relu(bn(x))` without `r`) fused and through burn's operations:
/// the differences of output, mean, variance and the gradients of `Σ y ⊙ w` for x, gamma,
/// beta (and the residual), in that order.
fn compare_fused(dims: [usize; 4], with_residual: bool) -> Vec<f32> {
    compare_fused_laid_out(dims, with_residual, false)
}

/// [`compare_fused`] with `x` and `w` channels-last where `channels_last` (and the residual
/// in the other order).
fn compare_fused_laid_out(dims: [usize; 4], with_residual: bool, channels_last: bool) -> Vec<f32> {
    let device = Device::flex().autodiff();
    let channels = dims[1];
    let x = random_activation(dims, Distribution::Normal(3.0, 2.0), &device, channels_last);
    let gamma = Tensor::<1>::random([channels], Distribution::Normal(1.0, 0.5), &device);
    // Betas around 0, so the ReLU cuts about half of each channel.
    let beta = Tensor::<1>::random([channels], Distribution::Normal(0.0, 0.5), &device);
    let residual = random_activation(dims, Distribution::Normal(0.0, 1.0), &device, !channels_last);
    let w = random_activation(dims, Distribution::Normal(0.0, 1.0), &device, channels_last);
    let run = |ours: bool| {
        let (x, gamma, beta) = (x.clone().require_grad(), gamma.clone().require_grad(), beta.clone().require_grad());
        let residual = residual.clone().require_grad();
        let (y, mean, variance) = if ours {
            batch_norm_relu_batch_stats(x.clone(), gamma.clone(), beta.clone(), with_residual.then(|| residual.clone()), 1e-5)
        } else {
            let result = batch_norm_train(x.clone(), gamma.clone(), beta.clone(), 1e-5);
            let pre = if with_residual { result.output + residual.clone() } else { result.output };
            (relu(pre), result.mean, result.variance)
        };
        assert_eq!(y.dims(), dims);
        let grads = (y.clone() * w.clone()).sum().backward();
        let grad = |t: &Tensor<1>| values(t.grad(&grads).unwrap());
        let mut all = vec![values(y), values(mean), values(variance), values(x.grad(&grads).unwrap()), grad(&gamma), grad(&beta)];
        if with_residual {
            all.push(values(residual.grad(&grads).unwrap()));
        }
        all
    };
    let (ours, burn) = (run(true), run(false));
    // The ReLU cut some values and kept others (else the test would not test it).
    let kept = ours[0].iter().filter(|&&v| v > 0.0).count();
    assert!(kept > 0 && kept < ours[0].len(), "{dims:?}: the ReLU kept {kept} of {}", ours[0].len());
    ours.iter().zip(&burn).map(|(a, b)| difference(a, b)).collect()
}

#[test]
fn fused_relu_matches_burn() {
    for dims in [[8, 16, 12, 12], [4, 64, 3, 3], [2, 3, 5, 7]] {
        for with_residual in [false, true] {
            let names = NAMES.iter().copied().chain(["residual gradient"]);
            for (name, d) in names.zip(compare_fused(dims, with_residual)) {
                assert!(d < TOLERANCE, "{dims:?}, residual {with_residual}: {name} differs by {d:.1e} (tolerance {TOLERANCE:.0e})");
            }
        }
    }
}

/// Channels-last activations (as the convolution kernels hand them on) take the row kernels:
/// the same results as burn's, plain and fused, with the other tensors in either order.
#[test]
fn channels_last_activations_match_burn() {
    for dims in [[8, 16, 12, 12], [4, 64, 3, 3], [2, 3, 5, 7], [3, 1000, 2, 2]] {
        for (name, d) in NAMES.iter().zip(compare_laid_out(dims, true)) {
            assert!(d < TOLERANCE, "channels-last {dims:?}: {name} differs by {d:.1e} (tolerance {TOLERANCE:.0e})");
        }
        for with_residual in [false, true] {
            let names = NAMES.iter().copied().chain(["residual gradient"]);
            for (name, d) in names.zip(compare_fused_laid_out(dims, with_residual, true)) {
                assert!(d < TOLERANCE, "channels-last {dims:?}, residual {with_residual}: {name} differs by {d:.1e}");
            }
        }
    }
}

/// The row kernels on `[N·H·W, C]` slices give the plane kernels' results on the same
/// values in NCHW order, forward (with every epilogue) and backward (with and without ReLU).
#[test]
fn row_kernels_match_plane_kernels() {
    use densessl::kernels::batch_norm_cpu::{Epilogue, Statistics};
    use densessl::kernels::batch_norm_rows::{self, Rows};
    use densessl::kernels::transpose::transpose_each_image;
    let device = Device::flex();
    let [n, c, s] = [3, 20, 35];
    let random = |mean: f64| values(Tensor::<1>::random([n * c * s], Distribution::Normal(mean, 2.0), &device));
    let (x, residual, dy) = (random(1.0), random(0.0), random(0.0));
    let (gamma, beta) = (values(Tensor::<1>::random([c], Distribution::Normal(1.0, 0.5), &device)), vec![0.1; c]);
    let rows_of = |planes: &[f32]| transpose_each_image(planes, c, s);
    let planes_of = |rows: &[f32]| transpose_each_image(rows, s, c);
    let (p, r) = (Planes { batch: n, channels: c, plane: s }, Rows { rows: n * s, channels: c });
    for epilogue in [Epilogue { residual: None, relu: false }, Epilogue { residual: Some(&residual), relu: true }] {
        let rows_residual = epilogue.residual.map(rows_of);
        let row_epilogue = Epilogue { residual: rows_residual.as_deref(), relu: epilogue.relu };
        let (y_p, mean_p, var_p) = batch_norm_cpu::forward_then(&x, &gamma, &beta, 1e-5, p, epilogue);
        let (y_r, mean_r, var_r) = batch_norm_rows::forward_then(&rows_of(&x), &gamma, &beta, 1e-5, r, row_epilogue);
        assert!(difference(&planes_of(&y_r), &y_p) < TOLERANCE && difference(&mean_r, &mean_p) < TOLERANCE && difference(&var_r, &var_p) < TOLERANCE);
        let statistics = Statistics { gamma: &gamma, mean: &mean_p, variance: &var_p, epsilon: 1e-5 };
        let (dx_p, dgamma_p, dbeta_p, masked_p) = if epilogue.relu {
            batch_norm_cpu::backward_through_relu(&x, statistics, &y_p, &dy, true, p)
        } else {
            let (dx, dgamma, dbeta) = batch_norm_cpu::backward(&x, &gamma, &mean_p, &var_p, 1e-5, &dy, p);
            (dx, dgamma, dbeta, None)
        };
        let y_rows = rows_of(&y_p);
        let relu = epilogue.relu.then_some((y_rows.as_slice(), true));
        let (dx_r, dgamma_r, dbeta_r, masked_r) = batch_norm_rows::backward_through(&rows_of(&x), statistics, &rows_of(&dy), relu, r);
        assert!(difference(&planes_of(&dx_r), &dx_p) < TOLERANCE, "dx, {epilogue:?}");
        assert!(difference(&dgamma_r, &dgamma_p) < TOLERANCE && difference(&dbeta_r, &dbeta_p) < TOLERANCE, "dgamma, dbeta, {epilogue:?}");
        assert_eq!(masked_r.map(|m| planes_of(&m)), masked_p, "the masked gradient is dy where the output is positive, in both");
    }
}

/// The fused module path returns burn's `relu(BatchNorm::forward(x) + r)` and updates the
/// running statistics as burn's module does, with autodiff and without.
#[test]
fn fused_module_path_matches_burns_module() {
    for device in [Device::flex().autodiff(), Device::flex()] {
        let x = Tensor::<4>::random([4, 6, 5, 5], Distribution::Normal(1.0, 2.0), &device);
        let r = Tensor::<4>::random([4, 6, 5, 5], Distribution::Normal(0.0, 1.0), &device);
        let ours: BatchNorm = BatchNormConfig::new(6).with_momentum(0.3).init(&device);
        let burns = ours.clone();
        let a = batch_norm_relu_module(&ours, x.clone(), Some(r.clone()));
        let b = relu(burns.forward(x.clone()) + r);
        assert!(max_relative_difference(&values(a), &values(b)) < TOLERANCE);
        let a = batch_norm_relu_module(&ours, x.clone(), None);
        let b = relu(burns.forward(x));
        assert!(max_relative_difference(&values(a), &values(b)) < TOLERANCE);
        let running = |bn: &BatchNorm| [values(bn.running_mean.value()), values(bn.running_var.value())];
        for (a, b) in running(&ours).iter().zip(running(&burns)) {
            assert!(max_relative_difference(a, &b) < TOLERANCE, "{a:?} vs {b:?}");
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn random_shapes_match_burn(batch in 1usize..5, channels in 1usize..10, h in 1usize..12, w in 1usize..12) {
        // With two values per channel the output is ±gamma + beta whatever x is: the x
        // gradient is zero up to rounding, and a relative comparison measures only that.
        prop_assume!(batch * h * w > 2);
        let differences = compare([batch, channels, h, w]);
        for (name, d) in NAMES.iter().zip(differences) {
            prop_assert!(d < TOLERANCE, "{:?}: {} differs by {:.1e}", [batch, channels, h, w], name, d);
        }
    }
}
