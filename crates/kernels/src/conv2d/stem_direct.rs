//! The stem's convolution (7x7, stride 2, padding 3, on the 3 channels of the image: every
//! backbone's first layer) as a direct kernel on the input's stride phases (AMD Zen 5 and Zen 4,
//! where it was measured; the kernel runs on 16 lanes on Intel, AMD Zen 5 and Zen 4 with
//! AVX-512, and on 8 lanes where AVX2 runs without AVX-512). The forward here, the weight
//! gradient in `stem_direct_weight_grad.rs`; the image needs no input gradient.
//!
//! im2col + GEMM writes a column matrix of `C_in * K * K = 147` rows by the map's 3136
//! positions for every image (1.8 MB) and reads it back in the product. Here the image is
//! first split into planes of its stride phases, with the zero padding written in, such that
//! every tap reads its plane at a fixed offset from the output position: the layer becomes a
//! product over flat positions whose vectors are loaded in place.
//!
//! On 16 lanes the planes are the column planes of `stem_column_planes.rs` (one per input
//! channel, row phase and kernel column, numbered like the output). A register block is 16
//! output channels by one vector of 16 positions (16 accumulators; per tap one load of the
//! plane and 16 weight broadcasts), or 8 channels by 3 vectors for the last 8 of a count that
//! is not a multiple of 16 (24 accumulators; 3 loads, 8 broadcasts), the weight turned to
//! `(tap, C_out)` once per call (37 KB). The vectors are stored whole into the NCHW output,
//! the map's last vector through a mask. The blocks run band by band, every output channel of
//! 48 position vectors before the next 48, so that a band's plane rows and outputs stay in L2
//! together.
//!
//! On 8 lanes (measured on an AMD EPYC Zen 3, whose L2 the column planes would not fit) each
//! input channel is split into its four phases alone ([`Phases`]), even and odd rows by even
//! and odd columns: planes of `PH x PW` values, `PH = OH + (K-1)/2`, `PW = OW + (K-1)/2`
//! (59 x 59 for the stem), 170 KB per image for 3 channels. Input row `2 * oh + kh - padding`
//! is row `oh + kh / 2` of the phases `kh % 2`, and likewise for columns. Numbering the output
//! positions along rows of the planes' width, `o = oh * PW + ow` (the last `(K-1)/2` columns of
//! a row are computed and dropped, 5% more work for the stem), tap `(ci, kh, kw)` reads its
//! plane at `o + (kh / 2) * PW + kw / 2`. A register block is 4 output channels by 3 vectors
//! (12 accumulators), each block's weights one run of `(tap, 4)` values. Its vectors that
//! cross a row are not written in masked pieces (slow stores there) but permuted into
//! consecutive outputs and written whole, later vectors overwriting the lanes past them
//! (`Store8`).
//!
//! Each value is one chain of fused multiply-adds over `(ci, kh, kw)` in order from zero, the
//! padding's zeros included: the plain loop's chain, bit for bit (the tests check that).

use super::epilogue::Epilogue;
use super::geometry::ConvGeometry;
use super::pointwise_nchw::lane_mask;
use super::scratch::with_columns;
use super::stem_column_planes::ColumnPlanes;
use rayon::prelude::*;

/// f32 lanes of a vector (AVX-512).
pub(super) const LANES: usize = 16;
/// f32 lanes of a vector on CPUs with AVX2 and without AVX-512 (the forward only).
const AVX2_LANES: usize = 8;
/// Output channels of an AVX2 forward register block (with 3 vectors: 12 accumulators).
const AVX2_FORWARD_ROWS: usize = 4;
/// Input channels at most: the planes of one image stay in L2 (3 channels: 170 KB of phase
/// planes, 560 KB of column planes).
const MAX_IN_CHANNELS: usize = 4;
/// Output channels of a 16-lane forward register block of 3 vectors (24 accumulators), for
/// the last 8 of a count that is not a multiple of 16.
const FORWARD_ROWS: usize = 8;
/// Output channels of a 16-lane forward register block of one vector (16 accumulators; the
/// planes read once per 16 channels).
const WIDE_ROWS: usize = 16;
/// Position vectors per band of the 16-lane forward: every output channel of a band of
/// positions is computed before the next band, so that the band's plane rows and outputs
/// share L2 (the whole image's planes and outputs, 560 + 800 KB for the stem, do not).
const BAND_VECTORS: usize = 48;
/// Position vectors of a forward register block of 8 channels.
const FORWARD_VECTORS: usize = 3;

/// True when the kernel can compute `g`'s forward on this CPU: a dense stride-2 square-kernel
/// layer on at most 4 input channels, a multiple of 8 output channels, planes at least a
/// vector wide, AVX-512 on Intel, AMD Zen 5 or Zen 4, or AVX2 without AVX-512.
pub fn fits(g: &ConvGeometry) -> bool {
    g.groups == 1
        && g.stride == 2
        && g.kernel_h == g.kernel_w
        && g.in_channels <= MAX_IN_CHANNELS
        && g.out_channels.is_multiple_of(FORWARD_ROWS)
        && vector_lanes().is_some_and(|lanes| Phases::of(g, lanes).width >= lanes)
}

/// The lanes of this CPU's vectors for the kernel: 16 on Intel, AMD Zen 5 and Zen 4 with AVX-512,
/// 8 where AVX2 runs without AVX-512 (the forward only), else none.
pub(super) fn vector_lanes() -> Option<usize> {
    if crate::cpu_features::avx512_kernels() {
        Some(LANES)
    } else if crate::cpu_features::avx2_only() {
        Some(AVX2_LANES)
    } else {
        None
    }
}

/// The phase planes of one image and the flat positions computed on them.
#[derive(Clone, Copy, Debug)]
struct Phases {
    /// f32 lanes of the vectors the positions are computed in.
    lanes: usize,
    /// Values per plane row (`PW = OW + (K-1)/2`), the row length of the flat positions.
    width: usize,
    /// Rows per plane (`PH = OH + (K-1)/2`).
    rows: usize,
    /// Values per plane: its rows, then zeros for the last vector's reads past them.
    plane_len: usize,
    /// Position vectors: `(OH - 1) * PW + OW` positions, rounded up to a vector.
    vectors: usize,
}

impl Phases {
    fn of(g: &ConvGeometry, lanes: usize) -> Self {
        let half = (g.kernel_h - 1) / 2;
        let (width, rows) = (g.out_w + half, g.out_h + half);
        let vectors = ((g.out_h - 1) * width + g.out_w).div_ceil(lanes);
        let reach = vectors * lanes + half * width + half;
        let plane_len = (rows * width).max(reach).next_multiple_of(lanes);
        Self {
            lanes,
            width,
            rows,
            plane_len,
            vectors,
        }
    }

    /// Planes of one image: four per input channel.
    fn planes(&self, g: &ConvGeometry) -> usize {
        4 * g.in_channels
    }

    /// Where tap `t` (`(ci, kh, kw)` in row-major order) of a position reads, from the
    /// position's flat index in the image's planes.
    fn tap_offsets(&self, g: &ConvGeometry) -> Vec<usize> {
        let k = g.kernel_h;
        (0..g.in_channels * k * k)
            .map(|t| {
                let (ci, kh, kw) = (t / (k * k), t / k % k, t % k);
                let plane = (ci * 2 + kh % 2) * 2 + kw % 2;
                plane * self.plane_len + kh / 2 * self.width + kw / 2
            })
            .collect()
    }

    /// Writes the phase planes of one image `x` (`C_in x H x W`) into `planes`, every value.
    fn split(&self, g: &ConvGeometry, x: &[f32], planes: &mut [f32]) {
        let (h, w, pad) = (g.in_h, g.in_w, g.padding);
        planes.fill(0.0);
        for ci in 0..g.in_channels {
            let channel = &x[ci * h * w..(ci + 1) * h * w];
            for phase in 0..4 {
                let (a, b) = (phase / 2, phase % 2);
                let plane = &mut planes[(ci * 4 + phase) * self.plane_len..][..self.plane_len];
                for i in 0..self.rows {
                    let Some(r) = (2 * i + a).checked_sub(pad).filter(|&r| r < h) else {
                        continue;
                    };
                    let src = &channel[r * w..(r + 1) * w];
                    let dst = &mut plane[i * self.width..(i + 1) * self.width];
                    // Columns `j` whose input column `2 * j + b - pad` lies in `0..w`.
                    let lo = (pad.saturating_sub(b)).div_ceil(2);
                    let hi = ((w + pad).saturating_sub(b)).div_ceil(2).min(self.width);
                    for j in lo..hi {
                        dst[j] = src[2 * j + b - pad];
                    }
                }
            }
        }
    }

    /// Where each position vector's valid lanes lie in an output channel of `OH x OW` values.
    fn spans(&self, g: &ConvGeometry) -> Vec<Span> {
        (0..self.vectors)
            .map(|v| Span::of(v * self.lanes, self.lanes, self.width, (g.out_h, g.out_w)))
            .collect()
    }
}

/// The valid lanes of a vector of 16 (or 8) flat positions in an `OH x OW` output channel: lanes
/// `first_mask` at `first + lane`, lanes `second_mask` (the next output row's) at
/// `second + lane`, offsets from the channel's first value (`second` may point before it for
/// lanes that are never touched). The dropped columns and positions past the map are in
/// neither mask.
#[derive(Clone, Copy, Debug)]
struct Span {
    first: isize,
    first_mask: u16,
    second: isize,
    second_mask: u16,
}

impl Span {
    /// The vector of `lanes` starting at flat position `o0` of rows `width` long.
    fn of(o0: usize, lanes: usize, width: usize, (out_h, out_w): (usize, usize)) -> Self {
        let (oh, ow0) = (o0 / width, o0 % width);
        let first_lanes = out_w.saturating_sub(ow0).min(lanes);
        // Lanes from `width - ow0` on are the next row's columns `0..`.
        let next = width - ow0;
        let second_lanes = if oh + 1 < out_h && next < lanes {
            (lanes - next).min(out_w)
        } else {
            0
        };
        Self {
            first: (oh * out_w + ow0) as isize,
            first_mask: lane_mask(0, first_lanes),
            second: ((oh + 1) * out_w) as isize - next as isize,
            second_mask: lane_mask(next.min(lanes), second_lanes),
        }
    }
}

/// How the 8-lane forward writes one vector of positions to an output channel: its valid
/// lanes, moved to the front in order (`order`, for `_mm256_permutevar8x32_ps`), are the
/// consecutive outputs from `start` (the dropped columns between two rows' pieces are the only
/// gap in a vector, and the output rows are consecutive in memory). The lanes after them land
/// on outputs of later vectors, which are written after it and overwrite them, so the vector
/// is stored whole: AVX2's masked stores took a tenth of the forward on an AMD EPYC Zen 3.
/// Only where the 8 lanes would reach past the channel are just the `valid` lanes written.
#[derive(Clone, Copy, Debug)]
struct Store8 {
    start: isize,
    order: [i32; AVX2_LANES],
    valid: usize,
    /// Write only the `valid` lanes: the vector reaches past the channel.
    masked: bool,
}

impl Store8 {
    /// The store of `s` in a channel of `out_plane` values.
    fn of(s: &Span, out_plane: usize) -> Self {
        let lanes_of = |mask: u16| (0..AVX2_LANES).filter(move |l| mask >> l & 1 == 1);
        let (first, second) = (lanes_of(s.first_mask), lanes_of(s.second_mask));
        // The first valid lane's output: the first piece's, or where the second piece starts.
        let start = if s.first_mask != 0 {
            s.first
        } else {
            s.second + s.second_mask.trailing_zeros() as isize
        };
        let mut order = [0i32; AVX2_LANES];
        let mut valid = 0;
        for lane in first.chain(second) {
            order[valid] = lane as i32;
            valid += 1;
        }
        Self {
            start,
            order,
            valid,
            masked: start as usize + AVX2_LANES > out_plane,
        }
    }
}

/// Output `(N, C_out, OH, OW)` of `g` into `y` (every value written), then `then(image, y_b)`
/// on each image's output as soon as it is written.
pub fn forward_into(g: &ConvGeometry, x: &[f32], w: &[f32], y: &mut [f32], then: Epilogue<'_>) {
    assert!(fits(g), "stem_direct: {g:?}");
    assert_eq!(
        w.len(),
        g.out_channels * g.patch_len(),
        "stem_direct: weight size"
    );
    assert_eq!(y.len(), g.units() * g.out_unit_len(), "stem_direct: output");
    if vector_lanes() == Some(LANES) {
        forward_wide(g, x, w, y, then);
    } else {
        forward_avx2(g, x, w, y, then);
    }
}

/// [`forward_into`] on 16 lanes, over each image's column planes (`stem_column_planes.rs`).
fn forward_wide(g: &ConvGeometry, x: &[f32], w: &[f32], y: &mut [f32], then: Epilogue<'_>) {
    let cp = ColumnPlanes::of(g);
    let taps = cp.tap_offsets(g);
    let c_out = g.out_channels;
    // The weight as `(tap, C_out)`: a block's weights of one tap are consecutive.
    let mut wt = vec![0.0f32; w.len()];
    for (co, row) in w.chunks_exact(taps.len()).enumerate() {
        for (t, &v) in row.iter().enumerate() {
            wt[t * c_out + co] = v;
        }
    }
    let last = cp.last_lanes(g);
    let planes_len = cp.planes(g) * cp.plane_len;
    y.par_chunks_mut(g.out_unit_len())
        .enumerate()
        .for_each(|(b, y_b)| {
            with_columns(planes_len, |planes| {
                // SAFETY: `fits` checked AVX-512F (16 lanes); the taps' offsets plus every
                // vector's positions lie inside the planes (`plane_len` covers the last
                // vector's reach), the vectors inside each output channel of `y_b` but the
                // last, whose `last` lanes do, and `wt` holds every tap's `c_out` weights.
                unsafe {
                    cp.split(g, g.input_unit(x, b), planes);
                    forward_image(planes, &taps, &wt, (cp.vectors, last), g, y_b);
                }
            });
            then(b, y_b);
        });
}

/// [`forward_into`] on 8 lanes (AVX2 without AVX-512), over each image's phase planes.
fn forward_avx2(g: &ConvGeometry, x: &[f32], w: &[f32], y: &mut [f32], then: Epilogue<'_>) {
    let ph = Phases::of(g, AVX2_LANES);
    let taps = ph.tap_offsets(g);
    // The weight as `(C_out / 4, tap, 4)`: a block's weights are one run, read in order.
    let mut wt = vec![0.0f32; w.len()];
    for (co, row) in w.chunks_exact(taps.len()).enumerate() {
        for (t, &v) in row.iter().enumerate() {
            let (block, r) = (co / AVX2_FORWARD_ROWS, co % AVX2_FORWARD_ROWS);
            wt[(block * taps.len() + t) * AVX2_FORWARD_ROWS + r] = v;
        }
    }
    let stores: Vec<Store8> = ph
        .spans(g)
        .iter()
        .map(|s| Store8::of(s, g.out_pixels()))
        .collect();
    let planes_len = ph.planes(g) * ph.plane_len;
    y.par_chunks_mut(g.out_unit_len())
        .enumerate()
        .for_each(|(b, y_b)| {
            with_columns(planes_len, |planes| {
                ph.split(g, g.input_unit(x, b), planes);
                // SAFETY: `fits` checked AVX2 and FMA (8 lanes); the taps' offsets plus every
                // vector's positions lie inside the planes (`plane_len` covers the last
                // vector's reach), the 8-lane stores inside an output channel of `y_b`, and
                // `wt` holds every tap's weights in blocks of 4 channels.
                unsafe { forward_image_avx2(planes, &taps, &wt, &stores, g, y_b) };
            });
            then(b, y_b);
        });
}

/// 4 output channels at the `V` 8-lane position vectors from vector `q`: the 16-lane block's
/// chains, on AVX2.
///
/// # Safety
/// AVX2 and FMA; as in [`forward_into`].
#[cfg(all(
    target_arch = "x86_64",
    target_feature = "avx2",
    target_feature = "fma"
))]
#[allow(clippy::needless_range_loop)] // index loops keep the accumulators in registers
unsafe fn forward_block_avx2<const V: usize>(args: &Forward<'_>, q: usize, stores: &[Store8]) {
    use std::arch::x86_64::*;
    let stores: &[Store8; V] = stores.try_into().expect("a store per vector");
    let mut acc = [[_mm256_setzero_ps(); V]; AVX2_FORWARD_ROWS];
    let mut x = [_mm256_setzero_ps(); V];
    let base = args.planes.add(q * AVX2_LANES);
    for (t, &offset) in args.taps.iter().enumerate() {
        let p = base.add(offset);
        for v in 0..V {
            x[v] = _mm256_loadu_ps(p.add(v * AVX2_LANES));
        }
        let wk = args.weights.add(t * args.tap_stride);
        for r in 0..AVX2_FORWARD_ROWS {
            let w = _mm256_broadcast_ss(&*wk.add(r));
            for v in 0..V {
                acc[r][v] = _mm256_fmadd_ps(w, x[v], acc[r][v]);
            }
        }
    }
    let lane_numbers = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    // Channel by channel, each channel's vectors in order: a vector's lanes past its valid
    // ones are overwritten by the vectors after it (`Store8`).
    for r in 0..AVX2_FORWARD_ROWS {
        let row = args.out.add(r * args.out_plane);
        for v in 0..V {
            let s = &stores[v];
            let order = _mm256_loadu_si256(s.order.as_ptr().cast());
            let packed = _mm256_permutevar8x32_ps(acc[r][v], order);
            if s.masked {
                let keep = _mm256_cmpgt_epi32(_mm256_set1_epi32(s.valid as i32), lane_numbers);
                _mm256_maskstore_ps(row.offset(s.start), keep, packed);
            } else {
                _mm256_storeu_ps(row.offset(s.start), packed);
            }
        }
    }
}

/// Never called: [`fits`] is false without AVX2 and FMA.
#[cfg(not(all(
    target_arch = "x86_64",
    target_feature = "avx2",
    target_feature = "fma"
)))]
unsafe fn forward_block_avx2<const V: usize>(_: &Forward<'_>, _: usize, _: &[Store8]) {
    unreachable!("stem_direct: AVX2 forward without AVX2")
}

/// Every output channel of one image, band of positions after band, block after block: 16
/// channels by one vector of 16 lanes while 16 channels remain, else 8 channels by 3 vectors;
/// the map's last vector written in its `last` lanes.
///
/// # Safety
/// As in [`forward_wide`].
unsafe fn forward_image(
    planes: &[f32],
    taps: &[usize],
    wt: &[f32],
    (vectors, last): (usize, u16),
    g: &ConvGeometry,
    y_b: &mut [f32],
) {
    let out_plane = g.out_pixels();
    let y = y_b.as_mut_ptr();
    let tail = |q: usize, n: usize| if q + n == vectors { last } else { u16::MAX };
    for band in (0..vectors).step_by(BAND_VECTORS) {
        let end = (band + BAND_VECTORS).min(vectors);
        let mut co = 0;
        while co < g.out_channels {
            let block = Forward {
                planes: planes.as_ptr(),
                taps,
                weights: wt.as_ptr().add(co),
                tap_stride: g.out_channels,
                out: y.add(co * out_plane),
                out_plane,
            };
            if g.out_channels - co >= WIDE_ROWS {
                for q in band..end {
                    forward_block::<WIDE_ROWS, 1>(&block, q, tail(q, 1));
                }
                co += WIDE_ROWS;
                continue;
            }
            let mut q = band;
            while q < end {
                let n = (end - q).min(FORWARD_VECTORS);
                match n {
                    3 => forward_block::<FORWARD_ROWS, 3>(&block, q, tail(q, n)),
                    2 => forward_block::<FORWARD_ROWS, 2>(&block, q, tail(q, n)),
                    _ => forward_block::<FORWARD_ROWS, 1>(&block, q, tail(q, n)),
                }
                q += n;
            }
            co += FORWARD_ROWS;
        }
    }
}

/// Every output channel of one image on 8 lanes, block after block: 4 channels by 3 vectors.
///
/// # Safety
/// As in [`forward_avx2`].
unsafe fn forward_image_avx2(
    planes: &[f32],
    taps: &[usize],
    wt: &[f32],
    stores: &[Store8],
    g: &ConvGeometry,
    y_b: &mut [f32],
) {
    let out_plane = g.out_pixels();
    let y = y_b.as_mut_ptr();
    for co in (0..g.out_channels).step_by(AVX2_FORWARD_ROWS) {
        let block = Forward {
            planes: planes.as_ptr(),
            taps,
            // Each block's `(tap, 4)` in one run.
            weights: wt.as_ptr().add(co * taps.len()),
            tap_stride: AVX2_FORWARD_ROWS,
            out: y.add(co * out_plane),
            out_plane,
        };
        let mut q = 0;
        while q < stores.len() {
            let n = (stores.len() - q).min(FORWARD_VECTORS);
            let s = &stores[q..q + n];
            match n {
                3 => forward_block_avx2::<3>(&block, q, s),
                2 => forward_block_avx2::<2>(&block, q, s),
                _ => forward_block_avx2::<1>(&block, q, s),
            }
            q += n;
        }
    }
}

/// The operands of one forward block: 8 (or 4) output channels from `out` (`out_plane` apart),
/// their weights from `weights` (the block's consecutive per tap, taps `tap_stride` apart).
struct Forward<'a> {
    planes: *const f32,
    taps: &'a [usize],
    weights: *const f32,
    tap_stride: usize,
    out: *mut f32,
    out_plane: usize,
}

/// `R` output channels at the `V` position vectors from vector `q`, the last of them written in
/// its `last` lanes.
///
/// # Safety
/// AVX-512F; as in [`forward_wide`].
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[allow(clippy::needless_range_loop)] // index loops keep the accumulators in registers
unsafe fn forward_block<const R: usize, const V: usize>(args: &Forward<'_>, q: usize, last: u16) {
    use std::arch::x86_64::*;
    let mut acc = [[_mm512_setzero_ps(); V]; R];
    let mut x = [_mm512_setzero_ps(); V];
    let base = args.planes.add(q * LANES);
    for (t, &offset) in args.taps.iter().enumerate() {
        let p = base.add(offset);
        for v in 0..V {
            x[v] = _mm512_loadu_ps(p.add(v * LANES));
        }
        let wk = args.weights.add(t * args.tap_stride);
        for r in 0..R {
            let w = _mm512_set1_ps(*wk.add(r));
            for v in 0..V {
                acc[r][v] = _mm512_fmadd_ps(w, x[v], acc[r][v]);
            }
        }
    }
    for r in 0..R {
        let row = args.out.add(r * args.out_plane + q * LANES);
        for v in 0..V - 1 {
            _mm512_storeu_ps(row.add(v * LANES), acc[r][v]);
        }
        if last == u16::MAX {
            _mm512_storeu_ps(row.add((V - 1) * LANES), acc[r][V - 1]);
        } else {
            _mm512_mask_storeu_ps(row.add((V - 1) * LANES), last, acc[r][V - 1]);
        }
    }
}

/// Never called: [`fits`] is false off x86-64.
#[cfg(not(target_arch = "x86_64"))]
unsafe fn forward_block<const R: usize, const V: usize>(_: &Forward<'_>, _: usize, _: u16) {
    unreachable!("stem_direct runs only on x86-64")
}

#[cfg(test)]
pub(super) mod tests {
    use super::super::test_values_fine as values;
    use super::*;

    /// The input value read by tap `(kh, kw)` of output `(oy, ox)`, or 0 in the padding.
    pub(in super::super) fn tap_input(
        g: &ConvGeometry,
        x: &[f32],
        (n, i): (usize, usize),
        oy: usize,
        ox: usize,
        (kh, kw): (usize, usize),
    ) -> f32 {
        let iy = (g.stride * oy + kh) as isize - g.padding as isize;
        let ix = (g.stride * ox + kw) as isize - g.padding as isize;
        if (0..g.in_h as isize).contains(&iy) && (0..g.in_w as isize).contains(&ix) {
            x[((n * g.in_channels + i) * g.in_h + iy as usize) * g.in_w + ix as usize]
        } else {
            0.0
        }
    }

    /// The forward as plain loops: per output, one FMA chain over `(ci, kh, kw)` in order.
    fn forward_chain(g: &ConvGeometry, x: &[f32], w: &[f32]) -> Vec<f32> {
        let k = g.kernel_h;
        let mut y = vec![0.0f32; g.batch * g.out_channels * g.out_pixels()];
        for n in 0..g.batch {
            for o in 0..g.out_channels {
                for oy in 0..g.out_h {
                    for ox in 0..g.out_w {
                        let mut s = 0.0f32;
                        for i in 0..g.in_channels {
                            for t in 0..k * k {
                                let v = tap_input(g, x, (n, i), oy, ox, (t / k, t % k));
                                s = w[(o * g.in_channels + i) * k * k + t].mul_add(v, s);
                            }
                        }
                        y[((n * g.out_channels + o) * g.out_h + oy) * g.out_w + ox] = s;
                    }
                }
            }
        }
        y
    }

    /// A test shape: batch, input and output channels, input height and width, kernel size
    /// and padding (stride 2).
    pub(in super::super) type Shape = (usize, usize, usize, (usize, usize), (usize, usize));

    /// The shapes: the stem itself (one image), odd and even input sizes, kernels of 7, 5, 4
    /// and 3 with paddings of 3, 2, 1 and 0, 1 to 4 input channels, 8 to 64 output channels,
    /// maps whose last vector is short and whose vectors cross rows.
    pub(in super::super) const SHAPES: [Shape; 6] = [
        (1, 3, 64, (112, 112), (7, 3)),
        (2, 3, 16, (37, 35), (7, 3)),
        (3, 1, 8, (40, 33), (5, 2)),
        (2, 4, 24, (31, 36), (3, 1)),
        (2, 2, 8, (38, 39), (7, 0)),
        (1, 3, 8, (60, 61), (4, 1)),
    ];

    pub(in super::super) fn geometry((n, c_in, c_out, (h, w), (k, pad)): Shape) -> ConvGeometry {
        ConvGeometry::new(&[n, c_in, h, w], &[c_out, c_in, k, k], 2, pad, 1).expect("geometry")
    }

    /// Every output is the plain loop's FMA chain, bit for bit, and the epilogue sees each
    /// image once, after its output is written.
    #[test]
    fn forward_is_the_plain_chain_bit_for_bit() {
        if vector_lanes().is_none() {
            eprintln!("skipped: the kernel does not run on this CPU");
            return;
        }
        for shape in SHAPES {
            let g = geometry(shape);
            assert!(fits(&g), "{g:?}");
            let x = values(g.batch * g.in_unit_len(), 3);
            let w = values(g.out_channels * g.patch_len(), 5);
            let mut y = vec![f32::NAN; g.batch * g.out_unit_len()];
            let seen = std::sync::Mutex::new(vec![0usize; g.batch]);
            let expected = forward_chain(&g, &x, &w);
            forward_into(&g, &x, &w, &mut y, &|b, y_b| {
                assert!(y_b.iter().all(|v| !v.is_nan()), "image {b} not written");
                seen.lock().unwrap()[b] += 1;
            });
            assert_eq!(*seen.lock().unwrap(), vec![1; g.batch], "{g:?}");
            for (i, (a, e)) in y.iter().zip(&expected).enumerate() {
                assert_eq!(a.to_bits(), e.to_bits(), "{g:?}: output {i}: {a} vs {e}");
            }
        }
    }

    /// Plane `(ci, a, b)` at `(i, j)` holds input `(2i + a - pad, 2j + b - pad)`, or 0 outside
    /// the image: the stem, odd sizes, paddings of either parity.
    #[test]
    fn phase_planes_hold_every_input_value_and_zeros_elsewhere() {
        for shape in [
            (1, 3, 8, (112, 112), (7, 3)),
            (1, 2, 8, (37, 41), (7, 3)),
            (1, 3, 8, (40, 35), (5, 2)),
            (1, 1, 8, (33, 34), (3, 1)),
            (1, 4, 8, (36, 36), (3, 0)),
        ] {
            let g = geometry(shape);
            let x = values(g.in_channels * g.in_h * g.in_w, 7);
            let ph = Phases::of(&g, LANES);
            let mut planes = vec![f32::NAN; ph.planes(&g) * ph.plane_len];
            ph.split(&g, &x, &mut planes);
            for ci in 0..g.in_channels {
                for (a, b) in [(0, 0), (0, 1), (1, 0), (1, 1)] {
                    let plane = &planes[(ci * 4 + a * 2 + b) * ph.plane_len..][..ph.plane_len];
                    for (k, &got) in plane.iter().enumerate() {
                        let (i, j) = (k / ph.width, k % ph.width);
                        let r = (2 * i + a) as isize - g.padding as isize;
                        let c = (2 * j + b) as isize - g.padding as isize;
                        let inside = k < ph.rows * ph.width
                            && (0..g.in_h as isize).contains(&r)
                            && (0..g.in_w as isize).contains(&c);
                        let want = if inside {
                            x[(ci * g.in_h + r as usize) * g.in_w + c as usize]
                        } else {
                            0.0
                        };
                        assert_eq!(
                            got.to_bits(),
                            want.to_bits(),
                            "{shape:?} ci {ci} phase ({a}, {b}) at {k}"
                        );
                    }
                }
            }
        }
    }

    /// A vector's spans cover exactly the valid positions of the flat numbering, each once, for
    /// vectors of 16 and of 8 lanes.
    #[test]
    fn spans_cover_every_output_once() {
        for (shape, lanes) in SHAPES
            .into_iter()
            .flat_map(|s| [(s, LANES), (s, AVX2_LANES)])
        {
            let g = geometry(shape);
            let ph = Phases::of(&g, lanes);
            let mut hits = vec![0u32; g.out_pixels()];
            for s in ph.spans(&g) {
                for (start, mask) in [(s.first, s.first_mask), (s.second, s.second_mask)] {
                    assert_eq!(u32::from(mask) >> lanes, 0, "{g:?}: lanes past the vector");
                    for lane in 0..lanes {
                        if mask >> lane & 1 == 1 {
                            hits[(start + lane as isize) as usize] += 1;
                        }
                    }
                }
            }
            assert!(
                hits.iter().all(|&h| h == 1),
                "{g:?}, {lanes} lanes: {hits:?}"
            );
        }
    }

    /// The 8-lane stores, applied vector after vector as the forward does, leave every output
    /// holding the lane its span puts there, and write nothing past the channel.
    #[test]
    fn packed_stores_leave_each_output_its_own_lane() {
        for shape in SHAPES {
            let g = geometry(shape);
            let ph = Phases::of(&g, AVX2_LANES);
            let spans = ph.spans(&g);
            let mut want = vec![None; g.out_pixels()];
            for (q, s) in spans.iter().enumerate() {
                for (start, mask) in [(s.first, s.first_mask), (s.second, s.second_mask)] {
                    for lane in (0..AVX2_LANES).filter(|l| mask >> l & 1 == 1) {
                        want[(start + lane as isize) as usize] = Some((q, lane as i32));
                    }
                }
            }
            let mut got = vec![None; g.out_pixels()];
            let mut masked = 0;
            for (q, s) in spans.iter().enumerate() {
                let store = Store8::of(s, g.out_pixels());
                masked += usize::from(store.masked);
                let written = if store.masked {
                    store.valid
                } else {
                    AVX2_LANES
                };
                for (j, &lane) in store.order.iter().enumerate().take(written) {
                    let at = store.start as usize + j;
                    assert!(at < got.len(), "{g:?}: vector {q} writes past the channel");
                    got[at] = Some((q, lane));
                }
            }
            assert_eq!(got, want, "{g:?}");
            assert!(masked < 3, "{g:?}: {masked} masked stores");
        }
    }
}
