//! Which algorithm each CPU pass runs for a given shape: Winograd or the direct 3x3 kernel where
//! they were measured faster, the GEMM paths (per unit, or whole-batch on small maps) everywhere
//! else.
//!
//! The choice depends on the geometry and, for some shapes, on the kind of CPU ([`cpu_kind`]:
//! Intel with AVX-512, AMD Zen 5 or Zen 4, or another), never on the thread count: on one
//! machine a pass computes the same values whatever the number of rayon threads. A caller can force
//! one algorithm on its own thread with [`with_algorithm`] (benchmarks and tests compare them side
//! by side).

use super::geometry::ConvGeometry;
use super::winograd_plan::Tile;
use crate::cpu_features::{amd_avx512, avx512_full_width, avx512_kernels, cpu_kind, CpuKind};
use std::cell::Cell;

/// The algorithm the convolution passes use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Algorithm {
    /// Per shape and pass, the algorithm measured fastest (the default).
    Auto,
    /// im2col + GEMM everywhere (the whole-batch GEMM on small maps), also for the grouped
    /// 3x3 layers the direct kernel would take.
    Gemm,
    /// Winograd F(2x2, 3x3) wherever it applies (dense 3x3, stride 1, padding 1), else GEMM.
    Winograd2,
    /// Winograd F(4x4, 3x3) wherever it applies, else GEMM.
    Winograd4,
    /// The direct 3x3 kernel (`direct3x3.rs`) wherever it applies (3x3, stride 1 or 2, padding
    /// 1, channels per group a multiple of 4, AVX2), and the stem's direct kernel
    /// (`stem_direct.rs`) wherever it fits, else GEMM.
    Direct,
    /// The dense direct 3x3 kernel over the whole batch (`direct3x3_dense.rs`) wherever it
    /// applies (dense 3x3, padding 1, stride 1 or 2 (the input gradient stride 1), a multiple
    /// of 64 output and 8 input channels, an Intel, AMD Zen 5 or Zen 4 CPU with AVX-512),
    /// else GEMM.
    DirectDense,
}

thread_local! {
    static FORCED: Cell<Algorithm> = const { Cell::new(Algorithm::Auto) };
}

/// Runs `f` with every convolution pass started on this thread using `algorithm` (passes
/// started on other threads are unaffected); the previous setting is restored afterwards,
/// also if `f` panics.
pub fn with_algorithm<R>(algorithm: Algorithm, f: impl FnOnce() -> R) -> R {
    struct Restore(Algorithm);
    impl Drop for Restore {
        fn drop(&mut self) {
            FORCED.with(|c| c.set(self.0));
        }
    }
    let _restore = Restore(FORCED.with(|c| c.replace(algorithm)));
    f()
}

/// One of the three passes of a convolution.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pass {
    /// The output.
    Forward,
    /// The gradient with respect to the input.
    InputGrad,
    /// The gradient with respect to the weight.
    WeightGrad,
}

/// True when Winograd can compute `g`: dense 3x3, stride 1, padding 1 ("same" output size).
fn winograd_fits(g: &ConvGeometry) -> bool {
    g.groups == 1 && g.kernel_h == 3 && g.kernel_w == 3 && g.stride == 1 && g.padding == 1
}

/// The Winograd tile that `pass` of `g` runs with, or `None` for the GEMM path.
pub fn winograd_tile(g: &ConvGeometry, pass: Pass) -> Option<Tile> {
    if !winograd_fits(g) {
        return None;
    }
    match FORCED.with(Cell::get) {
        Algorithm::Gemm | Algorithm::Direct | Algorithm::DirectDense => None,
        Algorithm::Winograd2 => Some(Tile::F2),
        Algorithm::Winograd4 => Some(Tile::F4),
        Algorithm::Auto => match measured_choice(g, pass) {
            Dense::Winograd(tile) => Some(tile),
            Dense::Gemm | Dense::Direct | Dense::OverBatch => None,
        },
    }
}

/// The Winograd tile that the forward of `g` runs with in evaluation (`forward.rs`'s
/// `eval_forward_into_then`, where the weights stay the same over a pass and their layouts are
/// kept, `weight_packs.rs`), or `None` for the other paths. As `winograd_tile`'s forward, except on
/// AMD Zen 5 and Zen 4 under [`Algorithm::Auto`]: F(4x4) for 4x4 maps with 512 channels from batch
/// 16 (one tile per map). Its filters take 36 values per 9, which cost more to transform than the
/// rest of the pass, so the training forward, which transforms them at every call, keeps GEMM
/// (batch 16) and F(2x2) (batch 32) there. Wall clock of 2 threads, best of 12, two rounds, the
/// forward with its layouts kept against the training forward's choice: batch 16 1.75 against
/// GEMM's 4.5 ms (F(4x4) transforming its filters at every call: 6.6-7.6), batch 32 3.3 against
/// F(2x2)'s 4.2-4.4 with its filters kept too.
pub fn eval_winograd_tile(g: &ConvGeometry) -> Option<Tile> {
    let one_tile_per_map = winograd_fits(g)
        && g.batch >= 16
        && (10..=36).contains(&g.out_pixels())
        && g.in_channels == 512
        && g.out_channels == 512;
    match FORCED.with(Cell::get) {
        Algorithm::Auto if one_tile_per_map && amd_avx512() => Some(Tile::F4),
        _ => winograd_tile(g, Pass::Forward),
    }
}

/// True when `pass` of `g` runs the stem's direct kernel (`stem_direct.rs`,
/// `stem_direct_weight_grad.rs`): the forward and the weight gradient of stride-2 layers on at most
/// 4 input channels (the 7x7 stem on the image), which need no input gradient. [`Algorithm::Auto`]
/// takes it on AMD Zen 5 and Zen 4, where it was measured against im2col + GEMM
/// (docs/performance.md; on Zen 4 in ResNeXt-50 batch-32 steps forward 11.5-12.7 -> 9.9-10.0 ms,
/// weight gradient 11.7-13.4 -> 11.0-11.5), and its forward on 8 lanes where AVX2 runs without
/// AVX-512 (a 2-core AMD EPYC Zen 3, batch 16, 3 alternating rounds against im2col + GEMM:
/// `conv_passes` 7.00-7.02 -> 6.41-6.44 ms, in ResNet-50 train steps 6.8-6.9 -> 6.3-6.4 ms);
/// [`Algorithm::Direct`] wherever it fits. The weight gradient runs only on 16 lanes.
pub fn stem_direct(g: &ConvGeometry, pass: Pass) -> bool {
    let fits = match pass {
        Pass::InputGrad => false,
        Pass::Forward => super::stem_direct::fits(g),
        Pass::WeightGrad => super::stem_direct_weight_grad::fits(g),
    };
    if !fits {
        return false;
    }
    match FORCED.with(Cell::get) {
        Algorithm::Auto => amd_avx512() || crate::cpu_features::avx2_only(),
        Algorithm::Direct => true,
        _ => false,
    }
}

/// True when `pass` of `g` runs the direct 3x3 kernel (`direct3x3.rs`, stride 2 through
/// `direct3x3_stride2.rs`) rather than Winograd or im2col + GEMM. [`Algorithm::Auto`] takes it
/// for grouped layers with at most 32 channels per group, measured with `conv_passes` on
/// ResNeXt-50 32x4d's grouped layers at 112x112 input (batch 16 and 32):
///
/// - Stride 1: forward and input gradient 1.3-2x faster than GEMM at every map size (28x28 to
///   4x4); the weight gradient 1.5-2x faster on 28x28 and 14x14 maps, level at 7x7 and slower
///   at 4x4, where each (channel, tap) sum runs over too few positions to pay for its final
///   reduction, so it takes the weight gradient only on maps of 100 output pixels or more.
/// - Stride 2 (28x28 to 14x14, 14x14 to 7x7, 7x7 to 4x4): forward 2.1-2.3x and input
///   gradient 2.2-3.1x faster at every size; the weight gradient 2.3x faster on 14x14 outputs,
///   1.6x on 7x7 and within 7% of GEMM on 4x4, so it takes the weight gradient only on
///   outputs of 36 pixels or more.
/// - Where the sixteen-lane kernels run (`avx512_kernels`: Intel, AMD Zen 5 and Zen 4), groups of
///   16 or 32 output channels take the weight gradient with vectors across output channels
///   (`direct3x3_wide.rs`) at every map size. CPU time of 2 threads, best of 6, batch 16 and 32,
///   against GEMM: 0.63 at 7x7, 0.65 at 4x4, 0.53 at stride 2 from 7x7 to 4x4; against the AVX2
///   kernel it replaces on larger maps: 0.62 at stride 2 from 14x14 to 7x7, 0.70-0.75 at 14x14. On
///   AMD Zen 5 (CPU time of 2 threads, best of 5, batch 16, two alternating rounds against the AVX2
///   kernel's choices): forward 0.67-0.81, input gradient 0.67-0.87, weight gradient 0.50-0.86 on
///   ResNeXt-50's grouped layers at 7x7 and 4x4 and at stride 2 from 14x14 and 7x7. On AMD Zen 4
///   those kernels together, against the AVX2 kernel's choices (`bench-one` profiles of ResNeXt-50
///   at batch 32, 3-4 rounds each way, the grouped rows of a pass summed): stride 1 forward / input
///   gradient / weight gradient 31.2-33.0 / 30.6-32.9 / 40.3-42.3 -> 24.3-26.3 / 24.6-26.5 /
///   26.9-28.5 ms per step, stride 2 9.4-10.2 / 10.2-11.9 / 12.7-14.2 -> 7.4-7.5 / 9.1-9.7 /
///   7.8-8.3, the eval forwards 30.3-33.3 -> 24.2-26.1 and 9.4-11.3 -> 7.0-7.8.
///
/// Dense layers take it where `measured_choice` says so: stride 1, and stride 2 only where the
/// AVX-512 kernel runs (`avx512_kernels`) (forced on ResNet-50's stride-2 layers, the AVX2
/// kernel was 1.4-1.6x slower in the forward and 2-4x in the input gradient).
pub fn direct_3x3(g: &ConvGeometry, pass: Pass) -> bool {
    if !super::direct3x3::applies(g) {
        return false;
    }
    match FORCED.with(Cell::get) {
        Algorithm::Direct => true,
        Algorithm::Gemm | Algorithm::Winograd2 | Algorithm::Winograd4 | Algorithm::DirectDense => {
            false
        }
        Algorithm::Auto if g.groups > 1 => {
            let narrow = g.group_in_channels().max(g.group_out_channels()) <= 32;
            narrow
                && match (g.stride, pass) {
                    (_, Pass::WeightGrad) if direct_runs_wide(g, pass) => true,
                    (1, Pass::WeightGrad) => g.out_pixels() >= 100,
                    (_, Pass::WeightGrad) => g.out_pixels() >= 36,
                    _ => true,
                }
        }
        Algorithm::Auto => measured_choice(g, pass) == Dense::Direct,
    }
}

/// True when `pass` of `g`, if it runs the direct kernel, runs it with vectors across output
/// channels (`direct3x3_wide.rs`): on an Intel, AMD Zen 5 or Zen 4 CPU with AVX-512, when the
/// kernel's output channels per group (the layer's input channels for the input gradient) are a
/// multiple of 16, except for the forward and input gradient that the narrow groups' kernel
/// takes on AMD Zen 4 (`direct3x3_narrow_rows.rs`: 16 channels per group on 14x14 maps).
pub fn direct_runs_wide(g: &ConvGeometry, pass: Pass) -> bool {
    let kernel_out = match pass {
        Pass::Forward | Pass::WeightGrad => g.group_out_channels(),
        Pass::InputGrad => g.group_in_channels(),
    };
    // At stride 1 the input gradient is the forward of a layer of `g`'s map size.
    let narrow = pass != Pass::WeightGrad && super::direct3x3_narrow_rows::fits(g, kernel_out);
    super::direct3x3_wide::runs_wide(kernel_out) && !narrow
}

/// True when `pass` of `g` runs the dense direct 3x3 kernel over the whole batch
/// (`direct3x3_dense.rs`): where `measured_choice` picks it, on an Intel, AMD Zen 5 or Zen 4
/// CPU with AVX-512; the weight gradient runs `direct3x3_dense_weight_grad.rs`.
pub fn direct_dense(g: &ConvGeometry, pass: Pass) -> bool {
    dense_fits(g, pass)
        && match FORCED.with(Cell::get) {
            Algorithm::DirectDense => true,
            Algorithm::Auto => measured_choice(g, pass) == Dense::OverBatch,
            _ => false,
        }
}

/// True when the dense kernel over the batch can compute `pass` of `g` (its channel counts):
/// a measured choice of it for a range of channel counts holds only where it can, and the
/// others keep what they ran before.
fn dense_fits(g: &ConvGeometry, pass: Pass) -> bool {
    match pass {
        Pass::Forward => super::direct3x3_dense::forward_fits(g),
        Pass::InputGrad => super::direct3x3_dense::input_grad_fits(g),
        Pass::WeightGrad => super::direct3x3_dense_weight_grad::fits(g),
    }
}

/// The algorithm `measured_choice` picks for a dense 3x3 pass.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Dense {
    Gemm,
    Winograd(Tile),
    /// The per-image direct kernel (`direct3x3.rs`, `direct3x3_wide.rs`).
    Direct,
    /// The dense direct kernel over the whole batch (`direct3x3_dense.rs`).
    OverBatch,
}

/// The per-shape choice for dense 3x3 layers, measured with `examples/conv_passes.rs`
/// (2-core Zen 4, 2 threads, `CONV_CLOCK=cpu`, best of 4-6 alternating repetitions of
/// `gemm,w2,w4,direct`) on the dense 3x3 layers of ResNet-50 at 112x112 input (64 channels at
/// 28x28, 128 at 14x14, 256 at 7x7, 512 at 4x4) and at 224x224 (64 at 56x56, 128 at 28x28,
/// 256 at 14x14, 512 at 7x7), batch 16 and 32. Times relative to im2col + GEMM:
///
/// - 56x56, 64 channels: direct forward and input gradient 0.82-0.89, F(4x4) weight gradient
///   0.82.
/// - 28x28, 64 channels: direct forward 0.92, input gradient 0.97-0.98; the weight gradient
///   level on every path (GEMM kept).
/// - 28x28, 128 channels: F(4x4) 0.71-0.77 on all three passes.
/// - 14x14, 128-256 channels: F(4x4) forward 0.65-0.91 and input gradient 0.64-0.89. The
///   weight gradient: F(2x2) 0.70-0.71 at 256 channels; at 128 within the noise of GEMM
///   (0.92-1.05, GEMM kept), F(4x4) slower.
/// - 7x7 (256-512 channels), where 7 = 2*4 - 1 wastes a quarter of F(4x4)'s tiles: F(4x4)
///   0.55-0.77 on all three passes.
/// - 4x4 maps (512 channels): F(2x2) forward and input gradient ~0.85 at batch 32, no faster at
///   batch 16; the weight gradient no faster.
///
/// Batches under 16 and other map sizes were not measured and stay on GEMM.
///
/// On an Intel CPU with AVX-512 ([`CpuKind::IntelAvx512`]) `gemm` runs its AVX-512 kernel on
/// full-width units, and so does the direct kernel (`direct3x3_wide.rs`, its vectors across
/// output channels, for groups of a multiple of 16 output channels; the values are the AVX2
/// kernel's bit for bit). Measured on a 2-core Intel Xeon (AVX-512 and AMX), 2 threads, best of
/// 6-8 alternating repetitions of `gemm,direct,w4`, wall clock and `CONV_CLOCK=cpu`, 112x112
/// input, batch 16 and 32 (CPU time at batch 32 quoted):
///
/// - 28x28 with 64 channels: direct forward 0.82 and input gradient 0.96 of GEMM's (wall clock
///   0.75-0.95), so the choice above stands.
/// - 14x14 with 128 channels: GEMM for the forward and the input gradient (0.74-0.93 of
///   F(4x4)'s wall time). The direct kernel's wall time was 0.87-0.96 of GEMM's, but its CPU
///   time level (0.96-1.0) and its share of a ResNet-50 step no shorter.
/// - 56x56 with 64 channels: the direct forward (0.78 of GEMM's) and input gradient (0.90)
///   stand; the weight gradient takes GEMM, 0.86 of F(4x4)'s.
/// - Stride 2, 28x28 to 14x14 with 128 channels (ResNet-50's first block of stage 2): the
///   direct input gradient, 0.70 of GEMM's (wall clock 0.72-0.80); the weight gradient (direct
///   1.5x slower) stays on GEMM, as do the other stride-2 layers' input and weight gradients
///   (the per-image direct kernel 1.1-4x slower: with 256-512 channels, the weights it reads
///   for each block of positions outgrow the cache).
/// - The forward of the dense stride-2 layers with the output sizes measured (14x14, 7x7, 4x4)
///   takes the dense kernel over the whole batch (`direct3x3_dense.rs`, weights in L1-sized
///   blocks of input channels); other sizes stay on GEMM. CPU time of 2
///   threads, best of 6, against the whole-batch or per-image GEMM: 0.80 / 0.79 (batch 16 /
///   32) from 14x14 to 7x7 with 256 channels, 0.86 / 0.92 from 28x28 with 128, 0.90 from 7x7
///   to 4x4 with 512 at batch 32 and 1.11 at batch 16 (GEMM kept there: the weights, read once
///   per call, outweigh the input). In a ResNet-50 batch-32 step (2 alternating rounds) these
///   forwards went 15.1-18.3 -> 9.0-9.1 ms (to 7x7), 17.2-17.4 -> 12.5-12.6 (to 4x4) and 11.4
///   -> 10.1 (to 14x14).
/// - 7x7 with 256 channels: the dense kernel's forward and input gradient, 0.84-0.86 of
///   F(4x4)'s CPU time at batch 16 and 32 (input gradient 0.97 at batch 32); in the ResNet-50
///   step the five layers' eval forwards went 40.8-43.3 -> 37.1-38.5 ms.
/// - 14x14 with 128 channels, forward and input gradient, and 4x4 with 512 channels, input
///   gradient below batch 32: the dense kernel. CPU time of 2 threads, best of 8, 3 rounds:
///   at 14x14 forward 0.85-0.87 of GEMM's (batch 16) and 0.90-0.93 (batch 32), input
///   gradient 0.84-0.86 and 0.88-0.91; at 4x4, batch 16, input gradient 0.75-0.79 of GEMM's
///   and 0.91 of F(2x2)'s (the forward stays on GEMM, 0.75 of the dense kernel's; at batch 32
///   F(2x2) stays). In ResNet-50 steps (alternating rounds, the profile rows of those
///   passes): batch 16 55.9-60.8 -> 48.0-50.4 ms (5 rounds), batch 32 91.4-93.7 -> 89.7-91.3
///   (3 rounds).
///
/// The rest stands (F(4x4) at 7x7 stayed 0.77-0.93 of GEMM's time on all three passes, and the
/// direct kernel took 1.5-2x GEMM's there, for the same reason).
///
/// On AMD Zen 5 ([`CpuKind::Zen5Avx512`], a 2-core EPYC, CPU time of 2 threads, best of 3-6,
/// two alternating rounds) the Intel choices hold, and the dense kernel over the batch takes
/// more. Against the choices made before for it (Zen 4's): the per-image direct kernel, wide,
/// on 28x28 with 64 channels, forward 0.65-0.69 and input gradient 0.69-0.72 (0.65 / 0.69 at
/// 56x56); 14x14 with 128 channels over the batch, forward 0.65-0.84 and input gradient
/// 0.80-0.88 of F(4x4)'s; the stride-2 input gradient at 128 channels 0.62-0.70 of GEMM's;
/// the stride-2 forwards over the batch 0.78-0.88 (from 28x28), 0.85-0.87 at batch 16 and
/// 0.87 at 32 (from 14x14), 0.86-0.94 at batch 32 (from 7x7); the 56x56 weight gradient on
/// GEMM, 0.86-0.88 of F(4x4)'s. With the kernel's passes of 64 input channels (best of 4-5,
/// two alternating rounds, against those choices): 28x28 with 64 channels forward 0.89-0.95
/// and input gradient 0.79-0.85 of the per-image kernel's (batch 16 and 32), 0.95-0.96 and
/// 0.88 at 56x56 (batch 16); 7x7 with 256 channels forward 0.87-0.89 and input gradient 0.86
/// of F(4x4)'s at batch 16, 0.97-0.99 at 32; the 4x4 input gradient with 512 channels
/// 0.89-0.92 of F(2x2)'s at batch 32. At 4x4 with 512 channels, batch 16, GEMM beat it for the
/// input gradient (6.5 against 9.8 ms) and keeps it.
///
/// The weight gradient takes the dense kernel over the batch (`direct3x3_dense_weight_grad.rs`)
/// on Zen 5 only (unmeasured on Intel), against the choices above (CPU time of 2 threads, best
/// of 5, two alternating rounds, batch 16 / 32): 7x7 with 256 channels 0.71-0.90 / 0.85-0.99 of
/// F(4x4)'s; 14x14 with 128 channels 0.88-0.91 / 0.95-0.97 of GEMM's; stride 2 from 28x28 with
/// 128 channels 0.79-0.84 / 0.85-0.92, from 14x14 with 256 0.81-0.82 / 0.78-0.80, and from 7x7
/// with 512 at batch 32 0.86-0.88 (level at batch 16, GEMM kept). GEMM stays at 28x28 with 64
/// channels (0.97-1.08) and at 4x4 with 512 (1.0 at batch 32, 1.10-1.17 at batch 16).
///
/// On AMD Zen 4 ([`CpuKind::Zen4Avx512`], a 2-core EPYC, model 0x11, whose 512-bit operations
/// run as two halves on 256-bit units) Zen 5's choices hold, its Winograd on channel lanes
/// below included. `bench-one` profiles of ResNet-50 at batch 16 (2 threads, 3 steps after 1,
/// 3-4 rounds each way, the rows of a pass summed over shapes) against the AVX2 kernels and
/// the choices above (Zen 4's before): dense stride-1 forward / input gradient / weight
/// gradient 65.6-68.3 / 65.0-67.0 / 73.0-73.2 -> 49.4-53.9 / 46.9-52.2 / 48.0-53.0 ms per
/// step, stride 2 19.6-20.8 / 21.6-22.7 / 20.9-21.6 -> 18.0-18.4 / 19.3-21.2 / 17.7-20.1, the
/// eval forwards 55.6-58.6 -> 39.8-47.4 (stride 1) and 20.1-20.6 -> 16.8-19.4 (stride 2); the
/// whole train step 686-690 -> 606-649 ms. Once the lane filter transform filled contiguous
/// runs (`winograd_lanes.rs`), Zen 4 took F(2x2) for the input gradient of 4x4 maps with 512
/// channels at batch 16 as well: `conv_passes` (wall clock of 2 threads, best of 9, 3 rounds)
/// 5.48-6.35 against GEMM's 6.71-7.27 ms; in ResNet-50 batch-16 steps (3 alternating profile
/// rounds, against the choice before and the transform before) 14.4-15.5 -> 12.1-13.7 ms.
/// Once the dense kernel over the batch skipped the taps that read the zero border
/// (`direct3x3_dense.rs`), Zen 4 took it for the forward of 4x4 maps with 512 channels at
/// batch 16, at stride 2 (from 7x7) and stride 1: `conv_passes` (wall clock of 2 threads, best
/// of 9, 3 rounds) at stride 2 6.30-7.01 against GEMM's 6.71-7.34 ms; in ResNet-50 batch-16
/// steps (3 alternating profile rounds, against the choices and the kernel before) the
/// stride-2 forward 7.5-8.2 -> 6.0-6.2 ms (its eval forward 7.5-8.1 -> 4.7-5.3), the two
/// stride-1 forwards 13.3-15.2 -> 11.9-12.2. The kernel itself, `conv_passes` (best of 7, 2
/// alternating rounds, before -> after): stride 2 from 7x7 with 512 channels 7.58-8.43 ->
/// 6.18-6.42 ms at batch 16 and 13.09-14.73 -> 10.54-12.52 at batch 32, from 14x14 with 256
/// 5.05-5.27 -> 4.64-5.04 at batch 16; at stride 1 on 4x4 maps level with F(2x2) (forward
/// 5.99-7.46 against 5.76-7.53, input gradient 5.64-8.05 against 4.91-7.26), which keeps the
/// input gradient there and the batch-32 forward.
///
/// On a 2-core AMD EPYC Zen 3 (AVX2 only: `cpu_features::avx2_only`), wall clock of 2 threads,
/// best of 7, 3 alternating rounds, against the choices above (Zen 4's), three differ:
///
/// - 14x14 with 128 channels, weight gradient: F(2x2), 5.04-5.16 against GEMM's 6.41-6.51 ms at
///   batch 16, 9.59-9.80 against 11.87-12.01 at batch 32.
/// - 28x28 with 64 channels, weight gradient at batch 16: F(4x4), 5.29-5.34 against GEMM's
///   5.95-6.06 ms (at batch 32 unclear, GEMM kept).
/// - Stride 2 from 28x28 with 128 channels: the per-image direct kernel, forward 6.76-6.82
///   against GEMM's 7.45-7.51 ms at batch 16 (13.78-13.91 against 14.84-15.11 at 32), input
///   gradient 6.56-6.77 against 8.36-8.50 (13.03-13.71 against 16.78-17.18).
///
/// In ResNet-50 batch-16 train steps (2 alternating profile rounds) those rows went: 14x14
/// weight gradients 21.5-22.8 -> 15.4-16.4 ms, 28x28 ones 20.1-22.5 -> 17.7, the stride-2
/// forward 7.5-10.9 -> 7.1-7.4 and input gradient 8.4-9.3 -> 6.9-7.2, its eval forward 8.7-9.9
/// -> 7.1-7.2. The direct input gradient from 7x7 with 512 channels, 13.13-13.39 against GEMM's
/// 15.18-15.94 ms alone at batch 16, took 14.2-14.7 against 11.7-12.5 inside the steps and is
/// not used.
///
/// On Zen 5 Winograd with its transforms on channel lanes (`winograd_lanes.rs`) then took the
/// stride-1 layers from those choices. CPU time of 2 threads, best of 5, two rounds, batch 16 /
/// 32, against them: 28x28 with 64 channels F(4x4) forward 0.58-0.66 / 0.61, input gradient
/// 0.55-0.58 / 0.55-0.57, weight gradient 0.53-0.58 / 0.59-0.60 (of GEMM's); 56x56 with 64
/// F(4x4) forward 0.60-0.62 / 0.59-0.60, input gradient 0.58-0.61 / 0.61-0.62, weight gradient
/// 0.68-0.70 / 0.69; 14x14 with 128 F(2x2) (F(4x4) level at batch 16, 5-15% slower at 32)
/// forward 0.72-0.74 / 0.64-0.67, input gradient 0.66-0.71 / 0.60-0.62, weight gradient
/// 0.63-0.66 / 0.60-0.62; 7x7 with 256 F(4x4) forward 0.92 / 0.70-0.71, input gradient
/// 0.84-0.89 / 0.70-0.72, weight gradient 0.62 / 0.56; 4x4 with 512 F(2x2) for the weight
/// gradient, 0.70-0.71 / 0.52-0.54 of GEMM's, and the input gradient at batch 32, 0.85-0.86 of
/// the dense kernel's (at batch 16 GEMM keeps it: F(2x2) took 1.12-1.14 of its time, and the
/// 4x4 forward stays as above).
fn measured_choice(g: &ConvGeometry, pass: Pass) -> Dense {
    let pixels = g.out_pixels();
    let channels = g.group_in_channels().min(g.group_out_channels());
    let full_width = avx512_full_width();
    let intel = cpu_kind() == CpuKind::IntelAvx512;
    // Zen 5's choices, which Zen 4 shares (`amd_avx512`).
    let zen5_choices = amd_avx512();
    let zen4 = crate::cpu_features::zen4();
    let avx2_only = crate::cpu_features::avx2_only();
    if g.groups == 1 && g.kernel_h == 3 && g.kernel_w == 3 && g.stride == 2 && g.padding == 1 {
        let shape = g.batch >= 16 && (150..=400).contains(&pixels) && channels == 128;
        // The outputs measured at 112x112 input: 14x14, 7x7, and 4x4 (512 channels, whose
        // weights outweigh the input below batch 32; on Zen 4 from batch 16, where its corner
        // and edge positions skip their border taps).
        let dense = match pixels {
            150..=400 | 37..=64 => g.batch >= 16,
            10..=36 => g.batch >= 32 || (zen4 && g.batch >= 16 && channels == 512),
            _ => false,
        };
        // The weight gradient, measured on Zen 5 only: outputs of 14x14 (128 channels) and 7x7
        // (256) from batch 16, 4x4 (512) from batch 32.
        let weight_grad = match (pixels, channels) {
            (150..=400, 128) | (37..=64, 256) => g.batch >= 16,
            (10..=36, 512) => g.batch >= 32,
            _ => false,
        };
        // AVX2 without AVX-512 (Zen 3): the per-image direct kernel for 128 channels from 28x28.
        let avx2_direct = avx2_only && shape && pass != Pass::WeightGrad;
        return match pass {
            Pass::Forward if avx512_kernels() && dense => Dense::OverBatch,
            Pass::InputGrad if avx512_kernels() && shape => Dense::Direct,
            Pass::Forward | Pass::InputGrad if avx2_direct => Dense::Direct,
            Pass::WeightGrad if zen5_choices && weight_grad => Dense::OverBatch,
            _ => Dense::Gemm,
        };
    }
    if !winograd_fits(g) || g.batch < 16 {
        return Dense::Gemm;
    }
    let wide = g.batch >= 32;
    match (pixels, channels, pass) {
        // Zen 5, Winograd with its transforms on channel lanes (`winograd_lanes.rs`).
        (2500..=3300 | 700..=900, 64, _) | (37..=64, 256, _) if zen5_choices => {
            Dense::Winograd(Tile::F4)
        }
        (150..=400, 128, _) if zen5_choices => Dense::Winograd(Tile::F2),
        (10..=36, 512, Pass::WeightGrad) if zen5_choices => Dense::Winograd(Tile::F2),
        (10..=36, 512, Pass::InputGrad) if zen5_choices && (wide || zen4) => {
            Dense::Winograd(Tile::F2)
        }
        (37..=64, 256, Pass::Forward | Pass::InputGrad) if full_width => Dense::OverBatch,
        (150..=400, 128, Pass::Forward | Pass::InputGrad) if full_width => Dense::OverBatch,
        (10..=36, 512, Pass::InputGrad) if intel && !wide => Dense::OverBatch,
        (10..=36, 512, Pass::Forward) if zen4 && !wide => Dense::OverBatch,
        // AVX2 without AVX-512 (Zen 3): Winograd for two weight gradients GEMM kept elsewhere.
        (700..=900, 64, Pass::WeightGrad) if avx2_only && !wide => Dense::Winograd(Tile::F4),
        (150..=400, 128.., Pass::WeightGrad) if avx2_only => Dense::Winograd(Tile::F2),
        (2500..=3300, ..=64, Pass::WeightGrad) if full_width => Dense::Gemm,
        (2500..=3300, ..=64, Pass::WeightGrad) => Dense::Winograd(Tile::F4),
        (2500..=3300 | 700..=900, ..=64, Pass::Forward | Pass::InputGrad) => Dense::Direct,
        (700..=900, 128.., _) => Dense::Winograd(Tile::F4),
        (150..=400, 256.., Pass::WeightGrad) => Dense::Winograd(Tile::F2),
        (150..=400, _, Pass::WeightGrad) => Dense::Gemm,
        (150..=400, 128.., _) => Dense::Winograd(Tile::F4),
        (37..=64, _, _) => Dense::Winograd(Tile::F4),
        (10..=36, _, Pass::Forward | Pass::InputGrad) if wide => Dense::Winograd(Tile::F2),
        _ => Dense::Gemm,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dense3x3(batch: usize, channels: usize, hw: usize) -> ConvGeometry {
        ConvGeometry::new(
            &[batch, channels, hw, hw],
            &[channels, channels, 3, 3],
            1,
            1,
            1,
        )
        .expect("geometry")
    }

    /// The evaluation forward takes F(4x4) on 4x4 maps with 512 channels from batch 16 on Zen 5 and
    /// Zen 4 (where the training forward takes GEMM or F(2x2)); everywhere else, and under a forced
    /// algorithm, the training forward's choice.
    #[test]
    fn the_eval_forward_takes_f4_on_one_tile_maps_on_zen5() {
        let zen5_choices = amd_avx512();
        for batch in [8, 16, 32] {
            for (channels, hw) in [(512, 4), (256, 7), (128, 14), (64, 28)] {
                let g = dense3x3(batch, channels, hw);
                let training = winograd_tile(&g, Pass::Forward);
                let want = match zen5_choices && batch >= 16 && channels == 512 {
                    true => Some(Tile::F4),
                    false => training,
                };
                assert_eq!(eval_winograd_tile(&g), want, "{batch} x {channels} @ {hw}");
                let forced = with_algorithm(Algorithm::Winograd2, || eval_winograd_tile(&g));
                assert_eq!(forced, Some(Tile::F2), "{batch} x {channels} @ {hw}");
            }
        }
        if zen5_choices {
            assert_ne!(
                winograd_tile(&dense3x3(16, 512, 4), Pass::Forward),
                Some(Tile::F4)
            );
        }
    }

    /// On Zen 4 the dense kernel over the batch takes the forward of 4x4 maps with 512 channels
    /// at batch 16, from 4x4 (stride 1) and from 7x7 (stride 2); at batch 32 it takes the stride-2
    /// one on every CPU with the AVX-512 kernels and leaves the stride-1 one to F(2x2) on Zen 5
    /// and Zen 4.
    #[test]
    fn the_dense_kernel_takes_the_measured_4x4_forwards() {
        let zen4 = crate::cpu_features::zen4();
        let (stride1, stride2) = (
            |b| dense3x3(b, 512, 4),
            |b| ConvGeometry::new(&[b, 512, 7, 7], &[512, 512, 3, 3], 2, 1, 1).expect("geometry"),
        );
        assert_eq!(direct_dense(&stride1(16), Pass::Forward), zen4);
        assert_eq!(direct_dense(&stride2(16), Pass::Forward), zen4);
        assert_eq!(direct_dense(&stride2(32), Pass::Forward), avx512_kernels());
        assert!(!direct_dense(&stride1(8), Pass::Forward));
        // Narrower layers keep GEMM at batch 16 on every CPU: Zen 4's choice was measured on 512
        // channels.
        let narrow =
            ConvGeometry::new(&[16, 64, 7, 7], &[64, 64, 3, 3], 2, 1, 1).expect("geometry");
        assert!(!direct_dense(&narrow, Pass::Forward));
        if amd_avx512() {
            assert!(!direct_dense(&stride1(32), Pass::Forward));
        }
    }

    /// On Zen 5 and Zen 4 Winograd takes ResNet-50's stride-1 3x3 layers with the tiles measured
    /// fastest (at 4x4 with batch 16 the forward stays off it, and on Zen 5 the input gradient
    /// too); on AVX2 without AVX-512 it takes the weight gradients at 14x14 (F(2x2)) and at 28x28
    /// with 64 channels below batch 32 (F(4x4)); elsewhere it never takes the 28x28 layer with 64
    /// channels. A layer narrower than those measured (the demo profile's 8 channels at 28x28)
    /// stays off it everywhere.
    #[test]
    fn winograd_takes_the_measured_layers() {
        let passes = [Pass::Forward, Pass::InputGrad, Pass::WeightGrad];
        let zen5_choices = amd_avx512();
        let avx2_only = crate::cpu_features::avx2_only();
        let (f2, f4) = (Some(Tile::F2), Some(Tile::F4));
        for batch in [16, 32] {
            let tiles =
                |channels, hw| passes.map(|p| winograd_tile(&dense3x3(batch, channels, hw), p));
            assert_eq!(tiles(8, 28), [None; 3], "batch {batch}");
            if avx2_only {
                let at_28 = (batch < 32).then_some(Tile::F4);
                assert_eq!(tiles(64, 28), [None, None, at_28], "batch {batch}");
                assert_eq!(tiles(128, 14), [f4, f4, f2], "batch {batch}");
                continue;
            }
            if !zen5_choices {
                assert_eq!(tiles(64, 28), [None; 3], "batch {batch}");
                continue;
            }
            assert_eq!(tiles(64, 56), [f4; 3], "batch {batch}");
            assert_eq!(tiles(64, 28), [f4; 3], "batch {batch}");
            assert_eq!(tiles(128, 14), [f2; 3], "batch {batch}");
            assert_eq!(tiles(256, 7), [f4; 3], "batch {batch}");
            let wide = batch >= 32;
            let dx_at_4x4 = (wide || crate::cpu_features::zen4()).then_some(Tile::F2);
            let at_4x4 = [wide.then_some(Tile::F2), dx_at_4x4, f2];
            assert_eq!(tiles(512, 4), at_4x4, "batch {batch}");
        }
    }
}
