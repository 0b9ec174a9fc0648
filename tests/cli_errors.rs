//! User errors print as a message and its causes, not a stack trace, even with
//! `RUST_BACKTRACE=1` set (as many shells have it); `-v` gives the full form.

use std::path::Path;
use std::process::{Command, Output};

const BIN: &str = env!("CARGO_BIN_EXE_mtanet");

fn mtanet(args: &[&str]) -> Output {
    mtanet_in(Path::new("."), args, &[])
}

/// `mtanet args` run in `dir` with `envs` set, `RUST_BACKTRACE=1` and no `RUST_LOG`.
fn mtanet_in(dir: &Path, args: &[&str], envs: &[(&str, &str)]) -> Output {
    Command::new(BIN)
        .args(args)
        .current_dir(dir)
        .envs(envs.iter().copied())
        .env("RUST_BACKTRACE", "1")
        .env_remove("RUST_LOG")
        .output()
        .expect("the mtanet binary runs")
}

#[test]
fn missing_data_root_is_a_short_message_with_backtraces_on() {
    let out = mtanet(&["data", "stats", "--root", "/nonexistent/affwild2"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    let lines: Vec<&str> = stderr.lines().collect();
    assert!(
        (1..=3).contains(&lines.len()),
        "{} lines: {stderr}",
        lines.len()
    );
    assert!(lines[0].starts_with("error: "), "{stderr}");
    assert!(stderr.contains("/nonexistent/affwild2"), "{stderr}");
    assert!(!stderr.contains("backtrace"), "{stderr}");
}

#[test]
fn typo_in_an_experiment_file_names_line_and_key_in_a_few_lines() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.yaml");
    std::fs::write(&path, "defaults:\n  training:\n    stagez: []\n").unwrap();
    let out = mtanet(&["train", "--config", path.to_str().unwrap(), "--quiet"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.lines().count() <= 3, "{stderr}");
    assert!(
        stderr.contains("bad.yaml") && stderr.contains("stagez"),
        "{stderr}"
    );
    assert!(stderr.contains("line 3"), "{stderr}");
    assert!(!stderr.contains("backtrace"), "{stderr}");
}

#[test]
fn verbose_flag_prints_the_full_error() {
    let short = mtanet(&["data", "stats", "--root", "/nonexistent/affwild2"]);
    let long = mtanet(&["-v", "data", "stats", "--root", "/nonexistent/affwild2"]);
    assert!(!long.status.success());
    let (s, l) = (
        String::from_utf8_lossy(&short.stderr),
        String::from_utf8_lossy(&long.stderr),
    );
    assert!(l.contains("/nonexistent/affwild2"), "{l}");
    assert!(
        l.lines().count() > s.lines().count(),
        "short:\n{s}\nlong:\n{l}"
    );
}

#[test]
fn paper_profile_without_aff_wild2_refuses_in_one_line_naming_both_ways() {
    let dir = tempfile::tempdir().unwrap();
    let out = mtanet_in(
        dir.path(),
        &["table1", "--profile", "paper", "--quiet"],
        &[("AFFWILD2_ROOT", "")],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("AFFWILD2_ROOT") && stderr.contains("data.root"),
        "{stderr}"
    );
    // Nothing was generated or trained.
    assert!(!dir.path().join("data").exists() && !dir.path().join("results").exists());
}

#[test]
fn train_under_affwild2_root_on_a_file_without_paper_refuses_the_synthetic_set_in_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("plain.yaml");
    std::fs::write(&path, "defaults:\n  experiment: plain\n").unwrap();
    let path = path.to_str().unwrap();
    let out = mtanet_in(
        dir.path(),
        &["train", "--quiet", "--config", path],
        &[("AFFWILD2_ROOT", "/data/aw2")],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    for part in [
        "AFFWILD2_ROOT=/data/aw2",
        "plain.yaml",
        "data.root",
        "--profile",
    ] {
        assert!(stderr.contains(part), "{part}: {stderr}");
    }
    // Nothing was trained or written.
    assert!(!dir.path().join("results").exists());
}

/// `predict --split Test` without `--videos` says where its video list and frame counts come
/// from and how to give the track's own list; with `--videos` it does not.
#[test]
fn predicting_the_test_set_without_its_list_says_how_to_give_it() {
    let dir = tempfile::tempdir().unwrap();
    let run = |extra: &[&str]| {
        let mut args = vec![
            "predict",
            "--checkpoint",
            "missing-run",
            "--split",
            "Test",
            "--out",
            "o",
        ];
        args.extend(extra);
        let out = mtanet_in(dir.path(), &args, &[]);
        assert!(!out.status.success());
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let stderr = run(&[]);
    assert!(
        stderr.contains("--videos") && stderr.contains("va_test_set.txt"),
        "{stderr}"
    );
    let stderr = run(&["--videos", "va_test_set.txt"]);
    assert!(!stderr.contains("note: --split Test"), "{stderr}");
}
