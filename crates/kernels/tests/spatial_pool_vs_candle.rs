//! The fused spatial pooling of the attention layers against candle's composed reductions:
//! `spatial_mean` against `flatten_from(2).mean(-1)` and `spatial_mean_max` against
//! `stack([mean, max])`, values and input gradients, over odd map sizes, 1x1 maps and batch 1;
//! and the max's gradient goes to the first of tied maxima only (PyTorch's `max_pool2d` over
//! the whole map).

use candle_core::{Device, Result, Tensor, Var, D};
use mtanet_kernels::{spatial_mean, spatial_mean_max};

mod support;
use support::pseudo_random;

fn max_abs_diff(a: &Tensor, b: &Tensor) -> Result<f32> {
    assert_eq!(a.dims(), b.dims());
    (a - b)?.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()
}

#[test]
fn pooling_matches_candles_reductions_with_gradients() -> Result<()> {
    for (i, shape) in [[2, 5, 7, 7], [1, 3, 4, 4], [3, 4, 1, 1], [2, 6, 3, 5]]
        .iter()
        .enumerate()
    {
        let x = Var::from_tensor(&pseudo_random(shape, i as u64, 1.0, 0.0)?)?;
        let flat = x.as_tensor().flatten_from(2)?;
        let (mean, max) = (flat.mean(D::Minus1)?, flat.max(D::Minus1)?);

        let ours = spatial_mean(x.as_tensor())?;
        assert!(max_abs_diff(&ours, &mean)? < 1e-6, "{shape:?} mean");
        let r = pseudo_random(ours.dims(), 10 + i as u64, 1.0, 0.0)?;
        let got = (&ours * &r)?.sum_all()?.backward()?;
        let want = (&mean * &r)?.sum_all()?.backward()?;
        let (g, w) = (got.get(&x).unwrap(), want.get(&x).unwrap());
        assert!(max_abs_diff(g, w)? < 1e-6, "{shape:?} mean gradient");

        let ours = spatial_mean_max(x.as_tensor())?;
        let reference = Tensor::stack(&[&mean, &max], 0)?;
        assert_eq!(ours.dims(), &[2, shape[0], shape[1]]);
        assert!(
            max_abs_diff(&ours, &reference)? < 1e-6,
            "{shape:?} mean+max"
        );
        let r = pseudo_random(ours.dims(), 20 + i as u64, 1.0, 0.0)?;
        let got = (&ours * &r)?.sum_all()?.backward()?;
        let want = (&reference * &r)?.sum_all()?.backward()?;
        let (g, w) = (got.get(&x).unwrap(), want.get(&x).unwrap());
        assert!(max_abs_diff(g, w)? < 1e-6, "{shape:?} mean+max gradient");
    }
    Ok(())
}

#[test]
fn tied_maxima_send_the_gradient_to_the_first() -> Result<()> {
    // One map of 4 pixels with the maximum 2.0 at pixels 1 and 3.
    let x = Var::from_tensor(&Tensor::new(
        &[[[[0.5f32, 2.0], [-1.0, 2.0]]]],
        &Device::Cpu,
    )?)?;
    let pooled = spatial_mean_max(x.as_tensor())?;
    assert_eq!(pooled.flatten_all()?.to_vec1::<f32>()?, [0.875, 2.0]);
    let weights = Tensor::new(&[[[0.0f32]], [[1.0]]], &Device::Cpu)?;
    let grads = (&pooled * &weights)?.sum_all()?.backward()?;
    let dx = grads.get(&x).unwrap().flatten_all()?.to_vec1::<f32>()?;
    assert_eq!(dx, [0.0, 1.0, 0.0, 0.0]);
    Ok(())
}
