//! Helpers shared by the kernel tests, which compare densessl's kernels with burn's own ops.

use burn::tensor::Tensor;

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
