//! `mtanet evaluate`: scores a directory of per-video prediction files (ours or any peer's, in
//! the ABAW 2020 submission format) against the annotations of one split, with the ABAW
//! metrics.
//!
//! Prediction files live in `<pred>/{VA_Set,AU_Set,EXPR_Set}/<video>.txt` (the 2022+ task
//! folder names `VA_Estimation_Challenge`, ... are accepted too), have the annotation files'
//! header, and data line k is frame k, exactly like the annotation files; they are parsed by
//! [`mtanet_affwild2::parse_annotation`], so a malformed file is rejected with file and line.
//!
//! Frames scored: those labelled for the task (no `-5` / `-1` marker) that have a face crop on
//! disk, as training's own evaluation and wtomin's `eval_val_set.py` do; with
//! [`EvaluateOptions::all_frames`], every labelled frame (the test-set protocol). Frames are
//! pushed into the accumulators sorted by (video, frame), the order of training's evaluation,
//! so our own predictions reproduce its numbers exactly. AU predictions are 0/1 decisions and
//! are pushed as probabilities 0/1, so the 0.5 threshold returns the decisions.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};

use rayon::prelude::*;

use mtanet_affwild2::annotation::AnnotationFile;
use mtanet_affwild2::layout::{discover, parse_frame_file_name, Layout};
use mtanet_affwild2::{parse_annotation, DataError, Split, Task, Vocab};
use mtanet_metrics::{Accumulator, MetricsError, Report, Scoring};

/// The prediction folder names of each task, in order of preference (2020/2021, then 2022+).
pub const PREDICTION_DIRS: [(Task, &[&str]); 3] = [
    (Task::Va, &["VA_Set", "VA_Estimation_Challenge"]),
    (Task::Au, &["AU_Set", "AU_Detection_Challenge"]),
    (
        Task::Expr,
        &[
            "EXPR_Set",
            "EXPR_Classification_Challenge",
            "EXPR_Recognition_Challenge",
        ],
    ),
];

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

/// The prediction file of `video` for `task` under `pred`: the first task folder of
/// [`PREDICTION_DIRS`] that exists (the 2020 name when none does).
pub fn prediction_path(pred: &Path, task: Task, video: &str) -> PathBuf {
    let names = PREDICTION_DIRS[task.index()].1;
    let dir = names
        .iter()
        .map(|n| pred.join(n))
        .find(|p| p.is_dir())
        .unwrap_or_else(|| pred.join(names[0]));
    dir.join(format!("{video}.txt"))
}

/// The split of a command-line name: `Validation_Set` / `validation`, `Training_Set` /
/// `Train_Set` / `train`; `None` for anything else.
pub fn parse_split(name: &str) -> Option<Split> {
    match name.trim().to_ascii_lowercase().as_str() {
        "validation_set" | "validation" | "val" => Some(Split::Validation),
        "training_set" | "train_set" | "train" | "training" => Some(Split::Train),
        _ => None,
    }
}

/// The frames of each video folder under `crops` that have a jpg (`present[f]` for frame f).
fn list_crops(dir: &Path) -> Result<Vec<bool>, DataError> {
    let mut present = Vec::new();
    let rd = match std::fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(present),
        Err(e) => {
            return Err(DataError::Io {
                path: dir.to_path_buf(),
                source: e,
            })
        }
    };
    for entry in rd {
        let entry = entry.map_err(|e| DataError::Io {
            path: dir.to_path_buf(),
            source: e,
        })?;
        if let Some(f) = entry.file_name().to_str().and_then(parse_frame_file_name) {
            let f = f as usize;
            if present.len() <= f {
                present.resize(f + 1, false);
            }
            present[f] = true;
        }
    }
    Ok(present)
}

fn read_parse(task: Task, path: &Path) -> Result<AnnotationFile, DataError> {
    let bytes = std::fs::read(path).map_err(|e| DataError::Io {
        path: path.to_path_buf(),
        source: e,
    })?;
    parse_annotation(task, path, &bytes)
}

/// One annotated (task, video) of the split.
struct Annotated {
    task: Task,
    video: String,
    path: PathBuf,
    file: AnnotationFile,
}

/// Scores `pred` against the annotations of `opts.split` under `root`; see the module doc.
pub fn evaluate(
    pred: &Path,
    root: &Path,
    opts: &EvaluateOptions,
) -> Result<Evaluation, EvaluateError> {
    let found = discover(root)?;
    let entries: Vec<_> = found
        .entries
        .iter()
        .filter(|e| e.split == opts.split)
        .collect();
    if entries.is_empty() {
        return Err(EvaluateError::NoAnnotations {
            root: root.to_path_buf(),
            split: opts.split,
        });
    }
    let annotated: Vec<Annotated> = entries
        .par_iter()
        .map(|e| {
            Ok(Annotated {
                task: e.task,
                video: e.video.clone(),
                path: e.path.clone(),
                file: read_parse(e.task, &e.path)?,
            })
        })
        .collect::<Result<_, DataError>>()?;
    // Per task, the videos sorted by name (the order of the index and of training's eval).
    let mut by_task: [BTreeMap<&str, &Annotated>; 3] = Default::default();
    for a in &annotated {
        by_task[a.task.index()].insert(a.video.as_str(), a);
    }
    let first_names = |t: Task| {
        by_task[t.index()]
            .values()
            .next()
            .map(|a| a.file.names.clone())
            .unwrap_or_default()
    };
    let vocab = Vocab {
        au_names: first_names(Task::Au),
        expr_names: first_names(Task::Expr),
    };
    for t in [Task::Au, Task::Expr] {
        let expected = first_names(t);
        for a in by_task[t.index()].values() {
            if a.file.names != expected {
                let first = by_task[t.index()].values().next().map(|f| f.path.clone());
                return Err(DataError::VocabMismatch {
                    path: a.path.clone(),
                    line: 1,
                    found: a.file.names.clone(),
                    expected,
                    first: first.unwrap_or_default(),
                }
                .into());
            }
        }
    }
    let crops: BTreeMap<&str, Vec<bool>> = if opts.all_frames {
        BTreeMap::new()
    } else {
        let videos: BTreeSet<&str> = annotated.iter().map(|a| a.video.as_str()).collect();
        videos
            .into_par_iter()
            .map(|v| Ok((v, list_crops(&found.crops.join(v))?)))
            .collect::<Result<_, DataError>>()?
    };
    let scored = |video: &str, i: usize| -> bool {
        opts.all_frames
            || crops
                .get(video)
                .is_some_and(|p| p.get(i + 1).copied().unwrap_or(false))
    };

    // Parse every prediction file needed (in parallel), then push in (task, video, frame) order.
    let jobs: Vec<(&Annotated, Vec<usize>)> = Task::ALL
        .iter()
        .flat_map(|t| by_task[t.index()].values())
        .map(|a| {
            let frames: Vec<usize> = (0..a.file.len())
                .filter(|&i| a.file.is_labelled(i) && scored(&a.video, i))
                .collect();
            (*a, frames)
        })
        .collect();
    let predictions: Vec<Option<(PathBuf, AnnotationFile)>> = jobs
        .par_iter()
        .map(|(a, frames)| {
            if frames.is_empty() {
                return Ok(None);
            }
            let path = prediction_path(pred, a.task, &a.video);
            if !path.is_file() {
                return Err(EvaluateError::MissingPrediction {
                    task: a.task,
                    video: a.video.clone(),
                    expected: path,
                    annotation: a.path.clone(),
                });
            }
            let p = read_parse(a.task, &path)?;
            if a.task != Task::Va && p.names != a.file.names {
                return Err(EvaluateError::HeaderMismatch {
                    path,
                    found: p.names,
                    expected: a.file.names.clone(),
                    annotation: a.path.clone(),
                });
            }
            let needed = frames.last().map_or(0, |&i| i + 1);
            if p.len() < needed {
                return Err(EvaluateError::TooShort {
                    path,
                    lines: p.len(),
                    needed,
                    annotation: a.path.clone(),
                });
            }
            Ok(Some((path, p)))
        })
        .collect::<Result<_, EvaluateError>>()?;

    let mut acc = Accumulator::new(vocab.au_names.len(), vocab.expr_names.len());
    let mut videos = [0usize; 3];
    for ((a, frames), p) in jobs.iter().zip(&predictions) {
        let Some((path, p)) = p else { continue };
        videos[a.task.index()] += 1;
        for &i in frames {
            let missing = || EvaluateError::MissingValue {
                path: path.clone(),
                line: i + 2,
                frame: i + 1,
            };
            let metrics = |source| EvaluateError::Metrics {
                path: path.clone(),
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
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_names() {
        assert_eq!(parse_split("Validation_Set"), Some(Split::Validation));
        assert_eq!(parse_split("Train_Set"), Some(Split::Train));
        assert_eq!(parse_split("Training_Set"), Some(Split::Train));
        assert_eq!(parse_split("Test"), None);
    }

    #[test]
    fn prediction_path_prefers_existing_folder() {
        let d = tempfile::tempdir().unwrap();
        assert_eq!(
            prediction_path(d.path(), Task::Au, "v1"),
            d.path().join("AU_Set/v1.txt")
        );
        std::fs::create_dir(d.path().join("AU_Detection_Challenge")).unwrap();
        assert_eq!(
            prediction_path(d.path(), Task::Au, "v1"),
            d.path().join("AU_Detection_Challenge/v1.txt")
        );
    }
}
