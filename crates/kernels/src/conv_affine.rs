//! Eval-mode convolution followed by its BatchNorm (+ ReLU) as one op.
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
//! Eval mode stays differentiable (gradients of a model in eval mode, BatchNorm frozen): the
//! backward recomputes the convolution output rather than keeping it, since evaluation, the
//! common case, never asks for it.

use crate::conv2d::storage::dense_f32;
use crate::conv2d::{self, ConvGeometry};
use crate::ConvParams;
use candle_core::{bail, CpuStorage, CustomOp3, DType, Layout, Result, Shape, Storage, Tensor};
use rayon::prelude::*;

/// True when [`conv_affine_eval`] runs these tensors: all f32 on the CPU.
pub fn conv_affine_applies(ts: &[&Tensor]) -> bool {
    ts.iter()
        .all(|t| t.device().is_cpu() && t.dtype() == DType::F32)
}

/// `relu?(conv2d(x, w) * scale[c] + shift[c])` as one op: a BatchNorm in eval mode as the
/// epilogue of the convolution that feeds it. Differentiable in all four inputs.
///
/// f32 on the CPU only ([`conv_affine_applies`]); `scale` and `shift` have one value per output
/// channel.
pub fn conv_affine_eval(
    x: &Tensor,
    w: &Tensor,
    scale: &Tensor,
    shift: &Tensor,
    conv: ConvParams,
    relu: bool,
) -> Result<Tensor> {
    if !conv_affine_applies(&[x, w, scale, shift]) {
        bail!("conv_affine_eval: f32 tensors on the CPU only")
    }
    let geometry = ConvGeometry::new(x.dims(), w.dims(), conv.stride, conv.padding, conv.groups)?;
    let c = geometry.out_channels;
    if scale.dims() != [c] || shift.dims() != [c] {
        bail!(
            "conv_affine_eval: scale and shift must be ({c}), got {:?} and {:?}",
            scale.dims(),
            shift.dims()
        )
    }
    // One (2C) tensor: a candle op takes at most three inputs.
    let affine = Tensor::cat(&[scale, shift], 0)?;
    x.apply_op3(w, &affine, ConvAffineEval { geometry, relu })
}

/// The op behind [`conv_affine_eval`]: (`x`, `w`, `[scale; shift]`) -> `y`.
#[derive(Clone, Copy, Debug)]
struct ConvAffineEval {
    geometry: ConvGeometry,
    relu: bool,
}

/// The dense f32 values of a CPU tensor.
fn cpu_values<'a>(
    storage: &'a Storage,
    layout: &Layout,
    what: &str,
) -> Result<std::borrow::Cow<'a, [f32]>> {
    match storage {
        Storage::Cpu(s) => dense_f32(s, layout, what),
        _ => bail!("conv_affine_eval: {what} is not on the CPU"),
    }
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
        let (in_dims, w_dims) = (Shape::from(g.input_dims()), Shape::from(g.weight_dims()));
        if x_layout.dims() != in_dims.dims() || w_layout.dims() != w_dims.dims() {
            bail!(
                "conv_affine_eval: expected input {in_dims:?} and weight {w_dims:?}, got {:?} and {:?}",
                x_layout.dims(),
                w_layout.dims()
            )
        }
        let x = dense_f32(x_storage, x_layout, "input")?;
        let w = dense_f32(w_storage, w_layout, "weight")?;
        let affine = dense_f32(a_storage, a_layout, "scale and shift")?;
        let (scale, shift) = affine.split_at(g.out_channels);
        let mut y = vec![0f32; g.batch * g.out_channels * g.out_pixels()];
        let (per_group, pixels) = (g.group_out_channels(), g.out_pixels());
        let epilogue = |unit: usize, y_unit: &mut [f32]| {
            let first = (unit % g.groups) * per_group;
            for (row, values) in y_unit.chunks_exact_mut(pixels).enumerate() {
                let (a, b) = (scale[first + row], shift[first + row]);
                if self.relu {
                    for v in values.iter_mut() {
                        *v = (*v * a + b).max(0.0);
                    }
                } else {
                    for v in values.iter_mut() {
                        *v = *v * a + b;
                    }
                }
            }
        };
        conv2d::forward_into_then(g, &x, &w, &mut y, &epilogue);
        Ok((CpuStorage::F32(y), Shape::from(g.output_dims())))
    }

    /// With `g' = dy` where the output passed the ReLU (all of `dy` without one) and the
    /// recomputed convolution output `z`: `dshift[c] = sum g'`, `dscale[c] = sum g' z` (f64
    /// sums over the images in order, per channel), `dz = g' * scale[c]`, then the
    /// convolution's input and weight gradients of `dz`.
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
        let (c, p) = (g.out_channels, g.out_pixels());
        let scale = &av[..c];
        let z = conv2d::forward(g, &xv, &wv);
        let relu = self.relu;
        let passed = |row: usize| {
            let r = row * p..(row + 1) * p;
            yv[r.clone()]
                .iter()
                .zip(&gv[r])
                .map(move |(&y, &d)| if relu && y <= 0.0 { 0.0 } else { d })
        };
        let mut dz = vec![0f32; z.len()];
        dz.par_chunks_mut(p.max(1))
            .enumerate()
            .for_each(|(row, out)| {
                let a = scale[row % c];
                for (o, d) in out.iter_mut().zip(passed(row)) {
                    *o = d * a;
                }
            });
        let sums: Vec<(f64, f64)> = (0..c)
            .into_par_iter()
            .map(|ch| {
                let (mut sum_gz, mut sum_g) = (0f64, 0f64);
                for image in 0..g.batch {
                    let row = image * c + ch;
                    for (d, &zv) in passed(row).zip(&z[row * p..(row + 1) * p]) {
                        sum_gz += (d * zv) as f64;
                        sum_g += d as f64;
                    }
                }
                (sum_gz, sum_g)
            })
            .collect();
        let dw = conv2d::weight_grad(g, &xv, &dz);
        let dx = if x.track_op() {
            Some(conv2d::input_grad(g, &dz, &wv))
        } else {
            None
        };
        let device = x.device();
        let dx = dx
            .map(|v| Tensor::from_vec(v, x.shape(), device))
            .transpose()?;
        let dw = Tensor::from_vec(dw, w.shape(), device)?;
        let daffine: Vec<f32> = sums
            .iter()
            .map(|s| s.0 as f32)
            .chain(sums.iter().map(|s| s.1 as f32))
            .collect();
        let daffine = Tensor::from_vec(daffine, 2 * c, device)?;
        Ok((dx, Some(dw), Some(daffine)))
    }
}
