//! Small feature maps: one GEMM over the whole batch instead of one per image.
//!
//! At 112x112 input, ResNet's last stages run on 7x7 and 4x4 maps: a per-image GEMM then has
//! only 49 or 16 columns (or, for the weight gradient, a summed dimension of 16), which gemm
//! runs at a fraction of its speed (measured: 21-60 GFLOP/s for the 4x4 weight and input
//! gradients against 100-200 elsewhere). For dense convolutions (`groups == 1`) on such maps
//! the column matrices of all images are laid side by side, `(patch_len, N * OH*OW)`, and the
//! output gradients likewise, `(C_out, N * OH*OW)`: forward, input gradient and weight
//! gradient are then each one wide GEMM on all threads (`(256, 2304, 784)` for ResNet-50's
//! 7x7 3x3 conv at batch 16: 210 GFLOP/s here, against 170 for blocks of 6 images), at the
//! price of copying the small maps in and out, in parallel. The forward of 1x1 layers with
//! 4x4 outputs on AVX2-only CPUs runs one GEMM per image instead ([`forward_applies`]). The
//! input gradient of most 1x1 layers runs `pointwise_nchw.rs` instead, without the copies, on
//! AMD Zen 5 (on Zen 4 those on 7x7 maps; both run their forward on 7x7 maps there too), and
//! that of the dense stride-2 layers with 7x7 outputs (4x4 from batch 32)
//! `input_grad_phases.rs`, without the columns.
//!
//! The weight gradient's summed dimension (`N * OH*OW`) is split by gemm into cache-sized
//! blocks, never by thread: the sum runs in the same order for any thread count
//! (docs/determinism.md). Every pass is likewise independent of the thread count.

use super::geometry::ConvGeometry;
use super::im2col::{col2im_add, im2col_strided};
use super::matmul::{matmul_by_columns, matmul_transposed_weight, MatRef};
use super::scratch::{with_columns, Scratch};
use rayon::prelude::*;

/// Output maps of at most this many pixels take the batched path.
const MAX_PIXELS: usize = 64;

/// True when `g` runs through this module: dense, small output maps, more than one image.
pub fn applies(g: &ConvGeometry) -> bool {
    g.groups == 1 && g.out_pixels() <= MAX_PIXELS && g.batch > 1
}

/// True when `g`'s forward runs through this module: where [`applies`], except 1x1 layers
/// (stride 1 or 2) with output maps of at most 16 pixels (4x4) on CPUs with AVX2 and without
/// AVX-512, whose forward runs one GEMM per image without the copies in and out (measured
/// faster there, docs/performance.md; at 7x7 level with the copies, so those keep them).
pub fn forward_applies(g: &ConvGeometry) -> bool {
    let per_image = (g.kernel_h, g.kernel_w) == (1, 1)
        && g.out_pixels() <= 16
        && crate::cpu_features::avx2_only();
    applies(g) && !per_image
}

/// The column matrix of the whole batch, `(patch_len, N * OH*OW)` row-major: image `b`'s
/// im2col rows at columns `b * OH*OW..`. Filled in parallel over bands of input channels
/// (each band is a contiguous block of rows).
fn gather_columns(g: &ConvGeometry, x: &[f32]) -> Scratch {
    let (k, p) = (g.patch_len(), g.out_pixels());
    let width = g.batch * p;
    let mut cols = Scratch::take(k * width);
    if g.is_pointwise() {
        gather_maps(x, g.in_channels, p, g.batch, &mut cols);
        return cols;
    }
    let taps = g.kernel_h * g.kernel_w;
    let plane = g.in_h * g.in_w;
    let band = band_channels(g.in_channels);
    cols.par_chunks_mut(band * taps * width)
        .enumerate()
        .for_each(|(i, rows)| {
            let c0 = i * band;
            let c1 = (c0 + band).min(g.in_channels);
            for b in 0..g.batch {
                let x_unit = g.input_unit(x, b);
                let planes = &x_unit[c0 * plane..c1 * plane];
                im2col_strided(g, planes, &mut rows[b * p..], width);
            }
        });
    cols
}

/// Input channels per parallel task: enough tasks for every thread, a few channels each.
fn band_channels(channels: usize) -> usize {
    channels.div_ceil(4 * rayon::current_num_threads()).max(1)
}

/// Copies the NCHW maps `t` (`rows` channels of `p` pixels per image, `batch` images) into
/// `out` (`rows x batch*p`, row-major), in parallel over rows.
pub(super) fn gather_maps(t: &[f32], rows: usize, p: usize, batch: usize, out: &mut [f32]) {
    out.par_chunks_mut(batch * p)
        .enumerate()
        .for_each(|(row, dst)| {
            for (b, d) in dst.chunks_exact_mut(p).enumerate() {
                let src = (b * rows + row) * p;
                d.copy_from_slice(&t[src..src + p]);
            }
        });
}

/// Forward pass: `Y (C_out x N*P) = W @ cols`, scattered back to NCHW `y` (every value
/// overwritten), then `then(image, y_image)` on each image's output.
pub fn forward_into(
    g: &ConvGeometry,
    x: &[f32],
    w: &[f32],
    y: &mut [f32],
    then: super::epilogue::Epilogue<'_>,
) {
    let (k, p, c_out) = (g.patch_len(), g.out_pixels(), g.out_channels);
    let width = g.batch * p;
    let cols = gather_columns(g, x);
    let mut wide = Scratch::take(c_out * width);
    matmul_by_columns(
        &mut wide,
        MatRef::row_major(w, c_out, k),
        MatRef::row_major(&cols, k, width),
    );
    drop(cols);
    y.par_chunks_mut(c_out * p)
        .enumerate()
        .for_each(|(b, y_unit)| {
            for (row, dst) in y_unit.chunks_exact_mut(p).enumerate() {
                dst.copy_from_slice(&wide[row * width + b * p..row * width + (b + 1) * p]);
            }
            then(b, y_unit);
        });
}

/// Input gradient into `dx` (any contents; every value written): `dcols (patch_len x N*P) =
/// W^T @ dY`, then col2im per image in parallel.
pub fn input_grad_into(g: &ConvGeometry, dy: &[f32], w: &[f32], dx: &mut [f32]) {
    let (k, p, c_out) = (g.patch_len(), g.out_pixels(), g.out_channels);
    let width = g.batch * p;
    let mut dy_wide = Scratch::take(c_out * width);
    gather_maps(dy, c_out, p, g.batch, &mut dy_wide);
    let mut dcols = Scratch::take(k * width);
    matmul_transposed_weight(
        &mut dcols,
        MatRef::row_major(w, c_out, k).t(),
        MatRef::row_major(&dy_wide, c_out, width),
    );
    drop(dy_wide);
    if !g.is_pointwise() {
        // col2im adds each column into place.
        super::scratch::fill_zero(dx);
    }
    let dcols = &dcols[..];
    dx.par_chunks_mut(g.in_unit_len())
        .enumerate()
        .for_each(|(b, dx_unit)| {
            let unpack = |col: &mut [f32]| {
                for (row, dst) in col.chunks_exact_mut(p).enumerate() {
                    dst.copy_from_slice(&dcols[row * width + b * p..row * width + (b + 1) * p]);
                }
            };
            if g.is_pointwise() {
                unpack(dx_unit);
            } else {
                with_columns(k * p, |col| {
                    unpack(col);
                    col2im_add(g, col, dx_unit);
                });
            }
        });
}

/// Weight gradient: `dW (C_out x patch_len) = dY (C_out x N*P) @ cols^T`, one GEMM over the
/// whole batch on all threads.
pub fn weight_grad(g: &ConvGeometry, x: &[f32], dy: &[f32]) -> Vec<f32> {
    let (k, p, c_out) = (g.patch_len(), g.out_pixels(), g.out_channels);
    let width = g.batch * p;
    let cols = gather_columns(g, x);
    let mut dy_wide = Scratch::take(c_out * width);
    gather_maps(dy, c_out, p, g.batch, &mut dy_wide);
    let mut dw = vec![0.0f32; c_out * k];
    matmul_by_columns(
        &mut dw,
        MatRef::row_major(&dy_wide, c_out, width),
        MatRef::row_major(&cols, k, width).t(),
    );
    dw
}
