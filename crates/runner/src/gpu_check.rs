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

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context};
use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{ModuleT, VarBuilder, VarMap};
use mtanet_backbones::{
    load_pretrained, BackboneKind, MtaNet, MtaNetConfig, Precision, ResNet, ResNetConfig,
};
use mtanet_kernels::{Conv2d, MaxPool2d};
use mtanet_losses::{LossKind, Targets};
use serde_json::Value;

use crate::build::device::{open, parse_device};
use crate::experiment::{OptimizerKind, StageConfig};
use crate::step::optim::{params, Optimizer};
use crate::step::{eval_step, train_step, Objective, StepGuard};
use mtanet_backbones::SeededVarMap;

/// Action units and expression classes of the benchmarked heads (as `mtanet bench`).
const N_AU: usize = 8;
const N_EXPR: usize = 7;

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

/// One conformance comparison.
#[derive(Debug, Clone)]
pub struct ConformanceRow {
    /// Op or backbone.
    pub item: String,
    /// What was compared (output, a gradient, ...).
    pub quantity: String,
    /// Relative error against the reference device.
    pub vs_reference: f32,
    /// Relative error against the PyTorch fixture, when there is one.
    pub vs_torch: Option<f32>,
    /// Tolerance of the PyTorch comparison.
    pub torch_tolerance: f32,
    /// Whether both comparisons are within tolerance.
    pub pass: bool,
}

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

/// Relative error `max|a - b| / max|b|` (absolute when `b` is all zeros), computed on the CPU.
pub fn rel_err(a: &Tensor, b: &Tensor) -> anyhow::Result<f32> {
    if a.dims() != b.dims() {
        bail!("shape mismatch: {:?} vs {:?}", a.dims(), b.dims())
    }
    let host = |t: &Tensor| -> anyhow::Result<Vec<f32>> {
        Ok(t.to_device(&Device::Cpu)?
            .to_dtype(DType::F32)?
            .flatten_all()?
            .to_vec1::<f32>()?)
    };
    let (a, b) = (host(a)?, host(b)?);
    // On the host, element by element: a NaN anywhere (or inf - inf) must fail the comparison,
    // and tensor `max` reductions may skip NaNs.
    let (mut diff, mut scale) = (0f32, 0f32);
    for (x, y) in a.iter().zip(&b) {
        let d = (x - y).abs();
        if d.is_nan() {
            return Ok(f32::INFINITY);
        }
        diff = diff.max(d);
        scale = scale.max(y.abs());
    }
    Ok(if scale == 0.0 { diff } else { diff / scale })
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

/// Deterministic test data on the CPU (a fixed-seed normal), moved to each device as needed.
fn cpu_randn(seed: u64, shape: &[usize], std: f64) -> anyhow::Result<Tensor> {
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

/// Forward output and gradients of `loss = sum(f(inputs) * r)` with respect to every input.
fn value_and_grads(
    inputs: &[Tensor],
    r: &Tensor,
    dev: &Device,
    f: &dyn Fn(&[Tensor]) -> candle_core::Result<Tensor>,
) -> anyhow::Result<(Tensor, Vec<Tensor>)> {
    let vars: Vec<Var> = inputs
        .iter()
        .map(|t| Var::from_tensor(&t.to_device(dev)?))
        .collect::<candle_core::Result<_>>()?;
    let ts: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
    let y = f(&ts)?;
    let grads = (&y * r.to_device(dev)?)?.sum_all()?.backward()?;
    let g = vars
        .iter()
        .map(|v| {
            grads
                .get(v.as_tensor())
                .cloned()
                .context("an input got no gradient")
        })
        .collect::<anyhow::Result<_>>()?;
    Ok((y, g))
}

/// Conformance state: the two devices, the rows so far, the tolerance.
struct Checker {
    dev: Device,
    reference: Device,
    tolerance: f32,
    rows: Vec<ConformanceRow>,
    /// Print passing rows too (failures are always printed).
    print_ok: bool,
}

impl Checker {
    fn push(
        &mut self,
        item: &str,
        quantity: &str,
        got: &Tensor,
        reference: &Tensor,
        torch: Option<(&Tensor, f32)>,
    ) -> anyhow::Result<()> {
        self.push_with(self.tolerance, item, quantity, got, reference, torch)
    }

    /// [`Checker::push`] with its own tolerance against the reference device.
    fn push_with(
        &mut self,
        tolerance: f32,
        item: &str,
        quantity: &str,
        got: &Tensor,
        reference: &Tensor,
        torch: Option<(&Tensor, f32)>,
    ) -> anyhow::Result<()> {
        let vs_reference = rel_err(got, reference)?;
        let vs_torch = torch.map(|(t, _)| rel_err(got, t)).transpose()?;
        let torch_tolerance = torch.map(|(_, tol)| tol).unwrap_or(f32::NAN);
        let pass = vs_reference <= tolerance && vs_torch.is_none_or(|e| e <= torch_tolerance);
        let row = ConformanceRow {
            item: item.to_string(),
            quantity: quantity.to_string(),
            vs_reference,
            vs_torch,
            torch_tolerance,
            pass,
        };
        if row.pass && !self.print_ok {
            self.rows.push(row);
            return Ok(());
        }
        println!(
            "  {:<44} {:<28} vs-ref {:>9.2e}  vs-torch {:>9}  {}",
            row.item,
            row.quantity,
            row.vs_reference,
            row.vs_torch.map_or("-".into(), |e| format!("{e:.2e}")),
            if row.pass { "ok" } else { "FAIL" }
        );
        self.rows.push(row);
        Ok(())
    }

    /// An op of `inputs` on both devices: output and every input gradient.
    fn op(
        &mut self,
        item: &str,
        inputs: &[Tensor],
        r: &Tensor,
        names: &[&str],
        f: &dyn Fn(&[Tensor]) -> candle_core::Result<Tensor>,
    ) -> anyhow::Result<()> {
        let (y_ref, g_ref) = value_and_grads(inputs, r, &self.reference.clone(), f)?;
        let (y, g) = value_and_grads(inputs, r, &self.dev.clone(), f)?;
        self.push(item, "output", &y, &y_ref, None)?;
        for ((name, a), b) in names.iter().zip(&g).zip(&g_ref) {
            self.push(item, &format!("grad {name}"), a, b, None)?;
        }
        Ok(())
    }
}

/// Convolution shapes of the backbones, each at batch >= 2:
/// (name, input dims, weight dims, stride, padding, groups).
type ConvCase = (&'static str, [usize; 4], [usize; 4], usize, usize, usize);
const CONV_CASES: [ConvCase; 6] = [
    ("stem 7x7/2", [2, 3, 40, 40], [16, 3, 7, 7], 2, 3, 1),
    ("dense 3x3", [2, 16, 14, 14], [24, 16, 3, 3], 1, 1, 1),
    (
        "grouped 3x3/2 g32",
        [2, 64, 11, 11],
        [64, 2, 3, 3],
        2,
        1,
        32,
    ),
    ("grouped 3x3 g32", [3, 128, 7, 7], [128, 4, 3, 3], 1, 1, 32),
    ("pointwise 1x1", [3, 32, 8, 8], [64, 32, 1, 1], 1, 0, 1),
    ("downsample 1x1/2", [2, 32, 9, 9], [64, 32, 1, 1], 2, 0, 1),
];

fn check_ops(c: &mut Checker, fixtures: &Path) -> anyhow::Result<()> {
    for (i, &(name, xd, wd, stride, padding, groups)) in CONV_CASES.iter().enumerate() {
        let seed = 100 + 10 * i as u64;
        let x = cpu_randn(seed, &xd, 1.0)?;
        let w = cpu_randn(seed + 1, &wd, 0.2)?;
        let g = mtanet_kernels::ConvGeometry::new(&xd, &wd, stride, padding, groups)?;
        let (n, co, oh, ow) = g.output_dims();
        let r = cpu_randn(seed + 2, &[n, co, oh, ow], 1.0)?;
        let op = Conv2d {
            stride,
            padding,
            groups,
        };
        c.op(
            &format!("Conv2d op {name}"),
            &[x.clone(), w.clone()],
            &r,
            &["input", "weight"],
            &|t| t[0].apply_op2(&t[1], op),
        )?;
        c.op(
            &format!("conv2d() {name}"),
            &[x, w],
            &r,
            &["input", "weight"],
            &|t| mtanet_kernels::conv2d(&t[0], &t[1], stride, padding, groups),
        )?;
    }

    // Max-pool: the PyTorch fixtures (ties, ceil-mode edges, padding), op and public function.
    let path = fixtures.join("maxpool.safetensors");
    let f = candle_core::safetensors::load(&path, &Device::Cpu)
        .with_context(|| format!("cannot read {}", path.display()))?;
    let mut cases: Vec<&str> = f.keys().filter_map(|k| k.strip_suffix(".params")).collect();
    cases.sort();
    for case in cases {
        let p = f[&format!("{case}.params")].to_vec1::<i64>()?;
        let pool = MaxPool2d {
            kernel: p[0] as usize,
            stride: p[1] as usize,
            padding: p[2] as usize,
            ceil_mode: p[3] != 0,
        };
        let x = &f[&format!("{case}.input")];
        let gy = &f[&format!("{case}.grad_output")];
        for (label, public) in [("MaxPool2d op", false), ("max_pool2d()", true)] {
            let run = |t: &[Tensor]| {
                if public {
                    mtanet_kernels::max_pool2d(
                        &t[0],
                        pool.kernel,
                        pool.stride,
                        pool.padding,
                        pool.ceil_mode,
                    )
                } else {
                    t[0].apply_op1(pool)
                }
            };
            let item = format!("{label} {case} (batch {})", x.dim(0)?);
            let (y_ref, g_ref) =
                value_and_grads(std::slice::from_ref(x), gy, &c.reference.clone(), &run)?;
            let (y, g) = value_and_grads(std::slice::from_ref(x), gy, &c.dev.clone(), &run)?;
            let want_y = &f[&format!("{case}.output")];
            let want_g = &f[&format!("{case}.grad_input")];
            c.push(&item, "output", &y, &y_ref, Some((want_y, 0.0)))?;
            c.push(&item, "grad input", &g[0], &g_ref[0], Some((want_g, 1e-6)))?;
        }
    }
    // A stem-sized random max-pool at batch 4 (no ties), both modes.
    for (ceil, padding) in [(false, 1), (true, 0)] {
        let x = cpu_randn(900 + padding as u64, &[4, 16, 28, 28], 1.0)?;
        let pool = MaxPool2d {
            kernel: 3,
            stride: 2,
            padding,
            ceil_mode: ceil,
        };
        let g = mtanet_kernels::PoolGeometry::new(x.dims(), 3, 2, padding, ceil)?;
        let r = cpu_randn(950, &[4, 16, g.rows.output, g.cols.output], 1.0)?;
        c.op(
            &format!("MaxPool2d op 3x3/2 p{padding} ceil={ceil} (batch 4)"),
            &[x],
            &r,
            &["input"],
            &|t| t[0].apply_op1(pool),
        )?;
    }
    // Residual add + ReLU.
    let a = cpu_randn(1000, &[2, 8, 5, 5], 1.0)?;
    let b = cpu_randn(1001, &[2, 8, 5, 5], 1.0)?;
    let r = cpu_randn(1002, &[2, 8, 5, 5], 1.0)?;
    c.op("add_relu()", &[a, b], &r, &["a", "b"], &|t| {
        mtanet_kernels::add_relu(&t[0], &t[1])
    })?;
    check_fused_ops(c)?;
    check_optimizer_steps(c)
}

/// The BatchNorm, gate and residual ops. Their op structs are private to `mtanet-kernels`; the
/// public functions apply them directly to f32 tensors on the CPU and on CUDA (no composed
/// fallback there), so each row runs the op's `cuda_fwd` and its backward ops' on the device.
/// Odd sizes (inner sizes off the 16-lane and 32-lane blocks), batch >= 2, and a strided
/// (transposed) input for each op family.
fn check_fused_ops(c: &mut Checker) -> anyhow::Result<()> {
    let bn = |relu: bool, strided: bool| {
        move |t: &[Tensor]| -> candle_core::Result<Tensor> {
            let x = if strided {
                t[0].transpose(2, 3)?
            } else {
                t[0].clone()
            };
            Ok(mtanet_kernels::batch_norm_train(&x, &t[1], &t[2], 1e-5, relu)?.0)
        }
    };
    // (label, x dims as stored, strided: the op sees x transposed in its last two axes)
    let bn_cases: [(&str, &[usize], bool); 4] = [
        ("(2, 5, 7, 9)", &[2, 5, 7, 9], false),
        ("(3, 4, 17, 19)", &[3, 4, 17, 19], false),
        ("(2, 3, 11, 5) transposed", &[2, 3, 11, 5], true),
        ("(6, 7) NC", &[6, 7], false),
    ];
    for (i, &(label, dims, strided)) in bn_cases.iter().enumerate() {
        let seed = 1100 + 10 * i as u64;
        let ch = dims[1];
        // A channel offset larger than the spread, as after a ReLU: the two-pass variance.
        let x = (cpu_randn(seed, dims, 1.0)? + 3.0)?;
        let w = (cpu_randn(seed + 1, &[ch], 0.3)? + 1.0)?;
        let b = cpu_randn(seed + 2, &[ch], 0.3)?;
        let mut out_dims = dims.to_vec();
        if strided {
            out_dims.swap(2, 3);
        }
        let r = cpu_randn(seed + 3, &out_dims, 1.0)?;
        for relu in [false, true] {
            let item = format!("BatchNormTrain op {label} relu={relu}");
            let inputs = [x.clone(), w.clone(), b.clone()];
            c.op(
                &item,
                &inputs,
                &r,
                &["input", "weight", "bias"],
                &bn(relu, strided),
            )?;
            // The statistics the op hands back for the running averages.
            let stats = |dev: &Device| -> anyhow::Result<[Tensor; 2]> {
                let on = |t: &Tensor| t.to_device(dev);
                let xd = if strided {
                    on(&x)?.transpose(2, 3)?
                } else {
                    on(&x)?
                };
                let (_, s) = mtanet_kernels::batch_norm_train(&xd, &on(&w)?, &on(&b)?, 1e-5, relu)?;
                Ok([
                    Tensor::new(s.mean.as_slice(), &Device::Cpu)?,
                    Tensor::new(s.var.as_slice(), &Device::Cpu)?,
                ])
            };
            let [m_ref, v_ref] = stats(&c.reference.clone())?;
            let [m, v] = stats(&c.dev.clone())?;
            c.push(&item, "batch mean", &m, &m_ref, None)?;
            c.push(&item, "batch var", &v, &v_ref, None)?;
        }
        if dims.len() == 4 && !strided {
            let scale = cpu_randn(seed + 4, &[ch], 0.5)?;
            let shift = cpu_randn(seed + 5, &[ch], 0.5)?;
            for relu in [false, true] {
                c.op(
                    &format!("ChannelAffine op {label} relu={relu}"),
                    &[x.clone(), scale.clone(), shift.clone()],
                    &r,
                    &["input", "scale", "shift"],
                    &|t| mtanet_kernels::channel_affine(&t[0], &t[1], &t[2], relu),
                )?;
            }
        }
    }
    // ChannelAffine on a strided input.
    let x = cpu_randn(1150, &[2, 3, 11, 5], 1.0)?;
    let scale = cpu_randn(1151, &[3], 0.5)?;
    let shift = cpu_randn(1152, &[3], 0.5)?;
    let r = cpu_randn(1153, &[2, 3, 5, 11], 1.0)?;
    c.op(
        "ChannelAffine op (2, 3, 11, 5) transposed relu=true",
        &[x, scale, shift],
        &r,
        &["input", "scale", "shift"],
        &|t| mtanet_kernels::channel_affine(&t[0].transpose(2, 3)?, &t[1], &t[2], true),
    )?;

    // Gates: channel (N, C) and spatial (N, 1, H, W), plain and on a transposed input.
    for (i, &(n, ch, h, w)) in [(2, 5, 7, 9), (3, 33, 6, 11)].iter().enumerate() {
        let seed = 1200 + 10 * i as u64;
        let label = format!("({n}, {ch}, {h}, {w})");
        let x = cpu_randn(seed, &[n, ch, h, w], 1.0)?;
        let gc = cpu_randn(seed + 1, &[n, ch], 1.0)?;
        let gs = cpu_randn(seed + 2, &[n, 1, h, w], 1.0)?;
        let r = cpu_randn(seed + 3, &[n, ch, h, w], 1.0)?;
        c.op(
            &format!("Gate op channel {label}"),
            &[x.clone(), gc.clone()],
            &r,
            &["input", "gate"],
            &|t| mtanet_kernels::channel_gate(&t[0], &t[1]),
        )?;
        c.op(
            &format!("Gate op spatial {label}"),
            &[x.clone(), gs.clone()],
            &r,
            &["input", "gate"],
            &|t| mtanet_kernels::spatial_gate(&t[0], &t[1]),
        )?;
        let rt = r.transpose(2, 3)?.contiguous()?;
        c.op(
            &format!("Gate op channel {label} transposed"),
            &[x.clone(), gc],
            &rt,
            &["input", "gate"],
            &|t| mtanet_kernels::channel_gate(&t[0].transpose(2, 3)?, &t[1]),
        )?;
        c.op(
            &format!("Gate op spatial {label} transposed"),
            &[x.clone(), gs.transpose(2, 3)?.contiguous()?],
            &rt,
            &["input", "gate"],
            &|t| mtanet_kernels::spatial_gate(&t[0].transpose(2, 3)?, &t[1]),
        )?;
        let r2 = cpu_randn(seed + 4, &[n, 2, h, w], 1.0)?;
        c.op(
            &format!("ChannelMaxMean op {label}"),
            std::slice::from_ref(&x),
            &r2,
            &["input"],
            &|t| mtanet_kernels::channel_max_mean(&t[0]),
        )?;
        c.op(
            &format!("ChannelMaxMean op {label} transposed"),
            &[x],
            &r2.transpose(2, 3)?.contiguous()?,
            &["input"],
            &|t| mtanet_kernels::channel_max_mean(&t[0].transpose(2, 3)?),
        )?;
    }
    // Ties in the channel max: the gradient goes to the first maximal channel on every device.
    let x = cpu_randn(1300, &[2, 4, 3, 5], 1.0)?.round()?;
    let r = cpu_randn(1301, &[2, 2, 3, 5], 1.0)?;
    c.op(
        "ChannelMaxMean op (2, 4, 3, 5) ties",
        &[x],
        &r,
        &["input"],
        &|t| mtanet_kernels::channel_max_mean(&t[0]),
    )?;

    // Residual join (AddRelu forward, ReluMask backward): odd size and a strided operand.
    let a = cpu_randn(1400, &[3, 7, 5, 3], 1.0)?;
    let b = cpu_randn(1401, &[3, 7, 3, 5], 1.0)?;
    let r = cpu_randn(1402, &[3, 7, 5, 3], 1.0)?;
    c.op(
        "AddRelu op (3, 7, 5, 3), b transposed",
        &[a, b],
        &r,
        &["a", "b"],
        &|t| mtanet_kernels::add_relu(&t[0], &t[1].transpose(2, 3)?),
    )?;
    Ok(())
}

/// The in-place optimizer updates (SGD with momentum, Adam): two steps on both devices from
/// the same start; the parameter and every state buffer compared.
fn check_optimizer_steps(c: &mut Checker) -> anyhow::Result<()> {
    let p0 = cpu_randn(1500, &[3, 37], 1.0)?;
    let grads = [
        cpu_randn(1501, &[3, 37], 1.0)?,
        cpu_randn(1502, &[3, 37], 1.0)?,
    ];
    let run = |dev: &Device, adam: bool| -> anyhow::Result<Vec<Tensor>> {
        // `copy` gives each run its own storage (the updates are in place).
        let p = p0.to_device(dev)?.copy()?;
        let m = p.zeros_like()?;
        let v = p.zeros_like()?;
        for (step, g) in grads.iter().enumerate() {
            let g = g.to_device(dev)?;
            if adam {
                let t = step as i32 + 1;
                mtanet_kernels::adam_step(&p, &m, &v, &g, 1e-2, [0.9, 0.999], 1e-8, 1e-4, 0.5, t)?;
            } else {
                mtanet_kernels::sgd_momentum_step(&p, &m, &g, 0.1, 0.9, 1e-4, 0.5)?;
            }
        }
        Ok(vec![p, m, v])
    };
    for (label, adam, names) in [
        (
            "sgd_momentum_step() (3, 37)",
            false,
            &["param", "momentum"][..],
        ),
        ("adam_step() (3, 37)", true, &["param", "m", "v"][..]),
    ] {
        let want = run(&c.reference.clone(), adam)?;
        let got = run(&c.dev.clone(), adam)?;
        for ((name, a), b) in names.iter().zip(&got).zip(&want) {
            c.push(label, &format!("{name} after 2 steps"), a, b, None)?;
        }
    }
    Ok(())
}

/// Builds the small backbone of `kind` on `dev` with the fixture weights.
fn fixture_backbone(
    kind: BackboneKind,
    meta: &Value,
    fixtures: &Path,
    dev: &Device,
) -> anyhow::Result<(ResNet, VarMap)> {
    let m = &meta["small"][kind.name()];
    let div = m["width_div"]
        .as_u64()
        .context("backbones.json: width_div")? as usize;
    let depths: Vec<usize> = serde_json::from_value(m["depths"].clone())?;
    let depths: [usize; 4] = depths
        .try_into()
        .map_err(|d| anyhow::anyhow!("backbones.json: depths {d:?} is not 4 numbers"))?;
    let groups = m["groups"].as_u64().map(|g| g as usize);
    let cfg = ResNetConfig::from_kind(&kind).scaled(div, Some(depths), groups);
    let varmap = VarMap::new();
    let net = ResNet::new(&cfg, VarBuilder::from_varmap(&varmap, DType::F32, dev))?;
    let report = load_pretrained(
        &varmap,
        &fixtures.join(format!("{kind}.weights.safetensors")),
        "",
    )?;
    if !report.fresh.is_empty() || !report.unmatched.is_empty() {
        bail!(
            "{kind}: fixture weights do not cover the model (fresh {:?}, unmatched {:?})",
            report.fresh,
            report.unmatched
        )
    }
    Ok((net, varmap))
}

/// Everything one backbone run yields: eval output, train output, named gradients, and the
/// BN running statistics after the train step.
type BackboneRun = (Tensor, Tensor, Vec<(String, Tensor)>, Vec<(String, Tensor)>);

fn run_backbone(
    kind: BackboneKind,
    meta: &Value,
    fixtures: &Path,
    io: &std::collections::HashMap<String, Tensor>,
    dev: &Device,
) -> anyhow::Result<BackboneRun> {
    let (net, varmap) = fixture_backbone(kind, meta, fixtures, dev)?;
    let x = io["input"].to_device(dev)?;
    let out_eval = net.forward_t(&x, false)?;
    let xv = Var::from_tensor(&x)?;
    let out_train = net.forward_t(xv.as_tensor(), true)?;
    let grads = (&out_train * io["loss_weight"].to_device(dev)?)?
        .sum_all()?
        .backward()?;
    let named = fixture_gradients(kind, io, &varmap, xv.as_tensor(), &grads)?;
    let vars = varmap
        .data()
        .lock()
        .map_err(|_| anyhow::anyhow!("VarMap lock poisoned"))?
        .clone();
    let mut after = Vec::new();
    let mut keys: Vec<&String> = io.keys().collect();
    keys.sort();
    for name in keys.iter().filter_map(|k| k.strip_prefix("after_train.")) {
        let v = vars
            .get(name)
            .with_context(|| format!("{kind}: no variable {name}"))?;
        after.push((name.to_string(), v.as_tensor().clone()));
    }
    Ok((out_eval, out_train, named, after))
}

/// The gradients the fixture stores (`grad.input`, `grad.<parameter>`), in name order and in
/// f32, from `grads` of a run whose input was `input`.
fn fixture_gradients(
    kind: BackboneKind,
    io: &std::collections::HashMap<String, Tensor>,
    varmap: &VarMap,
    input: &Tensor,
    grads: &candle_core::backprop::GradStore,
) -> anyhow::Result<Vec<(String, Tensor)>> {
    let vars = varmap
        .data()
        .lock()
        .map_err(|_| anyhow::anyhow!("VarMap lock poisoned"))?
        .clone();
    let mut names: Vec<&str> = io.keys().filter_map(|k| k.strip_prefix("grad.")).collect();
    names.sort();
    let mut named = Vec::new();
    for name in names {
        let t = match name {
            "input" => input.clone(),
            _ => vars
                .get(name)
                .with_context(|| format!("{kind}: no variable {name}"))?
                .as_tensor()
                .clone(),
        };
        let g = grads
            .get(&t)
            .with_context(|| format!("{kind}: no gradient for {name}"))?;
        named.push((name.to_string(), g.to_dtype(DType::F32)?));
    }
    Ok(named)
}

/// `backbones.json` of the fixture folder.
fn fixture_meta(fixtures: &Path) -> anyhow::Result<Value> {
    let path = fixtures.join("backbones.json");
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("cannot read {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("cannot parse {}", path.display()))
}

/// `<kind>.io.safetensors` of the fixture folder: input, outputs, gradients.
fn fixture_io(
    fixtures: &Path,
    kind: BackboneKind,
) -> anyhow::Result<std::collections::HashMap<String, Tensor>> {
    let path = fixtures.join(format!("{kind}.io.safetensors"));
    candle_core::safetensors::load(&path, &Device::Cpu)
        .with_context(|| format!("cannot read {}", path.display()))
}

fn check_backbones(c: &mut Checker, fixtures: &Path) -> anyhow::Result<()> {
    let meta = fixture_meta(fixtures)?;
    for kind in BackboneKind::ALL {
        let io = fixture_io(fixtures, kind)?;
        let item = format!("{kind} (small, batch {})", io["input"].dim(0)?);
        let (e_ref, t_ref, g_ref, a_ref) =
            run_backbone(kind, &meta, fixtures, &io, &c.reference.clone())?;
        let (e, t, g, a) = run_backbone(kind, &meta, fixtures, &io, &c.dev.clone())?;
        c.push(
            &item,
            "eval output",
            &e,
            &e_ref,
            Some((&io["out_eval"], 1e-4)),
        )?;
        c.push(
            &item,
            "train output",
            &t,
            &t_ref,
            Some((&io["out_train"], 1e-4)),
        )?;
        // Every gradient against both references; parameter rows are printed only on failure.
        let (mut max_ref, mut max_torch) = (0f32, 0f32);
        for ((name, got), (_, reference)) in g.iter().zip(&g_ref) {
            let want = &io[&format!("grad.{name}")];
            c.print_ok = name == "input";
            c.push(
                &item,
                &format!("grad {name}"),
                got,
                reference,
                Some((want, 1e-3)),
            )?;
            if let Some(last) = c.rows.last() {
                max_ref = max_ref.max(last.vs_reference);
                max_torch = max_torch.max(last.vs_torch.unwrap_or(0.0));
            }
        }
        c.print_ok = true;
        println!(
            "  {item}: {} gradients, max rel err vs-ref {max_ref:.2e}, vs-torch {max_torch:.2e}",
            g.len()
        );
        for ((name, got), (_, reference)) in a.iter().zip(&a_ref) {
            let want = &io[&format!("after_train.{name}")];
            c.push(
                &item,
                &format!("after train: {name}"),
                got,
                reference,
                Some((want, 1e-4)),
            )?;
        }
    }
    Ok(())
}

/// Eval output, train output and named eval-mode gradients (see [`run_backbone_precision`]).
type PrecisionRun = (Tensor, Tensor, Vec<(String, Tensor)>);

/// Eval output, train output and eval-mode gradients (of `sum(eval output * loss_weight)`
/// with respect to the input and every fixture parameter), all in f32, of a fixture backbone
/// computing in `precision`. Eval-mode gradients, because the fixtures' train-mode gradients
/// pass through BatchNorm over 2 images of 1x1 to 4x4 maps, where (x - mean) cancels and
/// any rounding becomes a large relative error.
fn run_backbone_precision(
    kind: BackboneKind,
    meta: &Value,
    fixtures: &Path,
    io: &std::collections::HashMap<String, Tensor>,
    dev: &Device,
    precision: Precision,
) -> anyhow::Result<PrecisionRun> {
    let (net, varmap) = fixture_backbone(kind, meta, fixtures, dev)?;
    // The backbone computes in its input's dtype with f32 weights (mtanet_backbones::Precision).
    let compute = precision.compute_dtype().unwrap_or(DType::F32);
    let xv = Var::from_tensor(&io["input"].to_device(dev)?.to_dtype(compute)?)?;
    let out_eval = net.forward_t(xv.as_tensor(), false)?.to_dtype(DType::F32)?;
    let out_train = net.forward_t(xv.as_tensor(), true)?.to_dtype(DType::F32)?;
    let grads = (&out_eval * io["loss_weight"].to_device(dev)?)?
        .sum_all()?
        .backward()?;
    let named = fixture_gradients(kind, io, &varmap, xv.as_tensor(), &grads)?;
    Ok((out_eval, out_train, named))
}

/// Relative tolerance of a bf16 backbone's eval output against the f32 computation: bf16
/// keeps 8 significant bits (rounding 2^-9 = 0.2%) through ~20 rounded convolutions.
/// PyTorch's own autocast lands 4e-3 to 9e-3 from f32 on these fixtures
/// (`scripts/reference/bf16_autocast_spread.py`); ours, on the CPU, 2.9e-3 to 1.2e-2.
const BF16_TOLERANCE: f32 = 5e-2;
/// The train output's: BatchNorm over 2 images of tiny maps amplifies the rounding (CPU runs
/// reach 1.47e-1, ResNeXt).
const BF16_TRAIN_TOLERANCE: f32 = 2.5e-1;
/// Eval-mode gradients': every bf16 convolution's backward rounds again, and small gradients
/// cancel. PyTorch's autocast reaches ~0.26 on these fixtures; ours stays below 0.17 on the
/// CPU. A missing cast or scale shows up as an error of order 1.
const BF16_GRAD_TOLERANCE: f32 = 3e-1;

/// Every backbone in `precision: bf16` on the device against the f32 computation on the
/// reference device (outputs and eval-mode gradients) and the PyTorch f32 fixtures (outputs),
/// with the bf16 tolerances above.
fn check_backbones_bf16(c: &mut Checker, fixtures: &Path) -> anyhow::Result<()> {
    let meta = fixture_meta(fixtures)?;
    for kind in BackboneKind::ALL {
        let io = fixture_io(fixtures, kind)?;
        let item = format!("{kind} bf16 (small, batch {})", io["input"].dim(0)?);
        let reference = c.reference.clone();
        let (e_ref, t_ref, g_ref) =
            run_backbone_precision(kind, &meta, fixtures, &io, &reference, Precision::F32)?;
        let dev = c.dev.clone();
        let (e, t, g) = run_backbone_precision(kind, &meta, fixtures, &io, &dev, Precision::Bf16)?;
        let tol = BF16_TOLERANCE;
        c.push_with(
            tol,
            &item,
            "eval output",
            &e,
            &e_ref,
            Some((&io["out_eval"], tol)),
        )?;
        let train_tol = BF16_TRAIN_TOLERANCE;
        let torch_train = Some((&io["out_train"], train_tol));
        c.push_with(train_tol, &item, "train output", &t, &t_ref, torch_train)?;
        let mut max_ref = 0f32;
        for ((name, got), (_, reference)) in g.iter().zip(&g_ref) {
            c.print_ok = name == "input";
            let name = format!("eval grad {name}");
            c.push_with(BF16_GRAD_TOLERANCE, &item, &name, got, reference, None)?;
            max_ref = max_ref.max(c.rows.last().map_or(0.0, |r| r.vs_reference));
        }
        c.print_ok = true;
        println!(
            "  {item}: {} eval-mode gradients, max rel err vs f32 {max_ref:.2e}",
            g.len()
        );
    }
    Ok(())
}

fn write_conformance(path: &Path, rows: &[ConformanceRow]) -> anyhow::Result<()> {
    let mut s =
        String::from("item,quantity,rel_err_vs_reference,rel_err_vs_torch,torch_tolerance,pass\n");
    for r in rows {
        writeln!(
            s,
            "\"{}\",\"{}\",{:.3e},{},{},{}",
            r.item,
            r.quantity,
            r.vs_reference,
            r.vs_torch.map_or(String::new(), |e| format!("{e:.3e}")),
            if r.torch_tolerance.is_nan() {
                String::new()
            } else {
                format!("{:e}", r.torch_tolerance)
            },
            r.pass
        )?;
    }
    std::fs::write(path, s).with_context(|| format!("cannot write {}", path.display()))
}

/// Median of per-step seconds over `steps` timed steps after `warmup` untimed ones; the device
/// is synchronised after every step.
fn median_seconds(
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
    let cfg = MtaNetConfig::new(ResNetConfig::from_kind(&kind), N_AU, N_EXPR);
    let vars = SeededVarMap::new(7);
    let model = MtaNet::new(&cfg, vars.var_builder(DType::F32, dev))?.with_precision(precision);
    let stage = StageConfig {
        name: "gpu-check".into(),
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
    let mut opt = Optimizer::new(&stage, params(&all_vars, true));
    // Inputs drawn on the CPU and uploaded: no cuRAND on the device.
    let x = cpu_randn(11, &[batch, 3, size, size], 1.0)?.to_device(dev)?;
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
    let objective = Objective {
        kind: LossKind::Sum,
        uncertainty: None,
        au_pos_weight: None,
    };
    let mut train_step = || -> anyhow::Result<()> {
        train_step(
            &model,
            &x,
            &targets,
            &objective,
            &mut opt,
            StepGuard::default(),
        )?;
        Ok(())
    };
    let train_s = median_seconds(dev, steps, warmup, &mut train_step)?;
    let mut eval_step = || -> anyhow::Result<()> {
        eval_step(&model, &x)?;
        Ok(())
    };
    let eval_s = median_seconds(dev, steps, warmup, &mut eval_step)?;
    Ok((batch as f64 / train_s, batch as f64 / eval_s))
}

fn write_bench(
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
    let backbones = if a.backbones.is_empty() {
        BackboneKind::ALL.to_vec()
    } else {
        a.backbones
            .iter()
            .map(|b| b.parse())
            .collect::<Result<Vec<BackboneKind>, _>>()?
    };
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
        #[cfg(feature = "cuda")]
        mtanet_kernels::cuda::set_allow_tf32(opts.tf32);
        let mut points = Vec::new();
        for &kind in &opts.backbones {
            for &batch in &opts.batches {
                for &precision in &opts.precisions {
                    let t = Instant::now();
                    let r = bench_point(
                        &dev,
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
    }
    Ok(all_pass)
}

#[cfg(test)]
mod tests {
    use super::*;

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
