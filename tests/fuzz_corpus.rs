//! Every committed fuzz corpus file (`fuzz/corpus/<target>/`) fed to the same functions as the
//! fuzz target of that name: no input may panic or take more than a few seconds.
//!
//! The targets themselves are in `fuzz/fuzz_targets/` (see `fuzz/README.md`); this test keeps
//! what they found fixed without needing nightly or cargo-fuzz.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use candle_core::Device;
use mtanet_affwild2::{parse_annotation, Task};
use mtanet_runner::experiment::{ExperimentFile, Override};
use mtanet_runner::record::atomic_io::{csv_split, read_csv};
use mtanet_runner::record::checkpoint;

/// Longest a single input may take (the fuzzers run with `-timeout=10`; the dev profile is slower).
const LIMIT: Duration = Duration::from_secs(5);

fn corpus(target: &str) -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    assert!(!files.is_empty(), "{}: empty corpus", dir.display());
    files
}

/// Runs `f` on every corpus file of `target`; reports every panicking or slow file at once.
fn each_input(target: &str, f: impl Fn(&[u8])) {
    let mut failures = Vec::new();
    for path in corpus(target) {
        let bytes = std::fs::read(&path).unwrap();
        let start = Instant::now();
        let result = catch_unwind(AssertUnwindSafe(|| f(&bytes)));
        let took = start.elapsed();
        if result.is_err() {
            failures.push(format!("{}: panicked", path.display()));
        } else if took > LIMIT {
            failures.push(format!("{}: took {took:?}", path.display()));
        }
    }
    assert!(failures.is_empty(), "{target}:\n{}", failures.join("\n"));
}

#[test]
fn annotation_corpus() {
    each_input("annotation", |data| {
        for task in [Task::Va, Task::Au, Task::Expr] {
            if let Ok(file) = parse_annotation(task, Path::new("fuzz/video.txt"), data) {
                for i in 0..=file.len() {
                    let _ = (file.is_labelled(i), file.va(i), file.au(i), file.expr(i));
                }
            }
        }
    });
}

#[test]
fn experiment_config_corpus() {
    each_input("experiment_config", |data| {
        let Ok(text) = std::str::from_utf8(data) else {
            return;
        };
        let overrides: Vec<Override> = text
            .lines()
            .filter_map(|l| l.strip_prefix("#set "))
            .take(4)
            .filter_map(|s| s.parse().ok())
            .collect();
        let Ok(file) = ExperimentFile::parse("fuzz.yaml", text) else {
            return;
        };
        let mut profiles: Vec<Option<String>> = vec![None];
        profiles.extend(file.profile_names().into_iter().take(4).map(Some));
        let mut rows: Vec<Option<String>> = vec![None];
        rows.extend(file.rows.iter().take(4).map(|r| Some(r.name.clone())));
        for p in &profiles {
            for r in &rows {
                if let Ok(config) = file.resolve(p.as_deref(), r.as_deref(), &overrides) {
                    let _ = config.to_yaml();
                }
            }
        }
    });
}

#[test]
fn csv_corpus() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("input.csv");
    each_input("csv", |data| {
        std::fs::write(&path, data).unwrap();
        if let Ok((header, rows)) = read_csv(&path) {
            assert!(rows.iter().all(|r| r.len() == header.len()));
        }
        for line in String::from_utf8_lossy(data).lines() {
            assert!(!csv_split(line).is_empty());
        }
    });
}

#[test]
fn checkpoint_corpus() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("input.safetensors");
    each_input("checkpoint", |data| {
        std::fs::write(&path, data).unwrap();
        if let Err(e) = checkpoint::load(&path, &Device::Cpu) {
            // Errors must name the file.
            assert!(format!("{e:#}").contains("input.safetensors"), "{e:#}");
        }
    });
}
