//! The direct 3x3 kernel for narrow groups (4 and 8 output channels per group: ResNeXt-50's
//! grouped layers on 28x28 and 14x14 maps at 112x112 input; and 16 on 14x14 maps, its layer at
//! 224x224 input) reading a unit's input planes in place and writing its output planes in place,
//! with 16 positions of one output row per vector, on AMD Zen 4.
//!
//! The padded-rows path (`direct3x3.rs`) copies each unit's input into zero-bordered planes,
//! computes rows of `W + 1` positions and copies the output rows back out: `perf` on
//! `conv_passes` (the 28x28 layer with 4 channels per group, batch 16) put the kernel at 30% of
//! the three passes' samples and the copies and zero fills at 21%. Here a register block is
//! `R` whole output rows of `V` vectors of 16 positions (`V = ceil(W / 16)`: 2 on 28x28 maps,
//! whose second vector holds 12 positions, 1 on 14x14, which holds 14) for 4 output channels:
//! 24 accumulators. Per input channel and tap, each row's vectors are one masked load from the
//! input plane (the lanes that would read left or right of the map load zeros), the 4 weights
//! are broadcast, and 24 fused multiply-adds follow; a kernel row above the map's first row or
//! below its last is left out (`TOP`, `BOTTOM`). The lanes past the map's width compute
//! values that are not stored.
//!
//! Each output value is the same chain of fused multiply-adds as the padded kernels compute
//! (input channels in order, taps in row-major order within one), less the products with the
//! rows of the zero border, and with a zero in place of the border columns: adding `w * 0` to a
//! sum that starts at `+0` leaves it as it was, so for finite weights the values equal theirs
//! bit for bit (with an infinite or NaN weight the padded kernels make the border positions NaN,
//! where these leave the top and bottom rows finite). The stride-1 input gradient is the forward
//! of the transposed layer (`direct3x3.rs`) and runs here too.
//!
//! The weight gradient ([`unit_weight_grad`]) reads the input and output-gradient planes in
//! place too: per 4 output channels, 2 input channels and kernel row, 24 accumulators (the 3
//! taps of the row) over the output rows whose kernel row reads inside the map, each lane
//! summing one column of a row's vector, then the 16 lanes summed. That is another order of
//! additions than the padded kernel's (8 lanes over the padded rows), so the values round
//! differently; no lane reads outside the map, so a non-finite pixel reaches only the weights
//! whose products use it.
//!
//! Measured on a 2-core AMD EPYC Zen 4 against the padded rows, `conv_passes` (wall clock of 2
//! threads, best of 7, 2 alternating rounds), forward / input gradient in ms: 28x28 with 4
//! channels per group 1.43-1.47 / 1.39-1.49 -> 0.94-1.09 / 0.85-1.05 at batch 16, 3.25-3.36 /
//! 3.16-3.32 -> 2.03-2.59 / 1.97-2.38 at 32; 14x14 with 8 per group 1.04-1.14 / 1.05-1.07 ->
//! 0.71-0.78 / 0.74-0.80 at batch 16, 2.04-2.85 / 2.05-2.56 -> 1.59-1.77 / 1.49-1.69 at 32. In
//! ResNeXt-50 batch-32 steps (`bench-one` profiles, 3 alternating rounds, ms per step): the
//! 28x28 forward 8.0-8.4 -> 5.3-5.9, input gradient 7.7-7.9 -> 5.3-5.6, eval forward 7.8-8.4 ->
//! 5.4-5.5; at 14x14 6.1-7.1 -> 4.3-5.1, 5.9-6.3 -> 4.3-4.7 and 6.2-6.8 -> 4.6. The weight
//! gradient, `conv_passes` (3 rounds): 28x28 1.15-1.39 -> 0.81-1.11 ms at batch 16, 2.94-2.96
//! -> 2.11-2.28 at 32; 14x14 1.19-1.21 -> 0.84-1.03 at 16; in the batch-32 steps 8.8-9.1 ->
//! 6.2-7.0 (28x28) and 7.7-8.3 -> 6.6-7.4 (14x14).
//!
//! Groups of 16 channels on 14x14 maps (which the wide kernel's vectors across output channels
//! would take, `direct3x3_wide_rows.rs`) run the forward and the stride-1 input gradient here
//! too: the wide kernel's register block there is one output row of 14 positions by one vector
//! of 16 channels, a broadcast per multiply-add. `conv_passes` (wall clock of 2 threads, best of
//! 9, 4 alternating rounds, batch 16, 512 channels in 32 groups), forward / input gradient in ms:
//! 4.16-4.87 / 4.44-4.96 -> 2.88-3.31 / 3.06-3.39. Their weight gradient stays on the wide
//! kernel: here it took 4.45-7.14 ms against 4.32-4.52 (4 rounds).
//!
//! The stride-2 layer from 28x28 with 4 or 8 channels per group runs these register blocks on its
//! input's stride phases (`direct3x3_narrow_phases.rs`).

use super::geometry::ConvGeometry;
use super::pointwise_nchw::lane_mask;

/// Positions one vector holds.
pub(super) const LANES: usize = 16;
/// Output channels of a register block.
pub(super) const CHANNELS: usize = 4;

/// True when the forward of `g`, whose units have `group_out` output channels, runs here instead
/// of through padded rows or the wide kernel: stride 1, 3x3 with padding 1 on square 14x14 or
/// 28x28 maps with 4 or 8 output channels per group, or 14x14 maps with 16, on AMD Zen 4, where
/// it was measured (above; Zen 5 runs `direct3x3_positions512.rs` on the groups of 4 and 8 and
/// the wide kernel on those of 16, Intel the padded rows and the wide kernel). The weight
/// gradient runs here for the groups of 4 and 8.
pub(super) fn fits(g: &ConvGeometry, group_out: usize) -> bool {
    g.stride == 1
        && g.padding == 1
        && (g.kernel_h, g.kernel_w) == (3, 3)
        && g.in_h == g.in_w
        && matches!((g.in_w, group_out), (14 | 28, 4 | 8) | (14, 16))
        && crate::cpu_features::zen4()
}

/// One unit's output: `out[co][y][x] = sum_ci sum_(ky,kx) w[co][ci][ky*3+kx] *
/// x[ci][y+ky-1][x+kx-1]` over the taps inside the `w x w` map, for the `c_in` input planes of
/// `x` and the `c_out` output planes of `out`, with `weights` as the layer holds a group's,
/// `(c_out, c_in, 9)`. Maps of 14 or 28 with 4 or 8 output channels, 14 with 16 ([`fits`]).
///
/// # Safety
/// The CPU supports AVX-512F; the shape is one [`fits`] takes.
pub(super) unsafe fn unit_forward(
    (x, weights, out): (&[f32], &[f32], &mut [f32]),
    (c_in, c_out): (usize, usize),
    w: usize,
) {
    assert!(x.len() == c_in * w * w && out.len() == c_out * w * w);
    assert!(weights.len() == c_out * c_in * 9 && c_out.is_multiple_of(CHANNELS));
    for co in (0..c_out).step_by(CHANNELS) {
        let unit = Unit {
            x: x.as_ptr(),
            w: weights.as_ptr().add(co * c_in * 9),
            out: out.as_mut_ptr().add(co * w * w),
            summed: c_in,
        };
        // Blocks of whole output rows, top to bottom, of 24 accumulators (the last of 8 or 12).
        // The generic arguments: map width, rows, vectors per row, and whether the block's
        // first / last row reads above / below the map.
        match w {
            14 => {
                unit.block::<14, 6, 1, true, false>(0);
                unit.block::<14, 6, 1, false, false>(6);
                unit.block::<14, 2, 1, false, true>(12);
            }
            28 => {
                unit.block::<28, 3, 2, true, false>(0);
                for y0 in (3..27).step_by(3) {
                    unit.block::<28, 3, 2, false, false>(y0);
                }
                unit.block::<28, 1, 2, false, true>(27);
            }
            _ => panic!("direct3x3_narrow_rows: rows of {w}"),
        }
    }
}

/// For each vector `v` of a row of `W` positions, the lanes whose read `16 v + lane + kx - 1`
/// lies in the row, per kernel column `kx`, and the lanes inside the row (`16 v + lane < W`).
fn row_lanes<const W: usize, const V: usize>() -> ([[u16; 3]; V], [u16; V]) {
    // The lanes `l` with `0 <= first + l < W`: one run of lanes.
    let lanes_in = |first: isize| -> u16 {
        let from = (-first).clamp(0, LANES as isize) as usize;
        let to = (W as isize - first).clamp(0, LANES as isize) as usize;
        lane_mask(from, to.saturating_sub(from))
    };
    let mut reads = [[0; 3]; V];
    let mut inside = [0; V];
    for v in 0..V {
        for (kx, read) in reads[v].iter_mut().enumerate() {
            *read = lanes_in((v * LANES + kx) as isize - 1);
        }
        inside[v] = lanes_in((v * LANES) as isize);
    }
    (reads, inside)
}

/// One unit's operands for a block of 4 output channels: the input planes (`summed` of them),
/// the block's weights (4 rows of `summed * 9`), its 4 output planes.
pub(super) struct Unit {
    pub(super) x: *const f32,
    pub(super) w: *const f32,
    pub(super) out: *mut f32,
    pub(super) summed: usize,
}

impl Unit {
    /// Output rows `y0..y0 + R` of a `W x W` map, 4 output channels: `4 x R x V` accumulators
    /// over the input channels and taps. `TOP` when the block's first row is the map's (its
    /// kernel row 0 reads above the input), `BOTTOM` when its last row is (kernel row 2 reads
    /// below).
    ///
    /// # Safety
    /// The CPU supports AVX-512F; the unit's planes are `W x W`, `V == ceil(W / 16)`,
    /// `y0 + R <= W`, `TOP` exactly when `y0 == 0`, `BOTTOM` exactly when `y0 + R == W`.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f")]
    // Indexed loops over the accumulators: with iterators the compiler kept them on the stack.
    #[allow(clippy::needless_range_loop)]
    unsafe fn block<
        const W: usize,
        const R: usize,
        const V: usize,
        const TOP: bool,
        const BOTTOM: bool,
    >(
        &self,
        y0: usize,
    ) {
        use std::arch::x86_64::*;
        debug_assert!(V == W.div_ceil(LANES) && y0 + R <= W && TOP == (y0 == 0));
        debug_assert!(BOTTOM == (y0 + R == W));
        let plane = W * W;
        // The lanes each read loads; the lanes inside the map, which are stored.
        let (reads, stores) = row_lanes::<W, V>();
        let mut acc = [[[_mm512_setzero_ps(); V]; R]; CHANNELS];
        for ci in 0..self.summed {
            // SAFETY (all reads): input row y0 + r + ky - 1 lies in the map unless it is the
            // border above the first row (TOP, r = 0, ky = 0) or below the last (BOTTOM, r =
            // R - 1, ky = 2), which are left out; the lanes a mask leaves out read nothing (the
            // address is formed with wrapping arithmetic); weight (o * summed + ci) * 9 + tap
            // < 4 * summed * 9.
            let xc = self.x.add(ci * plane);
            let wc = self.w.add(ci * 9);
            for ky in 0..3 {
                for kx in 0..3 {
                    let mut wv = [_mm512_setzero_ps(); CHANNELS];
                    for (o, wv) in wv.iter_mut().enumerate() {
                        *wv = _mm512_set1_ps(*wc.add(o * self.summed * 9 + ky * 3 + kx));
                    }
                    // (A `continue` for the border rows kept the accumulators on the stack:
                    // the loops were not unrolled, and the kernel ran 10-20% faster than the
                    // padded rows instead of 30-40%.)
                    for r in 0..R {
                        let above = TOP && r == 0 && ky == 0;
                        let below = BOTTOM && r == R - 1 && ky == 2;
                        if !(above || below) {
                            let row = xc.add((y0 + r + ky - 1) * W);
                            for v in 0..V {
                                let at = row.wrapping_add(v * LANES + kx).wrapping_sub(1);
                                let xv = _mm512_maskz_loadu_ps(reads[v][kx], at);
                                for o in 0..CHANNELS {
                                    acc[o][r][v] = _mm512_fmadd_ps(wv[o], xv, acc[o][r][v]);
                                }
                            }
                        }
                    }
                }
            }
        }
        for (o, acc_o) in acc.iter().enumerate() {
            for (r, acc_r) in acc_o.iter().enumerate() {
                // SAFETY: output row y0 + r < W of plane o < 4; the mask stores the lanes
                // inside the row.
                let row = self.out.add(o * plane + (y0 + r) * W);
                for v in 0..V {
                    _mm512_mask_storeu_ps(row.wrapping_add(v * LANES), stores[v], acc_r[v]);
                }
            }
        }
    }

    /// Never called: [`fits`] is false off x86-64.
    #[cfg(not(target_arch = "x86_64"))]
    unsafe fn block<
        const W: usize,
        const R: usize,
        const V: usize,
        const TOP: bool,
        const BOTTOM: bool,
    >(
        &self,
        _: usize,
    ) {
        unreachable!("direct3x3_narrow_rows runs only on x86-64")
    }
}

/// Adds one unit's weight gradient to `dw` (`(c_out, c_in, 9)`, as the layer holds a group's):
/// `dw[co][ci][ky*3+kx] += sum_(y,x) dy[co][y][x] * x[ci][y+ky-1][x+kx-1]` over the positions
/// whose read lies inside the `w x w` map, for the `c_in` input planes of `x` and the `c_out`
/// output-gradient planes of `dy` ([`fits`]'s shapes; `c_in` even). Per weight, 16 lane sums
/// over the rows in order (lane `l` of a row's vector `v` holding column `16 v + l`), then their
/// sum (`_mm512_reduce_add_ps`), added to `dw`.
///
/// # Safety
/// The CPU supports AVX-512F; the shape is one [`fits`] takes, `c_in` is even.
pub(super) unsafe fn unit_weight_grad(
    (x, dy, dw): (&[f32], &[f32], &mut [f32]),
    (c_in, c_out): (usize, usize),
    w: usize,
) {
    assert!(x.len() == c_in * w * w && dy.len() == c_out * w * w);
    assert!(dw.len() == c_out * c_in * 9 && c_in.is_multiple_of(2));
    assert!(c_out.is_multiple_of(CHANNELS));
    for co in (0..c_out).step_by(CHANNELS) {
        let unit = GradUnit {
            x: x.as_ptr(),
            dy: dy.as_ptr().add(co * w * w),
            dw: dw.as_mut_ptr().add(co * c_in * 9),
            c_in,
        };
        for ci in (0..c_in).step_by(2) {
            for ky in 0..3 {
                match w {
                    14 => unit.sums::<14, 1>(ci, ky),
                    28 => unit.sums::<28, 2>(ci, ky),
                    _ => panic!("direct3x3_narrow_rows: rows of {w}"),
                }
            }
        }
    }
}

/// One unit's operands for the weight gradient of a block of 4 output channels: the input
/// planes, the block's 4 output-gradient planes, its 4 rows of `c_in * 9` weights.
pub(super) struct GradUnit {
    pub(super) x: *const f32,
    pub(super) dy: *const f32,
    pub(super) dw: *mut f32,
    pub(super) c_in: usize,
}

impl GradUnit {
    /// The sums of kernel row `ky` (3 taps) for input channels `ci` and `ci + 1` and the 4
    /// output channels: 24 accumulators over the rows of a `W x W` map, `V` vectors each.
    ///
    /// # Safety
    /// The CPU supports AVX-512F; the planes are `W x W`, `V == ceil(W / 16)`, `ci + 1 < c_in`,
    /// `ky < 3`.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f")]
    #[allow(clippy::needless_range_loop)]
    unsafe fn sums<const W: usize, const V: usize>(&self, ci: usize, ky: usize) {
        use std::arch::x86_64::*;
        debug_assert!(V == W.div_ceil(LANES) && ci + 1 < self.c_in && ky < 3);
        let plane = W * W;
        // The lanes of real output columns whose read lies in the row: the others load zeros,
        // as the output gradient's lanes past the row do.
        let (mut reads, columns) = row_lanes::<W, V>();
        for v in 0..V {
            for read in &mut reads[v] {
                *read &= columns[v];
            }
        }
        // Output rows whose kernel row `ky` reads inside the map.
        let rows = usize::from(ky == 0)..W - usize::from(ky == 2);
        let mut acc = [[[_mm512_setzero_ps(); 3]; 2]; CHANNELS];
        for y in rows {
            for v in 0..V {
                // SAFETY: row y < W of the 4 output-gradient planes; input row y + ky - 1
                // inside the map (`rows`) of planes ci and ci + 1; masked-out lanes read
                // nothing (wrapping address arithmetic).
                let mut d = [_mm512_setzero_ps(); CHANNELS];
                for (o, d) in d.iter_mut().enumerate() {
                    let at = self.dy.add(o * plane + y * W + v * LANES);
                    *d = _mm512_maskz_loadu_ps(columns[v], at);
                }
                for i in 0..2 {
                    let row = self.x.add((ci + i) * plane + (y + ky - 1) * W);
                    for kx in 0..3 {
                        let at = row.wrapping_add(v * LANES + kx).wrapping_sub(1);
                        let xv = _mm512_maskz_loadu_ps(reads[v][kx], at);
                        for o in 0..CHANNELS {
                            acc[o][i][kx] = _mm512_fmadd_ps(d[o], xv, acc[o][i][kx]);
                        }
                    }
                }
            }
        }
        self.add(&acc, ci, ky);
    }

    /// Adds each accumulator's sum to its weight. Kept out of [`GradUnit::sums`], as in
    /// `stem_direct_weight_grad.rs`: the reduction's narrower operations, inlined, confined the
    /// accumulators to the first 16 registers.
    ///
    /// # Safety
    /// The CPU supports AVX-512F; as in [`GradUnit::sums`].
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f")]
    #[inline(never)]
    #[allow(clippy::needless_range_loop)]
    pub(super) unsafe fn add(
        &self,
        acc: &[[[std::arch::x86_64::__m512; 3]; 2]; CHANNELS],
        ci: usize,
        ky: usize,
    ) {
        use std::arch::x86_64::*;
        for o in 0..CHANNELS {
            for i in 0..2 {
                for kx in 0..3 {
                    // SAFETY: weight (o, ci + i, ky * 3 + kx) of the block's 4 rows.
                    let at = self.dw.add((o * self.c_in + ci + i) * 9 + ky * 3 + kx);
                    *at += _mm512_reduce_add_ps(acc[o][i][kx]);
                }
            }
        }
    }

    /// Never called: [`fits`] is false off x86-64.
    #[cfg(not(target_arch = "x86_64"))]
    unsafe fn sums<const W: usize, const V: usize>(&self, _: usize, _: usize) {
        unreachable!("direct3x3_narrow_rows runs only on x86-64")
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::super::direct3x3_dense::Dims;
    use super::super::reference::forward_chain;
    use super::super::{differing_bits, test_values, test_values_fine};
    use super::*;

    /// Every value of a unit is the plain loop's chain (`reference.rs`) bit for bit, on both map
    /// sizes, with 4, 8 and 16 output channels and 4 to 16 input channels; every output value is
    /// written.
    #[test]
    fn a_unit_is_the_plain_chain_bit_for_bit() {
        if !crate::cpu_features::zen4() {
            eprintln!("skipped: the kernel runs on AMD Zen 4 only");
            return;
        }
        let shapes = [
            (4, 4, 28),
            (8, 8, 14),
            (4, 8, 14),
            (8, 4, 28),
            (12, 4, 14),
            (16, 16, 14),
        ];
        for (c_in, c_out, w) in shapes {
            let x = test_values_fine(c_in * w * w, 3);
            let wt = test_values_fine(c_out * c_in * 9, 7);
            let mut out = vec![f32::NAN; c_out * w * w];
            // SAFETY: Zen 4 (checked above: AVX-512F), and the shapes `fits` takes.
            unsafe { unit_forward((&x, &wt, &mut out), (c_in, c_out), w) };
            let g = ConvGeometry::new(&[1, c_in, w, w], &[c_out, c_in, 3, 3], 1, 1, 1);
            let d = Dims::of(&g.expect("a unit's geometry"));
            let want = forward_chain(&d, &x, |o, i, t| wt[(o * c_in + i) * 9 + t]);
            assert_eq!(
                differing_bits(&out, &want),
                0,
                "{c_in} -> {c_out} at {w}x{w}"
            );
        }
    }

    /// A unit's weight gradient, added to what `dw` held, is within a few f32 roundings of the
    /// f64 sum of its products (the taps that read outside the map contributing nothing), on
    /// both map sizes with 4 and 8 output channels.
    #[test]
    fn a_unit_weight_gradient_is_the_f64_sum() {
        if !crate::cpu_features::zen4() {
            eprintln!("skipped: the kernel runs on AMD Zen 4 only");
            return;
        }
        for (c_in, c_out, w) in [(4, 4, 28), (8, 8, 14), (4, 8, 14), (8, 4, 28)] {
            let x = test_values(c_in * w * w, 13);
            let dy = test_values(c_out * w * w, 17);
            let before = test_values(c_out * c_in * 9, 19);
            let mut dw = before.clone();
            // SAFETY: Zen 4 (checked above: AVX-512F), the shapes `fits` takes, `c_in` even.
            unsafe { unit_weight_grad((&x, &dy, &mut dw), (c_in, c_out), w) };
            let want = |ci, co, t| f64_sum(&x, &dy, (ci, co, t), (w, 1));
            let at = format!("{c_in} -> {c_out} at {w}x{w}");
            assert_added_f64_sums((&dw, &before), (c_in, c_out), w * w, want, &at);
        }
    }

    /// Panics unless each weight of `dw` less its value in `before` (`(c_out, c_in, 9)`) is
    /// within a few f32 roundings of `want(ci, co, t)`, a sum of `positions` products of values
    /// of at most 1 (so every partial sum is at most `positions` in size).
    pub(in super::super) fn assert_added_f64_sums(
        (dw, before): (&[f32], &[f32]),
        (c_in, c_out): (usize, usize),
        positions: usize,
        want: impl Fn(usize, usize, usize) -> f64,
        at: &str,
    ) {
        let tolerance = positions as f64 * f64::from(f32::EPSILON) * 4.0;
        for co in 0..c_out {
            for ci in 0..c_in {
                for t in 0..9 {
                    let k = (co * c_in + ci) * 9 + t;
                    let (got, want) = (f64::from(dw[k]) - f64::from(before[k]), want(ci, co, t));
                    let at = format!("{at}, weight ({co}, {ci}, {t})");
                    assert!((got - want).abs() <= tolerance, "{at}: {got} vs {want}");
                }
            }
        }
    }

    /// `sum_(y,x) dy[co][y][x] * x[ci][s y+ky-1][s x+kx-1]` in f64 over the reads inside the
    /// `w x w` map, for stride `s`.
    pub(in super::super) fn f64_sum(
        x: &[f32],
        dy: &[f32],
        (ci, co, t): (usize, usize, usize),
        (w, stride): (usize, usize),
    ) -> f64 {
        let (ky, kx) = (t / 3, t % 3);
        let ow = w / stride;
        let mut sum = 0.0f64;
        for y in 0..ow {
            for xo in 0..ow {
                let (iy, ix) = (
                    (stride * y + ky) as isize - 1,
                    (stride * xo + kx) as isize - 1,
                );
                if (0..w as isize).contains(&iy) && (0..w as isize).contains(&ix) {
                    let v = x[(ci * w + iy as usize) * w + ix as usize];
                    sum += f64::from(v) * f64::from(dy[(co * ow + y) * ow + xo]);
                }
            }
        }
        sum
    }
}
