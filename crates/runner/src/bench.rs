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

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context};
use candle_core::Device;
use mtanet_backbones::{BackboneKind, Precision};
use mtanet_kernels::EvalPacks;
use serde::{Deserialize, Serialize};

mod profile;
mod report;
mod workload;
use profile::{print_eval_profile, print_step_profile};
pub use report::{median, minimum, BenchRow};
use report::{print_row, print_summary, write_csv, Sgemm};
pub use workload::{cpu_randn, Workload};

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
    report::print_header(opts.threads, &sgemm);
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
