//! GPU forward passes of this crate's ops (feature `cuda`; cuDNN convolutions with `cudnn`).
//!
//! Each CPU op's `impl CustomOpN` gets a `cuda_fwd` that delegates here, so backward passes that
//! call the gradient ops (`Conv2dInputGrad`, `Conv2dWeightGrad`, `MaxPoolScatter`) run on the
//! GPU too, with no change to the autograd wiring.
//!
//! - **Convolutions** ([`conv`]): forward, backward-data and backward-filter through cuDNN's
//!   legacy convolution API with the native group count (`cudnnSetConvolutionGroupCount`), so a
//!   ResNeXt layer is one call, not 32. Algorithms are chosen by measurement once per shape
//!   and thread (every algorithm timed, the working ones cached fastest first, the next one
//!   tried when one fails, as PyTorch's `cudnn.benchmark`). f32 runs in exact FMA math by default
//!   (no TF32), so CUDA matches the CPU within 1e-4; [`set_allow_tf32`] trades that for speed
//!   as PyTorch's `allow_tf32` does. bf16/f16 use tensor cores with f32 accumulation. Without
//!   the `cudnn` feature the convolutions run on the CPU kernels through a host round trip (see
//!   [`host_fallback`]): correct but slow, and said once on stderr.
//! - **Max-pool** ([`max_pool`]): our own CUDA C (`max_pool.cu`), forward and a deterministic
//!   gather backward that adds in the same order as the CPU scatter (bit-identical results).
//! - **BatchNorm and channel affine** ([`norm`], `norm.cu`): training BatchNorm (statistics,
//!   normalisation, fused ReLU) and its backward, the eval-mode channel affine and its backward.
//!   The per-channel sums reproduce the CPU's summation order (16 f32 lanes per row, rows added
//!   in f64 in image order), so statistics and parameter gradients are bit-identical to the
//!   CPU's and deterministic (no atomics). The statistics stay on the device, read there by the
//!   backward op and blended into the running averages by a kernel (no host copy).
//! - **Gates** ([`gate`], `gate.cu`): channel / spatial gate forward and backward, CBAM's channel
//!   max + mean pooling and its backward (first-argmax rule of the CPU).
//! - **Element-wise** ([`elementwise`], `elementwise.cu`): the residual `relu(a + b)` and its
//!   backward mask, and the in-place SGD / Adam updates.
//! - **Memory** ([`memory`]): the device's stream-ordered pool keeps freed memory (release
//!   threshold raised once per device) and reports its peak use.
//! - **Profiling** ([`profiler`]): the capture range of an attached profiler, so a profile can
//!   cover chosen steps only.
//!
//! All of our CUDA C uses the `_rn` intrinsics for products and sums, so NVRTC's default FMA
//! contraction cannot change the CPU's rounding; f32 only, except the max-pool (f32 and f64).
//! Strided operands are packed first ([`Dense`]); every output is dense.
//!
//! # Why NVRTC at run time rather than PTX at build time
//!
//! The kernels are compiled by NVRTC on first use, straight to a CUBIN for the exact
//! architecture of the GPU in hand (`--gpu-architecture=sm_XY`), and cached per device.
//! - The build needs nothing beyond what candle's `cuda` feature already needs: no `build.rs`
//!   and no `nvcc` step in this crate, and the default (CPU) build is untouched.
//! - A CUBIN is loaded by the driver without a PTX JIT step. PTX built by a newer toolkit than
//!   the driver (or by the GPU machine's newer NVRTC) is rejected with "unsupported PTX
//!   version"; a CUBIN of the same major CUDA version is not.
//! - The cost is one NVRTC compile (~0.1-0.5 s) per process and device, and `libnvrtc`
//!   at run time, which candle already links. Loaded functions are cached per thread, so a
//!   launch takes no lock.

pub mod conv;
pub mod elementwise;
pub mod gate;
pub mod host_fallback;
pub mod max_pool;
pub mod memory;
pub mod norm;
mod nvrtc;
pub mod profiler;

pub use conv::{allow_tf32, set_allow_tf32};
pub use nvrtc::compile_cubin;

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::driver::{CudaSlice, CudaView, DeviceRepr, LaunchConfig};
use candle_core::cuda_backend::CudaDType;
use candle_core::{bail, CudaStorage, Layout, Result};

/// A CUDA operand viewed as dense row-major data: borrowed at its offset when its layout is
/// contiguous, otherwise copied into a fresh contiguous buffer by candle's strided-copy kernel.
/// (Used by the cuDNN convolutions, whose descriptors here are packed NCHW, and by the NVRTC
/// kernels of [`norm`], [`gate`] and [`elementwise`], which index dense data.)
pub(crate) enum Dense<'a> {
    /// Contiguous already: the storage and the element range the layout covers.
    Borrowed(&'a CudaStorage, usize, usize),
    /// A contiguous copy with this many elements.
    Owned(CudaStorage, usize),
}

impl<'a> Dense<'a> {
    /// Views `storage` through `layout` as dense data, copying only if needed.
    pub(crate) fn new(storage: &'a CudaStorage, layout: &Layout) -> Result<Self> {
        if let Some((start, end)) = layout.contiguous_offsets() {
            return Ok(Dense::Borrowed(storage, start, end));
        }
        let n = layout.shape().elem_count();
        let dev = storage.device();
        let mut copy =
            candle_core::backend::BackendDevice::zeros_impl(dev, layout.shape(), storage.dtype())?;
        storage.copy_strided_src(&mut copy, 0, layout)?;
        Ok(Dense::Owned(copy, n))
    }

    /// The dense elements as a typed device view.
    pub(crate) fn view<T: CudaDType + DeviceRepr>(&self) -> Result<CudaView<'_, T>> {
        match self {
            Dense::Borrowed(s, start, end) => Ok(s.as_cuda_slice::<T>()?.slice(*start..*end)),
            Dense::Owned(s, n) => Ok(s.as_cuda_slice::<T>()?.slice(0..*n)),
        }
    }
}

/// Wraps a freshly computed device buffer as candle storage on `storage`'s device.
pub(crate) fn wrap<T: CudaDType>(slice: CudaSlice<T>, like: &CudaStorage) -> CudaStorage {
    CudaStorage::wrap_cuda_slice(slice, like.device().clone())
}

/// Threads per block of the NVRTC kernels' launches.
pub(crate) const THREADS: u32 = 256;

/// A launch of `units / per_block` blocks (rounded up, at least 1, at most 2^20; the kernels
/// loop grid-stride over the rest) of [`THREADS`] threads.
pub(crate) fn launch(units: usize, per_block: usize) -> LaunchConfig {
    let blocks = units.div_ceil(per_block.max(1)).clamp(1, 1 << 20) as u32;
    LaunchConfig {
        grid_dim: (blocks, 1, 1),
        block_dim: (THREADS, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// A size as the kernels' `long long`.
pub(crate) fn to_i64(v: usize, what: &str) -> Result<i64> {
    match i64::try_from(v) {
        Ok(v) => Ok(v),
        Err(_) => bail!("{what} (cuda): size {v} does not fit in i64"),
    }
}

/// An f32 operand packed dense, with its element count checked against `len`.
pub(crate) fn dense_f32<'a>(
    storage: &'a CudaStorage,
    layout: &Layout,
    len: usize,
    what: &str,
) -> Result<Dense<'a>> {
    if storage.dtype() != candle_core::DType::F32 {
        bail!("{what} (cuda): f32 only, got {:?}", storage.dtype())
    }
    let n = layout.shape().elem_count();
    if n != len {
        bail!("{what} (cuda): {n} values, expected {len}")
    }
    Dense::new(storage, layout)
}
