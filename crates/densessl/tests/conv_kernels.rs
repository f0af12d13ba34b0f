//! The batch-wide convolution kernels (`densessl::kernels`) against burn's own convolution,
//! which `train_step.rs` and `parity.rs` tie to PyTorch: the forward pass and both
//! gradients through autodiff, on the shapes a ResNet uses (3×3 with stride 1 and 2, the
//! 7×7 stem, 1×1 downsampling, dilation 2 and 4) and on random geometries.

use burn::tensor::module::conv2d as burn_conv2d;
use burn::tensor::ops::ConvOptions;
use burn::tensor::{Device, Distribution, Tensor};
use densessl::kernels::conv_cpu::{self, ConvGeometry};
use densessl::kernels::gemm;
use proptest::prelude::*;

mod kernel_parity;
use kernel_parity::{max_relative_difference, random_activation, values};

/// Sums of up to 4,608 float32 products in another order: relative to the largest value.
const TOLERANCE: f32 = 1e-5;

/// Forward, input gradient and weight gradient of `loss = Σ conv(x, w) ⊙ r` through the
/// kernels and through burn, on an autodiff device; returns the three largest differences.
fn compare(g: &ConvGeometry) -> [f32; 3] {
    compare_laid_out(g, false)
}

/// [`compare`] with `x` and `r` channels-last (as the kernels hand activations on) where
/// `channels_last`.
fn compare_laid_out(g: &ConvGeometry, channels_last: bool) -> [f32; 3] {
    let device = Device::flex().autodiff();
    let x = random_activation([g.batch, g.cin, g.input[0], g.input[1]], Distribution::Normal(0.0, 1.0), &device, channels_last);
    let w = Tensor::<4>::random([g.cout, g.cin, g.kernel[0], g.kernel[1]], Distribution::Normal(0.0, 0.2), &device);
    let [ho, wo] = g.output();
    let r = random_activation([g.batch, g.cout, ho, wo], Distribution::Normal(0.0, 1.0), &device, channels_last);
    let options = ConvOptions::new(g.stride, g.padding, g.dilation, 1);
    let run = |ours: bool| {
        let (x, w) = (x.clone().require_grad(), w.clone().require_grad());
        let y = if ours {
            densessl::kernels::conv2d(x.clone(), w.clone(), options.clone())
        } else {
            burn_conv2d(x.clone(), w.clone(), None, options.clone())
        };
        assert_eq!(y.dims(), [g.batch, g.cout, ho, wo]);
        let grads = (y.clone() * r.clone()).sum().backward();
        (values(y), values(x.grad(&grads).unwrap()), values(w.grad(&grads).unwrap()))
    };
    let (ours, burn) = (run(true), run(false));
    [
        max_relative_difference(&ours.0, &burn.0),
        max_relative_difference(&ours.1, &burn.1),
        max_relative_difference(&ours.2, &burn.2),
    ]
}

fn assert_matches_burn(name: &str, g: &ConvGeometry) {
    let [forward, dx, dw] = compare(g);
    assert!(
        forward < TOLERANCE && dx < TOLERANCE && dw < TOLERANCE,
        "{name} {g:?}: forward {forward:.1e}, input gradient {dx:.1e}, weight gradient {dw:.1e} (tolerance {TOLERANCE:.0e})"
    );
}

#[allow(clippy::too_many_arguments)]
fn geometry(batch: usize, cin: usize, cout: usize, side: [usize; 2], k: usize, stride: usize, pad: usize, dil: usize) -> ConvGeometry {
    ConvGeometry {
        batch,
        cin,
        input: side,
        cout,
        kernel: [k, k],
        stride: [stride; 2],
        padding: [pad; 2],
        dilation: [dil; 2],
    }
}

#[test]
fn resnet_shapes_match_burn() {
    let cases = [
        ("3×3 stride 1", geometry(4, 16, 24, [12, 12], 3, 1, 1, 1)),
        ("3×3 stride 2", geometry(3, 16, 32, [12, 11], 3, 2, 1, 1)),
        ("7×7 stem, stride 2", geometry(2, 3, 16, [32, 30], 7, 2, 3, 1)),
        ("1×1 downsample, stride 2", geometry(3, 16, 32, [8, 8], 1, 2, 0, 1)),
        ("1×1 stride 1 on a small map (burn's forward, our weight gradient)", geometry(3, 16, 32, [6, 6], 1, 1, 0, 1)),
        ("1×1 stride 1 on a larger map (per-image NCHW products)", geometry(5, 16, 24, [8, 9], 1, 1, 0, 1)),
        ("3×3 dilation 2 (output stride 16)", geometry(2, 32, 32, [6, 6], 3, 1, 2, 2)),
        ("3×3 dilation 4 (output stride 8)", geometry(2, 32, 16, [6, 6], 3, 1, 4, 4)),
        ("3×3 on a 3×3 map, wide (ResNet layer4)", geometry(4, 128, 128, [3, 3], 3, 1, 1, 1)),
        ("no padding", geometry(2, 8, 8, [9, 7], 3, 1, 0, 1)),
    ];
    for (name, g) in cases {
        assert_matches_burn(name, &g);
    }
}

/// 3×3 stride-1 convolutions with at least 16 channels each way and outputs of 4×4 or more
/// take Winograd's F(2×2, 3×3) forward product (so does their data gradient): odd output
/// sides (tiles cut by the border), paddings 0 to 2, channel counts off multiples of 16, and
/// tile rows of several tasks, in both memory orders.
#[test]
fn winograd_shapes_match_burn() {
    let cases = [
        geometry(3, 16, 24, [7, 5], 3, 1, 1, 1),
        geometry(2, 24, 16, [9, 9], 3, 1, 0, 1),
        geometry(2, 40, 17, [5, 6], 3, 1, 2, 1),
        geometry(8, 32, 32, [24, 24], 3, 1, 1, 1),
    ];
    for g in cases {
        for channels_last in [false, true] {
            let [forward, dx, dw] = compare_laid_out(&g, channels_last);
            assert!(
                forward < TOLERANCE && dx < TOLERANCE && dw < TOLERANCE,
                "{g:?}, channels-last {channels_last}: forward {forward:.1e}, input gradient {dx:.1e}, weight gradient {dw:.1e}"
            );
        }
    }
}

/// Channels-last inputs and output gradients (the memory order in which the kernels hand
/// activations on) give burn's results: 1×1 (im2col is the input itself), 3×3 with stride 1
/// and 2, the stem.
#[test]
fn channels_last_inputs_match_burn() {
    for g in [
        geometry(2, 16, 24, [6, 6], 1, 1, 0, 1),
        geometry(2, 16, 24, [6, 6], 1, 2, 0, 1),
        geometry(2, 8, 16, [7, 5], 3, 1, 1, 1),
        geometry(2, 8, 16, [8, 8], 3, 2, 1, 1),
        geometry(2, 3, 16, [16, 16], 7, 2, 3, 1),
        geometry(2, 8, 8, [9, 9], 3, 1, 2, 2),
    ] {
        let [forward, dx, dw] = compare_laid_out(&g, true);
        assert!(
            forward < TOLERANCE && dx < TOLERANCE && dw < TOLERANCE,
            "channels-last {g:?}: forward {forward:.1e}, input gradient {dx:.1e}, weight gradient {dw:.1e}"
        );
    }
}

#[test]
fn several_tasks_match_burn() {
    // 8·24·24 positions × 576 = 2.65 M floats of im2col: many tasks of about TASK_FLOATS,
    // split inside an image, so the weight gradient sums several partials.
    let g = geometry(8, 64, 32, [24, 24], 3, 1, 1, 1);
    assert!(g.positions() * g.row_len() > 4 * gemm::TASK_FLOATS);
    assert_ne!(gemm::rows_per_task(g.positions(), g.row_len(), 1) % (24 * 24), 0, "a task should end inside an image");
    assert_matches_burn("3×3, 64→32, 8 images of 24²", &g);
}

#[test]
fn rows_per_task_balances_the_threads() {
    let threads = rayon::current_num_threads();
    for (positions, row_len, min_rows) in [(18_432, 576, 64), (288, 4_608, 256), (100, 9, 1), (1, 1_000_000, 64)] {
        let rows = gemm::rows_per_task(positions, row_len, min_rows);
        let tasks = positions.div_ceil(rows);
        assert!(rows >= 1 && rows <= positions, "{positions} rows: {rows} per task");
        // Tasks come in multiples of the thread count, unless there are fewer rows than that.
        assert!(tasks % threads == 0 || tasks == positions, "{positions} rows: {tasks} tasks on {threads} threads");
    }
}

#[test]
fn data_gradient_as_forward_is_offered_only_where_it_holds() {
    assert!(geometry(1, 4, 4, [8, 8], 3, 2, 1, 1).data_gradient_as_forward().is_none(), "stride 2");
    // Padding larger than d·(k−1) would need a negative padding in the flipped form.
    assert!(geometry(1, 4, 4, [8, 8], 3, 1, 3, 1).data_gradient_as_forward().is_none());
    let g = geometry(2, 4, 6, [8, 5], 3, 1, 1, 1);
    let back = g.data_gradient_as_forward().unwrap();
    assert_eq!((back.cin, back.cout, back.input, back.output()), (6, 4, [8, 5], [8, 5]));
}

#[test]
fn kernels_are_plain_functions_of_slices() {
    // A 1-channel 3×3 box filter on a 4×4 ramp, checked by hand at one corner and the centre.
    let g = geometry(1, 1, 1, [4, 4], 3, 1, 1, 1);
    let x: Vec<f32> = (0..16).map(|v| v as f32).collect();
    let y = conv_cpu::conv2d_forward(&x, &[1.0; 9], &g);
    assert_eq!(y[0], 0.0 + 1.0 + 4.0 + 5.0);
    assert_eq!(y[5], (0..3).flat_map(|r| (0..3).map(move |c| (r * 4 + c) as f32)).sum::<f32>());
    // The weight gradient of Σ y with a ones gradient sums the input under each tap.
    let dw = conv_cpu::conv2d_weight_gradient(&x, &[1.0; 16], &g);
    let centre: f32 = x.iter().sum();
    assert_eq!(dw[4], centre);
}

#[test]
fn shared_gradients_equal_separate_ones() {
    let g = geometry(3, 8, 12, [7, 6], 3, 1, 1, 1);
    let ramp = |n: usize, k: usize| (0..n).map(|i| ((i * k % 101) as f32 - 50.0) / 50.0).collect::<Vec<_>>();
    let [ho, wo] = g.output();
    let (x, w, grad) = (ramp(3 * 8 * 42, 37), ramp(12 * 8 * 9, 53), ramp(3 * 12 * ho * wo, 29));
    let (dx, dw) = conv_cpu::conv2d_gradients(&x, &w, &grad, &g);
    assert_eq!(dx, conv_cpu::conv2d_data_gradient(&w, &grad, &g));
    assert_eq!(dw, conv_cpu::conv2d_weight_gradient(&x, &grad, &g));
    // Stride 2 takes the col2im form.
    let g2 = geometry(3, 8, 12, [7, 6], 3, 2, 1, 1);
    let [ho, wo] = g2.output();
    let grad2 = ramp(3 * 12 * ho * wo, 29);
    let (dx2, dw2) = conv_cpu::conv2d_gradients(&x, &w, &grad2, &g2);
    assert_eq!(dx2, conv_cpu::conv2d_data_gradient(&w, &grad2, &g2));
    assert_eq!(dw2, conv_cpu::conv2d_weight_gradient(&x, &grad2, &g2));
}

#[test]
fn one_gradient_alone_matches_burn() {
    // A frozen input (the stem's image) or a frozen kernel: the node asks for one gradient.
    let g = geometry(2, 6, 10, [9, 8], 3, 1, 1, 1);
    let device = Device::flex().autodiff();
    let x = Tensor::<4>::random([2, 6, 9, 8], Distribution::Normal(0.0, 1.0), &device);
    let w = Tensor::<4>::random([10, 6, 3, 3], Distribution::Normal(0.0, 0.2), &device);
    let options = ConvOptions::new(g.stride, g.padding, g.dilation, 1);
    for x_trains in [true, false] {
        let grad_of = |ours: bool| {
            let (x, w) = if x_trains { (x.clone().require_grad(), w.clone()) } else { (x.clone(), w.clone().require_grad()) };
            let y = if ours {
                densessl::kernels::conv2d(x.clone(), w.clone(), options.clone())
            } else {
                burn_conv2d(x.clone(), w.clone(), None, options.clone())
            };
            let grads = (y.clone() * y).sum().backward();
            let trained = if x_trains { x.grad(&grads) } else { w.grad(&grads) };
            assert!(if x_trains { w.grad(&grads).is_none() } else { x.grad(&grads).is_none() });
            values(trained.expect("the trained tensor has a gradient"))
        };
        let difference = max_relative_difference(&grad_of(true), &grad_of(false));
        assert!(difference < TOLERANCE, "x trains: {x_trains}: difference {difference:.1e}");
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn random_geometries_match_burn(
        batch in 1usize..4,
        cin in 1usize..12,
        cout in 1usize..12,
        h in 1usize..11,
        w in 1usize..11,
        k in prop_oneof![Just(1usize), Just(2), Just(3), Just(5)],
        stride in 1usize..3,
        pad in 0usize..3,
        dil in 1usize..3,
    ) {
        let g = geometry(batch, cin, cout, [h, w], k, stride, pad, dil);
        prop_assume!(h + 2 * pad > dil * (k - 1) && w + 2 * pad > dil * (k - 1));
        let [forward, dx, dw] = compare(&g);
        prop_assert!(forward < TOLERANCE && dx < TOLERANCE && dw < TOLERANCE,
            "{:?}: forward {:.1e}, input gradient {:.1e}, weight gradient {:.1e}", g, forward, dx, dw);
    }

    /// Random geometries where Winograd's product applies (see `winograd_shapes_match_burn`).
    #[test]
    fn random_winograd_geometries_match_burn(
        batch in 1usize..4,
        cin in 16usize..40,
        cout in 16usize..40,
        h in 4usize..14,
        w in 4usize..14,
        pad in 0usize..3,
    ) {
        let g = geometry(batch, cin, cout, [h, w], 3, 1, pad, 1);
        prop_assume!(g.output()[0] >= 4 && g.output()[1] >= 4);
        let [forward, dx, dw] = compare(&g);
        prop_assert!(forward < TOLERANCE && dx < TOLERANCE && dw < TOLERANCE,
            "{:?}: forward {:.1e}, input gradient {:.1e}, weight gradient {:.1e}", g, forward, dx, dw);
    }
}
