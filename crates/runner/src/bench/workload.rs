//! The workload `mtanet bench` and `gpu-check` time: the full-size network, its optimizer and
//! one fixed-seed batch.

use candle_core::{DType, Device, Tensor};
use mtanet_backbones::{BackboneKind, MtaNet, MtaNetConfig, Precision, ResNetConfig, SeededVarMap};
use mtanet_kernels::EvalPacks;
use mtanet_losses::{AuReduction, LossKind, Targets};

use super::{N_AU, N_EXPR};
use crate::experiment::{OptimizerKind, StageConfig};
use crate::step::optim::{params, Optimizer};
use crate::step::{eval_step, train_step, HostOutputs, Objective, StepGuard, StepOutcome};

/// The benchmarked training workload: the full-size MTANet of a backbone with its heads, SGD
/// (momentum 0.9, weight decay 5e-3, as the paper's second stage), and one batch of inputs
/// and labels drawn from a fixed seed on the CPU and uploaded (no device RNG needed).
/// `mtanet bench` and `gpu-check` time exactly this.
pub struct Workload {
    /// The network's configuration.
    pub config: MtaNetConfig,
    /// The network.
    pub model: MtaNet,
    /// SGD over every variable.
    pub opt: Optimizer,
    /// (N, 3, size, size) inputs.
    pub images: Tensor,
    /// Every frame labelled for every task.
    pub targets: Targets,
}

impl Workload {
    /// Builds the workload for `kind` at `batch` x `size` x `size` on `dev`.
    pub fn new(
        kind: BackboneKind,
        batch: usize,
        size: usize,
        precision: Precision,
        dev: &Device,
    ) -> anyhow::Result<Self> {
        let config = MtaNetConfig::new(ResNetConfig::from_kind(&kind), N_AU, N_EXPR);
        let vars = SeededVarMap::new(7);
        let model =
            MtaNet::new(&config, vars.var_builder(DType::F32, dev))?.with_precision(precision);
        let stage = StageConfig {
            name: "bench".into(),
            optimizer: OptimizerKind::Sgd,
            lr: 1e-3,
            weight_decay: 5e-3,
            ..StageConfig::default()
        };
        let all_vars: std::collections::HashMap<_, _> = vars
            .varmap()
            .data()
            .lock()
            .map_err(|_| anyhow::anyhow!("VarMap lock poisoned"))?
            .clone();
        let opt = Optimizer::new(&stage, params(&all_vars, true));
        let images = cpu_randn(11, &[batch, 3, size, size], 1.0)?.to_device(dev)?;
        let va = cpu_randn(12, &[batch, 2], 0.5)?
            .clamp(-1f32, 1f32)?
            .to_device(dev)?;
        let au = cpu_randn(13, &[batch, N_AU], 1.0)?
            .ge(0.0)?
            .to_dtype(DType::F32)?
            .to_device(dev)?;
        let classes: Vec<u32> = (0..batch).map(|i| (i % N_EXPR) as u32).collect();
        let expr = Tensor::new(classes.as_slice(), dev)?;
        let ones = Tensor::ones(batch, DType::F32, dev)?;
        let targets = Targets {
            va,
            va_mask: ones.clone(),
            au,
            au_mask: ones.clone(),
            expr,
            expr_mask: ones,
        };
        Ok(Self {
            config,
            model,
            opt,
            images,
            targets,
        })
    }

    /// One training step (summed loss, no finiteness guard: PyTorch's loop has none).
    pub fn train_step(&mut self) -> anyhow::Result<StepOutcome> {
        let objective = Objective {
            kind: LossKind::Sum,
            uncertainty: None,
            au_pos_weight: None,
            au_reduction: AuReduction::Mean,
        };
        train_step(
            &self.model,
            &self.images,
            &self.targets,
            &objective,
            &mut self.opt,
            StepGuard::default(),
        )
    }

    /// One eval step on the batch, in the evaluation pass whose store of packed weight layouts
    /// is `packs`.
    pub fn eval_step(&self, packs: &EvalPacks) -> anyhow::Result<HostOutputs> {
        Ok(eval_step(&self.model, &self.images, packs)?)
    }
}

/// Deterministic test data on the CPU (a fixed-seed normal), moved to each device as needed.
pub fn cpu_randn(seed: u64, shape: &[usize], std: f64) -> anyhow::Result<Tensor> {
    use rand::{Rng, SeedableRng};
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let n: usize = shape.iter().product();
    // Box-Muller from uniform draws: no extra dependency, fixed across platforms.
    let values: Vec<f32> = (0..n)
        .map(|_| {
            let u1: f64 = rng.random_range(1e-12..1.0);
            let u2: f64 = rng.random_range(0.0..1.0);
            ((-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos() * std) as f32
        })
        .collect();
    Ok(Tensor::from_vec(values, shape, &Device::Cpu)?)
}
