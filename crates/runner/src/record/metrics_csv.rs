//! `metrics.csv` of a run: one row per evaluation, keyed by step.

use std::path::PathBuf;

use mtanet_metrics::Report;

use crate::record::atomic_io::{csv_field, read_csv, write_atomic};

/// `metrics.csv`: one row per evaluation, rewritten atomically (rows after `keep_until_step`
/// from an interrupted attempt are dropped on resume).
pub struct MetricsCsv {
    path: PathBuf,
    header: Vec<String>,
    rows: Vec<(u64, Vec<String>)>,
}

impl MetricsCsv {
    /// Opens `path`, keeping the rows of steps up to `keep_until_step`.
    pub fn open(path: PathBuf, keep_until_step: u64) -> Self {
        let mut rows = Vec::new();
        let mut header = Vec::new();
        if let Ok((h, r)) = read_csv(&path) {
            header = h;
            for row in r {
                if let Some(step) = row.first().and_then(|s| s.parse::<u64>().ok()) {
                    if step <= keep_until_step {
                        rows.push((step, row));
                    }
                }
            }
        }
        Self { path, header, rows }
    }

    /// Records (or replaces) the evaluation at `step` and rewrites the file.
    pub fn push(
        &mut self,
        step: u64,
        stage: &str,
        epoch: usize,
        report: &Report,
    ) -> anyhow::Result<()> {
        let scalars = report.scalars();
        let mut header = vec!["step".to_string(), "stage".into(), "epoch".into()];
        header.extend(scalars.iter().map(|(k, _)| k.clone()));
        let mut row = vec![step.to_string(), stage.to_string(), epoch.to_string()];
        row.extend(scalars.iter().map(|(_, v)| format!("{v:.6}")));
        if self.header.is_empty() {
            self.header = header;
        }
        self.rows.retain(|(s, _)| *s != step);
        self.rows.push((step, row));
        let mut text = self
            .header
            .iter()
            .map(|h| csv_field(h))
            .collect::<Vec<_>>()
            .join(",");
        text.push('\n');
        for (_, r) in &self.rows {
            text.push_str(&r.iter().map(|f| csv_field(f)).collect::<Vec<_>>().join(","));
            text.push('\n');
        }
        write_atomic(&self.path, text.as_bytes())
    }

    /// The step of the last row written, if any.
    pub fn last_step(&self) -> Option<u64> {
        self.rows.last().map(|r| r.0)
    }
}
