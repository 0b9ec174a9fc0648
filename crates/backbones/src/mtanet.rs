//! MTANet (ABAW 2020): a backbone, a shared two-branch encoder and three task heads.
//!
//! Our reading of the paper's Fig. 1 (the figure is not available as text; Sec. 3 says "an
//! average pooling and max pooling layer with dropout and ReLU ... produces a 1024-d feature
//! map after concatenation" and "a fully connected layer for each task"):
//! `feature map (2048)` -> [global mean -> dropout -> linear 2048->512 -> ReLU] ++
//! [global max -> dropout -> linear 2048->512 -> ReLU] = 1024-d shared features ->
//! VA linear(1024->2) + tanh, AU linear(1024->n_au) logits, EXPR linear(1024->n_expr) logits.
//! Hidden size, dropout and the VA activation are configuration because this is a reading.

use crate::config::ResNetConfig;
use crate::linear_layer::linear;
use crate::precision::Precision;
use crate::resnet::ResNet;
use crate::seeded_dropout::SeededDropout;
use candle_core::{DType, Result, Tensor, D};
use candle_nn::{Linear, Module, ModuleT, VarBuilder};
use serde::{Deserialize, Serialize};

/// Output activation of the valence-arousal head.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum VaActivation {
    /// `tanh`, keeping predictions in [-1, 1] like the labels.
    Tanh,
    /// Raw linear output.
    None,
}

/// Configuration of [`MtaNet`].
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct MtaNetConfig {
    /// The backbone.
    pub backbone: ResNetConfig,
    /// Width of each encoder branch (512 in our reading; the shared feature is twice this).
    pub hidden: usize,
    /// Dropout probability before each branch's linear layer.
    pub dropout: f32,
    /// Activation of the VA head.
    pub va_activation: VaActivation,
    /// Number of action units (8 in ABAW 2020).
    pub n_au: usize,
    /// Number of expression classes (7 in ABAW 2020).
    pub n_expr: usize,
}

impl MtaNetConfig {
    /// Our defaults around `backbone`: hidden 512, dropout 0.5, tanh VA head.
    pub fn new(backbone: ResNetConfig, n_au: usize, n_expr: usize) -> Self {
        Self {
            backbone,
            hidden: 512,
            dropout: 0.5,
            va_activation: VaActivation::Tanh,
            n_au,
            n_expr,
        }
    }

    /// Width of the shared feature vector (`2 * hidden`, 1024 by default).
    pub fn feature_width(&self) -> usize {
        2 * self.hidden
    }
}

/// Outputs of one forward pass.
#[derive(Clone, Debug)]
pub struct MtaNetOutput {
    /// Valence and arousal, (N, 2).
    pub va: Tensor,
    /// Action-unit logits (before sigmoid), (N, n_au).
    pub au_logits: Tensor,
    /// Expression logits (before softmax), (N, n_expr).
    pub expr_logits: Tensor,
}

/// The shared encoder and the three heads, under the VarBuilder prefix `head.`.
#[derive(Clone, Debug)]
struct MtaNetHead {
    avg_fc: Linear,
    max_fc: Linear,
    va: Linear,
    au: Linear,
    expr: Linear,
    dropout: SeededDropout,
    va_activation: VaActivation,
}

impl MtaNetHead {
    fn new(cfg: &MtaNetConfig, vb: VarBuilder) -> Result<Self> {
        let c = cfg.backbone.out_channels();
        let f = cfg.feature_width();
        Ok(Self {
            avg_fc: linear(c, cfg.hidden, None, vb.pp("avg_fc"))?,
            max_fc: linear(c, cfg.hidden, None, vb.pp("max_fc"))?,
            va: linear(f, 2, None, vb.pp("va"))?,
            au: linear(f, cfg.n_au, None, vb.pp("au"))?,
            expr: linear(f, cfg.n_expr, None, vb.pp("expr"))?,
            dropout: SeededDropout::new(cfg.dropout),
            va_activation: cfg.va_activation,
        })
    }

    fn encode(&self, fmap: &Tensor, train: bool) -> Result<Tensor> {
        let flat = fmap.flatten_from(2)?;
        let mut dropout = self.dropout.pass(train);
        let avg = dropout.apply(&flat.mean(D::Minus1)?)?;
        let max = dropout.apply(&flat.max(D::Minus1)?)?;
        let avg = self.avg_fc.forward(&avg)?.relu()?;
        let max = self.max_fc.forward(&max)?.relu()?;
        Tensor::cat(&[avg, max], 1)
    }

    fn heads(&self, features: &Tensor) -> Result<MtaNetOutput> {
        let va = self.va.forward(features)?;
        let va = match self.va_activation {
            VaActivation::Tanh => va.tanh()?,
            VaActivation::None => va,
        };
        Ok(MtaNetOutput {
            va,
            au_logits: self.au.forward(features)?,
            expr_logits: self.expr.forward(features)?,
        })
    }
}

/// MTANet: backbone under `backbone.`, encoder and heads under `head.` (`head.avg_fc`,
/// `head.max_fc`, `head.va`, `head.au`, `head.expr`).
#[derive(Clone, Debug)]
pub struct MtaNet {
    cfg: MtaNetConfig,
    backbone: ResNet,
    head: MtaNetHead,
    /// The dtype the parameters were created in (f32 in every run).
    param_dtype: DType,
    precision: Precision,
}

impl MtaNet {
    /// Builds the model at the root of `vb` (uses `vb.pp("backbone")` and `vb.pp("head")`).
    pub fn new(cfg: &MtaNetConfig, vb: VarBuilder) -> Result<Self> {
        if cfg.hidden == 0 || cfg.n_au == 0 || cfg.n_expr == 0 {
            candle_core::bail!(
                "MTANet: hidden ({}), n_au ({}) and n_expr ({}) must be positive",
                cfg.hidden,
                cfg.n_au,
                cfg.n_expr
            )
        }
        if !(0.0..1.0).contains(&cfg.dropout) {
            candle_core::bail!("MTANet: dropout {} must be in [0, 1)", cfg.dropout)
        }
        Ok(Self {
            cfg: cfg.clone(),
            backbone: ResNet::new(&cfg.backbone, vb.pp("backbone"))?,
            head: MtaNetHead::new(cfg, vb.pp("head"))?,
            param_dtype: vb.dtype(),
            precision: Precision::F32,
        })
    }

    /// The same model computing its backbone in `precision` (see [`Precision`]); the
    /// parameters are untouched and outputs stay in the parameters' dtype.
    pub fn with_precision(mut self, precision: Precision) -> Self {
        self.precision = precision;
        self
    }

    /// The precision the backbone computes in.
    pub fn precision(&self) -> Precision {
        self.precision
    }

    /// The configuration this model was built from.
    pub fn config(&self) -> &MtaNetConfig {
        &self.cfg
    }

    /// Seeds the dropout masks of the next training-mode forward pass (later passes use
    /// `seed + 1`, `seed + 2`, ...), for reproducible runs. The initial seed is 0.
    pub fn set_dropout_seed(&self, seed: u64) {
        self.head.dropout.set_seed(seed);
    }

    /// The backbone.
    pub fn backbone(&self) -> &ResNet {
        &self.backbone
    }

    /// Backbone feature map `(N, C, h, w)` and the shared features `(N, 2 * hidden)`, both
    /// in the parameters' dtype whatever the [`Precision`].
    pub fn forward_features_t(&self, x: &Tensor, train: bool) -> Result<(Tensor, Tensor)> {
        let x = match self.precision.compute_dtype() {
            Some(dtype) => x.to_dtype(dtype)?,
            None => x.clone(),
        };
        let fmap = self
            .backbone
            .forward_t(&x, train)?
            .to_dtype(self.param_dtype)?;
        let features = self.head.encode(&fmap, train)?;
        Ok((fmap, features))
    }

    /// The three task outputs; `train` selects batch statistics in BN and active dropout.
    pub fn forward_t(&self, x: &Tensor, train: bool) -> Result<MtaNetOutput> {
        let (_, features) = self.forward_features_t(x, train)?;
        self.head.heads(&features)
    }

    /// The task heads applied to shared features from [`MtaNet::forward_features_t`].
    pub fn heads(&self, features: &Tensor) -> Result<MtaNetOutput> {
        self.head.heads(features)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::BackboneKind;
    use candle_core::{DType, Device};
    use candle_nn::VarMap;

    fn tiny() -> Result<(MtaNet, Tensor)> {
        let (model, x, _) = tiny_with_vars()?;
        Ok((model, x))
    }

    fn tiny_with_vars() -> Result<(MtaNet, Tensor, VarMap)> {
        let backbone =
            ResNetConfig::from_kind(&BackboneKind::Resnet50).scaled(16, Some([1, 1, 1, 1]), None);
        let cfg = MtaNetConfig {
            hidden: 16,
            ..MtaNetConfig::new(backbone, 8, 7)
        };
        let varmap = VarMap::new();
        let model = MtaNet::new(
            &cfg,
            VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu),
        )?;
        let x = Tensor::randn(0f32, 1f32, (2, 3, 48, 48), &Device::Cpu)?;
        Ok((model, x, varmap))
    }

    fn diff(a: &Tensor, b: &Tensor) -> Result<f32> {
        (a - b)?.abs()?.sum_all()?.to_scalar()
    }

    #[test]
    fn dropout_seed_makes_training_passes_reproducible() -> Result<()> {
        let (model, x) = tiny()?;
        model.set_dropout_seed(11);
        let a = model.forward_t(&x, true)?;
        model.set_dropout_seed(11);
        let b = model.forward_t(&x, true)?;
        model.set_dropout_seed(12);
        let c = model.forward_t(&x, true)?;
        assert_eq!(diff(&a.au_logits, &b.au_logits)?, 0.0);
        assert!(diff(&a.au_logits, &c.au_logits)? > 0.0);
        // Eval mode has no dropout: two passes agree without seeding.
        let e1 = model.forward_t(&x, false)?;
        let e2 = model.forward_t(&x, false)?;
        assert_eq!(diff(&e1.expr_logits, &e2.expr_logits)?, 0.0);
        Ok(())
    }

    /// bf16 compute: outputs and gradients stay f32, close to the f32 model's, not equal.
    #[test]
    fn bf16_precision_keeps_f32_parameters_outputs_and_gradients() -> Result<()> {
        let (model, x, varmap) = tiny_with_vars()?;
        let f32_out = model.forward_t(&x, false)?;
        let bf16 = model.clone().with_precision(Precision::Bf16);
        assert_eq!(bf16.precision(), Precision::Bf16);
        let out = bf16.forward_t(&x, false)?;
        for (a, b) in [
            (&out.va, &f32_out.va),
            (&out.au_logits, &f32_out.au_logits),
            (&out.expr_logits, &f32_out.expr_logits),
        ] {
            assert_eq!(a.dtype(), DType::F32);
            let scale = b.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()?;
            let err = (a - b)?.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()? / scale;
            // bf16 keeps 8 significant bits; a few rounded layers stay within a few percent.
            assert!(err > 0.0 && err < 5e-2, "relative error {err}");
        }
        let train = bf16.forward_t(&x, true)?;
        let loss = (train.au_logits.sqr()?.sum_all()? + train.va.sum_all()?)?;
        let grads = loss.backward()?;
        for (name, var) in varmap.data().lock().expect("varmap").iter() {
            assert_eq!(var.dtype(), DType::F32, "{name}");
            if name.ends_with("conv1.weight") || name.starts_with("head.au.") {
                let g = grads.get(var.as_tensor()).expect("gradient");
                assert_eq!(g.dtype(), DType::F32, "{name}");
                assert!(g.abs()?.sum_all()?.to_scalar::<f32>()? > 0.0, "{name}");
            }
        }
        Ok(())
    }

    #[test]
    fn va_is_bounded_by_tanh_and_configs_are_checked() -> Result<()> {
        let (model, x) = tiny()?;
        let va = model.forward_t(&(x * 50.0)?, false)?.va;
        let max = va.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()?;
        assert!(max <= 1.0);
        let bad = MtaNetConfig {
            dropout: 1.0,
            ..model.config().clone()
        };
        let varmap = VarMap::new();
        assert!(MtaNet::new(
            &bad,
            VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu)
        )
        .is_err());
        Ok(())
    }
}
