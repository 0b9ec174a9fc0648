//! Two OS processes append to one `runs.csv` at the same time through
//! `atomic_io::append_csv_row` (file lock + atomic rewrite + upsert by the key columns).
//!
//! The test re-runs its own binary twice as writers (`--exact csv_writer_child`, told what to do
//! by an environment variable); both wait on a start file, so their appends overlap. Afterwards
//! the file must hold the header once, every row of both writers exactly once with its latest
//! value, no torn or interleaved line, and no temporary file.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use mtanet_runner::record::atomic_io::{append_csv_row, read_csv};

/// Set in a writer child: `<csv path>\t<writer tag>\t<start file>\t<timing file>`.
const WRITER_ENV: &str = "MTANET_TEST_CSV_WRITER";
/// Rows each writer adds under its own keys.
const ROWS: usize = 40;
/// Times each writer rewrites the key both writers share.
const SHARED_WRITES: usize = 10;
/// A key both writers upsert; it holds a comma and a quote, so it is stored quoted.
const SHARED_KEY: &str = "shared,\"key\"";

fn header() -> Vec<String> {
    ["run_id", "writer", "seq", "payload", "check"]
        .iter()
        .map(|s| s.to_string())
        .collect()
}

/// A long payload derived from the key (a torn or interleaved line cannot reproduce it) that
/// also carries a comma and a quote, so every line needs CSV quoting.
fn payload(key: &str, seq: usize) -> String {
    let body: String = (0..600)
        .map(|i| char::from(b'a' + ((i * 7 + key.len() + seq) % 26) as u8))
        .collect();
    format!("{key}|{seq}|, \"q\" |{body}")
}

fn row(key: &str, writer: &str, seq: usize) -> Vec<String> {
    let p = payload(key, seq);
    vec![
        key.to_string(),
        writer.to_string(),
        seq.to_string(),
        p.clone(),
        p.len().to_string(),
    ]
}

fn now_ns() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
}

/// The writer. Does nothing unless started by `two_processes_append_to_one_runs_csv`.
#[test]
fn csv_writer_child() {
    let Ok(spec) = std::env::var(WRITER_ENV) else {
        return;
    };
    let parts: Vec<&str> = spec.split('\t').collect();
    let [csv, tag, start, timing] = parts[..] else {
        panic!("bad {WRITER_ENV}: {spec}");
    };
    let (csv, start) = (Path::new(csv), Path::new(start));
    // Wait for the parent's start signal; if the parent test ends first (this process is
    // re-parented), stop instead of waiting forever.
    let parent = std::os::unix::process::parent_id();
    while !start.exists() {
        assert_eq!(
            std::os::unix::process::parent_id(),
            parent,
            "the parent test ended before starting the writers"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    let began = now_ns();
    let h = header();
    for i in 0..ROWS {
        // Interleave the shared-key upserts with the own rows, and rewrite one earlier own row
        // (an idempotent re-append, as a resumed run does) now and then.
        append_csv_row(csv, &h, &row(&format!("{tag}-{i}"), tag, 0), &["run_id"]).unwrap();
        if i % (ROWS / SHARED_WRITES) == 0 {
            append_csv_row(csv, &h, &row(SHARED_KEY, tag, i), &["run_id"]).unwrap();
        }
        if i % 5 == 4 {
            append_csv_row(
                csv,
                &h,
                &row(&format!("{tag}-{}", i - 2), tag, 1),
                &["run_id"],
            )
            .unwrap();
        }
    }
    std::fs::write(timing, format!("{began} {}", now_ns())).unwrap();
}

fn spawn_writer(csv: &Path, tag: &str, start: &Path, timing: &Path) -> Child {
    let exe = std::env::current_exe().unwrap();
    Command::new(exe)
        .args([
            "--exact",
            "csv_writer_child",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(
            WRITER_ENV,
            format!(
                "{}\t{tag}\t{}\t{}",
                csv.display(),
                start.display(),
                timing.display()
            ),
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

fn timing(path: &Path) -> (u128, u128) {
    let text = std::fs::read_to_string(path).unwrap();
    let v: Vec<u128> = text
        .split_whitespace()
        .map(|x| x.parse().unwrap())
        .collect();
    (v[0], v[1])
}

#[test]
fn two_processes_append_to_one_runs_csv() {
    let t0 = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("results/runs.csv");
    let start = dir.path().join("go");
    let tags = ["procA", "procB"];
    let timings: Vec<PathBuf> = tags
        .iter()
        .map(|t| dir.path().join(format!("{t}.timing")))
        .collect();
    let children: Vec<Child> = tags
        .iter()
        .zip(&timings)
        .map(|(t, tf)| spawn_writer(&csv, t, &start, tf))
        .collect();
    std::fs::write(&start, b"go").unwrap();
    for (tag, child) in tags.iter().zip(children) {
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "writer {tag} failed ({}):\n{}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // The two writers really ran at the same time.
    let (a, b) = (timing(&timings[0]), timing(&timings[1]));
    assert!(
        a.0.max(b.0) < a.1.min(b.1),
        "the writers did not overlap: {a:?} {b:?}"
    );

    let text = std::fs::read_to_string(&csv).unwrap();
    assert!(text.ends_with('\n'), "last line torn");
    let header_line = header().join(",");
    assert_eq!(
        text.lines().filter(|l| *l == header_line).count(),
        1,
        "header not exactly once"
    );
    assert_eq!(text.lines().next(), Some(header_line.as_str()));

    let (h, rows) = read_csv(&csv).unwrap();
    assert_eq!(h, header());
    assert_eq!(rows.len(), 2 * ROWS + 1, "rows lost or doubled");
    let mut keys: Vec<&str> = rows.iter().map(|r| r[0].as_str()).collect();
    keys.sort_unstable();
    let mut expected: Vec<String> = tags
        .iter()
        .flat_map(|t| (0..ROWS).map(move |i| format!("{t}-{i}")))
        .chain([SHARED_KEY.to_string()])
        .collect();
    expected.sort_unstable();
    assert_eq!(keys, expected);
    for r in &rows {
        // Every field intact: the payload is what its key and sequence number give.
        let seq: usize = r[2].parse().unwrap();
        assert_eq!(r[3], payload(&r[0], seq), "torn row {}", r[0]);
        assert_eq!(r[4], r[3].len().to_string());
        if r[0] != SHARED_KEY {
            assert!(r[0].starts_with(&r[1]), "row {} from writer {}", r[0], r[1]);
            // Rows rewritten by the writer hold the second value.
            let i: usize = r[0].rsplit('-').next().unwrap().parse().unwrap();
            let rewritten = i + 2 < ROWS && (i + 2) % 5 == 4;
            assert_eq!(seq, usize::from(rewritten), "row {}", r[0]);
        } else {
            // The shared key holds one of the last values a writer gave it.
            assert!(tags.contains(&r[1].as_str()));
            assert_eq!(seq, ROWS - ROWS / SHARED_WRITES, "shared row {r:?}");
        }
    }
    // Nothing but the CSV and its lock file is left in the results directory.
    let mut left: Vec<String> = std::fs::read_dir(csv.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    left.sort();
    assert_eq!(left, vec!["runs.csv", "runs.csv.lock"]);
    eprintln!(
        "two writers, {} rows, {:.2} s",
        rows.len(),
        t0.elapsed().as_secs_f64()
    );
}
