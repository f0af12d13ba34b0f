//! Batch norm fused with what follows it in a ResNet, `relu(bn(x))` and
//! `relu(bn(x) + identity)`, as backend-extension operations (issue 9, attempt 8).
//!
//! burn-flex runs ReLU, ReLU's backward pass and the residual addition as element-wise
//! passes over whole activations on one thread. Fused, the forward's addition and ReLU ride
//! on the batch-norm kernel's own parallel pass ([`batch_norm_cpu::forward_then`]), and the
//! backward pass masks the gradient in parallel before the batch-norm gradients. Every other
//! backend composes burn's own operations (the trait's default bodies), and so does burn-flex
//! where [`batch_norm`](super::batch_norm)'s kernels do not apply (`DENSESSL_BN_KERNELS=burn`
//! among them). The autodiff implementation records one node whose backward pass calls the
//! inner backend's [`BatchNormReluKernels::batch_norm_relu_gradients`].

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::autodiff::NodeId;
use burn::backend::tensor::FloatTensor;
use burn::backend::{backend_extension, Autodiff, Backend, Dispatch, Flex, TensorMetadata};
use burn::nn::BatchNorm;
use burn::tensor::activation::relu;
use burn::tensor::Tensor;

use super::batch_norm::{cpu_layout, tensor, update_running_statistics, values};
use super::batch_norm_cpu::{Epilogue, Statistics};
use super::batch_norm_groups;
use super::gradient_sum::{register_input_gradient, GradientSumKernels};

/// Training-mode batch norm followed by ReLU (and before it, a residual addition), whose
/// forward pass and gradients a backend may replace.
///
/// Shapes: `x`, `residual`, `output` and the gradients of activations `[N, C, ...]`; `gamma`,
/// `beta`, mean and (biased) variance `[C]`.
#[backend_extension(Flex, Autodiff, Cube: cfg(any(feature = "vulkan", feature = "cuda")))]
pub trait BatchNormReluKernels: Backend {
    /// `(relu(bn(x)), mean, variance)` with the batch statistics.
    fn batch_norm_relu_batch_stats(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        epsilon: f64,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        burn_relu_batch_stats::<Self>(x, gamma, beta, None, epsilon)
    }

    /// `(relu(bn(x) + residual), mean, variance)` with the batch statistics.
    fn batch_norm_add_relu_batch_stats(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        residual: FloatTensor<Self>,
        epsilon: f64,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        burn_relu_batch_stats::<Self>(x, gamma, beta, Some(residual), epsilon)
    }

    /// `(x_grad, gamma_grad, beta_grad, pre_activation_grad)` given the fused operation's
    /// `output` and its gradient. The gradient before the ReLU (also the residual's) is
    /// asked for with `keep_masked`; without it a backend may return any tensor there (the
    /// CPU kernels return an empty one rather than write it).
    #[allow(clippy::too_many_arguments)]
    fn batch_norm_relu_gradients(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        mean: FloatTensor<Self>,
        variance: FloatTensor<Self>,
        output: FloatTensor<Self>,
        output_grad: FloatTensor<Self>,
        epsilon: f64,
        keep_masked: bool,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        let _ = keep_masked;
        burn_relu_gradients::<Self>(x, gamma, mean, variance, output, output_grad, epsilon)
    }
}

/// burn's own `relu(bn(x) [+ residual])`, as `(output, mean, variance)`.
pub(super) fn burn_relu_batch_stats<B: Backend>(
    x: FloatTensor<B>,
    gamma: FloatTensor<B>,
    beta: FloatTensor<B>,
    residual: Option<FloatTensor<B>>,
    epsilon: f64,
) -> (FloatTensor<B>, FloatTensor<B>, FloatTensor<B>) {
    let result = B::batch_norm_train(x, gamma, beta, epsilon);
    let pre_activation = match residual {
        Some(residual) => B::float_add(result.output, residual),
        None => result.output,
    };
    (B::relu(pre_activation), result.mean, result.variance)
}

/// burn's own gradients of `relu(bn(x) [+ residual])`.
fn burn_relu_gradients<B: Backend>(
    x: FloatTensor<B>,
    gamma: FloatTensor<B>,
    mean: FloatTensor<B>,
    variance: FloatTensor<B>,
    output: FloatTensor<B>,
    output_grad: FloatTensor<B>,
    epsilon: f64,
) -> (FloatTensor<B>, FloatTensor<B>, FloatTensor<B>, FloatTensor<B>) {
    let masked = B::relu_backward(output, output_grad);
    let result = B::batch_norm_train_backward(x, gamma, mean, variance, epsilon, masked.clone());
    (result.x_grad, result.gamma_grad, result.beta_grad, masked)
}

#[cfg(any(feature = "vulkan", feature = "cuda"))]
impl BatchNormReluKernels for burn::backend::Cube {}

/// The fused forward on burn-flex: the CPU kernels, or burn's operations where they do not apply.
fn flex_forward(
    x: FloatTensor<Flex>,
    gamma: FloatTensor<Flex>,
    beta: FloatTensor<Flex>,
    residual: Option<FloatTensor<Flex>>,
    epsilon: f64,
) -> (FloatTensor<Flex>, FloatTensor<Flex>, FloatTensor<Flex>) {
    let inputs: Vec<&FloatTensor<Flex>> = [&x, &gamma, &beta].into_iter().chain(residual.as_ref()).collect();
    let covered = cpu_layout(&inputs).filter(|_| residual.as_ref().is_none_or(|r| r.shape() == x.shape()));
    let Some(layout) = covered else {
        return burn_relu_batch_stats::<Flex>(x, gamma, beta, residual, epsilon);
    };
    let dims = x.shape().to_vec();
    let (x, gamma, beta) = (layout.values(x), values(gamma), values(beta));
    // The residual is read in x's layout (a copy only where it lies otherwise).
    let residual = residual.map(|r| layout.values(r));
    let epilogue = Epilogue { residual: residual.as_ref().map(|r| r.storage()), relu: true };
    let (y, mean, var) = layout.forward_then(x.storage(), gamma.storage(), beta.storage(), epsilon, epilogue);
    let channels = vec![layout.channels()];
    (layout.tensor(y, &dims), tensor(mean, channels.clone()), tensor(var, channels))
}

impl BatchNormReluKernels for Flex {
    fn batch_norm_relu_batch_stats(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        epsilon: f64,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        flex_forward(x, gamma, beta, None, epsilon)
    }

    fn batch_norm_add_relu_batch_stats(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        residual: FloatTensor<Self>,
        epsilon: f64,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        flex_forward(x, gamma, beta, Some(residual), epsilon)
    }

    fn batch_norm_relu_gradients(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        mean: FloatTensor<Self>,
        variance: FloatTensor<Self>,
        output: FloatTensor<Self>,
        output_grad: FloatTensor<Self>,
        epsilon: f64,
        keep_masked: bool,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        let covered = cpu_layout(&[&x, &gamma, &mean, &variance, &output, &output_grad])
            .filter(|_| output.shape() == x.shape() && output_grad.shape() == x.shape());
        let Some(layout) = covered else {
            return burn_relu_gradients::<Self>(x, gamma, mean, variance, output, output_grad, epsilon);
        };
        let dims = x.shape().to_vec();
        // All three activations in x's layout (copies only where one lies otherwise).
        let (x, output, dy) = (layout.values(x), layout.values(output), layout.values(output_grad));
        let (gamma, mean, variance) = (values(gamma), values(mean), values(variance));
        let statistics = Statistics { gamma: gamma.storage(), mean: mean.storage(), variance: variance.storage(), epsilon };
        let relu = Some((output.storage(), keep_masked));
        let (dx, dgamma, dbeta, masked) = layout.backward_through(x.storage(), statistics, dy.storage(), relu);
        let channels = vec![layout.channels()];
        // Without a residual the masked gradient goes nowhere: an empty tensor stands for it.
        let masked = masked.map_or_else(|| tensor(Vec::new(), vec![0]), |m| layout.tensor(m, &dims));
        (layout.tensor(dx, &dims), tensor(dgamma, channels.clone()), tensor(dbeta, channels), masked)
    }
}

/// What the fused node keeps for its backward pass: the checkpointed input and gamma, the
/// batch statistics, the output (ReLU's mask) and epsilon.
type FusedState<B> = (NodeId, NodeId, FloatTensor<B>, FloatTensor<B>, FloatTensor<B>, f64);

/// The fused node's backward pass: `[dx, dgamma, dbeta, pre_activation_grad]`, the last
/// meaningful only `with_residual`.
fn fused_backward<B: Backend + BatchNormReluKernels>(
    state: FusedState<B>,
    grad: FloatTensor<B>,
    checkpointer: &mut Checkpointer,
    with_residual: bool,
) -> [FloatTensor<B>; 4] {
    let (x_state, gamma_state, mean, variance, output, epsilon) = state;
    let x = checkpointer.retrieve_node_output::<FloatTensor<B>>(x_state);
    let gamma = checkpointer.retrieve_node_output::<FloatTensor<B>>(gamma_state);
    let (dx, dgamma, dbeta, masked) = B::batch_norm_relu_gradients(x, gamma, mean, variance, output, grad, epsilon, with_residual);
    [dx, dgamma, dbeta, masked]
}

/// The fused node: `N` = 3 parents (x, gamma, beta), or 4 with the residual.
#[derive(Debug)]
struct FusedBatchNormRelu<const N: usize>;

impl<B: Backend + BatchNormReluKernels + GradientSumKernels, const N: usize> Backward<B, N> for FusedBatchNormRelu<N> {
    type State = FusedState<B>;

    fn backward(self, ops: Ops<Self::State, N>, grads: &mut Gradients, checkpointer: &mut Checkpointer) {
        let grad = grads.consume::<B>(&ops.node);
        // [dx, dgamma, dbeta, residual gradient], the last only with a fourth parent.
        let gradients = fused_backward::<B>(ops.state, grad, checkpointer, N == 4);
        for (index, (node, gradient)) in ops.parents.into_iter().zip(gradients).enumerate() {
            let Some(node) = node else { continue };
            if index == 3 {
                // The residual (a block's input) also feeds the block's first convolution:
                // summed in `gradient_sum`. See the convolution's node for the comparison.
                let intermediate = node.requirement == ops.node.requirement;
                register_input_gradient::<B>(grads, node.id, intermediate, gradient, |grads| grads.consume::<B>(&node));
            } else {
                grads.register::<B>(node.id, gradient);
            }
        }
    }
}

/// Records a [`FusedBatchNormRelu`] node over `inputs` (x, gamma, beta and maybe the residual)
/// and runs `compute` on their primitives: `(output, mean, variance)`.
fn record_fused<B: Backend + BatchNormReluKernels + GradientSumKernels, C: CheckpointStrategy, const N: usize>(
    inputs: [FloatTensor<Autodiff<B, C>>; N],
    epsilon: f64,
    compute: impl FnOnce([FloatTensor<B>; N]) -> (FloatTensor<B>, FloatTensor<B>, FloatTensor<B>),
) -> (FloatTensor<Autodiff<B, C>>, FloatTensor<Autodiff<B, C>>, FloatTensor<Autodiff<B, C>>) {
    let untracked = |t| FloatTensor::<Autodiff<B, C>>::new(t);
    let parents = inputs.each_ref().map(|t| t.node());
    match FusedBatchNormRelu::<N>.prepare::<C>(parents).compute_bound().stateful() {
        OpsKind::Tracked(mut prep) => {
            let (x_state, gamma_state) = (prep.checkpoint(&inputs[0]), prep.checkpoint(&inputs[1]));
            let (y, mean, variance) = compute(inputs.map(|t| t.into_primitive()));
            let state = (x_state, gamma_state, mean.clone(), variance.clone(), y.clone(), epsilon);
            (prep.finish(state, y), untracked(mean), untracked(variance))
        }
        OpsKind::UnTracked(prep) => {
            let (y, mean, variance) = compute(inputs.map(|t| t.into_primitive()));
            (prep.finish(y), untracked(mean), untracked(variance))
        }
    }
}

impl<B: Backend + BatchNormReluKernels + GradientSumKernels, C: CheckpointStrategy> BatchNormReluKernels for Autodiff<B, C> {
    fn batch_norm_relu_batch_stats(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        epsilon: f64,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        record_fused::<B, C, 3>([x, gamma, beta], epsilon, |[x, gamma, beta]| B::batch_norm_relu_batch_stats(x, gamma, beta, epsilon))
    }

    fn batch_norm_add_relu_batch_stats(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        residual: FloatTensor<Self>,
        epsilon: f64,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        record_fused::<B, C, 4>([x, gamma, beta, residual], epsilon, |[x, gamma, beta, residual]| {
            B::batch_norm_add_relu_batch_stats(x, gamma, beta, residual, epsilon)
        })
    }
}

/// `relu(bn(x) + residual)`, or `relu(bn(x))` without a residual, through
/// [`BatchNormReluKernels`]: `(output, mean, variance)` with the batch statistics.
pub fn batch_norm_relu_batch_stats<const D: usize>(
    x: Tensor<D>,
    gamma: Tensor<1>,
    beta: Tensor<1>,
    residual: Option<Tensor<D>>,
    epsilon: f64,
) -> (Tensor<D>, Tensor<1>, Tensor<1>) {
    let (x, gamma, beta) = (x.into_dispatch(), gamma.into_dispatch(), beta.into_dispatch());
    let (y, mean, variance) = match residual {
        Some(r) => <Dispatch as BatchNormReluKernels>::batch_norm_add_relu_batch_stats(x, gamma, beta, r.into_dispatch(), epsilon),
        None => <Dispatch as BatchNormReluKernels>::batch_norm_relu_batch_stats(x, gamma, beta, epsilon),
    };
    (Tensor::from_dispatch(y), Tensor::from_dispatch(mean), Tensor::from_dispatch(variance))
}

/// `relu(bn(x) + residual)` (or `relu(bn(x))`) for a burn [`BatchNorm`] module: fused in
/// training (running statistics updated exactly as burn's module does); inference and frozen
/// layers take burn's module, the addition and ReLU as they are.
pub fn batch_norm_relu_module<const D: usize>(bn: &BatchNorm, x: Tensor<D>, residual: Option<Tensor<D>>) -> Tensor<D> {
    if !(x.device().is_autodiff() && bn.training.is_enabled()) {
        let y = bn.forward(x);
        return relu(match residual {
            Some(r) => y + r,
            None => y,
        });
    }
    if let Some(images_per_group) = batch_norm_groups::images_per_group(x.dims()[0]) {
        return batch_norm_groups::grouped_module_forward(bn, x, residual, true, images_per_group);
    }
    let (output, mean, variance) = batch_norm_relu_batch_stats(x, bn.gamma.val(), bn.beta.val(), residual, bn.epsilon);
    update_running_statistics(bn, mean, variance);
    output
}
