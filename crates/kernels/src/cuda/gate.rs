//! CUDA forward of the gate ops (`Gate`, `GateGrad`, `ChannelMaxMean`, `ChannelMaxMeanGrad` in
//! `gate.rs`), from `gate.cu` (compiled by NVRTC on first use). f32 only, as the CPU ops.

use super::{dense_f32, launch, nvrtc, to_i64, wrap, THREADS};
use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::driver::PushKernelArg;
use candle_core::cuda_backend::WrapErr;
use candle_core::{CudaStorage, Layout, Result};

/// The CUDA C source of the gate kernels.
pub const SOURCE: &str = include_str!("gate.cu");
const MODULE: &str = "mtanet_gate";
const WHAT: &str = "gate";

/// `(N, C, H * W)` of an NCHW input and the gate's element count (`N * C` for the channel gate,
/// `N * H * W` for the spatial one).
pub type GateDims = (usize, usize, usize);

/// `x * gate` on CUDA, `spatial` selecting the spatial gate `(N, 1, H, W)` over the channel
/// gate `(N, C)`.
pub fn forward(
    x: (&CudaStorage, &Layout),
    gate: (&CudaStorage, &Layout),
    (n, c, p): GateDims,
    spatial: bool,
) -> Result<CudaStorage> {
    let numel = n * c * p;
    let gate_len = if spatial { n * p } else { n * c };
    let xd = dense_f32(x.0, x.1, numel, WHAT)?;
    let gd = dense_f32(gate.0, gate.1, gate_len, WHAT)?;
    let dev = x.0.device();
    let mut y = dev.alloc_zeros::<f32>(numel.max(1))?;
    if numel > 0 {
        let f = nvrtc::function(dev, MODULE, SOURCE, "mtanet_gate_mul")?;
        let (xv, gv) = (xd.view::<f32>()?, gd.view::<f32>()?);
        let (numel_i, ci, pi) = (to_i64(numel, WHAT)?, to_i64(c, WHAT)?, to_i64(p, WHAT)?);
        let spatial_i = i32::from(spatial);
        let stream = dev.cuda_stream();
        let mut b = stream.launch_builder(&f);
        b.arg(&xv)
            .arg(&gv)
            .arg(&mut y)
            .arg(&numel_i)
            .arg(&ci)
            .arg(&pi);
        b.arg(&spatial_i);
        // SAFETY: matches `mtanet_gate_mul`; x and y hold numel values, the gate gate_len
        // (every index the kernel forms is below that).
        unsafe { b.launch(launch(numel, THREADS as usize)) }.w()?;
    }
    Ok(wrap(y, x.0))
}

/// Backward of the gate on CUDA: (`x`, `gate`, `grad_y`) -> one dense buffer `dx | dgate`.
pub fn backward(
    x: (&CudaStorage, &Layout),
    gate: (&CudaStorage, &Layout),
    grad_y: (&CudaStorage, &Layout),
    (n, c, p): GateDims,
    spatial: bool,
) -> Result<CudaStorage> {
    let numel = n * c * p;
    let gate_len = if spatial { n * p } else { n * c };
    let xd = dense_f32(x.0, x.1, numel, WHAT)?;
    let gd = dense_f32(gate.0, gate.1, gate_len, WHAT)?;
    let dd = dense_f32(grad_y.0, grad_y.1, numel, WHAT)?;
    let dev = x.0.device();
    let mut out = dev.alloc_zeros::<f32>((numel + gate_len).max(1))?;
    if numel == 0 {
        return Ok(wrap(out, x.0));
    }
    let (xv, gv, dv) = (xd.view::<f32>()?, gd.view::<f32>()?, dd.view::<f32>()?);
    let (ni, ci, pi) = (to_i64(n, WHAT)?, to_i64(c, WHAT)?, to_i64(p, WHAT)?);
    let numel_i = to_i64(numel, WHAT)?;
    let spatial_i = i32::from(spatial);
    let stream = dev.cuda_stream();
    {
        let f = nvrtc::function(dev, MODULE, SOURCE, "mtanet_gate_mul")?;
        let mut dx = out.slice_mut(0..numel);
        let mut b = stream.launch_builder(&f);
        b.arg(&dv)
            .arg(&gv)
            .arg(&mut dx)
            .arg(&numel_i)
            .arg(&ci)
            .arg(&pi);
        b.arg(&spatial_i);
        // SAFETY: matches `mtanet_gate_mul`; dy and dx hold numel values, the gate gate_len.
        unsafe { b.launch(launch(numel, THREADS as usize)) }.w()?;
    }
    let mut dgate = out.slice_mut(numel..numel + gate_len);
    if spatial {
        let f = nvrtc::function(dev, MODULE, SOURCE, "mtanet_gate_spatial_dgate")?;
        let mut b = stream.launch_builder(&f);
        b.arg(&dv)
            .arg(&xv)
            .arg(&mut dgate)
            .arg(&ni)
            .arg(&ci)
            .arg(&pi);
        // SAFETY: matches `mtanet_gate_spatial_dgate`; dy and x hold n * c * p values, dgate
        // n * p.
        unsafe { b.launch(launch(n * p, THREADS as usize)) }.w()?;
    } else {
        let f = nvrtc::function(dev, MODULE, SOURCE, "mtanet_gate_channel_dgate")?;
        let rows_i = to_i64(n * c, WHAT)?;
        let mut b = stream.launch_builder(&f);
        b.arg(&dv).arg(&xv).arg(&mut dgate).arg(&rows_i).arg(&pi);
        // SAFETY: matches `mtanet_gate_channel_dgate` (one warp per row, 8 rows per block);
        // dy and x hold rows * p values, dgate rows.
        unsafe { b.launch(launch(n * c, THREADS as usize / 32)) }.w()?;
    }
    Ok(wrap(out, x.0))
}

/// CBAM's channel max + mean on CUDA: (N, C, H, W) -> dense (N, 2, H, W).
pub fn max_mean(x: (&CudaStorage, &Layout), (n, c, p): GateDims) -> Result<CudaStorage> {
    let xd = dense_f32(x.0, x.1, n * c * p, WHAT)?;
    let dev = x.0.device();
    let mut out = dev.alloc_zeros::<f32>((n * 2 * p).max(1))?;
    if n * p > 0 {
        let f = nvrtc::function(dev, MODULE, SOURCE, "mtanet_channel_max_mean")?;
        let xv = xd.view::<f32>()?;
        let (ni, ci, pi) = (to_i64(n, WHAT)?, to_i64(c, WHAT)?, to_i64(p, WHAT)?);
        let stream = dev.cuda_stream();
        let mut b = stream.launch_builder(&f);
        b.arg(&xv).arg(&mut out).arg(&ni).arg(&ci).arg(&pi);
        // SAFETY: matches `mtanet_channel_max_mean`; x holds n * c * p values (c >= 1, checked
        // by the caller), out n * 2 * p.
        unsafe { b.launch(launch(n * p, THREADS as usize)) }.w()?;
    }
    Ok(wrap(out, x.0))
}

/// Backward of the channel max + mean on CUDA: (`x`, `grad_y` (N, 2, H, W)) -> dense `dx`.
pub fn max_mean_grad(
    x: (&CudaStorage, &Layout),
    grad_y: (&CudaStorage, &Layout),
    (n, c, p): GateDims,
) -> Result<CudaStorage> {
    let xd = dense_f32(x.0, x.1, n * c * p, WHAT)?;
    let gd = dense_f32(grad_y.0, grad_y.1, n * 2 * p, WHAT)?;
    let dev = x.0.device();
    let mut dx = dev.alloc_zeros::<f32>((n * c * p).max(1))?;
    if n * p > 0 && c > 0 {
        let f = nvrtc::function(dev, MODULE, SOURCE, "mtanet_channel_max_mean_grad")?;
        let (xv, gv) = (xd.view::<f32>()?, gd.view::<f32>()?);
        let (ni, ci, pi) = (to_i64(n, WHAT)?, to_i64(c, WHAT)?, to_i64(p, WHAT)?);
        let stream = dev.cuda_stream();
        let mut b = stream.launch_builder(&f);
        b.arg(&xv).arg(&gv).arg(&mut dx).arg(&ni).arg(&ci).arg(&pi);
        // SAFETY: matches `mtanet_channel_max_mean_grad`; x and dx hold n * c * p values, the
        // gradient n * 2 * p.
        unsafe { b.launch(launch(n * p, THREADS as usize)) }.w()?;
    }
    Ok(wrap(dx, x.0))
}
