//! The copies between dense image planes and the direct 3x3 kernels' row layouts (rows of
//! positions wider than the image's, zeros between them): into the zero-bordered input planes
//! and the output gradient on padded rows ([`spread_rows`]), and back out ([`gather_rows`]).

use super::direct3x3_blocks::cpu_supports;

/// Copies the `h` rows of `w` values of each dense plane in `src` into the planes of `dst`
/// (`dst_plane` values each), row `i` at `start + i * row`, and zeroes every other value of
/// those planes: the zero-bordered input planes (`start = row + 1`) and the output gradient on
/// padded rows (`start = 0`). Requires AVX2 ([`cpu_supports`]).
pub(super) fn spread_rows(
    src: &[f32],
    (h, w): (usize, usize),
    (row, start): (usize, usize),
    dst: &mut [f32],
    dst_plane: usize,
) {
    assert!(cpu_supports(), "direct3x3: the CPU lacks AVX2 or FMA");
    assert!(w > 0 && row >= w && start + h * row <= dst_plane + row - w);
    assert!(dst.len().is_multiple_of(dst_plane) && src.len() / (h * w) == dst.len() / dst_plane);
    // SAFETY: AVX2 checked above; the bounds are checked above.
    unsafe { spread_rows_avx2(src, (h, w), (row, start), dst, dst_plane) }
}

/// [`spread_rows`] once its bounds are checked.
///
/// # Safety
/// The CPU supports AVX2; `dst` holds as many planes of `dst_plane` values as `src` holds
/// `h x w` planes, and `start + h * row <= dst_plane + row - w`.
#[cfg_attr(target_arch = "x86_64", target_feature(enable = "avx2"))]
unsafe fn spread_rows_avx2(
    src: &[f32],
    (h, w): (usize, usize),
    (row, start): (usize, usize),
    dst: &mut [f32],
    dst_plane: usize,
) {
    let planes = dst.len() / dst_plane;
    for p in 0..planes {
        let plane = &mut dst[p * dst_plane..(p + 1) * dst_plane];
        let src = &src[p * h * w..(p + 1) * h * w];
        plane[..start].fill(0.0);
        for i in 0..h {
            // The run may spill up to 7 values past the row: the gap is zeroed next, and each
            // later row rewrites its whole `[at, at + row)` span (the tail fill below the rest),
            // so every spilled value is overwritten before the plane is read.
            let at = start + i * row;
            let room = (at + w.next_multiple_of(8)).min(dst_plane);
            // SAFETY: `copy_run`'s requirement, AVX2, is this function's.
            copy_run(&mut plane[at..room], &src[i * w..(i + 1) * w]);
            for v in &mut plane[at + w..(at + row).min(dst_plane)] {
                *v = 0.0;
            }
        }
        let tail = (start + h * row).min(dst_plane);
        plane[tail..].fill(0.0);
    }
}

/// Copies every `row`-th run of `w` values of each plane of `src` (`src_plane` values each; the
/// positions computed on padded rows) into the dense `h x w` planes of `dst`. Requires
/// AVX2 ([`cpu_supports`]).
pub(super) fn gather_rows(
    src: &[f32],
    src_plane: usize,
    row: usize,
    (h, w): (usize, usize),
    dst: &mut [f32],
) {
    assert!(cpu_supports(), "direct3x3: the CPU lacks AVX2 or FMA");
    assert!(w > 0 && row >= w && (h - 1) * row + w <= src_plane);
    assert!(src.len().is_multiple_of(src_plane) && dst.len() / (h * w) <= src.len() / src_plane);
    // SAFETY: AVX2 checked above; the bounds are checked above.
    unsafe { gather_rows_avx2(src, src_plane, row, (h, w), dst) }
}

/// [`gather_rows`] once its bounds are checked (compiled with AVX2 so that [`copy_run`] is
/// inlined, not called once per row).
///
/// # Safety
/// The CPU supports AVX2.
#[cfg_attr(target_arch = "x86_64", target_feature(enable = "avx2"))]
unsafe fn gather_rows_avx2(
    src: &[f32],
    src_plane: usize,
    row: usize,
    (h, w): (usize, usize),
    dst: &mut [f32],
) {
    for (dst, src) in dst.chunks_exact_mut(h * w).zip(src.chunks_exact(src_plane)) {
        for i in 0..h {
            // Rows are written in order, so a run may spill into the rows after it.
            let room = (i * w + w.next_multiple_of(8)).min(h * w);
            // SAFETY: `copy_run`'s requirement, AVX2, is this function's.
            copy_run(&mut dst[i * w..room], &src[i * row..i * row + w]);
        }
    }
}

/// Copies `src` to the start of `dst` (at least as long) for the short runs of one image row,
/// without a call to `memcpy` per row (which took a quarter of these passes' time): whole
/// blocks of 32 values, then up to three registers of 8, then the tail: a masked load, and a
/// plain store of all 8 lanes when `dst` has room for them (the values past `src.len()` are
/// then clobbered, for the caller to overwrite), else a masked store (slow on AMD's cores).
/// The blocks are written out rather than looped over 8 values at a time, which the compiler
/// would turn back into a `memcpy` call.
///
/// # Safety
/// The CPU supports AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn copy_run(dst: &mut [f32], src: &[f32]) {
    use std::arch::x86_64::*;
    assert!(dst.len() >= src.len());
    let (d, s, n, room) = (dst.as_mut_ptr(), src.as_ptr(), src.len(), dst.len());
    // SAFETY: every read below is at an index below `n` (the length of `src`), every write
    // below `room` (the length of `dst`).
    let copy8 = |i: usize| _mm256_storeu_ps(d.add(i), _mm256_loadu_ps(s.add(i)));
    let mut i = 0;
    while i + 32 <= n {
        let v = [
            _mm256_loadu_ps(s.add(i)),
            _mm256_loadu_ps(s.add(i + 8)),
            _mm256_loadu_ps(s.add(i + 16)),
            _mm256_loadu_ps(s.add(i + 24)),
        ];
        for (k, v) in v.into_iter().enumerate() {
            _mm256_storeu_ps(d.add(i + 8 * k), v);
        }
        i += 32;
    }
    if i + 8 <= n {
        copy8(i);
        i += 8;
    }
    if i + 8 <= n {
        copy8(i);
        i += 8;
    }
    if i + 8 <= n {
        copy8(i);
        i += 8;
    }
    if i < n {
        let lanes = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
        let mask = _mm256_cmpgt_epi32(_mm256_set1_epi32((n - i) as i32), lanes);
        let tail = _mm256_maskload_ps(s.add(i), mask);
        if i + 8 <= room {
            _mm256_storeu_ps(d.add(i), tail);
        } else {
            _mm256_maskstore_ps(d.add(i), mask, tail);
        }
    }
}

/// Never called: [`cpu_supports`] is false off x86-64.
#[cfg(not(target_arch = "x86_64"))]
unsafe fn copy_run(dst: &mut [f32], src: &[f32]) {
    dst[..src.len()].copy_from_slice(src)
}
