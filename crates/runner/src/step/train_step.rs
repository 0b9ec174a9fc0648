//! One training step: forward in train mode, the task losses against the batch's
//! [`Targets`], their combination, backward, and the optimizer update.
//!
//! Training, `bench` and `gpu-check` all call [`train_step`]; nothing else computes a loss
//! or applies an update.

use std::time::{Duration, Instant};

use candle_core::{DType, Device, Tensor};
use mtanet_affwild2::Batch;
use mtanet_backbones::MtaNet;
use mtanet_losses::{
    total_loss, AuReduction, LossKind, LossReport, Targets, TaskLossOptions, TaskLosses,
    UncertaintyWeights,
};

use super::optim::Optimizer;

/// What the step minimises: how the task losses combine and their fixed parameters.
#[derive(Clone, Copy)]
pub struct Objective<'a> {
    /// Plain sum or Kendall uncertainty weighting (paper Eq. 5).
    pub kind: LossKind,
    /// The learned log-variances; required for [`LossKind::Uncertainty`].
    pub uncertainty: Option<&'a UncertaintyWeights>,
    /// Per-AU positive weights of the BCE (K), if any.
    pub au_pos_weight: Option<&'a Tensor>,
    /// How the AU BCE reduces: summed over the AUs as paper Eq. 2 writes it, or averaged
    /// over frames x AUs.
    pub au_reduction: AuReduction,
}

/// How a step guards and scales the update.
#[derive(Clone, Copy, Debug, Default)]
pub struct StepGuard {
    /// Refuse the update when the loss or the gradient norm is not finite (computes the
    /// gradient norm, one reduction over every gradient).
    pub check_finite: bool,
    /// Scale the gradients down to this global L2 norm when it is exceeded.
    pub grad_clip: Option<f64>,
}

/// The result of one step.
pub struct StepOutcome {
    /// The per-task losses and the objective.
    pub loss: LossReport,
    /// Host value of the objective.
    pub total: f32,
    /// Global gradient L2 norm (`NaN` when it was not computed).
    pub grad_norm: f64,
    /// Why the update was refused (a non-finite loss or gradient), naming the task; `None`
    /// when the optimizer stepped.
    pub fault: Option<String>,
    /// Wall time of forward + losses, backward, and the optimizer update.
    pub phases: [Duration; 3],
}

/// The batch's labels as loss [`Targets`] on `device`.
pub fn batch_targets(batch: &Batch, device: &Device) -> candle_core::Result<Targets> {
    Targets {
        va: batch.va.clone(),
        va_mask: batch.va_mask.clone(),
        au: batch.au.clone(),
        au_mask: batch.au_mask.clone(),
        expr: batch.expr.clone(),
        expr_mask: batch.expr_mask.clone(),
    }
    .to_device(device)
}

/// Forward in train mode and the objective, without backward (also used to check losses).
pub fn forward_loss(
    model: &MtaNet,
    images: &Tensor,
    targets: &Targets,
    objective: &Objective,
) -> anyhow::Result<LossReport> {
    let out = model.forward_t(images, true)?;
    let losses = TaskLosses::compute(
        &out.va,
        &out.au_logits,
        &out.expr_logits,
        targets,
        TaskLossOptions {
            au_pos_weight: objective.au_pos_weight,
            au_reduction: objective.au_reduction,
        },
    )?;
    let uw = matches!(objective.kind, LossKind::Uncertainty)
        .then_some(objective.uncertainty)
        .flatten();
    Ok(total_loss(&losses, objective.kind, uw)?)
}

/// One optimizer step on `images` / `targets` at the optimizer's current learning rate.
///
/// With `guard.check_finite`, a non-finite loss skips backward and a non-finite gradient
/// norm skips the update; the outcome's `fault` says which, and the weights are untouched.
pub fn train_step(
    model: &MtaNet,
    images: &Tensor,
    targets: &Targets,
    objective: &Objective,
    opt: &mut Optimizer,
    guard: StepGuard,
) -> anyhow::Result<StepOutcome> {
    let t0 = Instant::now();
    let loss = forward_loss(model, images, targets, objective)?;
    let total = loss.total.to_dtype(DType::F32)?.to_scalar::<f32>()?;
    let t1 = Instant::now();
    if guard.check_finite && !total.is_finite() {
        let fault = format!(
            "non-finite loss ({total}) in task `{}`",
            non_finite_task(&loss)
        );
        return Ok(StepOutcome {
            loss,
            total,
            grad_norm: f64::NAN,
            fault: Some(fault),
            phases: [t1 - t0, Duration::ZERO, Duration::ZERO],
        });
    }
    let grads = loss.total.backward()?;
    let grad_norm = if guard.check_finite || guard.grad_clip.is_some() {
        opt.grad_norm(&grads)?
    } else {
        f64::NAN
    };
    let t2 = Instant::now();
    if guard.check_finite && !grad_norm.is_finite() {
        return Ok(StepOutcome {
            loss,
            total,
            grad_norm,
            fault: Some(format!("non-finite gradient norm ({grad_norm})")),
            phases: [t1 - t0, t2 - t1, Duration::ZERO],
        });
    }
    let scale = match guard.grad_clip {
        Some(c) if grad_norm > c => c / (grad_norm + 1e-6),
        _ => 1.0,
    };
    opt.step(&grads, scale)?;
    Ok(StepOutcome {
        loss,
        total,
        grad_norm,
        fault: None,
        phases: [t1 - t0, t2 - t1, t2.elapsed()],
    })
}

/// Which task's loss is not finite, for the error message.
fn non_finite_task(report: &LossReport) -> &'static str {
    if report.va.is_some_and(|v| !v.is_finite()) {
        "va"
    } else if report.au.is_some_and(|v| !v.is_finite()) {
        "au"
    } else if report.expr.is_some_and(|v| !v.is_finite()) {
        "expr"
    } else {
        "total"
    }
}
