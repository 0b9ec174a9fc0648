//! The stem as one training op, `conv_bn_relu_max_pool_train`, against the two ops it replaces,
//! `max_pool2d(conv_bn_train(.., relu: true))` (each tested on its own in the other suites):
//! the same output and batch statistics bit for bit, and the same gradients of the input, the
//! conv weight and the BatchNorm weight and bias (as numbers: candle adds the separate ops'
//! pool gradient into a zero-filled buffer, which can flip a zero's sign), for both stem-pool
//! styles (padded, and ceil mode without padding), on stem-like and other convolutions; and an
//! input that needs no gradient (the network's image) gets none.

use candle_core::{Result, Var};
use mtanet_kernels::{
    conv_bn_relu_max_pool_train, conv_bn_train, max_pool2d, ConvParams, MaxPoolParams,
};

mod support;
use support::{assert_same_bits, assert_same_gradient_numbers, pseudo_random};

/// (batch, c_in, c_out, size, kernel, stride, padding): a 7x7/2 stem, an odd map, a 3x3 layer.
const CASES: [(usize, usize, usize, usize, usize, usize, usize); 3] = [
    (2, 3, 8, 20, 7, 2, 3),
    (3, 3, 16, 15, 7, 2, 3),
    (2, 8, 16, 9, 3, 1, 1),
];

const POOLS: [MaxPoolParams; 2] = [
    MaxPoolParams {
        kernel: 3,
        stride: 2,
        padding: 1,
        ceil_mode: false,
    },
    MaxPoolParams {
        kernel: 3,
        stride: 2,
        padding: 0,
        ceil_mode: true,
    },
];

#[test]
fn the_stem_op_equals_conv_bn_then_max_pool() -> Result<()> {
    for (i, &(n, c_in, c_out, size, k, stride, padding)) in CASES.iter().enumerate() {
        for (j, pool) in POOLS.into_iter().enumerate() {
            let seed = 100 * i as u64 + 10 * j as u64;
            let var = |shape: &[usize], seed: u64, scale: f32, offset: f32| {
                Var::from_tensor(&pseudo_random(shape, seed, scale, offset)?)
            };
            let x = var(&[n, c_in, size, size], seed, 1.0, 0.2)?;
            let w = var(&[c_out, c_in, k, k], seed + 1, 0.3, 0.0)?;
            let gamma = var(&[c_out], seed + 2, 0.5, 1.0)?;
            let beta = var(&[c_out], seed + 3, 0.5, 0.0)?;
            let conv = ConvParams {
                stride,
                padding,
                groups: 1,
            };
            let (fused, fused_stats) =
                conv_bn_relu_max_pool_train(&x, &w, (&gamma, &beta), conv, 1e-5, pool)?;
            let (h, separate_stats) = conv_bn_train(&x, &w, &gamma, &beta, conv, 1e-5, true)?;
            let separate = max_pool2d(&h, pool.kernel, pool.stride, pool.padding, pool.ceil_mode)?;
            let case = format!("case {i} pool {j}");
            assert_same_bits(&format!("{case} output"), &fused, &separate)?;
            assert_eq!(fused_stats, separate_stats, "{case} batch statistics");
            let r = pseudo_random(fused.dims(), seed + 4, 1.0, 0.0)?;
            let gf = (&fused * &r)?.sum_all()?.backward()?;
            let gs = (&separate * &r)?.sum_all()?.backward()?;
            let vars = [("x", &x), ("w", &w), ("gamma", &gamma), ("beta", &beta)];
            assert_same_gradient_numbers(&case, (&gf, &gs), vars)?;
        }
    }
    Ok(())
}

#[test]
fn an_image_without_gradient_gets_none() -> Result<()> {
    let x = pseudo_random(&[2, 3, 16, 16], 7, 1.0, 0.0)?;
    let w = Var::from_tensor(&pseudo_random(&[8, 3, 7, 7], 8, 0.3, 0.0)?)?;
    let gamma = Var::from_tensor(&pseudo_random(&[8], 9, 0.5, 1.0)?)?;
    let beta = Var::from_tensor(&pseudo_random(&[8], 10, 0.5, 0.0)?)?;
    let conv = ConvParams {
        stride: 2,
        padding: 3,
        groups: 1,
    };
    let (y, _) = conv_bn_relu_max_pool_train(&x, &w, (&gamma, &beta), conv, 1e-5, POOLS[0])?;
    assert_eq!(y.dims(), [2, 8, 4, 4]);
    let grads = y.sum_all()?.backward()?;
    assert!(grads.get(&x).is_none(), "the image got a gradient");
    assert!(grads.get(&w).is_some(), "the conv weight got no gradient");
    Ok(())
}
