//! Explicit CPU fallback for CUDA tensors: copy the operands to the host, run the op's CPU
//! kernel, copy the result back. Used for the convolutions when the crate is built with `cuda`
//! but without `cudnn`; correct, but every call crosses PCIe twice, so it is announced once on
//! stderr.

use candle_core::backend::{BackendDevice, BackendStorage};
use candle_core::{CudaStorage, CustomOp2, Layout, Result, Shape};
use std::sync::Once;

static ANNOUNCE: Once = Once::new();

/// Runs `op`'s CPU forward on host copies of two CUDA operands and uploads the result.
///
/// `to_cpu_storage` copies each whole device buffer, so the layouts (offsets and strides) stay
/// valid on the host copies.
pub fn via_host2<O: CustomOp2>(
    op: &O,
    a: &CudaStorage,
    a_layout: &Layout,
    b: &CudaStorage,
    b_layout: &Layout,
) -> Result<(CudaStorage, Shape)> {
    ANNOUNCE.call_once(|| {
        eprintln!(
            "mtanet-kernels: `{}` on CUDA runs on the CPU (host round trip): this build has \
             no cuDNN; rebuild with `--features cuda,cudnn`",
            op.name()
        )
    });
    let (a_host, b_host) = (a.to_cpu_storage()?, b.to_cpu_storage()?);
    let (out, shape) = op.cpu_fwd(&a_host, a_layout, &b_host, b_layout)?;
    Ok((a.device().storage_from_cpu_storage_owned(out)?, shape))
}
