//! An unreadable validation crop under `data.on_bad_frame: skip`: the run's evaluation leaves
//! its frame out (no other frame is scored in its place or twice), says so in `report.json`,
//! and `tune` scores the same frames.

use std::path::PathBuf;

use mtanet_affwild2::{DatasetIndex, IndexOptions, Sample, Split, Task};
use mtanet_runner::build::training_objects;
use mtanet_runner::step::{evaluate, report_of, scoring_for};
use mtanet_runner::training::{self as train, RunContext};
use mtanet_runner::tune::{self, TuneOptions};

mod support;

/// Labelled frames per task (VA, AU, EXPR) of `samples`, less the frame whose crop is `bad`.
fn labelled(samples: &[Sample], bad: &PathBuf) -> [usize; 3] {
    let kept: Vec<&Sample> = samples.iter().filter(|s| &s.jpg != bad).collect();
    Task::ALL.map(|t| kept.iter().filter(|s| s.has(t)).count())
}

#[test]
fn an_unreadable_validation_crop_is_left_out_of_the_evaluation() {
    let tmp = tempfile::tempdir().unwrap();
    let config = support::tiny_config(
        &tmp.path().join("results"),
        &tmp.path().join("synth"),
        &[
            "data.max_val_frames=null",
            "training.stages=[{name: a, optimizer: adam, lr: 0.003, steps: 2, loss: sum, weight_decay: 0.001}]",
            "training.checkpoint_every=10",
            "eval.every_steps=0",
        ],
    );
    let root = mtanet_runner::build::data::data_root(&config, true).unwrap();
    let index = DatasetIndex::load(&root, &IndexOptions::default()).unwrap();
    let val = index.samples(Split::Validation).to_vec();
    // A frame labelled for every task, inside the first evaluation batch (16 rows).
    let bad = val
        .iter()
        .take(16)
        .find(|s| Task::ALL.iter().all(|&t| s.has(t)))
        .expect("a validation frame with all three labels")
        .jpg
        .clone();
    std::fs::write(&bad, b"").unwrap();
    let expected = labelled(&val, &bad);

    // One evaluation pass over the run's validation loader.
    let objects =
        training_objects::build(&config, true, training_objects::Pretrained::Import).unwrap();
    assert_eq!(objects.val.len(), val.len());
    let pass = evaluate(
        &objects.model,
        &objects.val,
        &objects.device,
        objects.vocab.au_names.len(),
        objects.vocab.expr_names.len(),
        |_| {},
    )
    .unwrap();
    assert_eq!(pass.frames, val.len() - 1);
    assert_eq!(pass.skipped, vec![bad.clone()]);
    assert_eq!(objects.val.bad_frames(), vec![bad.clone()]);
    let report = report_of(
        &pass.acc,
        scoring_for(objects.layout, &objects.vocab),
        false,
    );
    let frames = [
        report.va.as_ref().unwrap().frames,
        report.au.as_ref().unwrap().frames,
        report.expr.as_ref().unwrap().frames,
    ];
    assert_eq!(frames, expected);

    // The run: its report scores the same frames and names the crop left out.
    let run = train::run(
        &config,
        &RunContext {
            quiet: true,
            ..Default::default()
        },
    )
    .unwrap();
    assert!(run.finished);
    assert_eq!(run.skipped, vec![bad.clone()]);
    let r = run.report.clone().unwrap();
    let run_frames = [
        r.va.as_ref().unwrap().frames,
        r.au.as_ref().unwrap().frames,
        r.expr.as_ref().unwrap().frames,
    ];
    assert_eq!(run_frames, expected);
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(run.run_dir.join("report.json")).unwrap()).unwrap();
    assert_eq!(json["eval_skipped_frames"]["count"], 1);
    assert_eq!(
        json["eval_skipped_frames"]["first"][0].as_str(),
        Some(bad.display().to_string().as_str())
    );

    // `tune` scores the frames of the run's evaluation: not the bad crop's frame, whose
    // predicted outputs are a neighbour's.
    let outcome = tune::run(&TuneOptions {
        checkpoint: run.run_dir.clone(),
        config: None,
        root: root.clone(),
        split: Split::Validation,
        batch_size: None,
        device: None,
        quiet: true,
        dry_run: true,
    })
    .unwrap();
    assert_eq!(outcome.frames, expected);
    assert!((outcome.au_f1.raw - r.au.as_ref().unwrap().f1).abs() <= 1e-12);
    assert!((outcome.expr_f1.raw - r.expr.as_ref().unwrap().f1).abs() <= 1e-12);
}

/// Under `data.on_bad_frame: error` an unreadable validation crop fails the run's evaluation:
/// the error names the crop, the step and the run directory, and `runs.csv` marks the run
/// failed instead of leaving no row.
#[test]
fn a_failed_evaluation_marks_the_run_failed_naming_step_and_directory() {
    let tmp = tempfile::tempdir().unwrap();
    let config = support::tiny_config(
        &tmp.path().join("results"),
        &tmp.path().join("synth"),
        &[
            "data.on_bad_frame=error",
            "training.stages=[{name: a, optimizer: adam, lr: 0.003, steps: 2, loss: sum, weight_decay: 0.001}]",
            "eval.every_steps=0",
        ],
    );
    let root = mtanet_runner::build::data::data_root(&config, true).unwrap();
    let index = DatasetIndex::load(&root, &IndexOptions::default()).unwrap();
    let train_jpgs: std::collections::BTreeSet<PathBuf> = index
        .samples(Split::Train)
        .iter()
        .map(|s| s.jpg.clone())
        .collect();
    let bad = index
        .samples(Split::Validation)
        .iter()
        .map(|s| s.jpg.clone())
        .find(|j| !train_jpgs.contains(j))
        .expect("a validation crop no training frame reads");
    std::fs::write(&bad, b"").unwrap();
    let quiet = RunContext {
        quiet: true,
        ..Default::default()
    };
    let e = format!("{:#}", train::run(&config, &quiet).unwrap_err());
    assert!(e.contains("the evaluation at step 2"), "{e}");
    assert!(e.contains("marked failed in runs.csv"), "{e}");
    assert!(e.contains(&bad.display().to_string()), "{e}");
    let dir = tmp.path().join("results/tiny");
    assert!(e.contains(&dir.display().to_string()), "{e}");
    let runs = std::fs::read_to_string(tmp.path().join("results/runs.csv")).unwrap();
    assert_eq!(runs.lines().count(), 2, "{runs}");
    assert!(runs.lines().nth(1).unwrap().contains(",failed,"), "{runs}");
}
