//! Whole-image evaluation of a segmentation model.

use burn::module::Module;
use burn::tensor::{Device, Tensor};

use super::metrics::{ConfusionMatrix, SegMetrics};
use crate::data::{IGNORE_LABEL, SegDataset};
use crate::models::segmenter::Segmenter;
use crate::views::{FloatImage, batch_tensor};
use crate::{Error, Result};

/// Predicted class per pixel for a batch of images, in eval mode.
///
/// # Shapes
/// `[B, 3, H, W]` → B label maps of H·W
pub fn predict(model: &Segmenter, x: Tensor<4>) -> Vec<Vec<u8>> {
    let [b, _, h, w] = x.dims();
    let classes = model.forward(x).argmax(1); // [B, 1, H, W]
    let flat: Vec<u8> = classes.into_data().iter::<i64>().map(|c| c as u8).collect();
    flat.chunks(h * w).take(b).map(<[u8]>::to_vec).collect()
}

/// mIoU, pixel accuracy and per-class IoU of `model` over `dataset` (whole images; consecutive
/// images of one size are batched). `device` must be a plain (non-autodiff) device.
pub fn evaluate(model: &Segmenter, dataset: &SegDataset, batch_size: usize, device: &Device) -> Result<SegMetrics> {
    let model = model.valid();
    let mut matrix = ConfusionMatrix::new(dataset.num_classes);
    let samples = &dataset.samples;
    let mut start = 0;
    let bar = crate::train::progress::bar(samples.len(), "evaluate");
    while start < samples.len() {
        let dims = samples[start].image.dimensions();
        let mut end = start + 1;
        while end < samples.len() && end - start < batch_size.max(1) && samples[end].image.dimensions() == dims {
            end += 1;
        }
        let images: Vec<FloatImage> = samples[start..end]
            .iter()
            .map(|s| {
                let mut im = FloatImage::from_rgb(&s.image);
                im.normalize_imagenet();
                im
            })
            .collect();
        let predictions = predict(&model, batch_tensor(&images, device));
        for (i, prediction) in predictions.iter().enumerate() {
            matrix
                .update(prediction, samples[start + i].mask.as_raw(), IGNORE_LABEL)
                .map_err(|e| Error::Invalid(format!("{} sample {}: {e}", dataset.name, start + i)))?;
        }
        bar.inc((end - start) as u64);
        start = end;
    }
    bar.finish_and_clear();
    Ok(matrix.metrics())
}
