//! Eval-mode convolution followed by its BatchNorm (+ ReLU, or + a residual and ReLU) as one op.
//!
//! In evaluation a BatchNorm is the per-channel affine `z * scale[c] + shift[c]` with
//! `scale = weight / sqrt(running_var + eps)` and `shift = bias - running_mean * scale`. As a
//! separate op it reads and writes the whole convolution output once more. Here it is the
//! convolution's epilogue: each (image, group) block of the output gets its scale, shift and
//! ReLU right after its GEMM writes it, while it is still in cache, so the eval forward makes
//! no separate pass over activations for any BatchNorm.
//!
//! The affine is applied to the convolution's own output with the same expression as
//! [`channel_affine`](crate::channel_affine) (`z * a + b`, then `max(0, .)`), so the values are
//! bit-identical to `channel_affine(conv2d(x, w), scale, shift, relu)`; the tests check that.
//! Multiplying `scale` into the weights instead would change the rounding and cost a pass over
//! every weight per forward, for no saving over the epilogue.
//!
//! A bottleneck's last convolution also takes the residual join into its epilogue
//! ([`conv_affine_add_relu_eval`]: `relu(bn(conv(x)) + shortcut)`, bit-identical to
//! `add_relu(channel_affine(..), shortcut)`), so the block output is written once.
//!
//! Eval mode stays differentiable (gradients of a model in eval mode, BatchNorm frozen): the
//! backward recomputes the convolution output rather than keeping it, since evaluation, the
//! common case, never asks for it.

use crate::affine_rows::RowAffine;
use crate::conv2d::storage::dense_f32;
use crate::conv2d::{self, ConvGeometry, WeightPacks};
use crate::fused_operands::fused_conv_geometry;
use crate::profile::{conv_label, timed};
use crate::spatial_pool::{row_max, row_mean};
use crate::ConvParams;
use candle_core::{bail, CpuStorage, CustomOp3, Layout, Result, Shape, Storage, Tensor};
use rayon::prelude::*;
use std::sync::atomic::{AtomicU32, Ordering};

/// `relu?(conv2d(x, w) * scale[c] + shift[c])` as one op: a BatchNorm in eval mode as the
/// epilogue of the convolution that feeds it. Differentiable in all four inputs.
///
/// f32 on the CPU only ([`conv_bn_applies`](crate::conv_bn_applies)); `scale` and `shift` have one value per output
/// channel.
pub fn conv_affine_eval(
    x: &Tensor,
    w: &Tensor,
    scale: &Tensor,
    shift: &Tensor,
    conv: ConvParams,
    relu: bool,
) -> Result<Tensor> {
    let geometry = fused_conv_geometry(
        "conv_affine_eval",
        (x, w),
        ([scale, shift], "scale and shift"),
        None,
        conv,
    )?;
    // One (2C) tensor: a candle op takes at most three inputs.
    let affine = Tensor::cat(&[scale, shift], 0)?;
    x.apply_op3(w, &affine, ConvAffineEval { geometry, relu })
}

/// `relu(conv2d(x, w) * scale[c] + shift[c] + shortcut)` as one op: the last convolution of a
/// bottleneck, its eval-mode BatchNorm and the residual join. Differentiable in all five inputs.
///
/// f32 on the CPU only ([`conv_bn_applies`](crate::conv_bn_applies)); `shortcut` has the output's shape.
pub fn conv_affine_add_relu_eval(
    x: &Tensor,
    w: &Tensor,
    scale: &Tensor,
    shift: &Tensor,
    shortcut: &Tensor,
    conv: ConvParams,
) -> Result<Tensor> {
    let geometry = fused_conv_geometry(
        "conv_affine_add_relu_eval",
        (x, w),
        ([scale, shift], "scale and shift"),
        Some(shortcut),
        conv,
    )?;
    // The weight, scale and shift as one flat tensor: a candle op takes at most three inputs.
    let packed = Tensor::cat(&[&w.flatten_all()?, scale, shift], 0)?;
    x.apply_op3(&packed, shortcut, ConvAffineAddReluEval { geometry })
}

/// The op behind [`conv_affine_eval`]: (`x`, `w`, `[scale; shift]`) -> `y`.
#[derive(Clone, Copy, Debug)]
struct ConvAffineEval {
    geometry: ConvGeometry,
    relu: bool,
}

/// The op behind [`conv_affine_add_relu_eval`]: (`x`, `[w; scale; shift]`, `shortcut`) -> `y`.
#[derive(Clone, Copy, Debug)]
struct ConvAffineAddReluEval {
    geometry: ConvGeometry,
}

/// [`cpu_values`](crate::fused_operands::cpu_values) of this file's ops.
fn cpu_values<'a>(
    storage: &'a Storage,
    layout: &Layout,
    what: &str,
) -> Result<std::borrow::Cow<'a, [f32]>> {
    crate::fused_operands::cpu_values("conv_affine_eval", storage, layout, what)
}

/// Checks the input's shape against the geometry.
fn check_input(g: &ConvGeometry, x_layout: &Layout) -> Result<()> {
    let in_dims = Shape::from(g.input_dims());
    if x_layout.dims() != in_dims.dims() {
        bail!(
            "conv_affine_eval: expected input {in_dims:?}, got {:?}",
            x_layout.dims()
        )
    }
    Ok(())
}

/// `relu?(conv(x, w) * scale[c] + shift[c] (+ shortcut))`, the affine (and the shortcut) as the
/// convolution's epilogue; with a shortcut the ReLU always applies.
fn forward_values(
    g: &ConvGeometry,
    x: &[f32],
    w: &[f32],
    affine: (&[f32], &[f32]),
    shortcut: Option<&[f32]>,
    relu: bool,
) -> Vec<f32> {
    let mut y = conv2d::zeroed(g.batch * g.out_channels * g.out_pixels());
    forward_values_into(g, x, (w, None), affine, shortcut, relu, (&mut y, None));
    y
}

/// Per (image, channel) row of a convolution's output, the mean (`row_means`' value) and,
/// when asked for, the maximum (`row_means_maxes`'), written by [`forward_values_into`]'s
/// epilogue as f32 bits.
pub(crate) struct RowPool {
    means: Vec<AtomicU32>,
    maxes: Option<Vec<AtomicU32>>,
}

impl RowPool {
    /// Slots for `rows` means, and for as many maxima when `with_maxes`.
    pub(crate) fn new(rows: usize, with_maxes: bool) -> Self {
        let slots = || (0..rows).map(|_| AtomicU32::new(0)).collect();
        Self {
            means: slots(),
            maxes: with_maxes.then(slots),
        }
    }

    /// Rows it holds.
    fn rows(&self) -> usize {
        self.means.len()
    }

    /// Takes row `at`'s pooling of `values`.
    fn store(&self, at: usize, values: &[f32]) {
        self.means[at].store(row_mean(values).to_bits(), Ordering::Relaxed);
        if let Some(maxes) = &self.maxes {
            maxes[at].store(row_max(values).to_bits(), Ordering::Relaxed);
        }
    }

    /// Every row's mean, then (if taken) every row's maximum.
    pub(crate) fn into_values(self) -> Vec<f32> {
        let maxes = self.maxes.unwrap_or_default();
        self.means
            .into_iter()
            .chain(maxes)
            .map(|s| f32::from_bits(s.into_inner()))
            .collect()
    }
}

/// [`forward_values`] into `y` (`N * C_out * OH*OW` values, every one overwritten, so a reused
/// buffer needs no clearing). With a [`RowPool`], also the mean (and the maximum) of each
/// (image, channel) row of the output, taken in the epilogue while the row is in cache. With
/// the layer's [`WeightPacks`] beside `w`, the weight layouts the kernels derive are kept there.
pub(crate) fn forward_values_into(
    g: &ConvGeometry,
    x: &[f32],
    w: (&[f32], Option<&WeightPacks>),
    (scale, shift): (&[f32], &[f32]),
    shortcut: Option<&[f32]>,
    relu: bool,
    (y, pool): (&mut [f32], Option<&RowPool>),
) {
    let (per_group, pixels) = (g.group_out_channels(), g.out_pixels());
    assert!(pool.is_none_or(|p| p.rows() == g.batch * g.out_channels));
    let epilogue = |unit: usize, y_unit: &mut [f32]| {
        let first = (unit % g.groups) * per_group;
        let base = unit * per_group * pixels;
        let image_rows = (unit / g.groups) * g.out_channels;
        for (row, values) in y_unit.chunks_exact_mut(pixels).enumerate() {
            let start = base + row * pixels;
            RowAffine {
                a: scale[first + row],
                b: Some(shift[first + row]),
                shortcut: shortcut.map(|s| &s[start..start + pixels]),
                relu: relu || shortcut.is_some(),
            }
            .apply_in_place(values);
            if let Some(pool) = pool {
                pool.store(image_rows + first + row, values);
            }
        }
    };
    let label = || {
        conv_label(
            g,
            if shortcut.is_some() {
                "eval+add"
            } else {
                "eval"
            },
        )
    };
    timed(label, || {
        conv2d::eval_forward_into_then(g, x, w, y, &epilogue)
    });
}

/// Gradients of [`forward_values`]: with `g' = dy` where the output passed the ReLU (all of
/// `dy` without one) and the recomputed convolution output `z`: `dshift[c] = sum g'`,
/// `dscale[c] = sum g' z` (f64 sums over the images in order, per channel),
/// `dz = g' * scale[c]`, then the convolution's input (when `need_dx`) and weight gradients of
/// `dz`. Returns `(dx, dw, [dscale; dshift], g')`; `g'` is the shortcut's gradient.
fn backward_values(
    g: &ConvGeometry,
    (x, w, scale): (&[f32], &[f32], &[f32]),
    (y, dy): (&[f32], &[f32]),
    relu: bool,
    need_dx: bool,
) -> (Option<Vec<f32>>, Vec<f32>, Vec<f32>, Vec<f32>) {
    let (c, p) = (g.out_channels, g.out_pixels().max(1));
    // The evaluation forward's output, as the op's forward computed it.
    let mut z = conv2d::zeroed(g.units() * g.out_unit_len());
    conv2d::eval_forward_into_then(g, x, (w, None), &mut z, &|_, _| {});
    let (mut passed, mut dz) = (conv2d::zeroed(dy.len()), conv2d::zeroed(dy.len()));
    passed
        .par_chunks_mut(p)
        .zip(dz.par_chunks_mut(p))
        .zip(y.par_chunks(p).zip(dy.par_chunks(p)))
        .enumerate()
        .for_each(|(row, ((pr, zr), (yr, dr)))| {
            let a = scale[row % c];
            for (((o, dzv), &yv), &d) in pr.iter_mut().zip(zr).zip(yr).zip(dr) {
                *o = if relu && yv <= 0.0 { 0.0 } else { d };
                *dzv = *o * a;
            }
        });
    let sums: Vec<(f64, f64)> = (0..c)
        .into_par_iter()
        .map(|ch| {
            let (mut sum_gz, mut sum_g) = (0f64, 0f64);
            for image in 0..g.batch {
                let r = (image * c + ch) * p..(image * c + ch + 1) * p;
                for (&d, &zv) in passed[r.clone()].iter().zip(&z[r]) {
                    sum_gz += (d * zv) as f64;
                    sum_g += d as f64;
                }
            }
            (sum_gz, sum_g)
        })
        .collect();
    let dw = conv2d::weight_grad(g, x, &dz);
    let dx = need_dx.then(|| conv2d::input_grad(g, &dz, w));
    let daffine = sums
        .iter()
        .map(|s| s.0 as f32)
        .chain(sums.iter().map(|s| s.1 as f32))
        .collect();
    (dx, dw, daffine, passed)
}

impl CustomOp3 for ConvAffineEval {
    fn name(&self) -> &'static str {
        "mtanet-conv-affine-eval"
    }

    fn cpu_fwd(
        &self,
        x_storage: &CpuStorage,
        x_layout: &Layout,
        w_storage: &CpuStorage,
        w_layout: &Layout,
        a_storage: &CpuStorage,
        a_layout: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let g = &self.geometry;
        check_input(g, x_layout)?;
        let w_dims = Shape::from(g.weight_dims());
        if w_layout.dims() != w_dims.dims() {
            bail!(
                "conv_affine_eval: expected weight {w_dims:?}, got {:?}",
                w_layout.dims()
            )
        }
        let x = dense_f32(x_storage, x_layout, "input")?;
        let w = dense_f32(w_storage, w_layout, "weight")?;
        let affine = dense_f32(a_storage, a_layout, "scale and shift")?;
        let y = forward_values(g, &x, &w, affine.split_at(g.out_channels), None, self.relu);
        Ok((CpuStorage::F32(y), Shape::from(g.output_dims())))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        affine: &Tensor,
        y: &Tensor,
        grad_y: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let g = &self.geometry;
        let (xs, xl) = x.storage_and_layout();
        let (ws, wl) = w.storage_and_layout();
        let (afs, afl) = affine.storage_and_layout();
        let (ys, yl) = y.storage_and_layout();
        let (gs, gl) = grad_y.storage_and_layout();
        let xv = cpu_values(&xs, xl, "input")?;
        let wv = cpu_values(&ws, wl, "weight")?;
        let av = cpu_values(&afs, afl, "scale and shift")?;
        let yv = cpu_values(&ys, yl, "output")?;
        let gv = cpu_values(&gs, gl, "output gradient")?;
        let scale = &av[..g.out_channels];
        let (dx, dw, daffine, _) =
            backward_values(g, (&xv, &wv, scale), (&yv, &gv), self.relu, x.track_op());
        let device = x.device();
        let dx = dx
            .map(|v| Tensor::from_vec(v, x.shape(), device))
            .transpose()?;
        let dw = Tensor::from_vec(dw, w.shape(), device)?;
        let daffine = Tensor::from_vec(daffine, affine.shape(), device)?;
        Ok((dx, Some(dw), Some(daffine)))
    }
}

impl CustomOp3 for ConvAffineAddReluEval {
    fn name(&self) -> &'static str {
        "mtanet-conv-affine-add-relu-eval"
    }

    fn cpu_fwd(
        &self,
        x_storage: &CpuStorage,
        x_layout: &Layout,
        p_storage: &CpuStorage,
        p_layout: &Layout,
        s_storage: &CpuStorage,
        s_layout: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let g = &self.geometry;
        check_input(g, x_layout)?;
        let x = dense_f32(x_storage, x_layout, "input")?;
        let packed = dense_f32(p_storage, p_layout, "weight, scale and shift")?;
        let shortcut = dense_f32(s_storage, s_layout, "shortcut")?;
        let w_len = g.groups * g.weight_group_len();
        if packed.len() != w_len + 2 * g.out_channels
            || shortcut.len() != g.out_channels * g.out_pixels() * g.batch
        {
            bail!("conv_affine_add_relu_eval: operands changed shape since the op was built")
        }
        let (w, affine) = packed.split_at(w_len);
        let y = forward_values(
            g,
            &x,
            w,
            affine.split_at(g.out_channels),
            Some(&shortcut),
            true,
        );
        Ok((CpuStorage::F32(y), Shape::from(g.output_dims())))
    }

    fn bwd(
        &self,
        x: &Tensor,
        packed: &Tensor,
        shortcut: &Tensor,
        y: &Tensor,
        grad_y: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let g = &self.geometry;
        let (xs, xl) = x.storage_and_layout();
        let (ps, pl) = packed.storage_and_layout();
        let (ys, yl) = y.storage_and_layout();
        let (gs, gl) = grad_y.storage_and_layout();
        let xv = cpu_values(&xs, xl, "input")?;
        let pv = cpu_values(&ps, pl, "weight, scale and shift")?;
        let yv = cpu_values(&ys, yl, "output")?;
        let gv = cpu_values(&gs, gl, "output gradient")?;
        let w_len = pv.len() - 2 * g.out_channels;
        let (w, scale) = (&pv[..w_len], &pv[w_len..w_len + g.out_channels]);
        let (dx, dw, daffine, passed) =
            backward_values(g, (&xv, w, scale), (&yv, &gv), true, x.track_op());
        let device = x.device();
        let dx = dx
            .map(|v| Tensor::from_vec(v, x.shape(), device))
            .transpose()?;
        let dpacked = Tensor::from_vec([dw, daffine].concat(), packed.shape(), device)?;
        let dshortcut = Tensor::from_vec(passed, shortcut.shape(), device)?;
        Ok((dx, Some(dpacked), Some(dshortcut)))
    }
}
