//! One batch: images and per-task labels with masks, as candle tensors.

use std::fmt;
use std::path::PathBuf;

use candle_core::Tensor;

/// Which frame a batch row came from (for error messages and prediction files).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SampleId {
    /// Video name.
    pub video: String,
    /// 1-based frame number.
    pub frame: u32,
}

impl fmt::Display for SampleId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{:05}", self.video, self.frame)
    }
}

/// A batch of N frames. Rows whose task label is missing hold zeros (class 0 for EXPR) and a 0
/// in that task's mask; losses and metrics must use the masks.
#[derive(Debug, Clone)]
pub struct Batch {
    /// `(N, 3, H, W)` f32, normalised by the loader's [`crate::Preprocess`].
    pub images: Tensor,
    /// `(N, 2)` f32 valence, arousal.
    pub va: Tensor,
    /// `(N)` f32, 1 where VA is labelled.
    pub va_mask: Tensor,
    /// `(N, K)` f32 0/1 per AU.
    pub au: Tensor,
    /// `(N)` f32, 1 where AUs are labelled.
    pub au_mask: Tensor,
    /// `(N)` u32 class index.
    pub expr: Tensor,
    /// `(N)` f32, 1 where the expression is labelled.
    pub expr_mask: Tensor,
    /// The frame of each row.
    pub ids: Vec<SampleId>,
    /// The crops of this batch's frames that could not be read or decoded and have no row
    /// ([`crate::OnBadFrame::Drop`]), in plan order; always empty in the other modes.
    pub dropped: Vec<PathBuf>,
}

impl Batch {
    /// Number of rows.
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    /// True for a batch without rows (produced by the loader only under
    /// [`crate::OnBadFrame::Drop`], when no crop of the batch could be read).
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }
}
