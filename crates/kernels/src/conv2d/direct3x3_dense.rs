//! The direct 3x3 kernel for dense layers on CPUs with AVX-512 (Intel, AMD Zen 5 and Zen 4):
//! output positions of the whole batch in one list, 64 output channels in four vectors,
//! and the weights of 64 input channels at a time held in the L2 cache.
//!
//! The per-image kernels (`direct3x3.rs`, `direct3x3_wide.rs`) read every input channel's
//! weights for each block of positions. On a dense layer with 256-512 channels that is
//! 0.6-2.4 MB per block, more than the cache holds, and on a 7x7 or 4x4 map an image has too few
//! positions to pay for reading them again; im2col + GEMM copies each input value 9 times
//! (2.25 at stride 2) before `gemm` packs it once more. Here:
//!
//! - The input is copied once, each map framed by a zero border (`(H + 2) x (W + 2)`), and
//!   every output position of a group of images is an offset into that copy: positions run
//!   across rows and images, none computed to be thrown away (the per-image kernels round each
//!   map up to whole blocks on rows of `W + 1`).
//! - The positions are sorted by which taps of their window read inside the map (all 9; 6 on
//!   an edge of the map, 4 in a corner), and a register block holds positions of one such
//!   class, which skips the taps that would read the zero border: on a 4x4 output with 512
//!   channels 100 of every 144 taps are read (31% fewer multiply-adds), and 91% of them at
//!   stride 2 from 14x14 to 7x7.
//! - The weights are packed per block of 64 output channels, `(C_in, 9, 64)`, so that the 64
//!   input channels one pass reads (144 KiB, 8 channels where `C_in` is not a multiple of 64)
//!   lie together in the L2 cache, read in order; each pass runs over every position of the
//!   group before the next channels. (Passes of 64 channels measured 0-10% faster than passes
//!   of 8, whose 18 KiB stay in the L1 cache but whose sums go back to memory eight times as
//!   often: `select.rs`.)
//! - A register block is 6 positions x 64 channels (24 accumulators): per (input channel,
//!   tap), 4 weight vectors and 6 broadcast input values feed 24 fused multiply-adds. Between
//!   passes the sums wait in a buffer of the group's positions (`(positions, 64)`); after the
//!   last they are written to the NCHW output.
//!
//! Each output value is one chain of fused multiply-adds from zero: input channels in order,
//! the taps that read inside the map in row-major order within each. A product with the zero
//! border adds a zero, which leaves any sum but a zero one as it was, so these are the values of
//! the chain over all 9 taps (the plain loop the tests compare with) except for the sign of an
//! exact zero, and an infinite or NaN weight on a skipped tap no longer makes the output NaN. A
//! sum stored between passes is the f32 the register held, so the values do not depend on the
//! blocking, the grouping of images or the number of threads.
//!
//! The forward runs it at stride 1 and 2. The stride-1 input gradient is the same computation
//! on the output gradient with the weights flipped in both spatial axes and their channels
//! swapped (`input_grad_into`). Which layers take it is `select.rs`'s measured choice.

use super::direct3x3_rows::spread_rows;
use super::epilogue::Epilogue;
use super::geometry::ConvGeometry;
use super::schedule::SharedOutput;
use super::scratch::Scratch;
use super::weight_packs::{packed, PackKind, WeightPacks};
use rayon::prelude::*;
use std::cmp::Reverse;

/// Output channels per vector.
const LANES: usize = 16;
/// Output channels per block: four vectors.
const CO_BLOCK: usize = 4 * LANES;
/// Input channels per pass over the positions: their weights, 64 x 9 x 64 values (144 KiB).
const CI_BLOCK: usize = 64;
/// Input channels per pass where `C_in` is not a multiple of [`CI_BLOCK`].
const CI_BLOCK_MIN: usize = 8;
/// Output positions per register block.
const P: usize = 6;

/// True when the kernel can compute `g` on this CPU: dense, 3x3, padding 1, stride 1 or 2, a
/// multiple of 64 output channels and of 8 input channels, on an Intel, AMD Zen 5 or Zen 4 CPU with
/// AVX-512 (`cpu_features::avx512_kernels`). The stride-1 input gradient needs the same with the
/// channel counts swapped ([`input_grad_fits`]).
pub(super) fn forward_fits(g: &ConvGeometry) -> bool {
    dense_3x3(g) && fits(g.in_channels, g.out_channels)
}

/// True when the kernel can compute the input gradient of `g`: stride 1, and the
/// transposed convolution's channels (`C_out` in, `C_in` out) as [`forward_fits`] needs them.
pub(super) fn input_grad_fits(g: &ConvGeometry) -> bool {
    dense_3x3(g) && g.stride == 1 && fits(g.out_channels, g.in_channels)
}

fn dense_3x3(g: &ConvGeometry) -> bool {
    g.groups == 1
        && g.kernel_h == 3
        && g.kernel_w == 3
        && g.padding == 1
        && matches!(g.stride, 1 | 2)
}

fn fits(kernel_in: usize, kernel_out: usize) -> bool {
    kernel_out.is_multiple_of(CO_BLOCK)
        && kernel_in.is_multiple_of(CI_BLOCK_MIN)
        && crate::cpu_features::avx512_kernels()
}

/// One convolution as the kernel computes it: `c_in` input maps of `h x w` per image,
/// `c_out` output maps of `oh x ow` (also the weight gradient's, `direct3x3_dense_weight_grad.rs`).
#[derive(Clone, Copy, Debug)]
pub(super) struct Dims {
    pub(super) batch: usize,
    pub(super) c_in: usize,
    pub(super) c_out: usize,
    pub(super) h: usize,
    pub(super) w: usize,
    pub(super) stride: usize,
    pub(super) oh: usize,
    pub(super) ow: usize,
}

impl Dims {
    /// The forward convolution `g` (also its weight gradient's operands).
    pub(super) fn of(g: &ConvGeometry) -> Self {
        Self {
            batch: g.batch,
            c_in: g.in_channels,
            c_out: g.out_channels,
            h: g.in_h,
            w: g.in_w,
            stride: g.stride,
            oh: g.out_h,
            ow: g.out_w,
        }
    }

    /// Width of a bordered input map.
    pub(super) fn row(&self) -> usize {
        self.w + 2
    }

    /// Values of a bordered input map.
    pub(super) fn plane(&self) -> usize {
        (self.h + 2) * self.row()
    }

    /// Output positions per image.
    pub(super) fn out_pixels(&self) -> usize {
        self.oh * self.ow
    }

    /// Where output `pixel` of `image` reads its top-left tap in the bordered input.
    pub(super) fn read(&self, image: usize, pixel: usize) -> usize {
        let (oy, ox) = (pixel / self.ow, pixel % self.ow);
        image * self.c_in * self.plane() + self.stride * (oy * self.row() + ox)
    }

    /// Offset of tap `t` (row-major in the 3x3 window) from a position's top-left read.
    pub(super) fn tap(&self, t: usize) -> usize {
        (t / 3) * self.row() + t % 3
    }
}

/// Forward pass into `y` (every value written), then `then(image, y_image)` on each image's
/// output once it is complete; the packed weights from `packs` where given (`weight_packs.rs`).
pub(super) fn forward_into(
    g: &ConvGeometry,
    x: &[f32],
    (w, packs): (&[f32], Option<&WeightPacks>),
    y: &mut [f32],
    then: Epilogue<'_>,
) {
    assert!(forward_fits(g), "direct3x3_dense: {g:?} does not fit");
    let packed = packed(packs, PackKind::Dense, || {
        pack_forward(w, g.in_channels, g.out_channels)
    });
    convolve(&Dims::of(g), x, &packed, y, then);
}

/// Stride-1 input gradient into `dx` (every value written): the "same" convolution of `dy`
/// with `w` flipped in both spatial axes, input and output channels swapped.
pub(super) fn input_grad_into(g: &ConvGeometry, dy: &[f32], w: &[f32], dx: &mut [f32]) {
    assert!(input_grad_fits(g), "direct3x3_dense: {g:?} does not fit");
    let (c_in, c_out) = (g.in_channels, g.out_channels);
    // Kernel output channel `i` (an input channel of the layer), kernel input `o`, tap `t`.
    let packed = pack_input_grad(w, c_in, c_out);
    let dims = Dims {
        batch: g.batch,
        c_in: c_out,
        c_out: c_in,
        h: g.out_h,
        w: g.out_w,
        stride: 1,
        oh: g.in_h,
        ow: g.in_w,
    };
    convolve(&dims, dy, &packed, dx, &|_, _| {});
}

/// The layer's weights `(c_out, c_in, 3, 3)` as the forward reads them: per block of 64
/// output channels, `(c_in, 9, 64)`, the block's 64 rows of `c_in x 9` values turned into
/// columns.
fn pack_forward(w: &[f32], c_in: usize, c_out: usize) -> Scratch {
    let row = c_in * 9;
    assert_eq!(w.len(), c_out * row, "direct3x3_dense: weights");
    let mut packed = Scratch::take(w.len());
    packed
        .par_chunks_mut(row * CO_BLOCK)
        .zip(w.par_chunks(row * CO_BLOCK))
        .for_each(|(dst, src)| {
            // One input channel at a time: 64 runs of 9 values read (one per row), 9 x 64
            // written in order.
            for (i, dst) in dst.chunks_exact_mut(9 * CO_BLOCK).enumerate() {
                for (lane, src_row) in src.chunks_exact(row).enumerate() {
                    for (t, &v) in src_row[i * 9..][..9].iter().enumerate() {
                        dst[t * CO_BLOCK + lane] = v;
                    }
                }
            }
        });
    packed
}

/// The layer's weights `(c_out, c_in, 3, 3)` as the stride-1 input gradient reads them: the
/// transposed kernel's output channel `i` (a layer input channel), input `o`, tap `t` holds
/// `w[o][i][8 - t]` (flipped in both spatial axes); per block of 64 of those outputs,
/// `(c_out, 9, 64)`. Each (block, `o`) is one run of 64 x 9 layer values, turned.
fn pack_input_grad(w: &[f32], c_in: usize, c_out: usize) -> Scratch {
    assert_eq!(w.len(), c_out * c_in * 9, "direct3x3_dense: weights");
    let mut packed = Scratch::take(w.len());
    packed
        .par_chunks_mut(c_out * 9 * CO_BLOCK)
        .enumerate()
        .for_each(|(block, dst)| {
            for (o, dst) in dst.chunks_exact_mut(9 * CO_BLOCK).enumerate() {
                let src = &w[(o * c_in + block * CO_BLOCK) * 9..][..9 * CO_BLOCK];
                for (lane, taps) in src.chunks_exact(9).enumerate() {
                    for (t, &v) in taps.iter().enumerate() {
                        dst[(8 - t) * CO_BLOCK + lane] = v;
                    }
                }
            }
        });
    packed
}

/// Copies NCHW `x` (`batch x c_in` maps of `h x w`) into `(batch, c_in, h + 2, w + 2)` with
/// a zero border (`direct3x3.rs`'s `spread_rows`, the per-image kernels' zero-bordered planes
/// on rows of `w + 2`), in parallel over images.
pub(super) fn bordered(d: &Dims, x: &[f32]) -> Scratch {
    let (row, plane, map) = (d.row(), d.plane(), d.h * d.w);
    assert_eq!(
        x.len(),
        d.batch * d.c_in * map,
        "direct3x3_dense: input length"
    );
    let mut out = Scratch::take(d.batch * d.c_in * plane);
    out.par_chunks_mut(d.c_in * plane)
        .zip(x.par_chunks(d.c_in * map))
        .for_each(|(dst, src)| spread_rows(src, (d.h, d.w), (row, row + 1), dst, plane));
    out
}

/// Images per parallel task when the tasks split the batch: about two tasks per thread (each
/// reads all the weights once, so not more), at least one image.
fn images_per_task(batch: usize) -> usize {
    batch.div_ceil(2 * rayon::current_num_threads()).max(1)
}

/// `y[n][co][p] = sum_ci sum_t packed(co, ci, t) * x_bordered[n][ci][p + tap t]` for every
/// image, output channel and position, then `then(image, y_image)` on each image.
///
/// Each task reads all the weights of its output channels and all the input of its images.
/// Where the weights are the larger (small maps, many channels), the tasks split the output
/// channels, every task over the whole batch, and the epilogue runs once all are done;
/// elsewhere they split the batch into groups of images.
fn convolve(d: &Dims, x: &[f32], packed: &[f32], y: &mut [f32], then: Epilogue<'_>) {
    let opix = d.out_pixels();
    assert_eq!(
        y.len(),
        d.batch * d.c_out * opix,
        "direct3x3_dense: output length"
    );
    assert_eq!(
        packed.len(),
        d.c_out * d.c_in * 9,
        "direct3x3_dense: weights"
    );
    let x = bordered(d, x);
    let image_out = d.c_out * opix;
    if packed.len() > x.len() {
        let out = SharedOutput::new(y);
        (0..d.c_out / CO_BLOCK).into_par_iter().for_each(|block| {
            let co = block * CO_BLOCK..(block + 1) * CO_BLOCK;
            // SAFETY: `forward_fits` / `input_grad_fits` checked AVX-512; each task writes
            // only its own output channels, of `out`'s `out.len()` values (checked inside).
            unsafe { convolve_images(d, d.batch, &x, packed, (out.start(), out.len()), co) };
        });
        y.par_chunks_mut(image_out)
            .enumerate()
            .for_each(|(n, y_image)| then(n, y_image));
        return;
    }
    let per_task = images_per_task(d.batch);
    y.par_chunks_mut(per_task * image_out)
        .zip(x.par_chunks(per_task * d.c_in * d.plane()))
        .enumerate()
        .for_each(|(task, (y_task, x_task))| {
            let images = y_task.len() / image_out;
            let out = (y_task.as_mut_ptr(), y_task.len());
            // SAFETY: as above; the task's output is its own slice.
            unsafe { convolve_images(d, images, x_task, packed, out, 0..d.c_out) };
            for (i, y_image) in y_task.chunks_exact_mut(image_out).enumerate() {
                then(task * per_task + i, y_image);
            }
        });
}

/// [`convolve`] for output channels `co` of the `images` images of one task: `x` their
/// bordered maps, `y` (start and length) their output maps.
///
/// # Safety
/// The CPU supports AVX-512F; `y` is valid for writes of its length, and no other thread
/// touches channels `co` of it meanwhile.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn convolve_images(
    d: &Dims,
    images: usize,
    x: &[f32],
    packed: &[f32],
    (y, y_len): (*mut f32, usize),
    co: std::ops::Range<usize>,
) {
    let (plane, opix) = (d.plane(), d.out_pixels());
    let positions = images * opix;
    let plan = BlockPlan::new(d, images);
    let last_read = plan.reads.iter().max().copied().unwrap_or(0) + (d.c_in - 1) * plane;
    let last_read = last_read + d.tap(8);
    let last_write = plan.writes.iter().max().copied().unwrap_or(0) + (d.c_out - 1) * opix;
    assert!(
        x.len() == images * d.c_in * plane
            && positions > 0
            && last_read < x.len()
            && y_len == images * d.c_out * opix
            && last_write < y_len
            && packed.len() == d.c_out * d.c_in * 9
            && co.start.is_multiple_of(CO_BLOCK)
            && co.end <= d.c_out
            && d.c_out.is_multiple_of(CO_BLOCK)
            && d.c_in.is_multiple_of(CI_BLOCK_MIN),
        "direct3x3_dense: operands do not fit {d:?}"
    );
    let per_pass = if d.c_in.is_multiple_of(CI_BLOCK) {
        CI_BLOCK
    } else {
        CI_BLOCK_MIN
    };
    let blocks = plan.blocks.len();
    let mut sums = Scratch::take(blocks * P * CO_BLOCK);
    for co in co.step_by(CO_BLOCK) {
        let block_weights = &packed[co * d.c_in * 9..][..d.c_in * 9 * CO_BLOCK];
        for ci in (0..d.c_in).step_by(per_pass) {
            let pass = ChannelPass {
                x: x.as_ptr().add(ci * plane),
                plane,
                w: block_weights.as_ptr().add(ci * 9 * CO_BLOCK),
                channels: per_pass,
                first: ci == 0,
            };
            let last = ci + per_pass == d.c_in;
            for (b, block) in plan.blocks.iter().enumerate() {
                let sums = sums.as_mut_ptr().add(b * P * CO_BLOCK);
                let slots = block.first..block.first + P;
                let taps = &plan.taps[block.taps];
                let acc = pass.block(&plan.reads[slots.clone()], taps, sums);
                if last {
                    let writes = &plan.writes[block.first..][..block.valid];
                    write_back(&acc, (y, writes, co, opix));
                } else {
                    store(&acc, sums);
                }
            }
        }
    }
}

/// The register blocks of one task's positions: the positions sorted by which taps of the 3x3
/// window read inside the input map (all 9 inside it; on the maps' edges 6, in the corners 4,
/// on maps of one row or column fewer), so that the 6 positions of a block read the same taps
/// and skip the others, whose reads are the zero border. Each class's last block fills its spare
/// slots with the class's last position, computed and not written back.
struct BlockPlan {
    /// Per slot, the position's top-left read in the task's bordered input.
    reads: Vec<usize>,
    /// Per slot, the position's value's index in the task's output (channel 0).
    writes: Vec<usize>,
    /// The taps each class reads: `(t, offset)` pairs, `t` row-major in the window.
    taps: Vec<Vec<(usize, usize)>>,
    blocks: Vec<SlotBlock>,
}

/// [`P`] consecutive slots of a [`BlockPlan`].
struct SlotBlock {
    /// The block's first slot.
    first: usize,
    /// Slots holding positions of their own, written back.
    valid: usize,
    /// The class of its positions: an index into [`BlockPlan::taps`].
    taps: usize,
}

impl BlockPlan {
    fn new(d: &Dims, images: usize) -> Self {
        let opix = d.out_pixels();
        // Which rows (columns) of the window read inside the map, as 3 bits.
        let inside = |out: usize, len: usize| -> usize {
            (0..3)
                .filter(|&k| (1..=len).contains(&(d.stride * out + k)))
                .map(|k| 1 << k)
                .sum()
        };
        let class = |pixel: usize| {
            let rows = inside(pixel / d.ow, d.h);
            let cols = inside(pixel % d.ow, d.w);
            (0..9)
                .filter(|t| rows & (1 << (t / 3)) != 0 && cols & (1 << (t % 3)) != 0)
                .fold(0usize, |mask, t| mask | 1 << t)
        };
        let mut order: Vec<(Reverse<usize>, usize)> = (0..images * opix)
            .map(|q| (Reverse(class(q % opix)), q))
            .collect();
        // The full windows first, then the fewer taps; within a class the positions in order.
        order.sort_unstable();
        let mut plan = Self {
            reads: Vec::new(),
            writes: Vec::new(),
            taps: Vec::new(),
            blocks: Vec::new(),
        };
        for run in order.chunk_by(|a, b| a.0 == b.0) {
            let Reverse(mask) = run[0].0;
            plan.taps.push(
                (0..9)
                    .filter(|t| mask & (1 << t) != 0)
                    .map(|t| (t, d.tap(t)))
                    .collect(),
            );
            for chunk in run.chunks(P) {
                plan.blocks.push(SlotBlock {
                    first: plan.reads.len(),
                    valid: chunk.len(),
                    taps: plan.taps.len() - 1,
                });
                for k in 0..P {
                    let q = chunk[k.min(chunk.len() - 1)].1;
                    let (image, pixel) = (q / opix, q % opix);
                    plan.reads.push(d.read(image, pixel));
                    plan.writes.push(image * d.c_out * opix + pixel);
                }
            }
        }
        plan
    }
}

/// Never called: the kernel fits only x86-64 CPUs with AVX-512.
#[cfg(not(target_arch = "x86_64"))]
unsafe fn convolve_images(
    _: &Dims,
    _: usize,
    _: &[f32],
    _: &[f32],
    _: (*mut f32, usize),
    _: std::ops::Range<usize>,
) {
    unreachable!("direct3x3_dense runs only on x86-64")
}

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::{
    __m512, _mm512_fmadd_ps, _mm512_loadu_ps, _mm512_set1_ps, _mm512_setzero_ps, _mm512_storeu_ps,
};

/// One pass of `channels` input channels over register blocks of positions.
#[cfg(target_arch = "x86_64")]
struct ChannelPass {
    /// The first input channel's bordered map of the task's first image.
    x: *const f32,
    /// Values between consecutive input channels' maps.
    plane: usize,
    /// The first input channel's packed weights of this block of output channels.
    w: *const f32,
    channels: usize,
    /// The first pass starts from zero, the others from the sums stored by the one before.
    first: bool,
}

#[cfg(target_arch = "x86_64")]
impl ChannelPass {
    /// The 6 x 4 vectors of sums of positions `reads` after this pass, over the taps `taps`
    /// (`(t, offset)`: the weight's tap `t` read `offset` past a position's top-left read).
    ///
    /// # Safety
    /// AVX-512F; every read `reads[k] + c * plane + offset` (`c < channels`) lies in the input,
    /// every `t < 9`, and `sums` holds 6 x 64 values.
    #[target_feature(enable = "avx512f")]
    #[inline]
    unsafe fn block(
        &self,
        reads: &[usize],
        taps: &[(usize, usize)],
        sums: *const f32,
    ) -> [[__m512; 4]; P] {
        let mut acc = [[_mm512_setzero_ps(); 4]; P];
        if !self.first {
            for (k, acc_k) in acc.iter_mut().enumerate() {
                for (v, a) in acc_k.iter_mut().enumerate() {
                    *a = _mm512_loadu_ps(sums.add(k * CO_BLOCK + v * LANES));
                }
            }
        }
        // (No closures here: they would not inherit the target feature, nor be inlined.)
        let mut inputs = [self.x; P];
        for (input, &read) in inputs.iter_mut().zip(reads) {
            *input = self.x.add(read);
        }
        for c in 0..self.channels {
            let w_c = self.w.add(c * 9 * CO_BLOCK);
            let channel = c * self.plane;
            for &(t, tap) in taps {
                let read = channel + tap;
                let mut wv = [_mm512_setzero_ps(); 4];
                for (v, wv) in wv.iter_mut().enumerate() {
                    *wv = _mm512_loadu_ps(w_c.add(t * CO_BLOCK + v * LANES));
                }
                for (acc_k, input) in acc.iter_mut().zip(inputs) {
                    let xv = _mm512_set1_ps(*input.add(read));
                    for (a, wv) in acc_k.iter_mut().zip(wv) {
                        *a = _mm512_fmadd_ps(wv, xv, *a);
                    }
                }
            }
        }
        acc
    }
}

/// Stores a register block's sums for the next pass.
///
/// # Safety
/// AVX-512F; `sums` holds 6 x 64 values.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn store(acc: &[[__m512; 4]; P], sums: *mut f32) {
    for (k, acc_k) in acc.iter().enumerate() {
        for (v, a) in acc_k.iter().enumerate() {
            _mm512_storeu_ps(sums.add(k * CO_BLOCK + v * LANES), *a);
        }
    }
}

/// Writes a register block's final sums to the NCHW output: position `k < writes.len()` of
/// channel `co + j` at `y[writes[k] + (co + j) * opix]`.
///
/// # Safety
/// AVX-512F; every such index lies in the output.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn write_back(
    acc: &[[__m512; 4]; P],
    (y, writes, co, opix): (*mut f32, &[usize], usize, usize),
) {
    let mut block = [[0.0f32; CO_BLOCK]; P];
    store(acc, block.as_mut_ptr().cast());
    for (values, &at) in block.iter().zip(writes) {
        let position = y.add(co * opix + at);
        for (j, &v) in values.iter().enumerate() {
            *position.add(j * opix) = v;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::reference::forward_chain;
    use super::super::{differing_bits, test_values_fine as values};
    use super::*;

    #[test]
    fn forward_and_input_grad_are_the_plain_loop_bit_for_bit() {
        if !crate::cpu_features::avx512_kernels() {
            eprintln!("skipped: the kernel runs only on Intel, AMD Zen 5 and Zen 4 with AVX-512");
            return;
        }
        // (batch, c_in, c_out, h, w, stride): positions that end mid-block, blocks that span
        // images, 1 and 2 blocks of output channels, 1-3 passes of 8 input channels and 2 of
        // 64, odd and even maps at stride 2.
        for (batch, c_in, c_out, h, w, stride) in [
            (3, 8, 64, 5, 7, 1),
            (2, 128, 64, 5, 5, 1),
            (2, 24, 128, 4, 4, 1),
            (5, 16, 64, 7, 7, 2),
            (2, 8, 64, 6, 9, 2),
            (1, 16, 64, 1, 1, 1),
        ] {
            let g = ConvGeometry::new(&[batch, c_in, h, w], &[c_out, c_in, 3, 3], stride, 1, 1)
                .unwrap();
            let x = values(batch * c_in * h * w, 7);
            let wt = values(c_out * c_in * 9, 11);
            let mut y = vec![f32::NAN; g.units() * g.out_unit_len()];
            let seen = std::sync::Mutex::new(Vec::new());
            forward_into(&g, &x, (&wt, None), &mut y, &|n, y_n| {
                assert!(y_n.iter().all(|v| v.is_finite()));
                seen.lock().unwrap().push(n);
            });
            let d = Dims::of(&g);
            let want = forward_chain(&d, &x, |o, i, t| wt[(o * c_in + i) * 9 + t]);
            assert_eq!(differing_bits(&y, &want), 0, "forward {d:?}");
            let mut seen = seen.into_inner().unwrap();
            seen.sort_unstable();
            assert_eq!(
                seen,
                (0..batch).collect::<Vec<_>>(),
                "epilogue once per image"
            );
        }
        // Input gradient: 64 and 128 input channels (the transposed kernel's outputs), 8, 16
        // and 128 out (one pass of 64 input channels of the transposed kernel: two).
        for (batch, c_in, c_out, h, w) in [(2, 64, 8, 5, 6), (3, 128, 16, 4, 4), (2, 64, 128, 3, 4)]
        {
            let g = ConvGeometry::new(&[batch, c_in, h, w], &[c_out, c_in, 3, 3], 1, 1, 1).unwrap();
            let dy = values(batch * c_out * h * w, 3);
            let wt = values(c_out * c_in * 9, 5);
            let mut dx = vec![f32::NAN; batch * c_in * h * w];
            input_grad_into(&g, &dy, &wt, &mut dx);
            let d = Dims {
                batch,
                c_in: c_out,
                c_out: c_in,
                h,
                w,
                stride: 1,
                oh: h,
                ow: w,
            };
            let want = forward_chain(&d, &dy, |i, o, t| wt[(o * c_in + i) * 9 + 8 - t]);
            assert_eq!(differing_bits(&dx, &want), 0, "input gradient {d:?}");
        }
    }
}
