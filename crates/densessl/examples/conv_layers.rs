//! Times the CPU convolution kernels on ResNet-18's shapes (batch 32, 96 px): forward,
//! data gradient and weight gradient per layer, the fastest of 9. `cargo run --release --example conv_layers`
use std::time::Instant;
use densessl::kernels::conv_cpu::{self, ConvGeometry};

fn min(v: Vec<f64>) -> f64 { v.into_iter().fold(f64::INFINITY, f64::min) }

fn main() {
    let b = 32;
    let layers = [
        ("stem 7x7 s2", 3, 64, 96, 7, 2, 3),
        ("layer1 3x3", 64, 64, 24, 3, 1, 1),
        ("layer2 3x3 s2", 64, 128, 24, 3, 2, 1),
        ("layer2 3x3", 128, 128, 12, 3, 1, 1),
        ("layer3 3x3 s2", 128, 256, 12, 3, 2, 1),
        ("layer3 3x3", 256, 256, 6, 3, 1, 1),
        ("layer4 3x3 s2", 256, 512, 6, 3, 2, 1),
        ("layer4 3x3", 512, 512, 3, 3, 1, 1),
    ];
    let mut total = [0.0; 3];
    let only = std::env::var("LAYER").ok();
    for (name, cin, cout, side, k, s, p) in layers {
        if only.as_deref().is_some_and(|l| !name.starts_with(l)) {
            continue;
        }
        let g = ConvGeometry { batch: b, cin, input: [side, side], cout, kernel: [k, k], stride: [s, s], padding: [p, p], dilation: [1, 1] };
        let [ho, wo] = g.output();
        let x: Vec<f32> = (0..b * cin * side * side).map(|i| (i % 97) as f32 / 97.0).collect();
        let w: Vec<f32> = (0..cout * cin * k * k).map(|i| (i % 89) as f32 / 89.0).collect();
        let gr: Vec<f32> = (0..b * cout * ho * wo).map(|i| (i % 83) as f32 / 83.0).collect();
        let time = |f: &dyn Fn()| { f(); min((0..9).map(|_| { let t = Instant::now(); f(); t.elapsed().as_secs_f64() * 1e3 }).collect()) };
        let fw = time(&|| { std::hint::black_box(conv_cpu::conv2d_forward(&x, &w, &g)); });
        let dx = time(&|| { std::hint::black_box(conv_cpu::conv2d_data_gradient(&w, &gr, &g)); });
        let dw = time(&|| { std::hint::black_box(conv_cpu::conv2d_weight_gradient(&x, &gr, &g)); });
        let gflop = 2.0 * (b * ho * wo * cout * cin * k * k) as f64 / 1e9;
        println!("{name:15} fwd {fw:7.2} ms ({:5.0} GF/s)  dx {dx:7.2} ms  dw {dw:7.2} ms", gflop / fw * 1e3);
        total[0] += fw; total[1] += dx; total[2] += dw;
    }
    println!("total           fwd {:7.2} ms  dx {:7.2} ms  dw {:7.2} ms", total[0], total[1], total[2]);
}
