//! Per-task losses of a batch and their combination into the training objective.

use candle_core::{DType, Device, Result, Tensor};
use serde::{Deserialize, Serialize};

use crate::bce::{masked_bce_with_logits, AuReduction};
use crate::ccc::masked_ccc_loss;
use crate::ce::masked_cross_entropy;
use crate::error::LossError;
use crate::mask::{on_host, valid_rows};
use crate::targets::Targets;
use crate::uncertainty::UncertaintyWeights;

/// The three task losses of one batch; `None` = the task is absent from the batch.
#[derive(Clone, Debug, Default)]
pub struct TaskLosses {
    /// CCC loss (Eq. 4), `None` when fewer than 2 frames carry VA labels.
    pub va: Option<Tensor>,
    /// AU binary cross-entropy (Eq. 2), `None` when no frame carries AU labels.
    pub au: Option<Tensor>,
    /// Expression cross-entropy (Eq. 1), `None` when no frame carries an expression label.
    pub expr: Option<Tensor>,
}

/// The fixed settings of the task losses; the default is Eq. 2 without positive weights.
#[derive(Clone, Copy, Debug, Default)]
pub struct TaskLossOptions<'a> {
    /// Per-AU positive weights of the BCE (K), if any.
    pub au_pos_weight: Option<&'a Tensor>,
    /// How the AU BCE reduces (Eq. 2's sum over AUs, or the mean over frames x AUs).
    pub au_reduction: AuReduction,
}

impl TaskLosses {
    /// Computes all three from model outputs and the batch's [`Targets`] (`None` where the
    /// batch has too few valid frames).
    ///
    /// Shapes: `va_pred` (N,2), `au_logits` (N,K), `expr_logits` (N,C),
    /// `options.au_pos_weight` (K). A task needs >= 2 valid frames for VA and >= 1 for AU
    /// and EXPR. Masks on the CPU (as [`Targets::with_labels_on`] leaves them) are read there;
    /// a mask on a device is never read back, so its task counts as present and contributes the
    /// device-side exact zero of its loss when it has too few valid frames (with uncertainty
    /// weighting its `0.5 s` term then stays in the objective).
    pub fn compute(
        va_pred: &Tensor,
        au_logits: &Tensor,
        expr_logits: &Tensor,
        targets: &Targets,
        options: TaskLossOptions,
    ) -> Result<TaskLosses> {
        let Targets {
            va,
            va_mask,
            au,
            au_mask,
            expr,
            expr_mask,
        } = targets;
        // usize::MAX: a device mask, counted on the device by the loss itself.
        let count = |t: &Tensor, m: &Tensor, field: &'static str| -> Result<usize> {
            if !on_host(m) {
                return Ok(usize::MAX);
            }
            let n = t.dims().first().copied().unwrap_or(0);
            Ok(valid_rows(m, n, "TaskLosses::compute", field)?.len())
        };
        let va_loss = if count(va_pred, va_mask, "va_mask")? >= 2 {
            Some(masked_ccc_loss(va_pred, va, va_mask)?)
        } else {
            None
        };
        let au_loss = if count(au_logits, au_mask, "au_mask")? >= 1 {
            Some(masked_bce_with_logits(
                au_logits,
                au,
                au_mask,
                options.au_pos_weight,
                options.au_reduction,
            )?)
        } else {
            None
        };
        let expr_loss = if count(expr_logits, expr_mask, "expr_mask")? >= 1 {
            Some(masked_cross_entropy(expr_logits, expr, expr_mask)?)
        } else {
            None
        };
        Ok(TaskLosses {
            va: va_loss,
            au: au_loss,
            expr: expr_loss,
        })
    }

    /// The present losses in the order va, au, expr.
    fn present(&self) -> impl Iterator<Item = &Tensor> {
        [&self.va, &self.au, &self.expr].into_iter().flatten()
    }
}

/// How the task losses are combined (paper Sec. III-B: plain sum, then Eq. 5 fine-tuning).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LossKind {
    /// `L_va + L_au + L_expr` over the tasks present in the batch.
    #[default]
    Sum,
    /// Kendall uncertainty weighting, Eq. 5 (see [`UncertaintyWeights`]).
    Uncertainty,
}

/// The training objective of one batch plus host copies of its parts for logging.
#[derive(Clone, Debug)]
pub struct LossReport {
    /// Scalar f32 objective to call `backward()` on.
    pub total: Tensor,
    /// Host value of the VA loss (before weighting), if present (NaN when not read, see
    /// [`LossTerms::unread`]).
    pub va: Option<f32>,
    /// Host value of the AU loss (before weighting), if present (NaN when not read).
    pub au: Option<f32>,
    /// Host value of the EXPR loss (before weighting), if present (NaN when not read).
    pub expr: Option<f32>,
    /// For `Uncertainty`: the factors multiplying each loss, `[0.5 e^-s_va, e^-s_au, e^-s_expr]`
    /// (also for absent tasks); `None` for `Sum` (NaN when not read).
    pub weights: Option<[f32; 3]>,
}

/// The objective of one batch and its parts, all still on the device: nothing read back yet.
/// [`LossTerms::read`] brings every host value over in one copy.
#[derive(Clone, Debug)]
pub struct LossTerms {
    /// Scalar f32 objective to call `backward()` on.
    pub total: Tensor,
    /// The VA loss (before weighting), if present.
    pub va: Option<Tensor>,
    /// The AU loss (before weighting), if present.
    pub au: Option<Tensor>,
    /// The EXPR loss (before weighting), if present.
    pub expr: Option<Tensor>,
    /// For `Uncertainty`: the log-variances `s` (va, au, expr) the weights come from.
    pub log_vars: Option<[Tensor; 3]>,
}

impl LossTerms {
    /// The host values of the objective, of each present loss and of the uncertainty weights,
    /// and of `extra` scalars (e.g. a gradient norm, returned in order, as f64), in one
    /// device-to-host copy: every value is cast to f64 and concatenated on the objective's
    /// device first (f32 values round-trip exactly). The only host read of a training step.
    pub fn read(&self, extra: &[&Tensor]) -> Result<(LossReport, f32, Vec<f64>)> {
        let dev = self.total.device();
        let present = [&self.va, &self.au, &self.expr];
        let mut parts: Vec<&Tensor> = vec![&self.total];
        parts.extend(present.iter().copied().flatten());
        if let Some(s) = &self.log_vars {
            parts.extend(s.iter());
        }
        parts.extend(extra.iter().copied());
        let scalars = parts
            .iter()
            .map(|t| t.to_device(dev)?.to_dtype(DType::F64)?.flatten_all())
            .collect::<Result<Vec<_>>>()?;
        let mut host = Tensor::cat(&scalars, 0)?.to_vec1::<f64>()?.into_iter();
        let mut next = || host.next().unwrap_or(f64::NAN);
        let total = next() as f32;
        let [va, au, expr] = present.map(|t| t.as_ref().map(|_| next() as f32));
        let weights = self
            .log_vars
            .as_ref()
            .map(|_| UncertaintyWeights::factors([next() as f32, next() as f32, next() as f32]));
        let rest = extra.iter().map(|_| next()).collect();
        let report = LossReport {
            total: self.total.clone(),
            va,
            au,
            expr,
            weights,
        };
        Ok((report, total, rest))
    }

    /// The report without reading anything back: present losses (and the weights) are NaN.
    pub fn unread(&self) -> LossReport {
        let nan = |t: &Option<Tensor>| t.as_ref().map(|_| f32::NAN);
        LossReport {
            total: self.total.clone(),
            va: nan(&self.va),
            au: nan(&self.au),
            expr: nan(&self.expr),
            weights: self.log_vars.as_ref().map(|_| [f32::NAN; 3]),
        }
    }
}

/// Combines the task losses into the objective.
///
/// `Sum`: the plain sum of the present losses. `Uncertainty`: Eq. 5 over the present tasks
/// only; an absent task's term, including its `0.5 s`, is left out, so its log-variance
/// gets no gradient from this batch. With no task present, `total` is an f32 zero scalar
/// (on the weights' device, else on the CPU) whose backward is a no-op. Reads the host values
/// in one copy ([`combine_losses`], then [`LossTerms::read`]).
pub fn total_loss(
    losses: &TaskLosses,
    kind: LossKind,
    uw: Option<&UncertaintyWeights>,
) -> Result<LossReport> {
    Ok(combine_losses(losses, kind, uw)?.read(&[])?.0)
}

/// [`total_loss`] without reading anything back to the host: the objective and its parts on
/// the device.
pub fn combine_losses(
    losses: &TaskLosses,
    kind: LossKind,
    uw: Option<&UncertaintyWeights>,
) -> Result<LossTerms> {
    let mut terms: Vec<Tensor> = Vec::with_capacity(3);
    let log_vars = match kind {
        LossKind::Sum => {
            for t in losses.present() {
                terms.push(t.to_dtype(DType::F32)?.reshape(())?);
            }
            None
        }
        LossKind::Uncertainty => {
            let uw = uw.ok_or(LossError::MissingUncertaintyWeights)?;
            if let Some(l) = &losses.va {
                terms.push(uw.weigh_va(l)?);
            }
            if let Some(l) = &losses.au {
                terms.push(uw.weigh_au(l)?);
            }
            if let Some(l) = &losses.expr {
                terms.push(uw.weigh_expr(l)?);
            }
            Some(uw.tensors().map(|t| t.clone()))
        }
    };
    let total = match terms.split_first() {
        Some((first, rest)) => rest.iter().try_fold(first.clone(), |acc, t| acc.add(t))?,
        None => {
            let device = match uw {
                Some(uw) => uw.tensors()[0].device().clone(),
                None => Device::Cpu,
            };
            Tensor::zeros((), DType::F32, &device)?
        }
    };
    Ok(LossTerms {
        total,
        va: losses.va.clone(),
        au: losses.au.clone(),
        expr: losses.expr.clone(),
        log_vars,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_nn::{VarBuilder, VarMap};

    fn scalar(v: f32) -> Result<Option<Tensor>> {
        Ok(Some(Tensor::new(v, &Device::Cpu)?))
    }

    #[test]
    fn sum_adds_present_tasks_only() -> Result<()> {
        let l = TaskLosses {
            va: scalar(0.5)?,
            au: None,
            expr: scalar(1.25)?,
        };
        let r = total_loss(&l, LossKind::Sum, None)?;
        assert_eq!(r.total.to_scalar::<f32>()?, 1.75);
        assert_eq!(
            (r.va, r.au, r.expr, r.weights),
            (Some(0.5), None, Some(1.25), None)
        );
        Ok(())
    }

    #[test]
    fn uncertainty_leaves_absent_task_out_including_its_log_var_term() -> Result<()> {
        let mut map = VarMap::new();
        let vb = VarBuilder::from_varmap(&map, DType::F32, &Device::Cpu);
        let uw = UncertaintyWeights::from_root(&vb)?;
        map.set_one(
            "uncertainty.log_var_va",
            Tensor::new(&[2f32.ln()], &Device::Cpu)?,
        )?;
        map.set_one(
            "uncertainty.log_var_au",
            Tensor::new(&[0.3f32], &Device::Cpu)?,
        )?;
        let l = TaskLosses {
            va: scalar(0.8)?,
            au: None,
            expr: scalar(2.0)?,
        };
        let r = total_loss(&l, LossKind::Uncertainty, Some(&uw))?;
        // 0.5 * 0.5 * 0.8 + 0.5 ln2  +  1 * 2.0 + 0
        let want = 0.2 + 0.5 * 2f32.ln() + 2.0;
        assert!((r.total.to_scalar::<f32>()? - want).abs() < 1e-6);
        let grads = r.total.backward()?;
        assert!(
            grads.get(uw.tensors()[1]).is_none(),
            "absent AU must get no gradient"
        );
        let g_va = grads
            .get(uw.tensors()[0])
            .map(|g| g.to_vec1::<f32>())
            .transpose()?;
        assert_eq!(g_va.map(|g| (g[0] - (0.5 - 0.2)).abs() < 1e-6), Some(true));
        Ok(())
    }

    #[test]
    fn no_task_gives_zero_and_missing_weights_is_an_error() -> Result<()> {
        let none = TaskLosses::default();
        let r = total_loss(&none, LossKind::Sum, None)?;
        assert_eq!(r.total.to_scalar::<f32>()?, 0.0);
        assert!(r.total.backward().is_ok());
        let err = total_loss(&none, LossKind::Uncertainty, None).err();
        assert!(err
            .map(|e| e.to_string())
            .unwrap_or_default()
            .contains("Uncertainty"));
        Ok(())
    }

    #[test]
    fn loss_kind_serde_is_lowercase() {
        let s = serde_json::to_string(&LossKind::Uncertainty).unwrap_or_default();
        assert_eq!(s, "\"uncertainty\"");
        let k: Option<LossKind> = serde_json::from_str("\"sum\"").ok();
        assert_eq!(k, Some(LossKind::Sum));
    }

    #[test]
    fn compute_marks_absent_tasks() -> Result<()> {
        let dev = Device::Cpu;
        let va_pred = Tensor::new(&[[0.1f32, 0.2], [0.3, -0.1], [0.0, 0.5]], &dev)?;
        let au_logits = Tensor::new(&[[0.1f32], [0.2], [-0.3]], &dev)?;
        let expr_logits = Tensor::new(&[[0.1f32, 0.9], [1.0, 0.0], [0.0, 0.0]], &dev)?;
        let va = Tensor::new(&[[-5f32, -5.0], [0.2, 0.1], [-5.0, -5.0]], &dev)?;
        let au = Tensor::new(&[[1f32], [-1.0], [0.0]], &dev)?;
        let expr = Tensor::new(&[1u32, 0, 0], &dev)?;
        let va_mask = Tensor::new(&[0f32, 1.0, 0.0], &dev)?; // one frame: too few for CCC
        let au_mask = Tensor::new(&[1f32, 0.0, 1.0], &dev)?;
        let expr_mask = Tensor::zeros(3, DType::F32, &dev)?;
        let l = TaskLosses::compute(
            &va_pred,
            &au_logits,
            &expr_logits,
            &Targets {
                va,
                va_mask,
                au,
                au_mask,
                expr,
                expr_mask,
            },
            TaskLossOptions::default(),
        )?;
        assert!(l.va.is_none() && l.expr.is_none());
        assert!(l.au.is_some());
        Ok(())
    }
}
