//! A squeeze-and-excitation gate and the residual join after it over plain buffers, forward and
//! backward, for the whole-block training op (`bottleneck_train.rs`):
//! `relu(z * gate + shortcut)` with `gate = sigmoid(fc2(relu(fc1(mean_hw(z)))))`, one value per
//! (image, channel).
//!
//! Each step is the arithmetic of the composed ops it replaces: the spatial mean of
//! `spatial_mean`, the two products as gemm calls shaped as candle's `matmul` makes them, the
//! bias added after the product, candle-nn's `sigmoid` (`1 / (exp(-v) + 1)`) and its backward
//! (`grad * ((1 - s) * s)`). The ReLU passes its gradient where its output is positive, as
//! PyTorch's does.

use crate::conv2d::matmul::{matmul, MatRef};
use crate::conv2d::schedule::gemm_threads;
use crate::gate::{channel_gate_add_relu_values, channel_gate_grad};
use crate::spatial_pool::row_means;
use candle_core::{bail, Result, Tensor};
use rayon::prelude::*;

/// The two 1x1 convolutions of a squeeze-and-excitation block, as [`bottleneck_train`]
/// (crate::bottleneck_train) takes them: `C` channels reduced to `R` and expanded back.
#[derive(Clone, Copy, Debug)]
pub struct SqueezeExciteGate<'a> {
    /// The reducing convolution's weight, `(R, C)` or PyTorch's `(R, C, 1, 1)`.
    pub reduce_weight: &'a Tensor,
    /// The reducing convolution's bias (R values).
    pub reduce_bias: &'a Tensor,
    /// The expanding convolution's weight, `(C, R)` or `(C, R, 1, 1)`.
    pub expand_weight: &'a Tensor,
    /// The expanding convolution's bias (C values).
    pub expand_bias: &'a Tensor,
}

impl SqueezeExciteGate<'_> {
    /// The four tensors, in the order they are packed: reduce weight and bias, expand weight
    /// and bias.
    pub(crate) fn tensors(&self) -> [&Tensor; 4] {
        [
            self.reduce_weight,
            self.reduce_bias,
            self.expand_weight,
            self.expand_bias,
        ]
    }

    /// The reduced width `R` of a gate over `channels` channels, once every shape is checked.
    pub(crate) fn reduced(&self, channels: usize) -> Result<usize> {
        let r = self.reduce_bias.dims().first().copied().unwrap_or(0);
        let matrix = |t: &Tensor, rows: usize, cols: usize| {
            let d = t.dims();
            d.len() >= 2 && d[0] == rows && d[1] == cols && d[2..].iter().all(|&v| v == 1)
        };
        let fits = r > 0
            && self.reduce_bias.dims() == [r]
            && self.expand_bias.dims() == [channels]
            && matrix(self.reduce_weight, r, channels)
            && matrix(self.expand_weight, channels, r);
        if !fits {
            bail!(
                "squeeze-excite gate over {channels} channels: reduce weight {:?} and bias {:?}, \
                 expand weight {:?} and bias {:?} do not fit (R, C), R, (C, R), C",
                self.reduce_weight.dims(),
                self.reduce_bias.dims(),
                self.expand_weight.dims(),
                self.expand_bias.dims()
            )
        }
        Ok(r)
    }
}

/// A gate's parameters within a packed buffer: reduce weight `(R, C)`, its bias, expand weight
/// `(C, R)`, its bias.
#[derive(Clone, Copy, Debug)]
pub(crate) struct GateParams<'a> {
    reduce_w: &'a [f32],
    reduce_b: &'a [f32],
    expand_w: &'a [f32],
    expand_b: &'a [f32],
    channels: usize,
    reduced: usize,
}

impl<'a> GateParams<'a> {
    /// Values a gate of `channels` channels reduced to `reduced` takes in a packed buffer.
    pub(crate) fn len(channels: usize, reduced: usize) -> usize {
        2 * channels * reduced + channels + reduced
    }

    /// The gate's parameters at the start of `packed` ([`GateParams::len`] values).
    pub(crate) fn split(packed: &'a [f32], channels: usize, reduced: usize) -> Self {
        let (c, r) = (channels, reduced);
        let (reduce_w, rest) = packed.split_at(r * c);
        let (reduce_b, rest) = rest.split_at(r);
        let (expand_w, rest) = rest.split_at(c * r);
        Self {
            reduce_w,
            reduce_b,
            expand_w,
            expand_b: &rest[..c],
            channels,
            reduced,
        }
    }
}

/// What the gate's forward keeps for its backward: the squeezed input `(N, C)`, the hidden
/// activations after the ReLU `(N, R)` and the gate `(N, C)`.
#[derive(Debug)]
pub(crate) struct GateSaved {
    squeezed: Vec<f32>,
    hidden: Vec<f32>,
    gate: Vec<f32>,
}

/// `dst[row, j] += bias[j]` for each row of a row-major `dst`.
fn add_bias(dst: &mut [f32], bias: &[f32]) {
    for row in dst.chunks_exact_mut(bias.len()) {
        for (v, &b) in row.iter_mut().zip(bias) {
            *v += b;
        }
    }
}

/// `relu(z * gate(z) + shortcut)` for `z` and `shortcut` (`images` x C maps of `pixels` values
/// each): the values of `channel_gate_add_relu`, and what [`gated_join_backward`] needs.
pub(crate) fn gated_join_forward(
    z: &[f32],
    (images, pixels): (usize, usize),
    p: GateParams<'_>,
    shortcut: &[f32],
) -> (Vec<f32>, GateSaved) {
    let saved = gate_forward(z, (images, pixels), p);
    let y = channel_gate_add_relu_values((p.channels, pixels), z, &saved.gate, shortcut);
    (y, saved)
}

/// The gradient of `z` through [`gated_join_forward`]'s `relu(z * gate(z) + shortcut)`, from
/// the output gradient already masked by the join's ReLU: the product's path plus the squeeze's
/// (`spatial_mean`'s backward, each map's mean gradient over its pixel count); and the gate
/// parameters' gradients, packed as [`GateParams`] packs them.
pub(crate) fn gated_join_backward(
    z: &[f32],
    s: &GateSaved,
    p: GateParams<'_>,
    masked: &[f32],
    pixels: usize,
) -> (Vec<f32>, Vec<f32>) {
    let mut dz = vec![0f32; z.len()];
    let mut dgate = vec![0f32; s.gate.len()];
    channel_gate_grad(pixels, (z, &s.gate, masked), &mut dz, &mut dgate);
    let (dsqueezed, dparams) = gate_backward(s, p, &dgate);
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

/// The gate of `z` (`images` x C maps of `pixels` values each).
fn gate_forward(z: &[f32], (images, pixels): (usize, usize), p: GateParams<'_>) -> GateSaved {
    let (n, c, r) = (images, p.channels, p.reduced);
    let mut squeezed = vec![0f32; n * c];
    row_means(z, pixels, &mut squeezed);
    let mut hidden = vec![0f32; n * r];
    matmul(
        &mut hidden,
        false,
        MatRef::row_major(&squeezed, n, c),
        MatRef::row_major(p.reduce_w, r, c).t(),
        gemm_threads(),
    );
    add_bias(&mut hidden, p.reduce_b);
    for v in &mut hidden {
        *v = v.max(0.0);
    }
    let mut gate = vec![0f32; n * c];
    matmul(
        &mut gate,
        false,
        MatRef::row_major(&hidden, n, r),
        MatRef::row_major(p.expand_w, c, r).t(),
        gemm_threads(),
    );
    add_bias(&mut gate, p.expand_b);
    for v in &mut gate {
        *v = ((-*v).exp() + 1.0).recip();
    }
    GateSaved {
        squeezed,
        hidden,
        gate,
    }
}

/// `sum over rows` of a row-major `rows x cols` matrix, in row order.
fn column_sums(m: &[f32], cols: usize) -> Vec<f32> {
    let mut sums = vec![0f32; cols];
    for row in m.chunks_exact(cols) {
        for (s, &v) in sums.iter_mut().zip(row) {
            *s += v;
        }
    }
    sums
}

/// The gate's backward from the gradient of the gate `dgate` `(N, C)`: returns the gradient of
/// the squeezed input `(N, C)` (the input's gradient is it divided by the pixel count, spread
/// over each map) and the parameters' gradients packed as [`GateParams`] packs them.
fn gate_backward(s: &GateSaved, p: GateParams<'_>, dgate: &[f32]) -> (Vec<f32>, Vec<f32>) {
    let (c, r) = (p.channels, p.reduced);
    let n = dgate.len() / c;
    // Through the sigmoid: candle-nn's `grad * ((1 - s) * s)`.
    let dpre: Vec<f32> = dgate
        .iter()
        .zip(&s.gate)
        .map(|(&d, &g)| d * ((1.0 - g) * g))
        .collect();
    let mut dexpand_w = vec![0f32; c * r];
    matmul(
        &mut dexpand_w,
        false,
        MatRef::row_major(&dpre, n, c).t(),
        MatRef::row_major(&s.hidden, n, r),
        gemm_threads(),
    );
    let dexpand_b = column_sums(&dpre, c);
    let mut dhidden = vec![0f32; n * r];
    matmul(
        &mut dhidden,
        false,
        MatRef::row_major(&dpre, n, c),
        MatRef::row_major(p.expand_w, c, r),
        gemm_threads(),
    );
    // Through the ReLU: where its output is positive.
    for (d, &h) in dhidden.iter_mut().zip(&s.hidden) {
        if h <= 0.0 {
            *d = 0.0;
        }
    }
    let mut dreduce_w = vec![0f32; r * c];
    matmul(
        &mut dreduce_w,
        false,
        MatRef::row_major(&dhidden, n, r).t(),
        MatRef::row_major(&s.squeezed, n, c),
        gemm_threads(),
    );
    let dreduce_b = column_sums(&dhidden, r);
    let mut dsqueezed = vec![0f32; n * c];
    matmul(
        &mut dsqueezed,
        false,
        MatRef::row_major(&dhidden, n, r),
        MatRef::row_major(p.reduce_w, r, c),
        gemm_threads(),
    );
    let dparams = [dreduce_w, dreduce_b, dexpand_w, dexpand_b].concat();
    (dsqueezed, dparams)
}
