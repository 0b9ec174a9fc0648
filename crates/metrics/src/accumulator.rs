//! The three task accumulators of one evaluation pass and their report.

use serde::{Deserialize, Serialize};

use crate::au::AuAccumulator;
use crate::error::MetricsError;
use crate::expr::ExprAccumulator;
use crate::report::{AuReport, ExprReport, Report, TunedAu, VaReport};
use crate::scoring::Scoring;
use crate::thresholds::tune_au_thresholds;
use crate::va::VaAccumulator;

/// Collects every frame of an evaluation set, per task (push only frames labelled for it).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Accumulator {
    /// Valence/arousal frames.
    pub va: VaAccumulator,
    /// Action-unit frames.
    pub au: AuAccumulator,
    /// Expression frames.
    pub expr: ExprAccumulator,
}

impl Accumulator {
    /// Empty accumulators for `n_au` AUs and `n_expr` expression classes.
    pub fn new(n_au: usize, n_expr: usize) -> Self {
        Self {
            va: VaAccumulator::new(),
            au: AuAccumulator::new(n_au),
            expr: ExprAccumulator::new(n_expr),
        }
    }

    /// The report; AU decisions at 0.5, plus `tuned` at `au_thresholds` when given.
    ///
    /// `au_thresholds: None` gives `tuned: None` (see [`Self::report_with_tuning`]).
    ///
    /// # Panics
    /// If `au_thresholds` does not have one entry per AU; use [`Self::try_report`] for
    /// thresholds read from a file.
    pub fn report(&self, scoring: Scoring, au_thresholds: Option<&[f32]>) -> Report {
        match self.try_report(scoring, au_thresholds) {
            Ok(r) => r,
            Err(e) => panic!("Accumulator::report: {e}"),
        }
    }

    /// Like [`Self::report`], with thresholds tuned on this same set
    /// ([`tune_au_thresholds`]): use it on the validation set the thresholds come from.
    pub fn report_with_tuning(&self, scoring: Scoring) -> Report {
        let th = tune_au_thresholds(&self.au);
        self.report(scoring, Some(&th))
    }

    /// [`Self::report`], failing instead of panicking on a wrong number of thresholds.
    pub fn try_report(
        &self,
        scoring: Scoring,
        au_thresholds: Option<&[f32]>,
    ) -> Result<Report, MetricsError> {
        let va = self.va.ccc().map(|[v, a]| VaReport {
            ccc_valence: v,
            ccc_arousal: a,
            score: scoring.va(v, a),
            frames: self.va.len(),
        });
        let au = if self.au.is_empty() {
            None
        } else {
            let s = self.au.scores_at_default();
            let tuned = match au_thresholds {
                Some(th) => {
                    let t = self.au.scores(th)?;
                    Some(TunedAu {
                        thresholds: th.to_vec(),
                        f1: t.f1,
                        accuracy: t.accuracy,
                        score: scoring.au(t.f1, t.accuracy),
                        per_au_f1: t.per_au_f1,
                    })
                }
                None => None,
            };
            Some(AuReport {
                f1: s.f1,
                accuracy: s.accuracy,
                score: scoring.au(s.f1, s.accuracy),
                per_au_f1: s.per_au_f1,
                frames: self.au.len(),
                tuned,
            })
        };
        let expr = (!self.expr.is_empty()).then(|| {
            let (f1, accuracy) = (self.expr.macro_f1(), self.expr.accuracy());
            ExprReport {
                f1,
                accuracy,
                score: scoring.expr(f1, accuracy),
                per_class_f1: self.expr.per_class_f1(),
                confusion: self.expr.confusion(),
                frames: self.expr.len(),
            }
        });
        Ok(Report { va, au, expr })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_accumulator_reports_nothing_and_no_nan() {
        let r = Accumulator::new(8, 7).report(Scoring::Abaw2020, None);
        assert_eq!(r, Report::default());
        assert!(r.scalars().is_empty());
    }

    #[test]
    fn report_scalars_and_json_round_trip() -> Result<(), MetricsError> {
        let mut acc = Accumulator::new(2, 3);
        acc.va.push([0.1, 0.2], [0.0, 0.3]);
        acc.va.push([0.4, -0.2], [0.5, -0.1]);
        acc.au.try_push(&[0.7, 0.3], &[1, 1])?;
        acc.expr.try_push(2, 2)?;
        let r = acc.try_report(Scoring::Abaw2020, Some(&[0.5, 0.25]))?;
        let names: Vec<String> = r.scalars().into_iter().map(|(n, _)| n).collect();
        assert_eq!(
            names[..12],
            [
                "va.ccc_valence",
                "va.ccc_arousal",
                "va.score",
                "au.f1",
                "au.accuracy",
                "au.score",
                "au.f1_tuned",
                "au.accuracy_tuned",
                "au.score_tuned",
                "expr.f1",
                "expr.accuracy",
                "expr.score"
            ]
        );
        let au = r.au.clone().map(|a| (a.f1, a.tuned.map(|t| t.f1)));
        assert_eq!(au, Some((0.5, Some(1.0))));
        // expr: only class 2 seen and right -> F1 (0 + 0 + 1) / 3, accuracy 1.
        let e = r.expr.clone().map(|e| (e.f1, e.accuracy, e.score));
        assert_eq!(e, Some((1.0 / 3.0, 1.0, 0.67 / 3.0 + 0.33)));
        let json = serde_json::to_string(&r).unwrap_or_default();
        let back: Option<Report> = serde_json::from_str(&json).ok();
        assert_eq!(back, Some(r));
        assert!(acc.try_report(Scoring::Abaw2022, Some(&[0.5])).is_err());
        Ok(())
    }
}
