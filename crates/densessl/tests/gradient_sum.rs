//! A block input's gradient, which arrives more than once (from the block's first convolution
//! and from the residual addition or the shortcut's convolution) and which
//! `densessl::kernels::gradient_sum` sums where the kernels produce the arrivals: it must equal
//! the single-path gradients added up, for identity and projection blocks, channels-last and
//! NCHW inputs, an activation and a leaf input, and with a third reader that is one of
//! burn's own operations.

use burn::tensor::ops::ConvOptions;
use burn::tensor::{Device, Distribution, Tensor};
use densessl::kernels::batch_norm_relu::batch_norm_relu_batch_stats;
use densessl::kernels::conv2d;

mod kernel_parity;
use kernel_parity::{max_relative_difference, random_activation, values};

/// The sum of single-path gradients is taken after the stem convolution's data gradient
/// (linear, but rounded differently from the gradient of the sum): float32 rounding only.
const TOLERANCE: f32 = 1e-5;

const CHANNELS: usize = 16;

/// What reads the block's input besides its first convolution.
#[derive(Clone, Copy, Debug)]
enum Shortcut {
    /// The input itself is the residual.
    Identity,
    /// A 1×1 convolution of the input is the residual.
    Projection,
}

/// Which of the input's readers pass their gradient back: the first convolution, the
/// shortcut (the residual, or the projection's convolution), an extra `Σ x ⊙ s` of burn's.
type Paths = [bool; 3];

struct Block {
    stem: Tensor<4>,
    conv1: Tensor<4>,
    projection: Tensor<4>,
    gamma: Tensor<1>,
    beta: Tensor<1>,
    upstream: Tensor<4>,
    extra: Tensor<4>,
}

fn options(padding: usize) -> ConvOptions<2> {
    ConvOptions::new([1, 1], [padding, padding], [1, 1], 1)
}

impl Block {
    fn new(device: &Device) -> Self {
        let normal = |dims: [usize; 4], std: f64| Tensor::<4>::random(dims, Distribution::Normal(0.0, std), device);
        let activation = |mean: f64| random_activation([2, CHANNELS, 8, 8], Distribution::Normal(mean, 1.0), device, true);
        Self {
            stem: normal([CHANNELS, 3, 3, 3], 0.3),
            conv1: normal([CHANNELS, CHANNELS, 3, 3], 0.1),
            projection: normal([CHANNELS, CHANNELS, 1, 1], 0.3),
            gamma: Tensor::<1>::random([CHANNELS], Distribution::Normal(1.0, 0.3), device),
            beta: Tensor::<1>::random([CHANNELS], Distribution::Normal(0.0, 0.3), device),
            upstream: activation(0.0),
            extra: activation(0.5),
        }
    }

    /// The gradient of `image` (a leaf) through the block. With a stem the block's input is
    /// an activation (the stem convolution's channels-last output), else `image` itself.
    fn image_gradient(&self, image: &Tensor<4>, stem: bool, shortcut: Shortcut, paths: Paths) -> Vec<f32> {
        let image = image.clone().require_grad();
        let input = if stem { conv2d(image.clone(), self.stem.clone(), options(1)) } else { image.clone() };
        let reader = |passes: bool| if passes { input.clone() } else { input.clone().detach() };
        let y = conv2d(reader(paths[0]), self.conv1.clone(), options(1));
        let residual = match shortcut {
            Shortcut::Identity => reader(paths[1]),
            Shortcut::Projection => conv2d(reader(paths[1]), self.projection.clone(), options(0)),
        };
        let (out, _, _) = batch_norm_relu_batch_stats(y, self.gamma.clone(), self.beta.clone(), Some(residual), 1e-5);
        let mut loss = (out * self.upstream.clone()).sum();
        if paths[2] {
            loss = loss + (input.clone() * self.extra.clone()).sum();
        }
        let grads = loss.backward();
        values(image.grad(&grads).expect("the image's gradient"))
    }
}

/// The gradient through every path at once against the single-path gradients added up.
fn check(stem: bool, shortcut: Shortcut, extra_reader: bool) {
    let device = Device::flex().autodiff();
    let block = Block::new(&device);
    let image = if stem {
        random_activation([2, 3, 8, 8], Distribution::Normal(0.0, 1.0), &device, false)
    } else {
        random_activation([2, CHANNELS, 8, 8], Distribution::Normal(0.0, 1.0), &device, true)
    };
    let all = [true, true, extra_reader];
    let together = block.image_gradient(&image, stem, shortcut, all);
    let mut added = vec![0.0; together.len()];
    for path in (0..3).filter(|&p| all[p]) {
        let mut alone = [false; 3];
        alone[path] = true;
        let gradient = block.image_gradient(&image, stem, shortcut, alone);
        added.iter_mut().zip(gradient).for_each(|(sum, g)| *sum += g);
    }
    let difference = max_relative_difference(&together, &added);
    assert!(difference < TOLERANCE, "stem {stem}, {shortcut:?}, extra reader {extra_reader}: {difference}");
}

#[test]
fn an_identity_blocks_input_gradient_is_the_sum_of_its_paths() {
    check(true, Shortcut::Identity, false);
}

#[test]
fn a_projection_blocks_input_gradient_is_the_sum_of_its_paths() {
    check(true, Shortcut::Projection, false);
}

#[test]
fn a_third_reader_of_burns_adds_its_gradient() {
    check(true, Shortcut::Identity, true);
    check(true, Shortcut::Projection, true);
}

#[test]
fn a_leaf_input_sums_through_burn() {
    check(false, Shortcut::Identity, false);
    check(false, Shortcut::Projection, true);
}
