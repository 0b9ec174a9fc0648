//! A squeeze-and-excitation gate and the residual join after it over plain buffers, forward and
//! backward, for the whole-block training op (`bottleneck_train.rs`):
//! `relu(z * gate + shortcut)` with `gate = sigmoid(fc2(relu(fc1(mean_hw(z)))))`, one value per
//! (image, channel), where `z = x * scale + shift` is the block's third BatchNorm output of its
//! convolution output `x` (per channel).
//!
//! Each step is the arithmetic of the composed ops it replaces: the spatial mean of
//! `spatial_mean` (taken over each row of `z` by `scale_shift_means`), the MLP and sigmoid of
//! `gate_mlp.rs`, and the join of `channel_gate_add_relu`. Neither `z` nor its gradient is
//! stored: the squeeze and the join form `z`'s rows from `x` in a buffer of their task, the
//! backward's sums in registers (the BatchNorm's own arithmetic, so the same values), and the
//! BatchNorm backward before the gate forms the gradient row by row.

use crate::affine_rows::RowAffine;
use crate::gate_mlp::{
    mlp_backward, mlp_forward, sigmoid_grad, sigmoid_in_place, MlpParams, MlpSaved,
};
use crate::lane_sums::dot_row;
use crate::row_tasks::{par_rows_with, rows_per_task, written_by};
use rayon::prelude::*;

/// The third BatchNorm's output `z` as the gate reads it: the convolution output and the
/// BatchNorm's per-channel scale and shift.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Normalized<'a> {
    /// The convolution output, `images` x C maps.
    pub x: &'a [f32],
    /// Each channel's scale.
    pub scale: &'a [f32],
    /// Each channel's shift.
    pub shift: &'a [f32],
}

impl Normalized<'_> {
    /// The scale and shift of row `row`'s channel.
    fn scale_shift(&self, row: usize) -> (f32, f32) {
        let c = self.scale.len();
        (self.scale[row % c], self.shift[row % c])
    }

    /// Row `row` (an (image, channel) map of `row_out.len()` values) of `z` into `row_out`:
    /// `x * scale + shift`, as the BatchNorm output pass writes it.
    fn row_into(&self, row: usize, row_out: &mut [f32]) {
        let len = row_out.len();
        RowAffine::of_channel(row, (self.scale, self.shift), false)
            .apply_into(&self.x[row * len..(row + 1) * len], row_out);
    }
}

/// What the gate's forward keeps for its backward: the MLP's state (its input is the squeezed
/// map `(N, C)`) and the gate `(N, C)`.
#[derive(Debug)]
pub(crate) struct SqueezeExciteSaved {
    mlp: MlpSaved,
    gate: Vec<f32>,
}

/// `relu(z * gate(z) + shortcut)` for `z` and `shortcut` (`images` x C maps of `pixels` values
/// each), given `squeezed`, each map's mean as `row_means` takes it: the values of
/// `channel_gate_add_relu` over the stored `z`, and what [`gated_join_backward`] needs.
pub(crate) fn gated_join_forward(
    z: Normalized<'_>,
    squeezed: Vec<f32>,
    (images, pixels): (usize, usize),
    p: MlpParams<'_>,
    shortcut: &[f32],
) -> (Vec<f32>, SqueezeExciteSaved) {
    assert_eq!(
        squeezed.len(),
        images * p.channels,
        "squeeze-excite: squeezed size"
    );
    assert_eq!(z.x.len(), shortcut.len(), "squeeze-excite: shortcut size");
    let (mut gate, mlp) = mlp_forward(squeezed, p);
    sigmoid_in_place(&mut gate);
    let px = pixels.max(1);
    let fill = |y: &mut [std::mem::MaybeUninit<f32>]| {
        par_rows_with(
            y,
            px,
            || vec![0f32; px],
            |zr, row, yr| {
                z.row_into(row, zr);
                RowAffine {
                    a: gate[row],
                    b: None,
                    shortcut: Some(&shortcut[row * px..(row + 1) * px]),
                    relu: true,
                }
                .apply_into(zr, yr);
            },
        )
    };
    // SAFETY: the rows cover all the slots, and each row is written whole.
    let y = unsafe { written_by(z.x.len(), fill) };
    (y, SqueezeExciteSaved { mlp, gate })
}

/// What the gradient of `z` through [`gated_join_forward`]'s `relu(z * gate(z) + shortcut)`
/// needs besides the gate, from the output gradient already masked by the join's ReLU: that
/// gradient is the product's path plus the squeeze's (`spatial_mean`'s backward, each map's
/// mean gradient over its pixel count), `masked * gate[row] + spread[row]`; and the MLP
/// parameters' gradients, packed as [`MlpParams`] packs them.
///
/// Returns `spread` and the parameters' gradients: the gate's sums read the output gradient
/// and `z` (`dot_row`, `z` formed in registers), and the MLP's backward gives the squeeze's gradient. The
/// BatchNorm backward before the gate forms `z`'s gradient row by row from `masked`, the gate
/// and `spread` ([`crate::conv_bn::OutputGrad::RowAffine`]): the arithmetic of
/// `channel_gate_grad` and the spread added after it, the same two roundings, without a pass
/// that writes it whole and another that reads it back.
pub(crate) fn gated_join_backward(
    z: Normalized<'_>,
    s: &SqueezeExciteSaved,
    p: MlpParams<'_>,
    masked: &[f32],
    pixels: usize,
) -> (Vec<f32>, Vec<f32>) {
    let px = pixels.max(1);
    assert_eq!(masked.len(), z.x.len(), "squeeze-excite: gradient size");
    let mut dgate = vec![0f32; s.gate.len()];
    let rows = rows_per_task(px);
    dgate
        .par_chunks_mut(rows)
        .enumerate()
        .for_each(|(task, sums)| {
            for (k, sum) in sums.iter_mut().enumerate() {
                let row = task * rows + k;
                let r = row * px..(row + 1) * px;
                *sum = dot_row(&masked[r.clone()], &z.x[r], Some(z.scale_shift(row))) as f32;
            }
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
