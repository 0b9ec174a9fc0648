//! `mtanet submit validate`: checks a prediction folder in one [`SubmissionFormat`] against
//! the frames `mtanet predict` writes for a root's split (or the test set, or the rows of the
//! organisers' sample file), and reports every problem by file and line.
//!
//! Checked: every task file exists and is not empty; its header is the format's, with the
//! names of the root's annotation headers (else the format's ABAW vocabulary); every row has
//! the format's column count; values are in range (valence and arousal numbers in `[-1, 1]`,
//! AUs 0 or 1, one expression index below the class count); every expected frame has exactly
//! one row; rows follow the sample file's order when one is given (else each video's frames
//! ascend). The report also counts, per task file, the frames without a face crop and how many
//! of their rows repeat the row of the nearest frame with a crop (the earlier one on ties),
//! which is how `mtanet predict` fills them.

use std::collections::{BTreeMap, HashMap};
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};

use mtanet_affwild2::layout::{discover, CROPS_DIR};
use mtanet_affwild2::{Crops, Task, Vocab};

use super::abaw2020::{header_line, prediction_path};
use super::abaw2023::{self, parse_image_location};
use super::{mtl, video_crops, SubmissionFormat};
use crate::predict::default_vocab;
use crate::predict::plan::{plan_videos, read_video_list, root_vocab};
use crate::predict::PredictTarget;

/// What kind of problem a row or file has.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ProblemKind {
    /// A task file is missing.
    MissingFile,
    /// A task file is empty (no header).
    EmptyFile,
    /// The header is not the format's.
    Header,
    /// A row has another number of columns.
    ColumnCount,
    /// A value is not a number.
    NotANumber,
    /// A number is out of its range (VA outside `[-1, 1]`, an AU other than 0/1).
    OutOfRange,
    /// An expression index that is not a class index.
    ClassIndex,
    /// An `image_location` that is malformed or names no expected frame.
    Location,
    /// A frame with a second row.
    Duplicate,
    /// A row out of order.
    Order,
    /// An expected frame without a row.
    MissingFrame,
    /// A row past the video's last frame (ABAW 2020 files).
    ExtraRow,
}

impl ProblemKind {
    /// A short name for the report.
    pub fn name(self) -> &'static str {
        match self {
            ProblemKind::MissingFile => "missing file",
            ProblemKind::EmptyFile => "empty file",
            ProblemKind::Header => "wrong header",
            ProblemKind::ColumnCount => "wrong column count",
            ProblemKind::NotANumber => "not a number",
            ProblemKind::OutOfRange => "value out of range",
            ProblemKind::ClassIndex => "bad class index",
            ProblemKind::Location => "bad image location",
            ProblemKind::Duplicate => "duplicated frame",
            ProblemKind::Order => "out of order",
            ProblemKind::MissingFrame => "missing frame",
            ProblemKind::ExtraRow => "extra row",
        }
    }
}

/// One problem: its kind, the file, the 1-based line (none for a missing file) and what is
/// wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The kind.
    pub kind: ProblemKind,
    /// The file at fault.
    pub file: PathBuf,
    /// Its 1-based line, when the problem has one.
    pub line: Option<usize>,
    /// What is wrong.
    pub message: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.line {
            Some(l) => write!(f, "{}:{l}: {}", self.file.display(), self.message),
            None => write!(f, "{}: {}", self.file.display(), self.message),
        }
    }
}

/// How the frames without a face crop of one task file were filled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FillNote {
    /// The task file (for ABAW 2020, the task folder).
    pub file: PathBuf,
    /// Expected frames.
    pub frames: usize,
    /// Of those, frames without a face crop.
    pub without_crop: usize,
    /// Of those, frames whose row repeats the row of the nearest frame with a crop.
    pub nearest: usize,
}

/// The result of [`validate`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidationReport {
    /// The format checked.
    pub format: SubmissionFormat,
    /// Task files read.
    pub files: usize,
    /// Data rows read.
    pub rows: usize,
    /// Problems per kind.
    pub counts: BTreeMap<ProblemKind, usize>,
    /// The first problems of each kind (at most the `max_shown` of [`ValidateOptions`]).
    pub shown: Vec<Problem>,
    /// Per task file, how frames without a crop were filled.
    pub fill: Vec<FillNote>,
    max_shown: usize,
}

impl ValidationReport {
    /// Whether no problem was found.
    pub fn is_ok(&self) -> bool {
        self.counts.is_empty()
    }

    /// All problems found.
    pub fn problems(&self) -> usize {
        self.counts.values().sum()
    }

    fn add(&mut self, kind: ProblemKind, file: &Path, line: Option<usize>, message: String) {
        let n = self.counts.entry(kind).or_default();
        *n += 1;
        if *n <= self.max_shown {
            self.shown.push(Problem {
                kind,
                file: file.to_path_buf(),
                line,
                message,
            });
        }
    }
}

impl std::fmt::Display for ValidationReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "{} submission: {} file(s), {} row(s)",
            self.format, self.files, self.rows
        )?;
        for n in &self.fill {
            write!(
                f,
                "{}: {} of {} frames have no face crop",
                n.file.display(),
                n.without_crop,
                n.frames
            )?;
            if n.without_crop > 0 {
                write!(
                    f,
                    "; {} of them repeat the row of the nearest frame with a crop",
                    n.nearest
                )?;
                if n.nearest == n.without_crop {
                    write!(f, " (filled from the nearest predicted frame)")?;
                } else {
                    write!(f, " (the others were filled another way, e.g. smoothed)")?;
                }
            }
            writeln!(f)?;
        }
        if self.is_ok() {
            return writeln!(f, "OK: no problem found");
        }
        writeln!(f, "INVALID: {} problem(s)", self.problems())?;
        for (kind, count) in &self.counts {
            writeln!(f, "{}: {count}", kind.name())?;
            for p in self.shown.iter().filter(|p| p.kind == *kind) {
                writeln!(f, "  {p}")?;
            }
            if *count > self.max_shown {
                writeln!(f, "  ... and {} more", count - self.max_shown)?;
            }
        }
        Ok(())
    }
}

/// Options of [`validate`].
#[derive(Debug, Clone)]
pub struct ValidateOptions {
    /// The format (default: that of the root's layout, [`SubmissionFormat::default_for`]).
    pub format: Option<SubmissionFormat>,
    /// The Aff-Wild2 root.
    pub root: PathBuf,
    /// The split (or test set) whose frames the submission must hold.
    pub target: PredictTarget,
    /// The organisers' sample file: the rows expected, in order (its first column, after an
    /// optional header).
    pub sample: Option<PathBuf>,
    /// A `video[,frames]` list, as `mtanet predict --videos` takes.
    pub videos: Option<PathBuf>,
    /// Problems shown per kind.
    pub max_shown: usize,
}

/// One expected video.
struct Video {
    name: String,
    /// Frames 1..=frames.
    frames: usize,
    /// Per frame (0-based), its position in the sample file, if one is given (`u32::MAX`:
    /// not in it).
    sample: Option<Vec<u32>>,
    crops: Crops,
}

impl Video {
    fn expected(&self, i: usize) -> bool {
        self.sample.as_ref().is_none_or(|s| s[i] != u32::MAX)
    }
}

/// A row seen: its 1-based line and a hash of its values.
type Seen = Option<(usize, u64)>;

/// What a row's values are checked as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Track {
    Task(Task),
    Mtl,
}

/// Checks the submission under `pred` (see the module doc).
pub fn validate(pred: &Path, opts: &ValidateOptions) -> anyhow::Result<ValidationReport> {
    let found = discover(&opts.root).ok();
    let format = opts
        .format
        .unwrap_or_else(|| SubmissionFormat::default_for(found.as_ref().map(|d| d.layout)));
    let mut vocab = match format {
        SubmissionFormat::Abaw2020 => Vocab::abaw2020(),
        _ => default_vocab(12, 8),
    };
    if let Some(found) = &found {
        let v = root_vocab(found)?;
        if !v.au_names.is_empty() {
            vocab.au_names = v.au_names;
        }
        if !v.expr_names.is_empty() {
            vocab.expr_names = v.expr_names;
        }
    }
    let videos = expected_videos(opts)?;
    let mut report = ValidationReport {
        format,
        files: 0,
        rows: 0,
        counts: BTreeMap::new(),
        shown: Vec::new(),
        fill: Vec::new(),
        max_shown: opts.max_shown.max(1),
    };
    match format {
        SubmissionFormat::Abaw2020 => {
            for task in [Task::Va, Task::Au, Task::Expr] {
                check_video_files(pred, task, &vocab, &videos, &mut report);
            }
        }
        SubmissionFormat::Abaw2023 => {
            for (task, name) in abaw2023::TRACK_FILES {
                let header = abaw2023::header_line(task, &vocab);
                let path = pred.join(name);
                check_row_file(
                    &path,
                    header.trim_end(),
                    Track::Task(task),
                    &vocab,
                    &videos,
                    &mut report,
                );
            }
        }
        SubmissionFormat::Mtl => {
            let path = pred.join(mtl::FILE_NAME);
            check_row_file(&path, mtl::HEADER, Track::Mtl, &vocab, &videos, &mut report);
        }
    }
    Ok(report)
}

/// The videos the submission must hold: those `mtanet predict` writes for the target (each
/// with its frame count), or those of the sample file.
fn expected_videos(opts: &ValidateOptions) -> anyhow::Result<Vec<Video>> {
    let crops_dir = opts.root.join(CROPS_DIR);
    let crops = |name: &str| video_crops(&crops_dir.join(name));
    if let Some(sample) = &opts.sample {
        let text = std::fs::read_to_string(sample)
            .map_err(|e| anyhow::anyhow!("reading {}: {e}", sample.display()))?;
        let mut order: Vec<(String, u32)> = Vec::new();
        for (i, raw) in text.lines().enumerate() {
            let first = raw.split(',').next().unwrap_or("").trim();
            match parse_image_location(first) {
                Some((v, f)) if f > 0 => order.push((v.to_string(), f)),
                _ if i == 0 || first.is_empty() => {}
                _ => anyhow::bail!(
                    "{}:{}: {first:?} is not an image location (video/00001.jpg)",
                    sample.display(),
                    i + 1
                ),
            }
        }
        let mut index: HashMap<String, usize> = HashMap::new();
        let mut videos: Vec<Video> = Vec::new();
        for (v, f) in &order {
            let k = *index.entry(v.clone()).or_insert_with(|| {
                videos.push(Video {
                    name: v.clone(),
                    frames: 0,
                    sample: Some(Vec::new()),
                    crops: Crops::default(),
                });
                videos.len() - 1
            });
            videos[k].frames = videos[k].frames.max(*f as usize);
        }
        for v in &mut videos {
            v.sample = Some(vec![u32::MAX; v.frames]);
            v.crops = crops(&v.name)?;
        }
        for (pos, (v, f)) in order.iter().enumerate() {
            if let Some(s) = videos[index[v]].sample.as_mut() {
                s[*f as usize - 1] = pos as u32;
            }
        }
        return Ok(videos);
    }
    let list = opts.videos.as_deref().map(read_video_list).transpose()?;
    let (planned, _) = plan_videos(&opts.root, &opts.target, list.as_deref())?;
    planned
        .into_iter()
        .map(|p| {
            let c = match p.crops {
                Some(c) => c,
                None => crops(&p.name)?,
            };
            Ok(Video {
                name: p.name,
                frames: p.frames,
                sample: None,
                crops: c,
            })
        })
        .collect()
}

fn hash_of(s: &str) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    s.hash(&mut h);
    h.finish()
}

/// The file's text, or the problem (missing, unreadable, empty) recorded in `report`.
fn read_text(path: &Path, report: &mut ValidationReport) -> Option<String> {
    if !path.is_file() {
        report.add(
            ProblemKind::MissingFile,
            path,
            None,
            "missing task file".into(),
        );
        return None;
    }
    let text = match std::fs::read(path) {
        Ok(b) => String::from_utf8_lossy(&b).into_owned(),
        Err(e) => {
            report.add(
                ProblemKind::MissingFile,
                path,
                None,
                format!("unreadable: {e}"),
            );
            return None;
        }
    };
    report.files += 1;
    if text.trim().is_empty() {
        report.add(
            ProblemKind::EmptyFile,
            path,
            Some(1),
            "empty file: no header, no rows".into(),
        );
        return None;
    }
    Some(text)
}

/// Checks the header (line 1) against `want`.
fn check_header(path: &Path, got: &str, want: &str, report: &mut ValidationReport) {
    if got.trim_end_matches('\r') != want {
        report.add(
            ProblemKind::Header,
            path,
            Some(1),
            format!("header {got:?}, expected {want:?}"),
        );
    }
}

/// Checks the value fields of one row; the first problem found.
fn check_values(track: Track, fields: &[&str], vocab: &Vocab) -> Option<(ProblemKind, String)> {
    let va = |name: &str, f: &str| -> Option<(ProblemKind, String)> {
        match f.trim().parse::<f64>() {
            Err(_) => Some((
                ProblemKind::NotANumber,
                format!("{name} {f:?} is not a number"),
            )),
            Ok(x) if !(x.is_finite() && (-1.0..=1.0).contains(&x)) => Some((
                ProblemKind::OutOfRange,
                format!("{name} {f} is outside [-1, 1]"),
            )),
            Ok(_) => None,
        }
    };
    let class = |f: &str| -> Option<(ProblemKind, String)> {
        let n = vocab.expr_names.len();
        match f.trim().parse::<i64>() {
            Ok(k) if k >= 0 && (k as u64) < n as u64 => None,
            Ok(k) => Some((
                ProblemKind::ClassIndex,
                format!(
                    "expression {k} is not a class index (0..{})",
                    n.saturating_sub(1)
                ),
            )),
            Err(_) if f.trim().parse::<f64>().is_ok() => Some((
                ProblemKind::ClassIndex,
                format!("expression {f:?} is not an integer class index"),
            )),
            Err(_) => Some((
                ProblemKind::NotANumber,
                format!("expression {f:?} is not a number"),
            )),
        }
    };
    let au = |name: &str, f: &str| -> Option<(ProblemKind, String)> {
        match f.trim() {
            "0" | "1" => None,
            t if t.parse::<f64>().is_ok() => {
                Some((ProblemKind::OutOfRange, format!("{name} {t} is not 0 or 1")))
            }
            _ => Some((
                ProblemKind::NotANumber,
                format!("{name} {f:?} is not a number"),
            )),
        }
    };
    match track {
        Track::Task(Task::Va) => va("valence", fields[0]).or_else(|| va("arousal", fields[1])),
        Track::Task(Task::Au) => vocab
            .au_names
            .iter()
            .zip(fields)
            .find_map(|(n, f)| au(n, f)),
        Track::Task(Task::Expr) => class(fields[0]),
        Track::Mtl => {
            let aus = fields[3].trim();
            let aus_problem = if aus.is_empty() || !aus.bytes().all(|b| b.is_ascii_digit()) {
                Some((
                    ProblemKind::NotANumber,
                    format!("aus {aus:?} is not a string of 0/1 digits"),
                ))
            } else if aus.len() != vocab.au_names.len()
                || !aus.bytes().all(|b| b == b'0' || b == b'1')
            {
                Some((
                    ProblemKind::OutOfRange,
                    format!(
                        "aus {aus:?} is not {} digits 0/1 ({})",
                        vocab.au_names.len(),
                        vocab.au_names.join(",")
                    ),
                ))
            } else {
                None
            };
            va("valence", fields[0])
                .or_else(|| va("arousal", fields[1]))
                .or_else(|| class(fields[2]))
                .or(aus_problem)
        }
    }
}

/// The value columns of a row of `track`.
fn value_columns(track: Track, vocab: &Vocab) -> usize {
    match track {
        Track::Task(Task::Va) => 2,
        Track::Task(Task::Au) => vocab.au_names.len(),
        Track::Task(Task::Expr) => 1,
        Track::Mtl => 4,
    }
}

/// ABAW 2020: the `task` file of every video, line k + 1 = frame k.
fn check_video_files(
    pred: &Path,
    task: Task,
    vocab: &Vocab,
    videos: &[Video],
    report: &mut ValidationReport,
) {
    let want = header_line(task, vocab);
    let track = Track::Task(task);
    let columns = value_columns(track, vocab);
    let mut seen_all: Vec<Vec<Seen>> = Vec::with_capacity(videos.len());
    let mut folder = None;
    for v in videos {
        let path = prediction_path(pred, task, &v.name);
        folder.get_or_insert_with(|| path.parent().map(Path::to_path_buf).unwrap_or_default());
        let mut seen: Vec<Seen> = vec![None; v.frames];
        if let Some(text) = read_text(&path, report) {
            let mut lines = text.lines().enumerate();
            if let Some((_, h)) = lines.next() {
                check_header(&path, h, want.trim_end(), report);
            }
            let mut last = 0;
            for (i, raw) in lines {
                let (line, frame) = (i + 1, i);
                last = frame;
                report.rows += 1;
                let raw = raw.trim_end_matches('\r');
                if frame > v.frames {
                    report.add(
                        ProblemKind::ExtraRow,
                        &path,
                        Some(line),
                        format!(
                            "row for frame {frame}, past the video's {} frames",
                            v.frames
                        ),
                    );
                    continue;
                }
                let fields: Vec<&str> = raw.split(',').collect();
                if fields.len() != columns {
                    report.add(
                        ProblemKind::ColumnCount,
                        &path,
                        Some(line),
                        format!("{} columns, expected {columns}", fields.len()),
                    );
                } else if let Some((kind, msg)) = check_values(track, &fields, vocab) {
                    report.add(kind, &path, Some(line), msg);
                }
                seen[frame - 1] = Some((line, hash_of(raw)));
            }
            if last < v.frames {
                report.add(
                    ProblemKind::MissingFrame,
                    &path,
                    Some(last + 2),
                    format!(
                        "ends after {last} frame row(s); frames {}..={} of {} are missing",
                        last + 1,
                        v.frames,
                        v.name
                    ),
                );
            }
        }
        seen_all.push(seen);
    }
    let file = folder.unwrap_or_else(|| pred.to_path_buf());
    report.fill.push(fill_note(file, videos, &seen_all));
}

/// ABAW 2023 track files and the multi-task file: one `image_location` row per frame.
fn check_row_file(
    path: &Path,
    header: &str,
    track: Track,
    vocab: &Vocab,
    videos: &[Video],
    report: &mut ValidationReport,
) {
    let Some(text) = read_text(path, report) else {
        return;
    };
    let index: HashMap<&str, usize> = videos
        .iter()
        .enumerate()
        .map(|(k, v)| (v.name.as_str(), k))
        .collect();
    let columns = 1 + value_columns(track, vocab);
    let mut seen: Vec<Vec<Seen>> = videos.iter().map(|v| vec![None; v.frames]).collect();
    // The previous row's position: its sample index (with a sample), else its frame per video.
    let mut last_sample: Option<(u32, usize, String)> = None;
    let mut last_frame: Vec<Option<(usize, usize)>> = vec![None; videos.len()];
    let mut lines = text.lines().enumerate();
    if let Some((_, h)) = lines.next() {
        check_header(path, h, header, report);
    }
    let mut last_line = 1;
    for (i, raw) in lines {
        let line = i + 1;
        last_line = line;
        report.rows += 1;
        let raw = raw.trim_end_matches('\r');
        let fields: Vec<&str> = raw.split(',').collect();
        let loc = fields[0].trim();
        let Some((v, f)) = parse_image_location(loc)
            .and_then(|(name, f)| index.get(name).map(|&v| (v, f as usize)))
            .filter(|&(v, f)| f >= 1 && f <= videos[v].frames && videos[v].expected(f - 1))
        else {
            report.add(
                ProblemKind::Location,
                path,
                Some(line),
                format!("{loc:?} is not an expected frame (video/00001.jpg)"),
            );
            continue;
        };
        if let Some((first, _)) = seen[v][f - 1] {
            report.add(
                ProblemKind::Duplicate,
                path,
                Some(line),
                format!("{loc} again (first on line {first})"),
            );
            continue;
        }
        let values = raw.split_once(',').map_or("", |(_, r)| r);
        seen[v][f - 1] = Some((line, hash_of(values)));
        let order = match &videos[v].sample {
            Some(s) => {
                let pos = s[f - 1];
                let out = match &last_sample {
                    Some((p, l, prev)) if *p > pos => Some(format!(
                        "{loc} (sample row {}) after {prev} (line {l}, sample row {})",
                        pos + 1,
                        p + 1
                    )),
                    _ => None,
                };
                last_sample = Some((pos, line, loc.to_string()));
                out
            }
            None => {
                let out = match last_frame[v] {
                    Some((pf, l)) if pf > f => Some(format!(
                        "{loc} after frame {pf} of the same video (line {l})"
                    )),
                    _ => None,
                };
                last_frame[v] = Some((f, line));
                out
            }
        };
        if let Some(msg) = order {
            report.add(ProblemKind::Order, path, Some(line), msg);
        }
        if fields.len() != columns {
            report.add(
                ProblemKind::ColumnCount,
                path,
                Some(line),
                format!("{} columns, expected {columns}", fields.len()),
            );
        } else if let Some((kind, msg)) = check_values(track, &fields[1..], vocab) {
            report.add(kind, path, Some(line), msg);
        }
    }
    for (v, video) in videos.iter().enumerate() {
        for i in 0..video.frames {
            if seen[v][i].is_some() || !video.expected(i) {
                continue;
            }
            // Where the row belongs: the line of the video's next row, else past its last.
            let next = seen[v][i..].iter().flatten().map(|s| s.0).next();
            let prev = seen[v][..i].iter().rev().flatten().map(|s| s.0).next();
            let line = next.or(prev.map(|l| l + 1)).unwrap_or(last_line + 1);
            report.add(
                ProblemKind::MissingFrame,
                path,
                Some(line),
                format!(
                    "no row for {}",
                    abaw2023::image_location(&video.name, i + 1)
                ),
            );
        }
    }
    report
        .fill
        .push(fill_note(path.to_path_buf(), videos, &seen));
}

/// Counts the frames without a crop and those whose row repeats the row of the nearest frame
/// with a crop (the earlier one on ties).
fn fill_note(file: PathBuf, videos: &[Video], seen: &[Vec<Seen>]) -> FillNote {
    let mut note = FillNote {
        file,
        frames: 0,
        without_crop: 0,
        nearest: 0,
    };
    for (v, rows) in videos.iter().zip(seen) {
        let with: Vec<usize> = v
            .crops
            .frames()
            .iter()
            .map(|&f| f as usize)
            .filter(|&f| f >= 1 && f <= v.frames)
            .map(|f| f - 1)
            .collect();
        for (i, row) in rows.iter().enumerate() {
            if !v.expected(i) {
                continue;
            }
            note.frames += 1;
            let k = with.partition_point(|&c| c < i);
            if with.get(k) == Some(&i) {
                continue;
            }
            note.without_crop += 1;
            let prev = k.checked_sub(1).map(|p| with[p]);
            let next = with.get(k).copied();
            let src = match (prev, next) {
                (Some(p), Some(n)) if i - p > n - i => Some(n),
                (Some(p), _) => Some(p),
                (None, n) => n,
            };
            let same = match (row, src.and_then(|s| rows[s])) {
                (Some((_, a)), Some((_, b))) => *a == b,
                _ => false,
            };
            note.nearest += usize::from(same);
        }
    }
    note
}
