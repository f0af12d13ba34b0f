//! Probes for issue 9, on the 3×3 convolutions of a ResNet-18 step (batch 32, 96 px):
//! 1. attempt 1: burn-flex's weight gradient (a convolution of the batch-swapped input with
//!    the batch-swapped output gradient as the kernel, leaving gemm an N of k² = 9) against
//!    im2col + burn matmul formulations;
//! 2. burn-flex's gemm on the shapes convolutions produce;
//! 3. forward, weight and data gradient of each convolution, to compare with PyTorch;
//! 4. attempt 2: a tiled weight gradient (im2col tiles across the batch, one accumulating
//!    `gemm` call per tile) against burn-flex's.
//! Every alternative is checked against burn's result; ratios above 1 mean the alternative
//! is faster. A prototype to predict a kernel's gain, not wired into training.
//!
//!     cargo run --release --example conv_weight_grad_probe
//!     python bench/matmul.py     # PyTorch's gemm and convolutions on the same shapes

use std::time::Instant;

use burn::tensor::module::conv2d_weight_backward;
use burn::tensor::ops::{ConvOptions, ConvTransposeOptions};
use burn::tensor::{Device, Distribution, Tensor, TensorData};
use rayon::prelude::*;

/// `[B, C, H, W]` → columns `[B, C·k·k, Ho·Wo]` of a k×k convolution with `stride`, `pad`.
fn im2col(x: &[f32], [b, c, h, w]: [usize; 4], k: usize, stride: usize, pad: usize) -> (Vec<f32>, usize, usize) {
    let (ho, wo) = ((h + 2 * pad - k) / stride + 1, (w + 2 * pad - k) / stride + 1);
    let (rows, l) = (c * k * k, ho * wo);
    let mut col = vec![0.0f32; b * rows * l];
    col.par_chunks_mut(rows * l).enumerate().for_each(|(n, out)| {
        for ch in 0..c {
            let plane = &x[(n * c + ch) * h * w..][..h * w];
            for ky in 0..k {
                for kx in 0..k {
                    let row = &mut out[((ch * k + ky) * k + kx) * l..][..l];
                    for oy in 0..ho {
                        let iy = (oy * stride + ky) as isize - pad as isize;
                        if iy < 0 || iy >= h as isize {
                            continue;
                        }
                        for ox in 0..wo {
                            let ix = (ox * stride + kx) as isize - pad as isize;
                            if ix >= 0 && ix < w as isize {
                                row[oy * wo + ox] = plane[iy as usize * w + ix as usize];
                            }
                        }
                    }
                }
            }
        }
    });
    (col, ho, wo)
}

/// Attempt 2: the weight gradient of a k×k convolution (padding `pad`, stride `stride`) in
/// tiles of `TILE` output positions taken across the whole batch: each tile is im2col'd as
/// `[positions, C·k·k]`, its output-gradient columns gathered as `[Cout, positions]`, and one
/// gemm accumulates their product into a per-thread `[Cout, C·k·k]`. Nothing of batch size
/// is materialised, and small feature maps still give gemm a full tile.
fn weight_grad_tiled(x: &[f32], [b, c, h, w]: [usize; 4], grad: &[f32], cout: usize, k: usize, stride: usize, pad: usize) -> Vec<f32> {
    const TILE: usize = 256;
    let (ho, wo) = ((h + 2 * pad - k) / stride + 1, (w + 2 * pad - k) / stride + 1);
    let (l, kk) = (ho * wo, c * k * k);
    let tiles = (b * l).div_ceil(TILE);
    let per_thread = tiles.div_ceil(rayon::current_num_threads());
    (0..tiles)
        .into_par_iter()
        .with_min_len(per_thread)
        .fold(
            || (vec![0.0f32; cout * kk], vec![0.0f32; TILE * kk], vec![0.0f32; cout * TILE]),
            |(mut acc, mut col, mut g), tile| {
                let q0 = tile * TILE;
                let t = TILE.min(b * l - q0);
                for j in 0..t {
                    let (n, p) = ((q0 + j) / l, (q0 + j) % l);
                    let (oy, ox) = (p / wo, p % wo);
                    let image = &x[n * c * h * w..][..c * h * w];
                    let row = &mut col[j * kk..][..kk];
                    for ch in 0..c {
                        for ky in 0..k {
                            let iy = (oy * stride + ky) as isize - pad as isize;
                            for kx in 0..k {
                                let ix = (ox * stride + kx) as isize - pad as isize;
                                let inside = iy >= 0 && iy < h as isize && ix >= 0 && ix < w as isize;
                                row[(ch * k + ky) * k + kx] =
                                    if inside { image[(ch * h + iy as usize) * w + ix as usize] } else { 0.0 };
                            }
                        }
                    }
                }
                // Gradient columns, channel by channel so reads run along positions.
                for co in 0..cout {
                    for j in 0..t {
                        let (n, p) = ((q0 + j) / l, (q0 + j) % l);
                        g[co * TILE + j] = grad[(n * cout + co) * l + p];
                    }
                }
                // acc[Cout, kk] += g[Cout, t] · col[t, kk]
                unsafe {
                    gemm::gemm(
                        cout,
                        kk,
                        t,
                        acc.as_mut_ptr(),
                        1,
                        kk as isize,
                        true,
                        g.as_ptr(),
                        1,
                        TILE as isize,
                        col.as_ptr(),
                        1,
                        kk as isize,
                        1.0,
                        1.0,
                        false,
                        false,
                        false,
                        gemm::Parallelism::None,
                    );
                }
                (acc, col, g)
            },
        )
        .map(|(acc, _, _)| acc)
        .reduce(|| vec![0.0f32; cout * kk], |mut a, b| {
            a.iter_mut().zip(b).for_each(|(x, y)| *x += y);
            a
        })
}

/// Random operands of one 3×3 convolution (padding 1): input, weight, output gradient.
fn operands(batch: usize, cin: usize, cout: usize, side: usize, stride: usize, device: &Device) -> (Tensor<4>, Tensor<4>, Tensor<4>, ConvOptions<2>) {
    let out_side = (side + 2 - 3) / stride + 1;
    (
        Tensor::random([batch, cin, side, side], Distribution::Normal(0.0, 1.0), device),
        Tensor::random([cout, cin, 3, 3], Distribution::Normal(0.0, 0.1), device),
        Tensor::random([batch, cout, out_side, out_side], Distribution::Normal(0.0, 1.0), device),
        ConvOptions::new([stride, stride], [1, 1], [1, 1], 1),
    )
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let device = Device::flex();
    device.seed(0);
    let batch = 32;
    // (name, channels in, channels out, input side, stride) of ResNet-18's 3×3 convs at 96 px.
    let layers = [
        ("layer1 conv", 64, 64, 24, 1),
        ("layer2.0 conv1 (stride 2)", 64, 128, 24, 2),
        ("layer2 conv", 128, 128, 12, 1),
        ("layer3 conv", 256, 256, 6, 1),
        ("layer4 conv", 512, 512, 3, 1),
    ];
    println!("| 3×3 conv, batch {batch} | burn-flex weight gradient | per-image im2col + batched matmul, summed | ratio | one im2col + one matmul (K = B·Ho·Wo) | ratio | max rel. diff |");
    println!("|---|---:|---:|---:|---:|---:|---:|");
    for (name, cin, cout, side, stride) in layers {
        let (x, weight, grad, options) = operands(batch, cin, cout, side, stride, &device);
        let x_values: Vec<f32> = x.clone().into_data().try_to_vec().unwrap();
        let (mut default_s, mut probe_s, mut single_s) = (Vec::new(), Vec::new(), Vec::new());
        let (mut expected, mut got, mut single) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..5 {
            let start = Instant::now();
            expected = conv2d_weight_backward(x.clone(), weight.clone(), grad.clone(), options.clone())
                .into_data()
                .try_to_vec::<f32>()
                .unwrap();
            default_s.push(start.elapsed().as_secs_f64());

            let start = Instant::now();
            let (col, ho, wo) = im2col(&x_values, [batch, cin, side, side], 3, stride, 1);
            let col = Tensor::<3>::from_data(TensorData::new(col, [batch, cin * 9, ho * wo]), &device);
            let g = grad.clone().reshape([batch, cout, ho * wo]);
            // Σ_b G_b [Cout, L] · col_bᵀ [L, Cin·9]
            let dw = g.matmul(col.swap_dims(1, 2)).sum_dim(0).reshape([cout, cin, 3, 3]);
            got = dw.into_data().try_to_vec::<f32>().unwrap();
            probe_s.push(start.elapsed().as_secs_f64());

            // One gemm: G as [Cout, B·L] times the columns as [B·L, Cin·9].
            let start = Instant::now();
            let (col, ho, wo) = im2col(&x_values, [batch, cin, side, side], 3, stride, 1);
            let l = ho * wo;
            let col = Tensor::<3>::from_data(TensorData::new(col, [batch, cin * 9, l]), &device)
                .swap_dims(1, 2)
                .reshape([batch * l, cin * 9]);
            let g = grad.clone().reshape([batch, cout, l]).swap_dims(0, 1).reshape([cout, batch * l]);
            single = g.matmul(col).reshape([cout, cin, 3, 3]).into_data().try_to_vec::<f32>().unwrap();
            single_s.push(start.elapsed().as_secs_f64());
        }
        let scale = expected.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        let diff = got
            .iter()
            .chain(&single)
            .zip(expected.iter().chain(&expected))
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max)
            / scale;
        let (d, p, o) = (median(default_s), median(probe_s), median(single_s));
        println!(
            "| {name}: {cin}→{cout}, {side}² | {:.1} ms | {:.1} ms | {:.2}× | {:.1} ms | {:.2}× | {diff:.1e} |",
            d * 1e3,
            p * 1e3,
            d / p,
            o * 1e3,
            d / o
        );
    }

    // The gemm itself, on shapes these convolutions produce (compare `bench/matmul.py`).
    println!("\n| matmul M×K×N | burn-flex | GFLOP/s |\n|---|---:|---:|");
    for [m, k, n] in [[1024, 1024, 1024], [64, 576, 18432], [128, 1152, 4608], [512, 4608, 288]] {
        let a = Tensor::<2>::random([m, k], Distribution::Normal(0.0, 1.0), &device);
        let b = Tensor::<2>::random([k, n], Distribution::Normal(0.0, 1.0), &device);
        let times: Vec<f64> = (0..7)
            .map(|_| {
                let start = Instant::now();
                let _ = a.clone().matmul(b.clone()).into_data();
                start.elapsed().as_secs_f64()
            })
            .collect();
        let t = median(times);
        println!("| {m}×{k}×{n} | {:.1} ms | {:.1} |", t * 1e3, 2.0 * (m * k * n) as f64 / t / 1e9);
    }

    // Forward and both gradients of the same convolutions (compare `bench/matmul.py`).
    println!("\n| 3×3 conv, batch {batch} | forward | weight gradient | data gradient (conv_transpose2d) |\n|---|---:|---:|---:|");
    for (name, cin, cout, side, stride) in layers {
        let (x, weight, grad, options) = operands(batch, cin, cout, side, stride, &device);
        let time = |f: &dyn Fn()| {
            median(
                (0..7)
                    .map(|_| {
                        let start = Instant::now();
                        f();
                        start.elapsed().as_secs_f64() * 1e3
                    })
                    .collect(),
            )
        };
        let forward = time(&|| {
            let _ = burn::tensor::module::conv2d(x.clone(), weight.clone(), None, options.clone()).into_data();
        });
        let weight_grad = time(&|| {
            let _ = conv2d_weight_backward(x.clone(), weight.clone(), grad.clone(), options.clone()).into_data();
        });
        let transpose = ConvTransposeOptions::new([stride, stride], [1, 1], [stride - 1, stride - 1], [1, 1], 1);
        let data_grad = time(&|| {
            let dx = burn::tensor::module::conv_transpose2d(grad.clone(), weight.clone(), None, transpose.clone());
            assert_eq!(dx.dims(), [batch, cin, side, side]);
            let _ = dx.into_data();
        });
        println!("| {name}: {cin}→{cout}, {side}² | {forward:.1} ms | {weight_grad:.1} ms | {data_grad:.1} ms |");
    }

    // Attempt 2: the tiled weight gradient against burn-flex's.
    println!("\n| 3×3 conv, batch {batch} | burn-flex weight gradient | tiled im2col + accumulating gemm | ratio | max rel. diff |\n|---|---:|---:|---:|---:|");
    for (name, cin, cout, side, stride) in layers {
        let (x, weight, grad, options) = operands(batch, cin, cout, side, stride, &device);
        let (x_values, grad_values): (Vec<f32>, Vec<f32>) =
            (x.clone().into_data().try_to_vec().unwrap(), grad.clone().into_data().try_to_vec().unwrap());
        let (mut default_ms, mut tiled_ms, mut expected, mut got) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for _ in 0..7 {
            let start = Instant::now();
            expected = conv2d_weight_backward(x.clone(), weight.clone(), grad.clone(), options.clone())
                .into_data()
                .try_to_vec::<f32>()
                .unwrap();
            default_ms.push(start.elapsed().as_secs_f64() * 1e3);
            let start = Instant::now();
            got = weight_grad_tiled(&x_values, [batch, cin, side, side], &grad_values, cout, 3, stride, 1);
            tiled_ms.push(start.elapsed().as_secs_f64() * 1e3);
        }
        let scale = expected.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        let diff = got.iter().zip(&expected).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max) / scale;
        let (d, t) = (median(default_ms), median(tiled_ms));
        println!("| {name}: {cin}→{cout}, {side}² | {d:.1} ms | {t:.1} ms | {:.2}× | {diff:.1e} |", d / t);
    }
}
