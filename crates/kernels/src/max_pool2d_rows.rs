//! The f32 max-pool over rows of sixteen outputs at a time, on CPUs with AVX-512: the stem's
//! 3x3 / 2 pool, whose windows the scalar search in `max_pool2d.rs` walks one output at a
//! time. In a ResNet-50 batch-32 profile (2 alternating rounds) the pool's forward and
//! backward went 39 -> 20 ms per train step and its forward 10-12 -> 5 ms per eval forward.
//!
//! Each output keeps the scalar search's rule and order: its window's cells in row-major
//! order, starting from the first valid cell at `-inf`, a cell replacing the best one when it
//! is greater, or when it is NaN and the best is not (the first NaN then stays, where the
//! scalar search stopped). Sixteen outputs of one row run side by side, each lane reading its
//! own cells (cells outside the input never take part), so every output value and every argmax
//! equals the scalar search's bit for bit; the tests check it. At stride 2 (the stem's pool) a
//! window column's 16 cells are every other one of 32 consecutive cells: two loads and a permute
//! picking the even ones (ResNet-50 batch 16 on the Zen 5, 3 alternating rounds: forward
//! 2.7-3.2 -> 1.7-2.0 ms per train step and 2.3-3.6 -> 1.3-1.5 per eval forward, backward
//! 4.6-4.9 -> 3.3-3.6); other strides gather each lane's cell. The two loads are plain ones
//! wherever they lie inside the input, masked to the row only at its ends: on the Zen 5 the
//! masked loads everywhere took 2.3x as long in the forward of ResNeXt-50's stem at batch 32,
//! and up to 5x in its backward in a slow spell (docs/performance.md).

use crate::cpu_features::avx512f;
use crate::pool_geometry::PoolGeometry;
use candle_core::Layout;

/// Outputs one pass of the kernel computes.
const LANES: usize = 16;

/// True when the rows kernel runs `g` over `layout`: AVX-512 on this CPU, every plane's rows
/// contiguous, and offsets that fit the gather's 32-bit indices.
pub(crate) fn applies(layout: &Layout, g: &PoolGeometry) -> bool {
    let (h, w) = (g.rows.input, g.cols.input);
    let strides = layout.stride();
    avx512f()
        && strides.len() == 4
        && strides[3] == 1
        && strides[2] == w
        && h * w < i32::MAX as usize
}

/// For output row `oy` of one plane (`plane`: the `h x w` input, rows contiguous), each
/// output's first maximum into `values` and its cell (`y * w + x`) into `cells` (both `ow`
/// long).
///
/// Panics unless [`applies`] held for the plane's layout and geometry, or if `plane` is
/// shorter than `h x w`.
pub(crate) fn row_argmax(
    plane: &[f32],
    g: &PoolGeometry,
    oy: usize,
    values: &mut [f32],
    cells: &mut [u32],
) {
    let (h, w, ow) = (g.rows.input, g.cols.input, g.cols.output);
    assert!(avx512f() && plane.len() >= h * w && h * w < i32::MAX as usize);
    assert!(values.len() == ow && cells.len() == ow);
    #[cfg(target_arch = "x86_64")]
    // SAFETY: AVX-512F is checked above; every gathered index is a cell `y * w + x` with
    // `y < h` (the row window) and `0 <= x < w` (the lane's mask), inside `plane`; every store
    // is masked to the lanes below `ow`.
    unsafe {
        row_argmax_avx512(plane, g, oy, values, cells)
    }
}

/// [`row_argmax`] once its bounds are checked.
///
/// # Safety
/// The CPU supports AVX-512F; `plane` holds the `h x w` input; `values` and `cells` hold `ow`
/// values.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn row_argmax_avx512(
    plane: &[f32],
    g: &PoolGeometry,
    oy: usize,
    values: &mut [f32],
    cells: &mut [u32],
) {
    use std::arch::x86_64::*;
    let (w, ow) = (g.cols.input as i32, g.cols.output);
    let (stride, pad, kernel) = (
        g.cols.stride as i32,
        g.cols.padding as i32,
        g.cols.kernel as i32,
    );
    let (y0, y1) = g.rows.window(oy);
    let lane = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    let (zero, width) = (_mm512_setzero_si512(), _mm512_set1_epi32(w));
    let evens = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
    for ox0 in (0..ow).step_by(LANES) {
        let count = (ow - ox0).min(LANES);
        let live: __mmask16 = ((1u32 << count) - 1) as __mmask16;
        // Each lane's first window column: `ox * stride - pad`.
        let ox = _mm512_add_epi32(_mm512_set1_epi32(ox0 as i32), lane);
        let first_x = _mm512_sub_epi32(
            _mm512_mullo_epi32(ox, _mm512_set1_epi32(stride)),
            _mm512_set1_epi32(pad),
        );
        // The scalar search starts at the window's first valid cell, `(y0, max(x, 0))`.
        let mut best = _mm512_set1_ps(f32::NEG_INFINITY);
        let mut cell = _mm512_add_epi32(
            _mm512_set1_epi32((y0 as i32) * w),
            _mm512_max_epi32(first_x, zero),
        );
        for y in y0..y1 {
            let row = _mm512_set1_epi32((y as i32) * w);
            for kx in 0..kernel {
                let x = _mm512_add_epi32(first_x, _mm512_set1_epi32(kx));
                let inside =
                    _mm512_mask_cmpge_epi32_mask(live, x, zero) & _mm512_cmplt_epi32_mask(x, width);
                let at = _mm512_add_epi32(row, x);
                let v = if stride == 2 {
                    // Columns `x` are every other one from the first lane's: two loads of 16
                    // (nothing outside `plane` is read) and the even ones picked out. Lanes
                    // outside the row are not taken below.
                    let start = (ox0 as i32) * 2 - pad + kx;
                    let first = (y as i32) * w + start;
                    let base = plane.as_ptr().wrapping_offset(first as isize);
                    // Where both vectors lie inside `plane`, plain loads: their lanes outside
                    // the row read the neighbouring rows' cells, which `inside` keeps out of
                    // the search (masked loads were slower on AMD Zen 5: module doc). At the
                    // input's first and last cells, loads masked to the row's columns.
                    let (lo, hi) = if first >= 0 && first as usize + 2 * LANES <= plane.len() {
                        (
                            _mm512_loadu_ps(base),
                            _mm512_loadu_ps(base.wrapping_add(LANES)),
                        )
                    } else {
                        let cols = _mm512_add_epi32(_mm512_set1_epi32(start), lane);
                        let cols_hi = _mm512_add_epi32(cols, _mm512_set1_epi32(LANES as i32));
                        let valid_lo = _mm512_cmpge_epi32_mask(cols, zero)
                            & _mm512_cmplt_epi32_mask(cols, width);
                        let valid_hi = _mm512_cmpge_epi32_mask(cols_hi, zero)
                            & _mm512_cmplt_epi32_mask(cols_hi, width);
                        (
                            _mm512_maskz_loadu_ps(valid_lo, base),
                            _mm512_maskz_loadu_ps(valid_hi, base.wrapping_add(LANES)),
                        )
                    };
                    _mm512_permutex2var_ps(lo, evens, hi)
                } else {
                    _mm512_mask_i32gather_ps::<4>(best, inside, at, plane.as_ptr())
                };
                let greater = _mm512_cmp_ps_mask::<_CMP_GT_OQ>(v, best);
                let first_nan = _mm512_cmp_ps_mask::<_CMP_UNORD_Q>(v, v)
                    & _mm512_cmp_ps_mask::<_CMP_ORD_Q>(best, best);
                let take = inside & (greater | first_nan);
                best = _mm512_mask_mov_ps(best, take, v);
                cell = _mm512_mask_mov_epi32(cell, take, at);
            }
        }
        _mm512_mask_storeu_ps(values.as_mut_ptr().add(ox0), live, best);
        _mm512_mask_storeu_epi32(cells.as_mut_ptr().add(ox0).cast(), live, cell);
    }
}
