//! Input gradient: per (image, group) unit, `dcol = W_g^T @ dY_g` then col2im.

use super::geometry::ConvGeometry;
use super::im2col::col2im_add;
use super::matmul::{matmul, MatRef};
use super::schedule::for_each_unit;
use super::scratch::{fill_zero, with_columns};
use super::select::{direct_3x3, direct_dense, winograd_tile, Pass};
use super::storage::pass_operands;
use candle_core::{CpuStorage, CustomOp2, Layout, Result, Shape};

/// Gradient `(N, C_in, H, W)` of the loss with respect to the convolution input, from the
/// output gradient `dy` `(N, C_out, OH, OW)` and the weight `w`, both dense row-major.
pub fn input_grad(g: &ConvGeometry, dy: &[f32], w: &[f32]) -> Vec<f32> {
    let mut dx = super::scratch::zeroed(g.units() * g.in_unit_len());
    input_grad_into(g, dy, w, &mut dx);
    dx
}

/// [`input_grad`] into `dx` (`N * C_in * H*W` values), whatever it held: every value is
/// written (the paths that add into their output zero it first), so a reused buffer needs no
/// zero-fill.
pub fn input_grad_into(g: &ConvGeometry, dy: &[f32], w: &[f32], dx: &mut [f32]) {
    assert_eq!(
        dx.len(),
        g.units() * g.in_unit_len(),
        "conv2d: input gradient length"
    );
    if direct_dense(g, Pass::InputGrad) {
        return super::direct3x3_dense::input_grad_into(g, dy, w, dx);
    }
    if let Some(tile) = winograd_tile(g, Pass::InputGrad) {
        return super::winograd::input_grad_into(tile, g, dy, w, dx);
    }
    if direct_3x3(g, Pass::InputGrad) {
        return super::direct3x3::input_grad_into(g, dy, w, dx);
    }
    if super::pointwise_nchw::applies(g) {
        return super::pointwise_nchw::input_grad_into(g, dy, w, dx);
    }
    if super::pointwise_strided::applies(g) {
        return super::pointwise_strided::input_grad_into(g, dy, w, dx);
    }
    if super::input_grad_phases::applies(g) {
        return super::input_grad_phases::input_grad_into(g, dy, w, dx);
    }
    if super::batched::applies(g) {
        return super::batched::input_grad_into(g, dy, w, dx);
    }
    let (k, p, c_out) = (g.patch_len(), g.out_pixels(), g.group_out_channels());
    if !g.is_pointwise() {
        // col2im adds each column into place.
        fill_zero(dx);
    }
    for_each_unit(dx, g.in_unit_len(), |unit, dx_unit, par| {
        let dy_unit = MatRef::row_major(g.output_unit(dy, unit), c_out, p);
        let w_t = MatRef::row_major(g.weight_group(w, g.group_of(unit)), c_out, k).t();
        if g.is_pointwise() {
            matmul(dx_unit, false, w_t, dy_unit, par);
        } else {
            with_columns(k * p, |col| {
                matmul(col, false, w_t, dy_unit, par);
                col2im_add(g, &mut *col, dx_unit);
            });
        }
    });
}

/// The input-gradient pass as a no-backward candle op: `dy.apply_op2_no_bwd(&w, ..)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Conv2dInputGrad {
    /// Shapes of the forward convolution.
    pub geometry: ConvGeometry,
}

impl CustomOp2 for Conv2dInputGrad {
    fn name(&self) -> &'static str {
        "mtanet-conv2d-input-grad"
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        a: &candle_core::CudaStorage,
        a_layout: &Layout,
        b: &candle_core::CudaStorage,
        b_layout: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        crate::cuda::conv::input_grad(self, a, a_layout, b, b_layout)
    }

    fn cpu_fwd(
        &self,
        dy_storage: &CpuStorage,
        dy_layout: &Layout,
        w_storage: &CpuStorage,
        w_layout: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let g = &self.geometry;
        let (out_dims, w_dims) = (Shape::from(g.output_dims()), Shape::from(g.weight_dims()));
        let [dy, w] = pass_operands(
            "conv2d input grad",
            [
                (dy_storage, dy_layout, out_dims.dims(), "output gradient"),
                (w_storage, w_layout, w_dims.dims(), "weight"),
            ],
        )?;
        let dx = input_grad(g, &dy, &w);
        Ok((CpuStorage::F32(dx), Shape::from(g.input_dims())))
    }
}
