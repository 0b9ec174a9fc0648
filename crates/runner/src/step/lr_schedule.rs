//! Learning-rate schedules within a stage.

use crate::experiment::Schedule;

/// The learning rate at `step` (0-based) of a stage of `total` steps starting at `base`.
pub fn lr_at(schedule: &Schedule, base: f64, step: usize, total: usize) -> f64 {
    match schedule {
        Schedule::Constant => base,
        Schedule::Cosine { min_factor } => {
            let t = if total <= 1 {
                0.0
            } else {
                step.min(total - 1) as f64 / (total - 1) as f64
            };
            let min = base * min_factor;
            min + 0.5 * (base - min) * (1.0 + (std::f64::consts::PI * t).cos())
        }
        Schedule::Step { every, gamma } => base * gamma.powi((step / (*every).max(1)) as i32),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes() {
        let c = Schedule::Cosine { min_factor: 0.1 };
        assert_eq!(lr_at(&c, 1.0, 0, 11), 1.0);
        assert!((lr_at(&c, 1.0, 10, 11) - 0.1).abs() < 1e-12);
        assert!((lr_at(&c, 1.0, 5, 11) - 0.55).abs() < 1e-12);
        let s = Schedule::Step {
            every: 3,
            gamma: 0.5,
        };
        assert_eq!(lr_at(&s, 1.0, 2, 10), 1.0);
        assert_eq!(lr_at(&s, 1.0, 3, 10), 0.5);
        assert_eq!(lr_at(&Schedule::Constant, 0.3, 99, 10), 0.3);
    }
}
