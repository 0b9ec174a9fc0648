//! Training augmentation settings and their per-sample random draw.

use rand::Rng;
use serde::{Deserialize, Serialize};

/// Training augmentation (never applied in evaluation): horizontal flip, a random resized crop
/// covering a fraction of the image area in `crop_scale`, and brightness/contrast jitter by
/// factors in `[1 - x, 1 + x]` (torchvision `ColorJitter` semantics).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Augment {
    /// Flip left-right with probability 1/2 (AU/EXPR/VA labels are flip-invariant).
    pub hflip: bool,
    /// Area fraction range of the random crop, e.g. `[0.85, 1.0]`; `[1, 1]` disables it.
    pub crop_scale: (f32, f32),
    /// Brightness jitter amplitude (0 disables).
    pub brightness: f32,
    /// Contrast jitter amplitude (0 disables).
    pub contrast: f32,
}

impl Default for Augment {
    fn default() -> Self {
        Augment {
            hflip: true,
            crop_scale: (0.85, 1.0),
            brightness: 0.2,
            contrast: 0.2,
        }
    }
}

/// One sample's drawn augmentation: the crop box in source pixels, flip and jitter factors.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AugmentDraw {
    /// Crop box `[x0, y0, width, height]` in source pixels.
    pub crop: [f32; 4],
    /// Flip left-right.
    pub flip: bool,
    /// Brightness factor.
    pub brightness: f32,
    /// Contrast factor.
    pub contrast: f32,
}

impl AugmentDraw {
    /// No augmentation: the whole `w x h` image.
    pub fn identity(w: u32, h: u32) -> Self {
        AugmentDraw {
            crop: [0.0, 0.0, w as f32, h as f32],
            flip: false,
            brightness: 1.0,
            contrast: 1.0,
        }
    }
}

impl Augment {
    /// Checks ranges: `0 < lo <= hi <= 1` for the crop, jitter amplitudes in [0, 1).
    pub fn validate(&self) -> Result<(), String> {
        let (lo, hi) = self.crop_scale;
        if !(lo > 0.0 && lo <= hi && hi <= 1.0) {
            return Err(format!(
                "augment.crop_scale {:?}: need 0 < lo <= hi <= 1",
                self.crop_scale
            ));
        }
        for (name, x) in [("brightness", self.brightness), ("contrast", self.contrast)] {
            if !(0.0..1.0).contains(&x) {
                return Err(format!("augment.{name} {x}: need 0 <= x < 1"));
            }
        }
        Ok(())
    }

    /// Draws one sample's augmentation for a `w x h` source. Always consumes the same number
    /// of random values, so the stream does not depend on which options are on.
    pub fn draw<R: Rng>(&self, rng: &mut R, w: u32, h: u32) -> AugmentDraw {
        let u: [f32; 7] = std::array::from_fn(|_| rng.random::<f32>());
        let (lo, hi) = self.crop_scale;
        let area = lo + (hi - lo) * u[0];
        // Aspect ratio within [0.9, 1.1] (log-uniform): faces stay faces.
        let ratio = (0.9f32.ln() + (1.1f32.ln() - 0.9f32.ln()) * u[1]).exp();
        let (wf, hf) = (w as f32, h as f32);
        let cw = (wf * (area * ratio).sqrt()).min(wf);
        let ch = (hf * (area / ratio).sqrt()).min(hf);
        let x0 = (wf - cw) * u[2];
        let y0 = (hf - ch) * u[3];
        let jitter = |amp: f32, u: f32| 1.0 - amp + 2.0 * amp * u;
        AugmentDraw {
            crop: [x0, y0, cw, ch],
            flip: self.hflip && u[4] < 0.5,
            brightness: jitter(self.brightness, u[5]),
            contrast: jitter(self.contrast, u[6]),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn draws_stay_in_range() {
        let a = Augment::default();
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
        let mut flips = 0;
        for _ in 0..1000 {
            let d = a.draw(&mut rng, 112, 112);
            let [x, y, w, h] = d.crop;
            assert!(x >= 0.0 && y >= 0.0 && x + w <= 112.001 && y + h <= 112.001);
            let area = w * h / (112.0 * 112.0);
            assert!(area > 0.8 && area <= 1.0001, "{area}");
            assert!((0.8..=1.2).contains(&d.brightness) && (0.8..=1.2).contains(&d.contrast));
            flips += d.flip as usize;
        }
        assert!((400..600).contains(&flips), "{flips}");
    }

    #[test]
    fn serde_defaults_and_unknown_fields() {
        let a: Augment = serde_json::from_str(r#"{"hflip": false}"#).unwrap();
        assert_eq!(a.crop_scale, Augment::default().crop_scale);
        assert!(!a.hflip);
        assert!(serde_json::from_str::<Augment>(r#"{"hflp": false}"#).is_err());
        assert!(Augment {
            crop_scale: (0.0, 1.0),
            ..a
        }
        .validate()
        .is_err());
    }
}
