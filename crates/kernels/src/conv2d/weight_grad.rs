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

/// Sums the contributions of `images` into group `group`'s weight gradient `dw_group`
/// (`C_out/groups x patch_len`, row-major), overwriting it.
///
/// The sum is kept column-major (`patch_len x C_out/groups` row-major) while it runs: gemm then
/// repacks only the small output-gradient block, not the large column matrix.
fn accumulate_group(
    g: &ConvGeometry,
    x: &[f32],
    dy: &[f32],
    group: usize,
    images: Range<usize>,
    dw_group: &mut [f32],
    par: Parallelism,
) {
    let (k, p, c_out) = (g.patch_len(), g.out_pixels(), g.group_out_channels());
    let mut sum_t = vec![0.0f32; c_out * k];
    for (i, image) in images.enumerate() {
        let unit = image * g.groups + group;
        let dy_unit = MatRef::row_major(g.output_unit(dy, unit), c_out, p);
        let x_unit = g.input_unit(x, unit);
        if g.is_pointwise() {
            let col_t = MatRef::row_major(x_unit, k, p).t();
            matmul_strided(&mut sum_t, true, i > 0, dy_unit, col_t, par);
        } else {
            with_columns(k * p, |col| {
                im2col(g, x_unit, col);
                let col_t = MatRef::row_major(col, k, p).t();
                matmul_strided(&mut sum_t, true, i > 0, dy_unit, col_t, par);
            });
        }
    }
    for (o, row) in dw_group.chunks_exact_mut(k).enumerate() {
        for (j, v) in row.iter_mut().enumerate() {
            *v = sum_t[j * c_out + o];
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
            accumulate_group(g, x, dy, group, range, dw_g, par);
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
