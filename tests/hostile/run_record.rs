//! What a run records about itself, under hostile use: a resumed row keeps its identity, an
//! override of a row's own key detaches it from the paper's values, table CSVs merge rows,
//! skipped crops are counted everywhere a run reports, and values that would make training
//! meaningless (a negative or NaN learning rate, an edited config on resume, impossible
//! batches) are refused before training, naming the key, with earlier results untouched.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use mtanet_runner::experiment::{Config, ExperimentFile};
use mtanet_runner::record::atomic_io::read_csv;
use mtanet_runner::tables::experiment_table::{self, TableOptions};
use mtanet_runner::training::{self as train, RunContext};

use super::support;

fn tiny(tmp: &Path, sets: &[&str]) -> Config {
    support::tiny_config(&tmp.join("results"), &tmp.join("synth"), sets)
}

fn quiet() -> RunContext {
    RunContext {
        quiet: true,
        ..Default::default()
    }
}

/// Every file under `dir` with its bytes (to show that a refused command changed nothing).
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.insert(p.clone(), std::fs::read(&p).unwrap());
            }
        }
    }
    out
}

/// The runs.csv rows as column-name maps.
fn runs(tmp: &Path) -> Vec<BTreeMap<String, String>> {
    let (h, rows) = read_csv(&tmp.join("results/runs.csv")).unwrap();
    rows.into_iter()
        .map(|r| h.iter().cloned().zip(r).collect())
        .collect()
}

#[test]
fn a_resumed_row_keeps_its_row_profile_paper_values_and_overrides() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = tiny(tmp.path(), &[]);
    let paper = serde_yaml::from_str("{valence: 0.2, arousal: 0.3, au: 0.4, expr: 0.5}").unwrap();
    let part = train::run(
        &cfg,
        &RunContext {
            profile: Some("demo".into()),
            row: Some("resnext50_32x4d_cbam".into()),
            paper: Some(paper),
            overrides: vec!["data.max_val_frames=40".into()],
            max_steps: Some(2),
            ..quiet()
        },
    )
    .unwrap();
    // `train --resume DIR` knows only the directory.
    train::run(
        &cfg,
        &RunContext {
            resume: Some(part.run_dir.clone()),
            ..quiet()
        },
    )
    .unwrap();
    let rows = runs(tmp.path());
    assert_eq!(rows.len(), 1);
    let r = &rows[0];
    assert_eq!(
        (
            r["row"].as_str(),
            r["profile"].as_str(),
            r["paper.au"].as_str()
        ),
        ("resnext50_32x4d_cbam", "demo", "0.4")
    );
    assert_eq!(r["overrides"], "data.max_val_frames=40");
    assert!(!r["delta.au"].is_empty());
}

const FILE: &str = "
description: two rows
defaults:
  experiment: two
rows:
  - name: cbam
    set: {model: {backbone: resnext50_32x4d_cbam}}
    paper: {valence: 0.27, arousal: 0.34, au: 0.397, expr: 0.31}
  - name: se
    set: {model: {backbone: seresnet50}}
    paper: {valence: 0.28, arousal: 0.34, au: 0.427, expr: 0.32}
profiles:
  demo: {}
";

/// A two-row experiment file whose defaults are the tiny run's configuration.
fn two_rows(tmp: &Path) -> PathBuf {
    let base = tiny(tmp, &[]);
    let mut defaults: serde_yaml::Value = serde_yaml::from_str(&base.to_yaml()).unwrap();
    defaults["experiment"] = "two".into();
    defaults["training"]["stages"][1]["steps"] = 1.into();
    let mut file: serde_yaml::Value = serde_yaml::from_str(FILE).unwrap();
    file["defaults"] = defaults;
    let path = tmp.join("two.yaml");
    std::fs::write(&path, serde_yaml::to_string(&file).unwrap()).unwrap();
    ExperimentFile::load(&path).unwrap();
    path
}

fn table(path: &Path, rows: &[&str], sets: &[&str]) -> TableOptions {
    TableOptions {
        config: Some(path.to_path_buf()),
        profile: Some("demo".into()),
        seeds: 1,
        rows: rows.iter().map(|s| s.to_string()).collect(),
        overrides: sets.iter().map(|s| s.parse().unwrap()).collect(),
        quiet: true,
        write_table: true,
    }
}

#[test]
fn an_override_of_the_rows_backbone_is_not_that_row_and_table_rows_merge() {
    let tmp = tempfile::tempdir().unwrap();
    let path = two_rows(tmp.path());
    experiment_table::run(&table(&path, &["cbam"], &[])).unwrap();
    experiment_table::run(&table(&path, &["se"], &[])).unwrap();
    // Another backbone on row `cbam`: recorded without the row's name and paper values.
    experiment_table::run(&table(&path, &["cbam"], &["model.backbone=resnet50"])).unwrap();
    let rows = runs(tmp.path());
    assert_eq!(rows.len(), 3);
    let last = &rows[2];
    assert_eq!(last["backbone"], "resnet50");
    assert_eq!(last["row"], "", "{last:?}");
    assert_eq!(last["paper.au"], "");
    assert_eq!(
        (rows[0]["row"].as_str(), rows[1]["row"].as_str()),
        ("cbam", "se")
    );
    // two.csv: every row run so far, by name; `--rows se` did not drop `cbam`.
    let (h, t) = read_csv(&tmp.path().join("results/two.csv")).unwrap();
    let names: Vec<&str> = t.iter().map(|r| r[0].as_str()).collect();
    assert_eq!(
        names,
        ["cbam", "se", "cbam with model.backbone=resnet50"],
        "{h:?}"
    );
    // An override of a key the row leaves alone keeps the row's name and paper values and is
    // recorded beside it; in two.csv its line goes beside the row as the file defines it,
    // which stays.
    experiment_table::run(&table(&path, &["se"], &["training.stages.1.steps=2"])).unwrap();
    let rows = runs(tmp.path());
    let last = &rows[3];
    assert_eq!(
        (last["row"].as_str(), last["overrides"].as_str()),
        ("se", "training.stages.1.steps=2"),
        "{last:?}"
    );
    assert_ne!(last["paper.au"], "");
    assert_eq!(rows[1]["overrides"], "");
    let (h, t) = read_csv(&tmp.path().join("results/two.csv")).unwrap();
    let at = |c: &str| h.iter().position(|x| x == c).unwrap();
    let keyed: Vec<(&str, &str)> = t
        .iter()
        .map(|r| (r[at("row")].as_str(), r[at("overrides")].as_str()))
        .collect();
    assert_eq!(
        keyed,
        [
            ("cbam", ""),
            ("se", ""),
            (
                "cbam with model.backbone=resnet50",
                "model.backbone=\"resnet50\""
            ),
            ("se", "training.stages.1.steps=2"),
        ],
        "{h:?}"
    );
}

#[test]
fn skipped_crops_are_counted_in_every_output_of_the_run() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = tiny(tmp.path(), &["data.on_bad_frame=skip"]);
    // Generate the set, then damage the second crop of every video.
    mtanet_runner::build::data::data_root(&cfg, true).unwrap();
    let mut damaged = Vec::new();
    for v in std::fs::read_dir(tmp.path().join("synth/cropped_aligned")).unwrap() {
        let f = v.unwrap().path().join("00002.jpg");
        if f.is_file() {
            std::fs::write(&f, b"not a jpeg").unwrap();
            damaged.push(f);
        }
    }
    // Through the binary, as a user runs it: stdout and log.txt are part of the promise.
    let file = tmp.path().join("tiny.yaml");
    std::fs::write(&file, format!("defaults:\n{}", indent(&cfg.to_yaml()))).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_mtanet"))
        .args(["train", "--quiet", "--config"])
        .arg(&file)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let skipped_line = stdout
        .lines()
        .find(|l| l.starts_with("skipped "))
        .unwrap_or_else(|| panic!("no skipped line in stdout: {stdout}"));
    let n: usize = skipped_line
        .split_whitespace()
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    assert!(n >= 1 && n <= damaged.len(), "{skipped_line}");
    assert_eq!(runs(tmp.path())[0]["skipped_frames"], n.to_string());
    let run_dir = PathBuf::from(
        stdout
            .lines()
            .last()
            .unwrap()
            .trim_start_matches("run directory: "),
    );
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(run_dir.join("report.json")).unwrap()).unwrap();
    assert_eq!(report["skipped_frames"]["count"], n);
    let first = report["skipped_frames"]["first"][0]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        damaged.iter().any(|d| d.display().to_string() == first),
        "{first}"
    );
    let log = std::fs::read_to_string(run_dir.join("log.txt")).unwrap();
    assert!(
        log.contains("unreadable crops skipped") && log.contains(&first),
        "{log}"
    );
    let events: Vec<u8> = std::fs::read_dir(&run_dir)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("events.out"))
        .flat_map(|e| std::fs::read(e.path()).unwrap())
        .collect();
    assert!(events.windows(19).any(|w| w == b"data/skipped_frames"));
}

/// `text` indented by two spaces (a YAML mapping nested under a key).
fn indent(text: &str) -> String {
    text.lines().map(|l| format!("  {l}\n")).collect()
}

#[test]
fn schedule_factors_that_give_negative_or_nan_rates_are_refused_by_key() {
    let tmp = tempfile::tempdir().unwrap();
    for (set, key) in [
        (
            "training.stages.0.schedule={kind: step, every: 1, gamma: -0.5}",
            "schedule.gamma",
        ),
        (
            "training.stages.0.schedule={kind: step, every: 1, gamma: .nan}",
            "schedule.gamma",
        ),
        (
            "training.stages.0.schedule={kind: cosine, min_factor: -1}",
            "schedule.min_factor",
        ),
        ("model.groups=0", "model.groups"),
    ] {
        let file = ExperimentFile::parse(
            "t.yaml",
            "defaults: {experiment: t, training: {stages: [{name: a, lr: 0.1, epochs: 1}]}}",
        )
        .unwrap();
        let e = file
            .resolve(None, None, &[set.parse().unwrap()])
            .unwrap_err();
        assert!(e.to_string().contains(key), "{set}: {e}");
    }
    assert!(!tmp.path().join("results").exists());
}

#[test]
fn an_edited_config_is_checked_again_on_resume_and_the_run_is_untouched() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = tiny(tmp.path(), &[]);
    let part = train::run(
        &cfg,
        &RunContext {
            max_steps: Some(2),
            ..quiet()
        },
    )
    .unwrap();
    let path = part.run_dir.join("config.yaml");
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, text.replacen("lr: 0.001", "lr: -0.001", 1)).unwrap();
    let before = snapshot(tmp.path());
    let e = mtanet_runner::build::restore::read_run_config(&path).unwrap_err();
    let msg = format!("{e:#}");
    assert!(
        msg.contains("config.yaml") && msg.contains("training.stages[0].lr"),
        "{msg}"
    );
    assert_eq!(snapshot(tmp.path()), before);
}

#[test]
fn impossible_batches_are_refused_before_training() {
    let tmp = tempfile::tempdir().unwrap();
    for (sets, needle) in [
        (
            vec!["data.sampling=balanced", "data.batch_size=100000"],
            "larger than the",
        ),
        (
            vec![
                "data.image_size=32",
                "data.max_train_frames=41",
                "data.batch_size=8",
            ],
            "one frame",
        ),
    ] {
        let cfg = tiny(tmp.path(), &sets);
        let e = train::run(&cfg, &quiet()).unwrap_err();
        let msg = format!("{e:#}");
        assert!(
            msg.contains(needle) && msg.contains("data.batch_size"),
            "{msg}"
        );
    }
    // No run trained: the run directories hold no checkpoint.
    let exp = tmp.path().join("results/tiny");
    for d in std::fs::read_dir(&exp).unwrap().flatten() {
        assert!(!d.path().join("checkpoints/last.safetensors").exists());
    }
}
