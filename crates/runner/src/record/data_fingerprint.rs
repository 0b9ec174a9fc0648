//! What a run trains and evaluates on, in a few bytes: the number of samples of each split and
//! a hash of each sample's identity and labels, kept in the checkpoint so that a resume on
//! other data is refused (the epoch order and every later evaluation depend on the samples).

use mtanet_affwild2::Sample;
use serde::{Deserialize, Serialize};

/// The training and validation samples of a run, as counts and hashes.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct DataFingerprint {
    /// Training samples (after `data.max_train_frames`).
    pub train_samples: usize,
    /// FNV-1a 64 of the training samples' videos, frames and labels, in order (hex).
    pub train_hash: String,
    /// Validation samples (after `data.max_val_frames`).
    pub val_samples: usize,
    /// FNV-1a 64 of the validation samples, as `train_hash`.
    pub val_hash: String,
}

impl DataFingerprint {
    /// The fingerprint of a run's training and validation samples.
    pub fn of(train: &[Sample], val: &[Sample]) -> Self {
        Self {
            train_samples: train.len(),
            train_hash: format!("{:016x}", hash_samples(train)),
            val_samples: val.len(),
            val_hash: format!("{:016x}", hash_samples(val)),
        }
    }

    /// What differs from `earlier`, in words (`None` when nothing does).
    pub fn differences(&self, earlier: &Self) -> Option<String> {
        let mut out = Vec::new();
        let mut split = |name: &str, (n, h): (usize, &str), (m, g): (usize, &str)| {
            if (n, h) != (m, g) {
                out.push(format!(
                    "{name}: {m} samples (hash {g}) then, {n} samples (hash {h}) now"
                ));
            }
        };
        split(
            "training",
            (self.train_samples, &self.train_hash),
            (earlier.train_samples, &earlier.train_hash),
        );
        split(
            "validation",
            (self.val_samples, &self.val_hash),
            (earlier.val_samples, &earlier.val_hash),
        );
        (!out.is_empty()).then(|| out.join("; "))
    }
}

/// FNV-1a 64 over each sample's video name, frame number and labels (the crop's path is left
/// out: a dataset reached through another path is the same data).
fn hash_samples(samples: &[Sample]) -> u64 {
    let mut h = mtanet_seed::FNV1A_BASIS;
    let mut eat = |bytes: &[u8]| h = mtanet_seed::fnv1a(h, bytes);
    for s in samples {
        eat(s.video.as_bytes());
        eat(&[0xff]);
        eat(&s.frame.to_le_bytes());
        match s.va {
            Some([v, a]) => {
                eat(&[1]);
                eat(&v.to_bits().to_le_bytes());
                eat(&a.to_bits().to_le_bytes());
            }
            None => eat(&[0]),
        }
        match &s.au {
            Some(au) => {
                eat(&[1]);
                eat(&(au.len() as u32).to_le_bytes());
                eat(au);
            }
            None => eat(&[0]),
        }
        match s.expr {
            Some(e) => eat(&[1, e]),
            None => eat(&[0]),
        }
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn sample(video: &str, frame: u32, expr: Option<u8>) -> Sample {
        Sample {
            video: video.into(),
            frame,
            jpg: PathBuf::from(format!("{video}/{frame:05}.jpg")),
            va: Some([0.25, -0.5]),
            au: Some(vec![0, 1, 1]),
            expr,
        }
    }

    #[test]
    fn another_frame_label_or_count_changes_the_fingerprint_and_the_path_does_not() {
        let train = vec![sample("a", 1, Some(2)), sample("a", 2, None)];
        let val = vec![sample("b", 7, Some(0))];
        let fp = DataFingerprint::of(&train, &val);
        assert_eq!(fp.differences(&fp.clone()), None);
        let mut moved = train.clone();
        moved[0].jpg = PathBuf::from("/elsewhere/a/00001.jpg");
        assert_eq!(DataFingerprint::of(&moved, &val), fp);
        let mut relabelled = train.clone();
        relabelled[1].expr = Some(3);
        let other = DataFingerprint::of(&relabelled, &val);
        let why = other.differences(&fp).unwrap();
        assert!(why.starts_with("training: 2 samples"), "{why}");
        assert!(!why.contains("validation"), "{why}");
        let more = DataFingerprint::of(&train, &[val[0].clone(), sample("b", 8, None)]);
        let why = more.differences(&fp).unwrap();
        assert!(
            why.contains("validation: 1 samples") && why.contains("2 samples"),
            "{why}"
        );
        let mut shifted = train.clone();
        shifted[1].frame = 3;
        assert_ne!(DataFingerprint::of(&shifted, &val), fp);
    }
}
