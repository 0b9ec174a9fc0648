//! A squeeze-and-excitation gate and the residual join after it over plain buffers, forward and
//! backward, for the whole-block training op (`bottleneck_train.rs`):
//! `relu(z * gate + shortcut)` with `gate = sigmoid(fc2(relu(fc1(mean_hw(z)))))`, one value per
//! (image, channel).
//!
//! Each step is the arithmetic of the composed ops it replaces: the spatial mean of
//! `spatial_mean` (taken by the BatchNorm pass that writes `z`), the MLP and sigmoid of
//! `gate_mlp.rs`, and the join of `channel_gate_add_relu`. The gradient of `z` is never
//! stored: the BatchNorm backward before the gate forms it row by row.

use crate::gate::{channel_gate_add_relu_values, row_dot_sums};
use crate::gate_mlp::{
    mlp_backward, mlp_forward, sigmoid_grad, sigmoid_in_place, MlpParams, MlpSaved,
};
use crate::row_tasks::rows_per_task;
use rayon::prelude::*;

/// What the gate's forward keeps for its backward: the MLP's state (its input is the squeezed
/// map `(N, C)`) and the gate `(N, C)`.
#[derive(Debug)]
pub(crate) struct SqueezeExciteSaved {
    mlp: MlpSaved,
    gate: Vec<f32>,
}

/// `relu(z * gate(z) + shortcut)` for `z` and `shortcut` (`images` x C maps of `pixels` values
/// each), given `squeezed`, each map's mean as `row_means` takes it (the stage that wrote `z`
/// took them as it wrote it): the values of `channel_gate_add_relu`, and what
/// [`gated_join_backward`] needs.
pub(crate) fn gated_join_forward(
    z: &[f32],
    squeezed: Vec<f32>,
    (images, pixels): (usize, usize),
    p: MlpParams<'_>,
    shortcut: &[f32],
) -> (Vec<f32>, SqueezeExciteSaved) {
    debug_assert_eq!(squeezed.len(), images * p.channels);
    let (mut gate, mlp) = mlp_forward(squeezed, p);
    sigmoid_in_place(&mut gate);
    let y = channel_gate_add_relu_values((p.channels, pixels), z, &gate, shortcut);
    (y, SqueezeExciteSaved { mlp, gate })
}

/// What the gradient of `z` through [`gated_join_forward`]'s `relu(z * gate(z) + shortcut)`
/// needs besides the gate, from the output gradient already masked by the join's ReLU: that
/// gradient is the product's path plus the squeeze's (`spatial_mean`'s backward, each map's
/// mean gradient over its pixel count), `masked * gate[row] + spread[row]`; and the MLP
/// parameters' gradients, packed as [`MlpParams`] packs them.
///
/// Returns `spread` and the parameters' gradients: the gate's sums read the output gradient
/// and `z` (`row_dot_sums`), and the MLP's backward gives the squeeze's gradient. The
/// BatchNorm backward before the gate forms `z`'s gradient row by row from `masked`, the gate
/// and `spread` ([`crate::conv_bn::OutputGrad::RowAffine`]): the arithmetic of
/// `channel_gate_grad` and the spread added after it, the same two roundings, without a pass
/// that writes it whole and another that reads it back.
pub(crate) fn gated_join_backward(
    z: &[f32],
    s: &SqueezeExciteSaved,
    p: MlpParams<'_>,
    masked: &[f32],
    pixels: usize,
) -> (Vec<f32>, Vec<f32>) {
    let px = pixels.max(1);
    let mut dgate = vec![0f32; s.gate.len()];
    let rows = rows_per_task(px);
    dgate
        .par_chunks_mut(rows)
        .enumerate()
        .for_each(|(task, sums)| {
            let r = task * rows * px..(task * rows + sums.len()) * px;
            row_dot_sums(px, (&masked[r.clone()], &z[r]), sums);
        });
    let (dsqueezed, dparams) = mlp_backward(&s.mlp, p, &sigmoid_grad(&dgate, &s.gate));
    let inv = 1.0 / pixels as f32;
    let spread = dsqueezed.iter().map(|&d| d * inv).collect();
    (spread, dparams)
}

impl SqueezeExciteSaved {
    /// The gate, one value per (image, channel) map.
    pub(crate) fn gate(&self) -> &[f32] {
        &self.gate
    }
}
