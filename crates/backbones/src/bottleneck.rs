//! The one bottleneck block all five backbones share (1x1 -> 3x3 -> 1x1, x4 expansion).
//!
//! Stride sits in the 3x3 conv ("ResNet v1.5", torchvision/timm) or, with `stride_in_1x1`, in
//! the first 1x1 conv (Caffe / VGGFace2). Attention runs after `bn3`, before the residual add.

use crate::batch_norm_layer::{batch_norm, BatchNorm};
use crate::cbam::Cbam;
use crate::config::{Attention, ResNetConfig};
use crate::conv2d_layer::{conv_no_bias, Conv2d, ConvSpec};
use crate::squeeze_excite::SqueezeExcite;
use candle_core::{Result, Tensor};
use candle_nn::{ModuleT, VarBuilder};

/// The attention layer of a block, if any.
#[derive(Clone, Debug)]
enum BlockAttention {
    SqueezeExcite(SqueezeExcite),
    Cbam(Cbam),
}

/// A bottleneck block; VarBuilder names follow the PyTorch state dict (`conv1`, `bn1`, ...,
/// `downsample.0`, `downsample.1`, `se.fc1`, `conv4`, `cbam.*`).
#[derive(Clone, Debug)]
pub struct Bottleneck {
    conv1: Conv2d,
    bn1: BatchNorm,
    conv2: Conv2d,
    bn2: BatchNorm,
    conv3: Conv2d,
    bn3: BatchNorm,
    attention: Option<BlockAttention>,
    downsample: Option<(Conv2d, BatchNorm)>,
}

impl Bottleneck {
    /// Block taking `c_in` channels to `4 * planes`, with `stride` applied once.
    pub fn new(
        cfg: &ResNetConfig,
        c_in: usize,
        planes: usize,
        stride: usize,
        vb: VarBuilder,
    ) -> Result<Self> {
        let width = cfg.bottleneck_width(planes);
        let c_out = 4 * planes;
        let (stride1, stride3) = if cfg.stride_in_1x1 {
            (stride, 1)
        } else {
            (1, stride)
        };
        let conv1 = conv_no_bias(ConvSpec::pointwise(c_in, width, stride1), vb.pp("conv1"))?;
        let bn1 = batch_norm(width, vb.pp("bn1"))?;
        let conv2 = conv_no_bias(
            ConvSpec {
                c_in: width,
                c_out: width,
                kernel: 3,
                stride: stride3,
                padding: 1,
                groups: cfg.groups,
            },
            vb.pp("conv2"),
        )?;
        let bn2 = batch_norm(width, vb.pp("bn2"))?;
        let conv3 = conv_no_bias(ConvSpec::pointwise(width, c_out, 1), vb.pp("conv3"))?;
        let bn3 = batch_norm(c_out, vb.pp("bn3"))?;
        let reduced = cfg.attention_width(c_out);
        let attention = match cfg.attention {
            Attention::None => None,
            Attention::SqueezeExcite => {
                let se = vb.pp("se");
                Some(BlockAttention::SqueezeExcite(SqueezeExcite::new(
                    c_out,
                    reduced,
                    se.pp("fc1"),
                    se.pp("fc2"),
                )?))
            }
            Attention::SqueezeExciteVggface2 => Some(BlockAttention::SqueezeExcite(
                SqueezeExcite::new(c_out, reduced, vb.pp("conv4"), vb.pp("conv5"))?,
            )),
            Attention::Cbam => Some(BlockAttention::Cbam(Cbam::new(
                c_out,
                reduced,
                vb.pp("cbam"),
            )?)),
        };
        let downsample = if stride != 1 || c_in != c_out {
            let ds = vb.pp("downsample");
            Some((
                conv_no_bias(ConvSpec::pointwise(c_in, c_out, stride), ds.pp("0"))?,
                batch_norm(c_out, ds.pp("1"))?,
            ))
        } else {
            None
        };
        Ok(Self {
            conv1,
            bn1,
            conv2,
            bn2,
            conv3,
            bn3,
            attention,
            downsample,
        })
    }
}

impl Bottleneck {
    /// A training forward of a block without attention or with squeeze-excite as one op
    /// (`mtanet_kernels::bottleneck_train`: the values and gradients of the per-layer ops, with
    /// no inner activation or gradient in candle's graph), updating the running statistics;
    /// `None` for CBAM blocks and where that op does not run the tensors (other than f32 on the
    /// CPU).
    fn train_as_one_op(&self, x: &Tensor) -> Result<Option<Tensor>> {
        let gate = match &self.attention {
            None => None,
            Some(BlockAttention::SqueezeExcite(se)) => Some(se.as_gate()),
            Some(BlockAttention::Cbam(_)) => return Ok(None),
        };
        let main = [
            self.bn1.stage(&self.conv1),
            self.bn2.stage(&self.conv2),
            self.bn3.stage(&self.conv3),
        ];
        let downsample = self.downsample.as_ref().map(|(conv, bn)| bn.stage(conv));
        let stages: Vec<_> = main.iter().copied().chain(downsample).collect();
        if !mtanet_kernels::bottleneck_train_applies(x, &stages, gate.as_ref()) {
            return Ok(None);
        }
        let (y, stats) = mtanet_kernels::bottleneck_train(x, main, downsample, gate)?;
        let norms = [&self.bn1, &self.bn2, &self.bn3]
            .into_iter()
            .chain(self.downsample.as_ref().map(|(_, bn)| bn));
        for (bn, stats) in norms.zip(&stats) {
            bn.update_running(stats)?;
        }
        Ok(Some(y))
    }
}

impl ModuleT for Bottleneck {
    fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        if train {
            if let Some(y) = self.train_as_one_op(x)? {
                return Ok(y);
            }
        }
        let out = self.bn1.conv_forward_t(&self.conv1, x, train, true)?;
        let out = self.bn2.conv_forward_t(&self.conv2, &out, train, true)?;
        let shortcut = match &self.downsample {
            None => x.clone(),
            Some((conv, bn)) => bn.conv_forward_t(conv, x, train, false)?,
        };
        let Some(attention) = &self.attention else {
            // The last convolution, its BatchNorm and the residual join as one op.
            return self
                .bn3
                .conv_add_relu_t(&self.conv3, &out, &shortcut, train);
        };
        let out = self.bn3.conv_forward_t(&self.conv3, &out, train, false)?;
        // The attention's last gate and the residual join run as one op (the same values as
        // gating, then `add_relu`).
        match attention {
            BlockAttention::SqueezeExcite(se) => {
                mtanet_kernels::channel_gate_add_relu(&out, &se.gate(&out)?, &shortcut)
            }
            BlockAttention::Cbam(cbam) => {
                let (gated, gate) = cbam.gated_t(&out, train)?;
                mtanet_kernels::spatial_gate_add_relu(&gated, &gate, &shortcut)
            }
        }
    }
}
