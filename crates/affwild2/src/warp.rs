//! One fused pass from a decoded RGB image to normalised f32 CHW: crop box + resize (bilinear,
//! pixel-centre aligned), optional flip, brightness/contrast jitter, mean/std normalisation.

use image::RgbImage;

use crate::augment::AugmentDraw;
use crate::preprocess::Preprocess;

/// Source sample positions along one axis: `(i0, i1, w1)` per output pixel, value =
/// `(1 - w1) * src[i0] + w1 * src[i1]`.
fn axis_taps(
    start: f32,
    len: f32,
    src_len: u32,
    out_len: usize,
    flip: bool,
) -> Vec<(usize, usize, f32)> {
    let step = len / out_len as f32;
    let last = src_len.saturating_sub(1) as f32;
    (0..out_len)
        .map(|o| {
            let o = if flip { out_len - 1 - o } else { o };
            let s = (start + (o as f32 + 0.5) * step - 0.5).clamp(0.0, last);
            let i0 = s.floor();
            let w1 = s - i0;
            let i0 = i0 as usize;
            let i1 = (i0 + 1).min(last as usize);
            (i0, i1, w1)
        })
        .collect()
}

/// Writes `3 x size x size` normalised values of `src` under `draw` into `out`.
pub fn render_chw(
    src: &RgbImage,
    draw: &AugmentDraw,
    pre: &Preprocess,
    size: usize,
    out: &mut [f32],
) {
    debug_assert_eq!(out.len(), 3 * size * size);
    let (w, h) = src.dimensions();
    let raw = src.as_raw();
    let affine = pre.affine();
    let chan = [0, 1, 2].map(|c| pre.source_channel(c));
    let plane = size * size;
    let jitter = draw.brightness != 1.0 || draw.contrast != 1.0;
    // torchvision adjust_contrast blends with the mean grey level of the (brightened) image.
    let grey_mean = if jitter {
        let sum: f64 = raw
            .chunks_exact(3)
            .map(|p| 0.299 * p[0] as f64 + 0.587 * p[1] as f64 + 0.114 * p[2] as f64)
            .sum();
        (sum / (w as f64 * h as f64).max(1.0)) as f32 * draw.brightness
    } else {
        0.0
    };
    let (b, c) = (draw.brightness, draw.contrast);
    let tone = |v: f32| -> f32 {
        if jitter {
            let v = (v * b).clamp(0.0, 255.0);
            (c * v + (1.0 - c) * grey_mean).clamp(0.0, 255.0)
        } else {
            v
        }
    };
    let [x0, y0, cw, ch] = draw.crop;
    let identity = !draw.flip
        && x0 == 0.0
        && y0 == 0.0
        && cw == w as f32
        && ch == h as f32
        && w as usize == size
        && h as usize == size;
    if identity {
        for (i, p) in raw.chunks_exact(3).enumerate() {
            for c in 0..3 {
                let (a, bb) = affine[c];
                out[c * plane + i] = tone(p[chan[c]] as f32) * a + bb;
            }
        }
        return;
    }
    let xs = axis_taps(x0, cw, w, size, draw.flip);
    let ys = axis_taps(y0, ch, h, size, false);
    let stride = w as usize * 3;
    for (oy, &(r0, r1, wy)) in ys.iter().enumerate() {
        let row0 = &raw[r0 * stride..(r0 + 1) * stride];
        let row1 = &raw[r1 * stride..(r1 + 1) * stride];
        for (ox, &(c0, c1, wx)) in xs.iter().enumerate() {
            let idx = oy * size + ox;
            for c in 0..3 {
                let s = chan[c];
                let top = row0[c0 * 3 + s] as f32 * (1.0 - wx) + row0[c1 * 3 + s] as f32 * wx;
                let bot = row1[c0 * 3 + s] as f32 * (1.0 - wx) + row1[c1 * 3 + s] as f32 * wx;
                let v = top * (1.0 - wy) + bot * wy;
                let (a, bb) = affine[c];
                out[c * plane + idx] = tone(v) * a + bb;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ramp(w: u32, h: u32) -> RgbImage {
        RgbImage::from_fn(w, h, |x, y| {
            image::Rgb([(x * 10) as u8, (y * 10) as u8, 200])
        })
    }

    fn raw() -> Preprocess {
        Preprocess {
            mean: [0.0; 3],
            std: [1.0; 3],
            bgr: false,
            scale: 1.0,
        }
    }

    #[test]
    fn identity_copies_and_normalises() {
        let img = ramp(4, 4);
        let mut out = vec![0.0; 48];
        render_chw(
            &img,
            &AugmentDraw::identity(4, 4),
            &Preprocess::imagenet(),
            4,
            &mut out,
        );
        let expect = (30.0 / 255.0 - 0.485) / 0.229;
        assert!((out[3] - expect).abs() < 1e-5, "R of (3, 0)");
        let mut bgr = vec![0.0; 48];
        render_chw(
            &img,
            &AugmentDraw::identity(4, 4),
            &Preprocess::vggface2(),
            4,
            &mut bgr,
        );
        assert!(
            (bgr[0] - (200.0 - 91.4953)).abs() < 1e-3,
            "first channel is blue"
        );
    }

    #[test]
    fn flip_mirrors_columns() {
        let img = ramp(4, 4);
        let mut d = AugmentDraw::identity(4, 4);
        d.flip = true;
        let mut out = vec![0.0; 48];
        render_chw(&img, &d, &raw(), 4, &mut out);
        assert_eq!(&out[0..4], &[30.0, 20.0, 10.0, 0.0]);
    }

    #[test]
    fn halving_is_a_2x2_box_filter() {
        let img = ramp(8, 8);
        let mut out = vec![0.0; 48];
        render_chw(&img, &AugmentDraw::identity(8, 8), &raw(), 4, &mut out);
        // Output column 1 averages source columns 2 and 3: (20 + 30) / 2.
        assert!((out[1] - 25.0).abs() < 1e-4, "{}", out[1]);
        assert!(
            (out[16 + 4] - 25.0).abs() < 1e-4,
            "G of row 1 averages rows 2 and 3"
        );
    }

    #[test]
    fn brightness_and_contrast() {
        let img = RgbImage::from_pixel(2, 2, image::Rgb([100, 100, 100]));
        let mut d = AugmentDraw::identity(2, 2);
        d.brightness = 1.5;
        let mut out = vec![0.0; 12];
        render_chw(&img, &d, &raw(), 2, &mut out);
        assert!((out[0] - 150.0).abs() < 1e-3);
        d.brightness = 1.0;
        d.contrast = 0.5;
        render_chw(&img, &d, &raw(), 2, &mut out);
        assert!((out[0] - 100.0).abs() < 1e-3, "a flat image keeps its mean");
        d.brightness = 3.0;
        d.contrast = 1.0;
        render_chw(&img, &d, &raw(), 2, &mut out);
        assert_eq!(out[0], 255.0, "clamped");
    }
}
