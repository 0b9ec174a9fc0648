//! The Winograd passes (conv2d/winograd.rs) against the im2col + GEMM passes on the same
//! inputs: forward, input gradient and weight gradient of dense 3x3, stride-1, padding-1
//! convolutions, over map sizes that tiles divide and do not (7x7, 4x4, odd and non-square),
//! batch 1 and odd batches; and bit-identical results under rayon pools of 1, 2 and 3 threads.

use candle_core::Result;
use mtanet_kernels::conv2d::{with_algorithm, Algorithm};
use mtanet_kernels::{Conv2d, Conv2dInputGrad, Conv2dWeightGrad, ConvGeometry};

mod support;
use support::{
    pseudo_random_unit as pseudo_random, relative_error, same_bits_on_1_2_3_threads, PASSES,
};

/// (batch, in channels, out channels, height, width).
const SHAPES: &[(usize, usize, usize, usize, usize)] = &[
    (1, 3, 4, 9, 9),
    (3, 8, 6, 7, 7),
    (5, 16, 16, 4, 4),
    (2, 5, 7, 9, 6),
    (1, 32, 16, 14, 14),
    (3, 12, 20, 11, 13),
    (2, 4, 4, 1, 1),
    (2, 4, 3, 2, 3),
    (17, 24, 8, 7, 7),
    (4, 64, 64, 28, 28),
];

/// Output, input gradient and weight gradient of one shape, with `algorithm` forced.
fn passes(
    algorithm: Algorithm,
    &(n, c_in, c_out, h, w): &(usize, usize, usize, usize, usize),
    seed: u64,
) -> Result<[Vec<f32>; 3]> {
    let x = pseudo_random(&[n, c_in, h, w], seed)?;
    let wt = pseudo_random(&[c_out, c_in, 3, 3], seed + 1)?;
    let dy = pseudo_random(&[n, c_out, h, w], seed + 2)?;
    let geometry = ConvGeometry::new(x.dims(), wt.dims(), 1, 1, 1)?;
    let op = Conv2d {
        stride: 1,
        padding: 1,
        groups: 1,
    };
    with_algorithm(algorithm, || {
        let y = x.apply_op2_no_bwd(&wt, &op)?;
        let dx = dy.apply_op2_no_bwd(&wt, &Conv2dInputGrad { geometry })?;
        let dw = x.apply_op2_no_bwd(&dy, &Conv2dWeightGrad { geometry })?;
        Ok([
            y.flatten_all()?.to_vec1()?,
            dx.flatten_all()?.to_vec1()?,
            dw.flatten_all()?.to_vec1()?,
        ])
    })
}

fn check_against_gemm(algorithm: Algorithm, tolerance: f32) -> Result<()> {
    for (i, shape) in SHAPES.iter().enumerate() {
        let seed = 100 + 10 * i as u64;
        let reference = passes(Algorithm::Gemm, shape, seed)?;
        let ours = passes(algorithm, shape, seed)?;
        for (what, (a, b)) in PASSES.iter().zip(ours.iter().zip(&reference)) {
            let e = relative_error(a, b);
            assert!(
                e <= tolerance,
                "{algorithm:?} {shape:?}: {what} relative error {e}"
            );
        }
    }
    Ok(())
}

#[test]
fn winograd_2x2_matches_gemm() -> Result<()> {
    check_against_gemm(Algorithm::Winograd2, 2e-6)
}

#[test]
fn winograd_4x4_matches_gemm() -> Result<()> {
    check_against_gemm(Algorithm::Winograd4, 2e-5)
}

#[test]
fn same_bits_with_one_two_and_three_threads() -> Result<()> {
    for algorithm in [Algorithm::Auto, Algorithm::Winograd2, Algorithm::Winograd4] {
        same_bits_on_1_2_3_threads(&format!("{algorithm:?}"), SHAPES, |shape, seed| {
            passes(algorithm, shape, seed)
        })?;
    }
    Ok(())
}
