//! The fused BatchNorm, channel-affine, residual `relu(a + b)` and attention-gate ops against
//! candle's composed reference (candle-nn's `BatchNorm`, `Tensor::relu`, `broadcast_mul`):
//! outputs, running statistics and the
//! autograd gradients of input, weight and bias, over NCHW and NC inputs, batch 1, odd sizes,
//! a non-contiguous input, and with and without the fused ReLU. (The PyTorch fixtures in
//! crates/backbones check the same ops inside every backbone, train and eval mode.)

use candle_core::{Device, Result, Tensor, Var};
use candle_nn::ModuleT;
use mtanet_kernels::{
    add_relu, batch_norm_train, channel_affine, channel_gate, channel_max_mean, spatial_gate,
};

mod support;
use support::pseudo_random;

fn max_rel(actual: &Tensor, expected: &Tensor) -> Result<f32> {
    assert_eq!(actual.dims(), expected.dims());
    let diff = (actual - expected)?
        .abs()?
        .flatten_all()?
        .max(0)?
        .to_scalar::<f32>()?;
    let scale = expected.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()?;
    Ok(diff / scale.max(1e-12))
}

const SHAPES: [&[usize]; 6] = [
    &[4, 3, 5, 7],
    &[1, 6, 9, 9],
    &[3, 16, 4, 4],
    &[5, 8],
    &[2, 1, 13, 11],
    &[7, 33, 1, 1],
];

/// Train mode: output, running mean/var after one step, and gradients of x, weight, bias.
#[test]
fn train_mode_matches_candle_nn() -> Result<()> {
    for (i, shape) in SHAPES.iter().enumerate() {
        for relu in [false, true] {
            let c = shape[1];
            let x = Var::from_tensor(&pseudo_random(shape, i as u64, 2.0, 0.7)?)?;
            let w = Var::from_tensor(&pseudo_random(&[c], 100 + i as u64, 1.0, 0.2)?)?;
            let b = Var::from_tensor(&pseudo_random(&[c], 200 + i as u64, 0.5, 0.0)?)?;
            let r = pseudo_random(shape, 300 + i as u64, 1.0, 0.0)?;
            let rm0 = pseudo_random(&[c], 400, 0.3, 0.0)?;
            let rv0 = pseudo_random(&[c], 500, 0.3, 1.0)?;

            // Reference: candle-nn's composed BatchNorm (+ Tensor::relu).
            let (rm, rv) = (Var::from_tensor(&rm0)?, Var::from_tensor(&rv0)?);
            let bn = candle_nn::BatchNorm::new_with_momentum(
                c,
                rm.as_tensor().clone(),
                rv.as_tensor().clone(),
                w.as_tensor().clone(),
                b.as_tensor().clone(),
                1e-5,
                0.1,
            )?;
            let mut y_ref = bn.forward_t(x.as_tensor(), true)?;
            if relu {
                y_ref = y_ref.relu()?;
            }
            let g_ref = (&y_ref * &r)?.sum_all()?.backward()?;

            let (y, stats) =
                batch_norm_train(x.as_tensor(), w.as_tensor(), b.as_tensor(), 1e-5, relu)?;
            let g = (&y * &r)?.sum_all()?.backward()?;

            let what = format!("shape {shape:?} relu {relu}");
            assert!(max_rel(&y, &y_ref)? < 1e-5, "{what}: output");
            for (v, name) in [(&x, "x"), (&w, "weight"), (&b, "bias")] {
                let (a, e) = (g.get(v).expect("grad"), g_ref.get(v).expect("ref grad"));
                let err = max_rel(a, e)?;
                assert!(err < 1e-4, "{what}: grad {name} rel err {err}");
            }
            // Running statistics as PyTorch blends them (candle-nn updated rm/rv in place).
            let m = stats.count as f64;
            let mean = Tensor::new(stats.mean.as_slice(), &Device::Cpu)?;
            let var = Tensor::new(stats.var.as_slice(), &Device::Cpu)?;
            let new_rm = ((&rm0 * 0.9)? + (mean * 0.1)?)?;
            let new_rv = ((&rv0 * 0.9)? + (var * (0.1 * m / (m - 1.0)))?)?;
            assert!(
                max_rel(&new_rm, rm.as_tensor())? < 1e-5,
                "{what}: running mean"
            );
            assert!(
                max_rel(&new_rv, rv.as_tensor())? < 1e-5,
                "{what}: running var"
            );
        }
    }
    Ok(())
}

/// A non-contiguous input (a transposed view) gives the same result as its contiguous copy.
#[test]
fn non_contiguous_input_is_read_through_its_strides() -> Result<()> {
    let base = pseudo_random(&[6, 4, 5, 5], 9, 1.0, 0.0)?;
    let view = base.transpose(0, 1)?; // (4, 6, 5, 5), not contiguous
    assert!(!view.is_contiguous());
    let w = pseudo_random(&[6], 10, 1.0, 1.0)?;
    let b = pseudo_random(&[6], 11, 1.0, 0.0)?;
    let (a, _) = batch_norm_train(&view, &w, &b, 1e-5, true)?;
    let (e, _) = batch_norm_train(&view.contiguous()?, &w, &b, 1e-5, true)?;
    assert_eq!(
        a.flatten_all()?.to_vec1::<f32>()?,
        e.flatten_all()?.to_vec1::<f32>()?
    );
    Ok(())
}

/// Eval mode: `channel_affine` with folded scale/shift equals candle-nn's eval BatchNorm, and
/// its gradients equal those of the composed `x * scale + shift` (then ReLU).
#[test]
fn channel_affine_matches_composed_ops() -> Result<()> {
    for (i, shape) in SHAPES.iter().enumerate() {
        for relu in [false, true] {
            let c = shape[1];
            let x = Var::from_tensor(&pseudo_random(shape, i as u64, 2.0, 0.3)?)?;
            let s = Var::from_tensor(&pseudo_random(&[c], 20 + i as u64, 1.0, 0.1)?)?;
            let t = Var::from_tensor(&pseudo_random(&[c], 40 + i as u64, 1.0, 0.0)?)?;
            let r = pseudo_random(shape, 60 + i as u64, 1.0, 0.0)?;
            let mut bshape = vec![1usize; shape.len()];
            bshape[1] = c;
            let mut y_ref = x
                .as_tensor()
                .broadcast_mul(&s.as_tensor().reshape(bshape.as_slice())?)?
                .broadcast_add(&t.as_tensor().reshape(bshape.as_slice())?)?;
            if relu {
                y_ref = y_ref.relu()?;
            }
            let g_ref = (&y_ref * &r)?.sum_all()?.backward()?;
            let y = channel_affine(x.as_tensor(), s.as_tensor(), t.as_tensor(), relu)?;
            let g = (&y * &r)?.sum_all()?.backward()?;
            let what = format!("shape {shape:?} relu {relu}");
            assert!(max_rel(&y, &y_ref)? < 1e-6, "{what}: output");
            for (v, name) in [(&x, "x"), (&s, "scale"), (&t, "shift")] {
                let err = max_rel(g.get(v).expect("grad"), g_ref.get(v).expect("ref"))?;
                assert!(err < 1e-5, "{what}: grad {name} rel err {err}");
            }
        }
    }
    // Folded from running statistics, it is candle-nn's eval-mode BatchNorm.
    let x = pseudo_random(&[3, 5, 4, 4], 1, 2.0, 0.0)?;
    let (w, b) = (
        pseudo_random(&[5], 2, 1.0, 0.5)?,
        pseudo_random(&[5], 3, 1.0, 0.0)?,
    );
    let (rm, rv) = (
        pseudo_random(&[5], 4, 0.5, 0.0)?,
        pseudo_random(&[5], 5, 0.4, 1.0)?,
    );
    let bn = candle_nn::BatchNorm::new(5, rm.clone(), rv.clone(), w.clone(), b.clone(), 1e-5)?;
    let scale = w.div(&(&rv + 1e-5)?.sqrt()?)?;
    let shift = (&b - rm.mul(&scale)?)?;
    let y = channel_affine(&x, &scale, &shift, false)?;
    assert!(max_rel(&y, &bn.forward_t(&x, false)?)? < 1e-6);
    Ok(())
}

/// `add_relu(a, b)` equals `(a + b).relu()`, gradients included (ties at exactly 0 excluded
/// by construction: candle's ReLU gradient at 0 is 1, PyTorch's and ours 0).
#[test]
fn add_relu_matches_add_then_relu() -> Result<()> {
    for (i, shape) in SHAPES.iter().enumerate() {
        let a = Var::from_tensor(&pseudo_random(shape, i as u64, 1.0, 0.0)?)?;
        let b = Var::from_tensor(&pseudo_random(shape, 50 + i as u64, 1.0, 0.1)?)?;
        let r = pseudo_random(shape, 90 + i as u64, 1.0, 0.0)?;
        let y_ref = (a.as_tensor() + b.as_tensor())?.relu()?;
        let g_ref = (&y_ref * &r)?.sum_all()?.backward()?;
        let y = add_relu(a.as_tensor(), b.as_tensor())?;
        let g = (&y * &r)?.sum_all()?.backward()?;
        assert_eq!(
            y.flatten_all()?.to_vec1::<f32>()?,
            y_ref.flatten_all()?.to_vec1::<f32>()?
        );
        for v in [&a, &b] {
            assert!(max_rel(g.get(v).expect("grad"), g_ref.get(v).expect("ref"))? < 1e-6);
        }
    }
    let mismatch = add_relu(
        &pseudo_random(&[2, 3], 1, 1.0, 0.0)?,
        &pseudo_random(&[3, 2], 2, 1.0, 0.0)?,
    );
    assert!(mismatch.unwrap_err().to_string().contains("shapes"));
    Ok(())
}

/// `channel_gate` / `spatial_gate` equal candle's `broadcast_mul` with the gate reshaped,
/// values and both gradients, over odd sizes and batch 1.
#[test]
fn gates_match_broadcast_mul() -> Result<()> {
    for (i, &(n, c, h, w)) in [(2, 3, 5, 7), (1, 8, 4, 4), (3, 1, 9, 2), (4, 33, 1, 1)]
        .iter()
        .enumerate()
    {
        let seed = 1000 + 10 * i as u64;
        let x = Var::from_tensor(&pseudo_random(&[n, c, h, w], seed, 1.0, 0.0)?)?;
        let r = pseudo_random(&[n, c, h, w], seed + 1, 1.0, 0.0)?;
        for spatial in [false, true] {
            let gshape: Vec<usize> = if spatial {
                vec![n, 1, h, w]
            } else {
                vec![n, c]
            };
            let g = Var::from_tensor(&pseudo_random(&gshape, seed + 2, 0.5, 0.5)?)?;
            let (y, y_ref) = if spatial {
                (
                    spatial_gate(x.as_tensor(), g.as_tensor())?,
                    x.as_tensor().broadcast_mul(g.as_tensor())?,
                )
            } else {
                (
                    channel_gate(x.as_tensor(), g.as_tensor())?,
                    x.as_tensor()
                        .broadcast_mul(&g.as_tensor().reshape((n, c, 1, 1))?)?,
                )
            };
            let grads = (&y * &r)?.sum_all()?.backward()?;
            let grads_ref = (&y_ref * &r)?.sum_all()?.backward()?;
            let what = format!("({n},{c},{h},{w}) spatial {spatial}");
            assert!(max_rel(&y, &y_ref)? < 1e-6, "{what}: output");
            for (v, name) in [(&x, "x"), (&g, "gate")] {
                let err = max_rel(grads.get(v).expect("grad"), grads_ref.get(v).expect("ref"))?;
                assert!(err < 1e-5, "{what}: grad {name} rel err {err}");
            }
        }
    }
    let bad = channel_gate(
        &pseudo_random(&[2, 3, 4, 4], 1, 1.0, 0.0)?,
        &pseudo_random(&[2, 4], 2, 1.0, 0.0)?,
    );
    assert!(bad.unwrap_err().to_string().contains("gate"));
    Ok(())
}

/// `channel_max_mean` equals `cat([max_keepdim(1), mean_keepdim(1)], 1)`, values and input
/// gradient (random inputs, so no tied maxima), over odd sizes and one channel.
#[test]
fn channel_max_mean_matches_candle() -> Result<()> {
    for (i, &(n, c, h, w)) in [(2, 5, 3, 4), (1, 1, 6, 6), (3, 17, 2, 5)]
        .iter()
        .enumerate()
    {
        let x = Var::from_tensor(&pseudo_random(&[n, c, h, w], 2000 + i as u64, 1.0, 0.0)?)?;
        let r = pseudo_random(&[n, 2, h, w], 2100 + i as u64, 1.0, 0.0)?;
        let y = channel_max_mean(x.as_tensor())?;
        let t = x.as_tensor();
        let y_ref = Tensor::cat(&[t.max_keepdim(1)?, t.mean_keepdim(1)?], 1)?;
        assert!(max_rel(&y, &y_ref)? < 1e-6, "({n},{c},{h},{w}): output");
        let g = (&y * &r)?.sum_all()?.backward()?;
        let g_ref = (&y_ref * &r)?.sum_all()?.backward()?;
        let err = max_rel(g.get(&x).expect("grad"), g_ref.get(&x).expect("ref"))?;
        assert!(err < 1e-5, "({n},{c},{h},{w}): grad rel err {err}");
    }
    Ok(())
}
