//! The device's stream-ordered memory pool (`cuMemAllocAsync`, which cudarc uses for every
//! candle tensor and cuDNN workspace when the device supports it).
//!
//! The pool's release threshold is 0 by default: at every synchronisation the driver returns
//! all freed memory to the system, so a training loop that synchronises once per step maps its
//! activations anew in every step. [`keep_freed_memory`] raises the threshold to "never
//! release" once per device, so freed blocks are reused as PyTorch's caching allocator reuses
//! them. [`reset_peak`] and [`peak_bytes`] read the pool's high-water mark of memory in use.

use candle_core::cuda_backend::cudarc::driver::{result, sys};
use candle_core::cuda_backend::{CudaDevice, DeviceId, WrapErr};
use candle_core::Result;
use std::collections::HashSet;
use std::sync::{LazyLock, Mutex};

/// Devices whose pool threshold is already raised.
static RAISED: LazyLock<Mutex<HashSet<DeviceId>>> = LazyLock::new(|| Mutex::new(HashSet::new()));

/// The memory pool `cuMemAllocAsync` draws from on `dev`.
fn pool(dev: &CudaDevice) -> Result<sys::CUmemoryPool> {
    let ctx = dev.cuda_stream().context().clone();
    ctx.bind_to_thread().w()?;
    // SAFETY: `cu_device` is the live device of the context just bound.
    unsafe { result::device::get_mem_pool(ctx.cu_device()) }.w()
}

/// A 64-bit pool attribute.
fn get(pool: sys::CUmemoryPool, attr: sys::CUmemPool_attribute) -> Result<u64> {
    let mut v = 0u64;
    // SAFETY: the attributes read here are all `cuuint64_t`.
    unsafe { result::mem_pool::get_attribute(pool, attr, (&mut v as *mut u64).cast()) }.w()?;
    Ok(v)
}

/// Sets a 64-bit pool attribute.
fn set(pool: sys::CUmemoryPool, attr: sys::CUmemPool_attribute, mut v: u64) -> Result<()> {
    // SAFETY: the attributes written here are all `cuuint64_t`.
    unsafe { result::mem_pool::set_attribute(pool, attr, (&mut v as *mut u64).cast()) }.w()
}

/// Raises the release threshold of `dev`'s pool to `u64::MAX` (freed memory stays in the
/// pool for reuse), once per device and process. A device without stream-ordered allocation
/// (cudarc then uses `cuMemAlloc`) is left as it is.
pub fn keep_freed_memory(dev: &CudaDevice) -> Result<()> {
    let ctx = dev.cuda_stream().context().clone();
    if !ctx.has_async_alloc() {
        return Ok(());
    }
    let mut raised = match RAISED.lock() {
        Ok(r) => r,
        Err(poisoned) => poisoned.into_inner(),
    };
    if raised.contains(&dev.id()) {
        return Ok(());
    }
    let p = pool(dev)?;
    set(
        p,
        sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_RELEASE_THRESHOLD,
        u64::MAX,
    )?;
    raised.insert(dev.id());
    Ok(())
}

/// The pool's release threshold on `dev` (bytes kept after a synchronisation).
pub fn release_threshold(dev: &CudaDevice) -> Result<u64> {
    get(
        pool(dev)?,
        sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_RELEASE_THRESHOLD,
    )
}

/// Restarts the high-water mark of memory in use in `dev`'s pool from the memory in use now.
pub fn reset_peak(dev: &CudaDevice) -> Result<()> {
    dev.cuda_stream().synchronize().w()?;
    set(
        pool(dev)?,
        sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_USED_MEM_HIGH,
        0,
    )
}

/// The high-water mark of memory in use in `dev`'s pool since the last [`reset_peak`], in
/// bytes (after synchronising the stream).
pub fn peak_bytes(dev: &CudaDevice) -> Result<u64> {
    dev.cuda_stream().synchronize().w()?;
    get(
        pool(dev)?,
        sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_USED_MEM_HIGH,
    )
}
