//! One training run: the stages of a configuration, evaluation after every epoch,
//! checkpoints, `metrics.csv`, TensorBoard and a row in `results/runs.csv`.
//!
//! The loop position lives in [`TrainState`](crate::record::checkpoint::TrainState); data order, augmentation, dropout and initial
//! weights all derive from the seed and that position, so `--resume` after a kill or Ctrl-C
//! ends with the same weights and metrics as an uninterrupted run on CPU.

pub mod interrupt;
pub mod pick_files;
pub mod progress;
pub mod resume_config;
mod run_outputs;
pub mod selection;
mod trainer;

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use mtanet_metrics::Report;

use crate::experiment::{Config, PaperValues};
use crate::record::atomic_io::write_atomic;
use crate::record::log_file::set_run_log;
use crate::record::run_dir::{claim_run_dir, new_run_id};
pub use interrupt::{install_ctrlc, interrupted, INTERRUPTED};
use trainer::{Opened, Trainer};

/// What the caller knows about a run beyond its config (for `runs.csv` and messages).
#[derive(Debug, Clone, Default)]
pub struct RunContext {
    /// Profile name, if any.
    pub profile: Option<String>,
    /// Table row name, if any.
    pub row: Option<String>,
    /// The paper's values for this row.
    pub paper: Option<PaperValues>,
    /// The keys the command line changed from the experiment file, as `key=value`
    /// (`ResolvedRun::overrides`).
    pub overrides: Vec<String>,
    /// Continue this run directory from its last checkpoint.
    pub resume: Option<PathBuf>,
    /// Stop after this many optimizer steps in this invocation (tests of resume).
    pub max_steps: Option<u64>,
    /// Hide progress bars.
    pub quiet: bool,
}

/// What a run is, beyond its configuration: written as `run.json` when it starts, read back
/// on `--resume`, so a resumed row keeps its row name, profile and paper values.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
struct RunIdentity {
    profile: Option<String>,
    row: Option<String>,
    paper: Option<PaperValues>,
    #[serde(default)]
    overrides: Vec<String>,
}

/// The result of a finished (or interrupted) run.
#[derive(Debug, Clone)]
pub struct RunOutcome {
    /// `results/<experiment>/<run_id>`.
    pub run_dir: PathBuf,
    /// Run id.
    pub run_id: String,
    /// The validation report the run presents: the selected evaluation's under
    /// `selection.criterion` (the last one's for `last`).
    pub report: Option<Report>,
    /// Which evaluation(s) `report` comes from, e.g. `best total at stage 2 epoch 3 (step 480)`.
    pub selected_from: String,
    /// Whether every stage completed.
    pub finished: bool,
    /// Unreadable crops skipped so far (`data.on_bad_frame: skip`), sorted.
    pub skipped: Vec<PathBuf>,
    /// Training throughput, images per second.
    pub train_img_s: f64,
    /// Wall time of this invocation in seconds.
    pub wall_s: f64,
}

/// Trains one configuration to the end (or until interrupted) and evaluates it.
pub fn run(config: &Config, ctx: &RunContext) -> anyhow::Result<RunOutcome> {
    let wall = Instant::now();
    let (run_dir, run_id) = match &ctx.resume {
        Some(dir) => {
            let id = dir
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            (dir.clone(), id)
        }
        None => {
            let name = ctx
                .row
                .clone()
                .unwrap_or_else(|| config.model.backbone.to_string());
            claim_run_dir(
                &config.results_dir.join(&config.experiment),
                &new_run_id(&name, config.seed),
            )?
        }
    };
    std::fs::create_dir_all(run_dir.join("checkpoints"))
        .with_context(|| format!("cannot create run directory {}", run_dir.display()))?;
    // Temporaries of writers killed mid-write (a checkpoint can be hundreds of MB).
    for dir in [run_dir.clone(), run_dir.join("checkpoints")] {
        for p in crate::record::atomic_io::remove_stale_temps(&dir)? {
            tracing::info!("removed {} (left by a killed writer)", p.display());
        }
    }
    let identity_path = run_dir.join("run.json");
    let resumed_ctx;
    let ctx = if ctx.resume.is_none() {
        write_atomic(&run_dir.join("config.yaml"), config.to_yaml().as_bytes())?;
        let identity = RunIdentity {
            profile: ctx.profile.clone(),
            row: ctx.row.clone(),
            paper: ctx.paper.clone(),
            overrides: ctx.overrides.clone(),
        };
        write_atomic(
            &identity_path,
            serde_json::to_string_pretty(&identity)?.as_bytes(),
        )?;
        ctx
    } else {
        // A resumed run keeps the row, profile, paper values and overrides it started with.
        let identity: RunIdentity = match std::fs::read(&identity_path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .with_context(|| format!("{}: not a run identity", identity_path.display()))?,
            Err(_) => RunIdentity::default(),
        };
        resumed_ctx = RunContext {
            profile: ctx.profile.clone().or(identity.profile),
            row: ctx.row.clone().or(identity.row),
            paper: ctx.paper.clone().or(identity.paper),
            overrides: if ctx.overrides.is_empty() {
                identity.overrides
            } else {
                ctx.overrides.clone()
            },
            ..ctx.clone()
        };
        &resumed_ctx
    };
    set_run_log(Some(&run_dir.join("log.txt")));
    tracing::info!("run {run_id} in {}", run_dir.display());
    let result =
        Trainer::open(config, ctx, run_dir, run_id, wall).and_then(|opened| match opened {
            Opened::Finished(outcome) => Ok(*outcome),
            Opened::Ready(trainer, optim) => trainer.train(optim),
        });
    set_run_log(None);
    result
}

/// `selected_from` of a finished run's `selection.json` (`last evaluation` without one).
fn read_selected_from(run_dir: &std::path::Path) -> String {
    std::fs::read(run_dir.join("selection.json"))
        .ok()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .and_then(|v| v["selected_from"].as_str().map(str::to_string))
        .unwrap_or_else(|| "last evaluation".into())
}
