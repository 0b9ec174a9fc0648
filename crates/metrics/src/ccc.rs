//! Concordance correlation coefficient (ABAW VA metric), batch and streaming.

use serde::{Deserialize, Serialize};

/// numpy-style population CCC: `2 cov / (var_x + var_y + (mean_x - mean_y)^2)`.
///
/// Variances and covariance divide by n (`np.var`, `np.std` default), as the ABAW 2020
/// evaluation does. Two passes in f64 on data shifted by the first pair. Degenerate cases:
/// empty input or a zero denominator (both series constant and equal) give 0; the same
/// definition as [`CccMoments`], whose Welford updates are exact for constant data too.
///
/// # Panics
/// If `x` and `y` differ in length.
pub fn ccc(x: &[f64], y: &[f64]) -> f64 {
    assert_eq!(x.len(), y.len(), "ccc: x and y must have the same length");
    let (Some(&x0), Some(&y0)) = (x.first(), y.first()) else {
        return 0.0;
    };
    // Shifted data (x - x0): exact zeros for a constant series, so "constant and equal"
    // really has a zero denominator instead of rounding noise (0/0-like ratios of ~1e-33).
    let n = x.len() as f64;
    let mean_a = x.iter().map(|v| v - x0).sum::<f64>() / n;
    let mean_b = y.iter().map(|v| v - y0).sum::<f64>() / n;
    let (mut var_x, mut var_y, mut cov) = (0.0, 0.0, 0.0);
    for (a, b) in x.iter().zip(y) {
        let (dx, dy) = (a - x0 - mean_a, b - y0 - mean_b);
        var_x += dx * dx;
        var_y += dy * dy;
        cov += dx * dy;
    }
    ccc_from_moments(var_x / n, var_y / n, cov / n, (x0 - y0) + (mean_a - mean_b))
}

fn ccc_from_moments(var_x: f64, var_y: f64, cov: f64, mean_gap: f64) -> f64 {
    let denom = var_x + var_y + mean_gap * mean_gap;
    if denom > 0.0 {
        2.0 * cov / denom
    } else {
        0.0
    }
}

/// Running means and co-moments of (prediction, target) pairs (Welford updates in f64),
/// so the CCC of a whole evaluation set is exact to ~1e-12 without storing it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct CccMoments {
    n: u64,
    mean_x: f64,
    mean_y: f64,
    m2_x: f64,
    m2_y: f64,
    c_xy: f64,
}

impl CccMoments {
    /// An empty accumulator.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds one (prediction, target) pair.
    pub fn push(&mut self, x: f64, y: f64) {
        self.n += 1;
        let n = self.n as f64;
        let dx = x - self.mean_x;
        self.mean_x += dx / n;
        let dy = y - self.mean_y;
        self.mean_y += dy / n;
        self.m2_x += dx * (x - self.mean_x);
        self.m2_y += dy * (y - self.mean_y);
        self.c_xy += dx * (y - self.mean_y);
    }

    /// Number of pairs pushed.
    pub fn len(&self) -> usize {
        self.n as usize
    }

    /// True when nothing was pushed.
    pub fn is_empty(&self) -> bool {
        self.n == 0
    }

    /// The CCC of everything pushed (same conventions as [`ccc`]).
    pub fn value(&self) -> f64 {
        if self.n == 0 {
            return 0.0;
        }
        let n = self.n as f64;
        ccc_from_moments(
            self.m2_x / n,
            self.m2_y / n,
            self.c_xy / n,
            self.mean_x - self.mean_y,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_values() {
        let y = [1.0, 2.0, 3.0, 4.0];
        assert!((ccc(&y, &y) - 1.0).abs() < 1e-12);
        let neg: Vec<f64> = y.iter().map(|v| -v).collect();
        // var 1.25 each, cov -1.25, mean gap 5: 2*-1.25 / (2.5 + 25)
        assert!((ccc(&neg, &y) - (-2.5 / 27.5)).abs() < 1e-12);
        assert_eq!(ccc(&[0.2; 3], &[0.2; 3]), 0.0);
        assert_eq!(ccc(&[], &[]), 0.0);
        assert_eq!(ccc(&[0.5], &[0.1]), 0.0);
    }

    #[test]
    fn streaming_matches_two_pass_with_large_offset() {
        let x: Vec<f64> = (0..1000)
            .map(|i| 1e6 + ((i * 37) % 101) as f64 * 0.01)
            .collect();
        let y: Vec<f64> = (0..1000)
            .map(|i| 1e6 + ((i * 53) % 97) as f64 * 0.01)
            .collect();
        let mut m = CccMoments::new();
        for (a, b) in x.iter().zip(&y) {
            m.push(*a, *b);
        }
        assert_eq!(m.len(), 1000);
        assert!(
            (m.value() - ccc(&x, &y)).abs() < 1e-9,
            "{} {}",
            m.value(),
            ccc(&x, &y)
        );
    }
}
