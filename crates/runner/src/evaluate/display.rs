//! The text form of an [`Evaluation`]: per task the headline numbers, then per-AU and
//! per-class F1 and the expression confusion matrix.

use std::fmt;

use mtanet_metrics::Scoring;

use super::Evaluation;

impl fmt::Display for Evaluation {
    /// A text table: per task the headline numbers, then per-AU and per-class F1 and the
    /// expression confusion matrix.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scoring = match self.scoring {
            Scoring::Abaw2020 => "ABAW 2020",
            Scoring::Abaw2022 => "ABAW 2022",
        };
        let frames = if self.all_frames {
            "every labelled frame"
        } else {
            "labelled frames with a face crop"
        };
        writeln!(
            f,
            "{} split, {frames}, {scoring} composites ({} layout)",
            self.split, self.layout
        )?;
        let r = &self.report;
        match &r.va {
            Some(v) => writeln!(
                f,
                "VA    {:>3} videos {:>9} frames  CCC-V {:.4}  CCC-A {:.4}  score {:.4}",
                self.videos[0], v.frames, v.ccc_valence, v.ccc_arousal, v.score
            )?,
            None => writeln!(f, "VA    no labelled frames")?,
        }
        match &r.au {
            Some(a) => {
                writeln!(
                    f,
                    "AU    {:>3} videos {:>9} frames  F1 {:.4}  accuracy {:.4}  score {:.4}",
                    self.videos[1], a.frames, a.f1, a.accuracy, a.score
                )?;
                for (name, v) in self.vocab.au_names.iter().zip(&a.per_au_f1) {
                    writeln!(f, "      {name:<12} F1 {v:.4}")?;
                }
            }
            None => writeln!(f, "AU    no labelled frames")?,
        }
        match &r.expr {
            Some(e) => {
                writeln!(
                    f,
                    "EXPR  {:>3} videos {:>9} frames  F1 {:.4}  accuracy {:.4}  score {:.4}",
                    self.videos[2], e.frames, e.f1, e.accuracy, e.score
                )?;
                for (name, v) in self.vocab.expr_names.iter().zip(&e.per_class_f1) {
                    writeln!(f, "      {name:<12} F1 {v:.4}")?;
                }
                writeln!(f, "      confusion (rows annotated, columns predicted):")?;
                for (name, row) in self.vocab.expr_names.iter().zip(&e.confusion) {
                    let cells: Vec<String> = row.iter().map(|c| format!("{c:>8}")).collect();
                    writeln!(f, "      {name:<12}{}", cells.join(""))?;
                }
            }
            None => writeln!(f, "EXPR  no labelled frames")?,
        }
        Ok(())
    }
}
