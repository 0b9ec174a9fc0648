//! 3x3 padding-1 convolutions computed directly, without im2col or GEMM: what the grouped
//! layers of ResNeXt and some dense ones run (`select.rs` says where; any multiple of 4 channels
//! per group works).
//! This file holds the stride-1 layout and the three passes; `direct3x3_blocks.rs` the
//! register blocks, `direct3x3_rows.rs` the copies into and out of their row layouts, and
//! `direct3x3_stride2.rs` the stride-2 layout, on which the same blocks run with another
//! [`Taps`] table.
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
//! run the same blocks with 16 positions per vector (`direct3x3_positions512.rs`), bit for bit;
//! on AMD Zen 4 those on 14x14 and 28x28 maps run on the unit's own planes, without the copies
//! (`direct3x3_narrow_rows.rs`), and the stride-2 ones from 28x28 on rows of 16 lanes
//! (`direct3x3_narrow_phases.rs`).
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

use super::direct3x3_blocks::{
    cpu_supports, unit_weight_grad, Reads, Taps, CHANNEL_BLOCK, POSITION_BLOCK,
};
use super::direct3x3_rows::{gather_rows, spread_rows};
use super::direct3x3_wide::{runs_wide, transpose_grads, unit_weight_grad_wide, GroupWeights};
use super::geometry::ConvGeometry;
use super::partial_sums::{image_chunk, partials, sum_partials};
use super::prefetch::prefetch_l2;
use super::schedule::for_each_unit;
use super::scratch::with_columns;
use super::select::{direct_runs_wide, Pass};
use super::weight_packs::WeightPacks;
use rayon::prelude::*;

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
    /// As [`unit_kernel`](super::direct3x3_blocks::unit_kernel).
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

/// Output `(N, C_out, OH, OW)` of `g` into `y` (every value overwritten), then `then(unit,
/// y_unit)` on each unit's output; the wide kernel's packed weights from `packs` where given
/// (`weight_packs.rs`). Requires [`applies`].
pub fn forward_into(
    g: &ConvGeometry,
    x: &[f32],
    (w, packs): (&[f32], Option<&WeightPacks>),
    y: &mut [f32],
    then: super::epilogue::Epilogue<'_>,
) {
    assert!(applies(g), "direct3x3: geometry {g:?} does not apply");
    let plan = Plan::new(g);
    let (plane, positions) = (plan.plane(), plan.positions());
    let (c_in, c_out) = (g.group_in_channels(), g.group_out_channels());
    // The wide kernel's layout where `select.rs` says it runs (not on the groups of 16 channels
    // the narrow groups' kernel takes), else the weights as the layer holds them. (The stride-1
    // input gradient comes here as the forward of the transposed layer: the same rule.)
    let weights = if direct_runs_wide(g, Pass::Forward) {
        GroupWeights::kept(w, c_in, c_out, packs)
    } else {
        GroupWeights::given(w, c_in, c_out)
    };
    let units = g.units();
    let in_place = weights.wide() && super::direct3x3_wide_rows::fits(g, c_out);
    let narrow_in_place = !weights.wide() && super::direct3x3_narrow_rows::fits(g, c_out);
    let narrow_stride2 = !weights.wide() && super::direct3x3_narrow_phases::fits_stride2(g, c_out);
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
        if narrow_in_place {
            let w_group = weights.group(g.group_of(unit));
            // SAFETY: `fits` checked Zen 4 (AVX-512), the map and the channel counts; the
            // unit's slices are checked inside.
            unsafe {
                super::direct3x3_narrow_rows::unit_forward(
                    (x_unit, w_group, y_unit),
                    (c_in, c_out),
                    g.in_w,
                )
            };
            then(unit, y_unit);
            return;
        }
        if narrow_stride2 {
            let w_group = weights.group(g.group_of(unit));
            let phases = c_in * super::direct3x3_narrow_phases::STRIDE2_PHASES;
            with_columns(phases, |buf| {
                // SAFETY: `fits_stride2` checked Zen 4 (AVX-512), the map and the channel
                // counts; the slices are checked inside.
                unsafe {
                    super::direct3x3_narrow_phases::unit_forward_stride2(
                        (x_unit, w_group, y_unit),
                        (c_in, c_out),
                        buf,
                    )
                };
            });
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
    forward_into(&back, dy, (&flipped, None), dx, &|_, _| {});
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
    // (The groups of 16 channels that the narrow kernel's forward takes keep the wide weight
    // gradient, faster on them.)
    let narrow_in_place = !wide && super::direct3x3_narrow_rows::fits(g, c_out);
    let narrow_stride2 = !wide && super::direct3x3_narrow_phases::fits_stride2(g, c_out);
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
        if narrow_in_place {
            for image in images.clone() {
                let unit = image * g.groups + group;
                let operands = (g.input_unit(x, unit), g.output_unit(dy, unit), &mut *dw_g);
                // SAFETY: `fits` checked Zen 4 (AVX-512), the map and the output channels;
                // `applies` makes `c_in` a multiple of 4; the slices are checked inside.
                unsafe {
                    super::direct3x3_narrow_rows::unit_weight_grad(operands, (c_in, c_out), g.in_w)
                };
            }
            return;
        }
        if narrow_stride2 {
            with_columns(
                c_in * super::direct3x3_narrow_phases::STRIDE2_PHASES,
                |phases| {
                    for image in images.clone() {
                        let unit = image * g.groups + group;
                        if image + 1 < images.end {
                            prefetch_l2(g.input_unit(x, unit + g.groups));
                            prefetch_l2(g.output_unit(dy, unit + g.groups));
                        }
                        let operands = (g.input_unit(x, unit), g.output_unit(dy, unit), &mut *dw_g);
                        // SAFETY: `fits_stride2` checked Zen 4 (AVX-512), the map and the output
                        // channels; `applies` makes `c_in` a multiple of 4; the slices are checked
                        // inside.
                        unsafe {
                            super::direct3x3_narrow_phases::unit_weight_grad_stride2(
                                operands,
                                (c_in, c_out),
                                phases,
                            )
                        };
                    }
                },
            );
            return;
        }
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
    let summed = sum_partials(parts, dw_len);
    if wide {
        return from_kernel_layout(summed, (c_in, c_out));
    }
    summed
}

/// The groups' weight gradients `(C_out, C_in, 3, 3)` from the layout the wide kernels keep
/// them in, `(C_in, 9, C_out)` per group: the chunks' partial sums are added in that layout
/// (the same additions, in the same order, as in the weights' own) and turned once per group.
fn from_kernel_layout(summed: Vec<f32>, (c_in, c_out): (usize, usize)) -> Vec<f32> {
    let group_len = c_in * 9 * c_out;
    let mut dw = vec![0.0f32; summed.len()];
    dw.par_chunks_mut(group_len)
        .zip(summed.par_chunks(group_len))
        .for_each(|(dw_g, dw_t)| {
            for (co, dw_co) in dw_g.chunks_exact_mut(c_in * 9).enumerate() {
                for (k, v) in dw_co.iter_mut().enumerate() {
                    *v = dw_t[k * c_out + co];
                }
            }
        });
    dw
}

/// One group's weight gradient over `units` (its units of consecutive images) added into
/// `dw_t` (zeros on entry), with the AVX-512 kernel ([`runs_wide`]): each image's sums, one per
/// weight, added in image order, the sums in the kernel's layout `(C_in, 9, C_out)`
/// ([`from_kernel_layout`] turns them).
fn weight_grad_wide(
    g: &ConvGeometry,
    plan: &Plan,
    (x, dy): (&[f32], &[f32]),
    units: impl Iterator<Item = usize>,
    dw_t: &mut [f32],
) {
    let (c_in, c_out) = (g.group_in_channels(), g.group_out_channels());
    let filled = plan.filled(g);
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
}
