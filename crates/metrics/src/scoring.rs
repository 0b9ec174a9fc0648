//! ABAW composite scores.

use serde::{Deserialize, Serialize};

/// Which competition's composite to report (serde: "abaw2020" | "abaw2022").
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scoring {
    /// ABAW 2020: AU `0.5 F1 + 0.5 Acc`, EXPR `0.67 F1 + 0.33 Acc`, VA mean CCC.
    #[default]
    Abaw2020,
    /// ABAW 2022 onward: AU mean F1, EXPR macro F1, VA mean CCC (no accuracy).
    Abaw2022,
}

impl Scoring {
    /// AU composite from the mean per-AU F1 and the total accuracy.
    pub fn au(self, f1: f64, accuracy: f64) -> f64 {
        match self {
            Scoring::Abaw2020 => 0.5 * f1 + 0.5 * accuracy,
            Scoring::Abaw2022 => f1,
        }
    }

    /// EXPR composite from the macro F1 and the accuracy.
    pub fn expr(self, f1: f64, accuracy: f64) -> f64 {
        match self {
            Scoring::Abaw2020 => 0.67 * f1 + 0.33 * accuracy,
            Scoring::Abaw2022 => f1,
        }
    }

    /// VA score: the mean of the two CCCs (both editions; wtomin's 2020 helper sums them).
    pub fn va(self, ccc_valence: f64, ccc_arousal: f64) -> f64 {
        0.5 * (ccc_valence + ccc_arousal)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn composites() {
        assert_eq!(Scoring::Abaw2020.au(0.4, 0.9), 0.65);
        assert!((Scoring::Abaw2020.expr(0.3, 0.6) - (0.201 + 0.198)).abs() < 1e-12);
        assert_eq!(Scoring::Abaw2022.au(0.4, 0.9), 0.4);
        assert_eq!(Scoring::Abaw2022.expr(0.3, 0.6), 0.3);
        assert_eq!(
            Scoring::Abaw2022.va(0.2, 0.4),
            Scoring::Abaw2020.va(0.2, 0.4)
        );
        assert_eq!(
            serde_json::to_string(&Scoring::Abaw2022).ok().as_deref(),
            Some("\"abaw2022\"")
        );
    }
}
