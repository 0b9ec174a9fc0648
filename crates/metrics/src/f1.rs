//! Binary confusion counts and F1 with scikit-learn's `zero_division=0` convention.

use serde::{Deserialize, Serialize};

/// Counts of one binary decision problem.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BinaryCounts {
    /// Predicted 1, truth 1.
    pub tp: u64,
    /// Predicted 1, truth 0.
    pub fp: u64,
    /// Predicted 0, truth 1.
    pub fn_: u64,
    /// Predicted 0, truth 0.
    pub tn: u64,
}

impl BinaryCounts {
    /// Adds one decision.
    pub fn add(&mut self, pred: bool, truth: bool) {
        match (pred, truth) {
            (true, true) => self.tp += 1,
            (true, false) => self.fp += 1,
            (false, true) => self.fn_ += 1,
            (false, false) => self.tn += 1,
        }
    }

    /// F1 of the positive class; see [`f1_from_counts`].
    pub fn f1(&self) -> f64 {
        f1_from_counts(self.tp, self.fp, self.fn_)
    }

    /// Number of decisions counted.
    pub fn total(&self) -> u64 {
        self.tp + self.fp + self.fn_ + self.tn
    }

    /// Number of correct decisions.
    pub fn correct(&self) -> u64 {
        self.tp + self.tn
    }
}

/// `2tp / (2tp + fp + fn)`, and 0 when that denominator is 0 (the class is neither predicted
/// nor present), as `sklearn.metrics.f1_score(..., zero_division=0)`.
pub fn f1_from_counts(tp: u64, fp: u64, fn_: u64) -> f64 {
    let denom = 2 * tp + fp + fn_;
    if denom == 0 {
        0.0
    } else {
        (2 * tp) as f64 / denom as f64
    }
}

/// Binary F1 of the positive class (`sklearn f1_score(truth, pred, zero_division=0)`).
///
/// # Panics
/// If `pred` and `truth` differ in length.
pub fn f1_binary(pred: &[bool], truth: &[bool]) -> f64 {
    assert_eq!(
        pred.len(),
        truth.len(),
        "f1_binary: pred and truth lengths differ"
    );
    let mut c = BinaryCounts::default();
    for (p, t) in pred.iter().zip(truth) {
        c.add(*p, *t);
    }
    c.f1()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn f1_values_and_zero_division() {
        // tp 1, fp 1, fn 1 -> 2/4
        assert_eq!(f1_binary(&[true, true, false], &[true, false, true]), 0.5);
        assert_eq!(f1_binary(&[false, false], &[false, false]), 0.0);
        assert_eq!(f1_binary(&[], &[]), 0.0);
        assert_eq!(f1_binary(&[true], &[true]), 1.0);
        let mut c = BinaryCounts::default();
        c.add(false, false);
        c.add(true, true);
        assert_eq!((c.total(), c.correct(), c.f1()), (2, 2, 1.0));
    }
}
