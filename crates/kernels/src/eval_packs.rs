//! The weight layouts of every convolution of a network, kept for one evaluation pass.
//!
//! A [`WeightPacks`] holds the layouts the forward kernels derive from one layer's weights
//! (`conv2d/weight_packs.rs`); an [`EvalPacks`] holds one per convolution weight, found by the
//! weight tensor's id, for as long as its owner keeps it. An evaluation pass over a loader
//! makes one, hands it to every batch's forward ([`bottlenecks_infer`](crate::bottlenecks_infer))
//! and drops it at the end: each layer's weights are packed on the first batch and read on the
//! others, with the same output bits as packing them every time.
//!
//! Nothing may change the weights while the store is kept (an optimizer step, a checkpoint
//! loaded into the model): its layouts would be those of the old weights. Every call compares
//! the layer's weights with what they were when its layouts were first kept (their length and
//! 64 values spread over them) and refuses with an error where they differ,
//! rather than compute with stale layouts. That comparison is a tripwire for a store kept too
//! long, not a proof: a change that leaves all 64 values alone passes it.

use crate::conv2d::WeightPacks;
use candle_core::{bail, Result, Tensor, TensorId};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// Values of a layer's weights compared at every call.
const SAMPLES: usize = 64;

/// What a layer's weights were when its layouts were first kept.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Fingerprint {
    len: usize,
    samples: [u32; SAMPLES],
}

impl Fingerprint {
    fn of(values: &[f32]) -> Self {
        let len = values.len();
        Self {
            len,
            samples: std::array::from_fn(|i| {
                values.get(i * len / SAMPLES).map_or(0, |v| v.to_bits())
            }),
        }
    }
}

/// Every convolution's [`WeightPacks`] for one evaluation pass (see the module doc). Empty
/// when made.
#[derive(Debug, Default)]
pub struct EvalPacks {
    layers: Mutex<HashMap<TensorId, (Fingerprint, Arc<WeightPacks>)>>,
}

impl EvalPacks {
    /// An empty store, for one evaluation pass.
    pub fn new() -> Self {
        Self::default()
    }

    /// Layers whose weights it holds layouts of.
    pub fn layers(&self) -> usize {
        self.lock().len()
    }

    fn lock(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<TensorId, (Fingerprint, Arc<WeightPacks>)>> {
        // A panic while the lock was held left the map whole (inserts only): go on with it.
        self.layers.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The store of the layer whose weight tensor is `weight` (its values `values`), made
    /// empty on the layer's first call; an error where the weights are no longer those of
    /// that first call.
    pub(crate) fn layer(&self, weight: &Tensor, values: &[f32]) -> Result<Arc<WeightPacks>> {
        let now = Fingerprint::of(values);
        let mut layers = self.lock();
        let (then, packs) = layers
            .entry(weight.id())
            .or_insert_with(|| (now, Arc::new(WeightPacks::new())));
        if *then != now {
            bail!(
                "a convolution weight {:?} changed while an evaluation pass kept its packed \
                 layouts (an optimizer step or a checkpoint load inside the pass?): start a new \
                 pass with a new EvalPacks",
                weight.dims()
            )
        }
        Ok(Arc::clone(packs))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn one_store_per_weight_and_changed_weights_refused() -> Result<()> {
        let dims = (8, 4, 3, 3);
        let w = Tensor::zeros(dims, candle_core::DType::F32, &Device::Cpu)?;
        let other = Tensor::zeros(dims, candle_core::DType::F32, &Device::Cpu)?;
        let mut values: Vec<f32> = (0..288).map(|i| i as f32).collect();
        let packs = EvalPacks::new();
        let first = packs.layer(&w, &values)?;
        let again = packs.layer(&w, &values)?;
        assert!(
            Arc::ptr_eq(&first, &again),
            "the same weight, the same store"
        );
        let second = packs.layer(&other, &values)?;
        assert!(
            !Arc::ptr_eq(&first, &second),
            "another weight, another store"
        );
        assert_eq!(packs.layers(), 2);
        // The same tensor's values changed in place, as an optimizer step changes them.
        values.iter_mut().for_each(|v| *v *= 0.5);
        let err = packs
            .layer(&w, &values)
            .expect_err("changed weights must be refused");
        assert!(err.to_string().contains("changed while an evaluation pass"));
        Ok(())
    }
}
