//! Conformance rows: the relative error of an op or backbone on the device under test against
//! the reference device and the PyTorch fixtures, collected by a [`Checker`] and written to
//! `conformance.csv`.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::{bail, Context};
use candle_core::{DType, Device, Tensor, Var};

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
/// Conformance state: the two devices, the rows so far, the tolerance.
pub(super) struct Checker {
    pub(super) dev: Device,
    pub(super) reference: Device,
    pub(super) tolerance: f32,
    pub(super) rows: Vec<ConformanceRow>,
    /// Print passing rows too (failures are always printed).
    pub(super) print_ok: bool,
}
impl Checker {
    pub(super) fn push(
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
    pub(super) fn push_with(
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
    pub(super) fn op(
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
pub(super) fn write_conformance(path: &Path, rows: &[ConformanceRow]) -> anyhow::Result<()> {
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
