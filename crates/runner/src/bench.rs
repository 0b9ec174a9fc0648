//! `mtanet bench`: whole-model train-step and eval throughput against PyTorch, measured on the
//! same machine in the same invocation.
//!
//! Each (backbone, batch) is measured in a fresh child process (`mtanet bench-one`), so that
//! its peak resident memory (`VmHWM`) is its own; PyTorch runs the same network, head, losses
//! and optimizer through `scripts/bench_torch.py --model`, also one process per point, right
//! after ours so both see the same machine load. A train step is forward (train mode) +
//! CCC + BCE + CE loss + backward + SGD step (momentum 0.9, weight decay 5e-3); eval is a
//! forward in eval mode. Throughputs are the best (max) over `steps` timed steps after
//! `warmup` untimed ones: on a shared machine the fastest step is the least disturbed one.
//! Each point runs `rounds` times, ours and PyTorch's processes alternating, and reports each
//! framework's best round: both then sample the same spells of the machine's drifting speed.
//! Each round also pairs the two processes it ran back to back: the median and the minimum of
//! those per-round ratios are printed beside the best-of ratio, and the table ends with the
//! median and minimum over all points.
//! With `MTANET_BENCH_PHASES=1`, `bench-one` also prints each train step's forward, backward
//! and optimizer seconds on stderr, then their means over the timed steps; adding
//! `MTANET_KERNEL_PROFILE=1` splits them further by convolution pass and shape
//! (`mtanet_kernels::profile`).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context};
use candle_core::{DType, Device, Tensor};
use mtanet_backbones::{BackboneKind, MtaNet, MtaNetConfig, Precision, ResNetConfig};
use mtanet_kernels::EvalPacks;
use mtanet_losses::{AuReduction, LossKind, Targets};
use serde::{Deserialize, Serialize};

use crate::experiment::{OptimizerKind, StageConfig};
use crate::step::optim::{params, Optimizer};
use crate::step::{eval_step, train_step, HostOutputs, Objective, StepGuard, StepOutcome};
use mtanet_backbones::SeededVarMap;

mod profile;
use profile::{print_eval_profile, print_step_profile};

/// Action units of the benchmarked heads (ABAW 2020).
pub const N_AU: usize = 8;
/// Expression classes of the benchmarked heads (ABAW 2020).
pub const N_EXPR: usize = 7;
/// Face crop side.
const SIZE: usize = 112;

/// What one process measured for one (backbone, batch).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Measurement {
    /// Train steps per second times batch.
    pub train_img_s: f64,
    /// Eval forwards per second times batch.
    pub eval_img_s: f64,
    /// Peak resident set size of the process, MiB.
    pub peak_rss_mb: f64,
    /// Forward GFLOP per image (2 x multiply-adds of the convolutions and linear layers).
    pub fwd_gflop_per_img: f64,
}

impl Measurement {
    /// The better of two measurements of the same point: the higher throughputs (each the
    /// least disturbed run) and the higher peak memory (the honest one).
    fn best_with(self, other: Self) -> Self {
        Self {
            train_img_s: self.train_img_s.max(other.train_img_s),
            eval_img_s: self.eval_img_s.max(other.eval_img_s),
            peak_rss_mb: self.peak_rss_mb.max(other.peak_rss_mb),
            fwd_gflop_per_img: self.fwd_gflop_per_img,
        }
    }
}

/// Folds the rounds of one framework into one measurement.
fn best_of(rounds: Vec<Measurement>) -> Option<Measurement> {
    rounds.into_iter().reduce(Measurement::best_with)
}

/// Options of `mtanet bench`.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// Backbones to measure.
    pub backbones: Vec<BackboneKind>,
    /// Batch sizes.
    pub batches: Vec<usize>,
    /// Worker threads for both frameworks.
    pub threads: usize,
    /// Timed steps per point.
    pub steps: usize,
    /// Untimed warm-up steps per point.
    pub warmup: usize,
    /// Alternating rounds per point: ours, PyTorch, ours, PyTorch, ... each a fresh process;
    /// the best of all rounds is reported for each framework.
    pub rounds: usize,
    /// Python interpreter for PyTorch; `None` skips PyTorch.
    pub python: Option<String>,
    /// CSV written (atomically) at the end and after each point.
    pub out: PathBuf,
}

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
struct Sgemm {
    gemm: f64,
    torch: Option<f64>,
}

/// Measures one (backbone, batch) in this process: the body of `mtanet bench-one`.
pub fn measure(
    kind: BackboneKind,
    batch: usize,
    steps: usize,
    warmup: usize,
) -> anyhow::Result<Measurement> {
    let phases = std::env::var_os("MTANET_BENCH_PHASES").is_some();
    if phases && !mtanet_kernels::profile::enabled() {
        eprintln!("note: set MTANET_KERNEL_PROFILE=1 as well for the per-kernel times");
    }
    let mut w = Workload::new(kind, batch, SIZE, Precision::F32, &Device::Cpu)?;
    let cfg = w.config.clone();
    let (mut calls, mut phase_sums) = (0usize, [0f64; 3]);
    let mut train_step = || -> anyhow::Result<()> {
        let o = w.train_step()?;
        calls += 1;
        if phases {
            let [f, b, u] = o.phases.map(|d| d.as_secs_f64());
            eprintln!("forward+loss {f:.3} s, backward {b:.3} s, optimizer {u:.3} s");
            if calls == warmup {
                // The profile covers the timed steps only.
                mtanet_kernels::profile::take();
            } else if calls > warmup {
                for (sum, v) in phase_sums.iter_mut().zip([f, b, u]) {
                    *sum += v;
                }
            }
        }
        Ok(())
    };
    let train_s = best_seconds(steps, warmup, &mut train_step)?;
    if phases {
        print_step_profile(steps.max(1), phase_sums);
    }

    // The eval forwards are one evaluation pass: the weights are packed in its first (untimed)
    // call, as `evaluate` packs them on a loader's first batch.
    let packs = EvalPacks::new();
    let mut eval_step = || -> anyhow::Result<()> {
        w.eval_step(&packs)?;
        Ok(())
    };
    let macs_before = mtanet_kernels::conv2d::forward_macs();
    eval_step()?;
    let conv_macs = mtanet_kernels::conv2d::forward_macs() - macs_before;
    mtanet_kernels::profile::take();
    let eval_start = Instant::now();
    let eval_s = best_seconds(steps, warmup.saturating_sub(1), &mut eval_step)?;
    if phases {
        let calls = steps.max(1) + warmup.saturating_sub(1);
        print_eval_profile(calls, eval_start.elapsed().as_secs_f64());
    }

    let c = cfg.backbone.out_channels();
    let f = cfg.feature_width();
    let head_macs = 2 * c * cfg.hidden + f * (2 + N_AU + N_EXPR);
    let fwd_gflop_per_img = 2.0 * (conv_macs as f64 / batch as f64 + head_macs as f64) / 1e9;
    Ok(Measurement {
        train_img_s: batch as f64 / train_s,
        eval_img_s: batch as f64 / eval_s,
        peak_rss_mb: peak_rss_mb().unwrap_or(f64::NAN),
        fwd_gflop_per_img,
    })
}

/// Best (minimum) seconds of `steps` calls after `warmup` untimed ones.
fn best_seconds(
    steps: usize,
    warmup: usize,
    f: &mut dyn FnMut() -> anyhow::Result<()>,
) -> anyhow::Result<f64> {
    for _ in 0..warmup {
        f()?;
    }
    let mut best = f64::INFINITY;
    for _ in 0..steps.max(1) {
        let t = Instant::now();
        f()?;
        best = best.min(t.elapsed().as_secs_f64());
    }
    Ok(best)
}

/// `VmHWM` of this process in MiB (Linux), `None` elsewhere.
fn peak_rss_mb() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

/// GFLOP/s of a 2048^3 f32 product through `gemm` on all rayon threads (best of 3).
fn sgemm_gflops() -> f64 {
    let n = 2048;
    let a = vec![1.0f32; n * n];
    let b = vec![0.5f32; n * n];
    let mut c = vec![0.0f32; n * n];
    let mut best = f64::INFINITY;
    for _ in 0..4 {
        let t = Instant::now();
        mtanet_kernels::conv2d::sgemm(&mut c, &a, &b, n, n, n);
        best = best.min(t.elapsed().as_secs_f64());
    }
    2.0 * (n as f64).powi(3) / best / 1e9
}

/// Runs the whole benchmark: prints a table and writes `opts.out` after every point.
pub fn run(opts: &BenchOptions) -> anyhow::Result<Vec<BenchRow>> {
    let exe = std::env::current_exe().context("locating the mtanet binary")?;
    let script = Path::new("scripts/bench_torch.py");
    let python = match &opts.python {
        Some(p) if script.exists() && torch_available(p) => Some(p.clone()),
        Some(p) => {
            eprintln!(
                "note: PyTorch comparison skipped ({} cannot import torch, or {} is missing; \
                 run from the repository root with `pip install torch torchvision timm`)",
                p,
                script.display()
            );
            None
        }
        None => None,
    };
    let mut sgemm = Sgemm {
        gemm: sgemm_gflops(),
        torch: None,
    };
    if let Some(py) = &python {
        let out = run_child(Command::new(py).arg(script).args([
            "--sgemm",
            "--threads",
            &opts.threads.to_string(),
        ]))?;
        sgemm.torch = out.trim().parse().ok();
    }
    println!(
        "sgemm 2048^3, {} threads: gemm crate {:.0} GFLOP/s{}",
        opts.threads,
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
    let mut rows: Vec<BenchRow> = Vec::new();
    for kind in &opts.backbones {
        for &batch in &opts.batches {
            let args = [
                "--backbone".to_string(),
                kind.name().to_string(),
                "--batch".into(),
                batch.to_string(),
                "--steps".into(),
                opts.steps.to_string(),
                "--warmup".into(),
                opts.warmup.to_string(),
            ];
            // Alternate the frameworks so that both sample the same spells of this shared
            // machine's speed, instead of ours in one minute and PyTorch's in the next, and
            // which goes first from round to round. PyTorch's process gets the malloc
            // thresholds ours sets for itself (`runtime::malloc_tunables`), so that neither
            // side's allocator returns freed activations to the kernel and the other's keeps
            // them.
            let (mut ours, mut theirs) = (Vec::new(), Vec::new());
            let tunables = crate::cli::runtime::malloc_tunables();
            for round in 0..opts.rounds.max(1) {
                let run_ours = |ours: &mut Vec<Measurement>| -> anyhow::Result<()> {
                    ours.push(
                        serde_json::from_str::<Measurement>(
                            run_child(
                                Command::new(&exe)
                                    .arg("bench-one")
                                    .args(&args)
                                    .env("RAYON_NUM_THREADS", opts.threads.to_string()),
                            )?
                            .trim(),
                        )
                        .context("reading mtanet bench-one output")?,
                    );
                    Ok(())
                };
                let run_theirs = |theirs: &mut Vec<Measurement>| -> anyhow::Result<()> {
                    if let Some(py) = &python {
                        let out = run_child(
                            Command::new(py)
                                .arg(script)
                                .args(["--model", kind.name(), "--threads"])
                                .arg(opts.threads.to_string())
                                .args(&args[2..])
                                .env("GLIBC_TUNABLES", &tunables),
                        )?;
                        theirs.push(
                            serde_json::from_str::<Measurement>(out.trim())
                                .context("reading bench_torch.py output")?,
                        );
                    }
                    Ok(())
                };
                if round % 2 == 0 {
                    run_ours(&mut ours)?;
                    run_theirs(&mut theirs)?;
                } else {
                    run_theirs(&mut theirs)?;
                    run_ours(&mut ours)?;
                }
            }
            let round_ratios = ours
                .iter()
                .zip(&theirs)
                .map(|(o, t)| (o.train_img_s / t.train_img_s, o.eval_img_s / t.eval_img_s))
                .collect();
            let Some(ours) = best_of(ours) else {
                bail!("no measurement of {} batch {batch}", kind.name())
            };
            let torch = best_of(theirs);
            let row = BenchRow {
                backbone: kind.name().to_string(),
                batch,
                threads: opts.threads,
                mtanet: ours,
                torch,
                round_ratios,
            };
            print_row(&row);
            rows.push(row);
            write_csv(&opts.out, &rows, &sgemm)?;
        }
    }
    print_summary(&rows);
    println!("wrote {}", opts.out.display());
    Ok(rows)
}

fn print_row(r: &BenchRow) {
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
/// (the `ratio` columns) and the largest peak-memory ratio.
fn print_summary(rows: &[BenchRow]) {
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
        "over {} points: train ratio median {train_med:.2}, min {train_min:.2}; eval ratio median \
         {eval_med:.2}, min {eval_min:.2}; peak RSS ours / torch at most {rss:.2}",
        train.len()
    );
    println!(
        "med / min per point: the median and minimum of the per-round ratios (each round pairs \
         the two processes run back to back)"
    );
}

fn write_csv(path: &Path, rows: &[BenchRow], sgemm: &Sgemm) -> anyhow::Result<()> {
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

fn torch_available(python: &str) -> bool {
    Command::new(python)
        .args(["-c", "import torch, torchvision, timm"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

/// Runs a child to completion and returns its stdout, or an error with its stderr.
fn run_child(cmd: &mut Command) -> anyhow::Result<String> {
    let out = cmd.output().with_context(|| format!("starting {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}):\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The benchmarked training workload: the full-size MTANet of a backbone with its heads, SGD
/// (momentum 0.9, weight decay 5e-3, as the paper's second stage), and one batch of inputs
/// and labels drawn from a fixed seed on the CPU and uploaded (no device RNG needed).
/// `mtanet bench` and `gpu-check` time exactly this.
pub struct Workload {
    /// The network's configuration.
    pub config: MtaNetConfig,
    /// The network.
    pub model: MtaNet,
    /// SGD over every variable.
    pub opt: Optimizer,
    /// (N, 3, size, size) inputs.
    pub images: Tensor,
    /// Every frame labelled for every task.
    pub targets: Targets,
}

impl Workload {
    /// Builds the workload for `kind` at `batch` x `size` x `size` on `dev`.
    pub fn new(
        kind: BackboneKind,
        batch: usize,
        size: usize,
        precision: Precision,
        dev: &Device,
    ) -> anyhow::Result<Self> {
        let config = MtaNetConfig::new(ResNetConfig::from_kind(&kind), N_AU, N_EXPR);
        let vars = SeededVarMap::new(7);
        let model =
            MtaNet::new(&config, vars.var_builder(DType::F32, dev))?.with_precision(precision);
        let stage = StageConfig {
            name: "bench".into(),
            optimizer: OptimizerKind::Sgd,
            lr: 1e-3,
            weight_decay: 5e-3,
            ..StageConfig::default()
        };
        let all_vars: std::collections::HashMap<_, _> = vars
            .varmap()
            .data()
            .lock()
            .map_err(|_| anyhow::anyhow!("VarMap lock poisoned"))?
            .clone();
        let opt = Optimizer::new(&stage, params(&all_vars, true));
        let images = cpu_randn(11, &[batch, 3, size, size], 1.0)?.to_device(dev)?;
        let va = cpu_randn(12, &[batch, 2], 0.5)?
            .clamp(-1f32, 1f32)?
            .to_device(dev)?;
        let au = cpu_randn(13, &[batch, N_AU], 1.0)?
            .ge(0.0)?
            .to_dtype(DType::F32)?
            .to_device(dev)?;
        let classes: Vec<u32> = (0..batch).map(|i| (i % N_EXPR) as u32).collect();
        let expr = Tensor::new(classes.as_slice(), dev)?;
        let ones = Tensor::ones(batch, DType::F32, dev)?;
        let targets = Targets {
            va,
            va_mask: ones.clone(),
            au,
            au_mask: ones.clone(),
            expr,
            expr_mask: ones,
        };
        Ok(Self {
            config,
            model,
            opt,
            images,
            targets,
        })
    }

    /// One training step (summed loss, no finiteness guard: PyTorch's loop has none).
    pub fn train_step(&mut self) -> anyhow::Result<StepOutcome> {
        let objective = Objective {
            kind: LossKind::Sum,
            uncertainty: None,
            au_pos_weight: None,
            au_reduction: AuReduction::Mean,
        };
        train_step(
            &self.model,
            &self.images,
            &self.targets,
            &objective,
            &mut self.opt,
            StepGuard::default(),
        )
    }

    /// One eval step on the batch, in the evaluation pass whose store of packed weight layouts
    /// is `packs`.
    pub fn eval_step(&self, packs: &EvalPacks) -> anyhow::Result<HostOutputs> {
        Ok(eval_step(&self.model, &self.images, packs)?)
    }
}

/// Deterministic test data on the CPU (a fixed-seed normal), moved to each device as needed.
pub fn cpu_randn(seed: u64, shape: &[usize], std: f64) -> anyhow::Result<Tensor> {
    use rand::{Rng, SeedableRng};
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let n: usize = shape.iter().product();
    // Box-Muller from uniform draws: no extra dependency, fixed across platforms.
    let values: Vec<f32> = (0..n)
        .map(|_| {
            let u1: f64 = rng.random_range(1e-12..1.0);
            let u2: f64 = rng.random_range(0.0..1.0);
            ((-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos() * std) as f32
        })
        .collect();
    Ok(Tensor::from_vec(values, shape, &Device::Cpu)?)
}

/// Backbones by name, comma lists from the command line; all five when `names` is empty.
pub fn parse_backbones(names: &[String]) -> anyhow::Result<Vec<BackboneKind>> {
    if names.is_empty() {
        return Ok(BackboneKind::ALL.to_vec());
    }
    names
        .iter()
        .map(|b| {
            b.parse()
                .map_err(|e| anyhow::anyhow!("backbone `{b}`: {e}"))
        })
        .collect()
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
