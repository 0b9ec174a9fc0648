//! Turning a per-frame 0/1 mask into the list of valid rows.

use candle_core::{DType, Result, Tensor};

use crate::error::LossError;

/// The row indices whose mask value is > 0.5 (NaN counts as masked out).
///
/// `mask` must have shape `(n)`; any float or integer dtype is accepted. This reads the mask
/// back to the host (one small transfer per loss): the row count decides whether a task is
/// present in the batch at all, which must be known before building the graph.
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
