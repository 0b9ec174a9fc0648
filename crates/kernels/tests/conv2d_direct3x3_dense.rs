//! The dense direct 3x3 kernels over the whole batch (conv2d/direct3x3_dense.rs and
//! conv2d/direct3x3_dense_weight_grad.rs) against the im2col + GEMM passes on the same inputs:
//! the forward and the weight gradient at stride 1 and 2 and the stride-1 input gradient of
//! dense 3x3 padding-1 convolutions, over maps from 1x1 to 14x14 (odd,
//! non-square, fewer positions than one register block, blocks that span images), with the
//! kernel forced (`Algorithm::DirectDense`); which ResNet-50 layers `Algorithm::Auto` gives it;
//! and bit-identical results under rayon pools of 1, 2 and 3 threads. It runs only where
//! AVX-512 runs on Intel, AMD Zen 5 and Zen 4; elsewhere the tests say so and check
//! that nothing takes it.

use candle_core::Result;
use mtanet_kernels::conv2d::{
    cpu_kind, direct_3x3, direct_dense, with_algorithm, Algorithm, CpuKind, Pass,
};
use mtanet_kernels::ConvGeometry;

mod support;
use support::{conv_passes, relative_error, same_bits_on_1_2_3_threads, PASSES};

/// (batch, in channels, out channels, height, width, stride).
type Shape = [usize; 6];

const SHAPES: &[Shape] = &[
    [3, 64, 64, 7, 7, 2],
    [2, 128, 64, 14, 14, 2],
    [2, 64, 128, 5, 6, 2],
    [1, 64, 64, 9, 11, 2],
    [2, 16, 64, 3, 5, 2],
    [2, 256, 256, 7, 7, 1],
    [2, 128, 128, 14, 14, 1],
    [3, 64, 128, 4, 4, 1],
    [2, 64, 64, 1, 1, 1],
    [2, 8, 64, 6, 3, 1],
    [1, 128, 192, 2, 9, 1],
];

fn geometry(&[n, c_in, c_out, h, w, stride]: &Shape) -> Result<ConvGeometry> {
    ConvGeometry::new(&[n, c_in, h, w], &[c_out, c_in, 3, 3], stride, 1, 1)
}

/// Output, input gradient and weight gradient of one shape, with `algorithm` forced.
fn passes(algorithm: Algorithm, shape: &Shape, seed: u64) -> Result<[Vec<f32>; 3]> {
    conv_passes(algorithm, &geometry(shape)?, seed)
}

/// Whether this CPU runs the kernel at all (AVX-512 on Intel, AMD Zen 5 or Zen 4).
fn runs_here() -> Result<bool> {
    let g = geometry(&SHAPES[0])?;
    Ok(with_algorithm(Algorithm::DirectDense, || {
        direct_dense(&g, Pass::Forward)
    }))
}

/// Under `Algorithm::DirectDense` every shape's forward and weight gradient take the kernels,
/// the input gradient at stride 1 where the channels fit; `Algorithm::Auto` gives them the
/// ResNet-50 layers they were measured faster on at 112x112 input and keeps the others.
#[test]
fn the_shapes_take_the_dense_kernel() -> Result<()> {
    // A 28x28 layer with 8 channels (the demo profile's): the kernel cannot take it (fewer than
    // 64 output channels), so it keeps the per-image direct kernel wherever that runs, also on
    // the CPUs whose measured choice for that map size is the dense kernel.
    let narrow = geometry(&[32, 8, 8, 28, 28, 1])?;
    let passes = [Pass::Forward, Pass::InputGrad];
    assert_eq!(passes.map(|p| direct_dense(&narrow, p)), [false; 2]);
    if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
        assert_eq!(
            passes.map(|p| direct_3x3(&narrow, p)),
            [true; 2],
            "{narrow:?}"
        );
    }
    if !runs_here()? {
        eprintln!("no AVX-512 on Intel, AMD Zen 5 or Zen 4: the dense kernel is off");
        for shape in SHAPES {
            let g = geometry(shape)?;
            let any = with_algorithm(Algorithm::DirectDense, || {
                [Pass::Forward, Pass::InputGrad, Pass::WeightGrad].map(|p| direct_dense(&g, p))
            });
            assert_eq!(any, [false; 3], "{shape:?}");
        }
        return Ok(());
    }
    for shape in SHAPES {
        let g = geometry(shape)?;
        let passes = with_algorithm(Algorithm::DirectDense, || {
            [Pass::Forward, Pass::InputGrad, Pass::WeightGrad].map(|p| direct_dense(&g, p))
        });
        let input_grad = g.stride == 1 && g.in_channels % 64 == 0;
        assert_eq!(passes, [true, input_grad, true], "{shape:?}");
        let off = with_algorithm(Algorithm::Gemm, || direct_dense(&g, Pass::Forward));
        assert!(!off, "{shape:?}: Algorithm::Gemm must turn it off");
    }
    // (shape, forward, input gradient, weight gradient) under Algorithm::Auto, as measured on
    // Intel (the weight gradient: on Zen 5 and Zen 4 only, at stride 2); on AMD Zen 5 and Zen 4
    // Winograd takes the stride-1 layers, except that on Zen 4 the kernel takes the forward of
    // 4x4 maps with 512 channels at batch 16 (from 4x4 and from 7x7).
    let zen5_choices = matches!(cpu_kind(), CpuKind::Zen5Avx512 | CpuKind::Zen4Avx512);
    let zen4 = cpu_kind() == CpuKind::Zen4Avx512;
    for (shape, forward, input_grad, weight_grad) in [
        ([32, 128, 128, 28, 28, 2], true, false, true),
        ([16, 128, 128, 28, 28, 2], true, false, true),
        ([16, 256, 256, 14, 14, 2], true, false, true),
        ([32, 512, 512, 7, 7, 2], true, false, true),
        ([16, 512, 512, 7, 7, 2], false, false, false),
        ([16, 256, 256, 7, 7, 1], true, true, true),
        ([32, 256, 256, 7, 7, 1], true, true, true),
        ([32, 512, 512, 4, 4, 1], false, false, false),
        ([16, 512, 512, 4, 4, 1], false, true, false),
        ([32, 128, 128, 14, 14, 1], true, true, true),
        ([16, 128, 128, 14, 14, 1], true, true, true),
        ([32, 64, 64, 28, 28, 1], false, false, false),
        ([8, 256, 256, 7, 7, 1], false, false, false),
        // A stride-2 shape of 224x224 input (28x28 outputs), not measured: GEMM.
        ([32, 128, 128, 56, 56, 2], false, false, false),
    ] {
        let g = geometry(&shape)?;
        let auto = [Pass::Forward, Pass::InputGrad, Pass::WeightGrad].map(|p| direct_dense(&g, p));
        let want = match shape {
            [16, 512, 512, 4, 4, 1] if zen4 => [true, false, false],
            [16, 512, 512, 7, 7, 2] if zen4 => [true, false, false],
            // Winograd takes Zen 5's stride-1 layers (`select.rs`).
            [_, _, _, _, _, 1] if zen5_choices => [false; 3],
            _ => [forward, input_grad, weight_grad && zen5_choices],
        };
        assert_eq!(
            auto,
            want,
            "{shape:?} under Algorithm::Auto on {:?}",
            cpu_kind()
        );
    }
    Ok(())
}

#[test]
fn dense_kernel_matches_gemm() -> Result<()> {
    for (i, shape) in SHAPES.iter().enumerate() {
        let seed = 500 + 10 * i as u64;
        let reference = passes(Algorithm::Gemm, shape, seed)?;
        let ours = passes(Algorithm::DirectDense, shape, seed)?;
        for (what, (a, b)) in PASSES.iter().zip(ours.iter().zip(&reference)) {
            let e = relative_error(a, b);
            assert!(e <= 2e-6, "{shape:?}: {what} relative error {e}");
        }
    }
    Ok(())
}

#[test]
fn same_bits_with_one_two_and_three_threads() -> Result<()> {
    same_bits_on_1_2_3_threads("dense direct", SHAPES, |shape, seed| {
        passes(Algorithm::DirectDense, shape, seed)
    })
}
