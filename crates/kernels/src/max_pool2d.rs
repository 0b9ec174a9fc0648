//! Trainable 2-D max-pool (padding, ceil mode) as a candle `CustomOp1`.
//!
//! Forward and backward follow PyTorch's CPU kernel (`aten/src/ATen/native/cpu/MaxPoolKernel.cpp`):
//! each window keeps the FIRST maximum in row-major order (`val > max || isnan(val)`), padded
//! cells and cells past the edge in ceil mode never take part, and the backward pass adds each
//! output gradient to that argmax cell.

use crate::max_pool2d_rows as rows;
use crate::pool_geometry::PoolGeometry;
use crate::profile::timed;
use candle_core::backend::BackendStorage;
use candle_core::{
    bail, CpuStorage, CustomOp1, CustomOp2, DType, Layout, Result, Shape, Tensor, D,
};
use rayon::prelude::*;

/// Max-pools an NCHW tensor with a square `kernel`, `stride` and symmetric zero-cost `padding`
/// (padded cells never win), optionally in PyTorch's ceil mode. Differentiable.
///
/// On CPU this runs [`MaxPool2d`], whose gradient goes to the first maximum of each window
/// exactly as in PyTorch; on CUDA (a `cuda` build) our NVRTC kernels do the same. bf16 and
/// f16 inputs are pooled in f32 and cast back (exact). On other
/// devices it is composed from candle tensor ops (pad with
/// `-inf`, strided window views, `maximum`): the forward value is identical, but a gradient
/// is split evenly between tied maxima instead of going to the first one.
pub fn max_pool2d(
    x: &Tensor,
    kernel: usize,
    stride: usize,
    padding: usize,
    ceil_mode: bool,
) -> Result<Tensor> {
    let op = MaxPool2d {
        kernel,
        stride,
        padding,
        ceil_mode,
    };
    // Validate shape and parameters on every device.
    op.geometry(x.dims())?;
    match x.dtype() {
        DType::F32 | DType::F64 => {}
        // Half precision pools in f32: exact (a max is one of its inputs, and bf16/f16 -> f32
        // -> bf16/f16 round-trips), with the same first-argmax gradient.
        DType::BF16 | DType::F16 => {
            return max_pool2d(&x.to_dtype(DType::F32)?, kernel, stride, padding, ceil_mode)?
                .to_dtype(x.dtype())
        }
        dt => bail!("max_pool2d: only f32, f64, bf16 and f16 are supported, got {dt:?}"),
    }
    // CUDA tensors in a `cuda` build run our NVRTC kernels (cuda/max_pool.rs).
    if x.device().is_cpu() || (cfg!(feature = "cuda") && x.device().is_cuda()) {
        x.apply_op1(op)
    } else {
        op.forward_with_tensor_ops(x)
    }
}

/// The stem max-pool as a candle custom op: CPU forward plus a backward that scatters the
/// gradient to each window's first argmax (through [`MaxPoolScatter`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MaxPool2d {
    /// Window side.
    pub kernel: usize,
    /// Step between windows.
    pub stride: usize,
    /// Implicit padding on each side; padded cells never win.
    pub padding: usize,
    /// PyTorch's `ceil_mode`.
    pub ceil_mode: bool,
}

impl MaxPool2d {
    fn geometry(&self, dims: &[usize]) -> Result<PoolGeometry> {
        PoolGeometry::new(dims, self.kernel, self.stride, self.padding, self.ceil_mode)
    }

    /// Device-agnostic forward from tensor ops (used off-CPU). Same values; ties share gradient.
    fn forward_with_tensor_ops(&self, x: &Tensor) -> Result<Tensor> {
        let g = self.geometry(x.dims())?;
        let (n, c) = (x.dim(0)?, x.dim(1)?);
        // Pad so that every window of every output position lies inside, with room for the
        // `output * stride` reshape trick below.
        let pad_axis = |axis: &crate::PoolAxis| {
            let need = axis.output * axis.stride + axis.kernel - 1;
            let after = need.saturating_sub(axis.input + axis.padding);
            (axis.padding, after)
        };
        let (top, bottom) = pad_axis(&g.rows);
        let (left, right) = pad_axis(&g.cols);
        let neg_inf = |shape: (usize, usize, usize, usize)| {
            Tensor::full(f64::NEG_INFINITY, shape, x.device())?.to_dtype(x.dtype())
        };
        let h = g.rows.input;
        let mut parts = Vec::with_capacity(3);
        if top > 0 {
            parts.push(neg_inf((n, c, top, g.cols.input))?);
        }
        parts.push(x.clone());
        if bottom > 0 {
            parts.push(neg_inf((n, c, bottom, g.cols.input))?);
        }
        let x = Tensor::cat(&parts, 2)?;
        let hp = top + h + bottom;
        let mut parts = Vec::with_capacity(3);
        if left > 0 {
            parts.push(neg_inf((n, c, hp, left))?);
        }
        parts.push(x);
        if right > 0 {
            parts.push(neg_inf((n, c, hp, right))?);
        }
        let x = Tensor::cat(&parts, 3)?;
        let (oh, ow, s) = (g.rows.output, g.cols.output, self.stride);
        let mut out: Option<Tensor> = None;
        for ky in 0..self.kernel {
            let rows = x
                .narrow(2, ky, oh * s)?
                .reshape((n, c, oh, s, ()))?
                .narrow(3, 0, 1)?
                .squeeze(3)?;
            for kx in 0..self.kernel {
                let win = rows
                    .narrow(D::Minus1, kx, ow * s)?
                    .reshape((n, c, oh, ow, s))?
                    .narrow(4, 0, 1)?
                    .squeeze(4)?;
                out = Some(match out {
                    None => win,
                    Some(acc) => acc.maximum(&win)?,
                });
            }
        }
        match out {
            Some(t) => Ok(t),
            None => bail!("max_pool2d: empty kernel"),
        }
    }
}

/// Reads element `(plane, y, x)` of a strided NCHW layout.
struct Strided4 {
    offset: usize,
    channels: usize,
    strides: [usize; 4],
}

impl Strided4 {
    fn new(layout: &Layout) -> Result<Self> {
        let &[_, c, _, _] = layout.dims() else {
            bail!(
                "max_pool2d: expected an NCHW layout, got {:?}",
                layout.dims()
            )
        };
        let &[s0, s1, s2, s3] = layout.stride() else {
            bail!("max_pool2d: expected 4 strides, got {:?}", layout.stride())
        };
        Ok(Self {
            offset: layout.start_offset(),
            channels: c,
            strides: [s0, s1, s2, s3],
        })
    }

    #[inline]
    fn plane_base(&self, plane: usize) -> usize {
        let (b, ch) = (plane / self.channels, plane % self.channels);
        self.offset + b * self.strides[0] + ch * self.strides[1]
    }

    #[inline]
    fn at(&self, base: usize, y: usize, x: usize) -> usize {
        base + y * self.strides[2] + x * self.strides[3]
    }
}

/// Floats the kernels run on.
trait PoolFloat: Copy + Send + Sync + PartialOrd + std::ops::AddAssign {
    const NEG_INF: Self;
    const ZERO: Self;
    fn is_nan(self) -> bool;
}

impl PoolFloat for f32 {
    const NEG_INF: Self = f32::NEG_INFINITY;
    const ZERO: Self = 0.0;
    fn is_nan(self) -> bool {
        f32::is_nan(self)
    }
}

impl PoolFloat for f64 {
    const NEG_INF: Self = f64::NEG_INFINITY;
    const ZERO: Self = 0.0;
    fn is_nan(self) -> bool {
        f64::is_nan(self)
    }
}

/// Index `(y, x)` of the first maximum of output window `(oy, ox)`, PyTorch's rule: start at
/// the first valid cell with `-inf`, replace on `>` or NaN.
#[inline]
fn window_argmax<T: PoolFloat>(
    src: &[T],
    at: &Strided4,
    base: usize,
    g: &PoolGeometry,
    oy: usize,
    ox: usize,
) -> (usize, usize, T) {
    let (y0, y1) = g.rows.window(oy);
    let (x0, x1) = g.cols.window(ox);
    let mut best = (y0, x0, T::NEG_INF);
    for y in y0..y1 {
        for x in x0..x1 {
            let v = src[at.at(base, y, x)];
            if v > best.2 || v.is_nan() {
                best = (y, x, v);
                if v.is_nan() {
                    return best;
                }
            }
        }
    }
    best
}

fn forward_cpu<T: PoolFloat>(src: &[T], layout: &Layout, g: &PoolGeometry) -> Result<Vec<T>> {
    let at = Strided4::new(layout)?;
    let (oh, ow) = (g.rows.output, g.cols.output);
    let mut out = vec![T::ZERO; g.planes * oh * ow];
    out.par_chunks_mut(oh * ow)
        .enumerate()
        .for_each(|(plane, dst)| {
            let base = at.plane_base(plane);
            for oy in 0..oh {
                for ox in 0..ow {
                    dst[oy * ow + ox] = window_argmax(src, &at, base, g, oy, ox).2;
                }
            }
        });
    Ok(out)
}

/// [`forward_cpu`] for f32 through the rows kernel (`max_pool2d_rows.rs`) where one runs;
/// the same values.
pub(crate) fn forward_f32(src: &[f32], layout: &Layout, g: &PoolGeometry) -> Result<Vec<f32>> {
    match rows::kernel(layout, g) {
        Some(kernel) => forward_rows(kernel, src, layout, g),
        None => forward_cpu(src, layout, g),
    }
}

/// [`forward_f32`] through `kernel`.
fn forward_rows(
    kernel: rows::RowKernel,
    src: &[f32],
    layout: &Layout,
    g: &PoolGeometry,
) -> Result<Vec<f32>> {
    let at = Strided4::new(layout)?;
    let (oh, ow) = (g.rows.output, g.cols.output);
    let mut out = vec![0f32; g.planes * oh * ow];
    out.par_chunks_mut(oh * ow)
        .enumerate()
        .for_each(|(plane, dst)| {
            let src = &src[at.plane_base(plane)..];
            let mut cells = vec![0u32; ow];
            for (oy, values) in dst.chunks_exact_mut(ow).enumerate() {
                kernel.row_argmax(src, g, oy, values, &mut cells);
            }
        });
    Ok(out)
}

/// [`scatter_cpu`] for f32 through the rows kernel where one runs: the same argmax cells, and
/// each cell's gradients added in the same (row-major output) order.
pub(crate) fn scatter_f32(
    src: &[f32],
    src_layout: &Layout,
    grad: &[f32],
    grad_layout: &Layout,
    g: &PoolGeometry,
) -> Result<Vec<f32>> {
    match rows::kernel(src_layout, g) {
        Some(kernel) => scatter_rows(kernel, src, src_layout, grad, grad_layout, g),
        None => scatter_cpu(src, src_layout, grad, grad_layout, g),
    }
}

/// [`scatter_f32`] through `kernel`.
fn scatter_rows(
    kernel: rows::RowKernel,
    src: &[f32],
    src_layout: &Layout,
    grad: &[f32],
    grad_layout: &Layout,
    g: &PoolGeometry,
) -> Result<Vec<f32>> {
    let at = Strided4::new(src_layout)?;
    let gat = Strided4::new(grad_layout)?;
    let (h, w) = (g.rows.input, g.cols.input);
    let (oh, ow) = (g.rows.output, g.cols.output);
    Ok(scattered_planes(g.planes, h * w, |plane, dst| {
        let src = &src[at.plane_base(plane)..];
        let gbase = gat.plane_base(plane);
        let (mut values, mut cells) = (vec![0f32; ow], vec![0u32; ow]);
        for oy in 0..oh {
            kernel.row_argmax(src, g, oy, &mut values, &mut cells);
            for (ox, &cell) in cells.iter().enumerate() {
                dst[cell as usize] += grad[gat.at(gbase, oy, ox)];
            }
        }
    }))
}

/// A pool's input gradient of `planes` planes of `plane_len` values: each plane cleared, then
/// `scatter(plane, dst)` adds into it, in a task of its own while the plane is in cache (a
/// zeroed allocation would clear the whole gradient first, on one thread).
fn scattered_planes(
    planes: usize,
    plane_len: usize,
    scatter: impl Fn(usize, &mut [f32]) + Sync,
) -> Vec<f32> {
    let fill = |out: &mut [std::mem::MaybeUninit<f32>]| {
        out.par_chunks_mut(plane_len)
            .enumerate()
            .for_each(|(plane, dst)| {
                for v in dst.iter_mut() {
                    v.write(0.0);
                }
                // SAFETY: every value of the plane was written just above.
                let dst = unsafe { &mut *(dst as *mut [std::mem::MaybeUninit<f32>] as *mut [f32]) };
                scatter(plane, dst);
            })
    };
    // SAFETY: the planes cover all `planes * plane_len` slots, and each plane is written whole.
    unsafe { crate::row_tasks::written_by(planes * plane_len, fill) }
}

/// [`forward_f32`] that also keeps each output's first maximum, as its index `y * W + x` in its
/// input plane: [`scatter_cells`] sends the output's gradient there without reading the pool's
/// input or searching its windows again. The same values as [`forward_f32`] and the same cells
/// as [`scatter_f32`] finds.
pub(crate) fn forward_f32_with_cells(
    src: &[f32],
    layout: &Layout,
    g: &PoolGeometry,
) -> Result<(Vec<f32>, Vec<u32>)> {
    let at = Strided4::new(layout)?;
    let (h, w) = (g.rows.input, g.cols.input);
    let (oh, ow) = (g.rows.output, g.cols.output);
    if h * w > u32::MAX as usize {
        bail!("max_pool2d: a {h}x{w} plane has more cells than a u32 numbers");
    }
    let kernel = rows::kernel(layout, g);
    let mut out = vec![0f32; g.planes * oh * ow];
    let mut cells = vec![0u32; g.planes * oh * ow];
    out.par_chunks_mut(oh * ow)
        .zip(cells.par_chunks_mut(oh * ow))
        .enumerate()
        .for_each(|(plane, (dst, cells))| {
            let base = at.plane_base(plane);
            let rows = dst.chunks_exact_mut(ow).zip(cells.chunks_exact_mut(ow));
            for (oy, (values, cells)) in rows.enumerate() {
                match kernel {
                    Some(kernel) => kernel.row_argmax(&src[base..], g, oy, values, cells),
                    None => {
                        for (ox, (v, cell)) in values.iter_mut().zip(cells).enumerate() {
                            let (y, x, max) = window_argmax(src, &at, base, g, oy, ox);
                            (*v, *cell) = (max, (y * w + x) as u32);
                        }
                    }
                }
            }
        });
    Ok((out, cells))
}

/// The pool's input gradient `(N, C, H, W)` from the output gradient and each output's cell
/// ([`forward_f32_with_cells`]): each output gradient added to its cell in row-major output
/// order, [`scatter_f32`]'s sums bit for bit.
pub(crate) fn scatter_cells(
    cells: &[u32],
    grad: &[f32],
    grad_layout: &Layout,
    g: &PoolGeometry,
) -> Result<Vec<f32>> {
    let gat = Strided4::new(grad_layout)?;
    let (h, w) = (g.rows.input, g.cols.input);
    let (oh, ow) = (g.rows.output, g.cols.output);
    let refused = || {
        candle_core::Error::Msg("max_pool2d: the cells are not those of this pool's outputs".into())
    };
    if cells.len() != g.planes * oh * ow {
        return Err(refused());
    }
    // A cell outside its plane is flagged as the scatter meets it, rather than in a pass of
    // its own over every cell first; the gradient is then refused.
    let outside = std::sync::atomic::AtomicBool::new(false);
    let dx = scattered_planes(g.planes, h * w, |plane, dst| {
        let gbase = gat.plane_base(plane);
        let cells = &cells[plane * oh * ow..][..oh * ow];
        for (oy, row) in cells.chunks_exact(ow).enumerate() {
            for (ox, &cell) in row.iter().enumerate() {
                match dst.get_mut(cell as usize) {
                    Some(d) => *d += grad[gat.at(gbase, oy, ox)],
                    None => outside.store(true, std::sync::atomic::Ordering::Relaxed),
                }
            }
        }
    });
    if outside.into_inner() {
        return Err(refused());
    }
    Ok(dx)
}

impl CustomOp1 for MaxPool2d {
    fn name(&self) -> &'static str {
        "mtanet-max-pool2d"
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        storage: &candle_core::CudaStorage,
        layout: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        crate::cuda::max_pool::forward(self, storage, layout)
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let g = self.geometry(layout.dims())?;
        let dims = layout.dims();
        let shape = Shape::from((dims[0], dims[1], g.rows.output, g.cols.output));
        let out = match storage {
            CpuStorage::F32(src) => CpuStorage::F32(timed(
                || "max-pool fwd".into(),
                || forward_f32(src, layout, &g),
            )?),
            CpuStorage::F64(src) => CpuStorage::F64(forward_cpu(src, layout, &g)?),
            other => bail!(
                "max_pool2d: only f32 and f64 are supported, got {:?}",
                other.dtype()
            ),
        };
        Ok((out, shape))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        let scatter = MaxPoolScatter { pool: *self };
        Ok(Some(arg.apply_op2_no_bwd(grad_res, &scatter)?))
    }
}

/// Backward kernel of [`MaxPool2d`]: given the pooled input and the output gradient, adds each
/// output gradient to the first argmax cell of its window. Not differentiable itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MaxPoolScatter {
    /// The forward op whose windows are replayed.
    pub pool: MaxPool2d,
}

fn scatter_cpu<T: PoolFloat>(
    src: &[T],
    src_layout: &Layout,
    grad: &[T],
    grad_layout: &Layout,
    g: &PoolGeometry,
) -> Result<Vec<T>> {
    let at = Strided4::new(src_layout)?;
    let gat = Strided4::new(grad_layout)?;
    let (h, w) = (g.rows.input, g.cols.input);
    let (oh, ow) = (g.rows.output, g.cols.output);
    let mut out = vec![T::ZERO; g.planes * h * w];
    out.par_chunks_mut(h * w)
        .enumerate()
        .for_each(|(plane, dst)| {
            let base = at.plane_base(plane);
            let gbase = gat.plane_base(plane);
            for oy in 0..oh {
                for ox in 0..ow {
                    let (y, x, _) = window_argmax(src, &at, base, g, oy, ox);
                    dst[y * w + x] += grad[gat.at(gbase, oy, ox)];
                }
            }
        });
    Ok(out)
}

impl CustomOp2 for MaxPoolScatter {
    fn name(&self) -> &'static str {
        "mtanet-max-pool2d-scatter"
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        a: &candle_core::CudaStorage,
        a_layout: &Layout,
        b: &candle_core::CudaStorage,
        b_layout: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        crate::cuda::max_pool::scatter(self, a, a_layout, b, b_layout)
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let g = self.pool.geometry(l1.dims())?;
        let expected = [l1.dims()[0], l1.dims()[1], g.rows.output, g.cols.output];
        if l2.dims() != expected {
            bail!(
                "max_pool2d backward: gradient dims {:?}, expected {:?}",
                l2.dims(),
                expected
            )
        }
        let out = match (s1, s2) {
            (CpuStorage::F32(a), CpuStorage::F32(gr)) => CpuStorage::F32(timed(
                || "max-pool bwd".into(),
                || scatter_f32(a, l1, gr, l2, &g),
            )?),
            (CpuStorage::F64(a), CpuStorage::F64(gr)) => {
                CpuStorage::F64(scatter_cpu(a, l1, gr, l2, &g)?)
            }
            (a, b) => bail!(
                "max_pool2d backward: unsupported dtypes {:?} / {:?}",
                a.dtype(),
                b.dtype()
            ),
        };
        Ok((out, Shape::from(l1.dims())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};
    use std::collections::HashMap;
    use std::path::PathBuf;

    /// Each rows kernel this CPU runs (AVX-512, AVX2) gives the scalar search's values and
    /// gradients bit for bit: ties, signed zeros, `-inf` and NaN (the first one wins) in the
    /// windows, padded and ceil-mode edges, rows shorter and longer than a vector of outputs.
    #[test]
    fn the_rows_kernels_equal_the_scalar_search_bit_for_bit() -> Result<()> {
        let kernels = rows::RowKernel::available();
        if kernels.is_empty() {
            eprintln!("skipped: the rows kernels run only on CPUs with AVX2 or AVX-512");
            return Ok(());
        }
        let specials = [
            0.0f32,
            -0.0,
            1.0,
            1.0,
            f32::NEG_INFINITY,
            f32::NAN,
            -f32::NAN,
            2.5,
        ];
        for (kernel, stride, padding, ceil_mode) in [
            (3, 2, 1, false),
            (3, 2, 0, true),
            (2, 2, 0, false),
            (3, 1, 1, false),
        ] {
            for (h, w) in [(9, 7), (56, 56), (13, 40)] {
                let op = MaxPool2d {
                    kernel,
                    stride,
                    padding,
                    ceil_mode,
                };
                let dims = [2, 3, h, w];
                let g = op.geometry(&dims)?;
                let layout = Layout::contiguous((2, 3, h, w));
                let len = 2 * 3 * h * w;
                // Mostly a few repeated values (ties), some specials, some distinct.
                let src: Vec<f32> = (0..len)
                    .map(|i| match (i * 7919) % 23 {
                        k @ 0..=7 => specials[k],
                        k @ 8..=15 => (k % 3) as f32,
                        k => (i % 101) as f32 * 0.37 - k as f32,
                    })
                    .collect();
                let out_len = 2 * 3 * g.rows.output * g.cols.output;
                let grad: Vec<f32> = (0..out_len).map(|i| (i % 13) as f32 * 0.25 + 0.1).collect();
                let grad_layout = Layout::contiguous((2, 3, g.rows.output, g.cols.output));
                let bits = |v: Vec<f32>| v.into_iter().map(f32::to_bits).collect::<Vec<_>>();
                let want_forward = bits(forward_cpu(&src, &layout, &g)?);
                let want_backward = bits(scatter_cpu(&src, &layout, &grad, &grad_layout, &g)?);
                // The kept cells (this CPU's rows kernel; the scalar search on a layout with
                // its rows and columns swapped, which no rows kernel reads) give the same.
                let transposed = Layout::contiguous((2, 3, w, h)).transpose(2, 3)?;
                for layout in [&layout, &transposed] {
                    let (values, cells) = forward_f32_with_cells(&src, layout, &g)?;
                    let case = format!("k{kernel} s{stride} p{padding} ceil {ceil_mode}, {h}x{w}");
                    let scalar = bits(forward_cpu(&src, layout, &g)?);
                    assert_eq!(bits(values), scalar, "forward with cells, {case}");
                    assert_eq!(
                        bits(scatter_cells(&cells, &grad, &grad_layout, &g)?),
                        bits(scatter_cpu(&src, layout, &grad, &grad_layout, &g)?),
                        "backward from cells, {case}"
                    );
                }
                for &rows_kernel in &kernels {
                    let case = format!(
                        "{rows_kernel:?}, k{kernel} s{stride} p{padding} ceil {ceil_mode}, {h}x{w}"
                    );
                    assert_eq!(
                        bits(forward_rows(rows_kernel, &src, &layout, &g)?),
                        want_forward,
                        "forward, {case}"
                    );
                    assert_eq!(
                        bits(scatter_rows(
                            rows_kernel,
                            &src,
                            &layout,
                            &grad,
                            &grad_layout,
                            &g
                        )?),
                        want_backward,
                        "backward, {case}"
                    );
                }
            }
        }
        Ok(())
    }

    /// Relative error as used across mtanet-rs conformance tests: `max|a-b| / max|b|`.
    fn rel_err(a: &Tensor, b: &Tensor) -> Result<f32> {
        assert_eq!(a.dims(), b.dims(), "shape mismatch");
        let diff = (a - b)?.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()?;
        let scale = b.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()?;
        Ok(if scale == 0.0 { diff } else { diff / scale })
    }

    /// Fixtures written by scripts/reference/make_fixtures.py (PyTorch's max_pool2d).
    fn fixtures() -> HashMap<String, Tensor> {
        let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../../tests/fixtures/backbones/maxpool.safetensors");
        candle_core::safetensors::load(&path, &Device::Cpu)
            .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
    }

    fn cases(f: &HashMap<String, Tensor>) -> Vec<String> {
        let mut names: Vec<String> = f
            .keys()
            .filter_map(|k| k.strip_suffix(".params").map(str::to_string))
            .collect();
        names.sort();
        names
    }

    fn params(f: &HashMap<String, Tensor>, case: &str) -> Result<(usize, usize, usize, bool)> {
        let p = f[&format!("{case}.params")].to_vec1::<i64>()?;
        Ok((p[0] as usize, p[1] as usize, p[2] as usize, p[3] != 0))
    }

    #[test]
    fn forward_and_backward_match_pytorch_with_ties_and_ceil_edges() -> Result<()> {
        let f = fixtures();
        let names = cases(&f);
        assert!(names.len() >= 6, "fixture cases: {names:?}");
        for case in names {
            let (k, s, p, ceil) = params(&f, &case)?;
            let x = Var::from_tensor(&f[&format!("{case}.input")])?;
            let y = max_pool2d(x.as_tensor(), k, s, p, ceil)?;
            let want = &f[&format!("{case}.output")];
            assert_eq!(y.dims(), want.dims(), "{case}: output dims");
            assert_eq!(rel_err(&y, want)?, 0.0, "{case}: output");
            let gy = &f[&format!("{case}.grad_output")];
            let grads = (y * gy)?.sum_all()?.backward()?;
            let gx = grads.get(x.as_tensor()).expect("input gradient");
            let err = rel_err(gx, &f[&format!("{case}.grad_input")])?;
            assert!(err <= 1e-6, "{case}: grad rel err {err}");
        }
        Ok(())
    }

    #[test]
    fn tensor_op_fallback_matches_the_kernel_forward() -> Result<()> {
        let f = fixtures();
        for case in cases(&f) {
            let (k, s, p, ceil) = params(&f, &case)?;
            let op = MaxPool2d {
                kernel: k,
                stride: s,
                padding: p,
                ceil_mode: ceil,
            };
            let x = &f[&format!("{case}.input")];
            let y = op.forward_with_tensor_ops(x)?;
            assert_eq!(
                rel_err(&y, &f[&format!("{case}.output")])?,
                0.0,
                "{case}: fallback"
            );
        }
        Ok(())
    }

    /// Without ties the off-CPU composition also has PyTorch's gradient.
    #[test]
    fn tensor_op_fallback_gradient_matches_without_ties() -> Result<()> {
        let f = fixtures();
        for case in ["ceil_dropped", "ceil_edge_rect", "padded_even"] {
            let (k, s, p, ceil) = params(&f, case)?;
            let op = MaxPool2d {
                kernel: k,
                stride: s,
                padding: p,
                ceil_mode: ceil,
            };
            let x = Var::from_tensor(&f[&format!("{case}.input")])?;
            let y = op.forward_with_tensor_ops(x.as_tensor())?;
            let grads = (y * &f[&format!("{case}.grad_output")])?
                .sum_all()?
                .backward()?;
            let gx = grads.get(x.as_tensor()).expect("input gradient");
            let err = rel_err(gx, &f[&format!("{case}.grad_input")])?;
            assert!(err <= 1e-6, "{case}: fallback grad rel err {err}");
        }
        Ok(())
    }

    #[test]
    fn first_maximum_in_row_major_order_takes_the_gradient() -> Result<()> {
        // One 3x3 window over an all-equal plane: the first cell (0, 0) gets the gradient.
        let x = Var::ones((1, 1, 3, 3), DType::F32, &Device::Cpu)?;
        let y = max_pool2d(x.as_tensor(), 3, 3, 0, false)?;
        let g = y.sum_all()?.backward()?;
        let gx = g
            .get(x.as_tensor())
            .expect("grad")
            .flatten_all()?
            .to_vec1::<f32>()?;
        assert_eq!(gx, vec![1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]);
        Ok(())
    }

    #[test]
    fn strided_inputs_and_f64_give_the_same_result() -> Result<()> {
        let f = fixtures();
        let x = &f["ceil_edge.input"];
        let want = &f["ceil_edge.output"];
        // A transposed-then-transposed-back view is non-contiguous in storage order.
        let xt = x.transpose(2, 3)?.contiguous()?.transpose(2, 3)?;
        assert!(!xt.is_contiguous());
        let y = max_pool2d(&xt, 3, 2, 0, true)?;
        assert_eq!(rel_err(&y, want)?, 0.0);
        let y64 = max_pool2d(&x.to_dtype(DType::F64)?, 3, 2, 0, true)?;
        assert_eq!(rel_err(&y64.to_dtype(DType::F32)?, want)?, 0.0);
        Ok(())
    }

    #[test]
    fn half_precision_pools_exactly_with_f32_gradient_routing() -> Result<()> {
        let f = fixtures();
        let x = &f["ceil_edge.input"];
        for dtype in [DType::BF16, DType::F16] {
            // The f32 pool of the rounded input is the reference (fixture-checked above).
            let rounded = x.to_dtype(dtype)?.to_dtype(DType::F32)?;
            let xv = Var::from_tensor(&x.to_dtype(dtype)?)?;
            let y = max_pool2d(xv.as_tensor(), 3, 2, 0, true)?;
            assert_eq!(y.dtype(), dtype);
            let want = max_pool2d(&rounded, 3, 2, 0, true)?;
            assert_eq!(rel_err(&y.to_dtype(DType::F32)?, &want)?, 0.0, "{dtype:?}");
            let rv = Var::from_tensor(&rounded)?;
            let g_want = max_pool2d(rv.as_tensor(), 3, 2, 0, true)?
                .sum_all()?
                .backward()?;
            let g = y.to_dtype(DType::F32)?.sum_all()?.backward()?;
            let gx = g.get(xv.as_tensor()).expect("input gradient");
            assert_eq!(gx.dtype(), dtype);
            let gw = g_want.get(rv.as_tensor()).expect("reference gradient");
            assert_eq!(rel_err(&gx.to_dtype(DType::F32)?, gw)?, 0.0, "{dtype:?}");
        }
        Ok(())
    }

    #[test]
    fn rejects_unsupported_inputs() -> Result<()> {
        let x = Tensor::zeros((1, 1, 4, 4), DType::U8, &Device::Cpu)?;
        assert!(max_pool2d(&x, 3, 2, 1, false).is_err());
        let x = Tensor::zeros((1, 4, 4), DType::F32, &Device::Cpu)?;
        assert!(max_pool2d(&x, 3, 2, 1, false).is_err());
        Ok(())
    }

    /// The backward from kept cells refuses cells of another length, and a cell outside its
    /// input plane, with the same message; the cells of this pool's forward pass.
    #[test]
    fn scatter_cells_refuses_cells_not_of_this_pool() -> Result<()> {
        let op = MaxPool2d {
            kernel: 3,
            stride: 2,
            padding: 1,
            ceil_mode: false,
        };
        let g = op.geometry(&[1, 2, 6, 6])?;
        let src: Vec<f32> = (0..72).map(|i| (i * 37 % 71) as f32).collect();
        let (_, cells) = forward_f32_with_cells(&src, &Layout::contiguous((1, 2, 6, 6)), &g)?;
        let grad = vec![1.0f32; cells.len()];
        let grad_layout = Layout::contiguous((1, 2, 3, 3));
        assert_eq!(scatter_cells(&cells, &grad, &grad_layout, &g)?.len(), 72);
        let mut outside = cells.clone();
        outside[13] = 36;
        for bad in [&cells[1..], &outside[..]] {
            let err = scatter_cells(bad, &grad, &grad_layout, &g).unwrap_err();
            assert!(err.to_string().contains("not those of this pool"), "{err}");
        }
        Ok(())
    }
}
