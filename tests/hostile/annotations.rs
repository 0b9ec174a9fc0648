//! Damaged annotation files inside an otherwise valid tree: the index load fails with the
//! parser's variant, naming the file and the line.

use mtanet_affwild2::{DataError, DatasetIndex, IndexOptions};

use super::{assert_names, good_tree, set_dir, write, AU_H, EXPR_H, VA_H};

/// Adds `bytes` as `zbad.txt` of `task` (train split) to a good tree and loads it.
fn load_with(task: &str, bytes: impl AsRef<[u8]>) -> (tempfile::TempDir, DataError) {
    let dir = tempfile::tempdir().unwrap();
    good_tree(dir.path());
    write(
        dir.path(),
        &format!("{}/zbad.txt", set_dir(task, "Training")),
        bytes,
    );
    let err = DatasetIndex::load(dir.path(), &IndexOptions::default())
        .expect_err("a damaged annotation file must fail the load");
    (dir, err)
}

/// The error's path is `zbad.txt`, its line is `line`, and the message says both.
#[track_caller]
fn names_bad_file(err: &DataError, line: usize) {
    let msg = err.to_string();
    assert!(
        err.path().is_some_and(|p| p.ends_with("zbad.txt")),
        "wrong path: {msg}"
    );
    assert_eq!(err.line(), Some(line), "{msg}");
    assert_names(&msg, &format!("zbad.txt:{line}:"));
}

#[test]
fn truncated_row() {
    // Cut in the middle of line 3 (after the comma's first field).
    let (_d, e) = load_with("VA", format!("{VA_H}0.1,0.2\n0.3"));
    assert!(
        matches!(
            e,
            DataError::ColumnCount {
                expected: 2,
                found: 1,
                ..
            }
        ),
        "{e:?}"
    );
    names_bad_file(&e, 3);
}

#[test]
fn binary_garbage() {
    let mut bytes = VA_H.as_bytes().to_vec();
    bytes.extend_from_slice(b"0.1,0.2\n\xff\xfe\x00\x9c garbage\n");
    let (_d, e) = load_with("VA", bytes);
    assert!(matches!(e, DataError::Encoding { .. }), "{e:?}");
    names_bad_file(&e, 3);
}

#[test]
fn zero_byte_file() {
    let (_d, e) = load_with("EXPR", b"");
    assert!(matches!(e, DataError::EmptyFile { .. }), "{e:?}");
    names_bad_file(&e, 1);
}

#[test]
fn huge_valence() {
    let (_d, e) = load_with("VA", format!("{VA_H}0.1,0.2\n1e308,0.5\n"));
    match &e {
        DataError::OutOfRange {
            field, name, value, ..
        } => {
            assert_eq!(
                (*field, name.as_str(), value.as_str()),
                (1, "valence", "1e308")
            );
        }
        other => panic!("{other:?}"),
    }
    names_bad_file(&e, 3);
}

#[test]
fn overflowing_float_is_not_finite() {
    let (_d, e) = load_with("VA", format!("{VA_H}0.5,1e400\n"));
    match &e {
        DataError::NonFinite { field, name, .. } => {
            assert_eq!((*field, name.as_str()), (2, "arousal"))
        }
        other => panic!("{other:?}"),
    }
    names_bad_file(&e, 2);
}

#[test]
fn nan_and_inf_strings() {
    for (text, field) in [
        ("NaN,0.1", 1),
        ("0.1,inf", 2),
        ("-Infinity,0", 1),
        ("0,nan", 2),
    ] {
        let (_d, e) = load_with("VA", format!("{VA_H}0,0\n{text}\n"));
        match &e {
            DataError::NonFinite { field: f, .. } => assert_eq!(*f, field, "{text}"),
            other => panic!("{text}: {other:?}"),
        }
        names_bad_file(&e, 3);
        assert_names(&e.to_string(), "not finite");
    }
}

#[test]
fn huge_au_integer() {
    let (_d, e) = load_with(
        "AU",
        format!("{AU_H}0,0,0,0,0,0,0,99999999999999999999999\n"),
    );
    match &e {
        DataError::OutOfRange { field, name, .. } => {
            assert_eq!((*field, name.as_str()), (8, "AU25"))
        }
        other => panic!("{other:?}"),
    }
    names_bad_file(&e, 2);
}

#[test]
fn au_value_two() {
    let (_d, e) = load_with("AU", format!("{AU_H}0,0,0,0,0,0,0,0\n0,2,0,0,0,0,0,0\n"));
    assert!(matches!(e, DataError::OutOfRange { field: 2, .. }), "{e:?}");
    names_bad_file(&e, 3);
    assert_names(&e.to_string(), "AU2");
}

#[test]
fn expression_past_the_classes() {
    let (_d, e) = load_with("EXPR", format!("{EXPR_H}0\n7\n"));
    assert!(matches!(e, DataError::OutOfRange { field: 1, .. }), "{e:?}");
    names_bad_file(&e, 3);
}

#[test]
fn negative_and_fractional_expression() {
    for v in ["-2", "2.5", "-0.5"] {
        let (_d, e) = load_with("EXPR", format!("{EXPR_H}{v}\n"));
        assert!(matches!(e, DataError::OutOfRange { .. }), "{v}: {e:?}");
        names_bad_file(&e, 2);
    }
}

#[test]
fn text_in_a_number_field() {
    let (_d, e) = load_with("AU", format!("{AU_H}0,0,0,yes,0,0,0,0\n"));
    match &e {
        DataError::NotANumber {
            field, name, value, ..
        } => {
            assert_eq!((*field, name.as_str(), value.as_str()), (4, "AU6", "yes"));
        }
        other => panic!("{other:?}"),
    }
    names_bad_file(&e, 2);
}

#[test]
fn missing_header() {
    let (_d, e) = load_with("VA", "0.1,0.2\n0.3,0.4\n");
    assert!(matches!(e, DataError::Header { .. }), "{e:?}");
    names_bad_file(&e, 1);
}

#[test]
fn misspelt_and_repeated_headers() {
    for h in ["valence,arousl", "AU1,AU1,AU2", "AU1,AUx", "Neutral"] {
        let task = match h.as_bytes()[0] {
            b'v' => "VA",
            b'A' => "AU",
            _ => "EXPR",
        };
        let (_d, e) = load_with(task, format!("{h}\n"));
        assert!(matches!(e, DataError::Header { .. }), "{h}: {e:?}");
        names_bad_file(&e, 1);
    }
}

#[test]
fn blank_line_inside_the_data() {
    let (_d, e) = load_with("EXPR", format!("{EXPR_H}1\n\n2\n"));
    assert!(
        matches!(e, DataError::ColumnCount { found: 0, .. }),
        "{e:?}"
    );
    names_bad_file(&e, 3);
}

#[test]
fn au_vocabulary_differs_between_files() {
    // 12 AUs here, 8 in `good.txt`.
    let (_d, e) = load_with(
        "AU",
        "AU1,AU2,AU4,AU6,AU7,AU10,AU12,AU15,AU23,AU24,AU25,AU26\n0,0,0,0,0,0,0,0,0,0,0,0\n",
    );
    match &e {
        DataError::VocabMismatch { first, .. } => assert!(first.ends_with("good.txt")),
        other => panic!("{other:?}"),
    }
    names_bad_file(&e, 1);
    assert_names(&e.to_string(), "good.txt");
}

#[test]
fn duplicate_video_across_splits() {
    let dir = tempfile::tempdir().unwrap();
    good_tree(dir.path());
    write(
        dir.path(),
        &format!("{}/good.txt", set_dir("VA", "Validation")),
        format!("{VA_H}0.1,0.2\n"),
    );
    let e = DatasetIndex::load(dir.path(), &IndexOptions::default()).unwrap_err();
    match &e {
        DataError::DuplicateVideo {
            video,
            first,
            second,
        } => {
            assert_eq!(video, "good");
            assert!(first.to_string_lossy().contains("Training_Set"));
            assert!(second.to_string_lossy().contains("Validation_Set"));
        }
        other => panic!("{other:?}"),
    }
    let msg = e.to_string();
    assert_names(&msg, "Training_Set/good.txt");
    assert_names(&msg, "Validation_Set/good.txt");
}

#[test]
fn annotation_for_a_video_without_frames() {
    // `ghost` has labels but no crop folder: no samples, no error; listed among the annotated
    // videos without any crop.
    let dir = tempfile::tempdir().unwrap();
    good_tree(dir.path());
    write(
        dir.path(),
        &format!("{}/ghost.txt", set_dir("VA", "Training")),
        format!("{VA_H}0.1,0.2\n0.3,0.4\n"),
    );
    let idx = DatasetIndex::load(dir.path(), &IndexOptions::default()).unwrap();
    let train = idx.samples(mtanet_affwild2::Split::Train);
    assert_eq!(train.len(), 3);
    assert!(train.iter().all(|s| s.video == "good"));
    assert_eq!(idx.stats().videos_without_crops, ["ghost"]);
    // An empty crop folder behaves the same.
    std::fs::create_dir_all(dir.path().join("cropped_aligned/ghost")).unwrap();
    let idx = DatasetIndex::load(dir.path(), &IndexOptions::default()).unwrap();
    assert_eq!(idx.samples(mtanet_affwild2::Split::Train).len(), 3);
    assert_eq!(idx.stats().videos_without_crops, ["ghost"]);
}

/// Found by a careful user: an EXPR file with CR-only line ends loaded as zero labels and a
/// class named `Surprise\r-1\r...`. Its lines are lines now, and a control character in a
/// header is refused.
#[test]
fn cr_only_line_ends_are_line_ends() {
    let dir = tempfile::tempdir().unwrap();
    good_tree(dir.path());
    let expr = dir
        .path()
        .join(set_dir("EXPR", "Training"))
        .join("good.txt");
    let text = std::fs::read_to_string(&expr).unwrap();
    std::fs::write(&expr, text.replace('\n', "\r")).unwrap();
    let idx = DatasetIndex::load(dir.path(), &IndexOptions::default()).unwrap();
    assert_eq!(
        idx.vocab.expr_names.last().map(String::as_str),
        Some("Surprise")
    );
    let labels: Vec<Option<u8>> = idx
        .samples(mtanet_affwild2::Split::Train)
        .iter()
        .map(|s| s.expr)
        .collect();
    assert_eq!(labels, vec![Some(4), Some(0), Some(6)]);
    let (_d, e) = load_with("EXPR", "Neutral,Anger\u{7},Disgust\n0\n");
    assert!(matches!(e, DataError::Header { line: 1, .. }), "{e:?}");
    names_bad_file(&e, 1);
    assert_names(&e.to_string(), "field 2");
}
