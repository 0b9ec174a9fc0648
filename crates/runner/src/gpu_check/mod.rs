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
//! `--probe` only opens the device and runs one convolution and one max-pool on it: the
//! missing-GPU check of the script. With `--device cpu` everything runs on the CPU (the
//! plumbing test on a machine without a GPU).

pub(crate) use crate::bench::cpu_randn;

mod backbones;
mod throughput;
mod conformance;
mod ops;

use backbones::{check_backbones, check_backbones_bf16};
use throughput::run_bench;
pub use throughput::BenchPoint;
pub use conformance::{rel_err, ConformanceRow};
use conformance::{write_conformance, Checker};
use ops::check_ops;

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
    /// Let f32 cuDNN convolutions use TF32 (timing only; conformance always runs exact f32).
    pub tf32: bool,
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
    /// Allow TF32 in f32 cuDNN convolutions for the timing (conformance is always exact f32).
    #[arg(long)]
    pub tf32: bool,
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
    };
    if !run(&opts)? {
        bail!(
            "gpu-check: conformance failed (see {})",
            opts.out.join("conformance.csv").display()
        )
    }
    Ok(())
}
/// Runs `mtanet gpu-check`. Returns whether every conformance row passed (throughput failures
/// are recorded in `bench_rust.csv`, not returned).
pub fn run(opts: &GpuCheckOptions) -> anyhow::Result<bool> {
    let what = probe(&opts.device)?;
    println!("gpu-check: device {what}");
    if opts.probe {
        return Ok(true);
    }
    std::fs::create_dir_all(&opts.out)
        .with_context(|| format!("cannot create {}", opts.out.display()))?;
    let dev = open(parse_device(&opts.device).map_err(anyhow::Error::msg)?)?;
    let mut all_pass = true;
    if opts.conformance {
        #[cfg(feature = "cuda")]
        mtanet_kernels::cuda::set_allow_tf32(false);
        let reference = open(parse_device(&opts.reference).map_err(anyhow::Error::msg)?)?;
        let mut c = Checker {
            dev: dev.clone(),
            reference,
            tolerance: opts.tolerance,
            rows: Vec::new(),
            print_ok: true,
        };
        println!("gpu-check: ops ({} vs {})", opts.device, opts.reference);
        check_ops(&mut c, &opts.fixtures)?;
        println!(
            "gpu-check: backbones ({} vs {} and PyTorch)",
            opts.device, opts.reference
        );
        check_backbones(&mut c, &opts.fixtures)?;
        if opts.precisions.contains(&Precision::Bf16) {
            println!(
                "gpu-check: backbones in bf16 ({} bf16 vs {} f32 and PyTorch f32)",
                opts.device, opts.reference
            );
            check_backbones_bf16(&mut c, &opts.fixtures)?;
        }
        let failed = c.rows.iter().filter(|r| !r.pass).count();
        all_pass = failed == 0;
        println!(
            "gpu-check: conformance {} passed, {failed} failed",
            c.rows.len() - failed
        );
        write_conformance(&opts.out.join("conformance.csv"), &c.rows)?;
    }
    if opts.bench {
        run_bench(opts, &dev)?;
    }
    Ok(all_pass)
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

    /// A quiet checker comparing the CPU with itself at the default tolerance.
    fn cpu_checker() -> Checker {
        Checker {
            dev: Device::Cpu,
            reference: Device::Cpu,
            tolerance: 1e-4,
            rows: Vec::new(),
            print_ok: false,
        }
    }

    /// The whole conformance path, CPU against CPU: every row must pass with zero error
    /// against the reference and within tolerance of PyTorch.
    #[test]
    fn cpu_against_cpu_conformance_passes() -> anyhow::Result<()> {
        let mut c = cpu_checker();
        check_ops(&mut c, &fixtures())?;
        check_backbones(&mut c, &fixtures())?;
        assert!(c.rows.len() > 60, "only {} rows", c.rows.len());
        for r in &c.rows {
            assert!(r.pass, "{r:?}");
            assert_eq!(r.vs_reference, 0.0, "{r:?}");
        }
        Ok(())
    }

    /// The bf16 rows on the CPU: every backbone in bf16 lands within the bf16 tolerances of
    /// the f32 computation and of PyTorch's f32 fixtures, yet is measurably not f32 (so the
    /// bf16 path really ran).
    #[test]
    fn bf16_conformance_on_the_cpu() -> anyhow::Result<()> {
        let mut c = cpu_checker();
        check_backbones_bf16(&mut c, &fixtures())?;
        assert!(c.rows.len() >= 30, "only {} rows", c.rows.len());
        let outputs: Vec<_> = c
            .rows
            .iter()
            .filter(|r| r.quantity.contains("output"))
            .collect();
        assert_eq!(outputs.len(), 2 * BackboneKind::ALL.len());
        for r in &c.rows {
            assert!(r.pass, "{r:?}");
        }
        for r in outputs {
            eprintln!("{} {}: {:.2e} vs f32", r.item, r.quantity, r.vs_reference);
            assert!(r.vs_reference > 1e-4, "bf16 equal to f32? {r:?}");
        }
        let worst_grad = c
            .rows
            .iter()
            .filter(|r| r.quantity.contains("grad"))
            .map(|r| r.vs_reference)
            .fold(0f32, f32::max);
        eprintln!("worst bf16 gradient rel err vs f32: {worst_grad:.2e}");
        Ok(())
    }
}
