//! CBAM's two gates and the residual join after them over plain buffers, forward and backward,
//! for the whole-block training op (`bottleneck_train.rs`):
//! `relu(u * spatial(u) + shortcut)` with `u = z * channel(z)`, where
//! `channel(z) = sigmoid(mlp(mean_hw(z)) + mlp(max_hw(z)))` is one value per (image, channel)
//! and `spatial(u) = sigmoid(bn(conv7x7([max_c(u), mean_c(u)])))` one value per (image, pixel),
//! its convolution and training BatchNorm a stage of `conv_bn.rs`.
//!
//! Each step is the arithmetic of the composed ops it replaces (the backbone's
//! `Cbam::gated_t` and `spatial_gate_add_relu`): `spatial_mean_max`'s pooling, the shared MLP of
//! `gate_mlp.rs` run once on the stacked means and maxima with the halves then summed,
//! `channel_gate`, `channel_max_mean`, the fused convolution + BatchNorm, candle-nn's
//! `sigmoid`, and the join of `spatial_gate_add_relu`. The maxima pass their gradient to the
//! first maximal pixel or channel, as PyTorch's do.

use crate::conv2d::ConvGeometry;
use crate::conv_bn::{stage_backward, stage_forward, OutputGrad, Saved as StageSaved};
use crate::gate::{
    channel_gate_grad_in_place, channel_max_mean_grad_add, channel_max_mean_values,
    gated_spatial_join, spatial_gate_grad,
};
use crate::gate_mlp::{
    mlp_backward, mlp_forward, sigmoid_grad, sigmoid_in_place, MlpParams, MlpSaved,
};
use crate::row_tasks::par_rows;
use crate::spatial_pool::row_means_maxes;
use crate::BatchStats;
use candle_core::{bail, Result};

/// The spatial gate's convolution (2 channels to 1) and its BatchNorm, as views of the packed
/// parameters.
#[derive(Clone, Copy, Debug)]
pub(crate) struct SpatialStage<'a> {
    /// The convolution's shapes, over the (N, 2, H, W) channel pooling.
    pub geometry: &'a ConvGeometry,
    /// The BatchNorm's epsilon.
    pub eps: f64,
    /// The convolution weight.
    pub weight: &'a [f32],
    /// The BatchNorm's weight, then its bias.
    pub affine: &'a [f32],
}

/// Refuses a spatial gate's convolution `g` that does not take the (N, 2, H, W) channel pooling
/// to one map of the same size; `op` names the op in the message.
pub(crate) fn check_spatial_gate(op: &str, g: &ConvGeometry) -> Result<()> {
    let (n, h, w) = (g.batch, g.in_h, g.in_w);
    if g.output_dims() != (n, 1, h, w) {
        bail!(
            "{op}: the CBAM spatial gate's convolution takes (N, 2, H, W) {:?} to {:?}, not one \
             map of the same size",
            g.input_dims(),
            g.output_dims()
        )
    }
    Ok(())
}

/// What the forward keeps for the backward.
#[derive(Debug)]
pub(crate) struct CbamSaved {
    /// The channel MLP's state; its input is the stacked means and maxima `(2N, C)`.
    mlp: MlpSaved,
    /// The first maximal pixel of each (image, channel) map of `z`.
    max_pixel: Vec<u32>,
    /// The channel gate `(N, C)`.
    channel_gate: Vec<f32>,
    /// The channel pooling of `u`, `(N, 2, pixels)`: the spatial convolution's input.
    pooled: Vec<f32>,
    /// The first maximal channel of each (image, pixel) of `u`.
    max_channel: Vec<u32>,
    /// The spatial convolution and BatchNorm's state.
    spatial: StageSaved,
    /// The spatial gate `(N, pixels)`.
    spatial_gate: Vec<f32>,
}

impl CbamSaved {
    /// The spatial BatchNorm's batch statistics, for its running averages.
    pub(crate) fn spatial_stats(&self) -> BatchStats {
        self.spatial.bn.stats()
    }
}

/// The channel gate `sigmoid(mlp(mean_hw(z)) + mlp(max_hw(z)))` `(N, C)` of `z` (`images` x C
/// maps of `pixels` values each), the MLP's state and the first maximal pixel of each map: the
/// shared MLP runs once on the stacked means and maxima, then the halves are summed.
pub(crate) fn channel_gate_forward(
    z: &[f32],
    (images, pixels): (usize, usize),
    mlp: MlpParams<'_>,
) -> (Vec<f32>, MlpSaved, Vec<u32>) {
    let rows = images * mlp.channels;
    let mut pooled_maps = vec![0f32; 2 * rows];
    let mut max_pixel = vec![0u32; rows];
    let (means, maxes) = pooled_maps.split_at_mut(rows);
    row_means_maxes(z, pixels, means, (maxes, &mut max_pixel));
    let (gate, mlp_saved) = channel_gate_of_pooled(pooled_maps, mlp);
    (gate, mlp_saved, max_pixel)
}

/// [`channel_gate_forward`]'s gate and MLP state from the maps' means and maxima already taken
/// (`pooled_maps`: every map's mean, then every map's maximum).
pub(crate) fn channel_gate_of_pooled(
    pooled_maps: Vec<f32>,
    mlp: MlpParams<'_>,
) -> (Vec<f32>, MlpSaved) {
    let rows = pooled_maps.len() / 2;
    let (out, mlp_saved) = mlp_forward(pooled_maps, mlp);
    let (from_means, from_maxes) = out.split_at(rows);
    let mut gate: Vec<f32> = from_means
        .iter()
        .zip(from_maxes)
        .map(|(a, b)| a + b)
        .collect();
    sigmoid_in_place(&mut gate);
    (gate, mlp_saved)
}

/// `relu(u * spatial(u) + shortcut)` with `u = z * channel(z)` for `z` and `shortcut`
/// (`images` x C maps of `pixels` values each): the values of the backbone's composed CBAM and
/// `spatial_gate_add_relu`, and what [`cbam_join_backward`] needs.
pub(crate) fn cbam_join_forward(
    z: &[f32],
    (images, pixels): (usize, usize),
    mlp: MlpParams<'_>,
    spatial: SpatialStage<'_>,
    shortcut: &[f32],
) -> Result<(Vec<f32>, CbamSaved)> {
    let (n, c, p) = (images, mlp.channels, pixels);
    let (channel_gate, mlp_saved, max_pixel) = channel_gate_forward(z, (n, p), mlp);
    // `u` is never stored: each pass that reads it forms `z * channel_gate` in a register.
    let (pooled, max_channel) = channel_max_mean_values((n, c, p), z, Some(&channel_gate));
    let (mut spatial_gate, spatial_saved) = stage_forward(
        spatial.geometry,
        &pooled,
        spatial.weight,
        spatial.affine,
        (spatial.eps, false),
        (None, None),
    )?;
    sigmoid_in_place(&mut spatial_gate);
    let y = gated_spatial_join((c, p), z, (&channel_gate, &spatial_gate), shortcut);
    let saved = CbamSaved {
        mlp: mlp_saved,
        max_pixel,
        channel_gate,
        pooled,
        max_channel,
        spatial: spatial_saved,
        spatial_gate,
    };
    Ok((y, saved))
}

/// The gradient of `z` through [`cbam_join_forward`], from the output gradient already masked
/// by the join's ReLU, and the parameters' gradients: the MLP's packed as [`MlpParams`] packs
/// them, then the spatial convolution's weight, its BatchNorm's weight and bias.
pub(crate) fn cbam_join_backward(
    z: &[f32],
    s: &CbamSaved,
    mlp: MlpParams<'_>,
    spatial: SpatialStage<'_>,
    masked: &[f32],
) -> (Vec<f32>, Vec<f32>) {
    let c = mlp.channels;
    let n = s.channel_gate.len() / c;
    let p = s.spatial_gate.len() / n;
    // The spatial gate and the join: `u`'s gradient along the product, then the pooling's.
    let mut dgated = crate::conv2d::zeroed(z.len());
    let mut dspatial_gate = vec![0f32; n * p];
    spatial_gate_grad(
        (c, p),
        ((z, Some(&s.channel_gate)), &s.spatial_gate, masked),
        &mut dgated,
        &mut dspatial_gate,
    );
    let dlogits = sigmoid_grad(&dspatial_gate, &s.spatial_gate);
    let conv = stage_backward(
        spatial.geometry,
        &s.spatial,
        (&s.pooled, spatial.weight),
        OutputGrad::Values(&dlogits),
        false,
        true,
    );
    let Some(dpooled) = &conv.dx else {
        unreachable!("asked for")
    };
    channel_max_mean_grad_add((c, p), &s.max_channel, dpooled, &mut dgated);
    // The channel gate: `z`'s gradient along the product (in `u`'s gradient's buffer), then
    // through the MLP and pooling.
    let mut dz = dgated;
    let mut dchannel_gate = vec![0f32; n * c];
    channel_gate_grad_in_place(p, (z, &s.channel_gate), &mut dz, &mut dchannel_gate);
    let dsum = sigmoid_grad(&dchannel_gate, &s.channel_gate);
    // The halves' sum passes its gradient to both.
    let dout = [&dsum[..], &dsum[..]].concat();
    let (dpooled_maps, dmlp) = mlp_backward(&s.mlp, mlp, &dout);
    let (dmeans, dmaxes) = dpooled_maps.split_at(n * c);
    let inv = 1.0 / p as f32;
    par_rows(&mut dz, p, |r, row| {
        let (dmean, dmax, at) = (dmeans[r], dmaxes[r], s.max_pixel[r]);
        // `spatial_mean_max`'s gradient of the map, then added: the mean's share everywhere,
        // plus the max's at its pixel.
        let spread = dmean * inv;
        for (i, v) in row.iter_mut().enumerate() {
            *v += if i == at as usize {
                spread + dmax
            } else {
                spread
            };
        }
    });
    let dparams = [dmlp, conv.dw, conv.dgamma, conv.dbeta].concat();
    (dz, dparams)
}
