//! Probe for issue 9, attempt 3: the data gradient of a 3×3 convolution (dL/dx), which
//! burn-flex computes as a transposed convolution and which is up to 4.5× slower than
//! PyTorch's on small feature maps. Two formulations built from burn ops are timed against it:
//! 1. for stride 1, a forward convolution of the output gradient with the flipped,
//!    channel-swapped kernel (padding d·(k−1)−p), which reuses burn-flex's faster forward path;
//! 2. one batched matmul Wᵀ·G (`[Cin·9, Cout] × [B, Cout, L]`) and a col2im scatter.
//!
//! Shapes: ResNet-18's 3×3 convolutions at 96 px, batch 32 (the bench step), and the mini
//! protocol's (width 16, 48 px, batch 16, output stride 8 so layers 3–4 are dilated). Every
//! result is checked against burn's; ratios above 1 mean the alternative is faster.
//!
//!     cargo run --release --example conv_data_grad_probe

use std::time::Instant;

use burn::tensor::module::{conv_transpose2d, conv2d};
use burn::tensor::ops::{ConvOptions, ConvTransposeOptions};
use burn::tensor::{Device, Distribution, Tensor};
use rayon::prelude::*;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn time_ms(runs: usize, mut f: impl FnMut() -> Vec<f32>) -> (f64, Vec<f32>) {
    let mut out = Vec::new();
    let times = (0..runs)
        .map(|_| {
            let start = Instant::now();
            out = f();
            start.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    (median(times), out)
}

/// Columns `[B, Cin·k·k, Ho·Wo]` → image `[B, Cin, H, W]` (sum over overlapping taps).
#[allow(clippy::too_many_arguments)]
fn col2im(
    col: &[f32],
    [b, c, h, w]: [usize; 4],
    k: usize,
    stride: usize,
    pad: usize,
    dil: usize,
    ho: usize,
    wo: usize,
) -> Vec<f32> {
    let mut out = vec![0.0f32; b * c * h * w];
    out.par_chunks_mut(h * w)
        .enumerate()
        .for_each(|(bc, plane)| {
            let (bi, ci) = (bc / c, bc % c);
            for ky in 0..k {
                for kx in 0..k {
                    let row = ((bi * c + ci) * k + ky) * k + kx;
                    let src = &col[row * ho * wo..(row + 1) * ho * wo];
                    for oy in 0..ho {
                        let iy = (oy * stride + ky * dil) as isize - pad as isize;
                        if iy < 0 || iy >= h as isize {
                            continue;
                        }
                        for ox in 0..wo {
                            let ix = (ox * stride + kx * dil) as isize - pad as isize;
                            if ix >= 0 && ix < w as isize {
                                plane[iy as usize * w + ix as usize] += src[oy * wo + ox];
                            }
                        }
                    }
                }
            }
        });
    out
}

fn main() {
    let device = Device::flex();
    device.seed(0);
    // (name, batch, channels in, channels out, input side, stride, dilation)
    let layers = [
        ("R18 96px layer1", 32, 64, 64, 24, 1, 1),
        ("R18 96px layer2.0 conv1 (stride 2)", 32, 64, 128, 24, 2, 1),
        ("R18 96px layer2", 32, 128, 128, 12, 1, 1),
        ("R18 96px layer3", 32, 256, 256, 6, 1, 1),
        ("R18 96px layer4", 32, 512, 512, 3, 1, 1),
        ("mini layer1 (w16)", 16, 16, 16, 12, 1, 1),
        ("mini layer2 (w16)", 16, 32, 32, 6, 1, 1),
        ("mini layer3 (w16, dil 2)", 16, 64, 64, 6, 1, 2),
        ("mini layer4 (w16, dil 4)", 16, 128, 128, 6, 1, 4),
    ];
    println!(
        "| 3×3 conv | burn-flex (conv_transpose2d) | flipped-kernel forward conv | ratio | Wᵀ·G matmul + col2im | ratio | max rel. diff |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|");
    for (name, batch, cin, cout, side, stride, dil) in layers {
        let pad = dil;
        let out_side = (side + 2 * pad - dil * 2 - 1) / stride + 1;
        let weight =
            Tensor::<4>::random([cout, cin, 3, 3], Distribution::Normal(0.0, 0.1), &device);
        let grad = Tensor::<4>::random(
            [batch, cout, out_side, out_side],
            Distribution::Normal(0.0, 1.0),
            &device,
        );
        let padding_out = (side + 2 * pad - dil * 2 - 1) % stride;
        let transpose =
            ConvTransposeOptions::new([stride; 2], [pad; 2], [padding_out; 2], [dil; 2], 1);
        let (burn_ms, expected) = time_ms(7, || {
            let dx = conv_transpose2d(grad.clone(), weight.clone(), None, transpose.clone());
            assert_eq!(dx.dims(), [batch, cin, side, side]);
            dx.into_data().try_to_vec::<f32>().unwrap()
        });
        let (flip_ms, flipped) = if stride == 1 {
            let options = ConvOptions::new([1, 1], [dil * 2 - pad; 2], [dil; 2], 1);
            time_ms(7, || {
                let kernel = weight.clone().swap_dims(0, 1).flip([2, 3]);
                conv2d(grad.clone(), kernel, None, options.clone())
                    .into_data()
                    .try_to_vec::<f32>()
                    .unwrap()
            })
        } else {
            (f64::NAN, expected.clone())
        };
        let (gemm_ms, scattered) = time_ms(7, || {
            let l = out_side * out_side;
            let wt = weight
                .clone()
                .reshape([cout, cin * 9])
                .swap_dims(0, 1)
                .unsqueeze::<3>();
            let col = wt.matmul(grad.clone().reshape([batch, cout, l]));
            let col: Vec<f32> = col.into_data().try_to_vec::<f32>().unwrap();
            col2im(
                &col,
                [batch, cin, side, side],
                3,
                stride,
                pad,
                dil,
                out_side,
                out_side,
            )
        });
        let scale = expected.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        let diff = flipped
            .iter()
            .chain(&scattered)
            .zip(expected.iter().chain(&expected))
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max)
            / scale;
        println!(
            "| {name}: B{batch} {cin}→{cout}, {side}² | {burn_ms:.1} ms | {flip_ms:.1} ms | {:.2}× | {gemm_ms:.1} ms | {:.2}× | {diff:.1e} |",
            burn_ms / flip_ms,
            burn_ms / gemm_ms
        );
    }
}
