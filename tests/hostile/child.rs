//! The `mtanet` binary as a user runs it: a child process whose exit status, output and peak
//! memory (its own `ru_maxrss`, from `wait4`) are checked, over a shared fixture of two tiny
//! trained runs of different backbones on one small synthetic set.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

/// The binary under test.
const BIN: &str = env!("CARGO_BIN_EXE_mtanet");

/// Peak resident memory allowed to any child on the small synthetic set.
pub const MAX_RSS_KB: i64 = 1024 * 1024;

/// What a child left.
#[derive(Debug)]
pub struct Outcome {
    /// The command line, for messages.
    pub what: String,
    /// Its exit code (`None` when a signal ended it).
    pub code: Option<i32>,
    /// The signal that ended it, if one did.
    pub signal: Option<i32>,
    /// Its standard output.
    pub stdout: String,
    /// Its standard error.
    pub stderr: String,
    /// Its peak resident memory in kB.
    pub max_rss_kb: i64,
}

impl Outcome {
    /// Asserts that it ended by itself, within the memory bound.
    #[track_caller]
    fn ended_by_itself(&self) {
        assert!(
            self.signal.is_none(),
            "`{}` was killed by signal {:?} (abort?):\n{}",
            self.what,
            self.signal,
            self.stderr
        );
        assert!(
            self.max_rss_kb < MAX_RSS_KB,
            "`{}` peaked at {} MB",
            self.what,
            self.max_rss_kb / 1024
        );
    }

    /// Asserts exit code 0 within the memory bound.
    #[track_caller]
    pub fn succeeded(&self) -> &Self {
        self.ended_by_itself();
        assert_eq!(
            self.code,
            Some(0),
            "`{}` failed:\n{}",
            self.what,
            self.stderr
        );
        self
    }

    /// Asserts exit code 1 (a user error) within the memory bound, with an `error:` line
    /// naming every one of `needles`; returns the message.
    #[track_caller]
    pub fn refused(&self, needles: &[&str]) -> &str {
        self.ended_by_itself();
        assert_eq!(
            self.code,
            Some(1),
            "`{}` should fail with exit code 1:\nstdout:\n{}\nstderr:\n{}",
            self.what,
            self.stdout,
            self.stderr
        );
        assert!(
            self.stderr.contains("error: "),
            "`{}`: no error line:\n{}",
            self.what,
            self.stderr
        );
        for n in needles {
            super::assert_names(&self.stderr, n);
        }
        &self.stderr
    }
}

/// Runs `mtanet args` in `cwd` (log level `warn`) and waits for it with `wait4`.
#[allow(clippy::zombie_processes)] // reaped by `wait4`, which `Child` cannot see
pub fn mtanet<S: AsRef<OsStr>>(cwd: &Path, args: &[S]) -> Outcome {
    let logs = tempfile::tempdir().unwrap();
    let (out_path, err_path) = (logs.path().join("stdout"), logs.path().join("stderr"));
    let child = Command::new(BIN)
        .current_dir(cwd)
        .args(args)
        .env("RUST_LOG", "warn")
        .env_remove("RUST_BACKTRACE")
        .env_remove("AFFWILD2_ROOT")
        .stdin(Stdio::null())
        .stdout(File::create(&out_path).unwrap())
        .stderr(File::create(&err_path).unwrap())
        .spawn()
        .unwrap();
    let pid = libc::pid_t::try_from(child.id()).unwrap();
    let mut status: libc::c_int = 0;
    // SAFETY: an all-zero `rusage` is a valid value of this plain C struct.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `pid` is our unwaited child; `status` and `usage` are valid for writes.
    let waited = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    let what = args
        .iter()
        .map(|a| a.as_ref().to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ");
    assert_eq!(waited, pid, "wait4 on `mtanet {what}` failed");
    Outcome {
        what: format!("mtanet {what}"),
        code: libc::WIFEXITED(status).then(|| libc::WEXITSTATUS(status)),
        signal: libc::WIFSIGNALED(status).then(|| libc::WTERMSIG(status)),
        stdout: std::fs::read_to_string(&out_path).unwrap(),
        stderr: std::fs::read_to_string(&err_path).unwrap(),
        max_rss_kb: usage.ru_maxrss,
    }
}

/// Every file under `paths` (recursively, symlinks not followed) with its bytes.
pub fn snapshot(paths: &[&Path]) -> BTreeMap<PathBuf, Vec<u8>> {
    fn walk(p: &Path, out: &mut BTreeMap<PathBuf, Vec<u8>>) {
        let Ok(meta) = std::fs::symlink_metadata(p) else {
            return;
        };
        if meta.is_dir() {
            for e in std::fs::read_dir(p).unwrap() {
                walk(&e.unwrap().path(), out);
            }
        } else if meta.is_file() {
            out.insert(p.to_path_buf(), std::fs::read(p).unwrap());
        }
    }
    let mut out = BTreeMap::new();
    for p in paths {
        walk(p, &mut out);
    }
    out
}

/// Asserts that the files under `paths` are those of `before`, byte for byte.
#[track_caller]
pub fn unchanged(before: &BTreeMap<PathBuf, Vec<u8>>, paths: &[&Path]) {
    let after = snapshot(paths);
    let names = |m: &BTreeMap<PathBuf, Vec<u8>>| m.keys().cloned().collect::<Vec<_>>();
    assert_eq!(names(&after), names(before), "files were added or removed");
    for (p, bytes) in before {
        assert!(&after[p] == bytes, "{} changed", p.display());
    }
}

/// Copies a folder tree (files and folders only).
pub fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let dst = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_tree(&e.path(), &dst);
        } else {
            std::fs::copy(e.path(), dst).unwrap();
        }
    }
}

/// The shared fixture: a small synthetic set, two finished runs on it and run A's
/// predictions of its validation split.
pub struct Fixture {
    /// The synthetic Aff-Wild2 root (ABAW 2020 vocabulary).
    pub root: PathBuf,
    /// Run A: ResNeXt-50-CBAM at width/16.
    pub run_a: PathBuf,
    /// Run B: SE-ResNet-50 at width/16 (another backbone, same heads).
    pub run_b: PathBuf,
    /// Run A's predictions of the validation split.
    pub pred_a: PathBuf,
}

/// The tiny experiment of run `name` with `backbone` (and `extra` model lines).
fn config(dir: &Path, name: &str, backbone: &str, extra: &str) -> PathBuf {
    let yaml = format!(
        "
defaults:
  experiment: {name}
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
    backbone: {backbone}
    width_div: 16
    depths: [1, 1, 1, 1]{extra}
    head: {{hidden: 16, dropout: 0.2}}
  training:
    stages:
      - {{name: a, optimizer: adam, lr: 0.001, steps: 1, loss: sum}}
      - {{name: b, optimizer: sgd, lr: 0.001, steps: 1, loss: uncertainty}}
    checkpoint_every: 1
  eval: {{batch_size: 16, every_steps: 0}}
",
        results = dir.join("results").display(),
        synth = dir.join("synth").display()
    );
    let path = dir.join(format!("{name}.yaml"));
    std::fs::write(&path, yaml).unwrap();
    path
}

/// The one run folder of `results/<experiment>`.
fn run_dir(dir: &Path, experiment: &str) -> PathBuf {
    let mut runs: Vec<PathBuf> = std::fs::read_dir(dir.join("results").join(experiment))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir())
        .collect();
    assert_eq!(runs.len(), 1, "{runs:?}");
    runs.pop().unwrap()
}

/// The fixture's folder, removed when the test process exits.
static FIXTURE_DIR: OnceLock<PathBuf> = OnceLock::new();

extern "C" fn remove_fixture_dir() {
    if let Some(d) = FIXTURE_DIR.get() {
        let _ = std::fs::remove_dir_all(d);
    }
}

/// The fixture, made once per test binary (its folder lives as long as the process).
pub fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap().keep();
        FIXTURE_DIR.set(dir.clone()).expect("one fixture");
        // SAFETY: registers a plain `extern "C"` function with no arguments.
        unsafe { libc::atexit(remove_fixture_dir) };
        for (name, backbone, extra) in [
            ("a", "resnext50_32x4d_cbam", "\n    groups: 2"),
            ("b", "seresnet50", ""),
        ] {
            let cfg = config(&dir, name, backbone, extra);
            mtanet(
                &dir,
                &[
                    OsStr::new("train"),
                    "--quiet".as_ref(),
                    "--config".as_ref(),
                    cfg.as_os_str(),
                ],
            )
            .succeeded();
        }
        let (run_a, run_b) = (run_dir(&dir, "a"), run_dir(&dir, "b"));
        let root = dir.join("synth");
        let pred_a = dir.join("pred_a");
        predict(&dir, &run_a, &root, &pred_a, &[]).succeeded();
        Fixture {
            root,
            run_a,
            run_b,
            pred_a,
        }
    })
}

/// `mtanet predict --checkpoint CKPT --root ROOT --split Validation_Set --out OUT --quiet`
/// plus `extra`.
pub fn predict(cwd: &Path, ckpt: &Path, root: &Path, out: &Path, extra: &[&OsStr]) -> Outcome {
    let mut args: Vec<&OsStr> = vec![
        "predict".as_ref(),
        "--checkpoint".as_ref(),
        ckpt.as_os_str(),
        "--root".as_ref(),
        root.as_os_str(),
        "--split".as_ref(),
        "Validation_Set".as_ref(),
        "--out".as_ref(),
        out.as_os_str(),
        "--quiet".as_ref(),
    ];
    args.extend_from_slice(extra);
    mtanet(cwd, &args)
}

/// `mtanet evaluate --pred PRED --root ROOT --split Validation_Set`.
pub fn evaluate(cwd: &Path, pred: &Path, root: &Path) -> Outcome {
    mtanet(
        cwd,
        &[
            OsStr::new("evaluate"),
            "--pred".as_ref(),
            pred.as_os_str(),
            "--root".as_ref(),
            root.as_os_str(),
            "--split".as_ref(),
            "Validation_Set".as_ref(),
        ],
    )
}
