//! `log Σₖ exp(qₙ · rₖ)` for every row `qₙ` of one matrix against all rows `rₖ` of another,
//! with the `N × K` products never written out (issue 9, attempt 13): InfoNCE against a
//! queue (MoCo's 32 queries, or DenseCL's 1,568 cells, against 65,536 keys).
//!
//! Composed from burn's operations, that loss makes several serial passes over the `N × K`
//! logits, forward and backward (subtract the row maximum, exponentiate, sum, then the
//! exponential's and the broadcast's gradients): 8 % of a MoCo v2 step. Here one parallel
//! task takes a block of queries against a chunk of rows: their products (a `gemm` into a
//! buffer that stays in cache), the chunk's maximum and its sum of exponentials, combined
//! over chunks in order afterwards. The backward pass recomputes each chunk's products and
//! turns them into the softmax weights times the output gradient, `wₙₖ = gₙ·exp(qₙ·rₖ − lseₙ)`,
//! in place, then adds `w · R` to the queries' gradient: one more product instead of a
//! stored `N × K` matrix (400 MB for DenseCL's dense loss).
//!
//! Every other backend, non-`f32` tensors and a `rows` matrix that needs its own gradient
//! take burn's composition (the trait's default bodies). Set `DENSESSL_LOSS_KERNELS=burn`
//! to use it on the CPU as well (for A/B measurements).
//!
//! Shapes: queries `[N, D]`, rows `[K, D]`, the log-sum-exp, the maximum and the output
//! gradient `[N]`, weights `[N, K]`.

use std::mem::MaybeUninit;
use std::sync::OnceLock;

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::autodiff::NodeId;
use burn::backend::flex::FlexTensor;
use burn::backend::tensor::FloatTensor;
use burn::backend::{backend_extension, Autodiff, Backend, Dispatch, Flex, Shape, TensorMetadata};
use burn::tensor::{DType, Tensor, TensorData};
use rayon::prelude::*;

use super::gemm::{gemm_f32_add, gemm_f32_into, sum_partials_in_order, with_scratch, Parallelism};
use super::vector::{exp, with_avx2};

/// Most queries per task.
const BLOCK_ROWS: usize = 256;
/// About how many products one task holds at once (256 KB, in L2 from the product to the
/// exponentials).
const BLOCK_FLOATS: usize = 1 << 16;
/// Fewest rows per chunk (narrower products run too far below the `gemm`'s speed).
const MIN_CHUNK: usize = 16;
/// Tasks per block of queries in the backward pass; each sums its chunks' contributions to
/// the queries' gradient into a partial of its own, and the partials are added in order.
const GROUPS: usize = 8;

/// The log-sum-exp of a matrix product's rows, whose forward and backward a backend may
/// replace. Shapes as in the module documentation.
#[backend_extension(Flex, Autodiff, Cube: cfg(any(feature = "vulkan", feature = "cuda")))]
pub trait ProductLogSumExpKernels: Backend {
    /// `(lse, max)`: `lseₙ = log Σₖ exp(qₙ·rₖ)` and `maxₙ = maxₖ qₙ·rₖ`.
    fn product_logsumexp(queries: FloatTensor<Self>, rows: FloatTensor<Self>) -> (FloatTensor<Self>, FloatTensor<Self>) {
        burn_logsumexp::<Self>(queries, rows)
    }

    /// The softmax weights times the output gradient, `wₙₖ = gₙ·exp(qₙ·rₖ − lseₙ)`: the
    /// gradient of `Σₙ gₙ·lseₙ` with respect to the products.
    fn product_logsumexp_weights(
        queries: FloatTensor<Self>,
        rows: FloatTensor<Self>,
        lse: FloatTensor<Self>,
        output_grad: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        burn_weights::<Self>(queries, rows, lse, output_grad)
    }

    /// The queries' gradient, `Σₖ wₙₖ·rₖ`.
    fn product_logsumexp_query_gradient(
        queries: FloatTensor<Self>,
        rows: FloatTensor<Self>,
        lse: FloatTensor<Self>,
        output_grad: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        query_gradient_from_weights::<Self>(queries, rows, lse, output_grad)
    }
}

#[cfg(any(feature = "vulkan", feature = "cuda"))]
impl ProductLogSumExpKernels for burn::backend::Cube {}

/// `queries · rowsᵀ`, `[N, K]`.
fn burn_products<B: Backend>(queries: FloatTensor<B>, rows: FloatTensor<B>) -> FloatTensor<B> {
    B::float_matmul(queries, B::float_swap_dims(rows, 0, 1))
}

/// `[N]` as a column `[N, 1]`, to broadcast over the products.
fn column<B: Backend>(t: FloatTensor<B>) -> FloatTensor<B> {
    let n = t.shape()[0];
    B::float_reshape(t, Shape::new([n, 1]))
}

/// burn's composition of [`ProductLogSumExpKernels::product_logsumexp`].
fn burn_logsumexp<B: Backend>(queries: FloatTensor<B>, rows: FloatTensor<B>) -> (FloatTensor<B>, FloatTensor<B>) {
    let n = queries.shape()[0];
    let products = burn_products::<B>(queries, rows);
    let max = B::float_max_dim(products.clone(), 1);
    let sum = B::float_sum_dim(B::float_exp(B::float_sub(products, max.clone())), 1);
    let lse = B::float_add(B::float_log(sum), max.clone());
    (B::float_reshape(lse, Shape::new([n])), B::float_reshape(max, Shape::new([n])))
}

/// burn's composition of [`ProductLogSumExpKernels::product_logsumexp_weights`].
fn burn_weights<B: Backend>(queries: FloatTensor<B>, rows: FloatTensor<B>, lse: FloatTensor<B>, output_grad: FloatTensor<B>) -> FloatTensor<B> {
    let shifted = B::float_sub(burn_products::<B>(queries, rows), column::<B>(lse));
    B::float_mul(B::float_exp(shifted), column::<B>(output_grad))
}

/// The queries' gradient as the backend's weights times the rows, `W · R`.
fn query_gradient_from_weights<B: ProductLogSumExpKernels>(
    queries: FloatTensor<B>,
    rows: FloatTensor<B>,
    lse: FloatTensor<B>,
    output_grad: FloatTensor<B>,
) -> FloatTensor<B> {
    let weights = B::product_logsumexp_weights(queries, rows.clone(), lse, output_grad);
    B::float_matmul(weights, rows)
}

/// Whether `DENSESSL_LOSS_KERNELS=burn` asked for burn's composition (of this loss and of
/// the pixel cross-entropy).
pub(super) fn use_burn_composition() -> bool {
    static BURN: OnceLock<bool> = OnceLock::new();
    *BURN.get_or_init(|| std::env::var("DENSESSL_LOSS_KERNELS").is_ok_and(|v| v == "burn"))
}

/// The sizes of one call: `queries` rows against `rows` rows, `depth` values each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Products {
    /// `N`, the rows of the queries.
    pub queries: usize,
    /// `K`, the rows the queries meet.
    pub rows: usize,
    /// `D`, the values in each row.
    pub depth: usize,
}

impl Products {
    /// The sizes of `queries [N, D]` against `rows [K, D]` where the CPU kernels cover them
    /// (non-empty `f32` matrices of one depth), else `None`.
    fn of(queries: &FlexTensor, rows: &FlexTensor) -> Option<Self> {
        let matrix = |t: &FlexTensor| <[usize; 2]>::try_from(&t.shape().to_vec()[..]).ok();
        let ([n, d], [k, e]) = (matrix(queries)?, matrix(rows)?);
        let f32s = queries.dtype() == DType::F32 && rows.dtype() == DType::F32;
        (f32s && d == e && n > 0 && k > 0 && d > 0 && !use_burn_composition()).then_some(Self { queries: n, rows: k, depth: d })
    }

    /// Queries per block and rows per chunk.
    fn tiling(&self) -> (usize, usize) {
        let block = self.queries.min(BLOCK_ROWS);
        (block, (BLOCK_FLOATS / block).max(MIN_CHUNK).min(self.rows))
    }
}

/// The products of queries `first_query..+block` with rows `first_row..+chunk` into
/// `scratch`, `[block, chunk]`, which the returned slice reads.
fn products_into<'a>(
    q: &[f32],
    r: &[f32],
    p: Products,
    (first_query, block): (usize, usize),
    (first_row, chunk): (usize, usize),
    scratch: &'a mut [MaybeUninit<f32>],
) -> &'a mut [f32] {
    let d = p.depth;
    let (q, r) = (&q[first_query * d..(first_query + block) * d], &r[first_row * d..(first_row + chunk) * d]);
    let out = &mut scratch[..block * chunk];
    // out[i, j] = Σ_d q[i, d] · r[j, d]: `rows` read transposed through its strides.
    gemm_f32_into(Parallelism::None, [block, chunk, d], out, [chunk as isize, 1], q, [d as isize, 1], r, [1, d as isize]);
    // SAFETY: the product wrote all `block × chunk` slots.
    unsafe { std::slice::from_raw_parts_mut(out.as_mut_ptr().cast::<f32>(), out.len()) }
}

/// Lanes of the vectorised reductions.
const LANES: usize = 16;

/// `(max, Σ exp(v − max))` of one row of products.
#[inline(always)]
fn max_and_sum_exp(values: &[f32]) -> (f32, f32) {
    let lanes = values.chunks_exact(LANES);
    let mut max = [f32::NEG_INFINITY; LANES];
    for c in lanes.clone() {
        for j in 0..LANES {
            max[j] = if c[j] > max[j] { c[j] } else { max[j] };
        }
    }
    let m = max.into_iter().chain(lanes.remainder().iter().copied()).fold(f32::NEG_INFINITY, f32::max);
    let mut sum = [0.0f32; LANES];
    for c in lanes.clone() {
        for j in 0..LANES {
            sum[j] += exp(c[j] - m);
        }
    }
    let s = sum.iter().sum::<f32>() + lanes.remainder().iter().map(|&v| exp(v - m)).sum::<f32>();
    (m, s)
}

/// `(lse, max)` of each query's products with all rows: `q [N, D]`, `r [K, D]` → `[N]`, `[N]`.
pub fn logsumexp(q: &[f32], r: &[f32], p: Products) -> (Vec<f32>, Vec<f32>) {
    let Products { queries: n, rows: k, depth: d } = p;
    assert_eq!((q.len(), r.len()), (n * d, k * d), "product log-sum-exp: inputs do not match their sizes");
    let (block, chunk) = p.tiling();
    let (blocks, chunks) = (n.div_ceil(block), k.div_ceil(chunk));
    // Per task (block-major), each query's (max, sum of exponentials) over the chunk.
    let partials: Vec<Vec<(f32, f32)>> = (0..blocks * chunks)
        .into_par_iter()
        .map(|task| {
            let (b, c) = (task / chunks, task % chunks);
            let queries = (b * block, block.min(n - b * block));
            let rows = (c * chunk, chunk.min(k - c * chunk));
            with_scratch(queries.1 * rows.1, |scratch| {
                let products = products_into(q, r, p, queries, rows, scratch);
                let mut out = vec![(0.0, 0.0); queries.1];
                // Plain loops: iterator adapters' `fold` would not inline into the AVX2 code.
                with_avx2(#[inline(always)] || {
                    for (row, out) in products.chunks_exact(rows.1).zip(&mut out) {
                        *out = max_and_sum_exp(row);
                    }
                });
                out
            })
        })
        .collect();
    // Each query's chunks combined in chunk order: lse = M + log Σ_c s_c·exp(m_c − M).
    (0..n)
        .into_par_iter()
        .map(|i| {
            let (b, row) = (i / block, i % block);
            let parts = || partials[b * chunks..][..chunks].iter().map(|part| part[row]);
            let m = parts().map(|(m, _)| m).fold(f32::NEG_INFINITY, f32::max);
            let s: f32 = parts().map(|(mc, s)| s * (mc - m).exp()).sum();
            (m + s.ln(), m)
        })
        .unzip()
}

/// The queries' gradient `Σₖ gₙ·exp(qₙ·rₖ − lseₙ)·rₖ`, `[N, D]`, given [`logsumexp`]'s `lse`
/// and the output gradient `g` (both `[N]`).
pub fn query_gradient(q: &[f32], r: &[f32], lse: &[f32], grad: &[f32], p: Products) -> Vec<f32> {
    let Products { queries: n, rows: k, depth: d } = p;
    assert_eq!((q.len(), r.len()), (n * d, k * d), "product log-sum-exp: inputs do not match their sizes");
    assert_eq!((lse.len(), grad.len()), (n, n), "product log-sum-exp: lse or gradient does not match the queries");
    let (block, chunk) = p.tiling();
    let (blocks, chunks) = (n.div_ceil(block), k.div_ceil(chunk));
    let groups = GROUPS.min(chunks);
    // One partial per (block, group), each sized for a whole block (the last block may use
    // fewer rows), so that each block's partials lie consecutive for `sum_partials_in_order`.
    let size = block * d;
    let mut partials = vec![0.0f32; blocks * groups * size];
    partials.par_chunks_mut(size).enumerate().for_each(|(task, partial)| {
        let (b, group) = (task / groups, task % groups);
        let (first, len) = (b * block, block.min(n - b * block));
        for c in group * chunks / groups..(group + 1) * chunks / groups {
            let rows = (c * chunk, chunk.min(k - c * chunk));
            with_scratch(len * rows.1, |scratch| {
                let weights = products_into(q, r, p, (first, len), rows, scratch);
                with_avx2(#[inline(always)] || {
                    for (i, row) in weights.chunks_exact_mut(rows.1).enumerate() {
                        let (shift, g) = (lse[first + i], grad[first + i]);
                        for w in row.iter_mut() {
                            *w = g * exp(*w - shift);
                        }
                    }
                });
                // partial[len, D] += weights[len, chunk] · r[chunk, D]
                let r = &r[rows.0 * d..(rows.0 + rows.1) * d];
                gemm_f32_add(Parallelism::None, [len, d, rows.1], &mut partial[..len * d], [d as isize, 1], weights, [rows.1 as isize, 1], r, [d as isize, 1]);
            });
        }
    });
    let mut out = Vec::with_capacity(n * d);
    for (b, block_partials) in partials.chunks_exact(groups * size).enumerate() {
        let len = block.min(n - b * block);
        out.extend_from_slice(&sum_partials_in_order(block_partials, size)[..len * d]);
    }
    out
}

pub(super) fn tensor(values: Vec<f32>, dims: Vec<usize>) -> FloatTensor<Flex> {
    FlexTensor::from_data(TensorData::new(values, dims))
}

impl ProductLogSumExpKernels for Flex {
    fn product_logsumexp(queries: FloatTensor<Self>, rows: FloatTensor<Self>) -> (FloatTensor<Self>, FloatTensor<Self>) {
        let Some(p) = Products::of(&queries, &rows) else {
            return burn_logsumexp::<Self>(queries, rows);
        };
        let (q, r) = (queries.to_contiguous(), rows.to_contiguous());
        let (lse, max) = logsumexp(q.storage(), r.storage(), p);
        (tensor(lse, vec![p.queries]), tensor(max, vec![p.queries]))
    }

    fn product_logsumexp_query_gradient(
        queries: FloatTensor<Self>,
        rows: FloatTensor<Self>,
        lse: FloatTensor<Self>,
        output_grad: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        let per_query = |t: &FlexTensor, n| t.dtype() == DType::F32 && t.shape().to_vec() == [n];
        let covered = Products::of(&queries, &rows).filter(|p| per_query(&lse, p.queries) && per_query(&output_grad, p.queries));
        let Some(p) = covered else {
            return query_gradient_from_weights::<Self>(queries, rows, lse, output_grad);
        };
        let (q, r, lse, grad) = (queries.to_contiguous(), rows.to_contiguous(), lse.to_contiguous(), output_grad.to_contiguous());
        tensor(query_gradient(q.storage(), r.storage(), lse.storage(), grad.storage(), p), vec![p.queries, p.depth])
    }
}

impl<B: Backend + ProductLogSumExpKernels, C: CheckpointStrategy> ProductLogSumExpKernels for Autodiff<B, C> {
    fn product_logsumexp(queries: FloatTensor<Self>, rows: FloatTensor<Self>) -> (FloatTensor<Self>, FloatTensor<Self>) {
        #[derive(Debug)]
        struct ProductLogSumExp;

        impl<B: Backend + ProductLogSumExpKernels> Backward<B, 2> for ProductLogSumExp {
            // Both inputs are checkpointed; the log-sum-exp is kept as computed.
            type State = (NodeId, NodeId, B::FloatTensorPrimitive);

            fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, checkpointer: &mut Checkpointer) {
                let [node_queries, node_rows] = ops.parents;
                let grad = grads.consume::<B>(&ops.node);
                let (queries_state, rows_state, lse) = ops.state;
                let queries = checkpointer.retrieve_node_output::<B::FloatTensorPrimitive>(queries_state);
                let rows = checkpointer.retrieve_node_output::<B::FloatTensorPrimitive>(rows_state);
                match (node_queries, node_rows) {
                    (node_queries, Some(node_rows)) => {
                        // The rows need their gradient too (not the case for a queue): both
                        // from the weights, `∂q = W·R` and `∂R = Wᵀ·q`.
                        let weights = B::product_logsumexp_weights(queries.clone(), rows.clone(), lse, grad);
                        if let Some(node) = node_queries {
                            grads.register::<B>(node.id, B::float_matmul(weights.clone(), rows));
                        }
                        grads.register::<B>(node_rows.id, B::float_matmul(B::float_swap_dims(weights, 0, 1), queries));
                    }
                    (Some(node), None) => grads.register::<B>(node.id, B::product_logsumexp_query_gradient(queries, rows, lse, grad)),
                    (None, None) => {}
                }
            }
        }

        let untracked = |t| FloatTensor::<Self>::new(t);
        match ProductLogSumExp.prepare::<C>([queries.node(), rows.node()]).compute_bound().stateful() {
            OpsKind::Tracked(mut prep) => {
                let queries_state = prep.checkpoint(&queries);
                let rows_state = prep.checkpoint(&rows);
                let (lse, max) = B::product_logsumexp(queries.into_primitive(), rows.into_primitive());
                (prep.finish((queries_state, rows_state, lse.clone()), lse), untracked(max))
            }
            OpsKind::UnTracked(prep) => {
                let (lse, max) = B::product_logsumexp(queries.into_primitive(), rows.into_primitive());
                (prep.finish(lse), untracked(max))
            }
        }
    }
}

/// `(lse, max)` through [`ProductLogSumExpKernels`]: `lseₙ = log Σₖ exp(qₙ·rₖ)` (with its
/// gradient) and `maxₙ = maxₖ qₙ·rₖ` (without).
///
/// # Shapes
/// queries `[N, D]`, rows `[K, D]` → `[N]`, `[N]`
pub fn product_logsumexp(queries: Tensor<2>, rows: Tensor<2>) -> (Tensor<1>, Tensor<1>) {
    let (lse, max) = <Dispatch as ProductLogSumExpKernels>::product_logsumexp(queries.into_dispatch(), rows.into_dispatch());
    (Tensor::from_dispatch(lse), Tensor::from_dispatch(max))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::assert_close;
    use burn::tensor::{Device, Distribution};

    /// The log-sum-exp, its maximum and the gradients of `Σₙ gₙ·lseₙ` (queries, rows), through
    /// [`product_logsumexp`] or, with `composed`, through burn's tensor operations.
    fn run(q: &Tensor<2>, r: &Tensor<2>, g: &Tensor<1>, composed: bool, rows_grad: bool) -> [Vec<f32>; 4] {
        let q = q.clone().require_grad();
        let r = if rows_grad { r.clone().require_grad() } else { r.clone() };
        let (lse, max) = if composed {
            let products = q.clone().matmul(r.clone().transpose());
            let max = products.clone().detach().max_dim(1);
            let lse = ((products - max.clone()).exp().sum_dim(1).log() + max.clone()).squeeze_dim(1);
            (lse, max.squeeze_dim(1))
        } else {
            product_logsumexp(q.clone(), r.clone())
        };
        let grads = (lse.clone() * g.clone()).sum().backward();
        let dr = if rows_grad { r.grad(&grads).unwrap().into_data().try_to_vec().unwrap() } else { vec![] };
        let values = |t: Tensor<1>| t.into_data().try_to_vec::<f32>().unwrap();
        [values(lse), values(max), q.grad(&grads).unwrap().into_data().try_to_vec().unwrap(), dr]
    }

    #[test]
    fn kernels_match_burns_composition_across_blocks_and_chunks() {
        let device = Device::flex().autodiff();
        // (queries, rows, depth): one chunk; several chunks with a short last one; more
        // queries than a block, fewer rows than a chunk; GROUPS > chunks and < chunks.
        for (n, k, d) in [(3, 50, 8), (40, 5000, 16), (300, 700, 5), (7, 70_000, 4), (64, 20_000, 4)] {
            let normal = |dims: [usize; 2], scale| Tensor::<2>::random(dims, Distribution::Normal(0.0, scale), &device);
            let (q, r) = (normal([n, d], 1.5), normal([k, d], 1.0));
            let g = Tensor::<1>::random([n], Distribution::Uniform(-1.0, 1.0), &device);
            let [lse, max, dq, _] = run(&q, &r, &g, false, false);
            let [lse_b, max_b, dq_b, _] = run(&q, &r, &g, true, false);
            assert_close(&lse, &lse_b, 1e-5, &format!("lse {n}x{k}x{d}"));
            assert_close(&max, &max_b, 1e-5, &format!("max {n}x{k}x{d}"));
            assert_close(&dq, &dq_b, 1e-5, &format!("query gradient {n}x{k}x{d}"));
        }
    }

    #[test]
    fn rows_that_need_their_gradient_get_burns_gradient() {
        let device = Device::flex().autodiff();
        let q = Tensor::<2>::random([6, 4], Distribution::Normal(0.0, 1.0), &device);
        let r = Tensor::<2>::random([90, 4], Distribution::Normal(0.0, 1.0), &device);
        let g = Tensor::<1>::random([6], Distribution::Uniform(-1.0, 1.0), &device);
        let [_, _, dq, dr] = run(&q, &r, &g, false, true);
        let [_, _, dq_b, dr_b] = run(&q, &r, &g, true, true);
        assert_close(&dq, &dq_b, 1e-5, "query gradient");
        assert_close(&dr, &dr_b, 1e-5, "rows gradient");
    }

    #[test]
    fn a_nan_among_the_products_makes_the_log_sum_exp_nan() {
        let (q, mut r) = (vec![1.0f32; 4 * 2], vec![0.5f32; 100 * 2]);
        r[2 * 37] = f32::NAN;
        let (lse, _) = logsumexp(&q, &r, Products { queries: 4, rows: 100, depth: 2 });
        assert!(lse.iter().all(|v| v.is_nan()), "{lse:?}");
    }
}
