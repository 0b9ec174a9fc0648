//! The forward and the input gradient of 1x1 convolutions over the whole batch, read and
//! written in NCHW (chosen on AMD Zen 5, and on AMD Zen 4 for the shapes measured faster there;
//! the kernel runs wherever the sixteen-lane kernels do): `y[b, co, p] = sum_ci w[co, ci] *
//! x[b, ci, p]` and `dx[b, ci, p] = sum_co w[co, ci] * dy[b, co, p]`, which otherwise run as one
//! wide GEMM between copies in and out of a `(C, N * OH*OW)` matrix (`batched.rs`, 7x7 and 4x4
//! maps) or as one GEMM per image (14x14).
//!
//! The batch's columns `(b, p)` run image after image, in blocks of 3 vectors of 16. Per block
//! and pass of summed channels ([`summed_per_pass`]: 512 on AMD Zen 4, read from its L2 cache;
//! 128 elsewhere, which stay in L1), the block's input columns are first packed into rows of 48
//! values (a vector whose columns cross from image `b` into `b + 1` is read as two masked
//! pieces, one per image; maps of at least 16 pixels make two enough), which every 8 output
//! rows in turn then read, running in 24 accumulators: per summed channel, 3 vector loads, 8
//! weights broadcast from `w` where they lie (consecutive in a row of `w` for the input
//! gradient; for the forward one per row, `C_in` apart), 24 FMAs. Between passes a block's sums
//! wait in a buffer of the same rows; the last pass writes them into the output, again as
//! masked pieces. Every value is one FMA chain over the summed channels in order, whatever the
//! passes, blocks and threads (docs/determinism.md). The forward's epilogue (a folded
//! BatchNorm, the residual join, pooling) then runs per image over its output.
//!
//! On 4x4 maps (AMD Zen 4, forward only) the loops turn: each pass packs every tile's columns
//! first, then each block of 8 output channels runs over all the tiles with its weights in L1
//! ([`forward_rows_outer_into`]); the same blocks and the same values.
//!
//! The same blocks run the forward and the input gradient of 1x1 stride-2 layers
//! (`pointwise_strided.rs`) and the products of the dense 3x3 stride-2 input gradient's phases
//! (`input_grad_phases.rs`, as one image of `N * OH*OW` columns).

use super::geometry::ConvGeometry;
use super::schedule::SharedOutput;
use super::scratch::{with_columns, Scratch};
use rayon::prelude::*;

/// f32 lanes of a vector.
const LANES: usize = 16;
/// Output channels of a register block.
const ROWS: usize = 8;
/// Column vectors of a register block.
const VECTORS: usize = 3;
/// Summed channels per pass over a block, whose packed input columns (24 KB) then stay in the
/// L1 cache.
const KC: usize = 128;
/// Summed channels per pass on AMD Zen 4, where the packed columns (96 KB) are read from L2.
const KC_ZEN4: usize = 512;

/// How many summed channels a pass over a block takes: [`KC_ZEN4`] on AMD Zen 4, else [`KC`].
/// The passes change no value (each one FMA chain over the summed channels in order), only how
/// often a block's 24 sums are stored and loaded again. On Zen 4 the fewer passes measured
/// faster: `bench-one` profiles of ResNeXt-50 (2 threads, 3 alternating rounds, ms per step,
/// passes of 128 -> 512), the 7x7-map 1x1 rows at batch 16 forward 53.5-55.5 -> 51.2-52.5,
/// input gradient 59.7-62.3 -> 58.2-61.9, evaluation 53.0-59.5 -> 50.8-54.6; at batch 32
/// forward 105.5-109.2 -> 102.5-106.1, input gradient 112.2-117.1 -> 109.6-113.6, evaluation
/// 105.3-110.3 -> 101.0-102.3. `conv_passes` (CPU time of 2 threads, best of 9, 2 rounds): the
/// forward of (512 -> 2048) at 7x7, batch 16, 15.94-16.06 -> 15.39-15.50 ms; the stride-2 1x1
/// layers and the dense stride-2 3x3 input gradient's phase products level.
fn summed_per_pass() -> usize {
    if crate::cpu_features::zen4() {
        KC_ZEN4
    } else {
        KC
    }
}

/// True when `g`'s input gradient runs here: where [`fits`], on AMD Zen 5 server cores
/// (`cpu_features.rs`'s `CpuKind`; Intel's AVX-512 CPUs keep the GEMMs, unmeasured), where
/// `conv_passes` measured it faster than the GEMMs (the whole-batch one with its copies, or one
/// per image): maps of 16 to 64 pixels, and maps of up to 196 pixels (14x14) with at least 256
/// input channels (at 14x14 level with 128; 1.2-1.45x slower at 28x28). On AMD Zen 4 the same
/// maps less the 4x4 ones: `conv_passes` there, wall clock of 2 threads, best of 7, 3
/// alternating rounds (best / median), the GEMMs -> the blocks: (1024 -> 256) at 7x7 2.76 / 2.96
/// -> 2.20 / 2.31 ms at batch 16, 5.48 / 5.96 -> 4.34 / 4.39 at batch 32; (512 -> 256) at 14x14
/// 4.74 / 4.82 -> 4.18 / 4.20 at batch 16; but (1024 -> 2048) at 4x4 5.33 / 5.67 -> 7.50 / 8.70
/// at batch 16, and at batch 32 mixed ((2048 -> 512) 8.29 / 8.59 -> 5.92 / 6.02, (1024 -> 2048)
/// 12.91 / 12.92 -> 13.96 / 14.57).
pub fn applies(g: &ConvGeometry) -> bool {
    fits(g) && (g.out_pixels() <= 64 || g.in_channels >= 256) && chosen_here(g)
}

/// The CPU side of [`applies`] and of `pointwise_strided.rs`'s: every map the blocks take on
/// AMD Zen 5, the outputs of more than 16 pixels (not 4x4) on AMD Zen 4.
pub(super) fn chosen_here(g: &ConvGeometry) -> bool {
    crate::cpu_features::zen5() || (crate::cpu_features::zen4() && g.out_pixels() > 16)
}

/// `then(b, y_b)` on each image's output (`image_len` values), in parallel over the images.
pub(super) fn per_image(y: &mut [f32], image_len: usize, then: super::epilogue::Epilogue<'_>) {
    y.par_chunks_mut(image_len)
        .enumerate()
        .for_each(|(b, y_b)| then(b, y_b));
}

/// True when the kernel can compute `g`'s forward and input gradient on this CPU: a dense 1x1
/// stride-1 unpadded layer that [`blocks_take`].
fn fits(g: &ConvGeometry) -> bool {
    g.is_pointwise() && blocks_take(g)
}

/// What the blocks need of any layer they run: dense, more than one image, output maps of 16
/// to 196 pixels, channel counts multiples of 8, a CPU where the sixteen-lane kernels run
/// (`cpu_features.rs`'s `avx512_kernels`: Intel with AVX-512, AMD Zen 5 and Zen 4).
pub(super) fn blocks_take(g: &ConvGeometry) -> bool {
    g.groups == 1
        && g.batch > 1
        && (LANES..=196).contains(&g.out_pixels())
        && g.in_channels.is_multiple_of(ROWS)
        && g.out_channels.is_multiple_of(ROWS)
        && crate::cpu_features::avx512_kernels()
}

/// Where the 16 columns of one vector lie in an NCHW operand, as offsets from its channel's
/// first value in image 0: lanes `first_mask` at `first + lane`, lanes `second_mask` (the
/// columns of the next image, if any) at `second + lane`. Empty masks read and write nothing.
#[derive(Clone, Copy, Debug)]
struct Span {
    first: usize,
    first_mask: u16,
    second: usize,
    second_mask: u16,
}

impl Span {
    /// Vector `v` of the `batch * p` columns of an operand with `channels` channels of `p`
    /// pixels per image (`p >= 16`).
    fn of(v: usize, (batch, p): (usize, usize), channels: usize) -> Self {
        let j = v * LANES;
        let (b, p0) = (j / p, j % p);
        let lanes = (batch * p - j).min(LANES);
        let n1 = (p - p0).min(lanes);
        let n2 = lanes - n1;
        let first = b * channels * p + p0;
        let first_mask = lane_mask(0, n1);
        if n2 == 0 {
            Self {
                first,
                first_mask,
                second: first,
                second_mask: 0,
            }
        } else {
            Self {
                first,
                first_mask,
                second: (b + 1) * channels * p - n1,
                second_mask: lane_mask(n1, n2),
            }
        }
    }

    /// True when all 16 columns lie in one image's row (no second piece): the vector is read
    /// and written whole, with plain loads and stores.
    fn whole(&self) -> bool {
        self.first_mask == u16::MAX
    }
}

/// Lanes `from..from + n` set (also the stem kernels' row pieces and plane masks,
/// `stem_direct.rs` and `stem_column_planes.rs`).
pub(super) fn lane_mask(from: usize, n: usize) -> u16 {
    (((1u32 << n) - 1) << from) as u16
}

/// Input gradient: `dx[b, ci, p] = sum_co w[co, ci] * dy[b, co, p]`, every value of `dx`
/// written, in parallel over blocks of 3 column vectors (a block's 8 weights of one output
/// channel are consecutive in `w`'s row).
pub fn input_grad_into(g: &ConvGeometry, dy: &[f32], w: &[f32], dx: &mut [f32]) {
    let (batch, p, ci, co) = (g.batch, g.out_pixels(), g.in_channels, g.out_channels);
    assert!(fits(g), "pointwise_nchw: {g:?}");
    assert_eq!(w.len(), co * ci, "pointwise_nchw: weight size");
    assert_eq!(
        dy.len(),
        batch * co * p,
        "pointwise_nchw: output gradient size"
    );
    assert_eq!(
        dx.len(),
        batch * ci * p,
        "pointwise_nchw: input gradient size"
    );
    // SAFETY: `fits` checked AVX-512F, `C_in` a multiple of 8 and `p >= 16`.
    unsafe { transposed_product_into(w, (co, ci), dy, (batch, p), dx) }
}

/// True when `g`'s forward runs here: where its input gradient does ([`applies`]), less the
/// 4x4 maps. `conv_passes`, wall clock of 2 threads, best of 7, 2 rounds, the GEMMs with their
/// copies (`batched.rs` at 7x7, one per image at 14x14) -> the blocks: batch 16, (1024 -> 256)
/// at 7x7 1.29-1.36 -> 0.90-0.91 ms, (256 -> 1024) 1.12-1.15 -> 0.91-0.92, (512 -> 256) at 14x14
/// 1.86-1.89 -> 1.71-1.77, (256 -> 512) 1.92-1.95 -> 1.74-1.77, (512 -> 128) 0.98-0.99 ->
/// 0.88-0.90; batch 32, (1024 -> 256) at 7x7 2.09-2.11 -> 1.88-1.99, (256 -> 1024) 1.91-2.11 ->
/// 1.81-1.82. At 4x4 the blocks were slower at batch 16 ((2048 -> 512) 1.19-1.21 -> 1.24-1.26)
/// and within 3% at batch 32: those keep the GEMM. On AMD Zen 4 the 7x7 and 14x14 maps (as
/// [`applies`], best / median of 3): (1024 -> 256) 2.60 / 2.62 -> 2.18 / 2.22 ms at batch 16,
/// 5.56 / 5.57 -> 4.59 / 4.59 at batch 32. At 14x14 the blocks measured level with passes of
/// 128 ((512 -> 256) 4.34 / 4.36 -> 4.34 / 4.50 at batch 16) and 0-5% faster with the passes of
/// 512 ([`summed_per_pass`]): `conv_passes`, CPU time of 2 threads, best of 7, 3 alternating
/// rounds, (512 -> 256) 8.69-9.04 -> 8.35-8.69 ms at batch 16 and 17.45-19.40 -> 16.95-18.44 at
/// 32, (256 -> 512) 8.63-9.29 -> 8.41-9.20 and 17.58-18.64 -> 16.98-18.18, (512 -> 512)
/// 16.79-17.53 -> 15.88-17.39 at batch 16; wall clock, (512 -> 128) level (2.30-2.70 ->
/// 2.28-2.75 at batch 16, 4.57-4.77 -> 4.56-4.81 at 32). In ResNeXt-50's `bench-one` profiles
/// (3 alternating rounds at batch 32, 7 at 16) the 14x14 1x1 rows went from 82.6-85.2 to
/// 78.1-79.8 ms in evaluation and 79.5-81.7 to 77.7-80.1 in the forward at batch 32, and at
/// batch 16 from a best of 39.3 (median 40.4) to 38.3 (40.0) and 40.2 (40.6) to 39.0 (40.0). At
/// 28x28 the blocks were 2-6% slower (`conv_passes`, CPU time, (256 -> 128) 9.12-9.50 ->
/// 9.34-10.36 at batch 16): those keep the GEMM.
///
/// On AMD Zen 4 the 4x4 maps' forward runs here too, with the loops turned
/// ([`turns_loops`]).
pub fn forward_applies(g: &ConvGeometry) -> bool {
    (applies(g) && g.out_pixels() > 16) || (fits(g) && turns_loops(g.out_pixels()))
}

/// True when [`forward_product_into`] runs over maps of `p` pixels with its loops turned
/// ([`forward_rows_outer_into`]): 4x4 maps, on AMD Zen 4. `conv_passes` there (CPU time of 2
/// threads, best of 7, 3 alternating rounds, one GEMM over the batch with its copies -> the
/// turned blocks, ms): ResNeXt-50's layers
/// (2048 -> 1024) 10.84-11.36 -> 10.48-10.90 at batch 16 and 21.24-22.45 -> 20.98-21.83 at
/// batch 32, (1024 -> 2048) 11.00-12.61 -> 10.49-10.97 and 22.56-23.51 -> 20.71-22.31;
/// ResNet-50's (512 -> 2048) at batch 32 11.57-12.81 -> 10.38-10.95, (2048 -> 512) at batch
/// 16 level (5.67-6.05 against 5.63-6.69). The blocks in their usual order had been slower
/// there than the GEMM: each tile of columns read the whole weight (up to 8 MB).
pub(super) fn turns_loops(p: usize) -> bool {
    p == LANES && crate::cpu_features::zen4()
}

/// Forward of `g` (as [`forward_applies`] takes it): `y[b, co, q] = sum_ci w[co, ci] *
/// x[b, ci, q]`, every value of `y` written, each one FMA chain over the input channels in
/// order; then `then(b, y_b)` on each image's output, in parallel over the images.
pub fn forward_into(
    g: &ConvGeometry,
    x: &[f32],
    w: &[f32],
    y: &mut [f32],
    then: super::epilogue::Epilogue<'_>,
) {
    let (batch, p, ci, co) = (g.batch, g.out_pixels(), g.in_channels, g.out_channels);
    assert!(fits(g), "pointwise_nchw: {g:?}");
    assert_eq!(w.len(), co * ci, "pointwise_nchw: weight size");
    assert_eq!(x.len(), batch * ci * p, "pointwise_nchw: input size");
    assert_eq!(y.len(), batch * co * p, "pointwise_nchw: output size");
    // SAFETY: `fits` checked AVX-512F, both channel counts multiples of 8 and `p >= 16`.
    unsafe { forward_product_into(w, (ci, co), x, (batch, p), y) };
    per_image(y, co * p, then);
}

/// `dx[b, ci, q] = sum_co w[co, ci] * dy[b, co, q]` for `w` of `(C_out, C_in)` values
/// (row-major), `dy` of `(batch, C_out, p)` and `dx` of `(batch, C_in, p)` (every value
/// written), each value one FMA chain over `co` in order, in parallel over blocks of 3 column
/// vectors: the 1x1 input gradient, and with `batch` 1 any product `A^T B` of row-major
/// matrices (`input_grad_phases.rs`: `A` the stacked weight taps of a stride phase, `B` the
/// shifted output gradients they read).
///
/// # Safety
/// AVX-512F; `C_in` a multiple of 8; `p` at least 16 (or `batch` 1).
pub(super) unsafe fn transposed_product_into(
    w: &[f32],
    (co, ci): (usize, usize),
    dy: &[f32],
    (batch, p): (usize, usize),
    dx: &mut [f32],
) {
    products_into::<false>(w, (co, ci), dy, (batch, p), dx)
}

/// Forward of a 1x1 convolution through the same blocks: `y[b, co, q] = sum_ci w[co, ci] *
/// x[b, ci, q]`, the weights read where they lie (a block's 8 weights of one input channel
/// `C_in` apart); with the loops turned where [`turns_loops`] (the same values).
///
/// # Safety
/// As [`transposed_product_into`], with `C_out` a multiple of 8.
pub(super) unsafe fn forward_product_into(
    w: &[f32],
    (ci, co): (usize, usize),
    x: &[f32],
    (batch, p): (usize, usize),
    y: &mut [f32],
) {
    if turns_loops(p) {
        forward_rows_outer_into(w, (ci, co), x, batch, y)
    } else {
        products_into::<true>(w, (ci, co), x, (batch, p), y)
    }
}

/// [`transposed_product_into`] (`ROWS_APART` false: `w` is `(k, m)`) or
/// [`forward_product_into`] (true: `w` is `(m, k)`).
unsafe fn products_into<const ROWS_APART: bool>(
    w: &[f32],
    (co, ci): (usize, usize),
    dy: &[f32],
    (batch, p): (usize, usize),
    dx: &mut [f32],
) {
    assert!(ci.is_multiple_of(ROWS) && (p >= LANES || batch == 1));
    assert!(w.len() == co * ci && dy.len() == batch * co * p && dx.len() == batch * ci * p);
    let vectors = (batch * p).div_ceil(LANES);
    let dy_spans: Vec<Span> = (0..vectors).map(|v| Span::of(v, (batch, p), co)).collect();
    let dx_spans: Vec<Span> = (0..vectors).map(|v| Span::of(v, (batch, p), ci)).collect();
    let shared = SharedOutput::new(dx);
    let per_pass = summed_per_pass();
    (0..vectors.div_ceil(VECTORS))
        .into_par_iter()
        .for_each(|tile| {
            let vs = tile_vectors(tile, vectors);
            let (ins, outs) = (&dy_spans[vs.clone()], &dx_spans[vs]);
            // The pass's `dy` columns, packed (`per_pass` rows of `WIDTH`), then each block of
            // input channels' running sums between passes (`ci` rows of `WIDTH`), 64-byte
            // aligned.
            with_columns(LANES + (per_pass + ci) * WIDTH, |buf| {
                let skip = buf.as_ptr().align_offset(64).min(LANES);
                let (panel, sums) = buf[skip..].split_at_mut(per_pass * WIDTH);
                for k0 in (0..co).step_by(per_pass) {
                    let kc = per_pass.min(co - k0);
                    // SAFETY: AVX-512F (the caller); the spans' lanes lie inside `dy` for
                    // every channel below `co` (`Span::of`, p >= 16 or one image).
                    unsafe { pack(dy.as_ptr().add(k0 * p), (ins, p), kc, panel) };
                    for m0 in (0..ci).step_by(ROWS) {
                        let args = Block {
                            panel: panel.as_ptr(),
                            kc,
                            // SAFETY: row k0 < co, column m0 < ci of `w` (or of its
                            // transpose).
                            w: unsafe {
                                if ROWS_APART {
                                    w.as_ptr().add(m0 * co + k0)
                                } else {
                                    w.as_ptr().add(k0 * ci + m0)
                                }
                            },
                            w_row: if ROWS_APART { co } else { ci },
                            sums: sums[m0 * WIDTH..].as_mut_ptr(),
                            resume: k0 > 0,
                            last: k0 + kc == co,
                            p,
                            // SAFETY: channel m0 < ci of `dx`.
                            out: unsafe { shared.start().add(m0 * p) },
                        };
                        // SAFETY: AVX-512F (above); the panel holds `kc` rows, `sums` the
                        // block's 8 rows, `w` the block's weights of the pass (rows k0..k0 + kc,
                        // columns m0..m0 + 8), the spans lie inside `dx`, and the tasks write
                        // disjoint columns of `dx`.
                        unsafe { run_block::<ROWS_APART>(&args, outs) }
                    }
                }
            });
        });
}

/// [`forward_product_into`] with the loops turned, for maps of 16 pixels (`p == 16`, so every
/// vector is one image's whole map): per pass of summed channels, the columns of every tile
/// are packed first (`batch * 16 * kc` values: 512 KB at batch 16 with passes of 512, in L2),
/// then each block of 8 output channels runs over all the tiles, in parallel over the blocks,
/// so that its weights of the pass (8 rows of `kc`, 16 KB) are read from L1 for every tile,
/// where the usual order reads the whole weight once per tile. The same blocks, passes and
/// sums: each value is the same FMA chain over the input channels in order.
///
/// # Safety
/// AVX-512F; `C_out` a multiple of 8.
unsafe fn forward_rows_outer_into(
    w: &[f32],
    (ci, co): (usize, usize),
    x: &[f32],
    batch: usize,
    y: &mut [f32],
) {
    let p = LANES;
    assert!(co.is_multiple_of(ROWS));
    assert!(w.len() == co * ci && x.len() == batch * ci * p && y.len() == batch * co * p);
    let vectors = batch;
    let tiles = vectors.div_ceil(VECTORS);
    let x_spans: Vec<Span> = (0..vectors).map(|v| Span::of(v, (batch, p), ci)).collect();
    let y_spans: Vec<Span> = (0..vectors).map(|v| Span::of(v, (batch, p), co)).collect();
    let per_pass = summed_per_pass();
    let panel_len = per_pass * WIDTH;
    // Every tile's packed columns of a pass; between passes, the running sums of each (block
    // of 8 output channels, tile), 8 rows of `WIDTH` each. 64-byte aligned.
    let sums_len = if ci > per_pass { co * tiles * WIDTH } else { 0 };
    let mut buf = Scratch::take(LANES + tiles * panel_len + sums_len);
    let skip = buf.as_ptr().align_offset(64).min(LANES);
    let (panels, sums) = buf[skip..].split_at_mut(tiles * panel_len);
    let sums = SharedOutput::new(sums);
    let out = SharedOutput::new(y);
    for k0 in (0..ci).step_by(per_pass) {
        let kc = per_pass.min(ci - k0);
        panels
            .par_chunks_mut(panel_len)
            .enumerate()
            .for_each(|(t, panel)| {
                let ins = &x_spans[tile_vectors(t, vectors)];
                // SAFETY: AVX-512F (the caller); the spans' lanes lie inside `x` for every
                // channel below `ci` (`Span::of`, p == 16); the panel holds `per_pass` rows.
                unsafe { pack(x.as_ptr().add(k0 * p), (ins, p), kc, panel) };
            });
        let panels = &*panels;
        (0..co / ROWS).into_par_iter().for_each(|block| {
            let m0 = block * ROWS;
            for t in 0..tiles {
                let args = Block {
                    panel: panels[t * panel_len..].as_ptr(),
                    kc,
                    // SAFETY: row m0 < co, column k0 < ci of `w`.
                    w: unsafe { w.as_ptr().add(m0 * ci + k0) },
                    w_row: ci,
                    // The (block, tile) pair's 8 rows, inside `sums` when there is more than
                    // one pass; with one, `block` neither reads nor writes them (no resume,
                    // the last pass), and the pointer is only computed.
                    sums: sums
                        .start()
                        .wrapping_add((block * tiles + t) * ROWS * WIDTH),
                    resume: k0 > 0,
                    last: k0 + kc == ci,
                    p,
                    // SAFETY: channel m0 < co of `y`.
                    out: unsafe { out.start().add(m0 * p) },
                };
                // SAFETY: AVX-512F (the caller); the panel holds the tile's `kc` rows, `w`
                // the block's weights of the pass, the spans lie inside `y`, and the tasks
                // write disjoint rows of `y` and of `sums`.
                unsafe { run_block::<true>(&args, &y_spans[tile_vectors(t, vectors)]) }
            }
        });
    }
}

/// The vectors of tile `tile` when `vectors` are cut into tiles of [`VECTORS`]: all of them
/// but in the last tile, which may hold fewer.
fn tile_vectors(tile: usize, vectors: usize) -> std::ops::Range<usize> {
    tile * VECTORS..((tile + 1) * VECTORS).min(vectors)
}

/// [`block`] for the `outs.len()` (1 to 3) vectors of a tile.
///
/// # Safety
/// As [`block`].
unsafe fn run_block<const ROWS_APART: bool>(args: &Block, outs: &[Span]) {
    match outs.len() {
        3 => block::<3, ROWS_APART>(args, outs),
        2 => block::<2, ROWS_APART>(args, outs),
        _ => block::<1, ROWS_APART>(args, outs),
    }
}

/// Values of a packed row: the 3 vectors of a block.
const WIDTH: usize = VECTORS * LANES;

/// Copies rows `0..kc` (channels, `p` values apart) of the columns of `ins` from `inp` into
/// `panel`, `WIDTH` values per row.
///
/// # Safety
/// AVX-512F; the spans' lanes lie inside `inp` for channels `0..kc`; `panel` holds `kc` rows.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn pack(inp: *const f32, (ins, p): (&[Span], usize), kc: usize, panel: &mut [f32]) {
    use std::arch::x86_64::*;
    assert!(panel.len() >= kc * WIDTH);
    let dst = panel.as_mut_ptr();
    for k in 0..kc {
        let row = inp.add(k * p);
        for (v, s) in ins.iter().enumerate() {
            // A vector inside one image is a plain load; one across two, two masked pieces.
            let x = if s.whole() {
                _mm512_loadu_ps(row.add(s.first))
            } else {
                let lo = _mm512_maskz_loadu_ps(s.first_mask, row.add(s.first));
                _mm512_mask_loadu_ps(lo, s.second_mask, row.add(s.second))
            };
            _mm512_storeu_ps(dst.add(k * WIDTH + v * LANES), x);
        }
    }
}

/// Never called: [`fits`] is false off x86-64.
#[cfg(not(target_arch = "x86_64"))]
unsafe fn pack(_: *const f32, _: (&[Span], usize), _: usize, _: &mut [f32]) {
    unreachable!("pointwise_nchw runs only on x86-64")
}

/// The operands of one register block's pass: 8 input channels of `dx` at `out`, their
/// weights at `w` (8 consecutive values per output channel, rows `w_row` apart), the pass's
/// packed `dy` columns; the pass starts from the block's stored sums when `resume`, and writes
/// `dx` when `last` (else its sums again).
struct Block {
    panel: *const f32,
    kc: usize,
    w: *const f32,
    w_row: usize,
    sums: *mut f32,
    resume: bool,
    last: bool,
    p: usize,
    out: *mut f32,
}

/// One pass of output channels `out..out + 8 * p` at the columns of `V` vectors.
///
/// # Safety
/// AVX-512F; `outs` holds `V` spans inside `dx`, `w` the block's weights for the pass's `kc`
/// channels, `panel` its `kc` packed rows, `sums` 8 rows of `WIDTH`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[allow(clippy::needless_range_loop)] // index loops keep the accumulators in registers
unsafe fn block<const V: usize, const ROWS_APART: bool>(args: &Block, outs: &[Span]) {
    use std::arch::x86_64::*;
    let outs: &[Span; V] = outs.try_into().expect("a span per vector");
    let mut acc = [[_mm512_setzero_ps(); V]; ROWS];
    if args.resume {
        for r in 0..ROWS {
            for v in 0..V {
                acc[r][v] = _mm512_loadu_ps(args.sums.add(r * WIDTH + v * LANES));
            }
        }
    }
    let mut x = [_mm512_setzero_ps(); V];
    for k in 0..args.kc {
        let row = args.panel.add(k * WIDTH);
        for v in 0..V {
            x[v] = _mm512_loadu_ps(row.add(v * LANES));
        }
        let (wk, wr) = if ROWS_APART {
            (args.w.add(k), args.w_row)
        } else {
            (args.w.add(k * args.w_row), 1)
        };
        for r in 0..ROWS {
            let w = _mm512_set1_ps(*wk.add(r * wr));
            for v in 0..V {
                acc[r][v] = _mm512_fmadd_ps(w, x[v], acc[r][v]);
            }
        }
    }
    if !args.last {
        for (r, acc_r) in acc.iter().enumerate() {
            for v in 0..V {
                _mm512_storeu_ps(args.sums.add(r * WIDTH + v * LANES), acc_r[v]);
            }
        }
        return;
    }
    for (r, acc_r) in acc.iter().enumerate() {
        let row = args.out.add(r * args.p);
        for v in 0..V {
            let s = outs[v];
            // As in `pack`: plain where the vector lies inside one image.
            if s.whole() {
                _mm512_storeu_ps(row.add(s.first), acc_r[v]);
            } else {
                _mm512_mask_storeu_ps(row.add(s.first), s.first_mask, acc_r[v]);
                _mm512_mask_storeu_ps(row.add(s.second), s.second_mask, acc_r[v]);
            }
        }
    }
}

/// Never called: [`fits`] is false off x86-64.
#[cfg(not(target_arch = "x86_64"))]
unsafe fn block<const V: usize, const ROWS_APART: bool>(_: &Block, _: &[Span]) {
    unreachable!("pointwise_nchw runs only on x86-64")
}

#[cfg(test)]
pub(super) mod tests {
    use super::super::test_values_fine as values;
    use super::*;

    /// `sum_k a(m, k) * inp[b, k, p]` as one `mul_add` chain over `k` in order.
    pub(in super::super) fn chain(
        a: impl Fn(usize) -> f32,
        inp: &[f32],
        (b, p, pixels, depth): (usize, usize, usize, usize),
    ) -> f32 {
        (0..depth).fold(0.0f32, |acc, k| {
            a(k).mul_add(inp[(b * depth + k) * pixels + p], acc)
        })
    }

    /// `run()`'s values, checked to be the same bits under rayon pools of 1 and 3 threads.
    pub(in super::super) fn same_bits_under_pools(
        g: &ConvGeometry,
        run: impl Fn() -> Vec<f32> + Sync,
    ) -> Vec<f32> {
        let values = run();
        for threads in [1, 3] {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .expect("pool");
            let again = pool.install(&run);
            let differ = super::super::differing_bits(&values, &again);
            assert_eq!(differ, 0, "{g:?}: {threads} threads");
        }
        values
    }

    /// The forward is each value's FMA chain over the input channels, bit for bit (the weights
    /// read where they lie, `C_in` apart per output channel), on the input gradient's shapes
    /// turned around (8 to 520 input channels: one pass and several, the last one short, with
    /// passes of 128 or 512; maps of 16 to 196 pixels, vectors inside an image and across two;
    /// on AMD Zen 4 the 4x4 maps through the turned loops, tiles of 1 to 3 vectors); the
    /// epilogue runs once on every image; the same bits under pools of 1 and 3 threads.
    #[test]
    fn forward_is_the_plain_chain_bit_for_bit() {
        if !crate::cpu_features::avx512_kernels() {
            eprintln!("skipped: the kernel does not run on this CPU");
            return;
        }
        for (batch, c_in, c_out, side) in [
            (4, 8, 16, 4),
            (3, 8, 24, 7),
            (5, 272, 16, 8),
            (2, 256, 8, 7),
            (7, 136, 8, 5),
            (2, 136, 256, 14),
            (2, 520, 16, 7),
            (5, 520, 24, 4),
            (7, 136, 8, 4),
        ] {
            let g = ConvGeometry::new(&[batch, c_in, side, side], &[c_out, c_in, 1, 1], 1, 0, 1)
                .expect("geometry");
            assert!(fits(&g), "{g:?}");
            let p = side * side;
            let w = values(c_out * c_in, 4);
            let x = values(batch * c_in * p, 5);
            let run = || {
                let mut y = vec![f32::NAN; batch * c_out * p];
                let calls: Vec<std::sync::atomic::AtomicUsize> =
                    (0..batch).map(|_| Default::default()).collect();
                forward_into(&g, &x, &w, &mut y, &|b, y_b| {
                    assert_eq!(y_b.len(), c_out * p);
                    calls[b].fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                });
                for (b, c) in calls.iter().enumerate() {
                    assert_eq!(c.load(std::sync::atomic::Ordering::Relaxed), 1, "image {b}");
                }
                y
            };
            let y = same_bits_under_pools(&g, run);
            for b in 0..batch {
                for q in 0..p {
                    for co in 0..c_out {
                        let want = chain(|k| w[co * c_in + k], &x, (b, q, p, c_in));
                        let got = y[(b * c_out + co) * p + q];
                        assert_eq!(got.to_bits(), want.to_bits(), "{g:?}: ({b}, {co}, {q})");
                    }
                }
            }
        }
    }

    /// The input gradient is each value's FMA chain over the output channels, bit for bit, for
    /// maps of 16, 25, 49, 64 and 196 pixels (vectors inside an image and across two), batches
    /// whose columns end on a vector and between vectors, blocks of 1 to 3 vectors, and 8 to
    /// 520 output channels (one pass and several, the last one short, with passes of 128 or
    /// 512); the same bits under pools of 1 and 3 threads.
    #[test]
    fn input_gradient_is_the_plain_chain_bit_for_bit() {
        if !crate::cpu_features::avx512_kernels() {
            eprintln!("skipped: the kernel does not run on this CPU");
            return;
        }
        for (batch, c_in, c_out, side) in [
            (4, 16, 8, 4),
            (3, 24, 8, 7),
            (5, 16, 272, 8),
            (2, 8, 256, 7),
            (7, 8, 136, 5),
            (2, 256, 136, 14),
            (2, 16, 520, 7),
        ] {
            let g = ConvGeometry::new(&[batch, c_in, side, side], &[c_out, c_in, 1, 1], 1, 0, 1)
                .expect("geometry");
            assert!(fits(&g), "{g:?}");
            let p = side * side;
            let w = values(c_out * c_in, 2);
            let dy = values(batch * c_out * p, 3);
            let dx = same_bits_under_pools(&g, || {
                let mut dx = vec![f32::NAN; batch * c_in * p];
                input_grad_into(&g, &dy, &w, &mut dx);
                dx
            });
            for b in 0..batch {
                for q in 0..p {
                    for ci in 0..c_in {
                        let want = chain(|k| w[k * c_in + ci], &dy, (b, q, p, c_out));
                        let got = dx[(b * c_in + ci) * p + q];
                        assert_eq!(got.to_bits(), want.to_bits(), "{g:?}: ({b}, {ci}, {q})");
                    }
                }
            }
        }
    }

    /// Which ResNet layers take the blocks on the two AMD kinds they were measured on (batch
    /// 16, 112x112 input): on Zen 5 every fitting map; on Zen 4 the input gradients of 7x7
    /// and 14x14 maps and of stride-2 layers to 14x14 and 7x7, the forwards of 7x7, 14x14 and
    /// 4x4 maps and of the stride-2 layers to 7x7 and 4x4 (on 4x4 maps with the loops turned).
    #[test]
    fn the_blocks_run_where_they_were_measured_faster() {
        let zen5 = crate::cpu_features::zen5();
        if !(zen5 || crate::cpu_features::zen4()) {
            eprintln!("skipped: the blocks are chosen only on AMD Zen 5 and Zen 4");
            return;
        }
        let layer = |c_in, c_out, side, stride| {
            ConvGeometry::new(&[16, c_in, side, side], &[c_out, c_in, 1, 1], stride, 0, 1)
                .expect("geometry")
        };
        // (layer, its input gradient in the blocks, its forward in the blocks) on Zen 4.
        let cases = [
            (layer(1024, 256, 7, 1), true, true),
            (layer(512, 256, 14, 1), true, true),
            (layer(2048, 512, 4, 1), false, true),
            (layer(256, 512, 28, 2), true, false),
            (layer(512, 1024, 14, 2), true, true),
            (layer(1024, 2048, 7, 2), false, true),
        ];
        for (g, dx, fwd) in cases {
            let strided = g.stride == 2;
            let takes_dx = if strided {
                super::super::pointwise_strided::applies(&g)
            } else {
                applies(&g)
            };
            let takes_fwd = if strided {
                super::super::pointwise_strided::forward_applies(&g)
            } else {
                forward_applies(&g)
            };
            // Zen 5 takes every fitting input gradient, and every forward but the 4x4 ones.
            let (want_dx, want_fwd) = if zen5 {
                (true, g.out_pixels() > 16)
            } else {
                (dx, fwd)
            };
            assert_eq!((takes_dx, takes_fwd), (want_dx, want_fwd), "{g:?}");
        }
    }
}
