//! MTANet (ABAW 2020): a backbone, a shared two-branch encoder and three task heads.
//!
//! Our reading of the paper's Fig. 1 (the figure is not available as text; Sec. III-A says
//! "an average pooling and max pooling layer with dropout and ReLU ... produces a 1024-d
//! feature map after concatenation" and "we simply apply fully connected layer for each
//! task"): `feature map (2048)` -> [global mean -> dropout -> linear 2048->512 -> ReLU] ++
//! [global max -> dropout -> linear 2048->512 -> ReLU] = 1024-d shared features ->
//! VA linear(1024->2) + tanh, AU linear(1024->n_au) logits, EXPR linear(1024->n_expr) logits.
//! Hidden size, dropout and the VA activation are configuration because this is a reading.
//!
//! Two options serve the paper's other experiments: [`EncoderPooling`] keeps only one of the
//! two pooling branches, and [`MtaNetConfig::decoder_layers`] stacks linear layers in each
//! task decoder (Sec. IV-B: "stacking deeper linear layers ... increases parameters and cast
//! no influence on result"). The defaults are the model above.

use crate::config::ResNetConfig;
use crate::linear_layer::{linear, linear_rows};
use crate::precision::Precision;
use crate::resnet::ResNet;
use crate::seeded_dropout::SeededDropout;
use candle_core::backprop::GradStore;
use candle_core::{DType, Result, Tensor, D};
use candle_nn::{Linear, Module, ModuleT, VarBuilder};
use mtanet_kernels::EvalPacks;
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

/// The global pooling branches of the shared encoder.
///
/// Paper Sec. III-A: "an average pooling and max pooling layer with dropout and ReLU" whose
/// outputs are concatenated. Each kept branch is `pool -> dropout -> linear(C, hidden) ->
/// ReLU`; the shared feature is `hidden` wide per kept branch.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum EncoderPooling {
    /// Global average pooling only (`head.avg_fc`), `hidden` features.
    Avg,
    /// Global max pooling only (`head.max_fc`), `hidden` features.
    Max,
    /// Both branches concatenated as `[avg, max]` (the paper's encoder), `2 * hidden` features.
    #[default]
    AvgMax,
}

impl EncoderPooling {
    /// Number of pooling branches (1 or 2).
    pub fn branches(self) -> usize {
        match self {
            EncoderPooling::Avg | EncoderPooling::Max => 1,
            EncoderPooling::AvgMax => 2,
        }
    }

    fn has_avg(self) -> bool {
        matches!(self, EncoderPooling::Avg | EncoderPooling::AvgMax)
    }

    fn has_max(self) -> bool {
        matches!(self, EncoderPooling::Max | EncoderPooling::AvgMax)
    }
}

fn one_decoder_layer() -> usize {
    1
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
    /// The encoder's pooling branches (both in the paper, Sec. III-A).
    #[serde(default)]
    pub pooling: EncoderPooling,
    /// Linear layers per task decoder, at least 1. The paper uses one ("we simply apply fully
    /// connected layer for each task", Sec. III-A) and reports deeper ones did not help
    /// (Sec. IV-B). With `L > 1` each decoder is `L` linear layers with ReLU between them, the
    /// hidden ones [`MtaNetConfig::feature_width`] wide, named like PyTorch's
    /// `nn.Sequential(Linear, ReLU, Linear, ...)`: `head.va.0`, `head.va.2`, ...
    #[serde(default = "one_decoder_layer")]
    pub decoder_layers: usize,
}

impl MtaNetConfig {
    /// Our defaults around `backbone`: hidden 512, dropout 0.5, tanh VA head, both pooling
    /// branches, one linear layer per task.
    pub fn new(backbone: ResNetConfig, n_au: usize, n_expr: usize) -> Self {
        Self {
            backbone,
            hidden: 512,
            dropout: 0.5,
            va_activation: VaActivation::Tanh,
            n_au,
            n_expr,
            pooling: EncoderPooling::AvgMax,
            decoder_layers: 1,
        }
    }

    /// Width of the shared feature vector: `hidden` per pooling branch (1024 by default).
    pub fn feature_width(&self) -> usize {
        self.pooling.branches() * self.hidden
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

/// One task decoder: linear layers with ReLU between them (a bare `Linear` for one layer).
#[derive(Clone, Debug)]
struct Decoder {
    layers: Vec<Linear>,
}

impl Decoder {
    /// `depth` layers from `width` to `out`, the hidden ones `width -> width`; one layer sits
    /// at `vb` itself, deeper ones at `vb.pp(0)`, `vb.pp(2)`, ... (`nn.Sequential` indices,
    /// the ReLUs taking the odd ones).
    fn new(width: usize, out: usize, depth: usize, vb: VarBuilder) -> Result<Self> {
        let layers = if depth == 1 {
            vec![linear(width, out, None, vb)?]
        } else {
            (0..depth)
                .map(|i| {
                    let c_out = if i + 1 == depth { out } else { width };
                    linear(width, c_out, None, vb.pp(2 * i))
                })
                .collect::<Result<_>>()?
        };
        Ok(Self { layers })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mut h = x.clone();
        for (i, layer) in self.layers.iter().enumerate() {
            if i > 0 {
                h = h.relu()?;
            }
            h = layer.forward(&h)?;
        }
        Ok(h)
    }
}

/// The shared encoder and the three heads, under the VarBuilder prefix `head.`.
#[derive(Clone, Debug)]
struct MtaNetHead {
    avg_fc: Option<Linear>,
    max_fc: Option<Linear>,
    va: Decoder,
    au: Decoder,
    expr: Decoder,
    dropout: SeededDropout,
    va_activation: VaActivation,
}

impl MtaNetHead {
    fn new(cfg: &MtaNetConfig, vb: VarBuilder) -> Result<Self> {
        let c = cfg.backbone.out_channels();
        let f = cfg.feature_width();
        let depth = cfg.decoder_layers;
        let branch = |name: &str| linear(c, cfg.hidden, None, vb.pp(name));
        Ok(Self {
            avg_fc: cfg
                .pooling
                .has_avg()
                .then(|| branch("avg_fc"))
                .transpose()?,
            max_fc: cfg
                .pooling
                .has_max()
                .then(|| branch("max_fc"))
                .transpose()?,
            va: Decoder::new(f, 2, depth, vb.pp("va"))?,
            au: Decoder::new(f, cfg.n_au, depth, vb.pp("au"))?,
            expr: Decoder::new(f, cfg.n_expr, depth, vb.pp("expr"))?,
            dropout: SeededDropout::new(cfg.dropout),
            va_activation: cfg.va_activation,
        })
    }

    fn encode(&self, fmap: &Tensor, train: bool) -> Result<Tensor> {
        let flat = fmap.flatten_from(2)?;
        let mut dropout = self.dropout.pass(train);
        let mut branches = Vec::with_capacity(2);
        if let Some(fc) = &self.avg_fc {
            let avg = dropout.apply(&flat.mean(D::Minus1)?)?;
            branches.push(linear_rows(fc, &avg)?.relu()?);
        }
        if let Some(fc) = &self.max_fc {
            let max = dropout.apply(&flat.max(D::Minus1)?)?;
            branches.push(linear_rows(fc, &max)?.relu()?);
        }
        match branches.as_slice() {
            [one] => Ok(one.clone()),
            _ => Tensor::cat(&branches, 1),
        }
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
/// `head.max_fc`, `head.va`, `head.au`, `head.expr`; only the kept pooling branches, and
/// `head.va.0`, `head.va.2`, ... for decoders deeper than one layer).
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
        if cfg.hidden == 0 || cfg.n_au == 0 || cfg.n_expr == 0 || cfg.decoder_layers == 0 {
            candle_core::bail!(
                "MTANet: hidden ({}), n_au ({}), n_expr ({}) and decoder_layers ({}) must be \
                 positive",
                cfg.hidden,
                cfg.n_au,
                cfg.n_expr,
                cfg.decoder_layers
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

    /// Backbone feature map `(N, C, h, w)` and the shared features
    /// `(N, MtaNetConfig::feature_width())`, both in the parameters' dtype whatever the
    /// [`Precision`].
    pub fn forward_features_t(&self, x: &Tensor, train: bool) -> Result<(Tensor, Tensor)> {
        self.features_via(x, train, |backbone, x| backbone.forward_t(x, train))
    }

    /// [`MtaNet::forward_features_t`] with the backbone's feature map from `backbone`.
    fn features_via(
        &self,
        x: &Tensor,
        train: bool,
        backbone: impl FnOnce(&ResNet, &Tensor) -> Result<Tensor>,
    ) -> Result<(Tensor, Tensor)> {
        let x = match self.precision.compute_dtype() {
            Some(dtype) => x.to_dtype(dtype)?,
            None => x.clone(),
        };
        let fmap = backbone(&self.backbone, &x)?.to_dtype(self.param_dtype)?;
        let features = self.head.encode(&fmap, train)?;
        Ok((fmap, features))
    }

    /// The three task outputs; `train` selects batch statistics in BN and active dropout.
    pub fn forward_t(&self, x: &Tensor, train: bool) -> Result<MtaNetOutput> {
        let (_, features) = self.forward_features_t(x, train)?;
        self.head.heads(&features)
    }

    /// The three task outputs where nothing is differentiated (evaluation, prediction): the
    /// values of `forward_t(x, false)`, bit for bit, with the backbone run by
    /// [`ResNet::infer`], so no gradient reaches the backbone. `packs`: an evaluation pass's
    /// store of the packed weight layouts, as [`ResNet::infer`] takes it.
    pub fn infer(&self, x: &Tensor, packs: Option<&EvalPacks>) -> Result<MtaNetOutput> {
        let (_, features) = self.features_via(x, false, |net, x| net.infer(x, packs))?;
        self.head.heads(&features)
    }

    /// Every gradient of a training `loss`: candle's backward, then the backbone blocks'
    /// parameter gradients, which their training ops write outside candle's graph
    /// ([`ResNet::backward`]). Differentiate the model with this, not `Tensor::backward`.
    pub fn backward(&self, loss: &Tensor) -> Result<GradStore> {
        self.backbone.backward(loss)
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
        // Seeded weights and input: every run of these tests sees the same numbers.
        let vars = crate::SeededVarMap::new(17);
        let model = MtaNet::new(&cfg, vars.var_builder(DType::F32, &Device::Cpu))?;
        let x = (Tensor::arange(0u32, 2 * 3 * 48 * 48, &Device::Cpu)?
            .to_dtype(DType::F32)?
            .reshape((2, 3, 48, 48))?
            * 0.37)?
            .sin()?;
        Ok((model, x, vars.varmap().clone()))
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
        let grads = bf16.backward(&loss)?;
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

    fn varmap_vb(map: &VarMap) -> VarBuilder<'_> {
        VarBuilder::from_varmap(map, DType::F32, &Device::Cpu)
    }

    /// Sorted (name, shape) of the variables under `prefix`.
    fn shapes(map: &VarMap, prefix: &str) -> Vec<(String, Vec<usize>)> {
        let data = map.data().lock().expect("varmap");
        let mut v: Vec<_> = data
            .iter()
            .filter(|(k, _)| k.starts_with(prefix))
            .map(|(k, t)| (k.clone(), t.dims().to_vec()))
            .collect();
        v.sort();
        v
    }

    /// Copies every variable of `from` that `to` also holds with the same shape.
    fn copy_common(from: &VarMap, to: &mut VarMap) -> Result<()> {
        let src: Vec<(String, Tensor)> = {
            let data = from.data().lock().expect("varmap");
            data.iter()
                .map(|(k, v)| (k.clone(), v.as_tensor().clone()))
                .collect()
        };
        let dst = shapes(to, "");
        for (name, t) in src {
            if dst
                .iter()
                .any(|(k, s)| *k == name && s.as_slice() == t.dims())
            {
                to.set_one(name, t)?;
            }
        }
        Ok(())
    }

    #[test]
    fn default_head_keeps_the_pytorch_names() -> Result<()> {
        let (_, _, map) = tiny_with_vars()?;
        let names: Vec<String> = shapes(&map, "head.").into_iter().map(|(k, _)| k).collect();
        let mut want: Vec<String> = ["avg_fc", "max_fc", "va", "au", "expr"]
            .iter()
            .flat_map(|m| ["weight", "bias"].map(|p| format!("head.{m}.{p}")))
            .collect();
        want.sort();
        assert_eq!(names, want);
        Ok(())
    }

    /// `Avg` / `Max` keep one branch: their features are exactly the halves of `AvgMax`'s.
    #[test]
    fn single_branch_pooling_gives_that_half_of_the_shared_features() -> Result<()> {
        let (full, x, full_map) = tiny_with_vars()?;
        let (_, features) = full.forward_features_t(&x, false)?;
        assert_eq!(full.config().feature_width(), 32);
        for (pooling, start, absent) in [
            (EncoderPooling::Avg, 0, "head.max_fc."),
            (EncoderPooling::Max, 16, "head.avg_fc."),
        ] {
            let cfg = MtaNetConfig {
                pooling,
                ..full.config().clone()
            };
            assert_eq!(cfg.feature_width(), 16);
            let mut map = VarMap::new();
            let model = MtaNet::new(&cfg, varmap_vb(&map))?;
            assert!(shapes(&map, absent).is_empty(), "{pooling:?}");
            assert_eq!(
                shapes(&map, "head.va."),
                vec![
                    ("head.va.bias".to_string(), vec![2]),
                    ("head.va.weight".to_string(), vec![2, 16])
                ]
            );
            copy_common(&full_map, &mut map)?;
            let (_, half) = model.forward_features_t(&x, false)?;
            assert_eq!(half.dims(), &[2, 16]);
            assert_eq!(
                diff(&half, &features.narrow(1, start, 16)?)?,
                0.0,
                "{pooling:?}"
            );
            let out = model.forward_t(&x, true)?;
            assert_eq!(out.au_logits.dims(), &[2, 8]);
            assert_eq!(out.expr_logits.dims(), &[2, 7]);
        }
        Ok(())
    }

    /// L linear layers with ReLU between them, named `head.<task>.0`, `.2`, `.4`.
    #[test]
    fn deeper_decoders_are_relu_separated_linears_named_like_nn_sequential() -> Result<()> {
        let (tiny, _) = tiny()?;
        let cfg = MtaNetConfig {
            decoder_layers: 3,
            ..tiny.config().clone()
        };
        let map = VarMap::new();
        let model = MtaNet::new(&cfg, varmap_vb(&map))?;
        for (task, out) in [("va", 2), ("au", 8), ("expr", 7)] {
            let got = shapes(&map, &format!("head.{task}."));
            let mut want = Vec::new();
            for (i, c_out) in [(0, 32), (2, 32), (4, out)] {
                want.push((format!("head.{task}.{i}.bias"), vec![c_out]));
                want.push((format!("head.{task}.{i}.weight"), vec![c_out, 32]));
            }
            assert_eq!(got, want);
        }
        let f = Tensor::randn(0f32, 1f32, (3, 32), &Device::Cpu)?;
        let out = model.heads(&f)?;
        let layer = |task: &str, i: usize, h: &Tensor| -> Result<Tensor> {
            let data = map.data().lock().expect("varmap");
            let w = data[&format!("head.{task}.{i}.weight")].as_tensor().clone();
            let b = data[&format!("head.{task}.{i}.bias")].as_tensor().clone();
            h.matmul(&w.t()?)?.broadcast_add(&b)
        };
        for (task, got) in [
            ("va", out.va.clone()),
            ("au", out.au_logits.clone()),
            ("expr", out.expr_logits.clone()),
        ] {
            let h = layer(task, 0, &f)?.relu()?;
            let h = layer(task, 2, &h)?.relu()?;
            let mut want = layer(task, 4, &h)?;
            if task == "va" {
                want = want.tanh()?;
            }
            let err = (got - want)?
                .abs()?
                .flatten_all()?
                .max(0)?
                .to_scalar::<f32>()?;
            assert!(err < 1e-5, "{task}: {err}");
        }
        let zero = MtaNetConfig {
            decoder_layers: 0,
            ..cfg
        };
        let map = VarMap::new();
        assert!(MtaNet::new(&zero, varmap_vb(&map)).is_err());
        Ok(())
    }

    #[test]
    fn pooling_serde_is_snake_case_and_old_configs_get_the_defaults() -> Result<()> {
        for (p, s) in [
            (EncoderPooling::Avg, "\"avg\""),
            (EncoderPooling::Max, "\"max\""),
            (EncoderPooling::AvgMax, "\"avg_max\""),
        ] {
            assert_eq!(serde_json::to_string(&p).ok().as_deref(), Some(s));
            assert_eq!(serde_json::from_str::<EncoderPooling>(s).ok(), Some(p));
        }
        assert_eq!(EncoderPooling::default(), EncoderPooling::AvgMax);
        let (model, _) = tiny()?;
        let cfg = model.config().clone();
        let mut json = serde_json::to_value(&cfg).map_err(candle_core::Error::wrap)?;
        if let Some(obj) = json.as_object_mut() {
            assert!(obj.remove("pooling").is_some() && obj.remove("decoder_layers").is_some());
        }
        let back: MtaNetConfig = serde_json::from_value(json).map_err(candle_core::Error::wrap)?;
        assert_eq!(back, cfg);
        Ok(())
    }

    fn heads_fixture() -> Result<serde_json::Value> {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../tests/fixtures/heads/heads.json"
        );
        let text = std::fs::read_to_string(path)?;
        serde_json::from_str(&text).map_err(candle_core::Error::wrap)
    }

    fn field<'a>(entry: &'a serde_json::Value, key: &str) -> Result<&'a serde_json::Value> {
        entry
            .get(key)
            .ok_or_else(|| candle_core::Error::msg(format!("heads.json: no `{key}`")))
    }

    fn parse<T: serde::de::DeserializeOwned>(entry: &serde_json::Value, key: &str) -> Result<T> {
        serde_json::from_value(field(entry, key)?.clone()).map_err(candle_core::Error::wrap)
    }

    /// The configuration an entry of heads.json describes, on `backbone`.
    fn fixture_config(entry: &serde_json::Value, backbone: ResNetConfig) -> Result<MtaNetConfig> {
        Ok(MtaNetConfig {
            hidden: parse(entry, "hidden")?,
            pooling: parse(entry, "pooling")?,
            decoder_layers: parse(entry, "decoder_layers")?,
            ..MtaNetConfig::new(backbone, parse(entry, "n_au")?, parse(entry, "n_expr")?)
        })
    }

    /// Checks names, shapes and the parameter count of `prefix` variables against an entry.
    fn check_against(entry: &serde_json::Value, map: &VarMap, prefix: &str) -> Result<()> {
        let name: String = parse(entry, "name")?;
        let want: Vec<(String, Vec<usize>)> = parse(entry, "state_dict")?;
        let got = shapes(map, prefix);
        assert_eq!(got, want, "{name}: state dict");
        let trainable: usize = got
            .iter()
            .filter(|(k, _)| !(k.ends_with("running_mean") || k.ends_with("running_var")))
            .map(|(_, s)| s.iter().product::<usize>())
            .sum();
        assert_eq!(trainable, parse::<usize>(entry, "parameters")?, "{name}");
        Ok(())
    }

    /// Names, shapes and parameter counts of the head equal PyTorch's (make_head_fixtures.py).
    #[test]
    fn head_structures_match_the_pytorch_reference() -> Result<()> {
        let doc = heads_fixture()?;
        let entries = field(&doc, "heads")?
            .as_array()
            .cloned()
            .unwrap_or_default();
        assert!(entries.len() >= 9, "{} head entries", entries.len());
        for entry in &entries {
            let c: usize = parse(entry, "c")?;
            let backbone = ResNetConfig::from_kind(&BackboneKind::Resnet50).scaled(
                2048 / c,
                Some([1, 1, 1, 1]),
                None,
            );
            assert_eq!(backbone.out_channels(), c);
            let cfg = fixture_config(entry, backbone)?;
            assert_eq!(cfg.feature_width(), parse::<usize>(entry, "feature_width")?);
            let map = VarMap::new();
            MtaNet::new(&cfg, varmap_vb(&map))?;
            check_against(entry, &map, "head.")?;
        }
        Ok(())
    }

    /// Whole demo-size networks (backbone + head, up to 3 decoder layers) against PyTorch.
    #[test]
    fn demo_networks_match_the_pytorch_parameter_counts() -> Result<()> {
        let doc = heads_fixture()?;
        let entries = field(&doc, "networks")?
            .as_array()
            .cloned()
            .unwrap_or_default();
        assert!(!entries.is_empty());
        for entry in &entries {
            let kind: BackboneKind = parse(entry, "backbone")?;
            let backbone = ResNetConfig::from_kind(&kind).scaled(
                parse(entry, "width_div")?,
                Some(parse(entry, "depths")?),
                parse(entry, "groups")?,
            );
            let map = VarMap::new();
            MtaNet::new(&fixture_config(entry, backbone)?, varmap_vb(&map))?;
            check_against(entry, &map, "")?;
        }
        Ok(())
    }
}
