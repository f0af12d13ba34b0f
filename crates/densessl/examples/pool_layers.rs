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
    println!("max pool {:?} → {:?}: fwd {fwd:.2} ms  bwd {bwd:.2} ms", [g.batch, g.channels, 48, 48], g.output());
}
