//! Per-pixel cross-entropy of segmentation logits, forward and backward, in parallel passes
//! over the pixels (issue 9, session 19).
//!
//! burn's composition (log-softmax over the class axis, a gather, a mask) runs as
//! single-threaded element-wise passes, and the class axis is not the contiguous one: the
//! loss on the mini fine-tune's full-size `[16, 11, 64, 64]` logits was ~5 % of its CPU
//! samples while the pool's other core waited. Here the forward pass reads each class plane
//! once for the maximum and once for the exponentials, per block of pixels, and keeps the
//! log-sum-exp for the backward pass, which writes each class plane of the gradient in one
//! pass: `∂xₖ = g·(exp(xₖ − lse) − [k = t])`.
//!
//! Targets are class indices as floats, negative for pixels to ignore (whose loss and
//! gradient are 0). Every other backend and non-`f32` tensors take burn's composition (the
//! trait's default bodies). `DENSESSL_LOSS_KERNELS=burn` asks for it on the CPU as well.
//!
//! Shapes: logits `[B, K, H, W]`; targets, losses, log-sum-exp and output gradient `[B, H, W]`.

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::autodiff::NodeId;
use burn::backend::flex::FlexTensor;
use burn::backend::tensor::FloatTensor;
use burn::backend::{backend_extension, Autodiff, Backend, Dispatch, Flex, Shape, TensorMetadata};
use burn::tensor::{DType, IndexingUpdateOp, IntDType, Scalar, Tensor};
use rayon::prelude::*;

use super::product_logsumexp::{tensor, use_burn_composition};
use super::vector::{exp, with_avx2};

/// Pixels per forward task: the running maxima and sums stay in L1.
const BLOCK_PIXELS: usize = 1024;

/// Cross-entropy per pixel, whose forward and backward a backend may replace. Shapes as in
/// the module documentation.
#[backend_extension(Flex, Autodiff, Cube: cfg(any(feature = "vulkan", feature = "cuda")))]
pub trait PixelCrossEntropyKernels: Backend {
    /// `(loss, lse)`: `lse = log Σₖ exp(xₖ)` per pixel, and `loss = lse − x_t` where the
    /// target `t` is a class, 0 where it is negative.
    fn pixel_cross_entropy(logits: FloatTensor<Self>, targets: FloatTensor<Self>) -> (FloatTensor<Self>, FloatTensor<Self>) {
        burn_forward::<Self>(logits, targets)
    }

    /// The logits' gradient given the output gradient `g` of the losses:
    /// `g·(exp(xₖ − lse) − [k = t])`, 0 at ignored pixels.
    fn pixel_cross_entropy_backward(
        logits: FloatTensor<Self>,
        targets: FloatTensor<Self>,
        lse: FloatTensor<Self>,
        output_grad: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        burn_backward::<Self>(logits, targets, lse, output_grad)
    }
}

#[cfg(any(feature = "vulkan", feature = "cuda"))]
impl PixelCrossEntropyKernels for burn::backend::Cube {}

/// `[B, H, W]` as `[B, 1, H, W]`, to broadcast over the classes.
fn with_class_axis<B: Backend>(t: FloatTensor<B>) -> FloatTensor<B> {
    let s = t.shape();
    B::float_reshape(t, Shape::new([s[0], 1, s[1], s[2]]))
}

/// `[B, 1, H, W]` back to `[B, H, W]`.
fn without_class_axis<B: Backend>(t: FloatTensor<B>) -> FloatTensor<B> {
    let s = t.shape();
    B::float_reshape(t, Shape::new([s[0], s[2], s[3]]))
}

/// 1 where the target is a class, 0 where it is negative (targets are whole numbers ≥ −1
/// after `masked_cross_entropy`'s mapping; any negative one clamps to 0).
fn valid_mask<B: Backend>(targets: FloatTensor<B>) -> FloatTensor<B> {
    B::float_clamp(B::float_add_scalar(targets, Scalar::Float(1.0)), Scalar::Float(0.0), Scalar::Float(1.0))
}

/// The targets as gather/scatter indices, ignored pixels pointing at class 0.
fn class_indices<B: Backend>(targets: FloatTensor<B>) -> burn::backend::tensor::IntTensor<B> {
    B::float_into_int(B::float_clamp_min(targets, Scalar::Float(0.0)), IntDType::I32)
}

/// burn's composition of [`PixelCrossEntropyKernels::pixel_cross_entropy`].
fn burn_forward<B: Backend>(logits: FloatTensor<B>, targets: FloatTensor<B>) -> (FloatTensor<B>, FloatTensor<B>) {
    let targets = with_class_axis::<B>(targets);
    let max = B::float_max_dim(logits.clone(), 1);
    let sum = B::float_sum_dim(B::float_exp(B::float_sub(logits.clone(), max.clone())), 1);
    let lse = B::float_add(B::float_log(sum), max);
    let picked = B::float_gather(1, logits, class_indices::<B>(targets.clone()));
    let loss = B::float_mul(B::float_sub(lse.clone(), picked), valid_mask::<B>(targets));
    (without_class_axis::<B>(loss), without_class_axis::<B>(lse))
}

/// burn's composition of [`PixelCrossEntropyKernels::pixel_cross_entropy_backward`].
fn burn_backward<B: Backend>(logits: FloatTensor<B>, targets: FloatTensor<B>, lse: FloatTensor<B>, output_grad: FloatTensor<B>) -> FloatTensor<B> {
    let targets = with_class_axis::<B>(targets);
    let grad = B::float_mul(with_class_axis::<B>(output_grad), valid_mask::<B>(targets.clone()));
    let softmax = B::float_exp(B::float_sub(logits, with_class_axis::<B>(lse)));
    let scaled = B::float_mul(softmax, grad.clone());
    B::float_scatter(1, scaled, class_indices::<B>(targets), B::float_neg(grad), IndexingUpdateOp::Add)
}

/// The sizes of one call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pixels {
    /// `B`, the images.
    pub images: usize,
    /// `K`, the classes.
    pub classes: usize,
    /// `H·W`, the pixels of one image.
    pub per_image: usize,
}

impl Pixels {
    /// The sizes of `logits [B, K, H, W]` against `targets [B, H, W]` where the CPU kernels
    /// cover them (non-empty `f32` tensors that match), else `None`.
    fn of(logits: &FlexTensor, targets: &FlexTensor) -> Option<Self> {
        let ([b, k, h, w], [tb, th, tw]) = (<[usize; 4]>::try_from(&logits.shape().to_vec()[..]).ok()?, <[usize; 3]>::try_from(&targets.shape().to_vec()[..]).ok()?);
        let f32s = logits.dtype() == DType::F32 && targets.dtype() == DType::F32;
        (f32s && [b, h, w] == [tb, th, tw] && b * k * h * w > 0 && !use_burn_composition()).then_some(Self { images: b, classes: k, per_image: h * w })
    }
}

/// The class of a target, `None` for a negative (ignored) one.
///
/// # Panics
/// If the target is not below the number of classes: a label the data should have rejected.
#[inline(always)]
fn class_of(target: f32, classes: usize) -> Option<usize> {
    if target < 0.0 {
        return None;
    }
    let class = target as usize;
    assert!(class < classes, "cross-entropy: label {target} is not a class of the {classes} logits (and not the ignore label)");
    Some(class)
}

/// `(loss, lse)` per pixel: `x [B, K, P]` and `targets [B, P]` → `[B, P]`, `[B, P]`.
pub fn forward(x: &[f32], targets: &[f32], p: Pixels) -> (Vec<f32>, Vec<f32>) {
    let Pixels { images, classes: k, per_image: hw } = p;
    assert_eq!((x.len(), targets.len()), (images * k * hw, images * hw), "cross-entropy: inputs do not match their sizes");
    let (mut loss, mut lse) = (vec![0.0f32; images * hw], vec![0.0f32; images * hw]);
    loss.par_chunks_mut(hw).zip(lse.par_chunks_mut(hw)).enumerate().for_each(|(image, (loss, lse))| {
        let blocks = loss.par_chunks_mut(BLOCK_PIXELS).zip(lse.par_chunks_mut(BLOCK_PIXELS));
        blocks.enumerate().for_each(|(block, (loss, lse))| {
            let (first, len) = (block * BLOCK_PIXELS, loss.len());
            let plane = |class: usize| &x[(image * k + class) * hw + first..][..len];
            with_avx2(#[inline(always)] || {
                // The maxima go into `lse`, the sums of exponentials into `loss`; both are
                // turned into what their names say below.
                lse.copy_from_slice(plane(0));
                for class in 1..k {
                    for (m, &v) in lse.iter_mut().zip(plane(class)) {
                        *m = if v > *m { v } else { *m };
                    }
                }
                loss.fill(0.0);
                for class in 0..k {
                    for ((s, &v), &m) in loss.iter_mut().zip(plane(class)).zip(lse.iter()) {
                        *s += exp(v - m);
                    }
                }
            });
            let targets = &targets[image * hw + first..][..len];
            for (i, ((loss, lse), &t)) in loss.iter_mut().zip(lse.iter_mut()).zip(targets).enumerate() {
                *lse += loss.ln();
                *loss = class_of(t, k).map_or(0.0, |c| *lse - x[(image * k + c) * hw + first + i]);
            }
        });
    });
    (loss, lse)
}

/// The logits' gradient `g·(exp(xₖ − lse) − [k = t])`, `[B, K, P]`, 0 at ignored pixels.
pub fn backward(x: &[f32], targets: &[f32], lse: &[f32], grad: &[f32], p: Pixels) -> Vec<f32> {
    let Pixels { images, classes: k, per_image: hw } = p;
    assert_eq!((x.len(), targets.len()), (images * k * hw, images * hw), "cross-entropy: inputs do not match their sizes");
    assert_eq!((lse.len(), grad.len()), (images * hw, images * hw), "cross-entropy: lse or gradient does not match the targets");
    let mut out = vec![0.0f32; x.len()];
    // One task per class plane of one image: each reads its plane and the image's per-pixel
    // values, and writes its plane of the gradient.
    out.par_chunks_mut(hw).zip(x.par_chunks(hw)).enumerate().for_each(|(row, (out, x))| {
        let (image, class) = (row / k, row % k);
        let pixels = image * hw..(image + 1) * hw;
        let (t, lse, g) = (&targets[pixels.clone()], &lse[pixels.clone()], &grad[pixels]);
        let class = class as f32;
        // Zipped iterators, not indices: bounds checks would keep the loop scalar.
        with_avx2(#[inline(always)] || {
            for ((((out, &x), &t), &lse), &g) in out.iter_mut().zip(x).zip(t).zip(lse).zip(g) {
                // A negative target zeroes the pixel; `t == class` subtracts the one-hot.
                let g = if t < 0.0 { 0.0 } else { g };
                let hit = if t == class { 1.0 } else { 0.0 };
                *out = g * (exp(x - lse) - hit);
            }
        });
    });
    // Targets outside the classes were rejected by the forward pass.
    out
}

impl PixelCrossEntropyKernels for Flex {
    fn pixel_cross_entropy(logits: FloatTensor<Self>, targets: FloatTensor<Self>) -> (FloatTensor<Self>, FloatTensor<Self>) {
        let Some(p) = Pixels::of(&logits, &targets) else {
            return burn_forward::<Self>(logits, targets);
        };
        let dims = targets.shape().to_vec();
        let (x, t) = (logits.to_contiguous(), targets.to_contiguous());
        let (loss, lse) = forward(x.storage(), t.storage(), p);
        (tensor(loss, dims.clone()), tensor(lse, dims))
    }

    fn pixel_cross_entropy_backward(
        logits: FloatTensor<Self>,
        targets: FloatTensor<Self>,
        lse: FloatTensor<Self>,
        output_grad: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        let like_targets = |u: &FlexTensor| u.dtype() == DType::F32 && u.shape() == targets.shape();
        let covered = Pixels::of(&logits, &targets).filter(|_| like_targets(&lse) && like_targets(&output_grad));
        let Some(p) = covered else {
            return burn_backward::<Self>(logits, targets, lse, output_grad);
        };
        let dims = logits.shape().to_vec();
        let (x, t, lse, g) = (logits.to_contiguous(), targets.to_contiguous(), lse.to_contiguous(), output_grad.to_contiguous());
        tensor(backward(x.storage(), t.storage(), lse.storage(), g.storage(), p), dims)
    }
}

impl<B: Backend + PixelCrossEntropyKernels, C: CheckpointStrategy> PixelCrossEntropyKernels for Autodiff<B, C> {
    fn pixel_cross_entropy(logits: FloatTensor<Self>, targets: FloatTensor<Self>) -> (FloatTensor<Self>, FloatTensor<Self>) {
        #[derive(Debug)]
        struct PixelCrossEntropy;

        impl<B: Backend + PixelCrossEntropyKernels> Backward<B, 1> for PixelCrossEntropy {
            // The logits are checkpointed; the targets and the log-sum-exp are kept.
            type State = (NodeId, B::FloatTensorPrimitive, B::FloatTensorPrimitive);

            fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, checkpointer: &mut Checkpointer) {
                let [node_logits] = ops.parents;
                let grad = grads.consume::<B>(&ops.node);
                let (logits_state, targets, lse) = ops.state;
                let logits = checkpointer.retrieve_node_output::<B::FloatTensorPrimitive>(logits_state);
                if let Some(node) = node_logits {
                    grads.register::<B>(node.id, B::pixel_cross_entropy_backward(logits, targets, lse, grad));
                }
            }
        }

        let untracked = |t| FloatTensor::<Self>::new(t);
        let targets = targets.into_primitive();
        match PixelCrossEntropy.prepare::<C>([logits.node()]).compute_bound().stateful() {
            OpsKind::Tracked(mut prep) => {
                let logits_state = prep.checkpoint(&logits);
                let (loss, lse) = B::pixel_cross_entropy(logits.into_primitive(), targets.clone());
                (prep.finish((logits_state, targets, lse.clone()), loss), untracked(lse))
            }
            OpsKind::UnTracked(prep) => {
                let (loss, lse) = B::pixel_cross_entropy(logits.into_primitive(), targets);
                (prep.finish(loss), untracked(lse))
            }
        }
    }
}

/// The cross-entropy of every pixel through [`PixelCrossEntropyKernels`] (with its gradient
/// for the logits): `log Σₖ exp(xₖ) − x_t`, 0 where the target is negative.
///
/// # Shapes
/// logits `[B, K, H, W]`, targets `[B, H, W]` (class indices as floats) → `[B, H, W]`
pub fn pixel_cross_entropy(logits: Tensor<4>, targets: Tensor<3>) -> Tensor<3> {
    let (loss, _) = <Dispatch as PixelCrossEntropyKernels>::pixel_cross_entropy(logits.into_dispatch(), targets.into_dispatch());
    Tensor::from_dispatch(loss)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::assert_close;
    use burn::tensor::activation::log_softmax;
    use burn::tensor::{Device, Distribution, Int, TensorData};

    /// Targets in `0..k`, with about every fifth pixel ignored (−1), `[b, h, w]`.
    fn targets(dims: [usize; 3], k: usize, device: &Device) -> Tensor<3> {
        let classes = Tensor::<3>::random(dims, Distribution::Uniform(0.0, k as f64), device).floor();
        let ignored = Tensor::<3>::random(dims, Distribution::Uniform(0.0, 1.0), device).lower_elem(0.2);
        classes.mask_fill(ignored, -1.0)
    }

    /// The losses and the logits' gradient of `Σ g·loss`, through the kernels or (with
    /// `composed`) through burn's tensor operations: log-softmax, gather, mask.
    fn run(x: &Tensor<4>, t: &Tensor<3>, g: &Tensor<3>, composed: bool) -> [Vec<f32>; 2] {
        let x = x.clone().require_grad();
        let loss = if composed {
            let [b, _, h, w] = x.dims();
            let valid = t.clone().greater_equal_elem(0.0);
            let index = t.clone().clamp_min(0.0).int().reshape([b, 1, h, w]);
            let picked = log_softmax(x.clone(), 1).gather(1, index).reshape([b, h, w]);
            -(picked * valid.float())
        } else {
            pixel_cross_entropy(x.clone(), t.clone())
        };
        let grads = (loss.clone() * g.clone()).sum().backward();
        let values = |t: Tensor<4>| t.into_data().try_to_vec::<f32>().unwrap();
        [loss.into_data().try_to_vec().unwrap(), values(x.grad(&grads).unwrap())]
    }

    #[test]
    fn kernels_match_burns_composition() {
        let device = Device::flex().autodiff();
        // (images, classes, side): one block, several with a short last one, one class.
        for (b, k, side) in [(2, 3, 5), (3, 11, 40), (1, 21, 64), (2, 1, 7)] {
            let x = Tensor::<4>::random([b, k, side, side], Distribution::Normal(0.0, 3.0), &device);
            let t = targets([b, side, side], k, &device);
            let g = Tensor::<3>::random([b, side, side], Distribution::Uniform(-1.0, 1.0), &device);
            let [loss, dx] = run(&x, &t, &g, false);
            let [loss_b, dx_b] = run(&x, &t, &g, true);
            assert_close(&loss, &loss_b, 1e-5, &format!("loss {b}x{k}x{side}"));
            assert_close(&dx, &dx_b, 1e-5, &format!("gradient {b}x{k}x{side}"));
        }
    }

    /// What other backends run: the trait's default bodies, here on the CPU's tensors.
    #[test]
    fn burns_fallback_matches_the_kernels() {
        let device = Device::flex();
        let (b, k, side) = (2, 5, 9);
        let x = Tensor::<4>::random([b, k, side, side], Distribution::Normal(0.0, 2.0), &device);
        let t = targets([b, side, side], k, &device);
        let g = Tensor::<3>::random([b, side, side], Distribution::Uniform(-1.0, 1.0), &device);
        let flex = |t: Tensor<3>| FlexTensor::from_data(t.into_data());
        let flex4 = |t: Tensor<4>| FlexTensor::from_data(t.into_data());
        let data = |t: FlexTensor| t.into_data().try_to_vec::<f32>().unwrap();
        let (loss, lse) = <Flex as PixelCrossEntropyKernels>::pixel_cross_entropy(flex4(x.clone()), flex(t.clone()));
        let (loss_b, lse_b) = burn_forward::<Flex>(flex4(x.clone()), flex(t.clone()));
        let dx = <Flex as PixelCrossEntropyKernels>::pixel_cross_entropy_backward(flex4(x.clone()), flex(t.clone()), lse.clone(), flex(g.clone()));
        let dx_b = burn_backward::<Flex>(flex4(x), flex(t), lse_b.clone(), flex(g));
        assert_close(&data(loss), &data(loss_b), 1e-5, "loss");
        assert_close(&data(lse), &data(lse_b), 1e-5, "log-sum-exp");
        assert_close(&data(dx), &data(dx_b), 1e-5, "gradient");
    }

    #[test]
    #[should_panic(expected = "label 3 is not a class of the 3 logits")]
    fn a_target_beyond_the_classes_is_an_error() {
        let (x, t) = (vec![0.0f32; 3 * 4], vec![0.0, 1.0, 3.0, -1.0]);
        forward(&x, &t, Pixels { images: 1, classes: 3, per_image: 4 });
    }

    #[test]
    fn ignored_pixels_have_no_loss_and_no_gradient() {
        let device = Device::flex().autodiff();
        let x = Tensor::<4>::random([1, 4, 2, 3], Distribution::Normal(0.0, 1.0), &device);
        let t = Tensor::<3, Int>::from_data(TensorData::new(vec![-1i64, 2, -1, 0, 3, -1], [1, 2, 3]), &device).float();
        let g = Tensor::<3>::ones([1, 2, 3], &device);
        let [loss, dx] = run(&x, &t, &g, false);
        for pixel in [0, 2, 5] {
            assert_eq!(loss[pixel], 0.0, "loss at ignored pixel {pixel}");
            for class in 0..4 {
                assert_eq!(dx[class * 6 + pixel], 0.0, "gradient at ignored pixel {pixel}, class {class}");
            }
        }
        assert!(loss[1] > 0.0 && loss[3] > 0.0 && loss[4] > 0.0, "{loss:?}");
    }
}
