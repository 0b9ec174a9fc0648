//! Forward pass: per (image, group) unit, im2col then one GEMM `W_g @ col`.

use super::epilogue::Epilogue;
use super::geometry::ConvGeometry;
use super::im2col::im2col;
use super::input_grad::Conv2dInputGrad;
use super::matmul::{matmul, MatRef};
use super::schedule::for_each_unit;
use super::scratch::with_columns;
use super::select::{
    direct_3x3, direct_dense, eval_winograd_tile, stem_direct, winograd_tile, Pass,
};
use super::storage::dense_f32;
use super::weight_grad::Conv2dWeightGrad;
use super::weight_packs::WeightPacks;
use super::winograd_plan::Tile;
use candle_core::{CpuStorage, CustomOp2, Layout, Result, Shape, Tensor};
use std::sync::atomic::{AtomicU64, Ordering};

/// Multiply-adds done by every CPU convolution forward pass since the process started.
static FORWARD_MACS: AtomicU64 = AtomicU64::new(0);

/// Multiply-adds (one multiply plus one add each) done by every CPU [`Conv2d`] forward pass
/// since the process started: benchmarks read it before and after one forward to report
/// achieved GFLOP/s.
pub fn forward_macs() -> u64 {
    FORWARD_MACS.load(Ordering::Relaxed)
}

/// Output `(N, C_out, OH, OW)` of the convolution of NCHW `x` with `w`, both dense row-major.
///
/// A 1x1 stride-1 unpadded convolution multiplies the input unit directly (no im2col).
pub fn forward(g: &ConvGeometry, x: &[f32], w: &[f32]) -> Vec<f32> {
    let mut y = super::scratch::zeroed(g.units() * g.out_unit_len());
    forward_into(g, x, w, &mut y);
    y
}

/// [`forward`] into `y` (`N * C_out * OH*OW` values, every one overwritten).
pub fn forward_into(g: &ConvGeometry, x: &[f32], w: &[f32], y: &mut [f32]) {
    forward_into_then(g, x, w, y, &|_, _| {})
}

/// [`forward_into`], then `then(unit, y_unit)` on each unit's output as soon as it is written,
/// while it is still in cache (a folded BatchNorm's shift and ReLU, for example).
pub fn forward_into_then(
    g: &ConvGeometry,
    x: &[f32],
    w: &[f32],
    y: &mut [f32],
    then: Epilogue<'_>,
) {
    let tile = winograd_tile(g, Pass::Forward);
    forward_with(g, x, (w, None), tile, y, then)
}

/// The forward of an evaluation ([`forward_into_then`]'s output and epilogue), where the
/// weights stay the same over many calls: with the layer's [`WeightPacks`], the layouts the
/// kernels derive from `w` are taken from there (derived and kept there on the first call),
/// with the same values as without. The algorithm differs from the training forward's where
/// a kept layout pays for it (`select.rs`'s [`eval_winograd_tile`]), so an evaluation's values
/// are those of this forward, with or without the store, not the training forward's.
pub fn eval_forward_into_then(
    g: &ConvGeometry,
    x: &[f32],
    w: (&[f32], Option<&WeightPacks>),
    y: &mut [f32],
    then: Epilogue<'_>,
) {
    forward_with(g, x, w, eval_winograd_tile(g), y, then)
}

/// The forward with `tile` as the Winograd choice ([`winograd_tile`]'s or
/// [`eval_winograd_tile`]'s).
fn forward_with(
    g: &ConvGeometry,
    x: &[f32],
    (w, packs): (&[f32], Option<&WeightPacks>),
    tile: Option<Tile>,
    y: &mut [f32],
    then: Epilogue<'_>,
) {
    let (k, p, c_out) = (g.patch_len(), g.out_pixels(), g.group_out_channels());
    assert_eq!(
        y.len(),
        g.units() * g.out_unit_len(),
        "conv2d: output length"
    );
    FORWARD_MACS.fetch_add((g.units() * c_out * k * p) as u64, Ordering::Relaxed);
    if stem_direct(g, Pass::Forward) {
        return super::stem_direct::forward_into(g, x, w, y, then);
    }
    // The evaluation's Winograd choice first: on Zen 4 it differs from the training forward's
    // dense kernel on 4x4 maps with 512 channels (`select.rs`).
    if let Some(tile) = tile {
        return super::winograd::forward_into(tile, g, x, (w, packs), y, then);
    }
    if direct_dense(g, Pass::Forward) {
        return super::direct3x3_dense::forward_into(g, x, (w, packs), y, then);
    }
    if direct_3x3(g, Pass::Forward) {
        return super::direct3x3::forward_into(g, x, (w, packs), y, then);
    }
    if super::pointwise_strided::forward_applies(g) {
        return super::pointwise_strided::forward_into(g, x, w, y, then);
    }
    if super::pointwise_nchw::forward_applies(g) {
        return super::pointwise_nchw::forward_into(g, x, w, y, then);
    }
    if super::batched::forward_applies(g) {
        return super::batched::forward_into(g, x, w, y, then);
    }
    for_each_unit(y, g.out_unit_len(), |unit, y_unit, par| {
        let x_unit = g.input_unit(x, unit);
        let w_group = MatRef::row_major(g.weight_group(w, g.group_of(unit)), c_out, k);
        if g.is_pointwise() {
            matmul(y_unit, false, w_group, MatRef::row_major(x_unit, k, p), par);
        } else {
            with_columns(k * p, |col| {
                im2col(g, x_unit, col);
                matmul(y_unit, false, w_group, MatRef::row_major(col, k, p), par);
            });
        }
        then(unit, y_unit);
    });
}

/// Grouped 2-D convolution of an NCHW f32 input with a `(C_out, C_in/groups, KH, KW)` weight
/// as a candle op: `x.apply_op2(&w, Conv2d { .. })`. Square stride and zero padding,
/// dilation 1, no bias. Its backward returns the gradients of both the input and the weight,
/// each computed by its own op ([`Conv2dInputGrad`], [`Conv2dWeightGrad`]; GEMM-based, or
/// Winograd / direct where `select.rs` picks them).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Conv2d {
    /// Step between output positions, both axes.
    pub stride: usize,
    /// Zero padding on each side, both axes.
    pub padding: usize,
    /// Channel groups (1 = dense).
    pub groups: usize,
}

impl Conv2d {
    fn geometry(&self, x_dims: &[usize], w_dims: &[usize]) -> Result<ConvGeometry> {
        ConvGeometry::new(x_dims, w_dims, self.stride, self.padding, self.groups)
    }
}

impl CustomOp2 for Conv2d {
    fn name(&self) -> &'static str {
        "mtanet-conv2d"
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        a: &candle_core::CudaStorage,
        a_layout: &Layout,
        b: &candle_core::CudaStorage,
        b_layout: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        crate::cuda::conv::forward(self, a, a_layout, b, b_layout)
    }

    fn cpu_fwd(
        &self,
        x_storage: &CpuStorage,
        x_layout: &Layout,
        w_storage: &CpuStorage,
        w_layout: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let g = self.geometry(x_layout.dims(), w_layout.dims())?;
        let x = dense_f32(x_storage, x_layout, "input")?;
        let w = dense_f32(w_storage, w_layout, "weight")?;
        let y = forward(&g, &x, &w);
        Ok((CpuStorage::F32(y), Shape::from(g.output_dims())))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _y: &Tensor,
        grad_y: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let geometry = self.geometry(x.dims(), w.dims())?;
        // The network input (the stem's `x`) needs no gradient: skip that whole pass.
        let grad_x = if x.track_op() {
            Some(grad_y.apply_op2_no_bwd(w, &Conv2dInputGrad { geometry })?)
        } else {
            None
        };
        let grad_w = if w.track_op() {
            Some(x.apply_op2_no_bwd(grad_y, &Conv2dWeightGrad { geometry })?)
        } else {
            None
        };
        Ok((grad_x, grad_w))
    }
}
