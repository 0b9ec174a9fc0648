//! The narrow groups' kernels of `direct3x3_narrow_rows.rs` for the stride-2 layer from 28x28 to
//! 14x14 with 4 or 8 channels per group (ResNeXt-50's first stage-2 block, which the padded phases
//! of `direct3x3_stride2.rs` ran on 8-lane blocks), on AMD Zen 4: its three passes on rows of 14
//! positions in one vector, 4 channels per register block as there: the forward and the weight
//! gradient on the input's four stride phases, split per unit into 14x14 planes without borders
//! ([`unit_forward_stride2`], [`unit_weight_grad_stride2`]), the input gradient reading the output
//! gradient in place and interleaving each row's two column phases into the input row it writes
//! ([`unit_input_grad_stride2`]). Forward and input gradient are the padded phases' chains bit for
//! bit for finite weights; the weight gradient sums in 16 lanes as the stride-1 one does.
//!
//! `conv_passes` (CPU time of 2 threads, best of 9, 3 alternating rounds, forward / input gradient
//! / weight gradient in ms): 4.10-4.26 / 5.24-5.47 / 4.73-4.89 -> 2.87-3.12 / 3.04-3.17 / 3.92-4.10
//! at batch 16, 8.33-9.07 / 10.96-11.62 / 9.10-9.65 -> 6.46-6.77 / 7.13-8.04 / 8.08-8.32 at 32. In
//! ResNeXt-50 batch-32 steps (`bench-one` profiles, 6 alternating rounds, ms per step): forward
//! 3.6-4.0 -> 2.8-2.9, input gradient 3.7-4.2 -> 2.2-2.9 (one round 4.6), weight gradient 3.9-4.4
//! -> 3.5-4.0, eval forward 3.3-4.0 -> 2.6-3.2.

use super::direct3x3_narrow_rows::{GradUnit, Unit, CHANNELS, LANES};
use super::geometry::ConvGeometry;
use super::pointwise_nchw::lane_mask;

/// Side of the input map the stride-2 kernel takes ([`fits_stride2`]): ResNeXt-50's first
/// stage-2 block at 112x112 input, whose grouped layer halves a 28x28 map to 14x14.
const STRIDE2_IN: usize = 28;
/// Side of the stride-2 kernel's output map, and of each stride phase of its input.
const STRIDE2_OUT: usize = STRIDE2_IN / 2;

/// True when `g`, whose units have `group_out` output channels, runs the stride-2 kernel
/// ([`unit_forward_stride2`]) instead of the padded phases of `direct3x3_stride2.rs`: 3x3,
/// stride 2, padding 1 from a 28x28 map, 4 or 8 output channels per group, on AMD Zen 4.
pub(super) fn fits_stride2(g: &ConvGeometry, group_out: usize) -> bool {
    g.stride == 2
        && g.padding == 1
        && (g.kernel_h, g.kernel_w) == (3, 3)
        && (g.in_h, g.in_w) == (STRIDE2_IN, STRIDE2_IN)
        && matches!(group_out, 4 | 8)
        && crate::cpu_features::zen4()
}

/// Values of `phases` that [`unit_forward_stride2`] uses per input channel: its four stride
/// phases of 14x14.
pub(super) const STRIDE2_PHASES: usize = 4 * STRIDE2_OUT * STRIDE2_OUT;

/// One unit's output of the stride-2 layer: `out[co][y][x] = sum_ci sum_(ky,kx)
/// w[co][ci][ky*3+kx] * x[ci][2y+ky-1][2x+kx-1]` over the taps inside the 28x28 map, for the
/// `c_in` input planes of `x` and the `c_out` 14x14 output planes of `out`, with `weights` as
/// the layer holds a group's, `(c_out, c_in, 9)`; `phases` (`c_in * STRIDE2_PHASES` values,
/// any contents) is overwritten with the input's stride phases.
///
/// Each input plane is first split into its four phases (even/odd rows x even/odd columns),
/// 14x14 each, without borders: tap `(ky, kx)` of output `(y, x)` reads phase `(ky != 1, kx !=
/// 1)` at row `y - (ky == 0)`, column `x - (kx == 0)`. A register block is then `R` output rows
/// of one vector (14 of its 16 lanes) for 4 output channels, as on the stride-1 14x14 maps: per
/// input channel and tap, each row one masked load from its phase (lane 0 loads a zero where the
/// column left of the map would be read), 4 weights broadcast, 4 fused multiply-adds; the
/// kernel row above the map is left out. Each value is the padded phases' chain without the
/// products with their zero border, so the values equal theirs bit for bit for finite weights
/// (`direct3x3_narrow_rows.rs`'s module documentation says why).
///
/// # Safety
/// The CPU supports AVX-512F; the shape is one [`fits_stride2`] takes.
pub(super) unsafe fn unit_forward_stride2(
    (x, weights, out): (&[f32], &[f32], &mut [f32]),
    (c_in, c_out): (usize, usize),
    phases: &mut [f32],
) {
    let (plane, half) = (STRIDE2_IN * STRIDE2_IN, STRIDE2_OUT * STRIDE2_OUT);
    assert!(x.len() == c_in * plane && out.len() == c_out * half);
    assert!(weights.len() == c_out * c_in * 9 && c_out.is_multiple_of(CHANNELS));
    assert_eq!(phases.len(), c_in * STRIDE2_PHASES);
    split_stride2_phases(x, phases);
    for co in (0..c_out).step_by(CHANNELS) {
        let unit = Unit {
            x: phases.as_ptr(),
            w: weights.as_ptr().add(co * c_in * 9),
            out: out.as_mut_ptr().add(co * half),
            summed: c_in,
        };
        // Blocks of whole output rows, top to bottom, of 24 accumulators (the last of 8).
        unit.phase_block::<6, true>(0);
        unit.phase_block::<6, false>(6);
        unit.phase_block::<2, false>(12);
    }
}

/// One unit's input gradient of the stride-2 layer: `dx[ci][iy][ix] = sum_co sum_(ky,kx)
/// w[co][ci][ky*3+kx] * dy[co][(iy+1-ky)/2][(ix+1-kx)/2]` over the taps whose output row and
/// column are whole and inside the 14x14 map, for the `c_out` output-gradient planes of `dy`
/// and the `c_in` 28x28 planes of `dx` (every value written), with `weights` as the layer holds
/// a group's, `(c_out, c_in, 9)`. Each value sums output channels in order, then the taps that
/// reach its phase in row-major order: the chain of `direct3x3_stride2.rs`'s phases without the
/// products with their zero row and column, the same values for finite weights.
///
/// Input row `2 m + pr` is reached by kernel row 1 from output row `m` when `pr = 0`, by
/// kernel rows 0 and 2 from output rows `m + 1` and `m` when `pr = 1`; columns likewise. A
/// register block is `R` rows `m` of one row parity for 4 input channels and both column
/// parities, one vector of 14 lanes each: 24 accumulators. Per output channel and tap, each
/// row one masked load of the output gradient in place (shifted one column left where the tap
/// reads column `n + 1`; lane 13 then loads a zero), 4 weights broadcast, 4 fused multiply-adds.
/// The two column parities of a row are then interleaved by two permutes into the 28 values of
/// its input row.
///
/// # Safety
/// The CPU supports AVX-512F; the shape is one [`fits_stride2`] takes.
pub(super) unsafe fn unit_input_grad_stride2(
    (dy, weights, dx): (&[f32], &[f32], &mut [f32]),
    (c_in, c_out): (usize, usize),
) {
    let (plane, half) = (STRIDE2_IN * STRIDE2_IN, STRIDE2_OUT * STRIDE2_OUT);
    assert!(dy.len() == c_out * half && dx.len() == c_in * plane);
    assert!(weights.len() == c_out * c_in * 9 && c_in.is_multiple_of(CHANNELS));
    for ci in (0..c_in).step_by(CHANNELS) {
        let unit = GradInputUnit {
            dy: dy.as_ptr(),
            w: weights.as_ptr().add(ci * 9),
            dx: dx.as_mut_ptr().add(ci * plane),
            c_in,
            c_out,
        };
        // Blocks of phase rows, top to bottom, of 24 accumulators (the last of 16); for odd
        // input rows, the last block's last row has no output row below it.
        for m0 in (0..12).step_by(3) {
            unit.rows::<3, false, false>(m0);
            unit.rows::<3, true, false>(m0);
        }
        unit.rows::<2, false, false>(12);
        unit.rows::<2, true, true>(12);
    }
}

/// One unit's operands for the stride-2 input gradient of a block of 4 input channels: the
/// output-gradient planes (`c_out` of 14x14), the weights from the block's first input channel
/// on (`(c_out, c_in, 9)`), the block's 4 input-gradient planes.
struct GradInputUnit {
    dy: *const f32,
    w: *const f32,
    dx: *mut f32,
    c_in: usize,
    c_out: usize,
}

impl GradInputUnit {
    /// Input rows `2 m + ODD` for `m` in `m0..m0 + R`, 4 input channels, both column parities.
    /// `BOTTOM` when the block's last `m` is 13 and `ODD` (kernel row 0 would read output row
    /// 14, below the map).
    ///
    /// # Safety
    /// The CPU supports AVX-512F; the planes are as [`unit_input_grad_stride2`] takes them, `m0
    /// + R <= 14`, `BOTTOM` exactly when `ODD` and `m0 + R == 14`.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f")]
    #[allow(clippy::needless_range_loop)]
    unsafe fn rows<const R: usize, const ODD: bool, const BOTTOM: bool>(&self, m0: usize) {
        use std::arch::x86_64::*;
        const W: usize = STRIDE2_OUT;
        debug_assert!(m0 + R <= W && BOTTOM == (ODD && m0 + R == W));
        let half = W * W;
        // The lanes read at column n, and at column n + 1 (the last lane past the map).
        let (inside, next) = (lane_mask(0, W), lane_mask(0, W - 1));
        let mut acc = [[[_mm512_setzero_ps(); 2]; R]; CHANNELS];
        for co in 0..self.c_out {
            let d = self.dy.add(co * half);
            let wc = self.w.add(co * self.c_in * 9);
            for ky in 0..3 {
                // Kernel row ky reaches this row parity from output row m + down.
                if (ky == 1) == ODD {
                    continue;
                }
                let down = usize::from(ky == 0);
                for kx in 0..3 {
                    let mut wv = [_mm512_setzero_ps(); CHANNELS];
                    for (j, wv) in wv.iter_mut().enumerate() {
                        // SAFETY: weight (co, ci + j, tap) of the group, j < 4.
                        *wv = _mm512_set1_ps(*wc.add(j * 9 + ky * 3 + kx));
                    }
                    // Kernel column kx reaches odd columns when it is 0 or 2, from output
                    // column n + right.
                    let (pc, right) = (usize::from(kx != 1), usize::from(kx == 0));
                    let mask = if right == 1 { next } else { inside };
                    for r in 0..R {
                        if !(BOTTOM && r == R - 1 && down == 1) {
                            // SAFETY: output row m0 + r + down < 14 (the bottom row is left
                            // out); the mask reads the columns inside the row.
                            let at = d.add((m0 + r + down) * W + right);
                            let v = _mm512_maskz_loadu_ps(mask, at);
                            for j in 0..CHANNELS {
                                acc[j][r][pc] = _mm512_fmadd_ps(wv[j], v, acc[j][r][pc]);
                            }
                        }
                    }
                }
            }
        }
        // Column 2 n from the even parity's lane n, 2 n + 1 from the odd one's.
        let low = _mm512_setr_epi32(0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23);
        let high = _mm512_setr_epi32(8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31);
        let tail = lane_mask(0, STRIDE2_IN - LANES);
        for (j, acc_j) in acc.iter().enumerate() {
            for (r, [even, odd]) in acc_j.iter().enumerate() {
                // SAFETY: input row 2 (m0 + r) + ODD < 28 of plane j < 4: 16 values and the
                // masked 12 after them.
                let row = self.dx.add(j * STRIDE2_IN * STRIDE2_IN);
                let row = row.add((2 * (m0 + r) + usize::from(ODD)) * STRIDE2_IN);
                _mm512_storeu_ps(row, _mm512_permutex2var_ps(*even, low, *odd));
                let rest = _mm512_permutex2var_ps(*even, high, *odd);
                _mm512_mask_storeu_ps(row.add(LANES), tail, rest);
            }
        }
    }

    /// Never called: [`fits_stride2`] is false off x86-64.
    #[cfg(not(target_arch = "x86_64"))]
    unsafe fn rows<const R: usize, const ODD: bool, const BOTTOM: bool>(&self, _: usize) {
        unreachable!("direct3x3_narrow_phases runs only on x86-64")
    }
}

/// Writes the stride phases of the 28x28 planes of `x` into `phases`: pixel `(y, x)` of channel
/// `ci` goes to phase `(y % 2, x % 2)` at `(ci * 4 + 2 (y % 2) + x % 2) * 196 + (y / 2) * 14 + x
/// / 2`. Per row, one load and one masked load, two permutes, two masked stores.
///
/// # Safety
/// The CPU supports AVX-512F; `x` holds whole 28x28 planes and `phases` [`STRIDE2_PHASES`]
/// values for each.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn split_stride2_phases(x: &[f32], phases: &mut [f32]) {
    use std::arch::x86_64::*;
    const W: usize = STRIDE2_IN;
    let (plane, half) = (W * W, STRIDE2_OUT * STRIDE2_OUT);
    assert_eq!(x.len() / plane * STRIDE2_PHASES, phases.len());
    assert!(x.len().is_multiple_of(plane));
    let evens = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
    let odds = _mm512_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
    let (tail, row) = (lane_mask(0, W - LANES), lane_mask(0, STRIDE2_OUT));
    let (src, dst) = (x.as_ptr(), phases.as_mut_ptr());
    for ci in 0..x.len() / plane {
        for y in 0..W {
            // SAFETY: row y of plane ci (16 values and the masked 12 after them); phase rows
            // (y % 2, 0) and (y % 2, 1) of channel ci, 14 values each (asserted lengths).
            let s = src.add(ci * plane + y * W);
            let (lo, hi) = (
                _mm512_loadu_ps(s),
                _mm512_maskz_loadu_ps(tail, s.add(LANES)),
            );
            let d = dst.add(ci * STRIDE2_PHASES + 2 * (y % 2) * half + (y / 2) * STRIDE2_OUT);
            _mm512_mask_storeu_ps(d, row, _mm512_permutex2var_ps(lo, evens, hi));
            _mm512_mask_storeu_ps(d.add(half), row, _mm512_permutex2var_ps(lo, odds, hi));
        }
    }
}

/// Never called: [`fits_stride2`] is false off x86-64.
#[cfg(not(target_arch = "x86_64"))]
unsafe fn split_stride2_phases(_: &[f32], _: &mut [f32]) {
    unreachable!("direct3x3_narrow_phases runs only on x86-64")
}

/// Adds one unit's weight gradient of the stride-2 layer to `dw` (`(c_out, c_in, 9)`, as the layer
/// holds a group's): `dw[co][ci][ky*3+kx] += sum_(y,x) dy[co][y][x] * x[ci][2y+ky-1][2x+kx-1]` over
/// the outputs whose read lies inside the 28x28 map, for the `c_in` input planes of `x` and the
/// `c_out` 14x14 output-gradient planes of `dy` ([`fits_stride2`]'s shapes; `c_in` even); `phases`
/// (`c_in * STRIDE2_PHASES` values, any contents) is overwritten with the input's stride phases. As
/// `direct3x3_narrow_rows.rs`'s `unit_weight_grad`, on the phases [`unit_forward_stride2`] reads:
/// per weight, 16 lane sums over the output rows in order, then their sum.
///
/// # Safety
/// The CPU supports AVX-512F; the shape is one [`fits_stride2`] takes, `c_in` is even.
pub(super) unsafe fn unit_weight_grad_stride2(
    (x, dy, dw): (&[f32], &[f32], &mut [f32]),
    (c_in, c_out): (usize, usize),
    phases: &mut [f32],
) {
    let half = STRIDE2_OUT * STRIDE2_OUT;
    assert!(x.len() == c_in * STRIDE2_IN * STRIDE2_IN && dy.len() == c_out * half);
    assert!(dw.len() == c_out * c_in * 9 && c_in.is_multiple_of(2));
    assert!(c_out.is_multiple_of(CHANNELS) && phases.len() == c_in * STRIDE2_PHASES);
    split_stride2_phases(x, phases);
    for co in (0..c_out).step_by(CHANNELS) {
        let unit = GradUnit {
            x: phases.as_ptr(),
            dy: dy.as_ptr().add(co * half),
            dw: dw.as_mut_ptr().add(co * c_in * 9),
            c_in,
        };
        for ci in (0..c_in).step_by(2) {
            for ky in 0..3 {
                unit.phase_sums(ci, ky);
            }
        }
    }
}

impl Unit {
    /// Output rows `y0..y0 + R` of the stride-2 layer's 14x14 map, 4 output channels: `4 x R`
    /// accumulators over the input channels and taps, reading the unit's stride phases
    /// (`x`: 4 phases of 14x14 per input channel, see [`unit_forward_stride2`]). `TOP` when the
    /// block's first row is the map's (its kernel row 0 reads above the input).
    ///
    /// # Safety
    /// The CPU supports AVX-512F; `x` holds `summed` channels of 4 phases of 14x14, the output
    /// planes are 14x14, `y0 + R <= 14`, `TOP` exactly when `y0 == 0`.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f")]
    #[allow(clippy::needless_range_loop)]
    unsafe fn phase_block<const R: usize, const TOP: bool>(&self, y0: usize) {
        use std::arch::x86_64::*;
        const W: usize = STRIDE2_OUT;
        debug_assert!(y0 + R <= W && TOP == (y0 == 0));
        let half = W * W;
        // The lanes of a row; the same shifted one column right (lane 0, left of the map, zero).
        let (inside, shifted) = (lane_mask(0, W), lane_mask(1, W - 1));
        let mut acc = [[_mm512_setzero_ps(); R]; CHANNELS];
        for ci in 0..self.summed {
            // SAFETY (all reads): phase row y0 + r - (ky == 0) lies in the phase unless it is
            // the row above the map (TOP, r = 0, ky = 0), which is left out; the lanes a mask
            // leaves out read nothing (the address is formed with wrapping arithmetic); weight
            // (o * summed + ci) * 9 + tap < 4 * summed * 9.
            let xc = self.x.add(ci * 4 * half);
            let wc = self.w.add(ci * 9);
            for ky in 0..3 {
                for kx in 0..3 {
                    let mut wv = [_mm512_setzero_ps(); CHANNELS];
                    for (o, wv) in wv.iter_mut().enumerate() {
                        *wv = _mm512_set1_ps(*wc.add(o * self.summed * 9 + ky * 3 + kx));
                    }
                    let phase = xc.add((2 * usize::from(ky != 1) + usize::from(kx != 1)) * half);
                    let (mask, left) = if kx == 0 { (shifted, 1) } else { (inside, 0) };
                    for r in 0..R {
                        if !(TOP && r == 0 && ky == 0) {
                            let row = phase.add((y0 + r - usize::from(ky == 0)) * W);
                            let xv = _mm512_maskz_loadu_ps(mask, row.wrapping_sub(left));
                            for o in 0..CHANNELS {
                                acc[o][r] = _mm512_fmadd_ps(wv[o], xv, acc[o][r]);
                            }
                        }
                    }
                }
            }
        }
        for (o, acc_o) in acc.iter().enumerate() {
            for (r, acc_r) in acc_o.iter().enumerate() {
                // SAFETY: output row y0 + r < 14 of plane o < 4; the mask stores its 14 lanes.
                let row = self.out.add(o * half + (y0 + r) * W);
                _mm512_mask_storeu_ps(row, inside, *acc_r);
            }
        }
    }

    /// Never called: [`fits_stride2`] is false off x86-64.
    #[cfg(not(target_arch = "x86_64"))]
    unsafe fn phase_block<const R: usize, const TOP: bool>(&self, _: usize) {
        unreachable!("direct3x3_narrow_phases runs only on x86-64")
    }
}

impl GradUnit {
    /// [`GradUnit::sums`] for the stride-2 layer, `x` holding the input's stride phases (4
    /// phases of 14x14 per input channel, see [`unit_forward_stride2`]) and the output-gradient
    /// planes 14x14: tap `(ky, kx)` of output row `y` reads phase `(ky != 1, kx != 1)` at row `y
    /// - (ky == 0)`, shifted one column right where `kx == 0`.
    ///
    /// # Safety
    /// The CPU supports AVX-512F; `x` holds `c_in` channels of phases, `ci + 1 < c_in`, `ky < 3`.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f")]
    #[allow(clippy::needless_range_loop)]
    unsafe fn phase_sums(&self, ci: usize, ky: usize) {
        use std::arch::x86_64::*;
        const W: usize = STRIDE2_OUT;
        debug_assert!(ci + 1 < self.c_in && ky < 3);
        let half = W * W;
        let (inside, shifted) = (lane_mask(0, W), lane_mask(1, W - 1));
        let above = usize::from(ky == 0);
        let mut acc = [[[_mm512_setzero_ps(); 3]; 2]; CHANNELS];
        // Output rows whose kernel row `ky` reads inside the map: all but the first for ky = 0.
        for y in above..W {
            // SAFETY: row y < 14 of the 4 output-gradient planes; phase row y - above < 14 of
            // channels ci and ci + 1; masked-out lanes read nothing (wrapping address
            // arithmetic).
            let mut d = [_mm512_setzero_ps(); CHANNELS];
            for (o, d) in d.iter_mut().enumerate() {
                *d = _mm512_maskz_loadu_ps(inside, self.dy.add(o * half + y * W));
            }
            for i in 0..2 {
                let xc = self.x.add((ci + i) * 4 * half);
                for kx in 0..3 {
                    let phase = xc.add((2 * usize::from(ky != 1) + usize::from(kx != 1)) * half);
                    let (mask, left) = if kx == 0 { (shifted, 1) } else { (inside, 0) };
                    let at = phase.add((y - above) * W).wrapping_sub(left);
                    let xv = _mm512_maskz_loadu_ps(mask, at);
                    for o in 0..CHANNELS {
                        acc[o][i][kx] = _mm512_fmadd_ps(d[o], xv, acc[o][i][kx]);
                    }
                }
            }
        }
        self.add(&acc, ci, ky);
    }

    /// Never called: [`fits_stride2`] is false off x86-64.
    #[cfg(not(target_arch = "x86_64"))]
    unsafe fn phase_sums(&self, _: usize, _: usize) {
        unreachable!("direct3x3_narrow_phases runs only on x86-64")
    }
}

#[cfg(test)]
mod tests {
    use super::super::direct3x3_dense::Dims;
    use super::super::direct3x3_narrow_rows::tests::{assert_added_f64_sums, f64_sum};
    use super::super::reference::forward_chain;
    use super::super::{differing_bits, test_values, test_values_fine};
    use super::*;

    /// Every value of a stride-2 unit (28x28 -> 14x14) is the plain loop's chain bit for bit,
    /// with 4 and 8 output channels and 4 to 12 input channels, whatever `phases` held; every
    /// output value is written.
    #[test]
    fn a_stride2_unit_is_the_plain_chain_bit_for_bit() {
        if !crate::cpu_features::zen4() {
            eprintln!("skipped: the kernel runs on AMD Zen 4 only");
            return;
        }
        for (c_in, c_out) in [(8, 8), (4, 4), (4, 8), (12, 4)] {
            let x = test_values_fine(c_in * 28 * 28, 5);
            let wt = test_values_fine(c_out * c_in * 9, 11);
            let mut out = vec![f32::NAN; c_out * 14 * 14];
            let mut phases = vec![f32::NAN; c_in * STRIDE2_PHASES];
            // SAFETY: Zen 4 (checked above: AVX-512F), and the shapes `fits_stride2` takes.
            unsafe { unit_forward_stride2((&x, &wt, &mut out), (c_in, c_out), &mut phases) };
            let g = ConvGeometry::new(&[1, c_in, 28, 28], &[c_out, c_in, 3, 3], 2, 1, 1);
            let g = g.expect("a unit's geometry");
            assert!(fits_stride2(&g, c_out));
            let want = forward_chain(&Dims::of(&g), &x, |o, i, t| wt[(o * c_in + i) * 9 + t]);
            assert_eq!(differing_bits(&out, &want), 0, "{c_in} -> {c_out}");
        }
    }

    /// Every value of a stride-2 unit's input gradient (14x14 -> 28x28) is the plain chain
    /// bit for bit (output channels in order, then the taps that reach it in row-major order),
    /// with 4 and 8 output channels and 4 to 12 input channels; every value is written.
    #[test]
    fn a_stride2_unit_input_gradient_is_the_plain_chain_bit_for_bit() {
        if !crate::cpu_features::zen4() {
            eprintln!("skipped: the kernel runs on AMD Zen 4 only");
            return;
        }
        for (c_in, c_out) in [(8, 8), (4, 4), (4, 8), (12, 4)] {
            let dy = test_values_fine(c_out * 14 * 14, 37);
            let wt = test_values_fine(c_out * c_in * 9, 41);
            let mut dx = vec![f32::NAN; c_in * 28 * 28];
            // SAFETY: Zen 4 (checked above: AVX-512F), and the shapes `fits_stride2` takes.
            unsafe { unit_input_grad_stride2((&dy, &wt, &mut dx), (c_in, c_out)) };
            let mut want = vec![0.0f32; dx.len()];
            for ci in 0..c_in {
                for iy in 0..28isize {
                    for ix in 0..28isize {
                        let mut s = 0.0f32;
                        for co in 0..c_out {
                            for t in 0..9isize {
                                // Input row iy = 2 oy + ky - 1: output row (iy + 1 - ky) / 2.
                                let (ry, rx) = (iy + 1 - t / 3, ix + 1 - t % 3);
                                let (oy, ox) = (ry.div_euclid(2), rx.div_euclid(2));
                                let whole = ry % 2 == 0 && rx % 2 == 0;
                                if whole && (0..14).contains(&oy) && (0..14).contains(&ox) {
                                    let v =
                                        dy[((co * 14) as isize + oy) as usize * 14 + ox as usize];
                                    s = wt[(co * c_in + ci) * 9 + t as usize].mul_add(v, s);
                                }
                            }
                        }
                        want[(ci * 28 + iy as usize) * 28 + ix as usize] = s;
                    }
                }
            }
            assert_eq!(differing_bits(&dx, &want), 0, "{c_in} -> {c_out}");
        }
    }

    /// The stride-2 unit's weight gradient, added to what `dw` held, is within a few f32
    /// roundings of the f64 sum of its products, with 4 and 8 output channels, whatever
    /// `phases` held.
    #[test]
    fn a_stride2_unit_weight_gradient_is_the_f64_sum() {
        if !crate::cpu_features::zen4() {
            eprintln!("skipped: the kernel runs on AMD Zen 4 only");
            return;
        }
        for (c_in, c_out) in [(8, 8), (4, 4), (4, 8), (12, 4)] {
            let x = test_values(c_in * 28 * 28, 23);
            let dy = test_values(c_out * 14 * 14, 29);
            let before = test_values(c_out * c_in * 9, 31);
            let mut dw = before.clone();
            let mut phases = vec![f32::NAN; c_in * STRIDE2_PHASES];
            // SAFETY: Zen 4 (checked above: AVX-512F), the shapes `fits_stride2` takes, `c_in`
            // even.
            unsafe { unit_weight_grad_stride2((&x, &dy, &mut dw), (c_in, c_out), &mut phases) };
            let want = |ci, co, t| f64_sum(&x, &dy, (ci, co, t), (28, 2));
            let at = format!("{c_in} -> {c_out} from 28x28");
            assert_added_f64_sums((&dw, &before), (c_in, c_out), 14 * 14, want, &at);
        }
    }
}
