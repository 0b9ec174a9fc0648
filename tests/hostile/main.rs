//! Hostile input: malformed Aff-Wild2 trees, annotation files, crops and experiment files, an
//! unwritable results folder, and the commands over them as a user runs them (`child`):
//! checkpoints of another model or with non-finite values, vocabularies in another order,
//! numbers from names and lists, half-accepted formats, leftovers of interrupted writes. Every
//! case asserts the error (variant, or exit code of the binary) and that the message names the
//! offending file, line or key; the command cases also that earlier results are byte-identical
//! afterwards and that the process stays under 1 GB; nothing may panic or abort.

mod annotations;
mod bounds;
mod checkpoints;
mod child;
mod config;
mod formats;
mod images;
mod layout;
mod leftovers;
mod results_dir;
mod run_record;
mod stray_crops;
mod vocabulary;

/// The runner tests' tiny configuration (one shared file).
#[path = "../../crates/runner/tests/support/mod.rs"]
mod support;

use std::path::{Path, PathBuf};

/// The ABAW 2020 headers.
const VA_H: &str = "valence,arousal\n";
const AU_H: &str = "AU1,AU2,AU4,AU6,AU12,AU15,AU20,AU25\n";
const EXPR_H: &str = "Neutral,Anger,Disgust,Fear,Happiness,Sadness,Surprise\n";

/// The folder of one (task, split) in the 2020 layout, e.g. `annotations/VA_Set/Training_Set`.
fn set_dir(task: &str, split: &str) -> String {
    format!("annotations/{task}_Set/{split}_Set")
}

/// Writes `bytes` at `root/rel`, creating folders.
fn write(root: &Path, rel: &str, bytes: impl AsRef<[u8]>) -> PathBuf {
    let p = root.join(rel);
    std::fs::create_dir_all(p.parent().expect("relative path has a parent")).unwrap();
    std::fs::write(&p, bytes).unwrap();
    p
}

/// Puts `bytes` as crops `00001.jpg..` of `video` (one per entry).
fn crops(root: &Path, video: &str, files: &[&[u8]]) -> Vec<PathBuf> {
    files
        .iter()
        .enumerate()
        .map(|(i, b)| {
            write(
                root,
                &format!("cropped_aligned/{video}/{:05}.jpg", i + 1),
                b,
            )
        })
        .collect()
}

/// A valid minimal 2020 tree: video `good` with 3 frames labelled in all tasks (train split).
fn good_tree(root: &Path) {
    write(
        root,
        &format!("{}/good.txt", set_dir("VA", "Training")),
        format!("{VA_H}0.1,0.2\n-0.3,0.4\n0.5,-0.6\n"),
    );
    write(
        root,
        &format!("{}/good.txt", set_dir("AU", "Training")),
        format!("{AU_H}1,0,0,0,1,0,0,0\n0,0,0,0,0,0,0,1\n0,1,0,0,0,0,0,0\n"),
    );
    write(
        root,
        &format!("{}/good.txt", set_dir("EXPR", "Training")),
        format!("{EXPR_H}4\n0\n6\n"),
    );
    let jpg = fixture("rgb_48x48.jpg");
    crops(root, "good", &[&jpg, &jpg, &jpg]);
}

/// The bytes of a file of `tests/hostile/fixtures` (made by its `make_images.py`).
fn fixture(name: &str) -> Vec<u8> {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/hostile/fixtures")
        .join(name);
    std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// Asserts that `message` mentions `needle` (a file name, line or key).
#[track_caller]
fn assert_names(message: &str, needle: &str) {
    assert!(
        message.contains(needle),
        "message does not name {needle:?}: {message}"
    );
}
