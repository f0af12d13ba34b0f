//! Times the CPU convolution kernels on ResNet-18's 3×3 and stem shapes at batch 32 and
//! 96 px: forward, data gradient and weight gradient of each layer, the fastest of 9 calls.
//! The binary's runtime settings (`densessl::runtime`) apply, as in `densessl bench`
//! (`DENSESSL_RUNTIME=default` turns them off).
//!
//! ```sh
//! cargo run --release --example conv_layers             # every layer
//! LAYER=stem cargo run --release --example conv_layers  # the layers whose name starts so
//! ```

use densessl::kernels::conv_cpu::{self, ConvGeometry};

/// (name, channels in, channels out, input side, kernel, stride, padding)
const LAYERS: [(&str, usize, usize, usize, usize, usize, usize); 8] = [
    ("stem 7x7 s2", 3, 64, 96, 7, 2, 3),
    ("layer1 3x3", 64, 64, 24, 3, 1, 1),
    ("layer2 3x3 s2", 64, 128, 24, 3, 2, 1),
    ("layer2 3x3", 128, 128, 12, 3, 1, 1),
    ("layer3 3x3 s2", 128, 256, 12, 3, 2, 1),
    ("layer3 3x3", 256, 256, 6, 3, 1, 1),
    ("layer4 3x3 s2", 256, 512, 6, 3, 2, 1),
    ("layer4 3x3", 512, 512, 3, 3, 1, 1),
];

const BATCH: usize = 32;

#[path = "common/timing.rs"]
mod timing;
use timing::{fastest_ms, ramp};

fn main() {
    densessl::runtime::configure();
    let only = std::env::var("LAYER").ok();
    let mut total = [0.0; 3];
    for (name, cin, cout, side, k, s, p) in LAYERS {
        if only.as_deref().is_some_and(|prefix| !name.starts_with(prefix)) {
            continue;
        }
        let g = ConvGeometry {
            batch: BATCH,
            cin,
            input: [side, side],
            cout,
            kernel: [k, k],
            stride: [s, s],
            padding: [p, p],
            dilation: [1, 1],
        };
        let [ho, wo] = g.output();
        let x = ramp(BATCH * cin * side * side, 97);
        let w = ramp(cout * cin * k * k, 89);
        let grad = ramp(BATCH * cout * ho * wo, 83);
        let forward = fastest_ms(|| drop(std::hint::black_box(conv_cpu::conv2d_forward(&x, &w, &g))));
        let dx = fastest_ms(|| drop(std::hint::black_box(conv_cpu::conv2d_data_gradient(&w, &grad, &g))));
        let dw = fastest_ms(|| drop(std::hint::black_box(conv_cpu::conv2d_weight_gradient(&x, &grad, &g))));
        let gflop = 2.0 * (BATCH * ho * wo * cout * cin * k * k) as f64 / 1e9;
        println!(
            "{name:15} fwd {forward:7.2} ms ({:5.0} GF/s)  dx {dx:7.2} ms  dw {dw:7.2} ms",
            gflop / forward * 1e3
        );
        for (sum, t) in total.iter_mut().zip([forward, dx, dw]) {
            *sum += t;
        }
    }
    println!("total           fwd {:7.2} ms  dx {:7.2} ms  dw {:7.2} ms", total[0], total[1], total[2]);
}
