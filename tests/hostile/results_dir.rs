//! An unwritable results folder: the run fails at once, naming the path, and leaves what was
//! there untouched. (Tests run as root, which ignores permission bits, so "unwritable" is a
//! folder whose parent is a regular file.)

use std::path::Path;

use mtanet_runner::config::{Config, ExperimentFile};
use mtanet_runner::train::{self, RunContext};

/// The tiny configuration of `crates/runner/tests/train_resume.rs`, with `results_dir` given.
fn tiny_config(tmp: &Path, results: &Path) -> Config {
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
        synth = tmp.join("synth").display()
    );
    ExperimentFile::parse("tiny.yaml", &yaml)
        .unwrap()
        .resolve(None, None, &[])
        .unwrap()
}

fn quiet() -> RunContext {
    RunContext {
        quiet: true,
        ..Default::default()
    }
}

#[test]
fn results_dir_under_a_regular_file() {
    let tmp = tempfile::tempdir().unwrap();
    let afile = tmp.path().join("afile");
    std::fs::write(&afile, b"precious bytes\n").unwrap();
    let results = afile.join("results");
    let config = tiny_config(tmp.path(), &results);
    let Err(e) = train::run(&config, &quiet()) else {
        panic!("a run into an unwritable results folder must fail");
    };
    let msg = format!("{e:#}");
    assert!(msg.contains(&results.display().to_string()), "{msg}");
    assert_eq!(std::fs::read(&afile).unwrap(), b"precious bytes\n");
    // It failed at start: no synthetic set was generated, no training happened.
    assert!(!tmp.path().join("synth").exists());
}

#[test]
fn experiment_folder_is_a_file_and_runs_csv_is_untouched() {
    let tmp = tempfile::tempdir().unwrap();
    let results = tmp.path().join("results");
    std::fs::create_dir_all(&results).unwrap();
    let runs = b"run_id,experiment\nold,tiny\n";
    std::fs::write(results.join("runs.csv"), runs).unwrap();
    std::fs::write(results.join("tiny"), b"not a folder").unwrap();
    let config = tiny_config(tmp.path(), &results);
    let Err(e) = train::run(&config, &quiet()) else {
        panic!("a run into an unwritable results folder must fail");
    };
    let msg = format!("{e:#}");
    assert!(
        msg.contains(&results.join("tiny").display().to_string()),
        "{msg}"
    );
    assert_eq!(std::fs::read(results.join("runs.csv")).unwrap(), runs);
    assert_eq!(
        std::fs::read(results.join("tiny")).unwrap(),
        b"not a folder"
    );
    assert!(!tmp.path().join("synth").exists());
    let names: Vec<_> = std::fs::read_dir(&results)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names.len(), 2, "{names:?}");
}
