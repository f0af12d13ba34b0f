//! Label PNGs: VOC palette PNGs (`SegmentationClass`) and single-channel PNGs
//! (`SegmentationClassAug`) are both read as raw class indices.

use std::fs::File;
use std::io::BufReader;
use std::path::Path;

use image::GrayImage;

use crate::{Error, Result};

/// The PASCAL VOC colour map: colour of class `i` from the bits of `i`.
pub fn voc_palette() -> [[u8; 3]; 256] {
    let mut palette = [[0u8; 3]; 256];
    for (i, colour) in palette.iter_mut().enumerate() {
        let mut c = i;
        for j in 0..8 {
            for (channel, value) in colour.iter_mut().enumerate() {
                *value |= (((c >> channel) & 1) as u8) << (7 - j);
            }
            c >>= 3;
        }
    }
    palette
}

/// Reads a label PNG as class indices: palette indices for indexed PNGs, grey values for
/// 8-bit greyscale PNGs. Any other colour type is an error (an RGB mask would be misread).
pub fn read_label_png(path: &Path) -> Result<GrayImage> {
    let file = File::open(path).map_err(|e| Error::io(path, e))?;
    let mut decoder = png::Decoder::new(BufReader::new(file));
    decoder.set_transformations(png::Transformations::IDENTITY);
    let mut reader = decoder.read_info().map_err(|e| Error::data(path, e.to_string()))?;
    let (color, depth) = reader.output_color_type();
    if depth != png::BitDepth::Eight
        || !matches!(color, png::ColorType::Indexed | png::ColorType::Grayscale)
    {
        return Err(Error::data(
            path,
            format!(
                "label PNG must be 8-bit indexed or greyscale, found {color:?} {depth:?}; \
                 colour masks must be converted to class indices first"
            ),
        ));
    }
    let size = reader
        .output_buffer_size()
        .ok_or_else(|| Error::data(path, "label PNG too large"))?;
    let mut buf = vec![0; size];
    let info = reader.next_frame(&mut buf).map_err(|e| Error::data(path, e.to_string()))?;
    buf.truncate(info.buffer_size());
    GrayImage::from_raw(info.width, info.height, buf)
        .ok_or_else(|| Error::data(path, "label PNG has an inconsistent size"))
}

/// Writes class indices as a VOC palette PNG (what `SegmentationClass/` holds).
pub fn write_palette_png(path: &Path, mask: &GrayImage) -> Result<()> {
    let mut bytes = Vec::new();
    {
        let mut encoder = png::Encoder::new(&mut bytes, mask.width(), mask.height());
        encoder.set_color(png::ColorType::Indexed);
        encoder.set_depth(png::BitDepth::Eight);
        let palette: Vec<u8> = voc_palette().iter().flatten().copied().collect();
        encoder.set_palette(palette);
        let mut writer = encoder.write_header().map_err(|e| Error::data(path, e.to_string()))?;
        writer.write_image_data(mask.as_raw()).map_err(|e| Error::data(path, e.to_string()))?;
    }
    crate::train::run_dir::write_atomic(path, &bytes)
}

/// Image, prediction and ground truth (if any) side by side, labels in VOC colours.
pub fn overlay_panel(image: &image::RgbImage, prediction: &GrayImage, truth: Option<&GrayImage>) -> image::RgbImage {
    let palette = voc_palette();
    let colour = |m: &GrayImage| {
        image::RgbImage::from_fn(m.width(), m.height(), |x, y| image::Rgb(palette[m.get_pixel(x, y).0[0] as usize]))
    };
    let mut panels = vec![image.clone(), colour(prediction)];
    if let Some(truth) = truth {
        panels.push(colour(truth));
    }
    let (w, h) = image.dimensions();
    let mut out = image::RgbImage::new(w * panels.len() as u32, h);
    for (k, panel) in panels.iter().enumerate() {
        image::imageops::replace(&mut out, panel, (k as u32 * w) as i64, 0);
    }
    out
}

/// Writes an RGB image as PNG, atomically.
pub fn write_rgb_png(path: &Path, image: &image::RgbImage) -> Result<()> {
    let mut bytes = std::io::Cursor::new(Vec::new());
    image.write_to(&mut bytes, image::ImageFormat::Png).map_err(|e| Error::data(path, e.to_string()))?;
    crate::train::run_dir::write_atomic(path, bytes.get_ref())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn palette_matches_voc() {
        let p = voc_palette();
        assert_eq!(p[0], [0, 0, 0]);
        assert_eq!(p[1], [128, 0, 0]);
        assert_eq!(p[2], [0, 128, 0]);
        assert_eq!(p[15], [192, 128, 128]);
        assert_eq!(p[255], [224, 224, 192]);
    }

    #[test]
    fn palette_png_round_trips_indices() {
        let dir = std::env::temp_dir().join(format!("densessl-labels-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("m.png");
        let mask = GrayImage::from_fn(7, 5, |x, y| image::Luma([((x + 3 * y) % 6) as u8]));
        let mut mask = mask;
        mask.put_pixel(0, 0, image::Luma([255]));
        write_palette_png(&path, &mask).unwrap();
        assert_eq!(read_label_png(&path).unwrap(), mask);
        // A decoder that expanded the palette would see RGB.
        let rgb = image::open(&path).unwrap().to_rgb8();
        assert_eq!(rgb.get_pixel(1, 0).0, voc_palette()[1]);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
