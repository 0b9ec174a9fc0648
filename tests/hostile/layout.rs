//! Damaged trees: wrong roots, mixed releases, strange crop file names, symlink loops.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;

use mtanet_affwild2::{DataError, DatasetIndex, IndexOptions, Split};

use super::{assert_names, good_tree, set_dir, write, VA_H};

fn load(root: &std::path::Path) -> Result<DatasetIndex, DataError> {
    DatasetIndex::load(root, &IndexOptions::default())
}

#[test]
fn root_is_a_file() {
    let dir = tempfile::tempdir().unwrap();
    let f = write(dir.path(), "not_a_dataset", b"x");
    let e = load(&f).unwrap_err();
    assert!(matches!(e, DataError::Layout { .. }), "{e:?}");
    assert_names(&e.to_string(), "not_a_dataset");
}

#[test]
fn root_does_not_exist() {
    let dir = tempfile::tempdir().unwrap();
    let e = load(&dir.path().join("missing_root")).unwrap_err();
    assert!(matches!(e, DataError::Layout { .. }), "{e:?}");
    assert_names(&e.to_string(), "missing_root");
}

#[test]
fn no_crop_folder() {
    let dir = tempfile::tempdir().unwrap();
    good_tree(dir.path());
    std::fs::remove_dir_all(dir.path().join("cropped_aligned")).unwrap();
    let e = load(dir.path()).unwrap_err();
    assert!(matches!(e, DataError::Layout { .. }), "{e:?}");
    assert_names(&e.to_string(), "cropped_aligned");
}

#[test]
fn crop_folder_is_a_file() {
    let dir = tempfile::tempdir().unwrap();
    good_tree(dir.path());
    std::fs::remove_dir_all(dir.path().join("cropped_aligned")).unwrap();
    write(dir.path(), "cropped_aligned", b"zip bytes");
    let e = load(dir.path()).unwrap_err();
    assert!(matches!(e, DataError::Layout { .. }), "{e:?}");
    assert_names(&e.to_string(), "cropped_aligned");
}

#[test]
fn two_releases_in_one_root() {
    let dir = tempfile::tempdir().unwrap();
    good_tree(dir.path());
    write(
        dir.path(),
        "annotations/VA_Estimation_Challenge/Train_Set/x.txt",
        format!("{VA_H}0,0\n"),
    );
    let e = load(dir.path()).unwrap_err();
    assert!(matches!(e, DataError::Layout { .. }), "{e:?}");
    let msg = e.to_string();
    assert_names(&msg, "annotations");
    assert_names(&msg, "_Challenge");
}

#[test]
fn unannotated_video_in_strict_mode() {
    let dir = tempfile::tempdir().unwrap();
    good_tree(dir.path());
    write(dir.path(), "cropped_aligned/stray/00001.jpg", b"");
    let opts = IndexOptions {
        strict: true,
        ..Default::default()
    };
    let e = DatasetIndex::load(dir.path(), &opts).unwrap_err();
    assert!(matches!(e, DataError::UnannotatedVideo { .. }), "{e:?}");
    assert_names(&e.to_string(), "stray");
    // Lenient mode counts it.
    assert_eq!(load(dir.path()).unwrap().stats().unannotated_videos, 1);
}

#[test]
fn odd_crop_names_are_not_frames() {
    // Negative, short, too large for u32, other extension, non-UTF-8: none is a frame (a
    // crop of frame 0 is refused, see `a_crop_of_frame_zero_is_refused`).
    let dir = tempfile::tempdir().unwrap();
    good_tree(dir.path());
    let v = dir.path().join("cropped_aligned/good");
    for name in [
        "-0004.jpg",
        "0000.jpg",
        "0004.jpg",
        "99999999999.jpg",
        "00004.jpeg",
        "00004.JPG",
        "+0004.jpg",
        " 0004.jpg",
    ] {
        std::fs::write(v.join(name), b"").unwrap();
    }
    std::fs::write(v.join(OsStr::from_bytes(b"0000\xff.jpg")), b"").unwrap();
    let idx = load(dir.path()).unwrap();
    let frames: Vec<u32> = idx.samples(Split::Train).iter().map(|s| s.frame).collect();
    assert_eq!(frames, vec![1, 2, 3]);
    assert_eq!(idx.stats().jpgs, 3);
}

#[test]
fn non_utf8_annotation_and_video_names() {
    let dir = tempfile::tempdir().unwrap();
    good_tree(dir.path());
    let ann = dir.path().join(set_dir("VA", "Training"));
    std::fs::write(
        ann.join(OsStr::from_bytes(b"vid\xff.txt")),
        format!("{VA_H}0,0\n"),
    )
    .unwrap();
    let crops = dir
        .path()
        .join("cropped_aligned")
        .join(OsStr::from_bytes(b"vid\xff"));
    std::fs::create_dir_all(&crops).unwrap();
    std::fs::write(crops.join("00001.jpg"), b"").unwrap();
    // Skipped (cannot be joined by name), the rest of the tree still loads.
    let idx = load(dir.path()).unwrap();
    assert_eq!(idx.samples(Split::Train).len(), 3);
}

#[test]
fn symlink_loop_as_a_video_folder() {
    let dir = tempfile::tempdir().unwrap();
    good_tree(dir.path());
    let crops = dir.path().join("cropped_aligned");
    // `good` -> `good_loop` -> `good`: listing the annotated video's folder fails.
    std::fs::remove_dir_all(crops.join("good")).unwrap();
    std::os::unix::fs::symlink(crops.join("good_loop"), crops.join("good")).unwrap();
    std::os::unix::fs::symlink(crops.join("good"), crops.join("good_loop")).unwrap();
    let e = load(dir.path()).unwrap_err();
    match &e {
        DataError::Io { path, source } => {
            assert!(path.ends_with("cropped_aligned/good"), "{e}");
            assert_eq!(source.raw_os_error(), Some(40), "ELOOP expected: {e}");
        }
        other => panic!("{other:?}"),
    }
    assert_names(&e.to_string(), "cropped_aligned/good");
}

#[test]
fn symlink_loop_as_an_unannotated_folder() {
    // A loop beside the annotated videos is not a folder: ignored, not followed forever.
    let dir = tempfile::tempdir().unwrap();
    good_tree(dir.path());
    let crops = dir.path().join("cropped_aligned");
    std::os::unix::fs::symlink(crops.join("loop"), crops.join("loop")).unwrap();
    std::os::unix::fs::symlink(&crops, crops.join("good/parent")).unwrap();
    let idx = load(dir.path()).unwrap();
    assert_eq!(idx.samples(Split::Train).len(), 3);
}

#[test]
fn annotation_file_is_a_folder_or_a_dangling_link() {
    let dir = tempfile::tempdir().unwrap();
    good_tree(dir.path());
    let ann = dir.path().join(set_dir("EXPR", "Training"));
    std::fs::create_dir_all(ann.join("folder.txt")).unwrap();
    std::os::unix::fs::symlink(ann.join("nowhere"), ann.join("dangling.txt")).unwrap();
    let idx = load(dir.path()).unwrap();
    assert_eq!(idx.samples(Split::Train).len(), 3);
}

/// A crop named `4294967295.jpg` is not a frame of the index (its memory bound is checked on
/// the binary in `bounds.rs`).
#[test]
fn huge_frame_number_is_not_a_frame() {
    let dir = tempfile::tempdir().unwrap();
    good_tree(dir.path());
    write(dir.path(), "cropped_aligned/good/4294967295.jpg", b"");
    let idx = load(dir.path()).unwrap();
    let frames: Vec<u32> = idx.samples(Split::Train).iter().map(|s| s.frame).collect();
    assert_eq!(frames, vec![1, 2, 3]);
    assert_eq!(idx.stats().jpgs, 3);
}

/// A crop folder numbered from 0 (`00000.jpg`) is refused naming the file: crops are
/// numbered from 1, and a 0-based folder would pair each crop with the next frame's labels.
#[test]
fn a_crop_of_frame_zero_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    good_tree(dir.path());
    write(dir.path(), "cropped_aligned/good/00000.jpg", b"");
    let e = load(dir.path()).unwrap_err();
    assert!(matches!(&e, DataError::CropFrameZero { .. }), "{e:?}");
    assert_names(&e.to_string(), "cropped_aligned/good/00000.jpg");
}

/// A padded crop name (`000002.jpg` beside `00002.jpg`'s frame) is refused naming the file.
#[test]
fn padded_crop_name_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    good_tree(dir.path());
    let v = dir.path().join("cropped_aligned/good");
    std::fs::rename(v.join("00002.jpg"), v.join("000002.jpg")).unwrap();
    let e = load(dir.path()).unwrap_err();
    assert!(
        matches!(&e, DataError::CropName { frame: 2, expected, .. } if expected == "00002.jpg"),
        "{e:?}"
    );
    assert_names(&e.to_string(), "cropped_aligned/good/000002.jpg");
}
