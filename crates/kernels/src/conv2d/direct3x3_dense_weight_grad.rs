//! The weight gradient of dense 3x3 layers on Intel, AMD Zen 5 and Zen 4 CPUs with AVX-512: the
//! output positions of the whole batch summed in registers, 64 output channels in four vectors
//! against 6 (input channel, tap) pairs.
//!
//! `dW[co][ci][t] = sum over positions q of dY[q][co] * x[q + tap t of channel ci]`. As a GEMM
//! this is `dY (C_out x N*P) @ cols^T`, whose column matrix copies each input value 9 times
//! (2.25 at stride 2) before `gemm` packs it again; Winograd transforms both operands and the
//! result once per call, which on 7x7 and 4x4 maps costs about as much as the products. Here:
//!
//! - The input is copied once with a zero border (`direct3x3_dense.rs`'s bordered maps), and
//!   each output position is an offset into that copy; the output gradient is turned once into
//!   rows of `C_out` values per position (`direct3x3_wide.rs`'s `transpose_grads`, which the
//!   grouped layers' weight gradient uses the same way).
//! - A register block is 64 output channels (4 vectors) x 6 consecutive `(ci, tap)` pairs of
//!   the flattened `C_in x 9` (24 accumulators): per position, 4 gradient vectors and 6
//!   broadcast input values feed 24 fused multiply-adds.
//! - The positions run in chunks whose gradient rows stay in the L2 cache while every block of
//!   a task passes over them; between chunks a block's sums wait in a buffer laid out
//!   `(C_in x 9, C_out)`, and after the last chunk each block writes its values into the
//!   `(C_out, C_in, 3, 3)` gradient.
//!
//! Each weight's gradient is one chain of fused multiply-adds from zero over the positions of
//! the batch in order (image by image, rows in order): a sum stored between chunks is the f32
//! the register held, so the result does not depend on the chunking or the number of threads.
//! This is not the order of the GEMM (blocks of the summed dimension, partial sums per chunk of
//! images) or of Winograd, which it replaces where `select.rs` measured it faster.

use super::direct3x3_dense::{bordered, Dims};
use super::direct3x3_wide::transpose_grads;
use super::geometry::ConvGeometry;
use super::schedule::SharedOutput;
use super::scratch::Scratch;
use rayon::prelude::*;

/// Output channels per vector.
const LANES: usize = 16;
/// Output channels per block: four vectors.
const CO_BLOCK: usize = 4 * LANES;
/// `(input channel, tap)` pairs per register block.
const PAIRS: usize = 6;
/// Gradient values per chunk of positions (128 KiB): the chunk's rows stay in the L2 cache.
const CHUNK_VALUES: usize = 1 << 15;

/// True when the kernel can compute the weight gradient of `g` on this CPU: dense, 3x3,
/// padding 1, stride 1 or 2, a multiple of 64 output channels and an even number of input
/// channels (so that `C_in x 9` pairs fill blocks of 6), an Intel, AMD Zen 5 or Zen 4 CPU with
/// AVX-512 (`cpu_features::avx512_kernels`).
pub(super) fn fits(g: &ConvGeometry) -> bool {
    g.groups == 1
        && g.kernel_h == 3
        && g.kernel_w == 3
        && g.padding == 1
        && matches!(g.stride, 1 | 2)
        && g.out_channels.is_multiple_of(CO_BLOCK)
        && g.in_channels.is_multiple_of(2)
        && crate::cpu_features::avx512_kernels()
}

/// Gradient `(C_out, C_in, 3, 3)` of the loss with respect to the weight, from the input `x`
/// and the output gradient `dy` (both NCHW).
pub(super) fn weight_grad(g: &ConvGeometry, x: &[f32], dy: &[f32]) -> Vec<f32> {
    assert!(fits(g), "direct3x3_dense_weight_grad: {g:?} does not fit");
    let d = Dims::of(g);
    let opix = d.out_pixels();
    assert_eq!(
        dy.len(),
        d.batch * d.c_out * opix,
        "direct3x3_dense_weight_grad: output gradient length"
    );
    let x = bordered(&d, x);
    let dy_t = positions_by_channels(dy, d.c_out, (d.oh, d.ow));
    let pairs = d.c_in * 9;
    // Each position's top-left read in `x`, and each (ci, tap) pair's offset from it: both
    // increasing, so the last of each bound every read.
    let reads: Vec<usize> = (0..d.batch * opix)
        .map(|q| d.read(q / opix, q % opix))
        .collect();
    let offsets: Vec<usize> = (0..pairs)
        .map(|j| (j / 9) * d.plane() + d.tap(j % 9))
        .collect();
    // Sums carried from one chunk of positions to the next (none when one chunk holds them
    // all); each block's last chunk writes its values into `dw`.
    let carried = if reads.len() > chunk_positions(d.c_out) {
        pairs * d.c_out
    } else {
        0
    };
    let mut sums = Scratch::take(carried);
    let mut dw = vec![0.0f32; pairs * d.c_out];
    let blocks = pairs / PAIRS;
    // About four tasks per thread.
    let tasks = (4 * rayon::current_num_threads()).clamp(1, blocks);
    let per_task = blocks.div_ceil(tasks);
    let operands = Operands {
        x: &x,
        dy_t: &dy_t,
        reads: &reads,
        offsets: &offsets,
        c_out: d.c_out,
    };
    let (sums_out, dw_out) = (SharedOutput::new(&mut sums), SharedOutput::new(&mut dw));
    (0..blocks.div_ceil(per_task))
        .into_par_iter()
        .for_each(|task| {
            let range = task * per_task..((task + 1) * per_task).min(blocks);
            // SAFETY: `fits` checked AVX-512; each task writes only its own pair blocks' values
            // of `sums` and `dw`.
            unsafe {
                sum_blocks(
                    &operands,
                    (sums_out.start(), sums_out.len()),
                    (dw_out.start(), dw_out.len()),
                    range,
                )
            };
        });
    dw
}

/// What every task reads.
struct Operands<'a> {
    /// The bordered input.
    x: &'a [f32],
    /// The output gradient, one row of `c_out` values per position of the batch.
    dy_t: &'a [f32],
    /// Each position's top-left read in `x`, increasing.
    reads: &'a [usize],
    /// Each `(ci, tap)` pair's offset from a position's read, increasing.
    offsets: &'a [usize],
    c_out: usize,
}

/// Positions per chunk for `c_out` output channels: [`CHUNK_VALUES`] gradient values.
fn chunk_positions(c_out: usize) -> usize {
    (CHUNK_VALUES / c_out).max(1)
}

/// The NCHW output gradient as one row of `c_out` values per position of the batch
/// (`direct3x3_wide.rs`'s `transpose_grads`, image by image in parallel).
fn positions_by_channels(dy: &[f32], c_out: usize, (oh, ow): (usize, usize)) -> Scratch {
    let image = c_out * oh * ow;
    let mut dy_t = Scratch::take(dy.len());
    dy_t.par_chunks_mut(image)
        .zip(dy.par_chunks(image))
        .for_each(|(dst, src)| transpose_grads(src, (oh, ow, ow), c_out, dst));
    dy_t
}

/// Sums pair blocks `blocks` (each `PAIRS` consecutive `(ci, tap)` pairs) for every block of
/// output channels over every position, chunk by chunk: between chunks in `sums` (`(C_in x 9,
/// C_out)`, start and length), after the last into `dw` (`(C_out, C_in x 9)`).
///
/// # Safety
/// The CPU supports AVX-512F; `sums` and `dw` are valid for writes of their lengths, and no
/// other thread touches the values of `blocks` in them meanwhile.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn sum_blocks(
    o: &Operands<'_>,
    (sums, sums_len): (*mut f32, usize),
    (dw, dw_len): (*mut f32, usize),
    blocks: std::ops::Range<usize>,
) {
    let (x, dy_t, reads, offsets) = (o.x, o.dy_t, o.reads, o.offsets);
    let (positions, pairs, c_out) = (reads.len(), offsets.len(), o.c_out);
    let last_read = reads[positions - 1] + offsets[pairs - 1];
    let chunk = chunk_positions(c_out);
    assert!(
        last_read < x.len()
            && dy_t.len() == positions * c_out
            && (sums_len == pairs * c_out || positions <= chunk)
            && dw_len == pairs * c_out
            && blocks.end * PAIRS <= pairs
            && c_out.is_multiple_of(CO_BLOCK),
        "direct3x3_dense_weight_grad: operands do not fit"
    );
    let (xp, gp) = (x.as_ptr(), dy_t.as_ptr());
    for q0 in (0..positions).step_by(chunk) {
        let q1 = (q0 + chunk).min(positions);
        for co in (0..c_out).step_by(CO_BLOCK) {
            for block in blocks.clone() {
                let j0 = block * PAIRS;
                let mut offs = [0usize; PAIRS];
                offs.copy_from_slice(&offsets[j0..j0 + PAIRS]);
                // SAFETY: rows q0..q1 of `dy_t` and `reads`; read + offset <= last_read <
                // x.len(); rows j0..j0 + 6 of `sums`, columns co..co + 64 <= c_out (checked
                // above; `sums` is read and written only when there is more than one chunk).
                let acc = sum_block(
                    (xp, &offs),
                    (gp.add(co), c_out),
                    &reads[q0..q1],
                    q0,
                    (q0 > 0).then(|| sums.add(j0 * c_out + co).cast_const()),
                    c_out,
                );
                if q1 < positions {
                    store(&acc, sums.add(j0 * c_out + co), c_out);
                } else {
                    // Output channel co + l, pair j0 + k at dw[(co + l) * pairs + j0 + k].
                    let mut values = [[0.0f32; CO_BLOCK]; PAIRS];
                    store(&acc, values.as_mut_ptr().cast(), CO_BLOCK);
                    for l in 0..CO_BLOCK {
                        let at = dw.add((co + l) * pairs + j0);
                        for (k, v) in values.iter().enumerate() {
                            *at.add(k) = v[l];
                        }
                    }
                }
            }
        }
    }
}

/// Stores a register block's sums, row `k` at `at + k * stride`.
///
/// # Safety
/// AVX-512F; each row holds 64 values.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn store(acc: &[[std::arch::x86_64::__m512; 4]; PAIRS], at: *mut f32, stride: usize) {
    use std::arch::x86_64::_mm512_storeu_ps;
    for (k, acc_k) in acc.iter().enumerate() {
        for (v, a) in acc_k.iter().enumerate() {
            _mm512_storeu_ps(at.add(k * stride + v * LANES), *a);
        }
    }
}

/// One register block over positions `q0..q0 + reads.len()`: `sum_q grads[q][0..64] *
/// x[reads[q] + offs[k]]` for each pair `k`, continuing from the sums at `resume` (row `k` at
/// `resume + k * stride`) or from zero.
///
/// # Safety
/// AVX-512F; every read and row lies in its operand (`sum_blocks` checks them).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn sum_block(
    (x, offs): (*const f32, &[usize; PAIRS]),
    (grads, stride): (*const f32, usize),
    reads: &[usize],
    q0: usize,
    resume: Option<*const f32>,
    sums_stride: usize,
) -> [[std::arch::x86_64::__m512; 4]; PAIRS] {
    use std::arch::x86_64::*;
    // (No closures here: they would not inherit the target feature, nor be inlined.)
    let mut acc = [[_mm512_setzero_ps(); 4]; PAIRS];
    if let Some(sums) = resume {
        for (k, acc_k) in acc.iter_mut().enumerate() {
            for (v, a) in acc_k.iter_mut().enumerate() {
                *a = _mm512_loadu_ps(sums.add(k * sums_stride + v * LANES));
            }
        }
    }
    let offs = *offs;
    let mut grad = grads.add(q0 * stride);
    for &read in reads {
        let gv = [
            _mm512_loadu_ps(grad),
            _mm512_loadu_ps(grad.add(LANES)),
            _mm512_loadu_ps(grad.add(2 * LANES)),
            _mm512_loadu_ps(grad.add(3 * LANES)),
        ];
        let input = x.add(read);
        // Index loops of constant length, unrolled: the iterator forms kept the sums in
        // memory.
        #[allow(clippy::needless_range_loop)]
        for k in 0..PAIRS {
            let xv = _mm512_set1_ps(*input.add(offs[k]));
            for v in 0..4 {
                acc[k][v] = _mm512_fmadd_ps(gv[v], xv, acc[k][v]);
            }
        }
        grad = grad.add(stride);
    }
    acc
}

/// Never called: the kernel fits only x86-64 CPUs with AVX-512.
#[cfg(not(target_arch = "x86_64"))]
unsafe fn sum_blocks(
    _: &Operands<'_>,
    _: (*mut f32, usize),
    _: (*mut f32, usize),
    _: std::ops::Range<usize>,
) {
    unreachable!("direct3x3_dense_weight_grad runs only on x86-64")
}

#[cfg(test)]
mod tests {
    use super::super::reference::weight_grad_chain;
    use super::super::{differing_bits, test_values as values};
    use super::*;

    #[test]
    fn weight_grad_is_the_plain_loop_bit_for_bit_for_any_thread_count() {
        if !crate::cpu_features::avx512_kernels() {
            eprintln!("skipped: the kernel runs only on Intel, AMD Zen 5 and Zen 4 with AVX-512");
            return;
        }
        // (batch, c_in, c_out, h, w, stride): chunks of positions that end mid-image (64
        // output channels: 512 positions per chunk; 128: 256), pair blocks that span input
        // channels, 1 and 2 blocks of output channels, odd and even maps at stride 2.
        for (batch, c_in, c_out, h, w, stride) in [
            (3, 2, 64, 13, 17, 1),
            (2, 4, 128, 12, 12, 1),
            (5, 6, 64, 7, 7, 2),
            (2, 2, 64, 6, 9, 2),
            (1, 2, 64, 1, 1, 1),
        ] {
            let g = ConvGeometry::new(&[batch, c_in, h, w], &[c_out, c_in, 3, 3], stride, 1, 1)
                .unwrap();
            let x = values(batch * c_in * h * w, 13);
            let dy = values(g.units() * g.out_unit_len(), 17);
            let want = weight_grad_chain(&g, &x, &dy);
            for threads in [1, 2, 3] {
                let pool = rayon::ThreadPoolBuilder::new()
                    .num_threads(threads)
                    .build()
                    .unwrap();
                let got = pool.install(|| weight_grad(&g, &x, &dy));
                assert_eq!(differing_bits(&got, &want), 0, "{g:?}, {threads} threads");
            }
        }
    }
}
