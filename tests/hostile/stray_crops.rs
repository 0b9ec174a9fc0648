//! Stray crop files whose name is a huge frame number (`4000000000.jpg`, `99999999999.jpg`)
//! in a validation and a test video's crop folder: `data stats`, `evaluate` and `predict` (a
//! split and the test set) run as child processes, succeed, name the stray file in their
//! warning where they list crops, and each stays under 200 MB of peak memory (its own
//! `ru_maxrss` from `wait4`), where allocating by frame number would take gigabytes.

use std::path::{Path, PathBuf};

use mtanet_runner::experiment::ExperimentFile;
use mtanet_runner::training::{self, RunContext};

use super::child::{mtanet, Outcome};

/// Peak resident memory allowed to each child.
const MAX_RSS_KB: i64 = 200 * 1024;

/// The names of the stray files, numbered above `MAX_FRAME` (the second beyond `u32`).
const STRAYS: [&str; 2] = ["4000000000.jpg", "99999999999.jpg"];

/// A one-step run on a 6-video synthetic set at 48x48 (trained in this process, so only the
/// commands under test are children).
fn train_tiny(tmp: &Path) -> PathBuf {
    let yaml = format!(
        "
defaults:
  experiment: stray
  seed: 5
  device: cpu
  results_dir: {results}
  data:
    root: null
    synthetic: {{dir: {synth}, videos: 6, frames: 16, seed: 3}}
    batch_size: 8
    image_size: 48
    max_train_frames: 16
    max_val_frames: 16
  model:
    backbone: resnext50_32x4d_cbam
    width_div: 16
    depths: [1, 1, 1, 1]
    groups: 2
    head: {{hidden: 16, dropout: 0.2}}
  training:
    stages:
      - {{name: a, optimizer: adam, lr: 0.001, steps: 1, loss: sum}}
    checkpoint_every: 1
  eval: {{batch_size: 16, every_steps: 0}}
",
        results = tmp.join("results").display(),
        synth = tmp.join("synth").display()
    );
    let config = ExperimentFile::parse("stray.yaml", &yaml)
        .unwrap()
        .resolve(None, None, &[])
        .unwrap();
    let ctx = RunContext {
        quiet: true,
        ..Default::default()
    };
    let run = training::run(&config, &ctx).unwrap();
    assert!(run.finished);
    run.run_dir
}

/// The videos with a `task` annotation file in `split` (`Validation_Set`), sorted.
fn annotated(root: &Path, task: &str, split: &str) -> Vec<String> {
    let dir = root.join("annotations").join(task).join(split);
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let name = e.unwrap().file_name().to_string_lossy().into_owned();
            name.trim_end_matches(".txt").to_string()
        })
        .collect();
    v.sort();
    v
}

/// Copies of the video's first crop under the stray names; returns their paths.
fn add_strays(video_dir: &Path) -> Vec<PathBuf> {
    let mut crops: Vec<PathBuf> = std::fs::read_dir(video_dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    crops.sort();
    STRAYS
        .iter()
        .map(|name| {
            let p = video_dir.join(name);
            std::fs::copy(&crops[0], &p).unwrap();
            p
        })
        .collect()
}

/// The annotation files of the validation split as prediction files (their labelled frames,
/// the only ones scored, hold no missing-label marker).
fn annotations_as_predictions(root: &Path, pred: &Path) {
    for task in ["VA_Set", "AU_Set", "EXPR_Set"] {
        std::fs::create_dir_all(pred.join(task)).unwrap();
        for v in annotated(root, task, "Validation_Set") {
            let file = format!("{v}.txt");
            let from = root
                .join("annotations")
                .join(task)
                .join("Validation_Set")
                .join(&file);
            std::fs::copy(from, pred.join(task).join(&file)).unwrap();
        }
    }
}

/// A child that succeeded within this test's memory bound, naming `stray` on stderr when
/// given.
fn check(f: &Outcome, what: &str, stray: Option<&Path>) {
    f.succeeded();
    assert!(
        f.max_rss_kb < MAX_RSS_KB,
        "`mtanet {what}` peaked at {} MB",
        f.max_rss_kb / 1024
    );
    if let Some(stray) = stray {
        let named = stray.display().to_string();
        assert!(
            f.stderr.contains(&named) && f.stderr.contains("ignored"),
            "`mtanet {what}` did not warn about {named}:\n{}",
            f.stderr
        );
    }
}

#[test]
fn stray_huge_crop_numbers_are_ignored_in_little_memory() {
    let tmp = tempfile::tempdir().unwrap();
    let tmp = tmp.path();
    let run_dir = train_tiny(tmp);
    let root = tmp.join("synth");
    let crops = root.join("cropped_aligned");

    let val_video = annotated(&root, "VA_Set", "Validation_Set").remove(0);
    let val_strays = add_strays(&crops.join(&val_video));
    let mut test_video: Vec<String> = std::fs::read_dir(&crops)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|v| v.starts_with("test"))
        .collect();
    test_video.sort();
    let test_video = test_video.first().expect("a synthetic test video").clone();
    let test_strays = add_strays(&crops.join(&test_video));
    // Sorted by path: the first ignored file is the 4000000000 one.
    let (val_first, test_first) = (&val_strays[0], &test_strays[0]);

    let (root_s, run_s) = (root.to_str().unwrap(), run_dir.to_str().unwrap());
    let stats = mtanet(tmp, &["data", "stats", "--root", root_s]);
    check(&stats, "data stats", None);

    let pred = tmp.join("pred_annotations");
    annotations_as_predictions(&root, &pred);
    let pred_s = pred.to_str().unwrap();
    let args = [
        "evaluate",
        "--pred",
        pred_s,
        "--root",
        root_s,
        "--split",
        "Validation_Set",
    ];
    let ev = mtanet(tmp, &args);
    check(&ev, "evaluate", Some(val_first));
    assert!(ev.stderr.contains("2 such file(s)"), "{}", ev.stderr);

    let out = tmp.join("pred_val");
    let out_s = out.to_str().unwrap();
    let args = [
        "predict",
        "--checkpoint",
        run_s,
        "--root",
        root_s,
        "--split",
        "Validation_Set",
        "--out",
        out_s,
        "--quiet",
    ];
    check(&mtanet(tmp, &args), "predict", Some(val_first));
    let written = std::fs::read_to_string(out.join("VA_Set").join(format!("{val_video}.txt")));
    let annotation = root
        .join("annotations/VA_Set/Validation_Set")
        .join(format!("{val_video}.txt"));
    assert_eq!(
        written.unwrap().lines().count(),
        std::fs::read_to_string(annotation).unwrap().lines().count()
    );

    // A test video is sized by its highest crop number: the strays must not count.
    let out = tmp.join("pred_test");
    let out_s = out.to_str().unwrap();
    let args = [
        "predict",
        "--checkpoint",
        run_s,
        "--root",
        root_s,
        "--split",
        "Test",
        "--out",
        out_s,
        "--quiet",
    ];
    let test = mtanet(tmp, &args);
    check(&test, "predict --split Test", Some(test_first));
    let mut frames: Vec<String> = std::fs::read_dir(crops.join(&test_video))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| !STRAYS.contains(&n.as_str()))
        .collect();
    frames.sort();
    let highest: usize = frames
        .last()
        .unwrap()
        .trim_end_matches(".jpg")
        .parse()
        .unwrap();
    let written = std::fs::read_to_string(out.join("VA_Set").join(format!("{test_video}.txt")));
    assert_eq!(written.unwrap().lines().count(), 1 + highest);
}
