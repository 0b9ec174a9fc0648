//! Small feature maps: one GEMM over a block of images instead of one per image.
//!
//! At 112x112 input, ResNet's last stages run on 7x7 and 4x4 maps: a per-image GEMM then has
//! only 49 or 16 columns (or, for the weight gradient, a summed dimension of 16), which gemm
//! runs at a fraction of its speed (measured: 21-60 GFLOP/s for the 4x4 weight and input
//! gradients against 100-200 elsewhere). For dense convolutions (`groups == 1`) on such maps
//! the column matrices of several images are laid side by side, `(patch_len, B * OH*OW)`, and
//! the output gradients likewise, `(C_out, B * OH*OW)`: then forward, input gradient and weight
//! gradient are each one wide GEMM per block, at the price of copying the (small) maps in
//! and out.
//!
//! The weight gradient takes the whole batch as one block and one GEMM, whose summed dimension
//! is split by gemm into cache-sized blocks, never by thread: the sum runs in the same order
//! for any thread count (docs/determinism.md).

use super::geometry::ConvGeometry;
use super::im2col::{col2im_add, im2col};
use super::matmul::{matmul, MatRef};
use super::schedule::{gemm_threads, parallel_units_pay};
use super::scratch::with_columns;
use gemm::Parallelism;
use rayon::prelude::*;

/// Output maps of at most this many pixels take the batched path.
const MAX_PIXELS: usize = 64;
/// Target width (columns) of a block's GEMM.
const TARGET_COLUMNS: usize = 256;

/// True when `g` runs through this module: dense, small output maps, more than one image.
pub fn applies(g: &ConvGeometry) -> bool {
    g.groups == 1 && g.out_pixels() <= MAX_PIXELS && g.batch > 1
}

/// Images per block for the forward and input-gradient passes.
fn block_images(g: &ConvGeometry) -> usize {
    TARGET_COLUMNS.div_ceil(g.out_pixels()).clamp(1, g.batch)
}

/// Fills `cols` (`patch_len x B*P`, row-major) with the im2col matrices of `images`.
fn gather_columns(g: &ConvGeometry, x: &[f32], images: std::ops::Range<usize>, cols: &mut [f32]) {
    let (k, p) = (g.patch_len(), g.out_pixels());
    let width = images.len() * p;
    for (b, image) in images.enumerate() {
        let x_unit = g.input_unit(x, image);
        let mut place = |col: &[f32]| {
            for (row, src) in col.chunks_exact(p).enumerate() {
                cols[row * width + b * p..row * width + (b + 1) * p].copy_from_slice(src);
            }
        };
        if g.is_pointwise() {
            place(x_unit);
        } else {
            with_columns(k * p, |col| {
                im2col(g, x_unit, col);
                place(col);
            });
        }
    }
}

/// Copies the NCHW maps of `images` from `t` (`rows` channels of `P` pixels per image) into
/// `out` (`rows x B*P`, row-major).
fn gather_maps(t: &[f32], rows: usize, p: usize, images: std::ops::Range<usize>, out: &mut [f32]) {
    let width = images.len() * p;
    for (b, image) in images.enumerate() {
        let unit = &t[image * rows * p..(image + 1) * rows * p];
        for (row, src) in unit.chunks_exact(p).enumerate() {
            out[row * width + b * p..row * width + (b + 1) * p].copy_from_slice(src);
        }
    }
}

/// Runs `f(first_image, images, out_block)` over blocks of images of `out` (NCHW, `unit_len`
/// values per image): in parallel with single-threaded gemm when the blocks keep every thread
/// busy, else in order with gemm's own threads.
fn for_each_block<F>(g: &ConvGeometry, out: &mut [f32], unit_len: usize, f: F)
where
    F: Fn(std::ops::Range<usize>, &mut [f32], Parallelism) + Sync,
{
    let per = block_images(g);
    let blocks = g.batch.div_ceil(per);
    let run = |i: usize, chunk: &mut [f32], par| {
        let images = i * per..((i + 1) * per).min(g.batch);
        f(images, chunk, par)
    };
    if parallel_units_pay(blocks) {
        out.par_chunks_mut(per * unit_len)
            .enumerate()
            .for_each(|(i, chunk)| run(i, chunk, Parallelism::None));
    } else {
        let par = gemm_threads();
        for (i, chunk) in out.chunks_mut(per * unit_len).enumerate() {
            run(i, chunk, par);
        }
    }
}

/// Forward pass: per block, `Y (C_out x B*P) = W @ cols`, scattered back to NCHW.
pub fn forward(g: &ConvGeometry, x: &[f32], w: &[f32]) -> Vec<f32> {
    let (k, p, c_out) = (g.patch_len(), g.out_pixels(), g.out_channels);
    let mut y = vec![0.0f32; g.batch * g.out_unit_len()];
    for_each_block(g, &mut y, g.out_unit_len(), |images, y_block, par| {
        let width = images.len() * p;
        let mut cols = vec![0.0f32; k * width];
        gather_columns(g, x, images.clone(), &mut cols);
        let mut wide = vec![0.0f32; c_out * width];
        matmul(
            &mut wide,
            false,
            MatRef::row_major(w, c_out, k),
            MatRef::row_major(&cols, k, width),
            par,
        );
        for (b, y_unit) in y_block.chunks_exact_mut(c_out * p).enumerate() {
            for (row, dst) in y_unit.chunks_exact_mut(p).enumerate() {
                dst.copy_from_slice(&wide[row * width + b * p..row * width + (b + 1) * p]);
            }
        }
    });
    y
}

/// Input gradient: per block, `dcols (patch_len x B*P) = W^T @ dY`, then col2im per image.
pub fn input_grad(g: &ConvGeometry, dy: &[f32], w: &[f32]) -> Vec<f32> {
    let (k, p, c_out) = (g.patch_len(), g.out_pixels(), g.out_channels);
    let mut dx = vec![0.0f32; g.batch * g.in_unit_len()];
    for_each_block(g, &mut dx, g.in_unit_len(), |images, dx_block, par| {
        let width = images.len() * p;
        let mut dy_wide = vec![0.0f32; c_out * width];
        gather_maps(dy, c_out, p, images.clone(), &mut dy_wide);
        let mut dcols = vec![0.0f32; k * width];
        matmul(
            &mut dcols,
            false,
            MatRef::row_major(w, c_out, k).t(),
            MatRef::row_major(&dy_wide, c_out, width),
            par,
        );
        for (b, dx_unit) in dx_block.chunks_exact_mut(g.in_unit_len()).enumerate() {
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
        }
    });
    dx
}

/// Weight gradient: `dW (C_out x patch_len) = dY (C_out x N*P) @ cols^T`, one GEMM over the
/// whole batch on all threads.
pub fn weight_grad(g: &ConvGeometry, x: &[f32], dy: &[f32]) -> Vec<f32> {
    let (k, p, c_out) = (g.patch_len(), g.out_pixels(), g.out_channels);
    let width = g.batch * p;
    let mut cols = vec![0.0f32; k * width];
    let mut dy_wide = vec![0.0f32; c_out * width];
    rayon::join(
        || gather_columns(g, x, 0..g.batch, &mut cols),
        || gather_maps(dy, c_out, p, 0..g.batch, &mut dy_wide),
    );
    let mut dw = vec![0.0f32; c_out * k];
    matmul(
        &mut dw,
        false,
        MatRef::row_major(&dy_wide, c_out, width),
        MatRef::row_major(&cols, k, width).t(),
        gemm_threads(),
    );
    dw
}
