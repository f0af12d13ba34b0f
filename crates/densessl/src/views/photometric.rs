//! Photometric transforms on [`FloatImage`]s in [0, 1], following torchvision's definitions.

use super::FloatImage;

/// ITU-R 601 luma, as torchvision's `rgb_to_grayscale`.
fn luma(r: f32, g: f32, b: f32) -> f32 {
    0.299 * r + 0.587 * g + 0.114 * b
}

fn blend(image: &mut FloatImage, other: impl Fn(usize, usize) -> f32, factor: f32) {
    let n = image.height * image.width;
    for c in 0..3 {
        for i in 0..n {
            let v = &mut image.data[c * n + i];
            *v = (factor * *v + (1.0 - factor) * other(c, i)).clamp(0.0, 1.0);
        }
    }
}

fn grey_plane(image: &FloatImage) -> Vec<f32> {
    let (r, g, b) = (image.channel(0), image.channel(1), image.channel(2));
    (0..r.len()).map(|i| luma(r[i], g[i], b[i])).collect()
}

/// Multiplies by `factor` (torchvision `adjust_brightness`).
pub fn brightness(image: &mut FloatImage, factor: f32) {
    blend(image, |_, _| 0.0, factor);
}

/// Blends with the mean grey level (torchvision `adjust_contrast`).
pub fn contrast(image: &mut FloatImage, factor: f32) {
    let grey = grey_plane(image);
    let mean = grey.iter().sum::<f32>() / grey.len() as f32;
    blend(image, |_, _| mean, factor);
}

/// Blends with the greyscale image (torchvision `adjust_saturation`).
pub fn saturation(image: &mut FloatImage, factor: f32) {
    let grey = grey_plane(image);
    blend(image, |_, i| grey[i], factor);
}

/// Rotates hue by `shift` turns, `shift` in [-0.5, 0.5] (torchvision `adjust_hue`).
pub fn hue(image: &mut FloatImage, shift: f32) {
    let n = image.height * image.width;
    for i in 0..n {
        let (r, g, b) = (image.data[i], image.data[n + i], image.data[2 * n + i]);
        let (h, s, v) = rgb_to_hsv(r, g, b);
        let (r, g, b) = hsv_to_rgb((h + shift).rem_euclid(1.0), s, v);
        image.data[i] = r;
        image.data[n + i] = g;
        image.data[2 * n + i] = b;
    }
}

/// Inverts every value at or above `threshold` (torchvision `solarize` on floats).
pub fn solarize(image: &mut FloatImage, threshold: f32) {
    for v in &mut image.data {
        if *v >= threshold {
            *v = 1.0 - *v;
        }
    }
}

/// Replaces all three channels by luma.
pub fn grayscale(image: &mut FloatImage) {
    let grey = grey_plane(image);
    let n = grey.len();
    for c in 0..3 {
        image.data[c * n..(c + 1) * n].copy_from_slice(&grey);
    }
}

/// Separable Gaussian blur with standard deviation `sigma` (pixels), kernel radius ⌈3σ⌉,
/// reflect padding.
pub fn gaussian_blur(image: &mut FloatImage, sigma: f32) {
    let radius = (3.0 * sigma).ceil().max(1.0) as usize;
    let kernel: Vec<f32> = (-(radius as isize)..=radius as isize).map(|k| (-(k * k) as f32 / (2.0 * sigma * sigma)).exp()).collect();
    let total: f32 = kernel.iter().sum();
    let kernel: Vec<f32> = kernel.iter().map(|k| k / total).collect();
    let (h, w) = (image.height, image.width);
    if h == 0 || w == 0 {
        return;
    }
    // Where tap `i` (0..n + 2·radius) of a line lands, reflected at both ends (as often as a
    // line shorter than the radius needs).
    let reflected = |n: usize| -> Vec<usize> {
        (0..n + 2 * radius)
            .map(|i| {
                let (mut i, n) = (i as isize - radius as isize, n as isize);
                while i < 0 || i >= n {
                    i = if i < 0 { -i - 1 } else { 2 * n - i - 1 };
                }
                i as usize
            })
            .collect()
    };
    let (across, down) = (reflected(w), reflected(h));
    // Each output sums its taps in kernel order from 0.0, as a pixel-by-pixel loop would; the
    // taps run over whole lines (tap outer, pixel inner), so the sums vectorise.
    let n = h * w;
    let mut tmp = vec![0.0f32; n];
    let mut padded = vec![0.0f32; w + 2 * radius];
    for c in 0..3 {
        let plane = &mut image.data[c * n..(c + 1) * n];
        for (row, out) in plane.chunks_exact(w).zip(tmp.chunks_exact_mut(w)) {
            padded.iter_mut().zip(&across).for_each(|(p, &x)| *p = row[x]);
            out.fill(0.0);
            for (k, &weight) in kernel.iter().enumerate() {
                out.iter_mut().zip(&padded[k..]).for_each(|(o, &v)| *o += weight * v);
            }
        }
        for (y, out) in plane.chunks_exact_mut(w).enumerate() {
            out.fill(0.0);
            for (k, &weight) in kernel.iter().enumerate() {
                let source = &tmp[down[y + k] * w..][..w];
                out.iter_mut().zip(source).for_each(|(o, &v)| *o += weight * v);
            }
        }
    }
}

fn rgb_to_hsv(r: f32, g: f32, b: f32) -> (f32, f32, f32) {
    let max = r.max(g).max(b);
    let min = r.min(g).min(b);
    let delta = max - min;
    let s = if max > 0.0 { delta / max } else { 0.0 };
    let h = if delta == 0.0 {
        0.0
    } else if max == r {
        ((g - b) / delta).rem_euclid(6.0) / 6.0
    } else if max == g {
        ((b - r) / delta + 2.0) / 6.0
    } else {
        ((r - g) / delta + 4.0) / 6.0
    };
    (h, s, max)
}

fn hsv_to_rgb(h: f32, s: f32, v: f32) -> (f32, f32, f32) {
    let i = (h * 6.0).floor();
    let f = h * 6.0 - i;
    let (p, q, t) = (v * (1.0 - s), v * (1.0 - s * f), v * (1.0 - s * (1.0 - f)));
    match i as i32 % 6 {
        0 => (v, t, p),
        1 => (q, v, p),
        2 => (p, v, t),
        3 => (p, q, v),
        4 => (t, p, v),
        _ => (v, p, q),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> FloatImage {
        let data = (0..3 * 6 * 5).map(|i| ((i * 37) % 101) as f32 / 100.0).collect();
        FloatImage { height: 6, width: 5, data }
    }

    #[test]
    fn hsv_round_trips_and_zero_hue_shift_is_identity() {
        let mut im = sample();
        let before = im.clone();
        hue(&mut im, 0.0);
        for (a, b) in im.data.iter().zip(&before.data) {
            assert!((a - b).abs() < 1e-5);
        }
        hue(&mut im, 0.3);
        hue(&mut im, -0.3);
        for (a, b) in im.data.iter().zip(&before.data) {
            assert!((a - b).abs() < 1e-4);
        }
    }

    /// The blur as first written, pixel by pixel: the reference for the line-wise one.
    fn blur_pixel_by_pixel(image: &mut FloatImage, sigma: f32) {
        let radius = (3.0 * sigma).ceil().max(1.0) as isize;
        let kernel: Vec<f32> = (-radius..=radius).map(|k| (-(k * k) as f32 / (2.0 * sigma * sigma)).exp()).collect();
        let total: f32 = kernel.iter().sum();
        let kernel: Vec<f32> = kernel.iter().map(|k| k / total).collect();
        let (h, w) = (image.height as isize, image.width as isize);
        let reflect = |mut i: isize, n: isize| -> usize {
            while i < 0 || i >= n {
                i = if i < 0 { -i - 1 } else { 2 * n - i - 1 };
            }
            i as usize
        };
        let n = (h * w) as usize;
        let mut tmp = vec![0.0; n];
        for c in 0..3 {
            let plane = &mut image.data[c * n..(c + 1) * n];
            for y in 0..h {
                for x in 0..w {
                    let mut acc = 0.0;
                    for (k, weight) in kernel.iter().enumerate() {
                        acc += weight * plane[(y * w) as usize + reflect(x + k as isize - radius, w)];
                    }
                    tmp[(y * w + x) as usize] = acc;
                }
            }
            for y in 0..h {
                for x in 0..w {
                    let mut acc = 0.0;
                    for (k, weight) in kernel.iter().enumerate() {
                        acc += weight * tmp[reflect(y + k as isize - radius, h) * w as usize + x as usize];
                    }
                    plane[(y * w + x) as usize] = acc;
                }
            }
        }
    }

    /// Bit for bit the pixel-by-pixel blur, on lines longer and shorter than the radius.
    #[test]
    fn blur_equals_the_pixel_by_pixel_reference() {
        for ((height, width), sigma) in [((6, 5), 0.4), ((24, 31), 0.9), ((3, 40), 2.0), ((17, 2), 1.3), ((1, 1), 0.05), ((0, 4), 1.0)] {
            let data = (0..3 * height * width).map(|i| ((i * 7919) % 997) as f32 / 997.0).collect();
            let mut line_wise = FloatImage { height, width, data };
            let mut reference = line_wise.clone();
            gaussian_blur(&mut line_wise, sigma);
            blur_pixel_by_pixel(&mut reference, sigma);
            assert_eq!(line_wise, reference, "{height}×{width}, σ {sigma}");
        }
    }

    #[test]
    fn unit_factors_are_identity_and_blur_preserves_constants() {
        let mut im = sample();
        let before = im.clone();
        brightness(&mut im, 1.0);
        contrast(&mut im, 1.0);
        saturation(&mut im, 1.0);
        assert_eq!(im, before);
        let mut flat = FloatImage { height: 7, width: 9, data: vec![0.25; 3 * 63] };
        gaussian_blur(&mut flat, 1.5);
        assert!(flat.data.iter().all(|v| (v - 0.25).abs() < 1e-5));
        grayscale(&mut im);
        assert_eq!(im.channel(0), im.channel(2));
    }
}
