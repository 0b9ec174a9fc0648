//! Dataset statistics per split and task: what `mtanet data stats` prints.

use std::fmt;

use serde::Serialize;

use crate::layout::Layout;
use crate::task::{Task, Vocab};

/// Counts and label summaries of one task within one split.
///
/// `frames` counts annotation lines; `labelled` counts lines with a label (no missing marker)
/// whose jpg exists (the usable ones); `missing_jpg` counts lines whose jpg does not exist.
/// The histogram, AU rates and VA moments are over the `labelled` frames.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct TaskStats {
    /// Videos with an annotation file for this task in this split.
    pub videos: u64,
    /// Annotation lines (frames).
    pub frames: u64,
    /// Lines with a label and a jpg.
    pub labelled: u64,
    /// Lines without a jpg on disk (skipped).
    pub missing_jpg: u64,
    /// EXPR only: `(class name, labelled frames)` in class order.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expr_histogram: Option<Vec<(String, u64)>>,
    /// AU only: `(AU name, fraction of labelled frames with the AU on)`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub au_positive_rate: Option<Vec<(String, f64)>>,
    /// VA only: mean `[valence, arousal]`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub va_mean: Option<[f64; 2]>,
    /// VA only: population std `[valence, arousal]`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub va_std: Option<[f64; 2]>,
}

/// The three tasks of one split, and the joined samples.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct SplitStats {
    /// Valence-arousal.
    pub va: TaskStats,
    /// Action units.
    pub au: TaskStats,
    /// Expressions.
    pub expr: TaskStats,
    /// Distinct videos with any annotation in this split.
    pub videos: u64,
    /// Joined samples (frames with a jpg and at least one label).
    pub samples: u64,
}

impl SplitStats {
    /// The stats of one task.
    pub fn task(&self, task: Task) -> &TaskStats {
        match task {
            Task::Va => &self.va,
            Task::Au => &self.au,
            Task::Expr => &self.expr,
        }
    }

    pub(crate) fn task_mut(&mut self, task: Task) -> &mut TaskStats {
        match task {
            Task::Va => &mut self.va,
            Task::Au => &mut self.au,
            Task::Expr => &mut self.expr,
        }
    }
}

/// Videos in one task's training split and another task's validation split.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct OverlapStats {
    /// `allow` or `exclude`.
    pub policy: String,
    /// How many videos overlap.
    pub videos: u64,
    /// Their names (sorted).
    pub names: Vec<String>,
    /// Training samples dropped by `exclude` (0 with `allow`).
    pub excluded_train_samples: u64,
}

/// Everything `mtanet data stats` reports. JSON: `{"train": {"va": {..}, "au": .., "expr": ..},
/// "validation": {..}, ...}`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Stats {
    /// The detected release.
    pub layout: Layout,
    /// AU and expression names from the headers.
    pub vocab: Vocab,
    /// Training split.
    pub train: SplitStats,
    /// Validation split.
    pub validation: SplitStats,
    /// Cross-task split overlap.
    pub cross_task_overlap: OverlapStats,
    /// Jpg files found in the folders of annotated videos.
    pub jpgs: u64,
    /// Jpgs of annotated videos with no annotation line in any task.
    pub unannotated_jpgs: u64,
    /// `cropped_aligned` video folders with no annotation file (e.g. test videos).
    pub unannotated_videos: u64,
    /// Annotated videos without a single crop (no folder in `cropped_aligned`, or an empty
    /// one), sorted: every labelled line of theirs is in `missing_jpg`, and none trains.
    pub videos_without_crops: Vec<String>,
}

/// Running sums for one task in one split (merged across videos).
#[derive(Debug, Clone, Default)]
pub(crate) struct TaskAccumulator {
    pub videos: u64,
    pub frames: u64,
    pub labelled: u64,
    pub missing_jpg: u64,
    pub hist: Vec<u64>,
    pub au_pos: Vec<u64>,
    pub va_sum: [f64; 2],
    pub va_sq: [f64; 2],
}

impl TaskAccumulator {
    pub fn merge(&mut self, o: &TaskAccumulator) {
        self.videos += o.videos;
        self.frames += o.frames;
        self.labelled += o.labelled;
        self.missing_jpg += o.missing_jpg;
        add_into(&mut self.hist, &o.hist);
        add_into(&mut self.au_pos, &o.au_pos);
        for i in 0..2 {
            self.va_sum[i] += o.va_sum[i];
            self.va_sq[i] += o.va_sq[i];
        }
    }

    pub fn add_expr(&mut self, class: u8) {
        let c = class as usize;
        if self.hist.len() <= c {
            self.hist.resize(c + 1, 0);
        }
        self.hist[c] += 1;
    }

    pub fn add_au(&mut self, row: &[u8]) {
        if self.au_pos.len() < row.len() {
            self.au_pos.resize(row.len(), 0);
        }
        for (p, &v) in self.au_pos.iter_mut().zip(row) {
            *p += v as u64;
        }
    }

    pub fn add_va(&mut self, va: [f32; 2]) {
        for (i, &v) in va.iter().enumerate() {
            let x = v as f64;
            self.va_sum[i] += x;
            self.va_sq[i] += x * x;
        }
    }

    pub fn finish(&self, task: Task, vocab: &Vocab) -> TaskStats {
        let n = self.labelled as f64;
        let mut s = TaskStats {
            videos: self.videos,
            frames: self.frames,
            labelled: self.labelled,
            missing_jpg: self.missing_jpg,
            ..TaskStats::default()
        };
        match task {
            Task::Expr => {
                s.expr_histogram = Some(
                    vocab
                        .expr_names
                        .iter()
                        .enumerate()
                        .map(|(i, name)| (name.clone(), self.hist.get(i).copied().unwrap_or(0)))
                        .collect(),
                )
            }
            Task::Au => {
                s.au_positive_rate = Some(
                    vocab
                        .au_names
                        .iter()
                        .enumerate()
                        .map(|(i, name)| {
                            let p = self.au_pos.get(i).copied().unwrap_or(0) as f64;
                            (name.clone(), if n > 0.0 { p / n } else { 0.0 })
                        })
                        .collect(),
                )
            }
            Task::Va if n > 0.0 => {
                let mean = [self.va_sum[0] / n, self.va_sum[1] / n];
                let var = |i: usize| (self.va_sq[i] / n - mean[i] * mean[i]).max(0.0);
                s.va_mean = Some(mean);
                s.va_std = Some([var(0).sqrt(), var(1).sqrt()]);
            }
            Task::Va => {}
        }
        s
    }
}

fn add_into(a: &mut Vec<u64>, b: &[u64]) {
    if a.len() < b.len() {
        a.resize(b.len(), 0);
    }
    for (x, y) in a.iter_mut().zip(b) {
        *x += y;
    }
}

impl fmt::Display for Stats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "layout {}: {} AUs, {} expressions",
            self.layout,
            self.vocab.au_names.len(),
            self.vocab.expr_names.len()
        )?;
        for (name, s) in [("train", &self.train), ("validation", &self.validation)] {
            writeln!(f, "{name}: {} videos, {} samples", s.videos, s.samples)?;
            writeln!(
                f,
                "  {:<5} {:>7} {:>10} {:>10} {:>11}",
                "task", "videos", "frames", "labelled", "missing_jpg"
            )?;
            for t in Task::ALL {
                let ts = s.task(t);
                writeln!(
                    f,
                    "  {:<5} {:>7} {:>10} {:>10} {:>11}",
                    t.key(),
                    ts.videos,
                    ts.frames,
                    ts.labelled,
                    ts.missing_jpg
                )?;
            }
            if let (Some(m), Some(sd)) = (s.va.va_mean, s.va.va_std) {
                writeln!(
                    f,
                    "  va mean/std: valence {:.3}/{:.3}, arousal {:.3}/{:.3}",
                    m[0], sd[0], m[1], sd[1]
                )?;
            }
            if let Some(rates) = &s.au.au_positive_rate {
                let parts: Vec<String> = rates
                    .iter()
                    .map(|(n, r)| format!("{n} {:.1}%", 100.0 * r))
                    .collect();
                writeln!(f, "  au positive: {}", parts.join(", "))?;
            }
            if let Some(h) = &s.expr.expr_histogram {
                let parts: Vec<String> = h.iter().map(|(n, c)| format!("{n} {c}")).collect();
                writeln!(f, "  expr: {}", parts.join(", "))?;
            }
        }
        let o = &self.cross_task_overlap;
        writeln!(
            f,
            "cross-task overlap ({}): {} videos in one task's train and another's validation split{}",
            o.policy,
            o.videos,
            if o.excluded_train_samples > 0 {
                format!(", {} training samples excluded", o.excluded_train_samples)
            } else {
                String::new()
            }
        )?;
        write!(
            f,
            "jpgs: {} in annotated videos, {} without an annotation line; {} video folders without annotations",
            self.jpgs, self.unannotated_jpgs, self.unannotated_videos
        )?;
        if !self.videos_without_crops.is_empty() {
            let n = self.videos_without_crops.len();
            let shown: Vec<&str> = self
                .videos_without_crops
                .iter()
                .take(5)
                .map(String::as_str)
                .collect();
            write!(
                f,
                "\nannotated videos without any crop: {n} ({}{})",
                shown.join(", "),
                if n > shown.len() { ", ..." } else { "" }
            )?;
        }
        Ok(())
    }
}
