//! PASCAL VOC-format trees: `JPEGImages/<id>.jpg`, `SegmentationClass/<id>.png`
//! (or `SegmentationClassAug/<id>.png`), `ImageSets/Segmentation/<split>.txt`.

use std::path::{Path, PathBuf};

use rayon::prelude::*;

use super::labels::{read_label_png, write_palette_png};
use super::SegSample;
use crate::train::run_dir::write_atomic;
use crate::{Error, Result};

/// Label folders, in the order tried for ordinary splits; `*aug*` splits try them reversed.
const LABEL_DIRS: [&str; 2] = ["SegmentationClass", "SegmentationClassAug"];
/// Where split lists live, relative to the VOC root, in the order tried.
const LIST_DIRS: [&str; 4] = ["ImageSets/Segmentation", "ImageSets/SegmentationAug", "list", ""];

/// One listed sample: its id and where its image and mask are.
#[derive(Debug, Clone, PartialEq)]
pub struct SplitEntry {
    /// The id (file stem), e.g. `2007_000032`.
    pub id: String,
    /// The image file.
    pub image: PathBuf,
    /// The label PNG.
    pub mask: PathBuf,
}

/// Finds the folder that holds `JPEGImages/`: `root` itself, `root/VOC2012` or
/// `root/VOCdevkit/VOC2012` (the layouts of the official tarball and mmseg's converter).
pub fn resolve_root(root: &Path) -> Result<PathBuf> {
    for candidate in [root.to_path_buf(), root.join("VOC2012"), root.join("VOCdevkit/VOC2012")] {
        if candidate.join("JPEGImages").is_dir() {
            return Ok(candidate);
        }
    }
    Err(Error::data(
        root,
        "not a VOC-format tree: no JPEGImages/ here, in VOC2012/ or in VOCdevkit/VOC2012/",
    ))
}

/// Split names that mean the same list: mmseg's converter writes `aug.txt` for what the
/// SegmentationClassAug archive calls `train_aug.txt`.
fn split_aliases(split: &str) -> Vec<String> {
    match split {
        "train_aug" => vec!["train_aug".into(), "aug".into(), "trainaug".into()],
        "aug" => vec!["aug".into(), "train_aug".into()],
        other => vec![other.to_string()],
    }
}

/// The list file of a split, searched in [`LIST_DIRS`] under each alias of its name.
pub fn find_split_list(root: &Path, split: &str) -> Result<PathBuf> {
    let mut tried = Vec::new();
    for name in split_aliases(split) {
        for dir in LIST_DIRS {
            let path = root.join(dir).join(format!("{name}.txt"));
            if path.is_file() {
                return Ok(path);
            }
            tried.push(path.strip_prefix(root).unwrap_or(&path).display().to_string());
        }
    }
    Err(Error::data(root, format!("no list for split '{split}'; looked for {}", tried.join(", "))))
}

/// The ids listed in a split's list file.
pub fn read_split(root: &Path, split: &str) -> Result<Vec<String>> {
    Ok(split_entries(root, split)?.into_iter().map(|e| e.id).collect())
}

/// The entries of a split. List lines are either an id (`2007_000032`) or an image and mask
/// path relative to the root (`/JPEGImages/2007_000032.jpg /SegmentationClassAug/2007_000032.png`,
/// the DeepLab list format). `root` may be any layout [`resolve_root`] accepts.
pub fn split_entries(root: &Path, split: &str) -> Result<Vec<SplitEntry>> {
    let root = resolve_root(root)?;
    let list = find_split_list(&root, split)?;
    let text = std::fs::read_to_string(&list).map_err(|e| Error::io(&list, e))?;
    let mut label_dirs: Vec<PathBuf> = LABEL_DIRS.iter().map(|d| root.join(d)).collect();
    if split.contains("aug") {
        label_dirs.reverse();
    }
    let mut entries = Vec::new();
    for (number, line) in text.lines().enumerate() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let entry = match fields.as_slice() {
            [] => continue,
            [id] => SplitEntry {
                id: id.to_string(),
                image: image_path(&root, id),
                mask: label_dirs
                    .iter()
                    .map(|d| d.join(format!("{id}.png")))
                    .find(|p| p.is_file())
                    .unwrap_or_else(|| label_dirs[0].join(format!("{id}.png"))),
            },
            [image, mask] => {
                let image = root.join(image.trim_start_matches('/'));
                let id = image.file_stem().and_then(|s| s.to_str()).unwrap_or_default().to_string();
                SplitEntry { id, image, mask: root.join(mask.trim_start_matches('/')) }
            }
            _ => {
                return Err(Error::data(
                    &list,
                    format!("line {}: expected an id or 'image mask', found {line:?}", number + 1),
                ));
            }
        };
        entries.push(entry);
    }
    Ok(entries)
}

/// Loads every image and mask of a split; all bad files are reported together, including
/// masks with labels outside `0..num_classes` and 255 (when `num_classes` is given).
pub fn load_split(root: &Path, split: &str, num_classes: Option<usize>) -> Result<Vec<SegSample>> {
    let entries = split_entries(root, split)?;
    let results: Vec<Result<SegSample>> = entries
        .par_iter()
        .map(|entry| {
            let sample = load_sample(entry)?;
            if let Some(classes) = num_classes
                && let Some(bad) = sample.mask.pixels().map(|p| p.0[0]).find(|&l| usize::from(l) >= classes && l != super::IGNORE_LABEL)
            {
                return Err(Error::data(
                    &entry.mask,
                    format!("label {bad} is outside the {classes} classes (0..{}, and 255 = ignore); check num_classes or classes.txt", classes - 1),
                ));
            }
            Ok(sample)
        })
        .collect();
    super::image_folder::collect_all(root, results)
        .map_err(|e| Error::Invalid(format!("split '{split}' of {e}")))
}

fn image_path(root: &Path, id: &str) -> PathBuf {
    let png = root.join("JPEGImages").join(format!("{id}.png"));
    if png.exists() { png } else { root.join("JPEGImages").join(format!("{id}.jpg")) }
}

/// Reads one listed sample, checking that image and mask have the same size.
pub fn load_sample(entry: &SplitEntry) -> Result<SegSample> {
    let image = super::image_folder::decode_rgb(&entry.image)?;
    let mask = read_label_png(&entry.mask)?;
    if mask.dimensions() != image.dimensions() {
        return Err(Error::data(
            &entry.mask,
            format!("mask is {:?} but its image is {:?}", mask.dimensions(), image.dimensions()),
        ));
    }
    Ok(SegSample { image, mask })
}

/// Writes `classes.txt` (one class name per line), which sets the tree's number of classes.
pub fn write_classes(root: &Path, names: &[&str]) -> Result<()> {
    std::fs::create_dir_all(root).map_err(|e| Error::io(root, e))?;
    write_atomic(&root.join("classes.txt"), format!("{}\n", names.join("\n")).as_bytes())
}

/// Writes images as `<prefix>_<index:06>.jpg` (quality 95) into `dir`.
pub fn write_image_folder(dir: &Path, prefix: &str, images: &[image::RgbImage]) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    images.par_iter().enumerate().try_for_each(|(i, image)| {
        write_jpeg(&dir.join(format!("{prefix}_{i:06}.jpg")), image)
    })
}

fn write_jpeg(path: &Path, image: &image::RgbImage) -> Result<()> {
    let mut bytes = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut bytes, 95)
        .encode_image(image)
        .map_err(|e| Error::data(path, e.to_string()))?;
    write_atomic(path, &bytes)
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
            write_jpeg(&root.join("JPEGImages").join(format!("{id}.jpg")), &sample.image)?;
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
        let back = load_split(&root, "train", None).unwrap();
        assert_eq!(back.len(), 5);
        for (a, b) in train.iter().zip(&back) {
            assert_eq!(a.mask, b.mask);
            // JPEG is lossy but close.
            let diff: f64 = a.image.as_raw().iter().zip(b.image.as_raw())
                .map(|(&x, &y)| (x as f64 - y as f64).abs()).sum::<f64>() / a.image.as_raw().len() as f64;
            assert!(diff < 12.0, "mean abs JPEG error {diff}");
        }
        assert_eq!(load_split(&root, "val", None).unwrap().len(), 2);
        // A missing image is reported with its path.
        std::fs::remove_file(root.join("JPEGImages/train_000002.jpg")).unwrap();
        let err = load_split(&root, "train", None).unwrap_err().to_string();
        assert!(err.contains("train_000002"), "{err}");
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn reads_vocaug_layouts_of_mmseg_and_the_deeplab_archive() {
        let base = std::env::temp_dir().join(format!("densessl-vocaug-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        let root = base.join("VOCdevkit/VOC2012");
        for d in ["JPEGImages", "SegmentationClass", "SegmentationClassAug", "ImageSets/Segmentation", "list"] {
            std::fs::create_dir_all(root.join(d)).unwrap();
        }
        let image = image::RgbImage::from_pixel(6, 4, image::Rgb([10, 20, 30]));
        let grey = image::GrayImage::from_fn(6, 4, |x, _| image::Luma([x as u8 % 3]));
        for id in ["a", "b", "c"] {
            image.save(root.join(format!("JPEGImages/{id}.jpg"))).unwrap();
            // SegmentationClassAug holds single-channel PNGs.
            grey.save(root.join(format!("SegmentationClassAug/{id}.png"))).unwrap();
        }
        // VOC's own palette mask for one id, differing from the Aug one.
        let palette_mask = image::GrayImage::from_pixel(6, 4, image::Luma([1]));
        write_palette_png(&root.join("SegmentationClass/a.png"), &palette_mask).unwrap();
        std::fs::write(root.join("ImageSets/Segmentation/aug.txt"), "a\nb\n\nc\n").unwrap();
        std::fs::write(root.join("ImageSets/Segmentation/val.txt"), "a\n").unwrap();
        std::fs::write(
            root.join("list/pairs.txt"),
            "/JPEGImages/b.jpg /SegmentationClassAug/b.png\n/JPEGImages/c.jpg /SegmentationClassAug/c.png\n",
        )
        .unwrap();
        // mmseg layout: the base folder resolves to VOCdevkit/VOC2012; train_aug finds aug.txt.
        let aug = load_split(&base, "train_aug", None).unwrap();
        assert_eq!(aug.len(), 3);
        assert!(aug.iter().all(|s| s.mask == grey), "aug splits prefer SegmentationClassAug");
        let val = load_split(&base, "val", None).unwrap();
        assert_eq!(val[0].mask, palette_mask, "ordinary splits prefer SegmentationClass");
        // DeepLab list format: image and mask paths per line.
        let pairs = split_entries(&base, "pairs").unwrap();
        assert_eq!(pairs.iter().map(|e| e.id.as_str()).collect::<Vec<_>>(), ["b", "c"]);
        assert_eq!(load_split(&base, "pairs", None).unwrap()[1].mask, grey);
        // Errors name what is wrong.
        let err = load_split(&base, "test", None).unwrap_err().to_string();
        assert!(err.contains("no list for split 'test'"), "{err}");
        std::fs::write(root.join("list/bad.txt"), "a b c\n").unwrap();
        let err = split_entries(&base, "bad").unwrap_err().to_string();
        assert!(err.contains("bad.txt") && err.contains("line 1"), "{err}");
        assert!(resolve_root(&base.join("VOCdevkit")).is_ok());
        assert!(resolve_root(&root.join("list")).is_err());
        std::fs::remove_dir_all(&base).unwrap();
    }
}
