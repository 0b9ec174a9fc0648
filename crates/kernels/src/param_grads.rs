//! Parameter gradients written once, outside candle's graph.
//!
//! A candle op takes at most three inputs, so an op over a whole block would have to take its
//! parameters packed into one tensor (`flatten_all` and `cat` of every parameter). candle's
//! backward then gives the packed tensor, each flattened piece and each parameter a
//! zero-filled gradient and adds into it: three passes of allocation, zero-fill and addition
//! over every parameter, and the forward copies them all into the packed tensor first.
//!
//! Instead, the op reads its parameters where they are and its backward hands their gradients
//! to a [`ParamGrads`]. [`ParamGrads::backward`] runs candle's backward and then moves them into
//! the [`GradStore`] under the parameters' own ids, where an optimizer finds them as it finds
//! any other gradient: each one is written once, by the op. A model whose training ops take a
//! `ParamGrads` has to be differentiated through it; a training forward refuses to start while
//! gradients of an earlier backward are still pending ([`ParamGrads::check_collected`]), so a
//! plain `Tensor::backward` cannot leave them behind unnoticed.

use candle_core::backprop::GradStore;
use candle_core::{bail, Result, Tensor};
use std::sync::{Arc, Mutex};

/// Where fused training ops leave their parameters' gradients until the backward is done;
/// clones share one store.
#[derive(Clone, Debug, Default)]
pub struct ParamGrads {
    pending: Arc<Mutex<Vec<(Tensor, Tensor)>>>,
}

impl ParamGrads {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// Keeps each `(parameter, gradient)` pair until it is collected.
    pub(crate) fn push(&self, pairs: impl IntoIterator<Item = (Tensor, Tensor)>) -> Result<()> {
        self.lock()?.extend(pairs);
        Ok(())
    }

    /// How many gradients are pending.
    pub fn pending(&self) -> Result<usize> {
        Ok(self.lock()?.len())
    }

    /// An error when gradients of an earlier backward were not collected into its
    /// [`GradStore`]: their parameters would silently miss that step's update. `model` names
    /// the model in the message.
    pub fn check_collected(&self, model: &str) -> Result<()> {
        let n = self.pending()?;
        if n > 0 {
            bail!(
                "{model}: {n} parameter gradients of an earlier backward were never collected; \
                 differentiate the model with its own `backward` (which collects them), not \
                 with `Tensor::backward`"
            )
        }
        Ok(())
    }

    /// Moves every pending gradient into `grads`, under its parameter's id (added to a gradient
    /// the graph gave the same parameter). Returns how many were moved.
    pub fn collect_into(&self, grads: &mut GradStore) -> Result<usize> {
        let pending = std::mem::take(&mut *self.lock()?);
        let n = pending.len();
        for (param, grad) in pending {
            let total = match grads.remove(&param) {
                Some(other) => (other + grad)?,
                None => grad,
            };
            grads.insert(&param, total);
        }
        Ok(n)
    }

    /// `loss.backward()`, then [`ParamGrads::collect_into`] its store: every gradient, those of
    /// candle's graph and those the ops wrote here.
    pub fn backward(&self, loss: &Tensor) -> Result<GradStore> {
        let mut grads = loss.backward()?;
        self.collect_into(&mut grads)?;
        Ok(grads)
    }

    fn lock(&self) -> Result<std::sync::MutexGuard<'_, Vec<(Tensor, Tensor)>>> {
        self.pending
            .lock()
            .map_err(|_| candle_core::Error::Msg("ParamGrads: a thread panicked".into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    /// A collected gradient lands under its parameter, added to the graph's own gradient of it,
    /// and the store is empty again.
    #[test]
    fn collected_gradients_add_to_the_graphs() -> Result<()> {
        let dev = Device::Cpu;
        let (a, b) = (Var::new(&[1f32, 2.], &dev)?, Var::new(&[3f32, 4.], &dev)?);
        let loss = (a.as_tensor() * 5.)?.sum_all()?;
        let store = ParamGrads::new();
        store.push([
            (a.as_tensor().clone(), Tensor::new(&[1f32, 1.], &dev)?),
            (b.as_tensor().clone(), Tensor::new(&[7f32, 8.], &dev)?),
        ])?;
        assert!(store.check_collected("test").is_err());
        let grads = store.backward(&loss)?;
        let get = |v: &Var| grads.get(v).map(|g| g.to_vec1::<f32>()).transpose();
        assert_eq!(get(&a)?, Some(vec![6., 6.]));
        assert_eq!(get(&b)?, Some(vec![7., 8.]));
        assert_eq!(store.pending()?, 0);
        store.check_collected("test")
    }
}
