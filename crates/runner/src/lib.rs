//! The experiment runner behind the `mtanet` binary: YAML experiments, two-stage training,
//! evaluation, TensorBoard logs, checkpoints and result CSVs.
//!
//! This is the only crate that wires the others together (data -> model -> losses ->
//! metrics -> logs). Each question has one module that answers it:
//! - [`experiment`]: what a run is (YAML schema, profiles, rows, overrides, validation);
//! - [`build`]: a configuration or a run directory turned into data, loaders and a model,
//!   including the one path from a checkpoint to a model;
//! - [`step`]: one training step and one eval step;
//! - [`training`]: the run loop (epochs, evaluation, checkpoints, resume, Ctrl-C);
//! - [`record`]: what a run leaves behind (run directories, CSVs, TensorBoard, checkpoints);
//! - [`submission`]: the ABAW prediction files, written and read;
//! - [`predict`] and [`evaluate`]: the commands over a checkpoint and over prediction files;
//! - [`tables`]: Table I, `compare`, seed summaries;
//! - [`bench`](mod@bench) and [`gpu_check`]: speed against PyTorch and CPU-vs-GPU conformance;
//! - [`cli`]: the command line, parsing only.
#![warn(missing_docs)]

pub mod bench;
pub mod build;
pub mod cli;
pub mod evaluate;
pub mod experiment;
pub mod gpu_check;
pub mod model_forward;
pub mod model_info;
pub mod predict;
pub mod record;
pub mod step;
pub mod submission;
pub mod tables;
pub mod training;
pub mod tune;
pub mod tuning;
