//! One crop to network input: decode, size policy, warp (augmentation or the whole image) and
//! normalisation, the one path of the training loader, evaluation and prediction.

use std::path::Path;

use crate::augment::AugmentDraw;
use crate::decode::decode_jpeg;
use crate::error::DataError;
use crate::preprocess::Preprocess;
use crate::warp::render_chw;

/// Decodes the crop at `path` and writes its `3 x size x size` network input into `out`.
///
/// A crop that is not `size x size` is an [`DataError::ImageSize`] unless `resize` is set.
/// `draw` gives the warp for the decoded image's width and height: [`AugmentDraw::identity`]
/// for an evaluation frame, a seeded `Augment::draw` for a training one; it is called once,
/// only when the crop decoded and passed the size check. Read and decode failures are
/// [`DataError::Io`] / [`DataError::BadImage`].
pub fn load_frame(
    path: &Path,
    size: usize,
    resize: bool,
    pre: &Preprocess,
    draw: impl FnOnce(u32, u32) -> AugmentDraw,
    out: &mut [f32],
) -> Result<(), DataError> {
    let img = decode_jpeg(path)?;
    let (w, h) = img.dimensions();
    if !resize && (w as usize != size || h as usize != size) {
        return Err(DataError::ImageSize {
            path: path.to_path_buf(),
            width: w,
            height: h,
            expected: size,
        });
    }
    render_chw(&img, &draw(w, h), pre, size, out);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::augment::Augment;
    use rand::SeedableRng;

    /// A `w x h` JPEG of a colour gradient at `dir/name`.
    fn write_jpeg(dir: &Path, name: &str, w: u32, h: u32) -> std::path::PathBuf {
        let img = image::RgbImage::from_fn(w, h, |x, y| {
            image::Rgb([
                (x * 7 % 256) as u8,
                (y * 5 % 256) as u8,
                ((x + y) % 256) as u8,
            ])
        });
        let mut bytes = Vec::new();
        image::codecs::jpeg::JpegEncoder::new_with_quality(&mut bytes, 90)
            .encode_image(&img)
            .unwrap();
        let path = dir.join(name);
        std::fs::write(&path, bytes).unwrap();
        path
    }

    fn bits(v: &[f32]) -> Vec<u32> {
        v.iter().map(|x| x.to_bits()).collect()
    }

    #[test]
    fn equals_decode_then_render_for_eval_and_augmented_frames() {
        let dir = tempfile::tempdir().unwrap();
        let path = write_jpeg(dir.path(), "00001.jpg", 20, 24);
        let pre = Preprocess::vggface2();
        let img = decode_jpeg(&path).unwrap();
        let size = 16;

        let mut want = vec![0f32; 3 * size * size];
        render_chw(&img, &AugmentDraw::identity(20, 24), &pre, size, &mut want);
        let mut got = vec![0f32; 3 * size * size];
        load_frame(&path, size, true, &pre, AugmentDraw::identity, &mut got).unwrap();
        assert_eq!(bits(&got), bits(&want));

        let aug = Augment::default();
        let draw = aug.draw(&mut rand_chacha::ChaCha8Rng::seed_from_u64(9), 20, 24);
        render_chw(&img, &draw, &pre, size, &mut want);
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(9);
        let draw_with = |w, h| aug.draw(&mut rng, w, h);
        load_frame(&path, size, true, &pre, draw_with, &mut got).unwrap();
        assert_eq!(bits(&got), bits(&want));
    }

    #[test]
    fn wrong_size_without_resize_and_bad_files_are_errors_without_a_draw() {
        let dir = tempfile::tempdir().unwrap();
        let path = write_jpeg(dir.path(), "00001.jpg", 20, 24);
        let pre = Preprocess::imagenet();
        let mut out = vec![0f32; 3 * 16 * 16];
        let never = |_: u32, _: u32| -> AugmentDraw { panic!("drawn for a rejected frame") };
        let e = load_frame(&path, 16, false, &pre, never, &mut out).unwrap_err();
        assert!(
            matches!(
                e,
                DataError::ImageSize {
                    width: 20,
                    height: 24,
                    expected: 16,
                    ..
                }
            ),
            "{e}"
        );
        let missing = dir.path().join("00002.jpg");
        let e = load_frame(&missing, 16, true, &pre, never, &mut out).unwrap_err();
        assert!(matches!(e, DataError::Io { .. }), "{e}");
        let garbage = dir.path().join("00003.jpg");
        std::fs::write(&garbage, b"not a jpeg").unwrap();
        let e = load_frame(&garbage, 16, true, &pre, never, &mut out).unwrap_err();
        assert!(matches!(e, DataError::BadImage { .. }), "{e}");
    }
}
