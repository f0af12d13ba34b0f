//! Unlabeled image folders for pre-training: every `.jpg`, `.jpeg`, `.png` and `.webp` file
//! below a root, recursively, in sorted path order (so runs are reproducible).

use std::path::{Path, PathBuf};

use image::RgbImage;
use rayon::prelude::*;

use crate::{Error, Result};

/// File extensions read as images (case-insensitive).
pub const IMAGE_EXTENSIONS: [&str; 4] = ["jpg", "jpeg", "png", "webp"];

/// All image files below `root`, sorted. Hidden entries (names starting with `.`) are skipped.
pub fn list_images(root: &Path) -> Result<Vec<PathBuf>> {
    if !root.is_dir() {
        return Err(Error::data(root, "is not a folder of images"));
    }
    let mut found = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).map_err(|e| Error::io(&dir, e))? {
            let path = entry.map_err(|e| Error::io(&dir, e))?.path();
            if path.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with('.')) {
                continue;
            }
            if path.is_dir() {
                stack.push(path);
            } else if is_image(&path) {
                found.push(path);
            }
        }
    }
    found.sort();
    Ok(found)
}

fn is_image(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| IMAGE_EXTENSIONS.iter().any(|x| x.eq_ignore_ascii_case(e)))
}

/// Decodes every image below `root` to RGB. Every file that fails is named in one error.
pub fn load_images(root: &Path) -> Result<Vec<RgbImage>> {
    let paths = list_images(root)?;
    if paths.is_empty() {
        return Err(Error::data(
            root,
            format!("contains no images (looked for {} files, recursively)", IMAGE_EXTENSIONS.join("/")),
        ));
    }
    let results: Vec<Result<RgbImage>> = paths.par_iter().map(|p| decode_rgb(p)).collect();
    collect_all(root, results)
}

/// Decodes one image file to RGB, naming the file on failure.
pub fn decode_rgb(path: &Path) -> Result<RgbImage> {
    if !path.is_file() {
        return Err(Error::data(path, "image file is missing"));
    }
    Ok(image::open(path).map_err(|e| Error::data(path, format!("cannot decode image: {e}")))?.to_rgb8())
}

/// Unwraps per-file results, or returns one error listing every failure.
pub(crate) fn collect_all<T>(root: &Path, results: Vec<Result<T>>) -> Result<Vec<T>> {
    let mut ok = Vec::with_capacity(results.len());
    let mut errors = Vec::new();
    for r in results {
        match r {
            Ok(v) => ok.push(v),
            Err(e) => errors.push(e.to_string()),
        }
    }
    if errors.is_empty() {
        Ok(ok)
    } else {
        Err(Error::data(root, format!("{} bad file(s):\n  {}", errors.len(), errors.join("\n  "))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_images_recursively_in_sorted_order_and_names_bad_files() {
        let root = std::env::temp_dir().join(format!("densessl-folder-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(root.join("b/deeper")).unwrap();
        std::fs::create_dir_all(root.join(".hidden")).unwrap();
        let im = RgbImage::from_fn(9, 7, |x, y| image::Rgb([x as u8 * 20, y as u8 * 30, 5]));
        im.save(root.join("a.png")).unwrap();
        im.save(root.join("b/deeper/c.JPG")).unwrap_or_else(|_| {
            im.save_with_format(root.join("b/deeper/c.JPG"), image::ImageFormat::Jpeg).unwrap()
        });
        im.save_with_format(root.join("b/d.webp"), image::ImageFormat::WebP).unwrap();
        im.save(root.join(".hidden/e.png")).unwrap();
        std::fs::write(root.join("notes.txt"), "not an image").unwrap();
        let names: Vec<String> = list_images(&root)
            .unwrap()
            .iter()
            .map(|p| p.strip_prefix(&root).unwrap().display().to_string())
            .collect();
        assert_eq!(names, ["a.png", "b/d.webp", "b/deeper/c.JPG"]);
        let images = load_images(&root).unwrap();
        assert_eq!(images.len(), 3);
        assert_eq!(images[0], im);
        assert_eq!(images[1], im, "webp is written losslessly");
        std::fs::write(root.join("b/broken.png"), b"\x89PNG\r\n\x1a\ntruncated").unwrap();
        std::fs::write(root.join("z.jpg"), b"").unwrap();
        let err = load_images(&root).unwrap_err().to_string();
        assert!(err.contains("2 bad file(s)") && err.contains("broken.png") && err.contains("z.jpg"), "{err}");
        std::fs::remove_dir_all(&root).unwrap();
    }
}
