//! Eval-mode convolution followed by its BatchNorm (+ ReLU) as one op.
//!
//! In evaluation a BatchNorm is the per-channel affine `z * scale[c] + shift[c]` with
//! `scale = weight / sqrt(running_var + eps)` and `shift = bias - running_mean * scale`. As a
//! separate op it reads and writes the whole convolution output once more. Here it is the
//! convolution's epilogue: each (image, group) block of the output gets its scale, shift and
//! ReLU right after its GEMM writes it, while it is still in cache, so the eval forward makes
//! no separate pass over activations for any BatchNorm.
//!
//! The affine is applied to the convolution's own output with the same expression as
//! [`channel_affine`](crate::channel_affine) (`z * a + b`, then `max(0, .)`), so the values are
//! bit-identical to `channel_affine(conv2d(x, w), scale, shift, relu)`; the tests check that.
//! Multiplying `scale` into the weights instead would change the rounding and cost a pass over
//! every weight per forward, for no saving over the epilogue.

use crate::conv2d::storage::dense_f32;
use crate::conv2d::{self, ConvGeometry};
use crate::ConvParams;
use candle_core::{bail, CpuStorage, CustomOp2, DType, Layout, Result, Shape, Tensor};

/// True when [`conv_affine_eval`] runs these tensors: all f32 on the CPU.
pub fn conv_affine_applies(ts: &[&Tensor]) -> bool {
    ts.iter()
        .all(|t| t.device().is_cpu() && t.dtype() == DType::F32)
}

/// `relu?(conv2d(x, w) * scale[c] + shift[c])` as one op, for evaluation: a BatchNorm in eval
/// mode folded into the convolution that feeds it. Not differentiable (eval only).
///
/// f32 on the CPU only ([`conv_affine_applies`]); `scale` and `shift` have one value per output
/// channel.
pub fn conv_affine_eval(
    x: &Tensor,
    w: &Tensor,
    scale: &Tensor,
    shift: &Tensor,
    conv: ConvParams,
    relu: bool,
) -> Result<Tensor> {
    if !conv_affine_applies(&[x, w, scale, shift]) {
        bail!("conv_affine_eval: f32 tensors on the CPU only")
    }
    let geometry = ConvGeometry::new(x.dims(), w.dims(), conv.stride, conv.padding, conv.groups)?;
    let c = geometry.out_channels;
    if scale.dims() != [c] || shift.dims() != [c] {
        bail!(
            "conv_affine_eval: scale and shift must be ({c}), got {:?} and {:?}",
            scale.dims(),
            shift.dims()
        )
    }
    let op = ConvAffineEval {
        geometry,
        scale: scale.to_vec1::<f32>()?,
        shift: shift.to_vec1::<f32>()?,
        relu,
    };
    x.detach().apply_op2_no_bwd(&w.detach(), &op)
}

/// The op behind [`conv_affine_eval`]: the per-channel affine is held on the host.
struct ConvAffineEval {
    geometry: ConvGeometry,
    scale: Vec<f32>,
    shift: Vec<f32>,
    relu: bool,
}

impl CustomOp2 for ConvAffineEval {
    fn name(&self) -> &'static str {
        "mtanet-conv-affine-eval"
    }

    fn cpu_fwd(
        &self,
        x_storage: &CpuStorage,
        x_layout: &Layout,
        w_storage: &CpuStorage,
        w_layout: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let g = &self.geometry;
        let (in_dims, w_dims) = (Shape::from(g.input_dims()), Shape::from(g.weight_dims()));
        if x_layout.dims() != in_dims.dims() || w_layout.dims() != w_dims.dims() {
            bail!(
                "conv_affine_eval: expected input {in_dims:?} and weight {w_dims:?}, got {:?} and {:?}",
                x_layout.dims(),
                w_layout.dims()
            )
        }
        let x = dense_f32(x_storage, x_layout, "input")?;
        let w = dense_f32(w_storage, w_layout, "weight")?;
        let mut y = vec![0f32; g.batch * g.out_channels * g.out_pixels()];
        let (per_group, pixels) = (g.group_out_channels(), g.out_pixels());
        let epilogue = |unit: usize, y_unit: &mut [f32]| {
            let first = (unit % g.groups) * per_group;
            for (row, values) in y_unit.chunks_exact_mut(pixels).enumerate() {
                let (a, b) = (self.scale[first + row], self.shift[first + row]);
                if self.relu {
                    for v in values.iter_mut() {
                        *v = (*v * a + b).max(0.0);
                    }
                } else {
                    for v in values.iter_mut() {
                        *v = *v * a + b;
                    }
                }
            }
        };
        conv2d::forward_into_then(g, &x, &w, &mut y, &epilogue);
        Ok((CpuStorage::F32(y), Shape::from(g.output_dims())))
    }
}
