//! The `mtanet` command line: argument parsing, and one call per command into the modules
//! that do the work. A user error prints its message and causes, not a stack trace.

pub mod args;
pub mod commands;
pub mod runtime;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

pub use args::*;

/// MTANet (ABAW 2020) multi-task facial affect recognition: train, reproduce Table I, compare.
#[derive(Parser, Debug)]
#[command(name = "mtanet", version, about, long_about = None)]
pub struct Cli {
    /// On an error, print its full detail (with a backtrace when RUST_BACKTRACE is set).
    #[arg(short, long, global = true)]
    pub verbose: bool,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Train one configuration of an experiment file (or resume a run).
    Train(TrainArgs),
    /// Reproduce Table I: every backbone row, the paper's values and our deltas.
    Table1(TableArgs),
    /// Run every row of an experiment file and print its table, e.g. `mtanet run heads`
    /// (= experiments/heads.yaml): the paper's ablations are `heads`, `pooling` and
    /// `loss_weighting`.
    Run(RunArgs),
    /// Run one Table I row with overrides, e.g. `mtanet ablate backbone=senet50 seed=3`.
    Ablate(AblateArgs),
    /// Print result CSVs (table1.csv, runs.csv) side by side with deltas.
    Compare {
        /// Two or more CSV files.
        #[arg(required = true, num_args = 2..)]
        files: Vec<PathBuf>,
    },
    /// Dataset tools.
    #[command(subcommand)]
    Data(DataCommand),
    /// Model tools.
    #[command(subcommand)]
    Model(ModelCommand),
    /// CPU-vs-GPU conformance of every op and backbone and GPU train/eval img/s: the Rust half
    /// of scripts/gpu-check.sh (`--probe`: only check that the device works).
    GpuCheck(crate::gpu_check::GpuCheckArgs),
    /// Train-step and eval img/s of every full-size backbone beside PyTorch on this machine,
    /// with ratios, GFLOP/s and peak memory; writes `results/bench/train.csv`.
    Bench(BenchArgs),
    /// One (backbone, batch) point of `bench`, measured in this process; prints JSON.
    #[command(hide = true)]
    BenchOne {
        /// Backbone name.
        #[arg(long)]
        backbone: String,
        /// Batch size.
        #[arg(long)]
        batch: usize,
        /// Timed steps.
        #[arg(long, default_value_t = 3)]
        steps: usize,
        /// Untimed warm-up steps.
        #[arg(long, default_value_t = 1)]
        warmup: usize,
    },
    /// Predict a split (or the test set, or a folder of crops) with a trained checkpoint,
    /// writing ABAW 2020 submission files (`VA_Set/`, `AU_Set/`, `EXPR_Set/`).
    Predict(PredictArgs),
    /// Choose per-AU thresholds and per-task smoothing windows on a labelled split and store
    /// them in the checkpoint, where `predict` applies them (its `--raw` skips them).
    Tune(TuneArgs),
    /// Score a folder of prediction files (ours or a peer's) with the ABAW metrics.
    Evaluate(EvaluateArgs),
    /// Submission tools: `validate` checks a prediction folder before it is sent.
    #[command(subcommand)]
    Submit(SubmitCommand),
}

/// Runs the `mtanet` command line and returns its exit code.
///
/// An error prints as `error: <message>` with one `  caused by: ...` line per cause (at most
/// a few lines, whatever `RUST_BACKTRACE` says); `-v` prints the full debug form instead.
pub fn main() -> ExitCode {
    runtime::runtime_defaults();
    crate::record::log_file::init();
    let cli = Cli::parse();
    let verbose = cli.verbose;
    match commands::run(cli.command) {
        Ok(code) => code,
        Err(e) => {
            eprint!("{}", error_text(&e, verbose));
            ExitCode::FAILURE
        }
    }
}

/// How an error is shown: the message and its causes, or with `verbose` the debug form
/// (which includes a backtrace when one was captured).
pub fn error_text(e: &anyhow::Error, verbose: bool) -> String {
    if verbose {
        return format!("error: {e:?}\n");
    }
    let mut out = format!("error: {e}\n");
    for cause in e.chain().skip(1) {
        out.push_str(&format!("  caused by: {cause}\n"));
    }
    out
}
