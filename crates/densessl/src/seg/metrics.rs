//! mIoU from one confusion matrix over the whole evaluation set (mmsegmentation's IoUMetric):
//! ignore label excluded; IoU = TP / (TP + FP + FN) per class; a class absent from both
//! prediction and ground truth has no IoU and is left out of the mean.

use serde::Serialize;

/// A `K × K` confusion matrix, rows = ground truth, columns = prediction.
#[derive(Debug, Clone, PartialEq)]
pub struct ConfusionMatrix {
    num_classes: usize,
    counts: Vec<u64>,
}

/// The metrics reported for a segmentation run.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct SegMetrics {
    /// Mean IoU over classes present in prediction or ground truth.
    pub miou: f64,
    /// Overall pixel accuracy.
    pub aacc: f64,
    /// Per-class IoU; `None` where the class is absent from both.
    pub iou: Vec<Option<f64>>,
}

impl ConfusionMatrix {
    /// An empty matrix for `num_classes` classes.
    pub fn new(num_classes: usize) -> Self {
        Self { num_classes, counts: vec![0; num_classes * num_classes] }
    }

    /// Adds one label map. Ground-truth pixels equal to `ignore` are skipped; a ground-truth
    /// value ≥ K (other than `ignore`) is an error, a predicted value ≥ K too.
    pub fn update(&mut self, prediction: &[u8], ground_truth: &[u8], ignore: u8) -> Result<(), String> {
        if prediction.len() != ground_truth.len() {
            return Err(format!("prediction has {} pixels, ground truth {}", prediction.len(), ground_truth.len()));
        }
        let k = self.num_classes;
        for (&p, &g) in prediction.iter().zip(ground_truth) {
            if g == ignore {
                continue;
            }
            let (p, g) = (p as usize, g as usize);
            if g >= k || p >= k {
                return Err(format!("label {} outside 0..{k} (and not the ignore label {ignore})", g.max(p)));
            }
            self.counts[g * k + p] += 1;
        }
        Ok(())
    }

    /// Adds another matrix's counts.
    pub fn merge(&mut self, other: &Self) {
        for (a, b) in self.counts.iter_mut().zip(&other.counts) {
            *a += b;
        }
    }

    /// Count of pixels with ground truth `g` predicted as `p`.
    pub fn get(&self, g: usize, p: usize) -> u64 {
        self.counts[g * self.num_classes + p]
    }

    /// IoU per class, mIoU and pixel accuracy.
    pub fn metrics(&self) -> SegMetrics {
        let k = self.num_classes;
        let mut iou = Vec::with_capacity(k);
        let (mut correct, mut total) = (0u64, 0u64);
        for c in 0..k {
            let tp = self.get(c, c);
            let gt: u64 = (0..k).map(|p| self.get(c, p)).sum();
            let pred: u64 = (0..k).map(|g| self.get(g, c)).sum();
            let union = gt + pred - tp;
            iou.push((union > 0).then(|| tp as f64 / union as f64));
            correct += tp;
            total += gt;
        }
        let present: Vec<f64> = iou.iter().flatten().copied().collect();
        let miou = if present.is_empty() { f64::NAN } else { present.iter().sum::<f64>() / present.len() as f64 };
        SegMetrics { miou, aacc: if total > 0 { correct as f64 / total as f64 } else { f64::NAN }, iou }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    #[test]
    fn hand_computed_case() {
        // gt:   0 0 1 1 255 2      pred: 0 1 1 1 2 0
        let mut m = ConfusionMatrix::new(4);
        m.update(&[0, 1, 1, 1, 2, 0], &[0, 0, 1, 1, 255, 2], 255).unwrap();
        let r = m.metrics();
        // class 0: tp 1, gt 2, pred 2 -> 1/3; class 1: tp 2, gt 2, pred 3 -> 2/3;
        // class 2: tp 0, gt 1, pred 0 -> 0; class 3: absent -> None.
        assert_eq!(r.iou, vec![Some(1.0 / 3.0), Some(2.0 / 3.0), Some(0.0), None]);
        assert!((r.miou - 1.0 / 3.0).abs() < 1e-12);
        assert!((r.aacc - 3.0 / 5.0).abs() < 1e-12);
    }

    #[test]
    fn out_of_range_labels_are_errors() {
        let mut m = ConfusionMatrix::new(3);
        assert!(m.update(&[0], &[7], 255).is_err());
        assert!(m.update(&[9], &[0], 255).is_err());
        assert!(m.update(&[0, 1], &[0], 255).is_err());
    }

    /// Property: the matrix route equals a brute-force per-class count on random maps,
    /// with ignore pixels and classes absent from both maps; merging equals one pass.
    #[test]
    fn equals_brute_force_on_random_maps() {
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        for _ in 0..50 {
            let k = rng.random_range(2..8);
            let n = rng.random_range(1..400);
            // Classes used: a random subset, so some classes are absent everywhere.
            let used = rng.random_range(1..=k);
            let gt: Vec<u8> = (0..n).map(|_| if rng.random_bool(0.1) { 255 } else { rng.random_range(0..used) as u8 }).collect();
            let pred: Vec<u8> = (0..n).map(|_| rng.random_range(0..used) as u8).collect();
            let mut m = ConfusionMatrix::new(k);
            let half = n / 2;
            m.update(&pred[..half], &gt[..half], 255).unwrap();
            let mut other = ConfusionMatrix::new(k);
            other.update(&pred[half..], &gt[half..], 255).unwrap();
            m.merge(&other);
            let r = m.metrics();
            let mut ious = Vec::new();
            for c in 0..k as u8 {
                let valid = |i: usize| gt[i] != 255;
                let inter = (0..n).filter(|&i| valid(i) && gt[i] == c && pred[i] == c).count();
                let union = (0..n).filter(|&i| valid(i) && (gt[i] == c || pred[i] == c)).count();
                let expected = (union > 0).then(|| inter as f64 / union as f64);
                assert_eq!(r.iou[c as usize], expected);
                ious.extend(expected);
            }
            if !ious.is_empty() {
                assert!((r.miou - ious.iter().sum::<f64>() / ious.len() as f64).abs() < 1e-12);
            }
            let valid = (0..n).filter(|&i| gt[i] != 255).count();
            let correct = (0..n).filter(|&i| gt[i] != 255 && gt[i] == pred[i]).count();
            if valid > 0 {
                assert!((r.aacc - correct as f64 / valid as f64).abs() < 1e-12);
            }
        }
    }
}
