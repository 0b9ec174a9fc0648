//! A convolution followed by training-mode BatchNorm (and optionally ReLU) as one candle op.
//!
//! Every ResNet convolution feeds a BatchNorm. As two ops, the convolution's output is a node
//! of candle's graph, and candle's backward gives every node's gradient a zero-filled buffer
//! and then adds the op's gradient into it: one allocation, one memset and one full-size add
//! per convolution, on top of the BatchNorm backward's own output. Fused, the BatchNorm
//! gradient of the convolution output lives in a reused scratch buffer for as long as the two
//! convolution gradients need it, and never reaches candle's graph.
//!
//! The arithmetic is the separate ops' own, in the same order (`conv2d`'s passes and
//! `batch_norm`'s statistics and backward), so the results are bit-identical to
//! `batch_norm_train(conv2d(x, w))`; the tests check that.

use crate::batch_norm::{lock, nc_inner, recorded_stats};
pub(crate) use crate::batch_norm_passes::OutputGrad;
use crate::batch_norm_passes::{train_backward, train_forward, Saved as BnSaved};
use crate::conv2d::storage::dense_f32;
use crate::conv2d::{self, ConvGeometry, Scratch};
use crate::fused_operands::fused_conv_geometry;
use crate::lane_sums::lane_sum;
use crate::profile::{conv_label, timed};
use crate::residual::relu_masked;
use crate::BatchStats;
use candle_core::{bail, CpuStorage, CustomOp3, Layout, Result, Shape, Storage, Tensor};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// Stride, padding and groups of the convolution in [`conv_bn_train`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConvParams {
    /// Step between output positions, both axes.
    pub stride: usize,
    /// Zero padding on each side, both axes.
    pub padding: usize,
    /// Channel groups (1 = dense).
    pub groups: usize,
}

/// True when the CPU-only fused ops run these tensors: all f32 on the CPU. They are
/// [`conv_bn_train`], [`conv_bn_add_relu_train`], the eval-mode
/// [`conv_affine_eval`](crate::conv_affine_eval) and
/// [`conv_affine_add_relu_eval`](crate::conv_affine_add_relu_eval), and the spatial pooling.
pub fn conv_bn_applies(ts: &[&Tensor]) -> bool {
    crate::fused_operands::cpu_f32(ts)
}

/// `relu?(batch_norm_train(conv2d(x, w), weight, bias))` as one op, with the batch statistics
/// for the running averages (which the caller owns). Differentiable in `x`, `w`, `weight` and
/// `bias`; the values and gradients equal those of the two separate ops bit for bit.
///
/// f32 on the CPU only ([`conv_bn_applies`]): other devices and dtypes use the separate ops.
pub fn conv_bn_train(
    x: &Tensor,
    w: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    conv: ConvParams,
    eps: f64,
    relu: bool,
) -> Result<(Tensor, BatchStats)> {
    let geometry = fused_conv_geometry(
        "conv_bn_train",
        (x, w),
        ([weight, bias], "weight and bias"),
        None,
        conv,
    )?;
    // One (2C) parameter tensor: a candle op takes at most three inputs.
    let affine = Tensor::cat(&[weight, bias], 0)?;
    let saved = Arc::new(Mutex::new(None));
    let op = ConvBnTrain {
        geometry,
        eps,
        relu,
        residual: false,
        saved: saved.clone(),
    };
    let y = x.apply_op3_arc(
        w,
        &affine,
        Arc::new(Box::new(op) as Box<dyn CustomOp3 + Send + Sync>),
    )?;
    let stats = recorded_stats(&saved, "conv_bn_train", |s: &Saved| &s.bn)?;
    Ok((y, stats))
}

/// `relu(batch_norm_train(conv2d(x, w), weight, bias) + shortcut)` as one op: a bottleneck's
/// last convolution, its BatchNorm and the residual join, with the batch statistics for the
/// running averages. Differentiable in all five inputs; the values and gradients equal those of
/// `add_relu(conv_bn_train(x, w, ..), shortcut)` (up to the sign of zero gradients), without the
/// BatchNorm output and its gradient as full-size tensors in between.
///
/// f32 on the CPU only ([`conv_bn_applies`]).
pub fn conv_bn_add_relu_train(
    x: &Tensor,
    w: &Tensor,
    (weight, bias): (&Tensor, &Tensor),
    shortcut: &Tensor,
    conv: ConvParams,
    eps: f64,
) -> Result<(Tensor, BatchStats)> {
    let geometry = fused_conv_geometry(
        "conv_bn_add_relu_train",
        (x, w),
        ([weight, bias], "weight and bias"),
        Some(shortcut),
        conv,
    )?;
    // The conv weight, BatchNorm weight and bias as one flat tensor: a candle op takes at most
    // three inputs.
    let packed = Tensor::cat(&[&w.flatten_all()?, weight, bias], 0)?;
    let saved = Arc::new(Mutex::new(None));
    let op = ConvBnTrain {
        geometry,
        eps,
        relu: true,
        residual: true,
        saved: saved.clone(),
    };
    let y = x.apply_op3_arc(
        &packed,
        shortcut,
        Arc::new(Box::new(op) as Box<dyn CustomOp3 + Send + Sync>),
    )?;
    let stats = recorded_stats(&saved, "conv_bn_add_relu_train", |s: &Saved| &s.bn)?;
    Ok((y, stats))
}

/// What the forward pass keeps for the backward pass.
#[derive(Debug)]
pub(crate) struct Saved {
    /// The convolution output (the BatchNorm input).
    pub z: Scratch,
    /// The BatchNorm's statistics and weight.
    pub bn: BnSaved,
}

/// The fused op: (`x`, `w`, `[weight; bias]`) -> `y`, or with `residual`
/// (`x`, `[w; weight; bias]`, `shortcut`) -> `relu(bn + shortcut)`.
#[derive(Debug)]
struct ConvBnTrain {
    geometry: ConvGeometry,
    eps: f64,
    relu: bool,
    residual: bool,
    saved: Arc<Mutex<Option<Saved>>>,
}

/// [`cpu_values`](crate::fused_operands::cpu_values) of this file's op.
fn cpu_values<'a>(
    storage: &'a Storage,
    layout: &Layout,
    what: &str,
) -> Result<std::borrow::Cow<'a, [f32]>> {
    crate::fused_operands::cpu_values("conv_bn_train", storage, layout, what)
}

impl CustomOp3 for ConvBnTrain {
    fn name(&self) -> &'static str {
        "mtanet-conv-bn-train"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let g = &self.geometry;
        let (w_len, c) = (g.groups * g.weight_group_len(), g.out_channels);
        let out_len = g.units() * g.out_unit_len();
        let shapes_hold = if self.residual {
            l2.shape().elem_count() == w_len + 2 * c && l3.shape().elem_count() == out_len
        } else {
            l2.dims() == Shape::from(g.weight_dims()).dims()
        };
        if xl.dims() != Shape::from(g.input_dims()).dims() || !shapes_hold {
            bail!("conv_bn_train: inputs changed shape since the op was built")
        }
        let x = dense_f32(xs, xl, "input")?;
        let second = dense_f32(s2, l2, "conv weight")?;
        let third = dense_f32(s3, l3, "BatchNorm weight and bias, or shortcut")?;
        let (w, affine, shortcut) = if self.residual {
            let (w, affine) = second.split_at(w_len);
            (w, affine, Some(&third[..]))
        } else {
            (&second[..], &third[..], None)
        };
        let relu = self.relu && shortcut.is_none();
        let (y, saved) = stage_forward(g, &x, w, affine, (self.eps, relu), (shortcut, None))?;
        *lock(&self.saved)? = Some(saved);
        Ok((CpuStorage::F32(y), Shape::from(g.output_dims())))
    }

    /// With a residual, the ReLU mask is the final output's (`y > 0`, exactly where the
    /// BatchNorm output plus the shortcut passed): the masked `grad_y` is the shortcut's
    /// gradient, and the BatchNorm backward (without ReLU) takes it as its output gradient.
    /// Without a residual the BatchNorm backward recomputes its own ReLU mask from `z`.
    fn bwd(
        &self,
        x: &Tensor,
        second: &Tensor,
        third: &Tensor,
        y: &Tensor,
        grad_y: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let g = &self.geometry;
        let saved = lock(&self.saved)?;
        let Some(s) = saved.as_ref() else {
            bail!("conv_bn_train: backward before forward")
        };
        let (xs, xl) = x.storage_and_layout();
        let (ws, wl) = second.storage_and_layout();
        let (gs, gl) = grad_y.storage_and_layout();
        let xv = cpu_values(&xs, xl, "input")?;
        let second_values = cpu_values(&ws, wl, "conv weight")?;
        let w_len = g.groups * g.weight_group_len();
        let wv = &second_values[..w_len];
        let gv = cpu_values(&gs, gl, "output gradient")?;
        let dshortcut = if self.residual {
            let (ys, yl) = y.storage_and_layout();
            let yv = cpu_values(&ys, yl, "output")?;
            Some(relu_masked(&yv, &gv))
        } else {
            None
        };
        let grad_bn = dshortcut.as_deref().unwrap_or(&gv);
        let relu = self.relu && dshortcut.is_none();
        let grads = stage_backward(
            g,
            s,
            (&xv, wv),
            OutputGrad::Values(grad_bn),
            relu,
            x.track_op(),
        );
        let Some(dshortcut) = dshortcut else {
            return grads.into_tensors(x, second);
        };
        let StageGrads {
            dx,
            dw,
            dgamma,
            dbeta,
        } = grads;
        let device = x.device();
        let dx = dx
            .map(|v| Tensor::from_vec(v.into_vec(), x.shape(), device))
            .transpose()?;
        let dpacked = Tensor::from_vec([dw, dgamma, dbeta].concat(), second.shape(), device)?;
        let dshortcut = Tensor::from_vec(dshortcut, third.shape(), device)?;
        Ok((dx, Some(dpacked), Some(dshortcut)))
    }
}

/// The forward of one convolution + training BatchNorm: `relu?(bn(conv(x, w)))`, or with a
/// `shortcut`, `relu(bn(conv(x, w)) + shortcut)` (`relu` is then ignored). `affine` holds the
/// BatchNorm weight, then its bias. With `means` (one slot per (image, channel) map, and no
/// shortcut) the output is not kept: each output map's mean goes there and the returned output
/// is empty (`train_forward`). Returns the output and what [`stage_backward`] needs.
pub(crate) fn stage_forward(
    g: &ConvGeometry,
    x: &[f32],
    w: &[f32],
    affine: &[f32],
    (eps, relu): (f64, bool),
    (shortcut, means): (Option<&[f32]>, Option<&mut [f32]>),
) -> Result<(Vec<f32>, Saved)> {
    let (n, c, inner) = nc_inner(&[g.batch, g.out_channels, g.out_h, g.out_w], "conv_bn")?;
    if n * inner < 2 {
        bail!("conv_bn_train: need more than one value per channel, got {n} x {inner}")
    }
    let (gamma, beta) = affine.split_at(c);
    let relu = relu && shortcut.is_none();
    // The convolution output lives until the backward pass (or the graph) drops it, then
    // returns to this thread's pool for the next step's layers.
    let mut z = Scratch::take(g.units() * g.out_unit_len());
    // Each (image, channel) row's sum for the BatchNorm mean, taken in the convolution's
    // epilogue while the row is in cache (f64 bits; every slot written once).
    let row_sums: Vec<AtomicU64> = (0..n * c).map(|_| AtomicU64::new(0)).collect();
    let group_channels = g.group_out_channels();
    timed(
        || conv_label(g, "fwd"),
        || {
            conv2d::forward_into_then(g, x, w, &mut z, &|unit, z_unit| {
                let first = (unit / g.groups) * c + (unit % g.groups) * group_channels;
                for (slot, row) in row_sums[first..].iter().zip(z_unit.chunks_exact(inner)) {
                    slot.store(lane_sum(row, |v| v).to_bits(), Ordering::Relaxed);
                }
            })
        },
    );
    let row_sums: Vec<f64> = row_sums
        .into_iter()
        .map(|s| f64::from_bits(s.into_inner()))
        .collect();
    let (y, bn) = timed(
        || format!("bn @{} fwd", g.out_h),
        || {
            // With a shortcut, `add_relu`'s expression on the BatchNorm output, in the same pass.
            train_forward(
                &z,
                (n, c, inner),
                (gamma, beta),
                (eps, relu),
                Some(&row_sums),
                (shortcut, means),
            )
        },
    );
    Ok((y, Saved { z, bn }))
}

/// The gradients of one [`stage_forward`].
pub(crate) struct StageGrads {
    /// Input gradient (`None` when not asked for), in a pooled buffer.
    pub dx: Option<Scratch>,
    /// Convolution weight gradient.
    pub dw: Vec<f32>,
    /// BatchNorm weight gradient.
    pub dgamma: Vec<f32>,
    /// BatchNorm bias gradient.
    pub dbeta: Vec<f32>,
}

impl StageGrads {
    /// The gradients as an op over (`x`, `w`, `[weight; bias]`) returns them: the input's (when
    /// asked for) shaped as `x`, the conv weight's as `w`, the BatchNorm's weight and bias as one
    /// `2C` tensor.
    pub(crate) fn into_tensors(
        self,
        x: &Tensor,
        w: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let device = x.device();
        let dx = self
            .dx
            .map(|v| Tensor::from_vec(v.into_vec(), x.shape(), device))
            .transpose()?;
        let channels = self.dgamma.len() + self.dbeta.len();
        let dw = Tensor::from_vec(self.dw, w.shape(), device)?;
        let daffine = Tensor::from_vec([self.dgamma, self.dbeta].concat(), channels, device)?;
        Ok((dx, Some(dw), Some(daffine)))
    }
}

/// The backward of one [`stage_forward`] over input `x` and weight `w`, given the gradient of
/// the BatchNorm output `grad_bn` (for a stage with a shortcut, the output gradient masked by
/// [`relu_masked`], with `relu` false); `relu` recomputes the stage's own ReLU mask.
pub(crate) fn stage_backward(
    g: &ConvGeometry,
    s: &Saved,
    (x, w): (&[f32], &[f32]),
    grad_bn: OutputGrad<'_>,
    relu: bool,
    want_dx: bool,
) -> StageGrads {
    let dims = (g.batch, g.out_channels, g.out_h * g.out_w);
    let mut dz = Scratch::take(s.z.len());
    let (dgamma, dbeta) = timed(
        || format!("bn @{} bwd", g.out_h),
        || train_backward(&s.z, grad_bn, dims, &s.bn, relu, &mut dz),
    );
    let dw = timed(|| conv_label(g, "dw"), || conv2d::weight_grad(g, x, &dz));
    let dx = want_dx.then(|| {
        // A pooled buffer: every value is written, so no zero-fill of a fresh one.
        let mut dx = Scratch::take(g.units() * g.in_unit_len());
        timed(
            || conv_label(g, "dx"),
            || conv2d::input_grad_into(g, &dz, w, &mut dx),
        );
        dx
    });
    StageGrads {
        dx,
        dw,
        dgamma,
        dbeta,
    }
}
