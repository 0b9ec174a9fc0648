//! Streaming expression accumulator: a confusion matrix.

use serde::{Deserialize, Serialize};

use crate::error::MetricsError;
use crate::f1::f1_from_counts;

/// Confusion matrix of expression decisions, rows = annotated class, columns = predicted
/// class (the `sklearn.metrics.confusion_matrix` layout).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ExprAccumulator {
    n_classes: usize,
    confusion: Vec<u64>,
}

impl ExprAccumulator {
    /// An empty accumulator over `n_classes` classes (the vocabulary, not those seen).
    pub fn new(n_classes: usize) -> Self {
        Self {
            n_classes,
            confusion: vec![0; n_classes * n_classes],
        }
    }

    /// Adds one frame.
    ///
    /// # Panics
    /// If a class is outside `0..n_classes`; use [`Self::try_push`] for untrusted input.
    pub fn push(&mut self, predicted: usize, target: usize) {
        if let Err(e) = self.try_push(predicted, target) {
            panic!("ExprAccumulator::push: {e}");
        }
    }

    /// Adds one frame, or says why it cannot.
    pub fn try_push(&mut self, predicted: usize, target: usize) -> Result<(), MetricsError> {
        for (field, value) in [("predicted", predicted), ("target", target)] {
            if value >= self.n_classes {
                return Err(MetricsError::ClassOutOfRange {
                    field,
                    value,
                    classes: self.n_classes,
                });
            }
        }
        self.confusion[target * self.n_classes + predicted] += 1;
        Ok(())
    }

    /// Number of classes.
    pub fn n_classes(&self) -> usize {
        self.n_classes
    }

    /// Frames pushed.
    pub fn len(&self) -> usize {
        self.confusion.iter().sum::<u64>() as usize
    }

    /// True when no frame was pushed.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The confusion matrix as rows (annotated) of columns (predicted).
    pub fn confusion(&self) -> Vec<Vec<u64>> {
        self.confusion
            .chunks(self.n_classes.max(1))
            .map(<[u64]>::to_vec)
            .collect()
    }

    /// One-vs-rest F1 of every class (`zero_division=0`).
    pub fn per_class_f1(&self) -> Vec<f64> {
        let c = self.n_classes;
        (0..c)
            .map(|k| {
                let tp = self.confusion[k * c + k];
                let row: u64 = self.confusion[k * c..(k + 1) * c].iter().sum();
                let col: u64 = (0..c).map(|r| self.confusion[r * c + k]).sum();
                f1_from_counts(tp, col - tp, row - tp)
            })
            .collect()
    }

    /// Unweighted mean of [`Self::per_class_f1`] over ALL `n_classes` classes
    /// (`f1_score(average='macro', labels=range(C), zero_division=0)`); 0 without classes.
    pub fn macro_f1(&self) -> f64 {
        let f = self.per_class_f1();
        if f.is_empty() {
            0.0
        } else {
            f.iter().sum::<f64>() / f.len() as f64
        }
    }

    /// Fraction of frames whose predicted class is the annotated one (0 when empty).
    pub fn accuracy(&self) -> f64 {
        let total = self.len();
        if total == 0 {
            return 0.0;
        }
        let c = self.n_classes;
        let diag: u64 = (0..c).map(|k| self.confusion[k * c + k]).sum();
        diag as f64 / total as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn macro_f1_counts_absent_classes_as_zero() -> Result<(), MetricsError> {
        let mut acc = ExprAccumulator::new(3);
        acc.try_push(0, 0)?;
        acc.try_push(1, 0)?;
        acc.try_push(1, 1)?;
        // class 0: tp1 fn1 -> 2/3; class 1: tp1 fp1 -> 2/3; class 2 absent -> 0.
        let f = acc.per_class_f1();
        assert!((f[0] - 2.0 / 3.0).abs() < 1e-12 && (f[1] - 2.0 / 3.0).abs() < 1e-12);
        assert_eq!(f[2], 0.0);
        assert!((acc.macro_f1() - 4.0 / 9.0).abs() < 1e-12);
        assert!((acc.accuracy() - 2.0 / 3.0).abs() < 1e-12);
        assert_eq!(
            acc.confusion(),
            vec![vec![1, 1, 0], vec![0, 1, 0], vec![0, 0, 0]]
        );
        assert!(acc.try_push(3, 0).is_err());
        assert_eq!(acc.len(), 3);
        Ok(())
    }
}
