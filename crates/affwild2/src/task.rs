//! The three ABAW tasks, the two labelled splits and the label vocabulary read from the headers.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

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

/// The names [`Split::from_str`] accepts (any case, surrounding spaces ignored), per split.
const SPLIT_NAMES: [(Split, &[&str]); 2] = [
    (
        Split::Train,
        &["Training_Set", "Train_Set", "train", "training"],
    ),
    (Split::Validation, &["Validation_Set", "validation", "val"]),
];

/// A split name that is none of the accepted ones.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "unknown split {given:?}: use Validation_Set (validation, val) or Training_Set \
     (Train_Set, training, train), in any case"
)]
pub struct UnknownSplit {
    /// The name that was given.
    pub given: String,
}

impl FromStr for Split {
    type Err = UnknownSplit;

    /// The split of a folder or command-line name: `Validation_Set`, `validation`, `val`;
    /// `Training_Set` (2020), `Train_Set` (2021+), `training`, `train`; case-insensitive.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let name = s.trim();
        SPLIT_NAMES
            .iter()
            .find(|(_, names)| names.iter().any(|n| n.eq_ignore_ascii_case(name)))
            .map(|&(split, _)| split)
            .ok_or_else(|| UnknownSplit {
                given: s.to_string(),
            })
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_names_parse_in_any_case() {
        for name in [
            "Validation_Set",
            "validation_set",
            "VALIDATION",
            "validation",
            "val",
            "Val",
            " Validation_Set\n",
        ] {
            assert_eq!(name.parse::<Split>(), Ok(Split::Validation), "{name:?}");
        }
        for name in [
            "Training_Set",
            "Train_Set",
            "train_set",
            "TRAIN",
            "train",
            "training",
            "Training",
        ] {
            assert_eq!(name.parse::<Split>(), Ok(Split::Train), "{name:?}");
        }
    }

    #[test]
    fn other_names_are_errors_listing_the_accepted_ones() {
        for name in [
            "Test",
            "test_set",
            "",
            "valid",
            "trainset",
            "Validation-Set",
            "v",
        ] {
            let e = name.parse::<Split>().unwrap_err();
            assert_eq!(e.given, name);
            let msg = e.to_string();
            for accepted in [
                "Validation_Set",
                "Training_Set",
                "Train_Set",
                "val",
                "train",
            ] {
                assert!(msg.contains(accepted), "{msg}");
            }
        }
    }

    #[test]
    fn keys_and_display_parse_back() {
        for split in Split::ALL {
            assert_eq!(split.key().parse::<Split>(), Ok(split));
            assert_eq!(split.to_string().parse::<Split>(), Ok(split));
        }
    }
}
