//! A squeeze-and-excitation gate and the residual join after it over plain buffers, forward and
//! backward, for the whole-block training op (`bottleneck_train.rs`):
//! `relu(z * gate + shortcut)` with `gate = sigmoid(fc2(relu(fc1(mean_hw(z)))))`, one value per
//! (image, channel).
//!
//! Each step is the arithmetic of the composed ops it replaces: the spatial mean of
//! `spatial_mean`, the MLP and sigmoid of `gate_mlp.rs`, and the join of
//! `channel_gate_add_relu`.

use crate::gate::{channel_gate_add_relu_values, channel_gate_grad};
use crate::gate_mlp::{
    mlp_backward, mlp_forward, sigmoid_grad, sigmoid_in_place, MlpParams, MlpSaved,
};
use crate::spatial_pool::row_means;
use rayon::prelude::*;

/// What the gate's forward keeps for its backward: the MLP's state (its input is the squeezed
/// map `(N, C)`) and the gate `(N, C)`.
#[derive(Debug)]
pub(crate) struct SqueezeExciteSaved {
    mlp: MlpSaved,
    gate: Vec<f32>,
}

/// `relu(z * gate(z) + shortcut)` for `z` and `shortcut` (`images` x C maps of `pixels` values
/// each): the values of `channel_gate_add_relu`, and what [`gated_join_backward`] needs.
pub(crate) fn gated_join_forward(
    z: &[f32],
    (images, pixels): (usize, usize),
    p: MlpParams<'_>,
    shortcut: &[f32],
) -> (Vec<f32>, SqueezeExciteSaved) {
    let mut squeezed = vec![0f32; images * p.channels];
    row_means(z, pixels, &mut squeezed);
    let (mut gate, mlp) = mlp_forward(squeezed, p);
    sigmoid_in_place(&mut gate);
    let y = channel_gate_add_relu_values((p.channels, pixels), z, &gate, shortcut);
    (y, SqueezeExciteSaved { mlp, gate })
}

/// The gradient of `z` through [`gated_join_forward`]'s `relu(z * gate(z) + shortcut)`, from
/// the output gradient already masked by the join's ReLU: the product's path plus the squeeze's
/// (`spatial_mean`'s backward, each map's mean gradient over its pixel count); and the MLP
/// parameters' gradients, packed as [`MlpParams`] packs them.
pub(crate) fn gated_join_backward(
    z: &[f32],
    s: &SqueezeExciteSaved,
    p: MlpParams<'_>,
    masked: &[f32],
    pixels: usize,
) -> (Vec<f32>, Vec<f32>) {
    let mut dz = crate::conv2d::zeroed(z.len());
    let mut dgate = vec![0f32; s.gate.len()];
    channel_gate_grad(pixels, (z, &s.gate, masked), &mut dz, &mut dgate);
    let (dsqueezed, dparams) = mlp_backward(&s.mlp, p, &sigmoid_grad(&dgate, &s.gate));
    let inv = 1.0 / pixels as f32;
    dz.par_chunks_mut(pixels)
        .zip(dsqueezed.par_iter())
        .for_each(|(row, &d)| {
            let spread = d * inv;
            for v in row {
                *v += spread;
            }
        });
    (dz, dparams)
}
