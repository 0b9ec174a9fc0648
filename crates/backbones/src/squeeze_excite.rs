//! Squeeze-and-excitation: global mean -> 1x1 conv -> ReLU -> 1x1 conv -> sigmoid -> scale.
//!
//! Two spellings of the same block: timm `SEModule` (`se.fc1`, `se.fc2`) and the VGGFace2 SENet's
//! `conv4` / `conv5` (cydonia999/VGGFace2-pytorch `models/senet.py`, whose squeeze is
//! `avg_pool2d(kernel=H)`, i.e. the global mean for square maps; we always take the global mean).

use crate::init_rules::{pytorch_default, CONV_WEIGHT};
use candle_core::{Result, Tensor};
use candle_nn::VarBuilder;

/// The two 1x1 convs of an SE block, applied as matrix products on the squeezed vector. The
/// weights are kept as the variables themselves, `[out, in, 1, 1]`: the whole-block training op
/// writes their gradients to them directly.
#[derive(Clone, Debug)]
pub(crate) struct SqueezeExcite {
    reduce_w: Tensor,
    reduce_b: Tensor,
    expand_w: Tensor,
    expand_b: Tensor,
}

impl SqueezeExcite {
    /// `reduce` / `expand` are the VarBuilders of the two convs (`se.fc1` / `se.fc2` or
    /// `conv4` / `conv5`); weights are stored as PyTorch's `[out, in, 1, 1]`.
    pub(crate) fn new(
        channels: usize,
        reduced: usize,
        reduce: VarBuilder,
        expand: VarBuilder,
    ) -> Result<Self> {
        let reduce_w = reduce.get_with_hints((reduced, channels, 1, 1), "weight", CONV_WEIGHT)?;
        let reduce_b = reduce.get_with_hints(reduced, "bias", pytorch_default(channels))?;
        let expand_w = expand.get_with_hints((channels, reduced, 1, 1), "weight", CONV_WEIGHT)?;
        let expand_b = expand.get_with_hints(channels, "bias", pytorch_default(reduced))?;
        Ok(Self {
            reduce_w,
            reduce_b,
            expand_w,
            expand_b,
        })
    }

    /// The gate as the whole-block training op takes it (`mtanet_kernels::bottleneck_train`).
    pub(crate) fn as_gate(&self) -> mtanet_kernels::BlockGate<'_> {
        mtanet_kernels::BlockGate::SqueezeExcite(self.as_mlp())
    }

    /// The gate's MLP as the fused ops take it: the inference op
    /// (`mtanet_kernels::bottlenecks_infer`) and, through [`SqueezeExcite::as_gate`], the
    /// training op.
    pub(crate) fn as_mlp(&self) -> mtanet_kernels::GateMlp<'_> {
        mtanet_kernels::GateMlp {
            reduce_weight: &self.reduce_w,
            reduce_bias: &self.reduce_b,
            expand_weight: &self.expand_w,
            expand_bias: &self.expand_b,
        }
    }

    /// The gate `sigmoid(fc2(relu(fc1(mean_hw(x)))))`, (N, C) in `x`'s dtype, for `x` of shape
    /// (N, C, H, W). The block's output is `x * gate`; the bottleneck computes that product
    /// together with its residual join (`mtanet_kernels::channel_gate_add_relu`).
    pub(crate) fn gate(&self, x: &Tensor) -> Result<Tensor> {
        // Pool and gate in the parameters' dtype (f32 under bf16 compute), apply in x's.
        let squeezed = mtanet_kernels::spatial_mean(&x.to_dtype(self.reduce_w.dtype())?)?;
        let hidden = squeezed
            .matmul(&self.reduce_w.flatten_from(1)?.t()?)?
            .broadcast_add(&self.reduce_b)?
            .relu()?;
        let gate = hidden
            .matmul(&self.expand_w.flatten_from(1)?.t()?)?
            .broadcast_add(&self.expand_b)?;
        candle_nn::ops::sigmoid(&gate)?.to_dtype(x.dtype())
    }
}
