//! From the model's per-frame outputs to the values written: filling frames without a
//! prediction from the nearest predicted frame, temporal smoothing, and the AU thresholds.

use std::path::{Path, PathBuf};

use anyhow::Context;
use mtanet_metrics::Report;

use crate::experiment::Criterion;

use super::PredictError;
use crate::step::eval_step::argmax;
use crate::submission::FrameLine;

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

impl FrameOutput {
    /// The outputs written for a video without any usable crop: VA 0, AU probabilities 0,
    /// expression class 0 with probability 1.
    pub fn neutral(n_au: usize, n_expr: usize) -> Self {
        FrameOutput {
            va: [0.0, 0.0],
            au_probs: vec![0.0; n_au],
            expr_probs: (0..n_expr)
                .map(|k| if k == 0 { 1.0 } else { 0.0 })
                .collect(),
        }
    }
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

impl FrameDecision {
    /// This frame's line in the submission files.
    pub fn line(&self) -> FrameLine<'_> {
        FrameLine {
            va: self.va,
            au: &self.au,
            expr: self.expr,
        }
    }
}

/// The checkpoint file whose weights the AU figures of a run's `report.json` (and their tuned
/// thresholds) were evaluated with, under `criterion`: `last.safetensors` for `last`,
/// `best.safetensors` for `total`, `best-au.safetensors` for `per_task`; the last weights where
/// no evaluation was picked (no such file: the report is then the last evaluation's).
pub fn au_report_checkpoint(run_dir: &Path, criterion: Criterion) -> PathBuf {
    let dir = run_dir.join("checkpoints");
    let picked = match criterion {
        Criterion::Last => None,
        Criterion::Total => Some(dir.join("best.safetensors")),
        Criterion::PerTask => Some(dir.join("best-au.safetensors")),
    };
    picked
        .filter(|p| p.is_file())
        .unwrap_or_else(|| dir.join("last.safetensors"))
}

/// The per-AU thresholds tuned on validation, from `report.json` in `run_dir`, for predicting
/// with `checkpoint`: refused unless `checkpoint` holds the weights those thresholds were
/// tuned with ([`au_report_checkpoint`] under the run's `criterion`), since thresholds tuned
/// on other weights would decide this model's AUs.
pub fn tuned_thresholds(
    run_dir: &Path,
    criterion: Criterion,
    checkpoint: &Path,
    n_au: usize,
) -> anyhow::Result<Vec<f32>> {
    let tuned_on = au_report_checkpoint(run_dir, criterion);
    let same = |a: &Path, b: &Path| match (std::fs::canonicalize(a), std::fs::canonicalize(b)) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    };
    if !same(&tuned_on, checkpoint) {
        anyhow::bail!(
            "--tuned-thresholds: the thresholds in {} were tuned with the weights of {} \
             (selection.criterion `{criterion}`), and this prediction uses {}: pass \
             --checkpoint {} or drop --tuned-thresholds",
            run_dir.join("report.json").display(),
            tuned_on.display(),
            checkpoint.display(),
            tuned_on.display()
        );
    }
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

/// The majority of `labels[w]` (ties go to `centre` if it is among the most voted, else to
/// the lowest class index), over `n_classes` classes.
fn vote(labels: &[usize], w: std::ops::Range<usize>, centre: usize, n_classes: usize) -> usize {
    let mut votes = vec![0usize; n_classes.max(1)];
    for &l in &labels[w] {
        if let Some(v) = votes.get_mut(l) {
            *v += 1;
        }
    }
    let top = votes.iter().copied().max().unwrap_or(0);
    if votes.get(centre) == Some(&top) {
        centre
    } else {
        votes.iter().position(|&v| v == top).unwrap_or(0)
    }
}

/// The smoothed (VA, AU probabilities, expression probabilities, expression class) of frame
/// `i` of the `len` frames whose outputs `output` gives: means over the window of `smooth`
/// frames centred on it, and the [`vote`] of the frames' argmax classes.
fn smoothed<'a>(
    output: &impl Fn(usize) -> &'a FrameOutput,
    len: usize,
    i: usize,
    smooth: usize,
) -> ([f32; 2], Vec<f32>, Vec<f32>, usize) {
    let w = window(i, smooth, len);
    let n = w.len() as f64;
    let mean = |f: &dyn Fn(&FrameOutput) -> f32| -> f32 {
        (w.clone().map(|j| f64::from(f(output(j)))).sum::<f64>() / n) as f32
    };
    let centre = output(i);
    let va = [mean(&|o| o.va[0]), mean(&|o| o.va[1])];
    let au: Vec<f32> = (0..centre.au_probs.len())
        .map(|k| mean(&|o| o.au_probs[k]))
        .collect();
    let ex: Vec<f32> = (0..centre.expr_probs.len())
        .map(|k| mean(&|o| o.expr_probs[k]))
        .collect();
    let labels: Vec<usize> = w.clone().map(|j| argmax(&output(j).expr_probs)).collect();
    let label = vote(
        &labels,
        0..labels.len(),
        argmax(&centre.expr_probs),
        centre.expr_probs.len(),
    );
    (va, au, ex, label)
}

/// The decision of frame `i` of the `len` frames whose outputs `output` gives (see
/// [`decide`]).
pub fn decide_frame<'a>(
    output: &impl Fn(usize) -> &'a FrameOutput,
    len: usize,
    i: usize,
    smooth: usize,
    thresholds: &[f32],
) -> FrameDecision {
    let (va, au_probs, expr_probs, expr) = if smooth <= 1 {
        let o = output(i);
        (
            o.va,
            o.au_probs.clone(),
            o.expr_probs.clone(),
            argmax(&o.expr_probs),
        )
    } else {
        smoothed(output, len, i, smooth)
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
}

/// Decisions for a video's frame outputs: moving average of VA and AU probabilities and
/// majority vote of the expression argmax over a centred window of `smooth` frames (ties
/// go to the centre frame's class if it is among them, else to the lowest class index);
/// `smooth <= 1` keeps the frame outputs as they are.
pub fn decide(outputs: &[FrameOutput], smooth: usize, thresholds: &[f32]) -> Vec<FrameDecision> {
    let output = |j: usize| &outputs[j];
    (0..outputs.len())
        .map(|i| decide_frame(&output, outputs.len(), i, smooth, thresholds))
        .collect()
}

/// The weighting of a smoothing window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kernel {
    /// Equal weights over the window.
    Box,
    /// Gaussian weights with a standard deviation of a quarter of the window (the window
    /// spans +-2 standard deviations), clipped to the window.
    Gaussian,
}

impl std::fmt::Display for Kernel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Kernel::Box => "box",
            Kernel::Gaussian => "gaussian",
        })
    }
}

/// A centred smoothing window of `frames` frames (0 or 1: none) with its weighting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Smoothing {
    /// Window length in frames.
    pub frames: usize,
    /// Weighting over the window.
    pub kernel: Kernel,
}

impl Smoothing {
    /// No smoothing.
    pub const NONE: Smoothing = Smoothing {
        frames: 0,
        kernel: Kernel::Box,
    };

    /// The frames of the window centred on frame `i` of `len` and their normalised weights.
    pub fn weights(&self, i: usize, len: usize) -> Vec<(usize, f64)> {
        if self.frames <= 1 {
            return vec![(i, 1.0)];
        }
        let w = window(i, self.frames, len);
        let sigma = self.frames as f64 / 4.0;
        let raw: Vec<(usize, f64)> = w
            .map(|j| {
                let d = j as f64 - i as f64;
                let wt = match self.kernel {
                    Kernel::Box => 1.0,
                    Kernel::Gaussian => (-0.5 * (d / sigma).powi(2)).exp(),
                };
                (j, wt)
            })
            .collect();
        let total: f64 = raw.iter().map(|(_, w)| w).sum();
        raw.into_iter().map(|(j, w)| (j, w / total)).collect()
    }
}

/// One [`Smoothing`] per task, as `mtanet tune` chooses them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TaskSmoothing {
    /// Valence and arousal.
    pub va: Smoothing,
    /// AU probabilities.
    pub au: Smoothing,
    /// Expression probabilities (the class is the argmax of the smoothed probabilities).
    pub expr: Smoothing,
}

/// The weighted mean of `value` over the frames and weights `w`.
fn weighted<'a>(
    output: &impl Fn(usize) -> &'a FrameOutput,
    w: &[(usize, f64)],
    value: impl Fn(&FrameOutput) -> f32,
) -> f32 {
    w.iter()
        .map(|&(j, wt)| wt * f64::from(value(output(j))))
        .sum::<f64>() as f32
}

/// The outputs of frame `i` of `len` smoothed per task by `s`.
pub fn smooth_output<'a>(
    output: &impl Fn(usize) -> &'a FrameOutput,
    len: usize,
    i: usize,
    s: &TaskSmoothing,
) -> FrameOutput {
    let centre = output(i);
    let (wv, wa, we) = (
        s.va.weights(i, len),
        s.au.weights(i, len),
        s.expr.weights(i, len),
    );
    FrameOutput {
        va: [
            weighted(output, &wv, |o| o.va[0]),
            weighted(output, &wv, |o| o.va[1]),
        ],
        au_probs: (0..centre.au_probs.len())
            .map(|k| weighted(output, &wa, |o| o.au_probs[k]))
            .collect(),
        expr_probs: (0..centre.expr_probs.len())
            .map(|k| weighted(output, &we, |o| o.expr_probs[k]))
            .collect(),
    }
}

/// The decision of frame `i` of `len` under per-task smoothing `s` ([`smooth_output`]):
/// AU probabilities against `thresholds`, the expression the argmax of its smoothed
/// probabilities.
pub fn decide_frame_tuned<'a>(
    output: &impl Fn(usize) -> &'a FrameOutput,
    len: usize,
    i: usize,
    s: &TaskSmoothing,
    thresholds: &[f32],
) -> FrameDecision {
    let o = smooth_output(output, len, i, s);
    let au = o
        .au_probs
        .iter()
        .zip(thresholds)
        .map(|(p, t)| u8::from(*p >= *t))
        .collect();
    let expr = argmax(&o.expr_probs);
    FrameDecision {
        va: o.va,
        au_probs: o.au_probs,
        au,
        expr_probs: o.expr_probs,
        expr,
    }
}

/// The outputs of every frame of a video from those of the frames the model saw: each frame
/// takes the outputs of the nearest seen frame (the earlier one on ties), as
/// [`fill_nearest`] does, in memory per seen frame rather than per frame.
#[derive(Debug, Clone)]
pub struct Filled {
    frames: usize,
    seen: Vec<(usize, FrameOutput)>,
}

impl Filled {
    /// A video of `frames` frames whose seen frames (0-based, ascending, each below
    /// `frames`) have outputs `seen`; `None` when no frame was seen.
    pub fn new(frames: usize, seen: Vec<(usize, FrameOutput)>) -> Option<Filled> {
        (!seen.is_empty()).then_some(Filled { frames, seen })
    }

    /// The frames of the video.
    pub fn len(&self) -> usize {
        self.frames
    }

    /// Whether the video has no frame.
    pub fn is_empty(&self) -> bool {
        self.frames == 0
    }

    /// The frames the model saw.
    pub fn seen(&self) -> usize {
        self.seen.len()
    }

    /// The outputs frame `i` takes.
    pub fn output(&self, i: usize) -> &FrameOutput {
        let k = self.seen.partition_point(|(f, _)| *f < i);
        let next = self.seen.get(k);
        let prev = k.checked_sub(1).map(|p| &self.seen[p]);
        match (prev, next) {
            (Some(p), Some(n)) if i - p.0 > n.0 - i => &n.1,
            (Some(p), _) => &p.1,
            (None, Some(n)) => &n.1,
            (None, None) => unreachable!("a Filled video has a seen frame"),
        }
    }

    /// The decision of frame `i` ([`decide_frame`]).
    pub fn decide(&self, i: usize, smooth: usize, thresholds: &[f32]) -> FrameDecision {
        decide_frame(&|j| self.output(j), self.frames, i, smooth, thresholds)
    }

    /// The decision of frame `i` under per-task smoothing ([`decide_frame_tuned`]).
    pub fn decide_tuned(&self, i: usize, s: &TaskSmoothing, thresholds: &[f32]) -> FrameDecision {
        decide_frame_tuned(&|j| self.output(j), self.frames, i, s, thresholds)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `--tuned-thresholds` takes report.json's thresholds only with the weights they were tuned
    /// with: `best.safetensors` under `total`, `last.safetensors` under `last`,
    /// `best-au.safetensors` under `per_task`; another file is refused naming both.
    #[test]
    fn tuned_thresholds_only_with_the_weights_they_were_tuned_with() {
        let d = tempfile::tempdir().unwrap();
        let ck = d.path().join("checkpoints");
        std::fs::create_dir_all(&ck).unwrap();
        for f in ["last", "best", "best-au"] {
            std::fs::write(ck.join(format!("{f}.safetensors")), b"").unwrap();
        }
        let report = r#"{"au": {"f1": 0.5, "accuracy": 0.5, "score": 0.5, "frames": 3,
            "per_au_f1": [0.5, 0.5], "tuned": {"f1": 0.6, "accuracy": 0.5, "score": 0.55,
            "per_au_f1": [0.6, 0.6], "thresholds": [0.3, 0.7]}}}"#;
        std::fs::write(d.path().join("report.json"), report).unwrap();
        let (last, best, best_au) = (
            ck.join("last.safetensors"),
            ck.join("best.safetensors"),
            ck.join("best-au.safetensors"),
        );
        for (criterion, right, wrong) in [
            (Criterion::Total, &best, &last),
            (Criterion::Last, &last, &best),
            (Criterion::PerTask, &best_au, &best),
        ] {
            let got = tuned_thresholds(d.path(), criterion, right, 2).unwrap();
            assert_eq!(got, [0.3, 0.7]);
            let e = tuned_thresholds(d.path(), criterion, wrong, 2)
                .unwrap_err()
                .to_string();
            assert!(
                e.contains(&right.display().to_string())
                    && e.contains(&wrong.display().to_string()),
                "{e}"
            );
        }
        // The run directory given by a relative path, and through a link.
        let link = d.path().with_extension("link");
        std::os::unix::fs::symlink(d.path(), &link).unwrap();
        let through_link = link.join("checkpoints/best.safetensors");
        assert!(tuned_thresholds(&link, Criterion::Total, &through_link, 2).is_ok());
        assert!(tuned_thresholds(d.path(), Criterion::Total, &through_link, 2).is_ok());
        let cwd = std::env::current_dir().unwrap();
        let relative = pathdiff(d.path(), &cwd);
        assert!(tuned_thresholds(&relative, Criterion::Total, &best, 2).is_ok());
        // No evaluation picked (no best file): the report is the last evaluation's.
        std::fs::remove_file(&best).unwrap();
        assert!(tuned_thresholds(d.path(), Criterion::Total, &last, 2).is_ok());
        std::fs::remove_file(&link).unwrap();
    }

    /// `path` relative to `base` (both absolute), through `..` where needed.
    fn pathdiff(path: &Path, base: &Path) -> PathBuf {
        let (p, b): (Vec<_>, Vec<_>) = (path.components().collect(), base.components().collect());
        let common = p.iter().zip(&b).take_while(|(x, y)| x == y).count();
        let mut out = PathBuf::new();
        for _ in common..b.len() {
            out.push("..");
        }
        for c in &p[common..] {
            out.push(c);
        }
        out
    }

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
    fn filled_equals_fill_nearest_then_decide() {
        let frames: Vec<Option<FrameOutput>> = (0..23)
            .map(|i| {
                (i % 5 == 2 || i == 3 || i == 20)
                    .then(|| out(i as f32 / 23.0, (i % 3) as f32 / 2.0, i % 3))
            })
            .collect();
        let seen: Vec<(usize, FrameOutput)> = frames
            .iter()
            .enumerate()
            .filter_map(|(i, o)| o.clone().map(|o| (i, o)))
            .collect();
        let filled = Filled::new(frames.len(), seen).unwrap();
        let all = fill_nearest(&frames).unwrap();
        for (i, want) in all.iter().enumerate() {
            assert_eq!(filled.output(i), want, "frame {i}");
        }
        for smooth in [0, 1, 2, 3, 4, 7] {
            let want = decide(&all, smooth, &[0.5]);
            for (i, w) in want.iter().enumerate() {
                assert_eq!(
                    &filled.decide(i, smooth, &[0.5]),
                    w,
                    "smooth {smooth} frame {i}"
                );
            }
        }
        assert!(Filled::new(4, Vec::new()).is_none());
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
    fn tuned_smoothing_weights_and_argmax() {
        let o = [
            out(0.0, 0.0, 0),
            out(0.3, 0.9, 2),
            out(0.6, 0.9, 0),
            out(0.9, 0.0, 1),
        ];
        let none = TaskSmoothing {
            va: Smoothing::NONE,
            au: Smoothing::NONE,
            expr: Smoothing::NONE,
        };
        let f = |j: usize| &o[j];
        for i in 0..o.len() {
            let d = decide_frame_tuned(&f, o.len(), i, &none, &[0.5]);
            assert_eq!(d, decide(&o, 1, &[0.5])[i]);
        }
        let b3 = Smoothing {
            frames: 3,
            kernel: Kernel::Box,
        };
        let s = TaskSmoothing {
            va: b3,
            au: b3,
            expr: b3,
        };
        let d = decide_frame_tuned(&f, o.len(), 1, &s, &[0.5]);
        assert!((d.va[0] - 0.3).abs() < 1e-6);
        // Expression probabilities averaged: class 0 (0.8 + 0.1 + 0.8) / 3 wins.
        assert_eq!((d.au[0], d.expr), (1, 0));
        let g = Smoothing {
            frames: 5,
            kernel: Kernel::Gaussian,
        };
        let w = g.weights(5, 10);
        assert_eq!(w.len(), 5);
        assert!((w.iter().map(|x| x.1).sum::<f64>() - 1.0).abs() < 1e-12);
        assert!(w[2].1 > w[1].1 && w[1].1 > w[0].1 && (w[1].1 - w[3].1).abs() < 1e-12);
    }

    #[test]
    fn decisions_are_written_as_their_line() {
        let d = FrameDecision {
            va: [0.123_456_79, -0.999_999_94],
            au_probs: vec![0.7, 0.2],
            au: vec![1, 0],
            expr_probs: vec![0.5, 0.5],
            expr: 1,
        };
        let l = d.line();
        assert_eq!((l.va, l.au, l.expr), (d.va, &[1u8, 0][..], 1));
    }
}
