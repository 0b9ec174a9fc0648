//! `mtanet_kernels::conv2d` against candle's own `Tensor::conv2d`: values and autograd
//! gradients (candle's grouped path is its chunk/cat loop, so groups > 1 are checked against it
//! too), over odd sizes, strides, paddings, groups, batch sizes, thread counts and strided inputs.

use candle_core::{Result, Tensor, Var};
use mtanet_kernels::conv2d::{conv2d, Conv2d};

mod support;
use support::pseudo_random_unit as pseudo_random;

/// max |a - b| / max |b|, the error relative to the reference's scale.
fn relative_error(actual: &Tensor, expected: &Tensor) -> Result<f32> {
    assert_eq!(actual.dims(), expected.dims());
    let diff = (actual - expected)?
        .abs()?
        .flatten_all()?
        .max(0)?
        .to_scalar::<f32>()?;
    let scale = expected.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()?;
    Ok(diff / scale.max(1e-12))
}

/// One convolution case: input (n, c_in, h, w), weight (c_out, c_in/groups, k_h, k_w).
#[derive(Clone, Copy, Debug)]
struct Case {
    n: usize,
    c_in: usize,
    h: usize,
    w: usize,
    c_out: usize,
    k_h: usize,
    k_w: usize,
    stride: usize,
    padding: usize,
    groups: usize,
}

#[allow(clippy::too_many_arguments)]
const fn case(
    n: usize,
    c_in: usize,
    h: usize,
    w: usize,
    c_out: usize,
    k: usize,
    stride: usize,
    padding: usize,
    groups: usize,
) -> Case {
    Case {
        n,
        c_in,
        h,
        w,
        c_out,
        k_h: k,
        k_w: k,
        stride,
        padding,
        groups,
    }
}

/// Square inputs (candle's backward derives its transposed-conv output padding from the height
/// alone, so non-square stride-2 gradients are only checked against PyTorch fixtures).
const CASES: &[Case] = &[
    case(1, 3, 9, 9, 4, 3, 1, 1, 1),
    case(3, 4, 11, 11, 6, 3, 2, 1, 2),
    case(3, 8, 10, 10, 8, 3, 1, 1, 4),
    case(3, 4, 8, 8, 8, 3, 2, 1, 4),
    case(1, 64, 7, 7, 64, 3, 2, 1, 32),
    case(3, 64, 6, 6, 32, 3, 1, 1, 32),
    case(3, 6, 7, 7, 5, 1, 1, 0, 1),
    case(2, 6, 9, 9, 4, 1, 2, 0, 1),
    case(3, 8, 5, 5, 12, 1, 1, 0, 4),
    case(2, 3, 15, 15, 5, 7, 2, 3, 1),
    case(3, 2, 9, 9, 1, 7, 1, 3, 1),
    case(1, 4, 5, 5, 4, 3, 1, 0, 1),
    case(2, 5, 4, 4, 3, 3, 1, 3, 1),
    // Dense convs on small maps take the batched path (conv2d/batched.rs): several blocks
    // of images (P = 49 -> 6 images per block), a pointwise one, a strided one.
    case(13, 4, 7, 7, 6, 3, 1, 1, 1),
    case(11, 9, 4, 4, 10, 1, 1, 0, 1),
    case(7, 5, 8, 8, 6, 3, 2, 1, 1),
];

fn tensors(c: &Case, seed: u64) -> Result<(Tensor, Tensor)> {
    let x = pseudo_random(&[c.n, c.c_in, c.h, c.w], seed)?;
    let w = pseudo_random(&[c.c_out, c.c_in / c.groups, c.k_h, c.k_w], seed + 1)?;
    Ok((x, w))
}

/// Loss `sum(y * r)` for a fixed `r`, so that `dL/dy = r` is a generic (not all-ones) gradient.
fn grads(c: &Case, x: &Tensor, w: &Tensor, ours: bool) -> Result<(Tensor, Tensor, Tensor)> {
    let (xv, wv) = (Var::from_tensor(x)?, Var::from_tensor(w)?);
    let y = if ours {
        conv2d(
            xv.as_tensor(),
            wv.as_tensor(),
            c.stride,
            c.padding,
            c.groups,
        )?
    } else {
        xv.as_tensor()
            .conv2d(wv.as_tensor(), c.padding, c.stride, 1, c.groups)?
    };
    let r = pseudo_random(y.dims(), 99)?;
    let g = (&y * &r)?.sum_all()?.backward()?;
    let gx = g.get(xv.as_tensor()).cloned();
    let gw = g.get(wv.as_tensor()).cloned();
    match (gx, gw) {
        (Some(gx), Some(gw)) => Ok((y, gx, gw)),
        _ => candle_core::bail!("missing gradient for {c:?}"),
    }
}

fn check_case(c: &Case, seed: u64) -> Result<()> {
    let (x, w) = tensors(c, seed)?;
    let (y, gx, gw) = grads(c, &x, &w, true)?;
    let (y_ref, gx_ref, gw_ref) = grads(c, &x, &w, false)?;
    let ey = relative_error(&y, &y_ref)?;
    let ex = relative_error(&gx, &gx_ref)?;
    let ew = relative_error(&gw, &gw_ref)?;
    assert!(ey <= 1e-4, "{c:?}: output relative error {ey}");
    assert!(ex <= 1e-3, "{c:?}: input grad relative error {ex}");
    assert!(ew <= 1e-3, "{c:?}: weight grad relative error {ew}");
    Ok(())
}

#[test]
fn values_and_grads_match_candle() -> Result<()> {
    for (i, c) in CASES.iter().enumerate() {
        check_case(c, 10 * i as u64)?;
    }
    Ok(())
}

/// The bits of a tensor's values.
fn bits(t: &Tensor) -> Result<Vec<u32>> {
    Ok(t.flatten_all()?
        .to_vec1::<f32>()?
        .iter()
        .map(|v| v.to_bits())
        .collect())
}

/// Our output and both gradients are bit-identical with one and with three rayon threads (and
/// match candle's with each).
#[test]
fn same_results_with_one_and_three_threads() -> Result<()> {
    let mut per_threads: Vec<Vec<[Vec<u32>; 3]>> = Vec::new();
    for threads in [1, 3] {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .map_err(candle_core::Error::wrap)?;
        let results = pool.install(|| -> Result<Vec<[Vec<u32>; 3]>> {
            assert_eq!(rayon::current_num_threads(), threads);
            let mut out = Vec::with_capacity(CASES.len());
            for (i, c) in CASES.iter().enumerate() {
                let seed = 7 + 10 * i as u64;
                check_case(c, seed)?;
                let (x, w) = tensors(c, seed)?;
                let (y, gx, gw) = grads(c, &x, &w, true)?;
                out.push([bits(&y)?, bits(&gx)?, bits(&gw)?]);
            }
            Ok(out)
        })?;
        per_threads.push(results);
    }
    let (one, three) = (&per_threads[0], &per_threads[1]);
    assert_eq!(one.len(), CASES.len());
    assert_eq!(three.len(), CASES.len());
    for ((c, a), b) in CASES.iter().zip(one).zip(three) {
        for (what, (x, y)) in ["output", "input grad", "weight grad"]
            .iter()
            .zip(a.iter().zip(b))
        {
            assert!(!x.is_empty(), "{c:?}: empty {what}");
            assert!(x == y, "{c:?}: {what} differs between 1 and 3 threads");
        }
    }
    Ok(())
}

#[test]
fn non_square_forward_matches_candle() -> Result<()> {
    let cases = [
        Case {
            k_h: 3,
            k_w: 5,
            ..case(2, 4, 9, 12, 6, 3, 2, 1, 2)
        },
        Case {
            k_h: 1,
            k_w: 3,
            ..case(3, 6, 7, 10, 6, 1, 1, 1, 3)
        },
        case(3, 6, 7, 9, 5, 1, 1, 0, 1),
        case(2, 64, 13, 6, 64, 3, 2, 1, 32),
    ];
    for (i, c) in cases.iter().enumerate() {
        let (x, w) = tensors(c, 500 + i as u64)?;
        let y = conv2d(&x, &w, c.stride, c.padding, c.groups)?;
        let y_ref = x.conv2d(&w, c.padding, c.stride, 1, c.groups)?;
        let e = relative_error(&y, &y_ref)?;
        assert!(e <= 1e-4, "{c:?}: output relative error {e}");
    }
    Ok(())
}

type View = fn(&Tensor) -> Result<Tensor>;

/// Output and gradients with respect to the stored (pre-view) tensors, for a conv applied to
/// `x_view(x_store)` and `w_store.transpose(0, 1)`, with a loss read through a transpose.
fn strided_run(
    c: &Case,
    x_store: &Tensor,
    x_view: View,
    w_store: &Tensor,
    ours: bool,
) -> Result<(Tensor, Tensor, Tensor)> {
    let (xv, wv) = (Var::from_tensor(x_store)?, Var::from_tensor(w_store)?);
    let x = x_view(xv.as_tensor())?;
    let w = wv.as_tensor().transpose(0, 1)?;
    let y = if ours {
        assert!(!x.is_contiguous() && !w.is_contiguous());
        conv2d(&x, &w, c.stride, c.padding, c.groups)?
    } else {
        x.contiguous()?
            .conv2d(&w.contiguous()?, c.padding, c.stride, 1, c.groups)?
    };
    // A transposed loss makes the incoming output gradient non-contiguous.
    let r = pseudo_random(&[c.n, c.c_out, y.dim(3)?, y.dim(2)?], 4)?;
    let g = (y.transpose(2, 3)? * &r)?.sum_all()?.backward()?;
    match (g.get(xv.as_tensor()), g.get(wv.as_tensor())) {
        (Some(gx), Some(gw)) => Ok((y, gx.clone(), gw.clone())),
        _ => candle_core::bail!("missing gradient for {c:?}"),
    }
}

#[test]
fn strided_inputs_weights_and_grads() -> Result<()> {
    let c = case(3, 8, 9, 9, 8, 3, 2, 1, 2);
    // Weight stored (C_in/g, C_out, k, k) and read transposed.
    let w_store = pseudo_random(&[c.c_in / c.groups, c.c_out, c.k_h, c.k_w], 2)?;
    // Input stored (N, C, W, H) and read transposed; or a channel window of a wider tensor
    // (non-zero start offset).
    let transposed = pseudo_random(&[c.n, c.c_in, c.w, c.h], 1)?;
    let wide = pseudo_random(&[c.n, c.c_in + 3, c.h, c.w], 3)?;
    let views: [(&Tensor, View); 2] = [
        (&transposed, |t| t.transpose(2, 3)),
        (&wide, |t| t.narrow(1, 2, 8)),
    ];
    for (x_store, x_view) in views {
        let (y, gx, gw) = strided_run(&c, x_store, x_view, &w_store, true)?;
        let (y_ref, gx_ref, gw_ref) = strided_run(&c, x_store, x_view, &w_store, false)?;
        assert!(relative_error(&y, &y_ref)? <= 1e-4);
        assert!(relative_error(&gx, &gx_ref)? <= 1e-3);
        assert!(relative_error(&gw, &gw_ref)? <= 1e-3);
    }
    Ok(())
}

#[test]
fn op_applies_directly_and_rejects_bad_shapes() -> Result<()> {
    let x = pseudo_random(&[2, 6, 5, 5], 1)?;
    let w = pseudo_random(&[4, 3, 3, 3], 2)?;
    let op = Conv2d {
        stride: 1,
        padding: 1,
        groups: 2,
    };
    let y = x.apply_op2(&w, op)?;
    let y_ref = x.conv2d(&w, 1, 1, 1, 2)?;
    assert!(relative_error(&y, &y_ref)? <= 1e-4);
    // Weight channels per group disagree with groups = 3.
    assert!(conv2d(&x, &w, 1, 1, 3).is_err());
    // Groups that do not divide the output channels.
    assert!(conv2d(&x, &pseudo_random(&[4, 2, 3, 3], 3)?, 1, 1, 3).is_err());
    // A kernel larger than the padded input.
    assert!(conv2d(&x, &pseudo_random(&[4, 3, 9, 9], 3)?, 1, 1, 2).is_err());
    // Wrong rank.
    assert!(conv2d(&x.flatten_from(2)?, &w, 1, 1, 2).is_err());
    Ok(())
}

#[test]
fn f64_falls_back_to_candle() -> Result<()> {
    let x = pseudo_random(&[1, 4, 6, 6], 1)?.to_dtype(candle_core::DType::F64)?;
    let w = pseudo_random(&[4, 2, 3, 3], 2)?.to_dtype(candle_core::DType::F64)?;
    let y = conv2d(&x, &w, 2, 1, 2)?;
    let y_ref = x.conv2d(&w, 1, 2, 1, 2)?;
    let d = (y - y_ref)?
        .abs()?
        .flatten_all()?
        .max(0)?
        .to_scalar::<f64>()?;
    assert_eq!(d, 0.0);
    Ok(())
}

/// bf16/f16 on the CPU: the output and both gradients come back in the half dtype and equal
/// candle's f64 convolution of the same (rounded) values to within one half-precision
/// rounding (2^-8 relative for bf16, 2^-11 for f16), for dense and grouped convolutions.
#[test]
fn half_precision_on_the_cpu_matches_f64_within_one_rounding() -> Result<()> {
    use candle_core::DType;
    for (dtype, tol) in [(DType::BF16, 8e-3), (DType::F16, 1e-3)] {
        for (groups, seed) in [(1usize, 3u64), (4, 5)] {
            let x = pseudo_random(&[2, 8, 9, 9], seed)?.to_dtype(dtype)?;
            let w = pseudo_random(&[8, 8 / groups, 3, 3], seed + 1)?.to_dtype(dtype)?;
            let r = pseudo_random(&[2, 8, 5, 5], seed + 2)?;
            let (xv, wv) = (Var::from_tensor(&x)?, Var::from_tensor(&w)?);
            let y = conv2d(xv.as_tensor(), wv.as_tensor(), 2, 1, groups)?;
            assert_eq!(y.dtype(), dtype);
            let g = (y.to_dtype(DType::F32)? * &r)?.sum_all()?.backward()?;
            let (x64, w64) = (
                Var::from_tensor(&x.to_dtype(DType::F64)?)?,
                Var::from_tensor(&w.to_dtype(DType::F64)?)?,
            );
            let y64 = x64.as_tensor().conv2d(w64.as_tensor(), 1, 2, 1, groups)?;
            let g64 = (&y64 * r.to_dtype(DType::F64)?)?.sum_all()?.backward()?;
            let f32_of = |t: &Tensor| t.to_dtype(DType::F32);
            let err = relative_error(&f32_of(&y)?, &f32_of(&y64)?)?;
            assert!(
                err <= tol,
                "{dtype:?} groups {groups}: output rel err {err}"
            );
            for (ours, want, name) in [
                (g.get(xv.as_tensor()), g64.get(x64.as_tensor()), "input"),
                (g.get(wv.as_tensor()), g64.get(w64.as_tensor()), "weight"),
            ] {
                let (ours, want) = (ours.expect("grad"), want.expect("grad"));
                assert_eq!(ours.dtype(), dtype, "{name}");
                let err = relative_error(&f32_of(ours)?, &f32_of(want)?)?;
                assert!(
                    err <= tol,
                    "{dtype:?} groups {groups}: {name} grad rel err {err}"
                );
            }
        }
    }
    Ok(())
}
