//! The run record: run ids and directories, `runs.csv`, `metrics.csv`, TensorBoard events,
//! checkpoint files, `report.json`, `log.txt` and the result tables' CSV files, all written atomically.

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
pub mod table_csv;
pub mod tensorboard;
