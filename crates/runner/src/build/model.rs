//! The network a configuration asks for, and the input normalisation each backbone was
//! pretrained with (the one table of normalisations).

use mtanet_affwild2::{Preprocess, Vocab};
use mtanet_backbones::{BackboneKind, MtaNetConfig, ResNetConfig, VaActivation};

use crate::experiment::Config;

/// The backbone configuration a model config asks for. `model.groups` is the group count of
/// the ResNeXt backbones; the others have no grouped convolutions and keep none, so a
/// profile's `groups` never turns ResNet-50 or SENet-50 into another network.
pub fn backbone_config(config: &Config) -> ResNetConfig {
    let m = &config.model;
    let base = ResNetConfig::from_kind(&m.backbone);
    let groups = if base.groups > 1 { m.groups } else { None };
    base.scaled(m.width_div, m.depths, groups)
}

/// The MTANet configuration for a vocabulary.
pub fn model_config(config: &Config, vocab: &Vocab) -> MtaNetConfig {
    MtaNetConfig {
        backbone: backbone_config(config),
        hidden: config.model.head.hidden,
        dropout: config.model.head.dropout,
        va_activation: if config.model.head.va_activation == "none" {
            VaActivation::None
        } else {
            VaActivation::Tanh
        },
        n_au: vocab.au_names.len(),
        n_expr: vocab.expr_names.len(),
        decoder_layers: config.model.head.decoder_layers,
        pooling: config.model.head.pooling,
    }
}

/// The input normalisation each backbone was pretrained with.
pub fn preprocess_for(kind: &BackboneKind) -> Preprocess {
    match kind {
        BackboneKind::Senet50Vggface2 => Preprocess::vggface2(),
        _ => Preprocess::imagenet(),
    }
}

/// The name of the input [`preprocess_for`] feeds `kind`, as pretrained files declare theirs
/// (`input_normalization` in their metadata): `vggface2` (BGR, 0-255 minus the VGGFace2 mean)
/// or `imagenet` (RGB, torchvision's mean and std).
pub fn input_normalization_of(kind: &BackboneKind) -> &'static str {
    match kind {
        BackboneKind::Senet50Vggface2 => "vggface2",
        _ => "imagenet",
    }
}

/// Names for heads of `n_au` AUs and `n_expr` classes when no annotation header is at hand:
/// the ABAW 2020 (8 AUs, 7 classes), 2021 (12 AUs) and 2022 (8 classes) vocabularies, else
/// `AU_<i>` / `class_<i>`.
pub fn default_vocab(n_au: usize, n_expr: usize) -> Vocab {
    let v2020 = Vocab::abaw2020();
    let au_names = match n_au {
        8 => v2020.au_names,
        12 => [
            "AU1", "AU2", "AU4", "AU6", "AU7", "AU10", "AU12", "AU15", "AU23", "AU24", "AU25",
            "AU26",
        ]
        .map(String::from)
        .to_vec(),
        n => (0..n).map(|i| format!("AU_{i}")).collect(),
    };
    let expr_names = match n_expr {
        7 => v2020.expr_names,
        8 => v2020
            .expr_names
            .into_iter()
            .chain([String::from("Other")])
            .collect(),
        n => (0..n).map(|i| format!("class_{i}")).collect(),
    };
    Vocab {
        au_names,
        expr_names,
    }
}
