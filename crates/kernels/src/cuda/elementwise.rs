//! CUDA forward of the element-wise ops (`AddRelu`, `ReluMask` in `residual.rs`; the in-place
//! optimizer updates of `optimizer_step.rs`), from `elementwise.cu` (compiled by NVRTC on first
//! use). f32 only, as the CPU ops; bit-identical to them (same f32 operations in the same order).

use super::{dense_f32, launch, nvrtc, to_i64, wrap, THREADS};
use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::driver::{CudaViewMut, PushKernelArg};
use candle_core::cuda_backend::WrapErr;
use candle_core::{bail, CudaStorage, Layout, Result};

/// The CUDA C source of the element-wise kernels.
pub const SOURCE: &str = include_str!("elementwise.cu");
const MODULE: &str = "mtanet_elementwise";

/// `fn_name(a, b, out, n)` over two operands of one element count: a dense output.
fn binary(
    fn_name: &'static str,
    what: &str,
    a: (&CudaStorage, &Layout),
    b: (&CudaStorage, &Layout),
) -> Result<CudaStorage> {
    let n = a.1.shape().elem_count();
    let ad = dense_f32(a.0, a.1, n, what)?;
    let bd = dense_f32(b.0, b.1, n, what)?;
    let dev = a.0.device();
    let mut out = dev.alloc_zeros::<f32>(n.max(1))?;
    if n > 0 {
        let f = nvrtc::function(dev, MODULE, SOURCE, fn_name)?;
        let (av, bv) = (ad.view::<f32>()?, bd.view::<f32>()?);
        let ni = to_i64(n, what)?;
        let stream = dev.cuda_stream();
        let mut l = stream.launch_builder(&f);
        l.arg(&av).arg(&bv).arg(&mut out).arg(&ni);
        // SAFETY: matches `mtanet_add_relu` / `mtanet_relu_mask`; all three hold n values.
        unsafe { l.launch(launch(n, THREADS as usize)) }.w()?;
    }
    Ok(wrap(out, a.0))
}

/// `max(0, a + b)` on CUDA.
pub fn add_relu(a: (&CudaStorage, &Layout), b: (&CudaStorage, &Layout)) -> Result<CudaStorage> {
    binary("mtanet_add_relu", "add_relu", a, b)
}

/// `grad_y` where `y > 0`, else 0, on CUDA.
pub fn relu_mask(
    y: (&CudaStorage, &Layout),
    grad_y: (&CudaStorage, &Layout),
) -> Result<CudaStorage> {
    binary("mtanet_relu_mask", "add_relu backward", y, grad_y)
}

/// The contiguous f32 range of an updated (in-place) tensor.
fn target<'a>(
    s: &'a mut CudaStorage,
    l: &Layout,
    what: &str,
) -> Result<(CudaViewMut<'a, f32>, usize)> {
    let Some((start, end)) = l.contiguous_offsets() else {
        bail!("{what} (cuda): the updated tensor must be contiguous")
    };
    if s.dtype() != candle_core::DType::F32 {
        bail!("{what} (cuda): f32 only, got {:?}", s.dtype())
    }
    Ok((
        s.as_cuda_slice_mut::<f32>()?.slice_mut(start..end),
        end - start,
    ))
}

/// `buf = keep * buf + add * d` (or `d^2` when `squared`), `d = scale * grad + decay * param`,
/// in place.
pub(crate) fn accumulate(
    buf: (&mut CudaStorage, &Layout),
    grad: (&CudaStorage, &Layout),
    param: (&CudaStorage, &Layout),
    [decay, scale, keep, add]: [f32; 4],
    squared: bool,
) -> Result<()> {
    const WHAT: &str = "optimizer buffer";
    let dev = grad.0.device().clone();
    let (mut bv, n) = target(buf.0, buf.1, WHAT)?;
    let gd = dense_f32(grad.0, grad.1, n, WHAT)?;
    let pd = dense_f32(param.0, param.1, n, WHAT)?;
    if n == 0 {
        return Ok(());
    }
    let f = nvrtc::function(&dev, MODULE, SOURCE, "mtanet_opt_accumulate")?;
    let (gv, pv) = (gd.view::<f32>()?, pd.view::<f32>()?);
    let ni = to_i64(n, WHAT)?;
    let squared = i32::from(squared);
    let stream = dev.cuda_stream();
    let mut l = stream.launch_builder(&f);
    l.arg(&mut bv).arg(&gv).arg(&pv).arg(&ni);
    l.arg(&decay).arg(&scale).arg(&keep).arg(&add).arg(&squared);
    // SAFETY: matches `mtanet_opt_accumulate`; the buffer view, grad and param hold n values.
    unsafe { l.launch(launch(n, THREADS as usize)) }.w()?;
    Ok(())
}

/// `param -= lr * buf`, in place.
pub fn sgd_apply(
    param: (&mut CudaStorage, &Layout),
    buf: (&CudaStorage, &Layout),
    lr: f32,
) -> Result<()> {
    const WHAT: &str = "sgd";
    let dev = buf.0.device().clone();
    let (mut pv, n) = target(param.0, param.1, WHAT)?;
    let bd = dense_f32(buf.0, buf.1, n, WHAT)?;
    if n == 0 {
        return Ok(());
    }
    let f = nvrtc::function(&dev, MODULE, SOURCE, "mtanet_opt_sgd_apply")?;
    let bv = bd.view::<f32>()?;
    let ni = to_i64(n, WHAT)?;
    let stream = dev.cuda_stream();
    let mut l = stream.launch_builder(&f);
    l.arg(&mut pv).arg(&bv).arg(&ni).arg(&lr);
    // SAFETY: matches `mtanet_opt_sgd_apply`; param view and buffer hold n values.
    unsafe { l.launch(launch(n, THREADS as usize)) }.w()?;
    Ok(())
}

/// `param -= step_size * m / (sqrt(v) / sqrt_bc2 + eps)`, in place.
pub fn adam_apply(
    param: (&mut CudaStorage, &Layout),
    m: (&CudaStorage, &Layout),
    v: (&CudaStorage, &Layout),
    [step_size, sqrt_bc2, eps]: [f32; 3],
) -> Result<()> {
    const WHAT: &str = "adam";
    let dev = m.0.device().clone();
    let (mut pv, n) = target(param.0, param.1, WHAT)?;
    let md = dense_f32(m.0, m.1, n, WHAT)?;
    let vd = dense_f32(v.0, v.1, n, WHAT)?;
    if n == 0 {
        return Ok(());
    }
    let f = nvrtc::function(&dev, MODULE, SOURCE, "mtanet_opt_adam_apply")?;
    let (mv, vv) = (md.view::<f32>()?, vd.view::<f32>()?);
    let ni = to_i64(n, WHAT)?;
    let stream = dev.cuda_stream();
    let mut l = stream.launch_builder(&f);
    l.arg(&mut pv).arg(&mv).arg(&vv).arg(&ni);
    l.arg(&step_size).arg(&sqrt_bc2).arg(&eps);
    // SAFETY: matches `mtanet_opt_adam_apply`; param view and both moments hold n values.
    unsafe { l.launch(launch(n, THREADS as usize)) }.w()?;
    Ok(())
}
