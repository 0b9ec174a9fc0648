//! Conformance with the PyTorch references: fixtures written by
//! `scripts/reference/make_fixtures.py` (torchvision, timm and faithful reference modules),
//! compared with relative error `max|a - b| / max|b|` (<= 1e-4 on outputs, <= 1e-3 on gradients).

use crate::{
    load_pretrained, parameter_count, summary, BackboneKind, EncoderPooling, MtaNet, MtaNetConfig,
    ResNet, ResNetConfig, VaActivation,
};
use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{ModuleT, VarBuilder, VarMap};
use serde_json::Value;
use std::collections::HashMap;
use std::path::PathBuf;

type TestResult = Result<(), Box<dyn std::error::Error>>;

const OUTPUT_TOL: f32 = 1e-4;
const GRAD_TOL: f32 = 1e-3;

fn fixture_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/backbones")
}

fn meta() -> Result<Value, Box<dyn std::error::Error>> {
    let text = std::fs::read_to_string(fixture_dir().join("backbones.json"))?;
    Ok(serde_json::from_str(&text)?)
}

fn io(name: &str) -> Result<HashMap<String, Tensor>, Box<dyn std::error::Error>> {
    Ok(candle_core::safetensors::load(
        fixture_dir().join(name),
        &Device::Cpu,
    )?)
}

/// Relative error `max|a - b| / max|b|` (absolute when `b` is all zeros).
fn rel_err(a: &Tensor, b: &Tensor) -> candle_core::Result<f32> {
    assert_eq!(a.dims(), b.dims(), "shape mismatch");
    let diff = (a - b)?.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()?;
    let scale = b.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()?;
    Ok(if scale == 0.0 { diff } else { diff / scale })
}

fn small_config(
    kind: BackboneKind,
    meta: &Value,
) -> Result<ResNetConfig, Box<dyn std::error::Error>> {
    let m = &meta["small"][kind.name()];
    let div = m["width_div"].as_u64().ok_or("width_div")? as usize;
    let depths: Vec<usize> = serde_json::from_value(m["depths"].clone())?;
    let depths: [usize; 4] = depths.try_into().map_err(|_| "depths")?;
    let groups = m["groups"].as_u64().map(|g| g as usize);
    Ok(ResNetConfig::from_kind(&kind).scaled(div, Some(depths), groups))
}

fn var(varmap: &VarMap, name: &str) -> Result<Tensor, Box<dyn std::error::Error>> {
    let data = varmap.data().lock().map_err(|_| "lock")?;
    Ok(data
        .get(name)
        .ok_or_else(|| format!("no variable {name}"))?
        .as_tensor()
        .clone())
}

fn check_backbone(kind: BackboneKind) -> TestResult {
    let meta = meta()?;
    let cfg = small_config(kind, &meta)?;
    let varmap = VarMap::new();
    let net = ResNet::new(
        &cfg,
        VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu),
    )?;
    let report = load_pretrained(
        &varmap,
        &fixture_dir().join(format!("{kind}.weights.safetensors")),
        "",
    )?;
    assert!(report.fresh.is_empty(), "{kind}: fresh {:?}", report.fresh);
    assert!(
        report.unmatched.is_empty(),
        "{kind}: unmatched {:?}",
        report.unmatched
    );

    let f = io(&format!("{kind}.io.safetensors"))?;
    let x = &f["input"];
    let out = net.forward_t(x, false)?;
    let err = rel_err(&out, &f["out_eval"])?;
    assert!(err <= OUTPUT_TOL, "{kind}: eval output rel err {err}");

    let xv = Var::from_tensor(x)?;
    let out = net.forward_t(xv.as_tensor(), true)?;
    let err = rel_err(&out, &f["out_train"])?;
    assert!(err <= OUTPUT_TOL, "{kind}: train output rel err {err}");
    let grads = net.backward(&(out * &f["loss_weight"])?.sum_all()?)?;
    let mut checked = 0;
    for (key, want) in &f {
        let Some(name) = key.strip_prefix("grad.") else {
            continue;
        };
        let param = if name == "input" {
            xv.as_tensor().clone()
        } else {
            var(&varmap, name)?
        };
        let got = grads
            .get(&param)
            .ok_or_else(|| format!("{kind}: no gradient for {name}"))?;
        let err = rel_err(got, want)?;
        assert!(err <= GRAD_TOL, "{kind}: grad {name} rel err {err}");
        checked += 1;
    }
    assert!(checked >= 4, "{kind}: only {checked} gradients checked");
    for (key, want) in &f {
        if let Some(name) = key.strip_prefix("after_train.") {
            let err = rel_err(&var(&varmap, name)?, want)?;
            assert!(
                err <= OUTPUT_TOL,
                "{kind}: {name} after train rel err {err}"
            );
        }
    }
    Ok(())
}

#[test]
fn resnet50_matches_torchvision() -> TestResult {
    check_backbone(BackboneKind::Resnet50)
}

#[test]
fn resnext50_32x4d_matches_torchvision() -> TestResult {
    check_backbone(BackboneKind::Resnext50_32x4d)
}

#[test]
fn resnext50_32x4d_cbam_matches_the_attention_module_reference() -> TestResult {
    check_backbone(BackboneKind::Resnext50_32x4dCbam)
}

#[test]
fn seresnet50_matches_timm() -> TestResult {
    check_backbone(BackboneKind::Seresnet50)
}

#[test]
fn senet50_vggface2_matches_the_vggface2_reference() -> TestResult {
    check_backbone(BackboneKind::Senet50Vggface2)
}

#[test]
fn mtanet_matches_the_reference_head() -> TestResult {
    let meta = meta()?;
    let m = &meta["mtanet"];
    let cfg = MtaNetConfig {
        backbone: small_config(BackboneKind::Resnet50, &meta)?,
        hidden: m["hidden"].as_u64().ok_or("hidden")? as usize,
        dropout: 0.0,
        va_activation: VaActivation::Tanh,
        n_au: m["n_au"].as_u64().ok_or("n_au")? as usize,
        n_expr: m["n_expr"].as_u64().ok_or("n_expr")? as usize,
        pooling: EncoderPooling::AvgMax,
        decoder_layers: 1,
    };
    let varmap = VarMap::new();
    let model = MtaNet::new(
        &cfg,
        VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu),
    )?;
    let backbone = load_pretrained(
        &varmap,
        &fixture_dir().join("resnet50.weights.safetensors"),
        "backbone.",
    )?;
    assert!(backbone.fresh.iter().all(|k| k.starts_with("head.")));
    let head = load_pretrained(&varmap, &fixture_dir().join("mtanet.head.safetensors"), "")?;
    assert_eq!(head.loaded.len(), 10);

    let f = io("mtanet.io.safetensors")?;
    let out = model.forward_t(&f["input"], false)?;
    let (_, features) = model.forward_features_t(&f["input"], false)?;
    for (got, key) in [
        (&out.va, "va"),
        (&out.au_logits, "au"),
        (&out.expr_logits, "expr"),
        (&features, "features"),
    ] {
        let err = rel_err(got, &f[key])?;
        assert!(err <= OUTPUT_TOL, "mtanet {key}: rel err {err}");
    }

    let xv = Var::from_tensor(&f["input"])?;
    let out = model.forward_t(xv.as_tensor(), true)?;
    let loss = ((out.va * &f["r_va"])?.sum_all()? + (out.au_logits * &f["r_au"])?.sum_all()?)?
        .add(&(out.expr_logits * &f["r_expr"])?.sum_all()?)?;
    let grads = model.backward(&loss)?;
    for (key, want) in &f {
        let Some(name) = key.strip_prefix("grad.") else {
            continue;
        };
        let param = if name == "input" {
            xv.as_tensor().clone()
        } else {
            var(&varmap, name)?
        };
        let got = grads
            .get(&param)
            .ok_or_else(|| format!("no gradient for {name}"))?;
        let err = rel_err(got, want)?;
        assert!(err <= GRAD_TOL, "mtanet grad {name}: rel err {err}");
    }
    Ok(())
}

#[test]
fn full_size_parameter_counts_equal_the_references() -> TestResult {
    let meta = meta()?;
    for kind in BackboneKind::ALL {
        let want = meta["full_size_parameters"][kind.name()]
            .as_u64()
            .ok_or("count")? as usize;
        let cfg = ResNetConfig::from_kind(&kind);
        assert_eq!(parameter_count(&cfg), want, "{kind}");
        let text = summary(&cfg);
        assert_eq!(
            text.lines().last(),
            Some(format!("parameters: {want}").as_str())
        );
    }
    Ok(())
}

/// The shape recorder behind `parameter_count` agrees with a real VarMap-built full-size model.
#[test]
fn a_varmap_built_full_size_model_has_the_reference_count() -> TestResult {
    let meta = meta()?;
    let kind = BackboneKind::Senet50Vggface2;
    let varmap = VarMap::new();
    ResNet::new(
        &ResNetConfig::from_kind(&kind),
        VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu),
    )?;
    let data = varmap.data().lock().map_err(|_| "lock")?;
    let count: usize = data
        .iter()
        .filter(|(k, _)| !k.ends_with("running_mean") && !k.ends_with("running_var"))
        .map(|(_, v)| v.elem_count())
        .sum();
    assert_eq!(
        count as u64,
        meta["full_size_parameters"][kind.name()]
            .as_u64()
            .ok_or("count")?
    );
    Ok(())
}
