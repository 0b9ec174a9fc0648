//! The synthetic set in the ABAW 2022+ layout (12 AUs, 8 expressions with `Other`): a tiny
//! run trains on it, `predict` writes each submission format, `submit validate` accepts them,
//! and `evaluate` of the per-video files gives training's own evaluation.

use mtanet_affwild2::layout::{discover, Layout};
use mtanet_affwild2::synth::{generate_as, synth_vocab};
use mtanet_affwild2::{Split, SynthConfig};
use mtanet_metrics::Report;
use mtanet_runner::evaluate::{evaluate, EvaluateOptions};
use mtanet_runner::predict::{self, PredictOptions, PredictTarget};
use mtanet_runner::submission::validate::{validate, ValidateOptions};
use mtanet_runner::submission::SubmissionFormat;
use mtanet_runner::training::{self as train, RunContext};

mod support;

#[test]
fn abaw2022_synthetic_round_trip() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("s22");
    let cfg = SynthConfig {
        videos: 12,
        frames: 16,
        seed: 3,
        full: false,
    };
    let report = generate_as(&root, &cfg, Layout::Abaw2022).unwrap();
    assert_eq!(report.vocab.au_names.len(), 12);
    assert_eq!(
        report.vocab.expr_names.last().map(String::as_str),
        Some("Other")
    );
    let found = discover(&root).unwrap();
    assert_eq!(found.layout, Layout::Abaw2022);
    assert!(generate_as(&tmp.path().join("x"), &cfg, Layout::Abaw2021).is_err());

    let root_set = format!("data.root={}", root.display());
    let config = support::tiny_config(
        &tmp.path().join("results"),
        &tmp.path().join("unused"),
        &[
            &root_set,
            "data.max_val_frames=null",
            "training.stages=[{name: a, optimizer: adam, lr: 0.003, steps: 2, loss: sum, weight_decay: 0.001}]",
            "training.checkpoint_every=10",
            "training.log_every=10",
            "eval.every_steps=0",
        ],
    );
    let run = train::run(
        &config,
        &RunContext {
            quiet: true,
            ..Default::default()
        },
    )
    .unwrap();
    let logged: Report = run.report.clone().expect("a finished run has a report");

    let opts = |out: &std::path::Path| PredictOptions {
        checkpoint: run.run_dir.clone(),
        config: None,
        root: Some(root.clone()),
        target: PredictTarget::Split(Split::Validation),
        out: out.to_path_buf(),
        videos: None,
        smooth: 0,
        tuned_thresholds: false,
        batch_size: None,
        device: None,
        quiet: true,
    };
    for format in [
        SubmissionFormat::Abaw2020,
        SubmissionFormat::Abaw2023,
        SubmissionFormat::Mtl,
    ] {
        let out = tmp.path().join(format!("pred_{format}"));
        predict::run_as(&opts(&out), Some(format)).unwrap();
        let r = validate(
            &out,
            &ValidateOptions {
                format: Some(format),
                root: root.clone(),
                target: PredictTarget::Split(Split::Validation),
                sample: None,
                videos: None,
                max_shown: 5,
            },
        )
        .unwrap();
        assert!(r.is_ok(), "{format}: {r}");
    }
    // The default format of the 2022+ layout is the ABAW 2023 track files.
    let out = tmp.path().join("pred_default");
    predict::run(&opts(&out)).unwrap();
    assert!(out.join("AU_Detection_Challenge.txt").is_file());

    let e = evaluate(
        &tmp.path()
            .join(format!("pred_{}", SubmissionFormat::Abaw2020)),
        &root,
        &EvaluateOptions::default(),
    )
    .unwrap();
    assert_eq!(e.layout, Layout::Abaw2022);
    assert_eq!(e.vocab, synth_vocab(Layout::Abaw2022));
    let mut want = logged;
    if let Some(au) = want.au.as_mut() {
        au.tuned = None;
    }
    assert_eq!(
        e.report, want,
        "evaluate(predict) differs from training's evaluation"
    );
}
