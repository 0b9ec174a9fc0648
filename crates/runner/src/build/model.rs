//! The network a configuration asks for, and the input normalisation each backbone was
//! pretrained with (the one table of normalisations).

use mtanet_affwild2::{Preprocess, Vocab};
use mtanet_backbones::{BackboneKind, MtaNetConfig, ResNetConfig, VaActivation};

use crate::experiment::Config;

/// The backbone configuration a model config asks for.
pub fn backbone_config(config: &Config) -> ResNetConfig {
    let m = &config.model;
    ResNetConfig::from_kind(&m.backbone).scaled(m.width_div, m.depths, m.groups)
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
