//! ResNet-family backbones (ResNet-50, ResNeXt-50 32x4d, ResNeXt+CBAM, SE-ResNet-50, the
//! VGGFace2 SENet-50) and the MTANet multi-task model, in candle, numerically equal to the
//! PyTorch references (torchvision, timm, cydonia999/VGGFace2-pytorch, Jongchan/attention-module)
//! and loading their safetensors checkpoints under the PyTorch state-dict names.
#![warn(missing_docs)]

mod batch_norm_layer;
mod bottleneck;
mod cbam;
mod config;
mod conv2d_layer;
mod hub;
mod init_rules;
mod kind;
mod linear_layer;
mod mtanet;
mod precision;
mod resnet;
mod seeded_dropout;
mod seeded_init;
mod squeeze_excite;
mod summary;
mod weights;

#[cfg(test)]
mod pytorch_conformance;

pub use bottleneck::{is_gate_variable, Bottleneck};
pub use config::{Attention, ConfigError, ResNetConfig, StemPool};
pub use hub::{hub_cache_dir, resolve_pretrained, HUB_FILENAME};
pub use kind::{BackboneKind, UnknownBackbone};
pub use mtanet::{EncoderPooling, MtaNet, MtaNetConfig, MtaNetOutput, VaActivation};
pub use precision::Precision;
pub use resnet::ResNet;
pub use seeded_init::SeededVarMap;
pub use summary::{parameter_count, parameters, summary, ParameterInfo};
pub use weights::{load_pretrained, LoadReport, WeightsError};
