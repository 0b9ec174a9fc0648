//! The ABAW 2020 prediction files of one video: their folders, writing the three texts, and
//! reading one file back against its annotation file.

use std::path::{Path, PathBuf};

use mtanet_affwild2::annotation::AnnotationFile;
use mtanet_affwild2::{parse_annotation, DataError, Task, Vocab};

use crate::evaluate::EvaluateError;

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

/// The folder each task's files are written to: the ABAW 2020 name, the first of
/// [`PREDICTION_DIRS`].
pub const TASK_DIRS: [(Task, &str); 3] = [
    (Task::Va, PREDICTION_DIRS[0].1[0]),
    (Task::Au, PREDICTION_DIRS[1].1[0]),
    (Task::Expr, PREDICTION_DIRS[2].1[0]),
];

/// One video frame's line in each of the three files.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FrameLine<'a> {
    /// Valence, arousal (clamped to `[-1, 1]` when written).
    pub va: [f32; 2],
    /// The 0/1 AU decisions.
    pub au: &'a [u8],
    /// The expression class index.
    pub expr: usize,
}

/// The three files' text of one video (VA, AU, EXPR, the order of [`TASK_DIRS`]): the
/// header, then one line per frame. Valence and arousal are Rust's shortest round-trip `f32`
/// text, so parsing returns the identical `f32`.
pub fn submission_texts<'a>(
    frames: impl IntoIterator<Item = FrameLine<'a>>,
    vocab: &Vocab,
) -> [String; 3] {
    let mut va = String::from("valence,arousal\n");
    let mut au = vocab.au_names.join(",");
    au.push('\n');
    let mut ex = vocab.expr_names.join(",");
    ex.push('\n');
    for d in frames {
        // Clamped to the annotation range (tanh outputs already are).
        let [v, a] = d.va.map(|x| x.clamp(-1.0, 1.0));
        va.push_str(&format!("{v},{a}\n"));
        let row: Vec<&str> =
            d.au.iter()
                .map(|&b| if b == 1 { "1" } else { "0" })
                .collect();
        au.push_str(&row.join(","));
        au.push('\n');
        ex.push_str(&format!("{}\n", d.expr));
    }
    [va, au, ex]
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

/// Reads and parses a file in the annotation format of `task`: an annotation file or a
/// prediction file (errors name the file and line).
pub fn read_task_file(task: Task, path: &Path) -> Result<AnnotationFile, DataError> {
    let bytes = std::fs::read(path).map_err(|e| DataError::Io {
        path: path.to_path_buf(),
        source: e,
    })?;
    parse_annotation(task, path, &bytes)
}

/// Reads the prediction file of `video` for `task` under `pred` ([`prediction_path`]) and
/// checks it against the video's annotation file `annotation` (parsed as `labels`): the file
/// exists, parses, has the annotation header (AU and EXPR) and at least `needed` data lines.
/// Returns its path and contents.
pub fn read_prediction(
    pred: &Path,
    task: Task,
    video: &str,
    annotation: &Path,
    labels: &AnnotationFile,
    needed: usize,
) -> Result<(PathBuf, AnnotationFile), EvaluateError> {
    let path = prediction_path(pred, task, video);
    if !path.is_file() {
        return Err(EvaluateError::MissingPrediction {
            task,
            video: video.to_string(),
            expected: path,
            annotation: annotation.to_path_buf(),
        });
    }
    let p = read_task_file(task, &path)?;
    if task != Task::Va && p.names != labels.names {
        return Err(EvaluateError::HeaderMismatch {
            path,
            found: p.names,
            expected: labels.names.clone(),
            annotation: annotation.to_path_buf(),
        });
    }
    if p.len() < needed {
        return Err(EvaluateError::TooShort {
            path,
            lines: p.len(),
            needed,
            annotation: annotation.to_path_buf(),
        });
    }
    Ok((path, p))
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn written_folders_are_the_2020_names() {
        let names: Vec<&str> = TASK_DIRS.iter().map(|(_, d)| *d).collect();
        assert_eq!(names, ["VA_Set", "AU_Set", "EXPR_Set"]);
        for ((t, _), (p, _)) in TASK_DIRS.iter().zip(PREDICTION_DIRS) {
            assert_eq!(*t, p);
        }
    }

    #[test]
    fn va_text_round_trips_f32() {
        let au = [1u8, 0];
        let line = FrameLine {
            va: [0.123_456_79, -0.999_999_94],
            au: &au,
            expr: 1,
        };
        let v = Vocab {
            au_names: vec!["AU1".into(), "AU2".into()],
            expr_names: vec!["A".into(), "B".into()],
        };
        let [va, au, ex] = submission_texts([line], &v);
        let first = va.lines().nth(1).unwrap();
        let parsed: Vec<f32> = first.split(',').map(|x| x.parse().unwrap()).collect();
        assert_eq!(parsed, line.va.to_vec());
        assert_eq!(au, "AU1,AU2\n1,0\n");
        assert_eq!(ex, "A,B\n1\n");
    }
}
