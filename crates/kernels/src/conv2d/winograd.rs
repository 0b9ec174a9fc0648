//! Winograd minimal filtering F(m x m, 3 x 3) for dense 3x3 convolutions with stride 1 and
//! padding 1: all three passes.
//!
//! The output map is cut into `m x m` tiles (`TH x TW` per image, the last row and column of
//! tiles cropped when `m` does not divide the map). Tile `(ty, tx)` is computed from the
//! `a x a` input block (`a = m + 2`) whose top-left corner is input pixel
//! `(m*ty - 1, m*tx - 1)`, zero outside the map (the padding):
//!
//! ```text
//! Y = A^T [ (G g G^T) .* (B^T d B) ] A
//! ```
//!
//! with `g` the 3x3 filter of one (output, input) channel pair, `d` the input block and `.*`
//! the elementwise product, summed over input channels. Each of the `a^2` transform positions
//! `xi` is then one GEMM over all channels and tiles of a block of images:
//! `M_xi (C_out x T) = U_xi (C_out x C_in) @ V_xi (C_in x T)`, against `9 / (m/a)^2` as many
//! multiplies for direct convolution (2.25x fewer for F(2x2), 4x fewer for F(4x4), less the
//! cropped part of the edge tiles).
//!
//! F(2x2, 3x3), `a = 4`:
//!
//! ```text
//!       | 1  0 -1  0 |        | 1    0    0   |
//! B^T = | 0  1  1  0 |    G = | 1/2  1/2  1/2 |    A^T = | 1  1  1  0 |
//!       | 0 -1  1  0 |        | 1/2 -1/2  1/2 |          | 0  1 -1 -1 |
//!       | 0  1  0 -1 |        | 0    0    1   |
//! ```
//!
//! F(4x4, 3x3), `a = 6` (interpolation points 0, 1, -1, 2, -2, infinity):
//!
//! ```text
//!       | 4  0 -5  0  1  0 |        |  1/4     0     0   |
//!       | 0 -4 -4  1  1  0 |        | -1/6  -1/6  -1/6   |          | 1  1  1  1  1  0 |
//! B^T = | 0  4 -4 -1  1  0 |    G = | -1/6   1/6  -1/6   |    A^T = | 0  1 -1  2 -2  0 |
//!       | 0 -2 -1  2  1  0 |        |  1/24  1/12  1/6   |          | 0  1  1  4  4  0 |
//!       | 0  2 -1 -2  1  0 |        |  1/24 -1/12  1/6   |          | 0  1 -1  8 -8  1 |
//!       | 0  4  0 -5  0  1 |        |  0     0     1     |
//! ```
//!
//! The input gradient of a stride-1, padding-1 3x3 convolution is itself such a convolution:
//! of `dy` with the weight flipped in both spatial axes and with input and output channels
//! swapped; it runs through the forward path. The weight gradient is the forward's adjoint:
//! `dM = A dY A^T` per output tile (zero beyond the map), `dU_xi = dM_xi @ V_xi^T` summed over
//! all tiles by one GEMM per block of images, accumulated block after block, and
//! `dW = G^T dU G`.
//!
//! Every transform is computed on whole rows of tiles at once (each entry of a transformed
//! tile, for a row of tiles, is a short vector), its sums in a fixed order. The blocks of
//! images are sized from the shape alone, and each GEMM runs on one thread with the whole of its
//! summed dimension: results do not depend on the number of threads (docs/determinism.md).
//!
//! On AMD Zen 5 the same plan runs with its transforms on vectors of 16 channels instead
//! (`winograd_lanes.rs`, chosen in `forward_plan` and `weight_grad_plan`).

use super::epilogue::Epilogue;
use super::geometry::ConvGeometry;
use super::matmul::{matmul, MatRef};
use super::scratch::{with_columns, Scratch};
use super::weight_packs::{packed, PackKind, WeightPacks};
use super::winograd_plan::{
    lanes_here, Coefs, Filters, Plan, Tile, Winograd, Winograd2, Winograd4,
};
use gemm::Parallelism;
use rayon::prelude::*;

/// Values [`combine`] sums in registers before writing them.
const CHUNK: usize = 64;

/// `dst[i * dst_stride..][..len] = sum_j mat[i][j] * src[j][..len]` for every row `i` of `mat`:
/// the sum in order of `j`, zero coefficients skipped, in one pass over each output row
/// (chunks of [`CHUNK`] values summed in registers).
#[inline(always)]
fn combine<const IN: usize, const OUT: usize, C: Coefs<IN, OUT>>(
    src: &[&[f32]; IN],
    dst: &mut [f32],
    dst_stride: usize,
    len: usize,
) {
    for (i, coefs) in C::MAT.iter().enumerate() {
        let mut terms = [(0.0f32, 0usize); IN];
        let mut n = 0;
        for (j, &c) in coefs.iter().enumerate() {
            if c != 0.0 {
                terms[n] = (c, j);
                n += 1;
            }
        }
        let d = &mut dst[i * dst_stride..][..len];
        let Some(&(c0, j0)) = terms[..n].first() else {
            d.fill(0.0);
            continue;
        };
        for (k, out) in d.chunks_mut(CHUNK).enumerate() {
            let start = k * CHUNK;
            let l = out.len();
            let mut acc = [0.0f32; CHUNK];
            for (a, v) in acc[..l].iter_mut().zip(&src[j0][start..start + l]) {
                *a = c0 * v;
            }
            for &(c, j) in &terms[1..n] {
                for (a, v) in acc[..l].iter_mut().zip(&src[j][start..start + l]) {
                    *a += c * v;
                }
            }
            out.copy_from_slice(&acc[..l]);
        }
    }
}

/// `sum_j coefs[j] * d[j]`, in order of `j`, without branches (a zero coefficient adds a zero,
/// which changes no finite sum), so that loops over tiles vectorize.
#[inline(always)]
fn dot<const N: usize>(coefs: &[f32; N], d: &[f32; N]) -> f32 {
    let mut sum = coefs[0] * d[0];
    for j in 1..N {
        sum += coefs[j] * d[j];
    }
    sum
}

/// The row transform of a row of tiles: `out[k][tx] = sum_j mat[k][j] * row[M*tx + j]` for
/// `tx < tw`, where `row[M*t + r]` is `phases[r * phase_len + t]`; output rows `stride` apart.
#[inline(always)]
fn row_transform<const M: usize, const IN: usize, const OUT: usize, C: Coefs<IN, OUT>>(
    phases: &[f32],
    phase_len: usize,
    tw: usize,
    out: &mut [f32],
    stride: usize,
) {
    let mat = &C::MAT;
    // Bounds of every index below: input phase j % M at column tx + j / M, output row k at
    // column tx.
    let src_len = (M - 1) * phase_len + (IN - 1) / M + tw;
    assert!(phases.len() >= src_len && out.len() >= (OUT - 1) * stride + tw);
    for tx in 0..tw {
        let mut d = [0.0f32; IN];
        for (j, d) in d.iter_mut().enumerate() {
            // SAFETY: j % M <= M-1 and j / M <= (IN-1)/M with tx < tw, so the index is below
            // src_len <= phases.len() (asserted above).
            *d = unsafe { *phases.get_unchecked((j % M) * phase_len + j / M + tx) };
        }
        for (k, coefs) in mat.iter().enumerate() {
            // SAFETY: k <= OUT-1 and tx < tw: below (OUT-1)*stride + tw <= out.len().
            unsafe { *out.get_unchecked_mut(k * stride + tx) = dot(coefs, &d) };
        }
    }
}

/// Scratch values [`row_transform_map`] needs: the zero-padded map, each row cut into phases.
fn padded_len<const M: usize, const IN: usize>(p: &Plan) -> usize {
    (M * (p.th - 1) + IN) * M * (p.tw + (IN - 1) / M)
}

/// The row transform of every tile of one map: tile `(ty, tx)` is the `IN x IN` block of `map`
/// (zero outside it) with top-left corner `(M*ty - offset, M*tx - offset)`; the transform of
/// its row `jy` (`OUT` values, `mat` times the row) goes to rows `jy*OUT + k` of `dst`
/// (`row_stride` apart), column `ty*TW + tx`.
///
/// Each zero-padded row is first cut into its `M` phases (columns `M*t + r`), so that an entry
/// of every tile of a row of tiles is one contiguous run.
fn row_transform_map<const M: usize, const IN: usize, const OUT: usize, C: Coefs<IN, OUT>>(
    map: &[f32],
    p: &Plan,
    offset: usize,
    dst: &mut [f32],
    row_stride: usize,
    padded: &mut [f32],
) {
    let (h, w, th, tw) = (p.h, p.w, p.th, p.tw);
    let phase_len = tw + (IN - 1) / M;
    let padded = &mut padded[..(M * (th - 1) + IN) * M * phase_len];
    for (r, phases) in padded.chunks_exact_mut(M * phase_len).enumerate() {
        // Rows above the map wrap to huge indices: they and rows below it are zero padding.
        let iy = r.wrapping_sub(offset);
        if iy >= h {
            phases.fill(0.0);
            continue;
        }
        let row = &map[iy * w..(iy + 1) * w];
        for (r, phase) in phases.chunks_exact_mut(phase_len).enumerate() {
            // Column M*t + r of the padded row is column M*t + r - offset of the map.
            for (t, v) in phase.iter_mut().enumerate() {
                let ix = (M * t + r).wrapping_sub(offset);
                *v = if ix < w { row[ix] } else { 0.0 };
            }
        }
    }
    for ty in 0..th {
        for jy in 0..IN {
            let phases = &padded[(M * ty + jy) * M * phase_len..][..M * phase_len];
            let out = &mut dst[jy * OUT * row_stride + ty * tw..];
            row_transform::<M, IN, OUT, C>(phases, phase_len, tw, out, row_stride);
        }
    }
}

/// Transforms the tiles (see [`row_transform_map`]) of the `channels` maps of images
/// `b0..b0 + images` of the NCHW `maps`, `d -> mat d mat^T` (`OUT x OUT`): returns
/// `(channels, OUT*OUT, T)` values, `T = images * tiles`, image `b0 + i` at columns
/// `i * tiles..`. In parallel over channels; the column transform runs on rows of `T` values.
fn transform_maps<const M: usize, const IN: usize, const OUT: usize, C: Coefs<IN, OUT>>(
    maps: &[f32],
    channels: usize,
    p: &Plan,
    offset: usize,
    (b0, images): (usize, usize),
) -> Scratch {
    let (tiles, pixels) = (p.tiles(), p.pixels());
    let t_blk = images * tiles;
    let mut out = Scratch::take(channels * OUT * OUT * t_blk);
    let work_len = IN * OUT * t_blk + padded_len::<M, IN>(p);
    out.par_chunks_mut(OUT * OUT * t_blk)
        .enumerate()
        .for_each(|(c, rows)| {
            with_columns(work_len, |work| {
                let (half, padded) = work.split_at_mut(IN * OUT * t_blk);
                for i in 0..images {
                    let map = &maps[((b0 + i) * channels + c) * pixels..][..pixels];
                    let dst = &mut half[i * tiles..];
                    row_transform_map::<M, IN, OUT, C>(map, p, offset, dst, t_blk, padded);
                }
                // rows[i*OUT + k] = sum_jy mat[i][jy] half[jy*OUT + k].
                for k in 0..OUT {
                    let src: [&[f32]; IN] =
                        std::array::from_fn(|jy| &half[(jy * OUT + k) * t_blk..]);
                    combine::<IN, OUT, C>(&src, &mut rows[k * t_blk..], OUT * t_blk, t_blk);
                }
            })
        });
    out
}

/// The filter transform `U = G g G^T` of every (output, input) channel pair of `filters`
/// (`c_out x c_in` filters): `(c_out, A*A, c_in)` values, in parallel over output channels.
fn transform_weights<const M: usize, const A: usize, W: Winograd<M, A>>(
    filters: Filters<'_>,
    c_out: usize,
    c_in: usize,
) -> Scratch {
    assert_eq!(filters.len(), c_out * c_in * 9);
    let mut u = Scratch::take(c_out * A * A * c_in);
    u.par_chunks_mut(A * A * c_in)
        .enumerate()
        .for_each(|(o, u_o)| {
            with_columns(9 * c_in + 3 * A * c_in, |work| {
                let (taps, rows) = work.split_at_mut(9 * c_in);
                for c in 0..c_in {
                    for t in 0..9 {
                        taps[t * c_in + c] = filters.tap(o, c, t);
                    }
                }
                // rows[(i*3 + kx)] = sum_ky G[i][ky] g[ky][kx].
                for kx in 0..3 {
                    let src: [&[f32]; 3] = std::array::from_fn(|ky| &taps[(ky * 3 + kx) * c_in..]);
                    combine::<3, A, W::G>(&src, &mut rows[kx * c_in..], 3 * c_in, c_in);
                }
                // U[i*A + j] = sum_kx G[j][kx] rows[i*3 + kx].
                for i in 0..A {
                    let src: [&[f32]; 3] = std::array::from_fn(|kx| &rows[(i * 3 + kx) * c_in..]);
                    combine::<3, A, W::G>(&src, &mut u_o[i * A * c_in..], c_in, c_in);
                }
            })
        });
    u
}

/// The column half of the output transform of a block: `cols[o][i*A + kx]` (rows of `T` tiles)
/// is `sum_ky A^T[i][ky] m[ky][kx]`, where entry `(ky, kx)` of `m` is row `o` of the GEMM
/// product `ky*A + kx` in `products` (`(A*A, c_out, T)`). In parallel over output channels.
fn output_columns<const M: usize, const A: usize, C: Coefs<A, M>>(
    products: &[f32],
    c_out: usize,
    t_blk: usize,
) -> Scratch {
    let mut cols = Scratch::take(c_out * M * A * t_blk);
    cols.par_chunks_mut(M * A * t_blk)
        .enumerate()
        .for_each(|(o, cols_o)| {
            for kx in 0..A {
                let src: [&[f32]; A] =
                    std::array::from_fn(|ky| &products[((ky * A + kx) * c_out + o) * t_blk..]);
                combine::<A, M, C>(&src, &mut cols_o[kx * t_blk..], A * t_blk, t_blk);
            }
        });
    cols
}

/// Writes one output map from its tiles' column transforms: row `i` of tile `(ty, tx)` is
/// `A^T` times the `A` values of rows `i*A + kx` of `cols` (`row_stride` apart), column
/// `ty*TW + tx`; tiles are cropped to the map, and every value of `map` is overwritten.
fn output_map<const M: usize, const A: usize, C: Coefs<A, M>>(
    cols: &[f32],
    row_stride: usize,
    p: &Plan,
    map: &mut [f32],
) {
    let at = &C::MAT;
    let (h, w, tw) = (p.h, p.w, p.tw);
    let whole = w / M;
    for ty in 0..p.th {
        for i in 0..M.min(h - M * ty) {
            let base = i * A * row_stride + ty * tw;
            assert!(cols.len() >= base + (A - 1) * row_stride + tw);
            let y_row = &mut map[(M * ty + i) * w..][..w];
            let (body, tail) = y_row.split_at_mut(whole * M);
            for (tx, out) in body.chunks_exact_mut(M).enumerate() {
                let mut d = [0.0f32; A];
                for (kx, d) in d.iter_mut().enumerate() {
                    // SAFETY: kx <= A-1 and tx < whole <= tw: below the length asserted above.
                    *d = unsafe { *cols.get_unchecked(base + kx * row_stride + tx) };
                }
                for (y, coefs) in out.iter_mut().zip(at) {
                    *y = dot(coefs, &d);
                }
            }
            if !tail.is_empty() {
                let mut d = [0.0f32; A];
                for (kx, d) in d.iter_mut().enumerate() {
                    *d = cols[base + kx * row_stride + whole];
                }
                for (j, y) in tail.iter_mut().enumerate() {
                    *y = dot(&at[j], &d);
                }
            }
        }
    }
}

/// The forward pass on a plan: `y` (`batch x c_out` maps) from `x` (`batch x c_in` maps) and
/// `filters` (`c_out x c_in`), `then(image, y_image)` on each image once its output is written;
/// `packs` holds the filters' transform where given, which only the forward's own filters may
/// use.
fn forward_plan<const M: usize, const A: usize, W: Winograd<M, A>>(
    p: &Plan,
    x: &[f32],
    (filters, packs): (Filters<'_>, Option<&WeightPacks>),
    y: &mut [f32],
    then: Epilogue<'_>,
) {
    #[cfg(target_arch = "x86_64")]
    if lanes_here() {
        return super::winograd_lanes::forward_plan::<M, A, W>(p, x, (filters, packs), y, then);
    }
    let (c_in, c_out, tiles, pixels) = (p.c_in, p.c_out, p.tiles(), p.pixels());
    let u = packed(packs, PackKind::Winograd { a: A }, || {
        transform_weights::<M, A, W>(filters, c_out, c_in)
    });
    let image_len = c_out * pixels;
    let band = c_out.div_ceil(8).max(1);
    for (b0, images) in p.blocks() {
        let t_blk = images * tiles;
        let v = transform_maps::<M, A, A, W::Bt>(x, c_in, p, 1, (b0, images));
        let mut m = Scratch::take(A * A * c_out * t_blk);
        m.par_chunks_mut(c_out * t_blk)
            .enumerate()
            .for_each(|(xi, m_xi)| {
                let u_xi = MatRef::strided(&u[xi * c_in..], c_out, c_in, A * A * c_in);
                let v_xi = MatRef::strided(&v[xi * t_blk..], c_in, t_blk, A * A * t_blk);
                matmul(m_xi, false, u_xi, v_xi, Parallelism::None);
            });
        drop(v);
        let cols = output_columns::<M, A, W::At>(&m, c_out, t_blk);
        drop(m);
        let cols = &cols[..];
        y[b0 * image_len..(b0 + images) * image_len]
            .par_chunks_mut(image_len)
            .enumerate()
            .for_each(|(i, y_image)| {
                y_image
                    .par_chunks_mut(band * pixels)
                    .enumerate()
                    .for_each(|(ob, maps)| {
                        for (k, map) in maps.chunks_exact_mut(pixels).enumerate() {
                            let o = ob * band + k;
                            let src = &cols[o * M * A * t_blk + i * tiles..];
                            output_map::<M, A, W::At>(src, t_blk, p, map);
                        }
                    });
                then(b0 + i, y_image);
            });
    }
}

/// The weight gradient on a plan: `(c_out, c_in, 3, 3)` from `x` and `dy`.
fn weight_grad_plan<const M: usize, const A: usize, W: Winograd<M, A>>(
    p: &Plan,
    x: &[f32],
    dy: &[f32],
) -> Vec<f32> {
    #[cfg(target_arch = "x86_64")]
    if lanes_here() {
        return super::winograd_lanes::weight_grad_plan::<M, A, W>(p, x, dy);
    }
    let (c_in, c_out) = (p.c_in, p.c_out);
    // The adjoint of the output transform: dM = A dY A^T, A = (A^T)^T.
    let mut du = Scratch::take(A * A * c_out * c_in);
    for (blk, (b0, images)) in p.blocks().enumerate() {
        let t_blk = images * p.tiles();
        let v = transform_maps::<M, A, A, W::Bt>(x, c_in, p, 1, (b0, images));
        let dm = transform_maps::<M, M, A, W::Adj>(dy, c_out, p, 0, (b0, images));
        du.par_chunks_mut(c_out * c_in)
            .enumerate()
            .for_each(|(xi, du_xi)| {
                let dm_xi = MatRef::strided(&dm[xi * t_blk..], c_out, t_blk, A * A * t_blk);
                let v_xi = MatRef::strided(&v[xi * t_blk..], c_in, t_blk, A * A * t_blk);
                matmul(du_xi, blk > 0, dm_xi, v_xi.t(), Parallelism::None);
            });
    }
    // dW = G^T dU G.
    let mut dw = vec![0.0f32; c_out * c_in * 9];
    let du = &du[..];
    dw.par_chunks_mut(c_in * 9)
        .enumerate()
        .for_each(|(o, dw_o)| {
            with_columns(3 * A * c_in + 9 * c_in, |work| {
                let (rows, taps) = work.split_at_mut(3 * A * c_in);
                // rows[ky*A + j] = sum_i G[i][ky] dU[i][j].
                for j in 0..A {
                    let src: [&[f32]; A] =
                        std::array::from_fn(|i| &du[((i * A + j) * c_out + o) * c_in..]);
                    combine::<A, 3, W::Gt>(&src, &mut rows[j * c_in..], A * c_in, c_in);
                }
                // taps[ky*3 + kx] = sum_j G[j][kx] rows[ky*A + j].
                for ky in 0..3 {
                    let src: [&[f32]; A] = std::array::from_fn(|j| &rows[(ky * A + j) * c_in..]);
                    combine::<A, 3, W::Gt>(&src, &mut taps[ky * 3 * c_in..], c_in, c_in);
                }
                for (c, filter) in dw_o.chunks_exact_mut(9).enumerate() {
                    for (t, v) in filter.iter_mut().enumerate() {
                        *v = taps[t * c_in + c];
                    }
                }
            })
        });
    dw
}

/// The plan of `g` for tile size `m`, from the input's point of view.
fn plan(g: &ConvGeometry, m: usize) -> Plan {
    debug_assert!(g.groups == 1 && g.stride == 1 && g.padding == 1);
    debug_assert!(g.kernel_h == 3 && g.kernel_w == 3);
    Plan::new(m, g.batch, g.in_channels, g.out_channels, g.in_h, g.in_w)
}

/// Forward pass of `g` (dense 3x3, stride 1, padding 1) into `y` (every value overwritten),
/// then `then(image, y_image)` once per image after that image's output is final; the
/// transformed filters from the layer's [`WeightPacks`] where given (`weight_packs.rs`).
pub fn forward_into(
    tile: Tile,
    g: &ConvGeometry,
    x: &[f32],
    w: (&[f32], Option<&WeightPacks>),
    y: &mut [f32],
    then: Epilogue<'_>,
) {
    let filters = (Filters::forward(w.0, g.in_channels), w.1);
    match tile {
        Tile::F2 => forward_plan::<2, 4, Winograd2>(&plan(g, 2), x, filters, y, then),
        Tile::F4 => forward_plan::<4, 6, Winograd4>(&plan(g, 4), x, filters, y, then),
    }
}

/// Input gradient of `g` (dense 3x3, stride 1, padding 1): the "same" convolution of `dy`
/// with `w` flipped in both spatial axes, input and output channels swapped (read from `w` in
/// place, [`Filters::swapped_and_flipped`]), into `dx` (any contents: every value is written,
/// as the forward writes its output).
pub fn input_grad_into(tile: Tile, g: &ConvGeometry, dy: &[f32], w: &[f32], dx: &mut [f32]) {
    let (c_in, c_out) = (g.in_channels, g.out_channels);
    let none: Epilogue<'_> = &|_, _| {};
    let swapped = |m| Plan::new(m, g.batch, c_out, c_in, g.in_h, g.in_w);
    let filters = (Filters::swapped_and_flipped(w, c_in), None);
    match tile {
        Tile::F2 => forward_plan::<2, 4, Winograd2>(&swapped(2), dy, filters, dx, none),
        Tile::F4 => forward_plan::<4, 6, Winograd4>(&swapped(4), dy, filters, dx, none),
    }
}

/// Weight gradient of `g` (dense 3x3, stride 1, padding 1), `(C_out, C_in, 3, 3)`.
pub fn weight_grad(tile: Tile, g: &ConvGeometry, x: &[f32], dy: &[f32]) -> Vec<f32> {
    match tile {
        Tile::F2 => weight_grad_plan::<2, 4, Winograd2>(&plan(g, 2), x, dy),
        Tile::F4 => weight_grad_plan::<4, 6, Winograd4>(&plan(g, 4), x, dy),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conv2d::select::{with_algorithm, Algorithm};
    use crate::conv2d::test_values as values;
    use std::sync::Mutex;

    /// The epilogue runs once per image, on that image's final output, and what it writes stays.
    #[test]
    fn epilogue_once_per_image_on_final_output() {
        for (tile, algorithm) in [(2, Algorithm::Winograd2), (4, Algorithm::Winograd4)] {
            for (batch, c, hw) in [(1, 3, 5), (3, 4, 7), (5, 2, 4), (2, 3, 28)] {
                let g = ConvGeometry::new(&[batch, c, hw, hw], &[c + 1, c, 3, 3], 1, 1, 1)
                    .expect("geometry");
                let x = values(batch * c * hw * hw, 1);
                let w = values((c + 1) * c * 9, 2);
                let mut plain = vec![0.0f32; g.units() * g.out_unit_len()];
                let mut shifted = plain.clone();
                let seen = Mutex::new(Vec::new());
                let reference = super::super::forward::forward(&g, &x, &w);
                with_algorithm(algorithm, || {
                    super::super::forward::forward_into(&g, &x, &w, &mut plain);
                    let then = |unit: usize, y: &mut [f32]| {
                        let start = unit * g.out_unit_len();
                        assert_eq!(y.len(), g.out_unit_len());
                        seen.lock().expect("lock").push((unit, y.to_vec(), start));
                        y.iter_mut().for_each(|v| *v += 1.0);
                    };
                    super::super::forward::forward_into_then(&g, &x, &w, &mut shifted, &then);
                });
                let mut seen = seen.into_inner().expect("lock");
                seen.sort_by_key(|s| s.0);
                let units: Vec<usize> = seen.iter().map(|s| s.0).collect();
                assert_eq!(units, (0..batch).collect::<Vec<_>>(), "F({tile}) units");
                for (_, y, start) in &seen {
                    assert_eq!(
                        &plain[*start..*start + y.len()],
                        &y[..],
                        "F({tile}) final output"
                    );
                }
                for (a, b) in plain.iter().zip(&shifted) {
                    assert_eq!(a + 1.0, *b);
                }
                let scale = reference.iter().fold(0.0f32, |m, v| m.max(v.abs()));
                for (a, b) in plain.iter().zip(&reference) {
                    assert!((a - b).abs() <= 1e-5 * scale, "F({tile}): {a} vs {b}");
                }
            }
        }
    }
}
