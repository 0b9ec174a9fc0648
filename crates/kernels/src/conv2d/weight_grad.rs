//! Weight gradient: `dW_g += dY_g @ col^T`, summed over the batch.

use super::geometry::ConvGeometry;
use super::im2col::im2col;
use super::matmul::{matmul_strided, MatRef};
use super::partial_sums::{image_chunk, partials, sum_partials};
use super::schedule::{gemm_threads, parallel_units_pay};
use super::scratch::with_columns;
use super::select::{direct_3x3, direct_dense, stem_direct, winograd_tile, Pass};
use super::storage::pass_operands;
use candle_core::{CpuStorage, CustomOp2, Layout, Result, Shape};
use gemm::Parallelism;
use rayon::prelude::*;
use std::ops::Range;

/// How [`accumulate_group`] keeps its running sum, which decides the operand gemm repacks for
/// every image: `dy`'s rows (`C_out/groups`) with the sum column-major, the input's
/// (`patch_len`) with it row-major.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum SumLayout {
    /// `patch_len x C_out/groups` row-major, transposed into the gradient at the end.
    ColumnMajor,
    /// The gradient's own layout, `C_out/groups x patch_len` row-major.
    RowMajor,
}

/// The layout whose repacked operand is the smaller: row-major for 1x1 layers with fewer input
/// than output channels (whose column matrix has a row per input channel), column-major
/// elsewhere (the column matrix of a larger kernel has more rows than the output channels of
/// ResNet's layers). Measured on AMD Zen 4 with `conv_passes` (wall clock of 2 threads, best of
/// 7, 3 alternating rounds, best / median), column-major -> row-major: (64 -> 256) at 28x28
/// 5.97 / 6.14 -> 4.58 / 4.67 ms at batch 32 and 2.91 / 3.05 -> 2.30 / 2.34 at batch 16, (64 ->
/// 128) 2.86 / 2.89 -> 2.48 / 2.51, (128 -> 256) 9.68 / 10.08 -> 8.94 / 8.95, (256 -> 512) at
/// 14x14 9.30 / 9.34 -> 8.73 / 8.73 at batch 32 and 5.11 / 5.20 -> 4.46 / 4.54 at batch 16; at
/// stride 2, (256 -> 512) from 28x28 10.89 / 12.31 -> 9.84 / 10.28 at batch 32 and 5.63 / 5.72
/// -> 5.29 / 5.30 at batch 16, (64 -> 256) from 56x56 7.55 / 7.60 -> 5.49 / 6.37.
fn sum_layout(g: &ConvGeometry) -> SumLayout {
    let one_by_one = (g.kernel_h, g.kernel_w) == (1, 1);
    if one_by_one && g.patch_len() < g.group_out_channels() {
        SumLayout::RowMajor
    } else {
        SumLayout::ColumnMajor
    }
}

/// Sums the contributions of `images` into group `group`'s weight gradient `dw_group`
/// (`C_out/groups x patch_len`, row-major), overwriting it, the running sum kept in `layout`.
/// Each value is the same in either layout: gemm sums every output over the pixels of an image
/// in the same order, then adds it to the running sum.
#[allow(clippy::too_many_arguments)]
fn accumulate_group(
    g: &ConvGeometry,
    x: &[f32],
    dy: &[f32],
    group: usize,
    images: Range<usize>,
    dw_group: &mut [f32],
    par: Parallelism,
    layout: SumLayout,
) {
    let (k, p, c_out) = (g.patch_len(), g.out_pixels(), g.group_out_channels());
    let transposed = layout == SumLayout::ColumnMajor;
    let mut sum_t = if transposed {
        vec![0.0f32; c_out * k]
    } else {
        Vec::new()
    };
    let sum: &mut [f32] = if transposed { &mut sum_t } else { dw_group };
    for (i, image) in images.enumerate() {
        let unit = image * g.groups + group;
        let dy_unit = MatRef::row_major(g.output_unit(dy, unit), c_out, p);
        let x_unit = g.input_unit(x, unit);
        if g.is_pointwise() {
            let col_t = MatRef::row_major(x_unit, k, p).t();
            matmul_strided(sum, transposed, i > 0, dy_unit, col_t, par);
        } else {
            with_columns(k * p, |col| {
                im2col(g, x_unit, col);
                let col_t = MatRef::row_major(col, k, p).t();
                matmul_strided(sum, transposed, i > 0, dy_unit, col_t, par);
            });
        }
    }
    if transposed {
        for (o, row) in dw_group.chunks_exact_mut(k).enumerate() {
            for (j, v) in row.iter_mut().enumerate() {
                *v = sum_t[j * c_out + o];
            }
        }
    }
}

/// Gradient `(C_out, C_in/groups, KH, KW)` of the loss with respect to the weight, from the
/// input `x` and the output gradient `dy`, both dense row-major.
///
/// The batch is cut into at most `partial_sums::PARTIALS` fixed chunks of consecutive images;
/// every (chunk, group) pair sums its images in order into its own slice (in parallel over the
/// pairs when they keep the threads busy, else with multi-threaded gemm), and the chunks are
/// then added in chunk order. gemm splits its work by output tiles, never along the summed
/// dimension, so the result is bit-identical for any thread count.
pub fn weight_grad(g: &ConvGeometry, x: &[f32], dy: &[f32]) -> Vec<f32> {
    if stem_direct(g, Pass::WeightGrad) {
        return super::stem_direct_weight_grad::weight_grad(g, x, dy);
    }
    if let Some(tile) = winograd_tile(g, Pass::WeightGrad) {
        return super::winograd::weight_grad(tile, g, x, dy);
    }
    if direct_dense(g, Pass::WeightGrad) {
        return super::direct3x3_dense_weight_grad::weight_grad(g, x, dy);
    }
    if direct_3x3(g, Pass::WeightGrad) {
        return super::direct3x3::weight_grad(g, x, dy);
    }
    if super::batched::applies(g) {
        return super::batched::weight_grad(g, x, dy);
    }
    let group_len = g.weight_group_len();
    let dw_len = g.groups * group_len;
    let chunks = partials(g.batch);
    let images = |chunk: usize| image_chunk(g.batch, chunk);
    let mut parts = vec![0.0f32; chunks * dw_len];
    let units = chunks * g.groups;
    let task = |idx: usize, dw_g: &mut [f32], par: Parallelism| {
        let (chunk, group) = (idx / g.groups, idx % g.groups);
        let range = images(chunk);
        if range.is_empty() {
            dw_g.fill(0.0);
        } else {
            accumulate_group(g, x, dy, group, range, dw_g, par, sum_layout(g));
        }
    };
    if parallel_units_pay(units) {
        parts
            .par_chunks_mut(group_len)
            .enumerate()
            .for_each(|(idx, dw_g)| task(idx, dw_g, Parallelism::None));
    } else {
        let par = gemm_threads();
        for (idx, dw_g) in parts.chunks_mut(group_len).enumerate() {
            task(idx, dw_g, par);
        }
    }
    sum_partials(parts, dw_len)
}

/// The weight-gradient pass as a no-backward candle op: `x.apply_op2_no_bwd(&dy, ..)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Conv2dWeightGrad {
    /// Shapes of the forward convolution.
    pub geometry: ConvGeometry,
}

impl CustomOp2 for Conv2dWeightGrad {
    fn name(&self) -> &'static str {
        "mtanet-conv2d-weight-grad"
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        a: &candle_core::CudaStorage,
        a_layout: &Layout,
        b: &candle_core::CudaStorage,
        b_layout: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        crate::cuda::conv::weight_grad(self, a, a_layout, b, b_layout)
    }

    fn cpu_fwd(
        &self,
        x_storage: &CpuStorage,
        x_layout: &Layout,
        dy_storage: &CpuStorage,
        dy_layout: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let g = &self.geometry;
        let (in_dims, out_dims) = (Shape::from(g.input_dims()), Shape::from(g.output_dims()));
        let [x, dy] = pass_operands(
            "conv2d weight grad",
            [
                (x_storage, x_layout, in_dims.dims(), "input"),
                (dy_storage, dy_layout, out_dims.dims(), "output gradient"),
            ],
        )?;
        let dw = weight_grad(g, &x, &dy);
        Ok((CpuStorage::F32(dw), Shape::from(g.weight_dims())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The running sum gives the same gradient, bit for bit, in either layout: 1x1 layers with
    /// fewer input than output channels (which take the row-major one; at 28x28 gemm sums each
    /// image's 784 pixels in two blocks), at stride 1 and 2, one with more, a grouped one, and
    /// a 3x3 layer.
    #[test]
    fn both_sum_layouts_give_the_same_bits() {
        // (batch, in channels, out channels, size, kernel, stride, groups)
        for (n, ci, co, hw, kernel, stride, groups) in [
            (3, 16, 48, 9, 1, 1, 1),
            (2, 16, 40, 28, 1, 1, 1),
            (2, 24, 40, 14, 1, 1, 1),
            (2, 24, 40, 15, 1, 2, 1),
            (4, 40, 24, 7, 1, 1, 1),
            (2, 16, 32, 6, 1, 1, 2),
            (2, 8, 24, 5, 3, 1, 1),
        ] {
            let g = ConvGeometry::new(
                &[n, ci, hw, hw],
                &[co, ci / groups, kernel, kernel],
                stride,
                kernel / 2,
                groups,
            )
            .expect("geometry");
            let x = super::super::test_values(n * ci * hw * hw, 5);
            let dy = super::super::test_values(n * co * g.out_pixels(), 6);
            let len = g.weight_group_len();
            for group in 0..groups {
                let [mut col, mut row] = [vec![f32::NAN; len], vec![f32::NAN; len]];
                for (layout, dw) in [
                    (SumLayout::ColumnMajor, &mut col),
                    (SumLayout::RowMajor, &mut row),
                ] {
                    accumulate_group(&g, &x, &dy, group, 0..n, dw, Parallelism::None, layout);
                }
                let differ = super::super::differing_bits(&row, &col);
                assert_eq!(
                    differ, 0,
                    "{n}x{ci}->{co} @{hw} k{kernel} s{stride} g{groups}, group {group}"
                );
            }
        }
    }
}
