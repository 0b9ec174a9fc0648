//! Masked binary cross-entropy on logits for the AU head (paper Eq. 2).

use candle_core::{Result, Tensor};
use serde::{Deserialize, Serialize};

use crate::mask::{
    connected_zero, device_mask, dims2, expect_shape, keep_valid, on_host, select_rows, valid_rows,
};

const LOSS: &str = "masked_bce_with_logits";

/// How the per-element AU losses of the valid frames reduce to one scalar.
///
/// Paper Eq. 2 sums the binary cross-entropy over the AUs of a frame,
/// `L_au = -sum_i [y_i log sigma(x_i) + (1 - y_i) log(1 - sigma(x_i))]`; frames are then
/// averaged. `Sum` follows Eq. 2; `Mean` is PyTorch's `BCEWithLogitsLoss` default ('mean'
/// over frames x AUs), which is `Sum` divided by the number of AUs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AuReduction {
    /// Eq. 2: sum over the AUs, mean over the valid frames
    /// (`BCEWithLogitsLoss(reduction='none').sum(1).mean()` on the valid rows).
    #[default]
    Sum,
    /// Mean over valid frames x AUs (`BCEWithLogitsLoss()` on the valid rows).
    Mean,
}

/// Eq. 2 on logits over the frames `mask` selects, reduced by `reduction`, with optional
/// per-AU `pos_weight`.
///
/// `logits` and `target` (N,K), `target` in `[0, 1]` (f32); `mask` (N); `pos_weight` (K).
/// Same semantics as `torch.nn.BCEWithLogitsLoss(pos_weight=p, reduction='none')` on the
/// rows `mask` selects, `l = (1-y) x + (1 + (p-1) y) softplus(-x)`, followed by `.mean()`
/// ([`AuReduction::Mean`]) or `.sum(1).mean()` ([`AuReduction::Sum`]).
///
/// `softplus(-x)` is written as `-x/2 + (|x|/2 + log(1 + exp(-|x|)))`: `exp` only ever sees
/// non-positive arguments (no overflow), and the bracket is an even function whose
/// derivative at 0 is 0, so the gradient is exact at `x = 0` whatever subgradient `abs`
/// uses. No valid frame -> exact zero.
///
/// With `mask` on the CPU the valid rows are picked on the host. With `mask` on a device the
/// loss stays there with no host read: every row is computed on labels zeroed in masked rows,
/// masked elements are replaced by exact zeros (a zero gradient for finite logits), and the sum
/// is divided by the device-side count of valid frames (x K for `Mean`, at least 1).
pub fn masked_bce_with_logits(
    logits: &Tensor,
    target: &Tensor,
    mask: &Tensor,
    pos_weight: Option<&Tensor>,
    reduction: AuReduction,
) -> Result<Tensor> {
    let (n, k) = dims2(logits, LOSS, "logits")?;
    expect_shape(target, &[n, k], LOSS, "target")?;
    if let Some(p) = pos_weight {
        expect_shape(p, &[k], LOSS, "pos_weight")?;
    }
    if !on_host(mask) && n > 0 && k > 0 {
        return device_bce(logits, target, mask, pos_weight, reduction);
    }
    let rows = valid_rows(mask, n, LOSS, "mask")?;
    if rows.is_empty() {
        return connected_zero(logits);
    }
    let x = select_rows(logits, &rows)?;
    let y = select_rows(target, &rows)?.detach();
    let elements = bce_elements(&x, &y, pos_weight)?;
    match reduction {
        AuReduction::Mean => elements.mean_all(),
        AuReduction::Sum => elements.sum(1)?.mean_all(),
    }
}

/// [`masked_bce_with_logits`] with the mask kept on its device (shapes checked, N, K > 0).
pub(crate) fn device_bce(
    logits: &Tensor,
    target: &Tensor,
    mask: &Tensor,
    pos_weight: Option<&Tensor>,
    reduction: AuReduction,
) -> Result<Tensor> {
    let (n, k) = dims2(logits, LOSS, "logits")?;
    let (valid, count) = device_mask(mask, n, LOSS, "mask")?;
    let x = logits.to_dtype(candle_core::DType::F32)?;
    let y = target
        .to_device(x.device())?
        .to_dtype(candle_core::DType::F32)?;
    let y = keep_valid(&valid, &y)?.detach();
    let elements = keep_valid(&valid, &bce_elements(&x, &y, pos_weight)?)?;
    let frames = count.maximum(1f32)?;
    let denom = match reduction {
        AuReduction::Mean => (frames * k as f64)?,
        AuReduction::Sum => frames,
    };
    elements.sum_all()?.div(&denom)
}

/// The per-element losses `(1-y) x + (1 + (p-1) y) softplus(-x)` of f32 logits `x` and labels
/// `y` (same shape), with optional per-column `pos_weight`.
fn bce_elements(x: &Tensor, y: &Tensor, pos_weight: Option<&Tensor>) -> Result<Tensor> {
    let a = x.abs()?;
    let even_part = ((&a * 0.5)? + a.neg()?.exp()?.affine(1.0, 1.0)?.log()?)?;
    let softplus_neg = (even_part - (x * 0.5)?)?;
    let neg_term = (y.affine(-1.0, 1.0)? * x)?;
    let pos_factor = match pos_weight {
        Some(p) => {
            let p = p
                .to_device(x.device())?
                .to_dtype(candle_core::DType::F32)?
                .detach();
            y.broadcast_mul(&p.affine(1.0, -1.0)?)?.affine(1.0, 1.0)?
        }
        None => y.ones_like()?,
    };
    neg_term + (pos_factor * softplus_neg)?
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    fn sigmoid(x: f32) -> f32 {
        1.0 / (1.0 + (-x).exp())
    }

    #[test]
    fn gradient_at_zero_logit_is_sigmoid_minus_target() -> Result<()> {
        let dev = Device::Cpu;
        let v = Var::new(&[[0f32, 0.0]], &dev)?;
        let y = Tensor::new(&[[1f32, 0.0]], &dev)?;
        let mask = Tensor::new(&[1f32], &dev)?;
        let l = masked_bce_with_logits(v.as_tensor(), &y, &mask, None, AuReduction::Mean)?;
        assert!((l.to_scalar::<f32>()? - 2f32.ln()).abs() < 1e-6);
        let grads = l.backward()?;
        let g = grads
            .get(v.as_tensor())
            .map(|g| g.to_vec2::<f32>())
            .transpose()?;
        // d/dx mean = (sigmoid(x) - y) / (rows * K)
        assert_eq!(g, Some(vec![vec![-0.25, 0.25]]));
        Ok(())
    }

    #[test]
    fn extreme_logits_are_finite_and_correct() -> Result<()> {
        let dev = Device::Cpu;
        let x = Tensor::new(&[[100f32, -100.0]], &dev)?;
        let y = Tensor::new(&[[0f32, 0.0]], &dev)?;
        let mask = Tensor::new(&[1f32], &dev)?;
        let l =
            masked_bce_with_logits(&x, &y, &mask, None, AuReduction::Mean)?.to_scalar::<f32>()?;
        // (100 + ~0) / 2
        assert!((l - 50.0).abs() < 1e-4, "{l}");
        Ok(())
    }

    #[test]
    fn pos_weight_scales_only_positive_terms() -> Result<()> {
        let dev = Device::Cpu;
        let x = Tensor::new(&[[0.3f32, -0.7]], &dev)?;
        let y = Tensor::new(&[[1f32, 0.0]], &dev)?;
        let mask = Tensor::new(&[1f32], &dev)?;
        let pw = Tensor::new(&[3f32, 5.0], &dev)?;
        let l = masked_bce_with_logits(&x, &y, &mask, Some(&pw), AuReduction::Mean)?
            .to_scalar::<f32>()?;
        let want = (-3.0 * sigmoid(0.3).ln() - (1.0 - sigmoid(-0.7)).ln()) / 2.0;
        assert!((l - want).abs() < 1e-6, "{l} vs {want}");
        Ok(())
    }

    #[test]
    fn sum_is_k_times_mean_and_its_gradient_skips_the_au_average() -> Result<()> {
        let dev = Device::Cpu;
        let v = Var::new(&[[0f32, 0.0, 0.0, 0.0], [0.4, -1.2, 2.0, 0.1]], &dev)?;
        let y = Tensor::new(&[[1f32, 0.0, 1.0, 0.0], [-1.0, f32::NAN, -1.0, -1.0]], &dev)?;
        let mask = Tensor::new(&[1f32, 0.0], &dev)?;
        let pw = Tensor::new(&[2f32, 1.0, 0.5, 3.0], &dev)?;
        let mean = masked_bce_with_logits(v.as_tensor(), &y, &mask, Some(&pw), AuReduction::Mean)?;
        let sum = masked_bce_with_logits(v.as_tensor(), &y, &mask, Some(&pw), AuReduction::Sum)?;
        let (mean, sum) = (mean.to_scalar::<f32>()?, sum);
        assert!((sum.to_scalar::<f32>()? - 4.0 * mean).abs() < 1e-6);
        let grads = sum.backward()?;
        let g = grads
            .get(v.as_tensor())
            .map(|g| g.to_vec2::<f32>())
            .transpose()?
            .unwrap_or_default();
        // One valid frame: d/dx = (1 + (p-1) y) sigmoid(x) - p y at x = 0, no division by K.
        assert_eq!(g[0], vec![-1.0, 0.5, -0.25, 0.5]);
        assert_eq!(g[1], vec![0.0; 4]);
        Ok(())
    }

    #[test]
    fn reduction_serde_is_lowercase_and_defaults_to_eq_2() {
        assert_eq!(AuReduction::default(), AuReduction::Sum);
        let s = serde_json::to_string(&AuReduction::Mean).unwrap_or_default();
        assert_eq!(s, "\"mean\"");
        let r: Option<AuReduction> = serde_json::from_str("\"sum\"").ok();
        assert_eq!(r, Some(AuReduction::Sum));
    }

    #[test]
    fn masked_rows_with_marker_labels_get_zero_gradient() -> Result<()> {
        let dev = Device::Cpu;
        let v = Var::new(&[[0.5f32, -0.5], [1.0, 2.0]], &dev)?;
        let y = Tensor::new(&[[1f32, 0.0], [-1.0, f32::NAN]], &dev)?;
        let mask = Tensor::new(&[1f32, 0.0], &dev)?;
        let l = masked_bce_with_logits(v.as_tensor(), &y, &mask, None, AuReduction::Mean)?;
        assert!(l.to_scalar::<f32>()?.is_finite());
        let grads = l.backward()?;
        let g = grads
            .get(v.as_tensor())
            .map(|g| g.to_vec2::<f32>())
            .transpose()?;
        let g = g.unwrap_or_default();
        assert_eq!(g[1], vec![0.0, 0.0]);
        assert!(g[0].iter().all(|x| x.is_finite() && *x != 0.0));
        Ok(())
    }
}
