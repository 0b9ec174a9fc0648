//! `mtanet predict`: a trained checkpoint over every frame of a split's videos, written as
//! submission files ([`crate::submission`]: ABAW 2020 per-video files, ABAW 2023 track files or
//! the multi-task file, [`SubmissionFormat`]), or over a plain folder of face crops, written as
//! one CSV.
//!
//! Frames without a face crop (or whose crop cannot be decoded) take the outputs of the nearest
//! predicted frame of the same video (the earlier one on ties), as peers fill them from
//! neighbouring frames. Frames per video: for a labelled split the longest annotation file of
//! the video in that split; for the test set the highest jpg number in
//! `cropped_aligned/<video>/`; a `--videos` list may give both the videos and their counts.
//!
//! Images go through the evaluation loader's pixel pipeline (decode, identity crop, resize,
//! the backbone's normalisation) and the model runs in eval mode, so predictions on labelled
//! frames are the outputs that training's evaluation scored.
//!
//! - [`error`]: what can go wrong, naming the input at fault;
//! - [`plan`]: the videos, their frame counts and the header names;
//! - [`frames`]: the model over a list of crops;
//! - [`decide`](mod@decide): filling, smoothing and thresholds;
//! - `folder`: a plain folder of crops to `predictions.csv`.

pub mod decide;
pub mod error;
mod folder;
pub mod frames;
pub mod plan;

use std::path::{Path, PathBuf};

use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};

use mtanet_affwild2::layout::CROPS_DIR;
use mtanet_affwild2::Split;

use crate::build::restore::{load_model, LoadedModel};
use crate::record::atomic_io::{remove_stale_temps, write_atomic_with};
use crate::submission::{abaw2023, mtl, SubmissionFormat};
use crate::submission::{header_line, push_frame_line, video_crops, TASK_DIRS};

use plan::{Columns, PlannedVideo};

pub use crate::build::model::default_vocab;
pub use decide::{
    decide, decide_frame, decide_frame_tuned, fill_nearest, smooth_output, tuned_thresholds,
    Filled, FrameDecision, FrameOutput, Kernel, Smoothing, TaskSmoothing,
};
pub use error::PredictError;
pub use frames::predict_images;
pub use plan::read_video_list;

/// What to predict.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PredictTarget {
    /// Every video annotated (for any task) in a labelled split of `--root`.
    Split(Split),
    /// The unannotated videos of `--root` (or those of `--videos`).
    Test,
    /// A plain folder of aligned face crops: one CSV row per image.
    Frames(PathBuf),
}

/// Options of [`run`].
#[derive(Debug, Clone)]
pub struct PredictOptions {
    /// A run directory (`config.yaml` + the checkpoint
    /// [`crate::build::restore::resolve_checkpoint`] picks) or a checkpoint file.
    pub checkpoint: PathBuf,
    /// The run config, when the checkpoint file has no `../config.yaml`.
    pub config: Option<PathBuf>,
    /// The Aff-Wild2 root (required except for [`PredictTarget::Frames`]).
    pub root: Option<PathBuf>,
    /// What to predict.
    pub target: PredictTarget,
    /// Output folder.
    pub out: PathBuf,
    /// Optional list of `video[,frames]` lines restricting (and sizing) the videos.
    pub videos: Option<PathBuf>,
    /// Temporal smoothing window in frames (0 or 1: none).
    pub smooth: usize,
    /// Use the per-AU thresholds tuned on validation (the run's `report.json`).
    pub tuned_thresholds: bool,
    /// Batch size (default: the config's `eval.batch_size`).
    pub batch_size: Option<usize>,
    /// Device override (`cpu`, `cuda:N`, `auto`).
    pub device: Option<String>,
    /// Hide the progress bar.
    pub quiet: bool,
}

/// What [`run`] did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PredictSummary {
    /// Videos written (0 for a frames folder).
    pub videos: usize,
    /// Lines written per task (frames of all videos, or images of a frames folder).
    pub frames: usize,
    /// Frames the model saw.
    pub predicted: usize,
    /// Frames filled from the nearest predicted frame.
    pub filled: usize,
    /// Crops that could not be decoded (filled, like frames without a crop).
    pub bad_frames: Vec<PathBuf>,
    /// Videos without any usable crop: written with neutral outputs (VA 0, no AU, class 0).
    pub videos_without_crops: Vec<String>,
    /// The AU thresholds used.
    pub thresholds: Vec<f32>,
    /// How outputs became the values written: the tuning stored by `mtanet tune` (and the split
    /// it was chosen on), the thresholds tuned in `report.json`, or 0.5 thresholds; and the
    /// smoothing window, if any.
    pub decisions: String,
    /// Set when the values were decided with a tuning chosen on the split being predicted:
    /// figures scored on it are optimistic.
    pub tuned_on_this_split: bool,
    /// Files written.
    pub files: Vec<PathBuf>,
}

/// Predicts and writes the files (see the module doc) in the default format of the root's
/// layout ([`SubmissionFormat::default_for`]); returns what was done.
pub fn run(opts: &PredictOptions) -> anyhow::Result<PredictSummary> {
    run_as(opts, None)
}

/// [`run`], writing the videos in `format` (the default of the root's layout when `None`);
/// the tuning stored in the checkpoint by `mtanet tune` is applied when present.
pub fn run_as(
    opts: &PredictOptions,
    format: Option<SubmissionFormat>,
) -> anyhow::Result<PredictSummary> {
    run_with(opts, format, false)
}

/// [`run_as`]; with `raw`, a tuning stored in the checkpoint ([`crate::tuning`]) is ignored and
/// the output is that of `--smooth` / `--tuned-thresholds` alone. Without `raw`, a stored
/// tuning gives the AU thresholds and the per-task smoothing (its windows in seconds turned
/// into frames with each video's frame rate, [`crate::tuning::fps_of`]), and combining it with
/// `--smooth` or `--tuned-thresholds` is an error.
pub fn run_with(
    opts: &PredictOptions,
    format: Option<SubmissionFormat>,
    raw: bool,
) -> anyhow::Result<PredictSummary> {
    let m = load_model(
        &opts.checkpoint,
        opts.config.as_deref(),
        opts.device.as_deref(),
    )?;
    let tuning = if raw {
        None
    } else {
        crate::tuning::stored_tuning(&m.checkpoint)?
    };
    if tuning.is_some() && (opts.smooth > 1 || opts.tuned_thresholds) {
        anyhow::bail!(
            "{} carries a tuning from `mtanet tune`; pass --raw to use --smooth or --tuned-thresholds instead",
            m.checkpoint.display()
        );
    }
    let thresholds = match &tuning {
        Some(t) => t.thresholds_for(&m.vocab.au_names)?,
        None if opts.tuned_thresholds => tuned_thresholds(
            &m.run_dir,
            m.config.selection.criterion,
            &m.checkpoint,
            m.n_au,
        )?,
        None => vec![mtanet_metrics::DEFAULT_THRESHOLD; m.n_au],
    };
    let batch = opts.batch_size.unwrap_or(m.config.eval.batch_size).max(1);
    let list = opts.videos.as_deref().map(read_video_list).transpose()?;
    std::fs::create_dir_all(&opts.out)
        .with_context(|| format!("creating {}", opts.out.display()))?;
    for stale in remove_stale_temps(&opts.out)? {
        tracing::info!("removed {}, left by an interrupted write", stale.display());
    }
    let smoothing = if opts.smooth > 1 {
        format!("smoothing over {} frames", opts.smooth)
    } else {
        "no smoothing".to_string()
    };
    let decisions = match &tuning {
        Some(t) => format!(
            "the tuning stored in {} by `mtanet tune` (chosen on {})",
            m.checkpoint.display(),
            t.split
        ),
        None if opts.tuned_thresholds => format!(
            "AU thresholds tuned in {}, {smoothing}",
            m.run_dir.join("report.json").display()
        ),
        None => format!("0.5 AU thresholds, {smoothing}"),
    };
    // A stored tuning names its split; report.json's thresholds were tuned on validation.
    let tuned_on_this_split = match (&tuning, &opts.target) {
        (Some(t), PredictTarget::Split(split)) => {
            t.split.parse::<Split>().is_ok_and(|tuned| tuned == *split)
        }
        (None, PredictTarget::Split(Split::Validation)) => opts.tuned_thresholds,
        _ => false,
    };
    let mut summary = PredictSummary {
        thresholds,
        decisions,
        tuned_on_this_split,
        ..Default::default()
    };
    if let PredictTarget::Frames(dir) = &opts.target {
        return folder::run_frames(&m, opts, dir, batch, summary);
    }
    let root = opts
        .root
        .as_deref()
        .context("--root is required to predict a split or the test set")?;
    let p = predict_videos(
        &m,
        root,
        &opts.target,
        list.as_deref(),
        batch,
        opts.quiet,
        &mut summary,
    )?;
    let format = format.unwrap_or_else(|| {
        SubmissionFormat::default_for(
            mtanet_affwild2::layout::discover(root)
                .ok()
                .map(|d| d.layout),
        )
    });
    let smoothing: Option<Vec<TaskSmoothing>> = tuning
        .as_ref()
        .map(|t| p.videos.iter().map(|v| t.smoothing_for(&v.name)).collect());
    let w = Writing {
        opts,
        videos: &p.videos,
        filled: &p.filled,
        columns: &p.columns,
        thresholds: &summary.thresholds,
        smoothing: smoothing.as_deref(),
    };
    let files = match format {
        SubmissionFormat::Abaw2020 => write_videos(&w)?,
        SubmissionFormat::Abaw2023 => write_tracks(&w)?,
        SubmissionFormat::Mtl => write_mtl(&w)?,
    };
    summary.files.extend(files);
    Ok(summary)
}

/// The model's outputs over every frame of a split's (or the test set's) videos.
pub struct PredictedVideos {
    /// The videos, in writing order.
    pub videos: Vec<PlannedVideo>,
    /// Every frame's outputs of each video, in the model's column order.
    pub filled: Vec<Filled>,
    /// The columns written: the model's vocabulary in the root's header order.
    pub columns: Columns,
}

/// Runs the model over every crop of the videos of `target` under `root` (restricted by
/// `list`) and fills the frames without one; counts what was done in `summary`.
pub fn predict_videos(
    m: &LoadedModel,
    root: &Path,
    target: &PredictTarget,
    list: Option<&[(String, Option<usize>)]>,
    batch: usize,
    quiet: bool,
    summary: &mut PredictSummary,
) -> anyhow::Result<PredictedVideos> {
    let (videos, root_vocab) = plan::plan_videos(root, target, list)?;
    let columns = plan::vocab_for(root_vocab, root, &m.vocab, &m.checkpoint)?;
    let (jobs, jpgs) = crop_jobs(&root.join(CROPS_DIR), &videos)?;
    let pb = progress(jpgs.len(), quiet, "predict");
    let outputs = predict_images(
        m,
        &jpgs,
        batch,
        m.config.data.resize,
        &pb,
        &mut summary.bad_frames,
    )?;
    pb.finish_and_clear();
    // Per video, only the frames the model saw: memory follows the crops, not the frame
    // counts.
    let mut seen: Vec<Vec<(usize, FrameOutput)>> = vec![Vec::new(); videos.len()];
    for (&(vi, f), o) in jobs.iter().zip(outputs) {
        if let Some(o) = o {
            summary.predicted += 1;
            seen[vi].push((f - 1, o));
        }
    }
    let filled = fill_videos(m, &videos, seen, summary);
    Ok(PredictedVideos {
        videos,
        filled,
        columns,
    })
}

/// The (video index, frame) pairs with a crop, and the crops' paths.
type CropJobs = (Vec<(usize, usize)>, Vec<PathBuf>);

/// Every (video index, frame) of `videos` with a crop under `crops`, sorted by (video,
/// frame), with the crops' paths; frames past a video's count are left out. Each crop folder
/// is listed once: here, unless planning did.
fn crop_jobs(crops: &Path, videos: &[PlannedVideo]) -> anyhow::Result<CropJobs> {
    let mut jobs: Vec<(usize, usize)> = Vec::new();
    let mut jpgs: Vec<PathBuf> = Vec::new();
    for (vi, v) in videos.iter().enumerate() {
        let dir = crops.join(&v.name);
        let listed;
        let frames = match &v.crops {
            Some(c) => c.frames(),
            None => {
                listed = video_crops(&dir)?;
                listed.frames()
            }
        };
        for f in frames
            .iter()
            .map(|&f| f as usize)
            .filter(|&f| f <= v.frames)
        {
            jobs.push((vi, f));
            jpgs.push(dir.join(format!("{f:05}.jpg")));
        }
    }
    Ok((jobs, jpgs))
}

/// Every frame's outputs of each video from those of the frames the model saw (neutral
/// outputs for a video without any usable crop); counts videos, frames and filled frames in
/// `summary`.
fn fill_videos(
    m: &LoadedModel,
    videos: &[PlannedVideo],
    seen: Vec<Vec<(usize, FrameOutput)>>,
    summary: &mut PredictSummary,
) -> Vec<Filled> {
    let mut out = Vec::with_capacity(videos.len());
    for (video, seen) in videos.iter().zip(seen) {
        let n = video.frames;
        summary.filled += n - seen.len();
        let filled = Filled::new(n, seen).unwrap_or_else(|| {
            summary.videos_without_crops.push(video.name.clone());
            Filled::new(n, vec![(0, FrameOutput::neutral(m.n_au, m.n_expr))]).expect("one output")
        });
        out.push(filled);
        summary.videos += 1;
        summary.frames += n;
    }
    if !summary.videos_without_crops.is_empty() {
        tracing::warn!(
            "{} video(s) without any usable crop were written with neutral outputs: {}",
            summary.videos_without_crops.len(),
            summary.videos_without_crops.join(", ")
        );
    }
    out
}

/// What every writer needs: the videos, their filled outputs and the written columns.
struct Writing<'a> {
    opts: &'a PredictOptions,
    videos: &'a [PlannedVideo],
    filled: &'a [Filled],
    columns: &'a Columns,
    thresholds: &'a [f32],
    smoothing: Option<&'a [TaskSmoothing]>,
}

impl Writing<'_> {
    /// The written decision of frame `i` (0-based) of video `v`.
    fn decision(&self, v: usize, i: usize) -> FrameDecision {
        let d = match self.smoothing {
            Some(s) => self.filled[v].decide_tuned(i, &s[v], self.thresholds),
            None => self.filled[v].decide(i, self.opts.smooth, self.thresholds),
        };
        self.columns.apply(d)
    }

    /// Writes `path` atomically: `header`, then `push(line, video, frame, decision)` for every
    /// frame (1-based) of every video, a row at a time.
    fn write_rows(
        &self,
        path: &Path,
        header: &str,
        push: impl Fn(&mut String, &str, usize, &FrameDecision),
    ) -> anyhow::Result<()> {
        write_atomic_with(path, |w| {
            w.write_all(header.as_bytes())?;
            let mut line = String::new();
            for (v, video) in self.videos.iter().enumerate() {
                for i in 0..video.frames {
                    line.clear();
                    push(&mut line, &video.name, i + 1, &self.decision(v, i));
                    w.write_all(line.as_bytes())?;
                }
            }
            Ok(())
        })
    }
}

/// ABAW 2020: the three files of each video, a line at a time (a file of any length is never
/// held in memory).
fn write_videos(w: &Writing<'_>) -> anyhow::Result<Vec<PathBuf>> {
    let out = &w.opts.out;
    for (t, d) in TASK_DIRS {
        let dir = out.join(d);
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("creating {} for {t}", dir.display()))?;
        for stale in remove_stale_temps(&dir)? {
            tracing::info!("removed {}, left by an interrupted write", stale.display());
        }
    }
    let mut files = Vec::new();
    for (v, video) in w.videos.iter().enumerate() {
        for (t, d) in TASK_DIRS {
            let path = out.join(d).join(format!("{}.txt", video.name));
            write_atomic_with(&path, |f| {
                f.write_all(header_line(t, &w.columns.vocab).as_bytes())?;
                let mut line = String::new();
                for i in 0..video.frames {
                    line.clear();
                    push_frame_line(&mut line, t, &w.decision(v, i).line());
                    f.write_all(line.as_bytes())?;
                }
                Ok(())
            })?;
            files.push(path);
        }
    }
    Ok(files)
}

/// ABAW 2023: one file per single-task track, every video's frames in video order.
fn write_tracks(w: &Writing<'_>) -> anyhow::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for (t, name) in abaw2023::TRACK_FILES {
        let path = w.opts.out.join(name);
        let header = abaw2023::header_line(t, &w.columns.vocab);
        w.write_rows(&path, &header, |line, video, frame, d| {
            abaw2023::push_row(line, t, video, frame, &d.line())
        })?;
        files.push(path);
    }
    Ok(files)
}

/// The multi-task track: one file, every video's frames in video order.
fn write_mtl(w: &Writing<'_>) -> anyhow::Result<Vec<PathBuf>> {
    let path = w.opts.out.join(mtl::FILE_NAME);
    let header = format!("{}\n", mtl::HEADER);
    w.write_rows(&path, &header, |line, video, frame, d| {
        mtl::push_row(line, video, frame, &d.line())
    })?;
    Ok(vec![path])
}

/// A progress bar over `total` frames (hidden when `quiet`), prefixed with `what`.
fn progress(total: usize, quiet: bool, what: &str) -> ProgressBar {
    let pb = if quiet {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(total as u64)
    };
    pb.set_style(
        ProgressStyle::with_template(
            "{prefix} [{bar:30}] {pos}/{len} frames ({per_sec}, {elapsed} < {eta})",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    pb.set_prefix(what.to_string());
    pb
}
