//! The two-layer MLP of an attention gate over plain buffers, forward and backward, for the
//! whole-block training op (`bottleneck_train.rs`): `fc2(relu(fc1(v)))` row by row, with the
//! sigmoid that turns it into a gate. Squeeze-excite runs it on each map's mean
//! (`squeeze_excite.rs`); CBAM's channel gate runs it on the means and on the maxima, stacked
//! (`cbam.rs`).
//!
//! Each step is the arithmetic of the composed ops it replaces: the two products with the bits
//! of gemm calls shaped as candle's `matmul` makes them (the first computed turned around, the
//! same bits faster: [`reduce_product`]), the bias added after the product, candle-nn's
//! `sigmoid` (`1 / (exp(-v) + 1)`) and its backward (`grad * ((1 - s) * s)`). The ReLU passes
//! its gradient where its output is positive, as PyTorch's does.

use crate::conv2d::matmul::{matmul, MatRef};
use crate::conv2d::schedule::gemm_threads;
use candle_core::{bail, Result, Tensor};

/// The two layers of a gate's MLP as [`bottleneck_train`](fn@crate::bottleneck_train) takes them:
/// `C` channels reduced to `R` and expanded back. A squeeze-excite block's two 1x1
/// convolutions, or CBAM's shared channel MLP (`ChannelGate.mlp.1` and `.3`).
#[derive(Clone, Copy, Debug)]
pub struct GateMlp<'a> {
    /// The reducing layer's weight, `(R, C)` or PyTorch's `(R, C, 1, 1)`.
    pub reduce_weight: &'a Tensor,
    /// The reducing layer's bias (R values).
    pub reduce_bias: &'a Tensor,
    /// The expanding layer's weight, `(C, R)` or `(C, R, 1, 1)`.
    pub expand_weight: &'a Tensor,
    /// The expanding layer's bias (C values).
    pub expand_bias: &'a Tensor,
}

impl GateMlp<'_> {
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

    /// The reduced width `R` of an MLP over `channels` channels, once every shape is checked.
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
                "gate MLP over {channels} channels: reduce weight {:?} and bias {:?}, \
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

/// An MLP's parameters within a packed buffer: reduce weight `(R, C)`, its bias, expand weight
/// `(C, R)`, its bias.
#[derive(Clone, Copy, Debug)]
pub(crate) struct MlpParams<'a> {
    reduce_w: &'a [f32],
    reduce_b: &'a [f32],
    expand_w: &'a [f32],
    expand_b: &'a [f32],
    /// The MLP's input and output width `C`.
    pub channels: usize,
    /// Its hidden width `R`.
    pub reduced: usize,
}

impl<'a> MlpParams<'a> {
    /// Values an MLP of `channels` channels reduced to `reduced` takes in a packed buffer.
    pub(crate) fn len(channels: usize, reduced: usize) -> usize {
        2 * channels * reduced + channels + reduced
    }

    /// The MLP's parameters from its four tensors' values: reduce weight `(R, C)`, its bias,
    /// expand weight `(C, R)`, its bias.
    pub(crate) fn from_parts(parts: [&'a [f32]; 4], channels: usize, reduced: usize) -> Self {
        let [reduce_w, reduce_b, expand_w, expand_b] = parts;
        Self {
            reduce_w,
            reduce_b,
            expand_w,
            expand_b,
            channels,
            reduced,
        }
    }

    /// The MLP's parameters at the start of `packed` ([`MlpParams::len`] values).
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

/// What the MLP's forward keeps for its backward: its input `(rows, C)` and the hidden
/// activations after the ReLU `(rows, R)`.
#[derive(Debug)]
pub(crate) struct MlpSaved {
    input: Vec<f32>,
    hidden: Vec<f32>,
}

/// `dst[row, j] += bias[j]` for each row of a row-major `dst`.
fn add_bias(dst: &mut [f32], bias: &[f32]) {
    for row in dst.chunks_exact_mut(bias.len()) {
        for (v, &b) in row.iter_mut().zip(bias) {
            *v += b;
        }
    }
}

/// `input (rows x C) @ w^T` for `w` `(R x C)` row-major, the reducing layer's product, computed
/// turned around: `w @ input^T` `(R x rows)`, then transposed. gemm packs the transposed
/// operand of the plain form from a stride of `C` values, which is slow for wide layers (16
/// rows, C = 2048, R = 128: 641 against 147 us on a 2-core Zen 5). The turned-around product
/// has the plain one's bits at every batch size and width the test tries
/// (`the_turned_around_product_has_the_plain_ones_bits`: 1 to 64 rows, C 64 to 2048).
fn reduce_product(input: &[f32], w: &[f32], (rows, c, r): (usize, usize, usize)) -> Vec<f32> {
    let mut turned = vec![0f32; r * rows];
    matmul(
        &mut turned,
        false,
        MatRef::row_major(w, r, c),
        MatRef::row_major(input, rows, c).t(),
        gemm_threads(),
    );
    let mut out = vec![0f32; rows * r];
    for (j, column) in turned.chunks_exact(rows.max(1)).enumerate() {
        for (row, &v) in column.iter().enumerate() {
            out[row * r + j] = v;
        }
    }
    out
}

/// `fc2(relu(fc1(input)))` for each row of `input` `(rows, C)`: the `(rows, C)` output before
/// any sigmoid, and what [`mlp_backward`] needs.
pub(crate) fn mlp_forward(input: Vec<f32>, p: MlpParams<'_>) -> (Vec<f32>, MlpSaved) {
    let (c, r) = (p.channels, p.reduced);
    let rows = input.len() / c;
    let mut hidden = reduce_product(&input, p.reduce_w, (rows, c, r));
    add_bias(&mut hidden, p.reduce_b);
    for v in &mut hidden {
        *v = v.max(0.0);
    }
    let mut out = vec![0f32; rows * c];
    matmul(
        &mut out,
        false,
        MatRef::row_major(&hidden, rows, r),
        MatRef::row_major(p.expand_w, c, r).t(),
        gemm_threads(),
    );
    add_bias(&mut out, p.expand_b);
    (out, MlpSaved { input, hidden })
}

/// The MLP's backward from the gradient of its output `dout` `(rows, C)`: the gradient of its
/// input `(rows, C)` and the parameters' gradients packed as [`MlpParams`] packs them.
pub(crate) fn mlp_backward(s: &MlpSaved, p: MlpParams<'_>, dout: &[f32]) -> (Vec<f32>, Vec<f32>) {
    let (c, r) = (p.channels, p.reduced);
    let rows = dout.len() / c;
    let mut dexpand_w = vec![0f32; c * r];
    matmul(
        &mut dexpand_w,
        false,
        MatRef::row_major(dout, rows, c).t(),
        MatRef::row_major(&s.hidden, rows, r),
        gemm_threads(),
    );
    let dexpand_b = column_sums(dout, c);
    let mut dhidden = vec![0f32; rows * r];
    matmul(
        &mut dhidden,
        false,
        MatRef::row_major(dout, rows, c),
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
        MatRef::row_major(&dhidden, rows, r).t(),
        MatRef::row_major(&s.input, rows, c),
        gemm_threads(),
    );
    let dreduce_b = column_sums(&dhidden, r);
    let mut dinput = vec![0f32; rows * c];
    matmul(
        &mut dinput,
        false,
        MatRef::row_major(&dhidden, rows, r),
        MatRef::row_major(p.reduce_w, r, c),
        gemm_threads(),
    );
    let dparams = [dreduce_w, dreduce_b, dexpand_w, dexpand_b].concat();
    (dinput, dparams)
}

/// candle-nn's `sigmoid`, `1 / (exp(-v) + 1)`, in place.
pub(crate) fn sigmoid_in_place(values: &mut [f32]) {
    for v in values {
        *v = ((-*v).exp() + 1.0).recip();
    }
}

/// The gradient through a sigmoid whose output was `gate`: candle-nn's `grad * ((1 - s) * s)`.
pub(crate) fn sigmoid_grad(dgate: &[f32], gate: &[f32]) -> Vec<f32> {
    dgate
        .iter()
        .zip(gate)
        .map(|(&d, &g)| d * ((1.0 - g) * g))
        .collect()
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conv2d::{differing_bits, test_values};

    /// The reducing product turned around equals the product shaped as candle's `matmul`
    /// makes it (`input @ w^T`), bit for bit, at the batch sizes and widths of these networks'
    /// gates (timm's SE widths are C/16 rounded to 8, VGGFace2's C/16, CBAM's C/16).
    #[test]
    fn the_turned_around_product_has_the_plain_ones_bits() {
        for rows in [1, 2, 3, 16, 32, 33, 64] {
            for c in [64, 256, 512, 1024, 2048] {
                for r in [8, c / 16, c / 8] {
                    let (input, w) = (test_values(rows * c, 1), test_values(r * c, 2));
                    let mut want = vec![0f32; rows * r];
                    matmul(
                        &mut want,
                        false,
                        MatRef::row_major(&input, rows, c),
                        MatRef::row_major(&w, r, c).t(),
                        gemm_threads(),
                    );
                    let got = reduce_product(&input, &w, (rows, c, r));
                    assert_eq!(differing_bits(&got, &want), 0, "{rows} rows, C {c}, R {r}");
                }
            }
        }
    }
}
