//! Input normalisation per backbone: the mean/std (and channel order) each was pretrained with.

use serde::{Deserialize, Serialize};

/// How 0-255 RGB pixels become network input: `(pixel * scale - mean[c]) / std[c]`, with
/// output channel c taken from RGB, or from BGR when `bgr` is set.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Preprocess {
    /// Per output channel mean, after `scale`.
    pub mean: [f32; 3],
    /// Per output channel std, after `scale`.
    pub std: [f32; 3],
    /// Output channels in B, G, R order (Caffe-style models).
    pub bgr: bool,
    /// Multiplies the 0-255 pixel first: 1/255 (torchvision) or 1 (Caffe).
    pub scale: f32,
}

impl Preprocess {
    /// torchvision ImageNet: RGB in [0, 1], mean `[0.485, 0.456, 0.406]`, std `[0.229, 0.224, 0.225]`.
    pub fn imagenet() -> Self {
        Preprocess {
            mean: [0.485, 0.456, 0.406],
            std: [0.229, 0.224, 0.225],
            bgr: false,
            scale: 1.0 / 255.0,
        }
    }

    /// VGGFace2 (Caffe SENet-50, `cydonia999/VGGFace2-pytorch`): BGR 0-255 minus
    /// `[91.4953, 103.8827, 131.0912]`, no std division.
    pub fn vggface2() -> Self {
        Preprocess {
            mean: [91.4953, 103.8827, 131.0912],
            std: [1.0, 1.0, 1.0],
            bgr: true,
            scale: 1.0,
        }
    }

    /// Per output channel `(a, b)` so that `out = pixel * a + b` (precomputed once).
    pub(crate) fn affine(&self) -> [(f32, f32); 3] {
        std::array::from_fn(|c| {
            let a = self.scale / self.std[c];
            (a, -self.mean[c] / self.std[c])
        })
    }

    /// The source RGB channel of output channel `c`.
    pub(crate) fn source_channel(&self, c: usize) -> usize {
        if self.bgr {
            2 - c
        } else {
            c
        }
    }

    /// Checks that every value is finite and every std non-zero.
    pub fn validate(&self) -> Result<(), String> {
        let finite =
            self.mean.iter().chain(&self.std).all(|x| x.is_finite()) && self.scale.is_finite();
        if !finite || self.std.contains(&0.0) || self.scale == 0.0 {
            return Err(format!(
                "preprocess {self:?}: values must be finite, std and scale non-zero"
            ));
        }
        Ok(())
    }
}

impl Default for Preprocess {
    fn default() -> Self {
        Preprocess::imagenet()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn affine_matches_formula() {
        let p = Preprocess::imagenet();
        let [(a, b), _, (a2, b2)] = p.affine();
        assert!((255.0 * a + b - (1.0 - 0.485) / 0.229).abs() < 1e-5);
        assert!((0.0 * a2 + b2 + 0.406 / 0.225).abs() < 1e-5);
        let v = Preprocess::vggface2();
        assert_eq!(v.source_channel(0), 2, "first output channel is blue");
        let [(a, b), _, _] = v.affine();
        assert!((100.0 * a + b - (100.0 - 91.4953)).abs() < 1e-4);
        assert!(Preprocess {
            std: [0.0, 1.0, 1.0],
            ..p
        }
        .validate()
        .is_err());
    }
}
