//! Errors of experiment files and overrides, naming the file, line and column or the key.

use std::path::PathBuf;

/// An error in an experiment file or an override, naming the file or the key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The YAML does not match the schema (unknown key, wrong type); carries line and column.
    #[error("{path}: {message}")]
    Schema {
        /// The file (or `--set` for command-line overrides).
        path: String,
        /// serde_yaml's message, with the key path, line and column.
        message: String,
    },
    /// A value is out of range or inconsistent.
    #[error("{path}: `{key}`: {message}")]
    Invalid {
        /// The file the value came from.
        path: String,
        /// The dotted key, e.g. `training.stages[0].lr`.
        key: String,
        /// What is wrong and how to fix it.
        message: String,
    },
    /// A configuration that must train on real Aff-Wild2 has no data root.
    #[error(
        "{path}: this configuration trains on real Aff-Wild2 (`data.require_real`) and no data \
         root is set: export AFFWILD2_ROOT=/path/to/affwild2, or pass --set data.root=/path/to/affwild2"
    )]
    NeedsRealData {
        /// The experiment file.
        path: String,
    },
    /// A profile or row that the file does not define.
    #[error("{path}: no {what} named `{name}` (defined: {defined})")]
    Unknown {
        /// The file.
        path: String,
        /// `profile` or `row`.
        what: &'static str,
        /// The requested name.
        name: String,
        /// The names the file defines.
        defined: String,
    },
}
