//! `mtanet predict` and `mtanet evaluate`: scikit-learn / numpy reference numbers on a tiny
//! committed annotation root (tests/fixtures/evaluate, made by
//! scripts/reference/make_eval_fixtures.py), perfect scores on the annotations themselves,
//! rejection of malformed prediction files, and a round trip through a tiny trained model
//! (predict, then evaluate, equals training's own evaluation), plus the test-set format.

use std::path::{Path, PathBuf};

use mtanet_affwild2::Split;
use mtanet_metrics::Report;
use mtanet_runner::evaluate::{evaluate, evaluate_dir, EvaluateError, EvaluateOptions};
use mtanet_runner::experiment::Config;
use mtanet_runner::predict::{self, PredictOptions, PredictTarget};
use mtanet_runner::training::{self as train, RunContext};
use serde_json::Value;

mod support;

/// The shared tiny run on 12 videos, seed 11, one 3-step Adam stage, eval only at the end.
fn tiny_config(tmp: &Path) -> Config {
    support::tiny_config(
        &tmp.join("results"),
        &tmp.join("synth"),
        &[
            "seed=11",
            "data.synthetic.videos=12",
            "data.max_val_frames=null",
            "training.stages=[{name: a, optimizer: adam, lr: 0.003, steps: 3, loss: sum, weight_decay: 0.001}]",
            "training.checkpoint_every=10",
            "training.log_every=10",
            "eval.every_steps=0",
        ],
    )
}

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/evaluate")
}

fn opts(all_frames: bool) -> EvaluateOptions {
    EvaluateOptions {
        split: Split::Validation,
        all_frames,
    }
}

/// Copies a folder tree.
fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let dst = to.join(e.file_name());
        if e.path().is_dir() {
            copy_tree(&e.path(), &dst);
        } else {
            std::fs::copy(e.path(), dst).unwrap();
        }
    }
}

fn close(got: f64, want: &Value, what: &str) {
    let want = want
        .as_f64()
        .unwrap_or_else(|| panic!("{what}: not a number in expected.json"));
    assert!(
        (got - want).abs() <= 1e-12,
        "{what}: got {got}, scikit-learn/numpy {want}"
    );
}

fn close_vec(got: &[f64], want: &Value, what: &str) {
    let want = want.as_array().unwrap();
    assert_eq!(got.len(), want.len(), "{what}");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        close(*g, w, &format!("{what}[{i}]"));
    }
}

#[test]
fn scores_match_sklearn_and_numpy() {
    let fx = fixtures();
    let expected: Value =
        serde_json::from_str(&std::fs::read_to_string(fx.join("expected.json")).unwrap()).unwrap();
    for set in ["pred_constant", "pred_random"] {
        for (proto, all) in [("crops", false), ("all_frames", true)] {
            let ev = evaluate(&fx.join(set), &fx.join("root"), &opts(all)).unwrap();
            let e = &expected[set][proto];
            let tag = |k: &str| format!("{set}/{proto}/{k}");
            let r = &ev.report;
            let va = r.va.as_ref().unwrap();
            close(va.ccc_valence, &e["va"]["ccc_valence"], &tag("ccc_valence"));
            close(va.ccc_arousal, &e["va"]["ccc_arousal"], &tag("ccc_arousal"));
            close(va.score, &e["va"]["score"], &tag("va.score"));
            assert_eq!(
                Some(va.frames as u64),
                e["va"]["frames"].as_u64(),
                "{}",
                tag("va.frames")
            );
            let au = r.au.as_ref().unwrap();
            close(au.f1, &e["au"]["f1"], &tag("au.f1"));
            close(au.accuracy, &e["au"]["accuracy"], &tag("au.accuracy"));
            close(au.score, &e["au"]["score"], &tag("au.score"));
            close_vec(&au.per_au_f1, &e["au"]["per_au_f1"], &tag("per_au_f1"));
            assert_eq!(
                Some(au.frames as u64),
                e["au"]["frames"].as_u64(),
                "{}",
                tag("au.frames")
            );
            assert!(au.tuned.is_none());
            let ex = r.expr.as_ref().unwrap();
            close(ex.f1, &e["expr"]["f1"], &tag("expr.f1"));
            close(ex.accuracy, &e["expr"]["accuracy"], &tag("expr.accuracy"));
            close(ex.score, &e["expr"]["score"], &tag("expr.score"));
            close_vec(
                &ex.per_class_f1,
                &e["expr"]["per_class_f1"],
                &tag("per_class_f1"),
            );
            assert_eq!(
                Some(ex.frames as u64),
                e["expr"]["frames"].as_u64(),
                "{}",
                tag("expr.frames")
            );
            // Three videos for VA, two for AU and EXPR.
            assert_eq!(ev.videos, [3, 2, 2]);
            let text = ev.to_string();
            assert!(text.contains("AU25") && text.contains("Surprise"), "{text}");
        }
    }
    // The crop filter matters on this fixture.
    let a = evaluate_dir(&fx.join("pred_random"), &fx.join("root"), &opts(false)).unwrap();
    let b = evaluate_dir(&fx.join("pred_random"), &fx.join("root"), &opts(true)).unwrap();
    assert!(a.va.unwrap().frames < b.va.unwrap().frames);
}

#[test]
fn report_json_has_the_documented_keys() {
    let fx = fixtures();
    let r = evaluate_dir(&fx.join("pred_random"), &fx.join("root"), &opts(false)).unwrap();
    let v: Value = serde_json::to_value(&r).unwrap();
    for (task, key) in [
        ("va", "ccc_valence"),
        ("va", "ccc_arousal"),
        ("au", "f1"),
        ("au", "accuracy"),
        ("au", "score"),
        ("au", "per_au_f1"),
        ("expr", "f1"),
        ("expr", "accuracy"),
        ("expr", "score"),
    ] {
        assert!(!v[task][key].is_null(), "{task}.{key} missing in {v}");
    }
}

/// The annotation files as predictions, markers replaced (VA -5 -> 0.5, AU / EXPR -1 -> 0).
fn annotations_as_predictions(root: &Path, out: &Path) {
    for task in ["VA_Set", "AU_Set", "EXPR_Set"] {
        let from = root.join("annotations").join(task).join("Validation_Set");
        std::fs::create_dir_all(out.join(task)).unwrap();
        for e in std::fs::read_dir(&from).unwrap() {
            let e = e.unwrap();
            let text = std::fs::read_to_string(e.path()).unwrap();
            let mut lines = text.lines();
            let mut new = format!("{}\n", lines.next().unwrap());
            for l in lines {
                let fields: Vec<&str> = l
                    .split(',')
                    .map(|f| match (task, f) {
                        ("VA_Set", "-5") => "0.5",
                        (_, "-1") => "0",
                        _ => f,
                    })
                    .collect();
                new.push_str(&fields.join(","));
                new.push('\n');
            }
            std::fs::write(out.join(task).join(e.file_name()), new).unwrap();
        }
    }
}

#[test]
fn annotations_scored_against_themselves_are_perfect() {
    let fx = fixtures();
    let tmp = tempfile::tempdir().unwrap();
    annotations_as_predictions(&fx.join("root"), tmp.path());
    for all in [false, true] {
        let r = evaluate_dir(tmp.path(), &fx.join("root"), &opts(all)).unwrap();
        let va = r.va.unwrap();
        assert_eq!((va.ccc_valence, va.ccc_arousal), (1.0, 1.0));
        let au = r.au.unwrap();
        assert_eq!((au.f1, au.accuracy), (1.0, 1.0));
        assert!(au.per_au_f1.iter().all(|&f| f == 1.0), "{:?}", au.per_au_f1);
        let ex = r.expr.unwrap();
        assert_eq!((ex.f1, ex.accuracy), (1.0, 1.0));
    }
}

#[test]
fn malformed_prediction_files_are_rejected_with_file_and_line() {
    let fx = fixtures();
    let root = fx.join("root");
    let video = "202-25-640x360_left";
    let check = |edit: &dyn Fn(&Path), needles: &[&str]| {
        let tmp = tempfile::tempdir().unwrap();
        copy_tree(&fx.join("pred_random"), tmp.path());
        edit(tmp.path());
        let e = evaluate_dir(tmp.path(), &root, &opts(false)).unwrap_err();
        let msg = e.to_string();
        for n in needles {
            assert!(msg.contains(n), "{n:?} not in {msg:?}");
        }
        e
    };
    let rewrite = |dir: &Path, task: &str, f: &dyn Fn(&mut Vec<String>)| {
        let p = dir.join(task).join(format!("{video}.txt"));
        let mut lines: Vec<String> = std::fs::read_to_string(&p)
            .unwrap()
            .lines()
            .map(String::from)
            .collect();
        f(&mut lines);
        std::fs::write(&p, lines.join("\n") + "\n").unwrap();
    };
    // A non-number on data line 4 (file line 5).
    let au_file = format!("AU_Set/{video}.txt:5");
    check(
        &|d| rewrite(d, "AU_Set", &|l| l[4] = "0,1,abc,0,0,0,0,1".into()),
        &[&au_file, "abc"],
    );
    // Too many fields.
    let va_file = format!("VA_Set/{video}.txt:3");
    check(
        &|d| rewrite(d, "VA_Set", &|l| l[2] = "0.1,0.2,0.3".into()),
        &[&va_file],
    );
    // An expression index outside the 7 classes.
    let ex_file = format!("EXPR_Set/{video}.txt:8");
    check(
        &|d| rewrite(d, "EXPR_Set", &|l| l[7] = "9".into()),
        &[&ex_file, "9"],
    );
    // A marker on a scored frame (frame 2 has a crop and a label).
    let e = check(
        &|d| rewrite(d, "EXPR_Set", &|l| l[2] = "-1".into()),
        &[&format!("EXPR_Set/{video}.txt:3"), "frame 2"],
    );
    assert!(matches!(
        e,
        EvaluateError::MissingValue {
            line: 3,
            frame: 2,
            ..
        }
    ));
    // Another AU header.
    check(
        &|d| {
            rewrite(d, "AU_Set", &|l| {
                l[0] = "AU1,AU2,AU4,AU6,AU12,AU15,AU20,AU26".into()
            })
        },
        &[&format!("AU_Set/{video}.txt:1"), "AU26"],
    );
    // Too short: 5 lines where frame 11 is scored.
    let e = check(
        &|d| rewrite(d, "VA_Set", &|l| l.truncate(6)),
        &[
            &format!("VA_Set/{video}.txt"),
            "5 prediction lines",
            "frame 11",
        ],
    );
    assert!(matches!(
        e,
        EvaluateError::TooShort {
            lines: 5,
            needed: 11,
            ..
        }
    ));
    // Missing file: the message names the expected path.
    let e = check(
        &|d| std::fs::remove_file(d.join("EXPR_Set").join(format!("{video}.txt"))).unwrap(),
        &[&format!("EXPR_Set/{video}.txt"), "missing prediction file"],
    );
    assert!(matches!(e, EvaluateError::MissingPrediction { .. }));
}

fn predict_opts(run_dir: &Path, root: &Path, target: PredictTarget, out: &Path) -> PredictOptions {
    PredictOptions {
        checkpoint: run_dir.to_path_buf(),
        config: None,
        root: Some(root.to_path_buf()),
        target,
        out: out.to_path_buf(),
        videos: None,
        smooth: 0,
        tuned_thresholds: false,
        batch_size: None,
        device: None,
        quiet: true,
    }
}

fn data_lines(p: &Path) -> Vec<String> {
    std::fs::read_to_string(p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .lines()
        .skip(1)
        .map(String::from)
        .collect()
}

#[test]
fn predict_then_evaluate_equals_training_evaluation() {
    let tmp = tempfile::tempdir().unwrap();
    let config = tiny_config(tmp.path());
    // Generate the set, then drop frame 2's crop of every validation video, so labelled
    // frames without a crop (scored by neither evaluation, filled by predict) surely exist.
    let root = mtanet_runner::build::data::data_root(&config, true).unwrap();
    let ann = root.join("annotations");
    for e in std::fs::read_dir(ann.join("VA_Set/Validation_Set")).unwrap() {
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
    assert!(run.finished);
    // The report in memory: report.json holds the same figures, but serde_json's default
    // float parser is not correctly rounded (about one f64 in ten reads back one ulp off),
    // so a parsed copy cannot be compared exactly.
    let logged: Report = run.report.clone().expect("a finished run has a report");
    let on_disk: Report =
        serde_json::from_str(&std::fs::read_to_string(run.run_dir.join("report.json")).unwrap())
            .unwrap();
    for ((kd, vd), (kl, vl)) in on_disk.scalars().iter().zip(&logged.scalars()) {
        assert_eq!(kd, kl);
        assert!(
            (vd - vl).abs() <= 2.0 * f64::EPSILON * vl.abs().max(1e-300),
            "report.json {kd}: {vd} vs {vl}"
        );
    }
    assert_eq!(on_disk.scalars().len(), logged.scalars().len());

    // Validation_Set predictions, evaluated: training's numbers (tuned AU aside), exactly.
    let out = tmp.path().join("pred");
    let s = predict::run(&predict_opts(
        &run.run_dir,
        &root,
        PredictTarget::Split(Split::Validation),
        &out,
    ))
    .unwrap();
    assert!(s.videos > 0 && s.predicted > 0 && s.filled > 0, "{s:?}");
    assert_eq!(s.files.len(), 3 * s.videos);
    let got = evaluate_dir(&out, &root, &opts(false)).unwrap();
    let mut want = logged.clone();
    if let Some(au) = want.au.as_mut() {
        au.tuned = None;
    }
    assert!(
        got.va.is_some() && got.au.is_some() && got.expr.is_some(),
        "{got:?}"
    );
    // Every figure, frame count and confusion matrix, exactly.
    assert_eq!(
        got, want,
        "evaluate(predict) differs from training's evaluation"
    );
    // Eval-mode outputs do not depend on the batch: another batch size gives the same files.
    let out5 = tmp.path().join("pred_b5");
    predict::run(&PredictOptions {
        batch_size: Some(5),
        ..predict_opts(
            &run.run_dir,
            &root,
            PredictTarget::Split(Split::Validation),
            &out5,
        )
    })
    .unwrap();
    for t in ["VA_Set", "AU_Set", "EXPR_Set"] {
        for f in std::fs::read_dir(out.join(t)).unwrap() {
            let name = f.unwrap().file_name();
            assert_eq!(
                data_lines(&out.join(t).join(&name)),
                data_lines(&out5.join(t).join(&name))
            );
        }
    }

    // One line per frame: the longest annotation file of the video in the split.
    for f in std::fs::read_dir(out.join("VA_Set")).unwrap() {
        let name = f.unwrap().file_name();
        let longest = ["VA_Set", "AU_Set", "EXPR_Set"]
            .iter()
            .map(|t| ann.join(t).join("Validation_Set").join(&name))
            .filter(|p| p.is_file())
            .map(|p| data_lines(&p).len())
            .max()
            .unwrap();
        for t in ["VA_Set", "AU_Set", "EXPR_Set"] {
            assert_eq!(
                data_lines(&out.join(t).join(&name)).len(),
                longest,
                "{t}/{name:?}"
            );
        }
    }

    // Tuned thresholds from report.json change AU decisions only.
    let tuned_out = tmp.path().join("pred_tuned");
    let tuned_summary = predict::run(&PredictOptions {
        tuned_thresholds: true,
        ..predict_opts(
            &run.run_dir,
            &root,
            PredictTarget::Split(Split::Validation),
            &tuned_out,
        )
    })
    .unwrap();
    // report.json's thresholds were tuned on validation: predicting it says so.
    assert!(
        tuned_summary.decisions.contains("report.json"),
        "{tuned_summary:?}"
    );
    assert!(tuned_summary.tuned_on_this_split);
    assert!(!s.tuned_on_this_split);
    let tuned = evaluate_dir(&tuned_out, &root, &opts(false)).unwrap();
    let logged_tuned = logged.au.as_ref().and_then(|a| a.tuned.clone()).unwrap();
    assert_eq!(tuned.au.as_ref().map(|a| a.f1), Some(logged_tuned.f1));
    assert_eq!(
        tuned.au.as_ref().map(|a| a.accuracy),
        Some(logged_tuned.accuracy)
    );
    assert_eq!(tuned.va, got.va);
    assert_eq!(tuned.expr, got.expr);

    // Smoothing keeps the format and changes VA.
    let smooth_out = tmp.path().join("pred_smooth");
    predict::run(&PredictOptions {
        smooth: 5,
        ..predict_opts(
            &run.run_dir,
            &root,
            PredictTarget::Split(Split::Validation),
            &smooth_out,
        )
    })
    .unwrap();
    let smooth = evaluate_dir(&smooth_out, &root, &opts(false)).unwrap();
    assert_ne!(smooth.va, got.va);

    test_set_format(tmp.path(), &run.run_dir, &root);
}

/// A test video whose crops miss frames at the start, middle and end: one line per frame,
/// missing frames filled from the nearest predicted frame; the same crops through `--frames`
/// give the same values.
fn test_set_format(tmp: &Path, run_dir: &Path, synth: &Path) {
    // Four distinct crops of the synthetic video with the most crops.
    let mut src: Vec<PathBuf> = std::fs::read_dir(synth.join("cropped_aligned"))
        .unwrap()
        .map(|e| {
            let mut v: Vec<PathBuf> = std::fs::read_dir(e.unwrap().path())
                .unwrap()
                .map(|f| f.unwrap().path())
                .collect();
            v.sort();
            v
        })
        .max_by_key(|v| v.len())
        .unwrap();
    assert!(src.len() >= 4, "{src:?}");
    src.truncate(4);
    let root = tmp.join("test_root");
    let video_dir = root.join("cropped_aligned").join("test-video_right");
    std::fs::create_dir_all(&video_dir).unwrap();
    let frames_dir = tmp.join("frames");
    std::fs::create_dir_all(&frames_dir).unwrap();
    // Frames 3, 4, 6, 7 of 9 exist.
    for (k, f) in [3u32, 4, 6, 7].iter().enumerate() {
        std::fs::copy(&src[k], video_dir.join(format!("{f:05}.jpg"))).unwrap();
        std::fs::copy(&src[k], frames_dir.join(format!("{f:05}.jpg"))).unwrap();
    }
    let list = tmp.join("test_videos.txt");
    std::fs::write(&list, "test-video_right,9\n").unwrap();
    let out = tmp.join("pred_test");
    let s = predict::run(&PredictOptions {
        videos: Some(list),
        ..predict_opts(run_dir, &root, PredictTarget::Test, &out)
    })
    .unwrap();
    assert_eq!((s.videos, s.frames, s.predicted, s.filled), (1, 9, 4, 5));
    for task in ["VA_Set", "AU_Set", "EXPR_Set"] {
        let l = data_lines(&out.join(task).join("test-video_right.txt"));
        assert_eq!(l.len(), 9, "{task}");
        // frame -> the frame it comes from: 1, 2 <- 3; 5 <- 4 (tie: earlier); 8, 9 <- 7.
        for (frame, from) in [(1, 3), (2, 3), (5, 4), (8, 7), (9, 7)] {
            assert_eq!(l[frame - 1], l[from - 1], "{task} frame {frame}");
        }
    }
    let va = data_lines(&out.join("VA_Set/test-video_right.txt"));
    assert_ne!(va[2], va[5], "distinct crops should give distinct VA");

    // Without --videos: the frame count is the highest jpg (7), unannotated folders only.
    let out2 = tmp.join("pred_test2");
    let s = predict::run(&predict_opts(run_dir, &root, PredictTarget::Test, &out2)).unwrap();
    assert_eq!((s.videos, s.frames), (1, 7));

    // The same crops as a plain folder: predictions.csv with the same VA.
    let out3 = tmp.join("pred_frames");
    let s = predict::run(&PredictOptions {
        root: None,
        ..predict_opts(run_dir, &root, PredictTarget::Frames(frames_dir), &out3)
    })
    .unwrap();
    assert_eq!(s.frames, 4);
    let csv = std::fs::read_to_string(out3.join("predictions.csv")).unwrap();
    let mut rows = csv.lines();
    let header: Vec<&str> = rows.next().unwrap().split(',').collect();
    assert_eq!(header.len(), 3 + 2 * 8 + 7 + 1, "{header:?}");
    assert_eq!(header[..3], ["file", "valence", "arousal"]);
    assert_eq!(header[3], "AU1_prob");
    assert_eq!(header.last(), Some(&"expression"));
    for (row, frame) in rows.zip([3usize, 4, 6, 7]) {
        let f: Vec<&str> = row.split(',').collect();
        assert_eq!(f[0], format!("{frame:05}.jpg"));
        assert_eq!(format!("{},{}", f[1], f[2]), va[frame - 1], "frame {frame}");
    }
}

#[test]
fn predict_reports_missing_checkpoint_and_config() {
    let tmp = tempfile::tempdir().unwrap();
    let o = predict_opts(
        tmp.path(),
        tmp.path(),
        PredictTarget::Test,
        &tmp.path().join("out"),
    );
    let e = predict::run(&o).unwrap_err().to_string();
    assert!(e.contains("no checkpoint"), "{e}");
    let ck = tmp.path().join("weights.safetensors");
    std::fs::write(&ck, b"x").unwrap();
    let e = predict::run(&PredictOptions {
        checkpoint: ck,
        ..o
    })
    .unwrap_err()
    .to_string();
    assert!(e.contains("config.yaml") && e.contains("--config"), "{e}");
}
