//! Parity with PyTorch on fixtures written by `tools/fixtures/resize_and_losses.py`.

use burn::tensor::{Device, Int, Tensor, TensorData};
use densessl::models::resize::resize_bilinear;
use densessl::pretext::losses::{info_nce, info_nce_among, mean_cosine, nt_xent};
use densessl::seg::loss::masked_cross_entropy;
use safetensors::SafeTensors;

const TOLERANCE: f32 = 1e-5;

struct Fixture(Vec<u8>);

impl Fixture {
    fn load() -> Self {
        Self::named("resize_and_losses.safetensors")
    }

    fn named(file: &str) -> Self {
        let path = format!("{}/tests/fixtures/{file}", env!("CARGO_MANIFEST_DIR"));
        Self(std::fs::read(path).expect("fixture present"))
    }

    fn get(&self, name: &str) -> (Vec<f32>, Vec<usize>) {
        let st = SafeTensors::deserialize(&self.0).unwrap();
        let t = st.tensor(name).unwrap_or_else(|_| panic!("fixture has {name}"));
        let values = t.data().chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
        (values, t.shape().to_vec())
    }

    fn tensor<const D: usize>(&self, name: &str, device: &Device) -> Tensor<D> {
        let (v, shape) = self.get(name);
        Tensor::from_data(TensorData::new(v, shape), device)
    }
}

fn assert_close<const D: usize>(got: Tensor<D>, expected: &[f32], what: &str) {
    let got: Vec<f32> = got.into_data().try_to_vec().unwrap();
    assert_eq!(got.len(), expected.len(), "{what}: length");
    let worst = got.iter().zip(expected).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
    assert!(worst < TOLERANCE, "{what}: max abs error {worst} ≥ {TOLERANCE}");
}

#[test]
fn bilinear_resize_matches_torch_interpolate() {
    let f = Fixture::load();
    let device = Device::flex();
    let x: Tensor<4> = f.tensor("resize_in", &device);
    for (name, h, w) in [("resize_up_13x11", 13, 11), ("resize_down_3x2", 3, 2), ("resize_up_28x20", 28, 20)] {
        assert_close(resize_bilinear(x.clone(), h, w), &f.get(name).0, name);
    }
}

#[test]
fn bilinear_resize_gradient_matches_torch() {
    let f = Fixture::load();
    let device = Device::flex().autodiff();
    let x: Tensor<4> = f.tensor::<4>("resize_in", &device).require_grad();
    let weight: Tensor<4> = f.tensor("resize_grad_weight", &device);
    let loss = (resize_bilinear(x.clone(), 13, 11) * weight).sum();
    let grads = loss.backward();
    let grad = x.grad(&grads).expect("x has a gradient");
    assert_close(grad, &f.get("resize_grad").0, "resize gradient");
}

#[test]
fn info_nce_matches_torch_cross_entropy() {
    let f = Fixture::load();
    let device = Device::flex();
    let (loss, _) = info_nce(f.tensor("nce_q", &device), f.tensor("nce_k", &device), f.tensor("nce_queue", &device), 0.2);
    let got = loss.into_scalar::<f32>();
    let expected = f.get("nce_loss").0[0];
    assert!((got - expected).abs() < TOLERANCE, "{got} vs {expected}");
}

/// InfoNCE against a queue of 3,000 rows (more than one chunk of the CPU kernel in
/// `kernels::product_logsumexp`): the loss and its gradient with respect to the queries.
#[test]
fn info_nce_against_a_queue_and_its_query_gradient_match_pytorch() {
    let f = Fixture::named("ssl_losses.safetensors");
    let device = Device::flex().autodiff();
    for tau in [0.2, 0.07] {
        let q: Tensor<2> = f.tensor::<2>("moco_q", &device).require_grad();
        let (loss, _) = info_nce(q.clone(), f.tensor("moco_k", &device), f.tensor("moco_queue", &device), tau);
        let grads = loss.clone().backward();
        let (got, expected) = (loss.into_scalar::<f32>(), f.get(&format!("moco_loss_tau{tau}")).0[0]);
        assert!((got - expected).abs() < TOLERANCE * expected.abs().max(1.0), "τ {tau}: loss {got} vs {expected}");
        let grad = q.grad(&grads).expect("queries have a gradient");
        assert_close(grad, &f.get(&format!("moco_q_grad_tau{tau}")).0, &format!("τ {tau}: query gradient"));
    }
}

/// PLMoCo's InfoNCE among 36 candidates and a queue of 3,000 rows: the loss, its gradient
/// with respect to the queries and the top-1 accuracy (half the queries are found).
#[test]
fn info_nce_among_candidates_matches_pytorch() {
    let f = Fixture::named("ssl_losses.safetensors");
    let device = Device::flex().autodiff();
    let q: Tensor<2> = f.tensor::<2>("among_q", &device).require_grad();
    let positive: Vec<i64> = f.get("among_positive").0.iter().map(|&v| v as i64).collect();
    let positive = Tensor::<1, Int>::from_data(TensorData::new(positive, [30]), &device);
    let (loss, accuracy) =
        info_nce_among(q.clone(), f.tensor("among_candidates", &device), positive, f.tensor("moco_queue", &device), 0.2);
    let grads = loss.clone().backward();
    let (got, expected) = (loss.into_scalar::<f32>(), f.get("among_loss").0[0]);
    assert!((got - expected).abs() < TOLERANCE * expected.abs().max(1.0), "loss {got} vs {expected}");
    assert_eq!(accuracy, f.get("among_accuracy").0[0] as f64);
    assert_close(q.grad(&grads).expect("queries have a gradient"), &f.get("among_q_grad").0, "query gradient");
}

#[test]
fn masked_cross_entropy_matches_torch_ignore_index() {
    let f = Fixture::load();
    let device = Device::flex();
    let (labels, shape) = f.get("ce_labels");
    let labels: Vec<i64> = labels.iter().map(|&v| v as i64).collect();
    let labels = Tensor::<3, Int>::from_data(TensorData::new(labels, shape), &device);
    let got = masked_cross_entropy(f.tensor("ce_logits", &device), labels, 255).into_scalar::<f32>();
    let expected = f.get("ce_loss").0[0];
    assert!((got - expected).abs() < TOLERANCE, "{got} vs {expected}");
}

#[test]
fn nt_xent_and_cosine_losses_match_pytorch() {
    let f = Fixture::named("ssl_losses.safetensors");
    let device = Device::flex();
    for tau in [0.5, 0.1] {
        let (loss, _) = nt_xent(f.tensor("ntxent_z1", &device), f.tensor("ntxent_z2", &device), tau);
        let expected = f.get(&format!("ntxent_loss_tau{tau}")).0[0];
        let got = loss.into_scalar::<f32>();
        assert!((got - expected).abs() < TOLERANCE * expected.abs().max(1.0), "NT-Xent τ {tau}: {got} vs {expected}");
    }
    let cos = mean_cosine(f.tensor("cos_p", &device), f.tensor("cos_z", &device)).into_scalar::<f32>();
    let (byol, simsiam) = (f.get("byol_loss").0[0], f.get("simsiam_loss").0[0]);
    assert!((2.0 - 2.0 * cos - byol).abs() < TOLERANCE, "BYOL {} vs {byol}", 2.0 - 2.0 * cos);
    assert!((-cos - simsiam).abs() < TOLERANCE, "SimSiam {} vs {simsiam}", -cos);
}
