//! Channels-last activations between the kernels (issue 9, attempt 9).
//!
//! The convolution kernels work in NHWC (each im2col tap is a run of channels, and the
//! product's rows are output positions), so an NCHW tensor costs a transpose on the way in
//! and another on the way out, forward and backward. Here the kernels hand their results on
//! as *channels-last* tensors instead: shape `[N, C, H, W]` as every caller expects, memory
//! in `[N, H, W, C]` order (a permuted view, which burn-flex tensors carry as strides). The
//! next convolution or batch norm reads that memory as it lies; any other operation sees an
//! ordinary tensor, which burn-flex copies into order where it needs to.
//!
//! Set `DENSESSL_LAYOUT=nchw` to have the kernels return plain NCHW tensors again (A/B
//! measurements: docs/BENCHMARKS.md, "Attempt 9").

use std::sync::OnceLock;

use burn::backend::flex::FlexTensor;
use burn::backend::TensorMetadata;
use burn::tensor::TensorData;

/// `[N, C, H, W]` → `[N, H, W, C]`.
const TO_CHANNELS_LAST: [usize; 4] = [0, 2, 3, 1];
/// `[N, H, W, C]` → `[N, C, H, W]`.
const FROM_CHANNELS_LAST: [usize; 4] = [0, 3, 1, 2];

/// Whether the kernels return channels-last tensors (everything but `DENSESSL_LAYOUT=nchw`).
pub fn channels_last_outputs() -> bool {
    static LAST: OnceLock<bool> = OnceLock::new();
    *LAST.get_or_init(|| !std::env::var("DENSESSL_LAYOUT").is_ok_and(|v| v == "nchw"))
}

/// Whether `tensor`'s memory is a whole `[N, H, W, C]` buffer of its `[N, C, H, W]` values
/// and not also in NCHW order (they coincide where `H·W = 1` or `C = 1`).
pub fn is_channels_last(tensor: &FlexTensor) -> bool {
    tensor.shape().num_dims() == 4 && !covers_buffer(tensor) && covers_buffer(&tensor.permute(&TO_CHANNELS_LAST))
}

/// Whether `a` and `b` (of one shape) each fill their whole buffer in the same memory order,
/// NCHW or channels-last, so that their buffers match element by element.
pub fn same_dense_order(a: &FlexTensor, b: &FlexTensor) -> bool {
    a.layout().strides() == b.layout().strides()
        && ((covers_buffer(a) && covers_buffer(b)) || (is_channels_last(a) && is_channels_last(b)))
}

/// Whether `tensor` is contiguous from offset 0 over all of its buffer (so its storage is
/// exactly its values, in order).
fn covers_buffer(tensor: &FlexTensor) -> bool {
    let layout = tensor.layout();
    layout.is_contiguous() && layout.start_offset() == 0 && tensor.bytes().len() == layout.num_elements() * tensor.dtype().size()
}

/// A rank-4 tensor's values in `[N, H, W, C]` order: its own buffer when it is channels-last,
/// else a transposed copy.
pub fn channels_last_values(tensor: FlexTensor) -> FlexTensor {
    assert_eq!(tensor.shape().num_dims(), 4, "channels-last values of a tensor that is not [N, C, H, W]");
    tensor.permute(&TO_CHANNELS_LAST).to_contiguous()
}

/// The `[N, C, H, W]` tensor whose values `values` holds in `[N, H, W, C]` order: a
/// channels-last view of them, or an NCHW copy under `DENSESSL_LAYOUT=nchw`.
pub fn from_channels_last(values: Vec<f32>, [n, c, h, w]: [usize; 4]) -> FlexTensor {
    let view = FlexTensor::from_data(TensorData::new(values, [n, h, w, c])).permute(&FROM_CHANNELS_LAST);
    if channels_last_outputs() { view } else { view.to_contiguous() }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nchw(values: Vec<f32>, dims: [usize; 4]) -> FlexTensor {
        FlexTensor::from_data(TensorData::new(values, dims))
    }

    #[test]
    fn channels_last_views_round_trip_without_copies() {
        // [1, 2, 2, 3] in NHWC order: pixel p holds channels (p, 10 + p).
        let nhwc: Vec<f32> = (0..6).flat_map(|p| [p as f32, 10.0 + p as f32]).collect();
        let view = FlexTensor::from_data(TensorData::new(nhwc.clone(), [1, 2, 3, 2])).permute(&FROM_CHANNELS_LAST);
        assert!(is_channels_last(&view));
        assert_eq!(view.shape().dims::<4>(), [1, 2, 2, 3]);
        // Logical NCHW order: channel 0's plane, then channel 1's.
        let expected: Vec<f32> = (0..6).map(|p| p as f32).chain((0..6).map(|p| 10.0 + p as f32)).collect();
        assert_eq!(view.to_contiguous().storage::<f32>(), expected.as_slice());
        // Its channels-last values are its own buffer.
        let back = channels_last_values(view.clone());
        assert_eq!(back.storage::<f32>().as_ptr(), view.storage::<f32>().as_ptr());
        assert_eq!(back.storage::<f32>(), nhwc.as_slice());
        // An NCHW tensor is not channels-last, and its channels-last values are transposed.
        let plain = nchw(expected.clone(), [1, 2, 2, 3]);
        assert!(!is_channels_last(&plain));
        assert_eq!(channels_last_values(plain).storage::<f32>(), nhwc.as_slice());
        // Where the two orders coincide (one pixel per image), the tensor counts as NCHW.
        assert!(!is_channels_last(&nchw(vec![1.0, 2.0, 3.0, 4.0], [2, 2, 1, 1])));
    }
}
