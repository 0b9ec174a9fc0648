//! `metrics.csv` of a run: one row per evaluation, keyed by step, every value under the column
//! of its own name.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use anyhow::{bail, Context};
use mtanet_affwild2::annotation::split_lines;
use mtanet_metrics::Report;

use crate::record::atomic_io::{csv_line, csv_split, repeated_column, write_atomic};

/// The columns every row starts with, before the report's metrics.
const LEAD: [&str; 3] = ["step", "stage", "epoch"];

/// `metrics.csv`: one row per evaluation, rewritten atomically (rows after `keep_until_step`
/// from an interrupted attempt are dropped on resume).
///
/// Values are written under their column by name. A report with a metric the file has no
/// column for (a newer binary resuming the run) adds the column at
/// the end of the header, with empty cells in earlier rows; a column the report lacks gets an
/// empty cell in its row. Both are logged once per column.
pub struct MetricsCsv {
    path: PathBuf,
    header: Vec<String>,
    /// (step, fields in `header` order).
    rows: Vec<(u64, Vec<String>)>,
    /// Columns already logged as added or left empty.
    noted: BTreeSet<String>,
}

impl MetricsCsv {
    /// Opens `path`, keeping the rows of steps up to `keep_until_step` (none for `None`). A missing or empty
    /// file starts empty; a file that cannot be read, whose header does not start with
    /// `step,stage,epoch` or repeats a column, or with a row of another field count, a step
    /// that is not a number or a step written twice is an error naming the file and line.
    pub fn open(path: PathBuf, keep_until_step: Option<u64>) -> anyhow::Result<Self> {
        let mut out = Self {
            path,
            header: Vec::new(),
            rows: Vec::new(),
            noted: BTreeSet::new(),
        };
        let text = match std::fs::read_to_string(&out.path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
            Err(e) => return Err(e).with_context(|| format!("reading {}", out.path.display())),
        };
        let p = out.path.display();
        let mut lines = split_lines(&text)
            .enumerate()
            .map(|(i, l)| (i + 1, l))
            .filter(|(_, l)| !l.trim().is_empty());
        let Some((line, header)) = lines.next() else {
            return Ok(out);
        };
        let header = csv_split(header);
        if header.len() < LEAD.len() || header[..LEAD.len()] != LEAD {
            bail!(
                "{p}:{line}: the header starts with `{}`, expected `{}`",
                header
                    .iter()
                    .take(LEAD.len())
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(","),
                LEAD.join(",")
            );
        }
        if let Some(dup) = repeated_column(&header) {
            bail!("{p}:{line}: column `{dup}` appears twice in the header");
        }
        let mut steps: BTreeMap<u64, usize> = BTreeMap::new();
        for (line, l) in lines {
            let row = csv_split(l);
            if row.len() != header.len() {
                bail!(
                    "{p}:{line}: {} fields, the header has {}",
                    row.len(),
                    header.len()
                );
            }
            let step: u64 = row[0].trim().parse().map_err(|_| {
                anyhow::anyhow!(
                    "{p}:{line}: field `step`: `{}` is not a step number",
                    row[0]
                )
            })?;
            if let Some(first) = steps.insert(step, line) {
                bail!("{p}:{line}: step {step} appears again (first on line {first})");
            }
            if keep_until_step.is_some_and(|k| step <= k) {
                out.rows.push((step, row));
            }
        }
        out.header = header;
        Ok(out)
    }

    /// Records (or replaces) the evaluation at `step` and rewrites the file.
    pub fn push(
        &mut self,
        step: u64,
        stage: &str,
        epoch: usize,
        report: &Report,
    ) -> anyhow::Result<()> {
        let mut values: Vec<(String, String)> = vec![
            ("step".into(), step.to_string()),
            ("stage".into(), stage.to_string()),
            ("epoch".into(), epoch.to_string()),
        ];
        values.extend(
            report
                .scalars()
                .into_iter()
                .map(|(k, v)| (k, format!("{v:.6}"))),
        );
        let mut by_name: BTreeMap<&str, &str> = BTreeMap::new();
        for (k, v) in &values {
            if by_name.insert(k, v).is_some() {
                bail!(
                    "{}: the report names metric `{k}` twice",
                    self.path.display()
                );
            }
        }
        if self.header.is_empty() {
            self.header = values.iter().map(|(k, _)| k.clone()).collect();
        } else {
            let added: Vec<String> = values
                .iter()
                .map(|(k, _)| k)
                .filter(|k| !self.header.contains(k))
                .cloned()
                .collect();
            if !added.is_empty() {
                tracing::warn!(
                    "{}: new column(s) {} (earlier rows leave them empty)",
                    self.path.display(),
                    added.join(", ")
                );
                self.noted.extend(added.iter().cloned());
                for (_, r) in &mut self.rows {
                    r.extend(std::iter::repeat_n(String::new(), added.len()));
                }
                self.header.extend(added);
            }
            let missing: Vec<&String> = self
                .header
                .iter()
                .filter(|h| !by_name.contains_key(h.as_str()) && !self.noted.contains(*h))
                .collect();
            if !missing.is_empty() {
                tracing::warn!(
                    "{}: the evaluation at step {step} has no {} (left empty)",
                    self.path.display(),
                    missing
                        .iter()
                        .map(|s| s.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                );
                let missing: Vec<String> = missing.into_iter().cloned().collect();
                self.noted.extend(missing);
            }
        }
        let row: Vec<String> = self
            .header
            .iter()
            .map(|h| {
                by_name
                    .get(h.as_str())
                    .copied()
                    .unwrap_or_default()
                    .to_string()
            })
            .collect();
        self.rows.retain(|(s, _)| *s != step);
        self.rows.push((step, row));
        let mut text = csv_line(&self.header);
        text.push('\n');
        for (_, r) in &self.rows {
            text.push_str(&csv_line(r));
            text.push('\n');
        }
        write_atomic(&self.path, text.as_bytes())
    }

    /// The step of the last row written, if any.
    pub fn last_step(&self) -> Option<u64> {
        self.rows.last().map(|r| r.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::atomic_io::read_csv;
    use mtanet_metrics::{AuReport, ExprReport, TunedAu, VaReport};

    /// A report with the given CCCs and AU F1; tuned AU figures when `tuned` is given.
    fn report(ccc_v: f64, au_f1: f64, tuned: Option<f64>) -> Report {
        Report {
            va: Some(VaReport {
                ccc_valence: ccc_v,
                ccc_arousal: 0.25,
                score: (ccc_v + 0.25) / 2.0,
                frames: 10,
            }),
            au: Some(AuReport {
                f1: au_f1,
                accuracy: 0.75,
                score: 0.5,
                per_au_f1: vec![au_f1],
                frames: 10,
                tuned: tuned.map(|f1| TunedAu {
                    thresholds: vec![0.3],
                    f1,
                    accuracy: 0.8,
                    score: 0.6,
                    per_au_f1: vec![f1],
                }),
            }),
            expr: Some(ExprReport {
                f1: 0.125,
                accuracy: 0.375,
                score: 0.2,
                per_class_f1: vec![0.125],
                confusion: vec![vec![1]],
                frames: 10,
            }),
        }
    }

    /// The file's rows as column -> value maps.
    fn rows_by_name(path: &std::path::Path) -> Vec<BTreeMap<String, String>> {
        let (h, rows) = read_csv(path).unwrap();
        rows.into_iter()
            .map(|r| h.iter().cloned().zip(r).collect())
            .collect()
    }

    #[test]
    fn a_later_report_with_other_metrics_puts_each_value_under_its_own_column() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("metrics.csv");
        let mut m = MetricsCsv::open(path.clone(), None).unwrap();
        m.push(3, "adam", 1, &report(0.5, 0.25, None)).unwrap();
        // A later report with three more metrics, between the AU and EXPR ones.
        let mut m = MetricsCsv::open(path.clone(), Some(3)).unwrap();
        m.push(6, "adam", 2, &report(0.625, 0.375, Some(0.875)))
            .unwrap();
        let rows = rows_by_name(&path);
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0]["step"], "3");
        assert_eq!(rows[0]["au.f1"], "0.250000");
        assert_eq!(rows[0]["expr.f1"], "0.125000");
        assert_eq!(rows[0]["au.f1_tuned"], "");
        assert_eq!(rows[1]["step"], "6");
        assert_eq!(rows[1]["va.ccc_valence"], "0.625000");
        assert_eq!(rows[1]["au.f1"], "0.375000");
        assert_eq!(rows[1]["au.f1_tuned"], "0.875000");
        assert_eq!(rows[1]["au.accuracy_tuned"], "0.800000");
        assert_eq!(rows[1]["expr.f1"], "0.125000");
        assert_eq!(rows[1]["expr.accuracy"], "0.375000");
        // Tuning off again: the tuned columns stay, empty in that row; the rest by name.
        m.push(9, "sgd", 1, &report(0.75, 0.5, None)).unwrap();
        let rows = rows_by_name(&path);
        assert_eq!(rows[2]["au.f1_tuned"], "");
        assert_eq!(rows[2]["au.f1"], "0.500000");
        assert_eq!(rows[2]["expr.accuracy"], "0.375000");
        assert_eq!(rows[2]["stage"], "sgd");
        assert_eq!(rows[1]["au.f1_tuned"], "0.875000");
    }

    #[test]
    fn resume_keeps_rows_up_to_the_step_and_replaces_a_step_written_again() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("metrics.csv");
        let mut m = MetricsCsv::open(path.clone(), None).unwrap();
        for (step, v) in [(3, 0.125), (6, 0.25), (9, 0.375)] {
            m.push(step, "adam", 1, &report(v, 0.5, None)).unwrap();
        }
        let mut m = MetricsCsv::open(path.clone(), Some(6)).unwrap();
        assert_eq!(m.last_step(), Some(6));
        m.push(6, "adam", 1, &report(0.875, 0.5, None)).unwrap();
        let rows = rows_by_name(&path);
        let got: Vec<(&str, &str)> = rows
            .iter()
            .map(|r| (r["step"].as_str(), r["va.ccc_valence"].as_str()))
            .collect();
        assert_eq!(got, [("3", "0.125000"), ("6", "0.875000")]);
    }

    #[test]
    fn an_unreadable_file_is_an_error_naming_file_and_line_and_is_left_alone() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("metrics.csv");
        let good = "step,stage,epoch,au.f1\n3,adam,1,0.5\n";
        let cases = [
            (
                format!("{good}\n6,adam,2\n"),
                ":4:",
                "3 fields, the header has 4",
            ),
            (
                format!("{good}x6,adam,2,0.6\n"),
                ":3:",
                "`x6` is not a step number",
            ),
            (
                format!("{good}3,adam,1,0.6\n"),
                ":3:",
                "step 3 appears again",
            ),
            (
                "stage,step,epoch\n".into(),
                ":1:",
                "expected `step,stage,epoch`",
            ),
            ("step,stage,epoch,a,a\n".into(), ":1:", "`a` appears twice"),
        ];
        for (text, line, what) in cases {
            std::fs::write(&path, &text).unwrap();
            let e = match MetricsCsv::open(path.clone(), Some(100)) {
                Ok(_) => panic!("opened {text:?}"),
                Err(e) => format!("{e:#}"),
            };
            let want = format!("{}{line}", path.display());
            assert!(e.contains(&want) && e.contains(what), "{e}");
            assert_eq!(std::fs::read_to_string(&path).unwrap(), text);
        }
        // Missing and empty files start empty.
        std::fs::remove_file(&path).unwrap();
        assert_eq!(
            MetricsCsv::open(path.clone(), None).unwrap().last_step(),
            None
        );
        std::fs::write(&path, "").unwrap();
        assert_eq!(
            MetricsCsv::open(path.clone(), None).unwrap().last_step(),
            None
        );
        // A directory where the file should be cannot be read: named.
        let dir = d.path().join("dir.csv");
        std::fs::create_dir(&dir).unwrap();
        let e = format!("{:#}", MetricsCsv::open(dir.clone(), None).err().unwrap());
        assert!(e.contains(&dir.display().to_string()), "{e}");
    }
}
