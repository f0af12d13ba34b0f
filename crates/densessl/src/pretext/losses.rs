//! Contrastive losses.

use burn::tensor::activation::log_softmax;
use burn::tensor::{Int, Tensor, TensorData};

use crate::kernels::product_logsumexp::product_logsumexp;

/// Rows scaled to unit L2 norm.
///
/// # Shapes
/// `[N, D]` → `[N, D]`
pub fn l2_normalize(x: Tensor<2>) -> Tensor<2> {
    let norm = x.clone().powi_scalar(2).sum_dim(1).sqrt().clamp_min(1e-12);
    x / norm
}

/// `log(eᵃ + eᵇ)` element by element. A constant shift, the larger of the two, keeps the
/// exponentials finite; it carries no gradient (it cancels).
fn log_add_exp(a: Tensor<1>, b: Tensor<1>) -> Tensor<1> {
    let shift = a.clone().detach().max_pair(b.clone().detach());
    ((a - shift.clone()).exp() + (b - shift.clone()).exp()).log() + shift
}

/// MoCo's InfoNCE (Oord et al. 2018; He et al. 2020): each query's positive is its key,
/// its negatives the queue. Inputs are L2-normalised; `keys` and `queue` carry no gradient.
/// Returns the mean loss and the top-1 accuracy (the positive scores at least as high as
/// every negative, as an argmax over `[positive, negatives]` that prefers the first).
///
/// The loss is `logsumexp([p, n₁ … n_K]) − p` per query. The negatives' part,
/// `log Σₖ exp(nₖ)` over the `K` queue rows (65,536 in MoCo), comes from
/// [`product_logsumexp`], which never writes the `N × K` logits out on the CPU; it is then
/// combined with the positive as `log(eᵖ + e^lse)`. `1/τ` is applied to the queries rather
/// than to the logits.
///
/// # Shapes
/// queries `[N, D]`, keys `[N, D]`, queue `[K, D]` → loss `[1]`
pub fn info_nce(queries: Tensor<2>, keys: Tensor<2>, queue: Tensor<2>, temperature: f64) -> (Tensor<1>, f64) {
    let [n, _] = queries.dims();
    let scaled = queries / temperature;
    let positive = (scaled.clone() * keys).sum_dim(1).reshape([n]);
    let (negatives, negative_max) = product_logsumexp(scaled, queue);
    let loss = (log_add_exp(positive.clone(), negatives) - positive.clone()).mean();
    let hits = positive.detach().greater_equal(negative_max).int().sum().into_scalar::<i64>();
    (loss, hits as f64 / n as f64)
}

/// InfoNCE where the positive is one of the candidates (PLMoCo): each query scores every
/// candidate key (e.g. all key cells of the batch) and the queue; its target is the candidate
/// `positive[i]`, every other candidate and every queue row is a negative. Inputs are
/// L2-normalised; candidates and queue carry no gradient. Returns the mean loss and the
/// top-1 accuracy of finding the positive.
///
/// The loss is `logsumexp([c₁ … c_M, n₁ … n_K]) − c_positive` per query, the log-sum-exp
/// combined from [`product_logsumexp`] over the candidates and over the queue, so the
/// `N × K` queue logits are never written out on the CPU (the `N × M` candidate scores
/// are, without gradient, for the accuracy).
///
/// # Shapes
/// queries `[N, D]`, candidates `[M, D]`, positive `[N]` (values < M), queue `[K, D]` → `[1]`
pub fn info_nce_among(
    queries: Tensor<2>,
    candidates: Tensor<2>,
    positive: Tensor<1, Int>,
    queue: Tensor<2>,
    temperature: f64,
) -> (Tensor<1>, f64) {
    let [n, _] = queries.dims();
    let scaled = queries / temperature;
    // The accuracy as an argmax over `[candidates, queue]` that prefers the first: the
    // target must be the first best candidate and at least as high as every queue row.
    let (best, best_index) = scaled.clone().detach().matmul(candidates.clone().detach().transpose()).max_dim_with_indices(1);
    let target = (scaled.clone() * candidates.clone().select(0, positive.clone())).sum_dim(1).reshape([n]);
    let (among, _) = product_logsumexp(scaled.clone(), candidates);
    let (negatives, negative_max) = product_logsumexp(scaled, queue);
    let loss = (log_add_exp(among, negatives) - target).mean();
    let found = best_index.reshape([n]).equal(positive).int() * best.reshape([n]).greater_equal(negative_max).int();
    (loss, found.sum().into_scalar::<i64>() as f64 / n as f64)
}

/// SimCLR's NT-Xent (Chen et al. 2020): for 2N embeddings, each one's positive is its other
/// view, its negatives the other 2N − 2; cosine similarities over `temperature`, cross-entropy
/// averaged over all 2N. Returns the loss and the top-1 accuracy of finding the positive.
///
/// # Shapes
/// `z1`, `z2` `[N, D]` (any norm) → loss `[1]`, accuracy
pub fn nt_xent(z1: Tensor<2>, z2: Tensor<2>, temperature: f64) -> (Tensor<1>, f64) {
    let [n, _] = z1.dims();
    let device = z1.device();
    let z = l2_normalize(Tensor::cat(vec![z1, z2], 0)); // [2N, D]
    let eye: Vec<f32> = (0..4 * n * n).map(|k| if k / (2 * n) == k % (2 * n) { 1.0 } else { 0.0 }).collect();
    let eye = Tensor::<2>::from_data(TensorData::new(eye, [2 * n, 2 * n]), &device);
    // Self-similarity is excluded by a large negative logit.
    let logits = z.clone().matmul(z.transpose()) / temperature - eye * 1e9;
    let positive: Vec<f32> =
        (0..4 * n * n).map(|k| if k % (2 * n) == (k / (2 * n) + n) % (2 * n) { 1.0 } else { 0.0 }).collect();
    let positive = Tensor::<2>::from_data(TensorData::new(positive, [2 * n, 2 * n]), &device);
    let log_p = log_softmax(logits.clone(), 1);
    let loss = -(log_p * positive.clone()).sum_dim(1).mean();
    let hits = logits.detach().argmax(1).equal(positive.argmax(1)).int().sum().into_scalar::<i64>();
    (loss, hits as f64 / (2 * n) as f64)
}

/// Mean cosine similarity between rows of `p` and of `z` (gradient flows into both; detach
/// `z` for the stop-gradient of BYOL and SimSiam).
///
/// # Shapes
/// `[N, D]`, `[N, D]` → `[1]`
pub fn mean_cosine(p: Tensor<2>, z: Tensor<2>) -> Tensor<1> {
    (l2_normalize(p) * l2_normalize(z)).sum_dim(1).mean()
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::{Device, TensorData};

    fn t(rows: &[&[f32]]) -> Tensor<2> {
        let d = rows[0].len();
        let data: Vec<f32> = rows.iter().flat_map(|r| r.iter().copied()).collect();
        Tensor::from_data(TensorData::new(data, [rows.len(), d]), &Device::flex())
    }

    #[test]
    fn info_nce_matches_closed_form() {
        // q·k = 1 for the positive; q·queue = 0 for K orthogonal negatives:
        // loss = -log(e^{1/τ} / (e^{1/τ} + K)).
        let q = t(&[&[1.0, 0.0, 0.0], &[0.0, 1.0, 0.0]]);
        let queue = t(&[&[0.0, 0.0, 1.0], &[0.0, 0.0, 1.0], &[0.0, 0.0, -1.0]]);
        let tau = 0.2;
        let (loss, accuracy) = info_nce(q.clone(), q, queue, tau);
        let expected = -((1.0f64 / tau).exp() / ((1.0f64 / tau).exp() + 3.0)).ln();
        let got = loss.into_scalar::<f32>() as f64;
        assert!((got - expected).abs() < 1e-5, "{got} vs {expected}");
        // Both positives (1/τ) beat every negative (0).
        assert_eq!(accuracy, 1.0);
    }

    /// The shifted, unconcatenated form against cross-entropy over `[positive, negatives] / τ`
    /// (the form the torch fixture checks): loss, query gradient and accuracy.
    #[test]
    fn info_nce_matches_cross_entropy_over_concatenated_logits() {
        use burn::tensor::{Device, Distribution};
        let device = Device::flex().autodiff();
        let (n, d, k, tau) = (6, 8, 50, 0.2);
        let unit = |dims: [usize; 2]| l2_normalize(Tensor::<2>::random(dims, Distribution::Normal(0.0, 1.0), &device));
        let (q, keys, queue) = (unit([n, d]).detach(), unit([n, d]).detach(), unit([k, d]).detach());
        // Some keys equal to their queries, so both hits and misses occur.
        let keys = Tensor::cat(vec![q.clone().slice([0..3, 0..d]), keys.slice([3..n, 0..d])], 0);
        let run = |ours: bool| {
            let q = q.clone().require_grad();
            let (loss, accuracy) = if ours {
                info_nce(q.clone(), keys.clone(), queue.clone(), tau)
            } else {
                let positive = (q.clone() * keys.clone()).sum_dim(1);
                let logits = Tensor::cat(vec![positive, q.clone().matmul(queue.clone().transpose())], 1) / tau;
                let hits = logits.clone().detach().argmax(1).equal_elem(0).int().sum().into_scalar::<i64>();
                (-log_softmax(logits, 1).slice([0..n, 0..1]).mean(), hits as f64 / n as f64)
            };
            let grads = loss.backward();
            let grad: Vec<f32> = q.grad(&grads).unwrap().into_data().try_to_vec().unwrap();
            (loss.into_scalar::<f32>(), grad, accuracy)
        };
        let ((loss, grad, accuracy), (expected_loss, expected_grad, expected_accuracy)) = (run(true), run(false));
        assert!((loss - expected_loss).abs() < 1e-5, "{loss} vs {expected_loss}");
        for (a, b) in grad.iter().zip(&expected_grad) {
            assert!((a - b).abs() < 1e-5, "query gradient {a} vs {b}");
        }
        assert_eq!(accuracy, expected_accuracy);
        assert!(accuracy > 0.0 && accuracy < 1.0, "accuracy {accuracy}: the case should have hits and misses");
    }

    #[test]
    fn info_nce_among_matches_closed_form() {
        // Two orthonormal queries, candidates = the queries, positives on the diagonal, a
        // queue of 3 orthogonal rows: each query has 1 positive at 1 and 1 + 3 negatives at 0.
        let q = t(&[&[1.0, 0.0, 0.0], &[0.0, 1.0, 0.0]]);
        let queue = t(&[&[0.0, 0.0, 1.0], &[0.0, 0.0, 1.0], &[0.0, 0.0, -1.0]]);
        let positive = Tensor::<1, Int>::from_data(TensorData::new(vec![0i64, 1], [2]), &Device::flex());
        let tau = 0.2;
        let (loss, acc) = info_nce_among(q.clone(), q.clone(), positive, queue, tau);
        let expected = -((1.0f64 / tau).exp() / ((1.0f64 / tau).exp() + 4.0)).ln();
        assert!((loss.into_scalar::<f32>() as f64 - expected).abs() < 1e-5);
        assert_eq!(acc, 1.0);
        // Pointing each query at the other candidate: the target logit is 0, and the
        // query's own row now counts as a negative at 1/τ.
        let swapped = Tensor::<1, Int>::from_data(TensorData::new(vec![1i64, 0], [2]), &Device::flex());
        let queue = t(&[&[0.0, 0.0, 1.0]]);
        let (loss, acc) = info_nce_among(q.clone(), q, swapped, queue, tau);
        let expected = -(1.0 / ((1.0f64 / tau).exp() + 2.0)).ln();
        assert!((loss.into_scalar::<f32>() as f64 - expected).abs() < 1e-4);
        assert_eq!(acc, 0.0);
    }

    #[test]
    fn normalize_gives_unit_rows() {
        let x = l2_normalize(t(&[&[3.0, 4.0], &[0.0, -2.0]]));
        let v = x.into_data().try_to_vec::<f32>().unwrap();
        assert_eq!(v, vec![0.6, 0.8, 0.0, -1.0]);
    }

    #[test]
    fn nt_xent_closed_form_and_cosine_extremes() {
        // Two pairs of identical, mutually orthogonal embeddings: each row's positive has
        // similarity 1, the other two 0: loss = -log(e^{1/τ} / (e^{1/τ} + 2)).
        let z = t(&[&[1.0, 0.0], &[0.0, 1.0]]);
        let tau = 0.5;
        let (loss, acc) = nt_xent(z.clone(), z, tau);
        let expected = -((1.0f64 / tau).exp() / ((1.0f64 / tau).exp() + 2.0)).ln();
        assert!((loss.into_scalar::<f32>() as f64 - expected).abs() < 1e-5);
        assert_eq!(acc, 1.0);
        let a = t(&[&[1.0, 2.0], &[3.0, -1.0]]);
        assert!((mean_cosine(a.clone(), a.clone() * 3.0).into_scalar::<f32>() - 1.0).abs() < 1e-6);
        assert!((mean_cosine(a.clone(), -a).into_scalar::<f32>() + 1.0).abs() < 1e-6);
    }
}
