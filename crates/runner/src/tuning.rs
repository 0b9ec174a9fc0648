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
/// The frame rate in an Aff-Wild2 video name of the form `NNN-FPS-WxH[-k]`, after dropping
/// the subject or part suffix that starts at the first `_` (`_left`, `_right`, `_1_left`):
/// 60 for `122-60-1920x1080-3`, `10-60-1280x720_left` and `122-60-1920x1080-3_right`;
/// [`DEFAULT_FPS`] for any other name (`video12`, `video10_1_left`, `45_left`).
pub fn fps_of(video: &str) -> f64 {
    let stem = video.split_once('_').map_or(video, |(stem, _)| stem);
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    let is_size = |s: &str| {
        s.split_once('x')
            .is_some_and(|(w, h)| digits(w) && digits(h))
    };
    let parts: Vec<&str> = stem.split('-').collect();
    let shaped = match parts.as_slice() {
        [n, _, size] => digits(n) && is_size(size),
        [n, _, size, k] => digits(n) && is_size(size) && digits(k),
        _ => false,
    };
    if shaped {
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
    checkpoint::read_json_entry(path, TUNING_KEY)
}

/// Writes `tuning` into the metadata of the checkpoint file `path` (atomically), keeping
/// its tensors and other entries.
pub fn store_tuning(path: &Path, tuning: &Tuning) -> anyhow::Result<()> {
    let meta = read_metadata(path)?;
    let c = checkpoint::load(path, &candle_core::Device::Cpu)?;
    let mut entries: Vec<(String, String)> = meta
        .into_iter()
        .filter(|(k, _)| {
            k != checkpoint::STATE_KEY && k != checkpoint::FORMAT_KEY && k != TUNING_KEY
        })
        .collect();
    entries.push((TUNING_KEY.to_string(), serde_json::to_string(tuning)?));
    checkpoint::save_described(path, &c.model, &c.optim, &c.state, &Description { entries })
}

#[cfg(test)]
mod tests {
    use super::*;
    use mtanet_affwild2::synth::roster::roster;

    #[test]
    fn fps_of_reads_the_rate_through_left_right_and_part_suffixes() {
        assert_eq!(fps_of("10-60-1280x720"), 60.0);
        assert_eq!(fps_of("10-60-1280x720_left"), 60.0);
        assert_eq!(fps_of("10-60-1280x720_right"), 60.0);
        assert_eq!(fps_of("122-60-1920x1080-3_right"), 60.0);
        assert_eq!(fps_of("122-25-1920x1080-3_left"), 25.0);
        assert_eq!(fps_of("46-24-640x360_1_left"), 24.0);
    }

    #[test]
    fn fps_of_keeps_the_default_for_names_without_a_rate() {
        for name in [
            "video10_1_left",
            "video12",
            "45_left",
            "45",
            "1-abc-640x360",
            "1-30-wide",
            "1-24-640x360-k",
            "1-24-640x360-2-3",
            "a1-24-640x360",
            "1-0-640x360",
            "_left",
            "",
        ] {
            assert_eq!(fps_of(name), DEFAULT_FPS, "{name}");
        }
    }

    /// Every synthetic video with a rate in its name gets that rate, `_left`/`_right` subjects
    /// included; `videoN` names get the default.
    #[test]
    fn fps_of_synthetic_roster_names() {
        let videos = roster(7, 96, 20, false);
        let mut paired_off_default = 0;
        for v in &videos {
            let name = v.name.as_str();
            if name.starts_with("video") {
                assert_eq!(fps_of(name), DEFAULT_FPS, "{name}");
                continue;
            }
            // The second `-` field of `N-FPS-WxH[_left|_right]`.
            let want: f64 = name.split('-').nth(1).unwrap().parse().unwrap();
            assert!([24.0, 25.0, 30.0, 60.0].contains(&want), "{name}");
            assert_eq!(fps_of(name), want, "{name}");
            if (name.ends_with("_left") || name.ends_with("_right")) && want != DEFAULT_FPS {
                paired_off_default += 1;
            }
        }
        assert!(
            paired_off_default > 0,
            "the roster has a _left/_right video at a rate other than the default"
        );
    }
}
