//! Run ids and run directories: `results/<experiment>/<run id>/`.
//!
//! A run id reads and sorts by its start time: `20261201-214412-resnet50-s0` (UTC, then the
//! row or backbone, then the seed). Two runs that start in the same second get `-2`, `-3`, ...:
//! the directory is claimed with an exclusive `create_dir`, so concurrent starts never share one.

use std::path::{Path, PathBuf};

use anyhow::Context;

/// A fresh run id for `name` (a row or backbone) and `seed`, stamped with the current UTC time.
pub fn new_run_id(name: &str, seed: u64) -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    format!("{}-{name}-s{seed}", utc_stamp(secs))
}

/// `YYYYMMDD-HHMMSS` of a Unix time in UTC (proleptic Gregorian calendar).
pub fn utc_stamp(unix_secs: u64) -> String {
    let days = (unix_secs / 86_400) as i64;
    let rem = unix_secs % 86_400;
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}{m:02}{d:02}-{:02}{:02}{:02}",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

/// (year, month, day) of a day count since 1970-01-01 (Howard Hinnant's `civil_from_days`).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// Creates a run directory that did not exist before (`base/id`, else `base/id-2`, ...), so
/// two runs started in the same second never share one.
pub fn claim_run_dir(base: &Path, id: &str) -> anyhow::Result<(PathBuf, String)> {
    std::fs::create_dir_all(base)
        .with_context(|| format!("cannot create results directory {}", base.display()))?;
    for n in 1.. {
        let name = if n == 1 {
            id.to_string()
        } else {
            format!("{id}-{n}")
        };
        let dir = base.join(&name);
        match std::fs::create_dir(&dir) {
            Ok(()) => return Ok((dir, name)),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => {
                return Err(e)
                    .with_context(|| format!("cannot create run directory {}", dir.display()))
            }
        }
    }
    unreachable!("the loop returns")
}

/// The commit the binary runs from (`git rev-parse`), or `unknown`.
pub fn git_commit() -> String {
    std::process::Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| "unknown".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Expected stamps from Python's `datetime.fromtimestamp(t, timezone.utc)`.
    #[test]
    fn utc_stamps_match_python_datetime() {
        for (t, want) in [
            (0, "19700101-000000"),
            (1_795_891_738, "20261128-184858"),
            (951_782_400, "20000229-000000"),
            (4_102_444_799, "20991231-235959"),
        ] {
            assert_eq!(utc_stamp(t), want, "{t}");
        }
    }

    #[test]
    fn ids_sort_by_time_and_claims_never_share_a_directory() -> anyhow::Result<()> {
        let id = new_run_id("resnet50", 3);
        assert!(id.ends_with("-resnet50-s3"), "{id}");
        assert_eq!(id.len(), "YYYYMMDD-HHMMSS".len() + "-resnet50-s3".len());
        let dir = tempfile::tempdir()?;
        let (a, na) = claim_run_dir(dir.path(), "x")?;
        let (b, nb) = claim_run_dir(dir.path(), "x")?;
        assert_ne!(a, b);
        assert_eq!((na.as_str(), nb.as_str()), ("x", "x-2"));
        Ok(())
    }
}
