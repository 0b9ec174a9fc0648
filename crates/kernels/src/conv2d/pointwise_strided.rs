//! The forward and the input gradient of dense 1x1 stride-2 layers (ResNet's downsampling
//! projections) through `pointwise_nchw.rs`'s register blocks, where those were measured faster
//! (AMD Zen 5; on AMD Zen 4 the input gradient and the forwards to 7x7 and 4x4): the forward
//! gathers the pixels the layer reads into `(N, C_in, OH*OW)` and multiplies them as a stride-1
//! layer's input; the input gradient takes the blocks' products at the output pixels and writes
//! each to the input pixel it came from, zeros at every other pixel. Every value is one FMA
//! chain over the summed channels in order (docs/determinism.md).

use super::geometry::ConvGeometry;
use super::pointwise_nchw::{
    blocks_take, chosen_here, forward_product_into, per_image, transposed_product_into, turns_loops,
};
use rayon::prelude::*;

/// True when `g`'s input gradient runs [`input_grad_into`]: a dense 1x1 stride-2 unpadded layer
/// (ResNet's downsampling projections) with output maps of 16 to 196 pixels, on AMD Zen 5.
/// `conv_passes`, wall clock of 2 threads, best of 7, 2 rounds, against the GEMMs and col2im
/// (`batched.rs` to 7x7 and 4x4, per image to 14x14): (1024 -> 2048) from 7x7 to 4x4 2.95-2.96 ->
/// 2.85-2.86 ms at batch 16, 7.22-7.29 -> 5.35-5.40 at batch 32; (512 -> 1024) from 14x14 to 7x7
/// 2.51-2.64 -> 2.13-2.16 and 5.45-5.56 -> 4.35-4.44; (256 -> 512) from 28x28 to 14x14 at batch 16
/// 2.74-2.86 -> 2.41-2.54. On AMD Zen 4 the outputs of more than 16 pixels (as the stride-1 layers,
/// best / median of 3): (512 -> 1024) from 14x14 to 7x7 5.50 / 5.54 -> 4.53 / 4.75 ms at batch 16,
/// 10.86 / 12.28 -> 9.36 / 9.49 at batch 32; (256 -> 512) from 28x28 to 14x14 6.28 / 6.31 -> 5.27 /
/// 5.72 at batch 16; but (1024 -> 2048) from 7x7 to 4x4 5.83 / 5.91 -> 9.83 / 11.45.
pub fn applies(g: &ConvGeometry) -> bool {
    fits(g) && chosen_here(g)
}

/// True when the kernel can compute `g`'s stride-2 forward and input gradient on this CPU: a dense
/// 1x1 stride-2 unpadded layer that `pointwise_nchw.rs`'s blocks take.
fn fits(g: &ConvGeometry) -> bool {
    (g.kernel_h, g.kernel_w, g.stride, g.padding) == (1, 1, 2, 0) && blocks_take(g)
}

/// True when `g`'s forward runs [`forward_into`]: where its input gradient runs
/// [`input_grad_into`], less the 4x4 outputs (as for stride 1). `conv_passes`, wall clock of 2
/// threads, best of 7, 2 rounds, against the strided im2col, GEMM and copies: (512 -> 1024) from
/// 14x14 to 7x7 2.55-2.78 -> 2.11-2.12 ms at batch 16, 4.54-4.61 -> 4.17-4.19 at batch 32; (256
/// -> 512) from 28x28 to 14x14 2.28 -> 2.18-2.22 and 4.67-4.69 -> 4.54-4.56. On AMD Zen 4 the
/// 7x7 outputs alone: with the blocks' passes of 128 both were level there (wall clock, best /
/// median of 3, (512 -> 1024) from 14x14 to 7x7 4.63 / 4.68 -> 4.59 / 4.73 ms at batch 16,
/// (256 -> 512) from 28x28 to 14x14 10.79 / 11.00 -> 10.91 / 11.40 at batch 32); with the
/// passes of 512 (`conv_passes`, CPU time of 2 threads, best of 7, 3 alternating rounds) (512 ->
/// 1024) from 14x14 to 7x7 9.64-10.95 -> 8.85-8.94 ms at batch 16, 19.55-19.77 -> 17.03-17.36
/// at batch 32, but (256 -> 512) from 28x28 to 14x14 9.86-10.11 -> 10.10-10.68 at batch 16 and
/// level at 32 (19.96-21.64 against 19.63-21.21). And on AMD Zen 4 the 4x4 outputs, through the
/// blocks with their loops turned (`pointwise_nchw.rs`'s `turns_loops`), as the
/// stride-1 4x4 forwards: (1024 -> 2048) from 7x7 to 4x4 11.64-13.18 -> 11.08-11.63 ms at batch
/// 16, 23.82-24.22 -> 21.41-21.80 at batch 32 (same measure, against the GEMM).
pub fn forward_applies(g: &ConvGeometry) -> bool {
    (applies(g) && g.out_pixels() > 16 && (crate::cpu_features::zen5() || g.out_pixels() <= 64))
        || (fits(g) && turns_loops(g.out_pixels()))
}

/// Forward of a 1x1 stride-2 layer (as [`forward_applies`] takes it): the pixels the layer reads
/// gathered into `(N, C_in, OH*OW)`, the blocks' products written to `y` (each value one FMA chain
/// over the input channels in order), then `then(b, y_b)` per image.
pub fn forward_into(
    g: &ConvGeometry,
    x: &[f32],
    w: &[f32],
    y: &mut [f32],
    then: super::epilogue::Epilogue<'_>,
) {
    let (batch, p, ci, co) = (g.batch, g.out_pixels(), g.in_channels, g.out_channels);
    assert!(fits(g), "pointwise_strided: {g:?}");
    assert_eq!(w.len(), co * ci, "pointwise_strided: weight size");
    assert_eq!(
        x.len(),
        batch * g.in_unit_len(),
        "pointwise_strided: input size"
    );
    assert_eq!(y.len(), batch * co * p, "pointwise_strided: output size");
    // Each image's im2col: for a 1x1 layer, its channels' read pixels, `(C_in, OH*OW)`.
    let mut read = super::scratch::Scratch::take(batch * ci * p);
    read.par_chunks_mut(ci * p)
        .enumerate()
        .for_each(|(b, unit)| super::im2col::im2col(g, g.input_unit(x, b), unit));
    // SAFETY: `fits` checked AVX-512F, both channel counts multiples of 8 and `p >= 16`.
    unsafe { forward_product_into(w, (ci, co), &read, (batch, p), y) };
    per_image(y, co * p, then);
}

/// Input gradient of a 1x1 stride-2 layer (as [`applies`] takes it): the blocks' product `sum_co
/// w[co, ci] * dy[b, co, q]` at every output pixel `q`, then written to the input pixel it read
/// (`(2 oy, 2 ox)`), zeros at every other pixel.
pub fn input_grad_into(g: &ConvGeometry, dy: &[f32], w: &[f32], dx: &mut [f32]) {
    let (batch, p, ci, co) = (g.batch, g.out_pixels(), g.in_channels, g.out_channels);
    let (ow, h, w_in) = (g.out_w, g.in_h, g.in_w);
    assert!(fits(g), "pointwise_strided: {g:?}");
    assert_eq!(w.len(), co * ci, "pointwise_strided: weight size");
    assert_eq!(
        dy.len(),
        batch * co * p,
        "pointwise_strided: output gradient size"
    );
    assert_eq!(
        dx.len(),
        batch * ci * h * w_in,
        "pointwise_strided: input gradient size"
    );
    let mut sums = super::scratch::Scratch::take(batch * ci * p);
    // SAFETY: `applies` checked AVX-512F, both channel counts multiples of 8 and
    // `p >= 16`.
    unsafe { transposed_product_into(w, (co, ci), dy, (batch, p), &mut sums) };
    let sums = &*sums;
    dx.par_chunks_mut(h * w_in)
        .zip(sums.par_chunks(p))
        .for_each(|(plane, src)| {
            for (y, row) in plane.chunks_exact_mut(w_in).enumerate() {
                row.fill(0.0);
                if y % 2 == 0 {
                    let src_row = &src[(y / 2) * ow..][..ow];
                    for (d, &v) in row.iter_mut().step_by(2).zip(src_row) {
                        *d = v;
                    }
                }
            }
        });
}

#[cfg(test)]
mod tests {
    use super::super::pointwise_nchw::tests::{chain, same_bits_under_pools};
    use super::super::test_values_fine as values;
    use super::*;

    /// The stride-2 input gradient is, at every pixel a 1x1 stride-2 layer reads, that pixel's FMA
    /// chain over the output channels, bit for bit, and zero at every other pixel; on even and odd
    /// maps (7x7 to 4x4, 8x8 to 4x4, 14x14 to 7x7, 9x9 to 5x5), 8 to 136 channels; the same bits
    /// under pools of 1 and 3 threads.
    #[test]
    fn input_gradient_is_the_chain_at_the_read_pixels() {
        if !crate::cpu_features::avx512_kernels() {
            eprintln!("skipped: the kernel does not run on this CPU");
            return;
        }
        for (batch, c_in, c_out, side) in
            [(3, 16, 8, 7), (2, 8, 136, 8), (2, 24, 16, 14), (5, 8, 8, 9)]
        {
            let g = ConvGeometry::new(&[batch, c_in, side, side], &[c_out, c_in, 1, 1], 2, 0, 1)
                .expect("geometry");
            assert!(fits(&g), "{g:?}");
            let (o, p) = (g.out_w, g.out_pixels());
            let w = values(c_out * c_in, 6);
            let dy = values(batch * c_out * p, 7);
            let run = || {
                let mut dx = vec![f32::NAN; batch * c_in * side * side];
                input_grad_into(&g, &dy, &w, &mut dx);
                dx
            };
            let dx = same_bits_under_pools(&g, run);
            for b in 0..batch {
                for ci in 0..c_in {
                    for y in 0..side {
                        for x in 0..side {
                            let got = dx[((b * c_in + ci) * side + y) * side + x];
                            let want = if y % 2 == 0 && x % 2 == 0 {
                                let q = (y / 2) * o + x / 2;
                                chain(|k| w[k * c_in + ci], &dy, (b, q, p, c_out))
                            } else {
                                0.0
                            };
                            assert_eq!(
                                got.to_bits(),
                                want.to_bits(),
                                "{g:?}: ({b}, {ci}, {y}, {x})"
                            );
                        }
                    }
                }
            }
        }
    }

    /// The stride-2 forward is, at every output pixel, the FMA chain over the input channels of the
    /// pixel it reads, bit for bit (9x9 to 5x5, 14x14 to 7x7, 10x10 to 5x5; 7x7 to 4x4 where it
    /// runs here, AMD Zen 4, with the loops turned, over one pass and two; 8 to 520 channels);
    /// the epilogue runs once per image; the same bits under pools of 1 and 3 threads.
    #[test]
    fn forward_is_the_chain_of_the_read_pixels() {
        if !crate::cpu_features::avx512_kernels() {
            eprintln!("skipped: the kernel does not run on this CPU");
            return;
        }
        let zen4 = crate::cpu_features::zen4();
        for (batch, c_in, c_out, side) in [
            (3, 16, 8, 9),
            (2, 136, 8, 14),
            (2, 8, 24, 10),
            (4, 520, 16, 7),
            (5, 24, 8, 7),
        ] {
            let g = ConvGeometry::new(&[batch, c_in, side, side], &[c_out, c_in, 1, 1], 2, 0, 1)
                .expect("geometry");
            assert!(fits(&g), "{g:?}");
            if g.out_pixels() == 16 && !zen4 {
                continue;
            }
            let (o, p) = (g.out_w, g.out_pixels());
            let w = values(c_out * c_in, 8);
            let x = values(batch * c_in * side * side, 9);
            let run = || {
                let mut y = vec![f32::NAN; batch * c_out * p];
                let calls: Vec<std::sync::atomic::AtomicUsize> =
                    (0..batch).map(|_| Default::default()).collect();
                forward_into(&g, &x, &w, &mut y, &|b, _| {
                    calls[b].fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                });
                assert!(calls
                    .iter()
                    .all(|c| c.load(std::sync::atomic::Ordering::Relaxed) == 1));
                y
            };
            let y = same_bits_under_pools(&g, run);
            for b in 0..batch {
                for co in 0..c_out {
                    for q in 0..p {
                        let at = (q / o) * 2 * side + (q % o) * 2;
                        let want = (0..c_in).fold(0.0f32, |acc, k| {
                            w[co * c_in + k].mul_add(x[(b * c_in + k) * side * side + at], acc)
                        });
                        let got = y[(b * c_out + co) * p + q];
                        assert_eq!(got.to_bits(), want.to_bits(), "{g:?}: ({b}, {co}, {q})");
                    }
                }
            }
        }
    }
}
