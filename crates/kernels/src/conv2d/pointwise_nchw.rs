//! The input gradient of 1x1 convolutions of small maps over the whole batch, read and written
//! in NCHW (AVX-512 on full-width units): `dx[b, ci, p] = sum_co w[co, ci] * dy[b, co, p]`,
//! which `batched.rs` otherwise runs as one wide GEMM between a copy of `dy` into a
//! `(C_out, N * OH*OW)` matrix and a copy of the product back into NCHW.
//!
//! A register block holds 8 input channels x 3 vectors of 16 consecutive columns `(b, p)` of
//! the batch (24 accumulators), fed per output channel by 3 vectors of `dy` and 8 broadcast
//! weights (a row of `w`, read where it lies). Columns run image after image, so a vector whose
//! columns cross from image `b` into `b + 1` is read and written as two masked pieces, one per
//! image (maps of at least 16 pixels make two enough). The output channels are summed in
//! passes of 128, so that a block's `dy` columns stay in L1; each pass resumes the
//! accumulators from the values the last one wrote, so every value is one FMA chain over the
//! output channels in order, whatever the passes, blocks and threads (docs/determinism.md).
//!
//! The forward through the same blocks (with `w` turned to `(ci, co)` first) was slower than
//! the GEMM with its copies on every shape measured (docs/performance.md, "Measured slower").

use super::geometry::ConvGeometry;
use super::schedule::SharedOutput;
use rayon::prelude::*;

/// f32 lanes of a vector.
const LANES: usize = 16;
/// Output channels of a register block.
const ROWS: usize = 8;
/// Column vectors of a register block.
const VECTORS: usize = 3;
/// Summed channels per pass over a block (its input columns stay in L1).
const KC: usize = 128;

/// True when `g`'s input gradient runs here: a dense 1x1 stride-1 unpadded layer
/// with channel counts that are multiples of 8, maps of 16 to 64 pixels and more than one
/// image, on a CPU whose AVX-512 runs on full-width units.
pub fn applies(g: &ConvGeometry) -> bool {
    g.is_pointwise()
        && g.groups == 1
        && g.batch > 1
        && (LANES..=64).contains(&g.out_pixels())
        && g.in_channels.is_multiple_of(ROWS)
        && g.out_channels.is_multiple_of(ROWS)
        && super::select::avx512_full_width()
}

/// Input gradient: `dx[b, ci, p] = sum_co w[co, ci] * dy[b, co, p]`, every value of `dx`
/// written (a block's 8 weights of one output channel are consecutive in `w`'s row).
pub fn input_grad_into(g: &ConvGeometry, dy: &[f32], w: &[f32], dx: &mut [f32]) {
    let (ci, co) = (g.in_channels, g.out_channels);
    assert_eq!(w.len(), co * ci, "pointwise_nchw: weight size");
    product(g, (dy, co), (w, ci), (dx, ci));
}

/// Where the 16 columns of one vector lie in an NCHW operand, as offsets from its channel's
/// first value in image 0: lanes `first_mask` at `first + lane`, lanes `second_mask` (the
/// columns of the next image, if any) at `second + lane`. Empty masks read and write nothing.
#[derive(Clone, Copy, Debug)]
struct Span {
    first: usize,
    first_mask: u16,
    second: usize,
    second_mask: u16,
}

impl Span {
    /// Vector `v` of the `batch * p` columns of an operand with `channels` channels of `p`
    /// pixels per image (`p >= 16`).
    fn of(v: usize, (batch, p): (usize, usize), channels: usize) -> Self {
        let j = v * LANES;
        let (b, p0) = (j / p, j % p);
        let lanes = (batch * p - j).min(LANES);
        let n1 = (p - p0).min(lanes);
        let n2 = lanes - n1;
        let first = b * channels * p + p0;
        let first_mask = lane_mask(0, n1);
        if n2 == 0 {
            Self {
                first,
                first_mask,
                second: first,
                second_mask: 0,
            }
        } else {
            Self {
                first,
                first_mask,
                second: (b + 1) * channels * p - n1,
                second_mask: lane_mask(n1, n2),
            }
        }
    }
}

/// Lanes `from..from + n` set.
fn lane_mask(from: usize, n: usize) -> u16 {
    (((1u32 << n) - 1) << from) as u16
}

/// `out[b, m, p] = sum_k a[k * k_stride + m] * inp[b, k, p]` for `(inp, depth)` with `depth`
/// channels and `(out, rows)` with `rows`, in parallel over blocks of 3 column vectors.
fn product(
    g: &ConvGeometry,
    (inp, depth): (&[f32], usize),
    (a, k_stride): (&[f32], usize),
    (out, rows): (&mut [f32], usize),
) {
    let (batch, p) = (g.batch, g.out_pixels());
    assert!(applies(g), "pointwise_nchw: {g:?}");
    assert_eq!(inp.len(), batch * depth * p, "pointwise_nchw: input size");
    assert_eq!(out.len(), batch * rows * p, "pointwise_nchw: output size");
    assert!(
        rows <= k_stride && (depth - 1) * k_stride + rows <= a.len(),
        "pointwise_nchw: weights"
    );
    let vectors = (batch * p).div_ceil(LANES);
    let in_spans: Vec<Span> = (0..vectors)
        .map(|v| Span::of(v, (batch, p), depth))
        .collect();
    let out_spans: Vec<Span> = (0..vectors)
        .map(|v| Span::of(v, (batch, p), rows))
        .collect();
    let shared = SharedOutput::new(out);
    (0..vectors.div_ceil(VECTORS))
        .into_par_iter()
        .for_each(|tile| {
            let v0 = tile * VECTORS;
            let n = (vectors - v0).min(VECTORS);
            let (ins, outs) = (&in_spans[v0..v0 + n], &out_spans[v0..v0 + n]);
            for k0 in (0..depth).step_by(KC) {
                for m0 in (0..rows).step_by(ROWS) {
                    // SAFETY: `applies` checked AVX-512F. Every span's lanes lie inside its
                    // operand for any channel below its count (`Span::of`, p >= 16), the weights'
                    // last element is checked above, and the tasks write disjoint columns.
                    unsafe {
                        let args = Block {
                            inp: inp.as_ptr(),
                            a: a.as_ptr().add(m0),
                            k_stride,
                            ks: k0..(k0 + KC).min(depth),
                            p,
                            out: shared.start().add(m0 * p),
                        };
                        match n {
                            3 => block::<3>(&args, ins, outs),
                            2 => block::<2>(&args, ins, outs),
                            _ => block::<1>(&args, ins, outs),
                        }
                    }
                }
            }
        });
}

/// The operands of one register block: 8 output channels from `out`, their weights from `a`.
struct Block {
    inp: *const f32,
    a: *const f32,
    k_stride: usize,
    ks: std::ops::Range<usize>,
    p: usize,
    out: *mut f32,
}

/// Output channels `out..out + 8 * p` at the columns of `V` vectors.
///
/// # Safety
/// AVX-512F; `ins` and `outs` hold `V` spans inside their operands, `a` holds the block's
/// weights.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn block<const V: usize>(args: &Block, ins: &[Span], outs: &[Span]) {
    use std::arch::x86_64::*;
    let ins: &[Span; V] = ins.try_into().expect("a span per vector");
    let outs: &[Span; V] = outs.try_into().expect("a span per vector");
    let mut acc = [[_mm512_setzero_ps(); V]; ROWS];
    if args.ks.start > 0 {
        #[allow(clippy::needless_range_loop)]
        for r in 0..ROWS {
            let row = args.out.add(r * args.p);
            for v in 0..V {
                let s = outs[v];
                let lo = _mm512_maskz_loadu_ps(s.first_mask, row.add(s.first));
                acc[r][v] = _mm512_mask_loadu_ps(lo, s.second_mask, row.add(s.second));
            }
        }
    }
    let mut x = [_mm512_setzero_ps(); V];
    for k in args.ks.clone() {
        let row = args.inp.add(k * args.p);
        for v in 0..V {
            let s = ins[v];
            let lo = _mm512_maskz_loadu_ps(s.first_mask, row.add(s.first));
            x[v] = _mm512_mask_loadu_ps(lo, s.second_mask, row.add(s.second));
        }
        let wk = args.a.add(k * args.k_stride);
        #[allow(clippy::needless_range_loop)] // index loops keep the accumulators in registers
        for r in 0..ROWS {
            let w = _mm512_set1_ps(*wk.add(r));
            for v in 0..V {
                acc[r][v] = _mm512_fmadd_ps(w, x[v], acc[r][v]);
            }
        }
    }
    for (r, acc_r) in acc.iter().enumerate() {
        let row = args.out.add(r * args.p);
        for v in 0..V {
            let s = outs[v];
            _mm512_mask_storeu_ps(row.add(s.first), s.first_mask, acc_r[v]);
            _mm512_mask_storeu_ps(row.add(s.second), s.second_mask, acc_r[v]);
        }
    }
}

/// Never called: [`applies`] is false off x86-64.
#[cfg(not(target_arch = "x86_64"))]
unsafe fn block<const V: usize>(_: &Block, _: &[Span], _: &[Span]) {
    unreachable!("pointwise_nchw runs only on x86-64")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Values with many significant bits, so that any change in the order of the sums or in
    /// the operands would show in the last bits.
    fn values(len: usize, seed: u32) -> Vec<f32> {
        let mut s = seed;
        (0..len)
            .map(|_| {
                s = s.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                (s >> 8) as f32 / (1u32 << 24) as f32 * 2.0 - 1.0
            })
            .collect()
    }

    /// `sum_k a(m, k) * inp[b, k, p]` as one `mul_add` chain over `k` in order.
    fn chain(
        a: impl Fn(usize) -> f32,
        inp: &[f32],
        (b, p, pixels, depth): (usize, usize, usize, usize),
    ) -> f32 {
        (0..depth).fold(0.0f32, |acc, k| {
            a(k).mul_add(inp[(b * depth + k) * pixels + p], acc)
        })
    }

    /// The input gradient is each value's FMA chain over the output channels, bit for bit, for
    /// maps of 16, 25, 49 and 64 pixels (vectors inside an image and across two), batches whose
    /// columns end on a vector and between vectors, blocks of 1 to 3 vectors, and 8 to 272
    /// output channels (one pass of 128 and several, the last one short).
    #[test]
    fn input_gradient_is_the_plain_chain_bit_for_bit() {
        if !super::super::select::avx512_full_width() {
            eprintln!("skipped: the kernel does not run on this CPU");
            return;
        }
        for (batch, c_in, c_out, side) in [
            (4, 16, 8, 4),
            (3, 24, 8, 7),
            (5, 16, 272, 8),
            (2, 8, 256, 7),
            (7, 8, 136, 5),
        ] {
            let g = ConvGeometry::new(&[batch, c_in, side, side], &[c_out, c_in, 1, 1], 1, 0, 1)
                .expect("geometry");
            assert!(applies(&g), "{g:?}");
            let p = side * side;
            let w = values(c_out * c_in, 2);
            let dy = values(batch * c_out * p, 3);
            let mut dx = vec![f32::NAN; batch * c_in * p];
            input_grad_into(&g, &dy, &w, &mut dx);
            for b in 0..batch {
                for q in 0..p {
                    for ci in 0..c_in {
                        let want = chain(|k| w[k * c_in + ci], &dy, (b, q, p, c_out));
                        let got = dx[(b * c_in + ci) * p + q];
                        assert_eq!(got.to_bits(), want.to_bits(), "{g:?}: ({b}, {ci}, {q})");
                    }
                }
            }
        }
    }
}
