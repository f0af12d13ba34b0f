//! Evaluation of a segmentation model: predictions over a dataset (whole or sliding-window,
//! optional flip) accumulated into one confusion matrix.

use burn::module::Module;
use burn::tensor::{Device, Tensor};
use image::RgbImage;

use super::inference::InferenceConfig;
use super::metrics::{ConfusionMatrix, SegMetrics};
use crate::data::{IGNORE_LABEL, SegDataset};
use crate::models::segmenter::Segmenter;
use crate::views::{FloatImage, batch_tensor};
use crate::{Error, Result};

/// Predicted class per pixel for a batch of images (model in eval mode).
///
/// # Shapes
/// `[B, 3, H, W]` → B label maps of H·W
pub fn predict(model: &Segmenter, x: Tensor<4>, inference: &InferenceConfig) -> Vec<Vec<u8>> {
    let [b, _, h, w] = x.dims();
    let classes = inference.probabilities(model, x).argmax(1); // [B, 1, H, W]
    let flat: Vec<u8> = classes.into_data().iter::<i64>().map(|c| c as u8).collect();
    flat.chunks(h * w).take(b).map(<[u8]>::to_vec).collect()
}

/// Predicts every image in order, batching consecutive images of one size, and hands each
/// label map to `sink(index, labels)`. `device` must be a plain (non-autodiff) device.
pub fn predict_images(
    model: &Segmenter,
    images: &[&RgbImage],
    inference: &InferenceConfig,
    batch_size: usize,
    device: &Device,
    mut sink: impl FnMut(usize, Vec<u8>) -> Result<()>,
) -> Result<()> {
    inference.check()?;
    let model = model.valid();
    let bar = crate::train::progress::bar(images.len(), "predict");
    let mut start = 0;
    while start < images.len() {
        let dims = images[start].dimensions();
        let mut end = start + 1;
        while end < images.len() && end - start < batch_size.max(1) && images[end].dimensions() == dims {
            end += 1;
        }
        let batch: Vec<FloatImage> = images[start..end]
            .iter()
            .map(|image| {
                let mut im = FloatImage::from_rgb(image);
                im.normalize_imagenet();
                im
            })
            .collect();
        for (i, labels) in predict(&model, batch_tensor(&batch, device), inference).into_iter().enumerate() {
            sink(start + i, labels)?;
        }
        bar.inc((end - start) as u64);
        start = end;
    }
    bar.finish_and_clear();
    Ok(())
}

/// mIoU, pixel accuracy and per-class IoU of `model` over `dataset`.
pub fn evaluate(
    model: &Segmenter,
    dataset: &SegDataset,
    inference: &InferenceConfig,
    batch_size: usize,
    device: &Device,
) -> Result<SegMetrics> {
    let mut matrix = ConfusionMatrix::new(dataset.num_classes);
    let images: Vec<&RgbImage> = dataset.samples.iter().map(|s| &s.image).collect();
    predict_images(model, &images, inference, batch_size, device, |i, labels| {
        matrix
            .update(&labels, dataset.samples[i].mask.as_raw(), IGNORE_LABEL)
            .map_err(|e| Error::Invalid(format!("{} sample {i}: {e}", dataset.name)))
    })?;
    Ok(matrix.metrics())
}
