//! Deterministic parameter initialisation.
//!
//! candle's CPU random generator cannot be seeded (`set_seed` fails on CPU), so a `VarMap`
//! initialises differently on every run. [`SeededVarMap`] is a `VarBuilder` backend that draws
//! each new variable from a ChaCha generator seeded by (seed, variable name): the same seed
//! gives the same weights whatever the creation order or thread count.

use candle_core::{DType, Device, Result, Shape, Tensor, Var};
use candle_nn::{var_builder::SimpleBackend, Init, VarBuilder, VarMap};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use mtanet_seed::stream_seed;

/// A [`VarMap`] whose new variables are drawn from a seeded generator.
#[derive(Clone)]
pub struct SeededVarMap {
    map: VarMap,
    seed: u64,
}

impl SeededVarMap {
    /// Wraps a fresh map.
    pub fn new(seed: u64) -> Self {
        Self {
            map: VarMap::new(),
            seed,
        }
    }

    /// The underlying map (all variables, for optimizers and checkpoints).
    pub fn varmap(&self) -> &VarMap {
        &self.map
    }

    /// A `VarBuilder` over this map.
    pub fn var_builder(&self, dtype: DType, device: &Device) -> VarBuilder<'static> {
        VarBuilder::from_backend(Box::new(self.clone()), dtype, device.clone())
    }

    fn draw(&self, shape: &Shape, name: &str, init: Init, device: &Device) -> Result<Tensor> {
        let n = shape.elem_count();
        let mut rng = ChaCha8Rng::seed_from_u64(stream_seed(self.seed, &["init", name]));
        let (dist, a, b) = match init {
            Init::Const(c) => return Tensor::full(c as f32, shape, device),
            Init::Uniform { lo, up } => (0, lo, up),
            Init::Randn { mean, stdev } => (1, mean, stdev),
            Init::Kaiming {
                dist,
                fan,
                non_linearity,
            } => {
                let std = non_linearity.gain() / (fan.for_shape(shape) as f64).sqrt();
                match dist {
                    candle_nn::init::NormalOrUniform::Uniform => {
                        let bound = 3f64.sqrt() * std;
                        (0, -bound, bound)
                    }
                    candle_nn::init::NormalOrUniform::Normal => (1, 0.0, std),
                }
            }
        };
        let data: Vec<f32> = if dist == 0 {
            (0..n).map(|_| rng.random_range(a..b) as f32).collect()
        } else {
            (0..n).map(|_| (a + b * normal(&mut rng)) as f32).collect()
        };
        Tensor::from_vec(data, shape.clone(), device)
    }
}

/// A standard normal draw (Box-Muller), independent of `rand_distr`.
fn normal(rng: &mut ChaCha8Rng) -> f64 {
    let u1: f64 = rng.random_range(f64::MIN_POSITIVE..1.0);
    let u2: f64 = rng.random();
    (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
}

impl SimpleBackend for SeededVarMap {
    fn get(&self, s: Shape, name: &str, h: Init, dtype: DType, dev: &Device) -> Result<Tensor> {
        let mut data = self.map.data().lock().expect("var map lock poisoned");
        if let Some(v) = data.get(name) {
            if v.shape() != &s {
                candle_core::bail!("shape mismatch on {name}: {s:?} <> {:?}", v.shape());
            }
            return Ok(v.as_tensor().clone());
        }
        let t = self.draw(&s, name, h, dev)?.to_dtype(dtype)?;
        let var = Var::from_tensor(&t)?;
        let out = var.as_tensor().clone();
        data.insert(name.to_string(), var);
        Ok(out)
    }

    fn get_unchecked(&self, name: &str, _dtype: DType, _dev: &Device) -> Result<Tensor> {
        candle_core::bail!("`get_unchecked` is not supported for `{name}`: use `get`")
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.map
            .data()
            .lock()
            .expect("var map lock poisoned")
            .contains_key(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_weights_other_seed_differs() {
        let make = |seed| {
            let m = SeededVarMap::new(seed);
            let vb = m.var_builder(DType::F32, &Device::Cpu);
            let a = vb
                .get_with_hints((4, 3), "a.weight", candle_nn::init::DEFAULT_KAIMING_NORMAL)
                .unwrap();
            a.flatten_all().unwrap().to_vec1::<f32>().unwrap()
        };
        assert_eq!(make(1), make(1));
        assert_ne!(make(1), make(2));
        let v = make(3);
        let mean = v.iter().sum::<f32>() / v.len() as f32;
        assert!(mean.abs() < 1.0);
    }

    #[test]
    fn uniform_in_bounds() {
        let m = SeededVarMap::new(0);
        let vb = m.var_builder(DType::F32, &Device::Cpu);
        let t = vb
            .get_with_hints(100, "b", Init::Uniform { lo: -0.5, up: 0.25 })
            .unwrap();
        for x in t.to_vec1::<f32>().unwrap() {
            assert!((-0.5..0.25).contains(&x));
        }
        assert!(m.contains_tensor("b"));
    }

    #[test]
    fn each_variable_draws_from_its_named_init_stream() {
        let m = SeededVarMap::new(7);
        let vb = m.var_builder(DType::F32, &Device::Cpu);
        let _first = vb.get_with_hints(5, "first", Init::Const(1.0)).unwrap();
        let t = vb
            .get_with_hints(6, "layer.w", Init::Uniform { lo: -1.0, up: 1.0 })
            .unwrap();
        let mut rng = ChaCha8Rng::seed_from_u64(mtanet_seed::stream_seed(7, &["init", "layer.w"]));
        let want: Vec<f32> = (0..6).map(|_| rng.random_range(-1.0..1.0) as f32).collect();
        assert_eq!(t.to_vec1::<f32>().unwrap(), want);
        let again = vb.get_with_hints(6, "layer.w", Init::Const(0.0)).unwrap();
        assert_eq!(again.to_vec1::<f32>().unwrap(), want);
    }
}
