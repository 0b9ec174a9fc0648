//! One bottleneck block's training forward and backward over plain buffers, as the training
//! op of `bottleneck_train.rs` runs it: the three convolution + BatchNorm stages of `conv_bn.rs`
//! (`stage_forward`, `stage_backward`), the downsample shortcut, the squeeze-excite or CBAM
//! gate with the joins of `gate.rs`, and the residual join; and the types that describe a block
//! to the op (`ConvBnStage`, `BlockGate`, `BottleneckStages`). A block reads its parameters
//! where they are (a candle tensor each) and returns their gradients as buffers.

use crate::batch_norm::lock;
use crate::cbam::{
    cbam_join_backward, cbam_join_forward, check_spatial_gate, CbamSaved, SpatialStage,
};
use crate::conv2d::{ConvGeometry, Scratch};
use crate::conv_bn::{stage_backward, stage_forward, OutputGrad, Saved as StageSaved};
use crate::gate_mlp::MlpParams;
use crate::profile::timed;
use crate::squeeze_excite::{
    gated_join_backward, gated_join_forward, Normalized, SqueezeExciteSaved,
};
use crate::{BatchStats, ConvParams, GateMlp};
use candle_core::{bail, Layout, Result, Storage, Tensor};
use rayon::prelude::*;
use std::borrow::Cow;
use std::sync::Mutex;

/// One convolution and the training-mode BatchNorm after it, as [`bottleneck_train`](fn@crate::bottleneck_train) takes them.
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

/// A block's attention gate, as [`bottleneck_train`](fn@crate::bottleneck_train) takes it.
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
    pub(crate) fn tensors(&self) -> Vec<&Tensor> {
        let mut all = self.mlp().tensors().to_vec();
        if let Self::Cbam { spatial, .. } = self {
            all.extend([spatial.conv_weight, spatial.bn_weight, spatial.bn_bias]);
        }
        all
    }
}

/// One block's stages and gate, as [`bottlenecks_train`](crate::bottlenecks_train) takes them.
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
    pub(crate) fn stages(&self) -> Vec<ConvBnStage<'a>> {
        self.main.into_iter().chain(self.downsample).collect()
    }

    /// Every parameter, in the order the op keeps them: each stage's conv weight, BatchNorm
    /// weight and bias (stage after stage), then the gate's ([`BlockGate::tensors`]).
    pub(crate) fn tensors(&self) -> Vec<&Tensor> {
        let mut all: Vec<&Tensor> = Vec::with_capacity(3 * 4 + 7);
        for s in self.stages() {
            all.extend([s.conv_weight, s.bn_weight, s.bn_bias]);
        }
        all.extend(self.gate.iter().flat_map(|g| g.tensors()));
        all
    }
}

impl Block {
    /// The block `spec` over an input of shape `input`, its shapes checked. The op reads every
    /// parameter where it is (conv weight, BatchNorm weight, bias; stage after stage, then the
    /// gate's) and hands their gradients to its [`ParamGrads`](crate::param_grads::ParamGrads).
    pub(crate) fn new(input: &[usize], spec: &BottleneckStages<'_>) -> Result<Self> {
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
        let params: Vec<Tensor> = spec.tensors().into_iter().cloned().collect();
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
    pub(crate) fn stats(&self) -> Result<Vec<BatchStats>> {
        match lock(&self.saved)?.as_ref() {
            Some(s) => {
                let spatial = match &s.gated {
                    Some(JoinSaved::Cbam { saved, .. }) => Some(saved.spatial_stats()),
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
pub(crate) struct Saved {
    /// Each stage's convolution output and BatchNorm state, in the op's stage order.
    stages: Vec<StageSaved>,
    /// The first and second stages' outputs (the inputs of the second and third convolutions).
    h1: Vec<f32>,
    h2: Vec<f32>,
    /// With a gate: the gate's state.
    gated: Option<JoinSaved>,
}

/// What a gate's forward keeps.
#[derive(Debug)]
enum JoinSaved {
    /// Squeeze-excite's state; its gated map is the third stage's convolution output through
    /// the stage's BatchNorm, formed where it is read ([`normalized`]).
    SqueezeExcite(SqueezeExciteSaved),
    /// CBAM's state, with the third stage's output `z` (the gated map).
    Cbam { z: Vec<f32>, saved: Box<CbamSaved> },
}

/// The third stage's BatchNorm output as squeeze-excite reads it: its convolution output with
/// the BatchNorm's per-channel scale and shift.
fn normalized(stage: &StageSaved) -> Normalized<'_> {
    let (scale, shift) = &stage.bn.scale_shift;
    Normalized {
        x: &stage.z,
        scale,
        shift,
    }
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
pub(crate) struct Block {
    pub(crate) geometries: Vec<ConvGeometry>,
    eps: Vec<f64>,
    gate: Option<GateShape>,
    pub(crate) params: Vec<Tensor>,
    pub(crate) saved: Mutex<Option<Saved>>,
}

/// A gate's parameters, as views of the parameter tensors: the MLP's, and for CBAM the spatial
/// stage's.
#[derive(Clone, Copy, Debug)]
pub(crate) struct GateViews<'a> {
    mlp: MlpParams<'a>,
    spatial: Option<SpatialStage<'a>>,
}

/// Each stage's `(conv weight, [BatchNorm weight; bias])` and the gate's parameters, as views
/// of the parameter tensors.
pub(crate) type Params<'a> = (Vec<(&'a [f32], &'a [f32])>, Option<GateViews<'a>>);

/// The input's gradient (when asked for) and each parameter's, in the order of the op's
/// `params`.
pub(crate) type BlockGrads = (Option<Scratch>, Vec<Vec<f32>>);

impl Block {
    /// Runs `f` on the parameters' values, read in place (each BatchNorm's weight and bias
    /// copied side by side, as the stages take them), after checking that every tensor still
    /// holds the values the op was built for.
    pub(crate) fn with_params<R>(&self, f: impl FnOnce(Params<'_>) -> Result<R>) -> Result<R> {
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
    pub(crate) fn param_lens(&self) -> Vec<usize> {
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

impl Block {
    /// The block's output and what its backward keeps, from input `x`.
    pub(crate) fn forward(
        &self,
        x: &[f32],
        params: &[(&[f32], &[f32])],
        gate: Option<GateViews<'_>>,
    ) -> Result<(Vec<f32>, Saved)> {
        let g = &self.geometries;
        // Stage `i` (conv1, conv2, conv3, downsample) over `input`; with `means`, only its
        // output's map means are kept (`stage_forward`).
        let stage =
            |i: usize, input: &[f32], relu: bool, join: (Option<&[f32]>, Option<&mut [f32]>)| {
                let (w, affine) = params[i];
                stage_forward(&g[i], input, w, affine, (self.eps[i], relu), join)
            };
        let (h1, s1) = stage(0, x, true, (None, None))?;
        let (h2, s2) = stage(1, &h1, true, (None, None))?;
        let (shortcut, sd) = if g.len() > 3 {
            let (yd, sd) = stage(3, x, false, (None, None))?;
            (Cow::Owned(yd), Some(sd))
        } else {
            (Cow::Borrowed(x), None)
        };
        let (y, s3, gated) = match gate {
            None => {
                let (y, s3) = stage(2, &h2, true, (Some(&shortcut), None))?;
                (y, s3, None)
            }
            Some(gate) => {
                let maps = (g[2].batch, g[2].out_h * g[2].out_w);
                let (y, s3, join) = match gate.spatial {
                    None => {
                        // The third stage keeps only its output's squeeze (each map's mean):
                        // the join forms `z` from the convolution output.
                        let mut squeezed = vec![0f32; g[2].batch * g[2].out_channels];
                        let (_, s3) = stage(2, &h2, false, (None, Some(&mut squeezed)))?;
                        let (y, se) = timed(
                            || "se gate fwd".into(),
                            || {
                                let z = normalized(&s3);
                                gated_join_forward(z, squeezed, maps, gate.mlp, &shortcut)
                            },
                        );
                        (y, s3, JoinSaved::SqueezeExcite(se))
                    }
                    Some(spatial) => {
                        let (z, s3) = stage(2, &h2, false, (None, None))?;
                        let (y, cbam) = timed(
                            || "cbam gate fwd".into(),
                            || cbam_join_forward(&z, maps, gate.mlp, spatial, &shortcut),
                        )?;
                        let saved = Box::new(cbam);
                        (y, s3, JoinSaved::Cbam { z, saved })
                    }
                };
                (y, s3, Some(join))
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
    /// order of `params`, from `masked`, the output gradient where the block's ReLU passed. With
    /// `input_relu` (the input is a ReLU's output, the block before's), the input gradient is
    /// returned through that ReLU too: zero where `xv` is not positive.
    pub(crate) fn backward(
        &self,
        (xv, want_dx): (&[f32], bool),
        params: &[(&[f32], &[f32])],
        gate: Option<GateViews<'_>>,
        masked: &[f32],
        input_relu: bool,
    ) -> Result<BlockGrads> {
        let g = &self.geometries;
        let saved = lock(&self.saved)?;
        let Some(s) = saved.as_ref() else {
            bail!("bottleneck_train: backward before forward")
        };
        // Stage `i`'s backward over its input, from the gradient of its BatchNorm output.
        let staged = |i: usize, input: &[f32], grad_bn: OutputGrad<'_>, relu, want_dx| {
            stage_backward(
                &g[i],
                &s.stages[i],
                (input, params[i].0),
                grad_bn,
                relu,
                want_dx,
            )
        };
        let stage = |i: usize, input: &[f32], grad_bn: &[f32], relu: bool, want_dx: bool| {
            staged(i, input, OutputGrad::Values(grad_bn), relu, want_dx)
        };
        // The third BatchNorm's output gradient: the masked output gradient, the gated map's
        // gradient from CBAM's backward, or squeeze-excite's `masked * gate + spread`, formed
        // row by row as the BatchNorm backward reads it.
        let (stored, spread, dgate_params) = match (&s.gated, gate) {
            (Some(JoinSaved::SqueezeExcite(se)), Some(gate)) => {
                let p = g[2].out_h * g[2].out_w;
                let z = normalized(&s.stages[2]);
                let (spread, dgate_params) = timed(
                    || "se gate bwd".into(),
                    || gated_join_backward(z, se, gate.mlp, masked, p),
                );
                (None, Some((se.gate(), spread)), dgate_params)
            }
            (
                Some(JoinSaved::Cbam { z, saved: cbam }),
                Some(GateViews {
                    mlp,
                    spatial: Some(sp),
                }),
            ) => {
                let (dz, dgate_params) = timed(
                    || "cbam gate bwd".into(),
                    || cbam_join_backward(z, cbam, mlp, sp, masked),
                );
                (Some(dz), None, dgate_params)
            }
            (None, None) => (None, None, Vec::new()),
            _ => bail!("bottleneck_train: the gate's state does not match its parameters"),
        };
        let grad_bn3 = match (&stored, &spread) {
            (Some(dz), _) => OutputGrad::Values(dz),
            (None, Some((gate, spread))) => OutputGrad::RowAffine {
                g: masked,
                a: gate,
                b: spread,
            },
            (None, None) => OutputGrad::Values(masked),
        };
        let third = staged(2, &s.h2, grad_bn3, false, true);
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
        let dx = match (first.dx.take(), other) {
            (Some(mut dx), Some(other)) => {
                match input_relu {
                    true => add_where_passed(&mut dx, other, xv),
                    false => add_into(&mut dx, other),
                }
                Some(dx)
            }
            (None, _) => None,
            // Both stages over the input are asked for its gradient together (`want_dx`).
            (Some(_), None) => unreachable!("asked for"),
        };
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

/// [`cpu_values`](crate::fused_operands::cpu_values) of the bottleneck training op.
pub(crate) fn cpu_values<'a>(
    storage: &'a Storage,
    layout: &Layout,
    what: &str,
) -> Result<Cow<'a, [f32]>> {
    crate::fused_operands::cpu_values("bottleneck_train", storage, layout, what)
}

/// Values per rayon task of the elementwise joins below.
const JOIN_CHUNK: usize = 1 << 14;

/// `acc += other`, elementwise, in parallel.
fn add_into(acc: &mut [f32], other: &[f32]) {
    acc.par_chunks_mut(JOIN_CHUNK)
        .zip(other.par_chunks(JOIN_CHUNK))
        .for_each(|(a, b)| {
            for (a, &b) in a.iter_mut().zip(b) {
                *a += b;
            }
        });
}

/// `acc = acc + other` where `input > 0`, else 0, in parallel: the block's input gradient
/// through the ReLU that produced its input, in the same pass as the join of its two paths.
/// The sum where the ReLU passed is the plain sum, and elsewhere 0.0, as the separate add and
/// ReLU mask give.
fn add_where_passed(acc: &mut [f32], other: &[f32], input: &[f32]) {
    assert!(
        acc.len() == other.len() && acc.len() == input.len(),
        "add_where_passed: lengths differ"
    );
    acc.par_chunks_mut(JOIN_CHUNK)
        .zip(other.par_chunks(JOIN_CHUNK))
        .zip(input.par_chunks(JOIN_CHUNK))
        .for_each(|((a, b), x)| {
            for ((a, &b), &x) in a.iter_mut().zip(b).zip(x) {
                *a = if x > 0.0 { *a + b } else { 0.0 };
            }
        });
}
