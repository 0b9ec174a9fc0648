//! `mtanet gpu-check`: the Rust half of `scripts/gpu-check.sh`, built to answer in one run on a
//! GPU machine:
//!
//! 1. **Conformance**: every op of `mtanet-kernels` (the custom ops called directly, so their
//!    `cuda_fwd` runs, and the public functions as the backbones call them) and every backbone
//!    (small configurations, PyTorch fixtures from `scripts/reference/make_fixtures.py`),
//!    forward and gradients, batch >= 2, on the device under test against the same computation
//!    on a reference device (the CPU) and against the PyTorch fixtures. Relative error
//!    `max|a - b| / max|b|`. Written to `conformance.csv`.
//! 2. **Throughput**: train-step and eval img/s of the full-size MTANet on each backbone (the
//!    network, losses and optimizer of `mtanet bench`), written to `bench_rust.csv`.
//!
//! Nothing stops the run but a device that cannot be opened: an op or backbone that errors
//! (or panics) is an `error` row of `conformance.csv` (op, shapes, message), a throughput point
//! that errors is a row of `bench_rust.csv` with its error, and both files are always written.
//! The summary line counts passed, failed and errored rows; the exit code is non-zero when a
//! row failed or errored or a throughput point errored.
//!
//! `--probe` only opens the device and runs one convolution and one max-pool on it: the
//! missing-GPU check of the script. With `--device cpu` everything runs on the CPU; there the
//! ops are compared with independent formulations (candle's own ops) and the PyTorch
//! fixtures, not with themselves (see `ops.rs`).

pub(crate) use crate::bench::cpu_randn;

mod backbones;
mod conformance;
mod device_step;
mod fused_ops;
mod ops;
mod throughput;

use backbones::{check_backbones, check_backbones_bf16};
pub use conformance::{rel_err, ConformanceRow, Counts, Status, INJECT_ERROR_ENV};
use conformance::{write_conformance, Checker};
use device_step::check_train_step;
use ops::check_ops;
pub use throughput::BenchPoint;
use throughput::{run_bench, set_tf32, write_bench};

use std::path::PathBuf;

use anyhow::{bail, Context};
use candle_core::{Device, Var};
use mtanet_backbones::{BackboneKind, Precision};
use mtanet_kernels::{Conv2d, MaxPool2d};

use crate::build::device::{open, parse_device};

/// What `mtanet gpu-check` runs.
#[derive(Debug, Clone)]
pub struct GpuCheckOptions {
    /// Device under test (`cuda:0`, or `cpu` for the plumbing test).
    pub device: String,
    /// Reference device for the conformance comparison.
    pub reference: String,
    /// Folder with the backbone fixtures (`backbones.json`, `*.weights.safetensors`,
    /// `*.io.safetensors`, `maxpool.safetensors`).
    pub fixtures: PathBuf,
    /// Folder for `conformance.csv` and `bench_rust.csv`.
    pub out: PathBuf,
    /// Only open the device and run one conv and one max-pool.
    pub probe: bool,
    /// Run the conformance part.
    pub conformance: bool,
    /// Run the throughput part.
    pub bench: bool,
    /// Backbones to time (full size).
    pub backbones: Vec<BackboneKind>,
    /// Batch sizes to time.
    pub batches: Vec<usize>,
    /// Precisions to time (and, with bf16, to check against f32).
    pub precisions: Vec<Precision>,
    /// Input side for the timing.
    pub size: usize,
    /// Timed steps per point (the median is reported).
    pub steps: usize,
    /// Untimed warm-up steps per point.
    pub warmup: usize,
    /// Tolerance of the device-vs-reference comparison (relative).
    pub tolerance: f32,
    /// Let f32 cuDNN convolutions and cuBLAS matmuls use TF32 (timing only; conformance
    /// always runs exact f32).
    pub tf32: bool,
    /// Bracket each point's timed train steps with the capture range of an attached profiler
    /// (`ncu --profile-from-start off`), after the warm-up steps' algorithm measurement.
    pub profile_timed_steps: bool,
}

/// What a `mtanet gpu-check` run found.
#[derive(Debug, Clone, Default)]
pub struct Summary {
    /// Conformance rows by status (all zero when conformance did not run).
    pub conformance: Counts,
    /// Throughput points measured.
    pub bench_points: usize,
    /// Throughput points that errored.
    pub bench_errors: usize,
}

impl Summary {
    /// True when no conformance row failed or errored and no throughput point errored.
    pub fn ok(&self) -> bool {
        self.conformance.ok() && self.bench_errors == 0
    }
}
/// Opens `spec` and runs one grouped convolution (forward and both gradients) and one max-pool
/// (forward and gradient) on it. Returns a one-line description of the device.
pub fn probe(spec: &str) -> anyhow::Result<String> {
    let dev = open(parse_device(spec).map_err(anyhow::Error::msg)?)
        .with_context(|| format!("cannot open device {spec}"))?;
    // Data from the CPU: the device's own RNG (cuRAND) is not needed anywhere here.
    let x = Var::from_tensor(&cpu_randn(1, &[2, 8, 9, 9], 1.0)?.to_device(&dev)?)?;
    let w = Var::from_tensor(&cpu_randn(2, &[8, 2, 3, 3], 0.1)?.to_device(&dev)?)?;
    let op = Conv2d {
        stride: 2,
        padding: 1,
        groups: 4,
    };
    let y = x.as_tensor().apply_op2(w.as_tensor(), op)?;
    let p = y.apply_op1(MaxPool2d {
        kernel: 3,
        stride: 2,
        padding: 1,
        ceil_mode: false,
    })?;
    let grads = p.sum_all()?.backward()?;
    for v in [&x, &w] {
        grads
            .get(v.as_tensor())
            .context("probe: missing gradient")?;
    }
    dev.synchronize()?;
    Ok(match &dev {
        Device::Cpu => "cpu".to_string(),
        Device::Cuda(_) => format!("{spec} (CUDA, conv + max-pool kernels ran)"),
        other => format!("{other:?}"),
    })
}
/// Options of `mtanet gpu-check` on the command line.
#[derive(clap::Args, Debug)]
pub struct GpuCheckArgs {
    /// Device under test: cuda:N, or cpu for a plumbing test without a GPU.
    #[arg(long, default_value = "cuda:0")]
    pub device: String,
    /// Reference device of the conformance comparison.
    #[arg(long, default_value = "cpu")]
    pub reference: String,
    /// Fixture folder.
    #[arg(long, default_value = "tests/fixtures/backbones")]
    pub fixtures: PathBuf,
    /// Output folder (conformance.csv, bench_rust.csv).
    #[arg(long, default_value = "results/gpu-check")]
    pub out: PathBuf,
    /// Only open the device and run one conv and one max-pool on it.
    #[arg(long)]
    pub probe: bool,
    /// Skip the conformance part.
    #[arg(long)]
    pub no_conformance: bool,
    /// Skip the throughput part.
    #[arg(long)]
    pub no_bench: bool,
    /// Backbones to time, comma-separated (default: all five).
    #[arg(long, value_delimiter = ',')]
    pub backbones: Vec<String>,
    /// Batch sizes to time, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "64,256")]
    pub batches: Vec<usize>,
    /// Precisions to time, comma-separated (`bf16` also adds the bf16 conformance rows).
    #[arg(long, value_delimiter = ',', default_value = "f32,bf16")]
    pub precisions: Vec<Precision>,
    /// Input side for the timing.
    #[arg(long, default_value_t = 112)]
    pub size: usize,
    /// Timed steps per point (median reported).
    #[arg(long, default_value_t = 10)]
    pub steps: usize,
    /// Untimed warm-up steps per point.
    #[arg(long, default_value_t = 3)]
    pub warmup: usize,
    /// Relative tolerance of device against reference.
    #[arg(long, default_value_t = 1e-4)]
    pub tolerance: f32,
    /// Allow TF32 in f32 cuDNN convolutions and cuBLAS matmuls for the timing (conformance is
    /// always exact f32).
    #[arg(long)]
    pub tf32: bool,
    /// Open an attached profiler's capture range around each point's timed train steps only
    /// (`cuProfilerStart` / `cuProfilerStop`, for `ncu --profile-from-start off`): the
    /// warm-up steps, where cuDNN's algorithms are measured, stay out of the profile. Does
    /// nothing without a profiler, or off CUDA.
    #[arg(long)]
    pub profile_timed_steps: bool,
}
/// `mtanet gpu-check`: fails (non-zero exit) when the device cannot be used or a conformance
/// row fails.
pub fn main(a: &GpuCheckArgs) -> anyhow::Result<()> {
    let backbones = crate::bench::parse_backbones(&a.backbones)?;
    let opts = GpuCheckOptions {
        device: a.device.clone(),
        reference: a.reference.clone(),
        fixtures: a.fixtures.clone(),
        out: a.out.clone(),
        probe: a.probe,
        conformance: !a.no_conformance,
        bench: !a.no_bench,
        backbones,
        batches: a.batches.clone(),
        precisions: a.precisions.clone(),
        size: a.size,
        steps: a.steps,
        warmup: a.warmup,
        tolerance: a.tolerance,
        tf32: a.tf32,
        profile_timed_steps: a.profile_timed_steps,
    };
    let summary = run(&opts)?;
    if !summary.ok() {
        let c = summary.conformance;
        bail!(
            "gpu-check: {} conformance rows failed, {} errored; {} of {} throughput points \
             errored (see {} and {})",
            c.failed,
            c.errored,
            summary.bench_errors,
            summary.bench_points,
            opts.out.join("conformance.csv").display(),
            opts.out.join("bench_rust.csv").display()
        )
    }
    Ok(())
}

/// Runs `mtanet gpu-check`: conformance and throughput as `opts` asks, each writing its CSV
/// whatever happens to single ops or points. Errors only when the output folder cannot be
/// created or written, or the device cannot be opened (then both CSVs are still written, with
/// that error as their one row).
pub fn run(opts: &GpuCheckOptions) -> anyhow::Result<Summary> {
    if opts.probe {
        let what = probe(&opts.device)?;
        println!("gpu-check: device {what}");
        return Ok(Summary::default());
    }
    std::fs::create_dir_all(&opts.out)
        .with_context(|| format!("cannot create {}", opts.out.display()))?;
    let opened = parse_device(&opts.device)
        .map_err(anyhow::Error::msg)
        .and_then(open)
        .and_then(|dev| {
            let reference = parse_device(&opts.reference)
                .map_err(anyhow::Error::msg)
                .and_then(open)?;
            Ok((dev, reference))
        });
    let (dev, reference) = match opened {
        Ok(d) => d,
        Err(e) => {
            let message = format!("cannot open {} / {}: {e:#}", opts.device, opts.reference);
            if opts.conformance {
                let mut c = Checker::new(Device::Cpu, Device::Cpu, opts.tolerance);
                c.push_error("open device", &opts.device, &message);
                write_conformance(&opts.out.join("conformance.csv"), &c.rows)?;
            }
            if opts.bench {
                write_bench(
                    &opts.out.join("bench_rust.csv"),
                    &opts.device,
                    opts.size,
                    &[],
                )?;
            }
            bail!("gpu-check: {message}")
        }
    };
    println!(
        "gpu-check: device {} ({})",
        opts.device,
        conformance::device_name(&dev)
    );
    let mut summary = Summary::default();
    if opts.conformance {
        set_tf32(false);
        let mut c = Checker::new(dev.clone(), reference, opts.tolerance);
        c.csv = Some(opts.out.join("conformance.csv"));
        c.write_csv();
        // The probe's convolution and max-pool first: the smallest check of the device.
        c.guard("probe: grouped conv + max-pool", "[2, 8, 9, 9]", |_| {
            probe(&opts.device).map(|_| ())
        });
        let reference_label = if c.independent {
            format!("{} with candle's own ops", opts.reference)
        } else {
            opts.reference.clone()
        };
        println!("gpu-check: ops ({} vs {reference_label})", opts.device);
        check_ops(&mut c, &opts.fixtures);
        println!(
            "gpu-check: whole training step ({} vs {})",
            opts.device, opts.reference
        );
        check_train_step(&mut c);
        println!(
            "gpu-check: backbones ({} vs {} and PyTorch)",
            opts.device, opts.reference
        );
        check_backbones(&mut c, &opts.fixtures);
        if opts.precisions.contains(&Precision::Bf16) {
            println!(
                "gpu-check: backbones in bf16 ({} bf16 vs {} f32 and PyTorch f32)",
                opts.device, opts.reference
            );
            check_backbones_bf16(&mut c, &opts.fixtures);
        }
        summary.conformance = Counts::of(&c.rows);
        let n = summary.conformance;
        println!(
            "gpu-check: conformance {} passed, {} failed, {} errored, {} skipped ({} rows)",
            n.passed,
            n.failed,
            n.errored,
            n.skipped,
            c.rows.len()
        );
        write_conformance(&opts.out.join("conformance.csv"), &c.rows)?;
    }
    if opts.bench {
        let points = run_bench(opts, &dev)?;
        summary.bench_points = points.len();
        summary.bench_errors = points.iter().filter(|p| p.error.is_some()).count();
        println!(
            "gpu-check: bench {} points, {} errored",
            summary.bench_points, summary.bench_errors
        );
    }
    Ok(summary)
}
#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Tensor;

    fn fixtures() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/backbones")
    }

    #[test]
    fn rel_err_flags_nan_and_shape_mismatch() -> anyhow::Result<()> {
        let a = Tensor::new(&[1f32, f32::NAN], &Device::Cpu)?;
        let b = Tensor::new(&[1f32, 2.0], &Device::Cpu)?;
        assert_eq!(rel_err(&a, &b)?, f32::INFINITY);
        assert_eq!(rel_err(&b, &b)?, 0.0);
        let c = Tensor::new(&[1f32, 2.0, 3.0], &Device::Cpu)?;
        assert!(rel_err(&b, &c).is_err());
        Ok(())
    }

    #[test]
    fn probe_runs_on_the_cpu() -> anyhow::Result<()> {
        assert_eq!(probe("cpu")?, "cpu");
        assert!(probe("tpu").is_err());
        Ok(())
    }

    /// A quiet checker of the CPU against the CPU at the default tolerance.
    fn cpu_checker() -> Checker {
        let mut c = Checker::new(Device::Cpu, Device::Cpu, 1e-4);
        c.print_ok = false;
        c.inject_error = None;
        c
    }

    /// The whole conformance path on the CPU: every row must pass; ops with an independent
    /// formulation are compared with it (not zero error, yet within tolerance), the others
    /// with the same code (zero error) and with PyTorch.
    #[test]
    fn cpu_conformance_passes_against_independent_references() -> anyhow::Result<()> {
        let mut c = cpu_checker();
        check_ops(&mut c, &fixtures());
        check_backbones(&mut c, &fixtures());
        assert!(c.rows.len() > 60, "only {} rows", c.rows.len());
        let mut independent = 0;
        let mut torch = 0;
        for r in &c.rows {
            assert!(r.passed(), "{r:?}");
            if r.reference.ends_with("candle ops") {
                independent += 1;
            } else {
                assert_eq!(r.vs_reference, Some(0.0), "{r:?}");
            }
            torch += usize::from(r.vs_torch.is_some());
        }
        // Every op row but the max-pool fixtures' (which have PyTorch) has its own reference.
        for prefix in [
            "Conv2d op",
            "conv2d() stem",
            "BatchNormTrain",
            "ChannelAffine",
            "Gate op",
            "ChannelMaxMean",
            "AddRelu",
            "add_relu()",
            "sgd_momentum_step()",
            "adam_step()",
            "MaxPool2d op 3x3/2",
        ] {
            assert!(
                c.rows
                    .iter()
                    .filter(|r| r.item.starts_with(prefix))
                    .all(|r| r.reference.ends_with("candle ops")),
                "{prefix}: not compared with an independent reference"
            );
        }
        // The independent references differ from our kernels in rounding somewhere.
        assert!(c
            .rows
            .iter()
            .any(|r| r.reference.ends_with("candle ops") && r.vs_reference > Some(0.0)));
        assert!(independent > 100, "{independent} independent rows");
        assert!(torch > 100, "{torch} rows against PyTorch");
        Ok(())
    }

    /// The whole-step rows on the CPU: both variants run, every row passes, and with the CPU
    /// as both devices the step agrees with itself exactly (deterministic kernels).
    #[test]
    fn train_step_rows_pass_on_the_cpu() -> anyhow::Result<()> {
        let mut c = cpu_checker();
        check_train_step(&mut c);
        assert!(c.rows.len() >= 25, "only {} rows", c.rows.len());
        for r in &c.rows {
            assert!(r.passed(), "{r:?}");
            assert_eq!(r.vs_reference, Some(0.0), "{r:?}");
        }
        for q in ["loss total", "gradient norm", "running_var"] {
            assert!(c.rows.iter().any(|r| r.quantity.contains(q)), "no {q} row");
        }
        assert!(c.rows.iter().any(|r| r.item.contains("device masks")));
        Ok(())
    }

    /// An op that errors becomes one error row (op, shapes, message); the checks after it
    /// still run, and the counts say it.
    #[test]
    fn an_erroring_op_is_an_error_row_and_the_run_goes_on() -> anyhow::Result<()> {
        let mut c = cpu_checker();
        c.inject_error = Some("add_relu()".into());
        let dir = tempfile::tempdir()?;
        c.csv = Some(dir.path().join("conformance.csv"));
        check_ops(&mut c, &fixtures());
        let errors: Vec<_> = c
            .rows
            .iter()
            .filter(|r| r.status == Status::Error)
            .collect();
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert_eq!(errors[0].item, "add_relu()");
        assert_eq!(errors[0].shape, "[2, 8, 5, 5] x [2, 8, 5, 5]");
        assert!(errors[0].message.contains(INJECT_ERROR_ENV), "{errors:?}");
        // Checks after add_relu() ran.
        assert!(c.rows.iter().any(|r| r.item.starts_with("adam_step()")));
        let n = Counts::of(&c.rows);
        assert_eq!((n.failed, n.errored), (0, 1));
        assert!(!n.ok());
        let csv = std::fs::read_to_string(dir.path().join("conformance.csv"))?;
        assert!(csv
            .lines()
            .any(|l| l.starts_with("\"add_relu()\"") && l.contains(",error,")));
        Ok(())
    }

    /// A panic inside a check is caught the same way.
    #[test]
    fn a_panicking_check_is_an_error_row() {
        let mut c = cpu_checker();
        c.guard("boom", "[1]", |_| panic!("kernel exploded"));
        c.guard("fine", "[1]", |c| {
            let t = Tensor::new(&[1f32], &Device::Cpu)?;
            c.push("fine", "output", &t, &t, None)
        });
        assert_eq!(c.rows.len(), 2);
        assert_eq!(c.rows[0].status, Status::Error);
        assert!(
            c.rows[0].message.contains("kernel exploded"),
            "{:?}",
            c.rows[0]
        );
        assert!(c.rows[1].passed());
    }

    /// The bf16 rows on the CPU: every backbone in bf16 lands within the bf16 tolerances of
    /// the f32 computation and of PyTorch's f32 fixtures, yet is measurably not f32 (so the
    /// bf16 path really ran).
    #[test]
    fn bf16_conformance_on_the_cpu() -> anyhow::Result<()> {
        let mut c = cpu_checker();
        check_backbones_bf16(&mut c, &fixtures());
        assert!(c.rows.len() >= 30, "only {} rows", c.rows.len());
        let outputs: Vec<_> = c
            .rows
            .iter()
            .filter(|r| r.quantity.contains("output"))
            .collect();
        assert_eq!(outputs.len(), 2 * BackboneKind::ALL.len());
        for r in &c.rows {
            assert!(r.passed(), "{r:?}");
        }
        for r in outputs {
            let e = r.vs_reference.unwrap_or(0.0);
            eprintln!("{} {}: {e:.2e} vs f32", r.item, r.quantity);
            assert!(e > 1e-4, "bf16 equal to f32? {r:?}");
        }
        let worst_grad = c
            .rows
            .iter()
            .filter(|r| r.quantity.contains("grad"))
            .filter_map(|r| r.vs_reference)
            .fold(0f32, f32::max);
        eprintln!("worst bf16 gradient rel err vs f32: {worst_grad:.2e}");
        Ok(())
    }
}
