//! The `Linear` layer with PyTorch's default initialisation (the MTANet head, CBAM's channel MLP).

use crate::init_rules::pytorch_default;
use candle_core::Result;
use candle_nn::{Init, VarBuilder};

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
