//! CBAM (Woo et al. 2018) as in Jongchan/attention-module `MODELS/cbam.py`: a channel gate (shared
//! MLP over the spatial mean and max, summed, sigmoid) followed by a spatial gate (7x7 conv + BN
//! over [max over C, mean over C], sigmoid). State-dict names `ChannelGate.mlp.{1,3}.*` and
//! `SpatialGate.spatial.{conv,bn}.*`.

use crate::batch_norm_layer::{batch_norm_with, BatchNorm};
use crate::conv2d_layer::{conv_no_bias, Conv2d, ConvSpec};
use crate::linear_layer::linear;
use candle_core::{Result, Tensor};
use candle_nn::{Init, Linear, Module, ModuleT, VarBuilder};

/// Momentum of the spatial gate's BN in the reference (`BatchNorm2d(..., momentum=0.01)`).
const SPATIAL_BN_MOMENTUM: f64 = 0.01;

/// One CBAM block for `channels` channels with the given MLP width.
#[derive(Clone, Debug)]
pub(crate) struct Cbam {
    mlp_in: Linear,
    mlp_out: Linear,
    spatial_conv: Conv2d,
    spatial_bn: BatchNorm,
}

impl Cbam {
    /// `vb` is the block's `cbam` prefix. Init as the reference: MLP weights PyTorch default,
    /// every bias 0, spatial conv Kaiming fan-out, spatial BN weight 0.
    pub(crate) fn new(channels: usize, reduced: usize, vb: VarBuilder) -> Result<Self> {
        let mlp = vb.pp("ChannelGate").pp("mlp");
        let zero = Some(Init::Const(0.0));
        let mlp_in = linear(channels, reduced, zero, mlp.pp("1"))?;
        let mlp_out = linear(reduced, channels, zero, mlp.pp("3"))?;
        let spatial = vb.pp("SpatialGate").pp("spatial");
        let spatial_conv = conv_no_bias(
            ConvSpec {
                c_in: 2,
                c_out: 1,
                kernel: 7,
                stride: 1,
                padding: 3,
                groups: 1,
            },
            spatial.pp("conv"),
        )?;
        let spatial_bn = batch_norm_with(1, SPATIAL_BN_MOMENTUM, 0.0, spatial.pp("bn"))?;
        Ok(Self {
            mlp_in,
            mlp_out,
            spatial_conv,
            spatial_bn,
        })
    }

    /// The gate as the whole-block training op takes it (`mtanet_kernels::bottleneck_train`),
    /// whose batch statistics end with the spatial BatchNorm's ([`Cbam::update_running`]);
    /// `None` for an MLP without biases (not one [`Cbam::new`] builds).
    pub(crate) fn as_gate(&self) -> Option<mtanet_kernels::BlockGate<'_>> {
        Some(mtanet_kernels::BlockGate::Cbam {
            channel: self.channel_mlp()?,
            spatial: self.spatial_bn.stage(&self.spatial_conv),
        })
    }

    /// The shared channel MLP as the fused ops take it; `None` without biases.
    fn channel_mlp(&self) -> Option<mtanet_kernels::GateMlp<'_>> {
        Some(mtanet_kernels::GateMlp {
            reduce_weight: self.mlp_in.weight(),
            reduce_bias: self.mlp_in.bias()?,
            expand_weight: self.mlp_out.weight(),
            expand_bias: self.mlp_out.bias()?,
        })
    }

    /// Takes the spatial BatchNorm's batch statistics from the whole-block training op into its
    /// running averages.
    pub(crate) fn update_running(&self, stats: &mtanet_kernels::BatchStats) -> Result<()> {
        self.spatial_bn.update_running(stats)
    }

    /// `relu(u * spatial(u) + shortcut)` with `u = z * channel(z)` in evaluation as one op
    /// (`mtanet_kernels::cbam_add_relu_eval`: the values of [`Cbam::gated_t`] and
    /// `spatial_gate_add_relu`, bit for bit, reading the map three times instead of five);
    /// `None` where that op does not run the tensors (other than f32 on the CPU).
    pub(crate) fn add_relu_eval(&self, z: &Tensor, shortcut: &Tensor) -> Result<Option<Tensor>> {
        let spatial_affine = self.spatial_bn.eval_affine()?;
        let Some(gate) = self.eval_gate(&spatial_affine) else {
            return Ok(None);
        };
        if !mtanet_kernels::cbam_eval_applies(z, &gate, shortcut) {
            return Ok(None);
        }
        mtanet_kernels::cbam_add_relu_eval(z, gate, shortcut).map(Some)
    }

    /// The spatial BatchNorm's eval-mode affine `(scale, shift)`.
    pub(crate) fn spatial_eval_affine(&self) -> Result<(Tensor, Tensor)> {
        self.spatial_bn.eval_affine()
    }

    /// The gate as the eval ops take it (`mtanet_kernels::CbamEval`), with the spatial
    /// BatchNorm folded into `spatial_affine` (from [`Cbam::spatial_eval_affine`]), or `None`
    /// for an MLP without biases, which those ops do not run.
    pub(crate) fn eval_gate<'a>(
        &'a self,
        (scale, shift): &'a (Tensor, Tensor),
    ) -> Option<mtanet_kernels::CbamEval<'a>> {
        Some(mtanet_kernels::CbamEval {
            channel: self.channel_mlp()?,
            spatial_weight: self.spatial_conv.weight(),
            spatial_conv: self.spatial_conv.params(),
            spatial_scale: scale,
            spatial_shift: shift,
        })
    }

    fn mlp(&self, v: &Tensor) -> Result<Tensor> {
        self.mlp_out.forward(&self.mlp_in.forward(v)?.relu()?)
    }

    /// The channel-gated `x` and the spatial gate (N, 1, H, W), both in `x`'s dtype, for `x`
    /// (N, C, H, W): the block's output is their product, which the bottleneck computes
    /// together with its residual join (`mtanet_kernels::spatial_gate_add_relu`).
    pub(crate) fn gated_t(&self, x: &Tensor, train: bool) -> Result<(Tensor, Tensor)> {
        // Pooling, the MLP, the 7x7 gate conv and its BN run in the parameters' dtype (f32
        // under bf16 compute); the gates are applied in x's dtype.
        let param = self.mlp_in.weight().dtype();
        // The shared MLP runs once on the stacked [mean; max] rows, then the halves are summed.
        let pooled = mtanet_kernels::spatial_mean_max(&x.to_dtype(param)?)?;
        let (_, n, c) = pooled.dims3()?;
        let att = self
            .mlp(&pooled.reshape((2 * n, c))?)?
            .reshape((2, n, c))?
            .sum(0)?;
        let gate = candle_nn::ops::sigmoid(&att)?.to_dtype(x.dtype())?;
        let x = mtanet_kernels::channel_gate(x, &gate)?;
        let pooled = mtanet_kernels::channel_max_mean(&x.to_dtype(param)?)?;
        let logits = self
            .spatial_bn
            .forward_t(&self.spatial_conv.forward(&pooled)?, train)?;
        let gate = candle_nn::ops::sigmoid(&logits)?.to_dtype(x.dtype())?;
        Ok((x, gate))
    }
}
