//! `mtanet submit validate`: checks a prediction folder in one [`SubmissionFormat`] against
//! the frames `mtanet predict` writes for a root's split (or the test set, or the rows of the
//! organisers' sample file), and reports every problem by file and line.
//!
//! Checked: every task file exists and is not empty; its header is the format's, with the
//! names of the root's annotation headers (else the format's ABAW vocabulary); every row has
//! the format's column count; values are in range (valence and arousal numbers in `[-1, 1]`,
//! AUs 0 or 1, one expression index below the class count); every expected frame has exactly
//! one row (in the row formats, named exactly `video/00001.jpg`, the frame as five digits);
//! rows follow the sample file's order when one is given (else each video's frames ascend).
//! The report also counts, per task file, the frames without a face crop and how many of their
//! rows repeat the row of the nearest frame with a crop (the earlier one on ties), which is how
//! `mtanet predict` fills them.

mod report;
mod rows;

pub use report::*;
use rows::*;

use crate::predict::default_vocab;
use crate::predict::plan::{plan_videos, read_video_list, root_vocab};
use crate::predict::PredictTarget;
use crate::submission::abaw2023::{self, parse_image_location};
use crate::submission::{mtl, video_crops, SubmissionFormat};
use mtanet_affwild2::layout::{discover, CROPS_DIR};
use mtanet_affwild2::{Crops, Task, Vocab};
use std::collections::{BTreeMap, HashMap};
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};

/// Options of [`validate`].
#[derive(Debug, Clone)]
pub struct ValidateOptions {
    /// The format (default: that of the root's layout, [`SubmissionFormat::default_for`]).
    pub format: Option<SubmissionFormat>,
    /// The Aff-Wild2 root.
    pub root: PathBuf,
    /// The split (or test set) whose frames the submission must hold.
    pub target: PredictTarget,
    /// The organisers' sample file: the rows expected, in order (its first column, after an
    /// optional header).
    pub sample: Option<PathBuf>,
    /// A `video[,frames]` list, as `mtanet predict --videos` takes.
    pub videos: Option<PathBuf>,
    /// Problems shown per kind.
    pub max_shown: usize,
}
/// One expected video.
struct Video {
    name: String,
    /// Frames 1..=frames.
    frames: usize,
    /// Per frame (0-based), its position in the sample file, if one is given (`u32::MAX`:
    /// not in it).
    sample: Option<Vec<u32>>,
    crops: Crops,
}
impl Video {
    fn expected(&self, i: usize) -> bool {
        self.sample.as_ref().is_none_or(|s| s[i] != u32::MAX)
    }
}
/// A row seen: its 1-based line and a hash of its values.
type Seen = Option<(usize, u64)>;
/// What a row's values are checked as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Track {
    Task(Task),
    Mtl,
}
/// Checks the submission under `pred` (see the module doc).
pub fn validate(pred: &Path, opts: &ValidateOptions) -> anyhow::Result<ValidationReport> {
    let found = discover(&opts.root).ok();
    let format = opts
        .format
        .unwrap_or_else(|| SubmissionFormat::default_for(found.as_ref().map(|d| d.layout)));
    let mut vocab = match format {
        SubmissionFormat::Abaw2020 => Vocab::abaw2020(),
        _ => default_vocab(12, 8),
    };
    if let Some(found) = &found {
        let v = root_vocab(found)?;
        if !v.au_names.is_empty() {
            vocab.au_names = v.au_names;
        }
        if !v.expr_names.is_empty() {
            vocab.expr_names = v.expr_names;
        }
    }
    let videos = expected_videos(opts)?;
    let mut report = ValidationReport {
        format,
        files: 0,
        rows: 0,
        counts: BTreeMap::new(),
        shown: Vec::new(),
        fill: Vec::new(),
        max_shown: opts.max_shown.max(1),
    };
    match format {
        SubmissionFormat::Abaw2020 => {
            for task in [Task::Va, Task::Au, Task::Expr] {
                check_video_files(pred, task, &vocab, &videos, &mut report);
            }
        }
        SubmissionFormat::Abaw2023 => {
            for (task, name) in abaw2023::TRACK_FILES {
                let header = abaw2023::header_line(task, &vocab);
                let path = pred.join(name);
                check_row_file(
                    &path,
                    header.trim_end(),
                    Track::Task(task),
                    &vocab,
                    &videos,
                    &mut report,
                );
            }
        }
        SubmissionFormat::Mtl => {
            let path = pred.join(mtl::FILE_NAME);
            check_row_file(&path, mtl::HEADER, Track::Mtl, &vocab, &videos, &mut report);
        }
    }
    Ok(report)
}
/// The videos the submission must hold: those `mtanet predict` writes for the target (each
/// with its frame count), or those of the sample file.
fn expected_videos(opts: &ValidateOptions) -> anyhow::Result<Vec<Video>> {
    let crops_dir = opts.root.join(CROPS_DIR);
    let crops = |name: &str| video_crops(&crops_dir.join(name));
    if let Some(sample) = &opts.sample {
        let text = std::fs::read_to_string(sample)
            .map_err(|e| anyhow::anyhow!("reading {}: {e}", sample.display()))?;
        let mut order: Vec<(String, u32)> = Vec::new();
        for (i, raw) in text.lines().enumerate() {
            let first = raw.split(',').next().unwrap_or("").trim();
            match parse_image_location(first) {
                Some((v, f)) if f > 0 => order.push((v.to_string(), f)),
                _ if i == 0 || first.is_empty() => {}
                _ => anyhow::bail!(
                    "{}:{}: {first:?} is not an image location in the form video/00001.jpg",
                    sample.display(),
                    i + 1
                ),
            }
        }
        let mut index: HashMap<String, usize> = HashMap::new();
        let mut videos: Vec<Video> = Vec::new();
        for (v, f) in &order {
            let k = *index.entry(v.clone()).or_insert_with(|| {
                videos.push(Video {
                    name: v.clone(),
                    frames: 0,
                    sample: Some(Vec::new()),
                    crops: Crops::default(),
                });
                videos.len() - 1
            });
            videos[k].frames = videos[k].frames.max(*f as usize);
        }
        for v in &mut videos {
            v.sample = Some(vec![u32::MAX; v.frames]);
            v.crops = crops(&v.name)?;
        }
        for (pos, (v, f)) in order.iter().enumerate() {
            if let Some(s) = videos[index[v]].sample.as_mut() {
                s[*f as usize - 1] = pos as u32;
            }
        }
        return Ok(videos);
    }
    let list = opts.videos.as_deref().map(read_video_list).transpose()?;
    let (planned, _) = plan_videos(&opts.root, &opts.target, list.as_deref())?;
    planned
        .into_iter()
        .map(|p| {
            let c = match p.crops {
                Some(c) => c,
                None => crops(&p.name)?,
            };
            Ok(Video {
                name: p.name,
                frames: p.frames,
                sample: None,
                crops: c,
            })
        })
        .collect()
}
fn hash_of(s: &str) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    s.hash(&mut h);
    h.finish()
}
