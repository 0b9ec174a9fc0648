//! The `Linear` layer with PyTorch's default initialisation (the MTANet head, CBAM's channel MLP),
//! and its forward over rows in the orientation the CPU's GEMM runs fast ([`linear_rows`]).

use crate::init_rules::pytorch_default;
use candle_core::{Result, Tensor};
use candle_nn::{Init, Linear, Module, VarBuilder};

/// A `Linear(c_in, c_out)` with PyTorch's default init (or `bias_init` for the bias).
pub(crate) fn linear(
    c_in: usize,
    c_out: usize,
    bias_init: Option<Init>,
    vb: VarBuilder,
) -> Result<candle_nn::Linear> {
    let w = vb.get_with_hints((c_out, c_in), "weight", pytorch_default(c_in))?;
    let b = vb.get_with_hints(
        c_out,
        "bias",
        bias_init.unwrap_or_else(|| pytorch_default(c_in)),
    )?;
    Ok(candle_nn::Linear::new(w, Some(b)))
}

/// `layer` on the rows of a 2-D `x`, `x @ W^T + b`, computed on the CPU as `(W @ x^T)^T + b`:
/// the same dot products. The gemm crate packs a transposed right-hand operand from a stride
/// of a whole row, so `candle_nn::Linear`'s `x @ W^T` is slow for a few rows and a wide layer:
/// the head's 2048 -> 512 branch at 16 and 32 rows, forward 1.74 and 2.14 ms that way against
/// 0.16 and 0.39 ms this way, forward and backward 8.0 and 7.0 against 2.2 and 2.6 ms (AMD EPYC
/// Zen 5, 2 threads; with gemm's AVX2 kernels the forwards are level and the backward still
/// faster). The output and gradients have `Linear::forward`'s bits at every row count the test
/// tries (1 to 33). Elsewhere, and for other ranks, `Linear::forward`.
pub(crate) fn linear_rows(layer: &Linear, x: &Tensor) -> Result<Tensor> {
    if !(x.device().is_cpu() && x.rank() == 2) {
        return layer.forward(x);
    }
    let y = layer.weight().matmul(&x.t()?)?.t()?;
    match layer.bias() {
        Some(b) => y.broadcast_add(b),
        None => Ok(y),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    /// `linear_rows` gives `Linear::forward`'s output and gradients, bit for bit, on the head's
    /// 2048 -> 512 branch at several batch sizes (bias and all).
    #[test]
    fn linear_rows_equals_linear_forward_bit_for_bit() -> Result<()> {
        let dev = Device::Cpu;
        let w = Var::from_tensor(&Tensor::randn(0f32, 0.02, (512, 2048), &dev)?)?;
        let b = Var::from_tensor(&Tensor::randn(0f32, 0.1, 512, &dev)?)?;
        let layer = Linear::new(w.as_tensor().clone(), Some(b.as_tensor().clone()));
        for rows in [1, 2, 3, 16, 32, 33] {
            let x = Var::from_tensor(&Tensor::randn(0f32, 1.0, (rows, 2048), &dev)?)?;
            let (want, got) = (layer.forward(&x)?, linear_rows(&layer, &x)?);
            let bits = |t: &Tensor| -> Result<Vec<u32>> {
                Ok(t.flatten_all()?
                    .to_vec1::<f32>()?
                    .iter()
                    .map(|v| v.to_bits())
                    .collect())
            };
            assert_eq!(got.dims(), want.dims(), "{rows} rows");
            assert_eq!(bits(&got)?, bits(&want)?, "{rows} rows: output");
            // Weighted sums, so each output's gradient differs.
            let r = Tensor::randn(0f32, 1.0, (rows, 512), &dev)?;
            let (gw, gg) = (
                (&want * &r)?.sum_all()?.backward()?,
                (&got * &r)?.sum_all()?.backward()?,
            );
            for (v, name) in [(&w, "weight"), (&b, "bias"), (&x, "input")] {
                let (a, c) = (gw.get(v).expect(name), gg.get(v).expect(name));
                assert_eq!(bits(c)?, bits(a)?, "{rows} rows: {name} gradient");
            }
        }
        Ok(())
    }
}
