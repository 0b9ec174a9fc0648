//! `results/runs.csv`: one row per run (identity, metrics, paper values and deltas, cost),
//! shared by every experiment and safe under concurrent runs.

use std::collections::HashMap;
use std::path::Path;

use mtanet_metrics::Report;

use crate::experiment::Config;
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

/// The `runs.csv` columns: identity, [`RUN_METRICS`], paper values and deltas, cost.
pub fn runs_header() -> Vec<String> {
    const IDENTITY: &[&str] = &[
        "run_id",
        "experiment",
        "profile",
        "row",
        "backbone",
        "seed",
        "git_commit",
        "status",
    ];
    const TAIL: &[&str] = &[
        "paper.valence",
        "paper.arousal",
        "paper.au",
        "paper.expr",
        "delta.valence",
        "delta.arousal",
        "delta.au",
        "delta.expr",
        "steps",
        "wall_s",
        "train_img_s",
        "run_dir",
    ];
    IDENTITY
        .iter()
        .chain(RUN_METRICS)
        .chain(TAIL)
        .map(|s| s.to_string())
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
    /// The paper's values for that row: (valence, arousal, au, expr).
    pub paper: Option<[f64; 4]>,
    /// Run id.
    pub run_id: &'a str,
    /// Run directory.
    pub run_dir: &'a Path,
    /// `finished` or `failed`.
    pub status: &'a str,
    /// The validation report, if one was made.
    pub report: Option<&'a Report>,
    /// Optimizer steps taken.
    pub steps: u64,
    /// Wall time of the invocation in seconds.
    pub wall_s: f64,
    /// Training throughput, images per second.
    pub train_img_s: f64,
}

/// Appends (or replaces, by run id) the run's row in `results/runs.csv` (locked, atomic).
pub fn append_run_row(r: &RunRow) -> anyhow::Result<()> {
    let config = r.config;
    let scalars: HashMap<String, f64> = r
        .report
        .map(|r| r.scalars().into_iter().collect())
        .unwrap_or_default();
    let get = |k: &str| {
        scalars
            .get(k)
            .map(|v| format!("{v:.6}"))
            .unwrap_or_default()
    };
    let ours = [
        scalars.get("va.ccc_valence"),
        scalars.get("va.ccc_arousal"),
        scalars.get("au.f1"),
        scalars.get("expr.f1"),
    ];
    let mut row: Vec<String> = vec![
        r.run_id.into(),
        config.experiment.clone(),
        r.profile.unwrap_or_default().to_string(),
        r.row.unwrap_or_default().to_string(),
        config.model.backbone.to_string(),
        config.seed.to_string(),
        git_commit(),
        r.status.into(),
    ];
    for k in RUN_METRICS {
        row.push(get(k));
    }
    let paper = r.paper;
    for i in 0..4 {
        row.push(paper.map(|p| format!("{}", p[i])).unwrap_or_default());
    }
    for i in 0..4 {
        row.push(match (paper, ours[i]) {
            (Some(p), Some(o)) => format!("{:.6}", o - p[i]),
            _ => String::new(),
        });
    }
    row.push(r.steps.to_string());
    row.push(format!("{:.1}", r.wall_s));
    row.push(format!("{:.2}", r.train_img_s));
    row.push(r.run_dir.display().to_string());
    append_csv_row(&config.results_dir.join("runs.csv"), &runs_header(), &row)?;
    Ok(())
}
