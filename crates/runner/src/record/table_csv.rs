//! A result table's CSV file (`results/<experiment>.csv`): rows merged into it by key and
//! placed by column name, the file rewritten atomically under its lock.

use std::path::Path;

use anyhow::Context;

use super::atomic_io::{csv_line, fields_by_name, lock_csv, read_csv, write_atomic};

/// Writes `rows` (under `header`) into the table CSV at `path`, keyed by (`row`, `profile`,
/// `overrides`): a row of the same name, profile and command-line overrides is replaced where
/// it stands, any other is appended, and the others stay (a run with `--set` never replaces
/// the row as the experiment file defines it; rows written before the `overrides` column count
/// as having none). Values are placed by column name; a column the
/// file lacks is appended to its header (earlier rows get empty cells). The file is rewritten
/// atomically under the lock `<file>.csv.lock`, so concurrent tables never lose a row. A file
/// without a `row` or `profile` column is refused, naming it.
pub fn upsert_rows(path: &Path, header: &[String], rows: &[Vec<String>]) -> anyhow::Result<()> {
    let lock = lock_csv(path)?;
    let exists = path
        .try_exists()
        .with_context(|| format!("reading {}", path.display()))?;
    let (mut file_header, mut file_rows) = if exists {
        read_csv(path)?
    } else {
        (header.to_vec(), Vec::new())
    };
    let column = |h: &[String], c: &str| {
        h.iter().position(|x| x == c).with_context(|| {
            format!(
                "{}: no `{c}` column (table rows are keyed by row and profile)",
                path.display()
            )
        })
    };
    let (row_at, profile_at) = (
        column(&file_header, "row")?,
        column(&file_header, "profile")?,
    );
    for h in header {
        if !file_header.contains(h) {
            file_header.push(h.clone());
            for r in &mut file_rows {
                r.push(String::new());
            }
        }
    }
    // A file written before the `overrides` column: its rows had none recorded (empty).
    let overrides_at = file_header.iter().position(|x| x == "overrides");
    for row in rows {
        let fields = fields_by_name(header, row, &file_header);
        let same = |r: &Vec<String>| {
            r[row_at] == fields[row_at]
                && r[profile_at] == fields[profile_at]
                && overrides_at.is_none_or(|o| r[o] == fields[o])
        };
        match file_rows.iter().position(same) {
            Some(i) => {
                let mut j = 0;
                file_rows.retain(|r| {
                    j += 1;
                    j - 1 <= i || !same(r)
                });
                file_rows[i] = fields;
            }
            None => file_rows.push(fields),
        }
    }
    let mut text = csv_line(&file_header) + "\n";
    for r in &file_rows {
        text.push_str(&csv_line(r));
        text.push('\n');
    }
    write_atomic(path, text.as_bytes())?;
    drop(lock);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The file's rows as (row, profile, au.f1).
    fn rows(path: &Path) -> Vec<(String, String, String)> {
        let (h, r) = read_csv(path).unwrap();
        let at = |c: &str| h.iter().position(|x| x == c).unwrap();
        r.iter()
            .map(|r| {
                (
                    r[at("row")].clone(),
                    r[at("profile")].clone(),
                    r[at("au.f1")].clone(),
                )
            })
            .collect()
    }

    #[test]
    fn table_rows_merge_by_row_profile_and_overrides() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("results/table1.csv");
        let h = |cols: &[&str]| cols.iter().map(|c| c.to_string()).collect::<Vec<_>>();
        let r = |cols: &[&str]| cols.iter().map(|c| c.to_string()).collect::<Vec<_>>();
        let header = h(&["row", "profile", "au.f1"]);
        upsert_rows(
            &path,
            &header,
            &[
                r(&["resnet50", "paper", "0.4"]),
                r(&["senet", "paper", "0.5"]),
            ],
        )
        .unwrap();
        // A demo run of the same row: beside the paper row, not over it.
        upsert_rows(&path, &header, &[r(&["resnet50", "demo", "0.9"])]).unwrap();
        let t = |a: &str, b: &str, c: &str| (a.to_string(), b.to_string(), c.to_string());
        assert_eq!(
            rows(&path),
            [
                t("resnet50", "paper", "0.4"),
                t("senet", "paper", "0.5"),
                t("resnet50", "demo", "0.9"),
            ]
        );
        // A rerun of a (row, profile) replaces its line where it stands; a header in another
        // order with a new column is matched by name, earlier rows empty in the new column.
        let header2 = h(&["profile", "au.f1", "row", "expr.f1"]);
        upsert_rows(&path, &header2, &[r(&["paper", "0.45", "resnet50", "0.3"])]).unwrap();
        assert_eq!(
            rows(&path),
            [
                t("resnet50", "paper", "0.45"),
                t("senet", "paper", "0.5"),
                t("resnet50", "demo", "0.9"),
            ]
        );
        let (h2, r2) = read_csv(&path).unwrap();
        assert_eq!(h2, ["row", "profile", "au.f1", "expr.f1"]);
        assert_eq!(r2[0][3], "0.3");
        assert_eq!((r2[1][3].as_str(), r2[2][3].as_str()), ("", ""));
        // A run of the row with command-line overrides goes beside the row as the file
        // defines it (rows written without the column count as having none); its rerun
        // replaces its own line.
        let header3 = h(&["row", "profile", "overrides", "au.f1"]);
        let quick = r(&["resnet50", "paper", "training.stages.0.epochs=1", "0.1"]);
        upsert_rows(&path, &header3, std::slice::from_ref(&quick)).unwrap();
        upsert_rows(&path, &header3, std::slice::from_ref(&quick)).unwrap();
        let mut expected = vec![
            t("resnet50", "paper", "0.45"),
            t("senet", "paper", "0.5"),
            t("resnet50", "demo", "0.9"),
            t("resnet50", "paper", "0.1"),
        ];
        assert_eq!(rows(&path), expected);
        upsert_rows(&path, &header3, &[r(&["resnet50", "paper", "", "0.46"])]).unwrap();
        expected[0] = t("resnet50", "paper", "0.46");
        assert_eq!(rows(&path), expected);
        // A file that cannot be keyed is refused, naming it, and left as it was.
        let other = d.path().join("other.csv");
        std::fs::write(&other, "row,au.f1\nresnet50,0.4\n").unwrap();
        let e = upsert_rows(&other, &header, &[r(&["resnet50", "demo", "0.9"])])
            .unwrap_err()
            .to_string();
        assert!(e.contains("other.csv") && e.contains("`profile`"), "{e}");
        assert_eq!(
            std::fs::read_to_string(&other).unwrap(),
            "row,au.f1\nresnet50,0.4\n"
        );
    }
}
