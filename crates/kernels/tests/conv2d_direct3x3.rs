//! The direct 3x3 passes (conv2d/direct3x3.rs, direct3x3_stride2.rs) against the im2col + GEMM
//! passes on the same inputs: forward, input gradient and weight gradient of grouped 3x3,
//! stride-1 and stride-2, padding-1 convolutions with 4 to 32 channels per group (where
//! `Algorithm::Auto` picks them), over map sizes from 1x1 to 28x28 (odd, non-square, smaller
//! and larger than one register block of positions, and the square maps the wide kernel reads
//! in place) and odd batches, and of dense ones with the direct kernel forced
//! (`Algorithm::Direct`); and bit-identical results under rayon pools of 1, 2 and 3 threads.

use candle_core::Result;
use mtanet_kernels::conv2d::{direct_3x3, direct_runs_wide, with_algorithm, Algorithm, Pass};
use mtanet_kernels::ConvGeometry;

mod support;
use support::{conv_passes, relative_error, same_bits_on_1_2_3_threads, PASSES};

/// (batch, in channels, out channels, height, width, groups, stride).
type Shape = [usize; 7];

const SHAPES: &[Shape] = &[
    [1, 8, 8, 5, 5, 2, 1],
    [3, 16, 32, 9, 7, 4, 1],
    // 4 channels per group on 28x28 and 14x14 maps, and 8 on 14x14 below: on AMD Zen 4 the
    // narrow kernel on the unit's own planes (`direct3x3_narrow_rows.rs`).
    [2, 64, 64, 28, 28, 16, 1],
    [3, 16, 16, 14, 14, 4, 1],
    [5, 128, 128, 4, 4, 4, 1],
    [2, 96, 64, 7, 7, 8, 1],
    [2, 32, 32, 1, 1, 8, 1],
    [1, 24, 24, 11, 13, 2, 1],
    [3, 256, 256, 14, 14, 32, 1],
    // 16 and 32 channels per group at stride 1: the AVX-512 kernel's vectors across output
    // channels (`direct3x3_wide.rs`) where the CPU has it, with 1 and 2 vectors.
    [2, 512, 512, 7, 7, 32, 1],
    [2, 1024, 1024, 4, 4, 32, 1],
    // The same kernel on the unit's own planes (`direct3x3_wide_rows.rs`, on AMD Zen 5): square
    // maps of 4, 7 and 14 with 1 vector, 4 and 7 with 2. (On AMD Zen 4 the 14x14 one's forward
    // and input gradient run the narrow kernel, `direct3x3_narrow_rows.rs`.)
    [3, 256, 256, 4, 4, 16, 1],
    [1, 1024, 1024, 7, 7, 32, 1],
    [2, 512, 512, 14, 14, 32, 1],
    // Maps narrower than a register: a row's tail spills past the row after it.
    [2, 8, 8, 6, 1, 2, 1],
    [2, 8, 8, 5, 2, 2, 1],
    [1, 8, 8, 1, 30, 2, 1],
    // Stride 2 (the grouped layers that halve the map): even and odd sizes, non-square, maps
    // that halve to one pixel or one row, and ResNeXt's first-block shapes.
    [2, 16, 16, 14, 14, 4, 2],
    [3, 8, 16, 7, 7, 2, 2],
    [1, 32, 32, 9, 6, 8, 2],
    [2, 8, 8, 2, 2, 2, 2],
    [2, 8, 8, 1, 5, 2, 2],
    [2, 8, 8, 1, 1, 2, 2],
    [2, 8, 8, 6, 1, 2, 2],
    [2, 8, 8, 5, 1, 2, 2],
    [1, 8, 8, 28, 3, 2, 2],
    [2, 256, 256, 28, 28, 32, 2],
    // From 28x28 with 4 channels per group (8 above): on AMD Zen 4 the narrow kernel's rows of
    // 16 lanes (`direct3x3_narrow_phases.rs`).
    [3, 64, 64, 28, 28, 16, 2],
    [3, 512, 512, 14, 14, 32, 2],
    [2, 1024, 1024, 7, 7, 32, 2],
    // Stride 2 on the unit's own planes (Zen 5): from 7x7 with 16 channels per group, 14x14
    // with 32, 28x28 with 16.
    [2, 256, 256, 7, 7, 16, 2],
    [1, 1024, 1024, 14, 14, 32, 2],
    [1, 512, 512, 28, 28, 32, 2],
];

/// Shapes `Algorithm::Auto` keeps on GEMM that `Algorithm::Direct` runs directly: dense, and
/// 64 channels per group.
const FORCED_ONLY: &[Shape] = &[
    [2, 16, 24, 9, 11, 1, 1],
    [3, 64, 32, 6, 6, 1, 1],
    [2, 128, 128, 5, 4, 2, 1],
    // 48 channels per group: 3 vectors of the AVX-512 kernel.
    [2, 96, 96, 5, 6, 2, 1],
    // Dense, 16 and 32 output channels on the unit's own planes (and 12 and 16 input channels
    // for the input gradient's).
    [2, 12, 16, 7, 7, 1, 1],
    [3, 16, 32, 4, 4, 1, 1],
    [2, 24, 16, 11, 8, 1, 2],
];

fn geometry(&[n, c_in, c_out, h, w, groups, stride]: &Shape) -> Result<ConvGeometry> {
    ConvGeometry::new(
        &[n, c_in, h, w],
        &[c_out, c_in / groups, 3, 3],
        stride,
        1,
        groups,
    )
}

/// Output, input gradient and weight gradient of one shape, with `algorithm` forced.
fn passes(algorithm: Algorithm, shape: &Shape, seed: u64) -> Result<[Vec<f32>; 3]> {
    conv_passes(algorithm, &geometry(shape)?, seed)
}

/// The shapes do take the direct path on a CPU with AVX2 and FMA (else the comparison below
/// would compare the GEMM path with itself): the forward and input gradient everywhere, the
/// weight gradient on outputs of 100 pixels or more at stride 1, 36 or more at stride 2, and
/// on every map where the AVX-512 kernel takes it (16 or 32 output channels per group on a
/// CPU with AVX-512: Intel, AMD Zen 5 and Zen 4).
#[test]
fn the_shapes_take_the_direct_path() -> Result<()> {
    if !(std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma"))
    {
        eprintln!("no AVX2/FMA: the direct path is off on this CPU");
        return Ok(());
    }
    for shape in SHAPES {
        let g = geometry(shape)?;
        let weight_grad = g.out_pixels() >= if g.stride == 1 { 100 } else { 36 }
            || direct_runs_wide(&g, Pass::WeightGrad);
        assert!(direct_3x3(&g, Pass::Forward), "{shape:?} forward");
        assert!(direct_3x3(&g, Pass::InputGrad), "{shape:?} input grad");
        assert_eq!(
            direct_3x3(&g, Pass::WeightGrad),
            weight_grad,
            "{shape:?} weight grad"
        );
        let forced = with_algorithm(Algorithm::Gemm, || direct_3x3(&g, Pass::Forward));
        assert!(
            !forced,
            "{shape:?}: Algorithm::Gemm must turn the direct path off"
        );
    }
    // Dense shapes, and more than 32 channels per group, stay on GEMM unless forced.
    for shape in FORCED_ONLY {
        let g = geometry(shape)?;
        assert!(!direct_3x3(&g, Pass::Forward), "{shape:?}");
        let forced = with_algorithm(Algorithm::Direct, || {
            [Pass::Forward, Pass::InputGrad, Pass::WeightGrad].map(|p| direct_3x3(&g, p))
        });
        assert_eq!(forced, [true; 3], "{shape:?} under Algorithm::Direct");
    }
    // Channels per group that are not a multiple of 4 never take it.
    let odd = geometry(&[2, 6, 6, 8, 8, 3, 1])?;
    let stride3 = geometry(&[2, 8, 8, 9, 9, 2, 3])?;
    let forced = with_algorithm(Algorithm::Direct, || direct_3x3(&stride3, Pass::Forward));
    assert!(!forced, "stride 3 never takes it");
    let forced = with_algorithm(Algorithm::Direct, || direct_3x3(&odd, Pass::Forward));
    assert!(!forced);
    Ok(())
}

fn check_against_gemm(algorithm: Algorithm, shapes: &[Shape]) -> Result<()> {
    for (i, shape) in shapes.iter().enumerate() {
        let seed = 300 + 10 * i as u64;
        let reference = passes(Algorithm::Gemm, shape, seed)?;
        let ours = passes(algorithm, shape, seed)?;
        for (what, (a, b)) in PASSES.iter().zip(ours.iter().zip(&reference)) {
            let e = relative_error(a, b);
            assert!(
                e <= 2e-6,
                "{algorithm:?} {shape:?}: {what} relative error {e}"
            );
        }
    }
    Ok(())
}

#[test]
fn direct_passes_match_gemm() -> Result<()> {
    check_against_gemm(Algorithm::Auto, SHAPES)
}

#[test]
fn forced_direct_passes_match_gemm() -> Result<()> {
    check_against_gemm(Algorithm::Direct, SHAPES)?;
    check_against_gemm(Algorithm::Direct, FORCED_ONLY)
}

#[test]
fn same_bits_with_one_two_and_three_threads() -> Result<()> {
    let shapes: Vec<Shape> = SHAPES.iter().chain(FORCED_ONLY).copied().collect();
    same_bits_on_1_2_3_threads("direct", &shapes, |shape, seed| {
        passes(Algorithm::Direct, shape, seed)
    })
}
