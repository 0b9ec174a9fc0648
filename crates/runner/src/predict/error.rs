//! The input-derived errors of `mtanet predict`.

use std::path::PathBuf;

use mtanet_affwild2::DataError;

/// An input-derived problem of `mtanet predict`, naming the file (and line) at fault.
#[derive(Debug, thiserror::Error)]
pub enum PredictError {
    /// The root's headers name other AUs or classes than the checkpoint's heads.
    #[error(
        "{}: the annotation headers name the {what} [{}], the checkpoint {} predicts [{}]: columns are matched by name",
        root.display(),
        data.join(", "),
        checkpoint.display(),
        model.join(", ")
    )]
    VocabNames {
        /// The data root.
        root: PathBuf,
        /// The checkpoint.
        checkpoint: PathBuf,
        /// `AUs` or `expression classes`.
        what: &'static str,
        /// The names in the annotation headers.
        data: Vec<String>,
        /// The names of the checkpoint's head.
        model: Vec<String>,
    },
    /// `--tuned-thresholds` without tuned thresholds in the run's report.json.
    #[error("{}: no `au.tuned.thresholds` with {n_au} values (train with eval.tune_au_thresholds, or drop --tuned-thresholds)", path.display())]
    NoTunedThresholds {
        /// The report file.
        path: PathBuf,
        /// AUs of the model.
        n_au: usize,
    },
    /// A malformed line of a `--videos` list.
    #[error("{}:{line}: {message}", path.display())]
    VideoList {
        /// The list file.
        path: PathBuf,
        /// 1-based line.
        line: usize,
        /// What is wrong.
        message: String,
    },
    /// Nothing to predict.
    #[error("{}: no videos to predict for {what}", root.display())]
    NoVideos {
        /// The root (or frames folder).
        root: PathBuf,
        /// The split or folder described.
        what: String,
    },
    /// The model produced NaN or infinity.
    #[error("non-finite model output for {}", jpg.display())]
    NonFinite {
        /// The crop.
        jpg: PathBuf,
    },
    /// Reading the data failed.
    #[error(transparent)]
    Data(#[from] DataError),
}
