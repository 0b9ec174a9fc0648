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
use crate::squeeze_excite::{gated_join_backward, gated_join_forward, SqueezeExciteSaved};
use crate::{BatchStats, ConvParams, GateMlp};
use candle_core::{bail, CpuStorage, CustomOp2, Layout, Result, Shape, Storage, Tensor};
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
pub fn bottleneck_train(
    x: &Tensor,
    main: [ConvBnStage<'_>; 3],
    downsample: Option<ConvBnStage<'_>>,
    gate: Option<BlockGate<'_>>,
) -> Result<(Tensor, Vec<BatchStats>)> {
    let stages: Vec<ConvBnStage<'_>> = main.into_iter().chain(downsample).collect();
    if !bottleneck_train_applies(x, &stages, gate.as_ref()) {
        bail!("bottleneck_train: f32 tensors on the CPU only")
    }
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
    let g1 = geometry(x.dims(), &main[0], "conv1")?;
    let g2 = geometry(&dims(g1.output_dims()), &main[1], "conv2")?;
    let g3 = geometry(&dims(g2.output_dims()), &main[2], "conv3")?;
    let gd = downsample
        .as_ref()
        .map(|d| geometry(x.dims(), d, "downsample"))
        .transpose()?;
    let shortcut_dims = match &gd {
        Some(gd) => dims(gd.output_dims()).to_vec(),
        None => x.dims().to_vec(),
    };
    if dims(g3.output_dims()) != shortcut_dims[..] {
        bail!(
            "bottleneck_train: the block's output {:?} and its shortcut {:?} differ",
            g3.output_dims(),
            shortcut_dims
        )
    }
    let gate_shape = match &gate {
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
    let geometries: Vec<ConvGeometry> = [g1, g2, g3].into_iter().chain(gd).collect();
    // Every stage's parameters in one flat tensor (conv weight, BatchNorm weight, bias; stage
    // after stage), then the gate's: a candle op takes at most three inputs.
    let mut parts = Vec::with_capacity(3 * stages.len() + 4);
    for s in &stages {
        parts.extend([
            s.conv_weight.flatten_all()?,
            s.bn_weight.clone(),
            s.bn_bias.clone(),
        ]);
    }
    for t in gate.iter().flat_map(|g| g.tensors()) {
        parts.push(t.flatten_all()?);
    }
    let packed = Tensor::cat(&parts, 0)?;
    let saved = Arc::new(Mutex::new(None));
    let op = BottleneckTrain {
        geometries,
        eps: stages.iter().map(|s| s.eps).collect(),
        gate: gate_shape,
        saved: saved.clone(),
    };
    let y = x.apply_op2_arc(
        &packed,
        Arc::new(Box::new(op) as Box<dyn CustomOp2 + Send + Sync>),
    )?;
    let stats = match lock(&saved)?.as_ref() {
        Some(s) => {
            let spatial = match &s.gated {
                Some((_, JoinSaved::Cbam(cbam))) => Some(cbam.spatial_stats()),
                _ => None,
            };
            s.stages
                .iter()
                .map(|s| s.bn.stats())
                .chain(spatial)
                .collect()
        }
        None => bail!("bottleneck_train: forward did not run"),
    };
    Ok((y, stats))
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

/// The op: (`x`, packed parameters) -> the block's output. `geometries` and `eps` hold conv1,
/// conv2, conv3 and, when there is one, the downsample convolution.
#[derive(Debug)]
struct BottleneckTrain {
    geometries: Vec<ConvGeometry>,
    eps: Vec<f64>,
    gate: Option<GateShape>,
    saved: Arc<Mutex<Option<Saved>>>,
}

/// A gate's parameters, as views of the packed parameters: the MLP's, and for CBAM the spatial
/// stage's.
#[derive(Clone, Copy, Debug)]
struct GateViews<'a> {
    mlp: MlpParams<'a>,
    spatial: Option<SpatialStage<'a>>,
}

/// Each stage's `(conv weight, [BatchNorm weight; bias])` and the gate's parameters, as views
/// of the packed parameters.
type Params<'a> = (Vec<(&'a [f32], &'a [f32])>, Option<GateViews<'a>>);

impl BottleneckTrain {
    /// The packed parameters cut into stages and the gate.
    fn split<'a>(&'a self, packed: &'a [f32]) -> Result<Params<'a>> {
        let changed = || {
            candle_core::Error::Msg(
                "bottleneck_train: parameters changed shape since the op was built".into(),
            )
        };
        let mut rest = packed;
        let mut stages = Vec::with_capacity(self.geometries.len());
        for g in &self.geometries {
            let (w_len, c) = (g.groups * g.weight_group_len(), g.out_channels);
            if rest.len() < w_len + 2 * c {
                return Err(changed());
            }
            let (w, tail) = rest.split_at(w_len);
            let (affine, tail) = tail.split_at(2 * c);
            stages.push((w, affine));
            rest = tail;
        }
        let channels = self.geometries[2].out_channels;
        let (reduced, spatial) = match &self.gate {
            None if rest.is_empty() => return Ok((stages, None)),
            None => return Err(changed()),
            Some(GateShape::SqueezeExcite { reduced }) => (*reduced, None),
            Some(GateShape::Cbam {
                reduced,
                spatial,
                eps,
            }) => (*reduced, Some((spatial, *eps))),
        };
        let mlp_len = MlpParams::len(channels, reduced);
        let weight_len = |g: &ConvGeometry| g.groups * g.weight_group_len();
        let spatial_len = spatial.map_or(0, |(g, _)| weight_len(g) + 2 * g.out_channels);
        if rest.len() != mlp_len + spatial_len {
            return Err(changed());
        }
        let (mlp, rest) = rest.split_at(mlp_len);
        let spatial = spatial.map(|(geometry, eps)| {
            let (weight, affine) = rest.split_at(weight_len(geometry));
            SpatialStage {
                geometry,
                eps,
                weight,
                affine,
            }
        });
        let mlp = MlpParams::split(mlp, channels, reduced);
        Ok((stages, Some(GateViews { mlp, spatial })))
    }
}

impl CustomOp2 for BottleneckTrain {
    fn name(&self) -> &'static str {
        "mtanet-bottleneck-train"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        ps: &CpuStorage,
        pl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let g = &self.geometries;
        if xl.dims() != Shape::from(g[0].input_dims()).dims() {
            bail!("bottleneck_train: input changed shape since the op was built")
        }
        let x = dense_f32(xs, xl, "input")?;
        let packed = dense_f32(ps, pl, "parameters")?;
        let (params, gate) = self.split(&packed)?;
        // Stage `i` (conv1, conv2, conv3, downsample) over `input`.
        let stage = |i: usize, input: &[f32], relu: bool, shortcut: Option<&[f32]>| {
            let (w, affine) = params[i];
            stage_forward(&g[i], input, w, affine, (self.eps[i], relu), shortcut)
        };
        let (h1, s1) = stage(0, &x, true, None)?;
        let (h2, s2) = stage(1, &h1, true, None)?;
        let (shortcut, sd) = if g.len() > 3 {
            let (yd, sd) = stage(3, &x, false, None)?;
            (Cow::Owned(yd), Some(sd))
        } else {
            (Cow::Borrowed(&x[..]), None)
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
        *lock(&self.saved)? = Some(Saved {
            stages,
            h1,
            h2,
            gated,
        });
        Ok((CpuStorage::F32(y), Shape::from(g[2].output_dims())))
    }

    /// The ReLU after the join passed exactly where `y > 0`: the masked output gradient is the
    /// shortcut's gradient and, without a gate, the third BatchNorm's output gradient (with
    /// one, that takes the gate's two paths); the first two stages recompute their own ReLU
    /// masks.
    fn bwd(
        &self,
        x: &Tensor,
        packed: &Tensor,
        y: &Tensor,
        grad_y: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let g = &self.geometries;
        let saved = lock(&self.saved)?;
        let Some(s) = saved.as_ref() else {
            bail!("bottleneck_train: backward before forward")
        };
        let (xs, xl) = x.storage_and_layout();
        let (ps, pl) = packed.storage_and_layout();
        let (ys, yl) = y.storage_and_layout();
        let (gs, gl) = grad_y.storage_and_layout();
        let xv = cpu_values(&xs, xl, "input")?;
        let pv = cpu_values(&ps, pl, "parameters")?;
        let (params, gate) = self.split(&pv)?;
        let masked = relu_masked(
            &cpu_values(&ys, yl, "output")?,
            &cpu_values(&gs, gl, "output gradient")?,
        );
        let want_dx = x.track_op();
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
                let (dz, dgate_params) = gated_join_backward(z, se, gate.mlp, &masked, p);
                (Cow::Owned(dz), dgate_params)
            }
            (
                Some((z, JoinSaved::Cbam(cbam))),
                Some(GateViews {
                    mlp,
                    spatial: Some(sp),
                }),
            ) => {
                let (dz, dgate_params) = cbam_join_backward(z, cbam, mlp, sp, &masked);
                (Cow::Owned(dz), dgate_params)
            }
            (None, None) => (Cow::Borrowed(&masked[..]), Vec::new()),
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
        let mut first = stage(0, &xv, dh1, true, want_dx);
        let shortcut = (g.len() > 3).then(|| stage(3, &xv, &masked, false, want_dx));
        // The input's second path: the downsample's input gradient, or the identity's.
        let other = match &shortcut {
            Some(d) => d.dx.as_deref(),
            None => Some(&masked[..]),
        };
        let dx = first.dx.take().map(|mut dx| {
            if let Some(other) = other {
                add_into(&mut dx, other);
            }
            dx
        });
        let mut dpacked = Vec::with_capacity(pv.len());
        for grads in [&first, &second, &third].into_iter().chain(&shortcut) {
            dpacked.extend_from_slice(&grads.dw);
            dpacked.extend_from_slice(&grads.dgamma);
            dpacked.extend_from_slice(&grads.dbeta);
        }
        dpacked.extend_from_slice(&dgate_params);
        let device = x.device();
        let dx = dx
            .map(|v| Tensor::from_vec(v, x.shape(), device))
            .transpose()?;
        let dpacked = Tensor::from_vec(dpacked, packed.shape(), device)?;
        Ok((dx, Some(dpacked)))
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
