//! Every pretext method learns: a few steps on one fixed batch with fixed views lower its
//! loss.
//!
//! This test is alone in its binary on purpose. Networks draw their initial weights from the
//! device's global generator, which every test thread of a binary shares. Beside other
//! tests, the seeded init depended on how their draws interleaved, and SimSiam's tiny
//! network sometimes drew one whose loss did not fall within 10 steps.

use burn::tensor::Device;
use densessl::models::segmenter::EncoderConfig;
use densessl::pretext::{build, BuildContext, Progress, METHODS};
use densessl::train::optim::OptimConfig;
use image::RgbImage;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

/// Every registered method builds from defaults plus small sizes, and a few steps on one
/// fixed batch with fixed views lower its loss. (MoCo's own test resets the queue between
/// measurements: with fixed views, last step's keys come back as hard negatives; the other
/// queue methods use a long queue at τ = 1 here for the same reason.)
#[test]
fn every_method_lowers_its_loss_on_a_fixed_batch() {
    let device = Device::flex().autodiff();
    // Dense methods see 4×4 C5 maps (output stride 8), the others a pooled C5.
    let global = EncoderConfig { base_width: 8, ..EncoderConfig::default() };
    let dense = EncoderConfig { output_stride: 8, ..global.clone() };
    let optim = OptimConfig { lr: 0.1, weight_decay: 0.0, ..OptimConfig::default() };
    let images: Vec<RgbImage> = (0..8u32)
        .map(|i| RgbImage::from_fn(40, 40, |x, y| image::Rgb([((x * (i + 1)) % 256) as u8, ((y * 7 + i * 30) % 256) as u8, (i * 31) as u8])))
        .collect();
    let batch: Vec<&RgbImage> = images.iter().collect();
    for (name, _) in METHODS.iter().filter(|(n, _)| !n.starts_with("moco")) {
        let settings: toml::Table = match *name {
            "simclr" => toml::toml! { dim = 16 hidden = 32 },
            "byol" => toml::toml! { dim = 16 hidden = 32 },
            "simsiam" => toml::toml! { dim = 32 pred_hidden = 8 },
            "plr" => toml::toml! { decoder = { channels = 16 } },
            // Queue methods: a long queue at τ = 1, so that last step's keys (the same
            // views again) weigh like any other negative.
            "edmoco" | "pledmoco" => toml::toml! {
                queue_size = 65536 dim = 16 temperature = 1.0 decoder = { channels = 16, dilation = 1 }
            },
            "plmoco" | "densecl" => toml::toml! { queue_size = 65536 dim = 16 temperature = 1.0 },
            "pixpro" => toml::toml! { dim = 16 hidden = 32 },
            _ => toml::Table::new(),
        };
        let encoder = if ["plr", "plmoco", "pledmoco", "densecl", "pixpro"].contains(name) { &dense } else { &global };
        let context = BuildContext { init: None, encoder, optim: &optim, view_size: 32, settings, device: &device };
        device.seed(7);
        let mut method = build(name, context).unwrap();
        let losses: Vec<f64> = (0..10)
            .map(|step| {
                // The same views every step: only the networks change.
                let mut rng = ChaCha8Rng::seed_from_u64(3);
                method.step(&batch, &mut rng, Progress { lr: 0.1, step, total: 10 }).unwrap().loss
            })
            .collect();
        assert!(losses.iter().all(|l| l.is_finite()), "{name}: {losses:?}");
        // Mean of the last three against the first: single steps are noisy (batch BN).
        let last = losses[7..].iter().sum::<f64>() / 3.0;
        assert!(last < losses[0], "{name}: loss did not fall: {losses:?}");
    }
}
