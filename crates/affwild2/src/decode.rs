//! Reading and decoding one crop into RGB.

use std::path::Path;

use image::RgbImage;

use crate::error::DataError;

/// Reads and decodes a JPEG into RGB (greyscale and CMYK files are converted).
pub fn decode_jpeg(path: &Path) -> Result<RgbImage, DataError> {
    let bytes = std::fs::read(path).map_err(|e| DataError::io(path, e))?;
    decode_jpeg_bytes(path, &bytes)
}

/// Decodes JPEG bytes; `path` is only used in the error.
pub fn decode_jpeg_bytes(path: &Path, bytes: &[u8]) -> Result<RgbImage, DataError> {
    let img =
        image::load_from_memory_with_format(bytes, image::ImageFormat::Jpeg).map_err(|e| {
            DataError::BadImage {
                path: path.to_path_buf(),
                message: e.to_string(),
            }
        })?;
    let rgb = img.into_rgb8();
    if rgb.width() == 0 || rgb.height() == 0 {
        return Err(DataError::BadImage {
            path: path.to_path_buf(),
            message: "zero-sized image".into(),
        });
    }
    Ok(rgb)
}
