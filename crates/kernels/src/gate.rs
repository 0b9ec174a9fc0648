//! Attention gates as fused ops: `x * gate` with a per-(image, channel) gate (squeeze-excite,
//! CBAM's channel gate) or a per-(image, pixel) gate (CBAM's spatial gate).
//!
//! candle's `broadcast_mul` materialises the broadcast gate for its backward and sums the
//! full-size product back down through strided reductions; here the forward is one pass and
//! the backward one pass for both gradients.
//!
//! The fused ops run f32 tensors on the CPU and, in a `cuda` build, on CUDA (our NVRTC kernels,
//! `cuda/gate.cu`); other dtypes and devices keep candle's composed ops.

use crate::affine_rows::RowAffine;
use crate::conv2d::storage::dense_f32;
use crate::lane_sums::dot_row;
use crate::packed_grads::unpack;
use crate::row_tasks::{par_row_groups, par_rows, written_by, Slot};
use candle_core::{bail, CpuStorage, CustomOp2, Layout, Result, Shape, Tensor};
use rayon::prelude::*;
use std::mem::MaybeUninit;

/// Which axis the gate varies along, besides the image.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Axis {
    /// `gate` is (N, C): one value per channel map.
    Channel,
    /// `gate` is (N, 1, H, W): one value per pixel, shared by the channels.
    Spatial,
}

/// `x * gate[n, c]` for `x` (N, C, H, W) and `gate` (N, C); differentiable in both.
pub fn channel_gate(x: &Tensor, gate: &Tensor) -> Result<Tensor> {
    let (n, c, _, _) = x.dims4()?;
    if gate.dims() != [n, c] {
        bail!(
            "channel_gate: gate {:?} for input {:?}",
            gate.dims(),
            x.dims()
        )
    }
    if crate::fused_ops_apply(&[x, gate]) {
        x.apply_op2(
            gate,
            Gate {
                axis: Axis::Channel,
            },
        )
    } else {
        x.broadcast_mul(&gate.reshape((n, c, 1, 1))?)
    }
}

/// `x * gate[n, 0, h, w]` for `x` (N, C, H, W) and `gate` (N, 1, H, W); differentiable in both.
pub fn spatial_gate(x: &Tensor, gate: &Tensor) -> Result<Tensor> {
    let (n, _, h, w) = x.dims4()?;
    if gate.dims() != [n, 1, h, w] {
        bail!(
            "spatial_gate: gate {:?} for input {:?}",
            gate.dims(),
            x.dims()
        )
    }
    if crate::fused_ops_apply(&[x, gate]) {
        x.apply_op2(
            gate,
            Gate {
                axis: Axis::Spatial,
            },
        )
    } else {
        x.broadcast_mul(gate)
    }
}

/// `max(0, x * gate[n, c] + shortcut)`: a squeeze-excite block's gate and the bottleneck's
/// residual join as one op; differentiable in all three. The same values as
/// `add_relu(&channel_gate(x, gate)?, shortcut)` bit for bit (and the same gradients, up to the
/// sign of zeros), without the gated map and its gradient as full-size tensors in between.
/// f32 on the CPU; elsewhere the two ops.
pub fn channel_gate_add_relu(x: &Tensor, gate: &Tensor, shortcut: &Tensor) -> Result<Tensor> {
    gate_add_relu(x, gate, shortcut, Axis::Channel)
}

/// `max(0, x * gate[n, 0, h, w] + shortcut)`: CBAM's spatial gate and the residual join as one
/// op, as [`channel_gate_add_relu`] is for a channel gate.
pub fn spatial_gate_add_relu(x: &Tensor, gate: &Tensor, shortcut: &Tensor) -> Result<Tensor> {
    gate_add_relu(x, gate, shortcut, Axis::Spatial)
}

fn gate_add_relu(x: &Tensor, gate: &Tensor, shortcut: &Tensor, axis: Axis) -> Result<Tensor> {
    if x.shape() != shortcut.shape() {
        bail!(
            "gate_add_relu: input {:?} and shortcut {:?} differ",
            x.dims(),
            shortcut.dims()
        )
    }
    let on_cpu = [x, gate, shortcut].iter().all(|t| t.device().is_cpu());
    if !(on_cpu && crate::fused_ops_apply(&[x, gate, shortcut])) {
        let gated = match axis {
            Axis::Channel => channel_gate(x, gate)?,
            Axis::Spatial => spatial_gate(x, gate)?,
        };
        return crate::add_relu(&gated, shortcut);
    }
    let (n, c, h, w) = x.dims4()?;
    let want: &[usize] = match axis {
        Axis::Channel => &[n, c],
        Axis::Spatial => &[n, 1, h, w],
    };
    if gate.dims() != want {
        bail!(
            "gate_add_relu: gate {:?} for input {:?}",
            gate.dims(),
            x.dims()
        )
    }
    x.apply_op3(gate, shortcut, GateAddRelu { axis })
}

/// The op behind [`channel_gate_add_relu`] and [`spatial_gate_add_relu`].
#[derive(Clone, Copy, Debug)]
struct GateAddRelu {
    axis: Axis,
}

impl candle_core::CustomOp3 for GateAddRelu {
    fn name(&self) -> &'static str {
        "mtanet-gate-add-relu"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        gs: &CpuStorage,
        gl: &Layout,
        ss: &CpuStorage,
        sl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (_, c, p) = dims(xl)?;
        let x = dense_f32(xs, xl, "input")?;
        let gate = dense_f32(gs, gl, "gate")?;
        let shortcut = dense_f32(ss, sl, "shortcut")?;
        let y = apply_gate(self.axis, (c, p), &x, &gate, Some(&shortcut));
        Ok((CpuStorage::F32(y), xl.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        gate: &Tensor,
        _shortcut: &Tensor,
        y: &Tensor,
        grad_y: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let g = y.apply_op2_no_bwd(grad_y, &crate::residual::ReluMask)?;
        let packed = x.apply_op3_no_bwd(gate, &g, &GateGrad { axis: self.axis })?;
        let [dx, dgate] = unpack(&packed, [x.shape(), gate.shape()])?;
        Ok((Some(dx), Some(dgate), Some(g)))
    }
}

/// `x * gate` (N, C, pixels) along `axis`, then `max(0, . + shortcut)` when there is one, in
/// parallel over the (image, channel) maps.
fn apply_gate(
    axis: Axis,
    shape: (usize, usize),
    x: &[f32],
    gate: &[f32],
    shortcut: Option<&[f32]>,
) -> Vec<f32> {
    // SAFETY: `apply_gate_into` writes every value of its output (one per value of `x`).
    unsafe {
        written_by(x.len(), |y| {
            apply_gate_into(axis, shape, x, gate, shortcut, y)
        })
    }
}

/// [`apply_gate`] into `y` (`x`'s length, every value overwritten).
fn apply_gate_into<T: Slot>(
    axis: Axis,
    (c, p): (usize, usize),
    x: &[f32],
    gate: &[f32],
    shortcut: Option<&[f32]>,
    y: &mut [T],
) {
    let p = p.max(1);
    par_rows(y, p, |row, yr| {
        let r = row * p..row * p + yr.len();
        let (xr, sr) = (&x[r.clone()], shortcut.map(|s| &s[r]));
        match axis {
            Axis::Channel => RowAffine {
                a: gate[row],
                b: None,
                shortcut: sr,
                relu: sr.is_some(),
            }
            .apply_into(xr, yr),
            Axis::Spatial => {
                let g = &gate[(row / c) * p..(row / c + 1) * p];
                match sr {
                    None => yr
                        .iter_mut()
                        .zip(xr.iter().zip(g))
                        .for_each(|(o, (&v, &s))| o.set(v * s)),
                    Some(sr) => yr
                        .iter_mut()
                        .zip(xr.iter().zip(g).zip(sr))
                        .for_each(|(o, ((&v, &s), &b))| o.set((v * s + b).max(0.0))),
                }
            }
        }
    });
}

/// The forward op: (`x`, `gate`) -> `x * gate`.
#[derive(Clone, Copy, Debug)]
struct Gate {
    axis: Axis,
}

/// `(N, C, pixels)` of an NCHW layout.
fn dims(l: &Layout) -> Result<(usize, usize, usize)> {
    match l.dims() {
        &[n, c, h, w] => Ok((n, c, h * w)),
        d => bail!("gate: input must be (N, C, H, W), got {d:?}"),
    }
}

impl CustomOp2 for Gate {
    fn name(&self) -> &'static str {
        "mtanet-gate"
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        xs: &candle_core::CudaStorage,
        xl: &Layout,
        gs: &candle_core::CudaStorage,
        gl: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        let spatial = self.axis == Axis::Spatial;
        let y = crate::cuda::gate::forward((xs, xl), (gs, gl), dims(xl)?, spatial)?;
        Ok((y, xl.shape().clone()))
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        gs: &CpuStorage,
        gl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (_, c, p) = dims(xl)?;
        let x = dense_f32(xs, xl, "input")?;
        let gate = dense_f32(gs, gl, "gate")?;
        let y = apply_gate(self.axis, (c, p), &x, &gate, None);
        Ok((CpuStorage::F32(y), xl.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        gate: &Tensor,
        _y: &Tensor,
        grad_y: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let packed = x.apply_op3_no_bwd(gate, grad_y, &GateGrad { axis: self.axis })?;
        let [dx, dgate] = unpack(&packed, [x.shape(), gate.shape()])?;
        Ok((Some(dx), Some(dgate)))
    }
}

/// Backward: (`x`, `gate`, `grad_y`) -> flat `dx` (x's size) then `dgate` (gate's size).
struct GateGrad {
    axis: Axis,
}

impl candle_core::CustomOp3 for GateGrad {
    fn name(&self) -> &'static str {
        "mtanet-gate-grad"
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        xs: &candle_core::CudaStorage,
        xl: &Layout,
        gs: &candle_core::CudaStorage,
        gl: &Layout,
        ds: &candle_core::CudaStorage,
        dl: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        let spatial = self.axis == Axis::Spatial;
        let out = crate::cuda::gate::backward((xs, xl), (gs, gl), (ds, dl), dims(xl)?, spatial)?;
        let len = xl.shape().elem_count() + gl.shape().elem_count();
        Ok((out, Shape::from(len)))
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        gs: &CpuStorage,
        gl: &Layout,
        ds: &CpuStorage,
        dl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (_, c, p) = dims(xl)?;
        let x = dense_f32(xs, xl, "input")?;
        let gate = dense_f32(gs, gl, "gate")?;
        let dy = dense_f32(ds, dl, "output gradient")?;
        let numel = x.len();
        let mut out = crate::conv2d::zeroed(numel + gate.len());
        let (dx, dgate) = out.split_at_mut(numel);
        match self.axis {
            Axis::Channel => {
                channel_gate_grad(p, (&x, &gate, &dy), dx, dgate);
            }
            Axis::Spatial => spatial_gate_grad((c, p), ((&x, None), &gate, &dy), dx, dgate),
        }
        Ok((CpuStorage::F32(out), Shape::from(numel + gate.len())))
    }
}

/// The gradients of `x * gate[n, c]` (`x` and `dy` of `pixels` values per (image, channel)
/// row, `gate` one value per row): `dx = dy * gate`, `dgate = sum(dy * x)` over each row
/// (in f64), in parallel over the rows.
pub(crate) fn channel_gate_grad(
    pixels: usize,
    (x, gate, dy): (&[f32], &[f32], &[f32]),
    dx: &mut [f32],
    dgate: &mut [f32],
) {
    let p = pixels.max(1);
    par_row_groups((dx, p), dgate, |first, d, dg| {
        let r = first * p..first * p + d.len();
        d.copy_from_slice(&dy[r.clone()]);
        channel_gate_rows_grad(p, d, &x[r], &gate[first..first + dg.len()], dg);
    });
}

/// [`channel_gate_grad`] in place: `d` holds `dy` and receives `dx`, with the same arithmetic.
pub(crate) fn channel_gate_grad_in_place(
    pixels: usize,
    (x, gate): (&[f32], &[f32]),
    d: &mut [f32],
    dgate: &mut [f32],
) {
    let p = pixels.max(1);
    par_row_groups((d, p), dgate, |first, d, dg| {
        let x = &x[first * p..first * p + d.len()];
        channel_gate_rows_grad(p, d, x, &gate[first..first + dg.len()], dg);
    });
}

/// [`channel_gate_grad`] on consecutive rows of `p` values: `d` holds their `dy` and receives
/// `dy * s` (`s` one gate value per row); `dgate` receives each row's `sum(dy * x)`
/// ([`row_dot_sums`], taken before `d` is scaled).
fn channel_gate_rows_grad(p: usize, d: &mut [f32], x: &[f32], s: &[f32], dgate: &mut [f32]) {
    row_dot_sums(p, (d, x), dgate);
    for (row, &sv) in d.chunks_exact_mut(p).zip(s) {
        for v in row {
            *v *= sv;
        }
    }
}

/// Each `p`-long row's `sum(dy * x)` into `sums`: every product rounded to f32, added in f64
/// in 8 lanes ([`dot_row`]), as [`channel_gate_grad`] defines it.
pub(crate) fn row_dot_sums(p: usize, (dy, x): (&[f32], &[f32]), sums: &mut [f32]) {
    assert!(
        dy.len() == x.len() && dy.len() == sums.len() * p,
        "row_dot_sums: lengths"
    );
    for ((dr, xr), o) in dy.chunks_exact(p).zip(x.chunks_exact(p)).zip(sums) {
        *o = dot_row(dr, xr, None) as f32;
    }
}

/// A map `x` (N, channels, pixels) and, when it is to be read channel-gated, the channel gate
/// (one value per (image, channel)).
pub(crate) type GatedMap<'a> = (&'a [f32], Option<&'a [f32]>);

/// The gradients of `x * gate[n, 0, pixel]` (`x` and `dy`: (N, channels, pixels); `gate`: one
/// value per (image, pixel)): `dx = dy * gate`, `dgate = sum(dy * x)` over the channels, in
/// channel order; one image per task. With `x_gate` (one value per (image, channel)), `x` is
/// the product `x * x_gate[n, c]`, formed as `channel_gate` forms it and never stored.
pub(crate) fn spatial_gate_grad(
    (c, p): (usize, usize),
    ((x, x_gate), gate, dy): (GatedMap<'_>, &[f32], &[f32]),
    dx: &mut [f32],
    dgate: &mut [f32],
) {
    dx.par_chunks_mut((c * p).max(1))
        .zip(dgate.par_chunks_mut(p.max(1)))
        .enumerate()
        .for_each(|(image, (dimg, dg))| {
            let s = &gate[image * p..(image + 1) * p];
            dg.fill(0.0);
            for ch in 0..c {
                let r = (image * c + ch) * p..(image * c + ch + 1) * p;
                let dr = &mut dimg[ch * p..(ch + 1) * p];
                for ((d, &g), &sv) in dr.iter_mut().zip(&dy[r.clone()]).zip(s) {
                    *d = g * sv;
                }
                // Times 1 (exactly the value itself) without a channel gate.
                let gc = x_gate.map_or(1.0, |xg| xg[image * c + ch]);
                for ((acc, &g), &v) in dg.iter_mut().zip(&dy[r.clone()]).zip(&x[r]) {
                    *acc += g * (v * gc);
                }
            }
        });
}

/// `max(0, (x * channel_gate[n, c]) * spatial_gate[n, 0, pixel] + shortcut)` over buffers
/// (`x`, `shortcut`: (N, channels, pixels)): [`spatial_gate_add_relu`]'s values over
/// [`channel_gate`]'s, each channel-gated value formed in a register as `channel_gate` forms it.
pub(crate) fn gated_spatial_join(
    (c, p): (usize, usize),
    x: &[f32],
    (channel_gate, spatial_gate): (&[f32], &[f32]),
    shortcut: &[f32],
) -> Vec<f32> {
    assert_eq!(shortcut.len(), x.len(), "gated_spatial_join: shortcut size");
    let p1 = p.max(1);
    let fill = |y: &mut [MaybeUninit<f32>]| {
        par_rows(y, p1, |row, yr| {
            let r = row * p1..row * p1 + yr.len();
            let (xr, sr) = (&x[r.clone()], &shortcut[r]);
            let gc = channel_gate[row];
            let gs = &spatial_gate[(row / c) * p..][..yr.len()];
            for i in 0..yr.len() {
                yr[i].write(((xr[i] * gc) * gs[i] + sr[i]).max(0.0));
            }
        })
    };
    // SAFETY: the rows cover every slot, and each row's every value is written.
    unsafe { written_by(x.len(), fill) }
}

/// [`channel_gate_add_relu`]'s values with `x` as its own output: `x = relu(x * gate[row] +
/// shortcut)` over buffers (`x`, `shortcut`: (N, channels, pixels); `gate`: one value per
/// (image, channel)), without a second buffer to write (the eval squeeze-excite join, whose `x`
/// is not needed after it).
pub(crate) fn channel_gate_add_relu_in_place(
    (_, p): (usize, usize),
    x: &mut [f32],
    gate: &[f32],
    shortcut: &[f32],
) {
    assert_eq!(x.len(), shortcut.len(), "gate: shortcut size");
    let p = p.max(1);
    par_rows(x, p, |row, xr| {
        RowAffine {
            a: gate[row],
            b: None,
            shortcut: Some(&shortcut[row * p..row * p + xr.len()]),
            relu: true,
        }
        .apply_in_place(xr)
    });
}

/// CBAM's channel pooling: `cat([max over C, mean over C], dim 1)`, (N, C, H, W) ->
/// (N, 2, H, W), differentiable. The max's gradient goes to the first maximal channel (as
/// PyTorch's `torch.max(x, 1)` on CPU); candle's reductions over a non-last axis and the
/// concatenation are replaced by one pass over the channel rows.
pub fn channel_max_mean(x: &Tensor) -> Result<Tensor> {
    if crate::fused_ops_apply(&[x]) {
        x.apply_op1(ChannelMaxMean)
    } else {
        Tensor::cat(&[x.max_keepdim(1)?, x.mean_keepdim(1)?], 1)
    }
}

/// The op behind [`channel_max_mean`].
#[derive(Clone, Copy, Debug)]
struct ChannelMaxMean;

/// Per image: the first argmax channel of each pixel, the max and the mean.
/// With `gate`, of `x * gate[c]` (the products as the channel gate computes them, never
/// stored); without, of `x` (each value times 1, exactly itself).
fn max_mean_image(
    x: &[f32],
    gate: Option<&[f32]>,
    (c, p): (usize, usize),
    argmax: &mut [u32],
    out: &mut [f32],
) {
    let scale = |ch: usize| gate.map_or(1.0, |g| g[ch]);
    let (max, mean) = out.split_at_mut(p);
    let g0 = scale(0);
    for ((m, s), &v) in max.iter_mut().zip(mean.iter_mut()).zip(&x[..p]) {
        *m = v * g0;
        *s = v * g0;
    }
    argmax.fill(0);
    for ch in 1..c {
        let row = &x[ch * p..(ch + 1) * p];
        let g = scale(ch);
        for (((m, a), s), &v) in max
            .iter_mut()
            .zip(argmax.iter_mut())
            .zip(mean.iter_mut())
            .zip(row)
        {
            let v = v * g;
            if v > *m || v.is_nan() {
                *m = v;
                *a = ch as u32;
            }
            *s += v;
        }
    }
    let inv = 1.0 / c as f32;
    for s in mean.iter_mut() {
        *s *= inv;
    }
}

impl candle_core::CustomOp1 for ChannelMaxMean {
    fn name(&self) -> &'static str {
        "mtanet-channel-max-mean"
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        xs: &candle_core::CudaStorage,
        xl: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        let (n, c, p) = dims(xl)?;
        if c == 0 {
            bail!("channel_max_mean: no channels")
        }
        let out = crate::cuda::gate::max_mean((xs, xl), (n, c, p))?;
        let d = xl.dims();
        Ok((out, Shape::from((n, 2, d[2], d[3]))))
    }

    fn cpu_fwd(&self, xs: &CpuStorage, xl: &Layout) -> Result<(CpuStorage, Shape)> {
        let (n, c, p) = dims(xl)?;
        if c == 0 {
            bail!("channel_max_mean: no channels")
        }
        let x = dense_f32(xs, xl, "input")?;
        let (out, _) = channel_max_mean_values((n, c, p), &x, None);
        let d = xl.dims();
        Ok((CpuStorage::F32(out), Shape::from((n, 2, d[2], d[3]))))
    }

    fn bwd(&self, x: &Tensor, _y: &Tensor, grad_y: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(x.apply_op2_no_bwd(grad_y, &ChannelMaxMeanGrad)?))
    }
}

/// [`channel_max_mean`]'s values over a buffer `x` (N, C, pixels), C > 0: `(N, 2, pixels)`,
/// and each pixel's first maximal channel `(N, pixels)` for [`channel_max_mean_grad_add`].
/// With `gate` (N, C), of `x * gate[n, c]` ([`channel_gate`]'s values) without storing them.
pub(crate) fn channel_max_mean_values(
    (n, c, p): (usize, usize, usize),
    x: &[f32],
    gate: Option<&[f32]>,
) -> (Vec<f32>, Vec<u32>) {
    let mut out = vec![0f32; n * 2 * p];
    let mut argmax = vec![0u32; n * p];
    out.par_chunks_mut((2 * p).max(1))
        .zip(argmax.par_chunks_mut(p.max(1)))
        .zip(x.par_chunks((c * p).max(1)))
        .enumerate()
        .for_each(|(image, ((o, a), xi))| {
            let gi = gate.map(|g| &g[image * c..(image + 1) * c]);
            max_mean_image(xi, gi, (c, p), a, o)
        });
    (out, argmax)
}

/// `dx += ` [`channel_max_mean`]'s input gradient, from the output gradient `g` (N, 2, pixels)
/// and the maximal channels of [`channel_max_mean_values`]: each value's `g_mean / C`, plus
/// `g_max` on the first maximal channel, added to `dx` as one sum.
pub(crate) fn channel_max_mean_grad_add(
    (c, p): (usize, usize),
    argmax: &[u32],
    g: &[f32],
    dx: &mut [f32],
) {
    let inv = 1.0 / c as f32;
    dx.par_chunks_mut((c * p).max(1))
        .zip(argmax.par_chunks(p.max(1)))
        .zip(g.par_chunks((2 * p).max(1)))
        .for_each(|((dxi, ai), gi)| {
            let (gmax, gmean) = gi.split_at(p);
            for (ch, row) in dxi.chunks_exact_mut(p).enumerate() {
                for (((d, &a), &gm), &ga) in row.iter_mut().zip(ai).zip(gmax).zip(gmean) {
                    *d += ga * inv + if a as usize == ch { gm } else { 0.0 };
                }
            }
        });
}

/// Backward of [`ChannelMaxMean`]: (`x`, `grad_y`) -> `dx`.
struct ChannelMaxMeanGrad;

impl CustomOp2 for ChannelMaxMeanGrad {
    fn name(&self) -> &'static str {
        "mtanet-channel-max-mean-grad"
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        xs: &candle_core::CudaStorage,
        xl: &Layout,
        gs: &candle_core::CudaStorage,
        gl: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        let dx = crate::cuda::gate::max_mean_grad((xs, xl), (gs, gl), dims(xl)?)?;
        Ok((dx, xl.shape().clone()))
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        gs: &CpuStorage,
        gl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (_, c, p) = dims(xl)?;
        let x = dense_f32(xs, xl, "input")?;
        let g = dense_f32(gs, gl, "output gradient")?;
        let mut dx = crate::conv2d::zeroed(x.len());
        let inv = 1.0 / c as f32;
        dx.par_chunks_mut((c * p).max(1))
            .zip(x.par_chunks((c * p).max(1)))
            .zip(g.par_chunks((2 * p).max(1)))
            .for_each(|((dxi, xi), gi)| {
                let mut argmax = vec![0u32; p];
                let mut scratch = vec![0f32; 2 * p];
                max_mean_image(xi, None, (c, p), &mut argmax, &mut scratch);
                let (gmax, gmean) = gi.split_at(p);
                for (ch, row) in dxi.chunks_exact_mut(p).enumerate() {
                    for (((d, &a), &gm), &ga) in row.iter_mut().zip(&argmax).zip(gmax).zip(gmean) {
                        *d = ga * inv + if a as usize == ch { gm } else { 0.0 };
                    }
                }
            });
        Ok((CpuStorage::F32(dx), xl.shape().clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conv2d::{differing_bits, test_values, test_values_fine};

    /// One row of [`channel_gate_grad`] as it is defined: `d` holds `dy` and receives
    /// `dy * s`; returns `sum(dy * x)`, each product rounded to f32 and added in f64, product
    /// `i` of the whole groups of 8 into lane `i % 8`, then the lanes in order, then the rest
    /// in order.
    fn channel_gate_row_grad(d: &mut [f32], x: &[f32], s: f32) -> f32 {
        let whole = d.len() / 8 * 8;
        let (mut lanes, mut tail) = ([0f64; 8], Vec::new());
        for (i, (d, &v)) in d.iter_mut().zip(x).enumerate() {
            let g = *d;
            *d = g * s;
            match i < whole {
                true => lanes[i % 8] += (g * v) as f64,
                false => tail.push((g * v) as f64),
            }
        }
        let mut total: f64 = lanes.iter().sum();
        for v in tail {
            total += v;
        }
        total as f32
    }

    /// The rows give each row's values and sum bit for bit as defined one row at a time, for
    /// rows of 16, 49, 1, 784 and 7 values; the in-place form and the copying form agree.
    #[test]
    fn rows_equal_their_definition_one_row_at_a_time() {
        for (rows, p) in [(3, 16), (8, 49), (21, 1), (37, 784), (17, 7)] {
            // Values of 24 significant bits, so that a product rounded otherwise shows.
            let x = test_values_fine(rows * p, 11);
            // Output gradients on another scale, so that products round.
            let dy: Vec<f32> = test_values_fine(rows * p, 23)
                .iter()
                .map(|v| v * 1.37)
                .collect();
            let gate: Vec<f32> = test_values(rows, 5).iter().map(|v| 0.5 + v / 3.0).collect();
            let mut want_d = dy.clone();
            let want_g: Vec<f32> = (0..rows)
                .map(|r| {
                    let row = r * p..(r + 1) * p;
                    channel_gate_row_grad(&mut want_d[row.clone()], &x[row], gate[r])
                })
                .collect();
            let (mut d, mut g) = (vec![f32::NAN; rows * p], vec![f32::NAN; rows]);
            channel_gate_grad(p, (&x, &gate, &dy), &mut d, &mut g);
            assert_eq!(differing_bits(&d, &want_d), 0, "{rows} rows of {p}: dx");
            assert_eq!(differing_bits(&g, &want_g), 0, "{rows} rows of {p}: dgate");
            let (mut d2, mut g2) = (dy.clone(), vec![f32::NAN; rows]);
            channel_gate_grad_in_place(p, (&x, &gate), &mut d2, &mut g2);
            assert_eq!(
                differing_bits(&d2, &want_d),
                0,
                "{rows} rows of {p}: in place"
            );
            assert_eq!(
                differing_bits(&g2, &want_g),
                0,
                "{rows} rows of {p}: in place"
            );
        }
    }
}
