//! Crash safety: SIGKILL a training process at several points, resume it, and check that the
//! final weights and metrics equal an uninterrupted run and no result file is torn or doubled.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

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

#[test]
fn sigkill_at_random_points_then_resume_equals_uninterrupted() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = write_config(tmp.path());
    // Reference run (also generates the synthetic set once).
    let t0 = Instant::now();
    assert!(train(&cfg, tmp.path(), None).wait().unwrap().success());
    let full_time = t0.elapsed();
    let reference = run_dirs(tmp.path()).pop().unwrap();
    let (w_ref, rep_ref) = final_state(&reference);

    for seed in [1u64, 2, 3] {
        let before = run_dirs(tmp.path());
        let mut child = train(&cfg, tmp.path(), None);
        // A pseudo-random kill point within the run (derived from the seed, no clock entropy).
        let frac = 0.2 + 0.6 * ((seed * 2_654_435_761) % 1000) as f64 / 1000.0;
        std::thread::sleep(full_time.mul_f64(frac));
        let _ = child.kill(); // SIGKILL
        let _ = child.wait();
        let dir = run_dirs(tmp.path())
            .into_iter()
            .find(|d| !before.contains(d));
        let dir = match dir {
            Some(d) if d.join("checkpoints/last.safetensors").is_file() => d,
            _ => continue, // killed before the first checkpoint: nothing to resume
        };
        // Resume until finished (a resume may itself be killed in a longer test; here once).
        let ok = train(&cfg, tmp.path(), Some(&dir)).wait().unwrap();
        assert!(ok.success(), "resume of {} failed", dir.display());
        let (w, rep) = final_state(&dir);
        assert_eq!(w.len(), w_ref.len());
        for ((k, a), (_, b)) in w.iter().zip(&w_ref) {
            assert_eq!(a, b, "seed {seed}: weights differ at {k}");
        }
        assert_eq!(rep, rep_ref, "seed {seed}: metrics differ");
        // metrics.csv: complete lines, strictly increasing steps (no duplicates).
        let m = std::fs::read_to_string(dir.join("metrics.csv")).unwrap();
        let steps: Vec<u64> = m
            .lines()
            .skip(1)
            .map(|l| l.split(',').next().unwrap().parse().unwrap())
            .collect();
        assert!(steps.windows(2).all(|w| w[0] < w[1]), "{m}");
        let ref_m = std::fs::read_to_string(reference.join("metrics.csv")).unwrap();
        assert_eq!(
            m.lines().count(),
            ref_m.lines().count(),
            "resumed:\n{m}\nreference:\n{ref_m}"
        );
    }
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
