//! Model selection over a run's evaluations: the last one, the best total score, or each
//! task's best (as challenge entries report them). The picks live in the checkpoint's loop
//! state, so a resumed run keeps its best-so-far exactly.

use mtanet_metrics::Report;
use serde::{Deserialize, Serialize};

use crate::experiment::Criterion;

/// One evaluation kept as a pick: where it happened, its score and its report.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Pick {
    /// Stage index (0-based).
    pub stage: usize,
    /// Epochs completed in that stage when it was evaluated.
    pub epoch: usize,
    /// Global optimizer step.
    pub step: u64,
    /// The score it was picked by.
    pub score: f64,
    /// Its validation report.
    pub report: Report,
}

impl Pick {
    /// `stage 2 epoch 3 (step 480)`, stages counted from 1.
    pub fn at(&self) -> String {
        format!(
            "stage {} epoch {} (step {})",
            self.stage + 1,
            self.epoch,
            self.step
        )
    }
}

/// The picks in the order [`Selection::offer`] reports them; the best weights of each are
/// `checkpoints/best.safetensors` (total) and `checkpoints/best-<task>.safetensors`.
pub const PICK_NAMES: [&str; 4] = ["total", "va", "au", "expr"];

/// The best evaluations so far: by total and per task.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Selection {
    /// Highest total ([`total_score`]).
    pub total: Option<Pick>,
    /// Highest VA score (mean CCC).
    pub va: Option<Pick>,
    /// Highest AU score (0.5 F1 + 0.5 accuracy under ABAW 2020 scoring, F1 under 2022+).
    pub au: Option<Pick>,
    /// Highest EXPR score (0.67 F1 + 0.33 accuracy under ABAW 2020 scoring, F1 under 2022+).
    pub expr: Option<Pick>,
}

/// The total of a report: VA score (mean CCC) + AU score + EXPR score, each as the release is
/// scored (ABAW 2020 composites on the 2020/2021 layouts, F1s on 2022+; an absent task adds 0,
/// and training refuses a root where a task has no validation frames).
pub fn total_score(r: &Report) -> f64 {
    r.va.as_ref().map_or(0.0, |v| v.score)
        + r.au.as_ref().map_or(0.0, |a| a.score)
        + r.expr.as_ref().map_or(0.0, |e| e.score)
}

/// Replaces `slot` when `score` is higher (a NaN score never wins; ties keep the earlier).
fn offer_one(slot: &mut Option<Pick>, score: Option<f64>, make: impl Fn(f64) -> Pick) -> bool {
    let Some(score) = score.filter(|s| !s.is_nan()) else {
        return false;
    };
    if slot.as_ref().is_none_or(|p| score > p.score) {
        *slot = Some(make(score));
        return true;
    }
    false
}

impl Selection {
    /// Offers one evaluation; returns which picks it became, by [`PICK_NAMES`]. A report with
    /// a non-finite figure is never picked (it could not be restored from the checkpoint's
    /// JSON, and a NaN score is no evidence of a better model).
    pub fn offer(&mut self, stage: usize, epoch: usize, step: u64, report: &Report) -> [bool; 4] {
        if report.scalars().iter().any(|(_, v)| !v.is_finite()) {
            tracing::warn!(
                "evaluation at step {step} has a non-finite figure; not a selection candidate"
            );
            return [false; 4];
        }
        let make = |score| Pick {
            stage,
            epoch,
            step,
            score,
            report: report.clone(),
        };
        [
            offer_one(&mut self.total, Some(total_score(report)), make),
            offer_one(&mut self.va, report.va.as_ref().map(|v| v.score), make),
            offer_one(&mut self.au, report.au.as_ref().map(|a| a.score), make),
            offer_one(&mut self.expr, report.expr.as_ref().map(|e| e.score), make),
        ]
    }

    /// The pick named `name` ([`PICK_NAMES`]), if made.
    pub fn pick(&self, name: &str) -> Option<&Pick> {
        match name {
            "total" => self.total.as_ref(),
            "va" => self.va.as_ref(),
            "au" => self.au.as_ref(),
            "expr" => self.expr.as_ref(),
            _ => None,
        }
    }

    /// The report a run presents under `criterion`, and where it comes from. `last` is the
    /// run's last evaluation.
    pub fn selected(&self, criterion: Criterion, last: &Report) -> (Report, String) {
        match criterion {
            Criterion::Last => (last.clone(), "last evaluation".into()),
            Criterion::Total => match &self.total {
                Some(p) => (p.report.clone(), format!("best total at {}", p.at())),
                None => (last.clone(), "last evaluation (no total yet)".into()),
            },
            Criterion::PerTask => {
                let report = Report {
                    va: self.va.as_ref().and_then(|p| p.report.va.clone()),
                    au: self.au.as_ref().and_then(|p| p.report.au.clone()),
                    expr: self.expr.as_ref().and_then(|p| p.report.expr.clone()),
                };
                let at = |name: &str, p: &Option<Pick>| {
                    p.as_ref().map(|p| format!("{name} at {}", p.at()))
                };
                let parts: Vec<String> = [
                    at("VA", &self.va),
                    at("AU", &self.au),
                    at("EXPR", &self.expr),
                ]
                .into_iter()
                .flatten()
                .collect();
                (report, format!("best per task: {}", parts.join("; ")))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(va: f64, expr: f64) -> Report {
        serde_json::from_value(serde_json::json!({
            "va": {"ccc_valence": va, "ccc_arousal": va, "score": va, "frames": 10},
            "au": null,
            "expr": {"f1": expr, "accuracy": expr, "score": expr,
                     "per_class_f1": [], "confusion": [], "frames": 10}
        }))
        .expect("a report")
    }

    #[test]
    fn picks_follow_each_score_and_survive_json() {
        let mut s = Selection::default();
        assert_eq!(
            s.offer(0, 1, 10, &report(0.2, 0.9)),
            [true, true, false, true]
        );
        assert_eq!(
            s.offer(0, 2, 20, &report(0.6, 0.1)),
            [false, true, false, false]
        );
        assert_eq!(s.offer(1, 1, 30, &report(0.3, 0.3)), [false; 4]);
        let mut nan = report(0.9, 0.9);
        nan.va.as_mut().unwrap().score = f64::NAN;
        assert_eq!(s.offer(1, 2, 40, &nan), [false; 4]);
        assert_eq!(s.total.as_ref().map(|p| p.step), Some(10));
        assert_eq!(s.va.as_ref().map(|p| p.step), Some(20));
        assert_eq!(s.expr.as_ref().map(|p| p.step), Some(10));
        let (per_task, at) = s.selected(Criterion::PerTask, &report(0.0, 0.0));
        assert_eq!(per_task.va.map(|v| v.score), Some(0.6));
        assert_eq!(per_task.expr.map(|e| e.score), Some(0.9));
        assert!(at.contains("VA at stage 1 epoch 2") && at.contains("EXPR at stage 1 epoch 1"));
        let last = report(0.1, 0.1);
        assert_eq!(s.selected(Criterion::Last, &last).0, last);
        let json = serde_json::to_string(&s).unwrap();
        let back: Selection = serde_json::from_str(&json).unwrap();
        assert_eq!(back, s);
    }
}
