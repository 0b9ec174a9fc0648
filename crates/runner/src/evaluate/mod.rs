//! `mtanet evaluate`: scores a directory of per-video prediction files (ours or any peer's, in
//! the ABAW 2020 submission format, see [`crate::submission`]) against the annotations of one
//! split, with the ABAW metrics. Prediction files are parsed by
//! [`mtanet_affwild2::parse_annotation`], so a malformed file is rejected with file and line;
//! their AU columns and expression indices are matched to the annotation header by name
//! ([`crate::submission::in_order_of`]), and a header naming other AUs or classes is refused
//! listing both.
//!
//! Frames scored: those labelled for the task (no `-5` / `-1` marker) that have a face crop on
//! disk, as training's own evaluation and wtomin's `eval_val_set.py` do; with
//! [`EvaluateOptions::all_frames`], every labelled frame (the test-set protocol). Frames are
//! pushed into the accumulators sorted by (video, frame), the order of training's evaluation,
//! so our own predictions reproduce its numbers exactly. AU predictions are 0/1 decisions and
//! are pushed as probabilities 0/1, so the 0.5 threshold returns the decisions.
//!
//! The steps of [`evaluate`]: read the split's annotation files and their vocabulary, list the
//! crops that exist, pick the scored frames, read the prediction files, accumulate. The error
//! type is in [`error`]; the text form of an [`Evaluation`] in `display`.

mod display;
pub mod error;

pub use error::EvaluateError;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use rayon::prelude::*;

use mtanet_affwild2::annotation::AnnotationFile;
use mtanet_affwild2::layout::{discover, Discovered, Layout};
use mtanet_affwild2::{Crops, DataError, HeaderVocab, Split, Task, Vocab};
use mtanet_metrics::{Accumulator, Report, Scoring};

use crate::submission::{read_prediction, read_task_file, video_crops};

/// What to score.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EvaluateOptions {
    /// The labelled split (normally [`Split::Validation`]).
    pub split: Split,
    /// Score every labelled frame, not only those with a face crop on disk.
    pub all_frames: bool,
}

impl Default for EvaluateOptions {
    fn default() -> Self {
        Self {
            split: Split::Validation,
            all_frames: false,
        }
    }
}

/// A scored prediction directory: the report and what it was computed over.
#[derive(Debug, Clone, PartialEq)]
pub struct Evaluation {
    /// The metrics.
    pub report: Report,
    /// AU and expression names (from the annotation headers).
    pub vocab: Vocab,
    /// The annotation layout of the root.
    pub layout: Layout,
    /// The composite scores used.
    pub scoring: Scoring,
    /// The split scored.
    pub split: Split,
    /// Whether frames without a face crop were scored too.
    pub all_frames: bool,
    /// Videos scored per task (VA, AU, EXPR).
    pub videos: [usize; 3],
}

/// One annotated (task, video) of the split.
struct Annotated {
    task: Task,
    video: String,
    path: PathBuf,
    file: AnnotationFile,
}

/// Per task, the annotated videos sorted by name (the order of the index and of training's
/// evaluation).
type ByTask<'a> = [BTreeMap<&'a str, &'a Annotated>; 3];

/// One (task, video) to score: its annotation and the 0-based frames scored.
type Job<'a> = (&'a Annotated, Vec<usize>);

/// A prediction file read for a [`Job`] (`None` when the job scores no frame).
type Prediction = Option<(PathBuf, AnnotationFile)>;

/// Scores `pred` against the annotations of `opts.split` under `root`; see the module doc.
pub fn evaluate(
    pred: &Path,
    root: &Path,
    opts: &EvaluateOptions,
) -> Result<Evaluation, EvaluateError> {
    let found = discover(root)?;
    let annotated = read_annotations(&found, root, opts.split)?;
    let mut by_task: ByTask = Default::default();
    for a in &annotated {
        by_task[a.task.index()].insert(a.video.as_str(), a);
    }
    let vocab = split_vocab(&by_task)?;
    let crops = if opts.all_frames {
        None
    } else {
        Some(existing_crops(&found, &annotated)?)
    };
    let jobs = scored_frames(&by_task, crops.as_ref());
    let predictions = read_predictions(pred, &jobs)?;
    let (acc, videos) = accumulate(&jobs, &predictions, &vocab)?;
    let scoring = scoring_for(found.layout, &vocab);
    // No thresholds: the AU decisions are the files' 0/1 values (threshold 0.5).
    let report = acc.report(scoring, None);
    Ok(Evaluation {
        report,
        vocab,
        layout: found.layout,
        scoring,
        split: opts.split,
        all_frames: opts.all_frames,
        videos,
    })
}

/// The annotation files of `split` (read in parallel); an error if there is none.
fn read_annotations(
    found: &Discovered,
    root: &Path,
    split: Split,
) -> Result<Vec<Annotated>, EvaluateError> {
    let entries: Vec<_> = found.entries.iter().filter(|e| e.split == split).collect();
    if entries.is_empty() {
        return Err(EvaluateError::NoAnnotations {
            root: root.to_path_buf(),
            split,
        });
    }
    let annotated = entries
        .par_iter()
        .map(|e| {
            Ok(Annotated {
                task: e.task,
                video: e.video.clone(),
                path: e.path.clone(),
                file: read_task_file(e.task, &e.path)?,
            })
        })
        .collect::<Result<_, DataError>>()?;
    Ok(annotated)
}

/// The AU and expression names of the split: those of each task's first file, which every
/// other file of the task must repeat ([`HeaderVocab`]).
fn split_vocab(by_task: &ByTask) -> Result<Vocab, EvaluateError> {
    let mut header = HeaderVocab::new();
    for t in [Task::Au, Task::Expr] {
        for a in by_task[t.index()].values() {
            header.admit(t, &a.path, &a.file.names)?;
        }
    }
    Ok(header.vocab())
}

/// The crops on disk of every annotated video (listed in parallel, once per video).
fn existing_crops<'a>(
    found: &Discovered,
    annotated: &'a [Annotated],
) -> Result<BTreeMap<&'a str, Crops>, DataError> {
    let videos: BTreeSet<&str> = annotated.iter().map(|a| a.video.as_str()).collect();
    videos
        .into_par_iter()
        .map(|v| Ok((v, video_crops(&found.crops.join(v))?)))
        .collect()
}

/// Per (task, video) in (task, video) order, the labelled frames that are scored: all of
/// them without `crops`, else those with a crop.
fn scored_frames<'a>(by_task: &ByTask<'a>, crops: Option<&BTreeMap<&str, Crops>>) -> Vec<Job<'a>> {
    let scored = |video: &str, i: usize| -> bool {
        crops.is_none_or(|c| {
            c.get(video)
                .is_some_and(|c| u32::try_from(i + 1).is_ok_and(|frame| c.contains(frame)))
        })
    };
    Task::ALL
        .iter()
        .flat_map(|t| by_task[t.index()].values())
        .map(|a| {
            let frames: Vec<usize> = (0..a.file.len())
                .filter(|&i| a.file.is_labelled(i) && scored(&a.video, i))
                .collect();
            (*a, frames)
        })
        .collect()
}

/// The prediction file of every job that scores a frame (read and checked in parallel); the
/// error of the first faulty job in (task, video) order.
fn read_predictions(pred: &Path, jobs: &[Job]) -> Result<Vec<Prediction>, EvaluateError> {
    let read: Vec<Result<Prediction, EvaluateError>> = jobs
        .par_iter()
        .map(|(a, frames)| {
            let Some(&last) = frames.last() else {
                return Ok(None);
            };
            let (path, p) = read_prediction(pred, a.task, &a.video, &a.path, &a.file, last + 1)?;
            Ok(Some((path, p)))
        })
        .collect();
    read.into_iter().collect()
}

/// The metrics' accumulators over every scored frame, in (task, video, frame) order, and the
/// videos scored per task.
fn accumulate(
    jobs: &[Job],
    predictions: &[Prediction],
    vocab: &Vocab,
) -> Result<(Accumulator, [usize; 3]), EvaluateError> {
    let mut acc = Accumulator::new(vocab.au_names.len(), vocab.expr_names.len());
    let mut videos = [0usize; 3];
    for ((a, frames), p) in jobs.iter().zip(predictions) {
        let Some((path, p)) = p else { continue };
        videos[a.task.index()] += 1;
        for &i in frames {
            push_frame(&mut acc, a, p, path, i)?;
        }
    }
    Ok((acc, videos))
}

/// Pushes frame `i` (0-based) of annotation `a` and prediction `p` (read from `path`).
fn push_frame(
    acc: &mut Accumulator,
    a: &Annotated,
    p: &AnnotationFile,
    path: &Path,
    i: usize,
) -> Result<(), EvaluateError> {
    let missing = || EvaluateError::MissingValue {
        path: path.to_path_buf(),
        line: i + 2,
        frame: i + 1,
    };
    let metrics = |source| EvaluateError::Metrics {
        path: path.to_path_buf(),
        line: i + 2,
        source,
    };
    match a.task {
        Task::Va => {
            let (Some(y), Some(x)) = (a.file.va(i), p.va(i)) else {
                return Err(missing());
            };
            acc.va.push(x, y);
        }
        Task::Au => {
            let (Some(y), Some(x)) = (a.file.au(i), p.au(i)) else {
                return Err(missing());
            };
            let probs: Vec<f32> = x.iter().map(|&d| f32::from(d)).collect();
            acc.au.try_push(&probs, y).map_err(metrics)?;
        }
        Task::Expr => {
            let (Some(y), Some(x)) = (a.file.expr(i), p.expr(i)) else {
                return Err(missing());
            };
            acc.expr
                .try_push(usize::from(x), usize::from(y))
                .map_err(metrics)?;
        }
    }
    Ok(())
}

/// The composite scores of a layout: ABAW 2022 forms for the 2022+ layout or an 8-class
/// expression vocabulary (as training's evaluation decides), else ABAW 2020.
pub fn scoring_for(layout: Layout, vocab: &Vocab) -> Scoring {
    if layout == Layout::Abaw2022 || vocab.expr_names.len() > 7 {
        Scoring::Abaw2022
    } else {
        Scoring::Abaw2020
    }
}

/// [`evaluate`], returning only the report.
pub fn evaluate_dir(
    pred: &Path,
    root: &Path,
    opts: &EvaluateOptions,
) -> Result<Report, EvaluateError> {
    evaluate(pred, root, opts).map(|e| e.report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_names() {
        assert_eq!("Validation_Set".parse(), Ok(Split::Validation));
        assert_eq!("Train_Set".parse(), Ok(Split::Train));
        assert_eq!("Training_Set".parse(), Ok(Split::Train));
        assert!("Test".parse::<Split>().is_err());
    }
}
