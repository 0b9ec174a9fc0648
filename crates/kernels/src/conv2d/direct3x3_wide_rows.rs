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
//! `conv_passes`, CPU time of 2 threads, best of 5, batch 16, AMD Zen 5, 3 rounds against the
//! padded rows: 7x7 maps with 16 channels per group forward 1.29-1.62 -> 0.70-0.83 ms, input
//! gradient 1.29-1.57 -> 0.75-0.88; 4x4 with 32 forward 1.69-1.92 -> 0.77-0.84, input
//! gradient 1.75-1.97 -> 0.87-0.97; 14x14 with 16 forward 3.61-4.34 -> 2.35-2.53, input
//! gradient 3.51-4.23 -> 2.31-2.51.
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
}
