//! Crash-safe writes: write to a temporary file, fsync, rename; locked CSV appends.
//!
//! A killed run or a full disk leaves either the old file or the new one, never a torn one.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::Context;

/// Numbers this process's temporary files, so two threads writing the same target at once do
/// not share (and truncate) one temporary file.
static TEMP_SEQ: AtomicU64 = AtomicU64::new(0);

/// Atomically replaces `path` with `bytes` (temp file in the same directory + fsync + rename).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    write_atomic_with(path, |w| w.write_all(bytes))
}

/// Quotes a CSV field when needed (RFC 4180).
pub fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

/// Splits one CSV line into fields (RFC 4180 quoting; no embedded newlines).
pub fn csv_split(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match (c, quoted) {
            ('"', true) if chars.peek() == Some(&'"') => {
                cur.push('"');
                chars.next();
            }
            ('"', _) => quoted = !quoted,
            (',', false) => out.push(std::mem::take(&mut cur)),
            (c, _) => cur.push(c),
        }
    }
    out.push(cur);
    out
}

/// The first column name `header` repeats, if any: a file whose values are placed by column
/// name cannot have two columns of one name.
pub fn repeated_column(header: &[String]) -> Option<&str> {
    let mut seen = std::collections::BTreeSet::new();
    header.iter().map(String::as_str).find(|h| !seen.insert(*h))
}

/// One CSV line (without its newline): the fields quoted where needed and joined by commas.
pub fn csv_line(fields: &[String]) -> String {
    fields
        .iter()
        .map(|f| csv_field(f))
        .collect::<Vec<_>>()
        .join(",")
}

/// The values of `row` (under `header`) in the order of `columns`, matched by name: a column
/// `header` lacks gets an empty field. Rows of a CSV file are placed by name, never by
/// position.
pub fn fields_by_name(header: &[String], row: &[String], columns: &[String]) -> Vec<String> {
    columns
        .iter()
        .map(|c| field_by_name(header, row, c))
        .collect()
}

/// The value of `row` (under `header`) in column `column`, matched by name; empty where
/// `header` lacks it.
pub fn field_by_name(header: &[String], row: &[String], column: &str) -> String {
    header
        .iter()
        .position(|h| h == column)
        .and_then(|i| row.get(i))
        .cloned()
        .unwrap_or_default()
}

/// Creates `path`'s folder and takes the lock `<file>.csv.lock` beside it, held until the
/// returned file is dropped: writers of one CSV file take turns.
pub fn lock_csv(path: &Path) -> anyhow::Result<std::fs::File> {
    if let Some(d) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
    }
    let lock_path = path.with_extension("csv.lock");
    let lock = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .with_context(|| format!("opening lock {}", lock_path.display()))?;
    lock.lock()
        .with_context(|| format!("locking {}", lock_path.display()))?;
    Ok(lock)
}

/// Appends one row (replacing any earlier row with the same values in the `key` columns, found
/// by name; none with an empty `key`) to a CSV file under an exclusive lock (`<file>.lock`),
/// writing the header
/// first when the file is new. The whole file is rewritten atomically, so a crash never leaves
/// a half row and two concurrent runs never interleave. If the existing header differs, the
/// row is mapped onto it by column name; columns the file lacks are appended to its header
/// (earlier rows get empty cells) and returned.
pub fn append_csv_row(
    path: &Path,
    header: &[String],
    row: &[String],
    key: &[&str],
) -> anyhow::Result<Vec<String>> {
    let key_values: Vec<(&str, String)> = key
        .iter()
        .map(|&col| {
            assert!(
                header.iter().any(|h| h == col),
                "key column `{col}` not in the header"
            );
            (col, field_by_name(header, row, col))
        })
        .collect();
    let lock = lock_csv(path)?;
    let existing = match std::fs::read_to_string(path) {
        Ok(s) => s,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    let mut added = Vec::new();
    // Idempotent per key (e.g. a run's id and experiment): a row written before a crash and
    // written again on resume replaces its earlier copy instead of doubling it. Keys are
    // compared by column name after unquoting, so a key holding a comma or a quote matches too.
    let file_header = existing.lines().next().map(csv_split).unwrap_or_default();
    let same_key = |l: &str| {
        let fields = csv_split(l);
        !key_values.is_empty()
            && key_values
                .iter()
                .all(|(col, v)| field_by_name(&file_header, &fields, col) == *v)
    };
    let existing: Vec<&str> = existing
        .lines()
        .enumerate()
        .filter(|(i, l)| *i == 0 || !same_key(l))
        .map(|(_, l)| l)
        .collect();
    let join = csv_line;
    let mut text;
    let line = if existing.iter().all(|l| l.trim().is_empty()) {
        text = join(header) + "\n";
        join(row)
    } else {
        // The file's columns, then any new ones (earlier rows get empty cells there): rows are
        // matched by column name, never by position, and no value is dropped.
        let mut file_header = csv_split(existing[0]);
        for h in header {
            if !file_header.contains(h) {
                file_header.push(h.clone());
                added.push(h.clone());
            }
        }
        text = join(&file_header) + "\n";
        let pad = ",".repeat(added.len());
        for l in &existing[1..] {
            text.push_str(l);
            if !l.trim().is_empty() {
                text.push_str(&pad);
            }
            text.push('\n');
        }
        join(&fields_by_name(header, row, &file_header))
    };
    if !text.ends_with('\n') {
        text.push('\n');
    }
    text.push_str(&line);
    text.push('\n');
    write_atomic(path, text.as_bytes())?;
    drop(lock);
    Ok(added)
}

/// Reads a CSV file into its header and rows (fields as strings).
pub fn read_csv(path: &Path) -> anyhow::Result<(Vec<String>, Vec<Vec<String>>)> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut lines = text.lines().filter(|l| !l.trim().is_empty());
    let header = csv_split(
        lines
            .next()
            .with_context(|| format!("{}: empty CSV (no header line)", path.display()))?,
    );
    let mut rows = Vec::new();
    for (i, l) in lines.enumerate() {
        let r = csv_split(l);
        if r.len() != header.len() {
            anyhow::bail!(
                "{}:{}: {} fields, the header has {}",
                path.display(),
                i + 2,
                r.len(),
                header.len()
            );
        }
        rows.push(r);
    }
    Ok((header, rows))
}

/// Atomically replaces `path` with what `fill` writes through a buffer, as [`write_atomic`]
/// does with bytes (temp file in the same directory + fsync + rename), so a file of any length
/// is written without holding it in memory.
pub fn write_atomic_with(
    path: &Path,
    fill: impl FnOnce(&mut dyn Write) -> std::io::Result<()>,
) -> anyhow::Result<()> {
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty());
    let dir = dir.unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let seq = TEMP_SEQ.fetch_add(1, Ordering::Relaxed);
    let tmp = dir.join(format!(".{name}.tmp.{}.{seq}", std::process::id()));
    let res = (|| -> std::io::Result<()> {
        let mut w = std::io::BufWriter::with_capacity(1 << 16, File::create(&tmp)?);
        fill(&mut w)?;
        let f = w.into_inner().map_err(|e| e.into_error())?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        if let Ok(d) = File::open(dir) {
            let _ = d.sync_all();
        }
        Ok(())
    })();
    if res.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    res.with_context(|| format!("writing {}", path.display()))
}

/// The process id in the name of a temporary file of [`write_atomic`]
/// (`.<name>.tmp.<pid>.<seq>`), if `name` is one.
fn temp_file_pid(name: &str) -> Option<u32> {
    let rest = name.strip_prefix('.')?;
    let (_, tail) = rest.rsplit_once(".tmp.")?;
    let (pid, seq) = tail.split_once('.')?;
    seq.parse::<u64>().ok()?;
    pid.parse().ok()
}

/// Whether process `pid` exists (a zombie or a process of another user counts).
fn process_exists(pid: u32) -> bool {
    Path::new("/proc").join(pid.to_string()).exists()
}

/// Removes the temporary files that an interrupted [`write_atomic`] left in `dir` (those of
/// processes that no longer run; a live writer's temporaries, this process's included, are
/// kept); returns the paths removed. A missing folder has none. Call it where a folder of
/// atomically written files (a run directory, its checkpoints, a prediction folder) is opened
/// for writing.
pub fn remove_stale_temps(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let rd = match std::fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("reading {}", dir.display())),
    };
    let mut removed = Vec::new();
    for entry in rd {
        let entry = entry.with_context(|| format!("reading {}", dir.display()))?;
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(temp_file_pid) else {
            continue;
        };
        if pid == std::process::id() || process_exists(pid) || !entry.path().is_file() {
            continue;
        }
        let path = entry.path();
        match std::fs::remove_file(&path) {
            Ok(()) => removed.push(path),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("removing {}", path.display())),
        }
    }
    removed.sort();
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_round_trip_and_append() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("runs.csv");
        let h: Vec<String> = ["a", "b"].iter().map(|s| s.to_string()).collect();
        append_csv_row(&p, &h, &["1".into(), "x,\"y\"".into()], &["a"]).unwrap();
        append_csv_row(&p, &h, &["2".into(), "z".into()], &["a"]).unwrap();
        let h2: Vec<String> = ["b", "a", "c"].iter().map(|s| s.to_string()).collect();
        let added = append_csv_row(&p, &h2, &["w".into(), "3".into(), "q".into()], &["a"]).unwrap();
        assert_eq!(added, vec!["c".to_string()]);
        let (hh, rows) = read_csv(&p).unwrap();
        assert_eq!(hh, ["a", "b", "c"]);
        assert_eq!(rows[0], vec!["1", "x,\"y\"", ""]);
        assert_eq!(rows[2], vec!["3", "w", "q"]);
        // Same key again: replaced, not doubled; a column it lacks stays empty.
        append_csv_row(&p, &h, &["2".into(), "z2".into()], &["a"]).unwrap();
        let (_, rows) = read_csv(&p).unwrap();
        assert_eq!(rows.len(), 3);
        assert_eq!(rows[2], vec!["2", "z2", ""]);
        // A key of two columns: the same first value with another second one is another row;
        // both the same replaces.
        append_csv_row(&p, &h, &["2".into(), "z3".into()], &["a", "b"]).unwrap();
        append_csv_row(&p, &h, &["2".into(), "z3".into()], &["a", "b"]).unwrap();
        let (_, rows) = read_csv(&p).unwrap();
        assert_eq!(rows.len(), 4);
        assert_eq!((rows[2][1].as_str(), rows[3][1].as_str()), ("z2", "z3"));
    }

    #[test]
    fn atomic_write_replaces() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("x.json");
        write_atomic(&p, b"one").unwrap();
        write_atomic(&p, b"two").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"two");
        assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 1);
    }

    #[test]
    fn concurrent_appends_do_not_lose_rows() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("runs.csv");
        let h: Vec<String> = vec!["i".into()];
        std::thread::scope(|s| {
            for t in 0..4 {
                let (p, h) = (p.clone(), h.clone());
                s.spawn(move || {
                    for i in 0..10 {
                        append_csv_row(&p, &h, &[format!("{t}-{i}")], &["i"]).unwrap();
                    }
                });
            }
        });
        let (_, rows) = read_csv(&p).unwrap();
        assert_eq!(rows.len(), 40);
    }

    #[test]
    fn stale_temporaries_of_dead_processes_are_removed_live_ones_kept() {
        let d = tempfile::tempdir().unwrap();
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let dead = child.id();
        child.wait().unwrap();
        let own = std::process::id();
        let stale = d.path().join(format!(".last.safetensors.tmp.{dead}.3"));
        let live = d.path().join(format!(".last.safetensors.tmp.{own}.4"));
        let other = d.path().join("last.safetensors");
        for p in [&stale, &live, &other] {
            std::fs::write(p, b"x").unwrap();
        }
        std::fs::write(d.path().join(".notes.tmp.x.1"), b"x").unwrap();
        assert_eq!(remove_stale_temps(d.path()).unwrap(), vec![stale.clone()]);
        assert!(!stale.exists() && live.exists() && other.exists());
        assert!(remove_stale_temps(&d.path().join("absent"))
            .unwrap()
            .is_empty());
    }

    #[test]
    fn streamed_atomic_write_replaces_the_file() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("a.txt");
        write_atomic(&p, b"old").unwrap();
        write_atomic_with(&p, |w| w.write_all(b"new")).unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"new");
        let e = write_atomic_with(&p, |_| Err(std::io::Error::other("fill failed"))).unwrap_err();
        assert!(format!("{e:#}").contains("a.txt"), "{e:#}");
        assert_eq!(std::fs::read(&p).unwrap(), b"new");
        let names: Vec<_> = std::fs::read_dir(d.path()).unwrap().collect();
        assert_eq!(names.len(), 1);
    }
}
