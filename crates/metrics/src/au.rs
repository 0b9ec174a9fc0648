//! Streaming action-unit accumulator: keeps the sigmoid outputs so that any threshold can be
//! evaluated (and tuned) after the pass.

use serde::{Deserialize, Serialize};

use crate::error::MetricsError;
use crate::f1::BinaryCounts;

/// The threshold used when none is tuned: "AU active" means `sigmoid >= 0.5`.
pub const DEFAULT_THRESHOLD: f32 = 0.5;

/// Sigmoid outputs and 0/1 labels of every frame pushed, row-major (frame x AU).
///
/// Memory is 5 bytes per frame and AU (1M frames x 12 AUs = 60 MB).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct AuAccumulator {
    n_au: usize,
    probs: Vec<f32>,
    targets: Vec<u8>,
}

/// F1 / accuracy of the AU task at one set of thresholds.
#[derive(Clone, Debug, PartialEq)]
pub struct AuScores {
    /// Binary F1 of each AU (`zero_division=0`).
    pub per_au_f1: Vec<f64>,
    /// Unweighted mean of `per_au_f1` (0 when there is no AU).
    pub f1: f64,
    /// Accuracy over the flattened frame x AU decision matrix ("total accuracy").
    pub accuracy: f64,
}

impl AuAccumulator {
    /// An empty accumulator for `n_au` action units.
    pub fn new(n_au: usize) -> Self {
        Self {
            n_au,
            probs: Vec::new(),
            targets: Vec::new(),
        }
    }

    /// Adds one frame: `probs` = sigmoid outputs (K), `target` = 0/1 labels (K).
    ///
    /// # Panics
    /// On a length mismatch or a label other than 0/1; use [`Self::try_push`] for
    /// untrusted input such as prediction files.
    pub fn push(&mut self, probs: &[f32], target: &[u8]) {
        if let Err(e) = self.try_push(probs, target) {
            panic!("AuAccumulator::push: {e}");
        }
    }

    /// Adds one frame, or says why it cannot (the accumulator is then unchanged).
    pub fn try_push(&mut self, probs: &[f32], target: &[u8]) -> Result<(), MetricsError> {
        for (field, got) in [("probs", probs.len()), ("target", target.len())] {
            if got != self.n_au {
                return Err(MetricsError::Length {
                    field,
                    expected: self.n_au,
                    got,
                });
            }
        }
        if let Some((index, &value)) = target.iter().enumerate().find(|(_, v)| **v > 1) {
            return Err(MetricsError::NotBinary {
                field: "target",
                index,
                value,
            });
        }
        self.probs.extend_from_slice(probs);
        self.targets.extend_from_slice(target);
        Ok(())
    }

    /// Number of AUs.
    pub fn n_au(&self) -> usize {
        self.n_au
    }

    /// Frames pushed.
    pub fn len(&self) -> usize {
        self.probs.len().checked_div(self.n_au).unwrap_or(0)
    }

    /// True when no frame was pushed.
    pub fn is_empty(&self) -> bool {
        self.probs.is_empty()
    }

    /// `(prob, label)` pairs of AU `au` over all frames.
    pub fn column(&self, au: usize) -> impl Iterator<Item = (f32, bool)> + '_ {
        let k = self.n_au.max(1);
        self.probs
            .iter()
            .zip(&self.targets)
            .skip(au)
            .step_by(k)
            .map(|(p, t)| (*p, *t == 1))
    }

    /// Confusion counts of each AU when "AU active" means `prob >= threshold`.
    ///
    /// A NaN probability is never `>=` a threshold, so it counts as "inactive".
    pub fn counts(&self, thresholds: &[f32]) -> Result<Vec<BinaryCounts>, MetricsError> {
        if thresholds.len() != self.n_au {
            return Err(MetricsError::Thresholds {
                expected: self.n_au,
                got: thresholds.len(),
            });
        }
        let mut counts = vec![BinaryCounts::default(); self.n_au];
        for (frame_probs, frame_targets) in self
            .probs
            .chunks_exact(self.n_au.max(1))
            .zip(self.targets.chunks_exact(self.n_au.max(1)))
        {
            for (((c, p), t), th) in counts
                .iter_mut()
                .zip(frame_probs)
                .zip(frame_targets)
                .zip(thresholds)
            {
                c.add(*p >= *th, *t == 1);
            }
        }
        Ok(counts)
    }

    /// F1 and total accuracy at per-AU `thresholds`.
    pub fn scores(&self, thresholds: &[f32]) -> Result<AuScores, MetricsError> {
        let counts = self.counts(thresholds)?;
        let per_au_f1: Vec<f64> = counts.iter().map(BinaryCounts::f1).collect();
        let f1 = mean(&per_au_f1);
        let correct: u64 = counts.iter().map(BinaryCounts::correct).sum();
        let total: u64 = counts.iter().map(BinaryCounts::total).sum();
        let accuracy = if total == 0 {
            0.0
        } else {
            correct as f64 / total as f64
        };
        Ok(AuScores {
            per_au_f1,
            f1,
            accuracy,
        })
    }

    /// [`Self::scores`] at 0.5 for every AU.
    pub fn scores_at_default(&self) -> AuScores {
        let th = vec![DEFAULT_THRESHOLD; self.n_au];
        match self.scores(&th) {
            Ok(s) => s,
            // Unreachable: `th` has n_au entries by construction.
            Err(_) => AuScores {
                per_au_f1: Vec::new(),
                f1: 0.0,
                accuracy: 0.0,
            },
        }
    }
}

fn mean(v: &[f64]) -> f64 {
    if v.is_empty() {
        0.0
    } else {
        v.iter().sum::<f64>() / v.len() as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scores_at_half_and_total_accuracy() -> Result<(), MetricsError> {
        let mut acc = AuAccumulator::new(2);
        acc.try_push(&[0.9, 0.1], &[1, 0])?;
        acc.try_push(&[0.5, 0.2], &[0, 1])?; // 0.5 >= 0.5 -> predicted active
        acc.try_push(&[0.1, 0.3], &[0, 0])?;
        let s = acc.scores_at_default();
        // AU0: tp 1, fp 1 -> 2/3. AU1: fn 1 -> 0. Accuracy 4/6.
        assert!((s.per_au_f1[0] - 2.0 / 3.0).abs() < 1e-12);
        assert_eq!(s.per_au_f1[1], 0.0);
        assert!((s.f1 - 1.0 / 3.0).abs() < 1e-12);
        assert!((s.accuracy - 4.0 / 6.0).abs() < 1e-12);
        assert_eq!(acc.len(), 3);
        assert_eq!(
            acc.column(1).map(|x| x.1).collect::<Vec<_>>(),
            [false, true, false]
        );
        Ok(())
    }

    #[test]
    fn rejects_bad_frames_without_changing_state() {
        let mut acc = AuAccumulator::new(2);
        assert_eq!(
            acc.try_push(&[0.1], &[0, 1]),
            Err(MetricsError::Length {
                field: "probs",
                expected: 2,
                got: 1
            })
        );
        assert!(matches!(
            acc.try_push(&[0.1, 0.2], &[0, 255]),
            Err(MetricsError::NotBinary {
                index: 1,
                value: 255,
                ..
            })
        ));
        assert!(acc.is_empty());
        assert!(acc.scores(&[0.5]).is_err());
    }
}
