//! Helpers shared by the PyTorch parity tests.

/// Asserts that `got` matches `expected` within `tolerance` × the largest |expected|.
pub fn assert_relative_close(got: &[f32], expected: &[f32], tolerance: f32, what: &str) {
    assert_eq!(got.len(), expected.len(), "{what}: length");
    let scale = expected.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    let worst = got.iter().zip(expected).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
    assert!(worst <= tolerance * scale, "{what}: max error {worst} (scale {scale})");
}

/// A float32 tensor of a safetensors fixture: its values and shape (panics naming `name` if
/// the fixture lacks it).
pub fn fixture_f32(bytes: &[u8], name: &str) -> (Vec<f32>, Vec<usize>) {
    let st = safetensors::SafeTensors::deserialize(bytes).unwrap();
    let t = st.tensor(name).unwrap_or_else(|_| panic!("fixture has {name}"));
    (t.data().chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect(), t.shape().to_vec())
}
