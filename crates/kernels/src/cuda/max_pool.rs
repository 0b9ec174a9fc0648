//! CUDA forward and backward of the padded / ceil-mode max-pool, from `max_pool.cu` (compiled
//! by NVRTC on first use). Same windows, same first-maximum rule and, for the backward, the same
//! additions in the same order as the CPU kernels in `max_pool2d.rs`.

use super::{nvrtc, wrap};
use crate::{MaxPool2d, MaxPoolScatter, PoolAxis, PoolGeometry};
use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::driver::{
    CudaSlice, DeviceRepr, LaunchConfig, PushKernelArg, ValidAsZeroBits,
};
use candle_core::cuda_backend::{CudaDType, CudaStorageSlice, WrapErr};
use candle_core::{bail, CudaStorage, Layout, Result, Shape};

/// The CUDA C source of the max-pool kernels.
pub const SOURCE: &str = include_str!("max_pool.cu");
const MODULE: &str = "mtanet_max_pool";
const THREADS: u32 = 256;

/// `struct Axis` of `max_pool.cu`: one axis of a [`PoolGeometry`].
#[repr(C)]
#[derive(Clone, Copy, Debug)]
struct Axis {
    input: i64,
    output: i64,
    kernel: i64,
    stride: i64,
    padding: i64,
}

// SAFETY: plain `#[repr(C)]` integers, the layout of `struct Axis` in max_pool.cu.
unsafe impl DeviceRepr for Axis {}

impl Axis {
    fn new(a: &PoolAxis) -> Result<Self> {
        Ok(Self {
            input: to_i64(a.input)?,
            output: to_i64(a.output)?,
            kernel: to_i64(a.kernel)?,
            stride: to_i64(a.stride)?,
            padding: to_i64(a.padding)?,
        })
    }
}

fn to_i64(v: usize) -> Result<i64> {
    match i64::try_from(v) {
        Ok(v) => Ok(v),
        Err(_) => bail!("max_pool2d (cuda): size {v} does not fit in i64"),
    }
}

/// Start offset and the four strides of an NCHW layout, as the kernels take them.
fn strided(layout: &Layout) -> Result<[i64; 5]> {
    let &[s0, s1, s2, s3] = layout.stride() else {
        bail!(
            "max_pool2d (cuda): expected 4 strides, got {:?}",
            layout.stride()
        )
    };
    Ok([
        to_i64(layout.start_offset())?,
        to_i64(s0)?,
        to_i64(s1)?,
        to_i64(s2)?,
        to_i64(s3)?,
    ])
}

/// A grid-stride launch over `n` elements (`n > 0`).
fn launch_config(n: usize) -> LaunchConfig {
    let blocks = n.div_ceil(THREADS as usize).clamp(1, 1 << 20) as u32;
    LaunchConfig {
        grid_dim: (blocks, 1, 1),
        block_dim: (THREADS, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// Geometry and the `(planes, channels)` pair of an NCHW input.
fn geometry(pool: &MaxPool2d, layout: &Layout) -> Result<(PoolGeometry, i64, i64)> {
    let g = PoolGeometry::new(
        layout.dims(),
        pool.kernel,
        pool.stride,
        pool.padding,
        pool.ceil_mode,
    )?;
    let channels = to_i64(layout.dims()[1])?;
    Ok((g, to_i64(g.planes)?, channels))
}

fn fwd_typed<T: CudaDType + DeviceRepr + ValidAsZeroBits>(
    storage: &CudaStorage,
    src: &CudaSlice<T>,
    layout: &Layout,
    fn_name: &'static str,
    pool: &MaxPool2d,
) -> Result<CudaStorage> {
    let (g, planes, channels) = geometry(pool, layout)?;
    let n = g.planes * g.rows.output * g.cols.output;
    let dev = storage.device();
    let mut dst = dev.alloc_zeros::<T>(n.max(1))?;
    if n > 0 {
        let func = nvrtc::function(dev, MODULE, SOURCE, fn_name)?;
        let [offset, s0, s1, s2, s3] = strided(layout)?;
        let (rows, cols) = (Axis::new(&g.rows)?, Axis::new(&g.cols)?);
        let stream = dev.cuda_stream();
        let mut b = stream.launch_builder(&func);
        b.arg(src)
            .arg(&mut dst)
            .arg(&planes)
            .arg(&channels)
            .arg(&offset);
        b.arg(&s0).arg(&s1).arg(&s2).arg(&s3).arg(&rows).arg(&cols);
        // SAFETY: the arguments match `mtanet_max_pool_fwd_*` in max_pool.cu; every index the
        // kernel reads lies inside `src`'s layout (windows are clipped to the input) and it
        // writes `dst[0..n]` only.
        unsafe { b.launch(launch_config(n)) }.w()?;
    }
    Ok(wrap(dst, storage))
}

/// Forward of [`MaxPool2d`] on CUDA (f32 and f64).
pub fn forward(
    pool: &MaxPool2d,
    storage: &CudaStorage,
    layout: &Layout,
) -> Result<(CudaStorage, Shape)> {
    let (g, _, _) = geometry(pool, layout)?;
    let dims = layout.dims();
    let shape = Shape::from((dims[0], dims[1], g.rows.output, g.cols.output));
    let out = match &storage.slice {
        CudaStorageSlice::F32(src) => {
            fwd_typed(storage, src, layout, "mtanet_max_pool_fwd_f32", pool)?
        }
        CudaStorageSlice::F64(src) => {
            fwd_typed(storage, src, layout, "mtanet_max_pool_fwd_f64", pool)?
        }
        _ => bail!(
            "max_pool2d (cuda): only f32 and f64 are supported, got {:?}",
            storage.dtype()
        ),
    };
    Ok((out, shape))
}

fn bwd_typed<T: CudaDType + DeviceRepr + ValidAsZeroBits>(
    storage: &CudaStorage,
    (src, src_layout): (&CudaSlice<T>, &Layout),
    (grad, grad_layout): (&CudaSlice<T>, &Layout),
    fn_name: &'static str,
    pool: &MaxPool2d,
) -> Result<CudaStorage> {
    let (g, planes, channels) = geometry(pool, src_layout)?;
    let n = g.planes * g.rows.input * g.cols.input;
    let dev = storage.device();
    let mut dst = dev.alloc_zeros::<T>(n.max(1))?;
    if n > 0 {
        let func = nvrtc::function(dev, MODULE, SOURCE, fn_name)?;
        let [offset, s0, s1, s2, s3] = strided(src_layout)?;
        let [g_offset, g0, g1, g2, g3] = strided(grad_layout)?;
        let (rows, cols) = (Axis::new(&g.rows)?, Axis::new(&g.cols)?);
        let stream = dev.cuda_stream();
        let mut b = stream.launch_builder(&func);
        b.arg(src)
            .arg(grad)
            .arg(&mut dst)
            .arg(&planes)
            .arg(&channels);
        b.arg(&offset).arg(&s0).arg(&s1).arg(&s2).arg(&s3);
        b.arg(&g_offset).arg(&g0).arg(&g1).arg(&g2).arg(&g3);
        b.arg(&rows).arg(&cols);
        // SAFETY: the arguments match `mtanet_max_pool_bwd_*` in max_pool.cu; the gradient's
        // dims were checked against the pool's output, reads stay inside both layouts and the
        // kernel writes `dst[0..n]` only.
        unsafe { b.launch(launch_config(n)) }.w()?;
    }
    Ok(wrap(dst, storage))
}

/// Backward of the max-pool on CUDA: the input gradient `(N, C, H, W)` from the pooled input
/// and the output gradient, as [`MaxPoolScatter`] computes it on the CPU.
pub fn scatter(
    op: &MaxPoolScatter,
    src: &CudaStorage,
    src_layout: &Layout,
    grad: &CudaStorage,
    grad_layout: &Layout,
) -> Result<(CudaStorage, Shape)> {
    let (g, _, _) = geometry(&op.pool, src_layout)?;
    let dims = src_layout.dims();
    let expected = [dims[0], dims[1], g.rows.output, g.cols.output];
    if grad_layout.dims() != expected {
        bail!(
            "max_pool2d backward (cuda): gradient dims {:?}, expected {:?}",
            grad_layout.dims(),
            expected
        )
    }
    let out = match (&src.slice, &grad.slice) {
        (CudaStorageSlice::F32(s), CudaStorageSlice::F32(gr)) => bwd_typed(
            src,
            (s, src_layout),
            (gr, grad_layout),
            "mtanet_max_pool_bwd_f32",
            &op.pool,
        )?,
        (CudaStorageSlice::F64(s), CudaStorageSlice::F64(gr)) => bwd_typed(
            src,
            (s, src_layout),
            (gr, grad_layout),
            "mtanet_max_pool_bwd_f64",
            &op.pool,
        )?,
        _ => bail!(
            "max_pool2d backward (cuda): unsupported dtypes {:?} / {:?}",
            src.dtype(),
            grad.dtype()
        ),
    };
    Ok((out, Shape::from(dims)))
}
