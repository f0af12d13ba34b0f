//! Helpers shared by the PyTorch parity tests.

/// Asserts that `got` matches `expected` within `tolerance` × the largest |expected|.
pub fn assert_relative_close(got: &[f32], expected: &[f32], tolerance: f32, what: &str) {
    assert_eq!(got.len(), expected.len(), "{what}: length");
    let scale = expected.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    let worst = got.iter().zip(expected).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
    assert!(worst <= tolerance * scale, "{what}: max error {worst} (scale {scale})");
}
