//! Agreement with PyTorch (float64) on the cases in tests/fixtures/losses/losses.safetensors,
//! made by scripts/reference/make_loss_fixtures.py: loss values and gradients to 1e-5
//! relative (relative to the largest magnitude of each expected tensor). The AU BCE is
//! checked under both reductions: `bce.*`, `bce_mean.*` and `total.*` with
//! [`AuReduction::Mean`], `bce_sum.*` and `total_sum.*` with [`AuReduction::Sum`].

use std::collections::HashMap;

use candle_core::{DType, Device, Result, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};
use mtanet_losses::{
    masked_bce_with_logits, masked_ccc_loss, masked_cross_entropy, total_loss, AuReduction,
    LossKind, Targets, TaskLossOptions, TaskLosses, UncertaintyWeights,
};

const REL_TOL: f64 = 1e-5;
const ABS_FLOOR: f64 = 1e-7;

fn fixtures() -> Result<HashMap<String, Tensor>> {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../tests/fixtures/losses/losses.safetensors"
    );
    candle_core::safetensors::load(path, &Device::Cpu)
}

fn cases(all: &HashMap<String, Tensor>, kind: &str) -> Vec<String> {
    let mut v: Vec<String> = all
        .keys()
        .filter_map(|k| k.strip_suffix(".loss"))
        .filter(|k| k.starts_with(&format!("{kind}.")))
        .map(str::to_string)
        .collect();
    v.sort();
    v
}

fn get<'a>(all: &'a HashMap<String, Tensor>, case: &str, field: &str) -> Result<&'a Tensor> {
    all.get(&format!("{case}.{field}"))
        .ok_or_else(|| candle_core::Error::msg(format!("fixture has no {case}.{field}")))
}

fn host(t: &Tensor) -> Result<Vec<f64>> {
    t.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()
}

/// Compares `got` (None = no gradient = zeros) against `want` element-wise.
fn assert_close(what: &str, got: Option<&Tensor>, want: &Tensor) -> Result<()> {
    let want = host(want)?;
    let got = match got {
        Some(g) => host(g)?,
        None => vec![0.0; want.len()],
    };
    assert_eq!(got.len(), want.len(), "{what}: length");
    let scale = want.iter().fold(0f64, |m, v| m.max(v.abs()));
    let tol = REL_TOL * scale + ABS_FLOOR;
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        assert!(g.is_finite(), "{what}[{i}] is not finite: {g}");
        assert!(
            (g - w).abs() <= tol,
            "{what}[{i}]: got {g}, want {w} (tol {tol:e})"
        );
    }
    Ok(())
}

fn var(t: &Tensor) -> Result<Var> {
    Var::from_tensor(t)
}

#[test]
fn cross_entropy_matches_torch() -> Result<()> {
    let all = fixtures()?;
    let names = cases(&all, "ce");
    assert!(names.len() >= 6, "{names:?}");
    for case in names {
        let logits = var(get(&all, &case, "logits")?)?;
        let target_i64 = get(&all, &case, "target")?;
        let mask = get(&all, &case, "mask")?;
        let loss = masked_cross_entropy(logits.as_tensor(), target_i64, mask)?;
        assert_close(
            &format!("{case}.loss"),
            Some(&loss),
            get(&all, &case, "loss")?,
        )?;
        let grads = loss.backward()?;
        let g = grads.get(logits.as_tensor());
        assert_close(&format!("{case}.grad"), g, get(&all, &case, "grad_logits")?)?;
        // The runner passes u32 targets: same result whenever the targets are non-negative.
        let raw = target_i64.to_vec1::<i64>()?;
        if raw.iter().all(|v| *v >= 0) {
            let t = Tensor::new(
                raw.iter().map(|v| *v as u32).collect::<Vec<_>>(),
                &Device::Cpu,
            )?;
            let l32 = masked_cross_entropy(logits.as_tensor(), &t, mask)?;
            assert_close(
                &format!("{case}.loss(u32)"),
                Some(&l32),
                get(&all, &case, "loss")?,
            )?;
        }
    }
    Ok(())
}

/// Loss and gradient of every `{kind}.*` BCE case under `reduction`; returns the case count.
fn check_bce_cases(
    all: &HashMap<String, Tensor>,
    kind: &str,
    reduction: AuReduction,
) -> Result<usize> {
    let names = cases(all, kind);
    for case in &names {
        let logits = var(get(all, case, "logits")?)?;
        let pw = all.get(&format!("{case}.pos_weight"));
        let mask = get(all, case, "mask")?;
        let loss = masked_bce_with_logits(
            logits.as_tensor(),
            get(all, case, "target")?,
            mask,
            pw,
            reduction,
        )?;
        assert_close(
            &format!("{case}.loss"),
            Some(&loss),
            get(all, case, "loss")?,
        )?;
        let grads = loss.backward()?;
        let g = grads.get(logits.as_tensor());
        assert_close(&format!("{case}.grad"), g, get(all, case, "grad_logits")?)?;
        // Masked rows: exactly zero, not merely within tolerance.
        if let Some(g) = g {
            let rows = g.to_vec2::<f32>()?;
            for (row, m) in rows.iter().zip(mask.to_vec1::<f32>()?) {
                if m <= 0.5 {
                    assert!(row.iter().all(|v| *v == 0.0), "{case}: masked row {row:?}");
                }
            }
        }
    }
    Ok(names.len())
}

#[test]
fn bce_with_logits_matches_torch() -> Result<()> {
    let all = fixtures()?;
    let n = check_bce_cases(&all, "bce", AuReduction::Mean)?;
    assert!(n >= 6, "{n} bce cases");
    Ok(())
}

#[test]
fn bce_reductions_match_torch_on_the_same_inputs() -> Result<()> {
    let all = fixtures()?;
    let sum = check_bce_cases(&all, "bce_sum", AuReduction::Sum)?;
    let mean = check_bce_cases(&all, "bce_mean", AuReduction::Mean)?;
    assert!(
        sum >= 6 && sum == mean,
        "{sum} sum cases, {mean} mean cases"
    );
    let k_of = |case: &str| -> Result<f64> { Ok(get(&all, case, "logits")?.dims()[1] as f64) };
    // The two references differ by exactly the factor K (Sum = K x Mean).
    for case in cases(&all, "bce_sum") {
        let twin = case.replacen("bce_sum.", "bce_mean.", 1);
        let s = host(get(&all, &case, "loss")?)?[0];
        let m = host(get(&all, &twin, "loss")?)?[0];
        assert!(
            (s - k_of(&case)? * m).abs() <= 1e-12 * s.abs().max(1.0),
            "{case}"
        );
    }
    Ok(())
}

#[test]
fn ccc_loss_matches_torch() -> Result<()> {
    let all = fixtures()?;
    let names = cases(&all, "ccc");
    assert!(names.len() >= 6, "{names:?}");
    for case in names {
        let pred = var(get(&all, &case, "pred")?)?;
        let loss = masked_ccc_loss(
            pred.as_tensor(),
            get(&all, &case, "target")?,
            get(&all, &case, "mask")?,
        )?;
        assert_close(
            &format!("{case}.loss"),
            Some(&loss),
            get(&all, &case, "loss")?,
        )?;
        let grads = loss.backward()?;
        let g = grads.get(pred.as_tensor());
        assert_close(&format!("{case}.grad"), g, get(&all, &case, "grad_pred")?)?;
    }
    Ok(())
}

#[test]
fn uncertainty_total_matches_torch() -> Result<()> {
    let all = fixtures()?;
    let n = check_total_cases(&all, "total", AuReduction::Mean)?;
    assert!(n >= 4, "{n} total cases");
    Ok(())
}

#[test]
fn uncertainty_total_with_summed_au_loss_matches_torch() -> Result<()> {
    let all = fixtures()?;
    let n = check_total_cases(&all, "total_sum", AuReduction::Sum)?;
    assert!(n >= 2, "{n} total_sum cases");
    Ok(())
}

/// Eq. 5 totals of every `{kind}.*` case with the AU BCE reduced by `au_reduction`: the
/// loss and the gradients of the three outputs and the log-variances; returns the count.
fn check_total_cases(
    all: &HashMap<String, Tensor>,
    kind: &str,
    au_reduction: AuReduction,
) -> Result<usize> {
    let names = cases(all, kind);
    for case in &names {
        let mut map = VarMap::new();
        let vb = VarBuilder::from_varmap(&map, DType::F32, &Device::Cpu);
        let uw = UncertaintyWeights::from_root(&vb)?;
        let s = get(all, case, "log_vars")?.to_vec1::<f32>()?;
        for (name, value) in ["log_var_va", "log_var_au", "log_var_expr"].iter().zip(&s) {
            map.set_one(
                format!("uncertainty.{name}"),
                Tensor::new(&[*value], &Device::Cpu)?,
            )?;
        }
        let va_pred = var(get(all, case, "va_pred")?)?;
        let au_logits = var(get(all, case, "au_logits")?)?;
        let expr_logits = var(get(all, case, "expr_logits")?)?;
        let losses = TaskLosses::compute(
            va_pred.as_tensor(),
            au_logits.as_tensor(),
            expr_logits.as_tensor(),
            &Targets {
                va: get(all, case, "va")?.clone(),
                va_mask: get(all, case, "va_mask")?.clone(),
                au: get(all, case, "au")?.clone(),
                au_mask: get(all, case, "au_mask")?.clone(),
                expr: get(all, case, "expr")?.clone(),
                expr_mask: get(all, case, "expr_mask")?.clone(),
            },
            TaskLossOptions {
                au_pos_weight: all.get(&format!("{case}.pos_weight")),
                au_reduction,
            },
        )?;
        let report = total_loss(&losses, LossKind::Uncertainty, Some(&uw))?;
        let want_loss = get(all, case, "loss")?;
        assert_close(&format!("{case}.loss"), Some(&report.total), want_loss)?;
        let grads = report.total.backward()?;
        for (t, field) in [
            (va_pred.as_tensor(), "grad_va_pred"),
            (au_logits.as_tensor(), "grad_au_logits"),
            (expr_logits.as_tensor(), "grad_expr_logits"),
        ] {
            assert_close(
                &format!("{case}.{field}"),
                grads.get(t),
                get(all, case, field)?,
            )?;
        }
        let want_s = host(get(all, case, "grad_log_vars")?)?;
        for (i, (t, w)) in uw.tensors().iter().zip(&want_s).enumerate() {
            let w = Tensor::new(&[*w], &Device::Cpu)?;
            assert_close(&format!("{case}.grad_log_vars[{i}]"), grads.get(t), &w)?;
        }
    }
    Ok(names.len())
}
