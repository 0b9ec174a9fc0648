//! The run record: run ids and directories, `runs.csv`, `metrics.csv`, TensorBoard events,
//! checkpoint files, `report.json` and `log.txt`, all written atomically.

pub mod atomic_io;
pub mod checkpoint;
pub mod data_fingerprint;
pub mod hparams;
pub mod log_file;
pub mod metrics_csv;
pub mod run_dir;
pub mod run_scalars;
pub mod runs_csv;
pub mod summary_line;
pub mod tensorboard;
