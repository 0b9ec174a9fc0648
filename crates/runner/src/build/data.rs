//! The data side of a run: the data root (the synthetic set generated on first use), the
//! training and validation samples, loader settings and AU positive weights.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use mtanet_affwild2::{LoaderConfig, OnBadFrame, Sample, SynthConfig, SynthReport};

use crate::build::model::preprocess_for;
use crate::experiment::Config;
use crate::record::atomic_io::write_atomic;

/// The data root a config points to, generating the synthetic set on first use.
pub fn data_root(config: &Config, quiet: bool) -> anyhow::Result<PathBuf> {
    if let Some(root) = &config.data.root {
        if !root.is_dir() {
            bail!(
                "data root {} does not exist: point `data.root` (or AFFWILD2_ROOT) at the folder \
                 holding annotations/ and cropped_aligned/ (see data/README.md), or set it to null \
                 to use the synthetic Aff-Wild2",
                root.display()
            );
        }
        return Ok(root.clone());
    }
    let s = &config.data.synthetic;
    let marker = s.dir.join("synth_report.json");
    if !marker.is_file() {
        if !quiet {
            eprintln!(
                "generating the synthetic Aff-Wild2 in {} ({} videos x {} frames, seed {}) ...",
                s.dir.display(),
                s.videos,
                s.frames,
                s.seed
            );
        }
        generate_synthetic(
            &s.dir,
            &SynthConfig {
                videos: s.videos,
                frames: s.frames,
                seed: s.seed,
                ..SynthConfig::default()
            },
        )?;
    }
    Ok(s.dir.clone())
}

/// Writes the synthetic Aff-Wild2 into `dir`, then its `synth_report.json` (the marker that
/// the set is complete: a set interrupted before it is generated again on next use).
pub fn generate_synthetic(dir: &Path, cfg: &SynthConfig) -> anyhow::Result<SynthReport> {
    let report = mtanet_affwild2::generate(dir, cfg)
        .with_context(|| format!("generating the synthetic set in {}", dir.display()))?;
    write_atomic(
        &dir.join("synth_report.json"),
        serde_json::to_string_pretty(&report)?.as_bytes(),
    )?;
    Ok(report)
}

/// Keeps at most `max` samples, evenly spaced (deterministic).
pub fn subsample(samples: &[Sample], max: Option<usize>) -> Vec<Sample> {
    match max {
        Some(m) if m < samples.len() && m > 0 => (0..m)
            .map(|i| samples[i * samples.len() / m].clone())
            .collect(),
        _ => samples.to_vec(),
    }
}

/// Loader settings for training (`train = true`) or evaluation. Under `data.on_bad_frame:
/// skip`, training substitutes an unreadable crop by the next frame of the epoch
/// ([`OnBadFrame::Skip`]) and evaluation leaves its row out ([`OnBadFrame::Drop`]), so that no
/// frame is scored twice and none with another frame's crop.
pub fn loader_config(config: &Config, train: bool) -> LoaderConfig {
    let d = &config.data;
    LoaderConfig {
        batch_size: if train {
            d.batch_size
        } else {
            config.eval.batch_size
        },
        image_size: d.image_size,
        sampling: if train {
            d.sampling
        } else {
            mtanet_affwild2::Sampling::Mixed
        },
        shuffle: train,
        drop_last: false,
        seed: mtanet_seed::stream_seed(config.seed, &["data"]),
        prefetch: d.prefetch.max(1),
        threads: d.workers,
        augment: if train { d.augment.clone() } else { None },
        preprocess: preprocess_for(&config.model.backbone),
        on_bad_frame: match d.on_bad_frame {
            OnBadFrame::Skip if !train => OnBadFrame::Drop,
            m => m,
        },
        resize: d.resize,
    }
}

/// AU positive weights (negatives / positives per AU, clamped to [1, 10]) from training labels.
pub fn au_pos_weight(samples: &[Sample], n_au: usize) -> Vec<f32> {
    let mut pos = vec![0f64; n_au];
    let mut n = 0f64;
    for s in samples {
        if let Some(au) = &s.au {
            n += 1.0;
            for (p, &a) in pos.iter_mut().zip(au.iter()) {
                *p += a as f64;
            }
        }
    }
    pos.iter()
        .map(|&p| ((n - p) / p.max(1.0)).clamp(1.0, 10.0) as f32)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn skip_substitutes_in_training_and_drops_in_evaluation() {
        let mut config = Config::default();
        assert_eq!(config.data.on_bad_frame, OnBadFrame::Skip);
        assert_eq!(loader_config(&config, true).on_bad_frame, OnBadFrame::Skip);
        let eval = loader_config(&config, false);
        assert_eq!(eval.on_bad_frame, OnBadFrame::Drop);
        assert!(!eval.shuffle && eval.augment.is_none());
        config.data.on_bad_frame = OnBadFrame::Error;
        assert_eq!(loader_config(&config, true).on_bad_frame, OnBadFrame::Error);
        assert_eq!(
            loader_config(&config, false).on_bad_frame,
            OnBadFrame::Error
        );
    }

    #[test]
    fn drop_is_not_a_setting() {
        let e = serde_yaml::from_str::<OnBadFrame>("drop").unwrap_err();
        assert!(e.to_string().contains("drop"), "{e}");
        assert_eq!(
            serde_yaml::from_str::<OnBadFrame>("skip").unwrap(),
            OnBadFrame::Skip
        );
    }
}
