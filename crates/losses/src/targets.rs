//! The labels of one batch, per task, with the 0/1 masks that say which frames carry them.

use candle_core::{Device, Result, Tensor};

/// Labels and masks of one batch (Aff-Wild2 frames carry labels for only some tasks).
///
/// Shapes: `va` (N,2), `au` (N,K), `expr` (N) class indices (u32); every mask (N) 0/1 f32.
/// Rows whose mask is 0 may hold any marker (-1, -5, NaN): the losses never read them.
#[derive(Clone, Debug)]
pub struct Targets {
    /// Valence and arousal in [-1, 1].
    pub va: Tensor,
    /// Which frames carry VA labels.
    pub va_mask: Tensor,
    /// Action-unit occurrences, 0 or 1.
    pub au: Tensor,
    /// Which frames carry AU labels.
    pub au_mask: Tensor,
    /// Expression class indices.
    pub expr: Tensor,
    /// Which frames carry an expression label.
    pub expr_mask: Tensor,
}

impl Targets {
    /// The targets for losses computed on `device`: the labels the losses compute with (`va`,
    /// `au`) moved there, the masks and the class indices left where they are. On the CPU the
    /// losses list the valid rows and check the classes there, so a step on a GPU reads nothing
    /// back for them (the row indices and picked classes are uploaded, which does not wait for
    /// the device).
    pub fn with_labels_on(&self, device: &Device) -> Result<Targets> {
        Ok(Targets {
            va: self.va.to_device(device)?,
            va_mask: self.va_mask.clone(),
            au: self.au.to_device(device)?,
            au_mask: self.au_mask.clone(),
            expr: self.expr.clone(),
            expr_mask: self.expr_mask.clone(),
        })
    }

    /// The same targets on `device` (a no-op for tensors already there). With the masks on a
    /// GPU the losses keep them there (no host read, see [`crate::TaskLosses::compute`]).
    pub fn to_device(&self, device: &Device) -> Result<Targets> {
        Ok(Targets {
            va: self.va.to_device(device)?,
            va_mask: self.va_mask.to_device(device)?,
            au: self.au.to_device(device)?,
            au_mask: self.au_mask.to_device(device)?,
            expr: self.expr.to_device(device)?,
            expr_mask: self.expr_mask.to_device(device)?,
        })
    }
}
