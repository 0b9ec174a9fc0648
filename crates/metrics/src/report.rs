//! Evaluation reports: per-task numbers, serialisable to JSON and flattenable to scalars.

use serde::{Deserialize, Serialize};

/// Valence/arousal results.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct VaReport {
    /// CCC of valence over all frames.
    pub ccc_valence: f64,
    /// CCC of arousal over all frames.
    pub ccc_arousal: f64,
    /// Mean of the two CCCs.
    pub score: f64,
    /// Frames evaluated.
    pub frames: usize,
}

/// AU results at the given thresholds.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct TunedAu {
    /// Per-AU thresholds on the sigmoid output.
    pub thresholds: Vec<f32>,
    /// Mean per-AU F1.
    pub f1: f64,
    /// Total accuracy over frame x AU.
    pub accuracy: f64,
    /// Composite under the report's scoring.
    pub score: f64,
    /// Binary F1 of each AU.
    pub per_au_f1: Vec<f64>,
}

/// Action-unit results at threshold 0.5, and optionally at tuned thresholds.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct AuReport {
    /// Unweighted mean of the per-AU binary F1.
    pub f1: f64,
    /// Total accuracy over the flattened frame x AU matrix.
    pub accuracy: f64,
    /// Composite: ABAW 2020 `0.5 F1 + 0.5 Acc`, ABAW 2022 `F1`.
    pub score: f64,
    /// Binary F1 of each AU (`zero_division=0`).
    pub per_au_f1: Vec<f64>,
    /// Frames evaluated.
    pub frames: usize,
    /// The same numbers at per-AU thresholds, when thresholds were given.
    pub tuned: Option<TunedAu>,
}

/// Expression results.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct ExprReport {
    /// Macro F1 over all classes of the vocabulary.
    pub f1: f64,
    /// Frame accuracy.
    pub accuracy: f64,
    /// Composite: ABAW 2020 `0.67 F1 + 0.33 Acc`, ABAW 2022 `F1`.
    pub score: f64,
    /// One-vs-rest F1 of each class.
    pub per_class_f1: Vec<f64>,
    /// Rows = annotated class, columns = predicted class.
    pub confusion: Vec<Vec<u64>>,
    /// Frames evaluated.
    pub frames: usize,
}

/// Everything measured on one evaluation set; a task is `None` when no frame carried it.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
pub struct Report {
    /// Valence/arousal, if any VA frame was evaluated.
    pub va: Option<VaReport>,
    /// Action units, if any AU frame was evaluated.
    pub au: Option<AuReport>,
    /// Expressions, if any expression frame was evaluated.
    pub expr: Option<ExprReport>,
}

impl Report {
    /// Flat (name, value) pairs for CSV rows and TensorBoard scalars, stable order, names like
    /// "va.ccc_valence", "va.ccc_arousal", "va.score", "au.f1", "au.accuracy", "au.score", "au.f1_tuned", "expr.f1", "expr.accuracy", "expr.score".
    ///
    /// Order: va.{ccc_valence, ccc_arousal, score}; au.{f1, accuracy, score}, then
    /// au.{f1_tuned, accuracy_tuned, score_tuned} when tuned; expr.{f1, accuracy, score};
    /// then the per-index values au.f1_au.{i} and expr.f1_class.{i}. Absent tasks are skipped.
    pub fn scalars(&self) -> Vec<(String, f64)> {
        let mut out: Vec<(String, f64)> = Vec::new();
        let mut put = |name: &str, v: f64| out.push((name.to_string(), v));
        if let Some(va) = &self.va {
            put("va.ccc_valence", va.ccc_valence);
            put("va.ccc_arousal", va.ccc_arousal);
            put("va.score", va.score);
        }
        if let Some(au) = &self.au {
            put("au.f1", au.f1);
            put("au.accuracy", au.accuracy);
            put("au.score", au.score);
            if let Some(t) = &au.tuned {
                put("au.f1_tuned", t.f1);
                put("au.accuracy_tuned", t.accuracy);
                put("au.score_tuned", t.score);
            }
        }
        if let Some(expr) = &self.expr {
            put("expr.f1", expr.f1);
            put("expr.accuracy", expr.accuracy);
            put("expr.score", expr.score);
        }
        if let Some(au) = &self.au {
            for (i, f) in au.per_au_f1.iter().enumerate() {
                out.push((format!("au.f1_au.{i}"), *f));
            }
        }
        if let Some(expr) = &self.expr {
            for (i, f) in expr.per_class_f1.iter().enumerate() {
                out.push((format!("expr.f1_class.{i}"), *f));
            }
        }
        out
    }
}
