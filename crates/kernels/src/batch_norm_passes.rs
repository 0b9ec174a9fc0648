//! The CPU passes of training-mode BatchNorm (+ ReLU, + residual join): the statistics, the
//! output, the backward's two per-channel sums and the input gradient, for the ops of
//! `batch_norm.rs` and the fused convolution stages of `conv_bn.rs`.
//!
//! The forward is two passes for the statistics (mean, then centred squares; a convolution
//! epilogue can hand over the first) and one for the output, and the backward one pass for the
//! two per-channel sums and one for the input gradient, with the ReLU mask applied in the same
//! loops. The per-channel passes run over blocks of channels sized to stay in a core's L2 cache
//! (`channels_per_block`): a block's slice of each image is contiguous, and the backward writes
//! a block's input gradient right after summing it, from inputs still in cache. Each channel's
//! sums run over its rows in image order whatever the block, so the values depend on the shape
//! alone (docs/determinism.md).

use crate::affine_rows::RowAffine;
use crate::lane_sums::{
    input_grad_row, lane_gated_sums, lane_sum, passed, relu_blocks, InputGradTerms, LANES,
};
use crate::row_tasks::{par_rows, rows_per_task, written_by};
use crate::spatial_pool::row_mean;
use rayon::prelude::*;
use std::mem::MaybeUninit;
use std::ops::Range;

/// What a training BatchNorm forward pass keeps for its backward pass and the running averages.
#[derive(Clone, Debug)]
pub(crate) struct Saved {
    /// Batch mean of each channel.
    pub mean: Vec<f32>,
    /// Biased batch variance of each channel.
    pub var: Vec<f32>,
    /// `1 / sqrt(var + eps)` of each channel.
    pub inv_std: Vec<f32>,
    /// The affine weight (gamma).
    pub weight: Vec<f32>,
    /// The forward's per-channel `scale = weight * inv_std` and `shift = bias - mean * scale`
    /// (the output is `max?(x * scale + shift)`): the backward recomputes the ReLU mask from
    /// them and the input, bit for bit the forward's test, instead of reading the output.
    pub scale_shift: (Vec<f32>, Vec<f32>),
    /// Elements per channel.
    pub count: usize,
}

/// A channel's fused ReLU in the backward pass: the forward's output was
/// `max(x * scale + shift, 0)`, so the gradient passes where `x * scale + shift > 0`,
/// recomputed from the input in the same f32 operations ([`relu_blocks`], bit for bit the
/// forward's test), and the output is not read. Without ReLU everything passes.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ReluGate {
    /// Whether the forward applied a ReLU.
    pub relu: bool,
    /// The forward's per-channel scale.
    pub scale: f32,
    /// The forward's per-channel shift.
    pub shift: f32,
}

impl ReluGate {
    /// The gate as the lane kernels take it: `Some((scale, shift))` with a ReLU.
    #[inline(always)]
    fn relu(self) -> Option<(f32, f32)> {
        self.relu.then_some((self.scale, self.shift))
    }

    /// True where the ReLU blocked the gradient of input value `x` ([`relu_blocks`]).
    #[inline(always)]
    pub(crate) fn blocks(self, x: f32) -> bool {
        relu_blocks(x, self.relu())
    }

    /// `g`, or 0 where the ReLU blocked it ([`passed`]).
    #[inline(always)]
    fn pass(self, g: f32, x: f32) -> f32 {
        passed(g, x, self.relu())
    }
}

/// The gradient of a BatchNorm's output as its backward reads it, one (image, channel) row at
/// a time.
#[derive(Clone, Copy, Debug)]
pub(crate) enum OutputGrad<'a> {
    /// Stored whole, the input's size.
    Values(&'a [f32]),
    /// `g * a[row] + b[row]` for each row of `g` (a mul, then an add): a squeeze-excite gate's
    /// product path plus its squeeze's spread, formed as each row is read instead of stored.
    RowAffine {
        /// The gradient before the gate, the input's size.
        g: &'a [f32],
        /// Each row's multiplier (the gate).
        a: &'a [f32],
        /// Each row's addend (the squeeze's spread).
        b: &'a [f32],
    },
}

impl<'a> OutputGrad<'a> {
    /// The gradient's values over `range`, which is row `row` of `inner` values: a slice of
    /// the stored values, or the row formed in `buf`.
    #[inline]
    fn row<'b>(&self, row: usize, range: Range<usize>, buf: &'b mut Vec<f32>) -> &'b [f32]
    where
        'a: 'b,
    {
        match *self {
            OutputGrad::Values(g) => &g[range],
            OutputGrad::RowAffine { g, a, b } => {
                let (a, b) = (a[row], b[row]);
                buf.clear();
                buf.extend(g[range].iter().map(|&v| v * a + b));
                buf
            }
        }
    }
}

/// `(sum(g'), sum(g' * (x - mu)))` with `g' = gate.pass(g, x)`; in [`LANES`] f32 partial sums
/// combined in f64.
fn gated_sums(g: &[f32], x: &[f32], gate: ReluGate, mu: f32) -> (f64, f64) {
    let ((cg, tg), (cx, tx)) = (g.as_chunks::<LANES>(), x.as_chunks::<LANES>());
    let zero = ([0f32; LANES], [0f32; LANES]);
    let (s1, s2) = lane_gated_sums(cg, cx, gate.relu(), mu, zero);
    let mut t1: f64 = s1.iter().map(|&v| v as f64).sum();
    let mut t2: f64 = s2.iter().map(|&v| v as f64).sum();
    for (&g, &x) in tg.iter().zip(tx) {
        let gv = gate.pass(g, x);
        t1 += gv as f64;
        t2 += (gv * (x - mu)) as f64;
    }
    (t1, t2)
}

/// Row `i` of channel `ch` of a (N, C, inner) buffer.
fn row_of(i: usize, ch: usize, c: usize, inner: usize) -> Range<usize> {
    (i * c + ch) * inner..(i * c + ch + 1) * inner
}

/// Bytes of input a block of channels spans (over the whole batch): small enough that a
/// second pass over the block finds it in a core's L2 cache.
const BLOCK_BYTES: usize = 256 << 10;

/// Channels per block of the per-channel passes over `arrays` (N, C, inner) f32 inputs: as
/// many as [`BLOCK_BYTES`] hold. A block's slice of one image is contiguous, so a pass over
/// it streams, where channel by channel it would jump a whole image's stride every row.
/// Geometry alone decides it, and the values do not depend on it (each channel's sums run
/// over its rows in image order whatever the block).
fn channels_per_block((n, c, inner): (usize, usize, usize), arrays: usize) -> usize {
    #[cfg(test)]
    if let Some(cb) = tests::FORCED_BLOCK.with(std::cell::Cell::get) {
        return cb.clamp(1, c.max(1));
    }
    (BLOCK_BYTES / (n * inner * arrays * 4).max(1)).clamp(1, c.max(1))
}

/// The channel ranges of the blocks of `cb` channels.
fn block_ranges(c: usize, cb: usize) -> impl IndexedParallelIterator<Item = Range<usize>> {
    (0..c.div_ceil(cb))
        .into_par_iter()
        .map(move |b| b * cb..(c.min((b + 1) * cb)))
}

/// `buf` viewed as (N, C, inner) in blocks of `cb` channels: entry `b` holds block `b`'s
/// (contiguous) slice of every image, in image order. The views are disjoint, so that the
/// blocks can be written in parallel, each right after its reductions have read its inputs.
fn channel_blocks<T>(buf: &mut [T], (c, inner): (usize, usize), cb: usize) -> Vec<Vec<&mut [T]>> {
    let mut blocks: Vec<Vec<&mut [T]>> = (0..c.div_ceil(cb)).map(|_| Vec::new()).collect();
    if c * inner > 0 {
        for image in buf.chunks_mut(c * inner) {
            for (b, slice) in image.chunks_mut(cb * inner).enumerate() {
                blocks[b].push(slice);
            }
        }
    }
    blocks
}

/// Rows of [`LANES`] values up to below this many (7x7 and 4x4 maps) add into lanes that run on
/// over the channel's rows in image order, combined in f64 once per channel: combined per row,
/// the 32 f64 additions of the lanes outweighed a 16- or 49-value row's own work several times.
/// Rows of fewer than [`LANES`] values keep the per-row f64 sums, where a lane would add
/// every image's values in f32.
const SHORT_ROW: usize = 4 * LANES;

/// Adds one short row's `g'` and `g' * (x - mu)` into the lanes `acc`: the whole chunks through
/// [`lane_gated_sums`], then tail value `j` into lane `j` (the same mul and add).
fn add_gated_lanes(
    (g, x): (&[f32], &[f32]),
    gate: ReluGate,
    mu: f32,
    acc: &mut ([f32; LANES], [f32; LANES]),
) {
    let ((cg, tg), (cx, tx)) = (g.as_chunks::<LANES>(), x.as_chunks::<LANES>());
    *acc = lane_gated_sums(cg, cx, gate.relu(), mu, *acc);
    for (j, (&g, &x)) in tg.iter().zip(tx).enumerate() {
        let g = gate.pass(g, x);
        acc.0[j] += g;
        acc.1[j] += g * (x - mu);
    }
}

/// For each channel of `chs`: `(sum g', sum g' * (x - mu) * scale)` with
/// `(mu, scale) = centre(channel)`, the (image, channel) rows in image order: each row through
/// [`gated_sums`] and the rows added in f64, or, for rows of [`LANES`] up to below
/// [`SHORT_ROW`] values, all of the channel's rows into one set of lanes ([`add_gated_lanes`]).
fn block_gated_sums(
    (g, x): (OutputGrad<'_>, &[f32]),
    (n, c, inner): (usize, usize, usize),
    chs: Range<usize>,
    gate: &(impl Fn(usize) -> ReluGate + Sync),
    centre: &(impl Fn(usize) -> (f32, f32) + Sync),
) -> Vec<(f64, f64)> {
    let mut buf = Vec::new();
    if (LANES..SHORT_ROW).contains(&inner) {
        let mut lanes = vec![([0f32; LANES], [0f32; LANES]); chs.len()];
        for i in 0..n {
            for (acc, ch) in lanes.iter_mut().zip(chs.clone()) {
                let r = row_of(i, ch, c, inner);
                let gr = g.row(i * c + ch, r.clone(), &mut buf);
                add_gated_lanes((gr, &x[r]), gate(ch), centre(ch).0, acc);
            }
        }
        let total = |a: &[f32; LANES]| a.iter().map(|&v| v as f64).sum::<f64>();
        return lanes
            .iter()
            .zip(chs)
            .map(|((s1, s2), ch)| (total(s1), total(s2) * centre(ch).1 as f64))
            .collect();
    }
    let mut sums = vec![(0f64, 0f64); chs.len()];
    for i in 0..n {
        for (s, ch) in sums.iter_mut().zip(chs.clone()) {
            let (mu, scale) = centre(ch);
            let r = row_of(i, ch, c, inner);
            let gr = g.row(i * c + ch, r.clone(), &mut buf);
            let (rg, rgx) = gated_sums(gr, &x[r], gate(ch), mu);
            s.0 += rg;
            s.1 += rgx * scale as f64;
        }
    }
    sums
}

/// Per channel of `x` viewed as (N, C, inner): [`block_gated_sums`] in blocks of channels in
/// parallel (thread-count independent).
pub(crate) fn channel_gated_sums(
    g: &[f32],
    x: &[f32],
    dims: (usize, usize, usize),
    gate: impl Fn(usize) -> ReluGate + Sync,
    centre: impl Fn(usize) -> (f32, f32) + Sync,
) -> (Vec<f64>, Vec<f64>) {
    let cb = channels_per_block(dims, 2);
    let blocks: Vec<Vec<(f64, f64)>> = block_ranges(dims.1, cb)
        .map(|chs| block_gated_sums((OutputGrad::Values(g), x), dims, chs, &gate, &centre))
        .collect();
    blocks.into_iter().flatten().unzip()
}

/// Mean and biased variance of each channel of `chs` in `x` viewed as (N, C, inner): two
/// passes (mean, then centred squares, so a large mean does not cancel the variance), each
/// channel's rows added in image order. `row_sums`, when given, holds `lane_sum` of each
/// (image, channel) row (`n * c` values, image-major), taken while the rows were still in
/// cache: the first pass then only adds them up, in the same order, with the same result.
fn block_moments(
    x: &[f32],
    (n, c, inner): (usize, usize, usize),
    chs: Range<usize>,
    row_sums: Option<&[f64]>,
) -> Vec<(f32, f32)> {
    let m = (n * inner) as f64;
    // -0.0 is where `Iterator::sum` of f64 starts, so an all-zero channel keeps its sign.
    let mut sum = vec![-0.0f64; chs.len()];
    for i in 0..n {
        for (s, ch) in sum.iter_mut().zip(chs.clone()) {
            *s += match row_sums {
                Some(sums) => sums[i * c + ch],
                None => lane_sum(&x[row_of(i, ch, c, inner)], |v| v),
            };
        }
    }
    let mean: Vec<f32> = sum.iter().map(|&s| (s / m) as f32).collect();
    let mut sq = vec![-0.0f64; chs.len()];
    for i in 0..n {
        for ((s, ch), &mu) in sq.iter_mut().zip(chs.clone()).zip(&mean) {
            *s += lane_sum(&x[row_of(i, ch, c, inner)], |v| {
                let d = v - mu;
                d * d
            });
        }
    }
    mean.into_iter()
        .zip(sq)
        .map(|(mu, sq)| (mu, (sq / m) as f32))
        .collect()
}

/// `y[n, c, :] = max?(x[n, c, :] * a[c] + b[c])` in parallel over (n, c) rows; with a
/// `shortcut` (x's size), `y = max(x * a + b + shortcut, 0)` (the residual join; `relu` is then
/// implied).
pub(crate) fn scale_shift(
    x: &[f32],
    (a, b): (&[f32], &[f32]),
    (c, inner): (usize, usize),
    (relu, shortcut): (bool, Option<&[f32]>),
) -> Vec<f32> {
    assert!(
        shortcut.is_none_or(|s| s.len() == x.len()),
        "scale_shift: shortcut size"
    );
    let inner = inner.max(1);
    let fill = |y: &mut [MaybeUninit<f32>]| {
        par_rows(y, inner, |row, yr| {
            let r = row * inner..row * inner + yr.len();
            RowAffine {
                shortcut: shortcut.map(|s| &s[r.clone()]),
                ..RowAffine::of_channel(row, (&a[..c], &b[..c]), relu || shortcut.is_some())
            }
            .apply_into(&x[r], yr);
        })
    };
    // SAFETY: the rows cover all `x.len()` slots, and every value of each row is written.
    unsafe { written_by(x.len(), fill) }
}

/// The mean of each row of [`scale_shift`]'s output without a shortcut, as [`row_mean`] takes
/// it over the written row, into `means` (one per row), the output itself not kept: each row
/// is formed in a buffer of the task and its mean taken there.
pub(crate) fn scale_shift_means(
    x: &[f32],
    (a, b): (&[f32], &[f32]),
    (c, inner): (usize, usize),
    relu: bool,
    means: &mut [f32],
) {
    let inner = inner.max(1);
    assert_eq!(
        means.len() * inner,
        x.len(),
        "scale_shift_means: one mean per row"
    );
    means
        .par_chunks_mut(rows_per_task(inner))
        .enumerate()
        .for_each(|(t, ms)| {
            let first = t * rows_per_task(inner);
            let mut row = vec![0f32; inner];
            for (k, m) in ms.iter_mut().enumerate() {
                let r = first + k;
                RowAffine::of_channel(r, (&a[..c], &b[..c]), relu)
                    .apply_into(&x[r * inner..(r + 1) * inner], &mut row);
                *m = row_mean(&row);
            }
        });
}

/// Training-mode BatchNorm (+ ReLU when `relu`) of `x` viewed as (N, C, inner) on the CPU, with
/// the affine `(weight, bias)`: statistics in two passes ([`block_moments`], the first from
/// `row_sums` when given), output in one ([`scale_shift`]). With a `shortcut` (x's size) the
/// output is `max(batch_norm(x) + shortcut, 0)` (the residual join, in the same pass; `relu` is
/// then ignored). With `means` (and no shortcut) the output is not kept: each of its rows'
/// mean goes there ([`scale_shift_means`]), and the returned output is empty. Returns the output
/// and what the backward pass needs.
pub(crate) fn train_forward(
    x: &[f32],
    (n, c, inner): (usize, usize, usize),
    (weight, bias): (&[f32], &[f32]),
    (eps, relu): (f64, bool),
    row_sums: Option<&[f64]>,
    (shortcut, means): (Option<&[f32]>, Option<&mut [f32]>),
) -> (Vec<f32>, Saved) {
    assert!(row_sums.is_none_or(|s| s.len() == n * c));
    let dims = (n, c, inner);
    let cb = channels_per_block(dims, 1);
    let moments: Vec<Vec<(f32, f32)>> = block_ranges(c, cb)
        .map(|chs| block_moments(x, dims, chs, row_sums))
        .collect();
    let (mean, var): (Vec<f32>, Vec<f32>) = moments.into_iter().flatten().unzip();
    let inv_std: Vec<f32> = var
        .iter()
        .map(|&v| (1.0 / (v as f64 + eps).sqrt()) as f32)
        .collect();
    let a: Vec<f32> = (0..c).map(|i| weight[i] * inv_std[i]).collect();
    let shift: Vec<f32> = (0..c).map(|i| bias[i] - mean[i] * a[i]).collect();
    let y = match means {
        Some(means) => {
            assert!(
                shortcut.is_none(),
                "train_forward: means of a joined output"
            );
            scale_shift_means(x, (&a, &shift), (c, inner), relu, means);
            Vec::new()
        }
        None => scale_shift(x, (&a, &shift), (c, inner), (relu, shortcut)),
    };
    let saved = Saved {
        mean,
        var,
        inv_std,
        weight: weight.to_vec(),
        scale_shift: (a, shift),
        count: n * inner,
    };
    (y, saved)
}

/// Backward of training-mode BatchNorm (+ ReLU when `relu`) on the CPU: writes the input
/// gradient into `dx` (x's size) and returns the weight and bias gradients (C each). `x` is
/// the BatchNorm input, `g` the output gradient; the ReLU mask is recomputed from `x` and the
/// forward's scale and shift ([`ReluGate`]), the output is not read.
pub(crate) fn train_backward(
    x: &[f32],
    g: OutputGrad<'_>,
    (n, c, inner): (usize, usize, usize),
    s: &Saved,
    relu: bool,
    dx: &mut [f32],
) -> (Vec<f32>, Vec<f32>) {
    let gate = |ch: usize| ReluGate {
        relu,
        scale: s.scale_shift.0[ch],
        shift: s.scale_shift.1[ch],
    };
    // In blocks of channels: per channel sum g' and sum g' * xhat, then the block's input
    // gradient, from rows of `g` and `x` still in cache.
    let dims = (n, c, inner);
    let m = (n * inner) as f64;
    let cb = channels_per_block(dims, 2);
    let centre = |ch: usize| (s.mean[ch], s.inv_std[ch]);
    let sums: Vec<Vec<(f32, f32)>> = block_ranges(c, cb)
        .zip(channel_blocks(dx, (c, inner), cb))
        .map(|(chs, mut out)| {
            let sums = block_gated_sums((g, x), dims, chs.clone(), &gate, &centre);
            let mut buf = Vec::new();
            for (i, slice) in out.iter_mut().enumerate() {
                for ((dr, ch), &(sum_g, sum_gx)) in
                    slice.chunks_mut(inner.max(1)).zip(chs.clone()).zip(&sums)
                {
                    let (mu, inv_std) = (s.mean[ch], s.inv_std[ch]);
                    let terms = InputGradTerms {
                        k: s.weight[ch] * inv_std,
                        mean_g: (sum_g / m) as f32,
                        mu,
                        inv_std,
                        mean_gx: (sum_gx / m) as f32,
                        relu: gate(ch).relu(),
                    };
                    let r = row_of(i, ch, c, inner);
                    let gr = g.row(i * c + ch, r.clone(), &mut buf);
                    input_grad_row(dr, gr, &x[r], &terms);
                }
            }
            sums.into_iter()
                .map(|(sum_g, sum_gx)| (sum_gx as f32, sum_g as f32))
                .collect()
        })
        .collect();
    sums.into_iter().flatten().unzip()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    thread_local! {
        /// Channels per block for the passes started on this thread (`None`: the geometry's).
        pub(super) static FORCED_BLOCK: Cell<Option<usize>> = const { Cell::new(None) };
    }

    /// Every output of the training forward and backward (and the channel-affine sums), as
    /// bits, with `cb` channels per block.
    fn passes_with_block(
        cb: Option<usize>,
        (x, g, shortcut): (&[f32], &[f32], &[f32]),
        dims: (usize, usize, usize),
        (relu, with_shortcut, with_row_sums): (bool, bool, bool),
    ) -> Vec<u64> {
        FORCED_BLOCK.with(|f| f.set(cb));
        let (n, c, inner) = dims;
        let weight: Vec<f32> = (0..c).map(|i| 0.5 + i as f32 * 0.25).collect();
        let bias: Vec<f32> = (0..c).map(|i| 0.1 * i as f32 - 0.3).collect();
        let row_sums: Vec<f64> = x.chunks(inner).map(|r| lane_sum(r, |v| v)).collect();
        let (y, saved) = train_forward(
            x,
            dims,
            (&weight, &bias),
            (1e-5, relu && !with_shortcut),
            with_row_sums.then_some(&row_sums[..]),
            (with_shortcut.then_some(shortcut), None),
        );
        let mut dx = vec![f32::NAN; x.len()];
        let (dw, db) = train_backward(x, OutputGrad::Values(g), dims, &saved, relu, &mut dx);
        let gate = |ch: usize| ReluGate {
            relu,
            scale: weight[ch],
            shift: bias[ch],
        };
        let (s1, s2) = channel_gated_sums(g, x, dims, gate, |ch| (0.1 * ch as f32, 1.5));
        FORCED_BLOCK.with(|f| f.set(None));
        assert_eq!(n * c * inner, y.len());
        let f32s = [&y, &dx, &dw, &db, &saved.mean, &saved.var, &saved.inv_std];
        let f64s = [&s1, &s2];
        f32s.iter()
            .flat_map(|v| v.iter().map(|x| x.to_bits() as u64))
            .chain(f64s.iter().flat_map(|v| v.iter().map(|x| x.to_bits())))
            .collect()
    }

    /// The blocks of channels change where the passes read and write, never a value: with one
    /// channel per block, a few, or all of them in one, every output is the same bits (also
    /// with the ReLU, the shortcut join, the epilogue's row sums, and rows whose length is not
    /// a multiple of the lanes).
    #[test]
    fn blocks_of_channels_leave_every_value_unchanged() {
        for dims in [(3, 10, 37), (2, 7, 16), (4, 5, 1), (2, 3, 81)] {
            let len = dims.0 * dims.1 * dims.2;
            let x: Vec<f32> = (0..len)
                .map(|i| ((i as f32) * 0.73).sin() * 2.0 + 0.3)
                .collect();
            let g: Vec<f32> = (0..len).map(|i| ((i as f32) * 0.41).cos()).collect();
            let shortcut: Vec<f32> = (0..len).map(|i| ((i as f32) * 0.29).sin()).collect();
            for flags in [
                (true, false, false),
                (false, false, true),
                (false, true, true),
            ] {
                let inputs = (&x[..], &g[..], &shortcut[..]);
                let whole = passes_with_block(Some(dims.1), inputs, dims, flags);
                assert!(
                    !whole.contains(&(f32::NAN.to_bits() as u64)),
                    "{dims:?}: a value not written"
                );
                for cb in [1, 3, 4] {
                    let blocked = passes_with_block(Some(cb), inputs, dims, flags);
                    let differ = whole.iter().zip(&blocked).filter(|(a, b)| a != b).count();
                    assert_eq!(differ, 0, "{dims:?} {flags:?}: {cb} channels per block");
                }
            }
        }
    }

    /// The backward's recomputed ReLU mask blocks exactly where the forward's output was not
    /// positive, also where the pre-activation is exactly zero or NaN.
    #[test]
    fn recomputed_relu_mask_is_the_forwards() {
        let (n, c, inner) = (2, 3, 7);
        let mut x: Vec<f32> = (0..n * c * inner)
            .map(|i| ((i as f32) * 0.73).sin() * 3.0)
            .collect();
        // Non-finite values and signed zeros in channel 1 (its statistics, and so every
        // pre-activation there, become NaN).
        let specials = [f32::NAN, f32::INFINITY, f32::NEG_INFINITY, -0.0, 0.0];
        x[inner..inner + specials.len()].copy_from_slice(&specials);
        let (weight, bias) = (vec![1.5, -0.5, 0.0], vec![0.25, 0.0, 0.0]);
        let (y, saved) = train_forward(
            &x,
            (n, c, inner),
            (&weight, &bias),
            (1e-5, true),
            None,
            (None, None),
        );
        for (i, (&xv, &yv)) in x.iter().zip(&y).enumerate() {
            let ch = (i / inner) % c;
            let gate = ReluGate {
                relu: true,
                scale: saved.scale_shift.0[ch],
                shift: saved.scale_shift.1[ch],
            };
            assert_eq!(gate.blocks(xv), yv <= 0.0, "value {i}: x {xv}, y {yv}");
        }
        // Channel 2 has weight 0 and bias 0: every pre-activation is exactly 0, all blocked.
        assert!(y[2 * inner..3 * inner].iter().all(|&v| v == 0.0));
    }
}
