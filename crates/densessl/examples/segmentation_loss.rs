//! Times the segmentation loss (`densessl::seg::loss::masked_cross_entropy`: per-pixel
//! cross-entropy with an ignore label, mean over labelled pixels), forward and backward on
//! the autodiff CPU backend, at the mini protocol's shapes (batch 16, 11 classes, 48 and 64
//! px) and a VOC-like one (batch 8, 21 classes, 128 px). The fastest of 9 calls each.
//!
//! ```sh
//! cargo run --release --example segmentation_loss
//! DENSESSL_LOSS_KERNELS=burn cargo run --release --example segmentation_loss  # burn's ops
//! ```

use burn::tensor::{Device, Distribution, Int, Tensor};
use densessl::seg::loss::masked_cross_entropy;

#[path = "common/timing.rs"]
#[allow(dead_code)]
mod timing;
use timing::fastest_ms;

/// (name, batch, classes, side)
const SHAPES: [(&str, usize, usize, usize); 3] =
    [("mini 16x11x48x48", 16, 11, 48), ("mini 16x11x64x64", 16, 11, 64), ("voc 8x21x128x128", 8, 21, 128)];

fn main() {
    densessl::runtime::configure();
    let device = Device::flex().autodiff();
    for (name, b, k, side) in SHAPES {
        let logits = Tensor::<4>::random([b, k, side, side], Distribution::Normal(0.0, 2.0), &device);
        // Labels in 0..k with about a tenth of the pixels at the ignore label 255.
        let classes = Tensor::<3>::random([b, side, side], Distribution::Uniform(0.0, k as f64), &device).floor();
        let ignored = Tensor::<3>::random([b, side, side], Distribution::Uniform(0.0, 1.0), &device).lower_elem(0.1);
        let labels: Tensor<3, Int> = classes.mask_fill(ignored, 255.0).int();
        let forward = fastest_ms(|| {
            let loss = masked_cross_entropy(logits.clone(), labels.clone(), 255);
            std::hint::black_box(loss.into_scalar::<f32>());
        });
        let both = fastest_ms(|| {
            let x = logits.clone().require_grad();
            let grads = masked_cross_entropy(x.clone(), labels.clone(), 255).backward();
            std::hint::black_box(x.grad(&grads).unwrap().into_data());
        });
        println!("{name:20} fwd {forward:7.2} ms  fwd+bwd {both:7.2} ms");
    }
}
