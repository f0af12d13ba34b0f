//! 2-D max pooling on channels-last activations, as a backend extension (issue 9, attempt 9).
//!
//! A ResNet's stem pools the batch norm's channels-last output. burn-flex pools NCHW, so it
//! would copy the activation into NCHW order first, and its gradient back, on the network's
//! largest tensors. Here the pooling reads and writes `[N, H, W, C]` memory where it lies:
//! each output pixel is the element-wise maximum of its taps' runs of channels (which
//! vectorises), and the backward pass finds each maximum again instead of keeping indices.
//! Every other backend and case (dilation, ceil mode, non-`f32`, `DENSESSL_LAYOUT=nchw`)
//! keeps burn's own pooling (the trait's default bodies).

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::autodiff::NodeId;
use burn::backend::tensor::FloatTensor;
use burn::backend::ops::ModuleOps;
use burn::backend::{backend_extension, Autodiff, Backend, Dispatch, Flex, TensorMetadata};
use burn::nn::pool::MaxPool2d;
use burn::nn::PaddingConfig2d;
use burn::tensor::{DType, IntDType, Tensor};
use rayon::prelude::*;

use super::layout;

/// Geometry of a max pooling without dilation or ceil mode, padding the same on both sides.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolGeometry {
    /// Images.
    pub batch: usize,
    /// Channels.
    pub channels: usize,
    /// Input height and width.
    pub input: [usize; 2],
    /// Window height and width.
    pub kernel: [usize; 2],
    /// Stride per axis.
    pub stride: [usize; 2],
    /// Padding per axis (the same on both sides; padded taps never win).
    pub padding: [usize; 2],
}

impl PoolGeometry {
    /// Output height and width.
    pub fn output(&self) -> [usize; 2] {
        std::array::from_fn(|a| (self.input[a] + 2 * self.padding[a] - self.kernel[a]) / self.stride[a] + 1)
    }

    /// The input pixels `iy·W + ix` of output pixel `(oy, ox)`'s window, in scan order.
    fn taps(&self, oy: usize, ox: usize) -> impl Iterator<Item = usize> + '_ {
        let [h, w] = self.input;
        let rows = (0..self.kernel[0]).filter_map(move |ky| (oy * self.stride[0] + ky).checked_sub(self.padding[0]).filter(|&y| y < h));
        rows.flat_map(move |iy| {
            (0..self.kernel[1]).filter_map(move |kx| (ox * self.stride[1] + kx).checked_sub(self.padding[1]).filter(|&x| x < w)).map(move |ix| iy * w + ix)
        })
    }
}

/// Forward pass on NHWC values: `x [B, H, W, C]` → `[B, Ho, Wo, C]`, each output the
/// largest of its window's in-bounds values.
pub fn forward(x: &[f32], g: &PoolGeometry) -> Vec<f32> {
    let [h, w] = g.input;
    let [ho, wo] = g.output();
    let c = g.channels;
    assert_eq!(x.len(), g.batch * h * w * c, "max pool: input length does not match its geometry");
    let mut y = vec![f32::NEG_INFINITY; g.batch * ho * wo * c];
    // One task per output row of an image.
    y.par_chunks_mut((wo * c).max(1)).enumerate().for_each(|(row, out)| {
        let (b, oy) = (row / ho, row % ho);
        let image = &x[b * h * w * c..][..h * w * c];
        for (ox, o) in out.chunks_exact_mut(c).enumerate() {
            for pixel in g.taps(oy, ox) {
                o.iter_mut().zip(&image[pixel * c..][..c]).for_each(|(o, &v)| *o = o.max(v));
            }
        }
    });
    y
}

/// Gradient on NHWC values: each output gradient goes to the first tap of its window (in
/// scan order, as PyTorch picks) that holds the window's maximum.
pub fn gradient(x: &[f32], y: &[f32], dy: &[f32], g: &PoolGeometry) -> Vec<f32> {
    let [h, w] = g.input;
    let [ho, wo] = g.output();
    let c = g.channels;
    assert_eq!(x.len(), g.batch * h * w * c, "max pool: input length does not match its geometry");
    assert!(y.len() == g.batch * ho * wo * c && dy.len() == y.len(), "max pool: output or gradient length does not match");
    let mut dx = vec![0.0f32; x.len()];
    // One task per image: windows overlap, and each image's pixels are its task's alone.
    dx.par_chunks_mut((h * w * c).max(1)).enumerate().for_each(|(b, image_dx)| {
        let image = &x[b * h * w * c..][..h * w * c];
        let outputs = b * ho * wo * c..(b + 1) * ho * wo * c;
        let (ys, dys) = (&y[outputs.clone()], &dy[outputs]);
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU has AVX2 (checked just above).
            unsafe { image_gradient_avx2(image_dx, image, ys, dys, g) };
            return;
        }
        image_gradient(image_dx, image, ys, dys, g);
    });
    dx
}

/// The gradient of one image: `image_dx` and `image` `[H, W, C]`, `ys` and `dys`
/// `[Ho, Wo, C]`.
#[inline(always)]
fn image_gradient(image_dx: &mut [f32], image: &[f32], ys: &[f32], dys: &[f32], g: &PoolGeometry) {
    let (c, wo) = (g.channels, g.output()[1]);
    // Per channel, the output gradient not yet handed to a tap of the current window.
    let mut left = vec![0.0f32; c];
    for (q, (window_max, window_grad)) in ys.chunks_exact(c).zip(dys.chunks_exact(c)).enumerate() {
        left.copy_from_slice(window_grad);
        for pixel in g.taps(q / wo, q % wo) {
            hand_to_maxima(&mut image_dx[pixel * c..][..c], &image[pixel * c..][..c], window_max, &mut left);
        }
    }
}

/// [`image_gradient`] compiled with AVX2, for CPUs that have it. On the crate's baseline
/// (x86-64, SSE2) the per-channel test, written with branches, stayed a compare and a branch
/// per element and took the stem's gradient 24 ms inside a ResNet-18 step, 3.3 ms as now
/// (docs/BENCHMARKS.md, "Attempt 10").
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn image_gradient_avx2(image_dx: &mut [f32], image: &[f32], ys: &[f32], dys: &[f32], g: &PoolGeometry) {
    image_gradient(image_dx, image, ys, dys, g);
}

/// One tap of a window, across its channels: where the tap's value `xs` is the window's
/// maximum `ys`, it takes what is `left` of the output gradient, and nothing is left for
/// later taps. Bit masks over slices of one length, so that it vectorises.
#[inline(always)]
fn hand_to_maxima(ds: &mut [f32], xs: &[f32], ys: &[f32], left: &mut [f32]) {
    let n = ds.len();
    let (xs, ys, left) = (&xs[..n], &ys[..n], &mut left[..n]);
    for i in 0..n {
        // All ones where the tap holds the maximum. Bit masks rather than `if`: LLVM turns
        // selects feeding stores into masked loads and stores, which AMD's cores microcode.
        let hit = ((xs[i] == ys[i]) as u32).wrapping_neg();
        let taken = left[i].to_bits() & hit;
        ds[i] += f32::from_bits(taken);
        left[i] = f32::from_bits(left[i].to_bits() & !hit);
    }
}

/// Max pooling (no dilation, no ceil mode) whose forward pass and gradient a backend may
/// replace. Shapes: `x [B, C, H, W]`, output and output gradient `[B, C, Ho, Wo]`.
#[backend_extension(Flex, Autodiff, Cube: cfg(any(feature = "vulkan", feature = "cuda")))]
pub trait MaxPoolKernels: Backend {
    /// The pooled output.
    fn max_pool2d_plain(x: FloatTensor<Self>, kernel: [usize; 2], stride: [usize; 2], padding: [usize; 2]) -> FloatTensor<Self> {
        Self::max_pool2d(x, kernel, stride, padding, [1, 1], false)
    }

    /// The gradient with respect to `x`, given the forward's `output` and its gradient.
    fn max_pool2d_x_gradient(
        x: FloatTensor<Self>,
        output: FloatTensor<Self>,
        output_grad: FloatTensor<Self>,
        kernel: [usize; 2],
        stride: [usize; 2],
        padding: [usize; 2],
    ) -> FloatTensor<Self> {
        let _ = output;
        burn_x_gradient::<Self>(x, output_grad, [kernel, stride, padding])
    }
}

/// burn's own max-pool gradient: the window maxima found again with indices, then scattered.
fn burn_x_gradient<B: Backend>(x: FloatTensor<B>, output_grad: FloatTensor<B>, [kernel, stride, padding]: [[usize; 2]; 3]) -> FloatTensor<B> {
    let indices = B::max_pool2d_with_indices(x.clone(), kernel, stride, padding, [1, 1], false, IntDType::I64).indices;
    B::max_pool2d_with_indices_backward(x, kernel, stride, padding, [1, 1], false, output_grad, indices).x_grad
}

#[cfg(any(feature = "vulkan", feature = "cuda"))]
impl MaxPoolKernels for burn::backend::Cube {}

/// The geometry when the channels-last kernels cover this pooling of `x`, else `None`.
fn cpu_geometry(x: &FloatTensor<Flex>, kernel: [usize; 2], stride: [usize; 2], padding: [usize; 2]) -> Option<PoolGeometry> {
    let shape = x.shape();
    if !layout::channels_last_outputs() || x.dtype() != DType::F32 || shape.num_dims() != 4 {
        return None;
    }
    let [batch, channels, h, w] = shape.dims();
    let fits = |a: usize, side: usize| kernel[a] > 0 && stride[a] > 0 && padding[a] < kernel[a] && side + 2 * padding[a] >= kernel[a];
    (fits(0, h) && fits(1, w)).then_some(PoolGeometry { batch, channels, input: [h, w], kernel, stride, padding })
}

fn output_dims(g: &PoolGeometry) -> [usize; 4] {
    let [ho, wo] = g.output();
    [g.batch, g.channels, ho, wo]
}

impl MaxPoolKernels for Flex {
    fn max_pool2d_plain(x: FloatTensor<Self>, kernel: [usize; 2], stride: [usize; 2], padding: [usize; 2]) -> FloatTensor<Self> {
        let Some(g) = cpu_geometry(&x, kernel, stride, padding) else {
            return Self::max_pool2d(x, kernel, stride, padding, [1, 1], false);
        };
        let x = layout::channels_last_values(x);
        layout::from_channels_last(forward(x.storage(), &g), output_dims(&g))
    }

    fn max_pool2d_x_gradient(
        x: FloatTensor<Self>,
        output: FloatTensor<Self>,
        output_grad: FloatTensor<Self>,
        kernel: [usize; 2],
        stride: [usize; 2],
        padding: [usize; 2],
    ) -> FloatTensor<Self> {
        let Some(g) = cpu_geometry(&x, kernel, stride, padding).filter(|g| output.shape().dims::<4>() == output_dims(g)) else {
            return burn_x_gradient::<Self>(x, output_grad, [kernel, stride, padding]);
        };
        let dims = [g.batch, g.channels, g.input[0], g.input[1]];
        let [x, y, dy] = [x, output, output_grad].map(layout::channels_last_values);
        layout::from_channels_last(gradient(x.storage(), y.storage(), dy.storage(), &g), dims)
    }
}

impl<B: Backend + MaxPoolKernels, C: CheckpointStrategy> MaxPoolKernels for Autodiff<B, C> {
    fn max_pool2d_plain(x: FloatTensor<Self>, kernel: [usize; 2], stride: [usize; 2], padding: [usize; 2]) -> FloatTensor<Self> {
        #[derive(Debug)]
        struct MaxPoolPlain;

        impl<B: Backend + MaxPoolKernels> Backward<B, 1> for MaxPoolPlain {
            // The input (checkpointed), the output and the window.
            type State = (NodeId, FloatTensor<B>, [[usize; 2]; 3]);

            fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, checkpointer: &mut Checkpointer) {
                let [node_x] = ops.parents;
                let grad = grads.consume::<B>(&ops.node);
                let (x_state, output, [kernel, stride, padding]) = ops.state;
                let x = checkpointer.retrieve_node_output::<FloatTensor<B>>(x_state);
                if let Some(node) = node_x {
                    grads.register::<B>(node.id, B::max_pool2d_x_gradient(x, output, grad, kernel, stride, padding));
                }
            }
        }

        match MaxPoolPlain.prepare::<C>([x.node()]).compute_bound().stateful() {
            OpsKind::Tracked(mut prep) => {
                let x_state = prep.checkpoint(&x);
                let y = B::max_pool2d_plain(x.into_primitive(), kernel, stride, padding);
                prep.finish((x_state, y.clone(), [kernel, stride, padding]), y)
            }
            OpsKind::UnTracked(prep) => prep.finish(B::max_pool2d_plain(x.into_primitive(), kernel, stride, padding)),
        }
    }
}

/// Max pooling through [`MaxPoolKernels`]. Shapes as there.
pub fn max_pool2d(x: Tensor<4>, kernel: [usize; 2], stride: [usize; 2], padding: [usize; 2]) -> Tensor<4> {
    Tensor::from_dispatch(<Dispatch as MaxPoolKernels>::max_pool2d_plain(x.into_dispatch(), kernel, stride, padding))
}

/// A burn [`MaxPool2d`] module's forward pass through [`MaxPoolKernels`] where it has
/// symmetric explicit padding, no dilation and no ceil mode; burn's module otherwise.
pub fn max_pool2d_module(pool: &MaxPool2d, x: Tensor<4>) -> Tensor<4> {
    match pool.padding {
        PaddingConfig2d::Explicit(top, left, bottom, right)
            if top == bottom && left == right && pool.dilation == [1, 1] && !pool.ceil_mode =>
        {
            max_pool2d(x, pool.kernel_size, pool.stride, [top, left])
        }
        PaddingConfig2d::Valid if pool.dilation == [1, 1] && !pool.ceil_mode => max_pool2d(x, pool.kernel_size, pool.stride, [0, 0]),
        _ => pool.forward(x),
    }
}
