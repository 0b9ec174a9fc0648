//! The capture range of a profiler attached to the process: Nsight Compute started with
//! `--profile-from-start off` (or Nsight Systems with `--capture-range=cudaProfilerApi`)
//! records only the kernels launched between [`start`] and [`stop`], so a profile can leave
//! out a first step's one-off work (cuDNN's algorithm measurement, NVRTC compiles) whose many
//! launches the profiler would otherwise slow down and distort. Without a profiler both calls
//! do nothing.

use candle_core::cuda_backend::cudarc::driver::sys;
use candle_core::cuda_backend::{CudaDevice, WrapErr};
use candle_core::Result;

/// Opens the capture range on `dev`'s context (`cuProfilerStart`).
pub fn start(dev: &CudaDevice) -> Result<()> {
    let ctx = dev.cuda_stream().context().clone();
    ctx.bind_to_thread().w()?;
    // SAFETY: takes no arguments and acts on the context bound to this thread just above.
    unsafe { sys::cuProfilerStart() }.result().w()
}

/// Closes the capture range on `dev`'s context (`cuProfilerStop`); kernels already launched are
/// recorded.
pub fn stop(dev: &CudaDevice) -> Result<()> {
    let ctx = dev.cuda_stream().context().clone();
    ctx.bind_to_thread().w()?;
    // SAFETY: as in `start`.
    unsafe { sys::cuProfilerStop() }.result().w()
}
