//! Kendall et al. homoscedastic-uncertainty task weights (paper Eq. 5).

use candle_core::{DType, Result, Tensor};
use candle_nn::{Init, VarBuilder};

/// The VarBuilder prefix the runner should use: `UncertaintyWeights::new(vb.pp(UNCERTAINTY_PREFIX))`
/// stores the parameters as `uncertainty.log_var_{va,au,expr}`.
pub const UNCERTAINTY_PREFIX: &str = "uncertainty";

/// One learnable log-variance `s = log sigma^2` per task, initialised to 0 (sigma = 1).
///
/// Eq. 5 written with `s` (Kendall et al. 2018, the exact forms):
/// VA (regression) `0.5 exp(-s) L + 0.5 s`, minimised at `s* = log L`;
/// AU and EXPR (classification) `exp(-s) L + 0.5 s`, minimised at `s* = log 2L`.
/// The parameters are shape-(1) tensors so they live in the model's `VarMap` and are saved
/// and restored with it. No clamping is applied.
#[derive(Clone, Debug)]
pub struct UncertaintyWeights {
    log_var_va: Tensor,
    log_var_au: Tensor,
    log_var_expr: Tensor,
}

impl UncertaintyWeights {
    /// Creates (or loads) `log_var_va`, `log_var_au`, `log_var_expr` directly under `vb`.
    ///
    /// Following the candle convention the caller chooses the prefix: pass
    /// `vb.pp(UNCERTAINTY_PREFIX)` to get the names `uncertainty.log_var_va` etc.
    /// [`UncertaintyWeights::from_root`] does exactly that.
    pub fn new(vb: VarBuilder) -> Result<Self> {
        let get = |name: &str| vb.get_with_hints(1, name, Init::Const(0.0));
        Ok(Self {
            log_var_va: get("log_var_va")?,
            log_var_au: get("log_var_au")?,
            log_var_expr: get("log_var_expr")?,
        })
    }

    /// `Self::new(vb.pp(UNCERTAINTY_PREFIX))`, for a `vb` at the model root.
    pub fn from_root(vb: &VarBuilder) -> Result<Self> {
        Self::new(vb.pp(UNCERTAINTY_PREFIX))
    }

    /// The three log-variance tensors (shape (1)), order va, au, expr.
    pub fn tensors(&self) -> [&Tensor; 3] {
        [&self.log_var_va, &self.log_var_au, &self.log_var_expr]
    }

    /// Host values of `s = log sigma^2`, order va, au, expr (NaN if a read fails).
    pub fn log_vars(&self) -> [f32; 3] {
        self.tensors().map(|t| host_scalar(t).unwrap_or(f32::NAN))
    }

    /// Host values of `sigma = exp(s / 2)`, order va, au, expr.
    pub fn sigmas(&self) -> [f32; 3] {
        self.log_vars().map(|s| (0.5 * s).exp())
    }

    /// Host values of the factors multiplying each task loss: `0.5 e^-s` (VA), `e^-s` (AU, EXPR).
    pub fn loss_factors(&self) -> [f32; 3] {
        Self::factors(self.log_vars())
    }

    /// The factors of [`UncertaintyWeights::loss_factors`] for the log-variances `s` (va, au,
    /// expr) already on the host.
    pub fn factors([va, au, expr]: [f32; 3]) -> [f32; 3] {
        [0.5 * (-va).exp(), (-au).exp(), (-expr).exp()]
    }

    /// VA term of Eq. 5: `0.5 exp(-s) L + 0.5 s` (scalar).
    pub fn weigh_va(&self, loss: &Tensor) -> Result<Tensor> {
        weigh(&self.log_var_va, loss, 0.5)
    }

    /// AU term of Eq. 5: `exp(-s) L + 0.5 s` (scalar).
    pub fn weigh_au(&self, loss: &Tensor) -> Result<Tensor> {
        weigh(&self.log_var_au, loss, 1.0)
    }

    /// EXPR term of Eq. 5: `exp(-s) L + 0.5 s` (scalar).
    pub fn weigh_expr(&self, loss: &Tensor) -> Result<Tensor> {
        weigh(&self.log_var_expr, loss, 1.0)
    }
}

/// `factor * exp(-s) * loss + 0.5 * s`, as an f32 scalar.
fn weigh(log_var: &Tensor, loss: &Tensor, factor: f64) -> Result<Tensor> {
    let s = log_var.to_dtype(DType::F32)?.reshape(())?;
    let loss = loss.to_dtype(DType::F32)?.reshape(())?;
    let precision = s.neg()?.exp()?;
    ((precision * loss)? * factor)? + (s * 0.5)?
}

fn host_scalar(t: &Tensor) -> Result<f32> {
    t.to_dtype(DType::F32)?
        .flatten_all()?
        .get(0)?
        .to_scalar::<f32>()
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;
    use candle_nn::{Optimizer, VarMap, SGD};

    fn setup() -> Result<(VarMap, UncertaintyWeights)> {
        let map = VarMap::new();
        let vb = VarBuilder::from_varmap(&map, DType::F32, &Device::Cpu);
        let uw = UncertaintyWeights::from_root(&vb)?;
        Ok((map, uw))
    }

    #[test]
    fn parameters_are_named_and_initialised_to_zero() -> Result<()> {
        let (map, uw) = setup()?;
        let data = map
            .data()
            .lock()
            .map_err(|e| candle_core::Error::msg(e.to_string()))?;
        let mut names: Vec<&String> = data.keys().collect();
        names.sort();
        assert_eq!(
            names,
            [
                "uncertainty.log_var_au",
                "uncertainty.log_var_expr",
                "uncertainty.log_var_va"
            ]
        );
        drop(data);
        assert_eq!(uw.log_vars(), [0.0; 3]);
        assert_eq!(uw.sigmas(), [1.0; 3]);
        assert_eq!(uw.loss_factors(), [0.5, 1.0, 1.0]);
        Ok(())
    }

    #[test]
    fn saved_and_reloaded_with_the_varmap() -> Result<()> {
        let (mut map, uw) = setup()?;
        map.set_one(
            "uncertainty.log_var_au",
            Tensor::new(&[0.75f32], &Device::Cpu)?,
        )?;
        let dir = tempfile::tempdir().map_err(candle_core::Error::wrap)?;
        let path = dir.path().join("m.safetensors");
        map.save(&path)?;
        let mut map2 = VarMap::new();
        let vb2 = VarBuilder::from_varmap(&map2, DType::F32, &Device::Cpu);
        let uw2 = UncertaintyWeights::from_root(&vb2)?;
        map2.load(&path)?;
        assert_eq!(uw2.log_vars(), [0.0, 0.75, 0.0]);
        assert_eq!(uw.log_vars(), [0.0, 0.75, 0.0]);
        Ok(())
    }

    #[test]
    fn gradient_descent_reaches_the_analytic_optimum() -> Result<()> {
        let (map, uw) = setup()?;
        let dev = Device::Cpu;
        let (l_va, l_au, l_expr) = (0.6f32, 0.2f32, 1.7f32);
        let mut sgd = SGD::new(map.all_vars(), 0.2)?;
        for _ in 0..2000 {
            let total = ((uw.weigh_va(&Tensor::new(l_va, &dev)?)?
                + uw.weigh_au(&Tensor::new(l_au, &dev)?)?)?
                + uw.weigh_expr(&Tensor::new(l_expr, &dev)?)?)?;
            sgd.backward_step(&total)?;
        }
        let s = uw.log_vars();
        let want = [l_va.ln(), (2.0 * l_au).ln(), (2.0 * l_expr).ln()];
        for (got, want) in s.iter().zip(want) {
            assert!((got - want).abs() < 1e-4, "{s:?} vs {want}");
        }
        Ok(())
    }
}
