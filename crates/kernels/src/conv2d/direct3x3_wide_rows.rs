//! The wide direct 3x3 kernel (vectors across output channels, `direct3x3_wide.rs`) reading a
//! unit's input planes as they are and writing its output planes in place, for stride 1 on
//! maps 4, 7 or 14 pixels wide: ResNeXt-50's grouped layers with 16 and 32 channels per group
//! at 112x112 input (7x7 and 4x4 maps) and at 224x224 (14x14).
//!
//! The padded-rows path copies each unit's input into zero-bordered planes, computes rows of
//! `W + 1` positions of which one is dropped, and copies the output rows back out; on a 7x7 map
//! those copies and their zero fills took about as long as the multiplies (`perf` on
//! `conv_passes`: the kernel 30% of the three passes' samples, the copies and fills 28%). Here a
//! register block is whole output rows (`R` rows of `W` positions, `V` vectors of 16 channels,
//! 14 to 24 accumulators; 28 on 14x14 maps ran 1.7x slower than 14), the map width is a
//! constant, so a tap that would read the left or right border is left out when the loops are
//! unrolled, and so is a kernel row above the map's first row or below its last (`TOP`,
//! `BOTTOM`). The input is read where it lies and the output written straight to its planes.
//!
//! The weight gradient likewise reads the input planes in place, over the output positions
//! row by row (the first and last rows apart), with the output gradient transposed on rows of
//! `w` (`transpose_grads`).
//!
//! `conv_passes`, CPU time of 2 threads, best of 5, batch 16, AMD Zen 5, 2-3 rounds against the
//! padded rows: 7x7 maps with 16 channels per group forward 1.29-1.62 -> 0.70-0.83 ms, input
//! gradient 1.29-1.57 -> 0.75-0.88, weight gradient 1.18-1.37 -> 0.76-0.87; 4x4 with 32
//! forward 1.69-1.92 -> 0.77-0.84, input gradient 1.75-1.97 -> 0.87-0.97, weight gradient
//! 1.99-2.20 -> 1.40-1.54; 14x14 with 16 forward 3.61-4.34 -> 2.35-2.53, input gradient
//! 3.51-4.23 -> 2.31-2.51, weight gradient 3.41-4.62 -> 2.33-2.47.
//!
//! Each output value is the same chain of fused multiply-adds as the padded kernels compute,
//! input channels in order and taps in row-major order within one, less the products with the
//! zero border: adding `w * 0` to a sum that starts at `+0` leaves it as it was, so for finite
//! weights the values equal theirs bit for bit (with an infinite or NaN weight the padded
//! kernels make the border positions NaN, where these leave them finite, as GEMM does).

use super::geometry::ConvGeometry;

/// Output channels one vector holds.
const LANES: usize = 16;

/// True when stride-1 `g`, whose units run the wide kernels with `group_out` output channels
/// per group (a multiple of 16), runs here instead of through padded rows: on AMD Zen 5, where
/// it was measured (`select.rs`'s `CpuKind`; Intel's AVX-512 CPUs keep the padded rows,
/// unmeasured), padding 1, output
/// square maps of 4, 7 or 14 pixels a side, and one or two vectors of channels (not two on
/// 14x14 maps).
pub(super) fn fits(g: &ConvGeometry, group_out: usize) -> bool {
    g.stride == 1
        && g.padding == 1
        && g.kernel_h == 3
        && g.kernel_w == 3
        && g.out_w == g.in_w
        && g.out_h == g.in_h
        && g.in_h == g.in_w
        && matches!(g.out_w, 4 | 7 | 14)
        && matches!(group_out, 16 | 32)
        && !(g.out_w == 14 && group_out == 32)
        && super::select::cpu_kind() == super::select::CpuKind::Zen5Avx512
}

/// One unit's output: `out[co][y][x] = sum_ci sum_(ky,kx) w[ci][ky*3+kx][co] * x[ci][y+ky-1][x+kx-1]`
/// over the taps inside the `(h, w)` map, for `c_in` input planes of `x` and `c_out` output
/// planes of `out`, with `weights` packed `(c_in, 9, c_out)` as the wide kernel takes them.
///
/// # Safety
/// The CPU supports AVX-512F; `(h, w)` and `c_out` are as [`fits`] requires.
pub(super) unsafe fn unit_forward(
    (x, weights, out): (&[f32], &[f32], &mut [f32]),
    (c_in, c_out): (usize, usize),
    (h, w): (usize, usize),
) {
    assert!(h == w && x.len() == c_in * h * w && out.len() == c_out * h * w);
    assert!(weights.len() == c_in * 9 * c_out);
    let unit = Unit {
        x: x.as_ptr(),
        w: weights.as_ptr(),
        out: out.as_mut_ptr(),
        c_in,
    };
    // Blocks of whole rows, top to bottom: at most 28 accumulators, at least 14.
    match (w, c_out) {
        (4, 16) => unit.block::<4, 4, 1, true, true>(0),
        (4, 32) => {
            unit.block::<4, 2, 2, true, false>(0);
            unit.block::<4, 2, 2, false, true>(2);
        }
        (7, 16) => {
            unit.block::<7, 3, 1, true, false>(0);
            unit.block::<7, 2, 1, false, false>(3);
            unit.block::<7, 2, 1, false, true>(5);
        }
        (7, 32) => {
            unit.block::<7, 1, 2, true, false>(0);
            for y0 in 1..6 {
                unit.block::<7, 1, 2, false, false>(y0);
            }
            unit.block::<7, 1, 2, false, true>(6);
        }
        (14, 16) => {
            unit.block::<14, 1, 1, true, false>(0);
            for y0 in 1..13 {
                unit.block::<14, 1, 1, false, false>(y0);
            }
            unit.block::<14, 1, 1, false, true>(13);
        }
        _ => panic!("direct3x3_wide_rows: {c_out} channels on rows of {w}"),
    }
}

/// One unit's operands: `c_in` input planes, the packed weights, the output planes.
struct Unit {
    x: *const f32,
    w: *const f32,
    out: *mut f32,
    c_in: usize,
}

impl Unit {
    /// Output rows `y0..y0 + R` of a `W x W` map, all `16 * V` output channels: `R x W x V`
    /// accumulators over the input channels and taps. `TOP` when the block's first row is the
    /// map's (its kernel row 0 reads the border), `BOTTOM` when its last row is.
    ///
    /// # Safety
    /// The CPU supports AVX-512F; the unit's planes are `W x W` with `16 * V` output
    /// channels, `y0 + R <= W`, and `y0 == 0` exactly when `TOP`, `y0 + R == W` when `BOTTOM`.
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
        debug_assert!(y0 + R <= W && TOP == (y0 == 0) && BOTTOM == (y0 + R == W));
        let (plane, c_out) = (W * W, V * LANES);
        let mut acc = [[[_mm512_setzero_ps(); V]; W]; R];
        for ci in 0..self.c_in {
            // SAFETY (all reads): input row y0 + r + ky - 1 lies in the map unless it is the
            // border above the first row (TOP, r = 0, ky = 0) or below the last (BOTTOM, r = R -
            // 1, ky = 2), which are left out; column xo + kx - 1 likewise; weight (ci * 9 + tap)
            // * c_out + 16 * v + 15 < c_in * 9 * c_out.
            let xc = self.x.add(ci * plane);
            let wc = self.w.add(ci * 9 * c_out);
            for ky in 0..3 {
                for kx in 0..3 {
                    let mut wv = [_mm512_setzero_ps(); V];
                    for (v, wv) in wv.iter_mut().enumerate() {
                        *wv = _mm512_loadu_ps(wc.add((ky * 3 + kx) * c_out + v * LANES));
                    }
                    for r in 0..R {
                        let above = TOP && r == 0 && ky == 0;
                        let below = BOTTOM && r == R - 1 && ky == 2;
                        if !(above || below) {
                            let row = xc.add((y0 + r + ky - 1) * W);
                            for xo in 0..W {
                                if xo + kx >= 1 && xo + kx <= W {
                                    let xv = _mm512_set1_ps(*row.add(xo + kx - 1));
                                    for v in 0..V {
                                        acc[r][xo][v] = _mm512_fmadd_ps(wv[v], xv, acc[r][xo][v]);
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
        // Channels-across vectors to the output planes, through the stack: each channel's
        // `R * W` positions are one run of its plane.
        let mut block = [[[0.0f32; LANES]; W]; R];
        for v in 0..V {
            for r in 0..R {
                for xo in 0..W {
                    _mm512_storeu_ps(block[r][xo].as_mut_ptr(), acc[r][xo][v]);
                }
            }
            for j in 0..LANES {
                // SAFETY: channel 16 * v + j < c_out, positions y0 * W..(y0 + R) * W <= plane.
                let dst = self.out.add((v * LANES + j) * plane + y0 * W);
                for (r, block_r) in block.iter().enumerate() {
                    for (xo, values) in block_r.iter().enumerate() {
                        *dst.add(r * W + xo) = values[j];
                    }
                }
            }
        }
    }

    /// Never called: the wide kernels run only on x86-64.
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
        unreachable!("the wide kernels run only on x86-64")
    }
}

/// Adds one unit's weight gradient to `dw_t` (`(c_in, 9, c_out)`, as the wide kernels keep
/// it): `sum_q grads_t[q][co] * x[ci][q + tap]` over the output positions `q` of the `(h, w)`
/// map in order, taps inside the map only, each sum from zero and then added to `dw_t` once;
/// `grads_t` is the output gradient one row of `c_out` channels per position
/// (`transpose_grads` with rows of `w`).
///
/// The padded kernel (`unit_weight_grad_wide`) runs the same sums over its rows of `w + 1`,
/// whose extra positions have a zero gradient, with the border read as zeros: for finite
/// inputs the values are the same bit for bit.
///
/// # Safety
/// The CPU supports AVX-512F; `(h, w)` and `c_out` are as [`fits`] requires, `c_in` is even.
pub(super) unsafe fn unit_weight_grad(
    (x, grads_t, dw_t): (&[f32], &[f32], &mut [f32]),
    (c_in, c_out): (usize, usize),
    (h, w): (usize, usize),
) {
    assert!(h == w && c_in.is_multiple_of(2) && c_out.is_multiple_of(LANES));
    assert!(x.len() == c_in * h * w && grads_t.len() == h * w * c_out);
    assert!(dw_t.len() == c_in * 9 * c_out);
    let unit = GradUnit {
        x: x.as_ptr(),
        grads_t: grads_t.as_ptr(),
        dw_t: dw_t.as_mut_ptr(),
        c_out,
    };
    for co in (0..c_out).step_by(LANES) {
        for ci in (0..c_in).step_by(2) {
            match w {
                4 => unit.sums::<4>(ci, co),
                7 => unit.sums::<7>(ci, co),
                14 => unit.sums::<14>(ci, co),
                _ => panic!("direct3x3_wide_rows: rows of {w}"),
            }
        }
    }
}

/// One unit's weight-gradient operands: input planes, the transposed output gradient, the
/// sums `(c_in, 9, c_out)`.
struct GradUnit {
    x: *const f32,
    grads_t: *const f32,
    dw_t: *mut f32,
    c_out: usize,
}

impl GradUnit {
    /// The sums of input channels `ci` and `ci + 1`, 9 taps each, for the 16 output channels
    /// from `co` on a `W x W` map, added to `dw_t`: the map's first and last rows apart, where
    /// a kernel row reads the border.
    ///
    /// # Safety
    /// As [`unit_weight_grad`], with `ci + 1 < c_in` and `co + 16 <= c_out`.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f")]
    unsafe fn sums<const W: usize>(&self, ci: usize, co: usize) {
        use std::arch::x86_64::*;
        let mut acc = [[_mm512_setzero_ps(); 9]; 2];
        self.row::<W, true, false>(&mut acc, (ci, co), 0);
        for y in 1..W - 1 {
            self.row::<W, false, false>(&mut acc, (ci, co), y);
        }
        self.row::<W, false, true>(&mut acc, (ci, co), W - 1);
        for (b, acc_b) in acc.iter().enumerate() {
            for (t, a) in acc_b.iter().enumerate() {
                // SAFETY: (ci + b, t, co..co + 16) lies inside `dw_t`.
                let at = self.dw_t.add(((ci + b) * 9 + t) * self.c_out + co);
                _mm512_storeu_ps(at, _mm512_add_ps(_mm512_loadu_ps(at), *a));
            }
        }
    }

    /// Row `y` of the output positions added to `acc` (`TOP` for the map's first row, whose
    /// kernel row 0 reads the border, `BOTTOM` for its last).
    ///
    /// # Safety
    /// As [`Self::sums`], with `y < W`, `y == 0` exactly when `TOP`, `y == W - 1` when `BOTTOM`.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f")]
    #[inline]
    // Indexed loops over the accumulators: with iterators the compiler kept them on the stack.
    #[allow(clippy::needless_range_loop)]
    unsafe fn row<const W: usize, const TOP: bool, const BOTTOM: bool>(
        &self,
        acc: &mut [[std::arch::x86_64::__m512; 9]; 2],
        (ci, co): (usize, usize),
        y: usize,
    ) {
        use std::arch::x86_64::*;
        let plane = W * W;
        for xo in 0..W {
            // SAFETY (all reads): position y * W + xo < W * W rows of `grads_t`; input row
            // y + ky - 1 and column xo + kx - 1 lie in the map for every tap that is not left
            // out, in planes ci and ci + 1.
            let gv = _mm512_loadu_ps(self.grads_t.add((y * W + xo) * self.c_out + co));
            for b in 0..2 {
                let xc = self.x.add((ci + b) * plane);
                for t in 0..9 {
                    let (ky, kx) = (t / 3, t % 3);
                    let outside =
                        (TOP && ky == 0) || (BOTTOM && ky == 2) || xo + kx == 0 || xo + kx > W;
                    if !outside {
                        let xv = _mm512_set1_ps(*xc.add((y + ky - 1) * W + xo + kx - 1));
                        acc[b][t] = _mm512_fmadd_ps(gv, xv, acc[b][t]);
                    }
                }
            }
        }
    }

    /// Never called: the wide kernels run only on x86-64.
    #[cfg(not(target_arch = "x86_64"))]
    unsafe fn sums<const W: usize>(&self, _: usize, _: usize) {
        unreachable!("the wide kernels run only on x86-64")
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_values_fine as values;
    use super::*;

    /// Every output value is the chain of fused multiply-adds over the input channels in
    /// order and the taps inside the map in row-major order, from `+0`, bit for bit (what the
    /// padded kernels compute, whose border products add `w * 0`), for each map width and
    /// channel count the kernel takes and input channel counts from 4 to 20.
    #[test]
    fn each_value_is_the_in_order_chain_bit_for_bit() {
        if !super::super::select::avx512_full_width() {
            eprintln!("skipped: this CPU lacks AVX-512 on full-width units");
            return;
        }
        for (side, c_out) in [(4, 16), (4, 32), (7, 16), (7, 32), (14, 16)] {
            for c_in in [4, 16, 20] {
                let plane = side * side;
                let x = values(c_in * plane, 7);
                let w = values(c_in * 9 * c_out, 8);
                let mut out = vec![f32::NAN; c_out * plane];
                // SAFETY: AVX-512 checked above; the map and channels are ones `fits` takes.
                unsafe { unit_forward((&x, &w, &mut out), (c_in, c_out), (side, side)) };
                for co in 0..c_out {
                    for y in 0..side {
                        for xo in 0..side {
                            let mut sum = 0.0f32;
                            for ci in 0..c_in {
                                for t in 0..9 {
                                    let (iy, ix) =
                                        ((y + t / 3) as isize - 1, (xo + t % 3) as isize - 1);
                                    if (0..side as isize).contains(&iy)
                                        && (0..side as isize).contains(&ix)
                                    {
                                        let xv = x[ci * plane + iy as usize * side + ix as usize];
                                        sum = w[(ci * 9 + t) * c_out + co].mul_add(xv, sum);
                                    }
                                }
                            }
                            let got = out[co * plane + y * side + xo];
                            assert_eq!(
                                got.to_bits(),
                                sum.to_bits(),
                                "{side}x{side}, {c_in}->{c_out}: channel {co} at ({y}, {xo})"
                            );
                        }
                    }
                }
            }
        }
    }

    /// Each weight-gradient sum is the chain of fused multiply-adds over the output positions
    /// in order (taps inside the map only), from zero, added once to what `dw_t` held, bit for
    /// bit, through the transposition on rows of `w`.
    #[test]
    fn each_weight_sum_is_the_in_order_chain_bit_for_bit() {
        if !super::super::select::avx512_full_width() {
            eprintln!("skipped: this CPU lacks AVX-512 on full-width units");
            return;
        }
        for (side, c_out, c_in) in [(4, 16, 2), (4, 32, 6), (7, 16, 4), (7, 32, 2), (14, 16, 2)] {
            let plane = side * side;
            let x = values(c_in * plane, 9);
            let dy = values(c_out * plane, 10);
            let mut grads_t = vec![f32::NAN; plane * c_out];
            super::super::direct3x3_wide::transpose_grads(
                &dy,
                (side, side, side),
                c_out,
                &mut grads_t,
            );
            let start = values(c_in * 9 * c_out, 11);
            let mut got = start.clone();
            // SAFETY: AVX-512 checked above; the map and channels are ones `fits` takes.
            unsafe { unit_weight_grad((&x, &grads_t, &mut got), (c_in, c_out), (side, side)) };
            for ci in 0..c_in {
                for t in 0..9 {
                    for co in 0..c_out {
                        let mut sum = 0.0f32;
                        for q in 0..plane {
                            let (iy, ix) = (
                                (q / side + t / 3) as isize - 1,
                                (q % side + t % 3) as isize - 1,
                            );
                            if (0..side as isize).contains(&iy) && (0..side as isize).contains(&ix)
                            {
                                let xv = x[ci * plane + iy as usize * side + ix as usize];
                                sum = dy[co * plane + q].mul_add(xv, sum);
                            }
                        }
                        let at = (ci * 9 + t) * c_out + co;
                        assert_eq!(
                            got[at].to_bits(),
                            (start[at] + sum).to_bits(),
                            "{side}x{side}, {c_in}->{c_out}: ({ci}, {t}, {co})"
                        );
                    }
                }
            }
        }
    }
}
