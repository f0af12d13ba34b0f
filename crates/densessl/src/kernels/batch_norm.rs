//! Training-mode batch normalisation as a backend extension (issue 9, attempt 5).
//!
//! [`BatchNormKernels`] mirrors burn's `batch_norm_train` and its backward operation. On
//! burn-flex, contiguous `f32` activations go through [`batch_norm_cpu`](super::batch_norm_cpu),
//! which reads each channel where it lies instead of through transposed copies; every other
//! backend and case keeps burn's own operations (the trait's default bodies). The autodiff
//! implementation records one node, as burn's does, whose backward pass calls the inner
//! backend's [`BatchNormKernels::batch_norm_gradients`].
//!
//! Set `DENSESSL_BN_KERNELS=burn` to use burn's batch norm everywhere (A/B measurements).

use std::sync::OnceLock;

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::autodiff::NodeId;
use burn::backend::flex::FlexTensor;
use burn::backend::tensor::FloatTensor;
use burn::backend::{backend_extension, Autodiff, Backend, Dispatch, Flex, TensorMetadata};
use burn::nn::BatchNorm;
use burn::tensor::{DType, Tensor, TensorData};

use super::batch_norm_cpu::{self, Epilogue, Planes, Statistics};
use super::batch_norm_rows::{self, Rows};
use super::{batch_norm_groups, layout};

/// Training-mode batch normalisation whose forward pass and gradients a backend may replace.
///
/// Shapes: `x` and the output `[N, C, ...]`; `gamma`, `beta`, mean and (biased) variance `[C]`.
#[backend_extension(Flex, Autodiff, Cube: cfg(any(feature = "vulkan", feature = "cuda")))]
pub trait BatchNormKernels: Backend {
    /// `(output, mean, variance)` from the batch statistics.
    fn batch_norm_batch_stats(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        epsilon: f64,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        burn_batch_stats::<Self>(x, gamma, beta, epsilon)
    }

    /// `(x_grad, gamma_grad, beta_grad)` given the output gradient and the forward's statistics.
    fn batch_norm_gradients(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        mean: FloatTensor<Self>,
        variance: FloatTensor<Self>,
        epsilon: f64,
        output_grad: FloatTensor<Self>,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        burn_gradients::<Self>(x, gamma, mean, variance, epsilon, output_grad)
    }
}

/// burn's own training-mode batch norm, as `(output, mean, variance)`.
pub(super) fn burn_batch_stats<B: Backend>(
    x: FloatTensor<B>,
    gamma: FloatTensor<B>,
    beta: FloatTensor<B>,
    epsilon: f64,
) -> (FloatTensor<B>, FloatTensor<B>, FloatTensor<B>) {
    let result = B::batch_norm_train(x, gamma, beta, epsilon);
    (result.output, result.mean, result.variance)
}

/// burn's own batch-norm gradients, as `(x_grad, gamma_grad, beta_grad)`.
fn burn_gradients<B: Backend>(
    x: FloatTensor<B>,
    gamma: FloatTensor<B>,
    mean: FloatTensor<B>,
    variance: FloatTensor<B>,
    epsilon: f64,
    output_grad: FloatTensor<B>,
) -> (FloatTensor<B>, FloatTensor<B>, FloatTensor<B>) {
    let result = B::batch_norm_train_backward(x, gamma, mean, variance, epsilon, output_grad);
    (result.x_grad, result.gamma_grad, result.beta_grad)
}

#[cfg(any(feature = "vulkan", feature = "cuda"))]
impl BatchNormKernels for burn::backend::Cube {}

/// Whether `DENSESSL_BN_KERNELS=burn` asked for burn's own batch norm.
fn use_burn_batch_norm() -> bool {
    static BURN: OnceLock<bool> = OnceLock::new();
    *BURN.get_or_init(|| std::env::var("DENSESSL_BN_KERNELS").is_ok_and(|v| v == "burn"))
}

/// How the CPU kernels read an activation `[N, C, ...]`: NCHW planes, or the rows of a
/// channels-last tensor (see [`layout`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum CpuLayout {
    Planes(Planes),
    Rows(Rows),
}

/// How the CPU kernels read these tensors (the activation `x` first), or `None` where they
/// do not cover them. The layout is the activation's own.
pub(super) fn cpu_layout(tensors: &[&FloatTensor<Flex>]) -> Option<CpuLayout> {
    if use_burn_batch_norm() || tensors.iter().any(|t| t.dtype() != DType::F32) {
        return None;
    }
    let shape = tensors[0].shape();
    if shape.num_dims() < 2 || shape[1] == 0 {
        return None;
    }
    let (batch, channels) = (shape[0], shape[1]);
    let plane = shape.num_elements() / (batch * channels).max(1);
    Some(if layout::is_channels_last(tensors[0]) {
        CpuLayout::Rows(Rows { rows: batch * plane, channels })
    } else {
        CpuLayout::Planes(Planes { batch, channels, plane })
    })
}

impl CpuLayout {
    /// Channels of the activation.
    pub(super) fn channels(&self) -> usize {
        match self {
            CpuLayout::Planes(p) => p.channels,
            CpuLayout::Rows(r) => r.channels,
        }
    }

    /// An activation-shaped tensor's values in this layout's order (copied only where the
    /// tensor lies otherwise).
    pub(super) fn values(&self, activation: FloatTensor<Flex>) -> FlexTensor {
        match self {
            CpuLayout::Planes(_) => activation.to_contiguous(),
            CpuLayout::Rows(_) => layout::channels_last_values(activation),
        }
    }

    /// The tensor of dimensions `dims` whose values `values` holds in this layout's order.
    pub(super) fn tensor(&self, values: Vec<f32>, dims: &[usize]) -> FloatTensor<Flex> {
        match self {
            CpuLayout::Planes(_) => tensor(values, dims.to_vec()),
            CpuLayout::Rows(_) => {
                let dims: [usize; 4] = dims.try_into().expect("channels-last activations are [N, C, H, W]");
                layout::from_channels_last(values, dims)
            }
        }
    }

    /// `(relu?(bn(x) + residual?), mean, variance)`: see [`batch_norm_cpu::forward_then`].
    pub(super) fn forward_then(&self, x: &[f32], gamma: &[f32], beta: &[f32], epsilon: f64, epilogue: Epilogue) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
        match *self {
            CpuLayout::Planes(p) => batch_norm_cpu::forward_then(x, gamma, beta, epsilon, p, epilogue),
            CpuLayout::Rows(r) => batch_norm_rows::forward_then(x, gamma, beta, epsilon, r, epilogue),
        }
    }

    /// [`CpuLayout::forward_then`] with batch statistics per group of `images_per_group`
    /// consecutive images of the `batch`: see [`batch_norm_cpu::forward_grouped`].
    pub(super) fn forward_grouped(
        &self,
        x: &[f32],
        (gamma, beta, epsilon): (&[f32], &[f32], f64),
        epilogue: Epilogue,
        images_per_group: usize,
        batch: usize,
    ) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
        match *self {
            CpuLayout::Planes(p) => batch_norm_cpu::forward_grouped(x, gamma, beta, epsilon, p, images_per_group, epilogue),
            CpuLayout::Rows(r) => {
                let rows_per_image = r.rows / batch.max(1);
                batch_norm_rows::forward_grouped(x, gamma, beta, epsilon, r, images_per_group * rows_per_image, epilogue)
            }
        }
    }

    /// `(dx, dgamma, dbeta, masked)`: see [`batch_norm_cpu::backward_through_relu`].
    pub(super) fn backward_through(
        &self,
        x: &[f32],
        statistics: Statistics,
        dy: &[f32],
        relu: Option<(&[f32], bool)>,
    ) -> (Vec<f32>, Vec<f32>, Vec<f32>, Option<Vec<f32>>) {
        match *self {
            CpuLayout::Planes(p) => batch_norm_cpu::backward_through(x, statistics, dy, relu, p),
            CpuLayout::Rows(r) => batch_norm_rows::backward_through(x, statistics, dy, relu, r),
        }
    }
}

/// A per-channel tensor (γ, β, mean, variance) in contiguous order.
pub(super) fn values(tensor: FloatTensor<Flex>) -> FlexTensor {
    tensor.to_contiguous()
}

/// A burn-flex tensor of these values and dimensions.
pub(super) fn tensor(values: Vec<f32>, dims: Vec<usize>) -> FloatTensor<Flex> {
    FlexTensor::from_data(TensorData::new(values, dims))
}

impl BatchNormKernels for Flex {
    fn batch_norm_batch_stats(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        epsilon: f64,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        let Some(layout) = cpu_layout(&[&x, &gamma, &beta]) else {
            return burn_batch_stats::<Self>(x, gamma, beta, epsilon);
        };
        let dims = x.shape().to_vec();
        let (x, gamma, beta) = (layout.values(x), values(gamma), values(beta));
        let (y, mean, var) = layout.forward_then(x.storage(), gamma.storage(), beta.storage(), epsilon, Epilogue::default());
        let channels = vec![layout.channels()];
        (layout.tensor(y, &dims), tensor(mean, channels.clone()), tensor(var, channels))
    }

    fn batch_norm_gradients(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        mean: FloatTensor<Self>,
        variance: FloatTensor<Self>,
        epsilon: f64,
        output_grad: FloatTensor<Self>,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        let covered = cpu_layout(&[&x, &gamma, &mean, &variance, &output_grad]).filter(|_| output_grad.shape() == x.shape());
        let Some(layout) = covered else {
            return burn_gradients::<Self>(x, gamma, mean, variance, epsilon, output_grad);
        };
        let dims = x.shape().to_vec();
        let (x, dy) = (layout.values(x), layout.values(output_grad));
        let (gamma, mean, variance) = (values(gamma), values(mean), values(variance));
        let statistics = Statistics { gamma: gamma.storage(), mean: mean.storage(), variance: variance.storage(), epsilon };
        let (dx, dgamma, dbeta, _) = layout.backward_through(x.storage(), statistics, dy.storage(), None);
        let channels = vec![layout.channels()];
        (layout.tensor(dx, &dims), tensor(dgamma, channels.clone()), tensor(dbeta, channels))
    }
}

impl<B: Backend + BatchNormKernels, C: CheckpointStrategy> BatchNormKernels for Autodiff<B, C> {
    fn batch_norm_batch_stats(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        epsilon: f64,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        #[derive(Debug)]
        struct BatchNormBatchStats;

        impl<B: Backend + BatchNormKernels> Backward<B, 3> for BatchNormBatchStats {
            // The input and gamma are checkpointed; the statistics are kept as computed.
            type State = (NodeId, NodeId, B::FloatTensorPrimitive, B::FloatTensorPrimitive, f64);

            fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, checkpointer: &mut Checkpointer) {
                let [node_x, node_gamma, node_beta] = ops.parents;
                let grad = grads.consume::<B>(&ops.node);
                let (x_state, gamma_state, mean, variance, epsilon) = ops.state;
                let x = checkpointer.retrieve_node_output::<B::FloatTensorPrimitive>(x_state);
                let gamma = checkpointer.retrieve_node_output::<B::FloatTensorPrimitive>(gamma_state);
                let (dx, dgamma, dbeta) = B::batch_norm_gradients(x, gamma, mean, variance, epsilon, grad);
                for (node, gradient) in [(node_x, dx), (node_gamma, dgamma), (node_beta, dbeta)] {
                    if let Some(node) = node {
                        grads.register::<B>(node.id, gradient);
                    }
                }
            }
        }

        let untracked = |t| FloatTensor::<Self>::new(t);
        match BatchNormBatchStats.prepare::<C>([x.node(), gamma.node(), beta.node()]).compute_bound().stateful() {
            OpsKind::Tracked(mut prep) => {
                let x_state = prep.checkpoint(&x);
                let gamma_state = prep.checkpoint(&gamma);
                let (y, mean, variance) =
                    B::batch_norm_batch_stats(x.into_primitive(), gamma.into_primitive(), beta.into_primitive(), epsilon);
                let output = prep.finish((x_state, gamma_state, mean.clone(), variance.clone(), epsilon), y);
                (output, untracked(mean), untracked(variance))
            }
            OpsKind::UnTracked(prep) => {
                let (y, mean, variance) =
                    B::batch_norm_batch_stats(x.into_primitive(), gamma.into_primitive(), beta.into_primitive(), epsilon);
                (prep.finish(y), untracked(mean), untracked(variance))
            }
        }
    }
}

/// Training-mode batch norm through [`BatchNormKernels`]: `(output, mean, variance)`.
pub fn batch_norm_batch_stats<const D: usize>(
    x: Tensor<D>,
    gamma: Tensor<1>,
    beta: Tensor<1>,
    epsilon: f64,
) -> (Tensor<D>, Tensor<1>, Tensor<1>) {
    let (y, mean, variance) = <Dispatch as BatchNormKernels>::batch_norm_batch_stats(
        x.into_dispatch(),
        gamma.into_dispatch(),
        beta.into_dispatch(),
        epsilon,
    );
    (Tensor::from_dispatch(y), Tensor::from_dispatch(mean), Tensor::from_dispatch(variance))
}

/// A burn [`BatchNorm`] module's forward pass, with its training path (batch statistics,
/// running-statistics update exactly as burn's) through [`BatchNormKernels`], or with
/// statistics per group of images inside
/// [`with_batch_norm_groups`](super::batch_norm_groups::with_batch_norm_groups). Inference and
/// frozen layers take burn's module as they are.
pub fn batch_norm_module<const D: usize>(bn: &BatchNorm, x: Tensor<D>) -> Tensor<D> {
    if !(x.device().is_autodiff() && bn.training.is_enabled()) {
        return bn.forward(x);
    }
    if let Some(images_per_group) = batch_norm_groups::images_per_group(x.dims()[0]) {
        return batch_norm_groups::grouped_module_forward(bn, x, None, false, images_per_group);
    }
    let (output, mean, variance) = batch_norm_batch_stats(x, bn.gamma.val(), bn.beta.val(), bn.epsilon);
    update_running_statistics(bn, mean, variance);
    output
}

/// Moves `bn`'s running mean and variance towards a batch's, as burn's `BatchNorm::forward`
/// does in training.
pub(super) fn update_running_statistics(bn: &BatchNorm, mean: Tensor<1>, variance: Tensor<1>) {
    let device = mean.device();
    let blend = |running: Tensor<1>, batch: Tensor<1>| {
        running.to_device(&device).mul_scalar(1.0 - bn.momentum).add(batch.detach().mul_scalar(bn.momentum)).detach()
    };
    bn.running_mean.update(blend(bn.running_mean.value_sync(), mean));
    bn.running_var.update(blend(bn.running_var.value_sync(), variance));
}
