//! Times the channels-last max pooling (`densessl::kernels::max_pool`) on the ResNet stem's
//! output at batch 32 and 96 px (`[32, 64, 48, 48]`, 3×3 window, stride 2, padding 1): the
//! forward pass and the gradient, the fastest of 9 calls each.
//!
//! ```sh
//! cargo run --release --example pool_layers
//! ```

use densessl::kernels::max_pool::{forward, gradient, PoolGeometry};

#[path = "common/timing.rs"]
mod timing;
use timing::{fastest_ms, ramp};

fn main() {
    densessl::runtime::configure();
    let g = PoolGeometry { batch: 32, channels: 64, input: [48, 48], kernel: [3, 3], stride: [2, 2], padding: [1, 1] };
    let x = ramp(g.batch * g.channels * 48 * 48, 97);
    let y = forward(&x, &g);
    let dy = ramp(y.len(), 89);
    let fwd = fastest_ms(|| drop(std::hint::black_box(forward(&x, &g))));
    let bwd = fastest_ms(|| drop(std::hint::black_box(gradient(&x, &y, &dy, &g))));
    println!("max pool {:?} → {:?}, ramp input:     fwd {fwd:.2} ms  bwd {bwd:.2} ms", [g.batch, g.channels, 48, 48], g.output());
    // As after a ReLU: scattered values, half of them exactly zero (ties in most windows).
    let x: Vec<f32> = (0..x.len()).map(|i| ((i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 40) as f32 / (1u64 << 24) as f32 - 0.5).map(|v| v.max(0.0)).collect();
    let y = forward(&x, &g);
    let fwd = fastest_ms(|| drop(std::hint::black_box(forward(&x, &g))));
    let bwd = fastest_ms(|| drop(std::hint::black_box(gradient(&x, &y, &dy, &g))));
    println!("max pool {:?} → {:?}, ReLU-like input: fwd {fwd:.2} ms  bwd {bwd:.2} ms", [g.batch, g.channels, 48, 48], g.output());
}
