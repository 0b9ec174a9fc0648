//! Dropout whose masks come from a seeded ChaCha stream, so training runs are reproducible.
//!
//! candle's `Dropout` draws from the device RNG, which cannot be seeded on CPU. Here each
//! training-mode forward pass draws its masks from `ChaCha8Rng::seed_from_u64(seed)`, where
//! `seed` is the value set by [`SeededDropout::set_seed`] and advances by one per pass. Masks
//! are drawn on the CPU and moved to the input's device (a few thousand values per batch).

use candle_core::{DType, Result, Tensor};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::sync::atomic::{AtomicU64, Ordering};

/// Inverted dropout (`x * mask / (1 - p)` in training, identity in eval) with seeded masks.
#[derive(Debug)]
pub(crate) struct SeededDropout {
    p: f32,
    next_seed: AtomicU64,
}

impl Clone for SeededDropout {
    fn clone(&self) -> Self {
        Self {
            p: self.p,
            next_seed: AtomicU64::new(self.next_seed.load(Ordering::Relaxed)),
        }
    }
}

/// The random source of one forward pass.
pub(crate) struct DropoutPass {
    rng: Option<ChaCha8Rng>,
    p: f32,
}

impl SeededDropout {
    /// Dropout with probability `p` and initial seed 0.
    pub(crate) fn new(p: f32) -> Self {
        Self {
            p,
            next_seed: AtomicU64::new(0),
        }
    }

    /// The seed of the next training-mode pass.
    pub(crate) fn set_seed(&self, seed: u64) {
        self.next_seed.store(seed, Ordering::Relaxed);
    }

    /// Starts one forward pass: in training with `p > 0` it takes the current seed and advances it.
    pub(crate) fn pass(&self, train: bool) -> DropoutPass {
        let active = train && self.p > 0.0;
        let rng = active.then(|| {
            let seed = self.next_seed.fetch_add(1, Ordering::Relaxed);
            ChaCha8Rng::seed_from_u64(seed)
        });
        DropoutPass { rng, p: self.p }
    }
}

impl DropoutPass {
    /// Applies dropout to `x` (identity outside training).
    pub(crate) fn apply(&mut self, x: &Tensor) -> Result<Tensor> {
        let Some(rng) = self.rng.as_mut() else {
            return Ok(x.clone());
        };
        let scale = 1.0 / (1.0 - self.p);
        let mask: Vec<f32> = (0..x.elem_count())
            .map(|_| {
                if rng.random::<f32>() >= self.p {
                    scale
                } else {
                    0.0
                }
            })
            .collect();
        let mask = Tensor::from_vec(mask, x.shape(), &candle_core::Device::Cpu)?
            .to_dtype(if x.dtype() == DType::F64 {
                DType::F64
            } else {
                x.dtype()
            })?
            .to_device(x.device())?;
        x * mask
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn same_seed_same_mask_and_the_seed_advances() -> Result<()> {
        let d = SeededDropout::new(0.5);
        let x = Tensor::ones((4, 256), DType::F32, &Device::Cpu)?;
        d.set_seed(7);
        let a = d.pass(true).apply(&x)?;
        let b = d.pass(true).apply(&x)?;
        d.set_seed(7);
        let c = d.pass(true).apply(&x)?;
        let diff =
            |u: &Tensor, v: &Tensor| -> Result<f32> { (u - v)?.abs()?.sum_all()?.to_scalar() };
        assert_eq!(diff(&a, &c)?, 0.0);
        assert!(diff(&a, &b)? > 0.0);
        // Inverted dropout: kept values are scaled by 1/(1-p) = 2; about half are kept.
        let v: Vec<f32> = a.flatten_all()?.to_vec1()?;
        assert!(v.iter().all(|&e| e == 0.0 || e == 2.0));
        let kept = v.iter().filter(|&&e| e == 2.0).count() as f64 / v.len() as f64;
        assert!((kept - 0.5).abs() < 0.08, "kept {kept}");
        Ok(())
    }

    #[test]
    fn eval_and_zero_probability_are_identity() -> Result<()> {
        let x = Tensor::arange(0f32, 12., &Device::Cpu)?.reshape((3, 4))?;
        let d = SeededDropout::new(0.5);
        let y = d.pass(false).apply(&x)?;
        assert_eq!(y.to_vec2::<f32>()?, x.to_vec2::<f32>()?);
        let d0 = SeededDropout::new(0.0);
        let y = d0.pass(true).apply(&x)?;
        assert_eq!(y.to_vec2::<f32>()?, x.to_vec2::<f32>()?);
        Ok(())
    }
}
