//! The AU and expression names of a set of annotation files, read from their headers: each
//! task's first file gives them, and every other file of the task must repeat them, in the same
//! order. A file naming other AUs or classes, or the same ones in another order, would have its
//! columns read as the wrong AUs or classes, so it is refused, naming both files. The index
//! (training), `evaluate` and `tune` check their files through one [`HeaderVocab`].

use std::path::{Path, PathBuf};

use crate::error::DataError;
use crate::task::{Task, Vocab};

/// Per task, the header names its files must repeat and the file they were first read from.
#[derive(Debug, Clone, Default)]
pub struct HeaderVocab {
    first: [Option<(PathBuf, Vec<String>)>; 3],
}

impl HeaderVocab {
    /// No file taken yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Takes the header `names` of `path`, a file of `task`: they become the task's names when
    /// it is the task's first file; otherwise they must be the first file's, else
    /// [`DataError::VocabMismatch`] (line 1, both files and both lists).
    pub fn admit(&mut self, task: Task, path: &Path, names: &[String]) -> Result<(), DataError> {
        match &self.first[task.index()] {
            None => {
                self.first[task.index()] = Some((path.to_path_buf(), names.to_vec()));
                Ok(())
            }
            Some((first, expected)) if expected.as_slice() != names => {
                Err(DataError::VocabMismatch {
                    path: path.to_path_buf(),
                    line: 1,
                    found: names.to_vec(),
                    expected: expected.clone(),
                    first: first.clone(),
                })
            }
            Some(_) => Ok(()),
        }
    }

    /// The AU and expression names taken so far (empty for a task without files).
    pub fn vocab(&self) -> Vocab {
        let names = |t: Task| {
            self.first[t.index()]
                .as_ref()
                .map(|(_, n)| n.clone())
                .unwrap_or_default()
        };
        Vocab {
            au_names: names(Task::Au),
            expr_names: names(Task::Expr),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(s: &str) -> Vec<String> {
        s.split(',').map(String::from).collect()
    }

    #[test]
    fn the_first_file_of_a_task_sets_its_names_and_another_order_is_refused() {
        let mut h = HeaderVocab::new();
        h.admit(Task::Au, Path::new("a/v1.txt"), &names("AU1,AU2"))
            .unwrap();
        h.admit(Task::Expr, Path::new("e/v1.txt"), &names("Neutral,Anger"))
            .unwrap();
        h.admit(Task::Au, Path::new("a/v2.txt"), &names("AU1,AU2"))
            .unwrap();
        let err = h
            .admit(Task::Au, Path::new("a/v3.txt"), &names("AU2,AU1"))
            .unwrap_err();
        match err {
            DataError::VocabMismatch {
                path,
                line,
                found,
                expected,
                first,
            } => {
                assert_eq!(path, Path::new("a/v3.txt"));
                assert_eq!(line, 1);
                assert_eq!(found, names("AU2,AU1"));
                assert_eq!(expected, names("AU1,AU2"));
                assert_eq!(first, Path::new("a/v1.txt"));
            }
            other => panic!("{other:?}"),
        }
        let v = h.vocab();
        assert_eq!(v.au_names, names("AU1,AU2"));
        assert_eq!(v.expr_names, names("Neutral,Anger"));
    }

    #[test]
    fn a_task_without_files_has_no_names() {
        let mut h = HeaderVocab::new();
        h.admit(Task::Expr, Path::new("e/v1.txt"), &names("Happy"))
            .unwrap();
        assert!(h.vocab().au_names.is_empty());
    }
}
