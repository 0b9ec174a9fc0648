//! The one bottleneck block all five backbones share (1x1 -> 3x3 -> 1x1, x4 expansion).
//!
//! Stride sits in the 3x3 conv ("ResNet v1.5", torchvision/timm) or, with `stride_in_1x1`, in
//! the first 1x1 conv (Caffe / VGGFace2). Attention runs after `bn3`, before the residual add.

use crate::batch_norm_layer::{batch_norm, BatchNorm};
use crate::cbam::Cbam;
use crate::config::{Attention, ResNetConfig};
use crate::conv2d_layer::{conv_no_bias, Conv2d, ConvSpec};
use crate::squeeze_excite::SqueezeExcite;
use candle_core::{bail, Result, Tensor};
use candle_nn::{ModuleT, VarBuilder};
use mtanet_kernels::ParamGrads;

/// The attention layer of a block, if any.
#[derive(Clone, Debug)]
enum BlockAttention {
    SqueezeExcite(SqueezeExcite),
    Cbam(Cbam),
}

/// Whether a variable name (with any prefix) belongs to an attention gate that may start fresh
/// on a plain backbone's weights: timm's squeeze-excite (`se.*`) and CBAM (`cbam.*`), added to
/// the same graph with the same input. The VGGFace2 SENet's squeeze-excite (`conv4` /
/// `conv5`) is not one: that network differs from a plain ResNet in its strides and its input,
/// so a ResNet file that leaves only those fresh is still another network's.
pub fn is_gate_variable(name: &str) -> bool {
    name.split('.').any(|part| matches!(part, "se" | "cbam"))
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
    param_grads: ParamGrads,
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
            param_grads: ParamGrads::new(),
        })
    }
}

/// The per-forward values a block gives the inference op ([`Bottleneck::infer_parts`]).
pub(crate) struct InferParts {
    /// bn1, bn2 and bn3 folded to `(scale, shift)`.
    main: [(Tensor, Tensor); 3],
    /// The downsample's BatchNorm folded, if the block has one.
    downsample: Option<(Tensor, Tensor)>,
    spatial_affine: Option<(Tensor, Tensor)>,
}

impl Bottleneck {
    /// The same block handing its parameters' gradients to `param_grads` when it trains as one
    /// op: the store its network collects ([`ResNet::backward`](crate::ResNet::backward)), or,
    /// for a block trained on its own, the caller's ([`ParamGrads::backward`]). Without one the
    /// block keeps a store nobody collects, and its second training forward is refused.
    pub fn with_param_grads(mut self, param_grads: &ParamGrads) -> Self {
        self.param_grads = param_grads.clone();
        self
    }

    /// The block as the whole-block training op takes it (`mtanet_kernels::bottleneck_train`),
    /// or `None` where that op does not run it (a CBAM MLP without biases).
    pub(crate) fn train_stages(&self) -> Option<mtanet_kernels::BottleneckStages<'_>> {
        let gate = match &self.attention {
            None => None,
            Some(BlockAttention::SqueezeExcite(se)) => Some(se.as_gate()),
            Some(BlockAttention::Cbam(cbam)) => Some(cbam.as_gate()?),
        };
        Some(mtanet_kernels::BottleneckStages {
            main: [
                self.bn1.stage(&self.conv1),
                self.bn2.stage(&self.conv2),
                self.bn3.stage(&self.conv3),
            ],
            downsample: self.downsample.as_ref().map(|(conv, bn)| bn.stage(conv)),
            gate,
        })
    }

    /// [`Bottleneck::train_stages`] where the whole-block training op runs them on `x` (f32 on
    /// the CPU), else `None`.
    pub(crate) fn train_stages_on(
        &self,
        x: &Tensor,
    ) -> Option<mtanet_kernels::BottleneckStages<'_>> {
        self.train_stages()
            .filter(|spec| mtanet_kernels::bottleneck_train_applies(x, spec))
    }

    /// What the inference op takes from the block beyond its parameters, computed once per
    /// forward: each BatchNorm's eval-mode affine `(scale, shift)` and CBAM's spatial one.
    pub(crate) fn infer_parts(&self) -> Result<InferParts> {
        let main = [
            self.bn1.eval_affine()?,
            self.bn2.eval_affine()?,
            self.bn3.eval_affine()?,
        ];
        let downsample = self
            .downsample
            .as_ref()
            .map(|(_, bn)| bn.eval_affine())
            .transpose()?;
        let spatial_affine = match &self.attention {
            Some(BlockAttention::Cbam(cbam)) => Some(cbam.spatial_eval_affine()?),
            None | Some(BlockAttention::SqueezeExcite(_)) => None,
        };
        Ok(InferParts {
            main,
            downsample,
            spatial_affine,
        })
    }

    /// The block as the inference op takes it (`mtanet_kernels::bottlenecks_infer`), from its
    /// [`Bottleneck::infer_parts`], or `None` where that op does not run it (a CBAM MLP
    /// without biases).
    pub(crate) fn infer_stages<'a>(
        &'a self,
        parts: &'a InferParts,
    ) -> Option<mtanet_kernels::BottleneckEvalStages<'a>> {
        let gate = match &self.attention {
            None => None,
            Some(BlockAttention::SqueezeExcite(se)) => {
                Some(mtanet_kernels::EvalGate::SqueezeExcite(se.as_mlp()))
            }
            Some(BlockAttention::Cbam(cbam)) => Some(mtanet_kernels::EvalGate::Cbam(
                cbam.eval_gate(parts.spatial_affine.as_ref()?)?,
            )),
        };
        let stage = |conv: &'a Conv2d, (scale, shift): &'a (Tensor, Tensor)| {
            mtanet_kernels::ConvAffineStage {
                conv_weight: conv.weight(),
                conv: conv.params(),
                scale,
                shift,
            }
        };
        Some(mtanet_kernels::BottleneckEvalStages {
            main: [
                stage(&self.conv1, &parts.main[0]),
                stage(&self.conv2, &parts.main[1]),
                stage(&self.conv3, &parts.main[2]),
            ],
            downsample: match (&self.downsample, &parts.downsample) {
                (Some((conv, _)), Some(affine)) => Some(stage(conv, affine)),
                _ => None,
            },
            gate,
        })
    }

    /// Takes the batch statistics of the whole-block training op (stages, then CBAM's spatial
    /// gate) into the running averages.
    pub(crate) fn update_running(&self, stats: &[mtanet_kernels::BatchStats]) -> Result<()> {
        let norms = [&self.bn1, &self.bn2, &self.bn3]
            .into_iter()
            .chain(self.downsample.as_ref().map(|(_, bn)| bn));
        let mut stats = stats.iter();
        for (bn, stats) in norms.zip(&mut stats) {
            bn.update_running(stats)?;
        }
        if let Some(BlockAttention::Cbam(cbam)) = &self.attention {
            match stats.next() {
                Some(spatial) => cbam.update_running(spatial)?,
                None => bail!("bottleneck_train returned no statistics for the CBAM gate"),
            }
        }
        Ok(())
    }

    /// A training forward of the block as one op (`mtanet_kernels::bottleneck_train`: the
    /// values and gradients of the per-layer ops, with no inner activation or gradient in
    /// candle's graph), updating the running statistics; `None` where that op does not run the
    /// tensors (other than f32 on the CPU).
    fn train_as_one_op(&self, x: &Tensor) -> Result<Option<Tensor>> {
        let Some(spec) = self.train_stages_on(x) else {
            return Ok(None);
        };
        self.param_grads.check_collected("Bottleneck")?;
        let (y, stats) = mtanet_kernels::bottleneck_train(
            x,
            spec.main,
            spec.downsample,
            spec.gate,
            &self.param_grads,
        )?;
        self.update_running(&stats)?;
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
                if !train {
                    if let Some(y) = cbam.add_relu_eval(&out, &shortcut)? {
                        return Ok(y);
                    }
                }
                let (gated, gate) = cbam.gated_t(&out, train)?;
                mtanet_kernels::spatial_gate_add_relu(&gated, &gate, &shortcut)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::BackboneKind;
    use candle_core::{DType, Device, Var};
    use candle_nn::VarMap;

    /// Deterministic values in `[-scale, scale]` of `shape` (candle's CPU RNG takes no seed):
    /// `scale * sin(0.618 * i + seed)`.
    fn wave(shape: &[usize], seed: f64, scale: f64) -> Result<Tensor> {
        let n: usize = shape.iter().product();
        let i = Tensor::arange(0u32, n as u32, &Device::Cpu)?.to_dtype(DType::F32)?;
        ((i * 0.618)? + seed)?
            .sin()?
            .affine(scale, 0.0)?
            .reshape(shape)
    }

    /// The relative max-abs difference of two tensors, in f64.
    fn rel_err(a: &Tensor, b: &Tensor) -> Result<f64> {
        let (a, b) = (a.to_dtype(DType::F64)?, b.to_dtype(DType::F64)?);
        let diff = (&a - &b)?.abs()?.max_all()?.to_scalar::<f64>()?;
        let scale = b.abs()?.max_all()?.to_scalar::<f64>()?.max(1e-12);
        Ok(diff / scale)
    }

    /// A block trained on its own: with the caller's store its parameters' gradients arrive
    /// through [`ParamGrads::backward`]; without one, a second training forward after a backward
    /// is refused rather than run with gradients nobody collected.
    #[test]
    fn a_block_on_its_own_is_differentiated_through_the_callers_store() -> Result<()> {
        let cfg = ResNetConfig::from_kind(&BackboneKind::Resnet50).scaled(8, Some([1; 4]), None);
        let varmap = VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
        let x = wave(&[2, 16, 6, 6], 0.5, 1.0)?;
        let own = Bottleneck::new(&cfg, 16, 8, 1, vb.pp("own"))?;
        own.forward_t(&x, true)?.sum_all()?.backward()?;
        let err = own.forward_t(&x, true).expect_err("uncollected gradients");
        assert!(err.to_string().contains("never collected"), "{err}");

        let store = ParamGrads::new();
        let block = Bottleneck::new(&cfg, 16, 8, 1, vb.pp("given"))?.with_param_grads(&store);
        let grads = store.backward(&block.forward_t(&x, true)?.sum_all()?)?;
        let data = varmap.data().lock().expect("varmap").clone();
        let trained: Vec<_> = data
            .iter()
            .filter(|(name, _)| name.starts_with("given.") && !name.contains("running_"))
            .collect();
        assert!(trained.len() >= 9, "{} parameters", trained.len());
        for (name, var) in trained {
            assert!(grads.get(var).is_some(), "no gradient for {name}");
        }
        block.forward_t(&x, true)?;
        Ok(())
    }

    /// A training step of a block in f32 on the CPU runs as one op
    /// (`mtanet_kernels::bottleneck_train`); the same block in f64 runs candle's composed
    /// layers. Both must give the same output and leave every running statistic (the block's
    /// BatchNorms and CBAM's spatial one) the same, so the one op hands each statistic to its
    /// own BatchNorm.
    #[test]
    fn a_block_trained_as_one_op_updates_every_running_statistic() -> Result<()> {
        let kinds = [
            BackboneKind::Resnext50_32x4d,
            BackboneKind::Seresnet50,
            BackboneKind::Resnext50_32x4dCbam,
        ];
        for kind in kinds {
            let cfg = ResNetConfig::from_kind(&kind).scaled(8, Some([1, 1, 1, 1]), Some(4));
            let (single, double) = (VarMap::new(), VarMap::new());
            let build = |varmap: &VarMap, dtype| {
                let vb = VarBuilder::from_varmap(varmap, dtype, &Device::Cpu);
                Bottleneck::new(&cfg, 16, 8, 2, vb)
            };
            let one_op = build(&single, DType::F32)?;
            let composed = build(&double, DType::F64)?;
            // Varied parameters (the spatial gate's BatchNorm weight, 0 at init, which would
            // hide its input, around 1), copied into the f64 block; in name order, so every run
            // sees the same values.
            let vars = single.data().lock().expect("varmap").clone();
            let twins = double.data().lock().expect("varmap").clone();
            let mut names: Vec<&String> = vars.keys().collect();
            names.sort();
            let mut randomized = 0;
            for name in names {
                if name.ends_with("running_mean") || name.ends_with("running_var") {
                    continue;
                }
                randomized += 1;
                let var = &vars[name];
                let around = if name.ends_with("bn.weight") {
                    1.0
                } else {
                    0.0
                };
                var.set(&(wave(var.dims(), randomized as f64, 0.3)? + around)?)?;
                twins[name].set(&var.as_tensor().to_dtype(DType::F64)?)?;
            }
            assert!(randomized > 10, "{kind}: {randomized} parameters");
            let x = Var::from_tensor(&wave(&[4, 16, 8, 8], 0.5, 1.0)?)?;
            let y = one_op.forward_t(x.as_tensor(), true)?;
            let y64 = composed.forward_t(&x.as_tensor().to_dtype(DType::F64)?, true)?;
            let err = rel_err(&y, &y64)?;
            assert!(err < 1e-4, "{kind}: output rel err {err}");
            let mut stats = 0;
            for (name, var) in &vars {
                if !(name.ends_with("running_mean") || name.ends_with("running_var")) {
                    continue;
                }
                let err = rel_err(var.as_tensor(), twins[name].as_tensor())?;
                assert!(err < 1e-4, "{kind}: {name} rel err {err}");
                let init = if name.ends_with("running_var") {
                    1.0
                } else {
                    0.0
                };
                let moved = (var.as_tensor() - init)?
                    .abs()?
                    .max_all()?
                    .to_scalar::<f32>()?;
                assert!(moved > 0.0, "{kind}: {name} did not move");
                stats += 1;
            }
            let want = 2 * (4 + usize::from(kind == BackboneKind::Resnext50_32x4dCbam));
            assert_eq!(stats, want, "{kind}: running statistics");
        }
        Ok(())
    }
}
