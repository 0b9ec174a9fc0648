//! CUDA forward of the element-wise ops (`AddRelu`, `ReluMask` in `residual.rs`; the in-place
//! optimizer updates of `optimizer_step.rs`), from `elementwise.cu` (compiled by NVRTC on first
//! use). f32 only, as the CPU ops; bit-identical to them (same f32 operations in the same order).
//! Also [`sum_squares`], the device reduction behind the optimizer's gradient norm.

use super::{dense_f32, launch, nvrtc, to_i64, wrap, THREADS};
use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::driver::{CudaViewMut, LaunchConfig, PushKernelArg};
use candle_core::cuda_backend::WrapErr;
use candle_core::{bail, CudaStorage, Device, Layout, Result, Storage, Tensor};

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
pub(crate) fn target<'a>(
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

/// Blocks per operand of [`sum_squares`] (the fixed grid of `mtanet_sum_squares_partial`, so
/// that the order of the additions, and the result, never change).
const SQ_BLOCKS: usize = 64;

/// The sum of the squares of every value of `tensors` (f32, all on one CUDA device), added in
/// f64, as an f64 scalar tensor on that device: one kernel launch per tensor (64 partial sums
/// each) and one adding the partial sums, all on the device's stream, deterministic (fixed grid
/// and reduction tree, no atomics), and nothing read back to the host. The square root and any
/// read are the caller's. No tensors (or only empty ones) give 0.
pub fn sum_squares(tensors: &[&Tensor]) -> Result<Tensor> {
    const WHAT: &str = "sum_squares";
    let Some(first) = tensors.first() else {
        bail!("{WHAT} (cuda): no tensors")
    };
    let Device::Cuda(dev) = first.device() else {
        bail!("{WHAT} (cuda): the tensors are not on CUDA")
    };
    let stream = dev.cuda_stream();
    let mut partial = dev.alloc_zeros::<f64>(SQ_BLOCKS * tensors.len())?;
    let f = nvrtc::function(dev, MODULE, SOURCE, "mtanet_sum_squares_partial")?;
    let blocks = LaunchConfig {
        grid_dim: (SQ_BLOCKS as u32, 1, 1),
        block_dim: (THREADS, 1, 1),
        shared_mem_bytes: 0,
    };
    for (i, t) in tensors.iter().enumerate() {
        if !t.device().same_device(first.device()) {
            bail!("{WHAT} (cuda): the tensors are on different devices")
        }
        let n = t.elem_count();
        if n == 0 {
            continue;
        }
        // The read lock only guards the Rust-side borrow; the storage outlives the launch
        // because `t` does, and any later free is ordered after it on the same stream.
        let (s, l) = t.storage_and_layout();
        let Storage::Cuda(s) = &*s else {
            bail!("{WHAT} (cuda): a tensor is not on CUDA")
        };
        let d = dense_f32(s, l, n, WHAT)?;
        let v = d.view::<f32>()?;
        let ni = to_i64(n, WHAT)?;
        let mut out = partial.slice_mut(i * SQ_BLOCKS..(i + 1) * SQ_BLOCKS);
        let mut b = stream.launch_builder(&f);
        b.arg(&v).arg(&ni).arg(&mut out);
        // SAFETY: matches `mtanet_sum_squares_partial`; `v` holds n values, `out` SQ_BLOCKS
        // (= gridDim.x) values; blockDim.x = THREADS = SQ_THREADS.
        unsafe { b.launch(blocks) }.w()?;
    }
    let mut total = dev.alloc_zeros::<f64>(1)?;
    let f = nvrtc::function(dev, MODULE, SOURCE, "mtanet_sum_f64")?;
    let len = to_i64(partial.len(), WHAT)?;
    let mut b = stream.launch_builder(&f);
    b.arg(&partial).arg(&len).arg(&mut total);
    let one = LaunchConfig {
        grid_dim: (1, 1, 1),
        block_dim: (THREADS, 1, 1),
        shared_mem_bytes: 0,
    };
    // SAFETY: matches `mtanet_sum_f64`; `partial` holds len values, `total` one; one block of
    // THREADS = SQ_THREADS threads.
    unsafe { b.launch(one) }.w()?;
    let storage = CudaStorage::wrap_cuda_slice(total, dev.clone());
    Ok(Tensor::from_storage(
        Storage::Cuda(storage),
        (),
        candle_core::op::BackpropOp::none(),
        false,
    ))
}
