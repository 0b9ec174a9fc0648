//! `mtanet compare A.csv B.csv ...`: result rows side by side with deltas per metric.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use mtanet_affwild2::annotation::split_lines;

use crate::record::atomic_io::csv_split;

/// One file's rows: key (row name, else run id) -> column -> value.
type Rows = BTreeMap<String, BTreeMap<String, String>>;

/// Reads a result CSV as a spreadsheet may have saved it: a UTF-8 byte-order mark, CRLF or
/// CR line ends, and blank or all-empty rows are accepted; a row with another field count
/// than the header is an error naming the file and line.
fn read_table(path: &Path) -> anyhow::Result<(Vec<String>, Vec<Vec<String>>)> {
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
        rows.push(r);
    }
    Ok((header, rows))
}

fn load(path: &Path) -> anyhow::Result<Rows> {
    let (header, rows) = read_table(path)?;
    let key_col = ["row", "run_id"]
        .iter()
        .find_map(|k| header.iter().position(|h| h == k))
        .ok_or_else(|| anyhow::anyhow!("{}: no `row` or `run_id` column", path.display()))?;
    let mut out = Rows::new();
    for r in rows {
        let mut key = r[key_col].clone();
        if key.is_empty() {
            key = r.first().cloned().unwrap_or_default();
        }
        let m: BTreeMap<String, String> = header.iter().cloned().zip(r).collect();
        // runs.csv may hold several runs of a row: keep the last (most recent) one.
        out.insert(key, m);
    }
    Ok(out)
}

/// Renders the comparison as text (markdown table per row key).
pub fn compare(paths: &[PathBuf]) -> anyhow::Result<String> {
    if paths.len() < 2 {
        anyhow::bail!("compare needs at least two CSV files");
    }
    let files: Vec<Rows> = paths.iter().map(|p| load(p)).collect::<Result<_, _>>()?;
    let mut keys: Vec<String> = Vec::new();
    for f in &files {
        for k in f.keys() {
            if !keys.contains(k) {
                keys.push(k.clone());
            }
        }
    }
    let mut s = String::new();
    let names: Vec<String> = paths.iter().map(|p| p.display().to_string()).collect();
    for key in keys {
        s.push_str(&format!(
            "\n### {key}\n\n| metric | {} | Δ (last - first) | noise |\n",
            names.join(" | ")
        ));
        s.push_str(&format!("|---|{}---|---|\n", "---|".repeat(names.len())));
        for m in crate::record::runs_csv::RUN_METRICS
            .iter()
            .chain(&["train_img_s"])
        {
            let vals: Vec<Option<f64>> = files
                .iter()
                .map(|f| {
                    f.get(&key)
                        .and_then(|r| r.get(*m))
                        .and_then(|v| v.parse().ok())
                })
                .collect();
            if vals.iter().all(Option::is_none) {
                continue;
            }
            let stds: Vec<Option<f64>> = files
                .iter()
                .map(|f| {
                    f.get(&key)
                        .and_then(|r| r.get(&format!("{m}_std")))
                        .and_then(|v| v.parse().ok())
                })
                .collect();
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
            let noise = match (first, last, stds[0], stds[stds.len() - 1]) {
                (Some(a), Some(b), Some(sa), Some(sb)) => {
                    let band = 2.0 * (sa * sa + sb * sb).sqrt();
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compares_rows_with_noise_marks() {
        let d = tempfile::tempdir().unwrap();
        let a = d.path().join("a.csv");
        let b = d.path().join("b.csv");
        std::fs::write(&a, "row,au.f1,au.f1_std,expr.f1\nr1,0.50,0.01,0.3\n").unwrap();
        std::fs::write(&b, "row,au.f1,au.f1_std,expr.f1\nr1,0.51,0.01,0.4\n").unwrap();
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
        let e = compare(&[bad.clone(), bad]).unwrap_err().to_string();
        assert!(e.contains("bad.csv"), "{e}");
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
