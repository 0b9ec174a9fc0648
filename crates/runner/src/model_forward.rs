//! `mtanet model forward`: one batch through a backbone with given weights, so anyone can
//! check a full-size model against PyTorch on their own machine.

use std::collections::HashMap;
use std::path::Path;

use anyhow::Context;
use candle_core::{DType, Device, Tensor};
use candle_nn::{ModuleT, VarBuilder, VarMap};
use mtanet_backbones::{load_pretrained, ResNet, ResNetConfig};

/// Loads `weights` into the backbone, runs `input` (tensor `input`), writes `feature_map` and
/// `features` (the global average over H, W) to `out`.
pub fn run(
    cfg: &ResNetConfig,
    weights: &Path,
    input: &Path,
    out: &Path,
    train: bool,
) -> anyhow::Result<()> {
    let device = Device::Cpu;
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &device);
    let net = ResNet::new(cfg, vb)?;
    let report = load_pretrained(&varmap, weights, "")?;
    eprintln!("{}: {report}", weights.display());
    let inputs = candle_core::safetensors::load(input, &device)
        .with_context(|| format!("reading {}", input.display()))?;
    let x = inputs
        .get("input")
        .with_context(|| format!("{}: no tensor named `input`", input.display()))?
        .to_dtype(DType::F32)?;
    if x.rank() != 4 || x.dim(1)? != 3 {
        anyhow::bail!(
            "{}: `input` must be (N, 3, H, W), got {:?}",
            input.display(),
            x.dims()
        );
    }
    let fmap = net.forward_t(&x, train)?;
    let features = fmap.mean((2, 3))?;
    let mut map: HashMap<String, Tensor> = HashMap::new();
    map.insert("feature_map".into(), fmap);
    map.insert("features".into(), features);
    let bytes = safetensors::serialize(map.iter().map(|(k, v)| (k.as_str(), v)), None)?;
    crate::record::atomic_io::write_atomic(out, &bytes)
}
