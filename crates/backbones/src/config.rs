//! One ResNet configuration covers all five backbones (timm's pattern: variants are arguments).

use crate::kind::BackboneKind;
use serde::{Deserialize, Serialize};

/// Attention block applied after `bn3` of every bottleneck, before the residual add.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Attention {
    /// No attention (ResNet, ResNeXt).
    None,
    /// timm `SEModule` as `se.fc1` / `se.fc2` (1x1 convs with bias), reduced width
    /// `make_divisible(C / 16, 8)`.
    SqueezeExcite,
    /// The VGGFace2 SENet's SE as `conv4` / `conv5` (1x1 convs with bias), reduced width `C / 16`.
    SqueezeExciteVggface2,
    /// CBAM (channel gate, then spatial gate) as `cbam.ChannelGate.*` / `cbam.SpatialGate.*`,
    /// reduction 16.
    Cbam,
}

/// The 3x3 stride-2 max-pool after the stem conv.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum StemPool {
    /// torchvision/timm: padding 1, floor mode.
    Padded,
    /// Caffe/VGGFace2: padding 0, ceil mode (windows start at 0, the last may hang past the edge).
    CeilMode,
}

/// A bottleneck ResNet ([3, 4, 6, 3] at full size) and every variant the project uses.
///
/// Bottleneck width follows torchvision: `floor(planes * width_per_group / 64) * groups`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ResNetConfig {
    /// Which named backbone this was made from (for summaries and default weights).
    pub kind: BackboneKind,
    /// Bottleneck blocks per stage.
    pub layers: [usize; 4],
    /// Output channels of the 7x7 stem conv (64 at full size).
    pub stem_width: usize,
    /// `planes` of each stage (64, 128, 256, 512 at full size); a stage outputs `4 * planes`.
    pub stage_planes: [usize; 4],
    /// Channels per group in the 3x3 conv, in units of `planes / 64` (64 for ResNet, 4 for ResNeXt).
    pub width_per_group: usize,
    /// Groups of the 3x3 conv (32 for ResNeXt 32x4d).
    pub groups: usize,
    /// Attention block after `bn3`.
    pub attention: Attention,
    /// Caffe-style stride in the first 1x1 conv (VGGFace2) instead of the 3x3 conv (v1.5).
    pub stride_in_1x1: bool,
    /// The stem max-pool.
    pub stem_pool: StemPool,
    /// Input channels (3).
    pub in_channels: usize,
}

impl ResNetConfig {
    /// The full-size configuration of `kind`.
    pub fn from_kind(kind: &BackboneKind) -> Self {
        let base = Self {
            kind: *kind,
            layers: [3, 4, 6, 3],
            stem_width: 64,
            stage_planes: [64, 128, 256, 512],
            width_per_group: 64,
            groups: 1,
            attention: Attention::None,
            stride_in_1x1: false,
            stem_pool: StemPool::Padded,
            in_channels: 3,
        };
        match kind {
            BackboneKind::Resnet50 => base,
            BackboneKind::Resnext50_32x4d => Self {
                groups: 32,
                width_per_group: 4,
                ..base
            },
            BackboneKind::Resnext50_32x4dCbam => Self {
                groups: 32,
                width_per_group: 4,
                attention: Attention::Cbam,
                ..base
            },
            BackboneKind::Seresnet50 => Self {
                attention: Attention::SqueezeExcite,
                ..base
            },
            BackboneKind::Senet50Vggface2 => Self {
                attention: Attention::SqueezeExciteVggface2,
                stride_in_1x1: true,
                stem_pool: StemPool::CeilMode,
                ..base
            },
        }
    }

    /// A small variant of the same network: stem width and stage planes divided by `width_div`
    /// (1 = full size), optional stage depths, and an optional group count. Changing the groups
    /// keeps the bottleneck width `width_per_group * groups` (ResNeXt's 32 groups do not divide
    /// tiny widths). Widths never go below 1; [`ResNetConfig::validate`] catches what is left.
    pub fn scaled(
        self,
        width_div: usize,
        depths: Option<[usize; 4]>,
        groups: Option<usize>,
    ) -> Self {
        let div = width_div.max(1);
        let (groups, width_per_group) = match groups {
            Some(g) if g > 0 => (g, (self.width_per_group * self.groups / g).max(1)),
            _ => (self.groups, self.width_per_group),
        };
        Self {
            layers: depths.unwrap_or(self.layers),
            stem_width: (self.stem_width / div).max(1),
            stage_planes: self.stage_planes.map(|p| (p / div).max(1)),
            groups,
            width_per_group,
            ..self
        }
    }

    /// Channels of the final feature map (2048 at full size).
    pub fn out_channels(&self) -> usize {
        4 * self.stage_planes[3]
    }

    /// Channels of the grouped 3x3 conv in a bottleneck of `planes`.
    pub fn bottleneck_width(&self, planes: usize) -> usize {
        planes * self.width_per_group / 64 * self.groups
    }

    /// Reduced width of the attention MLP for `channels` (0 when the block has none).
    pub fn attention_width(&self, channels: usize) -> usize {
        match self.attention {
            Attention::None => 0,
            Attention::SqueezeExcite => timm_make_divisible(channels as f64 / 16.0, 8),
            Attention::SqueezeExciteVggface2 | Attention::Cbam => channels / 16,
        }
    }

    /// Checks that every layer has a positive width and the groups divide the 3x3 width.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.stem_width == 0 || self.in_channels == 0 || self.groups == 0 {
            return Err(ConfigError::ZeroWidth {
                what: "stem width, input channels or groups".into(),
            });
        }
        if self.layers.contains(&0) {
            return Err(ConfigError::ZeroWidth {
                what: format!("stage depth in {:?}", self.layers),
            });
        }
        for (stage, &planes) in self.stage_planes.iter().enumerate() {
            let width = self.bottleneck_width(planes);
            if width == 0 {
                return Err(ConfigError::ZeroWidth {
                    what: format!("bottleneck width of layer{}", stage + 1),
                });
            }
            if self.attention != Attention::None && self.attention_width(4 * planes) == 0 {
                return Err(ConfigError::ZeroWidth {
                    what: format!(
                        "attention width of layer{} ({} channels / 16)",
                        stage + 1,
                        4 * planes
                    ),
                });
            }
        }
        Ok(())
    }
}

/// timm's `make_divisible(v, divisor, round_limit=0.)` as used by `SEModule`.
fn timm_make_divisible(v: f64, divisor: usize) -> usize {
    let d = divisor as f64;
    let rounded = ((v + d / 2.0) as usize) / divisor * divisor;
    rounded.max(divisor)
}

/// A configuration that cannot build a network.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// Some width or depth came out as zero (typically a too large `width_div`).
    #[error("invalid backbone configuration: {what} is zero")]
    ZeroWidth {
        /// What was zero.
        what: String,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_size_widths_match_torchvision() {
        let x = ResNetConfig::from_kind(&BackboneKind::Resnext50_32x4d);
        let widths: Vec<usize> = x
            .stage_planes
            .iter()
            .map(|&p| x.bottleneck_width(p))
            .collect();
        // torchvision resnet.py: 128/256/512/1024 for ResNeXt-50 32x4d.
        assert_eq!(widths, vec![128, 256, 512, 1024]);
        assert_eq!(x.out_channels(), 2048);
        let r = ResNetConfig::from_kind(&BackboneKind::Resnet50);
        assert_eq!(r.bottleneck_width(64), 64);
    }

    #[test]
    fn se_widths_follow_timm_make_divisible() {
        let se = ResNetConfig::from_kind(&BackboneKind::Seresnet50);
        // timm seresnet50 `layer1.0.se.fc1.weight` is [16, 256, 1, 1]; [128, 2048] in layer4.
        assert_eq!(se.attention_width(256), 16);
        assert_eq!(se.attention_width(2048), 128);
        // Tiny widths round up to the divisor (make_divisible(1.0, 8) = 8).
        assert_eq!(se.attention_width(16), 8);
        let vgg = ResNetConfig::from_kind(&BackboneKind::Senet50Vggface2);
        assert_eq!(vgg.attention_width(256), 16);
        assert_eq!(vgg.attention_width(16), 1);
    }

    #[test]
    fn scaling_keeps_the_group_width_product() {
        let small = ResNetConfig::from_kind(&BackboneKind::Resnext50_32x4d).scaled(
            16,
            Some([2, 1, 1, 1]),
            Some(4),
        );
        assert_eq!(small.stem_width, 4);
        assert_eq!(small.stage_planes, [4, 8, 16, 32]);
        assert_eq!((small.groups, small.width_per_group), (4, 32));
        assert_eq!(small.bottleneck_width(4), 8);
        assert_eq!(small.out_channels(), 128);
        assert!(small.validate().is_ok());
    }

    #[test]
    fn too_small_attention_is_rejected() {
        let tiny =
            ResNetConfig::from_kind(&BackboneKind::Resnext50_32x4dCbam).scaled(64, None, Some(1));
        assert!(matches!(
            tiny.validate(),
            Err(ConfigError::ZeroWidth { .. })
        ));
    }
}
