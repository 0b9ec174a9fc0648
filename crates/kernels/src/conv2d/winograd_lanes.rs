//! Winograd's transforms with the channels in the vector lanes (AVX-512; chosen on AMD Zen 5,
//! where it was measured): the same F(m x m, 3 x 3) as `winograd.rs`, with the transformed
//! tiles laid out `(a^2, T, C)` (channels last) instead of `(C, a^2, T)`, and the transformed
//! filters `(a^2, C_in, C_out)`.
//!
//! `winograd.rs` computes each transform on the rows of tiles of one map, a vector holding one
//! entry of every tile of a row of tiles (2 tiles on a 7x7 map, 7 on 28x28), each entry of a
//! tile's row gathered one value at a time. Here a vector holds 16 channels of one pixel, so a
//! tile is the same `IN x IN` block of vectors whatever the map's size: the maps of 16 channels
//! of one image are first laid out pixel by pixel, zero-bordered (`lane_block`), then each
//! tile costs the transform's own adds and multiplies on whole vectors (the matrices' indices
//! unrolled, so their coefficients are constants: `unrolled!`), and its entries go to their rows
//! of the GEMM operands. The output transform reads the products the same way and writes the
//! image's maps back channel by channel; the filter transform and its adjoint (weight
//! gradient) run on 16 output or input channels at a time.
//!
//! The transforms sum in the order of `winograd.rs` (over `j`, zero coefficients skipped), with
//! fused multiply-adds for the coefficients other than 1 and -1, and the GEMMs read their
//! operands the other way round, so the rounding differs from `winograd.rs`'s;
//! `tests/conv2d_winograd.rs` holds both to the GEMM path within the same tolerances.
//!
//! Measured with `conv_passes` on ResNet-50's dense 3x3 layers (AMD Zen 5, CPU time of 2
//! threads, best of 5, 2 rounds, batch 16 and 32): `perf` put the old transforms at 40-65% of
//! a pass (the GEMMs 15-25%), these at 30-45% of one 1.4-4x shorter (F(4x4), batch 16: 7x7
//! with 256 channels 1.4-1.9x, 14x14 with 128 2.8x, 28x28 with 64 4x); against the kernels the
//! layers ran before, see `select.rs`.

use super::epilogue::Epilogue;
use super::matmul::{matmul, matmul_strided, MatRef};
use super::schedule::SharedOutput;
use super::scratch::{with_columns, Scratch};
use super::weight_packs::{packed, PackKind, WeightPacks};
use super::winograd_plan::{Coefs, Filters, Plan, Winograd};
use gemm::Parallelism;
use rayon::prelude::*;

use std::arch::x86_64::*;

/// Channels one vector holds.
const LANES: usize = 16;

/// Values of one zero-bordered lane block: the `(M*(th-1) + IN) x (M*(tw-1) + IN)` pixels that
/// the tiles read, 16 channels each.
fn lane_block_len<const M: usize, const IN: usize>(p: &Plan) -> (usize, usize) {
    let rows = M * (p.th - 1) + IN;
    let cols = M * (p.tw - 1) + IN;
    (rows * cols * LANES, cols)
}

/// Lays out the `lanes` maps of `channels` (`h x w` planes, one after the other) pixel by pixel
/// in `block`: pixel `(r, c)` of the block, channel `l` at `(r * cols + c) * 16 + l`, holds the
/// map's value at `(r - offset, c - offset)`, zero outside the map and in lanes `lanes..16`. One
/// gather of the 16 channels per pixel.
///
/// # Safety
/// AVX-512F present.
#[target_feature(enable = "avx512f")]
unsafe fn lane_block(
    channels: &[f32],
    lanes: usize,
    p: &Plan,
    offset: usize,
    cols: usize,
    block: &mut [f32],
) {
    let (h, w) = (p.h, p.w);
    let rows = block.len() / (cols * LANES);
    assert!((1..=LANES).contains(&lanes) && channels.len() >= lanes * h * w);
    assert!(rows >= h + offset && cols >= w + offset);
    // The gather's offsets, up to 15 planes, are i32.
    assert!(LANES * h * w <= i32::MAX as usize);
    // The border: rows above and below the map, and the columns either side of it.
    let (top, bottom) = (offset * cols * LANES, (offset + h) * cols * LANES);
    block[..top].fill(0.0);
    block[bottom..].fill(0.0);
    for row in block[top..bottom].chunks_exact_mut(cols * LANES) {
        row[..offset * LANES].fill(0.0);
        row[(offset + w) * LANES..].fill(0.0);
    }
    let mask = lane_mask(lanes);
    // Lane l reads channel l's plane, h*w values after channel l-1's.
    let index = _mm512_mullo_epi32(lane_index(), _mm512_set1_epi32((h * w) as i32));
    let (src, dst) = (channels.as_ptr(), block.as_mut_ptr());
    for y in 0..h {
        for x in 0..w {
            // Lanes below `lanes` read channel l's pixel (y, x), inside `channels` (asserted);
            // the pixel's 16 values lie inside the block (rows and cols asserted).
            let v =
                _mm512_mask_i32gather_ps::<4>(_mm512_setzero_ps(), mask, index, src.add(y * w + x));
            _mm512_storeu_ps(dst.add(((y + offset) * cols + x + offset) * LANES), v);
        }
    }
}

/// The lane numbers 0..16.
#[inline(always)]
unsafe fn lane_index() -> __m512i {
    _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15)
}

/// Transforms every tile of the channel maps `maps` (`channels` per image, NCHW) of images
/// `b0..b0 + images`: tile `(ty, tx)` of image `i` is the `IN x IN` block of pixels with
/// top-left corner `(M*ty - offset, M*tx - offset)` (zero outside the map), and entry `(r, k)`
/// of `mat d mat^T` goes to row `t = i * tiles + ty*tw + tx` of matrix `r*OUT + k` of the result,
/// `(OUT*OUT, T, channels)` values. In parallel over images and blocks of 16 channels.
pub(super) fn transform_maps<const M: usize, const IN: usize, const OUT: usize, C>(
    maps: &[f32],
    channels: usize,
    p: &Plan,
    offset: usize,
    (b0, images): (usize, usize),
) -> Scratch
where
    C: Coefs<IN, OUT>,
{
    let (tiles, pixels) = (p.tiles(), p.pixels());
    let t_blk = images * tiles;
    let mut out = Scratch::take(OUT * OUT * t_blk * channels);
    let shared = SharedOutput::new(&mut out);
    let shared = &shared;
    let (block_len, cols) = lane_block_len::<M, IN>(p);
    let blocks = channels.div_ceil(LANES);
    (0..images * blocks).into_par_iter().for_each(|task| {
        let (i, cb) = (task / blocks, task % blocks);
        let (c0, lanes) = (cb * LANES, LANES.min(channels - cb * LANES));
        with_columns(block_len, |block| {
            let image = &maps[(b0 + i) * channels * pixels..][..channels * pixels];
            assert!(shared.len() >= OUT * OUT * t_blk * channels);
            // SAFETY: AVX-512 is present (`lanes_here`, checked by the caller); the block holds
            // every pixel the tiles read (`lane_block_len`); the writes go to rows
            // `i*tiles..(i+1)*tiles` and lanes `c0..c0 + lanes` of each of the `OUT*OUT`
            // matrices (inside the length asserted above), which no other task writes.
            unsafe {
                lane_block(&image[c0 * pixels..], lanes, p, offset, cols, block);
                tiles_forward::<M, IN, OUT, C>(
                    block,
                    cols,
                    p,
                    shared.start(),
                    (i * tiles, t_blk, channels),
                    (c0, lanes),
                )
            }
        })
    });
    out
}

/// Runs `$body` with `$i` bound to each of `0..$n` in turn (`$n` at most 6, the largest side of
/// these transforms), as straight-line code: each copy sees its index as a constant, so the
/// coefficients it reads from a constant matrix fold into the instructions (zero terms vanish,
/// 1 and -1 become adds and subtracts) where a loop would test them at run time.
macro_rules! unrolled {
    ($i:ident in 0..$n:expr => $body:block) => {{
        let n: usize = $n;
        debug_assert!(n <= 6);
        { let $i = 0usize; if $i < n $body }
        { let $i = 1usize; if $i < n $body }
        { let $i = 2usize; if $i < n $body }
        { let $i = 3usize; if $i < n $body }
        { let $i = 4usize; if $i < n $body }
        { let $i = 5usize; if $i < n $body }
    }};
}

/// `sum_j coefs[j] * d[j]` in order of `j`: zero coefficients skipped, 1 and -1 as adds and
/// subtracts, the others fused multiply-adds.
#[inline(always)]
unsafe fn combine<const N: usize>(coefs: &[f32; N], d: &[__m512; N]) -> __m512 {
    let mut acc: Option<__m512> = None;
    unrolled!(j in 0..N => {
        let c = coefs[j];
        if c != 0.0 {
            acc = Some(match acc {
                None if c == 1.0 => d[j],
                None => _mm512_mul_ps(_mm512_set1_ps(c), d[j]),
                Some(a) if c == 1.0 => _mm512_add_ps(a, d[j]),
                Some(a) if c == -1.0 => _mm512_sub_ps(a, d[j]),
                Some(a) => _mm512_fmadd_ps(_mm512_set1_ps(c), d[j], a),
            });
        }
    });
    acc.unwrap_or(_mm512_setzero_ps())
}

/// `mat d mat^T` of one `IN x IN` tile of vectors, into `v`.
#[inline(always)]
unsafe fn tile_transform<const IN: usize, const OUT: usize, C: Coefs<IN, OUT>>(
    d: &[[__m512; IN]; IN],
    v: &mut [[__m512; OUT]; OUT],
) {
    // Rows first: e[a][k] = sum_b mat[k][b] d[a][b]; then v[r][k] = sum_a mat[r][a] e[a][k].
    let mut e = [[_mm512_setzero_ps(); OUT]; IN];
    unrolled!(a in 0..IN => {
        unrolled!(k in 0..OUT => {
            e[a][k] = combine(&C::MAT[k], &d[a]);
        });
    });
    unrolled!(k in 0..OUT => {
        let mut col = [_mm512_setzero_ps(); IN];
        unrolled!(a in 0..IN => {
            col[a] = e[a][k];
        });
        unrolled!(r in 0..OUT => {
            v[r][k] = combine(&C::MAT[r], &col);
        });
    });
}

/// Every tile of one lane block (see [`transform_maps`]): entry `(r, k)` of tile `(ty, tx)` to
/// `out[((r*OUT + k) * t_blk + t0 + ty*tw + tx) * row_len + c0 + l]` for lanes `l < lanes`.
///
/// # Safety
/// AVX-512F present; `block` holds the lane block; `out` valid for those writes.
#[target_feature(enable = "avx512f")]
unsafe fn tiles_forward<const M: usize, const IN: usize, const OUT: usize, C: Coefs<IN, OUT>>(
    block: &[f32],
    cols: usize,
    p: &Plan,
    out: *mut f32,
    (t0, t_blk, row_len): (usize, usize, usize),
    (c0, lanes): (usize, usize),
) {
    let mask = lane_mask(lanes);
    let (rows_len, src) = (block.len(), block.as_ptr());
    for ty in 0..p.th {
        for tx in 0..p.tw {
            let corner = (M * ty * cols + M * tx) * LANES;
            assert!(corner + ((IN - 1) * cols + IN) * LANES <= rows_len);
            let mut d = [[_mm512_setzero_ps(); IN]; IN];
            for (a, d_a) in d.iter_mut().enumerate() {
                for (b, d_ab) in d_a.iter_mut().enumerate() {
                    // Inside the block (asserted above).
                    *d_ab = _mm512_loadu_ps(src.add(corner + (a * cols + b) * LANES));
                }
            }
            let mut v = [[_mm512_setzero_ps(); OUT]; OUT];
            tile_transform::<IN, OUT, C>(&d, &mut v);
            let t = t0 + ty * p.tw + tx;
            for (r, v_r) in v.iter().enumerate() {
                for (k, v_rk) in v_r.iter().enumerate() {
                    let at = ((r * OUT + k) * t_blk + t) * row_len + c0;
                    _mm512_mask_storeu_ps(out.add(at), mask, *v_rk);
                }
            }
        }
    }
}

/// The output transform of one image's `lanes` channels from `c0` (see [`forward_plan`]):
/// tile `(ty, tx)`'s `A x A` entries are rows `t0 + ty*tw + tx` of the products `(A*A, t_blk,
/// row_len)`, and `A^T m A` (cropped to the map) goes to the `lanes` planes of `maps`.
///
/// # Safety
/// AVX-512F present; `products` holds the `A*A` matrices of `t_blk` rows of `row_len`.
#[target_feature(enable = "avx512f")]
unsafe fn tiles_output<const M: usize, const A: usize, C: Coefs<A, M>>(
    products: &[f32],
    p: &Plan,
    (t0, t_blk, row_len): (usize, usize, usize),
    (c0, lanes): (usize, usize),
    block: &mut [f32],
    maps: &mut [f32],
) {
    let mask = lane_mask(lanes);
    let (h, w) = (p.h, p.w);
    assert!(products.len() >= A * A * t_blk * row_len && block.len() >= h * w * LANES);
    assert!(maps.len() >= lanes * h * w);
    let src = products.as_ptr();
    let dst = block.as_mut_ptr();
    for ty in 0..p.th {
        for tx in 0..p.tw {
            let t = t0 + ty * p.tw + tx;
            let mut m = [[_mm512_setzero_ps(); A]; A];
            for (a, m_a) in m.iter_mut().enumerate() {
                for (b, m_ab) in m_a.iter_mut().enumerate() {
                    let at = ((a * A + b) * t_blk + t) * row_len + c0;
                    // Row t < t_blk of matrix a*A + b, lanes masked to the row's channels
                    // (length asserted above).
                    *m_ab = _mm512_maskz_loadu_ps(mask, src.add(at));
                }
            }
            let mut y = [[_mm512_setzero_ps(); M]; M];
            tile_transform::<A, M, C>(&m, &mut y);
            for (i, y_i) in y.iter().enumerate().take(h - M * ty) {
                for (j, y_ij) in y_i.iter().enumerate().take(w - M * tx) {
                    let px = (M * ty + i) * w + M * tx + j;
                    // SAFETY: px < h*w (the tile cropped to the map).
                    _mm512_storeu_ps(dst.add(px * LANES), *y_ij);
                }
            }
        }
    }
    // Channel l's pixels px..px+16 are lane l of 16 consecutive pixels of the block.
    let index = _mm512_mullo_epi32(lane_index(), _mm512_set1_epi32(LANES as i32));
    let pixels = h * w;
    for (l, plane) in maps.chunks_exact_mut(pixels).take(lanes).enumerate() {
        for px in (0..pixels).step_by(LANES) {
            let mask = lane_mask(pixels - px);
            // Lanes below pixels - px read pixels inside the block (its length asserted
            // above) and write inside the plane.
            let v = _mm512_mask_i32gather_ps::<4>(
                _mm512_setzero_ps(),
                mask,
                index,
                block.as_ptr().add(px * LANES + l),
            );
            _mm512_mask_storeu_ps(plane.as_mut_ptr().add(px), mask, v);
        }
    }
}

/// Lane mask of the first `lanes` channels of a vector.
fn lane_mask(lanes: usize) -> __mmask16 {
    if lanes >= LANES {
        0xffff
    } else {
        (1u16 << lanes) - 1
    }
}

/// Input channels one task of [`transform_weights`] transforms: the rows it writes, `A*A`
/// runs of this many rows of `c_out` values, stay in a core's L2 cache until they are whole.
const FILTER_ROWS: usize = 8;

/// The filter transform `U = G g G^T` of every (output, input) channel pair of `filters`
/// (`c_out x c_in` filters): `(A*A, c_in, c_out)` values, each matrix `xi` a `(c_in x c_out)`
/// row-major block (the GEMM's left operand read column-major, as gemm's kernels take it
/// without repacking). In parallel over blocks of [`FILTER_ROWS`] input channels, each writing
/// its rows of every matrix from the first output channel to the last, 16 at a time: a task's
/// writes fill `A*A` contiguous runs. Tasks over blocks of 16 output channels, which write one
/// vector to every row of every matrix, took 5.6-6.5 ms for F(4x4) of 512x512 filters on a
/// 2-core Zen 4 (2 threads, inside `conv_passes`), these 3.1-3.4 (best of 15, 3 rounds).
fn transform_weights<const M: usize, const A: usize, W: Winograd<M, A>>(
    filters: Filters<'_>,
    c_out: usize,
    c_in: usize,
) -> Scratch {
    assert_eq!(filters.len(), c_out * c_in * 9);
    let mut u = Scratch::take(A * A * c_in * c_out);
    let shared = SharedOutput::new(&mut u);
    let shared = &shared;
    (0..c_in.div_ceil(FILTER_ROWS))
        .into_par_iter()
        .for_each(|ib| {
            let (i0, rows) = (ib * FILTER_ROWS, FILTER_ROWS.min(c_in - ib * FILTER_ROWS));
            // taps[(r*9 + t)*16 + l]: tap t of filter (c0 + l, i0 + r). Lanes past the output
            // channels are computed, never stored.
            let mut taps = [0.0f32; FILTER_ROWS * 9 * LANES];
            for c0 in (0..c_out).step_by(LANES) {
                let lanes = LANES.min(c_out - c0);
                for l in 0..lanes {
                    for r in 0..rows {
                        for t in 0..9 {
                            taps[(r * 9 + t) * LANES + l] = filters.tap(c0 + l, i0 + r, t);
                        }
                    }
                }
                assert!(shared.len() >= A * A * c_in * c_out);
                for (r, taps) in taps.chunks_exact(9 * LANES).take(rows).enumerate() {
                    // SAFETY: AVX-512 present (`lanes_here`, checked by the caller); the writes
                    // go to lanes `c0..c0 + lanes` of row `i0 + r` of each matrix (inside the
                    // length asserted above), which no other task writes.
                    unsafe {
                        filters_forward::<A, W::G>(
                            taps,
                            shared.start(),
                            (i0 + r, c_in, c_out),
                            (c0, lanes),
                        )
                    }
                }
            }
        });
    u
}

/// `G g G^T` of one input channel's filters for 16 output channels (`taps[t * 16 + l]`), entry
/// `xi` to `u[(xi * c_in + ci) * c_out + c0 + l]`.
///
/// # Safety
/// AVX-512F present; `u` valid for those writes.
#[target_feature(enable = "avx512f")]
unsafe fn filters_forward<const A: usize, G: Coefs<3, A>>(
    taps: &[f32],
    u: *mut f32,
    (ci, c_in, c_out): (usize, usize, usize),
    (c0, lanes): (usize, usize),
) {
    assert!(taps.len() >= 9 * LANES);
    let mut g = [[_mm512_setzero_ps(); 3]; 3];
    for (ky, g_y) in g.iter_mut().enumerate() {
        for (kx, g_yx) in g_y.iter_mut().enumerate() {
            *g_yx = _mm512_loadu_ps(taps.as_ptr().add((ky * 3 + kx) * LANES));
        }
    }
    let mut v = [[_mm512_setzero_ps(); A]; A];
    tile_transform::<3, A, G>(&g, &mut v);
    let mask = lane_mask(lanes);
    for (r, v_r) in v.iter().enumerate() {
        for (k, v_rk) in v_r.iter().enumerate() {
            let at = ((r * A + k) * c_in + ci) * c_out + c0;
            _mm512_mask_storeu_ps(u.add(at), mask, *v_rk);
        }
    }
}

/// The adjoint of the filter transform, `dW = G^T dU G`: the `(c_out, c_in, 3, 3)` weight
/// gradient from the `(A*A, c_out, c_in)` gradients of the transformed filters. In parallel
/// over output channels.
fn filter_adjoint<const M: usize, const A: usize, W: Winograd<M, A>>(
    du: &[f32],
    c_out: usize,
    c_in: usize,
) -> Vec<f32> {
    assert!(du.len() >= A * A * c_out * c_in);
    let mut dw = vec![0.0f32; c_out * c_in * 9];
    dw.par_chunks_mut(c_in * 9)
        .enumerate()
        .for_each(|(o, dw_o)| {
            let mut taps = [0.0f32; 9 * LANES];
            for c0 in (0..c_in).step_by(LANES) {
                let lanes = LANES.min(c_in - c0);
                // SAFETY: AVX-512 present (`lanes_here`, checked by the caller); `du` holds
                // the A*A matrices (asserted above).
                unsafe {
                    filters_adjoint::<A, W::Gt>(du, (o, c_out, c_in), (c0, lanes), &mut taps)
                };
                for l in 0..lanes {
                    for t in 0..9 {
                        dw_o[(c0 + l) * 9 + t] = taps[t * LANES + l];
                    }
                }
            }
        });
    dw
}

/// `G^T dU G` for output channel `o` and 16 input channels from `c0`, into `taps[t * 16 + l]`.
///
/// # Safety
/// AVX-512F present; `du` holds `A*A` matrices of `c_out x c_in`.
#[target_feature(enable = "avx512f")]
unsafe fn filters_adjoint<const A: usize, Gt: Coefs<A, 3>>(
    du: &[f32],
    (o, c_out, c_in): (usize, usize, usize),
    (c0, lanes): (usize, usize),
    taps: &mut [f32; 9 * LANES],
) {
    let mask = lane_mask(lanes);
    let mut d = [[_mm512_setzero_ps(); A]; A];
    for (r, d_r) in d.iter_mut().enumerate() {
        for (k, d_rk) in d_r.iter_mut().enumerate() {
            let at = ((r * A + k) * c_out + o) * c_in + c0;
            *d_rk = _mm512_maskz_loadu_ps(mask, du.as_ptr().add(at));
        }
    }
    let mut g = [[_mm512_setzero_ps(); 3]; 3];
    tile_transform::<A, 3, Gt>(&d, &mut g);
    for (ky, g_y) in g.iter().enumerate() {
        for (kx, g_yx) in g_y.iter().enumerate() {
            _mm512_storeu_ps(taps.as_mut_ptr().add((ky * 3 + kx) * LANES), *g_yx);
        }
    }
}

/// The forward pass on a plan, as `winograd.rs`'s, with the channel-lane layout: the
/// convolution of `x` with `filters` (`packs` holds their transform where given, which only
/// the forward's own filters may use).
pub(super) fn forward_plan<const M: usize, const A: usize, W: Winograd<M, A>>(
    p: &Plan,
    x: &[f32],
    (filters, packs): (Filters<'_>, Option<&WeightPacks>),
    y: &mut [f32],
    then: Epilogue<'_>,
) {
    let (c_in, c_out, tiles, pixels) = (p.c_in, p.c_out, p.tiles(), p.pixels());
    let u = packed(packs, PackKind::WinogradLanes { a: A }, || {
        transform_weights::<M, A, W>(filters, c_out, c_in)
    });
    let image_len = c_out * pixels;
    for (b0, images) in p.blocks() {
        let t_blk = images * tiles;
        let v = transform_maps::<M, A, A, W::Bt>(x, c_in, p, 1, (b0, images));
        let mut m = Scratch::take(A * A * t_blk * c_out);
        m.par_chunks_mut(t_blk * c_out)
            .enumerate()
            .for_each(|(xi, m_xi)| {
                // m_xi (t_blk x c_out, row-major) is u_xi^T @ v_xi^T stored column-major.
                let v_xi = MatRef::row_major(&v[xi * t_blk * c_in..], t_blk, c_in).t();
                let u_xi = MatRef::row_major(&u[xi * c_in * c_out..], c_in, c_out).t();
                matmul_strided(m_xi, true, false, u_xi, v_xi, Parallelism::None);
            });
        drop(v);
        let m = &m[..];
        y[b0 * image_len..(b0 + images) * image_len]
            .par_chunks_mut(image_len)
            .enumerate()
            .for_each(|(i, y_image)| {
                y_image
                    .par_chunks_mut(LANES * pixels)
                    .enumerate()
                    .for_each(|(cb, maps)| {
                        let lanes = maps.len() / pixels;
                        with_columns(pixels * LANES, |block| {
                            // SAFETY: AVX-512 present (`lanes_here`, checked by the caller);
                            // `m` holds the A*A products of t_blk rows of c_out.
                            unsafe {
                                tiles_output::<M, A, W::At>(
                                    m,
                                    p,
                                    (i * tiles, t_blk, c_out),
                                    (cb * LANES, lanes),
                                    block,
                                    maps,
                                )
                            }
                        })
                    });
                then(b0 + i, y_image);
            });
    }
}

/// The weight gradient on a plan, as `winograd.rs`'s, with the channel-lane layout.
pub(super) fn weight_grad_plan<const M: usize, const A: usize, W: Winograd<M, A>>(
    p: &Plan,
    x: &[f32],
    dy: &[f32],
) -> Vec<f32> {
    let (c_in, c_out) = (p.c_in, p.c_out);
    let mut du = Scratch::take(A * A * c_out * c_in);
    for (blk, (b0, images)) in p.blocks().enumerate() {
        let t_blk = images * p.tiles();
        let v = transform_maps::<M, A, A, W::Bt>(x, c_in, p, 1, (b0, images));
        // The adjoint of the output transform: dM = A dY A^T.
        let dm = transform_maps::<M, M, A, W::Adj>(dy, c_out, p, 0, (b0, images));
        du.par_chunks_mut(c_out * c_in)
            .enumerate()
            .for_each(|(xi, du_xi)| {
                let dm_xi = MatRef::row_major(&dm[xi * t_blk * c_out..], t_blk, c_out).t();
                let v_xi = MatRef::row_major(&v[xi * t_blk * c_in..], t_blk, c_in);
                matmul(du_xi, blk > 0, dm_xi, v_xi, Parallelism::None);
            });
    }
    filter_adjoint::<M, A, W>(&du, c_out, c_in)
}
