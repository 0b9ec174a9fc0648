//! The one path from a checkpoint to a model: training's resume, `predict`, `evaluate` and
//! `thread_determinism` all restore weights through [`restore_vars`].

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use candle_core::{DType, Device, Tensor};
use mtanet_affwild2::Vocab;
use mtanet_backbones::MtaNet;

use crate::build::model::model_config;
use crate::experiment::Config;
use crate::predict::PredictError;
use mtanet_backbones::SeededVarMap;

/// Every variable of a map by name (the tensors a checkpoint stores under `model.`).
pub fn var_tensors(vars: &SeededVarMap) -> HashMap<String, Tensor> {
    vars.varmap()
        .data()
        .lock()
        .expect("var map lock poisoned")
        .iter()
        .map(|(k, v)| (k.clone(), v.as_tensor().clone()))
        .collect()
}

/// Copies the checkpoint's tensors into every variable of `vars`: each variable must be in
/// the checkpoint with its shape (errors name the file and the tensor).
pub fn restore_vars(
    vars: &SeededVarMap,
    saved: &HashMap<String, Tensor>,
    path: &Path,
) -> anyhow::Result<()> {
    let data = vars.varmap().data().lock().expect("var map lock poisoned");
    for (k, v) in data.iter() {
        let t = saved
            .get(k)
            .with_context(|| format!("{}: checkpoint lacks `{k}`", path.display()))?;
        if t.shape() != v.shape() {
            bail!(
                "{}: `{k}` has shape {:?} in the checkpoint, the model expects {:?}",
                path.display(),
                t.dims(),
                v.dims()
            );
        }
        v.set(&t.to_dtype(v.dtype())?)?;
    }
    Ok(())
}

/// Reads a run's resolved `config.yaml` and checks its values again (it may have been edited
/// since the run started).
pub fn read_run_config(path: &Path) -> anyhow::Result<Config> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let config: Config = serde_yaml::from_str(&text)
        .with_context(|| format!("{}: invalid run config", path.display()))?;
    config.validate(&path.display().to_string())?;
    Ok(config)
}

/// A checkpoint loaded for inference.
pub struct LoadedModel {
    /// The network (eval mode is selected per call).
    pub model: MtaNet,
    /// The run configuration.
    pub config: Config,
    /// The device it runs on.
    pub device: Device,
    /// The checkpoint file.
    pub checkpoint: PathBuf,
    /// The folder holding the config (the run directory), where `report.json` is looked for.
    pub run_dir: PathBuf,
    /// AUs of the AU head.
    pub n_au: usize,
    /// Classes of the expression head.
    pub n_expr: usize,
}

/// Finds the checkpoint file and the config of `checkpoint` (a run directory or a file).
pub fn resolve_checkpoint(
    checkpoint: &Path,
    config: Option<&Path>,
) -> Result<(PathBuf, PathBuf), PredictError> {
    let file = if checkpoint.is_dir() {
        checkpoint.join("checkpoints").join("last.safetensors")
    } else {
        checkpoint.to_path_buf()
    };
    if !file.is_file() {
        return Err(PredictError::NoCheckpoint {
            path: checkpoint.to_path_buf(),
        });
    }
    let cfg = match config {
        Some(c) => c.to_path_buf(),
        None if checkpoint.is_dir() => checkpoint.join("config.yaml"),
        None => file
            .parent()
            .and_then(Path::parent)
            .map(|d| d.join("config.yaml"))
            .unwrap_or_else(|| PathBuf::from("config.yaml")),
    };
    if !cfg.is_file() {
        return Err(PredictError::NoConfig {
            expected: cfg,
            checkpoint: file,
        });
    }
    Ok((file, cfg))
}

fn head_size(
    model: &HashMap<String, Tensor>,
    path: &Path,
    name: &str,
) -> Result<usize, PredictError> {
    model
        .get(name)
        .and_then(|t| t.dims().first().copied())
        .ok_or_else(|| PredictError::NotMtaNet {
            path: path.to_path_buf(),
            name: name.to_string(),
        })
}

/// Loads a checkpoint (see [`resolve_checkpoint`]) into an MTANet built from its run config.
pub fn load_model(
    checkpoint: &Path,
    config: Option<&Path>,
    device: Option<&str>,
) -> anyhow::Result<LoadedModel> {
    let (file, cfg_path) = resolve_checkpoint(checkpoint, config)?;
    let mut cfg = read_run_config(&cfg_path)?;
    if let Some(d) = device {
        cfg.device = d.to_string();
    }
    let device = crate::build::device::open(
        crate::build::device::parse_device(&cfg.device).map_err(anyhow::Error::msg)?,
    )?;
    let ckpt = crate::record::checkpoint::load(&file, &device)?;
    let n_au = head_size(&ckpt.model, &file, "head.au.weight")?;
    let n_expr = head_size(&ckpt.model, &file, "head.expr.weight")?;
    let sizes = Vocab {
        au_names: vec![String::new(); n_au],
        expr_names: vec![String::new(); n_expr],
    };
    let vars = SeededVarMap::new(0);
    let model = MtaNet::new(
        &model_config(&cfg, &sizes),
        vars.var_builder(DType::F32, &device),
    )
    .map(|m| m.with_precision(cfg.precision))
    .map_err(anyhow::Error::from)
    .and_then(|m| restore_vars(&vars, &ckpt.model, &file).map(|()| m))
    .with_context(|| {
        format!(
            "{}: does not match the model of {}",
            file.display(),
            cfg_path.display()
        )
    })?;
    let run_dir = cfg_path.parent().map(Path::to_path_buf).unwrap_or_default();
    Ok(LoadedModel {
        model,
        config: cfg,
        device,
        checkpoint: file,
        run_dir,
        n_au,
        n_expr,
    })
}
