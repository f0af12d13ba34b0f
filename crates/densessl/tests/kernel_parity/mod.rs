//! Helpers shared by the kernel tests, which compare densessl's kernels with burn's own ops.
// Each test binary that includes this module uses only some of its helpers.
#![allow(dead_code)]

use burn::tensor::{Device, Distribution, Tensor};

/// The largest absolute difference relative to the largest |expected|.
pub fn max_relative_difference(got: &[f32], expected: &[f32]) -> f32 {
    assert_eq!(got.len(), expected.len());
    let scale = expected.iter().fold(1e-12f32, |m, v| m.max(v.abs()));
    got.iter().zip(expected).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max) / scale
}

/// A float32 tensor's values.
pub fn values<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data().try_to_vec::<f32>().unwrap()
}

/// A random `[N, C, H, W]` tensor, laid out channels-last (memory in `[N, H, W, C]` order, as
/// the kernels hand activations on) where `channels_last`, else in NCHW order.
pub fn random_activation(dims: [usize; 4], distribution: Distribution, device: &Device, channels_last: bool) -> Tensor<4> {
    let [n, c, h, w] = dims;
    if channels_last {
        Tensor::<4>::random([n, h, w, c], distribution, device).permute([0, 3, 1, 2])
    } else {
        Tensor::<4>::random(dims, distribution, device)
    }
}
