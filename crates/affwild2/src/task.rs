//! The three ABAW tasks, the two labelled splits and the label vocabulary read from the headers.

use serde::{Deserialize, Serialize};
use std::fmt;

/// One of the three ABAW 2020 tasks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Task {
    /// Valence-arousal estimation (two floats in [-1, 1], `-5` = missing).
    Va,
    /// Action-unit detection (one 0/1 per AU, `-1` = missing).
    Au,
    /// Expression classification (one class index, `-1` = missing).
    Expr,
}

impl Task {
    /// All tasks, in the order used everywhere (VA, AU, EXPR).
    pub const ALL: [Task; 3] = [Task::Va, Task::Au, Task::Expr];

    /// Short lowercase name: `va`, `au`, `expr` (also the JSON key in stats).
    pub fn key(self) -> &'static str {
        match self {
            Task::Va => "va",
            Task::Au => "au",
            Task::Expr => "expr",
        }
    }

    /// Position in [`Task::ALL`].
    pub fn index(self) -> usize {
        match self {
            Task::Va => 0,
            Task::Au => 1,
            Task::Expr => 2,
        }
    }
}

impl fmt::Display for Task {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.key())
    }
}

/// A labelled split. Splits are per task in Aff-Wild2; samples are joined within a split name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Split {
    /// `Training_Set` (2020) or `Train_Set` (2021+).
    Train,
    /// `Validation_Set`.
    Validation,
}

impl Split {
    /// Both splits.
    pub const ALL: [Split; 2] = [Split::Train, Split::Validation];

    /// `train` or `validation`.
    pub fn key(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Validation => "validation",
        }
    }

    /// Position in [`Split::ALL`].
    pub fn index(self) -> usize {
        match self {
            Split::Train => 0,
            Split::Validation => 1,
        }
    }
}

impl fmt::Display for Split {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.key())
    }
}

/// The AU and expression names, read from the annotation headers (never hard-coded), so the
/// 8-AU 2020, 12-AU 2021 and 8-expression 2022 releases all load. Head sizes come from here.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Vocab {
    /// AU column names in file order, e.g. `AU1 ... AU25`; empty if the AU task is absent.
    pub au_names: Vec<String>,
    /// Expression names in class-index order, e.g. `Neutral ... Surprise`; empty if absent.
    pub expr_names: Vec<String>,
}

impl Vocab {
    /// The ABAW 2020 vocabulary (8 AUs, 7 expressions), used by the synthetic set.
    pub fn abaw2020() -> Self {
        Vocab {
            au_names: ["AU1", "AU2", "AU4", "AU6", "AU12", "AU15", "AU20", "AU25"]
                .map(String::from)
                .to_vec(),
            expr_names: [
                "Neutral",
                "Anger",
                "Disgust",
                "Fear",
                "Happiness",
                "Sadness",
                "Surprise",
            ]
            .map(String::from)
            .to_vec(),
        }
    }
}
