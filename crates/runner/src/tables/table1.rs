//! `mtanet table1`: every row of Table I, with the paper's values, our deltas, a constant
//! predictor for scale, and mean +- std and a 95% interval over seeds.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::Context;
use mtanet_affwild2::{DatasetIndex, IndexOptions, Split};
use mtanet_metrics::{Accumulator, Report};

use crate::build::data::{data_root, subsample};
use crate::experiment::profile::{choose_profile, env_overrides, load_experiment};
use crate::experiment::{Config, Override};
use crate::record::atomic_io::{csv_field, write_atomic};
use crate::record::summary_line::short_report;
use crate::tables::seed_summary::{mean_std_ci, Summary};
use crate::training::{self, RunContext};

/// Options of `mtanet table1` / `mtanet ablate`.
#[derive(Debug, Clone, Default)]
pub struct Table1Options {
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
    /// Write `results/table1.csv` (false for a single ablation row).
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
) -> anyhow::Result<Table1Options> {
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
    Ok(Table1Options {
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
    paper: Option<[f64; 4]>,
    runs: Vec<(Report, PathBuf, f64)>,
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
pub fn run(opts: &Table1Options) -> anyhow::Result<String> {
    let file = load_experiment(opts.config.as_deref())?;
    let (profile, why) = choose_profile(opts.profile.as_deref());
    println!("table1: {why}");
    let overrides = env_overrides(&profile, &opts.overrides);
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
    // Check every row's config before training anything.
    let mut configs = Vec::new();
    for r in &rows {
        let base = file.resolve(Some(&profile), Some(&r.name), &overrides)?;
        configs.push(base);
    }
    let seeds = opts.seeds.max(1);
    let mut results = Vec::new();
    for (r, base) in rows.iter().zip(&configs) {
        let paper = r
            .paper
            .as_ref()
            .map(|p| [p.valence, p.arousal, p.au, p.expr]);
        let mut runs = Vec::new();
        for i in 0..seeds {
            let mut cfg = base.clone();
            cfg.seed = base.seed + i as u64;
            let ctx = RunContext {
                profile: Some(profile.clone()),
                row: Some(r.name.clone()),
                paper,
                quiet: opts.quiet,
                ..Default::default()
            };
            let out = training::run(&cfg, &ctx)?;
            if !out.finished {
                anyhow::bail!(
                    "row {} interrupted; resume it with `mtanet train --resume {}`",
                    r.name,
                    out.run_dir.display()
                );
            }
            let report = out.report.context("a finished run has a report")?;
            println!(
                "{} seed {}: {}  ({:.0} s, {:.1} img/s train) -> {}",
                r.name,
                cfg.seed,
                short_report(&report),
                out.wall_s,
                out.train_img_s,
                out.run_dir.display()
            );
            runs.push((report, out.run_dir, out.train_img_s));
        }
        results.push(RowResult {
            name: r.name.clone(),
            label: r.paper_label.clone().unwrap_or_else(|| r.name.clone()),
            paper,
            runs,
        });
    }
    let constant = constant_predictor(&configs[0]).ok();
    let md = markdown(&results, constant.as_ref(), &profile, seeds);
    println!("\n{md}");
    if opts.write_table {
        let path = configs[0].results_dir.join("table1.csv");
        write_atomic(&path, table_csv(&results, &profile, seeds).as_bytes())?;
        println!("wrote {}", path.display());
    }
    if profile == "demo" {
        print_demo_check(&results, constant.as_ref());
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

/// Table I as markdown: ours, the paper's, deltas (ours - paper; AU and EXPR against our F1).
fn markdown(rows: &[RowResult], constant: Option<&Report>, profile: &str, seeds: usize) -> String {
    let mut s = String::new();
    s.push_str(&format!(
        "Table I ({profile} profile, {seeds} seed{}; validation set)\n\n",
        if seeds > 1 { "s" } else { "" }
    ));
    s.push_str("| Backbone | CCC-V | CCC-A | AU F1 | AU acc | AU score | AU F1 tuned | EXPR F1 | EXPR acc | EXPR score | paper V / A / AU / EXPR | Δ V / A / AU / EXPR |\n");
    s.push_str("|---|---|---|---|---|---|---|---|---|---|---|---|\n");
    for r in rows {
        let cells: Vec<String> = TABLE_METRICS
            .iter()
            .map(|(k, _)| fmt_summary(&r.metric(k), seeds))
            .collect();
        let ours = [
            r.metric("va.ccc_valence").mean,
            r.metric("va.ccc_arousal").mean,
            r.metric("au.f1").mean,
            r.metric("expr.f1").mean,
        ];
        let (paper, delta) = match r.paper {
            Some(p) => (
                format!("{} / {} / {} / {}", p[0], p[1], p[2], p[3]),
                (0..4)
                    .map(|i| {
                        ours[i]
                            .map(|o| format!("{:+.3}", o - p[i]))
                            .unwrap_or("-".into())
                    })
                    .collect::<Vec<_>>()
                    .join(" / "),
            ),
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
    s.push_str("\nPaper rows: ");
    s.push_str(
        &rows
            .iter()
            .map(|r| format!("{} = {}", r.name, r.label))
            .collect::<Vec<_>>()
            .join("; "),
    );
    s.push_str(".\nThe paper's AU/EXPR numbers are F1 for MTANet rows and ABAW composites for the baseline; deltas compare against our F1.\n");
    s
}

fn table_csv(rows: &[RowResult], profile: &str, seeds: usize) -> String {
    let mut header = vec![
        "row".to_string(),
        "profile".into(),
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
    for p in ["valence", "arousal", "au", "expr"] {
        header.push(format!("delta.{p}"));
    }
    header.push("train_img_s".into());
    header.push("run_dirs".into());
    let mut out = header
        .iter()
        .map(|h| csv_field(h))
        .collect::<Vec<_>>()
        .join(",")
        + "\n";
    let num = |v: Option<f64>| v.map(|x| format!("{x:.6}")).unwrap_or_default();
    for r in rows {
        let mut f = vec![
            r.name.clone(),
            profile.to_string(),
            seeds.to_string(),
            r.label.clone(),
        ];
        for (k, _) in TABLE_METRICS {
            let s = r.metric(k);
            f.push(num(s.mean));
            f.push(num(s.std));
            f.push(num(s.ci95));
        }
        let ours = [
            r.metric("va.ccc_valence").mean,
            r.metric("va.ccc_arousal").mean,
            r.metric("au.f1").mean,
            r.metric("expr.f1").mean,
        ];
        for i in 0..4 {
            f.push(r.paper.map(|p| p[i].to_string()).unwrap_or_default());
        }
        for i in 0..4 {
            f.push(match (r.paper, ours[i]) {
                (Some(p), Some(o)) => format!("{:.6}", o - p[i]),
                _ => String::new(),
            });
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
        out.push_str(&f.iter().map(|x| csv_field(x)).collect::<Vec<_>>().join(","));
        out.push('\n');
    }
    out
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
