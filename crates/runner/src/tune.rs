//! `mtanet tune`: per-AU decision thresholds and a temporal smoothing window per task, chosen
//! on a labelled split and stored in the checkpoint's metadata (key [`TUNING_KEY`](crate::tuning::TUNING_KEY)), where
//! `mtanet predict` finds and applies them.
//!
//! The scored frames are those of evaluation: labelled for the task and with a face crop on
//! disk that can be read and decoded (a frame whose crop cannot is left out, as the run's
//! evaluation leaves it out, not scored with a neighbour's outputs). The thresholds are [`tune_au_thresholds`] over the raw AU probabilities of those
//! frames, as the run's own evaluation tunes them, so they reproduce its `au.f1_tuned`.
//! Smoothing runs over every frame of a video (frames without a crop take the nearest
//! predicted frame, as `predict` writes them) and is scored at the same frames; per task the
//! candidate windows [`WINDOWS_S`] (seconds) with a box or Gaussian kernel ([`Kernel`]) are
//! tried and the best kept (VA: mean CCC; AU: F1 at the tuned thresholds; EXPR: macro F1 of
//! the argmax of the smoothed probabilities), the smaller window on ties, so a window of 0
//! (no smoothing) is always a candidate and tuning never scores lower than no smoothing on
//! the split tuned on. Windows become frames with the frame rate in the video name
//! ([`fps_of`]).
use crate::build::restore::load_model;
use crate::predict::{
    predict_videos, smooth_output, FrameDecision, FrameOutput, Kernel, PredictSummary,
    PredictTarget, TaskSmoothing,
};
use crate::submission::{read_task_file, video_crops};
use crate::tuning::{fps_of, store_tuning, Tuning, Window};
use mtanet_affwild2::layout::{discover, frame_file_name};
use mtanet_affwild2::{Split, Task};
use mtanet_metrics::{tune_au_thresholds, AuAccumulator, ExprAccumulator, VaAccumulator};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::PathBuf;
/// Candidate smoothing windows, in seconds.
pub const WINDOWS_S: [f64; 5] = [0.0, 0.1, 0.2, 0.5, 1.0];
/// Options of [`run`].
#[derive(Debug, Clone)]
pub struct TuneOptions {
    /// A run directory or a checkpoint file (see [`crate::build::restore::resolve_checkpoint`]).
    pub checkpoint: PathBuf,
    /// The run config, when the checkpoint file has no `../config.yaml`.
    pub config: Option<PathBuf>,
    /// The Aff-Wild2 root.
    pub root: PathBuf,
    /// The labelled split to tune on.
    pub split: Split,
    /// Batch size (default: the config's `eval.batch_size`).
    pub batch_size: Option<usize>,
    /// Device override.
    pub device: Option<String>,
    /// Hide the progress bar.
    pub quiet: bool,
    /// Do not write the checkpoint.
    pub dry_run: bool,
}
/// One task's figures: no tuning, tuned thresholds, tuned thresholds and smoothing.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Figures {
    /// Raw outputs (AU at 0.5, no smoothing).
    pub raw: f64,
    /// Tuned AU thresholds, no smoothing.
    pub tuned: f64,
    /// Tuned thresholds and the chosen smoothing.
    pub smoothed: f64,
}
/// What [`run`] chose and measured.
#[derive(Debug, Clone, PartialEq)]
pub struct TuneOutcome {
    /// The choice (stored in [`Self::checkpoint`] unless a dry run).
    pub tuning: Tuning,
    /// The checkpoint file.
    pub checkpoint: PathBuf,
    /// CCC of valence.
    pub ccc_valence: Figures,
    /// CCC of arousal.
    pub ccc_arousal: Figures,
    /// AU mean F1.
    pub au_f1: Figures,
    /// Expression macro F1.
    pub expr_f1: Figures,
    /// Frames scored per task (VA, AU, EXPR).
    pub frames: [usize; 3],
    /// The AU names in the order of the split's headers.
    pub au_names: Vec<String>,
}
impl TuneOutcome {
    /// The table of raw, tuned and smoothed figures, with the optimism note.
    pub fn render(&self) -> String {
        let t = &self.tuning;
        let mut s = format!(
            "tune: {} on {} (frames scored: VA {}, AU {}, EXPR {})\n",
            self.checkpoint.display(),
            t.split,
            self.frames[0],
            self.frames[1],
            self.frames[2]
        );
        s.push_str("| Metric | raw | tuned thresholds | tuned + smoothing | window |\n");
        s.push_str("|---|---|---|---|---|\n");
        for (name, f, w) in [
            ("CCC-V", &self.ccc_valence, &t.va),
            ("CCC-A", &self.ccc_arousal, &t.va),
            ("AU F1", &self.au_f1, &t.au),
            ("EXPR F1", &self.expr_f1, &t.expr),
        ] {
            let _ = writeln!(
                s,
                "| {name} | {:.3} | {:.3} | {:.3} | {} |",
                f.raw,
                f.tuned,
                f.smoothed,
                w.label()
            );
        }
        let th: Vec<String> = self
            .au_names
            .iter()
            .filter_map(|k| t.thresholds.get(k).map(|v| format!("{k} {v:.2}")))
            .collect();
        let _ = writeln!(s, "AU thresholds: {}", th.join(", "));
        let _ = writeln!(
            s,
            "note: chosen on {} and scored on it: the tuned columns are optimistic; judge them on another split",
            t.split
        );
        s
    }
}
/// One annotated video of the split: its per-frame outputs (in the annotation's column
/// order) and, per task, the scored frames with their labels.
struct Scored {
    outputs: Vec<FrameOutput>,
    fps: f64,
    va: Vec<(usize, [f32; 2])>,
    au: Vec<(usize, Vec<u8>)>,
    expr: Vec<(usize, usize)>,
}
/// Tunes (see the module doc), stores the choice unless `dry_run`, and returns it with the
/// figures.
pub fn run(opts: &TuneOptions) -> anyhow::Result<TuneOutcome> {
    let m = load_model(
        &opts.checkpoint,
        opts.config.as_deref(),
        opts.device.as_deref(),
    )?;
    let batch = opts.batch_size.unwrap_or(m.config.eval.batch_size).max(1);
    let mut summary = PredictSummary::default();
    let p = predict_videos(
        &m,
        &opts.root,
        &PredictTarget::Split(opts.split),
        None,
        batch,
        opts.quiet,
        &mut summary,
    )?;
    let videos = scored_videos(&m, &p, opts, &summary.bad_frames)?;
    let n_au = p.columns.vocab.au_names.len();
    let n_expr = p.columns.vocab.expr_names.len();
    let smooth_at = |s: &Scored, i: usize, w: &Window| {
        let sm = w.at(s.fps);
        let ts = TaskSmoothing {
            va: sm,
            au: sm,
            expr: sm,
        };
        smooth_output(&|j| &s.outputs[j], s.outputs.len(), i, &ts)
    };
    let va_ccc = |w: &Window| -> Option<[f64; 2]> {
        let mut acc = VaAccumulator::new();
        for s in videos.values() {
            for (i, y) in &s.va {
                acc.push(crate::submission::submitted_va(smooth_at(s, *i, w).va), *y);
            }
        }
        acc.ccc()
    };
    let au_acc = |w: &Window| -> AuAccumulator {
        let mut acc = AuAccumulator::new(n_au);
        for s in videos.values() {
            for (i, y) in &s.au {
                acc.push(&smooth_at(s, *i, w).au_probs, y);
            }
        }
        acc
    };
    let expr_f1 = |w: &Window| -> f64 {
        let mut acc = ExprAccumulator::new(n_expr);
        for s in videos.values() {
            for (i, y) in &s.expr {
                acc.push(
                    crate::step::eval_step::argmax(&smooth_at(s, *i, w).expr_probs),
                    *y,
                );
            }
        }
        acc.macro_f1()
    };
    let raw_au = au_acc(&Window::NONE);
    let thresholds = tune_au_thresholds(&raw_au);
    let au_f1_at = |acc: &AuAccumulator, th: &[f32]| -> anyhow::Result<f64> {
        if acc.is_empty() {
            return Ok(0.0);
        }
        Ok(acc.scores(th)?.f1)
    };
    let candidates = candidates();
    let best = |score: &dyn Fn(&Window) -> anyhow::Result<f64>| -> anyhow::Result<(Window, f64)> {
        let mut best = (Window::NONE, score(&Window::NONE)?);
        for w in &candidates[1..] {
            let v = score(w)?;
            if v > best.1 {
                best = (*w, v);
            }
        }
        Ok(best)
    };
    let raw_va = va_ccc(&Window::NONE).unwrap_or([0.0, 0.0]);
    let (va_w, _) = best(&|w| Ok(va_ccc(w).map_or(0.0, |[v, a]| (v + a) / 2.0)))?;
    let va_s = va_ccc(&va_w).unwrap_or([0.0, 0.0]);
    let au_raw = au_f1_at(&raw_au, &vec![mtanet_metrics::DEFAULT_THRESHOLD; n_au])?;
    let au_tuned = au_f1_at(&raw_au, &thresholds)?;
    let (au_w, au_s) = best(&|w| au_f1_at(&au_acc(w), &thresholds))?;
    let ex_raw = expr_f1(&Window::NONE);
    let (ex_w, ex_s) = best(&|w| Ok(expr_f1(w)))?;
    let count = |f: fn(&Scored) -> usize| videos.values().map(f).sum::<usize>();
    let tuning = Tuning {
        split: match opts.split {
            Split::Train => "Training_Set",
            Split::Validation => "Validation_Set",
        }
        .to_string(),
        thresholds: p
            .columns
            .vocab
            .au_names
            .iter()
            .cloned()
            .zip(thresholds.iter().copied())
            .collect(),
        va: va_w,
        au: au_w,
        expr: ex_w,
    };
    if !opts.dry_run {
        store_tuning(&m.checkpoint, &tuning)?;
    }
    Ok(TuneOutcome {
        checkpoint: m.checkpoint.clone(),
        ccc_valence: Figures {
            raw: raw_va[0],
            tuned: raw_va[0],
            smoothed: va_s[0],
        },
        ccc_arousal: Figures {
            raw: raw_va[1],
            tuned: raw_va[1],
            smoothed: va_s[1],
        },
        au_f1: Figures {
            raw: au_raw,
            tuned: au_tuned,
            smoothed: au_s,
        },
        expr_f1: Figures {
            raw: ex_raw,
            tuned: ex_raw,
            smoothed: ex_s,
        },
        frames: [
            count(|s| s.va.len()),
            count(|s| s.au.len()),
            count(|s| s.expr.len()),
        ],
        au_names: p.columns.vocab.au_names.clone(),
        tuning,
    })
}

/// Per video of the split: the model's outputs on every frame (in the checkpoint's column
/// order mapped to the root's) and the labelled frames with a face crop, per task, less
/// those whose crop is in `bad` (could not be read or decoded).
fn scored_videos(
    m: &crate::build::restore::LoadedModel,
    p: &crate::predict::PredictedVideos,
    opts: &TuneOptions,
    bad: &[PathBuf],
) -> anyhow::Result<BTreeMap<String, Scored>> {
    let bad: BTreeSet<&PathBuf> = bad.iter().collect();
    let found = discover(&opts.root)?;
    // The names the model's outputs were mapped to, which every file's header must repeat.
    let mut header = crate::predict::plan::root_header_vocab(&found)?;
    let mut videos: BTreeMap<String, Scored> = BTreeMap::new();
    for (v, filled) in p.videos.iter().zip(&p.filled) {
        let n_au = m.n_au;
        let outputs = (0..filled.len())
            .map(|i| {
                let o = filled.output(i);
                let d = p.columns.apply(FrameDecision {
                    va: o.va,
                    au_probs: o.au_probs.clone(),
                    au: vec![0; n_au],
                    expr_probs: o.expr_probs.clone(),
                    expr: crate::step::eval_step::argmax(&o.expr_probs),
                });
                FrameOutput {
                    va: d.va,
                    au_probs: d.au_probs,
                    expr_probs: d.expr_probs,
                }
            })
            .collect();
        videos.insert(
            v.name.clone(),
            Scored {
                outputs,
                fps: fps_of(&v.name),
                va: Vec::new(),
                au: Vec::new(),
                expr: Vec::new(),
            },
        );
    }
    let mut crops = BTreeMap::new();
    for e in found.entries.iter().filter(|e| e.split == opts.split) {
        let Some(s) = videos.get_mut(&e.video) else {
            continue;
        };
        if !crops.contains_key(&e.video) {
            crops.insert(e.video.clone(), video_crops(&found.crops.join(&e.video))?);
        }
        let c = &crops[&e.video];
        let file = read_task_file(e.task, &e.path)?;
        if e.task != Task::Va {
            header.admit(e.task, &e.path, &file.names)?;
        }
        let dir = found.crops.join(&e.video);
        let has_crop = |i: usize| {
            u32::try_from(i + 1).is_ok_and(|f| {
                c.contains(f) && (bad.is_empty() || !bad.contains(&dir.join(frame_file_name(f))))
            }) && i < s.outputs.len()
        };
        for i in (0..file.len()).filter(|&i| file.is_labelled(i) && has_crop(i)) {
            match e.task {
                Task::Va => s.va.extend(file.va(i).map(|y| (i, y))),
                Task::Au => s.au.extend(file.au(i).map(|y| (i, y.to_vec()))),
                Task::Expr => s.expr.extend(file.expr(i).map(|y| (i, usize::from(y)))),
            }
        }
    }
    Ok(videos)
}

/// No smoothing, then every window of [`WINDOWS_S`] above 0 with each kernel.
fn candidates() -> Vec<Window> {
    let mut c = vec![Window::NONE];
    for &seconds in WINDOWS_S.iter().filter(|&&s| s > 0.0) {
        for kernel in [Kernel::Box, Kernel::Gaussian] {
            c.push(Window { seconds, kernel });
        }
    }
    c
}
#[cfg(test)]
mod tests {
    use super::*;
    use crate::tuning::DEFAULT_FPS;

    #[test]
    fn frame_rate_from_the_video_name() {
        assert_eq!(fps_of("122-60-1920x1080-3"), 60.0);
        assert_eq!(fps_of("10-25-640x360"), 25.0);
        assert_eq!(fps_of("video12"), DEFAULT_FPS);
        assert_eq!(fps_of("45_left"), DEFAULT_FPS);
        assert_eq!(fps_of("1-abc-640x360"), DEFAULT_FPS);
        assert_eq!(fps_of("1-30-wide"), DEFAULT_FPS);
    }

    #[test]
    fn windows_in_frames_and_candidates() {
        let w = Window {
            seconds: 0.5,
            kernel: Kernel::Gaussian,
        };
        assert_eq!(w.at(60.0).frames, 30);
        assert_eq!(w.at(30.0).frames, 15);
        assert_eq!(Window::NONE.at(60.0).frames, 0);
        let c = candidates();
        assert_eq!(c.len(), 9);
        assert_eq!(c[0], Window::NONE);
    }
}
