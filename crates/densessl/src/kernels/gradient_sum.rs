//! Summing an activation's gradients where this crate's backward steps produce them
//! (issue 9, attempt 12).
//!
//! A ResNet block's input feeds two operations, its first convolution and the residual
//! addition (or the shortcut's convolution), so its gradient arrives twice. burn-autodiff
//! adds the second arrival to the first with the inner backend's `float_add`. On burn-flex
//! both arrivals are channels-last ([`layout`](super::layout)), and its element-wise nest
//! keeps the logical `[N, C, H, W]` order: the inner loop strides by `C` and the sum comes out
//! in NCHW order, which the next batch norm's backward pass copies back to channels-last.
//! Together that was about 7 % of a ResNet-50 step (docs/BENCHMARKS.md, attempt 11).
//!
//! [`register_input_gradient`] registers the gradient of an input of one of this crate's
//! operations. Where one of this crate's steps has already registered a gradient for the
//! same input in this backward pass, it takes that gradient out and adds the two with
//! [`GradientSumKernels::gradient_sum`], which burn-flex does in place in memory order when
//! both lie alike. Otherwise it hands the gradient to burn, which sums as before.

use std::cell::RefCell;
use std::collections::HashSet;

use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::NodeId;
use burn::backend::ops::FloatTensorOps;
use burn::backend::tensor::FloatTensor;
use burn::backend::{Backend, Flex, TensorMetadata};
use burn::tensor::DType;
use rayon::prelude::*;

use super::layout;

/// Floats per parallel chunk of the sum.
const CHUNK: usize = 1 << 15;

/// How many registered nodes to remember before forgetting them all. A forgotten node only
/// loses the fast sum (burn sums its gradients instead), and each pass leaves behind the
/// nodes that had a single gradient.
const REMEMBERED_NODES: usize = 1 << 14;

/// The sum of two gradients of the same activation, which a backend may replace.
pub trait GradientSumKernels: Backend {
    /// `a + b`, for two tensors of the same shape; either may be consumed in place.
    fn gradient_sum(a: FloatTensor<Self>, b: FloatTensor<Self>) -> FloatTensor<Self> {
        Self::float_add(a, b)
    }
}

#[cfg(any(feature = "vulkan", feature = "cuda"))]
impl GradientSumKernels for burn::backend::Cube {}

impl GradientSumKernels for Flex {
    fn gradient_sum(a: FloatTensor<Self>, b: FloatTensor<Self>) -> FloatTensor<Self> {
        let alike = a.dtype() == DType::F32 && b.dtype() == DType::F32 && a.shape() == b.shape() && layout::same_dense_order(&a, &b);
        if !alike {
            return Self::float_add(a, b);
        }
        // Into whichever buffer is not shared (the kernels' gradients are fresh ones).
        let (mut into, from) = match (a.is_unique(), b.is_unique()) {
            (true, _) => (a, b),
            (false, true) => (b, a),
            (false, false) => return Self::float_add(a, b),
        };
        add_in_place(into.storage_mut::<f32>(), from.storage::<f32>());
        into
    }
}

/// `into[i] += from[i]`, in parallel chunks.
fn add_in_place(into: &mut [f32], from: &[f32]) {
    assert_eq!(into.len(), from.len(), "gradient sum: the two buffers differ in size");
    into.par_chunks_mut(CHUNK).zip(from.par_chunks(CHUNK)).for_each(|(into, from)| {
        into.iter_mut().zip(from).for_each(|(a, &b)| *a += b);
    });
}

thread_local! {
    /// Nodes whose gradient one of this crate's backward steps registered. Node ids are never
    /// reused, and an activation's gradient is consumed once, by its own step, after every
    /// operation that read it has registered: so a remembered node still holds its gradient
    /// whenever another of its readers registers.
    static REGISTERED: RefCell<HashSet<NodeId>> = RefCell::new(HashSet::new());
}

/// Registers `gradient` for the input `id` of one of this crate's operations.
///
/// `intermediate` says the input is an activation (burn's `GradInBackward` requirement),
/// whose gradient burn hands out by removing it; a leaf that requires its gradient is
/// registered through burn alone. `take_earlier` consumes the gradient already registered
/// for the input (`grads.consume` on its node), and is called only where one of this crate's
/// steps registered it.
pub fn register_input_gradient<B: GradientSumKernels>(
    grads: &mut Gradients,
    id: NodeId,
    intermediate: bool,
    gradient: FloatTensor<B>,
    take_earlier: impl FnOnce(&mut Gradients) -> FloatTensor<B>,
) {
    let earlier = intermediate
        && REGISTERED.with_borrow_mut(|registered| {
            if registered.remove(&id) {
                return true;
            }
            if registered.len() >= REMEMBERED_NODES {
                registered.clear();
            }
            registered.insert(id);
            false
        });
    let gradient = if earlier { B::gradient_sum(gradient, take_earlier(grads)) } else { gradient };
    grads.register::<B>(id, gradient);
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::flex::FlexTensor;
    use burn::tensor::TensorData;

    fn channels_last(values: Vec<f32>, dims: [usize; 4]) -> FlexTensor {
        layout::from_channels_last(values, dims)
    }

    #[test]
    fn channels_last_sums_stay_channels_last_and_equal_burns() {
        let dims = [2, 3, 4, 5];
        let len = dims.iter().product::<usize>();
        let a: Vec<f32> = (0..len).map(|i| (i as f32 * 0.37).sin()).collect();
        let b: Vec<f32> = (0..len).map(|i| (i as f32 * 0.11).cos()).collect();
        let ours = Flex::gradient_sum(channels_last(a.clone(), dims), channels_last(b.clone(), dims));
        assert!(layout::is_channels_last(&ours));
        let burns = Flex::float_add(channels_last(a.clone(), dims), channels_last(b.clone(), dims));
        assert_eq!(ours.into_data(), burns.into_data());
        // Mixed orders go to burn's addition, with the same values.
        let nchw = FlexTensor::from_data(TensorData::new(b.clone(), dims));
        let mixed = Flex::gradient_sum(channels_last(a.clone(), dims), nchw.clone());
        assert_eq!(mixed.into_data(), Flex::float_add(channels_last(a, dims), nchw).into_data());
    }

    #[test]
    fn a_shared_operand_is_not_written() {
        let dims = [1, 2, 2, 2];
        let a = channels_last(vec![1.0; 8], dims);
        let keep = a.clone();
        let sum = Flex::gradient_sum(a, channels_last(vec![2.0; 8], dims));
        assert_eq!(keep.storage::<f32>(), &[1.0; 8]);
        assert_eq!(sum.storage::<f32>(), &[3.0; 8]);
    }
}
