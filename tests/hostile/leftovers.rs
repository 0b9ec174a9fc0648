//! Interrupted writes leave nothing a later run does not clean up or ignore (rule 8): the
//! temporary file of a killed writer is removed where predictions are written, and ignored
//! beside the checkpoint it would have replaced.

use std::path::{Path, PathBuf};

use super::child::{copy_tree, fixture, predict, snapshot};

/// The process id of a process that has ended.
fn dead_pid() -> u32 {
    let mut child = std::process::Command::new("true").spawn().unwrap();
    let pid = child.id();
    child.wait().unwrap();
    pid
}

/// Writes `bytes` at `path` and returns it.
fn put(path: PathBuf, bytes: &[u8]) -> PathBuf {
    std::fs::write(&path, bytes).unwrap();
    path
}

#[test]
fn predict_removes_the_temporaries_of_a_killed_writer() {
    let fx = fixture();
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    copy_tree(&fx.pred_a, &out);
    let dead = dead_pid();
    let name = std::fs::read_dir(out.join("VA_Set"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .file_name();
    let name = name.to_string_lossy();
    let stale = put(
        out.join("VA_Set").join(format!(".{name}.tmp.{dead}.0")),
        &vec![b'x'; 1 << 20],
    );
    let stale_top = put(out.join(format!(".predictions.csv.tmp.{dead}.3")), b"x");
    // A live writer's temporary (this test process) is left alone.
    let live = put(
        out.join("AU_Set")
            .join(format!(".{name}.tmp.{}.0", std::process::id())),
        b"in flight",
    );
    predict(tmp.path(), &fx.run_a, &fx.root, &out, &[]).succeeded();
    assert!(!stale.exists() && !stale_top.exists());
    assert_eq!(std::fs::read(&live).unwrap(), b"in flight");
    std::fs::remove_file(&live).unwrap();
    // What remains is exactly a fresh prediction's files.
    let fresh = tmp.path().join("fresh");
    predict(tmp.path(), &fx.run_a, &fx.root, &fresh, &[]).succeeded();
    let strip = |root: &Path| -> Vec<(PathBuf, Vec<u8>)> {
        snapshot(&[root])
            .into_iter()
            .map(|(p, b)| (p.strip_prefix(root).unwrap().to_path_buf(), b))
            .collect()
    };
    assert_eq!(strip(&out), strip(&fresh));
}

#[test]
fn a_checkpoint_temporary_left_by_a_kill_is_ignored() {
    let fx = fixture();
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("run");
    copy_tree(&fx.run_a, &run);
    // A torn write of the checkpoint: half its bytes under the temporary name.
    let ckpt = std::fs::read(run.join("checkpoints/last.safetensors")).unwrap();
    put(
        run.join(format!(
            "checkpoints/.last.safetensors.tmp.{}.7",
            dead_pid()
        )),
        &ckpt[..ckpt.len() / 2],
    );
    let out = tmp.path().join("out");
    predict(tmp.path(), &run, &fx.root, &out, &[]).succeeded();
    let strip = |root: &Path| -> Vec<(PathBuf, Vec<u8>)> {
        snapshot(&[root])
            .into_iter()
            .map(|(p, b)| (p.strip_prefix(root).unwrap().to_path_buf(), b))
            .collect()
    };
    assert_eq!(strip(&out), strip(&fx.pred_a));
}
