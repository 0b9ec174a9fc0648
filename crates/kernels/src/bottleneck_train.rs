//! A whole ResNet bottleneck in training mode as one candle op: its three convolutions with
//! their BatchNorms and ReLUs, the downsample shortcut's convolution and BatchNorm, the
//! squeeze-and-excitation gate when the block has one, and the residual join.
//!
//! As separate ops (`conv_bn_train` and `conv_bn_add_relu_train`) the block's two inner
//! activations, the shortcut and the block input are nodes of candle's graph, and candle's
//! backward gives each node's gradient a zero-filled buffer and then adds every op's gradient
//! into it: per block, four or five full-size allocations, memsets and adds. Inside one op the
//! inner gradients are plain buffers handed from one stage's backward to the next, and the
//! input gradient is the sum of its two paths, written once.
//!
//! Each stage is the fused convolution + BatchNorm of `conv_bn.rs` (`stage_forward`,
//! `stage_backward`), and the gate is `squeeze_excite.rs` with the join of `gate.rs`
//! (`channel_gate_add_relu`): the values and every gradient equal those of the separate ops
//! (up to the sign of zero gradients); the tests check that.

use crate::batch_norm::lock;
use crate::conv2d::storage::dense_f32;
use crate::conv2d::ConvGeometry;
use crate::conv_bn::{relu_masked, stage_backward, stage_forward, Saved as StageSaved};
use crate::fused_operands::cpu_f32;
use crate::squeeze_excite::{gated_join_backward, gated_join_forward, GateParams, GateSaved};
use crate::{BatchStats, ConvParams, SqueezeExciteGate};
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

/// True when [`bottleneck_train`] runs these tensors (the input, every stage's and the gate's
/// parameters): all f32 on the CPU.
pub fn bottleneck_train_applies(
    x: &Tensor,
    stages: &[ConvBnStage<'_>],
    gate: Option<&SqueezeExciteGate<'_>>,
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
/// as one op differentiable in `x` and every stage's three parameters. With a squeeze-excite
/// `gate`, `relu(z * se(z) + shortcut)` with `z = bn3(conv3(h2))`, differentiable in the gate's
/// four parameters too. Returns the output and the batch statistics of the BatchNorms in the
/// order `main`, then `downsample`, for the running averages the caller owns.
///
/// The values and gradients equal those of `conv_bn_train` twice, `conv_bn_train` on the
/// shortcut and `conv_bn_add_relu_train` (with a gate: `conv_bn_train` for the third stage, the
/// gate composed of `spatial_mean`, candle matmuls and `sigmoid`, and `channel_gate_add_relu`),
/// up to the sign of zero gradients. f32 on the CPU only ([`bottleneck_train_applies`]).
pub fn bottleneck_train(
    x: &Tensor,
    main: [ConvBnStage<'_>; 3],
    downsample: Option<ConvBnStage<'_>>,
    gate: Option<SqueezeExciteGate<'_>>,
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
    let reduced = gate
        .as_ref()
        .map(|gate| gate.reduced(g3.out_channels))
        .transpose()?;
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
        reduced,
        saved: saved.clone(),
    };
    let y = x.apply_op2_arc(
        &packed,
        Arc::new(Box::new(op) as Box<dyn CustomOp2 + Send + Sync>),
    )?;
    let stats = match lock(&saved)?.as_ref() {
        Some(s) => s.stages.iter().map(|s| s.bn.stats()).collect(),
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
    gated: Option<(Vec<f32>, GateSaved)>,
}

/// The op: (`x`, packed parameters) -> the block's output. `geometries` and `eps` hold conv1,
/// conv2, conv3 and, when there is one, the downsample convolution; `reduced` is the gate's
/// hidden width when there is a gate.
#[derive(Debug)]
struct BottleneckTrain {
    geometries: Vec<ConvGeometry>,
    eps: Vec<f64>,
    reduced: Option<usize>,
    saved: Arc<Mutex<Option<Saved>>>,
}

/// Each stage's `(conv weight, [BatchNorm weight; bias])` and the gate's parameters, as views
/// of the packed parameters.
type Params<'a> = (Vec<(&'a [f32], &'a [f32])>, Option<GateParams<'a>>);

impl BottleneckTrain {
    /// The packed parameters cut into stages and the gate.
    fn split<'a>(&self, packed: &'a [f32]) -> Result<Params<'a>> {
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
        let gate_len = self.reduced.map_or(0, |r| GateParams::len(channels, r));
        if rest.len() != gate_len {
            return Err(changed());
        }
        let gate = self.reduced.map(|r| GateParams::split(rest, channels, r));
        Ok((stages, gate))
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
                let (y, se) =
                    gated_join_forward(&z, (g[2].batch, g[2].out_h * g[2].out_w), gate, &shortcut);
                (y, s3, Some((z, se)))
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
            (Some((z, se)), Some(gate)) => {
                let p = g[2].out_h * g[2].out_w;
                let (dz, dgate_params) = gated_join_backward(z, se, gate, &masked, p);
                (Cow::Owned(dz), dgate_params)
            }
            _ => (Cow::Borrowed(&masked[..]), Vec::new()),
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
