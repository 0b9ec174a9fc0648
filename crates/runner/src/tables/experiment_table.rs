//! The table of an experiment file: every row trained (one run per seed), the figures each
//! run selected, the paper's values and our deltas where the paper has the row (like with
//! like: F1 against F1, composite against composite), a constant predictor for scale, and
//! mean +- std and a 95% interval over seeds. `mtanet table1` is this table for Table I;
//! `mtanet run FILE` for any experiment file. Written to `<results>/<experiment>.csv`.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::Context;
use mtanet_affwild2::{DatasetIndex, IndexOptions, Split};
use mtanet_metrics::{Accumulator, Report};

use crate::build::data::{data_root, subsample};
use crate::experiment::profile::{choose_profile, load_experiment, resolve_run};
use crate::experiment::{Config, Criterion, ExperimentFile, Override, PaperMetric, PaperValues};
use crate::record::summary_line::short_report;
use crate::record::table_csv;
use crate::tables::seed_summary::{mean_std_ci, Summary};
use crate::training::{self, RunContext};

/// Options of `mtanet table1`, `mtanet run` and `mtanet ablate`.
#[derive(Debug, Clone, Default)]
pub struct TableOptions {
    /// Experiment file; `None` = `experiments/table1.yaml` if present, else the embedded copy.
    pub config: Option<PathBuf>,
    /// `demo` or `paper`; `None` = `paper` when `AFFWILD2_ROOT` is set, else `demo`.
    pub profile: Option<String>,
    /// Seeds per row (seed, seed+1, ...).
    pub seeds: usize,
    /// Only these rows (all when empty).
    pub rows: Vec<String>,
    /// `--set` overrides applied to every row.
    pub overrides: Vec<Override>,
    /// Hide progress bars.
    pub quiet: bool,
    /// Write `<results>/<experiment>.csv` (false for a single ablation row).
    pub write_table: bool,
}

/// The metrics Table I reports, in column order: (key, header).
pub const TABLE_METRICS: &[(&str, &str)] = &[
    ("va.ccc_valence", "CCC-V"),
    ("va.ccc_arousal", "CCC-A"),
    ("au.f1", "AU F1"),
    ("au.accuracy", "AU acc"),
    ("au.score", "AU 0.5F1+0.5acc"),
    ("au.f1_tuned", "AU F1 (tuned thr.)"),
    ("expr.f1", "EXPR F1"),
    ("expr.accuracy", "EXPR acc"),
    ("expr.score", "EXPR 0.67F1+0.33acc"),
];

/// `Table I` for the table1 experiment, else the experiment's name.
fn table_title(file: &ExperimentFile, experiment: &str) -> String {
    if experiment == "table1" {
        "Table I".into()
    } else {
        format!("{experiment} ({})", file.path)
    }
}

/// The best constant predictor's validation report: the training mean for VA (CCC 0), "every
/// AU present" (the constant with the highest F1), and the training set's majority expression.
pub fn constant_predictor(config: &Config) -> anyhow::Result<Report> {
    let root = data_root(config, true)?;
    let index = DatasetIndex::load(&root, &IndexOptions::default())
        .with_context(|| format!("indexing {}", root.display()))?;
    let (n_au, n_expr) = (index.vocab.au_names.len(), index.vocab.expr_names.len());
    let train_s = subsample(index.samples(Split::Train), config.data.max_train_frames);
    let val_s = subsample(index.samples(Split::Validation), config.data.max_val_frames);
    let (mut va_sum, mut va_n) = ([0f64; 2], 0f64);
    let mut hist = vec![0usize; n_expr];
    for s in &train_s {
        if let Some(v) = s.va {
            va_sum[0] += v[0] as f64;
            va_sum[1] += v[1] as f64;
            va_n += 1.0;
        }
        if let Some(e) = s.expr {
            if let Some(h) = hist.get_mut(e as usize) {
                *h += 1;
            }
        }
    }
    let va_mean = [
        (va_sum[0] / va_n.max(1.0)) as f32,
        (va_sum[1] / va_n.max(1.0)) as f32,
    ];
    let majority =
        crate::step::eval_step::argmax(&hist.iter().map(|&h| h as f32).collect::<Vec<_>>());
    let mut acc = Accumulator::new(n_au, n_expr);
    let ones = vec![1.0f32; n_au];
    for s in &val_s {
        if let Some(v) = s.va {
            acc.va.push(va_mean, v);
        }
        if let Some(a) = &s.au {
            acc.au.push(&ones, a);
        }
        if let Some(e) = s.expr {
            acc.expr.push(majority, e as usize);
        }
    }
    let scoring = crate::step::scoring_for(index.layout, &index.vocab);
    Ok(crate::step::report_of(&acc, scoring, false))
}

/// The options of `mtanet ablate KEY=VALUE...`: `backbone=X` (or `model.backbone=X`) selects
/// the Table I row of that backbone when there is one; every other override applies to it.
/// Without a matching row, the first row runs with all the overrides.
pub fn ablate_options(
    overrides: Vec<Override>,
    profile: Option<String>,
    seeds: usize,
    quiet: bool,
) -> anyhow::Result<TableOptions> {
    let rows: Vec<String> = overrides
        .iter()
        .filter(|o| o.key == ["model", "backbone"])
        .filter_map(|o| o.value.as_str().map(str::to_string))
        .collect();
    let file = load_experiment(None)?;
    let rows = if rows.iter().all(|r| file.rows.iter().any(|x| &x.name == r)) {
        rows
    } else {
        Vec::new()
    };
    let overrides = if rows.is_empty() {
        overrides
    } else {
        overrides
            .into_iter()
            .filter(|o| o.key != ["model", "backbone"])
            .collect()
    };
    Ok(TableOptions {
        config: None,
        profile,
        seeds,
        rows: if rows.is_empty() {
            vec![file.rows[0].name.clone()]
        } else {
            rows
        },
        overrides,
        quiet,
        write_table: false,
    })
}

/// One finished row: its spec, and the reports of its seeds.
struct RowResult {
    name: String,
    label: String,
    paper: Option<PaperValues>,
    /// The keys the command line changed from the experiment file, as `key=value`.
    overrides: Vec<String>,
    /// (report, run directory, training img/s) of each seed.
    runs: Vec<(Report, PathBuf, f64)>,
    /// (seed, which evaluation the report comes from) of each run.
    selected_from: Vec<(u64, String)>,
}

impl RowResult {
    fn metric(&self, key: &str) -> Summary {
        let xs: Vec<f64> = self
            .runs
            .iter()
            .filter_map(|(r, _, _)| r.scalars().into_iter().find(|(k, _)| k == key).map(|x| x.1))
            .collect();
        mean_std_ci(&xs)
    }
}

/// Runs the table (or one row) and prints it; returns the markdown.
pub fn run(opts: &TableOptions) -> anyhow::Result<String> {
    let file = load_experiment(opts.config.as_deref())?;
    let (profile, why) = choose_profile(opts.profile.as_deref());
    let name = opts
        .config
        .as_deref()
        .and_then(|p| p.file_stem())
        .map_or("table1".into(), |s| s.to_string_lossy().into_owned());
    println!("{name}: {why}");
    let rows: Vec<_> = file
        .rows
        .iter()
        .filter(|r| opts.rows.is_empty() || opts.rows.contains(&r.name))
        .collect();
    if rows.is_empty() {
        anyhow::bail!(
            "{}: no rows match {:?} (rows: {})",
            file.path,
            opts.rows,
            file.rows
                .iter()
                .map(|r| r.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    // Check every row's config before training anything. A row whose own keys an override
    // changed is not that row: it runs under another name, without the paper's values.
    let mut configs = Vec::new();
    let mut identities = Vec::new();
    for r in &rows {
        // The one rule `train --row` follows too (`resolve_run`).
        let run = resolve_run(&file, Some(&profile), Some(&r.name), &opts.overrides)?;
        let base = run.config;
        let changed = run.changed_row_keys;
        let overrides = run.overrides;
        identities.push(if changed.is_empty() {
            (r.name.clone(), run.row, run.paper, overrides)
        } else {
            let set: Vec<String> = changed
                .iter()
                .map(|k| {
                    let v = serde_yaml::to_value(&base)
                        .ok()
                        .and_then(|v| k.split('.').try_fold(v, |n, p| n.get(p).cloned()))
                        .map(|v| one_line(&v))
                        .unwrap_or_default();
                    format!("{k}={v}")
                })
                .collect();
            (
                format!("{} with {}", r.name, set.join(" ")),
                None,
                None,
                overrides,
            )
        });
        configs.push(base);
    }
    let seeds = opts.seeds.max(1);
    let mut results = Vec::new();
    // Rows left out of the table (a seed's table figure NaN or infinite), with why.
    let mut refused = Vec::new();
    'rows: for ((r, base), (display, row_name, paper, overrides)) in
        rows.iter().zip(&configs).zip(identities)
    {
        let mut runs = Vec::new();
        let mut selected_from = Vec::new();
        for i in 0..seeds {
            let mut cfg = base.clone();
            cfg.seed = base.seed + i as u64;
            let ctx = RunContext {
                profile: Some(profile.clone()),
                row: row_name.clone(),
                paper: paper.clone(),
                overrides: overrides.clone(),
                quiet: opts.quiet,
                ..Default::default()
            };
            let out = training::run(&cfg, &ctx)?;
            if !out.finished {
                anyhow::bail!(
                    "row {} interrupted; resume it with `mtanet train --resume {}`",
                    display,
                    out.run_dir.display()
                );
            }
            let report = out.report.context("a finished run has a report")?;
            let bad = non_finite_table_metrics(&report);
            if !bad.is_empty() {
                // The table averages every seed or none: this row is left out, the other rows
                // still train and are written, and the command fails at the end naming it.
                let why = format!(
                    "row {} seed {} ({}): {}",
                    display,
                    cfg.seed,
                    out.run_dir.display(),
                    bad.iter()
                        .map(|(k, v)| format!("{k} is {v}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                );
                eprintln!("{why}; the row is left out of the table");
                refused.push(why);
                continue 'rows;
            }
            let skipped = match out.skipped.len() {
                0 => String::new(),
                n => format!(", {n} unreadable crops skipped"),
            };
            println!(
                "{} seed {}: {}  ({:.0} s, {:.1} img/s train{skipped}) -> {}",
                display,
                cfg.seed,
                short_report(&report),
                out.wall_s,
                out.train_img_s,
                out.run_dir.display()
            );
            runs.push((report, out.run_dir, out.train_img_s));
            selected_from.push((cfg.seed, out.selected_from));
        }
        results.push(RowResult {
            name: display.clone(),
            label: r.paper_label.clone().unwrap_or_else(|| display.clone()),
            paper,
            overrides,
            runs,
            selected_from,
        });
    }
    let constant = constant_predictor(&configs[0]).ok();
    let title = table_title(&file, &configs[0].experiment);
    let md = markdown(
        &results,
        constant.as_ref(),
        &title,
        &profile,
        seeds,
        configs[0].selection.criterion,
    );
    println!("\n{md}");
    if opts.write_table {
        let path = configs[0]
            .results_dir
            .join(format!("{}.csv", configs[0].experiment));
        let (header, rows) = table_csv(&results, &profile, seeds);
        // Upsert by (row, profile, overrides): rows of other rows, profiles and overrides stay.
        table_csv::upsert_rows(&path, &header, &rows)?;
        println!("wrote {}", path.display());
    }
    if profile == "demo" {
        print_demo_check(&results, constant.as_ref());
    }
    if !refused.is_empty() {
        anyhow::bail!(
            "{} row(s) left out of the table (a table figure NaN or infinite; the table averages \
             every seed or none): {}",
            refused.len(),
            refused.join("; ")
        );
    }
    Ok(md)
}

fn fmt_summary(s: &Summary, seeds: usize) -> String {
    match s.mean {
        None => "-".into(),
        Some(m) if seeds > 1 => format!("{m:.3} ± {:.3}", s.std.unwrap_or(0.0)),
        Some(m) => format!("{m:.3}"),
    }
}

/// The [`TABLE_METRICS`] of `report` that are NaN or infinite, with their values: the table
/// refuses such a run rather than average the other seeds under a `seeds` count that includes
/// it.
fn non_finite_table_metrics(report: &Report) -> Vec<(String, f64)> {
    report
        .scalars()
        .into_iter()
        .filter(|(k, v)| !v.is_finite() && TABLE_METRICS.iter().any(|(m, _)| m == k))
        .collect()
}

/// The table as markdown: ours (the selected figures), the paper's, and deltas (ours of the
/// same kind as each paper figure minus the paper's).
fn markdown(
    rows: &[RowResult],
    constant: Option<&Report>,
    title: &str,
    profile: &str,
    seeds: usize,
    criterion: Criterion,
) -> String {
    let mut s = String::new();
    s.push_str(&format!(
        "{title} ({profile} profile, {seeds} seed{}; validation set; figures of the {})\n\n",
        if seeds > 1 { "s" } else { "" },
        match criterion {
            Criterion::Last => "last evaluation",
            Criterion::Total => "evaluation with the best total of the VA, AU and EXPR scores",
            Criterion::PerTask => "best evaluation per task",
        }
    ));
    s.push_str("| Row | CCC-V | CCC-A | AU F1 | AU acc | AU score | AU F1 tuned | EXPR F1 | EXPR acc | EXPR score | paper V / A / AU / EXPR | Δ V / A / AU / EXPR |\n");
    s.push_str("|---|---|---|---|---|---|---|---|---|---|---|---|\n");
    for r in rows {
        let cells: Vec<String> = TABLE_METRICS
            .iter()
            .map(|(k, _)| fmt_summary(&r.metric(k), seeds))
            .collect();
        let (paper, delta) = match &r.paper {
            Some(p) => {
                let kind = |m: PaperMetric| match m {
                    PaperMetric::F1 => "",
                    PaperMetric::Composite => " (c)",
                };
                let f = p.figures();
                (
                    format!(
                        "{} / {} / {}{} / {}{}",
                        f[0],
                        f[1],
                        f[2],
                        kind(p.au_metric),
                        f[3],
                        kind(p.expr_metric)
                    ),
                    deltas(r, p)
                        .iter()
                        .map(|d| d.map(|d| format!("{d:+.3}")).unwrap_or("-".into()))
                        .collect::<Vec<_>>()
                        .join(" / "),
                )
            }
            None => ("-".into(), "-".into()),
        };
        s.push_str(&format!(
            "| {} | {} | {paper} | {delta} |\n",
            r.name,
            cells.join(" | ")
        ));
    }
    if let Some(c) = constant {
        let sc: BTreeMap<String, f64> = c.scalars().into_iter().collect();
        let cells: Vec<String> = TABLE_METRICS
            .iter()
            .map(|(k, _)| sc.get(*k).map(|v| format!("{v:.3}")).unwrap_or("-".into()))
            .collect();
        s.push_str(&format!(
            "| constant predictor | {} | - | - |\n",
            cells.join(" | ")
        ));
    }
    for r in rows.iter().filter(|r| !r.overrides.is_empty()) {
        s.push_str(&format!(
            "\n{}: overrides of the experiment file: {}",
            r.name,
            r.overrides.join(" ")
        ));
    }
    if rows.iter().any(|r| !r.overrides.is_empty()) {
        s.push('\n');
    }
    if rows.iter().any(|r| r.paper.is_some()) {
        s.push_str("\nPaper rows: ");
        s.push_str(
            &rows
                .iter()
                .filter(|r| r.paper.is_some())
                .map(|r| format!("{} = {}", r.name, r.label))
                .collect::<Vec<_>>()
                .join("; "),
        );
        s.push_str(
            ".\nPaper AU / EXPR figures are F1 unless marked (c), an ABAW 2020 composite \
             (AU 0.5 F1 + 0.5 acc, EXPR 0.67 F1 + 0.33 acc); each delta compares our figure of the \
             same kind.\n",
        );
    }
    if criterion != Criterion::Last {
        for r in rows {
            for (seed, from) in &r.selected_from {
                s.push_str(&format!("{} seed {seed}: {from}\n", r.name));
            }
        }
    }
    s
}

/// An override's value on one line, for a row's display name (a table cell and a CSV field):
/// a scalar as YAML writes it, a list or mapping as JSON (YAML would write it over lines).
fn one_line(v: &serde_yaml::Value) -> String {
    let text = match v {
        serde_yaml::Value::Sequence(_) | serde_yaml::Value::Mapping(_) => {
            serde_json::to_string(v).unwrap_or_default()
        }
        _ => serde_yaml::to_string(v).unwrap_or_default(),
    };
    text.trim().replace(['\n', '\r'], " ")
}

/// Ours minus the paper's, per paper figure, comparing like with like.
fn deltas(r: &RowResult, p: &PaperValues) -> [Option<f64>; 4] {
    let ours = p.ours(|k| r.metric(k).mean);
    let figures = p.figures();
    std::array::from_fn(|i| ours[i].map(|o| o - figures[i]))
}

/// The table's CSV header and rows.
fn table_csv(rows: &[RowResult], profile: &str, seeds: usize) -> (Vec<String>, Vec<Vec<String>>) {
    let mut header = vec![
        "row".to_string(),
        "profile".into(),
        "overrides".into(),
        "seeds".into(),
        "paper_label".into(),
    ];
    for (k, _) in TABLE_METRICS {
        header.push(k.to_string());
        header.push(format!("{k}_std"));
        header.push(format!("{k}_ci95"));
    }
    for p in ["valence", "arousal", "au", "expr"] {
        header.push(format!("paper.{p}"));
    }
    header.push("paper.au_metric".into());
    header.push("paper.expr_metric".into());
    for p in ["valence", "arousal", "au", "expr"] {
        header.push(format!("delta.{p}"));
    }
    header.push("train_img_s".into());
    header.push("run_dirs".into());
    let mut out = Vec::new();
    let num = |v: Option<f64>| v.map(|x| format!("{x:.6}")).unwrap_or_default();
    for r in rows {
        let mut f = vec![
            r.name.clone(),
            profile.to_string(),
            r.overrides.join(" "),
            seeds.to_string(),
            r.label.clone(),
        ];
        for (k, _) in TABLE_METRICS {
            let s = r.metric(k);
            f.push(num(s.mean));
            f.push(num(s.std));
            f.push(num(s.ci95));
        }
        match &r.paper {
            Some(p) => {
                f.extend(p.figures().iter().map(|v| v.to_string()));
                f.push(format!("{:?}", p.au_metric).to_lowercase());
                f.push(format!("{:?}", p.expr_metric).to_lowercase());
                f.extend(deltas(r, p).iter().map(|d| num(*d)));
            }
            None => f.extend(std::iter::repeat_n(String::new(), 10)),
        }
        let img_s: f64 = r.runs.iter().map(|x| x.2).sum::<f64>() / r.runs.len().max(1) as f64;
        f.push(format!("{img_s:.2}"));
        f.push(
            r.runs
                .iter()
                .map(|x| x.1.display().to_string())
                .collect::<Vec<_>>()
                .join(";"),
        );
        out.push(f);
    }
    (header, out)
}

/// The demo's promise: every row clearly beats the constant predictor.
fn print_demo_check(rows: &[RowResult], constant: Option<&Report>) {
    let targets = [
        ("va.ccc_valence", 0.5),
        ("va.ccc_arousal", 0.5),
        ("au.f1", 0.5),
        ("expr.f1", 0.5),
    ];
    let c: BTreeMap<String, f64> = constant
        .map(|c| c.scalars().into_iter().collect())
        .unwrap_or_default();
    for r in rows {
        let mut fails = Vec::new();
        for (k, t) in targets {
            let m = r.metric(k).mean.unwrap_or(f64::NAN);
            // NaN (no value) fails both checks.
            if m.is_nan() || m < t {
                fails.push(format!("{k} {m:.3} < {t}"));
            }
            if let Some(cv) = c.get(k) {
                if m.is_nan() || m <= *cv {
                    fails.push(format!("{k} {m:.3} <= constant {cv:.3}"));
                }
            }
        }
        if fails.is_empty() {
            println!("demo check {}: learned (all of CCC-V, CCC-A, AU F1, EXPR F1 >= 0.5 and above the constant predictor)", r.name);
        } else {
            println!("demo check {}: BELOW TARGET: {}", r.name, fails.join("; "));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A list or mapping override (a row's `training.stages`) names the row on one line, so the
    /// table's markdown row and CSV field stay one line; scalars read as before.
    #[test]
    fn override_values_name_a_row_on_one_line() {
        let stages: serde_yaml::Value =
            serde_yaml::from_str("- {name: adam_sum, lr: 0.01}\n- {name: sgd, lr: 0.0001}\n")
                .unwrap();
        let text = one_line(&stages);
        assert!(!text.contains('\n'), "{text}");
        assert_eq!(
            text,
            r#"[{"name":"adam_sum","lr":0.01},{"name":"sgd","lr":0.0001}]"#
        );
        let scalar: serde_yaml::Value = serde_yaml::from_str("senet50_vggface2").unwrap();
        assert_eq!(one_line(&scalar), "senet50_vggface2");
        assert_eq!(one_line(&serde_yaml::Value::from(0.001)), "0.001");
    }
    use mtanet_metrics::VaReport;

    /// A row of two runs, seeds 3 and 4, selected by the best total.
    fn row_of_seeds_3_and_4() -> RowResult {
        RowResult {
            name: "r".into(),
            label: "r".into(),
            paper: None,
            overrides: Vec::new(),
            runs: vec![
                (Report::default(), PathBuf::from("a"), 1.0),
                (Report::default(), PathBuf::from("b"), 1.0),
            ],
            selected_from: vec![(3, "epoch 2".into()), (4, "epoch 5".into())],
        }
    }

    #[test]
    fn the_selection_note_names_each_runs_own_seed() {
        let md = markdown(
            &[row_of_seeds_3_and_4()],
            None,
            "T",
            "demo",
            2,
            Criterion::Total,
        );
        assert!(
            md.contains("r seed 3: epoch 2\nr seed 4: epoch 5\n"),
            "{md}"
        );
        assert!(!md.contains("seed 0") && !md.contains("seed 1:"), "{md}");
    }

    #[test]
    fn non_finite_table_metrics_are_named() {
        let mut report = Report {
            va: Some(VaReport {
                ccc_valence: f64::NAN,
                ccc_arousal: 0.5,
                score: f64::NAN,
                frames: 3,
            }),
            ..Report::default()
        };
        // va.score is not a table metric; CCC-V is.
        let bad = non_finite_table_metrics(&report);
        assert_eq!(bad.len(), 1);
        assert_eq!(bad[0].0, "va.ccc_valence");
        assert!(bad[0].1.is_nan());
        report.va.as_mut().unwrap().ccc_valence = 0.25;
        assert!(non_finite_table_metrics(&report).is_empty());
    }
}
