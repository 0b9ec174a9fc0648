//! Which videos the synthetic set has: names in Aff-Wild2 style (`12-24-1920x1080`,
//! `video7`, `_left`/`_right` pairs), split, tasks annotated and length.

use rand::Rng;

use super::timeline::ExprDeck;
use crate::seed;
use crate::task::Split;

/// One synthetic video (a `_left`/`_right` subject counts as its own video).
#[derive(Debug, Clone, PartialEq)]
pub struct VideoSpec {
    /// Folder and file stem.
    pub name: String,
    /// Its split (the same in every task: validation identities never appear in training).
    pub split: Split,
    /// Annotated for VA, AU, EXPR.
    pub tasks: [bool; 3],
    /// Annotation lines (= frames).
    pub frames: usize,
    /// Jpgs written after the last annotation line (Aff-Wild2 has a few).
    pub extra_jpgs: usize,
    /// Expression per frame (annotated frames, then the extra jpgs), from a per-split
    /// [`ExprDeck`] so class shares match the targets in every split.
    pub expr: Vec<u8>,
    /// Seed of everything else drawn for this video.
    pub seed: u64,
}

const TAG_ROSTER: u64 = 0x705;
const TAG_VIDEO: u64 = 0x71d;

/// The videos for `videos` subjects of about `frames` frames each; `all_tasks` annotates every
/// video for every task (the full-size set, so each task has ~`videos * frames` lines).
pub fn roster(seed: u64, videos: usize, frames: usize, all_tasks: bool) -> Vec<VideoSpec> {
    let mut rng = seed::rng(&[seed, TAG_ROSTER]);
    let mut out: Vec<VideoSpec> = Vec::with_capacity(videos);
    let mut group = 0usize;
    let mut per_split = [0usize; 2];
    let mut decks = [ExprDeck::default(), ExprDeck::default()];
    while out.len() < videos {
        let fps = [24, 25, 30, 60][rng.random_range(0..4)];
        let res = ["1920x1080", "1280x720", "640x360", "480x360"][rng.random_range(0..4)];
        let base = if group % 5 == 2 {
            format!("video{}", group + 1)
        } else {
            format!("{}-{fps}-{res}", group + 1)
        };
        let split = if group % 4 == 3 {
            Split::Validation
        } else {
            Split::Train
        };
        let pair = out.len() + 1 < videos && rng.random::<f32>() < 0.12;
        let n = ((frames as f32 * rng.random_range(0.7..1.3)) as usize).max(10);
        let names = if pair {
            vec![format!("{base}_left"), format!("{base}_right")]
        } else {
            vec![base]
        };
        for name in names {
            let k = &mut per_split[split.index()];
            // The first two videos of each split carry every task, so both splits have all three.
            let tasks = if *k < 2 || all_tasks {
                [true; 3]
            } else {
                let t = [
                    rng.random::<f32>() < 0.85,
                    rng.random::<f32>() < 0.75,
                    rng.random::<f32>() < 0.8,
                ];
                if t.iter().any(|&x| x) {
                    t
                } else {
                    [true, false, false]
                }
            };
            *k += 1;
            let idx = out.len() as u64;
            let extra_jpgs = if idx % 17 == 5 { 2 } else { 0 };
            let expr = decks[split.index()].frames(&mut rng, n + extra_jpgs);
            out.push(VideoSpec {
                name,
                split,
                tasks,
                frames: n,
                extra_jpgs,
                expr,
                seed: seed::mix(&[seed, TAG_VIDEO, idx]),
            });
        }
        group += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_unique_splits_and_tasks_covered() {
        let r = roster(7, 48, 120, false);
        assert_eq!(r.len(), 48);
        let mut names: Vec<&str> = r.iter().map(|v| v.name.as_str()).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), 48);
        for split in Split::ALL {
            for t in 0..3 {
                assert!(
                    r.iter().any(|v| v.split == split && v.tasks[t]),
                    "{split} task {t}"
                );
            }
        }
        let val = r.iter().filter(|v| v.split == Split::Validation).count();
        assert!((6..=18).contains(&val), "{val}");
        assert!(
            r.iter().any(|v| v.name.ends_with("_left")),
            "has left/right pairs"
        );
        assert!(
            r.iter().any(|v| v.tasks.iter().filter(|&&t| t).count() < 3),
            "some videos lack tasks"
        );
        assert_eq!(r, roster(7, 48, 120, false), "deterministic");
        assert!(roster(7, 48, 120, true)
            .iter()
            .all(|v| v.tasks == [true; 3]));
    }
}
