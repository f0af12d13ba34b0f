//! Batch norm with statistics per group of images, in one pass over the whole batch (issue 9,
//! attempt 11): MoCo's substitute for shuffle-BN without splitting the key encoder's forward.
//!
//! MoCo-style methods forward the (permuted) key batch in groups, so that each key's BN
//! statistics come from a few images only, as on one GPU of several. Forwarding each group
//! on its own multiplies smaller matrices and rebuilds every kernel's column form per group.
//! Inside [`with_batch_norm_groups`], the crate's batch-norm module functions
//! ([`batch_norm_module`](super::batch_norm::batch_norm_module),
//! [`batch_norm_relu_module`](super::batch_norm_relu::batch_norm_relu_module)) instead
//! normalise each group with its own statistics in one call, and update the running
//! statistics once per group, in order: what the group-by-group forward computes, with the
//! convolutions run once over the whole batch.
//!
//! On burn-flex the CPU kernels compute each group's statistics on that group's values, which
//! lie together in both layouts (images are the outermost dimension). Every other backend, and
//! a tracked (differentiated) input, composes burn's own operations group by group.

use std::cell::Cell;

use burn::backend::tensor::FloatTensor;
use burn::backend::{backend_extension, Autodiff, Backend, Dispatch, Flex, Shape, TensorMetadata};
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::nn::BatchNorm;
use burn::tensor::{Slice, Tensor};

use super::batch_norm::{burn_batch_stats, cpu_layout, tensor, update_running_statistics, values};
use super::batch_norm_relu::burn_relu_batch_stats;
use super::batch_norm_cpu::Epilogue;

/// Training-mode batch norm with statistics per group of consecutive images, then
/// optionally a residual addition and a ReLU, whose forward pass a backend may replace.
///
/// Shapes: `x`, `residual` and the output `[N, C, ...]`; `gamma`, `beta` `[C]`; the groups'
/// means and (biased) variances `[G, C]`, `G = ⌈N / images_per_group⌉` (the last group may
/// hold fewer images).
#[backend_extension(Flex, Autodiff, Cube: cfg(any(feature = "vulkan", feature = "cuda")))]
pub trait GroupBatchNormKernels: Backend {
    /// `(relu?(bn_g(x)), means, variances)`.
    fn batch_norm_group_stats(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        epsilon: f64,
        images_per_group: usize,
        relu: bool,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        group_by_group::<Self>(x, gamma, beta, None, epsilon, images_per_group, relu)
    }

    /// `(relu(bn_g(x) + residual), means, variances)`.
    fn batch_norm_add_relu_group_stats(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        residual: FloatTensor<Self>,
        epsilon: f64,
        images_per_group: usize,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        group_by_group::<Self>(x, gamma, beta, Some(residual), epsilon, images_per_group, true)
    }
}

/// burn's own operations, one group after the other: `(output, means, variances)`. A
/// residual always comes with the ReLU (the trait's two methods).
fn group_by_group<B: Backend>(
    x: FloatTensor<B>,
    gamma: FloatTensor<B>,
    beta: FloatTensor<B>,
    residual: Option<FloatTensor<B>>,
    epsilon: f64,
    images_per_group: usize,
    relu: bool,
) -> (FloatTensor<B>, FloatTensor<B>, FloatTensor<B>) {
    let shape = x.shape();
    let (batch, channels, rank) = (shape[0], shape[1], shape.num_dims());
    let size = images_per_group.clamp(1, batch.max(1));
    let (mut outputs, mut means, mut variances) = (Vec::new(), Vec::new(), Vec::new());
    for start in (0..batch).step_by(size) {
        let mut slices = vec![Slice::from(..); rank];
        slices[0] = Slice::new(start as isize, Some((start + size).min(batch) as isize), 1);
        let group = B::float_slice(x.clone(), &slices);
        let (output, mean, variance) = match (&residual, relu) {
            (None, false) => burn_batch_stats::<B>(group, gamma.clone(), beta.clone(), epsilon),
            (residual, _) => {
                let residual = residual.as_ref().map(|r| B::float_slice(r.clone(), &slices));
                burn_relu_batch_stats::<B>(group, gamma.clone(), beta.clone(), residual, epsilon)
            }
        };
        outputs.push(output);
        means.push(B::float_reshape(mean, Shape::new([1, channels])));
        variances.push(B::float_reshape(variance, Shape::new([1, channels])));
    }
    (B::float_cat(outputs, 0), B::float_cat(means, 0), B::float_cat(variances, 0))
}

#[cfg(any(feature = "vulkan", feature = "cuda"))]
impl GroupBatchNormKernels for burn::backend::Cube {}

impl GroupBatchNormKernels for Flex {
    fn batch_norm_group_stats(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        epsilon: f64,
        images_per_group: usize,
        relu: bool,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        flex_forward(x, gamma, beta, None, epsilon, images_per_group, relu)
    }

    fn batch_norm_add_relu_group_stats(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        residual: FloatTensor<Self>,
        epsilon: f64,
        images_per_group: usize,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        flex_forward(x, gamma, beta, Some(residual), epsilon, images_per_group, true)
    }
}

/// The grouped forward on burn-flex: the CPU kernels, or burn's operations where they do not apply.
fn flex_forward(
    x: FloatTensor<Flex>,
    gamma: FloatTensor<Flex>,
    beta: FloatTensor<Flex>,
    residual: Option<FloatTensor<Flex>>,
    epsilon: f64,
    images_per_group: usize,
    relu: bool,
) -> (FloatTensor<Flex>, FloatTensor<Flex>, FloatTensor<Flex>) {
    let inputs: Vec<&FloatTensor<Flex>> = [&x, &gamma, &beta].into_iter().chain(residual.as_ref()).collect();
    let covered = cpu_layout(&inputs).filter(|_| residual.as_ref().is_none_or(|r| r.shape() == x.shape()));
    let Some(layout) = covered else {
        return group_by_group::<Flex>(x, gamma, beta, residual, epsilon, images_per_group, relu);
    };
    let dims = x.shape().to_vec();
    let (batch, channels) = (dims[0], layout.channels());
    let (x, gamma, beta) = (layout.values(x), values(gamma), values(beta));
    // The residual is read in x's layout (a copy only where it lies otherwise).
    let residual = residual.map(|r| layout.values(r));
    let epilogue = Epilogue { residual: residual.as_ref().map(|r| r.storage()), relu };
    let coefficients = (gamma.storage(), beta.storage(), epsilon);
    let (y, means, variances) = layout.forward_grouped(x.storage(), coefficients, epilogue, images_per_group, batch);
    let groups = means.len() / channels;
    (layout.tensor(y, &dims), tensor(means, vec![groups, channels]), tensor(variances, vec![groups, channels]))
}

impl<B: Backend + GroupBatchNormKernels, C: CheckpointStrategy> GroupBatchNormKernels for Autodiff<B, C> {
    fn batch_norm_group_stats(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        epsilon: f64,
        images_per_group: usize,
        relu: bool,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        if [&x, &gamma, &beta].iter().any(|t| t.is_tracked()) {
            return group_by_group::<Self>(x, gamma, beta, None, epsilon, images_per_group, relu);
        }
        let (x, gamma, beta) = (x.into_primitive(), gamma.into_primitive(), beta.into_primitive());
        untracked::<B, C>(B::batch_norm_group_stats(x, gamma, beta, epsilon, images_per_group, relu))
    }

    fn batch_norm_add_relu_group_stats(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        residual: FloatTensor<Self>,
        epsilon: f64,
        images_per_group: usize,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        if [&x, &gamma, &beta, &residual].iter().any(|t| t.is_tracked()) {
            return group_by_group::<Self>(x, gamma, beta, Some(residual), epsilon, images_per_group, true);
        }
        let (x, gamma, beta, residual) = (x.into_primitive(), gamma.into_primitive(), beta.into_primitive(), residual.into_primitive());
        untracked::<B, C>(B::batch_norm_add_relu_group_stats(x, gamma, beta, residual, epsilon, images_per_group))
    }
}

/// The inner backend's results as tensors without a node to differentiate. A differentiated
/// grouped forward is rare (keys take no gradient), so tracked inputs take burn's operations
/// group by group instead, which record their own backward passes.
fn untracked<B: Backend, C: CheckpointStrategy>(
    (y, means, variances): (FloatTensor<B>, FloatTensor<B>, FloatTensor<B>),
) -> (FloatTensor<Autodiff<B, C>>, FloatTensor<Autodiff<B, C>>, FloatTensor<Autodiff<B, C>>) {
    let new = FloatTensor::<Autodiff<B, C>>::new;
    (new(y), new(means), new(variances))
}

thread_local! {
    /// Images per batch-norm group inside [`with_batch_norm_groups`] on this thread.
    static IMAGES_PER_GROUP: Cell<Option<usize>> = const { Cell::new(None) };
}

/// Runs `forward` with every training-mode batch norm of this crate's module functions
/// normalising each group of `images_per_group` consecutive images with the group's own
/// statistics (the last group may hold fewer), and updating its running statistics once per
/// group, in order. For a network whose only batch-mixing layers are those batch norms, the
/// result is that of forwarding the groups one by one and concatenating the outputs.
pub fn with_batch_norm_groups<R>(images_per_group: usize, forward: impl FnOnce() -> R) -> R {
    /// Restores the enclosing setting, also when `forward` panics.
    struct Restore(Option<usize>);
    impl Drop for Restore {
        fn drop(&mut self) {
            IMAGES_PER_GROUP.set(self.0);
        }
    }
    let _restore = Restore(IMAGES_PER_GROUP.replace(Some(images_per_group.max(1))));
    forward()
}

/// Images per group if a [`with_batch_norm_groups`] scope asks for groups and a batch of
/// `batch` images holds more than one.
pub(super) fn images_per_group(batch: usize) -> Option<usize> {
    IMAGES_PER_GROUP.get().filter(|&size| size < batch)
}

/// `bn`'s training-mode forward with statistics per group of `images_per_group` images, then
/// the residual and ReLU if asked (a residual always comes with the ReLU); the running
/// statistics move once per group, in order.
pub(super) fn grouped_module_forward<const D: usize>(
    bn: &BatchNorm,
    x: Tensor<D>,
    residual: Option<Tensor<D>>,
    relu: bool,
    images_per_group: usize,
) -> Tensor<D> {
    let (x, gamma, beta) = (x.into_dispatch(), bn.gamma.val().into_dispatch(), bn.beta.val().into_dispatch());
    let (output, means, variances) = match residual {
        Some(residual) => <Dispatch as GroupBatchNormKernels>::batch_norm_add_relu_group_stats(
            x,
            gamma,
            beta,
            residual.into_dispatch(),
            bn.epsilon,
            images_per_group,
        ),
        None => <Dispatch as GroupBatchNormKernels>::batch_norm_group_stats(x, gamma, beta, bn.epsilon, images_per_group, relu),
    };
    let (means, variances) = (Tensor::<2>::from_dispatch(means), Tensor::<2>::from_dispatch(variances));
    let [groups, channels] = means.dims();
    for g in 0..groups {
        let row = |t: &Tensor<2>| t.clone().slice([g..g + 1]).reshape([channels]);
        update_running_statistics(bn, row(&means), row(&variances));
    }
    Tensor::from_dispatch(output)
}
