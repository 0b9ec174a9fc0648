//! The f32 max-pool over rows of sixteen outputs at a time on CPUs with AVX-512, eight with
//! AVX2: the stem's 3x3 / 2 pool, whose windows the scalar search in `max_pool2d.rs` walks one
//! output at a time. In a ResNet-50 batch-32 profile (2 alternating rounds) the pool's forward and
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
//!
//! The AVX2 kernel runs the same search on eight lanes (compares and blends in place of mask
//! registers; at stride 2 a shuffle and a permute pick the even cells). On a 2-core AMD EPYC
//! Zen 3 (AVX2 only), ResNeXt-50 batch 16, 3 alternating profile rounds against the scalar
//! search: forward 5.0-5.7 -> 2.9-3.1 ms and backward 15.4-20.1 -> 4.8-5.0 per train step,
//! forward 5.0-6.6 -> 2.9-3.2 per eval forward.

use crate::cpu_features::avx512f;
use crate::pool_geometry::PoolGeometry;
use candle_core::Layout;

/// Outputs one pass of the kernel computes.
const LANES: usize = 16;

/// The vector width a row of outputs runs at.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum RowKernel {
    /// Sixteen outputs per pass (AVX-512F).
    Avx512,
    /// Eight outputs per pass (AVX2, the committed build's baseline).
    Avx2,
}

impl RowKernel {
    /// Every kernel, the widest first.
    const WIDEST_FIRST: [Self; 2] = [Self::Avx512, Self::Avx2];

    /// True when this CPU and build run the kernel.
    fn runs_here(self) -> bool {
        match self {
            Self::Avx512 => avx512f(),
            Self::Avx2 => cfg!(all(target_arch = "x86_64", target_feature = "avx2")),
        }
    }

    /// The widest kernel this CPU and build run, if any.
    fn detected() -> Option<Self> {
        Self::WIDEST_FIRST.into_iter().find(|k| k.runs_here())
    }

    /// Every kernel this CPU and build run (the tests check each against the scalar search).
    #[cfg(test)]
    pub(crate) fn available() -> Vec<Self> {
        Self::WIDEST_FIRST
            .into_iter()
            .filter(|k| k.runs_here())
            .collect()
    }

    /// For output row `oy` of one plane (`plane`: the `h x w` input, rows contiguous), each
    /// output's first maximum into `values` and its cell (`y * w + x`) into `cells` (both `ow`
    /// long).
    ///
    /// Panics if this CPU lacks the kernel's instructions, if [`layout_fits`] fails for the
    /// plane's geometry, or if `plane` is shorter than `h x w`.
    pub(crate) fn row_argmax(
        self,
        plane: &[f32],
        g: &PoolGeometry,
        oy: usize,
        values: &mut [f32],
        cells: &mut [u32],
    ) {
        let (h, w, ow) = (g.rows.input, g.cols.input, g.cols.output);
        assert!(plane.len() >= h * w && h * w < i32::MAX as usize);
        assert!(values.len() == ow && cells.len() == ow);
        match self {
            Self::Avx512 => {
                assert!(avx512f(), "max_pool2d_rows: AVX-512F");
                #[cfg(target_arch = "x86_64")]
                // SAFETY: AVX-512F is checked above; every gathered index is a cell
                // `y * w + x` with `y < h` (the row window) and `0 <= x < w` (the lane's mask),
                // inside `plane`; every store is masked to the lanes below `ow`.
                unsafe {
                    row_argmax_avx512(plane, g, oy, values, cells)
                }
            }
            Self::Avx2 => {
                #[cfg(all(target_arch = "x86_64", target_feature = "avx2"))]
                // SAFETY: the build enables AVX2; as for AVX-512, every cell read is inside
                // `plane` (plain loads only where both lie inside it, else masked to the row)
                // and every store is masked to the lanes below `ow`.
                unsafe {
                    row_argmax_avx2(plane, g, oy, values, cells)
                }
                #[cfg(not(all(target_arch = "x86_64", target_feature = "avx2")))]
                panic!("max_pool2d_rows: this build lacks AVX2");
            }
        }
    }
}

/// The kernel that runs `g` over `layout` on this CPU, if any: one is available
/// ([`RowKernel`]) and [`layout_fits`].
pub(crate) fn kernel(layout: &Layout, g: &PoolGeometry) -> Option<RowKernel> {
    RowKernel::detected().filter(|_| layout_fits(layout, g))
}

/// True when the row kernels can read `g`'s planes in `layout`: every plane's rows contiguous,
/// and offsets that fit the gather's 32-bit indices.
pub(crate) fn layout_fits(layout: &Layout, g: &PoolGeometry) -> bool {
    let (h, w) = (g.rows.input, g.cols.input);
    let strides = layout.stride();
    strides.len() == 4 && strides[3] == 1 && strides[2] == w && h * w < i32::MAX as usize
}

/// [`RowKernel::row_argmax`] on sixteen lanes, once its bounds are checked.
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

/// [`RowKernel::row_argmax`] on eight lanes, once its bounds are checked: the AVX-512
/// kernel's search, its masks as all-ones lanes.
///
/// # Safety
/// The CPU supports AVX2; `plane` holds the `h x w` input; `values` and `cells` hold `ow`
/// values.
#[cfg(all(target_arch = "x86_64", target_feature = "avx2"))]
unsafe fn row_argmax_avx2(
    plane: &[f32],
    g: &PoolGeometry,
    oy: usize,
    values: &mut [f32],
    cells: &mut [u32],
) {
    use std::arch::x86_64::*;
    const LANES: usize = 8;
    let (w, ow) = (g.cols.input as i32, g.cols.output);
    let (stride, pad, kernel) = (
        g.cols.stride as i32,
        g.cols.padding as i32,
        g.cols.kernel as i32,
    );
    let (y0, y1) = g.rows.window(oy);
    let lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    let (zero, width) = (_mm256_setzero_si256(), _mm256_set1_epi32(w));
    let minus_one = _mm256_set1_epi32(-1);
    // Lanes where `0 <= x < w`, as all-ones lanes.
    let in_row = |x: __m256i| {
        _mm256_and_si256(
            _mm256_cmpgt_epi32(x, minus_one),
            _mm256_cmpgt_epi32(width, x),
        )
    };
    for ox0 in (0..ow).step_by(LANES) {
        let count = (ow - ox0).min(LANES);
        let live = _mm256_cmpgt_epi32(_mm256_set1_epi32(count as i32), lane);
        // Each lane's first window column: `ox * stride - pad`.
        let ox = _mm256_add_epi32(_mm256_set1_epi32(ox0 as i32), lane);
        let first_x = _mm256_sub_epi32(
            _mm256_mullo_epi32(ox, _mm256_set1_epi32(stride)),
            _mm256_set1_epi32(pad),
        );
        // The scalar search starts at the window's first valid cell, `(y0, max(x, 0))`.
        let mut best = _mm256_set1_ps(f32::NEG_INFINITY);
        let mut cell = _mm256_add_epi32(
            _mm256_set1_epi32((y0 as i32) * w),
            _mm256_max_epi32(first_x, zero),
        );
        for y in y0..y1 {
            let row = _mm256_set1_epi32((y as i32) * w);
            for kx in 0..kernel {
                let x = _mm256_add_epi32(first_x, _mm256_set1_epi32(kx));
                let inside = _mm256_castsi256_ps(_mm256_and_si256(live, in_row(x)));
                let at = _mm256_add_epi32(row, x);
                let v = if stride == 2 {
                    // As on sixteen lanes: two loads of 8 and the even cells picked out.
                    let start = (ox0 as i32) * 2 - pad + kx;
                    let first = (y as i32) * w + start;
                    let base = plane.as_ptr().wrapping_offset(first as isize);
                    let (lo, hi) = if first >= 0 && first as usize + 2 * LANES <= plane.len() {
                        (
                            _mm256_loadu_ps(base),
                            _mm256_loadu_ps(base.wrapping_add(LANES)),
                        )
                    } else {
                        let cols = _mm256_add_epi32(_mm256_set1_epi32(start), lane);
                        let cols_hi = _mm256_add_epi32(cols, _mm256_set1_epi32(LANES as i32));
                        (
                            _mm256_maskload_ps(base, in_row(cols)),
                            _mm256_maskload_ps(base.wrapping_add(LANES), in_row(cols_hi)),
                        )
                    };
                    // [lo0 lo2 hi0 hi2 | lo4 lo6 hi4 hi6], then its 64-bit pairs in the order
                    // 0, 2, 1, 3.
                    let evens = _mm256_shuffle_ps::<0b10_00_10_00>(lo, hi);
                    _mm256_castpd_ps(_mm256_permute4x64_pd::<0b11_01_10_00>(_mm256_castps_pd(
                        evens,
                    )))
                } else {
                    _mm256_mask_i32gather_ps::<4>(best, plane.as_ptr(), at, inside)
                };
                let greater = _mm256_cmp_ps::<_CMP_GT_OQ>(v, best);
                let first_nan = _mm256_and_ps(
                    _mm256_cmp_ps::<_CMP_UNORD_Q>(v, v),
                    _mm256_cmp_ps::<_CMP_ORD_Q>(best, best),
                );
                let take = _mm256_and_ps(inside, _mm256_or_ps(greater, first_nan));
                best = _mm256_blendv_ps(best, v, take);
                cell = _mm256_castps_si256(_mm256_blendv_ps(
                    _mm256_castsi256_ps(cell),
                    _mm256_castsi256_ps(at),
                    take,
                ));
            }
        }
        if count == LANES {
            _mm256_storeu_ps(values.as_mut_ptr().add(ox0), best);
            _mm256_storeu_si256(cells.as_mut_ptr().add(ox0).cast(), cell);
        } else {
            _mm256_maskstore_ps(values.as_mut_ptr().add(ox0), live, best);
            _mm256_maskstore_epi32(cells.as_mut_ptr().add(ox0).cast(), live, cell);
        }
    }
}
