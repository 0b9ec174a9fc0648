//! 3x3 stride-2 padding-1 convolutions computed directly, through the kernels of
//! `direct3x3.rs`: the grouped layers that halve the map (the first block of ResNeXt's stages
//! 2-4), which as im2col + GEMM are the same narrow GEMMs as their stride-1 siblings.
//!
//! Input row `2 * oy + ky - 1` is row `oy - 1` of the odd rows for `ky = 0`, row `oy` of the
//! even rows for `ky = 1` and row `oy` of the odd rows for `ky = 2`; columns likewise. So each
//! input plane is split into its four stride phases (even/odd rows x even/odd columns), each
//! phase zero-bordered on the top and the left and laid out on rows of width `OW + 1`. Output
//! positions are numbered along rows of that width, and tap `(ky, kx)` reads phase
//! `(ky != 1, kx != 1)` at the fixed offset `(ky > 0) * (OW + 1) + (kx > 0)` from the output
//! position: the forward and the weight gradient are the stride-1 kernels with another table
//! of offsets (one of every `OW + 1` positions lands on a padding column and is dropped).
//!
//! The input gradient is computed per phase of the input: even input rows receive only
//! `ky = 1` from output row `m`, odd ones `ky = 0` from output row `m + 1` and `ky = 2` from
//! row `m` (columns likewise), so each of the four phases of `dx` is a stride-1 correlation of
//! the output gradient with the 1, 2 or 4 taps that reach it, run by the same kernel on the
//! output gradient laid out on rows of width `OW + 1` with a zero row and column after it. The
//! phases are then interleaved back into `dx`. Each value sums output channels in order, then
//! its taps in row-major order.
//!
//! On AMD Zen 4 the layers from 28x28 with 4 or 8 channels per group run all three passes in
//! `direct3x3_narrow_phases.rs` instead, on 16-lane rows (the same values but for the weight
//! gradient's rounding); on AMD Zen 4 and Zen 5 the groups of 16 and 32 channels on the square
//! maps `direct3x3_wide_rows.rs` lists run there.

use super::direct3x3_blocks::{Reads, Taps, POSITION_BLOCK};
use super::direct3x3_rows::spread_rows;
use super::direct3x3_wide::GroupWeights;
use super::geometry::ConvGeometry;
use super::pointwise_nchw::lane_mask;
use super::prefetch::prefetch_l2;
use super::schedule::for_each_unit;
use super::scratch::with_columns;
use crate::cpu_features::avx512f;

/// The forward's and weight gradient's reads on the four stride phases of an input plane,
/// each phase `phase` values long, on rows of `row = OW + 1` values.
#[derive(Clone, Copy)]
pub(super) struct PhaseTaps {
    /// Width of a row of a phase and of the output positions, `OW + 1`.
    pub row: usize,
    /// Values per phase: its `OH + 1` padded rows, or more, so that a block of output
    /// positions past the last row still reads inside the channel's four phases.
    pub phase: usize,
}

impl Taps for PhaseTaps {
    const COUNT: usize = 9;
    /// Tap index 1 reads the even phase one row (column) into its zero border; 0 and 2 the odd
    /// phase, 0 one row (column) up (left) of 2, which the border supplies at the edge.
    #[inline(always)]
    fn offset(self, i: usize) -> usize {
        let (ky, kx) = (i / 3, i % 3);
        let parity = |k: usize| usize::from(k != 1);
        let shift = |k: usize| usize::from(k > 0);
        (2 * parity(ky) + parity(kx)) * self.phase + shift(ky) * self.row + shift(kx)
    }
    #[inline(always)]
    fn weight_tap(self, i: usize) -> usize {
        i
    }
}

/// The layout of the stride-2 `g` for the forward and the weight gradient.
pub(super) fn reads(g: &ConvGeometry) -> Reads<PhaseTaps> {
    let row = g.out_w + 1;
    let positions = (g.out_h * row).div_ceil(POSITION_BLOCK) * POSITION_BLOCK;
    // The furthest tap reads `row + 1` past the position, in the last phase.
    let phase = (positions + row + 1).max((g.out_h + 1) * row);
    Reads {
        plane: 4 * phase,
        positions,
        taps: PhaseTaps { row, phase },
    }
}

/// Writes the `(C, H, W)` planes of `x_unit` into `dst` as `C` channels of `reads.plane`
/// values (four phases on rows of `row` values, see [`PhaseTaps`]): pixel `(y, x)` goes to
/// phase `(y % 2, x % 2)` at padded row `y / 2 + 1`, column `x / 2 + 1`; every other value is
/// zero.
pub(super) fn split_phases(
    g: &ConvGeometry,
    x_unit: &[f32],
    reads: &Reads<PhaseTaps>,
    dst: &mut [f32],
) {
    let (h, w) = (g.in_h, g.in_w);
    let (plane, PhaseTaps { row, phase }) = (reads.plane, reads.taps);
    assert!(row > w.div_ceil(2) && phase >= (h.div_ceil(2) + 1) * row && plane == 4 * phase);
    assert_eq!(x_unit.len() / (h * w), dst.len() / plane);
    dst.fill(0.0);
    // With AVX-512F the split moves 32 values per two loads and two permutes, not one.
    let wide = avx512f();
    for (src, dst) in x_unit.chunks_exact(h * w).zip(dst.chunks_exact_mut(plane)) {
        for (y, src_row) in src.chunks_exact(w).enumerate() {
            let even = 2 * (y % 2) * phase + (y / 2 + 1) * row + 1;
            // The row's even columns, then (one phase on) its odd ones.
            let (evens, odds) = dst[even..].split_at_mut(phase);
            let (evens, odds) = (&mut evens[..w.div_ceil(2)], &mut odds[..w / 2]);
            if wide {
                // SAFETY: AVX-512F (checked); the slices are as long as the row's halves.
                unsafe { deinterleave_avx512(src_row, evens, odds) };
                continue;
            }
            let pairs = src_row.chunks_exact(2);
            if let [last] = pairs.remainder() {
                evens[w / 2] = *last;
            }
            for (j, pair) in pairs.enumerate() {
                evens[j] = pair[0];
                odds[j] = pair[1];
            }
        }
    }
}

/// `evens[j] = src[2 j]`, `odds[j] = src[2 j + 1]`, 32 values of `src` at a time.
///
/// # Safety
/// AVX-512F; `evens` holds `ceil(src.len() / 2)` values and `odds` `src.len() / 2`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn deinterleave_avx512(src: &[f32], evens: &mut [f32], odds: &mut [f32]) {
    use std::arch::x86_64::*;
    assert!(evens.len() == src.len().div_ceil(2) && odds.len() == src.len() / 2);
    let even_idx = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
    let odd_idx = _mm512_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
    let (s, e, o) = (src.as_ptr(), evens.as_mut_ptr(), odds.as_mut_ptr());
    for j in (0..src.len()).step_by(32) {
        let n = (src.len() - j).min(32);
        // SAFETY: the masked lanes read `src[j..j + n]` and write `evens[j / 2..][..ceil(n /
        // 2)]` and `odds[j / 2..][..n / 2]`, inside the slices (asserted above).
        let lo = _mm512_maskz_loadu_ps(lane_mask(0, n.min(16)), s.add(j));
        let hi = _mm512_maskz_loadu_ps(lane_mask(0, n.saturating_sub(16)), s.wrapping_add(j + 16));
        let (ev, od) = (
            _mm512_permutex2var_ps(lo, even_idx, hi),
            _mm512_permutex2var_ps(lo, odd_idx, hi),
        );
        _mm512_mask_storeu_ps(e.add(j / 2), lane_mask(0, n.div_ceil(2)), ev);
        _mm512_mask_storeu_ps(o.add(j / 2), lane_mask(0, n / 2), od);
    }
}

/// Never called: [`avx512f`] is false off x86-64.
#[cfg(not(target_arch = "x86_64"))]
unsafe fn deinterleave_avx512(_: &[f32], _: &mut [f32], _: &mut [f32]) {
    unreachable!("AVX-512 only on x86-64")
}

/// The reads of one phase of the input gradient: for input rows of parity `pr` and columns
/// of parity `pc`, the `N` taps that reach them (1 for even rows and columns, 2 for odd rows
/// or columns, 4 for both), each at an offset into the output gradient laid out on rows of
/// `row` values.
#[derive(Clone, Copy)]
struct PhaseGradTaps<const N: usize> {
    offsets: [usize; N],
    weight_taps: [usize; N],
}

impl<const N: usize> PhaseGradTaps<N> {
    fn new(pr: usize, pc: usize, row: usize) -> Self {
        // (kernel index, output rows (columns) down (right) of the input's phase index):
        // input index 2m + p is reached from output index m + (p + 1 - k) / 2.
        let reach = |parity: usize| -> &'static [(usize, usize)] {
            if parity == 0 {
                &[(1, 0)]
            } else {
                &[(0, 1), (2, 0)]
            }
        };
        let (rows, cols) = (reach(pr), reach(pc));
        assert_eq!(rows.len() * cols.len(), N, "phase ({pr}, {pc})");
        let tap = |i: usize| (rows[i / cols.len()], cols[i % cols.len()]);
        Self {
            offsets: std::array::from_fn(|i| {
                let ((_, down), (_, right)) = tap(i);
                down * row + right
            }),
            weight_taps: std::array::from_fn(|i| {
                let ((ky, _), (kx, _)) = tap(i);
                ky * 3 + kx
            }),
        }
    }
}

impl<const N: usize> Taps for PhaseGradTaps<N> {
    const COUNT: usize = N;
    #[inline(always)]
    fn offset(self, i: usize) -> usize {
        self.offsets[i]
    }
    #[inline(always)]
    fn weight_tap(self, i: usize) -> usize {
        self.weight_taps[i]
    }
}

/// Computes phase `(pr, pc)` of one unit's input gradient into `out` (`c_in` rows of
/// `positions`, the first `filled` of each written) from the output gradient planes `grads`
/// (`c_out` planes of `plane` values) and group `group` of the swapped weights: the unit
/// kernel with that phase's `N` reads.
fn phase_grad<const N: usize>(
    (pr, pc): (usize, usize),
    (row, plane, positions, filled): (usize, usize, usize, usize),
    (grads, swapped, group): (&[f32], &GroupWeights, usize),
    out: &mut [f32],
    (c_in, c_out): (usize, usize),
) {
    let reads = Reads {
        plane,
        positions,
        taps: PhaseGradTaps::<N>::new(pr, pc, row),
    };
    // SAFETY: `applies` (checked by `direct3x3::input_grad`) checked AVX2 and FMA; `grads`
    // holds c_out planes of `plane`, `out` c_in rows of `positions`, the weight groups
    // c_in * c_out * 9 values each; c_in is a multiple of 4 (`applies`); `filled` is at most
    // `positions` (the caller's).
    unsafe { swapped.run(group, (grads, out), (c_out, c_in), &reads, filled) };
}

/// Input gradient `(N, C_in, H, W)` of the stride-2 `g` from the output gradient `dy`, per
/// phase of the input (see the module documentation).
/// `dx` may hold anything: the four phases together write every value.
pub(super) fn input_grad_into(g: &ConvGeometry, dy: &[f32], w: &[f32], dx: &mut [f32]) {
    assert_eq!(g.stride, 2);
    let (c_in, c_out) = (g.group_in_channels(), g.group_out_channels());
    let units = g.units();
    if super::direct3x3_narrow_phases::fits_stride2(g, c_out) {
        // `dy` read and `dx` written in place, with the layer's own weights.
        for_each_unit(dx, g.in_unit_len(), |unit, dx_unit, _| {
            if unit + 1 < units {
                prefetch_l2(g.output_unit(dy, unit + 1));
            }
            let operands = (
                g.output_unit(dy, unit),
                g.weight_group(w, g.group_of(unit)),
                dx_unit,
            );
            // SAFETY: `fits_stride2` checked Zen 4 (AVX-512), the map and the output channels;
            // `applies` makes `c_in` a multiple of 4; the slices are checked inside.
            unsafe {
                super::direct3x3_narrow_phases::unit_input_grad_stride2(operands, (c_in, c_out))
            };
        });
        return;
    }
    // Each group's weights with input and output channels swapped: the kernel's output
    // channels are `dx`'s.
    let mut swapped = vec![0.0f32; w.len()];
    for group in 0..g.groups {
        let src = g.weight_group(w, group);
        let dst = &mut swapped[group * src.len()..(group + 1) * src.len()];
        for co in 0..c_out {
            for ci in 0..c_in {
                let (to, from) = ((ci * c_out + co) * 9, (co * c_in + ci) * 9);
                dst[to..to + 9].copy_from_slice(&src[from..from + 9]);
            }
        }
    }
    let swapped = GroupWeights::new(&swapped, c_out, c_in);
    if swapped.wide() && super::direct3x3_wide_rows::fits_input_grad_stride2(g, c_in) {
        // On the square maps that kernel takes: `dy` and `dx` read and written in place.
        for_each_unit(dx, g.in_unit_len(), |unit, dx_unit, _| {
            if unit + 1 < units {
                prefetch_l2(g.output_unit(dy, unit + 1));
            }
            let operands = (
                g.output_unit(dy, unit),
                swapped.group(g.group_of(unit)),
                dx_unit,
            );
            // SAFETY: the weights are wide (AVX-512 checked by `runs_wide`), `fits_input_grad_
            // stride2` checked the map and channels; the slices are checked inside.
            unsafe {
                super::direct3x3_wide_rows::unit_input_grad_stride2(
                    operands,
                    (c_in, c_out),
                    (g.in_h, g.in_w),
                )
            };
        });
        return;
    }
    // The output gradient on rows of `row` values, with a zero column and row after it: one
    // phase of the forward's layout (the last block's furthest read is `row + 1` past it).
    let layout = reads(g);
    let (row, dy_plane, positions) = (layout.taps.row, layout.taps.phase, layout.positions);
    let (h, w_len) = (g.in_h, g.in_w);
    // Each phase has at most `ceil(H / 2)` rows, read back from the start of rows of `row`.
    let shape = (row, dy_plane, positions, h.div_ceil(2) * row);
    assert!(h.div_ceil(2) * row <= positions);
    for_each_unit(dx, g.in_unit_len(), |unit, dx_unit, _| {
        let dy_unit = g.output_unit(dy, unit);
        if unit + 1 < units {
            prefetch_l2(g.output_unit(dy, unit + 1));
        }
        let group = g.group_of(unit);
        with_columns(c_out * dy_plane + c_in * positions, |buf| {
            let (grads, out) = buf.split_at_mut(c_out * dy_plane);
            spread_rows(dy_unit, (g.out_h, g.out_w), (row, 0), grads, dy_plane);
            for (pr, pc) in [(0, 0), (0, 1), (1, 0), (1, 1)] {
                let (operands, channels) = ((&*grads, &swapped, group), (c_in, c_out));
                match pr + pc {
                    0 => phase_grad::<1>((pr, pc), shape, operands, out, channels),
                    1 => phase_grad::<2>((pr, pc), shape, operands, out, channels),
                    _ => phase_grad::<4>((pr, pc), shape, operands, out, channels),
                }
                // Interleave this phase back: dx[ci][2m + pr][2n + pc].
                let (rows, cols) = ((h - pr).div_ceil(2), (w_len - pc).div_ceil(2));
                for (dst, src) in dx_unit
                    .chunks_exact_mut(h * w_len)
                    .zip(out.chunks_exact(positions))
                {
                    for m in 0..rows {
                        let dst_row = &mut dst[(2 * m + pr) * w_len..][..w_len];
                        let src_row = &src[m * row..m * row + cols];
                        for (n, &v) in src_row.iter().enumerate() {
                            dst_row[2 * n + pc] = v;
                        }
                    }
                }
            }
        });
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every pixel lands where the taps look for it: reading the phase planes back through
    /// the tap offsets reproduces the zero-padded input at `(2 * oy + ky - 1, 2 * ox + kx - 1)`
    /// for every output position, on even and odd map sizes.
    #[test]
    fn taps_read_the_strided_pixels() {
        for (h, w) in [
            (6, 6),
            (7, 5),
            (5, 8),
            (1, 3),
            (1, 1),
            (6, 1),
            (14, 14),
            (3, 67),
            (2, 64),
        ] {
            let g = ConvGeometry::new(&[1, 2, h, w], &[4, 2, 3, 3], 2, 1, 1).unwrap();
            let layout = reads(&g);
            let x: Vec<f32> = (0..2 * h * w).map(|i| i as f32 + 1.0).collect();
            let mut buf = vec![f32::NAN; 2 * layout.plane];
            split_phases(&g, &x, &layout, &mut buf);
            for c in 0..2 {
                for oy in 0..g.out_h {
                    for ox in 0..g.out_w {
                        let q = oy * layout.taps.row + ox;
                        for t in 0..9 {
                            let (iy, ix) = (2 * oy + t / 3, 2 * ox + t % 3);
                            let want = if (1..=h).contains(&iy) && (1..=w).contains(&ix) {
                                x[c * h * w + (iy - 1) * w + ix - 1]
                            } else {
                                0.0
                            };
                            let got = buf[c * layout.plane + q + layout.taps.offset(t)];
                            assert_eq!(got, want, "{h}x{w} c{c} ({oy}, {ox}) tap {t}");
                        }
                    }
                }
            }
            // The furthest read of the last block stays inside the channel.
            let furthest = (0..9).map(|t| layout.taps.offset(t)).max().unwrap();
            assert!(layout.positions + furthest <= layout.plane);
        }
    }

    /// The input-gradient phases cover every (ky, kx) exactly once over the four phases, each
    /// tap reading the output row and column that reach its input phase.
    #[test]
    fn phase_taps_cover_the_kernel_once() {
        let row = 10;
        let mut seen = [0; 9];
        let mut check = |pr: usize, pc: usize, offsets: &[usize], taps: &[usize]| {
            for (&off, &t) in offsets.iter().zip(taps) {
                seen[t] += 1;
                let (ky, kx) = (t / 3, t % 3);
                // Input index 2m + p is reached from output index m + (p + 1 - k) / 2.
                assert_eq!((pr + 1) % 2, ky % 2, "tap {t} in row phase {pr}");
                assert_eq!((pc + 1) % 2, kx % 2, "tap {t} in column phase {pc}");
                let (down, right) = ((pr + 1 - ky) / 2, (pc + 1 - kx) / 2);
                assert_eq!(off, down * row + right, "tap {t} offset");
            }
        };
        let p = PhaseGradTaps::<1>::new(0, 0, row);
        check(0, 0, &p.offsets, &p.weight_taps);
        let p = PhaseGradTaps::<2>::new(0, 1, row);
        check(0, 1, &p.offsets, &p.weight_taps);
        let p = PhaseGradTaps::<2>::new(1, 0, row);
        check(1, 0, &p.offsets, &p.weight_taps);
        let p = PhaseGradTaps::<4>::new(1, 1, row);
        check(1, 1, &p.offsets, &p.weight_taps);
        assert_eq!(seen, [1; 9]);
    }
}
