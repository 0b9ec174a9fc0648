//! `BatchNorm2d` with PyTorch's state-dict names and semantics, run by the fused ops of
//! `mtanet_kernels` on f32 tensors on the CPU and (in a `cuda` build, see
//! `mtanet_kernels::cuda_fused_ops`) on CUDA: one pass for the statistics, one for the output,
//! ReLU folded in where the network applies one; by candle-nn's composed BatchNorm elsewhere.

use crate::conv2d_layer::Conv2d;
use candle_core::{Module, Result, Tensor, Var};
use candle_nn::{Init, ModuleT, VarBuilder};

/// PyTorch's `BatchNorm2d` defaults (eps 1e-5, momentum 0.1).
pub(crate) const BN_EPS: f64 = 1e-5;
/// PyTorch's default BatchNorm momentum.
pub(crate) const BN_MOMENTUM: f64 = 0.1;

/// A BatchNorm layer: `weight`, `bias`, `running_mean`, `running_var`.
#[derive(Clone, Debug)]
pub(crate) struct BatchNorm {
    weight: Tensor,
    bias: Tensor,
    running_mean: Var,
    running_var: Var,
    eps: f64,
    momentum: f64,
    /// candle-nn's BatchNorm over the same variables, for devices and dtypes without a fused op.
    composed: candle_nn::BatchNorm,
}

impl BatchNorm {
    /// `BatchNorm2d(c, eps, momentum)` whose weight starts at `weight_init` and bias at 0.
    pub(crate) fn new(
        c: usize,
        eps: f64,
        momentum: f64,
        weight_init: f64,
        vb: VarBuilder,
    ) -> Result<Self> {
        let running_mean =
            Var::from_tensor(&vb.get_with_hints(c, "running_mean", Init::Const(0.0))?)?;
        let running_var =
            Var::from_tensor(&vb.get_with_hints(c, "running_var", Init::Const(1.0))?)?;
        let weight = vb.get_with_hints(c, "weight", Init::Const(weight_init))?;
        let bias = vb.get_with_hints(c, "bias", Init::Const(0.0))?;
        let composed = candle_nn::BatchNorm::new_with_momentum(
            c,
            running_mean.as_tensor().clone(),
            running_var.as_tensor().clone(),
            weight.clone(),
            bias.clone(),
            eps,
            momentum,
        )?;
        Ok(Self {
            weight,
            bias,
            running_mean,
            running_var,
            eps,
            momentum,
            composed,
        })
    }

    /// True when the fused ops of `mtanet_kernels` apply to `x`: f32 on the CPU, or f32 on CUDA
    /// in a `cuda` build (their NVRTC kernels), with the parameters on `x`'s device.
    fn fused(&self, x: &Tensor) -> bool {
        mtanet_kernels::fused_ops_apply(&[x, &self.weight])
    }

    /// `relu?(bn(conv(x)))`. Training on the CPU in f32 runs the two as one op
    /// (`mtanet_kernels::conv_bn_train`: the same values and gradients, without the
    /// convolution output's gradient passing through candle's graph); so does evaluation
    /// (`mtanet_kernels::conv_affine_eval`: the BatchNorm's affine and ReLU as the
    /// convolution's epilogue, bit-identical to the two ops); otherwise the layers run one after
    /// the other.
    pub(crate) fn conv_forward_t(
        &self,
        conv: &Conv2d,
        x: &Tensor,
        train: bool,
        relu: bool,
    ) -> Result<Tensor> {
        let fused = mtanet_kernels::conv_bn_applies(&[x, conv.weight(), &self.weight, &self.bias]);
        if fused && train {
            let (y, stats) = mtanet_kernels::conv_bn_train(
                x,
                conv.weight(),
                &self.weight,
                &self.bias,
                conv.params(),
                self.eps,
                relu,
            )?;
            self.update_running(&stats)?;
            return Ok(y);
        }
        if fused {
            let (scale, shift) = self.eval_affine()?;
            return mtanet_kernels::conv_affine_eval(
                x,
                conv.weight(),
                &scale,
                &shift,
                conv.params(),
                relu,
            );
        }
        self.forward_act(&conv.forward(x)?, train, relu)
    }

    /// `max_pool(relu(bn(conv(x))))` in training, as one op on the CPU in f32
    /// (`mtanet_kernels::conv_bn_relu_max_pool_train`: the values and gradients of
    /// [`conv_forward_t`](Self::conv_forward_t) then the pool, without the pool's input and its
    /// gradient in candle's graph); `None` elsewhere, where the caller runs the layers.
    pub(crate) fn conv_relu_max_pool_train(
        &self,
        conv: &Conv2d,
        x: &Tensor,
        pool: mtanet_kernels::MaxPoolParams,
    ) -> Result<Option<Tensor>> {
        if !mtanet_kernels::conv_bn_applies(&[x, conv.weight(), &self.weight, &self.bias]) {
            return Ok(None);
        }
        let (y, stats) = mtanet_kernels::conv_bn_relu_max_pool_train(
            x,
            conv.weight(),
            (&self.weight, &self.bias),
            conv.params(),
            self.eps,
            pool,
        )?;
        self.update_running(&stats)?;
        Ok(Some(y))
    }

    /// `relu(bn(conv(x)) + shortcut)`: a bottleneck's last convolution, this BatchNorm and the
    /// residual join. On the CPU in f32 it runs as one op, in training
    /// (`mtanet_kernels::conv_bn_add_relu_train`) and in evaluation
    /// (`mtanet_kernels::conv_affine_add_relu_eval`), with the values and gradients of the
    /// separate ops.
    pub(crate) fn conv_add_relu_t(
        &self,
        conv: &Conv2d,
        x: &Tensor,
        shortcut: &Tensor,
        train: bool,
    ) -> Result<Tensor> {
        let fused = mtanet_kernels::conv_bn_applies(&[
            x,
            conv.weight(),
            &self.weight,
            &self.bias,
            shortcut,
        ]);
        if fused && train {
            let (y, stats) = mtanet_kernels::conv_bn_add_relu_train(
                x,
                conv.weight(),
                (&self.weight, &self.bias),
                shortcut,
                conv.params(),
                self.eps,
            )?;
            self.update_running(&stats)?;
            return Ok(y);
        }
        if fused {
            let (scale, shift) = self.eval_affine()?;
            return mtanet_kernels::conv_affine_add_relu_eval(
                x,
                conv.weight(),
                &scale,
                &shift,
                shortcut,
                conv.params(),
            );
        }
        let out = self.conv_forward_t(conv, x, train, false)?;
        mtanet_kernels::add_relu(&out, shortcut)
    }

    fn forward_act(&self, x: &Tensor, train: bool, relu: bool) -> Result<Tensor> {
        if x.dtype() != self.weight.dtype() {
            // Mixed precision: normalise in the parameters' dtype, hand back x's.
            let y = self.forward_act(&x.to_dtype(self.weight.dtype())?, train, relu)?;
            return y.to_dtype(x.dtype());
        }
        if !self.fused(x) {
            let y = self.composed.forward_t(x, train)?;
            return if relu { y.relu() } else { Ok(y) };
        }
        if train {
            let (y, stats) =
                mtanet_kernels::batch_norm_train(x, &self.weight, &self.bias, self.eps, relu)?;
            self.update_running(&stats)?;
            Ok(y)
        } else {
            let (scale, shift) = self.eval_affine()?;
            mtanet_kernels::channel_affine(x, &scale, &shift, relu)
        }
    }

    /// Eval mode as a per-channel affine: `scale = weight / sqrt(running_var + eps)`,
    /// `shift = bias - running_mean * scale`.
    pub(crate) fn eval_affine(&self) -> Result<(Tensor, Tensor)> {
        let scale = self
            .weight
            .div(&(self.running_var.as_tensor() + self.eps)?.sqrt()?)?;
        let shift = (&self.bias - self.running_mean.as_tensor().mul(&scale)?)?;
        Ok((scale, shift))
    }

    /// This BatchNorm after `conv`, as a stage of `mtanet_kernels::bottleneck_train`.
    pub(crate) fn stage<'a>(&'a self, conv: &'a Conv2d) -> mtanet_kernels::ConvBnStage<'a> {
        mtanet_kernels::ConvBnStage {
            conv_weight: conv.weight(),
            conv: conv.params(),
            bn_weight: &self.weight,
            bn_bias: &self.bias,
            eps: self.eps,
        }
    }

    /// Takes a training batch's statistics into the running mean and variance: PyTorch's
    /// running averages `(1 - m) r + m s`, with the unbiased batch variance, on the statistics'
    /// device (`BatchStats::update_running`: no host copy on CUDA).
    pub(crate) fn update_running(&self, stats: &mtanet_kernels::BatchStats) -> Result<()> {
        stats.update_running(&self.running_mean, &self.running_var, self.momentum)
    }
}

impl ModuleT for BatchNorm {
    fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        self.forward_act(x, train, false)
    }
}

/// `BatchNorm2d(c)` with PyTorch's eps and momentum, weight 1, bias 0.
pub(crate) fn batch_norm(c: usize, vb: VarBuilder) -> Result<BatchNorm> {
    BatchNorm::new(c, BN_EPS, BN_MOMENTUM, 1.0, vb)
}

/// `BatchNorm2d(c, momentum=momentum)` whose weight starts at `weight_init` (CBAM's spatial gate).
pub(crate) fn batch_norm_with(
    c: usize,
    momentum: f64,
    weight_init: f64,
    vb: VarBuilder,
) -> Result<BatchNorm> {
    BatchNorm::new(c, BN_EPS, momentum, weight_init, vb)
}
