//! What `mtanet bench` reports: a row per (backbone, batch) with both frameworks' best
//! rounds and the per-round ratios, printed as a table that ends with the median and minimum
//! ratios over all points, and written as `results/bench/train.csv`.

use std::io::Write;
use std::path::Path;

use anyhow::Context;

use super::Measurement;

/// One row of `results/bench/train.csv`.
#[derive(Debug, Clone)]
pub struct BenchRow {
    /// Backbone name.
    pub backbone: String,
    /// Batch size.
    pub batch: usize,
    /// Threads.
    pub threads: usize,
    /// Ours.
    pub mtanet: Measurement,
    /// PyTorch's, when it ran.
    pub torch: Option<Measurement>,
    /// Per round, ours over PyTorch's of the two processes run back to back: (train, eval).
    pub round_ratios: Vec<(f64, f64)>,
}

/// Median of `values` (the mean of the middle two for an even count); `None` when empty.
pub fn median(values: &[f64]) -> Option<f64> {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| !x.is_nan()).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    Some(if v.len() % 2 == 1 {
        v[mid]
    } else {
        (v[mid - 1] + v[mid]) / 2.0
    })
}

/// Smallest of `values`; `None` when empty.
pub fn minimum(values: &[f64]) -> Option<f64> {
    values
        .iter()
        .copied()
        .filter(|x| !x.is_nan())
        .reduce(f64::min)
}

const CSV_HEADER: &str = "backbone,batch,threads,mtanet_train_img_s,torch_train_img_s,train_ratio,\
mtanet_eval_img_s,torch_eval_img_s,eval_ratio,mtanet_peak_rss_mb,torch_peak_rss_mb,\
fwd_gflop_per_img,mtanet_train_gflops,torch_train_gflops,sgemm_gflops_gemm,sgemm_gflops_torch,\
rounds,train_ratio_median,train_ratio_min,eval_ratio_median,eval_ratio_min";

impl BenchRow {
    fn train_ratio(&self) -> Option<f64> {
        self.torch
            .as_ref()
            .map(|t| self.mtanet.train_img_s / t.train_img_s)
    }

    fn eval_ratio(&self) -> Option<f64> {
        self.torch
            .as_ref()
            .map(|t| self.mtanet.eval_img_s / t.eval_img_s)
    }

    fn round_train(&self) -> Vec<f64> {
        self.round_ratios.iter().map(|r| r.0).collect()
    }

    fn round_eval(&self) -> Vec<f64> {
        self.round_ratios.iter().map(|r| r.1).collect()
    }

    /// Achieved training GFLOP/s: forward FLOPs x 3 (backward costs about twice the forward).
    fn train_gflops(m: &Measurement) -> f64 {
        3.0 * m.fwd_gflop_per_img * m.train_img_s
    }

    fn csv_line(&self, sgemm: &Sgemm) -> String {
        let opt =
            |v: Option<f64>, prec: usize| v.map(|v| format!("{v:.prec$}")).unwrap_or_default();
        let t = self.torch.as_ref();
        [
            self.backbone.clone(),
            self.batch.to_string(),
            self.threads.to_string(),
            format!("{:.2}", self.mtanet.train_img_s),
            opt(t.map(|t| t.train_img_s), 2),
            opt(self.train_ratio(), 3),
            format!("{:.2}", self.mtanet.eval_img_s),
            opt(t.map(|t| t.eval_img_s), 2),
            opt(self.eval_ratio(), 3),
            format!("{:.0}", self.mtanet.peak_rss_mb),
            opt(t.map(|t| t.peak_rss_mb), 0),
            format!("{:.3}", self.mtanet.fwd_gflop_per_img),
            format!("{:.1}", Self::train_gflops(&self.mtanet)),
            opt(t.map(Self::train_gflops), 1),
            format!("{:.1}", sgemm.gemm),
            opt(sgemm.torch, 1),
            self.round_ratios.len().to_string(),
            opt(median(&self.round_train()), 3),
            opt(minimum(&self.round_train()), 3),
            opt(median(&self.round_eval()), 3),
            opt(minimum(&self.round_eval()), 3),
        ]
        .join(",")
    }
}

/// The machine's sgemm ceiling: the `gemm` crate (what our kernels call) and `torch.mm`.
#[derive(Debug, Clone, Default)]
pub(super) struct Sgemm {
    /// GFLOP/s of the `gemm` crate.
    pub(super) gemm: f64,
    /// GFLOP/s of `torch.mm`, when PyTorch ran.
    pub(super) torch: Option<f64>,
}

/// The table's first lines: the machine's sgemm ceiling, then the column titles.
pub(super) fn print_header(threads: usize, sgemm: &Sgemm) {
    println!(
        "sgemm 2048^3, {} threads: gemm crate {:.0} GFLOP/s{}",
        threads,
        sgemm.gemm,
        sgemm
            .torch
            .map(|t| format!(", torch.mm {t:.0} GFLOP/s"))
            .unwrap_or_default()
    );
    println!(
        "{:<22} {:>5} | {:>9} {:>9} {:>6} {:>5} {:>5} | {:>9} {:>9} {:>6} {:>5} {:>5} | {:>8} {:>8} | {:>7} {:>7}",
        "backbone",
        "batch",
        "train",
        "torch",
        "ratio",
        "med",
        "min",
        "eval",
        "torch",
        "ratio",
        "med",
        "min",
        "RSS MB",
        "torch",
        "GFLOP/s",
        "torch"
    );
}

/// One point's line of the printed table.
pub(super) fn print_row(r: &BenchRow) {
    let f = |v: Option<f64>, prec: usize| {
        v.map(|v| format!("{v:.prec$}"))
            .unwrap_or_else(|| "-".into())
    };
    let t = r.torch.as_ref();
    let (train, eval) = (r.round_train(), r.round_eval());
    println!(
        "{:<22} {:>5} | {:>9.2} {:>9} {:>6} {:>5} {:>5} | {:>9.2} {:>9} {:>6} {:>5} {:>5} | {:>8.0} {:>8} | {:>7.1} {:>7}",
        r.backbone,
        r.batch,
        r.mtanet.train_img_s,
        f(t.map(|t| t.train_img_s), 2),
        f(r.train_ratio(), 2),
        f(median(&train), 2),
        f(minimum(&train), 2),
        r.mtanet.eval_img_s,
        f(t.map(|t| t.eval_img_s), 2),
        f(r.eval_ratio(), 2),
        f(median(&eval), 2),
        f(minimum(&eval), 2),
        r.mtanet.peak_rss_mb,
        f(t.map(|t| t.peak_rss_mb), 0),
        BenchRow::train_gflops(&r.mtanet),
        f(t.map(BenchRow::train_gflops), 1),
    );
    let _ = std::io::stdout().flush();
}

/// The last lines of the table: over all points, the median and minimum of the best-of ratios
/// (the `ratio` columns) and the largest peak-memory ratio, to three decimals, so that a ratio
/// just under a goal's threshold (1.299) does not print as the threshold (1.30).
pub(super) fn print_summary(rows: &[BenchRow]) {
    let train: Vec<f64> = rows.iter().filter_map(BenchRow::train_ratio).collect();
    let eval: Vec<f64> = rows.iter().filter_map(BenchRow::eval_ratio).collect();
    let rss = rows
        .iter()
        .filter_map(|r| {
            r.torch
                .as_ref()
                .map(|t| r.mtanet.peak_rss_mb / t.peak_rss_mb)
        })
        .reduce(f64::max);
    let (Some(train_med), Some(train_min), Some(eval_med), Some(eval_min), Some(rss)) = (
        median(&train),
        minimum(&train),
        median(&eval),
        minimum(&eval),
        rss,
    ) else {
        return;
    };
    println!(
        "over {} points: train ratio median {train_med:.3}, min {train_min:.3}; eval ratio median \
         {eval_med:.3}, min {eval_min:.3}; peak RSS ours / torch at most {rss:.3}",
        train.len()
    );
    println!(
        "med / min per point: the median and minimum of the per-round ratios (each round pairs \
         the two processes run back to back)"
    );
}

/// Writes every point measured so far to `path` (atomically), one line per point.
pub(super) fn write_csv(path: &Path, rows: &[BenchRow], sgemm: &Sgemm) -> anyhow::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let mut text = String::from(CSV_HEADER);
    text.push('\n');
    for r in rows {
        text.push_str(&r.csv_line(sgemm));
        text.push('\n');
    }
    crate::record::atomic_io::write_atomic(path, text.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_and_minimum_of_round_ratios() {
        assert_eq!(median(&[1.3, 0.9, 1.1]), Some(1.1));
        assert_eq!(median(&[1.4, 1.0, 1.2, 0.8]), Some(1.1));
        assert_eq!(median(&[f64::NAN, 2.0]), Some(2.0));
        assert_eq!(median(&[]), None);
        assert_eq!(minimum(&[1.3, 0.9, 1.1]), Some(0.9));
        assert_eq!(minimum(&[f64::NAN]), None);
    }

    #[test]
    fn csv_line_has_a_value_per_header_column() {
        let m = |train, eval| Measurement {
            train_img_s: train,
            eval_img_s: eval,
            peak_rss_mb: 100.0,
            fwd_gflop_per_img: 2.0,
        };
        let row = BenchRow {
            backbone: "resnet50".into(),
            batch: 16,
            threads: 2,
            mtanet: m(12.0, 60.0),
            torch: Some(m(10.0, 50.0)),
            round_ratios: vec![(1.2, 1.0), (0.8, 1.5), (1.0, 1.1)],
        };
        let sgemm = Sgemm {
            gemm: 300.0,
            torch: None,
        };
        let line = row.csv_line(&sgemm);
        let header: Vec<&str> = CSV_HEADER.split(',').collect();
        let values: Vec<&str> = line.split(',').collect();
        assert_eq!(header.len(), values.len());
        let get = |name: &str| values[header.iter().position(|h| *h == name).unwrap()];
        assert_eq!(get("rounds"), "3");
        assert_eq!(get("train_ratio"), "1.200");
        assert_eq!(get("train_ratio_median"), "1.000");
        assert_eq!(get("train_ratio_min"), "0.800");
        assert_eq!(get("eval_ratio_median"), "1.100");
        assert_eq!(get("eval_ratio_min"), "1.000");
    }
}
