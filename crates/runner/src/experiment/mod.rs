//! Experiments as data: the YAML schema with its defaults, profiles, rows and `--set`
//! overrides, and the validation of every value before a run starts.

pub mod config;
