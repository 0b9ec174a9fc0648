//! The eval-mode `conv_affine_eval` against the two ops it replaces,
//! `channel_affine(conv2d(x, w), scale, shift, relu)`: the same output bit for bit over dense,
//! strided, grouped, pointwise and 7x7 stem-like convolutions, small maps (the batched GEMM
//! path), batch 1, with and without ReLU; and its refusals.

use candle_core::Result;
use mtanet_kernels::{channel_affine, conv2d, conv_affine_eval, ConvParams};

mod support;
use support::pseudo_random;

/// (batch, c_in, c_out, size, kernel, stride, padding, groups)
type Case = (usize, usize, usize, usize, usize, usize, usize, usize);

const CASES: [Case; 9] = [
    (2, 8, 16, 9, 3, 1, 1, 1),
    (3, 8, 8, 10, 3, 2, 1, 1),
    (2, 16, 16, 7, 3, 1, 1, 4),
    (2, 32, 32, 12, 3, 1, 1, 8),
    (2, 12, 20, 6, 1, 1, 0, 1),
    (2, 8, 12, 9, 1, 2, 0, 1),
    (2, 3, 8, 15, 7, 2, 3, 1),
    (4, 16, 24, 4, 3, 1, 1, 1),
    (1, 6, 10, 5, 3, 1, 1, 1),
];

#[test]
fn equals_conv_then_channel_affine_bit_for_bit() -> Result<()> {
    for (i, &(n, c_in, c_out, size, k, stride, padding, groups)) in CASES.iter().enumerate() {
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
            let (a, b) = (
                fused.flatten_all()?.to_vec1::<f32>()?,
                separate.flatten_all()?.to_vec1::<f32>()?,
            );
            let differ = a
                .iter()
                .zip(&b)
                .filter(|(p, q)| p.to_bits() != q.to_bits())
                .count();
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
        err.to_string().contains("scale and shift must be (8)"),
        "{err}"
    );
    let half = x.to_dtype(candle_core::DType::BF16)?;
    let err = conv_affine_eval(&half, &w, &ok, &ok, params, true).unwrap_err();
    assert!(err.to_string().contains("f32 tensors on the CPU"), "{err}");
    Ok(())
}
