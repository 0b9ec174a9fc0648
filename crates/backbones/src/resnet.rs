//! The generic bottleneck ResNet: stem (7x7/2 conv, BN, ReLU, 3x3/2 max-pool) and four stages.

use crate::batch_norm_layer::{batch_norm, BatchNorm};
use crate::bottleneck::Bottleneck;
use crate::config::{ResNetConfig, StemPool};
use crate::conv2d_layer::{conv_no_bias, Conv2d, ConvSpec};
use candle_core::backprop::GradStore;
use candle_core::{bail, DType, Result, Tensor};
use candle_nn::{ModuleT, VarBuilder};
use mtanet_kernels::{EvalPacks, ParamGrads};

/// A backbone built from a [`ResNetConfig`]; `forward_t` returns the final feature map
/// `(N, out_channels, h, w)` (no pooling, no classifier).
///
/// VarBuilder paths equal the PyTorch state-dict names (`conv1.weight`, `bn1.running_mean`,
/// `layer1.0.conv2.weight`, `layer1.0.downsample.0.weight`, ...), so torchvision/timm
/// checkpoints load without a remapping table.
///
/// Its blocks train as single ops that write their parameters' gradients outside candle's
/// graph, so a training loss is differentiated with [`ResNet::backward`], which collects them,
/// not with `Tensor::backward` (a training forward refuses to start while gradients of an
/// earlier backward were left uncollected).
#[derive(Clone, Debug)]
pub struct ResNet {
    cfg: ResNetConfig,
    conv1: Conv2d,
    bn1: BatchNorm,
    stages: Vec<Vec<Bottleneck>>,
    param_grads: ParamGrads,
}

impl ResNet {
    /// Builds (or loads, depending on `vb`) the backbone at the root of `vb`.
    pub fn new(cfg: &ResNetConfig, vb: VarBuilder) -> Result<Self> {
        if let Err(e) = cfg.validate() {
            bail!("{e}")
        }
        let conv1 = conv_no_bias(
            ConvSpec {
                c_in: cfg.in_channels,
                c_out: cfg.stem_width,
                kernel: 7,
                stride: 2,
                padding: 3,
                groups: 1,
            },
            vb.pp("conv1"),
        )?;
        let bn1 = batch_norm(cfg.stem_width, vb.pp("bn1"))?;
        let mut c_in = cfg.stem_width;
        let param_grads = ParamGrads::new();
        let mut stages = Vec::with_capacity(4);
        for (i, (&planes, &depth)) in cfg.stage_planes.iter().zip(&cfg.layers).enumerate() {
            let layer = vb.pp(format!("layer{}", i + 1));
            let mut blocks = Vec::with_capacity(depth);
            for b in 0..depth {
                let stride = if i > 0 && b == 0 { 2 } else { 1 };
                let block = Bottleneck::new(cfg, c_in, planes, stride, layer.pp(b))?;
                blocks.push(block.with_param_grads(&param_grads));
                c_in = 4 * planes;
            }
            stages.push(blocks);
        }
        Ok(Self {
            cfg: cfg.clone(),
            conv1,
            bn1,
            stages,
            param_grads,
        })
    }

    /// Every gradient of `loss`: candle's backward, then the gradients the blocks' training ops
    /// wrote ([`ParamGrads::backward`]).
    pub fn backward(&self, loss: &Tensor) -> Result<GradStore> {
        self.param_grads.backward(loss)
    }

    /// The configuration this network was built from.
    pub fn config(&self) -> &ResNetConfig {
        &self.cfg
    }

    /// The stem: conv1, bn1, ReLU and the 3x3/2 max-pool (padded or ceil mode). In training on
    /// the CPU in f32 the four run as one op (`BatchNorm::conv_relu_max_pool_train`).
    pub fn stem_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let (padding, ceil_mode) = match self.cfg.stem_pool {
            StemPool::Padded => (1, false),
            StemPool::CeilMode => (0, true),
        };
        let pool = mtanet_kernels::MaxPoolParams {
            kernel: 3,
            stride: 2,
            padding,
            ceil_mode,
        };
        if train {
            if let Some(y) = self.bn1.conv_relu_max_pool_train(&self.conv1, x, pool)? {
                return Ok(y);
            }
        }
        let x = self.bn1.conv_forward_t(&self.conv1, x, train, true)?;
        mtanet_kernels::max_pool2d(&x, 3, 2, padding, ceil_mode)
    }
}

impl ResNet {
    /// The backbone's eval-mode output where nothing is differentiated (evaluation,
    /// prediction): the values of `forward_t(x, false)`, bit for bit, as a tensor with no
    /// gradient. On the CPU in f32, the blocks run as one pass over buffers
    /// reused from block to block (`mtanet_kernels::bottlenecks_infer`), so no layer's output
    /// is cleared before it is written or kept until the forward ends; otherwise they run as in
    /// `forward_t` and the result is detached.
    ///
    /// `packs`: an evaluation pass's store of the layouts the convolution kernels derive from
    /// the weights (`mtanet_kernels::EvalPacks`), to pack them on the pass's first batch only;
    /// the weights must not change while it is kept (an error where they did). `None` packs
    /// them at every call. The same values either way.
    pub fn infer(&self, x: &Tensor, packs: Option<&EvalPacks>) -> Result<Tensor> {
        let mut x = self.stem_t(x, false)?;
        let blocks: Vec<&Bottleneck> = self.stages.iter().flatten().collect();
        if let Some(y) = infer_in_one_pass(&x, &blocks, packs)? {
            return Ok(y);
        }
        for block in blocks {
            x = block.forward_t(&x, false)?;
        }
        Ok(x.detach())
    }
}

/// `blocks` on `x` through `mtanet_kernels::bottlenecks_infer`, or `None` where that pass does
/// not run them.
fn infer_in_one_pass(
    x: &Tensor,
    blocks: &[&Bottleneck],
    packs: Option<&EvalPacks>,
) -> Result<Option<Tensor>> {
    if !(x.device().is_cpu() && x.dtype() == DType::F32) {
        // Never the pass: skip folding every BatchNorm for it.
        return Ok(None);
    }
    let parts = blocks
        .iter()
        .map(|b| b.infer_parts())
        .collect::<Result<Vec<_>>>()?;
    let stages: Option<Vec<_>> = blocks
        .iter()
        .zip(&parts)
        .map(|(b, p)| b.infer_stages(p))
        .collect();
    match stages.filter(|s| mtanet_kernels::bottlenecks_infer_applies(x, s)) {
        Some(stages) => mtanet_kernels::bottlenecks_infer(x, &stages, packs).map(Some),
        None => Ok(None),
    }
}

impl ModuleT for ResNet {
    fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        if train {
            self.param_grads.check_collected("ResNet")?;
        }
        let mut x = self.stem_t(x, train)?;
        let blocks: Vec<&Bottleneck> = self.stages.iter().flatten().collect();
        // Every block's stages, if the one-op training runs them all.
        let chained: Option<Vec<_>> = match train {
            true => blocks.iter().map(|b| b.train_stages_on(&x)).collect(),
            false => None,
        };
        if let Some(specs) = chained {
            // Every block in one op: their outputs' gradients never enter candle's graph.
            let (y, stats) = mtanet_kernels::bottlenecks_train(&x, &specs, &self.param_grads)?;
            for (block, stats) in blocks.iter().zip(&stats) {
                block.update_running(stats)?;
            }
            return Ok(y);
        }
        for block in blocks {
            x = block.forward_t(&x, train)?;
        }
        Ok(x)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{BackboneKind, MtaNet, MtaNetConfig};
    use candle_core::{DType, Device, Var};
    use candle_nn::VarMap;

    /// 112x112 inputs (the paper's face crops) give 4x4 maps for both stem-pool styles
    /// (56 -> 28 -> 28/14/7/4) and every backbone trains end to end.
    #[test]
    fn small_variants_run_and_train_on_112_inputs() -> Result<()> {
        for kind in BackboneKind::ALL {
            let groups = matches!(
                kind,
                BackboneKind::Resnext50_32x4d | BackboneKind::Resnext50_32x4dCbam
            )
            .then_some(4);
            let cfg = ResNetConfig::from_kind(&kind).scaled(16, Some([1, 1, 1, 1]), groups);
            let mta = MtaNetConfig {
                hidden: 16,
                ..MtaNetConfig::new(cfg, 8, 7)
            };
            let varmap = VarMap::new();
            let model = MtaNet::new(
                &mta,
                VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu),
            )?;
            let x = Var::randn(0f32, 1f32, (2, 3, 112, 112), &Device::Cpu)?;
            let (fmap, features) = model.forward_features_t(x.as_tensor(), true)?;
            assert_eq!(fmap.dims(), &[2, 128, 4, 4], "{kind}");
            assert_eq!(features.dims(), &[2, 32], "{kind}");
            let out = model.forward_t(x.as_tensor(), true)?;
            assert_eq!(out.va.dims(), &[2, 2]);
            assert_eq!(out.au_logits.dims(), &[2, 8]);
            assert_eq!(out.expr_logits.dims(), &[2, 7]);
            let loss =
                (out.va.sum_all()? + out.au_logits.sum_all()?)?.add(&out.expr_logits.sum_all()?)?;
            let grads = model.backward(&loss)?;
            // Every trainable variable (not BN running stats) receives a gradient.
            let data = varmap
                .data()
                .lock()
                .map_err(|_| candle_core::Error::Msg("lock".into()))?;
            for (name, v) in data.iter() {
                if name.ends_with("running_mean") || name.ends_with("running_var") {
                    continue;
                }
                assert!(
                    grads.get(v.as_tensor()).is_some(),
                    "{kind}: no gradient for {name}"
                );
            }
            assert!(grads.get(x.as_tensor()).is_some());
        }
        Ok(())
    }

    /// A training loss differentiated with `Tensor::backward` leaves the blocks' parameter
    /// gradients out of its store: the next training forward refuses to run (an eval forward
    /// still runs), and after `ResNet::backward` it runs again.
    #[test]
    fn a_backward_that_leaves_block_gradients_behind_is_refused() -> Result<()> {
        let cfg = ResNetConfig::from_kind(&BackboneKind::Resnet50).scaled(16, Some([1; 4]), None);
        let varmap = VarMap::new();
        let net = ResNet::new(
            &cfg,
            VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu),
        )?;
        let x = Tensor::randn(0f32, 1f32, (2, 3, 64, 64), &Device::Cpu)?;
        let plain = net.forward_t(&x, true)?.sum_all()?.backward()?;
        let block_weight = varmap.data().lock().expect("varmap")["layer1.0.conv1.weight"].clone();
        assert!(
            plain.get(&block_weight).is_none(),
            "written outside the graph"
        );
        let err = net.forward_t(&x, true).expect_err("pending gradients");
        assert!(err.to_string().contains("never collected"), "{err}");
        net.forward_t(&x, false)?;
        net.backward(&net.forward_t(&x, false)?.sum_all()?)?;
        let grads = net.backward(&net.forward_t(&x, true)?.sum_all()?)?;
        assert!(grads.get(&block_weight).is_some());
        net.forward_t(&x, true)?;
        Ok(())
    }

    /// `infer` gives `forward_t(x, false)`'s values bit for bit, without a gradient, through the
    /// inference op (plain, grouped, squeeze-excite and CBAM blocks, with downsampling and
    /// stride); eval mode itself stays differentiable.
    /// The running statistics come from a training forward, so the folded BatchNorms are not
    /// the identity.
    #[test]
    fn infer_equals_the_eval_forward_bit_for_bit() -> Result<()> {
        for (kind, groups) in [
            (BackboneKind::Resnet50, None),
            (BackboneKind::Resnext50_32x4d, Some(4)),
            (BackboneKind::Seresnet50, None),
            (BackboneKind::Resnext50_32x4dCbam, Some(4)),
        ] {
            let cfg = ResNetConfig::from_kind(&kind).scaled(16, Some([2, 1, 2, 1]), groups);
            let vars = crate::SeededVarMap::new(5);
            let net = ResNet::new(&cfg, vars.var_builder(DType::F32, &Device::Cpu))?;
            let x = Tensor::randn(0f32, 1f32, (2, 3, 64, 64), &Device::Cpu)?;
            net.forward_t(&(&x * 2.0)?, true)?;
            let eval = net.forward_t(&x, false)?;
            let inferred = net.infer(&x, None)?;
            // Twice with one evaluation pass's store: the same bits as without.
            let packs = mtanet_kernels::EvalPacks::new();
            for _ in 0..2 {
                let kept = net
                    .infer(&x, Some(&packs))?
                    .flatten_all()?
                    .to_vec1::<f32>()?;
                let plain = inferred.flatten_all()?.to_vec1::<f32>()?;
                let differ = kept
                    .iter()
                    .zip(&plain)
                    .filter(|(p, q)| p.to_bits() != q.to_bits());
                assert_eq!(differ.count(), 0, "{kind}: with the pass's store");
            }
            assert!(packs.layers() > 0, "{kind}: the store was used");
            assert!(eval.track_op(), "{kind}: eval mode is differentiable");
            assert!(!inferred.track_op(), "{kind}: infer has no gradient");
            let (a, b) = (
                eval.flatten_all()?.to_vec1::<f32>()?,
                inferred.flatten_all()?.to_vec1::<f32>()?,
            );
            assert_eq!(eval.dims(), inferred.dims(), "{kind}");
            let differ = a.iter().zip(&b).filter(|(p, q)| p.to_bits() != q.to_bits());
            assert_eq!(differ.count(), 0, "{kind}");
            assert!(a.iter().any(|v| *v != 0.0), "{kind}: all zero");
        }
        Ok(())
    }

    #[test]
    fn invalid_configurations_fail_to_build() {
        let cfg = ResNetConfig::from_kind(&BackboneKind::Senet50Vggface2).scaled(64, None, None);
        let varmap = VarMap::new();
        let err = ResNet::new(
            &cfg,
            VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu),
        )
        .expect_err("C/16 = 0");
        assert!(err.to_string().contains("attention width"), "{err}");
    }

    /// A converted VGGFace2 checkpoint (scripts/convert_vggface2.py) loads into the full-size
    /// model; run with MTANET_VGGFACE2_SAFETENSORS=/path/senet50_ft.safetensors.
    #[test]
    #[ignore = "needs a converted VGGFace2 checkpoint"]
    fn converted_vggface2_checkpoint_loads() -> std::result::Result<(), Box<dyn std::error::Error>>
    {
        let path = std::env::var("MTANET_VGGFACE2_SAFETENSORS")?;
        let cfg = ResNetConfig::from_kind(&BackboneKind::Senet50Vggface2);
        let varmap = VarMap::new();
        let net = ResNet::new(
            &cfg,
            VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu),
        )?;
        let report = crate::load_pretrained(&varmap, std::path::Path::new(&path), "")?;
        assert!(report.fresh.is_empty(), "{report}");
        assert!(report.unmatched.is_empty(), "{report}");
        let x = candle_core::Tensor::zeros((1, 3, 112, 112), DType::F32, &Device::Cpu)?;
        assert_eq!(net.forward_t(&x, false)?.dims(), &[1, 2048, 4, 4]);
        Ok(())
    }
}
