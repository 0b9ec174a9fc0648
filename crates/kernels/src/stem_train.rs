//! A ResNet stem in training mode as one op: the convolution, its BatchNorm and ReLU
//! (`conv_bn.rs`'s stage) and the max-pool after them (`max_pool2d.rs`).
//!
//! As two ops, the stem's output before the pool (64 channels at half the input's size, the
//! largest map of the network: 25.7 MB at batch 32 and 112x112) is a node of candle's graph,
//! and candle's backward gives its gradient a zero-filled buffer and then adds the pool's
//! gradient into it. Inside one op the pool's gradient is handed straight to the BatchNorm's
//! backward.

use crate::batch_norm::{lock, recorded_stats};
use crate::conv2d::storage::dense_f32;
use crate::conv_bn::{stage_backward, stage_forward, OutputGrad, Saved};
use crate::fused_operands::{cpu_values, fused_conv_geometry};
use crate::max_pool2d::{forward_f32_with_cells, scatter_cells};
use crate::profile::timed;
use crate::{BatchStats, ConvGeometry, ConvParams, PoolGeometry};
use candle_core::{bail, CpuStorage, CustomOp3, Layout, Result, Shape, Tensor};
use std::sync::{Arc, Mutex};

/// A max-pool's window: `kernel x kernel`, moved by `stride`, over an input padded by
/// `padding` on each side, its last window kept when it starts inside the input (`ceil_mode`),
/// as [`max_pool2d`](fn@crate::max_pool2d) takes them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MaxPoolParams {
    /// Window size, both axes.
    pub kernel: usize,
    /// Step between windows, both axes.
    pub stride: usize,
    /// Implicit `-inf` padding on each side.
    pub padding: usize,
    /// PyTorch's `ceil_mode`.
    pub ceil_mode: bool,
}

/// `max_pool2d(relu(batch_norm_train(conv2d(x, w), weight, bias)))` as one op, with the
/// BatchNorm's batch statistics for the running averages (which the caller owns).
/// Differentiable in `x`, `w`, `weight` and `bias`; the values equal those of
/// [`conv_bn_train`](crate::conv_bn_train) (with its ReLU) then
/// [`max_pool2d`](fn@crate::max_pool2d) bit for bit, and the gradients up to the sign of zero
/// gradients. f32 on the CPU only ([`conv_bn_applies`](crate::conv_bn_applies)).
pub fn conv_bn_relu_max_pool_train(
    x: &Tensor,
    w: &Tensor,
    (weight, bias): (&Tensor, &Tensor),
    conv: ConvParams,
    eps: f64,
    pool: MaxPoolParams,
) -> Result<(Tensor, BatchStats)> {
    let geometry = fused_conv_geometry(
        "conv_bn_relu_max_pool_train",
        (x, w),
        ([weight, bias], "weight and bias"),
        None,
        conv,
    )?;
    let (n, c, h, w_out) = geometry.output_dims();
    let pool = PoolGeometry::new(
        &[n, c, h, w_out],
        pool.kernel,
        pool.stride,
        pool.padding,
        pool.ceil_mode,
    )?;
    // One (2C) parameter tensor: a candle op takes at most three inputs.
    let affine = Tensor::cat(&[weight, bias], 0)?;
    let saved = Arc::new(Mutex::new(None));
    let op = StemTrain {
        geometry,
        pool,
        eps,
        saved: saved.clone(),
    };
    let y = x.apply_op3_arc(
        w,
        &affine,
        Arc::new(Box::new(op) as Box<dyn CustomOp3 + Send + Sync>),
    )?;
    let stats = recorded_stats(&saved, "conv_bn_relu_max_pool_train", |s: &StemSaved| {
        &s.stage.bn
    })?;
    Ok((y, stats))
}

/// What the forward keeps: the stage's state, and each pooled output's first maximum (its
/// cell in the stage's output plane), where the backward sends the output's gradient.
#[derive(Debug)]
struct StemSaved {
    stage: Saved,
    cells: Vec<u32>,
}

/// The op: (`x`, `w`, `[weight; bias]`) -> the pooled map.
#[derive(Debug)]
struct StemTrain {
    geometry: ConvGeometry,
    pool: PoolGeometry,
    eps: f64,
    saved: Arc<Mutex<Option<StemSaved>>>,
}

impl StemTrain {
    /// The pooled map's dims.
    fn output_dims(&self) -> [usize; 4] {
        let g = &self.geometry;
        [
            g.batch,
            g.out_channels,
            self.pool.rows.output,
            self.pool.cols.output,
        ]
    }
}

impl CustomOp3 for StemTrain {
    fn name(&self) -> &'static str {
        "mtanet-stem-train"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        ws: &CpuStorage,
        wl: &Layout,
        affs: &CpuStorage,
        affl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let g = &self.geometry;
        if xl.dims() != Shape::from(g.input_dims()).dims()
            || wl.dims() != Shape::from(g.weight_dims()).dims()
            || affl.shape().elem_count() != 2 * g.out_channels
        {
            bail!("conv_bn_relu_max_pool_train: inputs changed shape since the op was built")
        }
        let x = dense_f32(xs, xl, "input")?;
        let w = dense_f32(ws, wl, "conv weight")?;
        let affine = dense_f32(affs, affl, "BatchNorm weight and bias")?;
        let (h, stage) = stage_forward(g, &x, &w, &affine, (self.eps, true), (None, None))?;
        let hl = Layout::contiguous(g.output_dims());
        let (y, cells) = timed(
            || "max-pool fwd".into(),
            || forward_f32_with_cells(&h, &hl, &self.pool),
        )?;
        *lock(&self.saved)? = Some(StemSaved { stage, cells });
        Ok((CpuStorage::F32(y), Shape::from(&self.output_dims())))
    }

    /// The pool's gradient (each window's output gradient to its first maximum) is the
    /// BatchNorm output's gradient; the BatchNorm backward recomputes its ReLU mask.
    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _affine: &Tensor,
        _y: &Tensor,
        grad_y: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let g = &self.geometry;
        let saved = lock(&self.saved)?;
        let Some(s) = saved.as_ref() else {
            bail!("conv_bn_relu_max_pool_train: backward before forward")
        };
        let op = "conv_bn_relu_max_pool_train";
        let (xs, xl) = x.storage_and_layout();
        let (ws, wl) = w.storage_and_layout();
        let (gs, gl) = grad_y.storage_and_layout();
        let xv = cpu_values(op, &xs, xl, "input")?;
        let wv = cpu_values(op, &ws, wl, "conv weight")?;
        let gv = cpu_values(op, &gs, gl, "output gradient")?;
        let grad_h = timed(
            || "max-pool bwd".into(),
            || {
                let grad_layout = Layout::contiguous(&self.output_dims());
                scatter_cells(&s.cells, &gv, &grad_layout, &self.pool)
            },
        )?;
        stage_backward(
            g,
            &s.stage,
            (&xv, &wv),
            OutputGrad::Values(&grad_h),
            true,
            x.track_op(),
        )
        .into_tensors(x, w)
    }
}
