//! The report of `mtanet submit validate`: problems by kind, file and line, and how frames
//! without a face crop were filled.

use crate::submission::SubmissionFormat;
use std::collections::BTreeMap;
use std::hash::Hash;
use std::path::{Path, PathBuf};

/// What kind of problem a row or file has.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ProblemKind {
    /// A task file is missing.
    MissingFile,
    /// A task file is empty (no header).
    EmptyFile,
    /// The header is not the format's.
    Header,
    /// A row has another number of columns.
    ColumnCount,
    /// A value is not a number.
    NotANumber,
    /// A number is out of its range (VA outside `[-1, 1]`, an AU other than 0/1).
    OutOfRange,
    /// An expression index that is not a class index.
    ClassIndex,
    /// An `image_location` that is malformed or names no expected frame.
    Location,
    /// A frame with a second row.
    Duplicate,
    /// A row out of order.
    Order,
    /// An expected frame without a row.
    MissingFrame,
    /// A row past the video's last frame (ABAW 2020 files).
    ExtraRow,
}
impl ProblemKind {
    /// A short name for the report.
    pub fn name(self) -> &'static str {
        match self {
            ProblemKind::MissingFile => "missing file",
            ProblemKind::EmptyFile => "empty file",
            ProblemKind::Header => "wrong header",
            ProblemKind::ColumnCount => "wrong column count",
            ProblemKind::NotANumber => "not a number",
            ProblemKind::OutOfRange => "value out of range",
            ProblemKind::ClassIndex => "bad class index",
            ProblemKind::Location => "bad image location",
            ProblemKind::Duplicate => "duplicated frame",
            ProblemKind::Order => "out of order",
            ProblemKind::MissingFrame => "missing frame",
            ProblemKind::ExtraRow => "extra row",
        }
    }
}
/// One problem: its kind, the file, the 1-based line (none for a missing file) and what is
/// wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The kind.
    pub kind: ProblemKind,
    /// The file at fault.
    pub file: PathBuf,
    /// Its 1-based line, when the problem has one.
    pub line: Option<usize>,
    /// What is wrong.
    pub message: String,
}
impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.line {
            Some(l) => write!(f, "{}:{l}: {}", self.file.display(), self.message),
            None => write!(f, "{}: {}", self.file.display(), self.message),
        }
    }
}
/// How the frames without a face crop of one task file were filled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FillNote {
    /// The task file (for ABAW 2020, the task folder).
    pub file: PathBuf,
    /// Expected frames.
    pub frames: usize,
    /// Of those, frames without a face crop.
    pub without_crop: usize,
    /// Of those, frames whose row repeats the row of the nearest frame with a crop.
    pub nearest: usize,
}
/// The result of [`validate`](super::validate).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidationReport {
    /// The format checked.
    pub format: SubmissionFormat,
    /// Task files read.
    pub files: usize,
    /// Data rows read.
    pub rows: usize,
    /// Problems per kind.
    pub counts: BTreeMap<ProblemKind, usize>,
    /// The first problems of each kind (at most the `max_shown` of [`ValidateOptions`](super::ValidateOptions)).
    pub shown: Vec<Problem>,
    /// Per task file, how frames without a crop were filled.
    pub fill: Vec<FillNote>,
    pub(super) max_shown: usize,
}
impl ValidationReport {
    /// Whether no problem was found.
    pub fn is_ok(&self) -> bool {
        self.counts.is_empty()
    }

    /// All problems found.
    pub fn problems(&self) -> usize {
        self.counts.values().sum()
    }

    pub(super) fn add(
        &mut self,
        kind: ProblemKind,
        file: &Path,
        line: Option<usize>,
        message: String,
    ) {
        let n = self.counts.entry(kind).or_default();
        *n += 1;
        if *n <= self.max_shown {
            self.shown.push(Problem {
                kind,
                file: file.to_path_buf(),
                line,
                message,
            });
        }
    }
}
impl std::fmt::Display for ValidationReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "{} submission: {} file(s), {} row(s)",
            self.format, self.files, self.rows
        )?;
        for n in &self.fill {
            write!(
                f,
                "{}: {} of {} frames have no face crop",
                n.file.display(),
                n.without_crop,
                n.frames
            )?;
            if n.without_crop > 0 {
                write!(
                    f,
                    "; {} of them repeat the row of the nearest frame with a crop",
                    n.nearest
                )?;
                if n.nearest == n.without_crop {
                    write!(f, " (filled from the nearest predicted frame)")?;
                } else {
                    write!(f, " (the others were filled another way, e.g. smoothed)")?;
                }
            }
            writeln!(f)?;
        }
        if self.is_ok() {
            return writeln!(f, "OK: no problem found");
        }
        writeln!(f, "INVALID: {} problem(s)", self.problems())?;
        for (kind, count) in &self.counts {
            writeln!(f, "{}: {count}", kind.name())?;
            for p in self.shown.iter().filter(|p| p.kind == *kind) {
                writeln!(f, "  {p}")?;
            }
            if *count > self.max_shown {
                writeln!(f, "  ... and {} more", count - self.max_shown)?;
            }
        }
        Ok(())
    }
}
