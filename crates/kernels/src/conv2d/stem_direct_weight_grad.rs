//! The weight gradient of the stem's convolution (`stem_direct.rs`) on the same column planes
//! (`stem_column_planes.rs`): per image, blocks of output channels by 6 taps over every vector
//! of output positions, the output gradient read where it lies (the map's last vector through a
//! mask), each accumulator reduced to its sum at the end of the image; the images' sums are
//! then added in order, so that the result is the same for any number of threads. On 16 lanes
//! (AVX-512: Intel, AMD Zen 5 and Zen 4) only: a block is 4 output channels by 6 taps (24
//! accumulators); where AVX2 runs without AVX-512, im2col + GEMM measured faster
//! (docs/performance.md).

use super::geometry::ConvGeometry;
use super::partial_sums::sum_partials;
use super::scratch::with_columns;
use super::stem_column_planes::ColumnPlanes;
use super::stem_direct::{vector_lanes, LANES};
use rayon::prelude::*;

/// Output channels of a weight-gradient register block.
const GRAD_ROWS: usize = 4;
/// Taps of a weight-gradient register block.
const GRAD_TAPS: usize = 6;

/// True when the weight gradient runs here: the forward fits (`stem_direct::fits`) on 16-lane
/// vectors (AVX-512 on Intel, AMD Zen 5 and Zen 4).
pub(super) fn fits(g: &ConvGeometry) -> bool {
    super::stem_direct::fits(g) && vector_lanes() == Some(LANES)
}

/// Gradient `(C_out, C_in, K, K)` of the loss with respect to the weight, from the input `x`
/// and the output gradient `dy`: per image in parallel, then the images' sums in order.
pub fn weight_grad(g: &ConvGeometry, x: &[f32], dy: &[f32]) -> Vec<f32> {
    assert!(fits(g), "stem_direct_weight_grad: {g:?}");
    let cp = ColumnPlanes::of(g);
    let mut taps = cp.tap_offsets(g);
    let len = g.out_channels * taps.len();
    assert_eq!(
        dy.len(),
        g.units() * g.out_unit_len(),
        "stem_direct: output gradient"
    );
    // Padding taps up to a whole block read the plane of zeros; their sums are dropped.
    let zeros = (cp.planes(g) - 1) * cp.plane_len;
    let real = taps.len();
    taps.resize(real.next_multiple_of(GRAD_TAPS), zeros);
    let planes_len = cp.planes(g) * cp.plane_len;
    let mut parts = vec![0.0f32; g.batch * len];
    parts.par_chunks_mut(len).enumerate().for_each(|(b, dw_b)| {
        with_columns(planes_len, |planes| {
            // SAFETY: `fits` checked AVX-512F.
            unsafe { cp.split(g, g.input_unit(x, b), planes) };
            let grads = GradImage {
                planes,
                taps: &taps,
                real,
                dy: g.output_unit(dy, b),
                vectors: cp.vectors,
                last: cp.last_lanes(g),
                out_plane: g.out_pixels(),
            };
            // SAFETY: `fits` checked AVX-512F; as in `stem_direct::forward_wide` for the
            // planes; the vectors lie inside each channel of `dy`'s image but the last, whose
            // `last` lanes do.
            unsafe { grads.sums(dw_b) };
        });
    });
    sum_partials(parts, len)
}

/// One image's share of the weight gradient.
struct GradImage<'a> {
    planes: &'a [f32],
    /// Every tap's plane offset, padded to a whole block with taps of the zero plane.
    taps: &'a [usize],
    /// The real taps, the first `real` of `taps`.
    real: usize,
    dy: &'a [f32],
    /// Vectors of 16 output positions per channel.
    vectors: usize,
    /// The lanes of the last vector inside the map.
    last: u16,
    out_plane: usize,
}

impl GradImage<'_> {
    /// Writes the image's sums into `dw_b` (`C_out x real`).
    ///
    /// # Safety
    /// As in [`weight_grad`].
    unsafe fn sums(&self, dw_b: &mut [f32]) {
        let c_out = dw_b.len() / self.real;
        assert!(self.dy.len() >= c_out * self.out_plane);
        for co in (0..c_out).step_by(GRAD_ROWS) {
            for t in (0..self.taps.len()).step_by(GRAD_TAPS) {
                let sums = grad_block(self, co, t);
                for (r, row) in sums.iter().enumerate() {
                    for (k, &s) in row.iter().enumerate() {
                        if t + k < self.real {
                            dw_b[(co + r) * self.real + t + k] = s;
                        }
                    }
                }
            }
        }
    }
}

/// The sums of the 4 output channels from `co` by 6 taps from `t`, over every vector of
/// positions: per vector, 4 loads of the output gradient (the last vector's lanes past the
/// map read as zeros), 6 of the planes, 24 FMAs.
///
/// # Safety
/// AVX-512F; as in [`weight_grad`].
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[allow(clippy::needless_range_loop)] // index loops keep the accumulators in registers
unsafe fn grad_block(args: &GradImage<'_>, co: usize, t: usize) -> [[f32; GRAD_TAPS]; GRAD_ROWS] {
    use std::arch::x86_64::*;
    let n = args.vectors;
    let mut acc = [[_mm512_setzero_ps(); GRAD_TAPS]; GRAD_ROWS];
    let mut d = [_mm512_setzero_ps(); GRAD_ROWS];
    let dy = args.dy.as_ptr().add(co * args.out_plane);
    let mut inp = [args.planes.as_ptr(); GRAD_TAPS];
    for k in 0..GRAD_TAPS {
        inp[k] = inp[k].add(args.taps[t + k]);
    }
    for q in 0..n {
        let lanes = if q + 1 < n { u16::MAX } else { args.last };
        for r in 0..GRAD_ROWS {
            d[r] = _mm512_maskz_loadu_ps(lanes, dy.add(r * args.out_plane + q * LANES));
        }
        for k in 0..GRAD_TAPS {
            let xv = _mm512_loadu_ps(inp[k].add(q * LANES));
            for r in 0..GRAD_ROWS {
                acc[r][k] = _mm512_fmadd_ps(d[r], xv, acc[r][k]);
            }
        }
    }
    reduce(&acc)
}

/// Each accumulator's sum. Kept out of [`grad_block`]: the reduction's 256- and 128-bit
/// operations reach only the first 16 vector registers without AVX-512VL, and inlined they
/// confined the accumulators to those, spilling a third of them in the loop.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[inline(never)]
#[allow(clippy::needless_range_loop)]
unsafe fn reduce(
    acc: &[[std::arch::x86_64::__m512; GRAD_TAPS]; GRAD_ROWS],
) -> [[f32; GRAD_TAPS]; GRAD_ROWS] {
    use std::arch::x86_64::*;
    let mut sums = [[0.0f32; GRAD_TAPS]; GRAD_ROWS];
    for r in 0..GRAD_ROWS {
        for k in 0..GRAD_TAPS {
            sums[r][k] = _mm512_reduce_add_ps(acc[r][k]);
        }
    }
    sums
}

/// Never called: [`fits`] is false off x86-64.
#[cfg(not(target_arch = "x86_64"))]
unsafe fn grad_block(_: &GradImage<'_>, _: usize, _: usize) -> [[f32; GRAD_TAPS]; GRAD_ROWS] {
    unreachable!("stem_direct runs only on x86-64")
}

#[cfg(test)]
mod tests {
    use super::super::stem_direct::tests::{geometry, tap_input, SHAPES};
    use super::super::test_values_fine as values;
    use super::*;

    /// The weight gradient in f64, summed over the batch's positions.
    fn weight_grad_f64(g: &ConvGeometry, x: &[f32], dy: &[f32]) -> Vec<f64> {
        let k = g.kernel_h;
        let mut dw = vec![0.0f64; g.out_channels * g.in_channels * k * k];
        for o in 0..g.out_channels {
            for i in 0..g.in_channels {
                for t in 0..k * k {
                    let mut s = 0.0f64;
                    for n in 0..g.batch {
                        for oy in 0..g.out_h {
                            for ox in 0..g.out_w {
                                let v = tap_input(g, x, (n, i), oy, ox, (t / k, t % k));
                                let d =
                                    dy[((n * g.out_channels + o) * g.out_h + oy) * g.out_w + ox];
                                s += f64::from(v) * f64::from(d);
                            }
                        }
                    }
                    dw[(o * g.in_channels + i) * k * k + t] = s;
                }
            }
        }
        dw
    }

    /// The weight gradient is within a few f32 roundings of the f64 sum of its products, for
    /// every weight of every shape; pools of 1, 2 and 3 threads give the same bits.
    #[test]
    fn weight_gradient_matches_f64_sums_for_any_thread_count() {
        if vector_lanes() != Some(LANES) {
            eprintln!("skipped: the kernel does not run on this CPU");
            return;
        }
        for shape in SHAPES {
            let g = geometry(shape);
            let x = values(g.batch * g.in_unit_len(), 7);
            let dy = values(g.batch * g.out_unit_len(), 11);
            let expected = weight_grad_f64(&g, &x, &dy);
            let terms = (g.batch * g.out_pixels()) as f64;
            let runs: Vec<Vec<u32>> = [1, 2, 3]
                .into_iter()
                .map(|threads| {
                    let pool = rayon::ThreadPoolBuilder::new()
                        .num_threads(threads)
                        .build()
                        .unwrap();
                    let dw = pool.install(|| weight_grad(&g, &x, &dy));
                    dw.iter().map(|v| v.to_bits()).collect()
                })
                .collect();
            assert!(
                runs.iter().all(|r| *r == runs[0]),
                "{g:?}: thread counts differ"
            );
            for (i, (&bits, &e)) in runs[0].iter().zip(&expected).enumerate() {
                let a = f64::from(f32::from_bits(bits));
                // |x|, |dy| <= 1: each partial sum is at most `terms` in size.
                let tolerance = terms * f64::from(f32::EPSILON) * 2.0;
                assert!((a - e).abs() <= tolerance, "{g:?}: weight {i}: {a} vs {e}");
            }
        }
    }
}
