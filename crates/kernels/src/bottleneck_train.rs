//! A whole ResNet bottleneck in training mode as one candle op: its three convolutions with
//! their BatchNorms and ReLUs, the downsample shortcut's convolution and BatchNorm, the
//! squeeze-and-excitation or CBAM gate when the block has one, and the residual join.
//!
//! As separate ops (`conv_bn_train` and `conv_bn_add_relu_train`) the block's two inner
//! activations, the shortcut and the block input are nodes of candle's graph, and candle's
//! backward gives each node's gradient a zero-filled buffer and then adds every op's gradient
//! into it: per block, four or five full-size allocations, memsets and adds. Inside one op the
//! inner gradients are plain buffers handed from one stage's backward to the next, and the
//! input gradient is the sum of its two paths, written once.
//!
//! Each stage is the fused convolution + BatchNorm of `conv_bn.rs` (`stage_forward`,
//! `stage_backward`), and the gate is `squeeze_excite.rs` or `cbam.rs` with the joins of
//! `gate.rs`: the values and every gradient equal those of the separate ops (up to the sign of
//! zero gradients); the tests check that.

use crate::batch_norm::lock;
use crate::cbam::{
    cbam_join_backward, cbam_join_forward, check_spatial_gate, CbamSaved, SpatialStage,
};
use crate::conv2d::storage::dense_f32;
use crate::conv2d::ConvGeometry;
use crate::conv_bn::{relu_masked, stage_backward, stage_forward, Saved as StageSaved};
use crate::fused_operands::cpu_f32;
use crate::gate_mlp::MlpParams;
use crate::param_grads::ParamGrads;
use crate::squeeze_excite::{gated_join_backward, gated_join_forward, SqueezeExciteSaved};
use crate::{BatchStats, ConvParams, GateMlp};
use candle_core::{
    bail, CpuStorage, CustomOp2, DType, Layout, Result, Shape, Storage, Tensor, Var,
};
use rayon::prelude::*;
use std::borrow::Cow;
use std::sync::{Arc, Mutex};

/// One convolution and the training-mode BatchNorm after it, as [`bottleneck_train`] takes them.
#[derive(Clone, Copy, Debug)]
pub struct ConvBnStage<'a> {
    /// The convolution weight, (C_out, C_in / groups, kh, kw), no bias.
    pub conv_weight: &'a Tensor,
    /// The convolution's stride, padding and groups.
    pub conv: ConvParams,
    /// The BatchNorm's weight (C_out values).
    pub bn_weight: &'a Tensor,
    /// The BatchNorm's bias (C_out values).
    pub bn_bias: &'a Tensor,
    /// The BatchNorm's epsilon.
    pub eps: f64,
}

/// A block's attention gate, as [`bottleneck_train`] takes it.
#[derive(Clone, Copy, Debug)]
pub enum BlockGate<'a> {
    /// Squeeze-and-excitation: `sigmoid(mlp(mean_hw(z)))`, one value per (image, channel).
    SqueezeExcite(GateMlp<'a>),
    /// CBAM: the channel gate `sigmoid(mlp(mean_hw(z)) + mlp(max_hw(z)))`, then the spatial
    /// gate `sigmoid(bn(conv([max_c, mean_c])))`, one value per (image, pixel).
    Cbam {
        /// The channel gate's shared MLP.
        channel: GateMlp<'a>,
        /// The spatial gate's convolution (2 channels to 1, keeping the map's size) and its
        /// training BatchNorm.
        spatial: ConvBnStage<'a>,
    },
}

impl BlockGate<'_> {
    /// The gate's MLP.
    fn mlp(&self) -> &GateMlp<'_> {
        match self {
            Self::SqueezeExcite(mlp) | Self::Cbam { channel: mlp, .. } => mlp,
        }
    }

    /// The gate's tensors, in the order they are packed: the MLP's four, then for CBAM the
    /// spatial convolution's weight and its BatchNorm's weight and bias.
    fn tensors(&self) -> Vec<&Tensor> {
        let mut all = self.mlp().tensors().to_vec();
        if let Self::Cbam { spatial, .. } = self {
            all.extend([spatial.conv_weight, spatial.bn_weight, spatial.bn_bias]);
        }
        all
    }
}

/// True when [`bottleneck_train`] runs these tensors (the input, every stage's and the gate's
/// parameters): all f32 on the CPU.
pub fn bottleneck_train_applies(
    x: &Tensor,
    stages: &[ConvBnStage<'_>],
    gate: Option<&BlockGate<'_>>,
) -> bool {
    let mut all = vec![x];
    for s in stages {
        all.extend([s.conv_weight, s.bn_weight, s.bn_bias]);
    }
    all.extend(gate.iter().flat_map(|g| g.tensors()));
    cpu_f32(&all)
}

/// A training-mode bottleneck `relu(bn3(conv3(h2)) + shortcut)` with `h2 = relu(bn2(conv2(h1)))`,
/// `h1 = relu(bn1(conv1(x)))` and `shortcut = bn_d(conv_d(x))` (or `x` without `downsample`),
/// as one op differentiable in `x` and every stage's three parameters. With a `gate`,
/// `relu(z * se(z) + shortcut)` (squeeze-excite) or `relu(u * spatial(u) + shortcut)` with
/// `u = z * channel(z)` (CBAM), where `z = bn3(conv3(h2))`, differentiable in the gate's
/// parameters too. Returns the output and the batch statistics of the BatchNorms in the order
/// `main`, then `downsample`, then CBAM's spatial gate, for the running averages the caller
/// owns.
///
/// The values and gradients equal those of `conv_bn_train` twice, `conv_bn_train` on the
/// shortcut and `conv_bn_add_relu_train` (with a gate: `conv_bn_train` for the third stage, the
/// gate composed of `spatial_mean` or `spatial_mean_max`, candle matmuls and `sigmoid`, for
/// CBAM `channel_gate`, `channel_max_mean` and the spatial convolution and BatchNorm, then
/// `channel_gate_add_relu` or `spatial_gate_add_relu`), up to the sign of zero gradients. f32 on
/// the CPU only ([`bottleneck_train_applies`]).
///
/// The parameters' gradients are not in candle's graph: the backward hands them to
/// `param_grads`, so differentiate with [`ParamGrads::backward`], which puts them into the
/// store under the parameters' ids. Each parameter must be the variable itself (or a
/// constant), not a tensor computed from one.
pub fn bottleneck_train(
    x: &Tensor,
    main: [ConvBnStage<'_>; 3],
    downsample: Option<ConvBnStage<'_>>,
    gate: Option<BlockGate<'_>>,
    param_grads: &ParamGrads,
) -> Result<(Tensor, Vec<BatchStats>)> {
    let block = BottleneckStages {
        main,
        downsample,
        gate,
    };
    let (y, mut stats) = bottlenecks_train(x, &[block], param_grads)?;
    match stats.pop() {
        Some(stats) => Ok((y, stats)),
        None => bail!("bottleneck_train: no statistics for the block"),
    }
}

/// One block's stages and gate, as [`bottlenecks_train`] takes them.
#[derive(Clone, Copy, Debug)]
pub struct BottleneckStages<'a> {
    /// conv1, conv2 and conv3 with their BatchNorms.
    pub main: [ConvBnStage<'a>; 3],
    /// The shortcut's convolution and BatchNorm (`None`: the identity).
    pub downsample: Option<ConvBnStage<'a>>,
    /// The attention gate after the third BatchNorm.
    pub gate: Option<BlockGate<'a>>,
}

impl<'a> BottleneckStages<'a> {
    /// Every stage: `main`, then `downsample`.
    fn stages(&self) -> Vec<ConvBnStage<'a>> {
        self.main.into_iter().chain(self.downsample).collect()
    }
}

/// Blocks one after the other, each as [`bottleneck_train`] computes it, as one op: the values
/// and gradients of the chain of single-block ops, bit for bit, without the blocks' outputs
/// and their gradients in candle's graph (each of those gradients would be zero-filled and
/// added into there). Returns the last block's output and each block's batch statistics in
/// [`bottleneck_train`]'s order. Every block must run ([`bottleneck_train_applies`]).
pub fn bottlenecks_train(
    x: &Tensor,
    blocks: &[BottleneckStages<'_>],
    param_grads: &ParamGrads,
) -> Result<(Tensor, Vec<Vec<BatchStats>>)> {
    if blocks.is_empty() {
        bail!("bottleneck_train: no blocks")
    }
    let mut input = x.dims().to_vec();
    let mut built = Vec::with_capacity(blocks.len());
    for spec in blocks {
        if !bottleneck_train_applies(x, &spec.stages(), spec.gate.as_ref()) {
            bail!("bottleneck_train: f32 tensors on the CPU only")
        }
        let block = Block::new(&input, spec)?;
        let (n, c, h, w) = block.geometries[2].output_dims();
        input = vec![n, c, h, w];
        built.push(block);
    }
    // Besides `x`, the op's graph input is a one-value variable of its own, so that candle's
    // backward reaches the op whether or not `x` is differentiated.
    let anchor = Var::zeros(1, DType::F32, x.device())?;
    let blocks = Arc::new(built);
    let op = BottlenecksTrain {
        blocks: blocks.clone(),
        inner: Mutex::new(Vec::new()),
        param_grads: param_grads.clone(),
    };
    let y = x.apply_op2_arc(
        anchor.as_tensor(),
        Arc::new(Box::new(op) as Box<dyn CustomOp2 + Send + Sync>),
    )?;
    let stats = blocks
        .iter()
        .map(Block::stats)
        .collect::<Result<Vec<_>>>()?;
    Ok((y, stats))
}

impl Block {
    /// The block `spec` over an input of shape `input`, its shapes checked. The op reads every
    /// parameter where it is (conv weight, BatchNorm weight, bias; stage after stage, then the
    /// gate's) and hands their gradients to its [`ParamGrads`].
    fn new(input: &[usize], spec: &BottleneckStages<'_>) -> Result<Self> {
        let BottleneckStages {
            main,
            downsample,
            gate,
        } = spec;
        let geometry = |input: &[usize], s: &ConvBnStage<'_>, name: &str| -> Result<ConvGeometry> {
            let g = ConvGeometry::new(
                input,
                s.conv_weight.dims(),
                s.conv.stride,
                s.conv.padding,
                s.conv.groups,
            )?;
            let c = g.out_channels;
            if s.bn_weight.dims() != [c] || s.bn_bias.dims() != [c] {
                bail!(
                    "bottleneck_train: {name}'s BatchNorm weight and bias must hold {c} values, \
                     got {:?} and {:?}",
                    s.bn_weight.dims(),
                    s.bn_bias.dims()
                )
            }
            Ok(g)
        };
        let dims = |d: (usize, usize, usize, usize)| [d.0, d.1, d.2, d.3];
        let g1 = geometry(input, &main[0], "conv1")?;
        let g2 = geometry(&dims(g1.output_dims()), &main[1], "conv2")?;
        let g3 = geometry(&dims(g2.output_dims()), &main[2], "conv3")?;
        let gd = downsample
            .as_ref()
            .map(|d| geometry(input, d, "downsample"))
            .transpose()?;
        let shortcut_dims = match &gd {
            Some(gd) => dims(gd.output_dims()).to_vec(),
            None => input.to_vec(),
        };
        if dims(g3.output_dims()) != shortcut_dims[..] {
            bail!(
                "bottleneck_train: the block's output {:?} and its shortcut {:?} differ",
                g3.output_dims(),
                shortcut_dims
            )
        }
        let gate_shape = match gate {
            None => None,
            Some(BlockGate::SqueezeExcite(mlp)) => Some(GateShape::SqueezeExcite {
                reduced: mlp.reduced(g3.out_channels)?,
            }),
            Some(BlockGate::Cbam { channel, spatial }) => {
                let (n, _, h, w) = g3.output_dims();
                let gs = geometry(&[n, 2, h, w], spatial, "the CBAM spatial gate")?;
                check_spatial_gate("bottleneck_train", &gs)?;
                Some(GateShape::Cbam {
                    reduced: channel.reduced(g3.out_channels)?,
                    spatial: gs,
                    eps: spatial.eps,
                })
            }
        };
        let stages = spec.stages();
        let mut params = Vec::with_capacity(3 * stages.len() + 7);
        for s in &stages {
            params.extend([s.conv_weight, s.bn_weight, s.bn_bias].map(Tensor::clone));
        }
        params.extend(gate.iter().flat_map(|g| g.tensors()).cloned());
        // A gradient written for a tensor computed from variables would never reach them.
        if let Some(i) = params.iter().position(|p| p.track_op() && !p.is_variable()) {
            bail!(
                "bottleneck_train: parameter {i} {:?} is computed from other tensors; pass the \
                 variable itself, whose gradient the op writes directly",
                params[i].dims()
            )
        }
        Ok(Self {
            geometries: [g1, g2, g3].into_iter().chain(gd).collect(),
            eps: stages.iter().map(|s| s.eps).collect(),
            gate: gate_shape,
            params,
            saved: Mutex::new(None),
        })
    }

    /// The batch statistics of the block's BatchNorms after its forward: its stages', then
    /// CBAM's spatial gate's.
    fn stats(&self) -> Result<Vec<BatchStats>> {
        match lock(&self.saved)?.as_ref() {
            Some(s) => {
                let spatial = match &s.gated {
                    Some((_, JoinSaved::Cbam(cbam))) => Some(cbam.spatial_stats()),
                    _ => None,
                };
                Ok(s.stages
                    .iter()
                    .map(|s| s.bn.stats())
                    .chain(spatial)
                    .collect())
            }
            None => bail!("bottleneck_train: forward did not run"),
        }
    }
}

/// What the forward pass keeps for the backward pass.
#[derive(Debug)]
struct Saved {
    /// Each stage's convolution output and BatchNorm state, in the op's stage order.
    stages: Vec<StageSaved>,
    /// The first and second stages' outputs (the inputs of the second and third convolutions).
    h1: Vec<f32>,
    h2: Vec<f32>,
    /// With a gate: the third stage's output (the gated map) and the gate's own state.
    gated: Option<(Vec<f32>, JoinSaved)>,
}

/// What a gate's forward keeps.
#[derive(Debug)]
enum JoinSaved {
    SqueezeExcite(SqueezeExciteSaved),
    Cbam(Box<CbamSaved>),
}

/// A gate's shapes, checked when the op is built.
#[derive(Debug)]
enum GateShape {
    /// The MLP's hidden width.
    SqueezeExcite { reduced: usize },
    /// The channel MLP's hidden width, the spatial convolution's shapes and its BatchNorm's
    /// epsilon.
    Cbam {
        reduced: usize,
        spatial: ConvGeometry,
        eps: f64,
    },
}

/// One block of the op, checked against its input's shape. `geometries` and `eps` hold conv1,
/// conv2, conv3 and, when there is one, the downsample convolution; `params` every stage's
/// conv weight, BatchNorm weight and bias in that order, then the gate's tensors
/// ([`BlockGate::tensors`]).
#[derive(Debug)]
struct Block {
    geometries: Vec<ConvGeometry>,
    eps: Vec<f64>,
    gate: Option<GateShape>,
    params: Vec<Tensor>,
    saved: Mutex<Option<Saved>>,
}

/// The op: (`x`, a one-value anchor) -> the last block's output. `inner` keeps the other
/// blocks' outputs (the next block's input, and where its ReLU passed); the parameters'
/// gradients go to `param_grads`.
#[derive(Debug)]
struct BottlenecksTrain {
    blocks: Arc<Vec<Block>>,
    inner: Mutex<Vec<Vec<f32>>>,
    param_grads: ParamGrads,
}

/// A gate's parameters, as views of the parameter tensors: the MLP's, and for CBAM the spatial
/// stage's.
#[derive(Clone, Copy, Debug)]
struct GateViews<'a> {
    mlp: MlpParams<'a>,
    spatial: Option<SpatialStage<'a>>,
}

/// Each stage's `(conv weight, [BatchNorm weight; bias])` and the gate's parameters, as views
/// of the parameter tensors.
type Params<'a> = (Vec<(&'a [f32], &'a [f32])>, Option<GateViews<'a>>);

/// The input's gradient (when asked for) and each parameter's, in the order of the op's
/// `params`.
type BlockGrads = (Option<Vec<f32>>, Vec<Vec<f32>>);

impl Block {
    /// Runs `f` on the parameters' values, read in place (each BatchNorm's weight and bias
    /// copied side by side, as the stages take them), after checking that every tensor still
    /// holds the values the op was built for.
    fn with_params<R>(&self, f: impl FnOnce(Params<'_>) -> Result<R>) -> Result<R> {
        let held: Vec<_> = self.params.iter().map(|t| t.storage_and_layout()).collect();
        let values = held
            .iter()
            .map(|(storage, layout)| cpu_values(storage, layout, "a parameter"))
            .collect::<Result<Vec<_>>>()?;
        let expected = self.param_lens();
        if values.len() != expected.len()
            || values.iter().zip(&expected).any(|(v, &n)| v.len() != n)
        {
            bail!("bottleneck_train: parameters changed shape since the op was built")
        }
        let stage_count = self.geometries.len();
        // Tensor `at` is a conv weight; its BatchNorm's weight and bias follow it.
        let affine = |at: usize| [&values[at + 1][..], &values[at + 2][..]].concat();
        let affines: Vec<Vec<f32>> = (0..stage_count).map(|s| affine(3 * s)).collect();
        let stages = (0..stage_count)
            .map(|s| (&values[3 * s][..], &affines[s][..]))
            .collect();
        let at = 3 * stage_count;
        let spatial_affine = match &self.gate {
            Some(GateShape::Cbam { .. }) => affine(at + 4),
            _ => Vec::new(),
        };
        let channels = self.geometries[2].out_channels;
        let gate = self.gate.as_ref().map(|shape| {
            let (reduced, spatial) = match shape {
                GateShape::SqueezeExcite { reduced } => (*reduced, None),
                GateShape::Cbam {
                    reduced,
                    spatial,
                    eps,
                } => (
                    *reduced,
                    Some(SpatialStage {
                        geometry: spatial,
                        eps: *eps,
                        weight: &values[at + 4][..],
                        affine: &spatial_affine[..],
                    }),
                ),
            };
            let parts = [0, 1, 2, 3].map(|k| &values[at + k][..]);
            GateViews {
                mlp: MlpParams::from_parts(parts, channels, reduced),
                spatial,
            }
        });
        f((stages, gate))
    }

    /// The number of values each tensor of `params` holds, from the shapes the op was built
    /// for.
    fn param_lens(&self) -> Vec<usize> {
        let weight_len = |g: &ConvGeometry| g.groups * g.weight_group_len();
        let mut lens: Vec<usize> = self
            .geometries
            .iter()
            .flat_map(|g| [weight_len(g), g.out_channels, g.out_channels])
            .collect();
        let c = self.geometries[2].out_channels;
        match &self.gate {
            None => {}
            Some(GateShape::SqueezeExcite { reduced: r }) => lens.extend([r * c, *r, c * r, c]),
            Some(GateShape::Cbam {
                reduced: r,
                spatial,
                ..
            }) => lens.extend([
                r * c,
                *r,
                c * r,
                c,
                weight_len(spatial),
                spatial.out_channels,
                spatial.out_channels,
            ]),
        }
        lens
    }
}

impl CustomOp2 for BottlenecksTrain {
    fn name(&self) -> &'static str {
        "mtanet-bottleneck-train"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        _anchor: &CpuStorage,
        _: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let blocks = &self.blocks[..];
        if xl.dims() != Shape::from(blocks[0].geometries[0].input_dims()).dims() {
            bail!("bottleneck_train: input changed shape since the op was built")
        }
        let x = dense_f32(xs, xl, "input")?;
        let mut inner: Vec<Vec<f32>> = Vec::with_capacity(blocks.len() - 1);
        let mut last = None;
        for (k, block) in blocks.iter().enumerate() {
            let input = match k {
                0 => &x[..],
                _ => &inner[k - 1][..],
            };
            let (y, saved) =
                block.with_params(|(params, gate)| block.forward(input, &params, gate))?;
            *lock(&block.saved)? = Some(saved);
            if k + 1 < blocks.len() {
                inner.push(y);
            } else {
                last = Some(y);
            }
        }
        *lock(&self.inner)? = inner;
        let Some(y) = last else {
            bail!("bottleneck_train: no blocks")
        };
        let out = blocks[blocks.len() - 1].geometries[2].output_dims();
        Ok((CpuStorage::F32(y), Shape::from(out)))
    }

    /// Block after block from the last: its ReLU after the join passed exactly where its output
    /// is positive, so the masked output gradient is the shortcut's gradient and, without a
    /// gate, the third BatchNorm's output gradient (with one, that takes the gate's two paths);
    /// the first two stages recompute their own ReLU masks. The block's input gradient is the
    /// output gradient of the block before it. The parameters' gradients go to the op's
    /// [`ParamGrads`], the anchor gets none.
    fn bwd(
        &self,
        x: &Tensor,
        _anchor: &Tensor,
        y: &Tensor,
        grad_y: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (xs, xl) = x.storage_and_layout();
        let (ys, yl) = y.storage_and_layout();
        let (gs, gl) = grad_y.storage_and_layout();
        let xv = cpu_values(&xs, xl, "input")?;
        let inner = lock(&self.inner)?;
        let blocks = &self.blocks[..];
        if inner.len() + 1 != blocks.len() {
            bail!("bottleneck_train: backward before forward")
        }
        let device = x.device();
        let mut grad = cpu_values(&gs, gl, "output gradient")?.into_owned();
        let mut pairs = Vec::new();
        for (k, block) in blocks.iter().enumerate().rev() {
            let masked = match inner.get(k) {
                Some(out) => relu_masked(out, &grad),
                None => relu_masked(&cpu_values(&ys, yl, "output")?, &grad),
            };
            let (input, want_dx) = match k {
                0 => (&xv[..], x.track_op()),
                _ => (&inner[k - 1][..], true),
            };
            let (dx, dparams) = block.with_params(|(params, gate)| {
                block.backward((input, want_dx), &params, gate, &masked)
            })?;
            for (p, d) in block.params.iter().zip(dparams) {
                pairs.push((p.clone(), Tensor::from_vec(d, p.shape(), device)?));
            }
            match dx {
                Some(dx) => grad = dx,
                None => {
                    grad.clear();
                    break;
                }
            }
        }
        self.param_grads.push(pairs)?;
        let dx = (x.track_op() && !grad.is_empty())
            .then(|| Tensor::from_vec(grad, x.shape(), device))
            .transpose()?;
        Ok((dx, None))
    }
}

impl Block {
    /// The block's output and what its backward keeps, from input `x`.
    fn forward(
        &self,
        x: &[f32],
        params: &[(&[f32], &[f32])],
        gate: Option<GateViews<'_>>,
    ) -> Result<(Vec<f32>, Saved)> {
        let g = &self.geometries;
        // Stage `i` (conv1, conv2, conv3, downsample) over `input`.
        let stage = |i: usize, input: &[f32], relu: bool, shortcut: Option<&[f32]>| {
            let (w, affine) = params[i];
            stage_forward(&g[i], input, w, affine, (self.eps[i], relu), shortcut)
        };
        let (h1, s1) = stage(0, x, true, None)?;
        let (h2, s2) = stage(1, &h1, true, None)?;
        let (shortcut, sd) = if g.len() > 3 {
            let (yd, sd) = stage(3, x, false, None)?;
            (Cow::Owned(yd), Some(sd))
        } else {
            (Cow::Borrowed(x), None)
        };
        let (y, s3, gated) = match gate {
            None => {
                let (y, s3) = stage(2, &h2, true, Some(&shortcut))?;
                (y, s3, None)
            }
            Some(gate) => {
                let (z, s3) = stage(2, &h2, false, None)?;
                let maps = (g[2].batch, g[2].out_h * g[2].out_w);
                let (y, join) = match gate.spatial {
                    None => {
                        let (y, se) = gated_join_forward(&z, maps, gate.mlp, &shortcut);
                        (y, JoinSaved::SqueezeExcite(se))
                    }
                    Some(spatial) => {
                        let (y, cbam) = cbam_join_forward(&z, maps, gate.mlp, spatial, &shortcut)?;
                        (y, JoinSaved::Cbam(Box::new(cbam)))
                    }
                };
                (y, s3, Some((z, join)))
            }
        };
        let stages = [s1, s2, s3].into_iter().chain(sd).collect();
        Ok((
            y,
            Saved {
                stages,
                h1,
                h2,
                gated,
            },
        ))
    }

    /// The gradient of the block's input `xv` (when `want_dx`) and every parameter's, in the
    /// order of `params`, from `masked`, the output gradient where the block's ReLU passed.
    fn backward(
        &self,
        (xv, want_dx): (&[f32], bool),
        params: &[(&[f32], &[f32])],
        gate: Option<GateViews<'_>>,
        masked: &[f32],
    ) -> Result<BlockGrads> {
        let g = &self.geometries;
        let saved = lock(&self.saved)?;
        let Some(s) = saved.as_ref() else {
            bail!("bottleneck_train: backward before forward")
        };
        // Stage `i`'s backward over its input, from the gradient of its BatchNorm output.
        let stage = |i: usize, input: &[f32], grad_bn: &[f32], relu: bool, want_dx: bool| {
            stage_backward(
                &g[i],
                &s.stages[i],
                (input, params[i].0),
                grad_bn,
                relu,
                want_dx,
            )
        };
        let (grad_bn3, dgate_params) = match (&s.gated, gate) {
            (Some((z, JoinSaved::SqueezeExcite(se))), Some(gate)) => {
                let p = g[2].out_h * g[2].out_w;
                let (dz, dgate_params) = gated_join_backward(z, se, gate.mlp, masked, p);
                (Cow::Owned(dz), dgate_params)
            }
            (
                Some((z, JoinSaved::Cbam(cbam))),
                Some(GateViews {
                    mlp,
                    spatial: Some(sp),
                }),
            ) => {
                let (dz, dgate_params) = cbam_join_backward(z, cbam, mlp, sp, masked);
                (Cow::Owned(dz), dgate_params)
            }
            (None, None) => (Cow::Borrowed(masked), Vec::new()),
            _ => bail!("bottleneck_train: the gate's state does not match its parameters"),
        };
        let third = stage(2, &s.h2, &grad_bn3, false, true);
        let Some(dh2) = &third.dx else {
            unreachable!("asked for")
        };
        let second = stage(1, &s.h1, dh2, true, true);
        let Some(dh1) = &second.dx else {
            unreachable!("asked for")
        };
        let mut first = stage(0, xv, dh1, true, want_dx);
        let shortcut = (g.len() > 3).then(|| stage(3, xv, masked, false, want_dx));
        // The input's second path: the downsample's input gradient, or the identity's.
        let other = match &shortcut {
            Some(d) => d.dx.as_deref(),
            None => Some(masked),
        };
        let dx = first.dx.take().map(|mut dx| {
            if let Some(other) = other {
                add_into(&mut dx, other);
            }
            dx
        });
        let mut dparams = Vec::with_capacity(self.params.len());
        for grads in [first, second, third].into_iter().chain(shortcut) {
            dparams.extend([grads.dw, grads.dgamma, grads.dbeta]);
        }
        // The gate's gradients come packed in the order of its tensors.
        let mut rest = &dgate_params[..];
        for &len in &self.param_lens()[dparams.len()..] {
            let (one, tail) = rest.split_at(len);
            dparams.push(one.to_vec());
            rest = tail;
        }
        Ok((dx, dparams))
    }
}

/// [`cpu_values`](crate::fused_operands::cpu_values) of this file's op.
fn cpu_values<'a>(storage: &'a Storage, layout: &Layout, what: &str) -> Result<Cow<'a, [f32]>> {
    crate::fused_operands::cpu_values("bottleneck_train", storage, layout, what)
}

/// `acc += other`, elementwise, in parallel.
fn add_into(acc: &mut [f32], other: &[f32]) {
    acc.par_chunks_mut(1 << 14)
        .zip(other.par_chunks(1 << 14))
        .for_each(|(a, b)| {
            for (a, &b) in a.iter_mut().zip(b) {
                *a += b;
            }
        });
}
