//! Our MTANet's variable names and shapes are the state dict of the PyTorch module
//! `scripts/export_pytorch.py` builds (torchvision / timm / reference backbones under
//! `backbone.`, the head under `head.`), so a checkpoint's `model.*` tensors load into it with
//! `strict=True`. The fixtures `tests/fixtures/export/*.json` come from
//! `scripts/reference/make_export_fixtures.py`: each backbone kind at a small width with the
//! default head, and two 3-layer decoders.
//!
//! PyTorch's BatchNorm keeps a `num_batches_tracked` counter we do not have (it only matters
//! for `momentum=None`; the export script sets it to 0). The test leaves those names out of
//! the comparison and checks instead that they name exactly our BatchNorm layers: one counter
//! per `*.running_mean` we have, no more, no fewer.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use candle_core::{DType, Device};
use mtanet_affwild2::Vocab;
use mtanet_backbones::{MtaNet, SeededVarMap};
use mtanet_runner::build::model::model_config;
use mtanet_runner::experiment::{Config, ModelConfig};

const COUNTER: &str = ".num_batches_tracked";

#[derive(serde::Deserialize)]
struct Fixture {
    model: ModelConfig,
    n_au: usize,
    n_expr: usize,
    parameters: usize,
    state_dict: Vec<(String, Vec<usize>)>,
}

fn fixtures() -> Vec<(PathBuf, Fixture)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/export");
    let mut out: Vec<(PathBuf, Fixture)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().and_then(|e| e.to_str()) == Some("json"))
        .map(|p| {
            let text = std::fs::read_to_string(&p).unwrap();
            let f = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            (p, f)
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// Our variables (name -> shape) for a fixture's configuration, built the way a run builds
/// its model (`build::model::model_config` from the resolved config and the vocabulary).
fn ours(f: &Fixture) -> BTreeMap<String, Vec<usize>> {
    let config = Config {
        model: f.model.clone(),
        ..Config::default()
    };
    let vocab = Vocab {
        au_names: (0..f.n_au).map(|i| format!("AU{i}")).collect(),
        expr_names: (0..f.n_expr).map(|i| format!("E{i}")).collect(),
    };
    let vars = SeededVarMap::new(0);
    MtaNet::new(
        &model_config(&config, &vocab),
        vars.var_builder(DType::F32, &Device::Cpu),
    )
    .unwrap();
    let data = vars.varmap().data().lock().unwrap();
    data.iter()
        .map(|(k, v)| (k.clone(), v.as_tensor().dims().to_vec()))
        .collect()
}

#[test]
fn our_variables_are_the_pytorch_state_dict() {
    let all = fixtures();
    let kinds: BTreeSet<String> = all
        .iter()
        .map(|(_, f)| f.model.backbone.to_string())
        .collect();
    assert_eq!(
        kinds.len(),
        5,
        "every backbone kind has a fixture: {kinds:?}"
    );
    assert!(all.iter().any(|(_, f)| f.model.head.decoder_layers == 3));
    for (path, f) in &all {
        let name = path.file_name().unwrap().to_string_lossy();
        let mine = ours(f);
        let (counters, theirs): (Vec<_>, Vec<_>) = f
            .state_dict
            .iter()
            .cloned()
            .partition(|(k, _)| k.ends_with(COUNTER));
        let theirs: BTreeMap<String, Vec<usize>> = theirs.into_iter().collect();
        let only_ours: Vec<_> = mine.keys().filter(|k| !theirs.contains_key(*k)).collect();
        let only_theirs: Vec<_> = theirs.keys().filter(|k| !mine.contains_key(*k)).collect();
        assert!(
            only_ours.is_empty() && only_theirs.is_empty(),
            "{name}: only ours {only_ours:?}, only PyTorch's {only_theirs:?}"
        );
        for (k, shape) in &theirs {
            assert_eq!(&mine[k], shape, "{name}: shape of {k}");
        }
        // One PyTorch counter per BatchNorm layer of ours, each a scalar.
        let bn_ours: BTreeSet<&str> = mine
            .keys()
            .filter_map(|k| k.strip_suffix(".running_mean"))
            .collect();
        let bn_theirs: BTreeSet<&str> = counters
            .iter()
            .map(|(k, shape)| {
                assert!(shape.is_empty(), "{name}: {k} is not a scalar");
                k.strip_suffix(COUNTER).unwrap()
            })
            .collect();
        assert_eq!(bn_ours, bn_theirs, "{name}: BatchNorm layers");
        // Parameters: every variable but the running statistics.
        let params: usize = mine
            .iter()
            .filter(|(k, _)| !k.ends_with(".running_mean") && !k.ends_with(".running_var"))
            .map(|(_, s)| s.iter().product::<usize>())
            .sum();
        assert_eq!(params, f.parameters, "{name}: parameter count");
    }
}
