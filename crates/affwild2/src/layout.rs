//! Where the annotation files and crops live in each Aff-Wild2 release, and which release a
//! root holds.
//!
//! - ABAW 2020: `annotations/{VA_Set,AU_Set,EXPR_Set}/{Training_Set,Validation_Set}/<video>.txt`
//! - ABAW 2021: the same with `Train_Set` (and 12 AUs in the AU headers)
//! - ABAW 2022+: `<N>th ABAW Annotations/{VA_Estimation_Challenge,AU_Detection_Challenge,
//!   EXPR_Classification_Challenge}/{Train_Set,Validation_Set}/<video>.txt`
//!
//! Crops are always `cropped_aligned/<video>/<NNNNN>.jpg`. The annotation folder may also be
//! the root itself (the three `*_Set` folders copied out of `annotations.zip`).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::DataError;
use crate::task::{Split, Task};

/// Which release's folder layout a root holds (detected from folder names).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Layout {
    /// `*_Set` task folders with `Training_Set`.
    Abaw2020,
    /// `*_Set` task folders with `Train_Set`.
    Abaw2021,
    /// `*_Challenge` task folders (3rd ABAW, 2022, and later).
    Abaw2022,
}

impl std::fmt::Display for Layout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Layout::Abaw2020 => "ABAW 2020",
            Layout::Abaw2021 => "ABAW 2021",
            Layout::Abaw2022 => "ABAW 2022+",
        })
    }
}

/// The task folder names of the 2020/2021 releases.
const SET_DIRS: [(Task, &str); 3] = [
    (Task::Va, "VA_Set"),
    (Task::Au, "AU_Set"),
    (Task::Expr, "EXPR_Set"),
];

/// The task folder names of the 2022+ releases.
const CHALLENGE_DIRS: [(Task, &[&str]); 3] = [
    (Task::Va, &["VA_Estimation_Challenge"]),
    (Task::Au, &["AU_Detection_Challenge"]),
    (
        Task::Expr,
        &[
            "EXPR_Classification_Challenge",
            "EXPR_Recognition_Challenge",
        ],
    ),
];

/// The folder, relative to the root, that holds the annotation files of `task` in `split`
/// in `layout` (`annotations/AU_Set/Training_Set`).
pub fn task_folder(layout: Layout, task: Task, split: Split) -> PathBuf {
    task_folder_under(Path::new("annotations"), layout, task, split)
}

/// [`task_folder`] under `annotations`, the folder (relative to the root) that holds the task
/// folders.
pub fn task_folder_under(annotations: &Path, layout: Layout, task: Task, split: Split) -> PathBuf {
    let task_dir = match layout {
        Layout::Abaw2020 | Layout::Abaw2021 => SET_DIRS[task.index()].1,
        Layout::Abaw2022 => CHALLENGE_DIRS[task.index()].1[0],
    };
    let split_dir = match (layout, split) {
        (_, Split::Validation) => "Validation_Set",
        (Layout::Abaw2020, Split::Train) => "Training_Set",
        (_, Split::Train) => "Train_Set",
    };
    annotations.join(task_dir).join(split_dir)
}

/// The folder of crops, relative to the root.
pub const CROPS_DIR: &str = "cropped_aligned";

/// One annotation file found on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AnnotationEntry {
    /// Its task.
    pub task: Task,
    /// Its split (within the task).
    pub split: Split,
    /// The video name (file stem), e.g. `10-60-1280x720_left`.
    pub video: String,
    /// The file.
    pub path: PathBuf,
}

/// The annotation files and crop folder of a root.
#[derive(Debug, Clone)]
pub struct Discovered {
    /// The detected release.
    pub layout: Layout,
    /// The folder holding the task folders, relative to the root (`annotations`,
    /// `6th ABAW Annotations`, or empty for the root itself).
    pub annotations: PathBuf,
    /// Every annotation file, sorted by (task, split, video).
    pub entries: Vec<AnnotationEntry>,
    /// `root/cropped_aligned`.
    pub crops: PathBuf,
}

fn is_dir(p: &Path) -> bool {
    p.is_dir()
}

fn list_dir(dir: &Path) -> Result<Vec<(String, PathBuf)>, DataError> {
    let rd = std::fs::read_dir(dir).map_err(|e| DataError::io(dir, e))?;
    let mut out = Vec::new();
    for entry in rd {
        let entry = entry.map_err(|e| DataError::io(dir, e))?;
        if let Some(name) = entry.file_name().to_str() {
            out.push((name.to_string(), entry.path()));
        }
    }
    out.sort();
    Ok(out)
}

/// Candidate folders that may hold the task folders, in order of preference; a folder reached
/// twice (a link to another candidate) is listed once.
fn annotation_bases(root: &Path) -> Result<Vec<PathBuf>, DataError> {
    let mut bases = vec![root.join("annotations"), root.to_path_buf()];
    for (name, path) in list_dir(root)? {
        if name.to_ascii_lowercase().contains("annotations")
            && name != "annotations"
            && is_dir(&path)
        {
            bases.push(path);
        }
    }
    let mut seen = std::collections::HashSet::new();
    bases.retain(|b| seen.insert(std::fs::canonicalize(b).unwrap_or_else(|_| b.clone())));
    Ok(bases)
}

/// A folder holding task folders: itself, whether they are the 2022+ `*_Challenge` ones, and
/// each task's folder.
type TaskFolders = (PathBuf, bool, Vec<(Task, PathBuf)>);

/// Finds the release layout and every annotation file under `root`.
pub fn discover(root: &Path) -> Result<Discovered, DataError> {
    if !is_dir(root) {
        return Err(DataError::Layout {
            root: root.to_path_buf(),
            message: "not a folder".into(),
        });
    }
    // Every candidate folder that holds task folders: more than one is two releases (or two
    // copies), and picking one would train on whichever sorts first.
    let mut found: Vec<TaskFolders> = Vec::new();
    for base in annotation_bases(root)? {
        if !is_dir(&base) {
            continue;
        }
        let sets: Vec<(Task, PathBuf)> = SET_DIRS
            .iter()
            .map(|(t, d)| (*t, base.join(d)))
            .filter(|(_, p)| is_dir(p))
            .collect();
        let challenges: Vec<(Task, PathBuf)> = CHALLENGE_DIRS
            .iter()
            .flat_map(|(t, ds)| {
                let base = &base;
                ds.iter().map(move |d| (*t, base.join(d)))
            })
            .filter(|(_, p)| is_dir(p))
            .collect();
        match (sets.is_empty(), challenges.is_empty()) {
            (true, true) => continue,
            (false, false) => {
                return Err(DataError::Layout {
                    root: base,
                    message: "holds both `*_Set` (2020/2021) and `*_Challenge` (2022+) task folders; keep one release per root".into(),
                })
            }
            (false, true) => found.push((base, false, sets)),
            (true, false) => found.push((base, true, challenges)),
        }
    }
    if found.len() > 1 {
        let names: Vec<String> = found
            .iter()
            .map(|(b, _, _)| format!("`{}`", b.display()))
            .collect();
        return Err(DataError::Layout {
            root: root.to_path_buf(),
            message: format!(
                "task folders in more than one annotation folder ({}); keep one release per \
                 root (a folder of links to one release's annotations and the shared \
                 `{CROPS_DIR}` is enough)",
                names.join(", ")
            ),
        });
    }
    let Some((base, challenge, task_dirs)) = found.pop() else {
        return Err(DataError::Layout {
            root: root.to_path_buf(),
            message: "no annotation folders found: expected annotations/{VA_Set,AU_Set,EXPR_Set} \
                      (ABAW 2020/2021) or `<N>th ABAW Annotations/*_Challenge` (2022+)"
                .into(),
        });
    };
    let annotations = base.strip_prefix(root).unwrap_or(&base).to_path_buf();
    let mut seen_task = [false; 3];
    let mut uses_train_set = false;
    let mut uses_training_set = false;
    let mut entries = Vec::new();
    for (task, dir) in task_dirs {
        if std::mem::replace(&mut seen_task[task.index()], true) {
            return Err(DataError::Layout {
                root: dir,
                message: format!("a second folder for the {task} task"),
            });
        }
        let mut train_dir: Option<PathBuf> = None;
        let mut val_dir: Option<PathBuf> = None;
        for (name, path) in list_dir(&dir)? {
            if !is_dir(&path) {
                continue;
            }
            match name.as_str() {
                "Training_Set" | "Train_Set" => {
                    uses_train_set |= name == "Train_Set";
                    uses_training_set |= name == "Training_Set";
                    if let Some(other) = train_dir.replace(path.clone()) {
                        return Err(DataError::Layout {
                            root: path,
                            message: format!("a second training folder beside {}", other.display()),
                        });
                    }
                }
                "Validation_Set" => val_dir = Some(path),
                other if looks_like_a_split(other) => {
                    return Err(DataError::Layout {
                        root: path,
                        message: format!(
                            "`{other}` is not a split folder: a split's annotation files go in \
                             `Training_Set` (ABAW 2020), `Train_Set` (2021 and later) or \
                             `Validation_Set`, spelled so"
                        ),
                    });
                }
                _ => {}
            }
        }
        if uses_train_set && uses_training_set {
            return Err(DataError::Layout {
                root: dir,
                message: "the task folders use both `Training_Set` (ABAW 2020) and `Train_Set` \
                          (2021 and later): files of two releases; keep one release per root"
                    .into(),
            });
        }
        for (split, sdir) in [(Split::Train, train_dir), (Split::Validation, val_dir)] {
            let Some(sdir) = sdir else { continue };
            for (name, path) in list_dir(&sdir)? {
                let Some(video) = name.strip_suffix(".txt") else {
                    continue;
                };
                if video.is_empty() || name.starts_with('.') || !path.is_file() {
                    continue;
                }
                entries.push(AnnotationEntry {
                    task,
                    split,
                    video: video.to_string(),
                    path,
                });
            }
        }
    }
    entries.sort_by(|a, b| (a.task, a.split, &a.video).cmp(&(b.task, b.split, &b.video)));
    let layout = if challenge {
        Layout::Abaw2022
    } else if uses_train_set {
        Layout::Abaw2021
    } else {
        Layout::Abaw2020
    };
    let crops = root.join(CROPS_DIR);
    if !is_dir(&crops) {
        return Err(DataError::Layout {
            root: root.to_path_buf(),
            message: format!("no `{CROPS_DIR}` folder of face crops"),
        });
    }
    refuse_crops_elsewhere(root, &crops)?;
    Ok(Discovered {
        layout,
        annotations,
        entries,
        crops,
    })
}

/// Refuses a second folder of crops beside `cropped_aligned` (the 2022+ releases ship
/// `cropped_aligned_new_50_vids`) holding videos `cropped_aligned` lacks: crops are read from
/// `cropped_aligned` alone, so those videos' frames would count as missing and never train.
fn refuse_crops_elsewhere(root: &Path, crops: &Path) -> Result<(), DataError> {
    let in_crops: std::collections::BTreeSet<String> =
        list_dir(crops)?.into_iter().map(|(name, _)| name).collect();
    for (name, path) in list_dir(root)? {
        if name == CROPS_DIR || !name.starts_with(CROPS_DIR) || !is_dir(&path) {
            continue;
        }
        let extra: Vec<String> = list_dir(&path)?
            .into_iter()
            .filter(|(v, p)| !v.starts_with('.') && is_dir(p) && !in_crops.contains(v))
            .map(|(v, _)| v)
            .collect();
        if let Some(first) = extra.first() {
            return Err(DataError::Layout {
                root: path.clone(),
                message: format!(
                    "holds the crops of {} videos that `{CROPS_DIR}` lacks (first `{first}`); \
                     crops are read from `{CROPS_DIR}` alone: link them there, e.g. `for d in \
                     {name}/*; do ln -s \"$PWD/$d\" {CROPS_DIR}/; done` in the root",
                    extra.len()
                ),
            });
        }
    }
    Ok(())
}

/// Whether a folder name inside a task folder is meant as a split but is not one of the exact
/// names (`Validation_set`, `train`, `val`): such a folder's files would be left out unread.
fn looks_like_a_split(name: &str) -> bool {
    let lower = name.to_ascii_lowercase();
    lower.contains("train") || lower.contains("valid") || lower.starts_with("val")
}

/// The 5-digit, 1-based file name of frame `frame` (`00017.jpg`).
pub fn frame_file_name(frame: u32) -> String {
    format!("{frame:05}.jpg")
}

/// The frame number of a crop file name, `None` for anything else. Only the name
/// [`frame_file_name`] gives is a crop name (`00017.jpg` -> 17, `123456.jpg` -> 123456), so
/// every reader that builds a crop's path from its frame number finds the listed file.
pub fn parse_frame_file_name(name: &str) -> Option<u32> {
    let f = digit_stem_number(name)?;
    (name.len() == frame_file_name(f).len()).then_some(f)
}

/// The digits of a name of 5 or more digits and `.jpg` (a crop name, padded or not).
fn digit_stem(name: &str) -> Option<&str> {
    let stem = name.strip_suffix(".jpg")?;
    (stem.len() >= 5 && stem.bytes().all(|b| b.is_ascii_digit())).then_some(stem)
}

/// The nonzero `u32` number of a name of 5 or more digits and `.jpg`, padded or not.
pub(crate) fn digit_stem_number(name: &str) -> Option<u32> {
    digit_stem(name)?.parse::<u32>().ok().filter(|&f| f > 0)
}

/// Whether `name` is a crop name of frame 0 (`00000.jpg`, `000000.jpg`): 5 or more zeros and
/// `.jpg`. No Aff-Wild2 crop has that name (frames are numbered from 1).
pub(crate) fn is_frame_zero_name(name: &str) -> bool {
    digit_stem(name).is_some_and(|stem| stem.bytes().all(|b| b == b'0'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_names_round_trip() {
        assert_eq!(frame_file_name(17), "00017.jpg");
        assert_eq!(parse_frame_file_name("00017.jpg"), Some(17));
        assert_eq!(parse_frame_file_name("123456.jpg"), Some(123456));
        assert_eq!(parse_frame_file_name("000017.jpg"), None);
        assert_eq!(parse_frame_file_name("0123456.jpg"), None);
        assert_eq!(parse_frame_file_name("00000.jpg"), None);
        assert_eq!(parse_frame_file_name("0017.jpg"), None);
        assert_eq!(parse_frame_file_name("00017.png"), None);
        assert_eq!(parse_frame_file_name("a0017.jpg"), None);
    }

    #[test]
    fn frame_zero_names() {
        assert!(is_frame_zero_name("00000.jpg"));
        assert!(is_frame_zero_name("000000.jpg"));
        assert!(!is_frame_zero_name("0000.jpg"));
        assert!(!is_frame_zero_name("00001.jpg"));
        assert!(!is_frame_zero_name("00000.png"));
        assert!(!is_frame_zero_name("a0000.jpg"));
    }
}
