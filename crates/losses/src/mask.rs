//! Turning a per-frame 0/1 mask into the list of valid rows.

use candle_core::{DType, Result, Tensor};

use crate::error::LossError;

/// The row indices whose mask value is > 0.5 (NaN counts as masked out).
///
/// `mask` must have shape `(n)`; any float or integer dtype is accepted. A mask on a device is
/// read back to the host (a transfer and a synchronisation): the losses call this for CPU masks
/// only, and keep device masks on the device.
pub fn valid_rows(
    mask: &Tensor,
    n: usize,
    loss: &'static str,
    field: &'static str,
) -> Result<Vec<u32>> {
    if mask.dims() != [n] {
        return Err(LossError::Shape {
            loss,
            field,
            got: mask.dims().to_vec(),
            expected: format!("({n})"),
        }
        .into());
    }
    let values = mask.to_dtype(DType::F32)?.to_vec1::<f32>()?;
    Ok(values
        .iter()
        .enumerate()
        .filter(|(_, v)| **v > 0.5)
        .map(|(i, _)| i as u32)
        .collect())
}

/// Whether a loss selects its valid rows on the host (`mask` on the CPU: the rows are listed
/// there, an absent task is known before the graph is built, and nothing is read back from a
/// device) or weights them on the mask's device ([`device_mask`]: no host read).
pub(crate) fn on_host(mask: &Tensor) -> bool {
    mask.device().is_cpu()
}

/// A mask kept on its device: the condition `mask > 0.5` (u8, shape (n); NaN counts as masked
/// out) and the number of valid rows (f32 scalar), with no host read.
pub(crate) fn device_mask(
    mask: &Tensor,
    n: usize,
    loss: &'static str,
    field: &'static str,
) -> Result<(Tensor, Tensor)> {
    expect_shape(mask, &[n], loss, field)?;
    let valid = mask.to_dtype(DType::F32)?.gt(0.5)?;
    let count = valid.to_dtype(DType::F32)?.sum_all()?;
    Ok((valid, count))
}

/// `t` where `valid` (u8 of `t`'s shape, or (n) broadcast over the columns of an (n, k) `t`),
/// else 0: masked values never reach the arithmetic, and get an exactly-zero gradient.
pub(crate) fn keep_valid(valid: &Tensor, t: &Tensor) -> Result<Tensor> {
    let cond = match t.rank() {
        0 | 1 => valid.clone(),
        _ => valid.unsqueeze(1)?.broadcast_as(t.shape())?,
    };
    cond.where_cond(t, &t.zeros_like()?)
}

/// Rows `rows` of `t` along dim 0, as f32 (differentiable: `index_select` has a backward).
pub(crate) fn select_rows(t: &Tensor, rows: &[u32]) -> Result<Tensor> {
    let idx = Tensor::from_slice(rows, rows.len(), t.device())?;
    t.to_dtype(DType::F32)?.index_select(&idx, 0)
}

/// An f32 scalar zero that is still connected to `t` in the graph, so `backward()` yields an
/// all-zero gradient for `t` (never NaN, even if `t` holds non-finite values).
///
/// Built as `where(false, t[0], 0)`: the forward never reads `t[0]` into arithmetic and the
/// backward of `where_cond` routes zeros to it; no zero-sized kernel is launched (those are
/// not safe on every backend). An empty `t` gives a plain (unconnected) zero.
pub(crate) fn connected_zero(t: &Tensor) -> Result<Tensor> {
    let device = t.device();
    if t.elem_count() == 0 {
        return Tensor::zeros((), DType::F32, device);
    }
    let first = t.flatten_all()?.narrow(0, 0, 1)?.to_dtype(DType::F32)?;
    let never = Tensor::zeros(1, DType::U8, device)?;
    let zero = Tensor::zeros(1, DType::F32, device)?;
    never.where_cond(&first, &zero)?.reshape(())
}

/// Checks that `t` has exactly the shape `expected`.
pub(crate) fn expect_shape(
    t: &Tensor,
    expected: &[usize],
    loss: &'static str,
    field: &'static str,
) -> Result<()> {
    if t.dims() != expected {
        return Err(LossError::Shape {
            loss,
            field,
            got: t.dims().to_vec(),
            expected: format!("{expected:?}"),
        }
        .into());
    }
    Ok(())
}

/// Checks that `t` is 2-D and returns its dims.
pub(crate) fn dims2(t: &Tensor, loss: &'static str, field: &'static str) -> Result<(usize, usize)> {
    match t.dims() {
        [a, b] => Ok((*a, *b)),
        other => Err(LossError::Shape {
            loss,
            field,
            got: other.to_vec(),
            expected: "(N, K)".to_string(),
        }
        .into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    #[test]
    fn valid_rows_thresholds_and_rejects_bad_shape() -> Result<()> {
        let m = Tensor::new(&[1f32, 0., f32::NAN, 0.9, 0.2], &Device::Cpu)?;
        assert_eq!(valid_rows(&m, 5, "t", "mask")?, vec![0, 3]);
        assert!(valid_rows(&m, 4, "t", "mask").is_err());
        Ok(())
    }

    /// The device formulations (run here on CPU tensors) give the host path's losses and
    /// gradients, masked marker rows included, and exact zeros for absent tasks.
    #[test]
    fn device_formulations_match_the_host_path() -> Result<()> {
        use crate::bce::{device_bce, masked_bce_with_logits, AuReduction};
        use crate::ccc::{device_ccc_loss, masked_ccc_loss};
        use crate::ce::{device_cross_entropy, masked_cross_entropy};
        type LossFn<'a> = &'a dyn Fn(&Tensor, &Tensor) -> Result<Tensor>;
        let dev = Device::Cpu;
        let x = Tensor::new(
            &[
                [0.3f32, -1.2, 0.5],
                [2.0, 0.1, -0.4],
                [0.7, 0.7, 1.5],
                [-0.2, 0.9, 0.0],
            ],
            &dev,
        )?;
        let y = Tensor::new(
            &[
                [1f32, 0.0, 1.0],
                [f32::NAN, -1.0, -5.0],
                [0.0, 0.0, 1.0],
                [1.0, 1.0, 0.0],
            ],
            &dev,
        )?;
        let classes = Tensor::new(&[2u32, 99, 0, 1], &dev)?;
        let pw = Tensor::new(&[2f32, 0.5, 1.0], &dev)?;
        let masks = [
            Tensor::new(&[1f32, 0.0, 1.0, 1.0], &dev)?,
            Tensor::new(&[0f32, 0.0, 1.0, 0.0], &dev)?,
            Tensor::zeros(4, DType::F32, &dev)?,
        ];
        let va_x = x.narrow(1, 0, 2)?.contiguous()?;
        let va_y = y.narrow(1, 0, 2)?.contiguous()?;
        for mask in &masks {
            let cases: [(&str, LossFn, LossFn); 4] = [
                ("ccc", &|p, m| masked_ccc_loss(p, &va_y, m), &|p, m| {
                    device_ccc_loss(p, &va_y, m)
                }),
                (
                    "bce sum",
                    &|p, m| masked_bce_with_logits(p, &y, m, Some(&pw), AuReduction::Sum),
                    &|p, m| device_bce(p, &y, m, Some(&pw), AuReduction::Sum),
                ),
                (
                    "bce mean",
                    &|p, m| masked_bce_with_logits(p, &y, m, None, AuReduction::Mean),
                    &|p, m| device_bce(p, &y, m, None, AuReduction::Mean),
                ),
                (
                    "ce",
                    &|p, m| masked_cross_entropy(p, &classes, m),
                    &|p, m| device_cross_entropy(p, &classes, m, (4, 3)),
                ),
            ];
            for (name, host, device) in cases {
                let input = if name == "ccc" { &va_x } else { &x };
                let run = |f: LossFn| -> Result<(f32, Vec<f32>)> {
                    let v = Var::from_tensor(input)?;
                    let l = f(v.as_tensor(), mask)?;
                    let g = match l.backward()?.get(v.as_tensor()) {
                        Some(g) => g.flatten_all()?.to_vec1::<f32>()?,
                        None => vec![0.0; input.elem_count()],
                    };
                    Ok((l.to_scalar::<f32>()?, g))
                };
                let (lh, gh) = run(host)?;
                let (ld, gd) = run(device)?;
                let m = mask.to_vec1::<f32>()?;
                // VA needs two frames: with fewer, both paths give an exact zero.
                let absent = m.iter().sum::<f32>() < if name == "ccc" { 2.0 } else { 1.0 };
                assert!(
                    (lh - ld).abs() <= 1e-6 * lh.abs().max(1.0),
                    "{name} {m:?}: {lh} vs {ld}"
                );
                if absent {
                    assert_eq!((lh, ld), (0.0, 0.0), "{name} {m:?}");
                }
                for (a, b) in gh.iter().zip(&gd) {
                    assert!((a - b).abs() <= 1e-6, "{name} {m:?} grads {gh:?} vs {gd:?}");
                }
            }
        }
        Ok(())
    }

    #[test]
    fn connected_zero_gives_zero_gradient_even_for_non_finite_inputs() -> Result<()> {
        let v = Var::new(&[[f32::INFINITY, 1.0], [f32::NAN, 2.0]], &Device::Cpu)?;
        let z = connected_zero(v.as_tensor())?;
        assert_eq!(z.to_scalar::<f32>()?, 0.0);
        let grads = z.backward()?;
        let g = grads
            .get(v.as_tensor())
            .map(|g| g.flatten_all()?.to_vec1::<f32>());
        let g = g.transpose()?;
        assert_eq!(g, Some(vec![0.0; 4]), "connected, all-zero gradient");
        let empty = Tensor::zeros((0, 3), DType::F32, &Device::Cpu)?;
        assert_eq!(connected_zero(&empty)?.to_scalar::<f32>()?, 0.0);
        Ok(())
    }
}
