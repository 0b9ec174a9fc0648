//! The experiment files under `experiments/` as a user runs them: every row of every file
//! resolves on both profiles, the heads row with 3 decoder layers builds the network whose
//! parameter count and state-dict names a PyTorch module of the same structure has
//! (`tests/fixtures/heads/heads.json`, from `scripts/reference/make_head_fixtures.py`), and
//! the paper's figures are compared like with like.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device};
use mtanet_affwild2::Vocab;
use mtanet_backbones::{MtaNet, SeededVarMap};
use mtanet_runner::build::model::model_config;
use mtanet_runner::experiment::{ExperimentFile, PaperMetric};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn load(name: &str) -> ExperimentFile {
    ExperimentFile::load(&repo().join(format!("experiments/{name}.yaml"))).unwrap()
}

#[test]
fn every_row_of_every_file_resolves_on_both_profiles() {
    let root = "data.root=/data/affwild2".parse().unwrap();
    for name in ["table1", "heads", "pooling", "loss_weighting"] {
        let f = load(name);
        assert_eq!(f.rows.len(), if name == "table1" { 4 } else { 3 }, "{name}");
        for r in &f.rows {
            let demo = f.resolve(Some("demo"), Some(&r.name), &[]).unwrap();
            let paper = f
                .resolve(Some("paper"), Some(&r.name), std::slice::from_ref(&root))
                .unwrap();
            assert!(paper.data.require_real, "{name}/{}", r.name);
            assert_eq!(demo.experiment, name);
        }
    }
}

#[test]
fn loss_weighting_rows_set_each_stages_loss_under_the_profiles_schedule() {
    use mtanet_losses::LossKind::{Sum, Uncertainty};
    let f = load("loss_weighting");
    let losses = |row: &str| {
        let c = f.resolve(Some("demo"), Some(row), &[]).unwrap();
        assert_eq!(c.training.stages[0].steps, Some(200));
        c.training.stages.iter().map(|s| s.loss).collect::<Vec<_>>()
    };
    assert_eq!(losses("sum_only"), [Sum, Sum]);
    assert_eq!(losses("uncertainty_only"), [Uncertainty, Uncertainty]);
    assert_eq!(losses("sum_then_uncertainty"), [Sum, Uncertainty]);
}

#[test]
fn heads_row_with_three_decoder_layers_has_the_pytorch_modules_parameters() {
    let fixture: serde_json::Value = serde_json::from_slice(
        &std::fs::read(repo().join("tests/fixtures/heads/heads.json")).unwrap(),
    )
    .unwrap();
    let want = fixture["networks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["backbone"] == "senet50_vggface2" && n["decoder_layers"] == 3)
        .expect("the fixture has the SENet-50 network with 3 decoder layers")
        .clone();
    let config = load("heads")
        .resolve(Some("demo"), Some("decoder_3"), &[])
        .unwrap();
    assert_eq!(config.model.head.decoder_layers, 3);
    assert_eq!(
        config.model.head.hidden as u64,
        want["hidden"].as_u64().unwrap()
    );
    let vocab = Vocab::abaw2020();
    let vars = SeededVarMap::new(0);
    MtaNet::new(
        &model_config(&config, &vocab),
        vars.var_builder(DType::F32, &Device::Cpu),
    )
    .unwrap();
    let data = vars.varmap().data().lock().unwrap();
    let trainable: usize = data
        .iter()
        .filter(|(k, _)| !k.contains("running_") && !k.contains("num_batches"))
        .map(|(_, v)| v.elem_count())
        .sum();
    assert_eq!(trainable as u64, want["parameters"].as_u64().unwrap());
    for layer in ["head.va.0.weight", "head.va.2.weight", "head.va.4.weight"] {
        assert!(data.contains_key(layer), "{layer} missing");
    }
}

#[test]
fn the_baseline_rows_figures_are_composites_and_compare_with_our_composites() {
    let f = load("table1");
    let baseline = f.rows.iter().find(|r| r.name == "resnet50").unwrap();
    let p = baseline.paper.as_ref().unwrap();
    assert_eq!(
        (p.au_metric, p.expr_metric),
        (PaperMetric::Composite, PaperMetric::Composite)
    );
    // Our figures: F1 and accuracy of a run scored as a 2022+ release, whose own `score`
    // columns are the F1s; the baseline row compares ABAW 2020 composites of them
    // (0.5 * 0.4 + 0.5 * 0.9, 0.67 * 0.3 + 0.33 * 0.6), the others the F1s.
    let scalars = [
        ("va.ccc_valence", 0.2),
        ("va.ccc_arousal", 0.3),
        ("au.f1", 0.4),
        ("au.accuracy", 0.9),
        ("au.score", 0.4),
        ("expr.f1", 0.3),
        ("expr.accuracy", 0.6),
        ("expr.score", 0.3),
    ];
    let get = |k: &str| scalars.iter().find(|(n, _)| *n == k).map(|x| x.1);
    let ours = p.ours(get);
    assert_eq!(ours[..2], [Some(0.2), Some(0.3)]);
    assert!((ours[2].unwrap() - 0.65).abs() < 1e-12, "{ours:?}");
    assert!((ours[3].unwrap() - 0.399).abs() < 1e-12, "{ours:?}");
    for r in f.rows.iter().filter(|r| r.name != "resnet50") {
        let ours = r.paper.as_ref().unwrap().ours(get);
        assert_eq!(ours[2..], [Some(0.4), Some(0.3)], "{}", r.name);
    }
}
