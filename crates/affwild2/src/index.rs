//! The frame index: the three tasks joined by (video, frame) within each split, restricted to
//! frames whose jpg exists, with the counts of what was skipped.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::annotation::{parse_annotation, AnnotationFile};
use crate::crops::{list_crops, Crops};
use crate::error::DataError;
use crate::header_vocab::HeaderVocab;
use crate::layout::{discover, AnnotationEntry, Layout};
use crate::stats::{OverlapStats, SplitStats, Stats, TaskAccumulator};
use crate::task::{Split, Task, Vocab};

/// What to do with videos that are in one task's training split and another task's
/// validation split (legal in Aff-Wild2, whose splits are per task).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CrossTaskOverlap {
    /// Keep them in both splits (the per-task protocol of the 2020 challenge).
    #[default]
    Allow,
    /// Drop them from the training split (all tasks), so no validation image is trained on.
    Exclude,
}

/// Options of [`DatasetIndex::load`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IndexOptions {
    /// Policy for videos split differently by different tasks.
    pub cross_task_overlap: CrossTaskOverlap,
    /// Make a `cropped_aligned` video folder without any annotation file an error (otherwise
    /// it is counted in [`Stats::unannotated_videos`]).
    pub strict: bool,
}

/// One frame with a jpg and at least one label.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// Video name (a `_left`/`_right`/`_main` suffix is part of it: separate subjects).
    pub video: String,
    /// 1-based frame number (`00017.jpg` is 17).
    pub frame: u32,
    /// The crop.
    pub jpg: PathBuf,
    /// `[valence, arousal]` if labelled.
    pub va: Option<[f32; 2]>,
    /// One 0/1 per AU of the vocabulary, if labelled.
    pub au: Option<Vec<u8>>,
    /// Expression class index, if labelled.
    pub expr: Option<u8>,
}

impl Sample {
    /// Whether the sample has a label for `task`.
    pub fn has(&self, task: Task) -> bool {
        match task {
            Task::Va => self.va.is_some(),
            Task::Au => self.au.is_some(),
            Task::Expr => self.expr.is_some(),
        }
    }
}

/// An indexed Aff-Wild2 root.
#[derive(Debug, Clone)]
pub struct DatasetIndex {
    /// The root given to [`DatasetIndex::load`].
    pub root: PathBuf,
    /// The detected release layout.
    pub layout: Layout,
    /// The folder holding the task folders, relative to the root.
    pub annotations: PathBuf,
    /// AU and expression names from the headers.
    pub vocab: Vocab,
    samples: [Vec<Sample>; 2],
    stats: Stats,
}

/// A video's annotation files within one split: index into the parsed files, per task.
type VideoFiles = [Option<usize>; 3];

/// What one (split, video) contributes.
struct VideoPart {
    samples: Vec<Sample>,
    acc: [TaskAccumulator; 3],
}

impl DatasetIndex {
    /// Reads every annotation file (in parallel), checks headers agree per task, lists each
    /// crop folder once, and joins the tasks by (video, frame) within each split.
    pub fn load(root: &Path, opts: &IndexOptions) -> Result<DatasetIndex, DataError> {
        let found = discover(root)?;
        check_duplicates(&found.entries)?;
        let parsed: Vec<Result<AnnotationFile, DataError>> = found
            .entries
            .par_iter()
            .map(|e| {
                let bytes = std::fs::read(&e.path).map_err(|err| DataError::io(&e.path, err))?;
                parse_annotation(e.task, &e.path, &bytes)
            })
            .collect();
        let files = parsed.into_iter().collect::<Result<Vec<_>, _>>()?;
        let vocab = vocab_of(&found.entries, &files)?;

        // (split, video) -> files per task.
        let mut by_split: [BTreeMap<&str, VideoFiles>; 2] = [BTreeMap::new(), BTreeMap::new()];
        for (i, e) in found.entries.iter().enumerate() {
            by_split[e.split.index()]
                .entry(e.video.as_str())
                .or_default()[e.task.index()] = Some(i);
        }

        // Cross-task overlap: in some task's train split and another task's validation split.
        let overlap: BTreeSet<&str> = by_split[0]
            .keys()
            .filter(|v| by_split[1].contains_key(*v))
            .copied()
            .collect();

        // List each annotated video's crop folder once; count unannotated folders.
        let videos: BTreeSet<&str> = by_split.iter().flat_map(|m| m.keys().copied()).collect();
        let listed: Vec<(&str, Result<Crops, DataError>)> = videos
            .par_iter()
            .map(|v| (*v, list_crops(&found.crops.join(v))))
            .collect();
        let mut crops: HashMap<&str, Crops> = HashMap::with_capacity(listed.len());
        for (v, c) in listed {
            crops.insert(v, c?);
        }
        let videos_without_crops: Vec<String> = videos
            .iter()
            .filter(|v| crops[*v].is_empty())
            .map(|v| v.to_string())
            .collect();
        let mut unannotated_videos = 0u64;
        for entry in std::fs::read_dir(&found.crops).map_err(|e| DataError::io(&found.crops, e))? {
            let entry = entry.map_err(|e| DataError::io(&found.crops, e))?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            if name.starts_with('.') || videos.contains(name) || !entry.path().is_dir() {
                continue;
            }
            if opts.strict {
                return Err(DataError::UnannotatedVideo { path: entry.path() });
            }
            unannotated_videos += 1;
        }

        // Jpgs past every annotation file of their video.
        let mut longest: HashMap<&str, usize> = HashMap::new();
        for (e, f) in found.entries.iter().zip(&files) {
            let l = longest.entry(e.video.as_str()).or_default();
            *l = (*l).max(f.len());
        }
        let jpgs: u64 = crops.values().map(|c| c.len() as u64).sum();
        let unannotated_jpgs: u64 = crops
            .iter()
            .map(|(v, c)| {
                let n = longest.get(v).copied().unwrap_or(0);
                let annotated = c.frames().partition_point(|&f| f as usize <= n);
                (c.len() - annotated) as u64
            })
            .sum();

        let crops_root = &found.crops;
        let mut samples: [Vec<Sample>; 2] = [Vec::new(), Vec::new()];
        let mut split_stats: [SplitStats; 2] = Default::default();
        let mut excluded_train_samples = 0u64;
        for split in Split::ALL {
            let parts: Vec<(&str, VideoPart)> = by_split[split.index()]
                .par_iter()
                .map(|(video, vf)| {
                    let part = join_video(crops_root, video, vf, &files, &crops[video]);
                    (*video, part)
                })
                .collect();
            let mut acc: [TaskAccumulator; 3] = Default::default();
            let mut out = Vec::with_capacity(parts.iter().map(|(_, p)| p.samples.len()).sum());
            let mut n_videos = 0;
            for (video, part) in parts {
                if split == Split::Train
                    && opts.cross_task_overlap == CrossTaskOverlap::Exclude
                    && overlap.contains(video)
                {
                    excluded_train_samples += part.samples.len() as u64;
                    continue;
                }
                n_videos += 1;
                for (a, b) in acc.iter_mut().zip(&part.acc) {
                    a.merge(b);
                }
                out.extend(part.samples);
            }
            let s = &mut split_stats[split.index()];
            for t in Task::ALL {
                *s.task_mut(t) = acc[t.index()].finish(t, &vocab);
            }
            s.videos = n_videos;
            s.samples = out.len() as u64;
            samples[split.index()] = out;
        }
        let [train, validation] = split_stats;
        let stats = Stats {
            layout: found.layout,
            vocab: vocab.clone(),
            train,
            validation,
            cross_task_overlap: OverlapStats {
                policy: match opts.cross_task_overlap {
                    CrossTaskOverlap::Allow => "allow".into(),
                    CrossTaskOverlap::Exclude => "exclude".into(),
                },
                videos: overlap.len() as u64,
                names: overlap.iter().map(|s| s.to_string()).collect(),
                excluded_train_samples,
            },
            jpgs,
            unannotated_jpgs,
            unannotated_videos,
            videos_without_crops,
        };
        Ok(DatasetIndex {
            root: root.to_path_buf(),
            layout: found.layout,
            annotations: found.annotations.clone(),
            vocab,
            samples,
            stats,
        })
    }

    /// The samples of a split, sorted by (video, frame).
    pub fn samples(&self, split: Split) -> &[Sample] {
        &self.samples[split.index()]
    }

    /// Checks that every task has labelled training frames (a multi-task network needs its
    /// vocabulary and its labels) and labelled validation frames (a task never evaluated would
    /// count as 0 in model selection and leave its table column empty); the error names the
    /// root, the task, the split and the folder its annotation files belong in.
    pub fn require_every_task(&self) -> Result<(), DataError> {
        for split in [Split::Train, Split::Validation] {
            for task in Task::ALL {
                if !self.samples(split).iter().any(|s| s.has(task)) {
                    return Err(DataError::MissingTask {
                        root: self.root.clone(),
                        task,
                        split,
                        folder: crate::layout::task_folder_under(
                            &self.annotations,
                            self.layout,
                            task,
                            split,
                        ),
                    });
                }
            }
        }
        Ok(())
    }

    /// Counts and label summaries (computed during [`DatasetIndex::load`]).
    pub fn stats(&self) -> Stats {
        self.stats.clone()
    }
}

/// A video in two splits of one task is an error.
fn check_duplicates(entries: &[AnnotationEntry]) -> Result<(), DataError> {
    let mut seen: HashMap<(Task, &str), &AnnotationEntry> = HashMap::new();
    for e in entries {
        if let Some(first) = seen.insert((e.task, e.video.as_str()), e) {
            return Err(DataError::DuplicateVideo {
                video: e.video.clone(),
                first: first.path.clone(),
                second: e.path.clone(),
            });
        }
    }
    Ok(())
}

/// The vocabulary of each task from its first file; every other file must agree
/// ([`HeaderVocab`]).
fn vocab_of(entries: &[AnnotationEntry], files: &[AnnotationFile]) -> Result<Vocab, DataError> {
    let mut header = HeaderVocab::new();
    for (e, f) in entries.iter().zip(files) {
        header.admit(e.task, &e.path, &f.names)?;
    }
    Ok(header.vocab())
}

/// Joins one video's task files frame by frame.
fn join_video(
    crops_root: &Path,
    video: &str,
    vf: &VideoFiles,
    files: &[AnnotationFile],
    crops: &Crops,
) -> VideoPart {
    let task_files: [Option<&AnnotationFile>; 3] = vf.map(|i| i.map(|i| &files[i]));
    let len = task_files
        .iter()
        .flatten()
        .map(|f| f.len())
        .max()
        .unwrap_or(0);
    let mut acc: [TaskAccumulator; 3] = Default::default();
    let mut samples = Vec::with_capacity(len);
    let video_dir = crops_root.join(video);
    let dir_str = video_dir.to_string_lossy();
    for (t, f) in task_files.iter().enumerate() {
        if let Some(f) = f {
            acc[t].videos = 1;
            acc[t].frames = f.len() as u64;
        }
    }
    for i in 0..len {
        let frame = i + 1;
        let has_jpg = u32::try_from(frame).is_ok_and(|f| crops.contains(f));
        let va = task_files[0].and_then(|f| f.va(i));
        let au = task_files[1].and_then(|f| f.au(i));
        let expr = task_files[2].and_then(|f| f.expr(i));
        if !has_jpg {
            for (t, f) in task_files.iter().enumerate() {
                if f.is_some_and(|f| i < f.len()) {
                    acc[t].missing_jpg += 1;
                }
            }
            continue;
        }
        if va.is_none() && au.is_none() && expr.is_none() {
            continue;
        }
        if let Some(v) = va {
            acc[0].labelled += 1;
            acc[0].add_va(v);
        }
        if let Some(a) = au {
            acc[1].labelled += 1;
            acc[1].add_au(a);
        }
        if let Some(e) = expr {
            acc[2].labelled += 1;
            acc[2].add_expr(e);
        }
        let mut jpg = String::with_capacity(dir_str.len() + 10);
        jpg.push_str(&dir_str);
        jpg.push(std::path::MAIN_SEPARATOR);
        push_frame_name(&mut jpg, frame as u32);
        samples.push(Sample {
            video: video.to_string(),
            frame: frame as u32,
            jpg: PathBuf::from(jpg),
            va,
            au: au.map(|a| a.to_vec()),
            expr,
        });
    }
    VideoPart { samples, acc }
}

/// Appends `NNNNN.jpg` without a temporary allocation.
fn push_frame_name(s: &mut String, frame: u32) {
    use std::fmt::Write;
    let _ = write!(s, "{frame:05}.jpg");
}
