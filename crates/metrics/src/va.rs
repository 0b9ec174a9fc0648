//! Streaming valence/arousal accumulator.

use serde::{Deserialize, Serialize};

use crate::ccc::CccMoments;

/// CCC per VA dimension over every frame pushed (population statistics, f64).
///
/// Non-finite values are not filtered: they make the CCC NaN, which is the honest result
/// for a model that produced them.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct VaAccumulator {
    valence: CccMoments,
    arousal: CccMoments,
}

impl VaAccumulator {
    /// An empty accumulator.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds one frame: `[valence, arousal]` predicted and annotated.
    pub fn push(&mut self, pred: [f32; 2], target: [f32; 2]) {
        self.valence.push(f64::from(pred[0]), f64::from(target[0]));
        self.arousal.push(f64::from(pred[1]), f64::from(target[1]));
    }

    /// Frames pushed.
    pub fn len(&self) -> usize {
        self.valence.len()
    }

    /// True when no frame was pushed.
    pub fn is_empty(&self) -> bool {
        self.valence.is_empty()
    }

    /// `[ccc_valence, ccc_arousal]`; `None` when empty.
    pub fn ccc(&self) -> Option<[f64; 2]> {
        (!self.is_empty()).then(|| [self.valence.value(), self.arousal.value()])
    }
}
