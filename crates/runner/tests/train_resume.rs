//! End-to-end: a tiny two-stage training on a tiny synthetic set; interrupt + resume equals an
//! uninterrupted run; outputs (TensorBoard, metrics.csv, runs.csv) exist and parse.

use std::path::Path;

use mtanet_runner::record::checkpoint;
use mtanet_runner::training::{self as train, RunContext};

mod support;

fn tiny_config(tmp: &Path) -> mtanet_runner::experiment::Config {
    support::tiny_config(&tmp.join("results"), &tmp.join("synth"), &[])
}

fn weights(dir: &Path) -> Vec<(String, Vec<f32>)> {
    let c = checkpoint::load(
        &dir.join("checkpoints/last.safetensors"),
        &candle_core::Device::Cpu,
    )
    .unwrap();
    assert!(c.state.finished);
    let mut v: Vec<_> = c
        .model
        .into_iter()
        .map(|(k, t)| (k, t.flatten_all().unwrap().to_vec1::<f32>().unwrap()))
        .collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

#[test]
fn interrupted_and_resumed_run_equals_uninterrupted() {
    let tmp = tempfile::tempdir().unwrap();
    let config = tiny_config(tmp.path());
    let quiet = RunContext {
        quiet: true,
        ..Default::default()
    };
    let full = train::run(&config, &quiet).unwrap();
    assert!(full.finished);
    let report_full = full.report.clone().unwrap();

    let part = train::run(
        &config,
        &RunContext {
            max_steps: Some(5),
            ..quiet.clone()
        },
    )
    .unwrap();
    assert!(!part.finished);
    let resumed = train::run(
        &config,
        &RunContext {
            resume: Some(part.run_dir.clone()),
            ..quiet.clone()
        },
    )
    .unwrap();
    assert!(resumed.finished);

    let (a, b) = (weights(&full.run_dir), weights(&resumed.run_dir));
    assert_eq!(a.len(), b.len());
    assert!(a.iter().any(|(k, _)| k.starts_with("uncertainty")));
    for ((ka, va), (kb, vb)) in a.iter().zip(&b) {
        assert_eq!(ka, kb);
        assert_eq!(va, vb, "weights differ at {ka}");
    }
    assert_eq!(
        serde_json::to_string(&report_full).unwrap(),
        serde_json::to_string(resumed.report.as_ref().unwrap()).unwrap()
    );

    // metrics.csv: evaluations at steps 3, 6 (every_steps) and the end, no duplicates.
    for dir in [&full.run_dir, &resumed.run_dir] {
        let text = std::fs::read_to_string(dir.join("metrics.csv")).unwrap();
        let steps: Vec<&str> = text
            .lines()
            .skip(1)
            .map(|l| l.split(',').next().unwrap())
            .collect();
        assert_eq!(steps, vec!["3", "6", "7"], "{}", dir.display());
        let events: Vec<u8> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| {
                p.file_name()
                    .unwrap()
                    .to_string_lossy()
                    .starts_with("events.out.tfevents")
            })
            .flat_map(|p| std::fs::read(p).unwrap())
            .collect();
        // Per-AU and per-class F1 once each, by name; summary scalars under val/.
        let has = |tag: &str| events.windows(tag.len()).any(|w| w == tag.as_bytes());
        assert!(has("val/au_f1/") && has("val/expr_f1/") && has("val/va.ccc_valence"));
        assert!(!has("f1_au.") && !has("f1_class."));
        assert!(dir.join("config.yaml").is_file() && dir.join("report.json").is_file());
    }
    // runs.csv: one row per finished run (the interrupted attempt adds none).
    let runs = std::fs::read_to_string(tmp.path().join("results/runs.csv")).unwrap();
    assert_eq!(runs.lines().count(), 3, "{runs}");
    assert!(runs.lines().skip(1).all(|l| l.contains(",finished,")));
}

/// Every file under `dir` but `log.txt` (which records each attempt), with its bytes.
fn files_but_log(dir: &Path) -> Vec<(std::path::PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                todo.push(p);
            } else if p.file_name().unwrap() != "log.txt" {
                out.push((p.clone(), std::fs::read(&p).unwrap()));
            }
        }
    }
    out.sort();
    out
}

#[test]
fn a_resume_refuses_a_config_the_checkpoint_was_not_trained_with() {
    let tmp = tempfile::tempdir().unwrap();
    let config = tiny_config(tmp.path());
    let quiet = RunContext {
        quiet: true,
        ..Default::default()
    };
    let part = train::run(
        &config,
        &RunContext {
            max_steps: Some(2),
            ..quiet.clone()
        },
    )
    .unwrap();
    let resume = RunContext {
        resume: Some(part.run_dir.clone()),
        ..quiet.clone()
    };
    // config.yaml edited as a user would, read back as `train --resume` does: every value
    // passes its checks, but the checkpoint was trained with others.
    let path = part.run_dir.join("config.yaml");
    let text = std::fs::read_to_string(&path).unwrap();
    let mut edited = text.clone();
    for (from, to) in [
        ("seed: 5\n", "seed: 6\n"),
        ("optimizer: adam", "optimizer: sgd"),
        ("batch_size: 8", "batch_size: 4"),
    ] {
        assert!(edited.contains(from), "{from:?} not in:\n{text}");
        edited = edited.replacen(from, to, 1);
    }
    std::fs::write(&path, &edited).unwrap();
    let before = files_but_log(&part.run_dir);
    let cfg = mtanet_runner::build::restore::read_run_config(&path).unwrap();
    let msg = format!("{:#}", train::run(&cfg, &resume).unwrap_err());
    for needle in [
        "in 3 key(s)",
        "seed (trained with 5, now 6)",
        "data.batch_size (trained with 8, now 4)",
        "training.stages.0.optimizer (trained with \"adam\", now \"sgd\")",
        "checkpoints/last.safetensors",
    ] {
        assert!(msg.contains(needle), "{needle:?} missing in: {msg}");
    }
    assert_eq!(files_but_log(&part.run_dir), before);

    // The keys that cannot change the results may change: the run ends where an
    // uninterrupted one ends.
    let mut harmless = text.clone();
    for (from, to) in [
        ("workers: 0", "workers: 2"),
        ("prefetch: 4", "prefetch: 1"),
        ("checkpoint_every: 2", "checkpoint_every: 5"),
        ("log_every: 1", "log_every: 4"),
    ] {
        assert!(harmless.contains(from), "{from:?} not in:\n{text}");
        harmless = harmless.replacen(from, to, 1);
    }
    std::fs::write(&path, &harmless).unwrap();
    let cfg = mtanet_runner::build::restore::read_run_config(&path).unwrap();
    let resumed = train::run(&cfg, &resume).unwrap();
    assert!(resumed.finished);
    let full = train::run(&config, &quiet).unwrap();
    assert_eq!(weights(&full.run_dir), weights(&resumed.run_dir));
}

#[test]
fn same_seed_same_metrics_other_seed_differs() {
    let tmp = tempfile::tempdir().unwrap();
    let mut config = tiny_config(tmp.path());
    config.training.stages.truncate(1);
    let ctx = RunContext {
        quiet: true,
        ..Default::default()
    };
    let a = train::run(&config, &ctx).unwrap().report.unwrap();
    let b = train::run(&config, &ctx).unwrap().report.unwrap();
    assert_eq!(
        serde_json::to_string(&a).unwrap(),
        serde_json::to_string(&b).unwrap()
    );
    config.seed += 1;
    let c = train::run(&config, &ctx).unwrap().report.unwrap();
    assert_ne!(
        serde_json::to_string(&a).unwrap(),
        serde_json::to_string(&c).unwrap()
    );
}

#[test]
fn missing_data_root_names_path_and_fix() {
    let tmp = tempfile::tempdir().unwrap();
    let mut config = tiny_config(tmp.path());
    config.data.root = Some(tmp.path().join("no-such-affwild2"));
    let e = train::run(
        &config,
        &RunContext {
            quiet: true,
            ..Default::default()
        },
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("no-such-affwild2") && e.contains("AFFWILD2_ROOT"),
        "{e}"
    );
}

#[test]
fn non_finite_loss_stops_with_step_task_and_samples_and_marks_run_failed() {
    let tmp = tempfile::tempdir().unwrap();
    let mut config = tiny_config(tmp.path());
    // An absurd learning rate blows the weights up within a few steps.
    config.training.stages.truncate(1);
    config.training.stages[0].lr = 1e30;
    config.training.stages[0].steps = Some(30);
    config.training.checkpoint_every = 1;
    let e = train::run(
        &config,
        &RunContext {
            quiet: true,
            ..Default::default()
        },
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("non-finite"), "{e}");
    assert!(e.contains("at step"), "{e}");
    assert!(e.contains("batch samples:") && e.contains('/'), "{e}");
    assert!(e.contains("last.safetensors"), "{e}");
    let runs = std::fs::read_to_string(tmp.path().join("results/runs.csv")).unwrap();
    assert!(runs.lines().nth(1).unwrap().contains(",failed,"), "{runs}");
    // The last good checkpoint is readable and holds finite weights.
    let dir = std::fs::read_dir(tmp.path().join("results/tiny"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let c = checkpoint::load(
        &dir.join("checkpoints/last.safetensors"),
        &candle_core::Device::Cpu,
    )
    .unwrap();
    for (k, t) in c.model {
        let v = t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert!(
            v.iter().all(|x| x.is_finite()),
            "{k} not finite in the kept checkpoint"
        );
    }
}

/// `precision: bf16` through the whole runner: the run finishes, its checkpoint holds f32
/// master weights that moved away from an f32 run's (the bf16 path really ran), its metrics
/// are finite, and the resolved config says bf16.
#[test]
fn bf16_run_trains_f32_master_weights() {
    let tmp = tempfile::tempdir().unwrap();
    let ctx = RunContext {
        quiet: true,
        ..Default::default()
    };
    let f32_run = train::run(&tiny_config(tmp.path()), &ctx).unwrap();
    let bf16_config = support::tiny_config(
        &tmp.path().join("results"),
        &tmp.path().join("synth"),
        &["precision=bf16"],
    );
    assert_eq!(bf16_config.precision, mtanet_backbones::Precision::Bf16);
    let bf16_run = train::run(&bf16_config, &ctx).unwrap();
    assert!(bf16_run.finished);
    let yaml = std::fs::read_to_string(bf16_run.run_dir.join("config.yaml")).unwrap();
    assert!(yaml.contains("precision: bf16"), "{yaml}");
    let c = checkpoint::load(
        &bf16_run.run_dir.join("checkpoints/last.safetensors"),
        &candle_core::Device::Cpu,
    )
    .unwrap();
    assert!(c
        .model
        .values()
        .all(|t| t.dtype() == candle_core::DType::F32));
    let (a, b) = (weights(&f32_run.run_dir), weights(&bf16_run.run_dir));
    assert_eq!(a.len(), b.len());
    let (mut diff2, mut norm2) = (0f64, 0f64);
    for ((ka, va), (kb, vb)) in a.iter().zip(&b) {
        assert_eq!(ka, kb);
        assert!(vb.iter().all(|v| v.is_finite()), "{kb}");
        for (x, y) in va.iter().zip(vb) {
            diff2 += ((x - y) as f64).powi(2);
            norm2 += (*x as f64).powi(2);
        }
    }
    // Seven steps from the same initial weights: bf16 rounding moves them, but not far.
    let rel = (diff2 / norm2).sqrt();
    eprintln!("bf16 vs f32 run: relative L2 distance of all weights {rel:.3e}");
    assert!(rel > 0.0 && rel < 0.05, "relative L2 distance {rel}");
    let report = serde_json::to_string(&bf16_run.report.unwrap()).unwrap();
    assert!(
        !report.contains("NaN") && !report.contains("null"),
        "{report}"
    );
}

/// A resume on other samples (training crops gone since the checkpoint) is refused, saying
/// which split changed; the checkpoint stays as it was.
#[test]
fn a_resume_on_other_data_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let config = tiny_config(tmp.path());
    let part = train::run(
        &config,
        &RunContext {
            max_steps: Some(2),
            quiet: true,
            ..Default::default()
        },
    )
    .unwrap();
    assert!(!part.finished);
    let ckpt = part.run_dir.join("checkpoints/last.safetensors");
    let before = std::fs::read(&ckpt).unwrap();
    // The first frame of every training video loses its crop.
    let root = tmp.path().join("synth");
    for e in std::fs::read_dir(root.join("annotations/VA_Set/Training_Set")).unwrap() {
        let path = e.unwrap().path();
        let video = path.file_stem().unwrap().to_string_lossy().into_owned();
        let crop = root.join("cropped_aligned").join(&video).join("00001.jpg");
        if crop.is_file() {
            std::fs::remove_file(crop).unwrap();
        }
    }
    let e = train::run(
        &config,
        &RunContext {
            resume: Some(part.run_dir.clone()),
            quiet: true,
            ..Default::default()
        },
    )
    .unwrap_err();
    let e = format!("{e:#}");
    assert!(
        e.contains("the data differ") && e.contains("training: ") && !e.contains("validation"),
        "{e}"
    );
    assert_eq!(std::fs::read(&ckpt).unwrap(), before);
}
