//! The input gradient of dense 3x3 stride-2 layers on small maps as four products over the
//! whole batch, one per stride phase of the input, on AMD Zen 5 (where it was measured):
//! ResNet-50's stride-2 layer from 14x14 to 7x7 at 112x112 input ([`applies`]).
//!
//! The whole-batch path (`batched.rs`) computes every tap's columns, `W^T @ dY` with
//! `9 * C_in` rows, then adds each column into its input pixel (col2im, which at stride 2 first
//! sums the taps per pixel): the columns are nine times the input gradient, written and read
//! back. Here the input's pixels are taken phase by phase (even or odd row, even or odd
//! column): an even row receives kernel row 1 from output row `m`, an odd one kernel row 0
//! from output row `m + 1` and kernel row 2 from row `m` (columns likewise). So phase
//! `(pr, pc)` is the sum over its 1, 2 or 4 taps of `W_t^T @ S`, where `W_t^T` is tap `t` of the
//! weight read in place as a `C_in x C_out` matrix and `S` the output gradient over the batch
//! (`C_out x N*OH*OW`) shifted by a row and / or a column where the tap reads output row `m +
//! 1` or column `n + 1` (zero past the map). Each product adds into the phase's sums (gemm's
//! accumulate), which are then written to their pixels of the input gradient; a phase of an
//! odd-sized map has one row or column fewer than the output, computed and not written.
//!
//! Each value is the sum over its phase's taps in row-major order, each tap's sum over the
//! output channels in gemm's blocks (col2im summed the same products per tap first, then the
//! taps): a rounding change. The products are cut by columns (`matmul_by_columns_into`), so
//! the values do not depend on the thread count.

use super::batched::gather_maps;
use super::geometry::ConvGeometry;
use super::matmul::{matmul_by_columns_into, MatRef};
use super::scratch::Scratch;
use rayon::prelude::*;

/// True when `g`'s input gradient runs here: dense 3x3, stride 2, padding 1, output maps of
/// 17 to 64 pixels (the whole-batch path's, `batched.rs`, less the 4x4 maps), more than one
/// image, on AMD Zen 5. `conv_passes`, CPU time of 2 threads, best of 5, 2 rounds, against the
/// whole-batch path: from 14x14 to 7x7 with 256 channels 9.56-9.71 -> 5.81-6.19 ms at batch
/// 16, 15.98-16.16 -> 10.93-11.10 at batch 32; from 7x7 to 4x4 with 512 channels 7.86-7.90 ->
/// 8.45-8.55 at batch 16 (nine products of 256 columns, each packing its 512 x 512 tap of the
/// weight, against one of 4608 rows), so 4x4 maps stay there.
pub fn applies(g: &ConvGeometry) -> bool {
    g.groups == 1
        && g.kernel_h == 3
        && g.kernel_w == 3
        && g.stride == 2
        && g.padding == 1
        && g.batch > 1
        && g.out_pixels() > 16
        && super::batched::applies(g)
        && super::select::cpu_kind() == super::select::CpuKind::Zen5Avx512
}

/// Input gradient `(N, C_in, H, W)` of `g` (as [`applies`] takes it) from the output
/// gradient `dy` and the weight `w`, into `dx` (every value written).
pub fn input_grad_into(g: &ConvGeometry, dy: &[f32], w: &[f32], dx: &mut [f32]) {
    assert!(
        applies(g),
        "input_grad_phases: geometry {g:?} does not apply"
    );
    phases_into(g, dy, w, dx)
}

/// [`input_grad_into`] for any dense 3x3 stride-2 padding-1 `g` (the tests run it on every
/// CPU; the products are gemm's).
fn phases_into(g: &ConvGeometry, dy: &[f32], w: &[f32], dx: &mut [f32]) {
    assert!(g.groups == 1 && (g.kernel_h, g.kernel_w, g.stride, g.padding) == (3, 3, 2, 1));
    let (c_in, c_out, p) = (g.in_channels, g.out_channels, g.out_pixels());
    let (oh, ow) = (g.out_h, g.out_w);
    let width = g.batch * p;
    let len = c_out * width;
    assert!(dy.len() == len && w.len() == c_out * c_in * 9);
    assert_eq!(dx.len(), g.batch * c_in * g.in_h * g.in_w);
    // The output gradient over the batch, then shifted by (row, column) = (0, 1), (1, 0) and
    // (1, 1): shift `(a, b)` at `(2 * a + b) * len`.
    let mut shifted = Scratch::take(4 * len);
    let (plain, rest) = shifted.split_at_mut(len);
    gather_maps(dy, c_out, p, g.batch, plain);
    let plain = &*plain;
    rest.par_chunks_mut(width).enumerate().for_each(|(i, dst)| {
        let (shift, co) = (i / c_out + 1, i % c_out);
        let (a, b) = (shift / 2, shift % 2);
        let src = &plain[co * width..(co + 1) * width];
        for (img_dst, img_src) in dst.chunks_exact_mut(p).zip(src.chunks_exact(p)) {
            for (m, row) in img_dst.chunks_exact_mut(ow).enumerate() {
                if m + a >= oh {
                    row.fill(0.0);
                    continue;
                }
                let from = &img_src[(m + a) * ow + b..(m + a + 1) * ow];
                row[..ow - b].copy_from_slice(from);
                row[ow - b..].fill(0.0);
            }
        }
    });
    let shifted = &*shifted;
    let mut sums = Scratch::take(c_in * width);
    let (h, w_in) = (g.in_h, g.in_w);
    for (pr, pc) in [(0, 0), (0, 1), (1, 0), (1, 1)] {
        // Kernel rows (columns) reaching this row (column) phase, and the shift each reads.
        let reach = |parity: usize| -> &'static [(usize, usize)] {
            if parity == 0 {
                &[(1, 0)]
            } else {
                &[(0, 1), (2, 0)]
            }
        };
        let mut first = true;
        for &(ky, a) in reach(pr) {
            for &(kx, b) in reach(pc) {
                let t = ky * 3 + kx;
                // Tap t of w (C_out, C_in, 3, 3) as the C_in x C_out matrix W_t^T.
                let w_t = MatRef::with_strides(&w[t..], (c_in, c_out), (9, c_in * 9));
                let s = MatRef::row_major(&shifted[(2 * a + b) * len..][..len], c_out, width);
                matmul_by_columns_into(&mut sums, !first, w_t, s);
                first = false;
            }
        }
        // This phase's pixels: dx[img][ci][2m + pr][2n + pc] for the rows and columns inside.
        let (rows, cols) = ((h - pr).div_ceil(2), (w_in - pc).div_ceil(2));
        let sums = &*sums;
        dx.par_chunks_mut(h * w_in)
            .enumerate()
            .for_each(|(plane, dst)| {
                let (img, ci) = (plane / c_in, plane % c_in);
                let src = &sums[ci * width + img * p..][..p];
                for m in 0..rows {
                    let dst_row = &mut dst[(2 * m + pr) * w_in..][..w_in];
                    for (n, &v) in src[m * ow..m * ow + cols].iter().enumerate() {
                        dst_row[2 * n + pc] = v;
                    }
                }
            });
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_values_fine as values;
    use super::*;

    /// Every input-gradient value equals the sum, in f64, of weight times output gradient
    /// over the output channels and the taps that reach the pixel, within f32 rounding of sums
    /// of a few hundred products; on even, odd and non-square maps, odd batches, and channel
    /// counts from 8 to 32. Every value is written (the buffer starts as NaN).
    #[test]
    fn phases_give_the_transposed_convolution() {
        for (n, c_in, c_out, h, w) in [
            (2, 16, 24, 14, 14),
            (3, 8, 8, 13, 13),
            (2, 8, 16, 12, 10),
            (3, 32, 16, 9, 9),
            (2, 16, 8, 7, 7),
        ] {
            let g = ConvGeometry::new(&[n, c_in, h, w], &[c_out, c_in, 3, 3], 2, 1, 1).unwrap();
            let (oh, ow) = (g.out_h, g.out_w);
            let dy = values(n * c_out * oh * ow, 21);
            let wt = values(c_out * c_in * 9, 22);
            let mut dx = vec![f32::NAN; n * c_in * h * w];
            phases_into(&g, &dy, &wt, &mut dx);
            for img in 0..n {
                for ci in 0..c_in {
                    for iy in 0..h {
                        for ix in 0..w {
                            let (mut want, mut scale) = (0.0f64, 0.0f64);
                            for co in 0..c_out {
                                for t in 0..9 {
                                    let (ky, kx) = (t / 3, t % 3);
                                    let (ny, nx) = (iy + 1, ix + 1);
                                    if ny < ky
                                        || nx < kx
                                        || (ny - ky) % 2 == 1
                                        || (nx - kx) % 2 == 1
                                    {
                                        continue;
                                    }
                                    let (oy, ox) = ((ny - ky) / 2, (nx - kx) / 2);
                                    if oy < oh && ox < ow {
                                        let gv =
                                            f64::from(dy[((img * c_out + co) * oh + oy) * ow + ox]);
                                        let wv = f64::from(wt[(co * c_in + ci) * 9 + t]);
                                        want += gv * wv;
                                        scale += (gv * wv).abs();
                                    }
                                }
                            }
                            let got = f64::from(dx[((img * c_in + ci) * h + iy) * w + ix]);
                            assert!(
                                (got - want).abs() <= 1e-5 * scale.max(1e-3),
                                "{n}x{c_in}x{h}x{w} <- {c_out}: ({img}, {ci}, {iy}, {ix}) {got} against {want}"
                            );
                        }
                    }
                }
            }
        }
    }

    /// The same bits under rayon pools of 1, 2 and 3 threads (the products are cut by columns
    /// per thread, the sums added by gemm into each piece).
    #[test]
    fn same_bits_on_one_two_and_three_threads() {
        let g = ConvGeometry::new(&[5, 32, 14, 14], &[48, 32, 3, 3], 2, 1, 1).unwrap();
        let dy = values(5 * 48 * 49, 31);
        let wt = values(48 * 32 * 9, 32);
        let run = |threads: usize| {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            let mut dx = vec![f32::NAN; 5 * 32 * 196];
            pool.install(|| phases_into(&g, &dy, &wt, &mut dx));
            dx.iter().map(|v| v.to_bits()).collect::<Vec<_>>()
        };
        let one = run(1);
        assert_eq!(one, run(2), "1 against 2 threads");
        assert_eq!(one, run(3), "1 against 3 threads");
    }
}
