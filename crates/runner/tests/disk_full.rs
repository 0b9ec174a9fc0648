//! A full disk at a write: the write fails naming the path, and no earlier result is damaged.
//!
//! Two ways to run out of space, each in a child process (this test binary re-run with
//! `--exact disk_full_child`), tried in turn; every one available here is used:
//!
//! - `tmpfs`: a real 512 KiB tmpfs mounted over a directory in a private mount namespace
//!   (`unshare -m`, or `unshare -rm` where only user namespaces are allowed). Writes fail with
//!   `ENOSPC` ("No space left on device").
//! - `fsize`: `RLIMIT_FSIZE` (`ulimit -f`) in the child, with `SIGXFSZ` ignored (`trap '' XFSZ`
//!   before `exec`; an ignored signal stays ignored across `exec`), so a write past the limit
//!   returns `EFBIG` instead of killing the process. Works without any privilege.
//!
//! The test prints which mechanisms ran. It fails if a child fails; only if neither mechanism
//! can be set up at all does it skip, loudly.

use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use mtanet_runner::experiment::Config;
use mtanet_runner::record::atomic_io::{append_csv_row, read_csv, write_atomic};
use mtanet_runner::training::{self as train, RunContext};

mod support;

/// The shared tiny run at width/8, one 3-step Adam stage, a checkpoint every step.
fn tiny_config(results: &Path, synth: &Path) -> Config {
    support::tiny_config(
        results,
        synth,
        &[
            "model.width_div=8",
            "training.stages=[{name: a, optimizer: adam, lr: 0.001, steps: 3, loss: sum}]",
            "training.checkpoint_every=1",
            "training.au_pos_weight=false",
            "eval={batch_size: 8, every_steps: 100}",
        ],
    )
}

/// Set in a child: `<mechanism>\t<small directory>\t<synthetic data directory>`.
const CHILD_ENV: &str = "MTANET_TEST_DISK_FULL";
/// Size of the tmpfs.
const TMPFS_BYTES: u64 = 512 * 1024;
/// `ulimit -f` argument (blocks of 512 bytes in dash, 1024 in bash; the child reads the
/// resulting byte limit back from `/proc/self/limits`).
const FSIZE_BLOCKS: u64 = 512;
/// Exit code of the shell when it could not set the mechanism up.
const SETUP_FAILED: i32 = 97;

/// The byte limit `RLIMIT_FSIZE` imposes on this process.
fn fsize_limit() -> u64 {
    let limits = std::fs::read_to_string("/proc/self/limits").unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max file size"))
        .unwrap();
    let soft = line
        .trim_start_matches("Max file size")
        .split_whitespace()
        .next()
        .unwrap();
    soft.parse()
        .unwrap_or_else(|_| panic!("RLIMIT_FSIZE not set in the child: {line}"))
}

fn io_kind(e: &anyhow::Error) -> Option<ErrorKind> {
    e.chain()
        .find_map(|c| c.downcast_ref::<std::io::Error>())
        .map(|io| io.kind())
}

/// Names in `dir` that look like temporary files of `write_atomic`.
fn temp_files(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".tmp."))
        .collect()
}

/// The checks, run inside a child whose directory `small` is on a full-able filesystem.
#[test]
fn disk_full_child() {
    let Ok(spec) = std::env::var(CHILD_ENV) else {
        return;
    };
    let parts: Vec<&str> = spec.split('\t').collect();
    let [mechanism, small, synth] = parts[..] else {
        panic!("bad {CHILD_ENV}: {spec}");
    };
    let (small, synth) = (Path::new(small), Path::new(synth));
    let (limit, full) = match mechanism {
        "tmpfs" => (TMPFS_BYTES, ErrorKind::StorageFull),
        "fsize" => (fsize_limit(), ErrorKind::FileTooLarge),
        m => panic!("unknown mechanism {m}"),
    };
    eprintln!("child: mechanism {mechanism}, limit {limit} bytes");
    let too_big = vec![b'x'; 2 * limit as usize];

    // The mechanism is in force: a plain write past the limit fails with the expected error.
    let probe = small.join("probe");
    let e = std::fs::write(&probe, &too_big).unwrap_err();
    assert_eq!(e.kind(), full, "probe: {e}");
    std::fs::remove_file(&probe).unwrap();

    // write_atomic over an earlier result: fails naming the path, the old bytes stay.
    let results = small.join("results");
    let table = results.join("table1.csv");
    let old: Vec<u8> = (0..32 * 1024u32).map(|i| (i % 251) as u8).collect();
    write_atomic(&table, &old).unwrap();
    let e = write_atomic(&table, &too_big).unwrap_err();
    let msg = format!("{e:#}");
    assert!(msg.contains(&table.display().to_string()), "{msg}");
    assert_eq!(io_kind(&e), Some(full), "{msg}");
    assert_eq!(
        std::fs::read(&table).unwrap(),
        old,
        "earlier result damaged"
    );
    assert_eq!(temp_files(&results), Vec::<String>::new());
    eprintln!("child: write_atomic failed as expected: {msg}");

    // append_csv_row that cannot fit: the earlier rows stay, byte for byte.
    let runs = results.join("runs.csv");
    let header: Vec<String> = vec!["run_id".into(), "note".into()];
    for i in 0..5 {
        append_csv_row(
            &runs,
            &header,
            &[format!("run-{i}"), format!("ok {i}")],
            &["run_id"],
        )
        .unwrap();
    }
    let before = std::fs::read(&runs).unwrap();
    let huge = String::from_utf8(too_big.clone()).unwrap();
    let e = append_csv_row(&runs, &header, &["run-big".into(), huge], &["run_id"]).unwrap_err();
    let msg = format!("{e:#}");
    assert!(msg.contains(&runs.display().to_string()), "{msg}");
    assert_eq!(io_kind(&e), Some(full), "{msg}");
    assert_eq!(std::fs::read(&runs).unwrap(), before, "runs.csv damaged");
    assert_eq!(temp_files(&results), Vec::<String>::new());
    // The space the failed write took is given back: the next small row fits.
    append_csv_row(
        &runs,
        &header,
        &["run-5".into(), "ok 5".into()],
        &["run_id"],
    )
    .unwrap();
    let (_, rows) = read_csv(&runs).unwrap();
    let keys: Vec<&str> = rows.iter().map(|r| r[0].as_str()).collect();
    assert_eq!(keys, ["run-0", "run-1", "run-2", "run-3", "run-4", "run-5"]);

    // A real training run whose checkpoint does not fit: it fails naming the checkpoint, and
    // what it wrote before (config.yaml) is intact.
    let config = tiny_config(&small.join("train"), synth);
    let ctx = RunContext {
        quiet: true,
        ..Default::default()
    };
    let e = train::run(&config, &ctx).unwrap_err();
    let msg = format!("{e:#}");
    eprintln!("child: training failed as expected: {msg}");
    assert!(msg.contains("last.safetensors"), "{msg}");
    assert_eq!(io_kind(&e), Some(full), "{msg}");
    let run_dir = std::fs::read_dir(small.join("train/tiny"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    assert!(msg.contains(&run_dir.display().to_string()), "{msg}");
    let saved = std::fs::read_to_string(run_dir.join("config.yaml")).unwrap();
    assert_eq!(saved, config.to_yaml());
    assert_eq!(
        temp_files(&run_dir.join("checkpoints")),
        Vec::<String>::new()
    );
    assert!(!run_dir.join("checkpoints/last.safetensors").exists());
}

/// How one attempt at a mechanism ended.
enum Attempt {
    /// The child ran and passed.
    Passed,
    /// The mechanism could not be set up here (why).
    Unavailable(String),
}

fn attempt(mechanism: &str, mut cmd: Command, small: &Path, synth: &Path) -> Attempt {
    let exe = std::env::current_exe().unwrap();
    cmd.env(
        CHILD_ENV,
        format!("{mechanism}\t{}\t{}", small.display(), synth.display()),
    )
    .env("MTANET_TEST_EXE", &exe)
    .env("MTANET_TEST_MOUNT", small);
    let out: Output = match cmd.output() {
        Ok(o) => o,
        Err(e) => return Attempt::Unavailable(format!("cannot start {cmd:?}: {e}")),
    };
    let text = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    match out.status.code() {
        Some(0) => {
            for l in text.lines().filter(|l| l.starts_with("child:")) {
                eprintln!("  {mechanism} {l}");
            }
            assert!(
                text.contains("1 passed"),
                "{mechanism}: the child test did not run:\n{text}"
            );
            Attempt::Passed
        }
        // libtest's exit code for a failed test: the checks ran and failed.
        Some(101) => panic!("{mechanism}: full-disk checks failed:\n{text}"),
        Some(c) => Attempt::Unavailable(format!("exit code {c}: {}", text.trim())),
        None => panic!(
            "{mechanism}: child killed by a signal ({}):\n{text}",
            out.status
        ),
    }
}

const RUN_CHILD: &str =
    r#"exec "$MTANET_TEST_EXE" --exact disk_full_child --nocapture --test-threads=1"#;

#[test]
fn full_disk_fails_naming_the_path_and_keeps_earlier_results() {
    let tmp = tempfile::tempdir().unwrap();
    let mut ran = Vec::new();
    let mut unavailable = Vec::new();

    // A real tmpfs in a private mount namespace (root, or a user namespace).
    let mount = format!(
        "mount -t tmpfs -o size={TMPFS_BYTES} mtanet-disk-full \"$MTANET_TEST_MOUNT\" \
         || exit {SETUP_FAILED}; {RUN_CHILD}"
    );
    for flags in ["-m", "-rm"] {
        let small: PathBuf = tmp.path().join(format!("tmpfs{flags}"));
        std::fs::create_dir_all(&small).unwrap();
        let mut cmd = Command::new("unshare");
        cmd.args([flags, "sh", "-c", &mount]);
        match attempt("tmpfs", cmd, &small, &tmp.path().join("synth-tmpfs")) {
            Attempt::Passed => {
                ran.push(format!("tmpfs ({TMPFS_BYTES} bytes, unshare {flags})"));
                break;
            }
            Attempt::Unavailable(why) => {
                unavailable.push(format!("tmpfs via unshare {flags}: {why}"))
            }
        }
    }

    // RLIMIT_FSIZE with SIGXFSZ ignored.
    let small = tmp.path().join("fsize");
    std::fs::create_dir_all(&small).unwrap();
    let mut cmd = Command::new("sh");
    cmd.args([
        "-c",
        &format!("trap '' XFSZ; ulimit -f {FSIZE_BLOCKS} || exit {SETUP_FAILED}; {RUN_CHILD}"),
    ]);
    match attempt("fsize", cmd, &small, &tmp.path().join("synth-fsize")) {
        Attempt::Passed => ran.push(format!("RLIMIT_FSIZE (ulimit -f {FSIZE_BLOCKS})")),
        Attempt::Unavailable(why) => unavailable.push(format!("RLIMIT_FSIZE: {why}")),
    }

    for u in &unavailable {
        eprintln!("disk-full mechanism not available: {u}");
    }
    if ran.is_empty() {
        eprintln!(
            "\n==========================================================\n\
             SKIPPED: no way to fill a disk here (no tmpfs mount, no RLIMIT_FSIZE).\n\
             The full-disk guarantee is NOT tested on this machine.\n\
             =========================================================="
        );
        return;
    }
    eprintln!("disk-full checks passed with: {}", ran.join("; "));
}
