//! The fused gate + residual join (`channel_gate_add_relu`, `spatial_gate_add_relu`) against
//! the two ops it replaces, `add_relu(&channel_gate(x, gate)?, shortcut)` (and the spatial
//! gate): the same output bit for bit, and the same gradients of input, gate and shortcut
//! (compared as numbers: a zero's sign may differ, since candle adds the separate ops' gradient
//! into a zero-filled buffer).

use candle_core::{Result, Var};
use mtanet_kernels::{
    add_relu, channel_gate, channel_gate_add_relu, spatial_gate, spatial_gate_add_relu,
};

mod support;
use support::{differing_bits, pseudo_random, values};

fn check(spatial: bool, dims: [usize; 4], seed: u64) -> Result<()> {
    let [n, c, h, w] = dims;
    let gate_dims: Vec<usize> = if spatial {
        vec![n, 1, h, w]
    } else {
        vec![n, c]
    };
    let x = Var::from_tensor(&pseudo_random(&dims, seed, 1.0, 0.0)?)?;
    let gate = Var::from_tensor(&pseudo_random(&gate_dims, seed + 1, 0.5, 0.5)?)?;
    let shortcut = Var::from_tensor(&pseudo_random(&dims, seed + 2, 1.0, 0.0)?)?;
    let r = pseudo_random(&dims, seed + 3, 1.0, 0.0)?;
    let (xt, gt, st) = (x.as_tensor(), gate.as_tensor(), shortcut.as_tensor());
    let fused = if spatial {
        spatial_gate_add_relu(xt, gt, st)?
    } else {
        channel_gate_add_relu(xt, gt, st)?
    };
    let gated = if spatial {
        spatial_gate(xt, gt)?
    } else {
        channel_gate(xt, gt)?
    };
    let separate = add_relu(&gated, st)?;
    let (a, b) = (values(&fused)?, values(&separate)?);
    let differ = differing_bits(&a, &b);
    assert_eq!(
        differ, 0,
        "{dims:?} spatial {spatial}: {differ} outputs differ"
    );
    assert!(a.contains(&0.0) && a.iter().any(|v| *v > 0.0));
    let g_fused = (fused * &r)?.sum_all()?.backward()?;
    let g_separate = (separate * &r)?.sum_all()?.backward()?;
    for (name, var) in [("input", xt), ("gate", gt), ("shortcut", st)] {
        let (p, q) = (g_fused.get(var), g_separate.get(var));
        let (Some(p), Some(q)) = (p, q) else {
            panic!("{dims:?} spatial {spatial}: no {name} gradient")
        };
        let (p, q) = (values(p)?, values(q)?);
        let differ = p.iter().zip(&q).filter(|(u, v)| u != v).count();
        assert_eq!(
            differ, 0,
            "{dims:?} spatial {spatial}: {differ} {name} gradients differ"
        );
        assert!(p.iter().any(|v| *v != 0.0), "{name} gradient is all zero");
    }
    Ok(())
}

#[test]
fn channel_gate_add_relu_equals_the_two_ops() -> Result<()> {
    check(false, [2, 8, 7, 7], 10)?;
    check(false, [3, 16, 4, 4], 20)?;
    check(false, [1, 4, 5, 3], 30)
}

#[test]
fn spatial_gate_add_relu_equals_the_two_ops() -> Result<()> {
    check(true, [2, 8, 7, 7], 40)?;
    check(true, [3, 16, 4, 4], 50)?;
    check(true, [1, 4, 5, 3], 60)
}

#[test]
fn refuses_mismatched_shapes() -> Result<()> {
    let x = pseudo_random(&[2, 4, 3, 3], 1, 1.0, 0.0)?;
    let s = pseudo_random(&[2, 4, 3, 2], 2, 1.0, 0.0)?;
    let g = pseudo_random(&[2, 4], 3, 1.0, 0.0)?;
    let err = channel_gate_add_relu(&x, &g, &s).unwrap_err();
    assert!(err.to_string().contains("shortcut"), "{err}");
    let wrong_gate = pseudo_random(&[2, 3], 4, 1.0, 0.0)?;
    let err = channel_gate_add_relu(&x, &wrong_gate, &x).unwrap_err();
    assert!(err.to_string().contains("gate [2, 3]"), "{err}");
    Ok(())
}
