//! Model selection end to end on the tiny run: the selected figures are those of the
//! evaluation with the best total score in `metrics.csv`, its weights are
//! `best.safetensors`, a stage with `init: best` starts from them, `runs.csv` keeps both the
//! selected and the last figures, and an interrupted run resumes to the same picks and files.

use std::collections::HashMap;
use std::path::Path;

use mtanet_runner::record::atomic_io::read_csv;
use mtanet_runner::record::checkpoint;
use mtanet_runner::training::{self as train, RunContext};

mod support;

fn config(tmp: &Path, sets: &[&str]) -> mtanet_runner::experiment::Config {
    let mut all = vec![
        "selection.criterion=total",
        "eval.every_steps=1",
        "training.stages.1.init=best",
    ];
    all.extend_from_slice(sets);
    support::tiny_config(&tmp.join("results"), &tmp.join("synth"), &all)
}

fn quiet() -> RunContext {
    RunContext {
        quiet: true,
        ..Default::default()
    }
}

/// Model tensors of a checkpoint file by name (f32 values).
fn tensors(path: &Path) -> HashMap<String, Vec<f32>> {
    checkpoint::load(path, &candle_core::Device::Cpu)
        .unwrap()
        .model
        .into_iter()
        .map(|(k, t)| (k, t.flatten_all().unwrap().to_vec1::<f32>().unwrap()))
        .collect()
}

/// (step, total) of every row of a run's metrics.csv.
fn totals(dir: &Path) -> Vec<(String, f64)> {
    let (header, rows) = read_csv(&dir.join("metrics.csv")).unwrap();
    let col = |name: &str| header.iter().position(|h| h == name).unwrap();
    let (va, au, ex) = (col("va.score"), col("au.score"), col("expr.score"));
    rows.iter()
        .map(|r| {
            let f = |i: usize| r[i].parse::<f64>().unwrap();
            (r[0].clone(), f(va) + f(au) + f(ex))
        })
        .collect()
}

#[test]
fn best_total_is_selected_saved_used_by_the_next_stage_and_resumed_exactly() {
    let tmp = tempfile::tempdir().unwrap();
    // Stage b barely moves the weights (lr 1e-9, one step): with `init: best` it must end
    // where stage a's best evaluation was, not where stage a ended.
    let cfg = config(
        tmp.path(),
        &["training.stages.1.steps=1", "training.stages.1.lr=1e-9"],
    );
    let full = train::run(&cfg, &quiet()).unwrap();
    assert!(full.finished);
    let dir = &full.run_dir;

    // The selected report is the metrics.csv row with the highest total (first on ties).
    let rows = totals(dir);
    assert!(rows.len() >= 5, "{rows:?}");
    let best = rows
        .iter()
        .fold(None::<&(String, f64)>, |b, r| match b {
            Some(b) if b.1 >= r.1 => Some(b),
            _ => Some(r),
        })
        .unwrap();
    let report = full.report.clone().unwrap();
    let total = report.va.as_ref().unwrap().score
        + report.au.as_ref().unwrap().score
        + report.expr.as_ref().unwrap().score;
    assert!((total - best.1).abs() < 1e-5, "{total} vs {best:?}");
    assert!(
        full.selected_from.contains(&format!("(step {})", best.0)),
        "{}",
        full.selected_from
    );

    // Stage b started from best.safetensors: its one tiny step leaves every trainable
    // tensor (BN running statistics move in train mode) where the best weights were.
    let best_w = tensors(&dir.join("checkpoints/best.safetensors"));
    let last_w = tensors(&dir.join("checkpoints/last.safetensors"));
    let mut compared = 0;
    for (k, b) in &best_w {
        if k.contains("running_") || k.starts_with("uncertainty") {
            continue;
        }
        let l = &last_w[k];
        let d = b
            .iter()
            .zip(l)
            .map(|(x, y)| (x - y).abs())
            .fold(0f32, f32::max);
        assert!(d < 1e-5, "{k}: {d}");
        compared += 1;
    }
    assert!(compared > 10);

    // Inference on the run directory takes the weights its figures come from.
    let m = mtanet_runner::build::restore::load_model(dir, None, Some("cpu")).unwrap();
    assert_eq!(m.checkpoint, dir.join("checkpoints/best.safetensors"));
    let given = dir.join("checkpoints/last.safetensors");
    let m = mtanet_runner::build::restore::load_model(&given, None, Some("cpu")).unwrap();
    assert_eq!(m.checkpoint, given);

    // runs.csv: the selected figures, how they were selected, and the last ones.
    let (header, runs) = read_csv(&tmp.path().join("results/runs.csv")).unwrap();
    let col = |name: &str| header.iter().position(|h| h == name).unwrap();
    assert_eq!(runs[0][col("selection")], "total");
    assert!(runs[0][col("selected_from")].contains("best total"));
    let last_metrics = read_csv(&dir.join("metrics.csv")).unwrap();
    let last_row = last_metrics.1.last().unwrap();
    let m = |name: &str| last_metrics.0.iter().position(|h| h == name).unwrap();
    assert_eq!(
        runs[0][col("last.va.ccc_valence")],
        last_row[m("va.ccc_valence")]
    );

    // Interrupted twice (inside stage a, then inside the run's evaluations), then resumed:
    // the same picks, the same best weights, the same final weights.
    let part = train::run(
        &cfg,
        &RunContext {
            max_steps: Some(2),
            ..quiet()
        },
    )
    .unwrap();
    assert!(!part.finished);
    let again = train::run(
        &cfg,
        &RunContext {
            resume: Some(part.run_dir.clone()),
            max_steps: Some(1),
            ..quiet()
        },
    )
    .unwrap();
    assert!(!again.finished);
    let resumed = train::run(
        &cfg,
        &RunContext {
            resume: Some(part.run_dir.clone()),
            ..quiet()
        },
    )
    .unwrap();
    assert!(resumed.finished);
    let text = |d: &Path, f: &str| std::fs::read_to_string(d.join(f)).unwrap();
    assert_eq!(
        text(dir, "selection.json"),
        text(&resumed.run_dir, "selection.json")
    );
    // Every evaluation happened, including those due at the two stops.
    assert_eq!(
        text(dir, "metrics.csv"),
        text(&resumed.run_dir, "metrics.csv")
    );
    assert_eq!(
        tensors(&dir.join("checkpoints/best.safetensors")),
        tensors(&resumed.run_dir.join("checkpoints/best.safetensors"))
    );
    assert_eq!(
        last_w,
        tensors(&resumed.run_dir.join("checkpoints/last.safetensors"))
    );
    assert_eq!(
        serde_json::to_string(&report).unwrap(),
        serde_json::to_string(resumed.report.as_ref().unwrap()).unwrap()
    );
}

/// A run killed after its stage-end evaluation wrote its `metrics.csv` row (and its best
/// weights, still pending) but before the checkpoint that includes it (simulated by putting
/// back the checkpoint from before that evaluation and the pick's weights as pending)
/// evaluates again when resumed: the same picks, metrics, report and best weights as an
/// uninterrupted run, and no pending file left.
#[test]
fn a_stage_end_evaluation_lost_with_its_checkpoint_is_evaluated_again() {
    let tmp = tempfile::tempdir().unwrap();
    // Stage a ends inside its first epoch with no evaluation before its end: the stage-end
    // evaluation is the run's first, so it is every pick when it is made.
    let sets = [
        "eval.every_steps=0",
        "eval.every_epochs=100",
        "training.stages.1.steps=1",
        "training.stages.1.lr=1e-9",
    ];
    let whole = train::run(&config(&tmp.path().join("whole"), &sets), &quiet()).unwrap();
    assert!(whole.finished);
    let cfg = config(&tmp.path().join("cut"), &sets);
    // Stopped at stage a's last step, before its stage-end evaluation.
    let part = train::run(
        &cfg,
        &RunContext {
            max_steps: Some(4),
            ..quiet()
        },
    )
    .unwrap();
    let dir = part.run_dir.clone();
    let ckpt = dir.join("checkpoints/last.safetensors");
    let before = std::fs::read(&ckpt).unwrap();
    // Resumed for one step of stage b: the stage-end evaluation writes its row, then the
    // checkpoints move on; putting the earlier one back is a kill between the two.
    train::run(
        &cfg,
        &RunContext {
            resume: Some(dir.clone()),
            max_steps: Some(1),
            ..quiet()
        },
    )
    .unwrap();
    assert_eq!(totals(&dir).first().map(|r| r.0.as_str()), Some("4"));
    std::fs::write(&ckpt, &before).unwrap();
    let best = dir.join("checkpoints/best.safetensors");
    let pending = dir.join("checkpoints/best.safetensors.pending");
    std::fs::rename(&best, &pending).unwrap();
    let resumed = train::run(
        &cfg,
        &RunContext {
            resume: Some(dir.clone()),
            ..quiet()
        },
    )
    .unwrap();
    assert!(resumed.finished);
    let text = |d: &Path, f: &str| std::fs::read_to_string(d.join(f)).unwrap();
    assert_eq!(
        whole.selected_from,
        "best total at stage 1 epoch 0 (step 4)"
    );
    assert_eq!(resumed.selected_from, whole.selected_from);
    for f in ["selection.json", "metrics.csv", "report.json"] {
        let same = text(&whole.run_dir, f) == text(&dir, f);
        assert!(
            same,
            "{f} differs between the uninterrupted and the resumed run"
        );
    }
    assert!(!pending.exists(), "the pending pick was left");
    assert_eq!(
        tensors(&best),
        tensors(&whole.run_dir.join("checkpoints/best.safetensors"))
    );
}

#[test]
fn per_task_reports_each_tasks_best_evaluation() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = config(tmp.path(), &["selection.criterion=per_task"]);
    let out = train::run(&cfg, &quiet()).unwrap();
    let (header, rows) = read_csv(&out.run_dir.join("metrics.csv")).unwrap();
    let col = |name: &str| header.iter().position(|h| h == name).unwrap();
    let best = |name: &str| {
        rows.iter()
            .map(|r| r[col(name)].parse::<f64>().unwrap())
            .fold(f64::NEG_INFINITY, f64::max)
    };
    let r = out.report.unwrap();
    // metrics.csv holds 6 decimals.
    assert!((r.va.unwrap().score - best("va.score")).abs() < 1e-6);
    assert!((r.au.unwrap().score - best("au.score")).abs() < 1e-6);
    assert!((r.expr.unwrap().score - best("expr.score")).abs() < 1e-6);
    for task in ["va", "au", "expr"] {
        assert!(out
            .run_dir
            .join(format!("checkpoints/best-{task}.safetensors"))
            .is_file());
    }
    assert!(out.selected_from.contains("VA at") && out.selected_from.contains("EXPR at"));
}
