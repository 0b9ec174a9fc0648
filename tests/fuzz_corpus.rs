//! Every committed fuzz corpus file (`fuzz/corpus/<target>/`) fed to the same functions as the
//! fuzz target of that name: no input may panic or ask for a single allocation above
//! [`MAX_ALLOCATION`] (the fuzzers' `-rss_limit_mb` finds; a request that large aborts where
//! the kernel refuses it).
//!
//! The targets themselves are in `fuzz/fuzz_targets/` (see `fuzz/README.md`); this test keeps
//! what they found fixed without needing nightly or cargo-fuzz.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

use candle_core::Device;
use mtanet_affwild2::{parse_annotation, Task};
use mtanet_runner::experiment::{ExperimentFile, Override};
use mtanet_runner::record::atomic_io::{csv_split, read_csv};
use mtanet_runner::record::checkpoint;

/// The largest single allocation an input may ask for.
const MAX_ALLOCATION: usize = 256 << 20;

thread_local! {
    /// The largest allocation this thread asked for since the last [`take_largest`].
    static LARGEST: Cell<usize> = const { Cell::new(0) };
}

/// The system allocator, recording each thread's largest request.
struct Recording;

// SAFETY: every call is forwarded unchanged to the system allocator.
unsafe impl GlobalAlloc for Recording {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        record(layout.size());
        // SAFETY: the caller's contract is passed on.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: the caller's contract is passed on.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        record(layout.size());
        // SAFETY: the caller's contract is passed on.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        record(new_size);
        // SAFETY: the caller's contract is passed on.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Recording = Recording;

fn record(size: usize) {
    // `try_with`: a thread being torn down has no slot left, and needs no record.
    let _ = LARGEST.try_with(|l| l.set(l.get().max(size)));
}

/// The largest allocation this thread asked for since the last call (and resets it).
fn take_largest() -> usize {
    LARGEST.with(|l| l.replace(0))
}

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

/// Runs `f` on every corpus file of `target` (on this thread); reports every file that panics
/// or asks for too much memory at once.
fn each_input(target: &str, f: impl Fn(&[u8])) {
    let mut failures = Vec::new();
    for path in corpus(target) {
        let bytes = std::fs::read(&path).unwrap();
        take_largest();
        let result = catch_unwind(AssertUnwindSafe(|| f(&bytes)));
        let largest = take_largest();
        if result.is_err() {
            failures.push(format!("{}: panicked", path.display()));
        } else if largest > MAX_ALLOCATION {
            failures.push(format!(
                "{}: asked for {} MB at once",
                path.display(),
                largest >> 20
            ));
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

/// The recorder sees a large request (so a quiet corpus run means small requests).
#[test]
fn the_allocation_recorder_sees_a_large_request() {
    take_largest();
    let v: Vec<u8> = Vec::with_capacity(MAX_ALLOCATION + 1);
    assert!(take_largest() > MAX_ALLOCATION);
    drop(v);
    assert!(take_largest() <= MAX_ALLOCATION);
}
