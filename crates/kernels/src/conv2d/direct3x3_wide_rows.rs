//! The wide direct 3x3 kernels (vectors across output channels, `direct3x3_wide.rs`) reading a
//! unit's planes as they are and writing its output planes in place, on AMD Zen 5: ResNeXt-50's
//! grouped layers with 16 and 32 channels per group, at stride 1 on 4x4 and 7x7 maps (112x112
//! input) and 14x14 (224x224), and at stride 2 from 7x7 and 14x14 (and 28x28 at 224x224). On AMD
//! Zen 4 the 14x14 layer's forward and input gradient run `direct3x3_narrow_rows.rs` instead.
//!
//! The padded-rows path copies each unit's input into zero-bordered planes (at stride 2, into
//! its four phases), computes rows of `W + 1` positions of which one is dropped, and copies
//! the output rows back out; on a 7x7 map those copies and their zero fills took about as long
//! as the multiplies (`perf` on `conv_passes`: the kernel 30% of the three passes' samples, the
//! copies and fills 28%). Here a register block is whole output rows (`R` rows of `W`
//! positions, `V` vectors of 16 channels, 14 to 21 accumulators; 28 on 14x14 maps ran 1.7x
//! slower than 14), the map widths and the stride are constants, so a tap that would read the
//! left or right border is left out when the loops are unrolled, and so is a kernel row above
//! the map's first row or below its last (`TOP`, `BOTTOM`).
//!
//! The weight gradient likewise reads the input planes in place, over the output positions
//! row by row (the first and last rows apart), with the output gradient transposed on rows of
//! the output width (`transpose_grads`). The stride-1 input gradient is the forward of the
//! transposed layer (`direct3x3.rs`); at stride 2 from 7x7 maps it runs here over rows of the
//! input map,
//! each row and column taking the kernel rows and columns that reach it (1 for an even row, 0
//! and 2 for an odd one), in place of the four phases of `direct3x3_stride2.rs`.
//!
//! `conv_passes`, CPU time of 2 threads, best of 5, batch 16, 2-3 rounds against the padded
//! rows, forward / input gradient / weight gradient in ms:
//!
//! - 7x7, 16 channels per group: 1.29-1.62 / 1.29-1.57 / 1.18-1.37 -> 0.70-0.83 / 0.75-0.88 /
//!   0.76-0.87.
//! - 4x4, 32 per group: 1.69-1.92 / 1.75-1.97 / 1.99-2.20 -> 0.77-0.84 / 0.87-0.97 / 1.40-1.54.
//! - 14x14, 16 per group: 3.61-4.34 / 3.51-4.23 / 3.41-4.62 -> 2.35-2.53 / 2.31-2.51 /
//!   2.33-2.47.
//! - Stride 2 from 14x14, 16 per group: forward and weight gradient 1.93-1.96 / 1.97-2.07 ->
//!   0.69-0.82 / 0.83-0.96 (the input gradient stays on the phases:
//!   [`fits_input_grad_stride2`]).
//! - Stride 2 from 7x7, 32 per group: 2.01-2.08 / 2.19-2.56 / 2.67 -> 0.76-0.84 / 1.06-1.10 /
//!   1.27-1.38; 16 per group (input gradient) 1.02-1.05 -> 0.45.
//!
//! Each output value is the same chain of fused multiply-adds as the padded kernels compute
//! (input channels in order, taps in row-major order within one; the input gradient's output
//! channels in order, then its taps), less the products with the zero border: adding `w * 0`
//! to a sum that starts at `+0` leaves it as it was, so for finite weights the values equal
//! theirs bit for bit (with an infinite or NaN weight the padded kernels make the border
//! positions NaN, where these leave them finite, as GEMM does).

use super::geometry::ConvGeometry;

/// Output channels one vector holds.
const LANES: usize = 16;

/// True when `g`, whose units run the wide kernels with `group_out` output channels per group
/// (a multiple of 16), runs here instead of through padded rows: on AMD Zen 5 and Zen 4, where it
/// was measured (`cpu_features.rs`'s `CpuKind`; Intel's AVX-512 CPUs keep the padded rows,
/// unmeasured),
/// 3x3 with padding 1 on square maps, and one of the shapes [`unit_forward`] lists.
pub(super) fn fits(g: &ConvGeometry, group_out: usize) -> bool {
    g.padding == 1
        && g.kernel_h == 3
        && g.kernel_w == 3
        && g.in_h == g.in_w
        && g.out_h == g.out_w
        && takes(g.stride, g.in_w, group_out)
        && crate::cpu_features::amd_avx512()
}

/// True for the shapes the kernels take: (stride, input width, output channels per unit).
fn takes(stride: usize, in_w: usize, c_out: usize) -> bool {
    matches!(
        (stride, in_w, c_out),
        (1, 4 | 7, 16 | 32) | (1, 14, 16) | (2, 7 | 14, 16 | 32) | (2, 28, 16)
    )
}

/// One unit's output: `out[co][y][x] = sum_ci sum_(ky,kx) w[ci][ky*3+kx][co] *
/// x[ci][s*y+ky-1][s*x+kx-1]` over the taps inside the `(h, w)` input map, for `c_in` input
/// planes of `x` and `c_out` output planes of `out`, with `weights` packed `(c_in, 9, c_out)` as
/// the wide kernel takes them. Stride 1 on maps of 4, 7 or 14 (16 output channels) and 4 or 7
/// (32); stride 2 from maps of 7 or 14 (16 or 32 channels) and 28 (16).
///
/// # Safety
/// The CPU supports AVX-512F; the shape is one of those above, `h == w`.
pub(super) unsafe fn unit_forward(
    (x, weights, out): (&[f32], &[f32], &mut [f32]),
    (c_in, c_out): (usize, usize),
    (h, w): (usize, usize),
    stride: usize,
) {
    let out_w = (w - 1) / stride + 1;
    assert!(h == w && x.len() == c_in * h * w && out.len() == c_out * out_w * out_w);
    assert!(weights.len() == c_in * 9 * c_out);
    let unit = Unit {
        x: x.as_ptr(),
        w: weights.as_ptr(),
        out: out.as_mut_ptr(),
        summed: c_in,
    };
    // Blocks of whole output rows, top to bottom, of 14 to 21 accumulators. The generic
    // arguments: input width, output width, rows, vectors, stride, and whether the block's
    // first / last row reads above / below the map.
    match (stride, w, c_out) {
        (1, 4, 16) => unit.block::<4, 4, 4, 1, 1, true, true>(0),
        (1, 4, 32) => {
            unit.block::<4, 4, 2, 2, 1, true, false>(0);
            unit.block::<4, 4, 2, 2, 1, false, true>(2);
        }
        (1, 7, 16) => {
            unit.block::<7, 7, 3, 1, 1, true, false>(0);
            unit.block::<7, 7, 2, 1, 1, false, false>(3);
            unit.block::<7, 7, 2, 1, 1, false, true>(5);
        }
        (1, 7, 32) => {
            unit.block::<7, 7, 1, 2, 1, true, false>(0);
            for y0 in 1..6 {
                unit.block::<7, 7, 1, 2, 1, false, false>(y0);
            }
            unit.block::<7, 7, 1, 2, 1, false, true>(6);
        }
        (1, 14, 16) => {
            unit.block::<14, 14, 1, 1, 1, true, false>(0);
            for y0 in 1..13 {
                unit.block::<14, 14, 1, 1, 1, false, false>(y0);
            }
            unit.block::<14, 14, 1, 1, 1, false, true>(13);
        }
        // From 7x7 to 4x4 the last output row reads below the map; from an even size not.
        (2, 7, 16) => unit.block::<7, 4, 4, 1, 2, true, true>(0),
        (2, 7, 32) => {
            unit.block::<7, 4, 2, 2, 2, true, false>(0);
            unit.block::<7, 4, 2, 2, 2, false, true>(2);
        }
        (2, 14, 16) => {
            unit.block::<14, 7, 3, 1, 2, true, false>(0);
            unit.block::<14, 7, 2, 1, 2, false, false>(3);
            unit.block::<14, 7, 2, 1, 2, false, false>(5);
        }
        (2, 14, 32) => {
            unit.block::<14, 7, 1, 2, 2, true, false>(0);
            for y0 in 1..7 {
                unit.block::<14, 7, 1, 2, 2, false, false>(y0);
            }
        }
        (2, 28, 16) => {
            unit.block::<28, 14, 1, 1, 2, true, false>(0);
            for y0 in 1..14 {
                unit.block::<28, 14, 1, 1, 2, false, false>(y0);
            }
        }
        _ => panic!("direct3x3_wide_rows: {c_out} channels, stride {stride}, rows of {w}"),
    }
}

/// True when the input gradient of stride-2 `g`, with `group_in` input channels per group,
/// runs here ([`unit_input_grad_stride2`]) instead of through the four phases: on AMD Zen 5 and
/// Zen 4 (as [`fits`]), from square 7x7 maps with 16 or 32 channels per group. From 14x14 with 16
/// the kernel takes half the phases' time in `conv_passes` (1.06-1.12 against 2.02-2.07 ms
/// CPU, batch 16) but 1.4 ms against 1.1-1.2 in ResNeXt-50's training step (3 alternating
/// profile rounds, batch 16), so the phases keep it.
pub(super) fn fits_input_grad_stride2(g: &ConvGeometry, group_in: usize) -> bool {
    g.stride == 2
        && g.padding == 1
        && g.kernel_h == 3
        && g.kernel_w == 3
        && g.in_h == g.in_w
        && matches!((g.in_w, group_in), (7, 16 | 32))
        && crate::cpu_features::amd_avx512()
}

/// One unit's input gradient of a stride-2 layer: `dx[ci][iy][ix] = sum_co sum_(ky,kx)
/// w[co][ky*3+kx][ci] * dy[co][(iy+1-ky)/2][(ix+1-kx)/2]` over the taps whose output row and
/// column are whole and inside the map, for the `c_out` planes of `dy` and the `c_in` planes
/// of the `(h, w)` map `dx`, with `weights` packed `(c_out, 9, c_in)` (the wide kernel's packing
/// of the weights with their channels swapped). Each value sums the output channels in order,
/// then its taps in row-major order, as the four phases do (`direct3x3_stride2.rs`), whose
/// zero row and column after the output gradient add `w * 0`: for finite weights the same
/// values bit for bit.
///
/// # Safety
/// The CPU supports AVX-512F; `(h, w)` and `c_in` are as [`fits_input_grad_stride2`] requires.
pub(super) unsafe fn unit_input_grad_stride2(
    (dy, weights, dx): (&[f32], &[f32], &mut [f32]),
    (c_in, c_out): (usize, usize),
    (h, w): (usize, usize),
) {
    let out_w = (w - 1) / 2 + 1;
    assert!(h == w && dy.len() == c_out * out_w * out_w && dx.len() == c_in * h * w);
    assert!(weights.len() == c_out * 9 * c_in);
    let unit = Unit {
        x: dy.as_ptr(),
        w: weights.as_ptr(),
        out: dx.as_mut_ptr(),
        summed: c_out,
    };
    // Rows of `dx` in blocks of one or two (even, then odd): 14 accumulators, 7 in the last
    // row of a 7x7 map. (From a 7x7 map no row reads below the 4x4 output gradient.)
    match (w, c_in) {
        (7, 16) => {
            for y0 in [0, 2, 4] {
                unit.transposed_block::<4, 7, 2, 1>(y0);
            }
            unit.transposed_block::<4, 7, 1, 1>(6);
        }
        (7, 32) => {
            for y0 in 0..7 {
                unit.transposed_block::<4, 7, 1, 2>(y0);
            }
        }
        _ => panic!("direct3x3_wide_rows: input gradient of {c_in} channels from rows of {w}"),
    }
}

/// One unit's operands: the planes read (`summed` of them), the packed weights, the output
/// planes. For [`Unit::block`] the planes read are the input's; for
/// [`Unit::transposed_block`] the output gradient's.
struct Unit {
    x: *const f32,
    w: *const f32,
    out: *mut f32,
    summed: usize,
}

impl Unit {
    /// Output rows `y0..y0 + R` of a `W x W` output map from a `WI x WI` input at stride `S`,
    /// all `16 * V` output channels: `R x W x V` accumulators over the input channels and taps.
    /// `TOP` when the block's first row is the map's (its kernel row 0 reads above the input),
    /// `BOTTOM` when its last row's kernel row 2 reads below it.
    ///
    /// # Safety
    /// The CPU supports AVX-512F; the unit's planes are `WI x WI` in and `W x W` out with
    /// `16 * V` output channels, `y0 + R <= W`, `TOP` exactly when `y0 == 0`, `BOTTOM` exactly
    /// when `S * (y0 + R - 1) + 1 >= WI`.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f")]
    // Indexed loops over the accumulators: with iterators the compiler kept them on the stack.
    #[allow(clippy::needless_range_loop)]
    unsafe fn block<
        const WI: usize,
        const W: usize,
        const R: usize,
        const V: usize,
        const S: usize,
        const TOP: bool,
        const BOTTOM: bool,
    >(
        &self,
        y0: usize,
    ) {
        use std::arch::x86_64::*;
        debug_assert!(y0 + R <= W && TOP == (y0 == 0));
        debug_assert!(BOTTOM == (S * (y0 + R - 1) + 1 >= WI) && (WI - 1) / S + 1 == W);
        let (plane, out_plane, c_out) = (WI * WI, W * W, V * LANES);
        let mut acc = [[[_mm512_setzero_ps(); V]; W]; R];
        for ci in 0..self.summed {
            // SAFETY (all reads): input row S * (y0 + r) + ky - 1 lies in the map unless it is
            // the border above the first row (TOP, r = 0, ky = 0) or below the last (BOTTOM, r
            // = R - 1, ky = 2), which are left out; column S * xo + kx - 1 likewise; weight
            // (ci * 9 + tap) * c_out + 16 * v + 15 < c_in * 9 * c_out.
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
                            let row = xc.add((S * (y0 + r) + ky - 1) * WI);
                            for xo in 0..W {
                                if S * xo + kx >= 1 && S * xo + kx <= WI {
                                    let xv = _mm512_set1_ps(*row.add(S * xo + kx - 1));
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
        self.write_rows(&acc, out_plane, y0);
    }

    /// Writes `acc` (rows `y0..y0 + R` of `W` positions, `16 * V` channels across the vectors)
    /// to the output planes of `out_plane` values, through the stack: each channel's `R * W`
    /// positions are one run of its plane.
    ///
    /// # Safety
    /// The CPU supports AVX-512F; the output holds `16 * V` planes of `out_plane` values and
    /// `(y0 + R) * W <= out_plane`.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f")]
    #[inline]
    // Indexed loops over the accumulators: with iterators the compiler kept them on the stack.
    #[allow(clippy::needless_range_loop)]
    unsafe fn write_rows<const W: usize, const R: usize, const V: usize>(
        &self,
        acc: &[[[std::arch::x86_64::__m512; V]; W]; R],
        out_plane: usize,
        y0: usize,
    ) {
        use std::arch::x86_64::*;
        let mut block = [[[0.0f32; LANES]; W]; R];
        for v in 0..V {
            for r in 0..R {
                for xo in 0..W {
                    _mm512_storeu_ps(block[r][xo].as_mut_ptr(), acc[r][xo][v]);
                }
            }
            for j in 0..LANES {
                // SAFETY: channel 16 * v + j < 16 * V, positions y0 * W..(y0 + R) * W <=
                // out_plane.
                let dst = self.out.add((v * LANES + j) * out_plane + y0 * W);
                for (r, block_r) in block.iter().enumerate() {
                    for (xo, values) in block_r.iter().enumerate() {
                        *dst.add(r * W + xo) = values[j];
                    }
                }
            }
        }
    }

    /// Rows `y0..y0 + R` of the `WI x WI` input gradient of a stride-2 layer whose output
    /// gradient (`self.x`, `self.summed` planes) is `WO x WO`, all `16 * V` channels: row `iy`
    /// takes kernel row 1 from output row `iy / 2` when even, rows 0 and 2 from output rows
    /// `(iy + 1) / 2` and `(iy - 1) / 2` when odd (columns likewise, known when unrolled).
    ///
    /// # Safety
    /// The CPU supports AVX-512F; the planes are as [`unit_input_grad_stride2`] requires,
    /// `y0 + R <= WI`, `R == 1` or `y0` even, and `WI` odd (no row reads below the output).
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f")]
    #[allow(clippy::needless_range_loop)]
    unsafe fn transposed_block<const WO: usize, const WI: usize, const R: usize, const V: usize>(
        &self,
        y0: usize,
    ) {
        use std::arch::x86_64::*;
        debug_assert!(y0 + R <= WI && (R == 1 || y0.is_multiple_of(2)) && WI % 2 == 1);
        debug_assert!((WI - 1) / 2 + 1 == WO);
        let (plane, out_plane, c_out) = (WO * WO, WI * WI, V * LANES);
        let mut acc = [[[_mm512_setzero_ps(); V]; WI]; R];
        for co in 0..self.summed {
            // SAFETY (all reads): output row (iy + 1 - ky) / 2 is read only when whole, and is
            // below WO (WI odd: the last row, WI - 1, is even and reads row (WI - 1) / 2 = WO -
            // 1), column (ix + 1 - kx) / 2 when whole and below WO; weight (co * 9 + tap) *
            // c_out + 16 * v + 15 < summed * 9 * c_out.
            let dyc = self.x.add(co * plane);
            let wc = self.w.add(co * 9 * c_out);
            for ky in 0..3 {
                for kx in 0..3 {
                    let mut wv = [_mm512_setzero_ps(); V];
                    for (v, wv) in wv.iter_mut().enumerate() {
                        *wv = _mm512_loadu_ps(wc.add((ky * 3 + kx) * c_out + v * LANES));
                    }
                    for r in 0..R {
                        // With R == 2 the block starts on an even row; with R == 1 the
                        // parity is the row's own, tested once per block row and tap.
                        let iy = y0 + r;
                        if iy.is_multiple_of(2) == (ky == 1) {
                            let row = dyc.add((iy + 1 - ky) / 2 * WO);
                            for ix in 0..WI {
                                let whole = ix.is_multiple_of(2) == (kx == 1);
                                if whole && (ix + 1 - kx) / 2 < WO {
                                    let g = _mm512_set1_ps(*row.add((ix + 1 - kx) / 2));
                                    for v in 0..V {
                                        acc[r][ix][v] = _mm512_fmadd_ps(wv[v], g, acc[r][ix][v]);
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
        self.write_rows(&acc, out_plane, y0);
    }

    /// Never called: the wide kernels run only on x86-64.
    #[cfg(not(target_arch = "x86_64"))]
    unsafe fn transposed_block<const WO: usize, const WI: usize, const R: usize, const V: usize>(
        &self,
        _: usize,
    ) {
        unreachable!("the wide kernels run only on x86-64")
    }

    /// Never called: the wide kernels run only on x86-64.
    #[cfg(not(target_arch = "x86_64"))]
    unsafe fn block<
        const WI: usize,
        const W: usize,
        const R: usize,
        const V: usize,
        const S: usize,
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
/// it): `sum_q grads_t[q][co] * x[ci][s * q + tap]` over the output positions `q` in order,
/// taps inside the `(h, w)` input map only, each sum from zero and then added to `dw_t` once;
/// `grads_t` is the output gradient one row of `c_out` channels per position
/// (`transpose_grads` with rows of the output width).
///
/// The padded kernel (`unit_weight_grad_wide`) runs the same sums over its padded rows, whose
/// extra positions have a zero gradient, with the border read as zeros: for finite inputs the
/// values are the same bit for bit.
///
/// # Safety
/// The CPU supports AVX-512F; the shape is one [`unit_forward`] takes, `c_in` is even.
pub(super) unsafe fn unit_weight_grad(
    (x, grads_t, dw_t): (&[f32], &[f32], &mut [f32]),
    (c_in, c_out): (usize, usize),
    (h, w): (usize, usize),
    stride: usize,
) {
    let out_w = (w - 1) / stride + 1;
    assert!(h == w && c_in.is_multiple_of(2) && c_out.is_multiple_of(LANES));
    assert!(x.len() == c_in * h * w && grads_t.len() == out_w * out_w * c_out);
    assert!(dw_t.len() == c_in * 9 * c_out && takes(stride, w, c_out));
    let unit = GradUnit {
        x: x.as_ptr(),
        grads_t: grads_t.as_ptr(),
        dw_t: dw_t.as_mut_ptr(),
        c_out,
    };
    for co in (0..c_out).step_by(LANES) {
        for ci in (0..c_in).step_by(2) {
            match (stride, w) {
                (1, 4) => unit.sums::<4, 4, 1>(ci, co),
                (1, 7) => unit.sums::<7, 7, 1>(ci, co),
                (1, 14) => unit.sums::<14, 14, 1>(ci, co),
                (2, 7) => unit.sums::<7, 4, 2>(ci, co),
                (2, 14) => unit.sums::<14, 7, 2>(ci, co),
                (2, 28) => unit.sums::<28, 14, 2>(ci, co),
                _ => panic!("direct3x3_wide_rows: stride {stride}, rows of {w}"),
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
    /// from `co` on a `W x W` output map from a `WI x WI` input at stride `S`, added to
    /// `dw_t`: the first output row apart, whose kernel row 0 reads above the map, and the
    /// last where its kernel row 2 reads below it.
    ///
    /// # Safety
    /// As [`unit_weight_grad`], with `ci + 1 < c_in`, `co + 16 <= c_out` and `W == (WI - 1) /
    /// S + 1`.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f")]
    unsafe fn sums<const WI: usize, const W: usize, const S: usize>(&self, ci: usize, co: usize) {
        use std::arch::x86_64::*;
        let mut acc = [[_mm512_setzero_ps(); 9]; 2];
        self.row::<WI, W, S, true, false>(&mut acc, (ci, co), 0);
        for y in 1..W - 1 {
            self.row::<WI, W, S, false, false>(&mut acc, (ci, co), y);
        }
        if S * (W - 1) + 1 >= WI {
            self.row::<WI, W, S, false, true>(&mut acc, (ci, co), W - 1);
        } else {
            self.row::<WI, W, S, false, false>(&mut acc, (ci, co), W - 1);
        }
        for (b, acc_b) in acc.iter().enumerate() {
            for (t, a) in acc_b.iter().enumerate() {
                // SAFETY: (ci + b, t, co..co + 16) lies inside `dw_t`.
                let at = self.dw_t.add(((ci + b) * 9 + t) * self.c_out + co);
                _mm512_storeu_ps(at, _mm512_add_ps(_mm512_loadu_ps(at), *a));
            }
        }
    }

    /// Output row `y` added to `acc` (`TOP` for the first row, `BOTTOM` for a last row whose
    /// kernel row 2 reads below the map).
    ///
    /// # Safety
    /// As [`Self::sums`], with `y < W`, `TOP` exactly when `y == 0`, `BOTTOM` exactly when
    /// `S * y + 1 >= WI`.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f")]
    #[inline]
    // Indexed loops over the accumulators: with iterators the compiler kept them on the stack.
    #[allow(clippy::needless_range_loop)]
    unsafe fn row<
        const WI: usize,
        const W: usize,
        const S: usize,
        const TOP: bool,
        const BOTTOM: bool,
    >(
        &self,
        acc: &mut [[std::arch::x86_64::__m512; 9]; 2],
        (ci, co): (usize, usize),
        y: usize,
    ) {
        use std::arch::x86_64::*;
        let plane = WI * WI;
        for xo in 0..W {
            // SAFETY (all reads): position y * W + xo < W * W rows of `grads_t`; input row
            // S * y + ky - 1 and column S * xo + kx - 1 lie in the map for every tap that is
            // not left out, in planes ci and ci + 1.
            let gv = _mm512_loadu_ps(self.grads_t.add((y * W + xo) * self.c_out + co));
            for b in 0..2 {
                let xc = self.x.add((ci + b) * plane);
                for t in 0..9 {
                    let (ky, kx) = (t / 3, t % 3);
                    let outside = (TOP && ky == 0)
                        || (BOTTOM && ky == 2)
                        || S * xo + kx == 0
                        || S * xo + kx > WI;
                    if !outside {
                        let at = (S * y + ky - 1) * WI + S * xo + kx - 1;
                        let xv = _mm512_set1_ps(*xc.add(at));
                        acc[b][t] = _mm512_fmadd_ps(gv, xv, acc[b][t]);
                    }
                }
            }
        }
    }

    /// Never called: the wide kernels run only on x86-64.
    #[cfg(not(target_arch = "x86_64"))]
    unsafe fn sums<const WI: usize, const W: usize, const S: usize>(&self, _: usize, _: usize) {
        unreachable!("the wide kernels run only on x86-64")
    }
}

#[cfg(test)]
mod tests {
    use super::super::direct3x3_dense::Dims;
    use super::super::reference::{forward_chain, weight_grad_chain};
    use super::super::test_values_fine as values;
    use super::*;

    /// The shapes the kernels take ([`takes`]): (stride, input side, output channels).
    const SHAPES: [(usize, usize, usize); 10] = [
        (1, 4, 16),
        (1, 4, 32),
        (1, 7, 16),
        (1, 7, 32),
        (1, 14, 16),
        (2, 7, 16),
        (2, 7, 32),
        (2, 14, 16),
        (2, 14, 32),
        (2, 28, 16),
    ];

    /// The dimensions of one unit of `c_in` input channels on a square map.
    fn unit_dims((stride, side, c_out): (usize, usize, usize), c_in: usize) -> Dims {
        let out_side = (side - 1) / stride + 1;
        Dims {
            batch: 1,
            c_in,
            c_out,
            h: side,
            w: side,
            stride,
            oh: out_side,
            ow: out_side,
        }
    }

    /// Every output value is the chain of fused multiply-adds over the input channels in
    /// order and the taps in row-major order, from `+0`, with the zero border's products (as
    /// the padded kernels compute it; the kernel leaves those `w * 0` out), bit for bit, for
    /// each shape the kernel takes and input channel counts from 4 to 20.
    #[test]
    fn each_value_is_the_in_order_chain_bit_for_bit() {
        if !crate::cpu_features::avx512_kernels() {
            eprintln!("skipped: the kernels run only on Intel, AMD Zen 5 and Zen 4 with AVX-512");
            return;
        }
        for shape in SHAPES {
            let (stride, side, c_out) = shape;
            assert!(takes(stride, side, c_out));
            for c_in in [4, 16, 20] {
                let d = unit_dims(shape, c_in);
                let x = values(c_in * side * side, 7);
                let w = values(c_in * 9 * c_out, 8);
                let mut out = vec![f32::NAN; c_out * d.out_pixels()];
                // SAFETY: AVX-512 checked above; the shapes are the ones the kernel takes.
                unsafe { unit_forward((&x, &w, &mut out), (c_in, c_out), (side, side), stride) };
                let want = forward_chain(&d, &x, |o, i, t| w[(i * 9 + t) * c_out + o]);
                for (at, (got, want)) in out.iter().zip(&want).enumerate() {
                    assert_eq!(
                        got.to_bits(),
                        want.to_bits(),
                        "stride {stride} from {side}x{side}, {c_in}->{c_out}: channel {} at {}",
                        at / d.out_pixels(),
                        at % d.out_pixels()
                    );
                }
            }
        }
    }

    /// Each weight-gradient sum is the chain of fused multiply-adds over the output positions
    /// in order, from zero, with the zero border's products, added once to what `dw_t` held,
    /// bit for bit, through the transposition on rows of the output width.
    #[test]
    fn each_weight_sum_is_the_in_order_chain_bit_for_bit() {
        if !crate::cpu_features::avx512_kernels() {
            eprintln!("skipped: the kernels run only on Intel, AMD Zen 5 and Zen 4 with AVX-512");
            return;
        }
        for (k, shape) in SHAPES.into_iter().enumerate() {
            let (stride, side, c_out) = shape;
            let c_in = [2, 6, 4][k % 3];
            let d = unit_dims(shape, c_in);
            let g = ConvGeometry::new(&[1, c_in, side, side], &[c_out, c_in, 3, 3], stride, 1, 1)
                .unwrap();
            let x = values(c_in * side * side, 9);
            let dy = values(c_out * d.out_pixels(), 10);
            let mut grads_t = vec![f32::NAN; d.out_pixels() * c_out];
            let rows = (d.oh, d.ow, d.ow);
            super::super::direct3x3_wide::transpose_grads(&dy, rows, c_out, &mut grads_t);
            let start = values(c_in * 9 * c_out, 11);
            let mut got = start.clone();
            // SAFETY: AVX-512 checked above; the shapes are the ones the kernel takes.
            unsafe {
                unit_weight_grad(
                    (&x, &grads_t, &mut got),
                    (c_in, c_out),
                    (side, side),
                    stride,
                )
            };
            // `(C_out, C_in, 9)`, where the kernel keeps `(C_in, 9, C_out)`.
            let sums = weight_grad_chain(&g, &x, &dy);
            for ci in 0..c_in {
                for t in 0..9 {
                    for co in 0..c_out {
                        let at = (ci * 9 + t) * c_out + co;
                        let want = start[at] + sums[(co * c_in + ci) * 9 + t];
                        assert_eq!(
                            got[at].to_bits(),
                            want.to_bits(),
                            "stride {stride} from {side}x{side}, {c_in}->{c_out}: ({ci}, {t}, {co})"
                        );
                    }
                }
            }
        }
    }

    /// Each input-gradient value of a stride-2 layer is the chain of fused multiply-adds over
    /// the output channels in order and the taps that reach it in row-major order, from `+0`,
    /// bit for bit (what the four phases compute, whose zero border adds `w * 0`).
    #[test]
    fn each_stride2_input_grad_is_the_in_order_chain_bit_for_bit() {
        if !crate::cpu_features::avx512_kernels() {
            eprintln!("skipped: the kernels run only on Intel, AMD Zen 5 and Zen 4 with AVX-512");
            return;
        }
        for (side, c_in, c_out) in [(7, 16, 4), (7, 16, 16), (7, 32, 8), (7, 32, 20)] {
            let (plane, out_side) = (side * side, (side - 1) / 2 + 1);
            let out_plane = out_side * out_side;
            let dy = values(c_out * out_plane, 12);
            let w = values(c_out * 9 * c_in, 13);
            let mut dx = vec![f32::NAN; c_in * plane];
            // SAFETY: AVX-512 checked above; the shapes are ones the kernel takes.
            unsafe { unit_input_grad_stride2((&dy, &w, &mut dx), (c_in, c_out), (side, side)) };
            for ci in 0..c_in {
                for iy in 0..side {
                    for ix in 0..side {
                        let mut sum = 0.0f32;
                        for co in 0..c_out {
                            for t in 0..9 {
                                let (ky, kx) = (t / 3, t % 3);
                                let (ny, nx) = (iy + 1, ix + 1);
                                if ny < ky || nx < kx || (ny - ky) % 2 == 1 || (nx - kx) % 2 == 1 {
                                    continue;
                                }
                                let (oy, ox) = ((ny - ky) / 2, (nx - kx) / 2);
                                if oy < out_side && ox < out_side {
                                    let g = dy[co * out_plane + oy * out_side + ox];
                                    sum = w[(co * 9 + t) * c_in + ci].mul_add(g, sum);
                                }
                            }
                        }
                        let got = dx[ci * plane + iy * side + ix];
                        assert_eq!(
                            got.to_bits(),
                            sum.to_bits(),
                            "from {side}x{side}, {c_out}->{c_in}: channel {ci} at ({iy}, {ix})"
                        );
                    }
                }
            }
        }
    }
}
