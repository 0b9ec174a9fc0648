//! 3x3 padding-1 convolutions computed directly, without im2col or GEMM: what the grouped
//! layers of ResNeXt and some dense ones run (`select.rs` says where; any multiple of 4 channels
//! per group works).
//! This file holds the kernels and the stride-1 layout; `direct3x3_stride2.rs` the stride-2
//! layout, on which the same kernels run with another [`Taps`] table.
//!
//! ResNeXt-50 32x4d's 3x3 layers have 4 to 32 channels per group. As im2col + GEMM each
//! (image, group) unit is a product of `(C/g, 9*C/g) @ (9*C/g, OH*OW)`: a GEMM four to
//! thirty-two rows tall, where gemm's packing and edge handling cost as much as its
//! multiplies (measured 40-70 GFLOP/s, against ~190 for the dense layers). Here one unit is
//! computed in registers: the unit's input planes are copied once into zero-bordered planes on
//! rows of width `W + 1` (one zero column before each row, which is also the right border of
//! the row above), and output positions are numbered along those rows, so every tap `(ky, kx)`
//! reads the padded planes at one fixed offset `ky * (W + 1) + kx` from the output position.
//! Blocks of 4 output channels x 24 positions stay in 12 AVX registers while the loop runs over
//! input channels and taps (1 of every `W + 1` positions lands on the zero column and is
//! dropped). On AMD Zen 5 the groups too narrow for the wide kernel (4 and 8 output channels)
//! run the same blocks with 16 positions per vector (`direct3x3_positions512.rs`), bit for bit.
//!
//! The input gradient of a stride-1 convolution is the same convolution of the output gradient
//! with each group's weights transposed (input and output channels swapped) and the taps
//! reversed, so it runs through the same kernel. The weight gradient correlates the padded input planes with
//! the output gradient laid out on the same padded rows (zero on the padding columns): blocks of
//! 4 output channels x 3 taps of one kernel row accumulate in 12 registers over all positions.
//!
//! Each output value sums input channels in order, then taps in row-major order; the weight
//! gradient sums each image's positions in a fixed order and the images as `weight_grad.rs`
//! does (fixed chunks of consecutive images, added in chunk order). No result depends on the
//! thread count.
//!
//! One difference from im2col + GEMM with non-finite values: the weight gradient's sums also
//! run over the padding positions, where the output gradient is 0 but the input read there is
//! a real pixel, so an infinite or NaN input pixel on the border can make a tap's weight
//! gradient NaN where the GEMM path's is finite; likewise the input gradient multiplies the
//! zero border of the output gradient by every weight, so an infinite weight makes it NaN. The
//! forward output is then not finite either, and a training step refuses it.

use super::direct3x3_wide::{runs_wide, transpose_grads, unit_weight_grad_wide, GroupWeights};
use super::geometry::ConvGeometry;
use super::partial_sums::{image_chunk, partials, sum_partials};
use super::prefetch::prefetch_l2;
use super::schedule::for_each_unit;
use super::scratch::with_columns;

/// Output channels one register block computes.
const CHANNEL_BLOCK: usize = 4;
/// Output positions one register block computes (three vectors of 8).
pub(super) const POSITION_BLOCK: usize = 24;

/// True when the CPU can run the kernel (AVX2 and FMA, checked once).
pub(super) fn cpu_supports() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        use std::sync::OnceLock;
        static SUPPORTED: OnceLock<bool> = OnceLock::new();
        *SUPPORTED.get_or_init(|| {
            std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
        })
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// True when `g` and its input-gradient convolution can both run here: 3x3, stride 1 or 2,
/// padding 1, with a multiple of 4 channels per group on either side, on a CPU with AVX2 and
/// FMA.
pub fn applies(g: &ConvGeometry) -> bool {
    let fits = |c: usize| c.is_multiple_of(CHANNEL_BLOCK);
    g.kernel_h == 3
        && g.kernel_w == 3
        && (g.stride == 1 || g.stride == 2)
        && g.padding == 1
        && fits(g.group_in_channels())
        && fits(g.group_out_channels())
        && cpu_supports()
}

/// Where a kernel's reads go: read `i` (of `COUNT`) takes the value `offset(i)` past the
/// output position in the input channel's buffer and multiplies it by weight tap
/// `weight_tap(i)` (row-major `ky * 3 + kx`). The kernels' loops over `i` are unrolled, so
/// each offset folds into an address of a few registers plus a constant: read from a table of
/// 9 offsets and taps instead, the stride-1 forward ran ~30% slower.
pub(super) trait Taps: Copy {
    /// Reads per output position.
    const COUNT: usize;
    /// Where read `i` is, past the output position.
    fn offset(self, i: usize) -> usize;
    /// The weight tap read `i` is multiplied by.
    fn weight_tap(self, i: usize) -> usize;
}

/// Stride 1: input planes zero-bordered on rows of `row = W + 1` (one zero column before each
/// row, which is also the right border of the row before), tap `(ky, kx)` at `ky * row + kx`.
#[derive(Clone, Copy)]
struct Bordered {
    row: usize,
}

impl Taps for Bordered {
    const COUNT: usize = 9;
    #[inline(always)]
    fn offset(self, i: usize) -> usize {
        (i / 3) * self.row + i % 3
    }
    #[inline(always)]
    fn weight_tap(self, i: usize) -> usize {
        i
    }
}

/// How a kernel reads a unit's input buffer: input channel `ci`'s values start at
/// `ci * plane`, and output position `q` (of `positions`, a whole number of blocks) reads
/// `taps` from there.
#[derive(Clone, Copy)]
pub(super) struct Reads<T: Taps> {
    /// Values per input channel in the buffer.
    pub plane: usize,
    /// Output positions computed per channel.
    pub positions: usize,
    /// Where each read goes.
    pub taps: T,
}

impl<T: Taps> Reads<T> {
    /// True when every read of every position stays inside its channel's `plane` values and
    /// every weight tap is one of the 9.
    pub(super) fn in_bounds(&self) -> bool {
        let furthest = (0..T::COUNT).map(|i| self.taps.offset(i)).max();
        (0..T::COUNT).all(|i| self.taps.weight_tap(i) < 9)
            && self.positions + furthest.unwrap_or(0) <= self.plane
    }
}

/// The layout of one unit's input and output in the kernels' buffers: stride 1 on
/// zero-bordered planes ([`Bordered`]), stride 2 on phase planes (`direct3x3_stride2.rs`).
#[derive(Clone, Copy)]
enum Plan {
    Stride1(Reads<Bordered>),
    Stride2(Reads<super::direct3x3_stride2::PhaseTaps>),
}

impl Plan {
    fn new(g: &ConvGeometry) -> Self {
        if g.stride == 2 {
            return Self::Stride2(super::direct3x3_stride2::reads(g));
        }
        // One zero column per row serves as both the right border of a row and the left border
        // of the next: two columns would compute one more dropped position per row (at 14x14,
        // 240 positions per channel instead of 216).
        let row = g.in_w + 1;
        let positions = (g.in_h * row).div_ceil(POSITION_BLOCK) * POSITION_BLOCK;
        // The last block reads up to `positions - 1 + 2 * row + 2`; the bottom border row
        // ends at `(H + 2) * row`, where the last pixel's right border is read.
        let plane = (positions + 2 * row + 2).max((g.in_h + 2) * row + 1);
        Self::Stride1(Reads {
            plane,
            positions,
            taps: Bordered { row },
        })
    }

    /// Width of a row of output positions.
    fn row(&self) -> usize {
        match self {
            Self::Stride1(r) => r.taps.row,
            Self::Stride2(r) => r.taps.row,
        }
    }

    /// Values per input channel in the buffer.
    fn plane(&self) -> usize {
        match self {
            Self::Stride1(r) => r.plane,
            Self::Stride2(r) => r.plane,
        }
    }

    /// Output positions computed per channel.
    fn positions(&self) -> usize {
        match self {
            Self::Stride1(r) => r.positions,
            Self::Stride2(r) => r.positions,
        }
    }

    /// Writes the input planes of one unit (`x_unit`, `(C, H, W)`) into `dst` (`C` planes of
    /// `self.plane()` values), every value not an input pixel zero.
    fn spread_input(&self, g: &ConvGeometry, x_unit: &[f32], dst: &mut [f32]) {
        match self {
            Self::Stride1(r) => spread_rows(
                x_unit,
                (g.in_h, g.in_w),
                (r.taps.row, r.taps.row + 1),
                dst,
                r.plane,
            ),
            Self::Stride2(r) => super::direct3x3_stride2::split_phases(g, x_unit, r, dst),
        }
    }

    /// Positions of each output row that the output's pixels are gathered from: whole rows
    /// of `row`, one per output row.
    fn filled(&self, g: &ConvGeometry) -> usize {
        g.out_h * self.row()
    }

    /// The unit kernel that runs here ([`GroupWeights::run`]) with this layout's reads.
    ///
    /// # Safety
    /// As [`unit_kernel`].
    unsafe fn kernel(
        &self,
        (g, weights, group): (&ConvGeometry, &GroupWeights, usize),
        padded: &[f32],
        out: &mut [f32],
    ) {
        let (channels, filled) = (
            (g.group_in_channels(), g.group_out_channels()),
            self.filled(g),
        );
        match self {
            Self::Stride1(r) => weights.run(group, (padded, out), channels, r, filled),
            Self::Stride2(r) => weights.run(group, (padded, out), channels, r, filled),
        }
    }

    /// [`unit_weight_grad`] with this layout's reads.
    ///
    /// # Safety
    /// As [`unit_weight_grad`].
    unsafe fn weight_grad(
        &self,
        padded: &[f32],
        grads: &[f32],
        dw: &mut [f32],
        c_in: usize,
        c_out: usize,
    ) {
        if super::direct3x3_positions512::weight_grad_applies(c_in) {
            use super::direct3x3_positions512::unit_weight_grad as two_channels;
            // SAFETY: `weight_grad_applies` checked Zen 5 (AVX-512F and DQ); the slices as
            // for the AVX2 kernel, checked inside.
            let operands = (padded, grads, dw);
            return match self {
                Self::Stride1(r) => two_channels(operands, (c_in, c_out), r),
                Self::Stride2(r) => two_channels(operands, (c_in, c_out), r),
            };
        }
        match self {
            Self::Stride1(r) => unit_weight_grad(padded, grads, dw, c_in, c_out, r),
            Self::Stride2(r) => unit_weight_grad(padded, grads, dw, c_in, c_out, r),
        }
    }
}

/// Copies the `h` rows of `w` values of each dense plane in `src` into the planes of `dst`
/// (`dst_plane` values each), row `i` at `start + i * row`, and zeroes every other value of
/// those planes: the zero-bordered input planes (`start = row + 1`) and the output gradient on
/// padded rows (`start = 0`). Requires [`applies`] (AVX2).
pub(super) fn spread_rows(
    src: &[f32],
    (h, w): (usize, usize),
    (row, start): (usize, usize),
    dst: &mut [f32],
    dst_plane: usize,
) {
    assert!(cpu_supports(), "direct3x3: the CPU lacks AVX2 or FMA");
    assert!(w > 0 && row >= w && start + h * row <= dst_plane + row - w);
    assert!(dst.len().is_multiple_of(dst_plane) && src.len() / (h * w) == dst.len() / dst_plane);
    // SAFETY: `applies` checked AVX2; the bounds are checked above.
    unsafe { spread_rows_avx2(src, (h, w), (row, start), dst, dst_plane) }
}

/// [`spread_rows`] once its bounds are checked.
///
/// # Safety
/// The CPU supports AVX2; `dst` holds as many planes of `dst_plane` values as `src` holds
/// `h x w` planes, and `start + h * row <= dst_plane + row - w`.
#[cfg_attr(target_arch = "x86_64", target_feature(enable = "avx2"))]
unsafe fn spread_rows_avx2(
    src: &[f32],
    (h, w): (usize, usize),
    (row, start): (usize, usize),
    dst: &mut [f32],
    dst_plane: usize,
) {
    let planes = dst.len() / dst_plane;
    for p in 0..planes {
        let plane = &mut dst[p * dst_plane..(p + 1) * dst_plane];
        let src = &src[p * h * w..(p + 1) * h * w];
        plane[..start].fill(0.0);
        for i in 0..h {
            // The run may spill up to 7 values past the row: the gap is zeroed next, and each
            // later row rewrites its whole `[at, at + row)` span (the tail fill below the rest),
            // so every spilled value is overwritten before the plane is read.
            let at = start + i * row;
            let room = (at + w.next_multiple_of(8)).min(dst_plane);
            // SAFETY: `copy_run`'s requirement, AVX2, is this function's.
            copy_run(&mut plane[at..room], &src[i * w..(i + 1) * w]);
            for v in &mut plane[at + w..(at + row).min(dst_plane)] {
                *v = 0.0;
            }
        }
        let tail = (start + h * row).min(dst_plane);
        plane[tail..].fill(0.0);
    }
}

/// Copies every `row`-th run of `w` values of each plane of `src` (`src_plane` values each; the
/// positions computed on padded rows) into the dense `h x w` planes of `dst`. Requires
/// [`applies`] (AVX2).
fn gather_rows(src: &[f32], src_plane: usize, row: usize, (h, w): (usize, usize), dst: &mut [f32]) {
    assert!(cpu_supports(), "direct3x3: the CPU lacks AVX2 or FMA");
    assert!(w > 0 && row >= w && (h - 1) * row + w <= src_plane);
    assert!(src.len().is_multiple_of(src_plane) && dst.len() / (h * w) <= src.len() / src_plane);
    // SAFETY: AVX2 checked above; the bounds are checked above.
    unsafe { gather_rows_avx2(src, src_plane, row, (h, w), dst) }
}

/// [`gather_rows`] once its bounds are checked (compiled with AVX2 so that [`copy_run`] is
/// inlined, not called once per row).
///
/// # Safety
/// The CPU supports AVX2.
#[cfg_attr(target_arch = "x86_64", target_feature(enable = "avx2"))]
unsafe fn gather_rows_avx2(
    src: &[f32],
    src_plane: usize,
    row: usize,
    (h, w): (usize, usize),
    dst: &mut [f32],
) {
    for (dst, src) in dst.chunks_exact_mut(h * w).zip(src.chunks_exact(src_plane)) {
        for i in 0..h {
            // Rows are written in order, so a run may spill into the rows after it.
            let room = (i * w + w.next_multiple_of(8)).min(h * w);
            // SAFETY: `copy_run`'s requirement, AVX2, is this function's.
            copy_run(&mut dst[i * w..room], &src[i * row..i * row + w]);
        }
    }
}

/// Copies `src` to the start of `dst` (at least as long) for the short runs of one image row,
/// without a call to `memcpy` per row (which took a quarter of these passes' time): whole
/// blocks of 32 values, then up to three registers of 8, then the tail: a masked load, and a
/// plain store of all 8 lanes when `dst` has room for them (the values past `src.len()` are
/// then clobbered, for the caller to overwrite), else a masked store (slow on AMD's cores).
/// The blocks are written out rather than looped over 8 values at a time, which the compiler
/// would turn back into a `memcpy` call.
///
/// # Safety
/// The CPU supports AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn copy_run(dst: &mut [f32], src: &[f32]) {
    use std::arch::x86_64::*;
    assert!(dst.len() >= src.len());
    let (d, s, n, room) = (dst.as_mut_ptr(), src.as_ptr(), src.len(), dst.len());
    // SAFETY: every read below is at an index below `n` (the length of `src`), every write
    // below `room` (the length of `dst`).
    let copy8 = |i: usize| _mm256_storeu_ps(d.add(i), _mm256_loadu_ps(s.add(i)));
    let mut i = 0;
    while i + 32 <= n {
        let v = [
            _mm256_loadu_ps(s.add(i)),
            _mm256_loadu_ps(s.add(i + 8)),
            _mm256_loadu_ps(s.add(i + 16)),
            _mm256_loadu_ps(s.add(i + 24)),
        ];
        for (k, v) in v.into_iter().enumerate() {
            _mm256_storeu_ps(d.add(i + 8 * k), v);
        }
        i += 32;
    }
    if i + 8 <= n {
        copy8(i);
        i += 8;
    }
    if i + 8 <= n {
        copy8(i);
        i += 8;
    }
    if i + 8 <= n {
        copy8(i);
        i += 8;
    }
    if i < n {
        let lanes = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
        let mask = _mm256_cmpgt_epi32(_mm256_set1_epi32((n - i) as i32), lanes);
        let tail = _mm256_maskload_ps(s.add(i), mask);
        if i + 8 <= room {
            _mm256_storeu_ps(d.add(i), tail);
        } else {
            _mm256_maskstore_ps(d.add(i), mask, tail);
        }
    }
}

/// Never called: [`applies`] is false off x86-64.
#[cfg(not(target_arch = "x86_64"))]
unsafe fn copy_run(dst: &mut [f32], src: &[f32]) {
    dst[..src.len()].copy_from_slice(src)
}

/// Output `(N, C_out, OH, OW)` of `g` into `y` (every value overwritten), then `then(unit,
/// y_unit)` on each unit's output. Requires [`applies`].
pub fn forward_into(
    g: &ConvGeometry,
    x: &[f32],
    w: &[f32],
    y: &mut [f32],
    then: super::epilogue::Epilogue<'_>,
) {
    assert!(applies(g), "direct3x3: geometry {g:?} does not apply");
    let plan = Plan::new(g);
    let (plane, positions) = (plan.plane(), plan.positions());
    let (c_in, c_out) = (g.group_in_channels(), g.group_out_channels());
    let weights = GroupWeights::new(w, c_in, c_out);
    let units = g.units();
    let in_place = weights.wide() && super::direct3x3_wide_rows::fits(g, c_out);
    for_each_unit(y, g.out_unit_len(), |unit, y_unit, _| {
        let x_unit = g.input_unit(x, unit);
        if unit + 1 < units {
            prefetch_l2(g.input_unit(x, unit + 1));
        }
        if in_place {
            let w_group = weights.group(g.group_of(unit));
            // SAFETY: the weights are wide (AVX-512 checked by `runs_wide`) and `fits` checked
            // the map and channel counts; the unit's slices are checked inside.
            unsafe {
                super::direct3x3_wide_rows::unit_forward(
                    (x_unit, w_group, y_unit),
                    (c_in, c_out),
                    (g.in_h, g.in_w),
                    g.stride,
                )
            };
            then(unit, y_unit);
            return;
        }
        with_columns(c_in * plane + c_out * positions, |buf| {
            let (padded, out) = buf.split_at_mut(c_in * plane);
            plan.spread_input(g, x_unit, padded);
            // SAFETY: `applies` checked AVX2 and FMA; the slices have the lengths `unit_kernel`
            // documents (c_in planes, c_out blocks of `positions`, a full weight group), and
            // the gather reads only the filled positions.
            unsafe { plan.kernel((g, &weights, g.group_of(unit)), padded, out) };
            gather_rows(out, positions, plan.row(), (g.out_h, g.out_w), y_unit);
        });
        then(unit, y_unit);
    });
}

/// Input gradient `(N, C_in, H, W)` of `g` from the output gradient `dy`: at stride 1 the
/// direct convolution of `dy` with each group's weights transposed and their taps reversed,
/// at stride 2 per phase of the input (`direct3x3_stride2.rs`). Requires [`applies`].
/// `dx` may hold anything: every value is written.
pub fn input_grad_into(g: &ConvGeometry, dy: &[f32], w: &[f32], dx: &mut [f32]) {
    assert!(applies(g), "direct3x3: geometry {g:?} does not apply");
    if g.stride == 2 {
        return super::direct3x3_stride2::input_grad_into(g, dy, w, dx);
    }
    let (c_in, c_out) = (g.group_in_channels(), g.group_out_channels());
    let mut flipped = vec![0.0f32; w.len()];
    for group in 0..g.groups {
        let src = g.weight_group(w, group);
        let dst = &mut flipped[group * src.len()..(group + 1) * src.len()];
        for co in 0..c_out {
            for ci in 0..c_in {
                for t in 0..9 {
                    dst[(ci * c_out + co) * 9 + 8 - t] = src[(co * c_in + ci) * 9 + t];
                }
            }
        }
    }
    // 3x3, stride 1, padding 1: the output has the input's size, so the transposed
    // convolution maps `dy`'s maps back onto maps of the same size.
    let back = ConvGeometry {
        in_channels: g.out_channels,
        out_channels: g.in_channels,
        ..*g
    };
    forward_into(&back, dy, &flipped, dx, &|_, _| {});
}

/// Weight gradient `(C_out, C_in/groups, 3, 3)` of `g` from the input `x` and the output
/// gradient `dy`. Requires [`applies`].
pub fn weight_grad(g: &ConvGeometry, x: &[f32], dy: &[f32]) -> Vec<f32> {
    assert!(applies(g), "direct3x3: geometry {g:?} does not apply");
    let plan = Plan::new(g);
    let (plane, positions) = (plan.plane(), plan.positions());
    let (c_in, c_out) = (g.group_in_channels(), g.group_out_channels());
    let group_len = g.weight_group_len();
    let dw_len = g.groups * group_len;
    let chunks = partials(g.batch);
    let mut parts = vec![0.0f32; chunks * dw_len];
    let wide = runs_wide(c_out);
    for_each_unit(&mut parts, group_len, |task, dw_g, _| {
        let (chunk, group) = (task / g.groups, task % g.groups);
        let images = image_chunk(g.batch, chunk);
        if wide {
            return weight_grad_wide(
                g,
                &plan,
                (x, dy),
                images.map(|i| i * g.groups + group),
                dw_g,
            );
        }
        dw_g.fill(0.0);
        with_columns(c_in * plane + c_out * positions, |buf| {
            let (padded, grads) = buf.split_at_mut(c_in * plane);
            for image in images.clone() {
                let unit = image * g.groups + group;
                if image + 1 < images.end {
                    prefetch_l2(g.input_unit(x, unit + g.groups));
                    prefetch_l2(g.output_unit(dy, unit + g.groups));
                }
                plan.spread_input(g, g.input_unit(x, unit), padded);
                let dy_unit = g.output_unit(dy, unit);
                let out_size = (g.out_h, g.out_w);
                spread_rows(dy_unit, out_size, (plan.row(), 0), grads, positions);
                // SAFETY: `applies` checked AVX2 and FMA; the slices have the lengths
                // `unit_weight_grad` documents.
                unsafe { plan.weight_grad(padded, grads, dw_g, c_in, c_out) };
            }
        });
    });
    sum_partials(parts, dw_len)
}

/// One group's weight gradient over `units` (its units of consecutive images) into `dw_g`,
/// with the AVX-512 kernel ([`runs_wide`]): each image's sums, one per weight,
/// added in image order.
fn weight_grad_wide(
    g: &ConvGeometry,
    plan: &Plan,
    (x, dy): (&[f32], &[f32]),
    units: impl Iterator<Item = usize>,
    dw_g: &mut [f32],
) {
    let (c_in, c_out) = (g.group_in_channels(), g.group_out_channels());
    let filled = plan.filled(g);
    // The sums as the kernel keeps them, `(c_in, 9, c_out)`.
    let mut dw_t = vec![0.0f32; dw_g.len()];
    // On the square maps `direct3x3_wide_rows.rs` takes, the input planes are read as they are
    // and the gradient transposed on rows of the output width; elsewhere both on the padded
    // rows.
    let in_place = super::direct3x3_wide_rows::fits(g, c_out);
    let (padded_len, row) = match in_place {
        true => (0, g.out_w),
        false => (c_in * plan.plane(), plan.row()),
    };
    let grads_len = g.out_h * row * c_out;
    with_columns(padded_len + grads_len, |buf| {
        let (padded, grads_t) = buf.split_at_mut(padded_len);
        let mut units = units.peekable();
        while let Some(unit) = units.next() {
            if let Some(&next) = units.peek() {
                prefetch_l2(g.input_unit(x, next));
                prefetch_l2(g.output_unit(dy, next));
            }
            let shape = (g.out_h, g.out_w, row);
            transpose_grads(g.output_unit(dy, unit), shape, c_out, grads_t);
            if in_place {
                let operands = (g.input_unit(x, unit), &grads_t[..grads_len], &mut dw_t[..]);
                // SAFETY: `runs_wide` checked AVX-512 and c_out, `fits` the map; `applies`
                // makes c_in a multiple of 4; the slices are checked inside.
                let size = (g.in_h, g.in_w);
                unsafe {
                    super::direct3x3_wide_rows::unit_weight_grad(
                        operands,
                        (c_in, c_out),
                        size,
                        g.stride,
                    )
                };
                continue;
            }
            plan.spread_input(g, g.input_unit(x, unit), padded);
            let operands = (&*padded, &*grads_t, &mut dw_t[..]);
            // SAFETY: `runs_wide` checked AVX-512 and c_out; `applies` makes c_in a
            // multiple of 4; the buffers hold c_in planes, `filled` rows of c_out gradients
            // and a whole group's sums; `filled` is at most the positions (`Plan::new`).
            unsafe {
                match plan {
                    Plan::Stride1(r) => unit_weight_grad_wide(operands, (c_in, c_out), r, filled),
                    Plan::Stride2(r) => unit_weight_grad_wide(operands, (c_in, c_out), r, filled),
                }
            }
        }
    });
    for (co, dw_co) in dw_g.chunks_exact_mut(c_in * 9).enumerate() {
        for (k, v) in dw_co.iter_mut().enumerate() {
            *v = dw_t[k * c_out + co];
        }
    }
}

/// The sum of a vector's 8 lanes, in the fixed order of the weight gradient's sums (the AVX-512
/// form in `direct3x3_positions512.rs` sums each half of its registers with it, for the same
/// bits): the two halves, then pairs, then the last two.
///
/// # Safety
/// The CPU supports AVX.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
pub(super) unsafe fn lane_sum8(v: std::arch::x86_64::__m256) -> f32 {
    use std::arch::x86_64::*;
    let quad = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    let pair = _mm_add_ps(quad, _mm_movehl_ps(quad, quad));
    _mm_cvtss_f32(_mm_add_ss(pair, _mm_shuffle_ps(pair, pair, 1)))
}

/// Adds `sum_q grads[co][q] * padded[ci][q + offset(i)]` to `dw[co][ci][weight_tap(i)]` for
/// every output channel, input channel and read `i` of `reads` (9 of them, taken three at a
/// time: one kernel row), each sum over all `reads.positions` positions.
///
/// # Safety
/// The CPU supports AVX2 and FMA; `padded` holds `c_in` planes of `reads.plane` values,
/// `grads` `c_out` rows of `reads.positions` values (zero wherever no output pixel is), `dw`
/// `c_out * c_in * 9` values; `c_out` is a multiple of [`CHANNEL_BLOCK`].
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn unit_weight_grad<T: Taps>(
    padded: &[f32],
    grads: &[f32],
    dw: &mut [f32],
    c_in: usize,
    c_out: usize,
    reads: &Reads<T>,
) {
    use std::arch::x86_64::*;
    assert!(
        padded.len() >= c_in * reads.plane
            && grads.len() >= c_out * reads.positions
            && dw.len() >= c_out * c_in * 9
            && c_out.is_multiple_of(CHANNEL_BLOCK)
            && reads.positions.is_multiple_of(8)
            && T::COUNT == 9
            && reads.in_bounds()
    );
    let (xp, gp) = (padded.as_ptr(), grads.as_ptr());
    let (positions, taps) = (reads.positions, reads.taps);
    for co in (0..c_out).step_by(CHANNEL_BLOCK) {
        for ci in 0..c_in {
            for ky in 0..3 {
                let mut acc = [[_mm256_setzero_ps(); 3]; CHANNEL_BLOCK];
                // SAFETY (all pointer reads below): q + 7 + offset < positions + offset <=
                // plane inside plane `ci` (`in_bounds`); gradient rows hold `positions` values.
                let x_base = xp.add(ci * reads.plane);
                // Plain code, not `array::map`: a closure does not inherit this function's
                // target features, so its intrinsics became calls (5x slower).
                let r0 = x_base.add(taps.offset(3 * ky));
                let r1 = x_base.add(taps.offset(3 * ky + 1));
                let r2 = x_base.add(taps.offset(3 * ky + 2));
                for q in (0..positions).step_by(8) {
                    let xs = [
                        _mm256_loadu_ps(r0.add(q)),
                        _mm256_loadu_ps(r1.add(q)),
                        _mm256_loadu_ps(r2.add(q)),
                    ];
                    for (j, acc_j) in acc.iter_mut().enumerate() {
                        let gv = _mm256_loadu_ps(gp.add((co + j) * positions + q));
                        for (a, xv) in acc_j.iter_mut().zip(xs) {
                            *a = _mm256_fmadd_ps(gv, xv, *a);
                        }
                    }
                }
                for (j, acc_j) in acc.iter().enumerate() {
                    let at = ((co + j) * c_in + ci) * 9;
                    for (i, a) in acc_j.iter().enumerate() {
                        dw[at + taps.weight_tap(3 * ky + i)] += lane_sum8(*a);
                    }
                }
            }
        }
    }
}

/// A table of reads for the kernels' tests: stride 1 on rows of `row`, each read's weight tap
/// not its index (the kernels must take each read's own tap).
#[cfg(test)]
#[derive(Clone, Copy)]
pub(super) struct TestRowTaps {
    /// Width of a row of positions.
    pub row: usize,
}

#[cfg(test)]
impl TestRowTaps {
    /// `positions` output positions on rows of `row`, each channel's plane holding the
    /// furthest read of the last position.
    pub(super) fn reads(row: usize, positions: usize) -> Reads<Self> {
        Reads {
            plane: positions + 2 * row + 2,
            positions,
            taps: Self { row },
        }
    }
}

#[cfg(test)]
impl Taps for TestRowTaps {
    const COUNT: usize = 9;
    fn offset(self, i: usize) -> usize {
        (i / 3) * self.row + i % 3
    }
    fn weight_tap(self, i: usize) -> usize {
        (i * 4) % 9
    }
}

/// Never called: [`applies`] is false off x86-64.
#[cfg(not(target_arch = "x86_64"))]
pub(super) unsafe fn unit_weight_grad<T: Taps>(
    _: &[f32],
    _: &[f32],
    _: &mut [f32],
    _: usize,
    _: usize,
    _: &Reads<T>,
) {
    unreachable!("direct3x3 runs only on x86-64")
}

/// Computes `out[co][q] = sum_ci sum_i w[co][ci][weight_tap(i)] * padded[ci][q + offset(i)]`
/// for every output channel `co < c_out` and position `q < reads.positions`, summing input
/// channels in order and, within one, the reads in order.
///
/// # Safety
/// The CPU supports AVX2 and FMA; `padded` holds `c_in` planes of `reads.plane` values, `w`
/// `c_out * c_in * 9` values, `out` `c_out * reads.positions` values; `c_out` is a multiple of
/// [`CHANNEL_BLOCK`].
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn unit_kernel<T: Taps>(
    padded: &[f32],
    w: &[f32],
    out: &mut [f32],
    c_in: usize,
    c_out: usize,
    reads: &Reads<T>,
) {
    use std::arch::x86_64::*;
    assert!(
        padded.len() >= c_in * reads.plane
            && w.len() >= c_out * c_in * 9
            && out.len() >= c_out * reads.positions
            && c_out.is_multiple_of(CHANNEL_BLOCK)
            && reads.positions.is_multiple_of(POSITION_BLOCK)
            && reads.in_bounds()
    );
    let (xp, wp, op) = (padded.as_ptr(), w.as_ptr(), out.as_mut_ptr());
    let co_stride = c_in * 9;
    let (positions, plane, taps) = (reads.positions, reads.plane, reads.taps);
    for co in (0..c_out).step_by(CHANNEL_BLOCK) {
        for q in (0..positions).step_by(POSITION_BLOCK) {
            let mut acc = [[_mm256_setzero_ps(); 3]; CHANNEL_BLOCK];
            for ci in 0..c_in {
                // SAFETY (all pointer reads below): q + 23 + offset < positions + offset <=
                // plane, inside plane `ci` (`in_bounds`); weight indices stay below
                // c_out * c_in * 9.
                let x_base = xp.add(ci * plane + q);
                let w_base = wp.add(co * co_stride + ci * 9);
                for i in 0..T::COUNT {
                    let (s, t) = (x_base.add(taps.offset(i)), taps.weight_tap(i));
                    let xs = [
                        _mm256_loadu_ps(s),
                        _mm256_loadu_ps(s.add(8)),
                        _mm256_loadu_ps(s.add(16)),
                    ];
                    for (j, acc_j) in acc.iter_mut().enumerate() {
                        let wv = _mm256_broadcast_ss(&*w_base.add(j * co_stride + t));
                        for (a, xv) in acc_j.iter_mut().zip(xs) {
                            *a = _mm256_fmadd_ps(wv, xv, *a);
                        }
                    }
                }
            }
            for (j, acc_j) in acc.iter().enumerate() {
                let dst = op.add((co + j) * positions + q);
                for (i, a) in acc_j.iter().enumerate() {
                    _mm256_storeu_ps(dst.add(8 * i), *a);
                }
            }
        }
    }
}

/// Never called: [`applies`] is false off x86-64.
#[cfg(not(target_arch = "x86_64"))]
pub(super) unsafe fn unit_kernel<T: Taps>(
    _: &[f32],
    _: &[f32],
    _: &mut [f32],
    _: usize,
    _: usize,
    _: &Reads<T>,
) {
    unreachable!("direct3x3 runs only on x86-64")
}
