//! Agreement with scikit-learn / numpy (to 1e-6) on tests/fixtures/metrics/metrics.json,
//! made by scripts/reference/make_loss_fixtures.py.

use mtanet_metrics::{ccc, f1_binary, tune_au_thresholds, Accumulator, Scoring};
use serde::Deserialize;

const TOL: f64 = 1e-6;

#[derive(Deserialize)]
struct Fixtures {
    made_by: String,
    ccc: Vec<CccCase>,
    f1_binary: Vec<F1Case>,
    au: Vec<AuCase>,
    expr: Vec<ExprCase>,
    va: Vec<VaCase>,
}

#[derive(Deserialize)]
struct CccCase {
    name: String,
    x: Vec<f64>,
    y: Vec<f64>,
    ccc: f64,
}

#[derive(Deserialize)]
struct F1Case {
    name: String,
    pred: Vec<bool>,
    truth: Vec<bool>,
    f1: f64,
}

#[derive(Deserialize)]
struct AuCase {
    name: String,
    n_au: usize,
    probs: Vec<Vec<f64>>,
    targets: Vec<Vec<u8>>,
    per_au_f1: Vec<f64>,
    f1: f64,
    accuracy: f64,
    score_2020: f64,
    score_2022: f64,
    tuned_thresholds: Vec<f64>,
    tuned_per_au_f1: Vec<f64>,
    tuned_f1: f64,
    tuned_accuracy: f64,
}

#[derive(Deserialize)]
struct ExprCase {
    name: String,
    n_classes: usize,
    pred: Vec<usize>,
    target: Vec<usize>,
    per_class_f1: Vec<f64>,
    f1: f64,
    accuracy: f64,
    score_2020: f64,
    score_2022: f64,
    confusion: Vec<Vec<u64>>,
}

#[derive(Deserialize)]
struct VaCase {
    name: String,
    pred: Vec<Vec<f64>>,
    target: Vec<Vec<f64>>,
    ccc_valence: f64,
    ccc_arousal: f64,
    score: f64,
}

fn load() -> Fixtures {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../tests/fixtures/metrics/metrics.json"
    );
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let f: Fixtures = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}"));
    assert!(f.made_by.ends_with("make_loss_fixtures.py"));
    f
}

fn close(what: &str, got: f64, want: f64) {
    assert!((got - want).abs() <= TOL, "{what}: got {got}, want {want}");
}

fn close_all(what: &str, got: &[f64], want: &[f64]) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        close(&format!("{what}[{i}]"), *g, *w);
    }
}

#[test]
fn ccc_matches_numpy() {
    let f = load();
    assert!(f.ccc.len() >= 5);
    for c in &f.ccc {
        close(&c.name, ccc(&c.x, &c.y), c.ccc);
    }
}

#[test]
fn f1_binary_matches_sklearn() {
    let f = load();
    for c in &f.f1_binary {
        close(&c.name, f1_binary(&c.pred, &c.truth), c.f1);
    }
}

#[test]
fn va_accumulator_matches_numpy() {
    let f = load();
    for c in &f.va {
        let mut acc = Accumulator::new(1, 1);
        for (p, t) in c.pred.iter().zip(&c.target) {
            acc.va
                .push([p[0] as f32, p[1] as f32], [t[0] as f32, t[1] as f32]);
        }
        let r = acc.report(Scoring::Abaw2022, None);
        let va = r.va.unwrap_or_else(|| panic!("{}: no VA report", c.name));
        close(
            &format!("{}.valence", c.name),
            va.ccc_valence,
            c.ccc_valence,
        );
        close(
            &format!("{}.arousal", c.name),
            va.ccc_arousal,
            c.ccc_arousal,
        );
        close(&format!("{}.score", c.name), va.score, c.score);
        assert_eq!(va.frames, c.pred.len());
    }
}

#[test]
fn au_accumulator_and_tuning_match_sklearn() {
    let f = load();
    assert!(f.au.len() >= 3);
    for c in &f.au {
        let mut acc = Accumulator::new(c.n_au, 7);
        for (p, t) in c.probs.iter().zip(&c.targets) {
            let p: Vec<f32> = p.iter().map(|v| *v as f32).collect();
            acc.au
                .try_push(&p, t)
                .unwrap_or_else(|e| panic!("{}: {e}", c.name));
        }
        let tuned = tune_au_thresholds(&acc.au);
        let want_th: Vec<f32> = c.tuned_thresholds.iter().map(|v| *v as f32).collect();
        assert_eq!(tuned, want_th, "{}: tuned thresholds", c.name);
        for (scoring, want_score) in [
            (Scoring::Abaw2020, c.score_2020),
            (Scoring::Abaw2022, c.score_2022),
        ] {
            let r = acc.report(scoring, Some(&tuned));
            let au = r.au.unwrap_or_else(|| panic!("{}: no AU report", c.name));
            close_all(
                &format!("{}.per_au_f1", c.name),
                &au.per_au_f1,
                &c.per_au_f1,
            );
            close(&format!("{}.f1", c.name), au.f1, c.f1);
            close(&format!("{}.accuracy", c.name), au.accuracy, c.accuracy);
            close(&format!("{}.score", c.name), au.score, want_score);
            assert_eq!(au.frames, c.probs.len());
            let t = au
                .tuned
                .unwrap_or_else(|| panic!("{}: no tuned report", c.name));
            close_all(
                &format!("{}.tuned_per_au_f1", c.name),
                &t.per_au_f1,
                &c.tuned_per_au_f1,
            );
            close(&format!("{}.tuned_f1", c.name), t.f1, c.tuned_f1);
            close(
                &format!("{}.tuned_accuracy", c.name),
                t.accuracy,
                c.tuned_accuracy,
            );
            assert!(t.f1 >= au.f1 - 1e-12, "{}: tuning lowered F1", c.name);
        }
    }
}

#[test]
fn expr_accumulator_matches_sklearn() {
    let f = load();
    assert!(f.expr.len() >= 4);
    for c in &f.expr {
        let mut acc = Accumulator::new(8, c.n_classes);
        for (p, t) in c.pred.iter().zip(&c.target) {
            acc.expr
                .try_push(*p, *t)
                .unwrap_or_else(|e| panic!("{}: {e}", c.name));
        }
        for (scoring, want_score) in [
            (Scoring::Abaw2020, c.score_2020),
            (Scoring::Abaw2022, c.score_2022),
        ] {
            let r = acc.report(scoring, None);
            assert!(
                r.va.is_none() && r.au.is_none(),
                "{}: empty tasks must be None",
                c.name
            );
            let e = r
                .expr
                .unwrap_or_else(|| panic!("{}: no EXPR report", c.name));
            close_all(
                &format!("{}.per_class_f1", c.name),
                &e.per_class_f1,
                &c.per_class_f1,
            );
            close(&format!("{}.f1", c.name), e.f1, c.f1);
            close(&format!("{}.accuracy", c.name), e.accuracy, c.accuracy);
            close(&format!("{}.score", c.name), e.score, want_score);
            assert_eq!(e.confusion, c.confusion, "{}: confusion", c.name);
            assert_eq!(e.frames, c.pred.len());
        }
    }
}
