//! The input gradient of 1x1 convolutions over the whole batch, read and written in NCHW (AMD Zen
//! 5, where it was measured; the kernel runs wherever AVX-512 runs on full-width units): `dx[b, ci, p] = sum_co w[co, ci] * dy[b, co, p]`, which otherwise runs
//! as one wide GEMM between copies in and out of a `(C_out, N * OH*OW)` matrix (`batched.rs`,
//! 7x7 and 4x4 maps) or as one GEMM per image (14x14).
//!
//! The batch's columns `(b, p)` run image after image, in blocks of 3 vectors of 16. Per block
//! and pass of 128 output channels, the block's `dy` columns are first packed into rows of 48
//! values (a vector whose columns cross from image `b` into `b + 1` is read as two masked
//! pieces, one per image; maps of at least 16 pixels make two enough), which then stay in L1
//! while every 8 input channels in turn run in 24 accumulators: per output channel, 3 vector
//! loads, 8 weights broadcast from their row of `w` (read where it lies), 24 FMAs. Between
//! passes a block's sums wait in a buffer of the same rows; the last pass writes them into
//! `dx`, again as masked pieces. Every value is one FMA chain over the output channels in
//! order, whatever the passes, blocks and threads (docs/determinism.md).
//!
//! The forward through the same blocks (with `w` turned to `(ci, co)` first) was slower than
//! the GEMM with its copies (docs/performance.md, "Measured slower").

use super::geometry::ConvGeometry;
use super::schedule::SharedOutput;
use super::scratch::with_columns;
use rayon::prelude::*;

/// f32 lanes of a vector.
const LANES: usize = 16;
/// Output channels of a register block.
const ROWS: usize = 8;
/// Column vectors of a register block.
const VECTORS: usize = 3;
/// Summed channels per pass over a block (its input columns stay in L1).
const KC: usize = 128;

/// True when `g`'s input gradient runs here: where [`fits`], on AMD Zen 5 server cores
/// (`select.rs`'s `CpuKind`; Intel's AVX-512 CPUs keep the GEMMs, unmeasured), where
/// `conv_passes` measured it faster than the GEMMs (the whole-batch one with its copies, or one
/// per image): maps of 16 to 64 pixels, and maps of up to 196 pixels (14x14) with at least 256
/// input channels (at 14x14 level with 128; 1.2-1.45x slower at 28x28).
pub fn applies(g: &ConvGeometry) -> bool {
    fits(g)
        && (g.out_pixels() <= 64 || g.in_channels >= 256)
        && super::select::cpu_kind() == super::select::CpuKind::Zen5Avx512
}

/// True when the kernel can compute `g`'s input gradient on this CPU: a dense 1x1 stride-1
/// unpadded layer on maps of 16 to 196 pixels, channel counts multiples of 8, more than one
/// image, AVX-512 on full-width units.
fn fits(g: &ConvGeometry) -> bool {
    g.is_pointwise()
        && g.groups == 1
        && g.batch > 1
        && (LANES..=196).contains(&g.out_pixels())
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
    assert!(fits(g), "pointwise_nchw: {g:?}");
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
            // The pass's input columns, packed (`KC` rows of `WIDTH`), then each row block's
            // running sums between passes (`rows` rows of `WIDTH`), 64-byte aligned.
            with_columns(LANES + (KC + rows) * WIDTH, |buf| {
                let skip = buf.as_ptr().align_offset(64).min(LANES);
                let (panel, sums) = buf[skip..].split_at_mut(KC * WIDTH);
                for k0 in (0..depth).step_by(KC) {
                    let kc = KC.min(depth - k0);
                    // SAFETY: `fits` checked AVX-512F; the spans' lanes lie inside `inp`
                    // for every channel below `depth` (`Span::of`, p >= 16).
                    unsafe { pack(inp.as_ptr().add(k0 * p), (ins, p), kc, panel) };
                    let stage = match (k0 == 0, k0 + kc == depth) {
                        (true, true) => Stage::Only,
                        (true, false) => Stage::First,
                        (false, false) => Stage::Middle,
                        (false, true) => Stage::Last,
                    };
                    for m0 in (0..rows).step_by(ROWS) {
                        let args = Block {
                            panel: panel.as_ptr(),
                            kc,
                            // SAFETY: within `a`, as checked above.
                            a: unsafe { a.as_ptr().add(k0 * k_stride + m0) },
                            k_stride,
                            sums: sums[m0 * WIDTH..].as_mut_ptr(),
                            stage,
                            p,
                            // SAFETY: channel m0 < rows of `out`.
                            out: unsafe { shared.start().add(m0 * p) },
                        };
                        // SAFETY: AVX-512F (above); the panel holds `kc` rows, `sums` the
                        // block's 8 rows, the weights and spans are checked above, and the
                        // tasks write disjoint columns of `out`.
                        unsafe {
                            match n {
                                3 => block::<3>(&args, outs),
                                2 => block::<2>(&args, outs),
                                _ => block::<1>(&args, outs),
                            }
                        }
                    }
                }
            });
        });
}

/// Values of a packed row: the 3 vectors of a block.
const WIDTH: usize = VECTORS * LANES;

/// Copies rows `0..kc` (channels, `p` values apart) of the columns of `ins` from `inp` into
/// `panel`, `WIDTH` values per row.
///
/// # Safety
/// AVX-512F; the spans' lanes lie inside `inp` for channels `0..kc`; `panel` holds `kc` rows.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn pack(inp: *const f32, (ins, p): (&[Span], usize), kc: usize, panel: &mut [f32]) {
    use std::arch::x86_64::*;
    assert!(panel.len() >= kc * WIDTH);
    let dst = panel.as_mut_ptr();
    for k in 0..kc {
        let row = inp.add(k * p);
        for (v, s) in ins.iter().enumerate() {
            let lo = _mm512_maskz_loadu_ps(s.first_mask, row.add(s.first));
            let x = _mm512_mask_loadu_ps(lo, s.second_mask, row.add(s.second));
            _mm512_storeu_ps(dst.add(k * WIDTH + v * LANES), x);
        }
    }
}

/// Never called: [`fits`] is false off x86-64.
#[cfg(not(target_arch = "x86_64"))]
unsafe fn pack(_: *const f32, _: (&[Span], usize), _: usize, _: &mut [f32]) {
    unreachable!("pointwise_nchw runs only on x86-64")
}

/// Where a block's pass starts and ends: from zero or from its stored sums, into the output or
/// into its stored sums.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Stage {
    Only,
    First,
    Middle,
    Last,
}

/// The operands of one register block's pass: 8 output channels from `out`, their weights from
/// `a`, the pass's packed input columns.
struct Block {
    panel: *const f32,
    kc: usize,
    a: *const f32,
    k_stride: usize,
    sums: *mut f32,
    stage: Stage,
    p: usize,
    out: *mut f32,
}

/// One pass of output channels `out..out + 8 * p` at the columns of `V` vectors.
///
/// # Safety
/// AVX-512F; `outs` holds `V` spans inside the output, `a` the block's weights for the pass's
/// `kc` channels, `panel` its `kc` packed rows, `sums` 8 rows of `WIDTH`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[allow(clippy::needless_range_loop)] // index loops keep the accumulators in registers
unsafe fn block<const V: usize>(args: &Block, outs: &[Span]) {
    use std::arch::x86_64::*;
    let outs: &[Span; V] = outs.try_into().expect("a span per vector");
    let mut acc = [[_mm512_setzero_ps(); V]; ROWS];
    if matches!(args.stage, Stage::Middle | Stage::Last) {
        for r in 0..ROWS {
            for v in 0..V {
                acc[r][v] = _mm512_loadu_ps(args.sums.add(r * WIDTH + v * LANES));
            }
        }
    }
    let mut x = [_mm512_setzero_ps(); V];
    for k in 0..args.kc {
        let row = args.panel.add(k * WIDTH);
        for v in 0..V {
            x[v] = _mm512_loadu_ps(row.add(v * LANES));
        }
        let wk = args.a.add(k * args.k_stride);
        for r in 0..ROWS {
            let w = _mm512_set1_ps(*wk.add(r));
            for v in 0..V {
                acc[r][v] = _mm512_fmadd_ps(w, x[v], acc[r][v]);
            }
        }
    }
    if matches!(args.stage, Stage::First | Stage::Middle) {
        for (r, acc_r) in acc.iter().enumerate() {
            for v in 0..V {
                _mm512_storeu_ps(args.sums.add(r * WIDTH + v * LANES), acc_r[v]);
            }
        }
        return;
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

/// Never called: [`fits`] is false off x86-64.
#[cfg(not(target_arch = "x86_64"))]
unsafe fn block<const V: usize>(_: &Block, _: &[Span]) {
    unreachable!("pointwise_nchw runs only on x86-64")
}

#[cfg(test)]
mod tests {
    use super::super::test_values_fine as values;
    use super::*;

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
    /// maps of 16, 25, 49, 64 and 196 pixels (vectors inside an image and across two), batches
    /// whose columns end on a vector and between vectors, blocks of 1 to 3 vectors, and 8 to
    /// 272 output channels (one pass of 128 and several, the last one short); the same bits
    /// under pools of 1 and 3 threads.
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
            (2, 256, 136, 14),
        ] {
            let g = ConvGeometry::new(&[batch, c_in, side, side], &[c_out, c_in, 1, 1], 1, 0, 1)
                .expect("geometry");
            assert!(fits(&g), "{g:?}");
            let p = side * side;
            let w = values(c_out * c_in, 2);
            let dy = values(batch * c_out * p, 3);
            let mut dx = vec![f32::NAN; batch * c_in * p];
            input_grad_into(&g, &dy, &w, &mut dx);
            for threads in [1, 3] {
                let pool = rayon::ThreadPoolBuilder::new()
                    .num_threads(threads)
                    .build()
                    .expect("pool");
                let mut again = vec![f32::NAN; dx.len()];
                pool.install(|| input_grad_into(&g, &dy, &w, &mut again));
                let differ = super::super::differing_bits(&dx, &again);
                assert_eq!(differ, 0, "{g:?}: {threads} threads");
            }
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
