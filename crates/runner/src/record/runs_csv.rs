//! `results/runs.csv`: one row per run (identity, metrics, paper values and deltas, cost),
//! shared by every experiment and safe under concurrent runs.

use std::collections::HashMap;
use std::path::Path;

use mtanet_metrics::Report;

use crate::experiment::{Config, PaperValues};
use crate::record::atomic_io::append_csv_row;
use crate::record::run_dir::git_commit;

/// The metrics every `runs.csv` row carries (keys of [`Report::scalars`]), in column order.
pub const RUN_METRICS: &[&str] = &[
    "va.ccc_valence",
    "va.ccc_arousal",
    "va.score",
    "au.f1",
    "au.accuracy",
    "au.score",
    "au.f1_tuned",
    "expr.f1",
    "expr.accuracy",
    "expr.score",
];

/// The `runs.csv` columns: identity, the selected evaluation's [`RUN_METRICS`], how it was
/// selected, the last evaluation's metrics (`last.*`), paper values and deltas (ours of the
/// same kind as the paper's figure minus the paper's), cost.
pub fn runs_header() -> Vec<String> {
    const IDENTITY: &[&str] = &[
        "run_id",
        "experiment",
        "profile",
        "row",
        "overrides",
        "backbone",
        "seed",
        "git_commit",
        "status",
    ];
    const SELECTION: &[&str] = &["selection", "selected_from", "last_step"];
    const TAIL: &[&str] = &[
        "paper.valence",
        "paper.arousal",
        "paper.au",
        "paper.expr",
        "paper.au_metric",
        "paper.expr_metric",
        "delta.valence",
        "delta.arousal",
        "delta.au",
        "delta.expr",
        "steps",
        "skipped_frames",
        "wall_s",
        "train_img_s",
        "run_dir",
    ];
    IDENTITY
        .iter()
        .map(|s| s.to_string())
        .chain(RUN_METRICS.iter().map(|s| s.to_string()))
        .chain(SELECTION.iter().map(|s| s.to_string()))
        .chain(RUN_METRICS.iter().map(|m| format!("last.{m}")))
        .chain(TAIL.iter().map(|s| s.to_string()))
        .collect()
}

/// One run's row of `results/runs.csv`.
pub struct RunRow<'a> {
    /// The resolved configuration the run trained.
    pub config: &'a Config,
    /// Profile name, if the run came from one.
    pub profile: Option<&'a str>,
    /// Table row name, if the run is a row of an experiment file.
    pub row: Option<&'a str>,
    /// The paper's values for that row.
    pub paper: Option<&'a PaperValues>,
    /// The keys the command line changed from the experiment file, as `key=value`.
    pub overrides: &'a [String],
    /// Run id.
    pub run_id: &'a str,
    /// Run directory.
    pub run_dir: &'a Path,
    /// `finished` or `failed`.
    pub status: &'a str,
    /// The selected validation report, if one was made.
    pub report: Option<&'a Report>,
    /// Which evaluation(s) `report` comes from.
    pub selected_from: Option<&'a str>,
    /// The last validation report.
    pub last: Option<&'a Report>,
    /// The step of the last evaluation.
    pub last_step: u64,
    /// Unreadable crops skipped (`data.on_bad_frame: skip`).
    pub skipped_frames: usize,
    /// Optimizer steps taken.
    pub steps: u64,
    /// Wall time of the invocation in seconds.
    pub wall_s: f64,
    /// Training throughput, images per second.
    pub train_img_s: f64,
}

/// Appends (or replaces, by run id and experiment: two experiments' runs started in the same
/// second with the same row name and seed share an id, in their own directories) the run's row
/// in `results/runs.csv` (locked, atomic).
pub fn append_run_row(r: &RunRow) -> anyhow::Result<()> {
    let config = r.config;
    let scalars_of = |rep: Option<&Report>| -> HashMap<String, f64> {
        rep.map(|x| x.scalars().into_iter().collect())
            .unwrap_or_default()
    };
    let (selected, last) = (scalars_of(r.report), scalars_of(r.last));
    let get =
        |m: &HashMap<String, f64>, k: &str| m.get(k).map(|v| format!("{v:.6}")).unwrap_or_default();
    let mut row: Vec<String> = vec![
        r.run_id.into(),
        config.experiment.clone(),
        r.profile.unwrap_or_default().to_string(),
        r.row.unwrap_or_default().to_string(),
        r.overrides.join(" "),
        config.model.backbone.to_string(),
        config.seed.to_string(),
        git_commit(),
        r.status.into(),
    ];
    for k in RUN_METRICS {
        row.push(get(&selected, k));
    }
    row.push(config.selection.criterion.to_string());
    row.push(r.selected_from.unwrap_or_default().to_string());
    row.push(r.last_step.to_string());
    for k in RUN_METRICS {
        row.push(get(&last, k));
    }
    match r.paper {
        Some(p) => {
            for v in p.figures() {
                row.push(format!("{v}"));
            }
            row.push(format!("{:?}", p.au_metric).to_lowercase());
            row.push(format!("{:?}", p.expr_metric).to_lowercase());
            let ours = p.ours(|k| selected.get(k).copied());
            for (v, o) in p.figures().iter().zip(ours) {
                row.push(o.map(|o| format!("{:.6}", o - v)).unwrap_or_default());
            }
        }
        None => row.extend(std::iter::repeat_n(String::new(), 10)),
    }
    row.push(r.steps.to_string());
    row.push(r.skipped_frames.to_string());
    row.push(format!("{:.1}", r.wall_s));
    row.push(format!("{:.2}", r.train_img_s));
    row.push(r.run_dir.display().to_string());
    append_csv_row(
        &config.results_dir.join("runs.csv"),
        &runs_header(),
        &row,
        &["run_id", "experiment"],
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::atomic_io::read_csv;

    /// Two experiments' runs with the same id (started in the same second, same row name and
    /// seed) keep a row each; the same run written again (a resume) replaces its row.
    #[test]
    fn rows_are_one_per_run_id_and_experiment() {
        let d = tempfile::tempdir().unwrap();
        let config_of = |experiment: &str| Config {
            experiment: experiment.into(),
            results_dir: d.path().to_path_buf(),
            ..Default::default()
        };
        let write = |config: &Config, status: &str| {
            let dir = d.path().join(&config.experiment).join("run-1");
            append_run_row(&RunRow {
                config,
                profile: None,
                row: Some("resnet50"),
                paper: None,
                overrides: &[],
                run_id: "run-1",
                run_dir: &dir,
                status,
                report: None,
                selected_from: None,
                last: None,
                last_step: 0,
                skipped_frames: 0,
                steps: 1,
                wall_s: 1.0,
                train_img_s: 1.0,
            })
            .unwrap();
        };
        let (table1, heads) = (config_of("table1"), config_of("heads"));
        write(&table1, "failed");
        write(&heads, "finished");
        write(&table1, "finished");
        let (header, rows) = read_csv(&d.path().join("runs.csv")).unwrap();
        let col = |name: &str| header.iter().position(|h| h == name).unwrap();
        let got: Vec<(&str, &str)> = rows
            .iter()
            .map(|r| (r[col("experiment")].as_str(), r[col("status")].as_str()))
            .collect();
        assert_eq!(got, [("heads", "finished"), ("table1", "finished")]);
    }
}
