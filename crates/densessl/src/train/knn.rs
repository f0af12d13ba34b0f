//! A weighted k-nearest-neighbour monitor for pre-training (Wu et al. 2018, as MoCo and
//! mmselfsup use it): pooled, L2-normalised encoder features of a labelled train split form
//! the bank; each val image votes with its k most similar bank images, weighted by
//! exp(similarity / τ). An image's label is its dominant foreground class (on FashionScenes:
//! the item that covers the most pixels).

use burn::module::Module;
use burn::tensor::Device;
use serde::{Deserialize, Serialize};

use crate::data::{DataConfig, IGNORE_LABEL, SegDataset, Split};
use crate::models::features::preprocess;
use crate::models::resnet::ResNet;
use crate::pretext::losses::l2_normalize;
use crate::views::{FloatImage, batch_tensor};
use crate::{Error, Result};

/// Settings of the monitor (`[monitor]` in a pre-training config).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct KnnConfig {
    /// Run every this many steps (and at the end); 0 = off.
    pub every: usize,
    /// Neighbours that vote (20 in the literature at 200 classes; fewer for small banks).
    pub k: usize,
    /// Temperature of the vote weights.
    pub temperature: f64,
    /// At most this many bank (train) and query (val) images.
    pub max_images: usize,
}

impl Default for KnnConfig {
    fn default() -> Self {
        Self { every: 0, k: 20, temperature: 0.07, max_images: 1000 }
    }
}

/// Preprocessed labelled images and the classes they vote for.
pub struct KnnMonitor {
    config: KnnConfig,
    num_classes: usize,
    bank: (Vec<FloatImage>, Vec<usize>),
    queries: (Vec<FloatImage>, Vec<usize>),
}

/// The most frequent class other than background (0) and ignore (255), if any.
pub fn dominant_class(mask: &[u8]) -> Option<usize> {
    let mut counts = [0usize; 256];
    mask.iter().for_each(|&l| counts[l as usize] += 1);
    counts[0] = 0;
    counts[IGNORE_LABEL as usize] = 0;
    let (class, &n) = counts.iter().enumerate().max_by_key(|(_, n)| **n)?;
    (n > 0).then_some(class)
}

fn labelled(dataset: &SegDataset, size: usize, limit: usize) -> (Vec<FloatImage>, Vec<usize>) {
    dataset
        .samples
        .iter()
        .filter_map(|s| dominant_class(s.mask.as_raw()).map(|c| (preprocess(&s.image, size), c)))
        .take(limit)
        .unzip()
}

impl KnnMonitor {
    /// Loads the train (bank) and val (query) splits of `data` at `size` px.
    pub fn new(config: &KnnConfig, data: &DataConfig, size: usize) -> Result<Self> {
        let (train, val) = (data.load(Split::Train)?, data.load(Split::Val)?);
        let bank = labelled(&train, size, config.max_images);
        let queries = labelled(&val, size, config.max_images);
        if bank.0.is_empty() || queries.0.is_empty() {
            return Err(Error::Invalid(format!("{}: the kNN monitor found no labelled foreground to vote with", train.name)));
        }
        Ok(Self { config: config.clone(), num_classes: train.num_classes, bank, queries })
    }

    fn features(encoder: &ResNet, images: &[FloatImage], device: &Device) -> (Vec<f32>, usize) {
        let mut out = Vec::new();
        let mut dim = 0;
        for chunk in images.chunks(64) {
            let f = l2_normalize(encoder.forward_pooled(batch_tensor(chunk, device)));
            dim = f.dims()[1];
            out.extend(f.into_data().try_to_vec::<f32>().expect("float features"));
        }
        (out, dim)
    }

    /// Top-1 accuracy of the weighted kNN vote. `device` must be a plain device.
    pub fn accuracy(&self, encoder: &ResNet, device: &Device) -> f64 {
        let encoder = encoder.valid();
        let (bank, dim) = Self::features(&encoder, &self.bank.0, device);
        let (queries, _) = Self::features(&encoder, &self.queries.0, device);
        let n_bank = self.bank.1.len();
        let k = self.config.k.clamp(1, n_bank);
        let mut hits = 0;
        for (q, &truth) in queries.chunks(dim).zip(&self.queries.1) {
            let mut sims: Vec<(f32, usize)> = bank
                .chunks(dim)
                .zip(&self.bank.1)
                .map(|(b, &c)| (q.iter().zip(b).map(|(x, y)| x * y).sum(), c))
                .collect();
            sims.select_nth_unstable_by(k - 1, |a, b| b.0.total_cmp(&a.0));
            let mut votes = vec![0f64; self.num_classes.max(256)];
            for &(s, c) in &sims[..k] {
                votes[c] += (f64::from(s) / self.config.temperature).exp();
            }
            let predicted = votes.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).map(|(c, _)| c);
            hits += usize::from(predicted == Some(truth));
        }
        hits as f64 / self.queries.1.len() as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dominant_class_ignores_background_and_void() {
        assert_eq!(dominant_class(&[0, 0, 0, 3, 3, 5, 255, 255, 255, 255]), Some(3));
        assert_eq!(dominant_class(&[0, 255]), None);
    }

    #[test]
    fn knn_separates_colour_coded_classes() {
        // Class c images are one flat colour each, in different directions of RGB (flat
        // images of proportional colours would give proportional features): identical
        // features within a class, different across, so the vote is exact.
        let device = Device::flex();
        let encoder = crate::models::segmenter::EncoderConfig { base_width: 4, ..Default::default() }.resnet().unwrap().init(&device);
        let image = |c: usize| {
            let rgb = [[1.0, -1.0, 0.2], [-0.5, 0.3, 1.0], [0.1, 1.0, -1.0]][c - 1];
            FloatImage { height: 32, width: 32, data: rgb.iter().flat_map(|&v| vec![v; 32 * 32]).collect() }
        };
        let classes = [1usize, 2, 3, 1, 2, 3];
        let monitor = KnnMonitor {
            config: KnnConfig { k: 2, ..KnnConfig::default() },
            num_classes: 4,
            bank: (classes.iter().map(|&c| image(c)).collect(), classes.to_vec()),
            queries: (vec![image(2), image(3), image(1)], vec![2, 3, 1]),
        };
        assert_eq!(monitor.accuracy(&encoder, &device), 1.0);
    }
}
