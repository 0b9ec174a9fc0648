//! A synthetic Aff-Wild2 in the exact ABAW 2020 layout and formats, with the real quirks
//! (left/right subjects, videos annotated for only some tasks, `-5`/`-1` missing rows, frames
//! without a jpg, jpgs without an annotation line, crop folders of unannotated videos,
//! Neutral-heavy expressions, rare AUs, smoothly drifting VA), whose faces encode the labels
//! (see [`face`]) so that small networks can learn every task.
//!
//! [`generate_as`] writes the same faces in the ABAW 2022+ layout instead ([`Layout::Abaw2022`]:
//! `annotations/*_Challenge/{Train_Set,Validation_Set}`, the 12 AUs of [`AUS_2022`], whose four
//! extra units copy a neighbouring unit the face encodes, and the 8 classes of
//! [`EXPRESSIONS_2022`], `Other` never drawn).
//!
//! The `full` size (560 videos x ~5000 lines, every video in every task: 2.8 M lines per task)
//! is for the index benchmark:
//! it renders 4 key frames per video and hard-links every other jpg of the video to the
//! preceding key frame (a copy if hard links fail), so the file tree is as large as the real
//! one but most pixels only approximate their labels. Train on the default size.

pub mod face;
pub mod raster;
pub mod roster;
pub mod timeline;

use std::fmt::{self, Write as _};
use std::path::{Path, PathBuf};

use rand::Rng;
use rayon::prelude::*;
use serde::Serialize;

use crate::error::DataError;
use crate::layout::{frame_file_name, task_folder, Layout, CROPS_DIR};
use crate::seed;
use crate::task::{Split, Task, Vocab};
use face::{FaceLabels, Identity};
use roster::{roster, VideoSpec};

/// Size and seed of the synthetic set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SynthConfig {
    /// Subjects (a `_left`/`_right` pair is two); at least 4.
    pub videos: usize,
    /// Mean annotation lines per video (each video draws 0.7x-1.3x).
    pub frames: usize,
    /// Seed: the same seed gives byte-identical files.
    pub seed: u64,
    /// Benchmark size: 560 videos x ~5000 lines, overriding `videos` and `frames` (see module doc).
    pub full: bool,
}

impl Default for SynthConfig {
    /// 48 videos x ~120 frames: ~5,800 crops, generated in seconds.
    fn default() -> Self {
        SynthConfig {
            videos: 48,
            frames: 120,
            seed: 2020,
            full: false,
        }
    }
}

/// Videos of the full-size set.
pub const FULL_VIDEOS: usize = 560;
/// Mean annotation lines per video of the full-size set.
pub const FULL_FRAMES: usize = 5000;
/// Key frames rendered per video in the full-size set.
const FULL_KEYS: usize = 4;
/// Crop folders of unannotated (test) videos.
const ORPHAN_VIDEOS: usize = 2;
/// Jpgs in each of them.
const ORPHAN_JPGS: usize = 5;
/// Written first into the output folder; lets a later run replace an interrupted one.
const MARKER: &str = ".mtanet-synth";

/// The AU names of the ABAW 2022+ layout, in header order.
pub const AUS_2022: [&str; 12] = [
    "AU1", "AU2", "AU4", "AU6", "AU7", "AU10", "AU12", "AU15", "AU23", "AU24", "AU25", "AU26",
];

/// For each of [`AUS_2022`], the AU of the ABAW 2020 vocabulary (index into the face's 8 AUs)
/// whose value it takes.
const AU_SOURCE_2022: [usize; 12] = [0, 1, 2, 3, 3, 4, 4, 5, 6, 6, 7, 7];

/// The expression classes of the ABAW 2022+ layout, in class-index order.
pub const EXPRESSIONS_2022: [&str; 8] = [
    "Neutral",
    "Anger",
    "Disgust",
    "Fear",
    "Happiness",
    "Sadness",
    "Surprise",
    "Other",
];

/// The vocabulary written in `layout`'s headers (the ABAW 2021 layout keeps the 2020 one).
pub fn synth_vocab(layout: Layout) -> Vocab {
    match layout {
        Layout::Abaw2022 => Vocab {
            au_names: AUS_2022.map(String::from).to_vec(),
            expr_names: EXPRESSIONS_2022.map(String::from).to_vec(),
        },
        Layout::Abaw2020 | Layout::Abaw2021 => Vocab::abaw2020(),
    }
}

/// What was written for one task of one split (the index must reproduce these).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct SynthTaskReport {
    /// Annotation files.
    pub videos: u64,
    /// Annotation lines.
    pub annotation_lines: u64,
    /// Lines with a label (no marker) whose jpg was written.
    pub labelled: u64,
    /// Lines whose jpg was not written.
    pub missing_jpg: u64,
    /// EXPR: labelled frames per class; AU: labelled frames with each AU on; VA: empty.
    pub counts: Vec<u64>,
}

/// One split of the report.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct SynthSplitReport {
    /// Valence-arousal.
    pub va: SynthTaskReport,
    /// Action units.
    pub au: SynthTaskReport,
    /// Expressions.
    pub expr: SynthTaskReport,
    /// Videos in the split.
    pub videos: u64,
    /// Jpgs written for them (including those past the annotations).
    pub jpgs_written: u64,
}

impl SynthSplitReport {
    /// The report of one task.
    pub fn task(&self, t: Task) -> &SynthTaskReport {
        match t {
            Task::Va => &self.va,
            Task::Au => &self.au,
            Task::Expr => &self.expr,
        }
    }

    fn task_mut(&mut self, t: Task) -> &mut SynthTaskReport {
        match t {
            Task::Va => &mut self.va,
            Task::Au => &mut self.au,
            Task::Expr => &mut self.expr,
        }
    }
}

/// Counts of what [`generate`] wrote.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SynthReport {
    /// Output folder.
    pub root: PathBuf,
    /// Seed used.
    pub seed: u64,
    /// Full benchmark size (jpgs hard-linked to key frames).
    pub full: bool,
    /// The folder layout written.
    pub layout: Layout,
    /// The vocabulary written in the headers.
    pub vocab: Vocab,
    /// Training split.
    pub train: SynthSplitReport,
    /// Validation split.
    pub validation: SynthSplitReport,
    /// Jpgs written for annotated videos.
    pub jpgs_written: u64,
    /// Of those, jpgs past the last annotation line.
    pub unannotated_jpgs: u64,
    /// Crop folders without annotations (like the test videos).
    pub unannotated_videos: u64,
}

impl SynthReport {
    /// The report of one split.
    pub fn split(&self, s: Split) -> &SynthSplitReport {
        match s {
            Split::Train => &self.train,
            Split::Validation => &self.validation,
        }
    }
}

impl fmt::Display for SynthReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "synthetic Aff-Wild2 ({} layout{}) in {}, seed {}",
            self.layout,
            if self.full {
                ", full size, hard-linked jpgs"
            } else {
                ""
            },
            self.root.display(),
            self.seed
        )?;
        for s in Split::ALL {
            let r = self.split(s);
            writeln!(f, "{s}: {} videos, {} jpgs", r.videos, r.jpgs_written)?;
            for t in Task::ALL {
                let tr = r.task(t);
                writeln!(
                    f,
                    "  {:<5} {:>4} videos {:>9} lines {:>9} labelled {:>7} missing jpg",
                    t.key(),
                    tr.videos,
                    tr.annotation_lines,
                    tr.labelled,
                    tr.missing_jpg
                )?;
            }
        }
        write!(
            f,
            "{} jpgs ({} past the annotations), {} unannotated video folders",
            self.jpgs_written, self.unannotated_jpgs, self.unannotated_videos
        )
    }
}

/// What one video contributed.
struct VideoOutcome {
    split: Split,
    tasks: [Option<SynthTaskReport>; 3],
    jpgs: u64,
    extra: u64,
}

fn io<T>(path: &Path, r: std::io::Result<T>) -> Result<T, DataError> {
    r.map_err(|e| DataError::io(path, e))
}

/// Runs of `len_lo..len_hi` frames flagged true, `runs` of them at random places.
fn runs(rng: &mut impl Rng, n: usize, runs: usize, len_lo: usize, len_hi: usize) -> Vec<bool> {
    let mut out = vec![false; n];
    for _ in 0..runs {
        let len = rng.random_range(len_lo..len_hi).min(n);
        let start = rng.random_range(0..=n - len);
        out[start..start + len].fill(true);
    }
    out
}

fn encode_jpeg(path: &Path, img: &image::RgbImage) -> Result<(), DataError> {
    let mut buf = Vec::with_capacity(6000);
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut buf, 90)
        .encode(
            img.as_raw(),
            img.width(),
            img.height(),
            image::ExtendedColorType::Rgb8,
        )
        .map_err(|e| DataError::BadImage {
            path: path.to_path_buf(),
            message: format!("encoding: {e}"),
        })?;
    io(path, std::fs::write(path, buf))
}

/// Writes the synthetic set under `out` (`annotations/`, `cropped_aligned/`) and returns the
/// counts written. Refuses a folder that already holds a dataset it did not write.
pub fn generate(out: &Path, cfg: &SynthConfig) -> Result<SynthReport, DataError> {
    generate_as(out, cfg, Layout::Abaw2020)
}

/// [`generate`] in `layout`: the ABAW 2020 layout, or the ABAW 2022+ one (see the module
/// doc); the ABAW 2021 layout is refused.
pub fn generate_as(
    out: &Path,
    cfg: &SynthConfig,
    layout: Layout,
) -> Result<SynthReport, DataError> {
    if layout == Layout::Abaw2021 {
        return Err(DataError::Config(
            "the synthetic set is written in the ABAW 2020 or the ABAW 2022+ layout".into(),
        ));
    }
    let (videos, frames) = if cfg.full {
        (FULL_VIDEOS, FULL_FRAMES)
    } else {
        (cfg.videos, cfg.frames)
    };
    if videos < 4 || frames < 10 {
        return Err(DataError::Config(format!(
            "synthetic set needs at least 4 videos and 10 frames per video (got {videos} x {frames})"
        )));
    }
    let ann = out.join("annotations");
    let crops = out.join(CROPS_DIR);
    if ann.exists() || crops.exists() {
        if out.join(MARKER).exists() {
            for d in [&ann, &crops] {
                if d.exists() {
                    io(d, std::fs::remove_dir_all(d))?;
                }
            }
        } else {
            return Err(DataError::Config(format!(
                "{} already holds annotations/ or cropped_aligned/ not written by the generator; \
                 choose an empty folder",
                out.display()
            )));
        }
    }
    io(out, std::fs::create_dir_all(out))?;
    io(
        out,
        std::fs::write(
            out.join(MARKER),
            b"written by mtanet-affwild2 synth::generate\n",
        ),
    )?;
    for t in Task::ALL {
        for s in Split::ALL {
            let d = out.join(task_folder(layout, t, s));
            io(&d, std::fs::create_dir_all(&d))?;
        }
    }
    io(&crops, std::fs::create_dir_all(&crops))?;

    let specs = roster(cfg.seed, videos, frames, cfg.full);
    let outcomes: Vec<Result<VideoOutcome, DataError>> = specs
        .par_iter()
        .map(|v| write_video(out, layout, &crops, v, cfg.full))
        .collect();
    let mut report = SynthReport {
        root: out.to_path_buf(),
        seed: cfg.seed,
        full: cfg.full,
        layout,
        vocab: synth_vocab(layout),
        train: SynthSplitReport::default(),
        validation: SynthSplitReport::default(),
        jpgs_written: 0,
        unannotated_jpgs: 0,
        unannotated_videos: ORPHAN_VIDEOS as u64,
    };
    for o in outcomes {
        let o = o?;
        let sr = match o.split {
            Split::Train => &mut report.train,
            Split::Validation => &mut report.validation,
        };
        sr.videos += 1;
        sr.jpgs_written += o.jpgs;
        for t in Task::ALL {
            if let Some(tr) = &o.tasks[t.index()] {
                let acc = sr.task_mut(t);
                acc.videos += tr.videos;
                acc.annotation_lines += tr.annotation_lines;
                acc.labelled += tr.labelled;
                acc.missing_jpg += tr.missing_jpg;
                if acc.counts.len() < tr.counts.len() {
                    acc.counts.resize(tr.counts.len(), 0);
                }
                for (a, b) in acc.counts.iter_mut().zip(&tr.counts) {
                    *a += b;
                }
            }
        }
        report.jpgs_written += o.jpgs;
        report.unannotated_jpgs += o.extra;
    }
    // Crop folders of videos without annotations (the test set in the real release).
    for k in 0..ORPHAN_VIDEOS {
        let dir = crops.join(format!("test{}-25-640x480", k + 1));
        io(&dir, std::fs::create_dir_all(&dir))?;
        let mut rng = seed::rng(&[cfg.seed, 0x7e57, k as u64]);
        let id = Identity::random(&mut rng);
        let expr = timeline::ExprDeck::default().frames(&mut rng, ORPHAN_JPGS);
        let (labels, views) = timeline::timeline(&mut rng, &expr);
        for (i, (l, v)) in labels.iter().zip(&views).enumerate() {
            let img = face::render(&id, v, l, &mut rng);
            encode_jpeg(&dir.join(frame_file_name(i as u32 + 1)), &img)?;
        }
    }
    Ok(report)
}

/// Writes one video's annotation files and jpgs.
fn write_video(
    out: &Path,
    layout: Layout,
    crops: &Path,
    v: &VideoSpec,
    full: bool,
) -> Result<VideoOutcome, DataError> {
    let mut rng = seed::rng(&[v.seed]);
    let id = Identity::random(&mut rng);
    let n = v.frames;
    let total = n + v.extra_jpgs;
    let (labels, views) = timeline::timeline(&mut rng, &v.expr);
    debug_assert_eq!(labels.len(), total);
    // Face not found: 0-2 runs of 2-10 frames without a jpg (labels still present).
    let no_face_runs = if rng.random::<f32>() < 0.6 {
        rng.random_range(1..=2)
    } else {
        0
    };
    let mut no_jpg = runs(&mut rng, n, no_face_runs, 2, 10);
    no_jpg.resize(total, false);
    // Missing labels: per task, 0-2 runs of 3-15 marker rows.
    let missing: [Vec<bool>; 3] = std::array::from_fn(|_| {
        let k = rng.random_range(0..=2);
        runs(&mut rng, n, k, 3, 15)
    });

    let dir = crops.join(&v.name);
    io(&dir, std::fs::create_dir_all(&dir))?;
    let mut jpgs = 0u64;
    let mut key_path: Option<PathBuf> = None;
    let key_every = total.div_ceil(FULL_KEYS).max(1);
    for t in 0..total {
        let path = dir.join(frame_file_name(t as u32 + 1));
        if full && t % key_every != 0 {
            if !no_jpg[t] {
                let key = key_path
                    .as_ref()
                    .ok_or_else(|| DataError::Config("no key frame".into()))?;
                if std::fs::hard_link(key, &path).is_err() {
                    io(&path, std::fs::copy(key, &path))?;
                }
                jpgs += 1;
            }
            continue;
        }
        // Noise comes from its own stream so skipped frames do not shift later frames.
        let mut noise = seed::rng(&[v.seed, 0x401, t as u64]);
        if full {
            // A key frame is needed even when its own jpg is missing: write it aside.
            let img = face::render(&id, &views[t], &labels[t], &mut noise);
            let key = dir.join(format!(".key{t}.jpg"));
            encode_jpeg(&key, &img)?;
            if !no_jpg[t] {
                if std::fs::hard_link(&key, &path).is_err() {
                    io(&path, std::fs::copy(&key, &path))?;
                }
                jpgs += 1;
            }
            key_path = Some(key);
            continue;
        }
        if no_jpg[t] {
            continue;
        }
        let img = face::render(&id, &views[t], &labels[t], &mut noise);
        encode_jpeg(&path, &img)?;
        jpgs += 1;
    }

    let mut tasks: [Option<SynthTaskReport>; 3] = Default::default();
    for task in Task::ALL {
        if !v.tasks[task.index()] {
            continue;
        }
        let (text, rep) = annotation_text(
            &synth_vocab(layout),
            task,
            &labels[..n],
            &missing[task.index()],
            &no_jpg,
        );
        let path = out
            .join(task_folder(layout, task, v.split))
            .join(format!("{}.txt", v.name));
        io(&path, std::fs::write(&path, text))?;
        tasks[task.index()] = Some(rep);
    }
    Ok(VideoOutcome {
        split: v.split,
        tasks,
        jpgs,
        extra: v.extra_jpgs as u64,
    })
}

/// The file text of one task in the headers of `vocab` (the 2020 vocabulary or the 2022+
/// one, see [`synth_vocab`]) and what it holds.
fn annotation_text(
    vocab: &Vocab,
    task: Task,
    labels: &[FaceLabels],
    missing: &[bool],
    no_jpg: &[bool],
) -> (String, SynthTaskReport) {
    let n_au = vocab.au_names.len();
    let au_of = |l: &FaceLabels, k: usize| -> bool {
        if n_au == AUS_2022.len() {
            l.au[AU_SOURCE_2022[k]]
        } else {
            l.au[k]
        }
    };
    let mut s = String::with_capacity(labels.len() * 18 + 64);
    let mut rep = SynthTaskReport {
        videos: 1,
        annotation_lines: labels.len() as u64,
        ..SynthTaskReport::default()
    };
    rep.counts = match task {
        Task::Va => Vec::new(),
        Task::Au => vec![0; n_au],
        Task::Expr => vec![0; vocab.expr_names.len()],
    };
    s.push_str(&match task {
        Task::Va => "valence,arousal".to_string(),
        Task::Au => vocab.au_names.join(","),
        Task::Expr => vocab.expr_names.join(","),
    });
    s.push('\n');
    for (i, l) in labels.iter().enumerate() {
        let miss = missing[i];
        if no_jpg[i] {
            rep.missing_jpg += 1;
        } else if !miss {
            rep.labelled += 1;
        }
        let counted = !miss && !no_jpg[i];
        match task {
            Task::Va if miss => s.push_str("-5,-5"),
            Task::Va => {
                let _ = write!(s, "{:.3},{:.3}", l.va[0], l.va[1]);
            }
            Task::Au if miss => s.push_str(&vec!["-1"; n_au].join(",")),
            Task::Au => {
                for k in 0..n_au {
                    let a = au_of(l, k);
                    if k > 0 {
                        s.push(',');
                    }
                    s.push(if a { '1' } else { '0' });
                    if counted && a {
                        rep.counts[k] += 1;
                    }
                }
            }
            Task::Expr if miss => s.push_str("-1"),
            Task::Expr => {
                let _ = write!(s, "{}", l.expr);
                if counted {
                    rep.counts[l.expr as usize] += 1;
                }
            }
        }
        s.push('\n');
    }
    (s, rep)
}
