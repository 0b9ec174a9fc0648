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
    assert_eq!(p.metric_keys()[2..], ["au.score", "expr.score"]);
    for r in f.rows.iter().filter(|r| r.name != "resnet50") {
        let keys = r.paper.as_ref().unwrap().metric_keys();
        assert_eq!(keys[2..], ["au.f1", "expr.f1"], "{}", r.name);
    }
}
