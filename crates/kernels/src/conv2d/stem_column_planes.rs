//! The input layout of the stem's 16-lane kernels (`stem_direct.rs` forward,
//! `stem_direct_weight_grad.rs` weight gradient): one plane per input channel, row phase and
//! kernel column, whose flat positions are the output's own.
//!
//! At stride 2, tap `(ci, kh, kw)` of output `(oh, ow)` reads input row `2 * oh + kh - pad`,
//! column `2 * ow + kw - pad`. Plane `(ci, a, kw)` holds, at `i * OW + j`, the input value
//! `(2 * i + a - pad, 2 * j + kw - pad)` (zero in the padding), for rows `i < OH + (K-1)/2`.
//! Tap `(ci, kh, kw)` then reads plane `(ci, kh % 2, kw)` at `o + (kh / 2) * OW` for every
//! output position `o = oh * OW + ow`: the output channel's flat positions, whose vectors of
//! 16 are loaded in place and stored whole into the NCHW output (only the map's last vector
//! may be short), and whose output gradient the weight gradient reads where it lies. A layout
//! of the four stride phases alone (`stem_direct::Phases`, the 8-lane forward's) numbers the
//! positions along rows `OW + (K-1)/2` long instead, computing `(K-1)/2` dropped columns per
//! row (5% more work for the stem) and needing masked pieces where a vector crosses a row.
//! Here each phase row is copied once per kernel column of its parity (4 even, 3 odd for a
//! 7x7 kernel): 42 planes of 59 x 56 values for the stem, 560 KB per image, which stay in L2.

use super::geometry::ConvGeometry;
use super::pointwise_nchw::lane_mask;

/// f32 lanes of a vector (AVX-512).
const LANES: usize = 16;

/// The planes of one image and the flat output positions computed on them.
#[derive(Clone, Copy, Debug)]
pub(super) struct ColumnPlanes {
    /// Values per plane row: the output's width `OW`.
    width: usize,
    /// Rows per plane (`OH + (K-1)/2`).
    rows: usize,
    /// Values per plane: its rows, then zeros for the last vector's reads past them; a
    /// multiple of 16.
    pub(super) plane_len: usize,
    /// Vectors of 16 output positions: `OH * OW` rounded up.
    pub(super) vectors: usize,
}

impl ColumnPlanes {
    /// The layout for `g`, a stride-2 square-kernel layer.
    pub(super) fn of(g: &ConvGeometry) -> Self {
        let half = (g.kernel_h - 1) / 2;
        let vectors = g.out_pixels().div_ceil(LANES);
        Self {
            width: g.out_w,
            rows: g.out_h + half,
            plane_len: vectors * LANES + (half * g.out_w).next_multiple_of(LANES),
            vectors,
        }
    }

    /// Planes of one image: `2 * K` per input channel, then one of zeros (the weight
    /// gradient's padding taps read it).
    pub(super) fn planes(&self, g: &ConvGeometry) -> usize {
        2 * g.in_channels * g.kernel_w + 1
    }

    /// Where tap `t` (`(ci, kh, kw)` in row-major order) of output position `o` reads, less
    /// `o`, from the start of the image's planes.
    pub(super) fn tap_offsets(&self, g: &ConvGeometry) -> Vec<usize> {
        let k = g.kernel_h;
        (0..g.in_channels * k * k)
            .map(|t| {
                let (ci, kh, kw) = (t / (k * k), t / k % k, t % k);
                let plane = (ci * 2 + kh % 2) * k + kw;
                plane * self.plane_len + kh / 2 * self.width
            })
            .collect()
    }

    /// The lanes of the last vector that lie inside the `OH x OW` map (all 16 when it is
    /// whole).
    pub(super) fn last_lanes(&self, g: &ConvGeometry) -> u16 {
        last_vector_lanes(g.out_pixels())
    }

    /// Writes the planes of one image `x` (`C_in x H x W`) into `planes`, every value: each
    /// input row is split once into its even and odd columns (with the padding's zeros), 16
    /// values per two loads and a permute, and each kernel column's plane row copied from the
    /// split of its parity.
    ///
    /// # Safety
    /// AVX-512F.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn split(&self, g: &ConvGeometry, x: &[f32], planes: &mut [f32]) {
        use std::arch::x86_64::*;
        let (h, w, pad, k) = (g.in_h, g.in_w, g.padding, g.kernel_w);
        assert_eq!(x.len(), g.in_channels * h * w, "stem planes: image");
        assert_eq!(planes.len(), self.planes(g) * self.plane_len, "stem planes");
        let (width, len) = (self.width, self.plane_len);
        // A phase row: the row's columns `2 * j + b - pad`, for `j` up to `OW + (K-1)/2`, then
        // room for the last copied vector's reach.
        let phase_width = (width + (k - 1) / 2).next_multiple_of(LANES);
        let mut phase = vec![0.0f32; 2 * (phase_width + LANES)];
        let (even, odd) = phase.split_at_mut(phase_width + LANES);
        let evens = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
        let last = last_vector_lanes(width);
        let dst = planes.as_mut_ptr();
        for ci in 0..g.in_channels {
            let channel = x.as_ptr().add(ci * h * w);
            // Plane rows `(i, a)` in the order of the input rows they read, `2 * i + a - pad`.
            for (i, a) in (0..self.rows).flat_map(|i| [(i, 0), (i, 1)]) {
                let group = dst.add((ci * 2 + a) * k * len);
                let row = (2 * i + a).checked_sub(pad).filter(|&r| r < h);
                if let Some(r) = row {
                    let src = channel.add(r * w);
                    for (b, out) in [&mut *even, &mut *odd].into_iter().enumerate() {
                        for j0 in (0..phase_width).step_by(LANES) {
                            let start = (2 * j0 + b) as isize - pad as isize;
                            let lo =
                                _mm512_maskz_loadu_ps(inside(start, w), src.wrapping_offset(start));
                            let hi = _mm512_maskz_loadu_ps(
                                inside(start + LANES as isize, w),
                                src.wrapping_offset(start + LANES as isize),
                            );
                            let v = _mm512_permutex2var_ps(lo, evens, hi);
                            _mm512_storeu_ps(out.as_mut_ptr().add(j0), v);
                        }
                    }
                }
                for kw in 0..k {
                    let to = group.add(kw * len + i * width);
                    let from = if kw % 2 == 0 { &even } else { &odd };
                    let from = from.as_ptr().add(kw / 2);
                    for j0 in (0..width).step_by(LANES) {
                        let v = match row {
                            Some(_) => _mm512_loadu_ps(from.add(j0)),
                            None => _mm512_setzero_ps(),
                        };
                        if j0 + LANES <= width {
                            _mm512_storeu_ps(to.add(j0), v);
                        } else {
                            _mm512_mask_storeu_ps(to.add(j0), last, v);
                        }
                    }
                }
            }
            for p in ci * 2 * k..(ci + 1) * 2 * k {
                let plane = std::slice::from_raw_parts_mut(dst.add(p * len), len);
                plane[self.rows * width..].fill(0.0);
            }
        }
        std::slice::from_raw_parts_mut(dst.add((self.planes(g) - 1) * len), len).fill(0.0);
    }

    /// Never called: the stem's 16-lane kernels run only on x86-64.
    ///
    /// # Safety
    /// None needed.
    #[cfg(not(target_arch = "x86_64"))]
    pub(super) unsafe fn split(&self, _: &ConvGeometry, _: &[f32], _: &mut [f32]) {
        unreachable!("stem_column_planes: split off x86-64")
    }
}

/// The lanes of a vector whose first `n % 16` lanes are the last of a run (all 16 where the run
/// ends on a whole vector).
fn last_vector_lanes(n: usize) -> u16 {
    match n % LANES {
        0 => lane_mask(0, LANES),
        n => lane_mask(0, n),
    }
}

/// The lanes `l` of a vector read from column `start` of a row `w` long whose column
/// `start + l` lies inside the row.
fn inside(start: isize, w: usize) -> u16 {
    let from = (-start).clamp(0, LANES as isize) as usize;
    let to = (w as isize - start).clamp(0, LANES as isize) as usize;
    lane_mask(from, to.saturating_sub(from))
}

#[cfg(test)]
mod tests {
    use super::super::test_values_fine as values;
    use super::*;

    /// Every tap's read of every output position of the planes is the input value that tap
    /// reads (0 in the padding), the reads of the last vector's lanes past the map lie inside
    /// the planes, and the last plane is zeros: the stem, odd and even sizes, kernels of 7, 5,
    /// 4 and 3, paddings of either parity.
    #[test]
    fn every_tap_reads_its_input_value_and_zeros_past_the_map() {
        if !crate::cpu_features::avx512_kernels() {
            eprintln!("skipped: the 16-lane stem kernels do not run on this CPU");
            return;
        }
        for (c_in, (h, w), (k, pad)) in [
            (3, (112, 112), (7, 3)),
            (2, (37, 41), (7, 3)),
            (3, (40, 35), (5, 2)),
            (1, (33, 34), (3, 1)),
            (4, (36, 36), (3, 0)),
            (1, (60, 61), (4, 1)),
        ] {
            let g = ConvGeometry::new(&[1, c_in, h, w], &[8, c_in, k, k], 2, pad, 1).unwrap();
            let x = values(c_in * h * w, 7);
            let cp = ColumnPlanes::of(&g);
            let mut planes = vec![f32::NAN; cp.planes(&g) * cp.plane_len];
            // SAFETY: checked above.
            unsafe { cp.split(&g, &x, &mut planes) };
            assert!(
                planes.iter().all(|v| !v.is_nan()),
                "{g:?}: a value not written"
            );
            for (t, &offset) in cp.tap_offsets(&g).iter().enumerate() {
                let (ci, kh, kw) = (t / (k * k), t / k % k, t % k);
                for o in 0..cp.vectors * LANES {
                    let got = planes[offset + o];
                    let (oh, ow) = (o / g.out_w, o % g.out_w);
                    let r = (2 * oh + kh) as isize - pad as isize;
                    let c = (2 * ow + kw) as isize - pad as isize;
                    let want = if o < g.out_pixels()
                        && (0..h as isize).contains(&r)
                        && (0..w as isize).contains(&c)
                    {
                        x[(ci * h + r as usize) * w + c as usize]
                    } else if o < g.out_pixels() {
                        0.0
                    } else {
                        // Past the map: whatever lies there, but inside the planes.
                        got
                    };
                    assert_eq!(got.to_bits(), want.to_bits(), "{g:?}: tap {t} at {o}");
                }
            }
            let zeros = (cp.planes(&g) - 1) * cp.plane_len;
            assert!(
                planes[zeros..].iter().all(|&v| v == 0.0),
                "{g:?}: zero plane"
            );
        }
    }
}
