//! Experiments as data: the YAML schema with its defaults, profiles, rows and `--set`
//! overrides, and the validation of every value before a run starts.
//!
//! An experiment file is data (as in lightning-hydra-template / timm `train.py`): a base
//! configuration, profiles that override fields (`demo`, `paper`), and optional rows (one per
//! backbone of Table I). Every key is checked against the schema when the file is read, so a
//! typo fails with its line and column; overrides are merged as YAML values and checked again.

pub mod differences;
pub mod error;
pub mod file;
pub mod overrides;
pub mod profile;
pub mod schema;
pub mod validate;

pub use error::ConfigError;
pub use file::{ExperimentFile, PaperMetric, PaperValues, RowSpec, TABLE1_YAML};
pub use overrides::Override;
pub use schema::*;
