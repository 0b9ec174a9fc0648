//! Per-AU decision thresholds chosen on a validation set.

use crate::au::{AuAccumulator, DEFAULT_THRESHOLD};
use crate::f1::BinaryCounts;

/// Candidate thresholds: 0.05, 0.10, ..., 0.95 (19 values, each the f32 nearest `j/20`).
///
/// A fixed grid rather than every unique score: it costs 19 comparisons per frame and AU
/// whatever the set size, and it cannot overfit to single validation frames the way an
/// exact cut between two unique scores does.
pub fn threshold_grid() -> Vec<f32> {
    (1..20).map(|j| (f64::from(j) / 20.0) as f32).collect()
}

/// For each AU, the grid threshold (see [`threshold_grid`]) that maximises its F1 on `acc`.
///
/// Ties (including "F1 is 0 everywhere", e.g. an AU never present) go to the candidate
/// closest to 0.5, then to the smaller one, so an uninformative AU keeps 0.5. An empty
/// accumulator gives 0.5 for every AU. Meant for a validation set: reporting the tuned F1
/// on the same set is optimistic, which is why reports carry both.
pub fn tune_au_thresholds(acc: &AuAccumulator) -> Vec<f32> {
    let grid = threshold_grid();
    (0..acc.n_au())
        .map(|au| {
            let mut counts = vec![BinaryCounts::default(); grid.len()];
            for (p, t) in acc.column(au) {
                for (c, th) in counts.iter_mut().zip(&grid) {
                    c.add(p >= *th, t);
                }
            }
            best_threshold(&grid, &counts)
        })
        .collect()
}

fn best_threshold(grid: &[f32], counts: &[BinaryCounts]) -> f32 {
    let mut best = (f64::NEG_INFINITY, DEFAULT_THRESHOLD);
    for (th, c) in grid.iter().zip(counts) {
        let f1 = c.f1();
        let closer = (th - DEFAULT_THRESHOLD).abs() < (best.1 - DEFAULT_THRESHOLD).abs();
        if f1 > best.0 || (f1 == best.0 && closer) {
            best = (f1, *th);
        }
    }
    best.1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grid_has_19_values_including_half() {
        let g = threshold_grid();
        assert_eq!(g.len(), 19);
        assert_eq!((g[0], g[9], g[18]), (0.05, 0.5, 0.95));
    }

    #[test]
    fn picks_the_threshold_that_separates_the_classes() {
        let mut acc = AuAccumulator::new(2);
        // AU0 positives score 0.3-0.35, negatives <= 0.2: 0.25 and 0.3 both give F1 1, the
        // tie goes to 0.3 (closer to 0.5). AU1 never active: F1 0 everywhere -> keeps 0.5.
        for (p, t) in [(0.3, 1), (0.35, 1), (0.2, 0), (0.1, 0)] {
            acc.push(&[p, 0.9], &[t, 0]);
        }
        let th = tune_au_thresholds(&acc);
        assert_eq!(th, vec![0.3, 0.5]);
        let tuned = acc.scores(&th).map(|s| s.per_au_f1[0]).unwrap_or_default();
        assert_eq!(tuned, 1.0);
        assert_eq!(tune_au_thresholds(&AuAccumulator::new(3)), vec![0.5; 3]);
    }
}
