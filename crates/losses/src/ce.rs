//! Masked categorical cross-entropy for the expression head (paper Eq. 1).

use candle_core::{DType, Result, Tensor};

use crate::error::LossError;
use crate::mask::{
    connected_zero, device_mask, dims2, expect_shape, keep_valid, on_host, select_rows, valid_rows,
};

const LOSS: &str = "masked_cross_entropy";

/// Eq. 1, `-x[class] + log sum_i exp(x_i)`, averaged over the valid frames.
///
/// `logits` (N,C), `target` (N) class indices (u32; u8 and i64 are also accepted), `mask`
/// (N) 0/1. Reduction = mean over valid frames, as `torch.nn.CrossEntropyLoss()` on
/// `logits[mask]`. The log-sum-exp subtracts the (detached) row maximum, so it never
/// overflows. Targets of masked rows are ignored (they may hold -1 markers); a valid row
/// with a class outside `0..C` is an error. No valid frame -> exact zero (zero gradient).
///
/// With `mask` on the CPU the valid rows are picked on the host (with `target` on the CPU too,
/// nothing is read back from a device). With `mask` on a device the loss stays there with no
/// host read: every row's loss is computed, masked rows are replaced by exact zeros (a zero
/// gradient for finite logits) and the sum is divided by the device-side count (at least 1);
/// classes of valid rows are clamped to `0..C` instead of being checked.
pub fn masked_cross_entropy(logits: &Tensor, target: &Tensor, mask: &Tensor) -> Result<Tensor> {
    let (n, c) = dims2(logits, LOSS, "logits")?;
    expect_shape(target, &[n], LOSS, "target")?;
    if !on_host(mask) && n > 0 && c > 0 {
        return device_cross_entropy(logits, target, mask, (n, c));
    }
    let rows = valid_rows(mask, n, LOSS, "mask")?;
    if rows.is_empty() {
        return connected_zero(logits);
    }
    let classes = read_classes(target)?;
    let mut picked = Vec::with_capacity(rows.len());
    for &r in &rows {
        let value = classes[r as usize];
        if value < 0 || value as usize >= c {
            return Err(LossError::ClassOutOfRange {
                loss: LOSS,
                field: "target",
                row: r as usize,
                value,
                classes: c,
            }
            .into());
        }
        picked.push(value as u32);
    }
    let x = select_rows(logits, &rows)?; // (m, C)
    let t = Tensor::from_vec(picked, (rows.len(), 1), logits.device())?;
    let lse = log_sum_exp(&x)?;
    let chosen = x.gather(&t, 1)?;
    lse.sub(&chosen)?.mean_all()
}

/// `log(sum(exp(x)))` of each row of `x` (rows, C) as (rows, 1), shifted by the row's
/// (detached) maximum so that `exp` never overflows.
fn log_sum_exp(x: &Tensor) -> Result<Tensor> {
    let row_max = x.max_keepdim(1)?.detach();
    x.broadcast_sub(&row_max)?
        .exp()?
        .sum_keepdim(1)?
        .log()?
        .add(&row_max)
}

/// [`masked_cross_entropy`] with the mask kept on its device (`n`, `c` > 0).
pub(crate) fn device_cross_entropy(
    logits: &Tensor,
    target: &Tensor,
    mask: &Tensor,
    (n, c): (usize, usize),
) -> Result<Tensor> {
    if !matches!(target.dtype(), DType::U32 | DType::U8 | DType::I64) {
        return Err(LossError::DType {
            loss: LOSS,
            field: "target",
            dtype: target.dtype(),
            expected: "u32, u8 or i64",
        }
        .into());
    }
    let (valid, count) = device_mask(mask, n, LOSS, "mask")?;
    let x = logits.to_dtype(DType::F32)?;
    // Class indices (exact in f32) with masked rows' markers zeroed and the rest clamped, so
    // the gather never reads outside a row.
    let classes = target.to_device(x.device())?.to_dtype(DType::F32)?;
    let picked = keep_valid(&valid, &classes)?
        .clamp(0f32, (c - 1) as f32)?
        .to_dtype(DType::U32)?
        .reshape((n, 1))?;
    let lse = log_sum_exp(&x)?;
    let per_row = lse.sub(&x.gather(&picked, 1)?)?.reshape(n)?;
    keep_valid(&valid, &per_row)?
        .sum_all()?
        .div(&count.maximum(1f32)?)
}

/// Class indices as i64 on the host (so negative markers can be reported).
fn read_classes(target: &Tensor) -> Result<Vec<i64>> {
    match target.dtype() {
        DType::U32 => Ok(target
            .to_vec1::<u32>()?
            .into_iter()
            .map(i64::from)
            .collect()),
        DType::U8 => Ok(target.to_vec1::<u8>()?.into_iter().map(i64::from).collect()),
        DType::I64 => target.to_vec1::<i64>(),
        dtype => Err(LossError::DType {
            loss: LOSS,
            field: "target",
            dtype,
            expected: "u32, u8 or i64",
        }
        .into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    #[test]
    fn matches_hand_computed_value_and_ignores_masked_rows() -> Result<()> {
        let dev = Device::Cpu;
        // Row 0: logits (0, ln 3) target 1 -> -ln3 + ln(1+3) = ln(4/3).
        // Row 1 is masked and its target is out of range: must be ignored.
        let logits = Tensor::new(&[[0f32, 3f32.ln()], [5.0, -5.0]], &dev)?;
        let target = Tensor::new(&[1u32, 99], &dev)?;
        let mask = Tensor::new(&[1f32, 0.0], &dev)?;
        let l = masked_cross_entropy(&logits, &target, &mask)?.to_scalar::<f32>()?;
        assert!((l - (4f32 / 3.0).ln()).abs() < 1e-6, "{l}");
        Ok(())
    }

    #[test]
    fn large_logits_do_not_overflow() -> Result<()> {
        let dev = Device::Cpu;
        let logits = Tensor::new(&[[1000f32, 0.0, -1000.0]], &dev)?;
        let target = Tensor::new(&[1u32], &dev)?;
        let mask = Tensor::new(&[1f32], &dev)?;
        let l = masked_cross_entropy(&logits, &target, &mask)?.to_scalar::<f32>()?;
        assert!((l - 1000.0).abs() < 1e-3, "{l}");
        Ok(())
    }

    #[test]
    fn all_masked_is_zero_with_zero_gradient() -> Result<()> {
        let dev = Device::Cpu;
        let v = Var::new(&[[1f32, 2.0], [3.0, 4.0]], &dev)?;
        let target = Tensor::new(&[0u32, 1], &dev)?;
        let mask = Tensor::new(&[0f32, 0.0], &dev)?;
        let l = masked_cross_entropy(v.as_tensor(), &target, &mask)?;
        assert_eq!(l.to_scalar::<f32>()?, 0.0);
        let grads = l.backward()?;
        if let Some(g) = grads.get(v.as_tensor()) {
            assert!(g.flatten_all()?.to_vec1::<f32>()?.iter().all(|x| *x == 0.0));
        }
        Ok(())
    }

    #[test]
    fn valid_row_with_bad_class_is_an_error() -> Result<()> {
        let dev = Device::Cpu;
        let logits = Tensor::zeros((2, 3), DType::F32, &dev)?;
        let target = Tensor::new(&[0i64, -1], &dev)?;
        let mask = Tensor::new(&[1f32, 1.0], &dev)?;
        let err = masked_cross_entropy(&logits, &target, &mask).err();
        let text = err.map(|e| e.to_string()).unwrap_or_default();
        assert!(text.contains("row 1") && text.contains("-1"), "{text}");
        Ok(())
    }
}
