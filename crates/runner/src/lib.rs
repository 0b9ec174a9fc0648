//! The experiment runner behind the `mtanet` binary: YAML experiments, two-stage training,
//! evaluation, TensorBoard logs, checkpoints and result CSVs.
//!
//! This is the only crate that wires the others together (data -> model -> losses ->
//! metrics -> logs); see `../shared/design.md` in the project notes and the README.
#![warn(missing_docs)]

pub mod atomic_io;
pub mod bench;
pub mod checkpoint;
pub mod cli;
pub mod compare;
pub mod config;
pub mod device;
pub mod eval;
pub mod evaluate;
pub mod gpu_check;
pub mod logging;
pub mod model_forward;
pub mod optim;
pub mod predict;
pub mod rng;
pub mod schedule;
pub mod seeded_init;
pub mod stats;
pub mod table1;
pub mod tensorboard;
pub mod train;
