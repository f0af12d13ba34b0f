//! Times the CPU batch-norm kernels (`densessl::kernels::batch_norm_cpu`) on ResNet-50's
//! activation shapes at batch 32 and 96 px: the fused forward (`relu(bn(x))`) and the fused
//! backward (ReLU mask, then the batch-norm gradients), the fastest of 9 calls each.
//! The binary's runtime settings (`densessl::runtime`) apply, as in `densessl bench`.
//!
//! ```sh
//! cargo run --release --example bn_layers
//! ```

use densessl::kernels::batch_norm_cpu::{self, Epilogue, Planes, Statistics};

/// (name, channels, side)
const SHAPES: [(&str, usize, usize); 7] = [
    ("stem 64x48²", 64, 48),
    ("layer1 64x24²", 64, 24),
    ("layer1 256x24²", 256, 24),
    ("layer2 512x12²", 512, 12),
    ("layer3 1024x6²", 1024, 6),
    ("layer4 512x3²", 512, 3),
    ("layer4 2048x3²", 2048, 3),
];

const BATCH: usize = 32;

#[path = "common/timing.rs"]
mod timing;
use timing::{fastest_ms, ramp};

fn main() {
    densessl::runtime::configure();
    let mut total = [0.0; 2];
    for (name, channels, side) in SHAPES {
        let p = Planes { batch: BATCH, channels, plane: side * side };
        let n = BATCH * channels * side * side;
        // Values in [-1, 1): about half of the batch-norm outputs fall below zero, where the ReLU cuts.
        let signed = |v: Vec<f32>| v.into_iter().map(|v| 2.0 * v - 1.0).collect::<Vec<f32>>();
        let (x, dy) = (signed(ramp(n, 97)), signed(ramp(n, 89)));
        let (gamma, beta) = (vec![1.0; channels], vec![0.1; channels]);
        let relu = Epilogue { residual: None, relu: true };
        let (y, mean, variance) = batch_norm_cpu::forward_then(&x, &gamma, &beta, 1e-5, p, relu);
        let forward = fastest_ms(|| drop(std::hint::black_box(batch_norm_cpu::forward_then(&x, &gamma, &beta, 1e-5, p, relu))));
        let statistics = Statistics { gamma: &gamma, mean: &mean, variance: &variance, epsilon: 1e-5 };
        let backward = fastest_ms(|| {
            drop(std::hint::black_box(batch_norm_cpu::backward_through_relu(&x, statistics, &y, &dy, false, p)));
        });
        let mb = (n * 4) as f64 / 1e6;
        println!("{name:15} {mb:6.1} MB  fwd {forward:6.2} ms  bwd {backward:6.2} ms");
        total[0] += forward;
        total[1] += backward;
    }
    println!("total                    fwd {:6.2} ms  bwd {:6.2} ms", total[0], total[1]);
}
