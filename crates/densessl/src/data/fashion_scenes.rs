//! FashionScenes: the mini benchmark. Fashion-MNIST items scaled, tinted, mirrored and
//! overlapping on textured backgrounds; each pixel is labelled with its item's class + 1
//! where the item covers it, 0 elsewhere (11 classes). Train and unlabeled scenes use only
//! Fashion-MNIST's train split, val scenes only its test split. Scene `i` of a stream
//! depends only on `(seed, stream, i)`.

use std::io::Read;
use std::path::{Path, PathBuf};

use image::{GrayImage, Luma, Rgb, RgbImage};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;

use super::SegSample;
use super::texture::{Texture, hash_noise};
use crate::{Error, Result};

/// Background + the 10 Fashion-MNIST classes.
pub const NUM_CLASSES: usize = 11;
/// Class names, index = label.
pub const CLASS_NAMES: [&str; NUM_CLASSES] = [
    "background", "t-shirt/top", "trouser", "pullover", "dress", "coat", "sandal", "shirt",
    "sneaker", "bag", "ankle-boot",
];
/// Where Debian's `dataset-fashion-mnist` package puts the IDX files.
pub const DEFAULT_SOURCE: &str = "/usr/share/datasets/fashion-mnist";
/// Side of a Fashion-MNIST item.
const ITEM: usize = 28;
/// Intensity from which an item pixel counts as covered (and is labelled); the item is drawn
/// opaque from there, so the label is exactly its visible silhouette.
const COVER_THRESHOLD: f32 = 0.1;

/// Which scenes: each stream is an independent sequence of scenes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    /// Labelled training scenes (items from Fashion-MNIST train).
    Train,
    /// Labelled validation scenes (items from Fashion-MNIST test).
    Val,
    /// Unlabeled pre-training scenes (items from Fashion-MNIST train).
    Unlabeled,
}

/// One split of Fashion-MNIST: 28×28 grey items and their classes 0–9.
#[derive(Debug, Clone)]
pub struct FashionMnist {
    /// `count × 784` intensities, row-major items.
    pub pixels: Vec<u8>,
    /// Class of each item, 0–9.
    pub labels: Vec<u8>,
}

impl FashionMnist {
    /// Reads `{prefix}-images-idx3-ubyte[.gz]` and `{prefix}-labels-idx1-ubyte[.gz]` from
    /// `dir`, where `prefix` is `train` or `t10k`.
    pub fn load(dir: &Path, prefix: &str) -> Result<Self> {
        let (dims, pixels) = read_idx(&find_idx(dir, &format!("{prefix}-images-idx3-ubyte"))?)?;
        let labels_path = find_idx(dir, &format!("{prefix}-labels-idx1-ubyte"))?;
        let (label_dims, labels) = read_idx(&labels_path)?;
        if dims.len() != 3 || dims[1] != ITEM || dims[2] != ITEM || label_dims != [dims[0]] {
            return Err(Error::data(
                dir,
                format!("expected {prefix} images N×28×28 and N labels, found {dims:?} and {label_dims:?}"),
            ));
        }
        if let Some(bad) = labels.iter().find(|&&l| l >= 10) {
            return Err(Error::data(&labels_path, format!("label {bad} is not a Fashion-MNIST class 0–9")));
        }
        Ok(Self { pixels, labels })
    }

    /// Number of items.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// Whether there are no items.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// Intensity of item `i` at integer position, 0 outside the item.
    fn at(&self, i: usize, x: isize, y: isize) -> f32 {
        if x < 0 || y < 0 || x >= ITEM as isize || y >= ITEM as isize {
            return 0.0;
        }
        f32::from(self.pixels[i * ITEM * ITEM + y as usize * ITEM + x as usize]) / 255.0
    }

    /// Bilinear intensity of item `i` at continuous position (pixel centres at `k + 0.5`).
    fn sample(&self, i: usize, u: f32, v: f32) -> f32 {
        let (fx, fy) = (u - 0.5, v - 0.5);
        let (x0, y0) = (fx.floor(), fy.floor());
        let (ax, ay) = (fx - x0, fy - y0);
        let (x0, y0) = (x0 as isize, y0 as isize);
        let top = self.at(i, x0, y0) * (1.0 - ax) + self.at(i, x0 + 1, y0) * ax;
        let bottom = self.at(i, x0, y0 + 1) * (1.0 - ax) + self.at(i, x0 + 1, y0 + 1) * ax;
        top * (1.0 - ay) + bottom * ay
    }
}

fn find_idx(dir: &Path, stem: &str) -> Result<PathBuf> {
    let candidates = [dir.join(format!("{stem}.gz")), dir.join(stem)];
    candidates.iter().find(|p| p.is_file()).cloned().ok_or_else(|| {
        Error::data(
            dir,
            format!(
                "Fashion-MNIST file {stem}.gz not found. Install it with \
                 `apt-get install dataset-fashion-mnist` (files land in {DEFAULT_SOURCE}), or download \
                 the four *-ubyte.gz files from https://github.com/zalandoresearch/fashion-mnist \
                 and pass their folder with --source DIR"
            ),
        )
    })
}

/// Reads an IDX file of unsigned bytes (gzip-compressed when the name ends in `.gz`):
/// returns its dimensions and data.
pub fn read_idx(path: &Path) -> Result<(Vec<usize>, Vec<u8>)> {
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut bytes = Vec::new();
    let read = if path.extension().is_some_and(|e| e == "gz") {
        flate2::read::GzDecoder::new(file).read_to_end(&mut bytes)
    } else {
        std::io::BufReader::new(file).read_to_end(&mut bytes)
    };
    read.map_err(|e| Error::data(path, format!("cannot read: {e}")))?;
    if bytes.len() < 4 || bytes[0] != 0 || bytes[1] != 0 || bytes[2] != 0x08 {
        return Err(Error::data(path, "not an IDX file of unsigned bytes (magic 0x0000 08 nn)"));
    }
    let ndim = bytes[3] as usize;
    let header = 4 + 4 * ndim;
    if bytes.len() < header {
        return Err(Error::data(path, "IDX header is truncated"));
    }
    let dims: Vec<usize> = (0..ndim)
        .map(|d| u32::from_be_bytes(bytes[4 + 4 * d..8 + 4 * d].try_into().unwrap()) as usize)
        .collect();
    let expected: usize = dims.iter().product();
    if bytes.len() - header != expected {
        return Err(Error::data(
            path,
            format!("IDX dimensions {dims:?} need {expected} bytes of data, file has {}", bytes.len() - header),
        ));
    }
    bytes.drain(..header);
    Ok((dims, bytes))
}

/// Generator settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FashionScenesConfig {
    /// Scene side in pixels (32–128).
    pub size: u32,
    /// Seed of the whole dataset.
    pub seed: u64,
}

impl FashionScenesConfig {
    /// Checks the settings with a sentence a user can act on.
    pub fn check(&self) -> Result<()> {
        if !(32..=128).contains(&self.size) {
            return Err(Error::Invalid(format!("FashionScenes are 32–128 px, got size {}", self.size)));
        }
        Ok(())
    }

    /// Scenes `0 .. count` of a stream, generated in parallel from `items` (Fashion-MNIST
    /// train for [`Stream::Train`] and [`Stream::Unlabeled`], test for [`Stream::Val`]).
    pub fn scenes(&self, items: &FashionMnist, stream: Stream, count: usize) -> Vec<SegSample> {
        (0..count as u64).into_par_iter().map(|i| self.scene(items, stream, i)).collect()
    }

    /// Scene number `index` of a stream.
    pub fn scene(&self, items: &FashionMnist, stream: Stream, index: u64) -> SegSample {
        let stream_key = match stream {
            Stream::Train => 0x51u64,
            Stream::Val => 0xA7,
            Stream::Unlabeled => 0xE3,
        };
        let mut rng = ChaCha8Rng::seed_from_u64(
            self.seed.wrapping_mul(0x9E37_79B9_7F4A_7C15)
                ^ index.wrapping_mul(0xD1B5_4A32_D192_ED03)
                ^ stream_key.wrapping_mul(0xA24B_AED4_963E_E407),
        );
        let s = self.size as f32;
        let background = Texture::random(&mut rng, 0.35);
        let background_noise: u32 = rng.random();
        let mut image = RgbImage::from_fn(self.size, self.size, |x, y| {
            let mut c = background.colour(x as f32 / s, y as f32 / s);
            let n = hash_noise(background_noise, x, y) * 16.0 - 8.0;
            c.iter_mut().for_each(|ch| *ch = (*ch as f32 + n).clamp(0.0, 255.0) as u8);
            Rgb(c)
        });
        let mut mask = GrayImage::new(self.size, self.size);
        for _ in 0..rng.random_range(2..=4) {
            let item = rng.random_range(0..items.len());
            let class = items.labels[item] + 1;
            let side = rng.random_range(0.38..0.62) * s;
            let (cx, cy) = (rng.random_range(0.15..0.85) * s, rng.random_range(0.15..0.85) * s);
            let mirror = rng.random_bool(0.5);
            let tint = [0; 3].map(|_| rng.random_range(40.0f32..255.0));
            let shade = rng.random_range(0.35f32..0.6);
            let noise_seed: u32 = rng.random();
            let (left, top) = (cx - side / 2.0, cy - side / 2.0);
            let x_range = (left.floor().max(0.0) as u32)..((left + side).ceil().min(s) as u32);
            let y_range = (top.floor().max(0.0) as u32)..((top + side).ceil().min(s) as u32);
            // Painter's order: later items occlude earlier ones, and the label follows.
            for y in y_range {
                for x in x_range.clone() {
                    let mut u = (x as f32 + 0.5 - left) / side * ITEM as f32;
                    let v = (y as f32 + 0.5 - top) / side * ITEM as f32;
                    if mirror {
                        u = ITEM as f32 - u;
                    }
                    let intensity = items.sample(item, u, v);
                    // Anti-aliased edge: transparent below half the threshold, opaque from it.
                    let alpha = ((intensity - 0.5 * COVER_THRESHOLD) / (0.5 * COVER_THRESHOLD)).clamp(0.0, 1.0);
                    if alpha <= 0.0 {
                        continue;
                    }
                    let n = hash_noise(noise_seed, x, y) * 20.0 - 10.0;
                    let old = image.get_pixel(x, y).0;
                    let shading = shade + (1.0 - shade) * intensity;
                    let new = [0, 1, 2].map(|c| {
                        let item_colour = tint[c] * shading + n;
                        (old[c] as f32 * (1.0 - alpha) + item_colour * alpha).clamp(0.0, 255.0) as u8
                    });
                    image.put_pixel(x, y, Rgb(new));
                    if intensity >= COVER_THRESHOLD {
                        mask.put_pixel(x, y, Luma([class]));
                    }
                }
            }
        }
        SegSample { image, mask }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tiny synthetic stand-in for Fashion-MNIST: item i is a filled square of class i % 10.
    fn toy_items() -> FashionMnist {
        let mut pixels = vec![0u8; 20 * ITEM * ITEM];
        for i in 0..20 {
            for y in 6..22 {
                for x in 6..22 {
                    pixels[i * ITEM * ITEM + y * ITEM + x] = 200;
                }
            }
        }
        FashionMnist { pixels, labels: (0..20).map(|i| (i % 10) as u8).collect() }
    }

    #[test]
    fn idx_round_trip_and_errors() {
        let dir = std::env::temp_dir().join(format!("densessl-idx-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut bytes = vec![0, 0, 8, 2, 0, 0, 0, 2, 0, 0, 0, 3];
        bytes.extend(1..=6u8);
        let path = dir.join("x-ubyte");
        std::fs::write(&path, &bytes).unwrap();
        assert_eq!(read_idx(&path).unwrap(), (vec![2, 3], (1..=6).collect()));
        std::fs::write(&path, &bytes[..bytes.len() - 1]).unwrap();
        let err = read_idx(&path).unwrap_err().to_string();
        assert!(err.contains("x-ubyte") && err.contains("6 bytes"), "{err}");
        let err = FashionMnist::load(&dir, "train").unwrap_err().to_string();
        assert!(err.contains("apt-get install dataset-fashion-mnist"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn scenes_are_deterministic_and_labels_follow_items() {
        let items = toy_items();
        let g = FashionScenesConfig { size: 48, seed: 5 };
        let a = g.scenes(&items, Stream::Train, 6);
        let b = g.scenes(&items, Stream::Train, 6);
        let mut seen = [0usize; NUM_CLASSES];
        for (x, y) in a.iter().zip(&b) {
            assert_eq!(x.image, y.image);
            assert_eq!(x.mask, y.mask);
            x.mask.pixels().for_each(|p| seen[p.0[0] as usize] += 1);
        }
        assert!(seen[0] > 0 && seen[1..].iter().filter(|&&n| n > 0).count() >= 3, "{seen:?}");
        assert_ne!(a[0].image, g.scene(&items, Stream::Val, 0).image);
        assert_ne!(a[0].image, g.scene(&items, Stream::Unlabeled, 0).image);
    }
}
