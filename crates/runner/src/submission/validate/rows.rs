//! Reading and checking a submission's files: text, header, value ranges, the rows of each
//! frame, and the fill of frames without a crop.

use super::*;
use crate::submission::abaw2020::{header_line, prediction_path};
use crate::submission::abaw2023::{self, parse_image_location};
use mtanet_affwild2::{Task, Vocab};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// The file's text, or the problem (missing, unreadable, empty) recorded in `report`.
pub(super) fn read_text(path: &Path, report: &mut ValidationReport) -> Option<String> {
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
pub(super) fn check_header(path: &Path, got: &str, want: &str, report: &mut ValidationReport) {
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
pub(super) fn check_values(
    track: Track,
    fields: &[&str],
    vocab: &Vocab,
) -> Option<(ProblemKind, String)> {
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
        Track::Mtl => va("valence", fields[0])
            .or_else(|| va("arousal", fields[1]))
            .or_else(|| class(fields[2]))
            .or_else(|| {
                vocab
                    .au_names
                    .iter()
                    .zip(&fields[3..])
                    .find_map(|(n, f)| au(n, f))
            }),
    }
}
/// The value columns of a row of `track` (the multi-task row: valence, arousal, expression,
/// then one field per AU).
pub(super) fn value_columns(track: Track, vocab: &Vocab) -> usize {
    match track {
        Track::Task(Task::Va) => 2,
        Track::Task(Task::Au) => vocab.au_names.len(),
        Track::Task(Task::Expr) => 1,
        Track::Mtl => 3 + vocab.au_names.len(),
    }
}
/// What is wrong with a row of `fields` (the `image_location` first) when `columns` are
/// expected. A multi-task row of five fields whose last is a string of 0/1 digits holds the AU
/// decisions as one string (`...,3,010000000001`); that is named, with the field, as such.
pub(super) fn column_count_message(
    track: Track,
    fields: &[&str],
    columns: usize,
    vocab: &Vocab,
) -> String {
    if track == Track::Mtl && fields.len() == 5 && columns != 5 {
        let aus = fields[4].trim();
        if aus.len() > 1 && aus.bytes().all(|b| b == b'0' || b == b'1') {
            return format!(
                "field 5 (aus) {aus:?} holds the AU decisions as one string; a row has one 0/1 \
                 field per AU ({}), {columns} fields in all",
                vocab.au_names.join(",")
            );
        }
    }
    format!("{} columns, expected {columns}", fields.len())
}
/// ABAW 2020: the `task` file of every video, line k + 1 = frame k.
pub(super) fn check_video_files(
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
pub(super) fn check_row_file(
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
            let msg = match abaw2023::loose_image_location(loc) {
                Some((name, f)) if f >= 1 && parse_image_location(loc).is_none() => format!(
                    "{loc:?} is not in the form video/00001.jpg (frame {f} of {name} is {})",
                    abaw2023::image_location(name, f as usize)
                ),
                _ => format!("{loc:?} is not an expected frame (video/00001.jpg)"),
            };
            report.add(ProblemKind::Location, path, Some(line), msg);
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
                column_count_message(track, &fields, columns, vocab),
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
pub(super) fn fill_note(file: PathBuf, videos: &[Video], seen: &[Vec<Seen>]) -> FillNote {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn vocab() -> Vocab {
        Vocab {
            au_names: [1, 2, 4, 6, 7, 10, 12, 15, 23, 24, 25, 26]
                .iter()
                .map(|k| format!("AU{k}"))
                .collect(),
            expr_names: (0..8).map(|k| format!("E{k}")).collect(),
        }
    }

    /// `image_location,valence,arousal,expression` then the given AU fields.
    fn mtl_row(aus: &[&str]) -> String {
        format!("v/00001.jpg,0.1,-0.2,3,{}", aus.join(","))
    }

    #[test]
    fn mtl_rows_have_one_field_per_au() {
        let v = vocab();
        assert_eq!(1 + value_columns(Track::Mtl, &v), 16);
        let ok = ["0", "1", "0", "0", "0", "0", "0", "0", "0", "0", "0", "1"];
        let row = mtl_row(&ok);
        let fields: Vec<&str> = row.split(',').collect();
        assert_eq!(fields.len(), 16);
        assert_eq!(check_values(Track::Mtl, &fields[1..], &v), None);

        let mut two = ok;
        two[11] = "2";
        let row = mtl_row(&two);
        let fields: Vec<&str> = row.split(',').collect();
        let (kind, msg) = check_values(Track::Mtl, &fields[1..], &v).unwrap();
        assert_eq!(kind, ProblemKind::OutOfRange);
        assert!(msg.contains("AU26"), "{msg}");

        let mut word = ok;
        word[0] = "yes";
        let row = mtl_row(&word);
        let fields: Vec<&str> = row.split(',').collect();
        let (kind, msg) = check_values(Track::Mtl, &fields[1..], &v).unwrap();
        assert_eq!(kind, ProblemKind::NotANumber);
        assert!(msg.contains("AU1 "), "{msg}");
    }

    #[test]
    fn mtl_aus_as_one_digit_string_are_named_as_such() {
        let v = vocab();
        let columns = 1 + value_columns(Track::Mtl, &v);
        let row = "v/00001.jpg,0.1,-0.2,3,010000000001";
        let fields: Vec<&str> = row.split(',').collect();
        let msg = column_count_message(Track::Mtl, &fields, columns, &v);
        assert!(msg.starts_with("field 5 (aus) \"010000000001\""), "{msg}");
        assert!(msg.contains("one string"), "{msg}");
        assert!(msg.contains("16 fields"), "{msg}");
        assert!(msg.contains("AU1,AU2,AU4"), "{msg}");

        // Any other count is reported as a plain count.
        let row = "v/00001.jpg,0.1,-0.2,3,0,1";
        let fields: Vec<&str> = row.split(',').collect();
        let msg = column_count_message(Track::Mtl, &fields, columns, &v);
        assert_eq!(msg, "6 columns, expected 16");
        let row = "v/00001.jpg,0.1,-0.2,3,x1";
        let fields: Vec<&str> = row.split(',').collect();
        let msg = column_count_message(Track::Mtl, &fields, columns, &v);
        assert_eq!(msg, "5 columns, expected 16");
    }
}
