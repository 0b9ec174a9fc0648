//! The ABAW 2020 prediction files of one video: their folders, writing the three texts, and
//! reading one file back against its annotation file.

use std::path::{Path, PathBuf};

use mtanet_affwild2::annotation::{AnnotationFile, Labels};
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

/// The header line (with its newline) of `task`'s file: `valence,arousal`, the AU names,
/// the expression names.
pub fn header_line(task: Task, vocab: &Vocab) -> String {
    let mut h = match task {
        Task::Va => String::from("valence,arousal"),
        Task::Au => vocab.au_names.join(","),
        Task::Expr => vocab.expr_names.join(","),
    };
    h.push('\n');
    h
}

/// Appends the data line (with its newline) of frame `d` in `task`'s file to `out`. Valence
/// and arousal are clamped to the annotation range and written as Rust's shortest round-trip
/// `f32` text, so parsing returns the identical `f32`.
pub fn push_frame_line(out: &mut String, task: Task, d: &FrameLine<'_>) {
    use std::fmt::Write;
    match task {
        Task::Va => {
            let [v, a] = super::submitted_va(d.va);
            let _ = writeln!(out, "{v},{a}");
        }
        Task::Au => {
            for (k, &b) in d.au.iter().enumerate() {
                if k > 0 {
                    out.push(',');
                }
                out.push(if b == 1 { '1' } else { '0' });
            }
            out.push('\n');
        }
        Task::Expr => {
            let _ = writeln!(out, "{}", d.expr);
        }
    }
}

/// The three files' text of one video (VA, AU, EXPR, the order of [`TASK_DIRS`]): the
/// header ([`header_line`]), then one line per frame ([`push_frame_line`]).
pub fn submission_texts<'a>(
    frames: impl IntoIterator<Item = FrameLine<'a>>,
    vocab: &Vocab,
) -> [String; 3] {
    let mut texts = TASK_DIRS.map(|(t, _)| header_line(t, vocab));
    for d in frames {
        for ((t, _), text) in TASK_DIRS.iter().zip(texts.iter_mut()) {
            push_frame_line(text, *t, &d);
        }
    }
    texts
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
/// exists, parses, names the AUs / classes of the annotation header (in any order: columns and
/// class indices are matched by name, [`in_order_of`]) and has at least `needed` data lines.
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
    let p = match in_order_of(p, &labels.names) {
        Ok(p) => p,
        Err(p) => {
            return Err(EvaluateError::HeaderMismatch {
                path,
                found: p.names,
                expected: labels.names.clone(),
                annotation: annotation.to_path_buf(),
            })
        }
    };
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

/// A prediction file's AU columns or expression indices put in the order of the names
/// `names` (an annotation header), matched by name; the file itself when its header names
/// other AUs or classes. VA files have a fixed header and are returned as they are.
pub fn in_order_of(
    mut file: AnnotationFile,
    names: &[String],
) -> Result<AnnotationFile, AnnotationFile> {
    if file.task == Task::Va || file.names == names {
        return Ok(file);
    }
    // For each name of the file, its index in `names`.
    let mut to = Vec::with_capacity(file.names.len());
    let mut used = vec![false; names.len()];
    for n in &file.names {
        match names.iter().position(|x| x == n) {
            Some(k) if file.names.len() == names.len() && !used[k] => {
                used[k] = true;
                to.push(k);
            }
            _ => return Err(file),
        }
    }
    match &mut file.labels {
        Labels::Au {
            columns, values, ..
        } => {
            let c = *columns;
            let mut row = vec![0u8; c];
            for chunk in values.chunks_mut(c) {
                for (k, &v) in chunk.iter().enumerate() {
                    row[to[k]] = v;
                }
                chunk.copy_from_slice(&row);
            }
        }
        Labels::Expr(classes) => {
            for x in classes.iter_mut().flatten() {
                // Class indices are below the header's length (checked when parsed), and the
                // header has at most 255 names.
                *x = to[usize::from(*x)] as u8;
            }
        }
        Labels::Va(_) => {}
    }
    file.names = names.to_vec();
    Ok(file)
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

    #[test]
    fn columns_in_another_order_are_matched_by_name() {
        let path = Path::new("p.txt");
        let au =
            parse_annotation(Task::Au, path, b"AU2,AU1,AU4\n1,0,0\n-1,-1,-1\n0,1,1\n").unwrap();
        let names: Vec<String> = ["AU1", "AU2", "AU4"].map(String::from).to_vec();
        let a = in_order_of(au, &names).unwrap();
        assert_eq!(a.names, names);
        assert_eq!(a.au(0), Some(&[0u8, 1, 0][..]));
        assert_eq!(a.au(1), None);
        assert_eq!(a.au(2), Some(&[1u8, 0, 1][..]));
        let ex = parse_annotation(Task::Expr, path, b"Happy,Neutral,Sad\n0\n-1\n2\n").unwrap();
        let classes: Vec<String> = ["Neutral", "Sad", "Happy"].map(String::from).to_vec();
        let e = in_order_of(ex, &classes).unwrap();
        assert_eq!((e.expr(0), e.expr(1), e.expr(2)), (Some(2), None, Some(1)));
        let other = parse_annotation(Task::Au, path, b"AU1,AU2,AU5\n1,0,0\n").unwrap();
        assert!(in_order_of(other, &names).is_err());
        let fewer = parse_annotation(Task::Au, path, b"AU1,AU2\n1,0\n").unwrap();
        assert!(in_order_of(fewer, &names).is_err());
    }
}
