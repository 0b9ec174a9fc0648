//! Crash safety: SIGKILL a training process after named events (its checkpoint reached a given
//! step, in each stage), resume it, and check that the final weights and metrics equal an
//! uninterrupted run's and no result file is torn or doubled.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_mtanet");

fn write_config(tmp: &Path) -> PathBuf {
    let yaml = format!(
        "
defaults:
  experiment: kill
  seed: 11
  device: cpu
  results_dir: {results}
  data:
    root: null
    synthetic: {{dir: {synth}, videos: 6, frames: 16, seed: 3}}
    batch_size: 8
    image_size: 48
    max_train_frames: 48
    max_val_frames: 16
  model:
    backbone: seresnet50
    width_div: 16
    depths: [1, 1, 1, 1]
    head: {{hidden: 16, dropout: 0.2}}
  training:
    stages:
      - {{name: a, optimizer: adam, lr: 0.001, epochs: 2, loss: sum}}
      - {{name: b, optimizer: sgd, lr: 0.001, steps: 4, loss: uncertainty}}
    checkpoint_every: 1
  eval: {{batch_size: 16}}
",
        results = tmp.join("results").display(),
        synth = tmp.join("synth").display()
    );
    let p = tmp.join("kill.yaml");
    std::fs::write(&p, yaml).unwrap();
    p
}

fn run_dirs(tmp: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(tmp.join("results/kill"))
        .map(|d| {
            d.map(|e| e.unwrap().path())
                .filter(|p| p.is_dir())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

fn final_state(dir: &Path) -> (Vec<(String, Vec<f32>)>, String) {
    let c = mtanet_runner::record::checkpoint::load(
        &dir.join("checkpoints/last.safetensors"),
        &candle_core::Device::Cpu,
    )
    .unwrap();
    assert!(c.state.finished, "{} not finished", dir.display());
    let mut w: Vec<_> = c
        .model
        .into_iter()
        .map(|(k, t)| (k, t.flatten_all().unwrap().to_vec1::<f32>().unwrap()))
        .collect();
    w.sort_by(|a, b| a.0.cmp(&b.0));
    (w, std::fs::read_to_string(dir.join("report.json")).unwrap())
}

fn train(config: &Path, cwd: &Path, resume: Option<&Path>) -> std::process::Child {
    let mut c = Command::new(BIN);
    c.current_dir(cwd).arg("train").arg("--quiet");
    match resume {
        Some(d) => c.arg("--resume").arg(d),
        None => c.arg("--config").arg(config),
    };
    c.stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap()
}

/// The loop position in the run's last checkpoint, if one is readable yet: (global step,
/// finished).
fn checkpoint_step(dir: &Path) -> Option<(u64, bool)> {
    let path = dir.join("checkpoints/last.safetensors");
    if !path.is_file() {
        return None;
    }
    mtanet_runner::record::checkpoint::load(&path, &candle_core::Device::Cpu)
        .ok()
        .map(|c| (c.state.global_step, c.state.finished))
}

/// Waits until the new run (a folder of `results/kill` not in `before`) has a checkpoint at
/// step `step` or later, then SIGKILLs `child`; returns the run folder.
fn kill_after_step(
    tmp: &Path,
    before: &[PathBuf],
    child: &mut std::process::Child,
    step: u64,
) -> PathBuf {
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            panic!("the run ended ({status}) before its checkpoint reached step {step}");
        }
        let dir = run_dirs(tmp).into_iter().find(|d| !before.contains(d));
        if let Some(dir) = dir {
            if checkpoint_step(&dir).is_some_and(|(s, _)| s >= step) {
                child.kill().unwrap(); // SIGKILL
                let status = child.wait().unwrap();
                assert!(!status.success(), "killed after step {step}: {status}");
                return dir;
            }
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn sigkill_after_named_steps_then_resume_equals_uninterrupted() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = write_config(tmp.path());
    // Reference run (also generates the synthetic set once).
    assert!(train(&cfg, tmp.path(), None).wait().unwrap().success());
    let reference = run_dirs(tmp.path()).pop().unwrap();
    let (w_ref, rep_ref) = final_state(&reference);
    let ref_m = std::fs::read_to_string(reference.join("metrics.csv")).unwrap();
    let (ref_step, _) = checkpoint_step(&reference).unwrap();
    assert_eq!(ref_step, 16, "2 epochs of 6 batches, then 4 steps");

    // Kill points: in stage a's first epoch, in its second, in stage b.
    let kill_steps = [2u64, 9, 14];
    let mut resumed = 0;
    for step in kill_steps {
        let before = run_dirs(tmp.path());
        let mut child = train(&cfg, tmp.path(), None);
        let dir = kill_after_step(tmp.path(), &before, &mut child, step);
        let (at, finished) = checkpoint_step(&dir).unwrap();
        assert!(
            at >= step && !finished,
            "step {step}: killed at {at}, finished {finished}"
        );
        let ok = train(&cfg, tmp.path(), Some(&dir)).wait().unwrap();
        assert!(ok.success(), "resume of {} failed", dir.display());
        resumed += 1;
        let (w, rep) = final_state(&dir);
        assert_eq!(w.len(), w_ref.len());
        for ((k, a), (_, b)) in w.iter().zip(&w_ref) {
            assert_eq!(a, b, "kill after step {step}: weights differ at {k}");
        }
        assert_eq!(rep, rep_ref, "kill after step {step}: metrics differ");
        // metrics.csv: the uninterrupted run's bytes (no torn, doubled or missing row).
        let m = std::fs::read_to_string(dir.join("metrics.csv")).unwrap();
        assert!(m.lines().count() > 1, "{m}");
        assert_eq!(m, ref_m, "kill after step {step}: metrics.csv differs");
    }
    assert_eq!(resumed, kill_steps.len());
    // runs.csv: every line complete, one row per finished run.
    let runs = std::fs::read_to_string(tmp.path().join("results/runs.csv")).unwrap();
    let n_fields = runs.lines().next().unwrap().split(',').count();
    for l in runs.lines() {
        assert_eq!(l.split(',').count(), n_fields, "torn row: {l}");
    }
    let finished = runs.lines().filter(|l| l.contains(",finished,")).count();
    assert_eq!(
        finished,
        run_dirs(tmp.path())
            .iter()
            .filter(|d| d.join("report.json").is_file())
            .count()
    );
}
