//! What `mtanet predict` writes for a split or the test set: the videos with their frame
//! counts (from the annotation files, the crops, or a `--videos` list) and the AU and
//! expression names of the headers.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use rayon::prelude::*;

use mtanet_affwild2::layout::{discover, AnnotationEntry, Discovered, CROPS_DIR};
use mtanet_affwild2::{Crops, DataError, HeaderVocab, Split, Task, Vocab, MAX_FRAME};

use super::{FrameDecision, PredictError, PredictTarget};
use crate::submission::{read_task_file, video_crops};

/// Reads a `--videos` list: one `video` or `video,frames` per line; blank lines and lines
/// starting with `#` are skipped.
pub fn read_video_list(path: &Path) -> Result<Vec<(String, Option<usize>)>, PredictError> {
    let text = std::fs::read_to_string(path).map_err(|e| DataError::Io {
        path: path.to_path_buf(),
        source: e,
    })?;
    let mut out = Vec::new();
    let mut seen = BTreeSet::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let err = |message: String| PredictError::VideoList {
            path: path.to_path_buf(),
            line: i + 1,
            message,
        };
        let (video, frames) = match line.split_once(',') {
            Some((v, f)) => {
                let n = parse_frame_count(f.trim()).map_err(err)?;
                (v.trim(), Some(n))
            }
            None => (line, None),
        };
        if video.is_empty() || video.contains(['/', '\\']) {
            return Err(err(format!("{video:?} is not a video name")));
        }
        if !seen.insert(video.to_string()) {
            return Err(err(format!("video `{video}` is listed twice")));
        }
        out.push((video.to_string(), frames));
    }
    Ok(out)
}

/// A frame count of a `--videos` line: a positive integer up to [`MAX_FRAME`] (checked before
/// it sizes anything).
fn parse_frame_count(text: &str) -> Result<usize, String> {
    let digits = !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit());
    match text.parse::<u64>() {
        Ok(n) if n > 0 && n <= u64::from(MAX_FRAME) => Ok(n as usize),
        Ok(0) => Err(format!("frames {text:?} is not a positive integer")),
        _ if digits => Err(format!(
            "frames {text:?} is more than {MAX_FRAME}, the most frames a video may have"
        )),
        _ => Err(format!("frames {text:?} is not a positive integer")),
    }
}

/// One video to predict.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedVideo {
    /// The video name (its crop folder under `cropped_aligned/`).
    pub name: String,
    /// Its frame count: the lines of each of its files.
    pub frames: usize,
    /// Its crops, when planning listed them (a test video sized by its highest crop number).
    pub crops: Option<Crops>,
}

impl PlannedVideo {
    /// A video of `frames` frames whose crops are not listed yet.
    fn sized(name: String, frames: usize) -> Self {
        PlannedVideo {
            name,
            frames,
            crops: None,
        }
    }
}

/// The videos to predict, and the vocabulary of the root's headers.
pub type VideoPlan = (Vec<PlannedVideo>, Option<Vocab>);

/// Plans the videos of `target` under `root` (see [`VideoPlan`]); `list` is a parsed
/// `--videos` list.
pub fn plan_videos(
    root: &Path,
    target: &PredictTarget,
    list: Option<&[(String, Option<usize>)]>,
) -> Result<VideoPlan, PredictError> {
    let found = match (target, discover(root)) {
        (_, Ok(f)) => Some(f),
        (PredictTarget::Test, Err(DataError::Layout { .. })) => None,
        (_, Err(e)) => return Err(e.into()),
    };
    let vocab = found.as_ref().map(root_vocab).transpose()?;
    let entries = found
        .as_ref()
        .map(|f| f.entries.as_slice())
        .unwrap_or_default();
    let videos = match target {
        PredictTarget::Split(split) => split_videos(root, *split, entries, list)?,
        PredictTarget::Test => test_videos(root, entries, list)?,
        PredictTarget::Frames(_) => Vec::new(),
    };
    if videos.is_empty() {
        let what = match target {
            PredictTarget::Split(s) => format!("the {s} split"),
            _ => "the test set (no unannotated crop folders)".to_string(),
        };
        return Err(PredictError::NoVideos {
            root: root.to_path_buf(),
            what,
        });
    }
    Ok((videos, vocab))
}

/// The videos of a labelled split (or those of `list`), each with the length of its longest
/// annotation file in the split (or the count `list` gives).
fn split_videos(
    root: &Path,
    split: Split,
    entries: &[AnnotationEntry],
    list: Option<&[(String, Option<usize>)]>,
) -> Result<Vec<PlannedVideo>, PredictError> {
    let in_split: Vec<_> = entries.iter().filter(|e| e.split == split).collect();
    let lens: Vec<(String, usize)> = in_split
        .par_iter()
        .map(|e| Ok((e.video.clone(), read_task_file(e.task, &e.path)?.len())))
        .collect::<Result<_, DataError>>()?;
    let mut longest: BTreeMap<String, usize> = BTreeMap::new();
    for (v, n) in lens {
        let l = longest.entry(v).or_default();
        *l = (*l).max(n);
    }
    let Some(list) = list else {
        return Ok(longest
            .into_iter()
            .map(|(v, n)| PlannedVideo::sized(v, n))
            .collect());
    };
    let mut videos = Vec::with_capacity(list.len());
    for (v, n) in list {
        let n = n.or_else(|| longest.get(v).copied()).ok_or_else(|| PredictError::NoVideos {
            root: root.to_path_buf(),
            what: format!("listed video `{v}` (not annotated in the {split} split; give its frame count as `{v},N`)"),
        })?;
        videos.push(PlannedVideo::sized(v.clone(), n));
    }
    Ok(videos)
}

/// The test videos: those of `list`, else every crop folder of a video without annotation
/// files; each with the count `list` gives, else its highest crop number.
fn test_videos(
    root: &Path,
    entries: &[AnnotationEntry],
    list: Option<&[(String, Option<usize>)]>,
) -> Result<Vec<PlannedVideo>, PredictError> {
    let crops = root.join(CROPS_DIR);
    let names = match list {
        Some(list) => list.to_vec(),
        None => {
            let annotated: BTreeSet<&str> = entries.iter().map(|e| e.video.as_str()).collect();
            unannotated_folders(&crops, &annotated)?
                .into_iter()
                .map(|v| (v, None))
                .collect()
        }
    };
    let mut videos = Vec::with_capacity(names.len());
    for (v, n) in names {
        let (n, listed) = match n {
            Some(n) => (n, None),
            None => {
                let listed = video_crops(&crops.join(&v))?;
                (
                    listed.frames().last().map_or(0, |&f| f as usize),
                    Some(listed),
                )
            }
        };
        if n == 0 {
            return Err(PredictError::NoVideos {
                root: root.to_path_buf(),
                what: format!(
                    "test video `{v}` (no crops in {} and no frame count)",
                    crops.join(&v).display()
                ),
            });
        }
        videos.push(PlannedVideo {
            name: v,
            frames: n,
            crops: listed,
        });
    }
    Ok(videos)
}

/// The folders under `crops` (sorted, hidden ones skipped) of videos not in `annotated`.
fn unannotated_folders(crops: &Path, annotated: &BTreeSet<&str>) -> Result<Vec<String>, DataError> {
    let io = |e| DataError::Io {
        path: crops.to_path_buf(),
        source: e,
    };
    let mut names = Vec::new();
    for entry in std::fs::read_dir(crops).map_err(io)? {
        let entry = entry.map_err(io)?;
        let Some(name) = entry.file_name().to_str().map(str::to_string) else {
            continue;
        };
        if !name.starts_with('.') && entry.path().is_dir() && !annotated.contains(name.as_str()) {
            names.push(name);
        }
    }
    names.sort();
    Ok(names)
}

/// The columns written: the data's AU and expression names (the root's headers, in their
/// order), each matched by name to an output of the model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Columns {
    /// The names written, in file order.
    pub vocab: Vocab,
    /// For each written AU column, the model's AU index.
    au_from: Vec<usize>,
    /// For each model class index, the written class index.
    expr_to: Vec<usize>,
}

impl Columns {
    /// The model's own names and order.
    pub fn identity(model: &Vocab) -> Columns {
        Columns {
            vocab: model.clone(),
            au_from: (0..model.au_names.len()).collect(),
            expr_to: (0..model.expr_names.len()).collect(),
        }
    }

    /// A decision in the model's order, in the written order.
    pub fn apply(&self, d: FrameDecision) -> FrameDecision {
        let mut expr_probs = vec![0.0; d.expr_probs.len()];
        for (k, p) in d.expr_probs.iter().enumerate() {
            expr_probs[self.expr_to[k]] = *p;
        }
        FrameDecision {
            va: d.va,
            au_probs: self.au_from.iter().map(|&k| d.au_probs[k]).collect(),
            au: self.au_from.iter().map(|&k| d.au[k]).collect(),
            expr_probs,
            expr: self.expr_to[d.expr],
        }
    }
}

/// The columns to write (see [`Columns`]): the model's vocabulary `model`, in the order of the
/// root's headers where `root_vocab` has them. A header naming other AUs or classes than the
/// model's is an error listing both.
pub fn vocab_for(
    root_vocab: Option<Vocab>,
    root: &Path,
    model: &Vocab,
    checkpoint: &Path,
) -> Result<Columns, PredictError> {
    let mut cols = Columns::identity(model);
    let Some(v) = root_vocab else {
        return Ok(cols);
    };
    let mismatch =
        |what: &'static str, data: &[String], model: &[String]| PredictError::VocabNames {
            root: root.to_path_buf(),
            checkpoint: checkpoint.to_path_buf(),
            what,
            data: data.to_vec(),
            model: model.to_vec(),
        };
    if !v.au_names.is_empty() {
        let from = positions(&v.au_names, &model.au_names)
            .ok_or_else(|| mismatch("AUs", &v.au_names, &model.au_names))?;
        cols.au_from = from;
        cols.vocab.au_names = v.au_names.clone();
    }
    if !v.expr_names.is_empty() {
        let to = positions(&model.expr_names, &v.expr_names)
            .ok_or_else(|| mismatch("expression classes", &v.expr_names, &model.expr_names))?;
        cols.expr_to = to;
        cols.vocab.expr_names = v.expr_names.clone();
    }
    Ok(cols)
}

/// For each name of `wanted`, its index in `have`, if both hold the same names (each once).
fn positions(wanted: &[String], have: &[String]) -> Option<Vec<usize>> {
    if wanted.len() != have.len() {
        return None;
    }
    let mut used = vec![false; have.len()];
    let mut out = Vec::with_capacity(wanted.len());
    for w in wanted {
        let k = have.iter().position(|h| h == w)?;
        if std::mem::replace(&mut used[k], true) {
            return None;
        }
        out.push(k);
    }
    Some(out)
}

/// The AU and expression names of a root's annotation headers (the first file of each task,
/// any split); empty names for a task without files.
pub fn root_vocab(found: &Discovered) -> Result<Vocab, DataError> {
    Ok(root_header_vocab(found)?.vocab())
}

/// [`root_vocab`] as the [`HeaderVocab`] that every other AU and expression file of the root
/// must repeat (`tune` checks a split's files with it).
pub fn root_header_vocab(found: &Discovered) -> Result<HeaderVocab, DataError> {
    let mut header = HeaderVocab::new();
    for t in [Task::Au, Task::Expr] {
        if let Some(e) = found.entries.iter().find(|e| e.task == t) {
            header.admit(t, &e.path, &read_task_file(t, &e.path)?.names)?;
        }
    }
    Ok(header)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(s: &str) -> Vec<String> {
        s.split(',').map(String::from).collect()
    }

    #[test]
    fn columns_are_matched_by_name_or_refused_with_both_lists() {
        let model = Vocab {
            au_names: names("AU1,AU2,AU4"),
            expr_names: names("Neutral,Anger,Happy"),
        };
        let root = Vocab {
            au_names: names("AU4,AU1,AU2"),
            expr_names: names("Happy,Neutral,Anger"),
        };
        let (r, c) = (Path::new("/data"), Path::new("/run/last.safetensors"));
        let cols = vocab_for(Some(root.clone()), r, &model, c).unwrap();
        assert_eq!(cols.vocab, root);
        let d = FrameDecision {
            va: [0.1, 0.2],
            au_probs: vec![0.9, 0.2, 0.6],
            au: vec![1, 0, 1],
            expr_probs: vec![0.1, 0.2, 0.7],
            expr: 2,
        };
        let w = cols.apply(d.clone());
        assert_eq!(w.au, vec![1, 1, 0]);
        assert_eq!(w.au_probs, vec![0.6, 0.9, 0.2]);
        assert_eq!(w.expr_probs, vec![0.7, 0.1, 0.2]);
        assert_eq!(w.expr, 0);
        assert_eq!(Columns::identity(&model).apply(d.clone()), d);
        let other = Vocab {
            au_names: names("AU1,AU2,AU5"),
            expr_names: Vec::new(),
        };
        let e = vocab_for(Some(other), r, &model, c)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("AU5")
                && e.contains("AU4")
                && e.contains("/data")
                && e.contains("last.safetensors"),
            "{e}"
        );
    }

    #[test]
    fn video_list_parses_and_names_bad_lines() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("list.txt");
        std::fs::write(&p, "# test videos\nv1\n\nv2_left, 120\n").unwrap();
        let l = read_video_list(&p).unwrap();
        assert_eq!(
            l,
            vec![("v1".to_string(), None), ("v2_left".to_string(), Some(120))]
        );
        std::fs::write(&p, "v1\nv2,abc\n").unwrap();
        let e = read_video_list(&p).unwrap_err().to_string();
        assert!(e.contains("list.txt:2") && e.contains("abc"), "{e}");
        for huge in ["99999999999999999999999", "10000001"] {
            std::fs::write(&p, format!("v1,5\nv2,{huge}\n")).unwrap();
            let e = read_video_list(&p).unwrap_err().to_string();
            assert!(e.contains("list.txt:2") && e.contains("10000000"), "{e}");
        }
        std::fs::write(&p, "v1,0\n").unwrap();
        let e = read_video_list(&p).unwrap_err().to_string();
        assert!(e.contains("list.txt:1") && e.contains("positive"), "{e}");
        std::fs::write(&p, "v1\nv1\n").unwrap();
        assert!(read_video_list(&p)
            .unwrap_err()
            .to_string()
            .contains("twice"));
    }
}
