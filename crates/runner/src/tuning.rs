//! The tuning a checkpoint carries (per-AU thresholds and a smoothing window per task, chosen
//! by `mtanet tune`, applied by `mtanet predict`): its form, where it is stored (the
//! checkpoint metadata key [`TUNING_KEY`]), and the frame rate that turns its windows from
//! seconds into frames.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::Context;
use serde::{Deserialize, Serialize};

use crate::predict::decide::{Kernel, Smoothing, TaskSmoothing};
use crate::record::checkpoint::{self, read_metadata, Description};

/// The checkpoint metadata key holding the [`Tuning`] as JSON.
pub const TUNING_KEY: &str = "tuning";
/// The frame rate assumed for a video whose name carries none.
pub const DEFAULT_FPS: f64 = 30.0;
/// The frame rate in an Aff-Wild2 video name of the form `NNN-FPS-WxH[-k]` (e.g.
/// `122-60-1920x1080-3`: 60 fps); [`DEFAULT_FPS`] for any other name (`video12`, `45_left`).
pub fn fps_of(video: &str) -> f64 {
    let parts: Vec<&str> = video.split('-').collect();
    let is_size = |s: &str| {
        s.split_once('x').is_some_and(|(w, h)| {
            !w.is_empty()
                && !h.is_empty()
                && w.bytes().all(|b| b.is_ascii_digit())
                && h.bytes().all(|b| b.is_ascii_digit())
        })
    };
    if parts.len() >= 3 && parts[0].bytes().all(|b| b.is_ascii_digit()) && is_size(parts[2]) {
        if let Ok(f) = parts[1].parse::<f64>() {
            if f.is_finite() && f > 0.0 {
                return f;
            }
        }
    }
    DEFAULT_FPS
}
/// A smoothing window in seconds and its kernel.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Window {
    /// Window length in seconds (0: none).
    pub seconds: f64,
    /// Weighting over the window.
    pub kernel: Kernel,
}
impl Window {
    /// No smoothing.
    pub const NONE: Window = Window {
        seconds: 0.0,
        kernel: Kernel::Box,
    };

    /// The window in frames at `fps` frames per second (rounded; 0 or 1 is no smoothing).
    pub fn at(&self, fps: f64) -> Smoothing {
        Smoothing {
            frames: (self.seconds * fps).round().max(0.0) as usize,
            kernel: self.kernel,
        }
    }

    pub(crate) fn label(&self) -> String {
        if self.seconds <= 0.0 {
            "none".to_string()
        } else {
            format!("{} {} s", self.kernel, self.seconds)
        }
    }
}
/// What `mtanet tune` stores in a checkpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Tuning {
    /// The split the choice was made on.
    pub split: String,
    /// The decision threshold of each AU, by name.
    pub thresholds: BTreeMap<String, f32>,
    /// Valence/arousal smoothing.
    pub va: Window,
    /// AU probability smoothing.
    pub au: Window,
    /// Expression probability smoothing.
    pub expr: Window,
}
impl Tuning {
    /// The thresholds in the order of `au_names`; an error naming an AU without one.
    pub fn thresholds_for(&self, au_names: &[String]) -> anyhow::Result<Vec<f32>> {
        au_names
            .iter()
            .map(|n| {
                self.thresholds.get(n).copied().with_context(|| {
                    format!("the stored tuning has no threshold for {n}; rerun `mtanet tune`")
                })
            })
            .collect()
    }

    /// The per-task smoothing of `video`, at its frame rate ([`fps_of`]).
    pub fn smoothing_for(&self, video: &str) -> TaskSmoothing {
        let fps = fps_of(video);
        TaskSmoothing {
            va: self.va.at(fps),
            au: self.au.at(fps),
            expr: self.expr.at(fps),
        }
    }
}
/// The tuning stored in the checkpoint file `path`, if any.
pub fn stored_tuning(path: &Path) -> anyhow::Result<Option<Tuning>> {
    let meta = read_metadata(path)?;
    meta.get(TUNING_KEY)
        .map(|t| {
            serde_json::from_str(t)
                .with_context(|| format!("{}: unreadable `{TUNING_KEY}` entry", path.display()))
        })
        .transpose()
}
/// Writes `tuning` into the metadata of the checkpoint file `path` (atomically), keeping
/// its tensors and other entries.
pub fn store_tuning(path: &Path, tuning: &Tuning) -> anyhow::Result<()> {
    let meta = read_metadata(path)?;
    let c = checkpoint::load(path, &candle_core::Device::Cpu)?;
    let mut entries: Vec<(String, String)> = meta
        .into_iter()
        .filter(|(k, _)| k != "state" && k != "format" && k != TUNING_KEY)
        .collect();
    entries.push((TUNING_KEY.to_string(), serde_json::to_string(tuning)?));
    checkpoint::save_described(path, &c.model, &c.optim, &c.state, &Description { entries })
}
