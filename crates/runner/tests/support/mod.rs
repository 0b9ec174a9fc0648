//! Shared by the runner's integration tests: the tiny two-stage training they all run.

use std::path::Path;

use mtanet_runner::experiment::{Config, ExperimentFile, Override};

/// A seconds-long run on a 6-video synthetic set: ResNeXt-50-CBAM at width/16, one block per
/// stage, 48x48 crops, Adam then SGD with uncertainty weighting. `sets` are `--set` style
/// overrides (`"training.stages.1.steps=2"`, `"seed=11"`) applied on top.
pub fn tiny_config(results: &Path, synth: &Path, sets: &[&str]) -> Config {
    let yaml = format!(
        "
defaults:
  experiment: tiny
  seed: 5
  device: cpu
  results_dir: {results}
  data:
    root: null
    synthetic: {{dir: {synth}, videos: 6, frames: 16, seed: 3}}
    batch_size: 8
    image_size: 48
    max_train_frames: 40
    max_val_frames: 24
  model:
    backbone: resnext50_32x4d_cbam
    width_div: 16
    depths: [1, 1, 1, 1]
    groups: 2
    head: {{hidden: 16, dropout: 0.2}}
  training:
    stages:
      - {{name: a, optimizer: adam, lr: 0.001, steps: 4, loss: sum, weight_decay: 0.001}}
      - {{name: b, optimizer: sgd, lr: 0.001, steps: 3, loss: uncertainty, weight_decay: 0.005}}
    checkpoint_every: 2
    au_pos_weight: true
    log_every: 1
  eval: {{batch_size: 16, every_steps: 3}}
",
        results = results.display(),
        synth = synth.display()
    );
    let overrides: Vec<Override> = sets
        .iter()
        .map(|s| s.parse().expect("test override"))
        .collect();
    ExperimentFile::parse("tiny.yaml", &yaml)
        .expect("tiny config parses")
        .resolve(None, None, &overrides)
        .expect("tiny config resolves")
}
