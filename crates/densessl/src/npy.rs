//! Writing NumPy `.npy` files (format version 1.0, little-endian float32, C order), so
//! features can be compared against PyTorch with `numpy.load`.

use std::path::Path;

use crate::Result;
use crate::train::run_dir::write_atomic;

/// The bytes of a `.npy` file holding `values` with `shape`.
pub fn npy_f32_bytes(values: &[f32], shape: &[usize]) -> Vec<u8> {
    assert_eq!(values.len(), shape.iter().product::<usize>(), "values do not fill the shape");
    let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    let shape_text = if dims.len() == 1 { format!("({},)", dims[0]) } else { format!("({})", dims.join(", ")) };
    let mut header = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': {shape_text}, }}");
    // Magic (6) + version (2) + length (2) + header + newline, padded to a multiple of 64.
    let unpadded = 10 + header.len() + 1;
    header.push_str(&" ".repeat((64 - unpadded % 64) % 64));
    header.push('\n');
    let mut bytes = Vec::with_capacity(10 + header.len() + 4 * values.len());
    bytes.extend_from_slice(b"\x93NUMPY\x01\x00");
    bytes.extend_from_slice(&(header.len() as u16).to_le_bytes());
    bytes.extend_from_slice(header.as_bytes());
    values.iter().for_each(|v| bytes.extend_from_slice(&v.to_le_bytes()));
    bytes
}

/// Writes a float32 `.npy` file atomically.
pub fn write_npy_f32(path: &Path, values: &[f32], shape: &[usize]) -> Result<()> {
    write_atomic(path, &npy_f32_bytes(values, shape))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_is_aligned_and_data_follows() {
        let bytes = npy_f32_bytes(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0], &[1, 2, 3]);
        let header_len = u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
        assert_eq!((10 + header_len) % 64, 0);
        let header = std::str::from_utf8(&bytes[10..10 + header_len]).unwrap();
        assert!(header.starts_with("{'descr': '<f4', 'fortran_order': False, 'shape': (1, 2, 3), }"));
        assert!(header.ends_with('\n'));
        assert_eq!(&bytes[10 + header_len..10 + header_len + 4], &1.0f32.to_le_bytes());
        assert_eq!(bytes.len(), 10 + header_len + 24);
    }
}
