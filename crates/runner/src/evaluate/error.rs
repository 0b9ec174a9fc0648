//! Why a prediction directory cannot be scored: every variant names the file (and line) at
//! fault.

use std::path::PathBuf;

use mtanet_affwild2::{DataError, Split, Task};
use mtanet_metrics::MetricsError;

/// Why a prediction directory cannot be scored.
#[derive(Debug, thiserror::Error)]
pub enum EvaluateError {
    /// An annotation or prediction file is unreadable or malformed (names file and line).
    #[error(transparent)]
    Data(#[from] DataError),
    /// The root holds no annotation file for the split.
    #[error("{}: no annotation files for the {split} split", root.display())]
    NoAnnotations {
        /// The Aff-Wild2 root.
        root: PathBuf,
        /// The split asked for.
        split: Split,
    },
    /// An annotated video has no prediction file.
    #[error(
        "{}: missing prediction file for {task} video `{video}` (annotated in {})",
        expected.display(),
        annotation.display()
    )]
    MissingPrediction {
        /// The task.
        task: Task,
        /// The video.
        video: String,
        /// Where the prediction file was expected.
        expected: PathBuf,
        /// The annotation file that needs it.
        annotation: PathBuf,
    },
    /// A prediction header names other AUs / classes than the annotations.
    #[error(
        "{}:1: header {found:?} differs from the annotation header {expected:?} of {}",
        path.display(),
        annotation.display()
    )]
    HeaderMismatch {
        /// The prediction file.
        path: PathBuf,
        /// Its header names.
        found: Vec<String>,
        /// The annotation file's header names.
        expected: Vec<String>,
        /// The annotation file.
        annotation: PathBuf,
    },
    /// A prediction file has fewer data lines than the frames to score.
    #[error(
        "{}: {lines} prediction lines, but frame {needed} of {} is labelled and scored \
         (one line per video frame is required)",
        path.display(),
        annotation.display()
    )]
    TooShort {
        /// The prediction file.
        path: PathBuf,
        /// Its data lines.
        lines: usize,
        /// The last frame that must be predicted.
        needed: usize,
        /// The annotation file.
        annotation: PathBuf,
    },
    /// A scored frame's prediction holds the missing-label marker (`-5` / `-1`).
    #[error(
        "{}:{line}: frame {frame} is scored but its prediction is the missing-label marker",
        path.display()
    )]
    MissingValue {
        /// The prediction file.
        path: PathBuf,
        /// 1-based file line (header = 1).
        line: usize,
        /// The frame (= line - 1).
        frame: usize,
    },
    /// A value was rejected by the metrics.
    #[error("{}:{line}: {source}", path.display())]
    Metrics {
        /// The prediction file.
        path: PathBuf,
        /// 1-based file line.
        line: usize,
        /// The cause.
        source: MetricsError,
    },
}
