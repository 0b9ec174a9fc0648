//! Parameter inventory of a backbone without allocating it: the network is built against a
//! VarBuilder backend that records names and shapes and hands out stride-0 zero tensors.

use crate::config::ResNetConfig;
use crate::resnet::ResNet;
use candle_core::{DType, Device, Result, Shape, Tensor};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::{Init, VarBuilder};
use std::sync::{Arc, Mutex};

/// One tensor of a backbone's state dict.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParameterInfo {
    /// PyTorch state-dict name (`layer1.0.conv1.weight`).
    pub name: String,
    /// Shape.
    pub shape: Vec<usize>,
    /// `false` for BN running statistics (buffers, never trained).
    pub trainable: bool,
}

impl ParameterInfo {
    /// Number of elements.
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
}

/// Names and shapes requested so far, in order.
type Requests = Vec<(String, Vec<usize>)>;

#[derive(Clone, Default)]
struct ShapeRecorder {
    seen: Arc<Mutex<Requests>>,
}

impl SimpleBackend for ShapeRecorder {
    fn get(&self, s: Shape, name: &str, _: Init, dtype: DType, dev: &Device) -> Result<Tensor> {
        if let Ok(mut seen) = self.seen.lock() {
            seen.push((name.to_string(), s.dims().to_vec()));
        }
        Tensor::zeros((), dtype, dev)?.broadcast_as(s)
    }

    fn get_unchecked(&self, name: &str, _: DType, _: &Device) -> Result<Tensor> {
        candle_core::bail!("shape recorder: `{name}` requested without a shape")
    }

    fn contains_tensor(&self, _: &str) -> bool {
        true
    }
}

/// Every tensor the backbone of `cfg` holds, in construction order.
pub fn parameters(cfg: &ResNetConfig) -> Result<Vec<ParameterInfo>> {
    let recorder = ShapeRecorder::default();
    let backend: Box<dyn SimpleBackend> = Box::new(recorder.clone());
    let vb = VarBuilder::from_backend(backend, DType::F32, Device::Cpu);
    ResNet::new(cfg, vb)?;
    let seen = recorder
        .seen
        .lock()
        .map_err(|_| candle_core::Error::Msg("shape recorder lock poisoned".into()))?;
    Ok(seen
        .iter()
        .map(|(name, shape)| ParameterInfo {
            trainable: !(name.ends_with("running_mean") || name.ends_with("running_var")),
            name: name.clone(),
            shape: shape.clone(),
        })
        .collect())
}

/// Trainable parameters of the backbone (no classifier, no BN running statistics); equals
/// torchvision/timm's count for the full-size models. 0 if the configuration is invalid.
pub fn parameter_count(cfg: &ResNetConfig) -> usize {
    parameters(cfg)
        .map(|ps| {
            ps.iter()
                .filter(|p| p.trainable)
                .map(ParameterInfo::numel)
                .sum()
        })
        .unwrap_or(0)
}

/// A human-readable summary: configuration, one line per layer (module path, tensor shapes,
/// parameter count) and a final line `parameters: N`. Invalid configurations give one error line.
pub fn summary(cfg: &ResNetConfig) -> String {
    let params = match parameters(cfg) {
        Ok(p) => p,
        Err(e) => return format!("invalid configuration: {e}\nparameters: 0"),
    };
    let mut out = format!(
        "{} backbone: layers {:?}, stem {}, planes {:?}, groups {}, width per group {}, attention {:?}, stride in {}, stem pool {:?}, output channels {}\n",
        cfg.kind,
        cfg.layers,
        cfg.stem_width,
        cfg.stage_planes,
        cfg.groups,
        cfg.width_per_group,
        cfg.attention,
        if cfg.stride_in_1x1 { "1x1" } else { "3x3" },
        cfg.stem_pool,
        cfg.out_channels()
    );
    // Group tensors by module (name without the last component), keeping first-seen order.
    let mut modules: Vec<(String, Vec<&ParameterInfo>)> = Vec::new();
    for p in &params {
        let module = p.name.rsplit_once('.').map_or("", |(m, _)| m).to_string();
        match modules.last_mut() {
            Some((m, list)) if *m == module => list.push(p),
            _ => modules.push((module, vec![p])),
        }
    }
    let width = modules.iter().map(|(m, _)| m.len()).max().unwrap_or(0);
    for (module, list) in &modules {
        let shapes: Vec<String> = list
            .iter()
            .filter(|p| p.trainable)
            .map(|p| {
                let leaf = p.name.rsplit('.').next().unwrap_or(&p.name);
                format!("{leaf} {:?}", p.shape)
            })
            .collect();
        let count: usize = list.iter().filter(|p| p.trainable).map(|p| p.numel()).sum();
        out.push_str(&format!(
            "{module:<width$}  {:>9}  {}\n",
            count,
            shapes.join(", ")
        ));
    }
    let total: usize = params
        .iter()
        .filter(|p| p.trainable)
        .map(ParameterInfo::numel)
        .sum();
    out.push_str(&format!("parameters: {total}"));
    out
}
