//! A resume continues a run with the configuration its checkpoint was trained with: every
//! checkpoint records that configuration (its `config` metadata), and the configuration a
//! resume is given (the run's `config.yaml` on the command line) may differ from it only in
//! the keys of [`RESUME_MAY_CHANGE`].

use std::path::Path;

use anyhow::Context;

use crate::experiment::differences::{config_differences, KeyDifference};
use crate::experiment::Config;
use crate::record::checkpoint::read_metadata;

/// The keys a resume may change, because none changes what the run computes: where it runs
/// (`device`), the loader's decode threads and read-ahead (`data.workers`, `data.prefetch`:
/// data order, augmentation and pixels are keyed by seed and position, whatever the thread
/// count) and how often it logs and checkpoints (`training.log_every`,
/// `training.checkpoint_every`). Every other key is refused. Another device computes with
/// its own rounding: a resume is bit-identical to an uninterrupted run on the device it
/// started on.
pub const RESUME_MAY_CHANGE: [&str; 5] = [
    "device",
    "data.workers",
    "data.prefetch",
    "training.log_every",
    "training.checkpoint_every",
];

/// Refuses to resume `run_dir` with `config` unless it equals the configuration `checkpoint`
/// was trained with, but for [`RESUME_MAY_CHANGE`]; the error lists every other differing key
/// with both values. A checkpoint that records no configuration is refused too: the resume
/// could not be checked.
pub fn check_resume_config(
    config: &Config,
    run_dir: &Path,
    checkpoint: &Path,
) -> anyhow::Result<()> {
    let meta = read_metadata(checkpoint)?;
    let yaml = meta.get("config").with_context(|| {
        format!(
            "cannot resume {}: {} does not record the configuration it was trained with \
             (written before checkpoints carried it), so the resume cannot be checked; \
             start a new run",
            run_dir.display(),
            checkpoint.display()
        )
    })?;
    let trained: Config = serde_yaml::from_str(yaml).with_context(|| {
        format!(
            "cannot resume {}: the `config` recorded in {} does not read",
            run_dir.display(),
            checkpoint.display()
        )
    })?;
    let differ: Vec<KeyDifference> = config_differences(&trained, config)?
        .into_iter()
        .filter(|d| !d.is_under(&RESUME_MAY_CHANGE))
        .collect();
    if differ.is_empty() {
        return Ok(());
    }
    let list: Vec<String> = differ
        .iter()
        .map(|d| format!("{} (trained with {}, now {})", d.key, d.first, d.second))
        .collect();
    anyhow::bail!(
        "cannot resume {}: its configuration ({}) differs from the one {} was trained with in \
         {} key(s): {}. A resume continues the run as it was trained: put these values back, \
         or start a new run (a resume may change only {})",
        run_dir.display(),
        run_dir.join("config.yaml").display(),
        checkpoint.display(),
        differ.len(),
        list.join("; "),
        RESUME_MAY_CHANGE.join(", ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::experiment::{OptimizerKind, StageConfig};

    #[test]
    fn differences_name_each_leaf_with_both_values() {
        let a = Config::default();
        let mut b = a.clone();
        b.seed = 3;
        b.training.stages[0].lr = 0.01;
        b.training.stages[0].optimizer = OptimizerKind::Sgd;
        b.data.augment = None;
        let d = config_differences(&a, &b).unwrap();
        let keys: Vec<&str> = d.iter().map(|x| x.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "seed",
                "data.augment",
                "training.stages.0.optimizer",
                "training.stages.0.lr"
            ]
        );
        assert_eq!((d[0].first.as_str(), d[0].second.as_str()), ("0", "3"));
        assert_eq!(d[1].second, "null");
        assert_eq!(
            (d[2].first.as_str(), d[2].second.as_str()),
            ("\"adam\"", "\"sgd\"")
        );
        assert!(config_differences(&a, &a.clone()).unwrap().is_empty());
        // Another number of stages is one difference.
        let mut c = a.clone();
        c.training.stages.push(StageConfig::default());
        let d = config_differences(&a, &c).unwrap();
        assert_eq!(d.len(), 1);
        assert_eq!(d[0].key, "training.stages");
    }

    /// A checkpoint file holding one tensor and, with `config`, its recorded configuration.
    fn checkpoint_with(path: &Path, config: Option<&Config>) {
        use crate::record::checkpoint::{save_described, Description, TrainState};
        let t = candle_core::Tensor::zeros(2, candle_core::DType::F32, &candle_core::Device::Cpu)
            .unwrap();
        let model = std::collections::HashMap::from([("w".to_string(), t)]);
        let entries = config
            .map(|c| vec![("config".to_string(), c.to_yaml())])
            .unwrap_or_default();
        save_described(
            path,
            &model,
            &Default::default(),
            &TrainState::default(),
            &Description { entries },
        )
        .unwrap();
    }

    #[test]
    fn a_resume_may_change_only_the_listed_keys() {
        let tmp = tempfile::tempdir().unwrap();
        let ckpt = tmp.path().join("last.safetensors");
        let trained = Config::default();
        checkpoint_with(&ckpt, Some(&trained));
        check_resume_config(&trained, tmp.path(), &ckpt).unwrap();

        let mut harmless = trained.clone();
        harmless.device = "cpu".into();
        harmless.data.workers = 3;
        harmless.data.prefetch = 1;
        harmless.training.log_every = 1;
        harmless.training.checkpoint_every = 7;
        check_resume_config(&harmless, tmp.path(), &ckpt).unwrap();

        let mut edited = harmless.clone();
        edited.seed = 9;
        edited.data.batch_size = 4;
        edited.training.stages[0].optimizer = OptimizerKind::Sgd;
        let e = check_resume_config(&edited, tmp.path(), &ckpt)
            .unwrap_err()
            .to_string();
        for needle in [
            "in 3 key(s)",
            "seed (trained with 0, now 9)",
            "data.batch_size (trained with 32, now 4)",
            "training.stages.0.optimizer (trained with \"adam\", now \"sgd\")",
            &ckpt.display().to_string(),
            &tmp.path().join("config.yaml").display().to_string(),
        ] {
            assert!(e.contains(needle), "{needle:?} missing in: {e}");
        }
        assert!(!e.contains("data.workers ("), "{e}");
    }

    #[test]
    fn a_checkpoint_without_its_configuration_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let ckpt = tmp.path().join("last.safetensors");
        checkpoint_with(&ckpt, None);
        let e = check_resume_config(&Config::default(), tmp.path(), &ckpt)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("does not record the configuration") && e.contains("last.safetensors"),
            "{e}"
        );
    }
}
