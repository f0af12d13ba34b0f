//! PASCAL VOC-format trees: `JPEGImages/<id>.jpg`, `SegmentationClass/<id>.png`
//! (or `SegmentationClassAug/<id>.png`), `ImageSets/Segmentation/<split>.txt`.

use std::path::{Path, PathBuf};

use rayon::prelude::*;

use super::labels::{read_label_png, write_palette_png};
use super::SegSample;
use crate::train::run_dir::write_atomic;
use crate::{Error, Result};

/// Label folders tried in order.
const LABEL_DIRS: [&str; 2] = ["SegmentationClass", "SegmentationClassAug"];

/// The ids listed in `ImageSets/Segmentation/<split>.txt`.
pub fn read_split(root: &Path, split: &str) -> Result<Vec<String>> {
    let path = root.join("ImageSets/Segmentation").join(format!("{split}.txt"));
    let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
    Ok(text.lines().map(str::trim).filter(|l| !l.is_empty()).map(str::to_string).collect())
}

/// Loads every image and mask of a split; all bad files are reported together.
pub fn load_split(root: &Path, split: &str) -> Result<Vec<SegSample>> {
    let ids = read_split(root, split)?;
    let label_dir = LABEL_DIRS
        .iter()
        .map(|d| root.join(d))
        .find(|d| d.is_dir())
        .ok_or_else(|| {
            Error::data(root, "no SegmentationClass/ or SegmentationClassAug/ folder")
        })?;
    let results: Vec<Result<SegSample>> =
        ids.par_iter().map(|id| load_sample(root, &label_dir, id)).collect();
    let mut samples = Vec::with_capacity(results.len());
    let mut errors = Vec::new();
    for r in results {
        match r {
            Ok(s) => samples.push(s),
            Err(e) => errors.push(e.to_string()),
        }
    }
    if !errors.is_empty() {
        return Err(Error::data(
            root,
            format!("{} bad sample(s) in split '{split}':\n  {}", errors.len(), errors.join("\n  ")),
        ));
    }
    Ok(samples)
}

fn image_path(root: &Path, id: &str) -> PathBuf {
    let jpg = root.join("JPEGImages").join(format!("{id}.jpg"));
    if jpg.exists() { jpg } else { root.join("JPEGImages").join(format!("{id}.png")) }
}

fn load_sample(root: &Path, label_dir: &Path, id: &str) -> Result<SegSample> {
    let path = image_path(root, id);
    let image = image::open(&path).map_err(|e| Error::data(&path, e.to_string()))?.to_rgb8();
    let mask_path = label_dir.join(format!("{id}.png"));
    let mask = read_label_png(&mask_path)?;
    if mask.dimensions() != image.dimensions() {
        return Err(Error::data(
            &mask_path,
            format!("mask is {:?} but its image is {:?}", mask.dimensions(), image.dimensions()),
        ));
    }
    Ok(SegSample { image, mask })
}

/// Writes labelled splits as a VOC tree: JPEG images (quality 95), palette-PNG masks, split lists.
/// Ids are `<split>_<index:06>`. Deterministic: the same samples give the same bytes.
pub fn write_tree(root: &Path, splits: &[(&str, &[SegSample])]) -> Result<()> {
    for dir in ["JPEGImages", "SegmentationClass", "ImageSets/Segmentation"] {
        std::fs::create_dir_all(root.join(dir)).map_err(|e| Error::io(root.join(dir), e))?;
    }
    for (split, samples) in splits {
        let ids: Vec<String> = (0..samples.len()).map(|i| format!("{split}_{i:06}")).collect();
        ids.par_iter().zip(samples.par_iter()).try_for_each(|(id, sample)| {
            let path = root.join("JPEGImages").join(format!("{id}.jpg"));
            let mut bytes = Vec::new();
            image::codecs::jpeg::JpegEncoder::new_with_quality(&mut bytes, 95)
                .encode_image(&sample.image)
                .map_err(|e| Error::data(&path, e.to_string()))?;
            write_atomic(&path, &bytes)?;
            write_palette_png(&root.join("SegmentationClass").join(format!("{id}.png")), &sample.mask)
        })?;
        let list = root.join("ImageSets/Segmentation").join(format!("{split}.txt"));
        write_atomic(&list, format!("{}\n", ids.join("\n")).as_bytes())?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::procedural::ProceduralConfig;

    #[test]
    fn written_tree_reads_back_with_identical_masks() {
        let root = std::env::temp_dir().join(format!("densessl-voc-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let g = ProceduralConfig { size: 40, seed: 3 };
        let train = g.scenes(0, 5);
        let val = g.scenes(100, 2);
        write_tree(&root, &[("train", &train), ("val", &val)]).unwrap();
        let back = load_split(&root, "train").unwrap();
        assert_eq!(back.len(), 5);
        for (a, b) in train.iter().zip(&back) {
            assert_eq!(a.mask, b.mask);
            // JPEG is lossy but close.
            let diff: f64 = a.image.as_raw().iter().zip(b.image.as_raw())
                .map(|(&x, &y)| (x as f64 - y as f64).abs()).sum::<f64>() / a.image.as_raw().len() as f64;
            assert!(diff < 12.0, "mean abs JPEG error {diff}");
        }
        assert_eq!(load_split(&root, "val").unwrap().len(), 2);
        // A missing image is reported with its path.
        std::fs::remove_file(root.join("JPEGImages/train_000002.jpg")).unwrap();
        let err = load_split(&root, "train").unwrap_err().to_string();
        assert!(err.contains("train_000002"), "{err}");
        std::fs::remove_dir_all(&root).unwrap();
    }
}
