//! `mtanet predict`: a trained checkpoint over every frame of a split's videos, written as
//! ABAW 2020 submission files ([`crate::submission`]), or over a plain folder of face crops,
//! written as one CSV.
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
//! - [`decide`]: filling, smoothing and thresholds;
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
use crate::submission::{header_line, push_frame_line, video_crops, TASK_DIRS};

use plan::{Columns, PlannedVideo};

pub use crate::build::model::default_vocab;
pub use decide::{
    decide, decide_frame, fill_nearest, tuned_thresholds, Filled, FrameDecision, FrameOutput,
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
    /// A run directory (`config.yaml` + `checkpoints/last.safetensors`) or a checkpoint file.
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
    /// Files written.
    pub files: Vec<PathBuf>,
}

/// Predicts and writes the files (see the module doc); returns what was done.
pub fn run(opts: &PredictOptions) -> anyhow::Result<PredictSummary> {
    let m = load_model(
        &opts.checkpoint,
        opts.config.as_deref(),
        opts.device.as_deref(),
    )?;
    let thresholds = if opts.tuned_thresholds {
        tuned_thresholds(&m.run_dir, m.n_au)?
    } else {
        vec![mtanet_metrics::DEFAULT_THRESHOLD; m.n_au]
    };
    let batch = opts.batch_size.unwrap_or(m.config.eval.batch_size).max(1);
    let list = opts.videos.as_deref().map(read_video_list).transpose()?;
    std::fs::create_dir_all(&opts.out)
        .with_context(|| format!("creating {}", opts.out.display()))?;
    for stale in remove_stale_temps(&opts.out)? {
        tracing::info!("removed {}, left by an interrupted write", stale.display());
    }
    let mut summary = PredictSummary {
        thresholds,
        ..Default::default()
    };
    if let PredictTarget::Frames(dir) = &opts.target {
        return folder::run_frames(&m, opts, dir, batch, summary);
    }
    let root = opts
        .root
        .as_deref()
        .context("--root is required to predict a split or the test set")?;
    let (videos, root_vocab) = plan::plan_videos(root, &opts.target, list.as_deref())?;
    let columns = plan::vocab_for(root_vocab, root, &m.vocab, &m.checkpoint)?;
    let (jobs, jpgs) = crop_jobs(&root.join(CROPS_DIR), &videos)?;
    let pb = progress(jpgs.len(), opts.quiet, "predict");
    let outputs = predict_images(
        &m,
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
    write_videos(&m, opts, &videos, seen, &columns, &mut summary)?;
    Ok(summary)
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

/// Fills, decides and writes the three files of each video from the outputs of the frames
/// the model saw, a line at a time (a file of any length is never held in memory).
fn write_videos(
    m: &LoadedModel,
    opts: &PredictOptions,
    videos: &[PlannedVideo],
    seen: Vec<Vec<(usize, FrameOutput)>>,
    columns: &Columns,
    summary: &mut PredictSummary,
) -> anyhow::Result<()> {
    for (t, d) in TASK_DIRS {
        let dir = opts.out.join(d);
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("creating {} for {t}", dir.display()))?;
        for stale in remove_stale_temps(&dir)? {
            tracing::info!("removed {}, left by an interrupted write", stale.display());
        }
    }
    for (video, seen) in videos.iter().zip(seen) {
        let (v, n) = (&video.name, video.frames);
        let known = seen.len();
        let filled = match Filled::new(n, seen) {
            Some(f) => f,
            None => {
                summary.videos_without_crops.push(v.clone());
                Filled::new(n, vec![(0, FrameOutput::neutral(m.n_au, m.n_expr))])
                    .expect("one output")
            }
        };
        summary.filled += n - known;
        for (t, d) in TASK_DIRS {
            let path = opts.out.join(d).join(format!("{v}.txt"));
            write_atomic_with(&path, |w| {
                w.write_all(header_line(t, &columns.vocab).as_bytes())?;
                let mut line = String::new();
                for i in 0..n {
                    let decision =
                        columns.apply(filled.decide(i, opts.smooth, &summary.thresholds));
                    line.clear();
                    push_frame_line(&mut line, t, &decision.line());
                    w.write_all(line.as_bytes())?;
                }
                Ok(())
            })?;
            summary.files.push(path);
        }
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
    Ok(())
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
