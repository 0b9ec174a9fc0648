//! `mtanet model forward`: one batch through a backbone with given weights, or through a
//! trained run's whole MTANet, so anyone can check our networks against PyTorch on their own
//! machine (`scripts/export_pytorch.py` does so for a run).

use std::collections::HashMap;
use std::path::Path;

use anyhow::Context;
use candle_core::{DType, Device, Tensor};
use candle_nn::{ModuleT, VarBuilder, VarMap};
use mtanet_backbones::{load_pretrained, Precision, ResNet, ResNetConfig};

/// Reads tensor `input` (N, 3, H, W) from a safetensors file as f32 on `device`.
fn read_input(input: &Path, device: &Device) -> anyhow::Result<Tensor> {
    let inputs = candle_core::safetensors::load(input, device)
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
    Ok(x)
}

/// Writes named tensors to `out` as safetensors.
fn write_tensors(out: &Path, map: &HashMap<String, Tensor>) -> anyhow::Result<()> {
    let bytes = safetensors::serialize(map.iter().map(|(k, v)| (k.as_str(), v)), None)?;
    crate::record::atomic_io::write_atomic(out, &bytes)
}

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
    let x = read_input(input, &device)?;
    let fmap = net.forward_t(&x, train)?;
    let features = fmap.mean((2, 3))?;
    let mut map: HashMap<String, Tensor> = HashMap::new();
    map.insert("feature_map".into(), fmap);
    map.insert("features".into(), features);
    write_tensors(out, &map)
}

/// Loads a run's MTANet (`checkpoint`: a run directory or a checkpoint file, with the run's
/// `config.yaml`), runs `input` through it in eval mode, in f32 on the CPU, and writes `va`
/// (after the configured activation), `au_logits`, `expr_logits`, the backbone's
/// `feature_map` and the shared `features` to `out`.
pub fn run_mtanet(checkpoint: &Path, input: &Path, out: &Path) -> anyhow::Result<()> {
    let loaded = crate::build::restore::load_model(checkpoint, None, Some("cpu"))?;
    eprintln!(
        "{}: {} (config {}), {} AUs, {} expressions",
        loaded.checkpoint.display(),
        loaded.config.model.backbone,
        loaded.run_dir.join("config.yaml").display(),
        loaded.n_au,
        loaded.n_expr
    );
    let model = loaded.model.with_precision(Precision::F32);
    let x = read_input(input, &loaded.device)?;
    let (fmap, features) = model.forward_features_t(&x, false)?;
    let heads = model.heads(&features)?;
    let mut map: HashMap<String, Tensor> = HashMap::new();
    map.insert("va".into(), heads.va);
    map.insert("au_logits".into(), heads.au_logits);
    map.insert("expr_logits".into(), heads.expr_logits);
    map.insert("feature_map".into(), fmap);
    map.insert("features".into(), features);
    write_tensors(out, &map)
}
