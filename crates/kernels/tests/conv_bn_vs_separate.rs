//! The fused `conv_bn_train` against the two ops it replaces, `batch_norm_train(conv2d(x, w))`
//! (each tested on its own against candle and PyTorch in the other suites): the same output,
//! batch statistics and autograd gradients of input, conv weight, BatchNorm weight and bias,
//! bit for bit, over dense, strided, grouped, pointwise and 7x7 stem-like convolutions, small
//! maps (the batched GEMM path), batch 1, and with and without ReLU; and an input that needs
//! no gradient (the network's image) gets none. And the residual variant,
//! `conv_bn_add_relu_train`, against `add_relu(conv_bn_train(.., relu: false), shortcut)`: the
//! same output and statistics bit for bit and the same gradients of all five inputs (as numbers:
//! candle adds the separate ops' gradient into a zero-filled buffer, which can flip a zero's
//! sign).

use candle_core::{Device, Result, Tensor, Var};
use mtanet_kernels::{
    add_relu, batch_norm_train, conv2d, conv_bn_add_relu_train, conv_bn_train, ConvParams,
};

mod support;
use support::{assert_same_bits, assert_same_gradient_numbers, pseudo_random, FUSED_CONV_CASES};

#[test]
fn fused_equals_separate_ops_bit_for_bit() -> Result<()> {
    for (i, &(n, c_in, c_out, size, k, stride, padding, groups)) in
        FUSED_CONV_CASES.iter().enumerate()
    {
        for relu in [false, true] {
            let seed = 100 * i as u64 + relu as u64;
            let x = Var::from_tensor(&pseudo_random(&[n, c_in, size, size], seed, 1.0, 0.2)?)?;
            let w = Var::from_tensor(&pseudo_random(
                &[c_out, c_in / groups, k, k],
                seed + 1,
                0.3,
                0.0,
            )?)?;
            let gamma = Var::from_tensor(&pseudo_random(&[c_out], seed + 2, 0.5, 1.0)?)?;
            let beta = Var::from_tensor(&pseudo_random(&[c_out], seed + 3, 0.5, 0.0)?)?;
            let conv = ConvParams {
                stride,
                padding,
                groups,
            };
            let (fused, fused_stats) = conv_bn_train(&x, &w, &gamma, &beta, conv, 1e-5, relu)?;
            let z = conv2d(&x, &w, stride, padding, groups)?;
            let (separate, separate_stats) = batch_norm_train(&z, &gamma, &beta, 1e-5, relu)?;
            let case = format!("case {i} relu {relu}");
            assert_same_bits(&format!("{case} output"), &fused, &separate)?;
            assert_eq!(fused_stats, separate_stats, "{case} batch statistics");
            let r = pseudo_random(fused.dims(), seed + 4, 1.0, 0.0)?;
            let gf = (&fused * &r)?.sum_all()?.backward()?;
            let gs = (&separate * &r)?.sum_all()?.backward()?;
            for (name, v) in [("x", &x), ("w", &w), ("gamma", &gamma), ("beta", &beta)] {
                let (Some(a), Some(b)) = (gf.get(v), gs.get(v)) else {
                    panic!("{case}: no gradient for {name}")
                };
                assert_same_bits(&format!("{case} d{name}"), a, b)?;
            }
        }
    }
    Ok(())
}

#[test]
fn the_residual_variant_equals_conv_bn_then_add_relu() -> Result<()> {
    for (i, &(n, c_in, c_out, size, k, stride, padding, groups)) in
        FUSED_CONV_CASES.iter().enumerate()
    {
        let seed = 1000 + 10 * i as u64;
        let var = |shape: &[usize], seed: u64, scale: f32, offset: f32| {
            Var::from_tensor(&pseudo_random(shape, seed, scale, offset)?)
        };
        let x = var(&[n, c_in, size, size], seed, 1.0, 0.2)?;
        let w = var(&[c_out, c_in / groups, k, k], seed + 1, 0.3, 0.0)?;
        let gamma = var(&[c_out], seed + 2, 0.5, 1.0)?;
        let beta = var(&[c_out], seed + 3, 0.5, 0.0)?;
        let conv = ConvParams {
            stride,
            padding,
            groups,
        };
        let out = (size + 2 * padding - k) / stride + 1;
        let shortcut = var(&[n, c_out, out, out], seed + 4, 1.0, 0.0)?;
        let (fused, fused_stats) =
            conv_bn_add_relu_train(&x, &w, (&gamma, &beta), &shortcut, conv, 1e-5)?;
        let (bn, separate_stats) = conv_bn_train(&x, &w, &gamma, &beta, conv, 1e-5, false)?;
        let separate = add_relu(&bn, &shortcut)?;
        let case = format!("case {i}");
        assert_same_bits(&format!("{case} output"), &fused, &separate)?;
        assert_eq!(fused_stats, separate_stats, "{case} batch statistics");
        let r = pseudo_random(fused.dims(), seed + 5, 1.0, 0.0)?;
        let gf = (&fused * &r)?.sum_all()?.backward()?;
        let gs = (&separate * &r)?.sum_all()?.backward()?;
        let vars = [
            ("x", &x),
            ("w", &w),
            ("gamma", &gamma),
            ("beta", &beta),
            ("shortcut", &shortcut),
        ];
        assert_same_gradient_numbers(&case, (&gf, &gs), vars)?;
    }
    Ok(())
}

#[test]
fn an_input_without_gradient_gets_none() -> Result<()> {
    let x = pseudo_random(&[2, 3, 9, 9], 7, 1.0, 0.0)?;
    let w = Var::from_tensor(&pseudo_random(&[4, 3, 3, 3], 8, 0.3, 0.0)?)?;
    let gamma = Var::ones(4, candle_core::DType::F32, &Device::Cpu)?;
    let beta = Var::zeros(4, candle_core::DType::F32, &Device::Cpu)?;
    let conv = ConvParams {
        stride: 2,
        padding: 1,
        groups: 1,
    };
    let (y, _) = conv_bn_train(&x, &w, &gamma, &beta, conv, 1e-5, true)?;
    let grads = y.sum_all()?.backward()?;
    assert!(grads.get(&x).is_none(), "the input is a constant");
    assert!(grads.get(&w).is_some() && grads.get(&gamma).is_some());
    Ok(())
}

#[test]
fn mismatched_shapes_and_devices_are_errors() -> Result<()> {
    let x = pseudo_random(&[2, 3, 9, 9], 7, 1.0, 0.0)?;
    let w = pseudo_random(&[4, 3, 3, 3], 8, 0.3, 0.0)?;
    let conv = ConvParams {
        stride: 1,
        padding: 1,
        groups: 1,
    };
    let five = Tensor::ones(5, candle_core::DType::F32, &Device::Cpu)?;
    let four = Tensor::ones(4, candle_core::DType::F32, &Device::Cpu)?;
    let err = conv_bn_train(&x, &w, &five, &four, conv, 1e-5, false).unwrap_err();
    assert!(err.to_string().contains("4 values"), "{err}");
    let half = x.to_dtype(candle_core::DType::BF16)?;
    let err = conv_bn_train(&half, &w, &four, &four, conv, 1e-5, false).unwrap_err();
    assert!(err.to_string().contains("f32 tensors on the CPU"), "{err}");
    Ok(())
}
