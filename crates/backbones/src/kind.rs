//! The five backbones the paper's tables compare, by name.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// A backbone of the ResNet family; the names are the ones used in configs and CLI flags.
#[allow(non_camel_case_types)]
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq, Hash)]
pub enum BackboneKind {
    /// torchvision `resnet50` (the baseline row).
    #[serde(rename = "resnet50")]
    Resnet50,
    /// torchvision `resnext50_32x4d`: 32 groups of width 4 in the 3x3 convs.
    #[serde(rename = "resnext50_32x4d")]
    Resnext50_32x4d,
    /// ResNeXt-50 32x4d with a CBAM block after `bn3` of every bottleneck (Jongchan/attention-module).
    #[serde(rename = "resnext50_32x4d_cbam")]
    Resnext50_32x4dCbam,
    /// timm `seresnet50`: squeeze-excitation after `bn3`, stride in the 3x3 conv.
    #[serde(rename = "seresnet50")]
    Seresnet50,
    /// The VGGFace2 SENet-50 (cydonia999/VGGFace2-pytorch): Caffe-style stride in the first 1x1,
    /// ceil-mode stem pool, SE as `conv4`/`conv5`. The paper's backbone.
    #[serde(rename = "senet50_vggface2")]
    Senet50Vggface2,
}

impl BackboneKind {
    /// Every kind, in the order of the paper's comparison.
    pub const ALL: [BackboneKind; 5] = [
        BackboneKind::Resnet50,
        BackboneKind::Resnext50_32x4d,
        BackboneKind::Resnext50_32x4dCbam,
        BackboneKind::Seresnet50,
        BackboneKind::Senet50Vggface2,
    ];

    /// The config/CLI name (equal to the serde name).
    pub fn name(&self) -> &'static str {
        match self {
            BackboneKind::Resnet50 => "resnet50",
            BackboneKind::Resnext50_32x4d => "resnext50_32x4d",
            BackboneKind::Resnext50_32x4dCbam => "resnext50_32x4d_cbam",
            BackboneKind::Seresnet50 => "seresnet50",
            BackboneKind::Senet50Vggface2 => "senet50_vggface2",
        }
    }

    /// The Hugging Face Hub repository with ImageNet weights for this kind, if one exists.
    /// CBAM reuses the ResNeXt weights (its CBAM blocks start fresh); VGGFace2 weights are not on
    /// the Hub and must be converted with `scripts/convert_vggface2.py`.
    pub fn default_pretrained(&self) -> Option<&'static str> {
        match self {
            BackboneKind::Resnet50 => Some("timm/resnet50.tv_in1k"),
            BackboneKind::Resnext50_32x4d | BackboneKind::Resnext50_32x4dCbam => {
                Some("timm/resnext50_32x4d.tv_in1k")
            }
            BackboneKind::Seresnet50 => Some("timm/seresnet50.a1_in1k"),
            BackboneKind::Senet50Vggface2 => None,
        }
    }
}

impl fmt::Display for BackboneKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A backbone name that is not one of [`BackboneKind::ALL`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown backbone `{given}`; expected one of: resnet50, resnext50_32x4d, resnext50_32x4d_cbam, seresnet50, senet50_vggface2")]
pub struct UnknownBackbone {
    /// The name that was given.
    pub given: String,
}

impl FromStr for BackboneKind {
    type Err = UnknownBackbone;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        BackboneKind::ALL
            .into_iter()
            .find(|k| k.name() == s)
            .ok_or_else(|| UnknownBackbone {
                given: s.to_string(),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_through_display_fromstr_and_serde() {
        for kind in BackboneKind::ALL {
            let name = kind.to_string();
            assert_eq!(name.parse::<BackboneKind>(), Ok(kind));
            let json = serde_json::to_string(&kind).expect("serialize");
            assert_eq!(json, format!("\"{name}\""));
            let back: BackboneKind = serde_json::from_str(&json).expect("deserialize");
            assert_eq!(back, kind);
        }
        assert_eq!(
            "resnext50_32x4d_cbam".parse::<BackboneKind>(),
            Ok(BackboneKind::Resnext50_32x4dCbam)
        );
    }

    #[test]
    fn unknown_names_are_rejected_with_the_list() {
        let err = "senet50".parse::<BackboneKind>().unwrap_err();
        assert!(err.to_string().contains("senet50_vggface2"));
    }
}
