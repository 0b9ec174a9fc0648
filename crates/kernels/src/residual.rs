//! The residual join of a bottleneck block, `relu(out + shortcut)`, as one op.
//!
//! candle computes it as an add then a ReLU (two full-size outputs), and the ReLU's backward
//! as `grad * (x >= 0)` through a comparison, a dtype cast, a multiply and an add. Here the
//! forward is one pass and the backward one masked copy shared by both inputs.

use crate::conv2d::storage::dense_f32;
use crate::row_tasks::written_by;
use candle_core::{bail, CpuStorage, CustomOp2, Layout, Result, Shape, Tensor};
use rayon::prelude::*;
use std::mem::MaybeUninit;

/// Values per rayon task.
const CHUNK: usize = 1 << 14;

/// `max(0, a + b)` for two f32 tensors of one shape; differentiable in both. On the CPU, and
/// on CUDA in a `cuda` build (our NVRTC kernel, `cuda/elementwise.cu`), this is one fused op;
/// elsewhere (other dtypes and devices) it is candle's `(a + b).relu()`.
pub fn add_relu(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    if a.shape() != b.shape() {
        bail!("add_relu: shapes {:?} and {:?} differ", a.dims(), b.dims())
    }
    if crate::fused_ops_apply(&[a, b]) {
        a.apply_op2(b, AddRelu)
    } else {
        (a + b)?.relu()
    }
}

/// The op behind [`add_relu`].
#[derive(Clone, Copy, Debug)]
struct AddRelu;

impl CustomOp2 for AddRelu {
    fn name(&self) -> &'static str {
        "mtanet-add-relu"
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        let y = crate::cuda::elementwise::add_relu((s1, l1), (s2, l2))?;
        Ok((y, l1.shape().clone()))
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let a = dense_f32(s1, l1, "lhs")?;
        let b = dense_f32(s2, l2, "rhs")?;
        let y = map2(&a, &b, |p, q| (p + q).max(0.0));
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }

    fn bwd(
        &self,
        _a: &Tensor,
        _b: &Tensor,
        y: &Tensor,
        grad_y: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let g = y.apply_op2_no_bwd(grad_y, &ReluMask)?;
        Ok((Some(g.clone()), Some(g)))
    }
}

/// (`y`, `grad_y`) -> `grad_y` where `y > 0`, else 0.
pub(crate) struct ReluMask;

impl CustomOp2 for ReluMask {
    fn name(&self) -> &'static str {
        "mtanet-relu-mask"
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        let out = crate::cuda::elementwise::relu_mask((s1, l1), (s2, l2))?;
        Ok((out, l1.shape().clone()))
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let y = dense_f32(s1, l1, "output")?;
        let g = dense_f32(s2, l2, "output gradient")?;
        let out = relu_masked(&y, &g);
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}

/// `grad_y` where `y > 0`, else 0: the gradient through `relu(.. + shortcut)` given its output
/// `y`, which is also the shortcut's gradient.
pub(crate) fn relu_masked(y: &[f32], grad_y: &[f32]) -> Vec<f32> {
    map2(y, grad_y, |yv, gv| if yv > 0.0 { gv } else { 0.0 })
}

/// `f(a[i], b[i])` for equal-length slices, in parallel chunks.
fn map2(a: &[f32], b: &[f32], f: impl Fn(f32, f32) -> f32 + Sync) -> Vec<f32> {
    assert_eq!(a.len(), b.len(), "map2: lengths differ");
    let fill = |out: &mut [MaybeUninit<f32>]| {
        out.par_chunks_mut(CHUNK)
            .zip(a.par_chunks(CHUNK).zip(b.par_chunks(CHUNK)))
            .for_each(|(o, (a, b))| {
                for ((o, &p), &q) in o.iter_mut().zip(a).zip(b) {
                    o.write(f(p, q));
                }
            })
    };
    // SAFETY: the chunks of the output pair with equal-length chunks of `a` (and of `b`, of
    // the same length), so every slot is written.
    unsafe { written_by(a.len(), fill) }
}
