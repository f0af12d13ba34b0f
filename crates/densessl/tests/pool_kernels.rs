//! The channels-last max pooling (`densessl::kernels::max_pool`) against burn's own
//! `max_pool2d`, which `train_step.rs` ties to PyTorch: output and input gradient through
//! autodiff, on the ResNet stem's window and others, with inputs in either memory order and
//! with ties inside windows (each gradient must go to the same tap as burn's).

use burn::nn::pool::MaxPool2dConfig;
use burn::nn::PaddingConfig2d;
use burn::tensor::module::max_pool2d as burn_max_pool2d;
use burn::tensor::ops::MaxPoolOptions;
use burn::tensor::{Device, Distribution, Tensor};
use densessl::kernels::max_pool::{max_pool2d, max_pool2d_module};

mod kernel_parity;
use kernel_parity::{random_activation, values};

/// `(output, x gradient)` of `Σ pool(x) ⊙ r` through the kernels and through burn.
fn both(x: &Tensor<4>, kernel: usize, stride: usize, padding: usize) -> [[Vec<f32>; 2]; 2] {
    let run = |ours: bool| {
        let x = x.clone().require_grad();
        let y = if ours {
            max_pool2d(x.clone(), [kernel; 2], [stride; 2], [padding; 2])
        } else {
            burn_max_pool2d(x.clone(), MaxPoolOptions::new([kernel; 2]).with_stride([stride; 2]).with_padding([padding; 2]))
        };
        let r = Tensor::<4>::ones(y.dims(), &y.device()).mul_scalar(0.5) + y.clone().detach().mul_scalar(0.01);
        let grads = (y.clone() * r).sum().backward();
        [values(y), values(x.grad(&grads).unwrap())]
    };
    [run(true), run(false)]
}

#[test]
fn pooling_matches_burn_in_both_orders() {
    let device = Device::flex().autodiff();
    for (dims, kernel, stride, padding) in [
        ([2, 64, 12, 12], 3, 2, 1), // the ResNet stem's pool
        ([2, 5, 9, 7], 3, 2, 1),    // odd sides, few channels
        ([3, 16, 8, 8], 2, 2, 0),
        ([1, 8, 6, 5], 3, 1, 1),
    ] {
        for channels_last in [true, false] {
            let x = random_activation(dims, Distribution::Normal(0.0, 1.0), &device, channels_last);
            let [ours, burn] = both(&x, kernel, stride, padding);
            assert_eq!(ours, burn, "{dims:?}, window {kernel}/{stride}/{padding}, channels-last {channels_last}");
        }
    }
}

/// Values rounded to a few levels tie inside most windows: the gradient goes to the first
/// maximum in scan order, as burn (and PyTorch) send it.
#[test]
fn ties_go_to_the_first_maximum_as_in_burn() {
    let device = Device::flex().autodiff();
    for channels_last in [true, false] {
        let x = random_activation([2, 8, 10, 10], Distribution::Uniform(0.0, 3.0), &device, channels_last).floor();
        let [ours, burn] = both(&x, 3, 2, 1);
        assert_eq!(ours, burn, "channels-last {channels_last}");
    }
}

#[test]
fn module_path_matches_burns_module() {
    let device = Device::flex().autodiff();
    let x = random_activation([2, 4, 9, 9], Distribution::Normal(0.0, 1.0), &device, true);
    for pool in [
        MaxPool2dConfig::new([3, 3]).with_strides([2, 2]).with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1)).init(),
        MaxPool2dConfig::new([2, 2]).with_strides([2, 2]).init(),
        // Asymmetric padding and dilation stay with burn's module.
        MaxPool2dConfig::new([2, 2]).with_padding(PaddingConfig2d::Explicit(0, 1, 1, 0)).init(),
        MaxPool2dConfig::new([2, 2]).with_dilation([2, 2]).init(),
    ] {
        assert_eq!(values(max_pool2d_module(&pool, x.clone())), values(pool.forward(x.clone())), "{pool:?}");
    }
}
