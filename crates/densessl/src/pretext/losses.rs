//! Contrastive losses.

use burn::tensor::activation::log_softmax;
use burn::tensor::Tensor;

/// Rows scaled to unit L2 norm.
///
/// # Shapes
/// `[N, D]` → `[N, D]`
pub fn l2_normalize(x: Tensor<2>) -> Tensor<2> {
    let norm = x.clone().powi_scalar(2).sum_dim(1).sqrt().clamp_min(1e-12);
    x / norm
}

/// MoCo's InfoNCE (Oord et al. 2018; He et al. 2020): each query's positive is its key,
/// its negatives the queue. Inputs are L2-normalised; `keys` and `queue` carry no gradient.
/// Returns the mean loss and the logits (column 0 = positive).
///
/// # Shapes
/// queries `[N, D]`, keys `[N, D]`, queue `[K, D]` → loss `[1]`, logits `[N, 1 + K]`
pub fn info_nce(queries: Tensor<2>, keys: Tensor<2>, queue: Tensor<2>, temperature: f64) -> (Tensor<1>, Tensor<2>) {
    let [n, _] = queries.dims();
    let positive = (queries.clone() * keys).sum_dim(1); // [N, 1]
    let negative = queries.matmul(queue.transpose()); // [N, K]
    let logits = Tensor::cat(vec![positive, negative], 1) / temperature;
    let loss = -log_softmax(logits.clone(), 1).slice([0..n, 0..1]).mean();
    (loss, logits)
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
        let (loss, logits) = info_nce(q.clone(), q, queue, tau);
        let expected = -((1.0f64 / tau).exp() / ((1.0f64 / tau).exp() + 3.0)).ln();
        let got = loss.into_scalar::<f32>() as f64;
        assert!((got - expected).abs() < 1e-5, "{got} vs {expected}");
        assert_eq!(logits.dims(), [2, 4]);
    }

    #[test]
    fn normalize_gives_unit_rows() {
        let x = l2_normalize(t(&[&[3.0, 4.0], &[0.0, -2.0]]));
        let v = x.into_data().try_to_vec::<f32>().unwrap();
        assert_eq!(v, vec![0.6, 0.8, 0.0, -1.0]);
    }
}
