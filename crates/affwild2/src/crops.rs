//! Listing one video's crop folder: the frame numbers of its `NNNNN.jpg` files, in memory
//! proportional to the number of files (never to the largest frame number a stray file names).

use std::path::{Path, PathBuf};

use crate::error::DataError;
use crate::layout::{
    digit_stem_number, frame_file_name, is_frame_zero_name, parse_frame_file_name,
};

/// Crop numbers above this are ignored (10 million frames: 4.6 days at 25 fps).
pub const MAX_FRAME: u32 = 10_000_000;

/// The crops of one video folder: which frames have a jpg, and the frame-named files ignored
/// because their number is above [`MAX_FRAME`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Crops {
    frames: Vec<u32>,
    ignored: Vec<PathBuf>,
}

impl Crops {
    /// The 1-based frame numbers with a jpg, ascending, each once.
    pub fn frames(&self) -> &[u32] {
        &self.frames
    }

    /// Whether frame `frame` (1-based) has a jpg.
    pub fn contains(&self, frame: u32) -> bool {
        self.frames.binary_search(&frame).is_ok()
    }

    /// The number of frames with a jpg.
    pub fn len(&self) -> usize {
        self.frames.len()
    }

    /// Whether no frame has a jpg.
    pub fn is_empty(&self) -> bool {
        self.frames.is_empty()
    }

    /// Files named like a crop whose frame number is above [`MAX_FRAME`] (including numbers
    /// too large for a `u32`), sorted; they are not in [`Crops::frames`].
    pub fn ignored(&self) -> &[PathBuf] {
        &self.ignored
    }
}

/// Lists the crop folder `dir` of one video: a missing folder has no crops; files that are not
/// crop names ([`parse_frame_file_name`]) are skipped; crop names above [`MAX_FRAME`] are
/// reported in [`Crops::ignored`] instead of being listed. A name that holds a frame number
/// but is not that frame's crop name (`000017.jpg`) is an error naming the file, since every
/// reader finds a crop by its frame's name; so is a crop of frame 0 (`00000.jpg`), since
/// crops are numbered from 1 and a folder numbered from 0 would shift every label by a frame.
pub fn list_crops(dir: &Path) -> Result<Crops, DataError> {
    let mut crops = Crops::default();
    let rd = match std::fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(crops),
        Err(e) => return Err(DataError::io(dir, e)),
    };
    for entry in rd {
        let entry = entry.map_err(|e| DataError::io(dir, e))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        match parse_frame_file_name(name) {
            Some(f) if f <= MAX_FRAME => crops.frames.push(f),
            Some(_) => crops.ignored.push(entry.path()),
            None if beyond_u32(name) => crops.ignored.push(entry.path()),
            None if is_frame_zero_name(name) => {
                return Err(DataError::CropFrameZero { path: entry.path() })
            }
            None => match digit_stem_number(name) {
                Some(frame) if frame <= MAX_FRAME => {
                    return Err(DataError::CropName {
                        path: entry.path(),
                        frame,
                        expected: frame_file_name(frame),
                    })
                }
                Some(_) => crops.ignored.push(entry.path()),
                None => {}
            },
        }
    }
    crops.frames.sort_unstable();
    crops.frames.dedup();
    crops.ignored.sort();
    Ok(crops)
}

/// Whether `name` is shaped like a crop name (5 or more digits, `.jpg`) with a nonzero number
/// that [`parse_frame_file_name`] rejected, i.e. one too large for a `u32`.
fn beyond_u32(name: &str) -> bool {
    name.strip_suffix(".jpg").is_some_and(|stem| {
        stem.len() >= 5
            && stem.bytes().all(|b| b.is_ascii_digit())
            && stem.bytes().any(|b| b != b'0')
            && stem.parse::<u32>().is_err()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn touch(dir: &Path, name: &str) {
        std::fs::write(dir.join(name), b"").unwrap();
    }

    #[test]
    fn missing_folder_is_empty() {
        let dir = tempfile::tempdir().unwrap();
        let crops = list_crops(&dir.path().join("absent")).unwrap();
        assert!(crops.is_empty());
        assert!(crops.ignored().is_empty());
        assert!(!crops.contains(1));
    }

    #[test]
    fn frames_sorted_unique_and_only_crop_names() {
        let dir = tempfile::tempdir().unwrap();
        for name in [
            "00017.jpg",
            "00003.jpg",
            "10000000.jpg",
            "0000.jpg",
            "0004.jpg",
            "00005.png",
            "notes.txt",
            "a0006.jpg",
        ] {
            touch(dir.path(), name);
        }
        let crops = list_crops(dir.path()).unwrap();
        assert_eq!(crops.frames(), &[3, 17, 10_000_000]);
        assert_eq!(crops.len(), 3);
        assert!(crops.contains(17) && crops.contains(3) && crops.contains(MAX_FRAME));
        assert!(!crops.contains(4) && !crops.contains(0) && !crops.contains(5));
        assert!(crops.ignored().is_empty());
    }

    #[test]
    fn a_padded_crop_name_is_an_error_naming_the_file_and_the_crop_name() {
        let dir = tempfile::tempdir().unwrap();
        touch(dir.path(), "00001.jpg");
        touch(dir.path(), "000002.jpg");
        let e = list_crops(dir.path()).unwrap_err();
        assert!(
            matches!(&e, DataError::CropName { frame: 2, expected, .. } if expected == "00002.jpg"),
            "{e:?}"
        );
        let m = e.to_string();
        assert!(m.contains("000002.jpg") && m.contains("00002.jpg"), "{m}");
    }

    #[test]
    fn a_crop_of_frame_zero_is_an_error_naming_the_file() {
        for zero in ["00000.jpg", "000000.jpg"] {
            let dir = tempfile::tempdir().unwrap();
            touch(dir.path(), zero);
            touch(dir.path(), "00001.jpg");
            let e = list_crops(dir.path()).unwrap_err();
            let path = dir.path().join(zero);
            assert!(
                matches!(&e, DataError::CropFrameZero { path: p } if *p == path),
                "{e:?}"
            );
            assert_eq!(e.path(), Some(path.as_path()));
            let m = e.to_string();
            assert!(
                m.contains(&path.display().to_string()) && m.contains("00001.jpg"),
                "{m}"
            );
        }
    }

    #[test]
    fn stray_huge_frame_numbers_are_ignored_and_reported() {
        let dir = tempfile::tempdir().unwrap();
        for name in [
            "00001.jpg",
            "00002.jpg",
            "4000000000.jpg",
            "99999999999.jpg",
            "10000001.jpg",
        ] {
            touch(dir.path(), name);
        }
        let crops = list_crops(dir.path()).unwrap();
        assert_eq!(crops.frames(), &[1, 2]);
        assert!(!crops.contains(4_000_000_000));
        let ignored: Vec<PathBuf> = ["10000001.jpg", "4000000000.jpg", "99999999999.jpg"]
            .iter()
            .map(|n| dir.path().join(n))
            .collect();
        assert_eq!(crops.ignored(), ignored.as_slice());
    }
}
