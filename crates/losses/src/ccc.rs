//! Concordance correlation coefficient and the CCC loss for valence/arousal (Eq. 3-4).

use candle_core::{DType, Result, Tensor};

use crate::mask::{
    connected_zero, device_mask, dims2, expect_shape, keep_valid, on_host, select_rows, valid_rows,
};

const LOSS: &str = "masked_ccc_loss";

/// Added to the CCC denominator so that constant predictions equal to a constant target
/// (denominator 0) give CCC 0 with finite, zero gradients instead of 0/0. Relative effect
/// on a typical batch (denominator ~0.1) is ~1e-7, below f32 resolution.
pub const CCC_EPS: f64 = 1e-8;

/// Per-dimension CCC (Eq. 3) over the valid rows, shape (2): `[valence, arousal]`.
///
/// Population statistics (divide by the number of valid frames m, as `np.std` and the ABAW
/// evaluation): `ccc = 2 s_xy / (s_x^2 + s_y^2 + (mean_x - mean_y)^2 + CCC_EPS)`.
/// Returns `None` when fewer than 2 frames are valid (no spread to correlate).
///
/// With `mask` on a device the count is not known on the host: the CCC is computed there with
/// no host read (masked rows zeroed, population statistics over the device-side count) and is
/// `Some`, all zeros when fewer than 2 frames are valid.
pub fn masked_ccc(pred: &Tensor, target: &Tensor, mask: &Tensor) -> Result<Option<Tensor>> {
    let (n, d) = dims2(pred, LOSS, "pred")?;
    expect_shape(target, &[n, d], LOSS, "target")?;
    if !on_host(mask) && n > 0 && d > 0 {
        let (ccc, enough) = device_ccc(pred, target, mask, (n, d))?;
        return keep_valid(&enough.broadcast_as(d)?, &ccc).map(Some);
    }
    let rows = valid_rows(mask, n, LOSS, "mask")?;
    if rows.len() < 2 {
        return Ok(None);
    }
    let x = select_rows(pred, &rows)?;
    let y = select_rows(target, &rows)?.detach();
    let mean_x = x.mean_keepdim(0)?;
    let mean_y = y.mean_keepdim(0)?;
    let xc = x.broadcast_sub(&mean_x)?;
    let yc = y.broadcast_sub(&mean_y)?;
    let var_x = xc.sqr()?.mean(0)?;
    let var_y = yc.sqr()?.mean(0)?;
    let cov = (xc * yc)?.mean(0)?;
    let mean_gap = (mean_x - mean_y)?.squeeze(0)?.sqr()?;
    let denom = ((var_x + var_y)? + mean_gap)?.affine(1.0, CCC_EPS)?;
    (cov * 2.0)?.div(&denom).map(Some)
}

/// The CCC of [`masked_ccc`] with the mask kept on its device (`n`, `d` > 0): the per-column
/// CCC over the valid rows, and whether at least 2 rows are valid (u8 scalar), no host read.
fn device_ccc(
    pred: &Tensor,
    target: &Tensor,
    mask: &Tensor,
    (n, d): (usize, usize),
) -> Result<(Tensor, Tensor)> {
    let (valid, count) = device_mask(mask, n, LOSS, "mask")?;
    let x = keep_valid(&valid, &pred.to_dtype(DType::F32)?)?;
    let y = target.to_device(x.device())?.to_dtype(DType::F32)?;
    let y = keep_valid(&valid, &y)?.detach();
    let m = count.maximum(1f32)?;
    let mean_x = x.sum_keepdim(0)?.broadcast_div(&m)?;
    let mean_y = y.sum_keepdim(0)?.broadcast_div(&m)?;
    let xc = keep_valid(&valid, &x.broadcast_sub(&mean_x)?)?;
    let yc = keep_valid(&valid, &y.broadcast_sub(&mean_y)?)?;
    let var_x = xc.sqr()?.sum(0)?.broadcast_div(&m)?;
    let var_y = yc.sqr()?.sum(0)?.broadcast_div(&m)?;
    let cov = (xc * yc)?.sum(0)?.broadcast_div(&m)?;
    let mean_gap = (mean_x - mean_y)?.reshape(d)?.sqr()?;
    let denom = ((var_x + var_y)? + mean_gap)?.affine(1.0, CCC_EPS)?;
    let ccc = (cov * 2.0)?.div(&denom)?;
    Ok((ccc, count.ge(2f32)?))
}

/// [`masked_ccc_loss`] with the mask kept on its device (shapes checked, N, D > 0).
pub(crate) fn device_ccc_loss(pred: &Tensor, target: &Tensor, mask: &Tensor) -> Result<Tensor> {
    let (n, d) = dims2(pred, LOSS, "pred")?;
    let (ccc, enough) = device_ccc(pred, target, mask, (n, d))?;
    keep_valid(&enough, &ccc.mean_all()?.affine(-1.0, 1.0)?)
}

/// Eq. 4: `1 - (ccc_valence + ccc_arousal) / 2` over the valid VA frames of the batch.
///
/// `pred`, `target` (N,2) in `[valence, arousal]` column order, `mask` (N). Fewer than 2
/// valid frames -> exact zero (graph-connected, zero gradient). See [`masked_ccc`]; with
/// `mask` on a device the zero is chosen on the device (no host read).
pub fn masked_ccc_loss(pred: &Tensor, target: &Tensor, mask: &Tensor) -> Result<Tensor> {
    let (n, d) = dims2(pred, LOSS, "pred")?;
    if !on_host(mask) && n > 0 && d > 0 {
        expect_shape(target, &[n, d], LOSS, "target")?;
        return device_ccc_loss(pred, target, mask);
    }
    match masked_ccc(pred, target, mask)? {
        Some(ccc) => ccc.mean_all()?.affine(-1.0, 1.0),
        None => connected_zero(pred),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    #[test]
    fn perfect_prediction_gives_zero_loss_and_scaled_gives_known_ccc() -> Result<()> {
        let dev = Device::Cpu;
        let t = Tensor::new(&[[0.1f32, -0.2], [0.4, 0.3], [-0.5, 0.9], [0.0, 0.0]], &dev)?;
        let mask = Tensor::new(&[1f32, 1.0, 1.0, 0.0], &dev)?;
        let l = masked_ccc_loss(&t, &t, &mask)?.to_scalar::<f32>()?;
        assert!(l.abs() < 1e-6, "{l}");
        // pred = 2 * target (same mean 0 when centred): ccc = 2*2v / (4v + v) = 0.8.
        let centred = Tensor::new(&[[1f32, -1.0], [-1.0, 1.0]], &dev)?;
        let m2 = Tensor::new(&[1f32, 1.0], &dev)?;
        let ccc = masked_ccc(&(&centred * 2.0)?, &centred, &m2)?
            .expect("two valid frames have a CCC")
            .to_vec1::<f32>()?;
        assert_eq!(ccc.len(), 2, "one CCC per column: {ccc:?}");
        assert!(ccc.iter().all(|c| (c - 0.8).abs() < 1e-6), "{ccc:?}");
        Ok(())
    }

    #[test]
    fn one_valid_frame_is_zero_and_constant_equal_inputs_are_finite() -> Result<()> {
        let dev = Device::Cpu;
        let v = Var::new(&[[0.3f32, 0.3], [0.3, 0.3], [0.3, 0.3]], &dev)?;
        let one = Tensor::new(&[0f32, 1.0, 0.0], &dev)?;
        let l = masked_ccc_loss(v.as_tensor(), v.as_tensor(), &one)?;
        assert_eq!(l.to_scalar::<f32>()?, 0.0);
        // Constant prediction equal to a constant target: denominator 0 -> CCC 0, loss 1.
        let all = Tensor::new(&[1f32, 1.0, 1.0], &dev)?;
        let target = v.as_tensor().detach();
        let l = masked_ccc_loss(v.as_tensor(), &target, &all)?;
        assert!((l.to_scalar::<f32>()? - 1.0).abs() < 1e-6);
        let grads = l.backward()?;
        let g = grads
            .get(v.as_tensor())
            .expect("the loss depends on the prediction")
            .flatten_all()?
            .to_vec1::<f32>()?;
        assert_eq!(g.len(), 6);
        assert!(g.iter().all(|x| x.is_finite()), "{g:?}");
        Ok(())
    }
}
