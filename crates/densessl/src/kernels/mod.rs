//! Faster operations plugged into burn through its backend-extension mechanism (issue 9):
//! convolutions here, training-mode batch norm in [`batch_norm`], batch norm fused with the
//! ReLU (and residual addition) after it in [`batch_norm_relu`], batch norm with statistics
//! per group of images (the key encoders' split-batch BN) in [`batch_norm_groups`], max
//! pooling in [`max_pool`], and InfoNCE's log-sum-exp against a queue in
//! [`product_logsumexp`]. On burn-flex they hand activations on channels-last ([`layout`]),
//! so the next kernel reads them without a transpose, and where two of their backward steps produce
//! gradients of one activation, [`gradient_sum`] adds them in that layout.
//!
//! [`ConvKernels`] is a backend extension: a bias-free 2-D convolution whose forward pass and
//! both gradients a backend may replace. On burn-flex (the CPU backend) the ResNet encoder's
//! convolutions run through the batch-wide im2col + `gemm` kernels of [`conv_cpu`]; on every
//! other backend (and for shapes the kernels do not cover: groups, asymmetric padding,
//! non-`f32`) the trait's default bodies call burn's own convolution, so results and
//! gradients are burn's there. The autodiff implementation records one graph node whose
//! backward pass calls the inner backend's [`ConvKernels::conv2d_gradients`] (or, when only
//! one is needed, [`ConvKernels::conv2d_x_gradient`] or [`ConvKernels::conv2d_weight_gradient`]).
//!
//! Set `DENSESSL_CONV_KERNELS=burn` to route every convolution through burn's own
//! implementation instead (for A/B measurements: docs/BENCHMARKS.md, "Attempt 3").

pub mod batch_norm;
pub mod batch_norm_cpu;
pub mod batch_norm_groups;
pub mod batch_norm_relu;
pub mod batch_norm_rows;
pub mod conv_cpu;
mod conv_weights;
pub mod gemm;
pub mod gradient_sum;
pub mod layout;
pub mod max_pool;
pub mod momentum_blend;
pub mod pointwise;
pub mod pixel_cross_entropy;
pub mod product_logsumexp;
pub mod transpose;
mod vector;
mod winograd;

use std::sync::OnceLock;

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::autodiff::NodeId;
use burn::backend::flex::FlexTensor;
use burn::backend::tensor::FloatTensor;
use burn::backend::{backend_extension, Autodiff, Backend, Dispatch, Flex, TensorMetadata};
use burn::backend::ops::ModuleOps;
use burn::nn::conv::Conv2d;
use burn::nn::PaddingConfig2d;
use burn::tensor::ops::ConvOptions;
use burn::tensor::{DType, Tensor, TensorData};

use conv_cpu::ConvGeometry;
use gradient_sum::{register_input_gradient, GradientSumKernels};

/// A bias-free 2-D convolution whose forward pass and gradients a backend may replace.
///
/// Shapes: `x [B, Cin, H, W]`, `weight [Cout, Cin / groups, kh, kw]`, output and output
/// gradient `[B, Cout, Ho, Wo]`.
#[backend_extension(Flex, Autodiff, Cube: cfg(any(feature = "vulkan", feature = "cuda")))]
pub trait ConvKernels: Backend {
    /// Forward convolution without bias.
    fn conv2d_no_bias(x: FloatTensor<Self>, weight: FloatTensor<Self>, options: ConvOptions<2>) -> FloatTensor<Self> {
        Self::conv2d(x, weight, None, options)
    }

    /// Gradient with respect to `x`.
    fn conv2d_x_gradient(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        output_grad: FloatTensor<Self>,
        options: ConvOptions<2>,
    ) -> FloatTensor<Self> {
        Self::conv2d_x_backward(x, weight, output_grad, options)
    }

    /// Gradient with respect to `weight`.
    fn conv2d_weight_gradient(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        output_grad: FloatTensor<Self>,
        options: ConvOptions<2>,
    ) -> FloatTensor<Self> {
        Self::conv2d_weight_backward(x, weight, output_grad, options)
    }

    /// `(x gradient, weight gradient)` at once, for backends that share work between the two.
    fn conv2d_gradients(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        output_grad: FloatTensor<Self>,
        options: ConvOptions<2>,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        separate_gradients::<Self>(x, weight, output_grad, options)
    }
}

/// [`ConvKernels::conv2d_gradients`] as two separate calls.
fn separate_gradients<B: ConvKernels>(
    x: FloatTensor<B>,
    weight: FloatTensor<B>,
    output_grad: FloatTensor<B>,
    options: ConvOptions<2>,
) -> (FloatTensor<B>, FloatTensor<B>) {
    let dx = B::conv2d_x_gradient(x.clone(), weight.clone(), output_grad.clone(), options.clone());
    (dx, B::conv2d_weight_gradient(x, weight, output_grad, options))
}

#[cfg(any(feature = "vulkan", feature = "cuda"))]
impl ConvKernels for burn::backend::Cube {}

/// Whether `DENSESSL_CONV_KERNELS=burn` asked for burn's own convolutions.
fn use_burn_convolutions() -> bool {
    static BURN: OnceLock<bool> = OnceLock::new();
    *BURN.get_or_init(|| std::env::var("DENSESSL_CONV_KERNELS").is_ok_and(|v| v == "burn"))
}

/// The geometry of a convolution the CPU kernels cover, or `None` (then burn's path runs).
fn cpu_geometry(x: &FloatTensor<Flex>, weight: &FloatTensor<Flex>, options: &ConvOptions<2>) -> Option<ConvGeometry> {
    if use_burn_convolutions()
        || x.dtype() != DType::F32
        || weight.dtype() != DType::F32
        || options.groups != 1
        || options.is_asymmetric()
    {
        return None;
    }
    let [batch, cin, h, w] = x.shape().dims();
    let [cout, wcin, kh, kw] = weight.shape().dims();
    let covers = |side: usize, axis: usize, k: usize| side + 2 * options.padding_begin()[axis] > options.dilation[axis] * (k - 1);
    if wcin != cin || !covers(h, 0, kh) || !covers(w, 1, kw) {
        return None;
    }
    Some(ConvGeometry {
        batch,
        cin,
        input: [h, w],
        cout,
        kernel: [kh, kw],
        stride: options.stride,
        padding: options.padding_begin(),
        dilation: options.dilation,
    })
}

/// Under `DENSESSL_LAYOUT=nchw`, 1×1 stride-1 convolutions on small maps: burn-flex's forward (and so its data gradient)
/// is one gemm per image straight from NCHW, as fast there as the NHWC round trip of the
/// batch-wide kernels (docs/BENCHMARKS.md, attempts 4 and 7). Larger maps go to
/// [`pointwise`], which does the same per image with single-threaded products.
fn burn_is_one_gemm(g: &ConvGeometry) -> bool {
    g.kernel == [1, 1] && g.stride == [1, 1] && !pointwise::applies(g)
}

/// The tensor in a contiguous buffer of its own size (no copy when it already is one).
fn values(tensor: FloatTensor<Flex>) -> FlexTensor {
    tensor.to_contiguous()
}

fn as_f32(tensor: &FlexTensor) -> &[f32] {
    tensor.storage::<f32>()
}

fn from_values(values: Vec<f32>, shape: [usize; 4]) -> FloatTensor<Flex> {
    FlexTensor::from_data(TensorData::new(values, shape))
}

/// The NCHW dimensions of a convolution's input, output and kernel.
fn input_dims(g: &ConvGeometry) -> [usize; 4] {
    [g.batch, g.cin, g.input[0], g.input[1]]
}

fn output_dims(g: &ConvGeometry) -> [usize; 4] {
    let [ho, wo] = g.output();
    [g.batch, g.cout, ho, wo]
}

fn weight_dims(g: &ConvGeometry) -> [usize; 4] {
    [g.cout, g.cin, g.kernel[0], g.kernel[1]]
}

/// The geometry when the channels-last kernels take this convolution (every covered one,
/// unless `DENSESSL_LAYOUT=nchw`).
fn channels_last_geometry(x: &FloatTensor<Flex>, weight: &FloatTensor<Flex>, options: &ConvOptions<2>) -> Option<ConvGeometry> {
    cpu_geometry(x, weight, options).filter(|_| layout::channels_last_outputs())
}

impl ConvKernels for Flex {
    fn conv2d_no_bias(x: FloatTensor<Self>, weight: FloatTensor<Self>, options: ConvOptions<2>) -> FloatTensor<Self> {
        if let Some(g) = channels_last_geometry(&x, &weight, &options) {
            let (x, weight) = (layout::channels_last_values(x), values(weight));
            let y = conv_cpu::conv2d_forward_channels_last(as_f32(&x), as_f32(&weight), &g);
            return layout::from_channels_last(y, output_dims(&g));
        }
        let Some(g) = cpu_geometry(&x, &weight, &options).filter(|g| !burn_is_one_gemm(g)) else {
            return Self::conv2d(x, weight, None, options);
        };
        let (x, weight) = (values(x), values(weight));
        let y = conv_cpu::conv2d_forward(as_f32(&x), as_f32(&weight), &g);
        from_values(y, output_dims(&g))
    }

    fn conv2d_x_gradient(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        output_grad: FloatTensor<Self>,
        options: ConvOptions<2>,
    ) -> FloatTensor<Self> {
        if let Some(g) = channels_last_geometry(&x, &weight, &options) {
            let (weight, grad) = (values(weight), layout::channels_last_values(output_grad));
            let dx = conv_cpu::conv2d_data_gradient_channels_last(as_f32(&weight), as_f32(&grad), &g);
            return layout::from_channels_last(dx, input_dims(&g));
        }
        let Some(g) = cpu_geometry(&x, &weight, &options).filter(|g| !burn_is_one_gemm(g)) else {
            return Self::conv2d_x_backward(x, weight, output_grad, options);
        };
        let (weight, grad) = (values(weight), values(output_grad));
        let dx = conv_cpu::conv2d_data_gradient(as_f32(&weight), as_f32(&grad), &g);
        from_values(dx, input_dims(&g))
    }

    fn conv2d_weight_gradient(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        output_grad: FloatTensor<Self>,
        options: ConvOptions<2>,
    ) -> FloatTensor<Self> {
        let Some(g) = cpu_geometry(&x, &weight, &options) else {
            return Self::conv2d_weight_backward(x, weight, output_grad, options);
        };
        let dw = if layout::channels_last_outputs() {
            let (x, grad) = (layout::channels_last_values(x), layout::channels_last_values(output_grad));
            conv_cpu::conv2d_weight_gradient_channels_last(as_f32(&x), as_f32(&grad), &g)
        } else {
            let (x, grad) = (values(x), values(output_grad));
            conv_cpu::conv2d_weight_gradient(as_f32(&x), as_f32(&grad), &g)
        };
        from_values(dw, weight_dims(&g))
    }

    fn conv2d_gradients(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        output_grad: FloatTensor<Self>,
        options: ConvOptions<2>,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        if let Some(g) = channels_last_geometry(&x, &weight, &options) {
            // One channels-last copy of the output gradient (none when it already is one) for both.
            let (x, weight, grad) = (layout::channels_last_values(x), values(weight), layout::channels_last_values(output_grad));
            let dx = conv_cpu::conv2d_data_gradient_channels_last(as_f32(&weight), as_f32(&grad), &g);
            let dw = conv_cpu::conv2d_weight_gradient_channels_last(as_f32(&x), as_f32(&grad), &g);
            return (layout::from_channels_last(dx, input_dims(&g)), from_values(dw, weight_dims(&g)));
        }
        // Shared work only where both gradients are ours; otherwise each call picks its path.
        let Some(g) = cpu_geometry(&x, &weight, &options).filter(|g| !burn_is_one_gemm(g)) else {
            return separate_gradients::<Self>(x, weight, output_grad, options);
        };
        let (x, weight, grad) = (values(x), values(weight), values(output_grad));
        let (dx, dw) = conv_cpu::conv2d_gradients(as_f32(&x), as_f32(&weight), as_f32(&grad), &g);
        (
            from_values(dx, input_dims(&g)),
            from_values(dw, weight_dims(&g)),
        )
    }
}

impl<B: Backend + ConvKernels + GradientSumKernels, C: CheckpointStrategy> ConvKernels for Autodiff<B, C> {
    fn conv2d_no_bias(x: FloatTensor<Self>, weight: FloatTensor<Self>, options: ConvOptions<2>) -> FloatTensor<Self> {
        #[derive(Debug)]
        struct Conv2dNoBias;

        impl<B: Backend + ConvKernels + GradientSumKernels> Backward<B, 2> for Conv2dNoBias {
            type State = (NodeId, NodeId, ConvOptions<2>);

            fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, checkpointer: &mut Checkpointer) {
                let [node_x, node_weight] = ops.parents;
                let grad = grads.consume::<B>(&ops.node);
                let (x_state, weight_state, options) = ops.state;
                let x = checkpointer.retrieve_node_output::<B::FloatTensorPrimitive>(x_state);
                let weight = checkpointer.retrieve_node_output::<B::FloatTensorPrimitive>(weight_state);
                let dx = match (&node_x, node_weight) {
                    (Some(_), Some(node_weight)) => {
                        let (dx, dw) = B::conv2d_gradients(x, weight, grad, options);
                        grads.register::<B>(node_weight.id, dw);
                        Some(dx)
                    }
                    (Some(_), None) => Some(B::conv2d_x_gradient(x, weight, grad, options)),
                    (None, Some(node)) => {
                        grads.register::<B>(node.id, B::conv2d_weight_gradient(x, weight, grad, options));
                        None
                    }
                    (None, None) => None,
                };
                if let (Some(node_x), Some(dx)) = (node_x, dx) {
                    // The input's gradient may be its second (a block's input also feeds the
                    // residual or the shortcut): summed in `gradient_sum`. A tracked
                    // operation's own node always has an activation's requirement, so the
                    // comparison tells an activation from a leaf.
                    let intermediate = node_x.requirement == ops.node.requirement;
                    register_input_gradient::<B>(grads, node_x.id, intermediate, dx, |grads| grads.consume::<B>(&node_x));
                }
            }
        }

        match Conv2dNoBias.prepare::<C>([x.node(), weight.node()]).compute_bound().stateful() {
            OpsKind::Tracked(mut prep) => {
                let x_state = prep.checkpoint(&x);
                let weight_state = prep.checkpoint(&weight);
                let y = B::conv2d_no_bias(x.into_primitive(), weight.into_primitive(), options.clone());
                prep.finish((x_state, weight_state, options), y)
            }
            OpsKind::UnTracked(prep) => prep.finish(B::conv2d_no_bias(x.into_primitive(), weight.into_primitive(), options)),
        }
    }
}

/// Bias-free 2-D convolution through [`ConvKernels`]. Shapes as [`ConvKernels`].
pub fn conv2d(x: Tensor<4>, weight: Tensor<4>, options: ConvOptions<2>) -> Tensor<4> {
    Tensor::from_dispatch(<Dispatch as ConvKernels>::conv2d_no_bias(x.into_dispatch(), weight.into_dispatch(), options))
}

/// A burn [`Conv2d`] module's forward pass through [`ConvKernels`]: same parameters, same
/// result; its bias (if any) is added afterwards. `Same` padding goes through burn's module.
pub fn conv2d_module(conv: &Conv2d, x: Tensor<4>) -> Tensor<4> {
    let ((top, bottom), (left, right)) = match conv.padding {
        PaddingConfig2d::Explicit(top, left, bottom, right) => ((top, bottom), (left, right)),
        PaddingConfig2d::Valid => ((0, 0), (0, 0)),
        PaddingConfig2d::Same => return conv.forward(x),
    };
    let options = ConvOptions::new_with_padding(conv.stride, [(top, bottom), (left, right)], conv.dilation, conv.groups);
    let y = conv2d(x, conv.weight.val(), options);
    match &conv.bias {
        Some(bias) => y + bias.val().reshape([1, -1, 1, 1]),
        None => y,
    }
}

/// The kernels' unit tests: `got` matches `want` within `tolerance`, relative to |want| above 1.
#[cfg(test)]
fn assert_close(got: &[f32], want: &[f32], tolerance: f32, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    for (i, (a, b)) in got.iter().zip(want).enumerate() {
        assert!((a - b).abs() <= tolerance * b.abs().max(1.0), "{what}[{i}]: {a} vs {b}");
    }
}
