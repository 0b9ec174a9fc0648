//! One training step: forward in train mode, the task losses against the batch's
//! [`Targets`], their combination, backward, and the optimizer update.
//!
//! Training, `bench` and `gpu-check` all call [`train_step`]; nothing else computes a loss
//! or applies an update.
//!
//! # Host reads
//!
//! On a GPU a step reads at most one thing back to the host, after backward: the objective, the
//! task losses, the uncertainty log-variances and the squared gradient norm, concatenated on the
//! device and copied in one transfer ([`LossTerms::read`]), and only when the step is guarded
//! ([`StepGuard::check_finite`] or [`StepGuard::grad_clip`], as in training: the host needs the
//! values to refuse an update or to scale it). An unguarded step (`StepGuard::default()`, the
//! bench) reads nothing: its [`StepOutcome::total`] and the report's losses are NaN. Everything
//! else stays on the device: the BatchNorm statistics and running averages
//! (`mtanet_kernels::BatchStats`), the loss masks (on the host from [`batch_targets`], on the
//! device when the caller puts them there), the gradient norm
//! ([`Optimizer::grad_norm_sq`]) and the update.

use std::time::{Duration, Instant};

use candle_core::{Device, Tensor};
use mtanet_affwild2::Batch;
use mtanet_backbones::MtaNet;
use mtanet_losses::{
    combine_losses, AuReduction, LossKind, LossReport, LossTerms, Targets, TaskLossOptions,
    TaskLosses, UncertaintyWeights,
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
    /// gradient norm, one device reduction over every gradient, and reads the step's values
    /// to the host in one copy).
    pub check_finite: bool,
    /// Scale the gradients down to this global L2 norm when it is exceeded (computes the
    /// gradient norm, and reads it with the losses in one copy).
    pub grad_clip: Option<f64>,
}

/// The result of one step.
pub struct StepOutcome {
    /// The per-task losses and the objective.
    pub loss: LossReport,
    /// Host value of the objective (`NaN` for an unguarded step, which reads nothing back).
    pub total: f32,
    /// Global gradient L2 norm (`NaN` when it was not computed).
    pub grad_norm: f64,
    /// Why the update was refused (a non-finite loss or gradient), naming the task; `None`
    /// when the optimizer stepped.
    pub fault: Option<String>,
    /// Wall time of forward + losses, backward, and the optimizer update.
    pub phases: [Duration; 3],
}

/// The batch's labels as loss [`Targets`] for a step on `device`: the labels there, the masks
/// and class indices left on the host where the losses read them
/// ([`Targets::with_labels_on`]), so that no loss reads the device.
pub fn batch_targets(batch: &Batch, device: &Device) -> candle_core::Result<Targets> {
    Targets {
        va: batch.va.clone(),
        va_mask: batch.va_mask.clone(),
        au: batch.au.clone(),
        au_mask: batch.au_mask.clone(),
        expr: batch.expr.clone(),
        expr_mask: batch.expr_mask.clone(),
    }
    .with_labels_on(device)
}

/// Forward in train mode and the objective, without backward (also used to check losses);
/// the host values read in one copy.
pub fn forward_loss(
    model: &MtaNet,
    images: &Tensor,
    targets: &Targets,
    objective: &Objective,
) -> anyhow::Result<LossReport> {
    Ok(forward_terms(model, images, targets, objective)?
        .read(&[])?
        .0)
}

/// Forward in train mode and the objective, without backward and without reading anything
/// back to the host.
pub fn forward_terms(
    model: &MtaNet,
    images: &Tensor,
    targets: &Targets,
    objective: &Objective,
) -> anyhow::Result<LossTerms> {
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
    Ok(combine_losses(&losses, objective.kind, uw)?)
}

/// One optimizer step on `images` / `targets` at the optimizer's current learning rate.
///
/// With `guard.check_finite`, a non-finite loss or gradient norm skips the update; the
/// outcome's `fault` says which, and the weights are untouched (the BatchNorm running
/// statistics have moved, as in any forward pass in train mode). A guarded step reads its
/// values back once, after backward (the loss is checked then, so backward also runs on a
/// non-finite loss, whose gradients are dropped); an unguarded one reads nothing.
pub fn train_step(
    model: &MtaNet,
    images: &Tensor,
    targets: &Targets,
    objective: &Objective,
    opt: &mut Optimizer,
    guard: StepGuard,
) -> anyhow::Result<StepOutcome> {
    let t0 = Instant::now();
    let terms = forward_terms(model, images, targets, objective)?;
    let t1 = Instant::now();
    let grads = model.backward(&terms.total)?;
    if !guard.check_finite && guard.grad_clip.is_none() {
        let t2 = Instant::now();
        opt.step(&grads, 1.0)?;
        return Ok(StepOutcome {
            loss: terms.unread(),
            total: f32::NAN,
            grad_norm: f64::NAN,
            fault: None,
            phases: [t1 - t0, t2 - t1, t2.elapsed()],
        });
    }
    let norm_sq = opt.grad_norm_sq(&grads)?;
    // The step's one host read: losses, weights and the squared gradient norm together.
    let (loss, total, rest) = terms.read(&[&norm_sq])?;
    let grad_norm = rest.first().copied().unwrap_or(f64::NAN).sqrt();
    let t2 = Instant::now();
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
            phases: [t1 - t0, t2 - t1, Duration::ZERO],
        });
    }
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
