//! Trainable grouped 2-D convolution for candle's CPU backend: im2col + GEMM forward, and a
//! backward whose input and weight gradients are GEMMs too.
//!
//! candle 0.11 loops over groups with `chunk`/`cat` (32 small convolutions per ResNeXt layer)
//! and computes the input gradient with a direct, non-GEMM `conv_transpose2d`. Here groups are
//! handled inside one op, every pass is a `gemm` call per (image, group) unit, and units run in
//! parallel on rayon with single-threaded gemm (or in order with multi-threaded gemm when
//! there are too few units to share out). Dense convolutions on small maps run one GEMM over
//! the whole batch (`batched.rs`); dense 3x3 stride-1 padding-1 ones Winograd's F(2x2, 3x3) or
//! F(4x4, 3x3) (`winograd.rs`, on AMD Zen 5 and Zen 4 with its transforms on channel lanes,
//! `winograd_lanes.rs`) or a direct register-blocked kernel (`direct3x3.rs`), and
//! grouped 3x3 stride-1 and stride-2 ones with 4-32 channels per group that direct kernel
//! (stride 2 through `direct3x3_stride2.rs`; on CPUs with AVX-512, Intel, AMD Zen 5 and Zen 4,
//! for a multiple of 16 output channels per group, with its vectors across
//! output channels, `direct3x3_wide.rs`), and on such CPUs dense 3x3 layers on small maps a
//! direct kernel over the whole batch (`direct3x3_dense.rs`), each for the shapes where it was
//! measured faster (`select.rs`). The stem (7x7 stride 2 on the image) runs a direct kernel
//! on the image's stride phases there (`stem_direct.rs`, `stem_direct_weight_grad.rs`). Strided im2col reads each input row
//! split into its stride phases (`im2col.rs`).

mod batched;
mod direct3x3;
mod direct3x3_blocks;
mod direct3x3_dense;
mod direct3x3_dense_weight_grad;
mod direct3x3_narrow_phases;
mod direct3x3_narrow_rows;
mod direct3x3_positions512;
mod direct3x3_rows;
mod direct3x3_stride2;
mod direct3x3_wide;
mod direct3x3_wide_rows;
mod epilogue;
mod forward;
mod geometry;
mod im2col;
mod input_grad;
mod input_grad_phases;
pub(crate) mod matmul;
mod partial_sums;
mod pointwise_nchw;
mod pointwise_strided;
mod prefetch;
#[cfg(test)]
mod reference;
pub(crate) mod schedule;
mod scratch;
mod select;
mod stem_column_planes;
mod stem_direct;
mod stem_direct_weight_grad;
pub(crate) mod storage;
mod weight_grad;
mod weight_packs;
mod winograd;
#[cfg(target_arch = "x86_64")]
mod winograd_lanes;
mod winograd_plan;

pub use crate::cpu_features::{cpu_kind, CpuKind};
pub use forward::{forward_macs, Conv2d};
pub use geometry::ConvGeometry;
pub use input_grad::Conv2dInputGrad;
pub use select::{
    direct_3x3, direct_dense, direct_runs_wide, eval_winograd_tile, stem_direct, with_algorithm,
    Algorithm, Pass,
};
pub use weight_grad::Conv2dWeightGrad;
pub use weight_packs::WeightPacks;

/// The three passes on dense row-major slices, for ops that fuse a convolution with more.
pub(crate) use {
    forward::eval_forward_into_then, forward::forward, forward::forward_into_then,
    input_grad::input_grad, input_grad::input_grad_into, scratch::zeroed, scratch::Scratch,
    weight_grad::weight_grad,
};

use candle_core::{DType, Result, Tensor};

/// Convolves NCHW `x` `(N, C_in, H, W)` with `w` `(C_out, C_in/groups, KH, KW)`: square
/// `stride`, symmetric zero `padding`, dilation 1, no bias; PyTorch's `F.conv2d` semantics.
/// Differentiable with respect to both `x` and `w`.
///
/// f32 tensors on the CPU run [`Conv2d`]; so do CUDA tensors in a build with the `cuda`
/// feature (cuDNN with native groups under `cudnn`, see `cuda/conv.rs`). bf16/f16 on the CPU
/// (where candle's conv has no half-precision GEMM) run the f32 op on the widened inputs and
/// round the output: exact products and f32 accumulation, as tensor cores compute, so the
/// CPU emulates the GPU's half-precision numerics; gradients come back in the half dtype.
/// Other dtypes and devices fall back to candle's own `Tensor::conv2d` (same values, slower
/// grouped backward).
pub fn conv2d(
    x: &Tensor,
    w: &Tensor,
    stride: usize,
    padding: usize,
    groups: usize,
) -> Result<Tensor> {
    ConvGeometry::new(x.dims(), w.dims(), stride, padding, groups)?;
    let half = matches!(x.dtype(), DType::BF16 | DType::F16) && w.dtype() == x.dtype();
    if half && x.device().is_cpu() && w.device().is_cpu() {
        let wide = |t: &Tensor| t.to_dtype(DType::F32);
        return conv2d(&wide(x)?, &wide(w)?, stride, padding, groups)?.to_dtype(x.dtype());
    }
    let cpu_f32 = x.device().is_cpu()
        && w.device().is_cpu()
        && x.dtype() == DType::F32
        && w.dtype() == DType::F32;
    let ours_on_gpu = cfg!(feature = "cuda") && x.device().is_cuda() && w.device().is_cuda();
    if cpu_f32 || ours_on_gpu {
        x.apply_op2(
            w,
            Conv2d {
                stride,
                padding,
                groups,
            },
        )
    } else {
        x.conv2d(w, padding, stride, 1, groups)
    }
}

/// `dst (m x n) = a (m x k) @ b (k x n)`, all dense row-major f32, on every rayon thread:
/// the GEMM the convolutions run, exposed so benchmarks can report the machine's ceiling.
///
/// Panics if a slice is shorter than its matrix.
pub fn sgemm(dst: &mut [f32], a: &[f32], b: &[f32], m: usize, k: usize, n: usize) {
    matmul::matmul(
        dst,
        false,
        matmul::MatRef::row_major(a, m, k),
        matmul::MatRef::row_major(b, k, n),
        schedule::gemm_threads(),
    )
}

/// Test inputs: `len` values in [-1, 1), a different sequence for each `seed`. The seed is
/// spread over the high bits first: added as it is, neighbouring seeds (7 and 8) changed only
/// the low bits that the shift drops, and gave the same sequence.
#[cfg(test)]
pub(crate) fn test_values(len: usize, seed: u32) -> Vec<f32> {
    let offset = seed.wrapping_mul(0x9E37_79B9);
    (0..len as u32)
        .map(|i| {
            ((i.wrapping_mul(2654435761).wrapping_add(offset) >> 8) % 1000) as f32 / 500.0 - 1.0
        })
        .collect()
}

/// Test inputs with many significant bits (24), so that any change in the order of a sum or
/// in its operands shows in the last bits, where [`test_values`]' thousand levels could add
/// up exactly in any order: `len` values in [-1, 1), a different sequence for each `seed`.
#[cfg(test)]
pub(crate) fn test_values_fine(len: usize, seed: u32) -> Vec<f32> {
    let mut s = seed;
    (0..len)
        .map(|_| {
            s = s.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            (s >> 8) as f32 / (1u32 << 24) as f32 * 2.0 - 1.0
        })
        .collect()
}

/// How many positions of two equally long slices hold different bits (the unit tests' twin
/// of the integration tests' `support::differing_bits`).
#[cfg(test)]
pub(crate) fn differing_bits(a: &[f32], b: &[f32]) -> usize {
    assert_eq!(a.len(), b.len(), "differing_bits: lengths differ");
    a.iter()
        .zip(b)
        .filter(|(p, q)| p.to_bits() != q.to_bits())
        .count()
}

#[cfg(test)]
mod tests {
    use super::select::{with_algorithm, Algorithm};
    use super::test_values as values;
    use super::*;

    /// Into a buffer full of NaN, every path of the forward and of the input gradient writes
    /// every value: the same bits as into a zeroed one, the contract the training blocks and
    /// the inference pass rely on when they reuse pooled buffers. Shapes reach the per-unit GEMM
    /// (pointwise and 3x3 through im2col / col2im, stride 1 and 2), the whole-batch GEMM on
    /// small maps (both), the direct kernel (stride 1 and 2), Winograd F(2x2, 3x3) and
    /// F(4x4, 3x3), and the 7x7 stem.
    #[test]
    fn every_path_writes_every_value_of_a_reused_buffer() {
        // (N, C_in, C_out, H, K, stride, padding, groups, algorithm)
        let cases = [
            (2, 8, 16, 12, 1, 1, 0, 1, Algorithm::Gemm),
            (2, 8, 16, 12, 3, 1, 1, 1, Algorithm::Gemm),
            (2, 8, 16, 12, 3, 2, 1, 1, Algorithm::Gemm),
            (2, 8, 16, 12, 1, 2, 0, 1, Algorithm::Gemm),
            (4, 8, 16, 6, 1, 1, 0, 1, Algorithm::Gemm),
            (4, 8, 16, 6, 3, 1, 1, 1, Algorithm::Gemm),
            (2, 16, 16, 10, 3, 1, 1, 2, Algorithm::Direct),
            (2, 16, 16, 10, 3, 2, 1, 2, Algorithm::Direct),
            (2, 16, 16, 9, 3, 2, 1, 2, Algorithm::Direct),
            (2, 8, 16, 9, 3, 1, 1, 1, Algorithm::Gemm),
            (2, 8, 8, 10, 3, 1, 1, 1, Algorithm::Winograd2),
            (2, 8, 8, 10, 3, 1, 1, 1, Algorithm::Winograd4),
            (2, 3, 8, 20, 7, 2, 3, 1, Algorithm::Gemm),
        ];
        for (i, &(n, c_in, c_out, h, k, stride, pad, groups, algo)) in cases.iter().enumerate() {
            let w_dims = [c_out, c_in / groups, k, k];
            let g = ConvGeometry::new(&[n, c_in, h, h], &w_dims, stride, pad, groups).unwrap();
            let w = values(w_dims.iter().product(), i as u32);
            let x = values(n * c_in * h * h, 50 + i as u32);
            let dy = values(g.units() * g.out_unit_len(), 100 + i as u32);
            type Pass<'a> = &'a dyn Fn(&mut [f32]);
            let passes: [(&str, usize, Pass<'_>); 2] = [
                ("forward", dy.len(), &|y| {
                    forward::forward_into(&g, &x, &w, y)
                }),
                ("input gradient", x.len(), &|dx| {
                    input_grad_into(&g, &dy, &w, dx)
                }),
            ];
            for (pass, len, run) in passes {
                let (zeroed, reused) = with_algorithm(algo, || {
                    let (mut zeroed, mut reused) = (vec![0.0; len], vec![f32::NAN; len]);
                    run(&mut zeroed);
                    run(&mut reused);
                    (zeroed, reused)
                });
                let differ = super::differing_bits(&zeroed, &reused);
                assert_eq!(
                    differ, 0,
                    "case {i} ({algo:?}), {pass}: {differ} values differ"
                );
            }
        }
    }
}
