//! `mtanet predict` in each submission format, then `mtanet submit validate` on what it
//! wrote: every format passes on a synthetic set whose validation videos miss a crop (so
//! filled frames exist, and the report says they repeat the nearest frame with a crop), and
//! corrupted copies (a missing frame, a swapped row, a wrong header, an out-of-range value,
//! an extra column, a duplicated row, a bad class index, a non-numeric value, an empty file,
//! a missing task file, and in the multi-task file the AU decisions joined into one digit
//! string) each fail, naming the file and line. The synthetic set has the 2020
//! layout; the format is given explicitly.

use std::path::{Path, PathBuf};

use mtanet_affwild2::Split;
use mtanet_runner::predict::{self, PredictOptions, PredictTarget};
use mtanet_runner::submission::validate::{validate, Problem, ProblemKind, ValidateOptions};
use mtanet_runner::submission::SubmissionFormat;
use mtanet_runner::training::{self as train, RunContext};

mod support;

/// A one-step run on the 6-video synthetic set; returns (run dir, data root).
fn tiny_run(tmp: &Path) -> (PathBuf, PathBuf) {
    let config = support::tiny_config(
        &tmp.join("results"),
        &tmp.join("synth"),
        &[
            "training.stages=[{name: a, optimizer: adam, lr: 0.001, steps: 1, loss: sum}]",
            "training.checkpoint_every=1",
            "eval.every_steps=0",
        ],
    );
    let root = mtanet_runner::build::data::data_root(&config, true).unwrap();
    // Frame 2 of every validation video loses its crop: predict fills it.
    for e in std::fs::read_dir(root.join("annotations/VA_Set/Validation_Set")).unwrap() {
        let name = e.unwrap().file_name();
        let video = name.to_string_lossy().trim_end_matches(".txt").to_string();
        let _ = std::fs::remove_file(root.join("cropped_aligned").join(video).join("00002.jpg"));
    }
    let ctx = RunContext {
        quiet: true,
        ..Default::default()
    };
    let run = train::run(&config, &ctx).unwrap();
    assert!(run.finished);
    (run.run_dir, root)
}

fn predict_to(run: &Path, root: &Path, out: &Path, format: SubmissionFormat) {
    let opts = PredictOptions {
        checkpoint: run.to_path_buf(),
        config: None,
        root: Some(root.to_path_buf()),
        target: PredictTarget::Split(Split::Validation),
        out: out.to_path_buf(),
        videos: None,
        smooth: 0,
        tuned_thresholds: false,
        batch_size: None,
        device: None,
        quiet: true,
    };
    let s = predict::run_as(&opts, Some(format)).unwrap();
    assert!(s.filled > 0 && s.predicted > 0, "{s:?}");
}

fn vopts(root: &Path, format: SubmissionFormat, sample: Option<PathBuf>) -> ValidateOptions {
    ValidateOptions {
        format: Some(format),
        root: root.to_path_buf(),
        target: PredictTarget::Split(Split::Validation),
        sample,
        videos: None,
        max_shown: 5,
    }
}

/// Copies a folder tree.
fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let dst = to.join(e.file_name());
        if e.path().is_dir() {
            copy_tree(&e.path(), &dst);
        } else {
            std::fs::copy(e.path(), dst).unwrap();
        }
    }
}

/// Rewrites the lines of `path` (index 0 = the header).
fn edit(path: &Path, f: impl FnOnce(&mut Vec<String>)) {
    let mut lines: Vec<String> = std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(String::from)
        .collect();
    f(&mut lines);
    std::fs::write(path, lines.join("\n") + "\n").unwrap();
}

/// Replaces field `k` of line `line` (1-based) of `path`.
fn set_field(path: &Path, line: usize, k: usize, value: &str) {
    edit(path, |l| {
        let mut fields: Vec<String> = l[line - 1].split(',').map(String::from).collect();
        fields[k] = value.to_string();
        l[line - 1] = fields.join(",");
    });
}

/// One corrupted copy of `good`: `corrupt` edits it; the report must fail with a problem of
/// `kind` naming `file` at `line`; returns that problem.
#[allow(clippy::too_many_arguments)]
fn expect_failure(
    good: &Path,
    tmp: &Path,
    opts: &ValidateOptions,
    what: &str,
    corrupt: impl FnOnce(&Path),
    kind: ProblemKind,
    file: &str,
    line: Option<usize>,
) -> Problem {
    let dir = tmp.join(format!(
        "bad_{}_{}",
        opts.format.unwrap(),
        what.replace(' ', "_")
    ));
    copy_tree(good, &dir);
    corrupt(&dir);
    let r = validate(&dir, opts).unwrap();
    let text = r.to_string();
    assert!(!r.is_ok(), "{what}: passed\n{text}");
    let p = r
        .shown
        .iter()
        .find(|p| p.kind == kind)
        .unwrap_or_else(|| panic!("{what}: no {kind:?}\n{text}"));
    assert!(p.file.ends_with(file), "{what}: {p}");
    assert_eq!(p.line, line, "{what}: {p}\n{text}");
    let located = match line {
        Some(l) => format!("{file}:{l}:"),
        None => format!("{file}: "),
    };
    assert!(
        text.contains(&located),
        "{what}: {located:?} not in\n{text}"
    );
    assert!(text.contains(kind.name()), "{what}\n{text}");
    p.clone()
}

/// A corruption: its name, the edit, and the problem kind, file and line it must cause.
type Case<'a> = (
    &'a str,
    Box<dyn FnOnce(&Path)>,
    ProblemKind,
    &'a str,
    Option<usize>,
);

#[test]
fn every_format_round_trips_and_corruptions_fail_with_file_and_line() {
    let tmp = tempfile::tempdir().unwrap();
    let tmp = tmp.path();
    let (run, root) = tiny_run(tmp);

    for format in SubmissionFormat::ALL {
        let out = tmp.join(format!("pred_{format}"));
        predict_to(&run, &root, &out, format);
        let r = validate(&out, &vopts(&root, format, None)).unwrap();
        assert!(r.is_ok(), "{format}:\n{r}");
        assert!(r.rows > 0 && !r.fill.is_empty(), "{r}");
        for n in &r.fill {
            assert!(n.without_crop > 0, "{format}: {n:?}");
            assert_eq!(n.nearest, n.without_crop, "{format}: {n:?}");
        }
        assert!(r
            .to_string()
            .contains("filled from the nearest predicted frame"));
        // Another format's files are not this one's.
        let other = SubmissionFormat::ALL[(format as usize + 1) % 3];
        let r = validate(&out, &vopts(&root, other, None)).unwrap();
        assert!(r.counts.contains_key(&ProblemKind::MissingFile), "{r}");
    }

    // ABAW 2023, with the sample file (the rows' locations, in order): all ten corruptions.
    let good = tmp.join("pred_abaw2023");
    let (va, au, ex) = (
        "VA_Estimation_Challenge.txt",
        "AU_Detection_Challenge.txt",
        "EXPR_Classification_Challenge.txt",
    );
    let sample = tmp.join("sample.txt");
    let locations: Vec<String> = std::fs::read_to_string(good.join(va))
        .unwrap()
        .lines()
        .map(|l| format!("{},", l.split(',').next().unwrap()))
        .collect();
    std::fs::write(&sample, locations.join("\n") + "\n").unwrap();
    let o = vopts(&root, SubmissionFormat::Abaw2023, Some(sample.clone()));
    assert!(validate(&good, &o).unwrap().is_ok());
    use ProblemKind as K;
    let cases: Vec<Case> = vec![
        (
            "missing frame",
            Box::new(move |d| edit(&d.join(au), |l| drop(l.remove(3)))),
            K::MissingFrame,
            au,
            Some(4),
        ),
        (
            "swapped row",
            Box::new(move |d| edit(&d.join(au), |l| l.swap(2, 3))),
            K::Order,
            au,
            Some(4),
        ),
        (
            "wrong header",
            Box::new(move |d| edit(&d.join(au), |l| l[0] = l[0].replace("AU2,", "AU3,"))),
            K::Header,
            au,
            Some(1),
        ),
        (
            "out of range",
            Box::new(move |d| set_field(&d.join(va), 5, 1, "1.5")),
            K::OutOfRange,
            va,
            Some(5),
        ),
        (
            "extra column",
            Box::new(move |d| edit(&d.join(au), |l| l[5].push_str(",0"))),
            K::ColumnCount,
            au,
            Some(6),
        ),
        (
            "duplicated row",
            Box::new(move |d| {
                edit(&d.join(ex), |l| {
                    let row = l[2].clone();
                    l.insert(3, row)
                })
            }),
            K::Duplicate,
            ex,
            Some(4),
        ),
        (
            "bad class index",
            Box::new(move |d| set_field(&d.join(ex), 7, 1, "9")),
            K::ClassIndex,
            ex,
            Some(7),
        ),
        (
            "non-numeric",
            Box::new(move |d| set_field(&d.join(va), 8, 2, "abc")),
            K::NotANumber,
            va,
            Some(8),
        ),
        (
            "empty file",
            Box::new(move |d| std::fs::write(d.join(ex), "").unwrap()),
            K::EmptyFile,
            ex,
            Some(1),
        ),
        (
            "missing task file",
            Box::new(move |d| std::fs::remove_file(d.join(va)).unwrap()),
            K::MissingFile,
            va,
            None,
        ),
    ];
    for (what, corrupt, kind, file, line) in cases {
        expect_failure(&good, tmp, &o, what, corrupt, kind, file, line);
    }
    // Without the sample, a swap within a video is still out of order.
    let o = vopts(&root, SubmissionFormat::Abaw2023, None);
    let swap = |d: &Path| edit(&d.join(va), |l| l.swap(2, 3));
    expect_failure(&good, tmp, &o, "swap", swap, K::Order, va, Some(4));
    // A frame named in another padding (`video/3.jpg`) is not the organisers' form.
    let unpadded = |d: &Path| {
        edit(&d.join(va), |l| {
            let (loc, rest) = l[3].split_once(',').unwrap();
            let (video, file) = loc.rsplit_once('/').unwrap();
            let frame: u32 = file.strip_suffix(".jpg").unwrap().parse().unwrap();
            l[3] = format!("{video}/{frame}.jpg,{rest}");
        })
    };
    let p = expect_failure(
        &good,
        tmp,
        &o,
        "unpadded",
        unpadded,
        K::Location,
        va,
        Some(4),
    );
    assert!(p.message.contains("not in the form video/00001.jpg"), "{p}");
    // So is a sample file naming one that way: refused with its file and line.
    let loose_sample = tmp.join("sample_loose.txt");
    let mut rows = locations.clone();
    let (video, file) = rows[2].trim_end_matches(',').rsplit_once('/').unwrap();
    let frame: u32 = file.strip_suffix(".jpg").unwrap().parse().unwrap();
    rows[2] = format!("{video}/{frame}.jpg,");
    std::fs::write(&loose_sample, rows.join("\n") + "\n").unwrap();
    let o = vopts(&root, SubmissionFormat::Abaw2023, Some(loose_sample));
    let e = validate(&good, &o).unwrap_err().to_string();
    assert!(e.contains("sample_loose.txt:3:"), "{e}");

    // The multi-task file.
    let good = tmp.join("pred_mtl");
    let m = "MTL_Challenge.txt";
    let o = vopts(&root, SubmissionFormat::Mtl, None);
    // Each AU decision is its own field: 4 + 8 fields on this 2020-layout root.
    let text = std::fs::read_to_string(good.join(m)).unwrap();
    let row = text.lines().nth(1).unwrap();
    assert_eq!(row.split(',').count(), 12, "{row}");
    let au_two = |d: &Path| {
        edit(&d.join(m), |l| {
            l[4].pop();
            l[4].push('2');
        })
    };
    expect_failure(&good, tmp, &o, "aus", au_two, K::OutOfRange, m, Some(5));
    // The AU decisions joined into one digit string are refused, naming the field.
    let joined = |d: &Path| {
        edit(&d.join(m), |l| {
            let fields: Vec<&str> = l[6].split(',').collect();
            l[6] = format!("{},{}", fields[..4].join(","), fields[4..].concat());
        })
    };
    let p = expect_failure(&good, tmp, &o, "joined", joined, K::ColumnCount, m, Some(7));
    assert!(
        p.message.contains("field 5 (aus)") && p.message.contains("one string"),
        "{p}"
    );
    let extra = |d: &Path| edit(&d.join(m), |l| l[2].push_str(",1"));
    expect_failure(&good, tmp, &o, "extra", extra, K::ColumnCount, m, Some(3));
    let class = |d: &Path| set_field(&d.join(m), 6, 3, "8");
    expect_failure(&good, tmp, &o, "class", class, K::ClassIndex, m, Some(6));
    let missing = |d: &Path| edit(&d.join(m), |l| drop(l.remove(2)));
    expect_failure(
        &good,
        tmp,
        &o,
        "missing",
        missing,
        K::MissingFrame,
        m,
        Some(3),
    );
    let header = |d: &Path| edit(&d.join(m), |l| l[0] = "image,valence,arousal".into());
    expect_failure(&good, tmp, &o, "header", header, K::Header, m, Some(1));

    // ABAW 2020: one file per video and task, line k + 1 = frame k.
    let good = tmp.join("pred_abaw2020");
    let o = vopts(&root, SubmissionFormat::Abaw2020, None);
    let video = std::fs::read_dir(good.join("AU_Set"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .min()
        .unwrap();
    let f = |t: &str| format!("{t}/{video}");
    let au_file = f("AU_Set");
    let n = std::fs::read_to_string(good.join(&au_file))
        .unwrap()
        .lines()
        .count();
    let truncate = |d: &Path| edit(&d.join(f("AU_Set")), |l| drop(l.pop()));
    expect_failure(
        &good,
        tmp,
        &o,
        "short",
        truncate,
        K::MissingFrame,
        &au_file,
        Some(n),
    );
    let dup = |d: &Path| {
        edit(&d.join(f("AU_Set")), |l| {
            let row = l[1].clone();
            l.insert(1, row)
        })
    };
    expect_failure(
        &good,
        tmp,
        &o,
        "dup",
        dup,
        K::ExtraRow,
        &au_file,
        Some(n + 1),
    );
    let range = |d: &Path| set_field(&d.join(f("AU_Set")), 3, 0, "2");
    expect_failure(
        &good,
        tmp,
        &o,
        "range",
        range,
        K::OutOfRange,
        &au_file,
        Some(3),
    );
    let ex_file = f("EXPR_Set");
    let class = |d: &Path| set_field(&d.join(f("EXPR_Set")), 4, 0, "-2");
    expect_failure(
        &good,
        tmp,
        &o,
        "class",
        class,
        K::ClassIndex,
        &ex_file,
        Some(4),
    );
    let va_file = f("VA_Set");
    let gone = |d: &Path| std::fs::remove_file(d.join(f("VA_Set"))).unwrap();
    expect_failure(&good, tmp, &o, "gone", gone, K::MissingFile, &va_file, None);
}
