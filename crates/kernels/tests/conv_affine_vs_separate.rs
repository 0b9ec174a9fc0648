//! The eval-mode `conv_affine_eval` against the two ops it replaces,
//! `channel_affine(conv2d(x, w), scale, shift, relu)`: the same output bit for bit over dense,
//! strided, grouped, pointwise and 7x7 stem-like convolutions, small maps (the batched GEMM
//! path), batch 1, with and without ReLU; the same gradients of input and weight bit for bit
//! and of scale and shift to f32 rounding (its sums run in another order); the same for the
//! residual variant against `add_relu(channel_affine(conv2d(x, w), scale, shift, false),
//! shortcut)`, whose shortcut gradient matches bit for bit; and the refusals.

use candle_core::backprop::GradStore;
use candle_core::{Result, Tensor, Var};
use mtanet_kernels::{
    add_relu, channel_affine, conv2d, conv_affine_add_relu_eval, conv_affine_eval, ConvParams,
};

mod support;
use support::{differing_bits, pseudo_random, values, Case, FUSED_CONV_CASES};

#[test]
fn equals_conv_then_channel_affine_bit_for_bit() -> Result<()> {
    for (i, &(n, c_in, c_out, size, k, stride, padding, groups)) in
        FUSED_CONV_CASES.iter().enumerate()
    {
        let seed = 100 + i as u64;
        let x = pseudo_random(&[n, c_in, size, size], seed, 1.0, 0.0)?;
        let w = pseudo_random(&[c_out, c_in / groups, k, k], seed + 1, 0.2, 0.0)?;
        let scale = pseudo_random(&[c_out], seed + 2, 0.5, 1.0)?;
        let shift = pseudo_random(&[c_out], seed + 3, 0.5, 0.0)?;
        let params = ConvParams {
            stride,
            padding,
            groups,
        };
        for relu in [false, true] {
            let fused = conv_affine_eval(&x, &w, &scale, &shift, params, relu)?;
            let separate = channel_affine(
                &conv2d(&x, &w, stride, padding, groups)?,
                &scale,
                &shift,
                relu,
            )?;
            assert_eq!(fused.dims(), separate.dims(), "case {i}: shapes");
            let (a, b) = (values(&fused)?, values(&separate)?);
            let differ = differing_bits(&a, &b);
            assert_eq!(
                differ,
                0,
                "case {i} relu {relu}: {differ} of {} differ",
                a.len()
            );
            if relu {
                assert!(a.contains(&0.0) && a.iter().any(|v| *v > 0.0));
            }
        }
    }
    Ok(())
}

/// Asserts that each named tensor's gradient is the same in `fused` and `separate`: bit for bit
/// (as numbers) when `exact`, else within 1e-6 of the largest separate value; and not all zero.
fn assert_gradients_match(
    case: &str,
    (fused, separate): (&GradStore, &GradStore),
    tensors: &[(&str, &Tensor, bool)],
) -> Result<()> {
    for &(name, t, exact) in tensors {
        let (Some(p), Some(q)) = (fused.get(t), separate.get(t)) else {
            panic!("{case}: no {name} gradient")
        };
        let (p, q) = (values(p)?, values(q)?);
        let top = q.iter().fold(0f32, |m, v| m.max(v.abs()));
        assert!(top > 0.0, "{case}: {name} gradient all zero");
        let worst = p
            .iter()
            .zip(&q)
            .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
        let bound = if exact { 0.0 } else { 1e-6 * top };
        assert!(
            worst <= bound,
            "{case}: {name} gradients differ by {worst} (max {top})"
        );
    }
    Ok(())
}

/// A case's input, conv weight, scale and shift as variables (seeds `seed..seed + 4`), its conv
/// parameters and the side of its square output.
fn case_vars(
    &(n, c_in, c_out, size, k, stride, padding, groups): &Case,
    seed: u64,
) -> Result<([Var; 4], ConvParams, usize)> {
    let var = |shape: &[usize], seed: u64, scale: f32, offset: f32| {
        Var::from_tensor(&pseudo_random(shape, seed, scale, offset)?)
    };
    let vars = [
        var(&[n, c_in, size, size], seed, 1.0, 0.0)?,
        var(&[c_out, c_in / groups, k, k], seed + 1, 0.2, 0.0)?,
        var(&[c_out], seed + 2, 0.5, 1.0)?,
        var(&[c_out], seed + 3, 0.5, 0.0)?,
    ];
    let params = ConvParams {
        stride,
        padding,
        groups,
    };
    Ok((vars, params, (size + 2 * padding - k) / stride + 1))
}

#[test]
fn gradients_equal_those_of_the_two_ops() -> Result<()> {
    for (i, case) in FUSED_CONV_CASES.iter().enumerate() {
        let (n, c_out) = (case.0, case.2);
        let seed = 200 + i as u64;
        let ([x, w, scale, shift], params, out) = case_vars(case, seed)?;
        let ConvParams {
            stride,
            padding,
            groups,
        } = params;
        let r = pseudo_random(&[n, c_out, out, out], seed + 4, 1.0, 0.0)?;
        let ts = [
            x.as_tensor(),
            w.as_tensor(),
            scale.as_tensor(),
            shift.as_tensor(),
        ];
        for relu in [false, true] {
            let fused = conv_affine_eval(ts[0], ts[1], ts[2], ts[3], params, relu)?;
            let separate = channel_affine(
                &conv2d(ts[0], ts[1], stride, padding, groups)?,
                ts[2],
                ts[3],
                relu,
            )?;
            let gf = (fused * &r)?.sum_all()?.backward()?;
            let gs = (separate * &r)?.sum_all()?.backward()?;
            let tensors = [
                ("input", ts[0], true),
                ("weight", ts[1], true),
                ("scale", ts[2], false),
                ("shift", ts[3], false),
            ];
            assert_gradients_match(&format!("case {i} relu {relu}"), (&gf, &gs), &tensors)?;
        }
    }
    Ok(())
}

#[test]
fn refuses_wrong_affine_lengths_and_dtypes() -> Result<()> {
    let x = pseudo_random(&[2, 4, 6, 6], 1, 1.0, 0.0)?;
    let w = pseudo_random(&[8, 4, 3, 3], 2, 1.0, 0.0)?;
    let params = ConvParams {
        stride: 1,
        padding: 1,
        groups: 1,
    };
    let short = pseudo_random(&[4], 3, 1.0, 0.0)?;
    let ok = pseudo_random(&[8], 4, 1.0, 0.0)?;
    let err = conv_affine_eval(&x, &w, &short, &ok, params, true).unwrap_err();
    assert!(
        err.to_string()
            .contains("scale and shift must hold 8 values"),
        "{err}"
    );
    let half = x.to_dtype(candle_core::DType::BF16)?;
    let err = conv_affine_eval(&half, &w, &ok, &ok, params, true).unwrap_err();
    assert!(err.to_string().contains("f32 tensors on the CPU"), "{err}");
    Ok(())
}

#[test]
fn the_residual_variant_equals_the_three_ops() -> Result<()> {
    for (i, case) in FUSED_CONV_CASES.iter().enumerate() {
        let (n, c_out) = (case.0, case.2);
        let seed = 300 + i as u64;
        let ([x, w, scale, shift], params, out) = case_vars(case, seed)?;
        let ConvParams {
            stride,
            padding,
            groups,
        } = params;
        let shortcut =
            Var::from_tensor(&pseudo_random(&[n, c_out, out, out], seed + 4, 1.0, 0.0)?)?;
        let r = pseudo_random(&[n, c_out, out, out], seed + 5, 1.0, 0.0)?;
        let ts = [
            x.as_tensor(),
            w.as_tensor(),
            scale.as_tensor(),
            shift.as_tensor(),
            shortcut.as_tensor(),
        ];
        let fused = conv_affine_add_relu_eval(ts[0], ts[1], ts[2], ts[3], ts[4], params)?;
        let bn = channel_affine(
            &conv2d(ts[0], ts[1], stride, padding, groups)?,
            ts[2],
            ts[3],
            false,
        )?;
        let separate = add_relu(&bn, ts[4])?;
        let (a, b) = (values(&fused)?, values(&separate)?);
        let differ = differing_bits(&a, &b);
        assert_eq!(differ, 0, "case {i}: {differ} outputs differ");
        assert!(a.contains(&0.0) && a.iter().any(|v| *v > 0.0));
        let gf = (fused * &r)?.sum_all()?.backward()?;
        let gs = (separate * &r)?.sum_all()?.backward()?;
        let tensors = [
            ("input", ts[0], true),
            ("weight", ts[1], true),
            ("scale", ts[2], false),
            ("shift", ts[3], false),
            ("shortcut", ts[4], true),
        ];
        assert_gradients_match(&format!("case {i}"), (&gf, &gs), &tensors)?;
    }
    Ok(())
}

#[test]
fn the_residual_variant_refuses_a_shortcut_of_another_shape() -> Result<()> {
    let x = pseudo_random(&[2, 4, 6, 6], 1, 1.0, 0.0)?;
    let w = pseudo_random(&[8, 4, 1, 1], 2, 1.0, 0.0)?;
    let affine = pseudo_random(&[8], 3, 1.0, 0.0)?;
    let shortcut = pseudo_random(&[2, 8, 6, 5], 4, 1.0, 0.0)?;
    let params = ConvParams {
        stride: 1,
        padding: 0,
        groups: 1,
    };
    let err = conv_affine_add_relu_eval(&x, &w, &affine, &affine, &shortcut, params).unwrap_err();
    assert!(
        err.to_string()
            .contains("shortcut [2, 8, 6, 5] for output [2, 8, 6, 6]"),
        "{err}"
    );
    Ok(())
}
