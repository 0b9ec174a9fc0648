//! Damaged crops through the loader: 0-byte, truncated, PNG-named-JPEG, garbage, wrong size,
//! greyscale, symlink loops. Errors name the jpg; batches are always `n x 3 x s x s`.

use std::path::{Path, PathBuf};

use mtanet_affwild2::{
    DataError, DatasetIndex, IndexOptions, Loader, LoaderConfig, OnBadFrame, Split,
};

use super::{assert_names, crops, fixture, good_tree};

const SIDE: usize = 48;

fn cfg(on_bad_frame: OnBadFrame, resize: bool) -> LoaderConfig {
    LoaderConfig {
        batch_size: 4,
        image_size: SIDE,
        shuffle: false,
        prefetch: 1,
        threads: 1,
        augment: None,
        on_bad_frame,
        resize,
        ..LoaderConfig::default()
    }
}

/// A good tree whose video `good` has its 3 crops replaced by `files` (frames 1..=3).
fn tree_with(files: [&[u8]; 3]) -> (tempfile::TempDir, Vec<PathBuf>) {
    let dir = tempfile::tempdir().unwrap();
    good_tree(dir.path());
    let paths = crops(dir.path(), "good", &files);
    (dir, paths)
}

fn loader(root: &Path, cfg: LoaderConfig) -> Loader {
    let idx = DatasetIndex::load(root, &IndexOptions::default()).unwrap();
    Loader::new(idx.samples(Split::Train).to_vec(), &idx.vocab, cfg).unwrap()
}

/// The one batch of epoch 0 (3 samples, batch size 4).
fn first_batch(root: &Path, cfg: LoaderConfig) -> Result<mtanet_affwild2::Batch, DataError> {
    loader(root, cfg).batch(0, 0)
}

/// With `OnBadFrame::Error`, frame 2 holding `bad` fails as `BadImage` naming `00002.jpg`.
#[track_caller]
fn rejects_frame_two(bad: &[u8]) -> DataError {
    let good = fixture("rgb_48x48.jpg");
    let (dir, paths) = tree_with([&good, bad, &good]);
    let e = first_batch(dir.path(), cfg(OnBadFrame::Error, true)).unwrap_err();
    assert_eq!(e.path(), Some(paths[1].as_path()), "{e:?}");
    assert_names(&e.to_string(), "good/00002.jpg");
    e
}

#[test]
fn zero_byte_jpeg() {
    let e = rejects_frame_two(b"");
    assert!(matches!(e, DataError::BadImage { .. }), "{e:?}");
}

#[test]
fn truncated_jpeg() {
    let jpg = fixture("rgb_48x48.jpg");
    // Cut inside the headers: an error naming the file.
    for cut in [2, 20, 200] {
        let e = rejects_frame_two(&jpg[..cut]);
        assert!(matches!(e, DataError::BadImage { .. }), "cut {cut}: {e:?}");
    }
    // Cut inside the entropy-coded data: the decoder fills the rest (a lenient decoder,
    // documented here); the batch must still have the configured shape.
    let good = fixture("rgb_48x48.jpg");
    let cut = &jpg[..jpg.len() * 2 / 3];
    let (dir, _) = tree_with([&good, cut, &good]);
    match first_batch(dir.path(), cfg(OnBadFrame::Error, true)) {
        Ok(b) => assert_eq!(b.images.dims(), &[3, 3, SIDE, SIDE]),
        Err(e) => {
            assert!(matches!(e, DataError::BadImage { .. }), "{e:?}");
            assert_names(&e.to_string(), "good/00002.jpg");
        }
    }
}

#[test]
fn png_bytes_named_jpg() {
    let e = rejects_frame_two(&fixture("rgb_48x48.png"));
    assert!(matches!(e, DataError::BadImage { .. }), "{e:?}");
}

#[test]
fn binary_garbage_jpeg() {
    let garbage: Vec<u8> = (0..4096u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let e = rejects_frame_two(&garbage);
    assert!(matches!(e, DataError::BadImage { .. }), "{e:?}");
    // A JPEG start marker followed by garbage, too.
    let mut soi = vec![0xFF, 0xD8, 0xFF, 0xE0];
    soi.extend_from_slice(&garbage[..64]);
    let e = rejects_frame_two(&soi);
    assert!(matches!(e, DataError::BadImage { .. }), "{e:?}");
}

#[test]
fn symlink_loop_as_a_crop() {
    let good = fixture("rgb_48x48.jpg");
    let (dir, paths) = tree_with([&good, &good, &good]);
    std::fs::remove_file(&paths[1]).unwrap();
    std::os::unix::fs::symlink(&paths[1], &paths[1]).unwrap();
    let e = first_batch(dir.path(), cfg(OnBadFrame::Error, true)).unwrap_err();
    assert!(matches!(e, DataError::Io { .. }), "{e:?}");
    assert_eq!(e.path(), Some(paths[1].as_path()));
    assert_names(&e.to_string(), "good/00002.jpg");
}

#[test]
fn bad_crop_is_skipped_and_recorded() {
    let good = fixture("rgb_48x48.jpg");
    let (dir, paths) = tree_with([&good, b"", &good]);
    let l = loader(dir.path(), cfg(OnBadFrame::Skip, true));
    let b = l.batch(0, 0).unwrap();
    // The batch keeps its size; the bad frame is replaced by a readable one.
    assert_eq!(b.images.dims(), &[3, 3, SIDE, SIDE]);
    assert!(b.ids.iter().all(|id| id.frame != 2), "{:?}", b.ids);
    assert_eq!(l.bad_frames(), vec![paths[1].clone()]);
}

#[test]
fn every_crop_bad_is_an_error_not_a_hang() {
    let (dir, paths) = tree_with([b"", b"x", b"\xff\xd8"]);
    let e = first_batch(dir.path(), cfg(OnBadFrame::Skip, true)).unwrap_err();
    assert!(matches!(e, DataError::BadImage { .. }), "{e:?}");
    assert!(paths.iter().any(|p| e.path() == Some(p.as_path())), "{e}");
}

#[test]
fn wrong_size_rejected_without_resize() {
    let good = fixture("rgb_48x48.jpg");
    let small = fixture("rgb_40x30.jpg");
    let (dir, paths) = tree_with([&good, &small, &good]);
    let e = first_batch(dir.path(), cfg(OnBadFrame::Skip, false)).unwrap_err();
    match &e {
        DataError::ImageSize {
            path,
            width,
            height,
            expected,
        } => {
            assert_eq!(path, &paths[1]);
            assert_eq!((*width, *height, *expected), (40, 30, SIDE));
        }
        other => panic!("{other:?}"),
    }
    let msg = e.to_string();
    assert_names(&msg, "good/00002.jpg");
    assert_names(&msg, "40x30");
}

#[test]
fn wrong_size_resized_with_resize() {
    let small = fixture("rgb_40x30.jpg");
    let (dir, _) = tree_with([&small, &small, &small]);
    let b = first_batch(dir.path(), cfg(OnBadFrame::Error, true)).unwrap();
    assert_eq!(b.images.dims(), &[3, 3, SIDE, SIDE]);
    assert_eq!(b.au.dims(), &[3, 8]);
    let v = b.images.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    assert!(v.iter().all(|x| x.is_finite()));
}

#[test]
fn greyscale_jpeg_becomes_three_channels() {
    let grey = fixture("gray_48x48.jpg");
    let (dir, _) = tree_with([&grey, &grey, &grey]);
    let identity = mtanet_affwild2::Preprocess {
        mean: [0.0; 3],
        std: [1.0; 3],
        bgr: false,
        scale: 1.0,
    };
    let b = first_batch(
        dir.path(),
        LoaderConfig {
            preprocess: identity,
            ..cfg(OnBadFrame::Error, false)
        },
    )
    .unwrap();
    assert_eq!(b.images.dims(), &[3, 3, SIDE, SIDE]);
    // One grey value per pixel, copied to R, G and B (and not all black).
    let img = b.images.get(0).unwrap();
    let c: Vec<Vec<f32>> = (0..3)
        .map(|k| {
            img.get(k)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap()
        })
        .collect();
    assert_eq!(c[0], c[1]);
    assert_eq!(c[1], c[2]);
    assert!(c[0].iter().any(|&x| x > 0.0));
}
