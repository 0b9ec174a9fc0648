//! Throughput of the full-size MTANet on the device: train-step and eval img/s per backbone,
//! batch and precision (the training step of `mtanet bench`), and the peak device memory of
//! each point on CUDA, written to `bench_rust.csv`. A point that errors (or panics) is a row
//! with its error; the next point runs.

use super::*;
use crate::bench::Workload;
use std::fmt::Write as _;
use std::path::Path;
use std::time::Instant;

use candle_core::Device;
use mtanet_backbones::{BackboneKind, Precision};

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
    /// Peak device memory of the point in MiB (CUDA: the high-water mark of the memory in use
    /// in the device's stream-ordered pool, from building the model to the last eval step).
    pub peak_mem_mib: Option<f64>,
    /// The error, when the point failed (e.g. out of memory).
    pub error: Option<String>,
}
/// Median of per-step seconds over `steps` timed steps after `warmup` untimed ones; the device
/// is synchronised after every step. With `profile`, the timed steps run inside an attached
/// profiler's capture range ([`profiler_range`]).
pub(super) fn median_seconds(
    dev: &Device,
    steps: usize,
    warmup: usize,
    profile: bool,
    f: &mut dyn FnMut() -> anyhow::Result<()>,
) -> anyhow::Result<f64> {
    for _ in 0..warmup {
        f()?;
        dev.synchronize()?;
    }
    if profile {
        profiler_range(dev, true)?;
    }
    let mut times = Vec::with_capacity(steps.max(1));
    for _ in 0..steps.max(1) {
        let t = Instant::now();
        f()?;
        dev.synchronize()?;
        times.push(t.elapsed().as_secs_f64());
    }
    if profile {
        profiler_range(dev, false)?;
    }
    times.sort_by(f64::total_cmp);
    Ok(times[times.len() / 2])
}

/// Opens (`start`) or closes an attached profiler's capture range on CUDA; nothing elsewhere.
fn profiler_range(dev: &Device, start: bool) -> anyhow::Result<()> {
    #[cfg(feature = "cuda")]
    if let Device::Cuda(d) = dev {
        if start {
            mtanet_kernels::cuda::profiler::start(d)?;
        } else {
            mtanet_kernels::cuda::profiler::stop(d)?;
        }
    }
    let _ = (dev, start);
    Ok(())
}
/// Train-step and eval throughput of the full-size MTANet on `kind` (the network, losses and
/// optimizer of `mtanet bench`: forward in train mode, CCC + BCE + CE, backward, SGD momentum
/// 0.9 weight decay 5e-3), at `opts`' input size, steps and warm-up. With
/// `opts.profile_timed_steps`, the timed train steps run inside an attached profiler's capture
/// range.
pub fn bench_point(
    dev: &Device,
    opts: &GpuCheckOptions,
    (kind, batch, precision): (BackboneKind, usize, Precision),
) -> anyhow::Result<(f64, f64)> {
    let (steps, warmup) = (opts.steps, opts.warmup);
    let mut w = Workload::new(kind, batch, opts.size, precision, dev)?;
    let mut train_step = || -> anyhow::Result<()> {
        w.train_step()?;
        Ok(())
    };
    let train_s = median_seconds(
        dev,
        steps,
        warmup,
        opts.profile_timed_steps,
        &mut train_step,
    )?;
    let packs = mtanet_kernels::EvalPacks::new();
    let mut eval_step = || -> anyhow::Result<()> {
        w.eval_step(&packs)?;
        Ok(())
    };
    let eval_s = median_seconds(dev, steps, warmup, false, &mut eval_step)?;
    Ok((batch as f64 / train_s, batch as f64 / eval_s))
}
/// Writes `bench_rust.csv` (the header alone when `points` is empty).
pub(super) fn write_bench(
    path: &Path,
    device: &str,
    size: usize,
    points: &[BenchPoint],
) -> anyhow::Result<()> {
    let mut s = String::from(
        "framework,mode,device,backbone,batch,precision,size,train_img_s,eval_img_s,\
         peak_mem_mib,error\n",
    );
    let num = |v: Option<f64>| v.map_or(String::new(), |v| format!("{v:.2}"));
    let mib = |v: Option<f64>| v.map_or(String::new(), |v| format!("{v:.0}"));
    for p in points {
        writeln!(
            s,
            "mtanet-rs,candle,{device},{},{},{},{size},{},{},{},\"{}\"",
            p.backbone,
            p.batch,
            p.precision,
            num(p.train_img_s),
            num(p.eval_img_s),
            mib(p.peak_mem_mib),
            p.error
                .as_deref()
                .unwrap_or("")
                .replace('"', "'")
                .replace('\n', " | ")
        )?;
    }
    crate::record::atomic_io::write_atomic(path, s.as_bytes())
}

/// Starts a peak-memory measurement on `dev` (CUDA only; a no-op elsewhere).
fn reset_peak_memory(dev: &Device) -> anyhow::Result<()> {
    #[cfg(feature = "cuda")]
    if let Device::Cuda(d) = dev {
        mtanet_kernels::cuda::memory::reset_peak(d)?;
    }
    let _ = dev;
    Ok(())
}

/// Peak device memory in MiB since [`reset_peak_memory`] (`None` off CUDA).
fn peak_memory_mib(dev: &Device) -> anyhow::Result<Option<f64>> {
    #[cfg(feature = "cuda")]
    if let Device::Cuda(d) = dev {
        let bytes = mtanet_kernels::cuda::memory::peak_bytes(d)?;
        return Ok(Some(bytes as f64 / (1024.0 * 1024.0)));
    }
    let _ = dev;
    Ok(None)
}

/// Lets f32 matmuls (cuBLAS) and cuDNN convolutions use TF32, or not (CUDA builds only).
pub(super) fn set_tf32(allow: bool) {
    #[cfg(feature = "cuda")]
    {
        mtanet_kernels::cuda::set_allow_tf32(allow);
        candle_core::cuda_backend::set_gemm_reduced_precision_f32(allow);
    }
    let _ = allow;
}

/// One point, its error (or panic) caught: `(train img/s, eval img/s, peak MiB)`.
fn measure_point(
    opts: &GpuCheckOptions,
    dev: &Device,
    (kind, batch, precision): (BackboneKind, usize, Precision),
) -> anyhow::Result<(f64, f64, Option<f64>)> {
    let run = || -> anyhow::Result<(f64, f64, Option<f64>)> {
        reset_peak_memory(dev)?;
        let (train, eval) = bench_point(dev, opts, (kind, batch, precision))?;
        Ok((train, eval, peak_memory_mib(dev)?))
    };
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(run)) {
        Ok(r) => r,
        Err(p) => {
            let msg = p
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| p.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "(no message)".into());
            anyhow::bail!("panic: {msg}")
        }
    }
}

/// Times every (backbone, batch, precision) point of `opts` on `dev`, writing
/// `bench_rust.csv` before the first point and after each one (a time-out still leaves the
/// points so far). Returns the points.
pub fn run_bench(opts: &GpuCheckOptions, dev: &Device) -> anyhow::Result<Vec<BenchPoint>> {
    set_tf32(opts.tf32);
    let path = opts.out.join("bench_rust.csv");
    let mut points = Vec::new();
    write_bench(&path, &opts.device, opts.size, &points)?;
    for &kind in &opts.backbones {
        for &batch in &opts.batches {
            for &precision in &opts.precisions {
                let t = Instant::now();
                let (train_img_s, eval_img_s, peak_mem_mib, error) =
                    match measure_point(opts, dev, (kind, batch, precision)) {
                        Ok((train, eval, peak)) => (Some(train), Some(eval), peak, None),
                        Err(e) => (None, None, None, Some(format!("{e:#}"))),
                    };
                let point = BenchPoint {
                    backbone: kind,
                    batch,
                    precision,
                    train_img_s,
                    eval_img_s,
                    peak_mem_mib,
                    error,
                };
                let rate = |v: Option<f64>| v.map_or("-".into(), |v| format!("{v:.1}"));
                let error = point.error.as_deref();
                println!(
                    "gpu-check: bench {kind} batch {batch} {precision}: train {} img/s, \
                         eval {} img/s{}{} ({:.0} s)",
                    rate(point.train_img_s),
                    rate(point.eval_img_s),
                    point
                        .peak_mem_mib
                        .map_or(String::new(), |m| format!(", peak {m:.0} MiB")),
                    error.map_or(String::new(), |e| format!(", error: {e}")),
                    t.elapsed().as_secs_f64()
                );
                points.push(point);
                write_bench(&path, &opts.device, opts.size, &points)?;
            }
        }
    }
    Ok(points)
}
