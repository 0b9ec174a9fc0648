//! The input gradient of dense 3x3 stride-2 layers on small maps as four products over the
//! whole batch, one per stride phase of the input, on AMD Zen 5 and on CPUs with AVX2 and
//! without AVX-512 (where it was measured, an AMD EPYC Zen 3): ResNet-50's stride-2 layer from
//! 14x14 to 7x7 at 112x112 input, and from 7x7 to 4x4 (on Zen 5 from batch 32) ([`applies`]).
//!
//! The whole-batch path (`batched.rs`) computes every tap's columns, `W^T @ dY` with
//! `9 * C_in` rows, then adds each column into its input pixel (col2im, which at stride 2 first
//! sums the taps per pixel): the columns are nine times the input gradient, written and read
//! back. Here the input's pixels are taken phase by phase (even or odd row, even or odd
//! column): an even row receives kernel row 1 from output row `m`, an odd one kernel row 0
//! from output row `m + 1` and kernel row 2 from row `m` (columns likewise). So phase
//! `(pr, pc)` is the sum over its 1, 2 or 4 taps `t` of `W_t^T @ S_t`, where `W_t^T` is tap `t`
//! of the weight as a `C_in x C_out` matrix and `S_t` the output gradient over the batch
//! (`C_out x N*OH*OW`) shifted by a row and / or a column where the tap reads output row
//! `m + 1` or column `n + 1` (zero past the map).
//!
//! The four shifts of the output gradient are laid one after the other in an order (`SHIFTS`)
//! in which every phase's are consecutive, and the weight's taps are copied into slots of
//! `C_out x C_in` in the same order (`PHASES`), so that each phase is one product `A^T B` with
//! a summed dimension of `taps * C_out`: `pointwise_nchw.rs`'s register blocks on Intel, AMD
//! Zen 5 and Zen 4 with AVX-512, else gemm. A last pass writes every row of the input gradient
//! from its two phases' rows, interleaved; a phase of an odd-sized map has one row or column
//! more than the map uses, computed and not written.
//!
//! With the blocks each value is one FMA chain over its phase's taps in the order of their
//! shifts, each over the output channels in order (docs/determinism.md); with gemm, gemm's
//! blocks of the same sum. Either way the values do not depend on the thread count.

use super::geometry::ConvGeometry;
use super::matmul::{matmul_transposed_weight, MatRef};
use super::schedule::SharedOutput;
use super::scratch::Scratch;
use rayon::prelude::*;

/// The output gradient's shifts `(rows, columns)`, in the order of their blocks.
const SHIFTS: [(usize, usize); 4] = [(1, 0), (0, 0), (0, 1), (1, 1)];

/// One stride phase of the input: its (row, column) parity and the taps that reach it, each
/// with the block of `SHIFTS` it reads (consecutive blocks, in order).
struct Phase {
    parity: (usize, usize),
    taps: &'static [(usize, usize)],
}

/// An even row (column) receives kernel row (column) 1 from output row `m`, an odd one kernel
/// row 0 from output row `m + 1` and kernel row 2 from row `m`.
const PHASES: [Phase; 4] = [
    Phase {
        parity: (0, 0),
        taps: &[(4, 1)],
    },
    Phase {
        parity: (0, 1),
        taps: &[(5, 1), (3, 2)],
    },
    Phase {
        parity: (1, 0),
        taps: &[(1, 0), (7, 1)],
    },
    Phase {
        parity: (1, 1),
        taps: &[(2, 0), (8, 1), (6, 2), (0, 3)],
    },
];

/// True when `g`'s input gradient runs here: dense 3x3, stride 2, padding 1, output maps of
/// at most 64 pixels (the whole-batch path's, `batched.rs`), more than one image, on AMD Zen 5
/// (maps of 16 or fewer pixels from batch 32) or where AVX2 runs without AVX-512 (every
/// batch).
///
/// On a 2-core AMD EPYC Zen 3 with the phases' products in gemm, against the whole-batch path,
/// `conv_passes` wall clock of 2 threads, best of 9, 3 alternating rounds: from 14x14 to 7x7
/// with 256 channels 9.24-11.68 -> 6.94-7.59 ms at batch 16 and 17.56-24.12 -> 13.55-14.29 at
/// batch 32, with 512 channels 33.18-38.53 -> 26.63-28.66 at batch 16; from 7x7 to 4x4 with
/// 512 channels 15.24-18.03 -> 10.90-14.24 at batch 16 and 25.36-27.81 -> 18.52-19.87 at batch
/// 32. In ResNet-50 train steps (3 alternating `bench-one` rounds at batch 16, 2 at 32) the
/// 7x7 input-gradient row went 9.0-10.6 -> 7.0-7.3 ms (batch 16) and 21.8-23.7 -> 13.6-15.5
/// (32), the 4x4 row 13.0-14.3 -> 10.1-10.7 and 25.3-31.4 -> 19.5-21.4.
///
/// On AMD Zen 5, `conv_passes`, CPU time of 2 threads, best of 5, 2
/// rounds, against the whole-batch path, with a gemm per tap: from 14x14 to 7x7 with 256
/// channels 9.56-9.71 -> 5.81-6.19 ms at batch 16, 15.98-16.16 -> 10.93-11.10 at batch 32;
/// from 7x7 to 4x4 with 512 channels 7.86-7.90 -> 8.45-8.55 at batch 16. With the phases'
/// products in blocks, wall clock, best of 7, 2-3 rounds, from 7x7 to 4x4: batch 16 3.97-4.04
/// -> 4.23-4.26 ms (the whole-batch path kept), batch 32 12.88-13.39 -> 7.32-7.56. AMD Zen 4
/// takes Zen 5's choice.
pub fn applies(g: &ConvGeometry) -> bool {
    g.groups == 1
        && g.kernel_h == 3
        && g.kernel_w == 3
        && g.stride == 2
        && g.padding == 1
        && g.batch > 1
        && super::batched::applies(g)
        && if crate::cpu_features::amd_avx512() {
            g.out_pixels() > 16 || g.batch >= 32
        } else {
            crate::cpu_features::avx2_only()
        }
}

/// Input gradient `(N, C_in, H, W)` of `g` (as [`applies`] takes it) from the output
/// gradient `dy` and the weight `w`, into `dx` (every value written).
pub fn input_grad_into(g: &ConvGeometry, dy: &[f32], w: &[f32], dx: &mut [f32]) {
    assert!(
        applies(g),
        "input_grad_phases: geometry {g:?} does not apply"
    );
    phases_into(g, dy, w, dx, Products::fastest(g))
}

/// How the phases' products run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Products {
    /// `pointwise_nchw.rs`'s register blocks (AVX-512 on Intel, AMD Zen 5 or Zen 4, `C_in` a
    /// multiple of 8).
    Blocks,
    /// gemm, cut by columns (every CPU).
    Gemm,
}

impl Products {
    /// The blocks where they run: `conv_passes`, CPU time of 2 threads on the Zen 5, best of 5,
    /// 3 alternating rounds, from 14x14 to 7x7 with 256 channels: the input gradient at batch
    /// 16 5.87-6.31 ms with gemm, 5.19-5.41 with the blocks; at batch 32 level (11.7-11.8
    /// against 11.9-12.5, one round each way). On AMD Zen 4, in ResNet-50 train steps
    /// (`bench-one` profiles, 3 alternating rounds, best and median) the input gradient from
    /// 14x14 to 7x7 went 6.8 / 7.0 -> 5.4 / 5.5 ms at batch 16 and 12.1 / 12.7 -> 11.0 / 11.0 at
    /// batch 32, from 7x7 to 4x4 at batch 32 16.6 / 17.9 -> 14.9 / 15.4.
    fn fastest(g: &ConvGeometry) -> Self {
        if crate::cpu_features::avx512_kernels() && g.in_channels.is_multiple_of(8) {
            Self::Blocks
        } else {
            Self::Gemm
        }
    }
}

/// [`input_grad_into`] for any dense 3x3 stride-2 padding-1 `g`, its products run as
/// `products` says (the tests run both).
fn phases_into(g: &ConvGeometry, dy: &[f32], w: &[f32], dx: &mut [f32], products: Products) {
    assert!(g.groups == 1 && (g.kernel_h, g.kernel_w, g.stride, g.padding) == (3, 3, 2, 1));
    let (c_in, c_out, p) = (g.in_channels, g.out_channels, g.out_pixels());
    let ow = g.out_w;
    let width = g.batch * p;
    let len = c_out * width;
    assert!(dy.len() == len && w.len() == c_out * c_in * 9);
    assert_eq!(dx.len(), g.batch * c_in * g.in_h * g.in_w);
    // The output gradient over the batch, `(C_out, N * OH*OW)`, shifted by (row, column) =
    // (1, 0), (0, 0), (0, 1) and (1, 1), block after block (`SHIFTS`): every phase's shifts
    // are consecutive blocks. A shift by `(a, b)` moves each image's flat map by `a * OW + b`
    // values, zeros past its end and, for `b = 1`, in its last column (on a map of one row or
    // one column a shift can pass the whole map: all zeros).
    let mut shifted = Scratch::take(4 * len);
    shifted
        .par_chunks_mut(width)
        .enumerate()
        .for_each(|(i, dst)| {
            let ((a, b), co) = (SHIFTS[i / c_out], i % c_out);
            let off = (a * ow + b).min(p);
            for (img, d) in dst.chunks_exact_mut(p).enumerate() {
                let src = &dy[(img * c_out + co) * p..][..p];
                d[..p - off].copy_from_slice(&src[off..]);
                d[p - off..].fill(0.0);
                if b == 1 {
                    d.iter_mut().skip(ow - 1).step_by(ow).for_each(|v| *v = 0.0);
                }
            }
        });
    let shifted = &*shifted;
    // The weight's taps as `C_in`-long columns, `wq[slot][co][ci] = w[co][ci][tap]`, the
    // slots in `PHASES` order: each phase's taps are consecutive slots.
    let mut wq = Scratch::take(9 * c_out * c_in);
    let mut slot_of_tap = [0; 9];
    for (slot, &(tap, _)) in PHASES.iter().flat_map(|phase| phase.taps).enumerate() {
        slot_of_tap[tap] = slot;
    }
    let slot_len = c_out * c_in;
    let wq_out = SharedOutput::new(&mut wq);
    w.par_chunks(c_in * 9).enumerate().for_each(|(co, src)| {
        for (tap, &slot) in slot_of_tap.iter().enumerate() {
            // SAFETY: each `co` writes its own row `co` of every slot, inside `wq`.
            let dst = unsafe {
                std::slice::from_raw_parts_mut(
                    wq_out.start().add(slot * slot_len + co * c_in),
                    c_in,
                )
            };
            for (d, s) in dst.iter_mut().zip(src[tap..].iter().step_by(9)) {
                *d = *s;
            }
        }
    });
    let wq = &*wq;
    // Each phase's sums, `(C_in, N * OH*OW)`, phase `(pr, pc)` at `(2 * pr + pc) * C_in * width`.
    let mut all_sums = Scratch::take(4 * c_in * width);
    let (h, w_in) = (g.in_h, g.in_w);
    // Phase `(pr, pc)`'s sums are chunk `2 * pr + pc` of `all_sums`: `PHASES` is in that order.
    assert!((0..4).all(|i| PHASES[i].parity == (i / 2, i % 2)));
    // Each phase's first slot: the taps of the phases before it.
    let first_slots: Vec<usize> = PHASES
        .iter()
        .scan(0, |slot, phase| {
            let first = *slot;
            *slot += phase.taps.len();
            Some(first)
        })
        .collect();
    // The four products at once (each parallel over its columns inside): one wait for all
    // instead of one per phase, and the threads share the phases' unequal work.
    all_sums
        .par_chunks_mut(c_in * width)
        .zip(PHASES.par_iter().zip(first_slots))
        .for_each(|(sums, (phase, slot))| {
            let (taps, block) = (phase.taps.len(), phase.taps[0].1);
            // `A^T B` with `A = wq`'s slots of the phase (`taps * C_out` rows of `C_in`) and
            // `B` the shifted output gradients it reads (`taps * C_out` rows of `width`).
            let a = &wq[slot * c_out * c_in..][..taps * c_out * c_in];
            let b = &shifted[block * len..][..taps * len];
            match products {
                // SAFETY: `Blocks` only where AVX-512F runs and C_in is a multiple of 8
                // (`Products::fastest`, the tests); the sizes are those above.
                Products::Blocks => unsafe {
                    super::pointwise_nchw::transposed_product_into(
                        a,
                        (taps * c_out, c_in),
                        b,
                        (1, width),
                        sums,
                    )
                },
                Products::Gemm => matmul_transposed_weight(
                    sums,
                    MatRef::with_strides(a, (c_in, taps * c_out), (1, c_in)),
                    MatRef::row_major(b, taps * c_out, width),
                ),
            }
        });
    // dx[img][ci][2m + pr][2n + pc] is phase (pr, pc)'s sum at (m, n): each row of `dx` from
    // its two phases' rows, interleaved (a phase of an odd-sized map has a row or column more
    // than the map uses; it is not read).
    let all_sums = &*all_sums;
    let simd = w_in <= 32 && crate::cpu_features::avx512_full_width();
    dx.par_chunks_mut(h * w_in)
        .enumerate()
        .for_each(|(plane, dst)| {
            let (img, ci) = (plane / c_in, plane % c_in);
            let at =
                |q: usize, m: usize| &all_sums[(q * c_in + ci) * width + img * p + m * ow..][..ow];
            for y in 0..h {
                let (even, odd) = (at(2 * (y % 2), y / 2), at(2 * (y % 2) + 1, y / 2));
                if simd && (h - y) * w_in >= if w_in > 16 { 32 } else { 16 } {
                    // SAFETY: AVX-512F (`simd`); `even` and `odd` hold `OW >= (W + 1) / 2`
                    // values; the plane holds the vectors' values from the row's start (the
                    // rows after it are written after it).
                    unsafe { interleave(even, odd, dst[y * w_in..].as_mut_ptr(), w_in) };
                    continue;
                }
                let row = &mut dst[y * w_in..][..w_in];
                let mut pairs = row.chunks_exact_mut(2);
                for (pair, (&e, &o)) in (&mut pairs).zip(even.iter().zip(odd)) {
                    pair[0] = e;
                    pair[1] = o;
                }
                if let [last] = pairs.into_remainder() {
                    *last = even[w_in / 2];
                }
            }
        });
}

/// `row[2n] = even[n]`, `row[2n + 1] = odd[n]` for a row of `n <= 32` values at `row`, with
/// two masked loads, two permutes and whole-vector stores, which also write up to `32 - n`
/// values past the row (with masked stores instead, the pass over a batch-16 input gradient
/// took 4x as long on the Zen 5, longer than the scalar loop).
///
/// # Safety
/// AVX-512F; `even` and `odd` hold at least `(n + 1) / 2` and `n / 2` values; `row` has
/// `max(n, 16)`, and `32` values when `n > 16`, writable.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn interleave(even: &[f32], odd: &[f32], row: *mut f32, n: usize) {
    use super::pointwise_nchw::lane_mask;
    use std::arch::x86_64::*;
    assert!(n <= 32 && even.len() >= n.div_ceil(2) && odd.len() >= n / 2);
    let e = _mm512_maskz_loadu_ps(lane_mask(0, n.div_ceil(2)), even.as_ptr());
    let o = _mm512_maskz_loadu_ps(lane_mask(0, n / 2), odd.as_ptr());
    // Lane 2j takes `e`'s lane j (index j), lane 2j + 1 `o`'s (index 16 + j).
    let lo = _mm512_set_epi32(23, 7, 22, 6, 21, 5, 20, 4, 19, 3, 18, 2, 17, 1, 16, 0);
    let hi = _mm512_set_epi32(31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9, 24, 8);
    _mm512_storeu_ps(row, _mm512_permutex2var_ps(e, lo, o));
    if n > 16 {
        _mm512_storeu_ps(row.add(16), _mm512_permutex2var_ps(e, hi, o));
    }
}

/// Never called: `avx512_full_width` is false off x86-64.
#[cfg(not(target_arch = "x86_64"))]
unsafe fn interleave(_: &[f32], _: &[f32], _: *mut f32, _: usize) {
    unreachable!("AVX-512 runs only on x86-64")
}

#[cfg(test)]
mod tests {
    use super::super::test_values_fine as values;
    use super::*;

    /// Every input-gradient value equals the sum, in f64, of weight times output gradient
    /// over the output channels and the taps that reach the pixel, within f32 rounding of sums
    /// of a few hundred products; on even, odd and non-square maps (rows of 7 to 20 values),
    /// odd batches, and channel counts from 8 to 32; with gemm's products and, where they run,
    /// the blocks'. Every value is written (the buffer starts as NaN).
    #[test]
    fn phases_give_the_transposed_convolution() {
        for ((n, c_in, c_out, h, w), products) in [
            (2, 16, 24, 14, 14),
            (3, 8, 8, 13, 13),
            (2, 8, 16, 12, 10),
            (3, 32, 16, 9, 9),
            (2, 16, 8, 7, 7),
            (2, 8, 16, 6, 20),
            (4, 8, 8, 2, 2),
            (2, 8, 8, 1, 1),
            (3, 8, 16, 2, 7),
            (2, 16, 8, 5, 1),
        ]
        .into_iter()
        .flat_map(|shape| products_here().into_iter().map(move |p| (shape, p)))
        {
            let g = ConvGeometry::new(&[n, c_in, h, w], &[c_out, c_in, 3, 3], 2, 1, 1).unwrap();
            let (oh, ow) = (g.out_h, g.out_w);
            let dy = values(n * c_out * oh * ow, 21);
            let wt = values(c_out * c_in * 9, 22);
            let mut dx = vec![f32::NAN; n * c_in * h * w];
            phases_into(&g, &dy, &wt, &mut dx, products);
            for img in 0..n {
                for ci in 0..c_in {
                    for iy in 0..h {
                        for ix in 0..w {
                            let (mut want, mut scale) = (0.0f64, 0.0f64);
                            for co in 0..c_out {
                                for t in 0..9 {
                                    let (ky, kx) = (t / 3, t % 3);
                                    let (ny, nx) = (iy + 1, ix + 1);
                                    if ny < ky
                                        || nx < kx
                                        || (ny - ky) % 2 == 1
                                        || (nx - kx) % 2 == 1
                                    {
                                        continue;
                                    }
                                    let (oy, ox) = ((ny - ky) / 2, (nx - kx) / 2);
                                    if oy < oh && ox < ow {
                                        let gv =
                                            f64::from(dy[((img * c_out + co) * oh + oy) * ow + ox]);
                                        let wv = f64::from(wt[(co * c_in + ci) * 9 + t]);
                                        want += gv * wv;
                                        scale += (gv * wv).abs();
                                    }
                                }
                            }
                            let got = f64::from(dx[((img * c_in + ci) * h + iy) * w + ix]);
                            assert!(
                                (got - want).abs() <= 1e-5 * scale.max(1e-3),
                                "{products:?} {n}x{c_in}x{h}x{w} <- {c_out}: ({img}, {ci}, {iy}, {ix}) {got} against {want}"
                            );
                        }
                    }
                }
            }
        }
    }

    /// The products that run on this CPU: gemm's, and the blocks on Intel, AMD Zen 5 and Zen 4
    /// with AVX-512.
    fn products_here() -> Vec<Products> {
        let mut here = vec![Products::Gemm];
        if crate::cpu_features::avx512_kernels() {
            here.push(Products::Blocks);
        }
        here
    }

    /// With the blocks, each value is one FMA chain in f32: over the taps reaching the pixel in
    /// the order of the output gradient's shifts they read ((1, 0), (0, 0), (0, 1), (1, 1)),
    /// each over the output channels in order. Bit for bit, on an even and an odd map.
    #[test]
    fn blocks_sum_each_value_in_one_chain() {
        if !crate::cpu_features::avx512_kernels() {
            eprintln!("skipped: the blocks do not run on this CPU");
            return;
        }
        for (n, c_in, c_out, h) in [(3, 16, 24, 14), (2, 8, 16, 9)] {
            let g = ConvGeometry::new(&[n, c_in, h, h], &[c_out, c_in, 3, 3], 2, 1, 1).unwrap();
            let o = g.out_h;
            let dy = values(n * c_out * o * o, 23);
            let wt = values(c_out * c_in * 9, 24);
            let mut dx = vec![f32::NAN; n * c_in * h * h];
            phases_into(&g, &dy, &wt, &mut dx, Products::Blocks);
            for (img, ci, iy, ix) in (0..n).flat_map(|img| {
                (0..c_in).flat_map(move |ci| {
                    (0..h).flat_map(move |iy| (0..h).map(move |ix| (img, ci, iy, ix)))
                })
            }) {
                // The taps (ky, kx) reaching (iy, ix), with the output pixel each reads.
                let mut taps: Vec<(usize, usize, usize, usize)> = Vec::new();
                for (ky, kx) in (0..3).flat_map(|ky| (0..3).map(move |kx| (ky, kx))) {
                    let (ny, nx) = (iy + 1, ix + 1);
                    if ny >= ky && nx >= kx && (ny - ky) % 2 == 0 && (nx - kx) % 2 == 0 {
                        taps.push((ky, kx, (ny - ky) / 2, (nx - kx) / 2));
                    }
                }
                // Shift order: the output row minus the pixel's phase row first (1 before 0),
                // then the column offset (0 before 1), as (1, 0), (0, 0), (0, 1), (1, 1).
                let rank = |&(_, _, oy, ox): &(usize, usize, usize, usize)| match (
                    oy - iy / 2,
                    ox - ix / 2,
                ) {
                    (1, 0) => 0,
                    (0, 0) => 1,
                    (0, 1) => 2,
                    _ => 3,
                };
                taps.sort_by_key(rank);
                let mut want = 0.0f32;
                for (ky, kx, oy, ox) in taps {
                    for co in 0..c_out {
                        let gv = if oy < o && ox < o {
                            dy[((img * c_out + co) * o + oy) * o + ox]
                        } else {
                            0.0
                        };
                        want = wt[(co * c_in + ci) * 9 + ky * 3 + kx].mul_add(gv, want);
                    }
                }
                let got = dx[((img * c_in + ci) * h + iy) * h + ix];
                assert_eq!(
                    got.to_bits(),
                    want.to_bits(),
                    "{g:?}: ({img}, {ci}, {iy}, {ix})"
                );
            }
        }
    }

    /// The same bits under rayon pools of 1, 2 and 3 threads (gemm's products are cut by
    /// columns per thread, the sums added by gemm into each piece; the blocks sum each value in
    /// one task), with each kind of products that runs here.
    #[test]
    fn same_bits_on_one_two_and_three_threads() {
        let g = ConvGeometry::new(&[5, 32, 14, 14], &[48, 32, 3, 3], 2, 1, 1).unwrap();
        let dy = values(5 * 48 * 49, 31);
        let wt = values(48 * 32 * 9, 32);
        for products in products_here() {
            let run = |threads: usize| {
                let pool = rayon::ThreadPoolBuilder::new()
                    .num_threads(threads)
                    .build()
                    .unwrap();
                let mut dx = vec![f32::NAN; 5 * 32 * 196];
                pool.install(|| phases_into(&g, &dy, &wt, &mut dx, products));
                dx.iter().map(|v| v.to_bits()).collect::<Vec<_>>()
            };
            let one = run(1);
            assert_eq!(one, run(2), "{products:?}: 1 against 2 threads");
            assert_eq!(one, run(3), "{products:?}: 1 against 3 threads");
        }
    }
}
