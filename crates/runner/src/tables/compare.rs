//! `mtanet compare A.csv B.csv ...`: result rows side by side with deltas per metric.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use mtanet_affwild2::annotation::split_lines;

use crate::record::atomic_io::{csv_split, repeated_column};

/// A CSV row with its 1-based line number.
type NumberedRow = (usize, Vec<String>);

/// Reads a result CSV as a spreadsheet may have saved it: a UTF-8 byte-order mark, CRLF or
/// CR line ends, and blank or all-empty rows are accepted; a row with another field count
/// than the header is an error naming the file and line. Rows come with their 1-based line.
fn read_table(path: &Path) -> anyhow::Result<(Vec<String>, Vec<NumberedRow>)> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let text = text.strip_prefix('\u{feff}').unwrap_or(&text);
    let mut lines = split_lines(text)
        .enumerate()
        .map(|(i, l)| (i + 1, csv_split(l)))
        .filter(|(_, fields)| fields.iter().any(|f| !f.trim().is_empty()));
    let (_, header) = lines
        .next()
        .with_context(|| format!("{}: empty CSV (no header line)", path.display()))?;
    let header: Vec<String> = header.into_iter().map(|h| h.trim().to_string()).collect();
    let mut rows = Vec::new();
    for (line, r) in lines {
        if r.len() != header.len() {
            bail!(
                "{}:{line}: {} fields, the header has {}",
                path.display(),
                r.len(),
                header.len()
            );
        }
        rows.push((line, r));
    }
    Ok((header, rows))
}

/// The columns that identify a result, in the order a key lists them: a file is keyed by those
/// of them it has (`runs.csv`: all five; a table CSV: `profile`, `row` and `overrides`). A file
/// with a `row` column but no `overrides` (written before it) is keyed as if every row had
/// none, so results with command-line overrides pair only with results of the same overrides.
const IDENTITY: &[&str] = &["experiment", "profile", "row", "overrides", "seed"];

/// A row's identity: (column, value) for each identifying column of its file.
type Key = Vec<(String, String)>;

/// One file's finished rows by identity, in file order, and what was skipped or repeated.
struct Loaded {
    /// The columns that identify its rows.
    key_cols: Vec<String>,
    /// (key, column -> value), one per key (the last line of a repeated key).
    rows: Vec<(Key, BTreeMap<String, String>)>,
    /// Lines about skipped and repeated rows, for the top of the output.
    notes: Vec<String>,
}

/// `resnet50`, or `resnet50 (experiment table1, profile demo, seed 0)`.
fn key_label(key: &Key) -> String {
    let name = key
        .iter()
        .find(|(c, _)| c == "row")
        .or_else(|| key.iter().find(|(c, _)| c == "run_id"))
        .map(|(c, v)| {
            if c == "run_id" {
                format!("run {v}")
            } else {
                v.clone()
            }
        })
        .unwrap_or_default();
    let rest: Vec<String> = key
        .iter()
        .filter(|(c, v)| c != "row" && c != "run_id" && !(c == "overrides" && v.is_empty()))
        .map(|(c, v)| format!("{c} {v}"))
        .collect();
    if rest.is_empty() {
        name
    } else {
        format!("{name} ({})", rest.join(", "))
    }
}

/// Lines as `line 3` or `lines 3, 5`.
fn lines_text(lines: &[usize]) -> String {
    let l: Vec<String> = lines.iter().map(usize::to_string).collect();
    format!(
        "line{} {}",
        if l.len() > 1 { "s" } else { "" },
        l.join(", ")
    )
}

/// Reads a result CSV keyed by its identifying columns ([`IDENTITY`] where present; a row
/// with an empty `row`, an ablation run under another name, by its `run_id`). Rows whose
/// `status` is not `finished` are skipped and counted; a key on several lines is compared at
/// its last line (the most recent run), and said so.
fn load(path: &Path) -> anyhow::Result<Loaded> {
    let (header, rows) = read_table(path)?;
    let p = path.display();
    let has = |c: &str| header.iter().any(|h| h == c);
    if !has("row") && !has("run_id") {
        bail!("{p}: no `row` or `run_id` column");
    }
    if let Some(dup) = repeated_column(&header) {
        bail!("{p}:1: column `{dup}` appears twice in the header");
    }
    let mut key_cols: Vec<String> = IDENTITY
        .iter()
        .filter(|c| has(c) || (**c == "overrides" && has("row")))
        .map(|c| c.to_string())
        .collect();
    if !has("row") {
        key_cols.push("run_id".into());
    }
    let mut skipped: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    let mut by_key: BTreeMap<Key, Vec<usize>> = BTreeMap::new();
    let mut out: Vec<(Key, BTreeMap<String, String>)> = Vec::new();
    for (line, r) in rows {
        let m: BTreeMap<String, String> = header
            .iter()
            .cloned()
            .zip(r.into_iter().map(|v| v.trim().to_string()))
            .collect();
        if let Some(status) = m.get("status").filter(|s| *s != "finished") {
            skipped.entry(status.clone()).or_default().push(line);
            continue;
        }
        let mut key: Key = Vec::new();
        for c in &key_cols {
            let v = m.get(c).cloned().unwrap_or_default();
            if c == "row" && v.is_empty() {
                match m.get("run_id").filter(|id| !id.is_empty()) {
                    Some(id) => key.push(("run_id".into(), id.clone())),
                    None => bail!("{p}:{line}: empty `row`"),
                }
            } else {
                key.push((c.clone(), v));
            }
        }
        let lines = by_key.entry(key.clone()).or_default();
        lines.push(line);
        if lines.len() > 1 {
            out.retain(|(k, _)| *k != key);
        }
        out.push((key, m));
    }
    let mut notes = Vec::new();
    if !skipped.is_empty() {
        let n: usize = skipped.values().map(Vec::len).sum();
        let how: Vec<String> = skipped
            .iter()
            .map(|(status, lines)| {
                let status = if status.is_empty() { "empty" } else { status };
                format!("{status}: {}", lines_text(lines))
            })
            .collect();
        notes.push(format!(
            "{p}: {n} row{} skipped, status not `finished` ({})",
            if n > 1 { "s" } else { "" },
            how.join("; ")
        ));
    }
    for (key, lines) in by_key.iter().filter(|(_, l)| l.len() > 1) {
        notes.push(format!(
            "{p}: {} is on {}: compared line {}, the last",
            key_label(key),
            lines_text(lines),
            lines[lines.len() - 1]
        ));
    }
    Ok(Loaded {
        key_cols,
        rows: out,
        notes,
    })
}

/// Renders the comparison as text: first the notes (rows skipped because their status is not
/// `finished`, keys on several lines) and warnings (files of other profiles, rows over other
/// numbers of seeds), then a markdown table per result. Rows are paired by the identifying
/// columns their files have (of experiment, profile, row, overrides and seed), so runs of
/// other experiments, profiles, overrides or seeds are never set side by side; files
/// identified by other columns are refused.
pub fn compare(paths: &[PathBuf]) -> anyhow::Result<String> {
    if paths.len() < 2 {
        anyhow::bail!("compare needs at least two CSV files");
    }
    let files: Vec<Loaded> = paths.iter().map(|p| load(p)).collect::<Result<_, _>>()?;
    let names: Vec<String> = paths.iter().map(|p| p.display().to_string()).collect();
    for (name, f) in names.iter().zip(&files).skip(1) {
        if f.key_cols != files[0].key_cols {
            bail!(
                "{} identifies its rows by ({}), {name} by ({}): compare files of one kind \
                 (runs.csv with runs.csv, table CSVs with table CSVs)",
                names[0],
                files[0].key_cols.join(", "),
                f.key_cols.join(", ")
            );
        }
    }
    let mut s = String::new();
    for f in &files {
        for n in &f.notes {
            s.push_str(&format!("note: {n}\n"));
        }
    }
    if files[0].key_cols.iter().any(|c| c == "profile") {
        let profiles: Vec<BTreeSet<&str>> = files
            .iter()
            .map(|f| f.rows.iter().map(|(_, m)| m["profile"].as_str()).collect())
            .collect();
        if profiles.windows(2).any(|w| w[0] != w[1]) {
            let each: Vec<String> = names
                .iter()
                .zip(&profiles)
                .map(|(n, p)| {
                    let p: Vec<&str> = p
                        .iter()
                        .map(|p| if p.is_empty() { "none" } else { p })
                        .collect();
                    format!("{n}: {}", p.join(", "))
                })
                .collect();
            s.push_str(&format!(
                "warning: the files hold results of other profiles ({}); rows are paired only \
                 within one profile\n",
                each.join("; ")
            ));
        }
    }
    let lookup: Vec<BTreeMap<&Key, &BTreeMap<String, String>>> = files
        .iter()
        .map(|f| f.rows.iter().map(|(k, m)| (k, m)).collect())
        .collect();
    let mut keys: Vec<&Key> = Vec::new();
    for f in &files {
        for (k, _) in &f.rows {
            if !keys.contains(&k) {
                keys.push(k);
            }
        }
    }
    for key in &keys {
        let seeds: Vec<(&String, &str)> = names
            .iter()
            .zip(&lookup)
            .filter_map(|(n, l)| Some((n, l.get(key)?.get("seeds")?.as_str())))
            .collect();
        if seeds.windows(2).any(|w| w[0].1 != w[1].1) {
            let each: Vec<String> = seeds.iter().map(|(n, v)| format!("{n}: {v}")).collect();
            s.push_str(&format!(
                "warning: {}: other numbers of seeds ({}); each figure is the mean over its \
                 file's seeds\n",
                key_label(key),
                each.join("; ")
            ));
        }
    }
    for key in keys {
        s.push_str(&format!(
            "\n### {}\n\n| metric | {} | Δ (last - first) | noise |\n",
            key_label(key),
            names.join(" | ")
        ));
        s.push_str(&format!("|---|{}---|---|\n", "---|".repeat(names.len())));
        let seeds: Vec<Option<usize>> = parsed_column(&lookup, key, "seeds");
        for m in crate::record::runs_csv::RUN_METRICS
            .iter()
            .chain(&["train_img_s"])
        {
            let vals: Vec<Option<f64>> = parsed_column(&lookup, key, m);
            if vals.iter().all(Option::is_none) {
                continue;
            }
            let stds: Vec<Option<f64>> = parsed_column(&lookup, key, &format!("{m}_std"));
            let cells: Vec<String> = vals
                .iter()
                .zip(&stds)
                .map(|(v, sd)| match (v, sd) {
                    (Some(v), Some(sd)) => format!("{v:.4} ± {sd:.4}"),
                    (Some(v), None) => format!("{v:.4}"),
                    _ => "-".into(),
                })
                .collect();
            let (first, last) = (vals[0], vals[vals.len() - 1]);
            let delta = match (first, last) {
                (Some(a), Some(b)) => format!("{:+.4}", b - a),
                _ => "-".into(),
            };
            let spread = |i: usize| stds[i].zip(seeds[i]).filter(|&(_, n)| n >= 2);
            let noise = match (first, last, spread(0), spread(stds.len() - 1)) {
                (Some(a), Some(b), Some(sa), Some(sb)) => {
                    let band = welch_band95(sa, sb);
                    if (b - a).abs() <= band {
                        format!("within noise (±{band:.4})")
                    } else {
                        format!("beyond noise (±{band:.4})")
                    }
                }
                _ => "no seed spread".into(),
            };
            s.push_str(&format!(
                "| {m} | {} | {delta} | {noise} |\n",
                cells.join(" | ")
            ));
        }
    }
    Ok(s)
}

/// Each file's value of `column` in its row of `key`, parsed; `None` where the file has no such
/// row or column, or the value does not parse (values were trimmed when read).
fn parsed_column<T: std::str::FromStr>(
    lookup: &[BTreeMap<&Key, &BTreeMap<String, String>>],
    key: &Key,
    column: &str,
) -> Vec<Option<T>> {
    lookup
        .iter()
        .map(|f| f.get(key)?.get(column)?.parse().ok())
        .collect()
}

/// Half-width of the 95% interval of a difference of two means, each given as (sample
/// standard deviation, number of seeds >= 2): Welch's, `t(0.975, df) * sqrt(sa^2/na + sb^2/nb)`
/// with the Welch-Satterthwaite `df` rounded down.
fn welch_band95((sa, na): (f64, usize), (sb, nb): (f64, usize)) -> f64 {
    let (va, vb) = (sa * sa / na as f64, sb * sb / nb as f64);
    let se2 = va + vb;
    if se2 == 0.0 {
        return 0.0;
    }
    let df = se2 * se2 / (va * va / (na - 1) as f64 + vb * vb / (nb - 1) as f64);
    super::seed_summary::t975(df.floor().max(1.0) as usize) * se2.sqrt()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Welch's interval: with 5 seeds a side and equal spreads s, df = 8 and the band is
    /// t(0.975, 8) * s * sqrt(2/5) (scipy: 2.306004); with unequal counts the df falls between.
    #[test]
    fn the_noise_band_is_welchs_interval_of_the_difference_of_means() {
        let band = welch_band95((0.01, 5), (0.01, 5));
        assert!(
            (band - 2.306004 * 0.01 * (0.4f64).sqrt()).abs() < 1e-6,
            "{band}"
        );
        // sa = 0.02 over 3 seeds, sb = 0.01 over 10: df = 2.31 -> 2, t = 4.302653 (scipy).
        let se = (0.02f64 * 0.02 / 3.0 + 0.01 * 0.01 / 10.0).sqrt();
        let band = welch_band95((0.02, 3), (0.01, 10));
        assert!((band - 4.302653 * se).abs() < 1e-5, "{band}");
        assert_eq!(welch_band95((0.0, 2), (0.0, 2)), 0.0);
    }

    #[test]
    fn compares_rows_with_noise_marks() {
        let d = tempfile::tempdir().unwrap();
        let a = d.path().join("a.csv");
        let b = d.path().join("b.csv");
        std::fs::write(
            &a,
            "row,seeds,au.f1,au.f1_std,expr.f1\nr1,3,0.50,0.01,0.3\n",
        )
        .unwrap();
        std::fs::write(
            &b,
            "row,seeds,au.f1,au.f1_std,expr.f1\nr1,3,0.51,0.01,0.4\n",
        )
        .unwrap();
        let s = compare(&[a.clone(), b]).unwrap();
        assert!(
            s.contains("| au.f1 | 0.5000 ± 0.0100 | 0.5100 ± 0.0100 | +0.0100 | within noise"),
            "{s}"
        );
        assert!(
            s.contains("| expr.f1 | 0.3000 | 0.4000 | +0.1000 | no seed spread |"),
            "{s}"
        );
        let e = compare(&[a]).unwrap_err().to_string();
        assert!(e.contains("two"));
        let bad = d.path().join("bad.csv");
        std::fs::write(&bad, "x,y\n1,2\n").unwrap();
        let e = compare(&[bad.clone(), bad.clone()])
            .unwrap_err()
            .to_string();
        assert!(e.contains("bad.csv"), "{e}");
        std::fs::write(&bad, "row,au.f1,au.f1\nr1,0.5,0.6\n").unwrap();
        let e = compare(&[bad.clone(), bad]).unwrap_err().to_string();
        assert!(e.contains("bad.csv:1: column `au.f1` appears twice"), "{e}");
    }

    /// The text of the section headed `### {heading}` (up to the next heading).
    fn section<'a>(s: &'a str, heading: &str) -> &'a str {
        let start = s
            .find(&format!("### {heading}\n"))
            .unwrap_or_else(|| panic!("no section {heading}:\n{s}"));
        let rest = &s[start + 4..];
        &rest[..rest.find("### ").unwrap_or(rest.len())]
    }

    #[test]
    fn runs_pair_by_experiment_profile_row_overrides_and_seed_and_unfinished_runs_are_skipped() {
        let d = tempfile::tempdir().unwrap();
        let a = d.path().join("a.csv");
        let b = d.path().join("b.csv");
        let header = "run_id,experiment,profile,row,seed,status,au.f1\n";
        std::fs::write(
            &a,
            format!(
                "{header}r1,table1,demo,resnet50,0,finished,0.50\n\
                 r2,table1,demo,resnet50,1,finished,0.60\n\
                 r3,heads,demo,resnet50,0,finished,0.70\n\
                 r4,table1,paper,resnet50,0,finished,0.30\n\
                 r5,table1,demo,resnet50,0,failed,0.00\n"
            ),
        )
        .unwrap();
        std::fs::write(
            &b,
            format!(
                "{header}q1,table1,demo,resnet50,0,finished,0.55\n\
                 q2,table1,demo,resnet50,1,finished,0.65\n\
                 q3,table1,demo,resnet50,1,finished,0.68\n\
                 q4,table1,demo,,0,finished,0.90\n"
            ),
        )
        .unwrap();
        let s = compare(&[a.clone(), b.clone()]).unwrap();
        let (an, bn) = (a.display(), b.display());
        let seed0 = section(&s, "resnet50 (experiment table1, profile demo, seed 0)");
        assert!(
            seed0.contains("| au.f1 | 0.5000 | 0.5500 | +0.0500 |"),
            "{s}"
        );
        let seed1 = section(&s, "resnet50 (experiment table1, profile demo, seed 1)");
        assert!(
            seed1.contains("| au.f1 | 0.6000 | 0.6800 | +0.0800 |"),
            "{s}"
        );
        let heads = section(&s, "resnet50 (experiment heads, profile demo, seed 0)");
        assert!(heads.contains("| au.f1 | 0.7000 | - | - |"), "{s}");
        let paper = section(&s, "resnet50 (experiment table1, profile paper, seed 0)");
        assert!(paper.contains("| au.f1 | 0.3000 | - | - |"), "{s}");
        let ablation = section(&s, "run q4 (experiment table1, profile demo, seed 0)");
        assert!(ablation.contains("| au.f1 | - | 0.9000 | - |"), "{s}");
        assert_eq!(s.matches("### ").count(), 5, "{s}");
        assert!(!s.contains("0.0000"), "the failed run was compared: {s}");
        assert!(
            s.contains(&format!(
                "note: {an}: 1 row skipped, status not `finished` (failed: line 6)\n"
            )),
            "{s}"
        );
        assert!(
            s.contains(&format!(
                "note: {bn}: resnet50 (experiment table1, profile demo, seed 1) is on lines 3, \
                 4: compared line 4, the last\n"
            )),
            "{s}"
        );
        assert!(
            s.contains(&format!(
                "warning: the files hold results of other profiles ({an}: demo, paper; {bn}: \
                 demo)"
            )),
            "{s}"
        );
        // The notes come first, before any table.
        assert!(s.find("note: ").unwrap() < s.find("### ").unwrap(), "{s}");

        // A file with the `overrides` column beside one without it: a run without overrides
        // pairs with the older file's run; one with overrides pairs with neither.
        let c = d.path().join("c.csv");
        std::fs::write(
            &c,
            "run_id,experiment,profile,row,overrides,seed,status,au.f1
             c1,table1,demo,resnet50,,0,finished,0.52
             c2,table1,demo,resnet50,data.max_val_frames=500,0,finished,0.99
",
        )
        .unwrap();
        let s = compare(&[a.clone(), c]).unwrap();
        let seed0 = section(&s, "resnet50 (experiment table1, profile demo, seed 0)");
        assert!(
            seed0.contains("| au.f1 | 0.5000 | 0.5200 | +0.0200 |"),
            "{s}"
        );
        let quick = section(
            &s,
            "resnet50 (experiment table1, profile demo, overrides data.max_val_frames=500, seed 0)",
        );
        assert!(quick.contains("| au.f1 | - | 0.9900 | - |"), "{s}");
    }

    #[test]
    fn table_csvs_pair_within_a_profile_and_say_when_seeds_differ() {
        let d = tempfile::tempdir().unwrap();
        let a = d.path().join("a.csv");
        let b = d.path().join("b.csv");
        std::fs::write(
            &a,
            "row,profile,seeds,au.f1,au.f1_std\nresnet50,demo,1,0.5,\nresnet50,paper,3,0.3,0.01\n",
        )
        .unwrap();
        std::fs::write(
            &b,
            "row,profile,seeds,au.f1,au.f1_std\nresnet50,demo,3,0.6,0.02\n",
        )
        .unwrap();
        let s = compare(&[a.clone(), b.clone()]).unwrap();
        let (an, bn) = (a.display(), b.display());
        let demo = section(&s, "resnet50 (profile demo)");
        assert!(
            demo.contains("| au.f1 | 0.5000 | 0.6000 ± 0.0200 | +0.1000 | no seed spread |"),
            "{s}"
        );
        let paper = section(&s, "resnet50 (profile paper)");
        assert!(paper.contains("| au.f1 | 0.3000 ± 0.0100 | - | - |"), "{s}");
        assert!(
            s.contains(&format!(
                "warning: resnet50 (profile demo): other numbers of seeds ({an}: 1; {bn}: 3)"
            )),
            "{s}"
        );
        assert!(
            s.contains("warning: the files hold results of other profiles"),
            "{s}"
        );
        // Same profiles and seeds: no warning.
        std::fs::write(&a, "row,profile,seeds,au.f1\nresnet50,demo,3,0.5\n").unwrap();
        let s = compare(&[a.clone(), b.clone()]).unwrap();
        assert!(!s.contains("warning"), "{s}");
        // A runs.csv beside a table CSV: refused, naming both and their key columns.
        let runs = d.path().join("runs.csv");
        std::fs::write(
            &runs,
            "run_id,experiment,profile,row,seed,status,au.f1\nr1,table1,demo,resnet50,0,finished,0.5\n",
        )
        .unwrap();
        let e = compare(&[runs.clone(), b.clone()]).unwrap_err().to_string();
        assert!(
            e.contains(&format!(
                "{} identifies its rows by (experiment, profile, row, overrides, seed), {bn} by \
                 (profile, row, overrides)",
                runs.display()
            )),
            "{e}"
        );
    }

    #[test]
    fn a_spreadsheet_saved_csv_with_bom_and_crlf_compares() {
        let d = tempfile::tempdir().unwrap();
        let a = d.path().join("a.csv");
        let b = d.path().join("b.csv");
        std::fs::write(&a, "row,au.f1\nr1,0.50\n").unwrap();
        std::fs::write(&b, "\u{feff}row,au.f1\r\nr1,0.60\r\n,\r\n").unwrap();
        let s = compare(&[a.clone(), b.clone()]).unwrap();
        assert!(s.contains("+0.1000"), "{s}");
        std::fs::write(&b, "\u{feff}row,au.f1\rr1,0.60\rr2\r").unwrap();
        let e = compare(&[a, b]).unwrap_err().to_string();
        assert!(e.contains("b.csv:3") && e.contains("1 fields"), "{e}");
    }
}
