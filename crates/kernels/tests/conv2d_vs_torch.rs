//! `mtanet_kernels::conv2d` against PyTorch's `F.conv2d` and autograd, from the fixtures made
//! by `scripts/reference/make_conv_fixtures.py` (tests/fixtures/kernels/conv2d_torch.safetensors).

use candle_core::{bail, Device, Result, Tensor, Var};
use mtanet_kernels::conv2d::conv2d;
use std::collections::HashMap;
use std::path::PathBuf;

fn fixture_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/kernels/conv2d_torch.safetensors")
}

fn get<'a>(tensors: &'a HashMap<String, Tensor>, key: &str) -> Result<&'a Tensor> {
    match tensors.get(key) {
        Some(t) => Ok(t),
        None => bail!("{}: missing tensor {key}", fixture_path().display()),
    }
}

/// max |a - b| / max |b|.
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

#[test]
fn values_and_grads_match_pytorch() -> Result<()> {
    let tensors = candle_core::safetensors::load(fixture_path(), &Device::Cpu)?;
    let mut cases = 0;
    while tensors.contains_key(&format!("case{cases}.x")) {
        let p = |name: &str| format!("case{cases}.{name}");
        let params = get(&tensors, &p("params"))?.to_vec1::<i64>()?;
        let &[stride, padding, groups] = params.as_slice() else {
            bail!("case{cases}: params must hold [stride, padding, groups], got {params:?}")
        };
        let (stride, padding, groups) = (stride as usize, padding as usize, groups as usize);
        let xv = Var::from_tensor(get(&tensors, &p("x"))?)?;
        let wv = Var::from_tensor(get(&tensors, &p("w"))?)?;
        let y = conv2d(xv.as_tensor(), wv.as_tensor(), stride, padding, groups)?;
        let grads = (&y * get(&tensors, &p("r"))?)?.sum_all()?.backward()?;
        let (Some(gx), Some(gw)) = (grads.get(xv.as_tensor()), grads.get(wv.as_tensor())) else {
            bail!("case{cases}: missing gradient")
        };
        let ey = relative_error(&y, get(&tensors, &p("y"))?)?;
        let ex = relative_error(gx, get(&tensors, &p("gx"))?)?;
        let ew = relative_error(gw, get(&tensors, &p("gw"))?)?;
        let shape = (
            xv.dims().to_vec(),
            wv.dims().to_vec(),
            stride,
            padding,
            groups,
        );
        assert!(
            ey <= 1e-4,
            "case{cases} {shape:?}: output relative error {ey}"
        );
        assert!(
            ex <= 1e-3,
            "case{cases} {shape:?}: input grad relative error {ex}"
        );
        assert!(
            ew <= 1e-3,
            "case{cases} {shape:?}: weight grad relative error {ew}"
        );
        cases += 1;
    }
    assert_eq!(cases, 15, "fixture should hold 15 cases");
    Ok(())
}
