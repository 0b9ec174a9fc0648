//! `mtanet tune` on a tiny trained run: the table's three columns, smoothing never below the
//! raw figures on the split tuned on, thresholds that reproduce the run's own `au.f1_tuned`,
//! the choice stored in the checkpoint, and `predict` applying it (or not, with `--raw`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use mtanet_affwild2::Split;
use mtanet_metrics::Report;
use mtanet_runner::evaluate::{evaluate_dir, EvaluateOptions};
use mtanet_runner::predict::{self, PredictOptions, PredictTarget};
use mtanet_runner::training::{self as train, RunContext};
use mtanet_runner::tune::{self, TuneOptions};
use mtanet_runner::tuning::{store_tuning, stored_tuning, Tuning, Window};

mod support;

fn predict_opts(run_dir: &Path, root: &Path, out: &Path) -> PredictOptions {
    PredictOptions {
        checkpoint: run_dir.to_path_buf(),
        config: None,
        root: Some(root.to_path_buf()),
        target: PredictTarget::Split(Split::Validation),
        out: out.to_path_buf(),
        videos: None,
        smooth: 0,
        tuned_thresholds: false,
        batch_size: None,
        device: None,
        quiet: true,
    }
}

/// `mtanet tune` of the run in `run_dir` on the validation split of `root`.
fn tune_opts(run_dir: &Path, root: &Path, dry_run: bool) -> TuneOptions {
    TuneOptions {
        checkpoint: run_dir.to_path_buf(),
        config: None,
        root: root.to_path_buf(),
        split: Split::Validation,
        batch_size: None,
        device: None,
        quiet: true,
        dry_run,
    }
}

/// Every file under `dir` (relative path -> bytes).
fn files(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                let rel = p.strip_prefix(dir).unwrap().to_path_buf();
                out.insert(rel, std::fs::read(&p).unwrap());
            }
        }
    }
    out
}

/// The files of one task folder (`VA_Set`, `AU_Set`, `EXPR_Set`).
fn task(all: &BTreeMap<PathBuf, Vec<u8>>, dir: &str) -> Vec<Vec<u8>> {
    all.iter()
        .filter(|(p, _)| p.starts_with(dir))
        .map(|(_, b)| b.clone())
        .collect()
}

#[test]
fn tune_chooses_stores_and_predict_applies() {
    let tmp = tempfile::tempdir().unwrap();
    let config = support::tiny_config(
        &tmp.path().join("results"),
        &tmp.path().join("synth"),
        &[
            "seed=11",
            "data.synthetic.videos=12",
            "data.max_val_frames=null",
            "training.stages=[{name: a, optimizer: adam, lr: 0.003, steps: 3, loss: sum, weight_decay: 0.001}]",
            "training.checkpoint_every=10",
            "training.log_every=10",
            "eval.every_steps=0",
        ],
    );
    let root = mtanet_runner::build::data::data_root(&config, true).unwrap();
    // Labelled frames without a crop: scored by neither evaluation, filled by predict.
    let ann = root.join("annotations/VA_Set/Validation_Set");
    for e in std::fs::read_dir(ann).unwrap() {
        let name = e.unwrap().file_name();
        let video = name.to_string_lossy().trim_end_matches(".txt").to_string();
        let _ = std::fs::remove_file(root.join("cropped_aligned").join(video).join("00002.jpg"));
    }
    let run = train::run(
        &config,
        &RunContext {
            quiet: true,
            ..Default::default()
        },
    )
    .unwrap();
    let logged: Report = run.report.clone().expect("a finished run has a report");
    let logged_tuned = logged.au.as_ref().and_then(|a| a.tuned.clone()).unwrap();

    // Predictions before any tuning: the previous behaviour.
    let before = tmp.path().join("before");
    predict::run(&predict_opts(&run.run_dir, &root, &before)).unwrap();

    let outcome = tune::run(&tune_opts(&run.run_dir, &root, false)).unwrap();
    let text = outcome.render();
    println!("{text}");
    for needle in [
        "| Metric | raw | tuned thresholds | tuned + smoothing | window |",
        "| CCC-V |",
        "| CCC-A |",
        "| AU F1 |",
        "| EXPR F1 |",
        "optimistic",
        "Validation_Set",
    ] {
        assert!(text.contains(needle), "{needle:?} missing in:\n{text}");
    }

    // The scored frames and the thresholds are those of the run's own evaluation.
    let lva = logged.va.as_ref().unwrap();
    assert_eq!(outcome.frames[0], lva.frames);
    assert_eq!(outcome.frames[1], logged.au.as_ref().unwrap().frames);
    assert_eq!(outcome.frames[2], logged.expr.as_ref().unwrap().frames);
    let th: Vec<f32> = outcome.tuning.thresholds.values().copied().collect();
    let names = &mtanet_affwild2::Vocab::abaw2020().au_names;
    assert_eq!(
        outcome.tuning.thresholds_for(names).unwrap(),
        logged_tuned.thresholds
    );
    assert_eq!(th.len(), names.len());
    assert!((outcome.au_f1.tuned - logged_tuned.f1).abs() <= 1e-12);
    assert!((outcome.au_f1.raw - logged.au.as_ref().unwrap().f1).abs() <= 1e-12);
    assert!((outcome.ccc_valence.raw - lva.ccc_valence).abs() <= 1e-9);
    assert!((outcome.ccc_arousal.raw - lva.ccc_arousal).abs() <= 1e-9);
    assert!((outcome.expr_f1.raw - logged.expr.as_ref().unwrap().f1).abs() <= 1e-12);

    // Window 0 is a candidate: smoothing is never below the raw figures here.
    let mean = |f: &tune::Figures, g: &tune::Figures| (f.smoothed + g.smoothed, f.raw + g.raw);
    let (s, r) = mean(&outcome.ccc_valence, &outcome.ccc_arousal);
    assert!(s >= r, "smoothed CCC {s} < raw {r}");
    assert!(outcome.au_f1.smoothed >= outcome.au_f1.tuned);
    assert!(outcome.au_f1.tuned >= outcome.au_f1.raw);
    assert!(outcome.expr_f1.smoothed >= outcome.expr_f1.raw);

    // Stored in the checkpoint.
    let ckpt = run.run_dir.join("checkpoints/last.safetensors");
    assert_eq!(stored_tuning(&ckpt).unwrap(), Some(outcome.tuning.clone()));
    let info = mtanet_runner::model_info::describe(&ckpt).unwrap();
    assert!(
        info.contains("tuning: "),
        "model info does not show the tuning:\n{info}"
    );

    // --raw: byte for byte the previous behaviour.
    let raw = tmp.path().join("raw");
    let raw_summary =
        predict::run_with(&predict_opts(&run.run_dir, &root, &raw), None, true).unwrap();
    assert_eq!(raw_summary.decisions, "0.5 AU thresholds, no smoothing");
    assert!(!raw_summary.tuned_on_this_split);
    let (before_files, raw_files) = (files(&before), files(&raw));
    assert_eq!(before_files, raw_files);

    // Applied: scored by evaluate, the tuned predictions give tune's figures.
    let tuned = tmp.path().join("tuned");
    let tuned_summary = predict::run(&predict_opts(&run.run_dir, &root, &tuned)).unwrap();
    // It says which tuning decided the values, and that it was chosen on the split predicted.
    assert!(
        tuned_summary.decisions.contains("mtanet tune")
            && tuned_summary.decisions.contains(&outcome.tuning.split),
        "{}",
        tuned_summary.decisions
    );
    assert!(tuned_summary.tuned_on_this_split);
    let got = evaluate_dir(&tuned, &root, &EvaluateOptions::default()).unwrap();
    assert!((got.au.as_ref().unwrap().f1 - outcome.au_f1.smoothed).abs() <= 1e-12);
    assert!((got.expr.as_ref().unwrap().f1 - outcome.expr_f1.smoothed).abs() <= 1e-12);
    let gva = got.va.as_ref().unwrap();
    assert!((gva.ccc_valence - outcome.ccc_valence.smoothed).abs() <= 1e-4);
    assert!((gva.ccc_arousal - outcome.ccc_arousal.smoothed).abs() <= 1e-4);
    let tuned_files = files(&tuned);
    for (dir, window) in [
        ("VA_Set", outcome.tuning.va),
        ("EXPR_Set", outcome.tuning.expr),
    ] {
        if window.seconds == 0.0 {
            assert_eq!(task(&tuned_files, dir), task(&raw_files, dir), "{dir}");
        }
    }

    // A tuning that changes no decision writes the raw files; one that changes only the AU
    // thresholds changes only the AU files.
    let mut neutral = Tuning {
        split: "Validation_Set".into(),
        thresholds: names.iter().map(|n| (n.clone(), 0.5)).collect(),
        va: Window::NONE,
        au: Window::NONE,
        expr: Window::NONE,
    };
    store_tuning(&ckpt, &neutral).unwrap();
    let same = tmp.path().join("same");
    predict::run(&predict_opts(&run.run_dir, &root, &same)).unwrap();
    assert_eq!(files(&same), raw_files);
    neutral.thresholds.values_mut().for_each(|t| *t = 1.5);
    store_tuning(&ckpt, &neutral).unwrap();
    let none = tmp.path().join("none");
    predict::run(&predict_opts(&run.run_dir, &root, &none)).unwrap();
    let none_files = files(&none);
    assert_eq!(task(&none_files, "VA_Set"), task(&raw_files, "VA_Set"));
    assert_eq!(task(&none_files, "EXPR_Set"), task(&raw_files, "EXPR_Set"));
    for b in task(&none_files, "AU_Set") {
        let text = String::from_utf8(b).unwrap();
        for line in text.lines().skip(1) {
            assert!(line.split(',').all(|v| v == "0"), "{line}");
        }
    }
    // --smooth with a stored tuning is refused unless --raw.
    let mut o = predict_opts(&run.run_dir, &root, &tmp.path().join("x"));
    o.smooth = 3;
    let e = predict::run(&o).unwrap_err();
    assert!(format!("{e:#}").contains("--raw"), "{e:#}");
    predict::run_with(&o, None, true).unwrap();

    // An AU file of the split whose header names its columns in another order is refused,
    // naming the file: its labels would be scored against other AUs' outputs.
    let au_dir = root.join("annotations/AU_Set/Validation_Set");
    let mut au_files: Vec<PathBuf> = std::fs::read_dir(&au_dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    au_files.sort();
    let swapped = au_files.last().unwrap();
    let text = std::fs::read_to_string(swapped).unwrap();
    let (header, rest) = text.split_once('\n').unwrap();
    let mut names: Vec<&str> = header.split(',').collect();
    names.swap(0, 1);
    std::fs::write(swapped, format!("{}\n{rest}", names.join(","))).unwrap();
    let e = tune::run(&tune_opts(&run.run_dir, &root, true)).unwrap_err();
    let e = format!("{e:#}");
    assert!(
        e.contains("one task must have one vocabulary") && e.contains("AU_Set"),
        "{e}"
    );
}
