//! `mtanet predict`: a trained checkpoint over every frame of a split's videos, written as
//! ABAW 2020 submission files, or over a plain folder of face crops, written as one CSV.
//!
//! Submission format (kuhnkeF `write_labelfile.py`, wtomin `test.py`): folders `VA_Set/`,
//! `AU_Set/` and `EXPR_Set/` under the output folder, one `<video>.txt` per video and task,
//! the annotation files' header (`valence,arousal`; the AU names; the expression names), then
//! one line per video frame: `valence,arousal` (Rust's shortest round-trip `f32` text, so
//! parsing returns the identical `f32`), the 0/1 AU decisions, the expression index.
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

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use anyhow::Context;
use candle_core::{Device, Tensor};
use indicatif::{ProgressBar, ProgressStyle};
use rayon::prelude::*;

use mtanet_affwild2::augment::AugmentDraw;
use mtanet_affwild2::decode::decode_jpeg;
use mtanet_affwild2::layout::{discover, parse_frame_file_name, Discovered, CROPS_DIR};
use mtanet_affwild2::warp::render_chw;
use mtanet_affwild2::{parse_annotation, DataError, Split, Task, Vocab};
use mtanet_metrics::Report;

use crate::build::model::preprocess_for;
use crate::build::restore::{load_model, LoadedModel};
use crate::record::atomic_io::{csv_field, write_atomic};
use crate::step::eval_step::{argmax, eval_step};

/// The submission folder of each task (ABAW 2020 names).
pub const TASK_DIRS: [(Task, &str); 3] = [
    (Task::Va, "VA_Set"),
    (Task::Au, "AU_Set"),
    (Task::Expr, "EXPR_Set"),
];

/// An input-derived problem of `mtanet predict`, naming the file (and line) at fault.
#[derive(Debug, thiserror::Error)]
pub enum PredictError {
    /// Neither the checkpoint nor a run directory was found.
    #[error("{}: no checkpoint (expected a run directory with checkpoints/last.safetensors, or a .safetensors file)", path.display())]
    NoCheckpoint {
        /// The path given.
        path: PathBuf,
    },
    /// No config.yaml next to the checkpoint and no `--config`.
    #[error("{}: no run config.yaml for checkpoint {} (pass --config)", expected.display(), checkpoint.display())]
    NoConfig {
        /// Where it was looked for.
        expected: PathBuf,
        /// The checkpoint.
        checkpoint: PathBuf,
    },
    /// The checkpoint lacks a head tensor, so the task sizes are unknown.
    #[error("{}: no tensor `{name}`: not an MTANet checkpoint", path.display())]
    NotMtaNet {
        /// The checkpoint.
        path: PathBuf,
        /// The missing tensor.
        name: String,
    },
    /// The root's vocabulary does not fit the model's heads.
    #[error("{}: the annotations have {data} {what}, the checkpoint's head has {model}", root.display())]
    VocabSize {
        /// The data root.
        root: PathBuf,
        /// `AUs` or `expression classes`.
        what: &'static str,
        /// Count in the annotation headers.
        data: usize,
        /// Count in the checkpoint.
        model: usize,
    },
    /// `--tuned-thresholds` without tuned thresholds in the run's report.json.
    #[error("{}: no `au.tuned.thresholds` with {n_au} values (train with eval.tune_au_thresholds, or drop --tuned-thresholds)", path.display())]
    NoTunedThresholds {
        /// The report file.
        path: PathBuf,
        /// AUs of the model.
        n_au: usize,
    },
    /// A malformed line of a `--videos` list.
    #[error("{}:{line}: {message}", path.display())]
    VideoList {
        /// The list file.
        path: PathBuf,
        /// 1-based line.
        line: usize,
        /// What is wrong.
        message: String,
    },
    /// Nothing to predict.
    #[error("{}: no videos to predict for {what}", root.display())]
    NoVideos {
        /// The root (or frames folder).
        root: PathBuf,
        /// The split or folder described.
        what: String,
    },
    /// The model produced NaN or infinity.
    #[error("non-finite model output for {}", jpg.display())]
    NonFinite {
        /// The crop.
        jpg: PathBuf,
    },
    /// Reading the data failed.
    #[error(transparent)]
    Data(#[from] DataError),
}

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

/// The outputs of the model for one frame.
#[derive(Debug, Clone, PartialEq)]
pub struct FrameOutput {
    /// Valence, arousal.
    pub va: [f32; 2],
    /// AU probabilities (sigmoid).
    pub au_probs: Vec<f32>,
    /// Expression probabilities (softmax).
    pub expr_probs: Vec<f32>,
}

/// The per-frame values written to the files (after filling and smoothing).
#[derive(Debug, Clone, PartialEq)]
pub struct FrameDecision {
    /// Valence, arousal.
    pub va: [f32; 2],
    /// AU probabilities (smoothed when asked).
    pub au_probs: Vec<f32>,
    /// AU decisions: `prob >= threshold`.
    pub au: Vec<u8>,
    /// Expression probabilities (smoothed when asked).
    pub expr_probs: Vec<f32>,
    /// Expression class.
    pub expr: usize,
}

/// The per-AU thresholds tuned on validation, from `report.json` in `run_dir`.
pub fn tuned_thresholds(run_dir: &Path, n_au: usize) -> anyhow::Result<Vec<f32>> {
    let path = run_dir.join("report.json");
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let report: Report =
        serde_json::from_str(&text).with_context(|| format!("{}: not a report", path.display()))?;
    match report.au.and_then(|a| a.tuned).map(|t| t.thresholds) {
        Some(th) if th.len() == n_au => Ok(th),
        _ => Err(PredictError::NoTunedThresholds { path, n_au }.into()),
    }
}

/// Names for heads of `n_au` AUs and `n_expr` classes when no annotation header is at hand:
/// the ABAW 2020 (8 AUs, 7 classes), 2021 (12 AUs) and 2022 (8 classes) vocabularies, else
/// `AU_<i>` / `class_<i>`.
pub fn default_vocab(n_au: usize, n_expr: usize) -> Vocab {
    let v2020 = Vocab::abaw2020();
    let au_names = match n_au {
        8 => v2020.au_names,
        12 => [
            "AU1", "AU2", "AU4", "AU6", "AU7", "AU10", "AU12", "AU15", "AU23", "AU24", "AU25",
            "AU26",
        ]
        .map(String::from)
        .to_vec(),
        n => (0..n).map(|i| format!("AU_{i}")).collect(),
    };
    let expr_names = match n_expr {
        7 => v2020.expr_names,
        8 => v2020
            .expr_names
            .into_iter()
            .chain([String::from("Other")])
            .collect(),
        n => (0..n).map(|i| format!("class_{i}")).collect(),
    };
    Vocab {
        au_names,
        expr_names,
    }
}

/// For each frame, the value of the nearest frame that has one (the earlier on ties);
/// `None` if no frame has a value.
pub fn fill_nearest<T: Clone>(frames: &[Option<T>]) -> Option<Vec<T>> {
    let known: Vec<usize> = (0..frames.len()).filter(|&i| frames[i].is_some()).collect();
    if known.is_empty() {
        return None;
    }
    let mut out = Vec::with_capacity(frames.len());
    let mut k = 0; // known[k] is the first known frame >= i, or the last one
    for i in 0..frames.len() {
        while k + 1 < known.len() && known[k] < i {
            k += 1;
        }
        let next = known[k];
        let src = if next >= i {
            match k.checked_sub(1).map(|p| known[p]) {
                Some(prev) if i - prev <= next - i => prev,
                _ => next,
            }
        } else {
            next
        };
        out.push(frames[src].clone()?);
    }
    Some(out)
}

/// The frames `[i - (n-1)/2, i + n/2]` of a window of `n` centred on `i`, clipped to `0..len`.
fn window(i: usize, n: usize, len: usize) -> std::ops::Range<usize> {
    let lo = i.saturating_sub((n.max(1) - 1) / 2);
    let hi = (i + n.max(1) / 2 + 1).min(len);
    lo..hi
}

/// Decisions for a video's frame outputs: moving average of VA and AU probabilities and
/// majority vote of the expression argmax over a centred window of `smooth` frames (ties
/// go to the centre frame's class if it is among them, else to the lowest class index);
/// `smooth <= 1` keeps the frame outputs as they are.
pub fn decide(outputs: &[FrameOutput], smooth: usize, thresholds: &[f32]) -> Vec<FrameDecision> {
    let labels: Vec<usize> = outputs.iter().map(|o| argmax(&o.expr_probs)).collect();
    (0..outputs.len())
        .map(|i| {
            let (va, au_probs, expr_probs, expr) = if smooth <= 1 {
                let o = &outputs[i];
                (o.va, o.au_probs.clone(), o.expr_probs.clone(), labels[i])
            } else {
                let w = window(i, smooth, outputs.len());
                let n = w.len() as f64;
                let mean = |f: &dyn Fn(&FrameOutput) -> f32| -> f32 {
                    (outputs[w.clone()]
                        .iter()
                        .map(|o| f64::from(f(o)))
                        .sum::<f64>()
                        / n) as f32
                };
                let va = [mean(&|o| o.va[0]), mean(&|o| o.va[1])];
                let au: Vec<f32> = (0..outputs[i].au_probs.len())
                    .map(|k| mean(&|o| o.au_probs[k]))
                    .collect();
                let ex: Vec<f32> = (0..outputs[i].expr_probs.len())
                    .map(|k| mean(&|o| o.expr_probs[k]))
                    .collect();
                let mut votes = vec![0usize; outputs[i].expr_probs.len().max(1)];
                for &l in &labels[w] {
                    if let Some(v) = votes.get_mut(l) {
                        *v += 1;
                    }
                }
                let top = votes.iter().copied().max().unwrap_or(0);
                let label = if votes.get(labels[i]) == Some(&top) {
                    labels[i]
                } else {
                    votes.iter().position(|&v| v == top).unwrap_or(0)
                };
                (va, au, ex, label)
            };
            let au = au_probs
                .iter()
                .zip(thresholds)
                .map(|(p, t)| u8::from(*p >= *t))
                .collect();
            FrameDecision {
                va,
                au_probs,
                au,
                expr_probs,
                expr,
            }
        })
        .collect()
}

/// Decodes and normalises one batch of crops (in parallel), as the evaluation loader does.
fn decode_batch(
    chunk: &[PathBuf],
    size: usize,
    pre: &mtanet_affwild2::Preprocess,
    resize: bool,
) -> Vec<Result<Vec<f32>, DataError>> {
    chunk
        .par_iter()
        .map(|p| {
            let img = decode_jpeg(p)?;
            let (w, h) = img.dimensions();
            if !resize && (w as usize != size || h as usize != size) {
                return Err(DataError::ImageSize {
                    path: p.clone(),
                    width: w,
                    height: h,
                    expected: size,
                });
            }
            let mut buf = vec![0f32; 3 * size * size];
            render_chw(&img, &AugmentDraw::identity(w, h), pre, size, &mut buf);
            Ok(buf)
        })
        .collect()
}

/// The model's outputs for one decoded batch (`None` where decoding failed; such paths are
/// added to `bad`).
fn forward_batch(
    m: &LoadedModel,
    chunk: &[PathBuf],
    decoded: Vec<Result<Vec<f32>, DataError>>,
    bad: &mut Vec<PathBuf>,
) -> anyhow::Result<Vec<Option<FrameOutput>>> {
    let size = m.config.data.image_size;
    let mut images = Vec::with_capacity(chunk.len() * 3 * size * size);
    let mut ok = Vec::with_capacity(chunk.len());
    for (p, d) in chunk.iter().zip(decoded) {
        match d {
            Ok(buf) => {
                images.extend_from_slice(&buf);
                ok.push(true);
            }
            Err(e @ DataError::ImageSize { .. }) => return Err(e.into()),
            Err(e) => {
                tracing::warn!("{e}; the frame is filled from its nearest neighbour");
                bad.push(p.clone());
                ok.push(false);
            }
        }
    }
    let n = ok.iter().filter(|&&k| k).count();
    let mut host = Vec::with_capacity(n).into_iter();
    if n > 0 {
        let x = Tensor::from_vec(images, (n, 3, size, size), &Device::Cpu)?.to_device(&m.device)?;
        let h = eval_step(&m.model, &x)?;
        host =
            h.va.into_iter()
                .zip(h.au_probs)
                .zip(h.expr_probs)
                .map(|((va, au_probs), expr_probs)| FrameOutput {
                    va,
                    au_probs,
                    expr_probs,
                })
                .collect::<Vec<_>>()
                .into_iter();
    }
    let mut out = Vec::with_capacity(chunk.len());
    for (p, good) in chunk.iter().zip(ok) {
        let o = if good { host.next() } else { None };
        if let Some(o) = &o {
            let values = o.va.iter().chain(&o.au_probs).chain(&o.expr_probs);
            if !values.into_iter().all(|v| v.is_finite()) {
                return Err(PredictError::NonFinite { jpg: p.clone() }.into());
            }
        }
        out.push(o);
    }
    Ok(out)
}

/// Runs the model in eval mode over `jpgs` in batches of `batch_size`, decoding the next
/// batch while the model runs on the current one; `None` for a crop that cannot be read or
/// decoded (its path is added to `bad`). A crop of another size than the network input is
/// an error unless `resize`.
pub fn predict_images(
    m: &LoadedModel,
    jpgs: &[PathBuf],
    batch_size: usize,
    resize: bool,
    pb: &ProgressBar,
    bad: &mut Vec<PathBuf>,
) -> anyhow::Result<Vec<Option<FrameOutput>>> {
    let size = m.config.data.image_size;
    let pre = preprocess_for(&m.config.model.backbone);
    let chunks: Vec<&[PathBuf]> = jpgs.chunks(batch_size.max(1)).collect();
    let mut out = Vec::with_capacity(jpgs.len());
    let mut decoded = chunks
        .first()
        .map(|c| decode_batch(c, size, &pre, resize))
        .unwrap_or_default();
    for (k, chunk) in chunks.iter().enumerate() {
        let current = std::mem::take(&mut decoded);
        let (next, outputs) = rayon::join(
            || {
                chunks
                    .get(k + 1)
                    .map(|c| decode_batch(c, size, &pre, resize))
                    .unwrap_or_default()
            },
            || forward_batch(m, chunk, current, bad),
        );
        out.extend(outputs?);
        decoded = next;
        pb.inc(chunk.len() as u64);
    }
    Ok(out)
}

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
                let n = f
                    .trim()
                    .parse::<usize>()
                    .ok()
                    .filter(|&n| n > 0)
                    .ok_or_else(|| {
                        err(format!("frames {:?} is not a positive integer", f.trim()))
                    })?;
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

/// Frame numbers (1-based) with a jpg in a crop folder; empty if the folder is missing.
fn crop_frames(dir: &Path) -> Result<BTreeSet<u32>, DataError> {
    let rd = match std::fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(BTreeSet::new()),
        Err(e) => {
            return Err(DataError::Io {
                path: dir.to_path_buf(),
                source: e,
            })
        }
    };
    let mut out = BTreeSet::new();
    for entry in rd {
        let entry = entry.map_err(|e| DataError::Io {
            path: dir.to_path_buf(),
            source: e,
        })?;
        if let Some(f) = entry.file_name().to_str().and_then(parse_frame_file_name) {
            out.insert(f);
        }
    }
    Ok(out)
}

/// The videos to predict with their frame counts, and the vocabulary of the root's headers.
type VideoPlan = (Vec<(String, usize)>, Option<Vocab>);

/// Plans the videos of `target` under `root` (see [`VideoPlan`]).
fn plan_videos(
    root: &Path,
    target: &PredictTarget,
    list: Option<&[(String, Option<usize>)]>,
) -> Result<VideoPlan, PredictError> {
    let crops = root.join(CROPS_DIR);
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
    let mut videos: Vec<(String, usize)> = Vec::new();
    match target {
        PredictTarget::Split(split) => {
            // Longest annotation file per video of the split.
            let in_split: Vec<_> = entries.iter().filter(|e| e.split == *split).collect();
            let lens: Vec<(String, usize)> = in_split
                .par_iter()
                .map(|e| {
                    let bytes = std::fs::read(&e.path).map_err(|err| DataError::Io {
                        path: e.path.clone(),
                        source: err,
                    })?;
                    Ok((
                        e.video.clone(),
                        parse_annotation(e.task, &e.path, &bytes)?.len(),
                    ))
                })
                .collect::<Result<_, DataError>>()?;
            let mut longest: BTreeMap<String, usize> = BTreeMap::new();
            for (v, n) in lens {
                let l = longest.entry(v).or_default();
                *l = (*l).max(n);
            }
            match list {
                Some(list) => {
                    for (v, n) in list {
                        let n = n.or_else(|| longest.get(v).copied()).ok_or_else(|| PredictError::NoVideos {
                            root: root.to_path_buf(),
                            what: format!("listed video `{v}` (not annotated in the {split} split; give its frame count as `{v},N`)"),
                        })?;
                        videos.push((v.clone(), n));
                    }
                }
                None => videos.extend(longest),
            }
        }
        PredictTarget::Test => {
            let annotated: BTreeSet<&str> = entries.iter().map(|e| e.video.as_str()).collect();
            let names: Vec<(String, Option<usize>)> = match list {
                Some(list) => list.to_vec(),
                None => {
                    let rd = std::fs::read_dir(&crops).map_err(|e| DataError::Io {
                        path: crops.clone(),
                        source: e,
                    })?;
                    let mut names = Vec::new();
                    for entry in rd {
                        let entry = entry.map_err(|e| DataError::Io {
                            path: crops.clone(),
                            source: e,
                        })?;
                        let Some(name) = entry.file_name().to_str().map(str::to_string) else {
                            continue;
                        };
                        if !name.starts_with('.')
                            && entry.path().is_dir()
                            && !annotated.contains(name.as_str())
                        {
                            names.push((name, None));
                        }
                    }
                    names.sort();
                    names
                }
            };
            for (v, n) in names {
                let n = match n {
                    Some(n) => n,
                    None => crop_frames(&crops.join(&v))?
                        .last()
                        .map_or(0, |&f| f as usize),
                };
                if n > 0 {
                    videos.push((v, n));
                } else {
                    return Err(PredictError::NoVideos {
                        root: root.to_path_buf(),
                        what: format!(
                            "test video `{v}` (no crops in {} and no frame count)",
                            crops.join(&v).display()
                        ),
                    });
                }
            }
        }
        PredictTarget::Frames(_) => {}
    }
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

/// The vocabulary to write: the root's headers (checked against the heads), else defaults.
fn vocab_for(
    root_vocab: Option<Vocab>,
    root: &Path,
    n_au: usize,
    n_expr: usize,
) -> Result<Vocab, PredictError> {
    let d = default_vocab(n_au, n_expr);
    let Some(v) = root_vocab else { return Ok(d) };
    for (what, data, model) in [
        ("AUs", v.au_names.len(), n_au),
        ("expression classes", v.expr_names.len(), n_expr),
    ] {
        if data != 0 && data != model {
            return Err(PredictError::VocabSize {
                root: root.to_path_buf(),
                what,
                data,
                model,
            });
        }
    }
    Ok(Vocab {
        au_names: if v.au_names.is_empty() {
            d.au_names
        } else {
            v.au_names
        },
        expr_names: if v.expr_names.is_empty() {
            d.expr_names
        } else {
            v.expr_names
        },
    })
}

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

/// The three submission files' text of one video.
pub fn submission_texts(decisions: &[FrameDecision], vocab: &Vocab) -> [String; 3] {
    let mut va = String::from("valence,arousal\n");
    let mut au = vocab.au_names.join(",");
    au.push('\n');
    let mut ex = vocab.expr_names.join(",");
    ex.push('\n');
    for d in decisions {
        // Shortest round-trip text; clamped to the annotation range (tanh outputs already are).
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
    let mut summary = PredictSummary {
        thresholds: thresholds.clone(),
        ..Default::default()
    };
    if let PredictTarget::Frames(dir) = &opts.target {
        return run_frames(&m, opts, dir, batch, summary);
    }
    let root = opts
        .root
        .as_deref()
        .context("--root is required to predict a split or the test set")?;
    let (videos, root_vocab) = plan_videos(root, &opts.target, list.as_deref())?;
    let vocab = vocab_for(root_vocab, root, m.n_au, m.n_expr)?;
    let crops = root.join(CROPS_DIR);
    // Every (video, frame) with a crop, sorted by (video, frame).
    let mut jobs: Vec<(usize, usize)> = Vec::new();
    let mut jpgs: Vec<PathBuf> = Vec::new();
    for (vi, (v, n)) in videos.iter().enumerate() {
        let dir = crops.join(v);
        for f in crop_frames(&dir)?
            .into_iter()
            .map(|f| f as usize)
            .filter(|&f| f <= *n)
        {
            jobs.push((vi, f));
            jpgs.push(dir.join(format!("{f:05}.jpg")));
        }
    }
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
    let mut per_video: Vec<Vec<Option<FrameOutput>>> =
        videos.iter().map(|(_, n)| vec![None; *n]).collect();
    for (&(vi, f), o) in jobs.iter().zip(outputs) {
        if o.is_some() {
            summary.predicted += 1;
        }
        per_video[vi][f - 1] = o;
    }
    for (t, d) in TASK_DIRS {
        let dir = opts.out.join(d);
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("creating {} for {t}", dir.display()))?;
    }
    for ((v, n), frames) in videos.iter().zip(per_video) {
        let known = frames.iter().filter(|o| o.is_some()).count();
        let filled = match fill_nearest(&frames) {
            Some(f) => f,
            None => {
                summary.videos_without_crops.push(v.clone());
                vec![
                    FrameOutput {
                        va: [0.0, 0.0],
                        au_probs: vec![0.0; m.n_au],
                        expr_probs: (0..m.n_expr)
                            .map(|k| if k == 0 { 1.0 } else { 0.0 })
                            .collect(),
                    };
                    *n
                ]
            }
        };
        summary.filled += n - known;
        let decisions = decide(&filled, opts.smooth, &thresholds);
        for ((_, d), text) in TASK_DIRS.iter().zip(submission_texts(&decisions, &vocab)) {
            let path = opts.out.join(d).join(format!("{v}.txt"));
            write_atomic(&path, text.as_bytes())?;
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
    Ok(summary)
}

/// `--frames DIR`: every `.jpg`/`.jpeg` of `dir` (sorted by name) into `predictions.csv`.
fn run_frames(
    m: &LoadedModel,
    opts: &PredictOptions,
    dir: &Path,
    batch: usize,
    mut summary: PredictSummary,
) -> anyhow::Result<PredictSummary> {
    let root_vocab = match &opts.root {
        Some(r) => Some(root_vocab(&discover(r)?)?),
        None => None,
    };
    let vocab = vocab_for(
        root_vocab,
        opts.root.as_deref().unwrap_or(dir),
        m.n_au,
        m.n_expr,
    )?;
    let mut names: Vec<String> = Vec::new();
    for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let entry = entry.with_context(|| format!("reading {}", dir.display()))?;
        let Some(name) = entry.file_name().to_str().map(str::to_string) else {
            continue;
        };
        let lower = name.to_ascii_lowercase();
        if (lower.ends_with(".jpg") || lower.ends_with(".jpeg")) && entry.path().is_file() {
            names.push(name);
        }
    }
    names.sort();
    if names.is_empty() {
        return Err(PredictError::NoVideos {
            root: dir.to_path_buf(),
            what: "the frames folder (no .jpg files)".into(),
        }
        .into());
    }
    let jpgs: Vec<PathBuf> = names.iter().map(|n| dir.join(n)).collect();
    let pb = progress(jpgs.len(), opts.quiet, "predict");
    // A plain folder of crops may hold any size: always resize to the network input.
    let outputs = predict_images(m, &jpgs, batch, true, &pb, &mut summary.bad_frames)?;
    pb.finish_and_clear();
    let kept: Vec<(&String, FrameOutput)> = names
        .iter()
        .zip(outputs)
        .filter_map(|(n, o)| o.map(|o| (n, o)))
        .collect();
    let outs: Vec<FrameOutput> = kept.iter().map(|(_, o)| o.clone()).collect();
    let decisions = decide(&outs, opts.smooth, &summary.thresholds);
    let mut header: Vec<String> = vec!["file".into(), "valence".into(), "arousal".into()];
    header.extend(vocab.au_names.iter().map(|n| format!("{n}_prob")));
    header.extend(vocab.au_names.iter().cloned());
    header.extend(vocab.expr_names.iter().map(|n| format!("{n}_prob")));
    header.push("expression".into());
    let mut text = header
        .iter()
        .map(|h| csv_field(h))
        .collect::<Vec<_>>()
        .join(",");
    text.push('\n');
    for ((name, _), d) in kept.iter().zip(&decisions) {
        let mut row = vec![csv_field(name), d.va[0].to_string(), d.va[1].to_string()];
        row.extend(d.au_probs.iter().map(f32::to_string));
        row.extend(d.au.iter().map(u8::to_string));
        row.extend(d.expr_probs.iter().map(f32::to_string));
        row.push(csv_field(
            vocab.expr_names.get(d.expr).map_or("", String::as_str),
        ));
        text.push_str(&row.join(","));
        text.push('\n');
    }
    let path = opts.out.join("predictions.csv");
    write_atomic(&path, text.as_bytes())?;
    summary.predicted = kept.len();
    summary.frames = kept.len();
    summary.files.push(path);
    Ok(summary)
}

/// The AU and expression names of a root's annotation headers (the first file of each task,
/// any split); empty names for a task without files.
fn root_vocab(found: &Discovered) -> Result<Vocab, DataError> {
    let mut v = Vocab::default();
    for t in [Task::Au, Task::Expr] {
        if let Some(e) = found.entries.iter().find(|e| e.task == t) {
            let bytes = std::fs::read(&e.path).map_err(|err| DataError::Io {
                path: e.path.clone(),
                source: err,
            })?;
            let names = parse_annotation(t, &e.path, &bytes)?.names;
            if t == Task::Au {
                v.au_names = names;
            } else {
                v.expr_names = names;
            }
        }
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fill_nearest_prefers_earlier_on_ties() {
        let f = [
            None,
            Some(1),
            None,
            None,
            Some(4),
            None,
            None,
            None,
            Some(8),
            None,
        ];
        let out = fill_nearest(&f).unwrap();
        assert_eq!(out, vec![1, 1, 1, 4, 4, 4, 4, 8, 8, 8]);
        assert_eq!(fill_nearest::<u8>(&[None, None]), None);
        assert_eq!(fill_nearest(&[Some(3)]), Some(vec![3]));
    }

    #[test]
    fn windows_are_centred_and_clipped() {
        assert_eq!(window(0, 3, 10), 0..2);
        assert_eq!(window(5, 3, 10), 4..7);
        assert_eq!(window(9, 4, 10), 8..10);
        assert_eq!(window(5, 1, 10), 5..6);
    }

    fn out(va: f32, au: f32, expr: usize) -> FrameOutput {
        let mut e = vec![0.1; 3];
        e[expr] = 0.8;
        FrameOutput {
            va: [va, -va],
            au_probs: vec![au],
            expr_probs: e,
        }
    }

    #[test]
    fn smoothing_averages_and_votes() {
        let o = [
            out(0.0, 0.0, 0),
            out(0.3, 0.9, 2),
            out(0.6, 0.9, 0),
            out(0.9, 0.0, 1),
        ];
        let d = decide(&o, 1, &[0.5]);
        assert_eq!(d.iter().map(|x| x.expr).collect::<Vec<_>>(), [0, 2, 0, 1]);
        assert_eq!(d[1].va, [0.3, -0.3]);
        let s = decide(&o, 3, &[0.5]);
        // Frame 1: mean of 0.0, 0.3, 0.6; AU mean 0.6 -> 1; votes 0,2,0 -> 0.
        assert!((s[1].va[0] - 0.3).abs() < 1e-6);
        assert_eq!((s[1].au[0], s[1].expr), (1, 0));
        // Frame 0 (clipped window 0..2): AU mean 0.45 -> 0; votes 0,2 tie -> centre's 0.
        assert_eq!((s[0].au[0], s[0].expr), (0, 0));
        // Frame 3 (window 2..4): votes 0,1 tie -> centre's 1.
        assert_eq!(s[3].expr, 1);
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
        std::fs::write(&p, "v1\nv1\n").unwrap();
        assert!(read_video_list(&p)
            .unwrap_err()
            .to_string()
            .contains("twice"));
    }

    #[test]
    fn va_text_round_trips_f32() {
        let d = FrameDecision {
            va: [0.123_456_79, -0.999_999_94],
            au_probs: vec![0.7, 0.2],
            au: vec![1, 0],
            expr_probs: vec![0.5, 0.5],
            expr: 1,
        };
        let v = Vocab {
            au_names: vec!["AU1".into(), "AU2".into()],
            expr_names: vec!["A".into(), "B".into()],
        };
        let [va, au, ex] = submission_texts(std::slice::from_ref(&d), &v);
        let line = va.lines().nth(1).unwrap();
        let parsed: Vec<f32> = line.split(',').map(|x| x.parse().unwrap()).collect();
        assert_eq!(parsed, d.va.to_vec());
        assert_eq!(au, "AU1,AU2\n1,0\n");
        assert_eq!(ex, "A,B\n1\n");
    }
}
