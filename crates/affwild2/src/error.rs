//! The crate's one error type: every input-derived error names the file, and where it has
//! one, the line (1-based, the header is line 1) and the field (1-based column and its name).

use std::path::PathBuf;

use crate::task::{Split, Task};

/// Everything that can go wrong reading Aff-Wild2, generating the synthetic set or loading batches.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// A file or folder could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The file has no bytes (or only whitespace), so not even a header.
    #[error("{}:1: empty file (expected a header line)", path.display())]
    EmptyFile {
        /// The annotation file.
        path: PathBuf,
    },
    /// The first line is not a valid header for the task (missing, wrong names, duplicates).
    #[error("{}:{line}: header: {message}", path.display())]
    Header {
        /// The annotation file.
        path: PathBuf,
        /// Always 1 (the header line).
        line: usize,
        /// What is wrong.
        message: String,
    },
    /// A file's header disagrees with the header of an earlier file of the same task.
    #[error(
        "{}:{line}: header {found:?} differs from {expected:?} in {} (one task must have one vocabulary)",
        path.display(),
        first.display()
    )]
    VocabMismatch {
        /// The disagreeing file.
        path: PathBuf,
        /// Always 1 (the header line).
        line: usize,
        /// Its header names.
        found: Vec<String>,
        /// The names of the first file of the task.
        expected: Vec<String>,
        /// The first file of the task (the one `expected` comes from).
        first: PathBuf,
    },
    /// A row has another number of comma-separated fields than the header.
    #[error("{}:{line}: expected {expected} fields, found {found}", path.display())]
    ColumnCount {
        /// The annotation file.
        path: PathBuf,
        /// 1-based line number (header = 1).
        line: usize,
        /// Number of header fields.
        expected: usize,
        /// Number of fields on the line.
        found: usize,
    },
    /// A field is not a number.
    #[error("{}:{line}: field {field} ({name}): {value:?} is not a number", path.display())]
    NotANumber {
        /// The annotation file.
        path: PathBuf,
        /// 1-based line number (header = 1).
        line: usize,
        /// 1-based column.
        field: usize,
        /// The column's header name.
        name: String,
        /// The text found.
        value: String,
    },
    /// A field is NaN or infinite.
    #[error("{}:{line}: field {field} ({name}): {value:?} is not finite", path.display())]
    NonFinite {
        /// The annotation file.
        path: PathBuf,
        /// 1-based line number (header = 1).
        line: usize,
        /// 1-based column.
        field: usize,
        /// The column's header name.
        name: String,
        /// The text found.
        value: String,
    },
    /// A field is a number outside the values the task allows.
    #[error("{}:{line}: field {field} ({name}): {value:?} is out of range ({allowed})", path.display())]
    OutOfRange {
        /// The annotation file.
        path: PathBuf,
        /// 1-based line number (header = 1).
        line: usize,
        /// 1-based column.
        field: usize,
        /// The column's header name.
        name: String,
        /// The text found.
        value: String,
        /// The allowed values, in words.
        allowed: String,
    },
    /// A line is not valid UTF-8.
    #[error("{}:{line}: not valid UTF-8", path.display())]
    Encoding {
        /// The annotation file.
        path: PathBuf,
        /// 1-based line number (header = 1).
        line: usize,
    },
    /// One task lists the same video in two splits.
    #[error(
        "video {video:?} is listed twice in one task: {} and {}",
        first.display(),
        second.display()
    )]
    DuplicateVideo {
        /// The video name.
        video: String,
        /// Its annotation file in the first split.
        first: PathBuf,
        /// Its annotation file in the second split.
        second: PathBuf,
    },
    /// The root does not look like any known Aff-Wild2 layout.
    #[error("{}: {message}", root.display())]
    Layout {
        /// The dataset root.
        root: PathBuf,
        /// What was expected and not found.
        message: String,
    },
    /// A task has no labelled frame of a split under the root (a multi-task run trains and
    /// evaluates all three).
    #[error(
        "{}: no labelled {task} frames in the {split} split: expected {task} annotation files (with \
         face crops) in {} under it",
        root.display(),
        folder.display()
    )]
    MissingTask {
        /// The dataset root.
        root: PathBuf,
        /// The task without labels.
        task: Task,
        /// The split without them.
        split: Split,
        /// Where its files belong, relative to the root.
        folder: PathBuf,
    },
    /// A `cropped_aligned` video folder has no annotation file (an error only with `strict`).
    #[error("{}: video folder has no annotation file in any task (strict mode)", path.display())]
    UnannotatedVideo {
        /// The video folder.
        path: PathBuf,
    },
    /// A file of a crop folder is named like a crop but not as crops are named (`000017.jpg`
    /// for `00017.jpg`): readers find crops by the name of their frame number, so it would be
    /// counted by some and missed by others.
    #[error(
        "{}: not a crop name: the crop of frame {frame} is named {expected} (5 digits, zero-padded); rename the crops",
        path.display()
    )]
    CropName {
        /// The file.
        path: PathBuf,
        /// The frame number its name holds.
        frame: u32,
        /// The name of that frame's crop.
        expected: String,
    },
    /// A file of a crop folder is named as frame 0 (`00000.jpg`). Aff-Wild2 crops are
    /// numbered from 1 (`00001.jpg` is the frame of an annotation file's line 2), so a folder
    /// numbered from 0 would pair every crop with the labels of the next frame.
    #[error(
        "{}: a crop of frame 0: crops are numbered from 1 (00001.jpg is the frame of the annotation's line 2), so a folder numbered from 0 would pair every crop with the next frame's labels; renumber the crops from 00001.jpg",
        path.display()
    )]
    CropFrameZero {
        /// The file.
        path: PathBuf,
    },
    /// A JPEG could not be decoded.
    #[error("{}: cannot decode JPEG: {message}", path.display())]
    BadImage {
        /// The jpg.
        path: PathBuf,
        /// The decoder's message.
        message: String,
    },
    /// A JPEG has another size than the configured one and `resize` is off.
    #[error(
        "{}: image is {width}x{height}, expected {expected}x{expected} (set `resize: true` to resize)",
        path.display()
    )]
    ImageSize {
        /// The jpg.
        path: PathBuf,
        /// Its width.
        width: u32,
        /// Its height.
        height: u32,
        /// The configured side.
        expected: usize,
    },
    /// A loader or generator setting is invalid.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// Building a tensor failed.
    #[error("tensor: {0}")]
    Tensor(#[from] candle_core::Error),
}

impl DataError {
    /// The file this error is about, if any (annotation file, jpg or video folder).
    pub fn path(&self) -> Option<&std::path::Path> {
        match self {
            DataError::Io { path, .. }
            | DataError::EmptyFile { path }
            | DataError::Header { path, .. }
            | DataError::VocabMismatch { path, .. }
            | DataError::ColumnCount { path, .. }
            | DataError::NotANumber { path, .. }
            | DataError::NonFinite { path, .. }
            | DataError::OutOfRange { path, .. }
            | DataError::Encoding { path, .. }
            | DataError::UnannotatedVideo { path }
            | DataError::BadImage { path, .. }
            | DataError::CropName { path, .. }
            | DataError::CropFrameZero { path }
            | DataError::ImageSize { path, .. } => Some(path),
            DataError::DuplicateVideo { second, .. } => Some(second),
            DataError::Layout { root, .. } | DataError::MissingTask { root, .. } => Some(root),
            DataError::Config(_) | DataError::Tensor(_) => None,
        }
    }

    /// The 1-based line the error is on, where it has one.
    pub fn line(&self) -> Option<usize> {
        match self {
            DataError::EmptyFile { .. } => Some(1),
            DataError::Header { line, .. }
            | DataError::VocabMismatch { line, .. }
            | DataError::ColumnCount { line, .. }
            | DataError::NotANumber { line, .. }
            | DataError::NonFinite { line, .. }
            | DataError::OutOfRange { line, .. }
            | DataError::Encoding { line, .. } => Some(*line),
            _ => None,
        }
    }

    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        DataError::Io {
            path: path.into(),
            source,
        }
    }
}
