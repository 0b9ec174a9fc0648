//! Conformance rows: the relative error of an op or backbone on the device under test against
//! a reference and the PyTorch fixtures, collected by a [`Checker`] and written to
//! `conformance.csv`.
//!
//! Every check runs inside [`Checker::guard`]: an error (or a panic) in one op becomes an
//! `error` row naming the op, its operand shapes and the message, and the run goes on to the
//! next op. `conformance.csv` is rewritten after every guarded check, so a run that is killed
//! still leaves the rows so far.

use std::fmt::Write as _;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context};
use candle_core::{DType, Device, Tensor, Var};

/// Environment variable naming an item (a substring of it) whose checks fail on purpose with
/// an error: the test hook of the error path (`tests/gpu_check_script.rs`).
pub const INJECT_ERROR_ENV: &str = "MTANET_GPU_CHECK_INJECT_ERROR";

/// Outcome of one conformance row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// Both comparisons within tolerance.
    Pass,
    /// A comparison out of tolerance.
    Fail,
    /// The op (or the set-up of the check) returned an error or panicked.
    Error,
    /// Not run, for the reason in the row's message.
    Skip,
}

impl Status {
    /// The word written to `conformance.csv`.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Pass => "pass",
            Status::Fail => "fail",
            Status::Error => "error",
            Status::Skip => "skip",
        }
    }
}

/// One conformance comparison (or one op that could not be compared).
#[derive(Debug, Clone)]
pub struct ConformanceRow {
    /// Op or backbone.
    pub item: String,
    /// What was compared (output, a gradient, ...); `-` for an error row.
    pub quantity: String,
    /// Operand shapes of the check.
    pub shape: String,
    /// What the device's result was compared with (`cpu`: the same code on the CPU;
    /// `cpu, candle ops`: an independent composition of candle's own ops on the CPU).
    pub reference: String,
    /// Relative error against the reference (`None` in an error or skip row).
    pub vs_reference: Option<f32>,
    /// Relative error against the PyTorch fixture, when there is one.
    pub vs_torch: Option<f32>,
    /// Tolerance of the PyTorch comparison.
    pub torch_tolerance: f32,
    /// Outcome.
    pub status: Status,
    /// The error or skip reason; empty otherwise.
    pub message: String,
}

impl ConformanceRow {
    /// Whether the row passed.
    pub fn passed(&self) -> bool {
        self.status == Status::Pass
    }
}

/// Counts of a conformance run by [`Status`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    /// Rows within tolerance.
    pub passed: usize,
    /// Rows out of tolerance.
    pub failed: usize,
    /// Ops that returned an error or panicked.
    pub errored: usize,
    /// Checks not run.
    pub skipped: usize,
}

impl Counts {
    /// Counts `rows`.
    pub fn of(rows: &[ConformanceRow]) -> Self {
        let mut c = Counts::default();
        for r in rows {
            match r.status {
                Status::Pass => c.passed += 1,
                Status::Fail => c.failed += 1,
                Status::Error => c.errored += 1,
                Status::Skip => c.skipped += 1,
            }
        }
        c
    }

    /// True when nothing failed or errored.
    pub fn ok(&self) -> bool {
        self.failed == 0 && self.errored == 0
    }
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

/// Forward output and gradients of `loss = sum(f(inputs) * r)` with respect to every input.
pub(super) fn value_and_grads(
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

/// The dims of `ts`, as `[2, 3, 4] x [5]`.
pub(super) fn shapes(ts: &[Tensor]) -> String {
    ts.iter()
        .map(|t| format!("{:?}", t.dims()))
        .collect::<Vec<_>>()
        .join(" x ")
}

/// An op's computation on a list of inputs.
pub(super) type OpFn<'a> = &'a dyn Fn(&[Tensor]) -> candle_core::Result<Tensor>;

/// Conformance state: the two devices, the rows so far, the tolerance.
pub(super) struct Checker {
    pub(super) dev: Device,
    pub(super) reference: Device,
    pub(super) tolerance: f32,
    pub(super) rows: Vec<ConformanceRow>,
    /// Print passing rows too (failures and errors are always printed).
    pub(super) print_ok: bool,
    /// The device under test and the reference are the same device (the CPU mode): ops
    /// that have an independent formulation ([`Checker::op_with`]) use it as the reference.
    pub(super) independent: bool,
    /// Checks of items containing this text fail with an error on purpose.
    pub(super) inject_error: Option<String>,
    /// `conformance.csv`, rewritten after every guarded check.
    pub(super) csv: Option<PathBuf>,
}

impl Checker {
    /// A checker of `dev` against `reference`; reads [`INJECT_ERROR_ENV`].
    pub(super) fn new(dev: Device, reference: Device, tolerance: f32) -> Self {
        let independent = dev.same_device(&reference);
        Checker {
            dev,
            reference,
            tolerance,
            rows: Vec::new(),
            print_ok: true,
            independent,
            inject_error: std::env::var(INJECT_ERROR_ENV)
                .ok()
                .filter(|s| !s.is_empty()),
            csv: None,
        }
    }

    /// The name of the reference device.
    fn reference_name(&self) -> String {
        device_name(&self.reference)
    }

    /// Runs one check; an error or panic inside becomes an `error` row for `item` with `shape`
    /// and the message. Then rewrites `conformance.csv`.
    pub(super) fn guard(
        &mut self,
        item: &str,
        shape: &str,
        f: impl FnOnce(&mut Self) -> anyhow::Result<()>,
    ) {
        let result = match catch_unwind(AssertUnwindSafe(|| f(self))) {
            Ok(r) => r,
            Err(payload) => Err(anyhow!("panic: {}", panic_message(&*payload))),
        };
        if let Err(e) = result {
            self.push_error(item, shape, &format!("{e:#}"));
        }
        self.write_csv();
    }

    /// [`Checker::guard`] around a load: its value, or `None` with an error row for `item`.
    pub(super) fn guard_load<T>(
        &mut self,
        item: &str,
        path: &Path,
        load: impl FnOnce() -> anyhow::Result<T>,
    ) -> Option<T> {
        let mut out = None;
        self.guard(item, &path.display().to_string(), |_| {
            out = Some(load()?);
            Ok(())
        });
        out
    }

    /// The error [`INJECT_ERROR_ENV`] asks for when `item` contains its text; called first by
    /// every op, fixture and backbone check.
    pub(super) fn injected(&self, item: &str) -> anyhow::Result<()> {
        match self.inject_error.as_deref() {
            Some(s) if item.contains(s) => bail!("error injected by {INJECT_ERROR_ENV}={s}"),
            _ => Ok(()),
        }
    }

    /// Records that `item` could not be checked.
    pub(super) fn push_error(&mut self, item: &str, shape: &str, message: &str) {
        let row = ConformanceRow {
            item: item.to_string(),
            quantity: "-".into(),
            shape: shape.to_string(),
            reference: self.reference_name(),
            vs_reference: None,
            vs_torch: None,
            torch_tolerance: f32::NAN,
            status: Status::Error,
            message: one_line(message),
        };
        println!(
            "  {:<44} {:<28} ERROR: {}",
            row.item, row.shape, row.message
        );
        self.rows.push(row);
    }

    /// Records that `item` was not run, and why.
    pub(super) fn push_skip(&mut self, item: &str, reason: &str) {
        println!("  {item:<44} skipped: {reason}");
        self.rows.push(ConformanceRow {
            item: item.to_string(),
            quantity: "-".into(),
            shape: String::new(),
            reference: self.reference_name(),
            vs_reference: None,
            vs_torch: None,
            torch_tolerance: f32::NAN,
            status: Status::Skip,
            message: reason.to_string(),
        });
    }

    /// A comparison of `got` with `reference` (the reference device's result) and, when given,
    /// a PyTorch fixture with its tolerance.
    pub(super) fn push(
        &mut self,
        item: &str,
        quantity: &str,
        got: &Tensor,
        reference: &Tensor,
        torch: Option<(&Tensor, f32)>,
    ) -> anyhow::Result<()> {
        let what = self.reference_name();
        self.push_row(
            self.tolerance,
            item,
            quantity,
            (got, reference, &what),
            torch,
        )
    }

    /// [`Checker::push`] with its own tolerance against the reference device.
    pub(super) fn push_with(
        &mut self,
        tolerance: f32,
        item: &str,
        quantity: &str,
        got: &Tensor,
        reference: &Tensor,
        torch: Option<(&Tensor, f32)>,
    ) -> anyhow::Result<()> {
        let what = self.reference_name();
        self.push_row(tolerance, item, quantity, (got, reference, &what), torch)
    }

    /// Pushes one row: `(got, reference, what the reference is)`.
    pub(super) fn push_row(
        &mut self,
        tolerance: f32,
        item: &str,
        quantity: &str,
        (got, reference, what): (&Tensor, &Tensor, &str),
        torch: Option<(&Tensor, f32)>,
    ) -> anyhow::Result<()> {
        let vs_reference = rel_err(got, reference)?;
        let vs_torch = torch.map(|(t, _)| rel_err(got, t)).transpose()?;
        let torch_tolerance = torch.map(|(_, tol)| tol).unwrap_or(f32::NAN);
        let pass = vs_reference <= tolerance && vs_torch.is_none_or(|e| e <= torch_tolerance);
        let row = ConformanceRow {
            item: item.to_string(),
            quantity: quantity.to_string(),
            shape: format!("{:?}", got.dims()),
            reference: what.to_string(),
            vs_reference: Some(vs_reference),
            vs_torch,
            torch_tolerance,
            status: if pass { Status::Pass } else { Status::Fail },
            message: String::new(),
        };
        if pass && !self.print_ok {
            self.rows.push(row);
            return Ok(());
        }
        println!(
            "  {:<44} {:<28} vs-ref {:>9.2e}  vs-torch {:>9}  {}",
            row.item,
            row.quantity,
            vs_reference,
            row.vs_torch.map_or("-".into(), |e| format!("{e:.2e}")),
            if pass { "ok" } else { "FAIL" }
        );
        self.rows.push(row);
        Ok(())
    }

    /// An op of `inputs` on both devices: output and every input gradient. When the device
    /// under test is the reference device itself (the CPU mode) and `independent` is given,
    /// the reference is `independent` (the same mathematics through other code, e.g. candle's
    /// own ops), so the CPU mode compares two implementations.
    pub(super) fn op_with(
        &mut self,
        item: &str,
        inputs: &[Tensor],
        r: &Tensor,
        names: &[&str],
        f: OpFn,
        independent: Option<OpFn>,
    ) {
        let shape = shapes(inputs);
        self.guard(item, &shape, |c| {
            c.injected(item)?;
            let (reference_f, what) = match independent {
                Some(g) if c.independent => (g, format!("{}, candle ops", c.reference_name())),
                _ => (f, c.reference_name()),
            };
            let (y_ref, g_ref) = value_and_grads(inputs, r, &c.reference.clone(), reference_f)?;
            let (y, g) = value_and_grads(inputs, r, &c.dev.clone(), f)?;
            let tol = c.tolerance;
            c.push_row(tol, item, "output", (&y, &y_ref, &what), None)?;
            for ((name, a), b) in names.iter().zip(&g).zip(&g_ref) {
                c.push_row(tol, item, &format!("grad {name}"), (a, b, &what), None)?;
            }
            Ok(())
        })
    }

    /// Rewrites `conformance.csv` (if set); a write error is printed, not returned.
    pub(super) fn write_csv(&self) {
        if let Some(path) = &self.csv {
            if let Err(e) = write_conformance(path, &self.rows) {
                eprintln!("gpu-check: {e:#}");
            }
        }
    }
}

/// `cpu`, `cuda:N`, or the device's debug form.
pub(super) fn device_name(d: &Device) -> String {
    match d {
        Device::Cpu => "cpu".into(),
        Device::Cuda(_) => "cuda".into(),
        other => format!("{other:?}"),
    }
}

/// The message of a panic payload.
fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "(no message)".into()
    }
}

/// `s` on one line: line breaks become ` | `, double quotes single ones.
fn one_line(s: &str) -> String {
    s.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" | ")
        .replace('"', "'")
}

/// Writes `rows` to `path` (header `item,quantity,shape,reference,rel_err_vs_reference,
/// rel_err_vs_torch,torch_tolerance,status,message`).
pub(super) fn write_conformance(path: &Path, rows: &[ConformanceRow]) -> anyhow::Result<()> {
    let mut s = String::from(
        "item,quantity,shape,reference,rel_err_vs_reference,rel_err_vs_torch,torch_tolerance,\
         status,message\n",
    );
    let num = |v: Option<f32>| v.map_or(String::new(), |e| format!("{e:.3e}"));
    for r in rows {
        writeln!(
            s,
            "\"{}\",\"{}\",\"{}\",\"{}\",{},{},{},{},\"{}\"",
            one_line(&r.item),
            one_line(&r.quantity),
            r.shape,
            r.reference,
            num(r.vs_reference),
            num(r.vs_torch),
            if r.torch_tolerance.is_nan() {
                String::new()
            } else {
                format!("{:e}", r.torch_tolerance)
            },
            r.status.as_str(),
            one_line(&r.message)
        )?;
    }
    crate::record::atomic_io::write_atomic(path, s.as_bytes())
}
