//! Conformance of a whole training step ([`crate::step::train_step()`]): a small MTANet
//! (ResNet-50 layout at 1/16 width, one block per stage) with the same seeded weights, batch
//! and dropout seed on the device under test and on the reference device, one SGD step each;
//! compared: the losses the step read back, the gradient norm, the gradients of a few
//! parameters (the momentum buffers after the first step, `scale * g` with no weight decay),
//! the updated parameters and the BatchNorm running statistics.
//!
//! Two variants: the training loop's (guarded: finiteness check and gradient clipping, so the
//! step's one host read happens; masks on the host, [`crate::step::batch_targets`]) and the
//! bench's (unguarded, masks on the device: nothing read back, the masked losses computed on
//! the device). In the CPU mode both devices are the CPU and the rows compare the step with
//! itself (deterministic kernels: zero error); the point there is that the pipeline runs.

use super::conformance::*;
use super::cpu_randn;

use anyhow::Context;
use candle_core::{DType, Device, Tensor};
use mtanet_backbones::{BackboneKind, MtaNet, MtaNetConfig, ResNetConfig, SeededVarMap};
use mtanet_losses::{AuReduction, LossKind, Targets};

use crate::experiment::{OptimizerKind, StageConfig};
use crate::step::optim::{params, Optimizer};
use crate::step::{train_step, Objective, StepGuard};

/// Relative tolerance of the whole-step rows: a forward, losses and backward through a
/// backbone and three heads compound the per-op differences (each op's rows hold 1e-4).
pub(super) const STEP_TOLERANCE: f32 = 1e-3;
/// Batch and input side of the step.
const BATCH: usize = 4;
const SIZE: usize = 32;
/// Heads of the small MTANet.
const N_AU: usize = 5;
const N_EXPR: usize = 4;
/// Parameters whose gradient (momentum buffer) and update are compared, as (prefix, suffix)
/// of their names (the first match in name order): the stem, a convolution and a BatchNorm
/// affine deep in the backbone, a head.
const PARAMS: [(&str, &str); 4] = [
    ("backbone.conv1.", "weight"),
    ("backbone.layer2.", "conv2.weight"),
    ("backbone.layer4.", "bn3.weight"),
    ("head.", ".weight"),
];
/// BatchNorm running statistics compared after the step, as (prefix, suffix).
const RUNNING: [(&str, &str); 3] = [
    ("backbone.bn1.", "running_mean"),
    ("backbone.bn1.", "running_var"),
    ("backbone.layer3.", "running_var"),
];

/// The first name of `names` (sorted) with `prefix` and `suffix`.
fn pick<'a>(names: &[&'a String], (prefix, suffix): (&str, &str)) -> anyhow::Result<&'a String> {
    names
        .iter()
        .find(|n| n.starts_with(prefix) && n.ends_with(suffix))
        .copied()
        .with_context(|| format!("no variable {prefix}*{suffix}"))
}

/// What one step on one device yields, every tensor on the CPU: named scalars (losses, norm)
/// and named tensors (gradients, parameters, running statistics).
struct StepResult {
    scalars: Vec<(String, f64)>,
    tensors: Vec<(String, Tensor)>,
}

/// The batch's labels, with masked rows holding markers the losses must never read.
fn targets() -> anyhow::Result<Targets> {
    let dev = Device::Cpu;
    let mut va = cpu_randn(1702, &[BATCH, 2], 0.4)?.clamp(-1f32, 1f32)?;
    let va_mask = Tensor::new(&[1f32, 1.0, 0.0, 1.0], &dev)?;
    // Row 2 is masked for VA: a -5 marker, as Aff-Wild2's annotations.
    va = va_mask
        .unsqueeze(1)?
        .broadcast_as((BATCH, 2))?
        .ne(0f32)?
        .where_cond(&va, &Tensor::full(-5f32, (BATCH, 2), &dev)?)?;
    let au = cpu_randn(1703, &[BATCH, N_AU], 1.0)?
        .ge(0.0)?
        .to_dtype(DType::F32)?;
    let au_mask = Tensor::new(&[1f32, 0.0, 1.0, 1.0], &dev)?;
    // Row 0 is masked for EXPR with an out-of-range class.
    let expr = Tensor::new(&[99u32, 3, 0, 2], &dev)?;
    let expr_mask = Tensor::new(&[0f32, 1.0, 1.0, 1.0], &dev)?;
    Ok(Targets {
        va,
        va_mask,
        au,
        au_mask,
        expr,
        expr_mask,
    })
}

/// One SGD step of the small MTANet on `dev`: `guarded` is the training loop's step (host
/// masks, finiteness check, clipping), otherwise the bench's (device masks, nothing read).
fn step_on(dev: &Device, guarded: bool) -> anyhow::Result<StepResult> {
    let backbone =
        ResNetConfig::from_kind(&BackboneKind::Resnet50).scaled(16, Some([1, 1, 1, 1]), None);
    let cfg = MtaNetConfig {
        hidden: 16,
        ..MtaNetConfig::new(backbone, N_AU, N_EXPR)
    };
    // Seeded weights drawn on the CPU: the same numbers on every device.
    let vars = SeededVarMap::new(1700);
    let model = MtaNet::new(&cfg, vars.var_builder(DType::F32, dev))?;
    model.set_dropout_seed(1701);
    let all = vars
        .varmap()
        .data()
        .lock()
        .map_err(|_| anyhow::anyhow!("VarMap lock poisoned"))?
        .clone();
    let stage = StageConfig {
        name: "gpu-check".into(),
        optimizer: OptimizerKind::Sgd,
        lr: 0.05,
        momentum: 0.9,
        weight_decay: 0.0,
        ..StageConfig::default()
    };
    let mut opt = Optimizer::new(&stage, params(&all, true));
    let images = cpu_randn(1704, &[BATCH, 3, SIZE, SIZE], 1.0)?.to_device(dev)?;
    let t = targets()?;
    let (targets, guard) = if guarded {
        let guard = StepGuard {
            check_finite: true,
            // Below the first step's norm, so that the clip scale is applied.
            grad_clip: Some(0.5),
        };
        (t.with_labels_on(dev)?, guard)
    } else {
        (t.to_device(dev)?, StepGuard::default())
    };
    let objective = Objective {
        kind: LossKind::Sum,
        uncertainty: None,
        au_pos_weight: None,
        au_reduction: AuReduction::Sum,
    };
    let out = train_step(&model, &images, &targets, &objective, &mut opt, guard)?;
    if let Some(fault) = out.fault {
        anyhow::bail!("the step refused its update: {fault}")
    }
    let mut scalars = Vec::new();
    if guarded {
        scalars.push(("loss total".to_string(), out.total as f64));
        for (name, v) in [
            ("va", out.loss.va),
            ("au", out.loss.au),
            ("expr", out.loss.expr),
        ] {
            let v = v.with_context(|| format!("the {name} loss is absent"))?;
            scalars.push((format!("loss {name}"), v as f64));
        }
        scalars.push(("gradient norm".to_string(), out.grad_norm));
    }
    let (state, _) = opt.state();
    let cpu = |t: &Tensor| t.to_device(&Device::Cpu);
    let mut names: Vec<&String> = all.keys().collect();
    names.sort();
    let mut tensors = Vec::new();
    for spec in PARAMS {
        let name = pick(&names, spec)?;
        let m = state
            .get(&format!("m.{name}"))
            .with_context(|| format!("no momentum buffer for {name}"))?;
        tensors.push((format!("scaled grad {name}"), cpu(m)?));
        tensors.push((format!("updated {name}"), cpu(all[name].as_tensor())?));
    }
    for spec in RUNNING {
        let name = pick(&names, spec)?;
        tensors.push((name.to_string(), cpu(all[name].as_tensor())?));
    }
    Ok(StepResult { scalars, tensors })
}

/// The whole-step rows, both variants.
pub(super) fn check_train_step(c: &mut Checker) {
    for (guarded, item) in [
        (true, "train_step small resnet50 (guarded, host masks)"),
        (false, "train_step small resnet50 (unguarded, device masks)"),
    ] {
        c.guard(item, &format!("[{BATCH}, 3, {SIZE}, {SIZE}]"), |c| {
            c.injected(item)?;
            let want = step_on(&c.reference.clone(), guarded)?;
            let got = step_on(&c.dev.clone(), guarded)?;
            for ((name, a), (_, b)) in got.scalars.iter().zip(&want.scalars) {
                let a = Tensor::new(&[*a as f32], &Device::Cpu)?;
                let b = Tensor::new(&[*b as f32], &Device::Cpu)?;
                c.push_with(STEP_TOLERANCE, item, name, &a, &b, None)?;
            }
            for ((name, a), (_, b)) in got.tensors.iter().zip(&want.tensors) {
                c.push_with(STEP_TOLERANCE, item, name, a, b, None)?;
            }
            Ok(())
        });
    }
}
