//! Throughput of the full-size MTANet on the device: train-step and eval img/s per backbone,
//! batch and precision (the training step of `mtanet bench`), written to `bench_rust.csv`.

use super::*;
use crate::bench::Workload;
use std::fmt::Write as _;
use std::path::Path;
use std::time::Instant;

use anyhow::Context;
use candle_core::Device;
use mtanet_backbones::{BackboneKind, Precision};

/// Action units and expression classes of the benchmarked heads (as `mtanet bench`).
/// One throughput point.
#[derive(Debug, Clone)]
pub struct BenchPoint {
    /// Backbone.
    pub backbone: BackboneKind,
    /// Batch size.
    pub batch: usize,
    /// Compute precision.
    pub precision: Precision,
    /// Train-step images per second (median step).
    pub train_img_s: Option<f64>,
    /// Eval images per second (median step).
    pub eval_img_s: Option<f64>,
    /// The error, when the point failed (e.g. out of memory).
    pub error: Option<String>,
}
/// Median of per-step seconds over `steps` timed steps after `warmup` untimed ones; the device
/// is synchronised after every step.
pub(super) fn median_seconds(
    dev: &Device,
    steps: usize,
    warmup: usize,
    f: &mut dyn FnMut() -> anyhow::Result<()>,
) -> anyhow::Result<f64> {
    for _ in 0..warmup {
        f()?;
        dev.synchronize()?;
    }
    let mut times = Vec::with_capacity(steps.max(1));
    for _ in 0..steps.max(1) {
        let t = Instant::now();
        f()?;
        dev.synchronize()?;
        times.push(t.elapsed().as_secs_f64());
    }
    times.sort_by(f64::total_cmp);
    Ok(times[times.len() / 2])
}
/// Train-step and eval throughput of the full-size MTANet on `kind` (the network, losses and
/// optimizer of `mtanet bench`: forward in train mode, CCC + BCE + CE, backward, SGD momentum
/// 0.9 weight decay 5e-3).
pub fn bench_point(
    dev: &Device,
    kind: BackboneKind,
    batch: usize,
    size: usize,
    precision: Precision,
    steps: usize,
    warmup: usize,
) -> anyhow::Result<(f64, f64)> {
    let mut w = Workload::new(kind, batch, size, precision, dev)?;
    let mut train_step = || -> anyhow::Result<()> {
        w.train_step()?;
        Ok(())
    };
    let train_s = median_seconds(dev, steps, warmup, &mut train_step)?;
    let mut eval_step = || -> anyhow::Result<()> {
        w.eval_step()?;
        Ok(())
    };
    let eval_s = median_seconds(dev, steps, warmup, &mut eval_step)?;
    Ok((batch as f64 / train_s, batch as f64 / eval_s))
}
pub(super) fn write_bench(
    path: &Path,
    device: &str,
    size: usize,
    points: &[BenchPoint],
) -> anyhow::Result<()> {
    let mut s = String::from(
        "framework,mode,device,backbone,batch,precision,size,train_img_s,eval_img_s,error\n",
    );
    let num = |v: Option<f64>| v.map_or(String::new(), |v| format!("{v:.2}"));
    for p in points {
        writeln!(
            s,
            "mtanet-rs,candle,{device},{},{},{},{size},{},{},\"{}\"",
            p.backbone,
            p.batch,
            p.precision,
            num(p.train_img_s),
            num(p.eval_img_s),
            p.error.as_deref().unwrap_or("").replace('"', "'")
        )?;
    }
    std::fs::write(path, s).with_context(|| format!("cannot write {}", path.display()))
}

/// Times every (backbone, batch, precision) point of `opts` on `dev`, writing
/// `bench_rust.csv` after each point (a time-out still leaves the points so far).
pub fn run_bench(opts: &GpuCheckOptions, dev: &Device) -> anyhow::Result<()> {
    #[cfg(feature = "cuda")]
    mtanet_kernels::cuda::set_allow_tf32(opts.tf32);
    let mut points = Vec::new();
    for &kind in &opts.backbones {
        for &batch in &opts.batches {
            for &precision in &opts.precisions {
                let t = Instant::now();
                let r = bench_point(
                    dev,
                    kind,
                    batch,
                    opts.size,
                    precision,
                    opts.steps,
                    opts.warmup,
                );
                let (train_img_s, eval_img_s, error) = match r {
                    Ok((train, eval)) => (Some(train), Some(eval), None),
                    Err(e) => (None, None, Some(format!("{e:#}"))),
                };
                let point = BenchPoint {
                    backbone: kind,
                    batch,
                    precision,
                    train_img_s,
                    eval_img_s,
                    error,
                };
                let rate = |v: Option<f64>| v.map_or("-".into(), |v| format!("{v:.1}"));
                let error = point.error.as_deref();
                println!(
                    "gpu-check: bench {kind} batch {batch} {precision}: train {} img/s, \
                         eval {} img/s{} ({:.0} s)",
                    rate(point.train_img_s),
                    rate(point.eval_img_s),
                    error.map_or(String::new(), |e| format!(", error: {e}")),
                    t.elapsed().as_secs_f64()
                );
                points.push(point);
                // Write after every point: a time-out still leaves the points so far.
                write_bench(
                    &opts.out.join("bench_rust.csv"),
                    &opts.device,
                    opts.size,
                    &points,
                )?;
            }
        }
    }
    Ok(())
}
