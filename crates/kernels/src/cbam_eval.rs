//! CBAM's two gates and the residual join in evaluation as one op:
//! `relu(u * spatial(u) + shortcut)` with `u = z * channel(z)`, the spatial gate's BatchNorm
//! in eval mode as a scale and shift.
//!
//! Composed (`spatial_mean_max`, the MLP, `channel_gate`, `channel_max_mean`, the 7x7
//! convolution, `channel_affine`, `sigmoid`, `spatial_gate_add_relu`), an eval forward reads the
//! block's map five times and writes it twice. Here it is read three times and written once:
//! the per-map mean and maximum, the channel pooling of `u` computed on the fly (`u` is never
//! stored), and the output. Each value is the composed ops' arithmetic, so the output is theirs
//! bit for bit. Training runs the whole block as one op (`bottleneck_train`); an eval-mode
//! backward (asked for only by checks, such as the GPU check's eval-mode gradients) recomputes
//! the gate with the composed ops and differentiates them.

use crate::batch_norm_passes::scale_shift;
use crate::cbam::{channel_gate_forward, channel_gate_of_pooled, check_spatial_gate};
use crate::conv2d::storage::dense_f32;
use crate::conv2d::{self, ConvGeometry};
use crate::fused_operands::cpu_f32;
use crate::gate::{channel_max_mean_values, gated_spatial_join};
use crate::gate_mlp::{sigmoid_in_place, MlpParams};
use crate::{ConvParams, GateMlp};
use candle_core::{bail, CpuStorage, CustomOp3, Layout, Result, Shape, Tensor, Var};

/// A CBAM gate in evaluation, as [`cbam_add_relu_eval`] takes it.
#[derive(Clone, Copy, Debug)]
pub struct CbamEval<'a> {
    /// The channel gate's shared MLP.
    pub channel: GateMlp<'a>,
    /// The spatial gate's convolution weight, `(1, 2, K, K)`.
    pub spatial_weight: &'a Tensor,
    /// That convolution's stride, padding and groups (the map must keep its size).
    pub spatial_conv: ConvParams,
    /// The spatial BatchNorm's eval scale, `weight / sqrt(running_var + eps)` (one value).
    pub spatial_scale: &'a Tensor,
    /// The spatial BatchNorm's eval shift, `bias - running_mean * scale` (one value).
    pub spatial_shift: &'a Tensor,
}

impl CbamEval<'_> {
    /// The gate's tensors, in the order they are packed.
    pub(crate) fn tensors(&self) -> Vec<&Tensor> {
        let mut all = self.channel.tensors().to_vec();
        all.extend([self.spatial_weight, self.spatial_scale, self.spatial_shift]);
        all
    }
}

/// True when [`cbam_add_relu_eval`] runs these tensors: all f32 on the CPU.
pub fn cbam_eval_applies(z: &Tensor, gate: &CbamEval<'_>, shortcut: &Tensor) -> bool {
    let mut all = vec![z, shortcut];
    all.extend(gate.tensors());
    cpu_f32(&all)
}

/// `relu(u * spatial(u) + shortcut)` with `u = z * channel(z)` for `z` and `shortcut`
/// (N, C, H, W) in evaluation: the values of the backbone's composed CBAM followed by
/// `spatial_gate_add_relu`, bit for bit; differentiable in `z`, `shortcut` and every tensor of
/// `gate`. f32 on the CPU only ([`cbam_eval_applies`]).
pub fn cbam_add_relu_eval(z: &Tensor, gate: CbamEval<'_>, shortcut: &Tensor) -> Result<Tensor> {
    if !cbam_eval_applies(z, &gate, shortcut) {
        bail!("cbam_add_relu_eval: f32 tensors on the CPU only")
    }
    if shortcut.dims() != z.dims() {
        bail!(
            "cbam_add_relu_eval: input {:?} and shortcut {:?} differ",
            z.dims(),
            shortcut.dims()
        )
    }
    let CbamPlan {
        reduced,
        spatial,
        packed,
    } = plan_cbam("cbam_add_relu_eval", z.dims4()?, &gate)?;
    z.apply_op3(shortcut, &packed, CbamAddReluEval { reduced, spatial })
}

/// A CBAM gate checked against the dims of its input `z`: the MLP's reduced width, the spatial
/// convolution's geometry, and every parameter packed into one flat tensor in
/// [`CbamEval`]'s order (the MLP's, the spatial weight, scale, shift).
pub(crate) struct CbamPlan {
    pub(crate) reduced: usize,
    pub(crate) spatial: ConvGeometry,
    pub(crate) packed: Tensor,
}

/// [`CbamPlan`] of `gate` over an input of `(n, c, h, w)`; `op` names the caller in errors.
pub(crate) fn plan_cbam(
    op: &str,
    (n, c, h, w): (usize, usize, usize, usize),
    gate: &CbamEval<'_>,
) -> Result<CbamPlan> {
    let reduced = gate.channel.reduced(c)?;
    let conv = gate.spatial_conv;
    let spatial = ConvGeometry::new(
        &[n, 2, h, w],
        gate.spatial_weight.dims(),
        conv.stride,
        conv.padding,
        conv.groups,
    )?;
    check_spatial_gate(op, &spatial)?;
    for (t, name) in [(gate.spatial_scale, "scale"), (gate.spatial_shift, "shift")] {
        if t.elem_count() != 1 {
            bail!(
                "{op}: the spatial BatchNorm's {name} must hold one value, got {:?}",
                t.dims()
            )
        }
    }
    let parts = gate
        .tensors()
        .into_iter()
        .map(|t| t.flatten_all())
        .collect::<Result<Vec<_>>>()?;
    // One flat tensor: a candle op takes at most three inputs.
    let packed = Tensor::cat(&parts, 0)?;
    Ok(CbamPlan {
        reduced,
        spatial,
        packed,
    })
}

/// `relu(u * spatial(u) + shortcut)`, `u = z * channel(z)`, over buffers (`z`, `shortcut`:
/// (N, C, pixels)) with the parameters `packed` as [`CbamPlan`] packs them: the op's values.
/// `pooled_maps`, when given, holds the means and then the maxima of `z`'s maps (taken where
/// `z` was written, with `row_means_maxes`' values); without, they are taken here.
pub(crate) fn cbam_join_values(
    (reduced, g): (usize, &ConvGeometry),
    (n, c, p): (usize, usize, usize),
    (z, pooled_maps): (&[f32], Option<Vec<f32>>),
    shortcut: &[f32],
    packed: &[f32],
) -> Vec<f32> {
    let mlp_len = MlpParams::len(c, reduced);
    let w_len = g.groups * g.weight_group_len();
    let (mlp, rest) = packed.split_at(mlp_len);
    let (weight, affine) = rest.split_at(w_len);
    let mlp = MlpParams::split(mlp, c, reduced);
    let channel_gate = match pooled_maps {
        Some(pooled) => channel_gate_of_pooled(pooled, mlp).0,
        None => channel_gate_forward(z, (n, p), mlp).0,
    };
    let (pooled, _) = channel_max_mean_values((n, c, p), z, Some(&channel_gate));
    let logits = conv2d::forward(g, &pooled, weight);
    let mut spatial_gate =
        scale_shift(&logits, (&affine[..1], &affine[1..]), (1, p), (false, None));
    sigmoid_in_place(&mut spatial_gate);
    let gates = (&channel_gate[..], &spatial_gate[..]);
    gated_spatial_join((c, p), z, gates, shortcut)
}

/// The op behind [`cbam_add_relu_eval`]: (`z`, `shortcut`, packed parameters) -> output.
#[derive(Debug)]
struct CbamAddReluEval {
    reduced: usize,
    spatial: ConvGeometry,
}

impl CustomOp3 for CbamAddReluEval {
    fn name(&self) -> &'static str {
        "mtanet-cbam-add-relu-eval"
    }

    fn cpu_fwd(
        &self,
        zs: &CpuStorage,
        zl: &Layout,
        ss: &CpuStorage,
        sl: &Layout,
        ps: &CpuStorage,
        pl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let g = &self.spatial;
        let &[n, c, h, w] = zl.dims() else {
            bail!("cbam_add_relu_eval: input must be (N, C, H, W)")
        };
        let p = h * w;
        let mlp_len = MlpParams::len(c, self.reduced);
        let w_len = g.groups * g.weight_group_len();
        if (n, h, w) != (g.batch, g.in_h, g.in_w) || pl.shape().elem_count() != mlp_len + w_len + 2
        {
            bail!("cbam_add_relu_eval: inputs changed shape since the op was built")
        }
        let z = dense_f32(zs, zl, "input")?;
        let shortcut = dense_f32(ss, sl, "shortcut")?;
        let packed = dense_f32(ps, pl, "parameters")?;
        let y = cbam_join_values((self.reduced, g), (n, c, p), (&z, None), &shortcut, &packed);
        Ok((CpuStorage::F32(y), zl.shape().clone()))
    }

    /// Recomputes the output with the composed ops, from copies of the inputs, and returns
    /// their gradients under `grad_y`: plainly right rather than fast, as nothing differentiates
    /// eval mode in a training step.
    fn bwd(
        &self,
        z: &Tensor,
        shortcut: &Tensor,
        packed: &Tensor,
        _y: &Tensor,
        grad_y: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let vars = [z, shortcut, packed].map(|t| Var::from_tensor(&t.detach()));
        let [zv, sv, pv] = vars;
        let (zv, sv, pv) = (zv?, sv?, pv?);
        let y = self.composed(zv.as_tensor(), sv.as_tensor(), pv.as_tensor())?;
        let grads = (y * grad_y.detach())?.sum_all()?.backward()?;
        let grad = |v: &Var| grads.get(v).cloned();
        Ok((grad(&zv), grad(&sv), grad(&pv)))
    }
}

impl CbamAddReluEval {
    /// The op's output from candle's differentiable ops, with the packed parameters cut into
    /// views: the backbone's composed eval CBAM and `spatial_gate_add_relu`, the sigmoid as
    /// `1 / (exp(-v) + 1)`.
    fn composed(&self, z: &Tensor, shortcut: &Tensor, packed: &Tensor) -> Result<Tensor> {
        let (n, c, _, _) = z.dims4()?;
        let r = self.reduced;
        let g = &self.spatial;
        let mut at = 0;
        let mut take = |len: usize| {
            let t = packed.narrow(0, at, len);
            at += len;
            t
        };
        let reduce_w = take(r * c)?.reshape((r, c))?;
        let reduce_b = take(r)?;
        let expand_w = take(c * r)?.reshape((c, r))?;
        let expand_b = take(c)?;
        let weight = take(g.groups * g.weight_group_len())?.reshape(g.weight_dims())?;
        let (scale, shift) = (take(1)?, take(1)?);
        let sigmoid = |t: &Tensor| (t.neg()?.exp()? + 1.0)?.recip();
        let pooled = crate::spatial_mean_max(z)?.reshape((2 * n, c))?;
        let hidden = pooled
            .matmul(&reduce_w.t()?)?
            .broadcast_add(&reduce_b)?
            .relu()?;
        let att = hidden
            .matmul(&expand_w.t()?)?
            .broadcast_add(&expand_b)?
            .reshape((2, n, c))?
            .sum(0)?;
        let u = crate::channel_gate(z, &sigmoid(&att)?)?;
        let conv = crate::conv2d(
            &crate::channel_max_mean(&u)?,
            &weight,
            g.stride,
            g.padding,
            g.groups,
        )?;
        let logits = crate::channel_affine(&conv, &scale, &shift, false)?;
        crate::spatial_gate_add_relu(&u, &sigmoid(&logits)?, shortcut)
    }
}
