//! The frame index on small hand-written trees: layouts, joins, counts, and bad input.

use std::path::Path;

use mtanet_affwild2::{
    CrossTaskOverlap, DataError, DatasetIndex, IndexOptions, Layout, Split, Task,
};

const VA_H: &str = "valence,arousal\n";
const AU_H: &str = "AU1,AU2,AU4,AU6,AU12,AU15,AU20,AU25\n";
const EXPR_H: &str = "Neutral,Anger,Disgust,Fear,Happiness,Sadness,Surprise\n";

fn write(root: &Path, rel: &str, text: &str) {
    let p = root.join(rel);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, text).unwrap();
}

fn jpgs(root: &Path, video: &str, frames: &[u32]) {
    let d = root.join("cropped_aligned").join(video);
    std::fs::create_dir_all(&d).unwrap();
    for f in frames {
        std::fs::write(d.join(format!("{f:05}.jpg")), b"not decoded by the index").unwrap();
    }
}

/// A 2020 tree: video `a` in all tasks (train), `b_left`/`b_right` (validation, VA+EXPR),
/// `c` train for AU but validation for EXPR (cross-task overlap).
fn tree2020(root: &Path) {
    write(
        root,
        "annotations/VA_Set/Training_Set/a.txt",
        &format!("{VA_H}0.1,0.2\n-5,-5\n0.3,0.4\n0.5,0.6\n"),
    );
    write(
        root,
        "annotations/AU_Set/Training_Set/a.txt",
        &format!(
            "{AU_H}1,0,0,0,1,0,0,0\n0,0,0,0,0,0,0,1\n-1,-1,-1,-1,-1,-1,-1,-1\n0,1,0,0,0,0,0,0\n"
        ),
    );
    write(
        root,
        "annotations/EXPR_Set/Training_Set/a.txt",
        &format!("{EXPR_H}4\n4\n-1\n0\n"),
    );
    jpgs(root, "a", &[1, 2, 3, 5, 6]); // frame 4 missing; 5, 6 past the annotations
    write(
        root,
        "annotations/VA_Set/Validation_Set/b_left.txt",
        &format!("{VA_H}0.0,0.0\n0.5,-0.5\n"),
    );
    write(
        root,
        "annotations/VA_Set/Validation_Set/b_right.txt",
        &format!("{VA_H}-0.5,0.5\n"),
    );
    write(
        root,
        "annotations/EXPR_Set/Validation_Set/b_left.txt",
        &format!("{EXPR_H}6\n5\n"),
    );
    jpgs(root, "b_left", &[1, 2]);
    jpgs(root, "b_right", &[1]);
    write(
        root,
        "annotations/AU_Set/Training_Set/c.txt",
        &format!("{AU_H}0,0,1,0,0,0,0,0\n0,0,1,0,0,0,0,0\n"),
    );
    write(
        root,
        "annotations/EXPR_Set/Validation_Set/c.txt",
        &format!("{EXPR_H}1\n1\n"),
    );
    jpgs(root, "c", &[1, 2]);
    jpgs(root, "test-only", &[1, 2, 3]);
}

#[test]
fn joins_tasks_by_video_and_frame() {
    let dir = tempfile::tempdir().unwrap();
    tree2020(dir.path());
    let idx = DatasetIndex::load(dir.path(), &IndexOptions::default()).unwrap();
    assert_eq!(idx.layout, Layout::Abaw2020);
    assert_eq!(idx.vocab.au_names.len(), 8);
    assert_eq!(idx.vocab.expr_names.len(), 7);
    let train = idx.samples(Split::Train);
    let ids: Vec<(String, u32)> = train.iter().map(|s| (s.video.clone(), s.frame)).collect();
    // a/2: VA missing but AU+EXPR labelled; a/3: only VA; a/4: no jpg.
    assert_eq!(
        ids,
        [
            ("a".into(), 1),
            ("a".into(), 2),
            ("a".into(), 3),
            ("c".into(), 1),
            ("c".into(), 2)
        ]
    );
    assert_eq!(train[0].va, Some([0.1, 0.2]));
    assert_eq!(train[0].au.as_deref(), Some(&[1, 0, 0, 0, 1, 0, 0, 0][..]));
    assert_eq!(train[0].expr, Some(4));
    assert_eq!((train[1].va, train[1].expr), (None, Some(4)));
    assert_eq!(
        (train[2].va, train[2].au.is_none(), train[2].expr),
        (Some([0.3, 0.4]), true, None)
    );
    assert!(train[0].jpg.ends_with("cropped_aligned/a/00001.jpg"));
    assert_eq!(
        (train[3].au.is_some(), train[3].expr),
        (true, None),
        "c's EXPR is validation"
    );
    let val = idx.samples(Split::Validation);
    let vids: Vec<&str> = val.iter().map(|s| s.video.as_str()).collect();
    assert_eq!(
        vids,
        ["b_left", "b_left", "b_right", "c", "c"],
        "left/right are separate videos"
    );
    assert_eq!((val[1].va, val[1].expr), (Some([0.5, -0.5]), Some(5)));

    let st = idx.stats();
    assert_eq!(
        (
            st.train.va.videos,
            st.train.va.frames,
            st.train.va.labelled,
            st.train.va.missing_jpg
        ),
        (1, 4, 2, 1)
    );
    assert_eq!(
        (
            st.train.au.videos,
            st.train.au.frames,
            st.train.au.labelled,
            st.train.au.missing_jpg
        ),
        (2, 6, 4, 1)
    );
    assert_eq!((st.train.expr.videos, st.train.expr.labelled), (1, 2));
    assert_eq!(
        (st.validation.expr.videos, st.validation.expr.labelled),
        (2, 4)
    );
    assert_eq!(st.train.samples, 5);
    assert_eq!(st.validation.videos, 3);
    let hist = st.validation.expr.expr_histogram.as_ref().unwrap();
    assert_eq!(
        hist.iter().map(|(_, c)| *c).collect::<Vec<_>>(),
        [0, 2, 0, 0, 0, 1, 1]
    );
    let rates = st.train.au.au_positive_rate.as_ref().unwrap();
    assert_eq!(
        rates[2],
        ("AU4".to_string(), 0.5),
        "AU4 on in c's 2 of 4 labelled frames"
    );
    let m = st.train.va.va_mean.unwrap();
    assert!((m[0] - 0.2).abs() < 1e-6 && (m[1] - 0.3).abs() < 1e-6);
    let sd = st.train.va.va_std.unwrap();
    assert!((sd[0] - 0.1).abs() < 1e-6);
    assert_eq!(st.cross_task_overlap.videos, 1);
    assert_eq!(st.cross_task_overlap.names, ["c"]);
    assert_eq!(st.jpgs, 10);
    assert_eq!(st.unannotated_jpgs, 2);
    assert_eq!(st.unannotated_videos, 1);

    let json: serde_json::Value = serde_json::to_value(&st).unwrap();
    for split in ["train", "validation"] {
        for task in ["va", "au", "expr"] {
            for key in ["videos", "frames", "labelled", "missing_jpg"] {
                assert!(json[split][task][key].is_u64(), "{split}.{task}.{key}");
            }
        }
    }
    let text = st.to_string();
    assert!(
        text.contains("cross-task overlap (allow): 1 videos"),
        "{text}"
    );
    assert!(text.contains("train: 2 videos, 5 samples"), "{text}");
}

#[test]
fn cross_task_overlap_exclude_drops_training_frames() {
    let dir = tempfile::tempdir().unwrap();
    tree2020(dir.path());
    let opts = IndexOptions {
        cross_task_overlap: CrossTaskOverlap::Exclude,
        ..IndexOptions::default()
    };
    let idx = DatasetIndex::load(dir.path(), &opts).unwrap();
    assert!(idx.samples(Split::Train).iter().all(|s| s.video != "c"));
    assert!(
        idx.samples(Split::Validation)
            .iter()
            .any(|s| s.video == "c"),
        "validation kept"
    );
    let st = idx.stats();
    assert_eq!(st.cross_task_overlap.excluded_train_samples, 2);
    assert_eq!(st.train.au.videos, 1);
}

#[test]
fn layout_2021_with_twelve_aus() {
    let dir = tempfile::tempdir().unwrap();
    let r = dir.path();
    let au12 = "AU1,AU2,AU4,AU6,AU7,AU10,AU12,AU15,AU23,AU24,AU25,AU26\n";
    write(
        r,
        "annotations/AU_Set/Train_Set/v1.txt",
        &format!("{au12}1,0,0,0,0,0,0,0,0,0,0,1\n"),
    );
    write(
        r,
        "annotations/AU_Set/Validation_Set/v2.txt",
        &format!("{au12}0,0,0,0,0,0,0,0,0,0,0,0\n"),
    );
    write(
        r,
        "annotations/VA_Set/Train_Set/v1.txt",
        &format!("{VA_H}0,0\n"),
    );
    jpgs(r, "v1", &[1]);
    jpgs(r, "v2", &[1]);
    let idx = DatasetIndex::load(r, &IndexOptions::default()).unwrap();
    assert_eq!(idx.layout, Layout::Abaw2021);
    assert_eq!(idx.vocab.au_names.len(), 12);
    assert!(idx.vocab.expr_names.is_empty(), "no EXPR task");
    assert_eq!(idx.samples(Split::Train)[0].au.as_ref().unwrap().len(), 12);
    assert_eq!(idx.samples(Split::Validation).len(), 1);
}

#[test]
fn layout_2022_challenge_folders_with_other() {
    let dir = tempfile::tempdir().unwrap();
    let r = dir.path();
    let base = "6th ABAW Annotations";
    let ex8 = "Neutral,Anger,Disgust,Fear,Happiness,Sadness,Surprise,Other\n";
    write(
        r,
        &format!("{base}/EXPR_Classification_Challenge/Train_Set/x.txt"),
        &format!("{ex8}7\n0\n"),
    );
    write(
        r,
        &format!("{base}/VA_Estimation_Challenge/Validation_Set/y.txt"),
        &format!("{VA_H}0.2,0.1\n"),
    );
    write(
        r,
        &format!("{base}/AU_Detection_Challenge/Train_Set/x.txt"),
        &format!("{AU_H}0,0,0,0,0,0,0,1\n-1,-1,-1,-1,-1,-1,-1,-1\n"),
    );
    jpgs(r, "x", &[1, 2]);
    jpgs(r, "y", &[1]);
    let idx = DatasetIndex::load(r, &IndexOptions::default()).unwrap();
    assert_eq!(idx.layout, Layout::Abaw2022);
    assert_eq!(idx.vocab.expr_names.len(), 8);
    assert_eq!(idx.samples(Split::Train)[0].expr, Some(7));
    assert_eq!(idx.samples(Split::Train)[1].au, None);
    assert_eq!(idx.samples(Split::Validation)[0].va, Some([0.2, 0.1]));
}

#[test]
fn crlf_and_bom_files_load() {
    let dir = tempfile::tempdir().unwrap();
    let r = dir.path();
    write(
        r,
        "annotations/VA_Set/Training_Set/v.txt",
        "\u{FEFF}valence,arousal\r\n0.25,-0.25\r\n",
    );
    jpgs(r, "v", &[1]);
    let idx = DatasetIndex::load(r, &IndexOptions::default()).unwrap();
    assert_eq!(idx.samples(Split::Train)[0].va, Some([0.25, -0.25]));
}

fn load_err(r: &Path) -> (DataError, String) {
    let e = DatasetIndex::load(r, &IndexOptions::default()).unwrap_err();
    let m = e.to_string();
    (e, m)
}

/// A crop folder numbered from 0 (`00000.jpg`) is refused naming the file, instead of
/// pairing every crop with the labels of the next frame.
#[test]
fn a_crop_of_frame_zero_is_refused_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    tree2020(dir.path());
    let zero = dir.path().join("cropped_aligned/b_left/00000.jpg");
    std::fs::write(&zero, b"not decoded by the index").unwrap();
    let (e, m) = load_err(dir.path());
    assert!(matches!(&e, DataError::CropFrameZero { .. }), "{e:?}");
    assert_eq!(e.path(), Some(zero.as_path()));
    assert!(m.contains(&zero.display().to_string()), "{m}");
}

#[test]
fn headers_that_disagree_within_a_task() {
    let dir = tempfile::tempdir().unwrap();
    let r = dir.path();
    write(
        r,
        "annotations/AU_Set/Training_Set/a.txt",
        &format!("{AU_H}0,0,0,0,0,0,0,0\n"),
    );
    write(
        r,
        "annotations/AU_Set/Validation_Set/b.txt",
        "AU1,AU2\n0,0\n",
    );
    jpgs(r, "a", &[1]);
    let (e, m) = load_err(r);
    assert!(matches!(e, DataError::VocabMismatch { line: 1, .. }), "{m}");
    assert!(m.contains("Validation_Set/b.txt:1: header"), "{m}");
    assert!(
        m.contains("Training_Set/a.txt"),
        "names the first file: {m}"
    );
}

#[test]
fn video_in_two_splits_of_one_task() {
    let dir = tempfile::tempdir().unwrap();
    let r = dir.path();
    write(
        r,
        "annotations/VA_Set/Training_Set/a.txt",
        &format!("{VA_H}0,0\n"),
    );
    write(
        r,
        "annotations/VA_Set/Validation_Set/a.txt",
        &format!("{VA_H}0,0\n"),
    );
    jpgs(r, "a", &[1]);
    let (e, m) = load_err(r);
    assert!(matches!(e, DataError::DuplicateVideo { .. }), "{m}");
    assert!(
        m.contains("Training_Set/a.txt") && m.contains("Validation_Set/a.txt"),
        "{m}"
    );
}

#[test]
fn bad_value_inside_a_tree_names_file_line_field() {
    let dir = tempfile::tempdir().unwrap();
    let r = dir.path();
    let mut text = String::from(VA_H);
    for _ in 0..15 {
        text.push_str("0.1,0.1\n");
    }
    text.push_str("0.1,abc\n");
    write(r, "annotations/VA_Set/Training_Set/12-24.txt", &text);
    jpgs(r, "12-24", &[1]);
    let (e, m) = load_err(r);
    assert!(
        matches!(
            e,
            DataError::NotANumber {
                line: 17,
                field: 2,
                ..
            }
        ),
        "{m}"
    );
    assert!(
        m.ends_with("annotations/VA_Set/Training_Set/12-24.txt:17: field 2 (arousal): \"abc\" is not a number"),
        "{m}"
    );
    assert_eq!(e.line(), Some(17));
    assert!(e.path().unwrap().ends_with("12-24.txt"));
}

#[test]
fn empty_file_and_missing_layout() {
    let dir = tempfile::tempdir().unwrap();
    let r = dir.path();
    let (e, _) = load_err(r);
    assert!(
        matches!(e, DataError::Layout { .. }),
        "no annotations at all"
    );
    write(r, "annotations/EXPR_Set/Training_Set/e.txt", "");
    let (e, m) = load_err(r);
    assert!(
        matches!(e, DataError::EmptyFile { .. } | DataError::Layout { .. }),
        "{m}"
    );
    std::fs::create_dir_all(r.join("cropped_aligned")).unwrap();
    let (e, m) = load_err(r);
    assert!(matches!(e, DataError::EmptyFile { .. }), "{m}");
    assert!(
        m.contains("EXPR_Set/Training_Set/e.txt:1: empty file"),
        "{m}"
    );
}

#[test]
fn three_set_folders_at_the_root_also_load() {
    let dir = tempfile::tempdir().unwrap();
    let r = dir.path();
    write(r, "VA_Set/Training_Set/v.txt", &format!("{VA_H}0.5,0.5\n"));
    jpgs(r, "v", &[1]);
    let idx = DatasetIndex::load(r, &IndexOptions::default()).unwrap();
    assert_eq!(idx.samples(Split::Train).len(), 1);
}

#[test]
fn a_root_without_one_tasks_annotations_names_the_root_task_and_folder() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let ann = root.join("annotations");
    for (task, header, line) in [
        ("VA_Set", "valence,arousal", "0.1,0.2"),
        (
            "EXPR_Set",
            "Neutral,Anger,Disgust,Fear,Happiness,Sadness,Surprise",
            "3",
        ),
    ] {
        for split in ["Training_Set", "Validation_Set"] {
            let d = ann.join(task).join(split);
            std::fs::create_dir_all(&d).unwrap();
            let v = if split == "Training_Set" { "t1" } else { "v1" };
            std::fs::write(
                d.join(format!("{v}.txt")),
                format!("{header}\n{line}\n{line}\n"),
            )
            .unwrap();
        }
    }
    for v in ["t1", "v1"] {
        let d = root.join("cropped_aligned").join(v);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("00001.jpg"), b"").unwrap();
    }
    let idx = DatasetIndex::load(root, &IndexOptions::default()).unwrap();
    let e = idx.require_every_task().unwrap_err();
    assert!(
        matches!(e, DataError::MissingTask { task: Task::Au, .. }),
        "{e:?}"
    );
    let m = e.to_string();
    assert!(m.contains(&root.display().to_string()), "{m}");
    assert!(m.contains("annotations/AU_Set/Training_Set"), "{m}");
    assert!(m.contains("AU") && m.contains("train split"), "{m}");
}

/// Two folders holding task folders (two releases in one root) are refused naming both,
/// instead of training on whichever sorts first.
#[test]
fn two_annotation_folders_in_one_root_are_refused_naming_both() {
    let dir = tempfile::tempdir().unwrap();
    let r = dir.path();
    for base in ["5th ABAW Annotations", "6th ABAW Annotations"] {
        write(
            r,
            &format!("{base}/VA_Estimation_Challenge/Train_Set/x.txt"),
            &format!("{VA_H}0.2,0.1\n"),
        );
    }
    jpgs(r, "x", &[1]);
    let (e, m) = load_err(r);
    assert!(matches!(&e, DataError::Layout { .. }), "{e:?}");
    assert!(
        m.contains("5th ABAW Annotations") && m.contains("6th ABAW Annotations"),
        "{m}"
    );
    // One release reached twice (`annotations` a link to it) is one folder.
    std::fs::remove_dir_all(r.join("5th ABAW Annotations")).unwrap();
    std::os::unix::fs::symlink(r.join("6th ABAW Annotations"), r.join("annotations")).unwrap();
    let idx = DatasetIndex::load(r, &IndexOptions::default()).unwrap();
    assert_eq!(idx.layout, Layout::Abaw2022);
}

/// A split folder spelled otherwise (`Validation_set`) is refused naming it, instead of its
/// files being left unread and the task never evaluated.
#[test]
fn a_misspelled_split_folder_is_refused_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    tree2020(dir.path());
    write(
        dir.path(),
        "annotations/AU_Set/Validation_set/b_left.txt",
        &format!("{AU_H}0,0,1,0,0,0,0,0\n"),
    );
    let (e, m) = load_err(dir.path());
    assert!(matches!(&e, DataError::Layout { .. }), "{e:?}");
    assert!(
        m.contains("Validation_set") && m.contains("Validation_Set"),
        "{m}"
    );
    let au = dir.path().join("annotations/AU_Set");
    std::fs::rename(au.join("Validation_set"), au.join("Val_Set")).unwrap();
    let (_, m) = load_err(dir.path());
    assert!(m.contains("`Val_Set`"), "{m}");
}

/// `Training_Set` (2020) in one task folder and `Train_Set` (2021+) in another are two
/// releases joined by video name: refused.
#[test]
fn split_names_of_two_releases_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let r = dir.path();
    write(
        r,
        "annotations/VA_Set/Training_Set/a.txt",
        &format!("{VA_H}0.1,0.2\n"),
    );
    write(
        r,
        "annotations/AU_Set/Train_Set/a.txt",
        &format!("{AU_H}1,0,0,0,1,0,0,0\n"),
    );
    jpgs(r, "a", &[1]);
    let (e, m) = load_err(r);
    assert!(matches!(&e, DataError::Layout { .. }), "{e:?}");
    assert!(m.contains("Training_Set") && m.contains("Train_Set"), "{m}");
}

/// A task with training frames and no validation frames is refused (it would never be
/// evaluated), naming the split and the folder under the release's own annotation folder.
#[test]
fn a_task_without_validation_frames_names_the_split_and_its_folder() {
    let dir = tempfile::tempdir().unwrap();
    let r = dir.path();
    let base = "6th ABAW Annotations";
    let ex8 = "Neutral,Anger,Disgust,Fear,Happiness,Sadness,Surprise,Other\n";
    for split in ["Train_Set", "Validation_Set"] {
        let v = if split == "Train_Set" { "x" } else { "y" };
        write(
            r,
            &format!("{base}/VA_Estimation_Challenge/{split}/{v}.txt"),
            &format!("{VA_H}0.2,0.1\n"),
        );
        write(
            r,
            &format!("{base}/EXPR_Classification_Challenge/{split}/{v}.txt"),
            &format!("{ex8}7\n"),
        );
    }
    write(
        r,
        &format!("{base}/AU_Detection_Challenge/Train_Set/x.txt"),
        &format!("{AU_H}0,0,0,0,0,0,0,1\n"),
    );
    jpgs(r, "x", &[1]);
    jpgs(r, "y", &[1]);
    let idx = DatasetIndex::load(r, &IndexOptions::default()).unwrap();
    let e = idx.require_every_task().unwrap_err();
    assert!(
        matches!(
            e,
            DataError::MissingTask {
                task: Task::Au,
                split: Split::Validation,
                ..
            }
        ),
        "{e:?}"
    );
    let m = e.to_string();
    assert!(
        m.contains("6th ABAW Annotations/AU_Detection_Challenge/Validation_Set"),
        "{m}"
    );
}

/// A 2022+ second crops folder (`cropped_aligned_new_50_vids`) with videos `cropped_aligned`
/// lacks is refused naming it and the fix; linked into `cropped_aligned`, the root loads, and
/// an annotated video without any crop is listed in the stats.
#[test]
fn a_second_crops_folder_is_refused_until_linked_and_videos_without_crops_are_listed() {
    let dir = tempfile::tempdir().unwrap();
    tree2020(dir.path());
    let extra = dir.path().join("cropped_aligned_new_50_vids/n1");
    std::fs::create_dir_all(&extra).unwrap();
    std::fs::write(extra.join("00001.jpg"), b"not decoded by the index").unwrap();
    write(
        dir.path(),
        "annotations/VA_Set/Training_Set/n1.txt",
        &format!("{VA_H}0.1,0.2\n"),
    );
    let (e, m) = load_err(dir.path());
    assert!(matches!(&e, DataError::Layout { .. }), "{e:?}");
    assert!(
        m.contains("cropped_aligned_new_50_vids") && m.contains("`n1`"),
        "{m}"
    );
    assert!(m.contains("ln -s"), "{m}");
    std::os::unix::fs::symlink(&extra, dir.path().join("cropped_aligned/n1")).unwrap();
    let idx = DatasetIndex::load(dir.path(), &IndexOptions::default()).unwrap();
    assert!(idx.samples(Split::Train).iter().any(|s| s.video == "n1"));
    assert!(idx.stats().videos_without_crops.is_empty());
    // An annotated video with no crop folder at all.
    write(
        dir.path(),
        "annotations/VA_Set/Training_Set/gone.txt",
        &format!("{VA_H}0.1,0.2\n"),
    );
    let st = DatasetIndex::load(dir.path(), &IndexOptions::default())
        .unwrap()
        .stats();
    assert_eq!(st.videos_without_crops, ["gone"]);
    assert!(
        st.to_string()
            .contains("annotated videos without any crop: 1 (gone)"),
        "{st}"
    );
}
