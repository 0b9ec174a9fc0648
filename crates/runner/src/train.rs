//! One training run: data -> model -> losses -> optimizer, with evaluation, TensorBoard,
//! checkpoints, `metrics.csv` and a row in `results/runs.csv`.
//!
//! The loop position lives in [`TrainState`]; data order, augmentation, dropout and initial
//! weights all derive from the seed and that position, so `--resume` after a kill or Ctrl-C
//! ends with the same weights and metrics as an uninterrupted run on CPU.

use std::collections::HashMap;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use anyhow::{bail, Context};
use candle_core::{DType, Device, Tensor};
use indicatif::{ProgressBar, ProgressStyle};
use mtanet_affwild2::{
    DatasetIndex, IndexOptions, Loader, LoaderConfig, Preprocess, Sample, Split, SynthConfig, Vocab,
};
use mtanet_backbones::{
    load_pretrained, resolve_pretrained, BackboneKind, MtaNet, MtaNetConfig, ResNetConfig,
    VaActivation,
};
use mtanet_losses::{total_loss, LossKind, TaskLosses, UncertaintyWeights};
use mtanet_metrics::{Accumulator, Report, Scoring};

use crate::atomic_io::{append_csv_row, csv_field, write_atomic};
use crate::checkpoint::{self, TrainState};
use crate::config::Config;
use crate::eval::evaluate;
use crate::optim::{params, Optimizer};
use crate::schedule::lr_at;
use crate::seeded_init::SeededVarMap;
use crate::tensorboard::{confusion_image, EventWriter};

/// Set by the Ctrl-C handler; the loop checkpoints and stops at the next step.
pub static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// What the caller knows about a run beyond its config (for `runs.csv` and messages).
#[derive(Debug, Clone, Default)]
pub struct RunContext {
    /// Profile name, if any.
    pub profile: Option<String>,
    /// Table row name, if any.
    pub row: Option<String>,
    /// The paper's values for this row: (valence, arousal, au, expr).
    pub paper: Option<[f64; 4]>,
    /// Continue this run directory from its last checkpoint.
    pub resume: Option<PathBuf>,
    /// Stop after this many optimizer steps in this invocation (tests of resume).
    pub max_steps: Option<u64>,
    /// Hide progress bars.
    pub quiet: bool,
}

/// The result of a finished (or interrupted) run.
#[derive(Debug, Clone)]
pub struct RunOutcome {
    /// `results/<experiment>/<run_id>`.
    pub run_dir: PathBuf,
    /// Run id.
    pub run_id: String,
    /// Final validation report.
    pub report: Option<Report>,
    /// Whether every stage completed.
    pub finished: bool,
    /// Training throughput, images per second.
    pub train_img_s: f64,
    /// Wall time of this invocation in seconds.
    pub wall_s: f64,
}

/// The data root a config points to, generating the synthetic set on first use.
pub fn data_root(config: &Config, quiet: bool) -> anyhow::Result<PathBuf> {
    if let Some(root) = &config.data.root {
        if !root.is_dir() {
            bail!(
                "data root {} does not exist: point `data.root` (or AFFWILD2_ROOT) at the folder \
                 holding annotations/ and cropped_aligned/ (see data/README.md), or set it to null \
                 to use the synthetic Aff-Wild2",
                root.display()
            );
        }
        return Ok(root.clone());
    }
    let s = &config.data.synthetic;
    let marker = s.dir.join("synth_report.json");
    if !marker.is_file() {
        if !quiet {
            eprintln!(
                "generating the synthetic Aff-Wild2 in {} ({} videos x {} frames, seed {}) ...",
                s.dir.display(),
                s.videos,
                s.frames,
                s.seed
            );
        }
        let report = mtanet_affwild2::generate(
            &s.dir,
            &SynthConfig {
                videos: s.videos,
                frames: s.frames,
                seed: s.seed,
                ..SynthConfig::default()
            },
        )
        .with_context(|| format!("generating the synthetic set in {}", s.dir.display()))?;
        write_atomic(&marker, serde_json::to_string_pretty(&report)?.as_bytes())?;
    }
    Ok(s.dir.clone())
}

/// Keeps at most `max` samples, evenly spaced (deterministic).
pub fn subsample(samples: &[Sample], max: Option<usize>) -> Vec<Sample> {
    match max {
        Some(m) if m < samples.len() && m > 0 => (0..m)
            .map(|i| samples[i * samples.len() / m].clone())
            .collect(),
        _ => samples.to_vec(),
    }
}

/// The backbone configuration a model config asks for.
pub fn backbone_config(config: &Config) -> ResNetConfig {
    let m = &config.model;
    ResNetConfig::from_kind(&m.backbone).scaled(m.width_div, m.depths, m.groups)
}

/// The MTANet configuration for a vocabulary.
pub fn model_config(config: &Config, vocab: &Vocab) -> MtaNetConfig {
    MtaNetConfig {
        backbone: backbone_config(config),
        hidden: config.model.head.hidden,
        dropout: config.model.head.dropout,
        va_activation: if config.model.head.va_activation == "none" {
            VaActivation::None
        } else {
            VaActivation::Tanh
        },
        n_au: vocab.au_names.len(),
        n_expr: vocab.expr_names.len(),
    }
}

/// The input normalisation each backbone was pretrained with.
pub fn preprocess_for(kind: &BackboneKind) -> Preprocess {
    match kind {
        BackboneKind::Senet50Vggface2 => Preprocess::vggface2(),
        _ => Preprocess::imagenet(),
    }
}

/// Loader settings for training (`train = true`) or evaluation.
pub fn loader_config(config: &Config, train: bool) -> LoaderConfig {
    let d = &config.data;
    LoaderConfig {
        batch_size: if train {
            d.batch_size
        } else {
            config.eval.batch_size
        },
        image_size: d.image_size,
        sampling: if train {
            d.sampling
        } else {
            mtanet_affwild2::Sampling::Mixed
        },
        shuffle: train,
        drop_last: false,
        seed: crate::rng::stream_seed(config.seed, &["data"]),
        prefetch: d.prefetch.max(1),
        threads: d.workers,
        augment: if train { d.augment.clone() } else { None },
        preprocess: preprocess_for(&config.model.backbone),
        on_bad_frame: d.on_bad_frame,
        resize: d.resize,
    }
}

/// AU positive weights (negatives / positives per AU, clamped to [1, 10]) from training labels.
pub fn au_pos_weight(samples: &[Sample], n_au: usize) -> Vec<f32> {
    let mut pos = vec![0f64; n_au];
    let mut n = 0f64;
    for s in samples {
        if let Some(au) = &s.au {
            n += 1.0;
            for (p, &a) in pos.iter_mut().zip(au.iter()) {
                *p += a as f64;
            }
        }
    }
    pos.iter()
        .map(|&p| ((n - p) / p.max(1.0)).clamp(1.0, 10.0) as f32)
        .collect()
}

/// A fresh run id: `<row>-s<seed>-<unix seconds>-<pid>`.
fn new_run_id(config: &Config, ctx: &RunContext) -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let name = ctx
        .row
        .clone()
        .unwrap_or_else(|| config.model.backbone.to_string());
    format!("{name}-s{}-{secs}-{}", config.seed, std::process::id())
}

/// Creates a run directory that did not exist before (`base/id`, else `base/id-2`, ...), so
/// two runs started in the same second never share one.
fn claim_run_dir(base: &Path, id: &str) -> anyhow::Result<(PathBuf, String)> {
    std::fs::create_dir_all(base)
        .with_context(|| format!("cannot create results directory {}", base.display()))?;
    for n in 1.. {
        let name = if n == 1 {
            id.to_string()
        } else {
            format!("{id}-{n}")
        };
        let dir = base.join(&name);
        match std::fs::create_dir(&dir) {
            Ok(()) => return Ok((dir, name)),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => {
                return Err(e)
                    .with_context(|| format!("cannot create run directory {}", dir.display()))
            }
        }
    }
    unreachable!("the loop returns")
}

/// The commit the binary runs from (`git rev-parse`), or `unknown`.
pub fn git_commit() -> String {
    std::process::Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| "unknown".into())
}

/// `metrics.csv`: one row per evaluation, rewritten atomically (rows after `keep_until_step`
/// from an interrupted attempt are dropped on resume).
struct MetricsCsv {
    path: PathBuf,
    header: Vec<String>,
    rows: Vec<(u64, Vec<String>)>,
}

impl MetricsCsv {
    fn open(path: PathBuf, keep_until_step: u64) -> Self {
        let mut rows = Vec::new();
        let mut header = Vec::new();
        if let Ok((h, r)) = crate::atomic_io::read_csv(&path) {
            header = h;
            for row in r {
                if let Some(step) = row.first().and_then(|s| s.parse::<u64>().ok()) {
                    if step <= keep_until_step {
                        rows.push((step, row));
                    }
                }
            }
        }
        Self { path, header, rows }
    }

    fn push(
        &mut self,
        step: u64,
        stage: &str,
        epoch: usize,
        report: &Report,
    ) -> anyhow::Result<()> {
        let scalars = report.scalars();
        let mut header = vec!["step".to_string(), "stage".into(), "epoch".into()];
        header.extend(scalars.iter().map(|(k, _)| k.clone()));
        let mut row = vec![step.to_string(), stage.to_string(), epoch.to_string()];
        row.extend(scalars.iter().map(|(_, v)| format!("{v:.6}")));
        if self.header.is_empty() {
            self.header = header;
        }
        self.rows.retain(|(s, _)| *s != step);
        self.rows.push((step, row));
        let mut text = self
            .header
            .iter()
            .map(|h| csv_field(h))
            .collect::<Vec<_>>()
            .join(",");
        text.push('\n');
        for (_, r) in &self.rows {
            text.push_str(&r.iter().map(|f| csv_field(f)).collect::<Vec<_>>().join(","));
            text.push('\n');
        }
        write_atomic(&self.path, text.as_bytes())
    }
}

/// Logs validation metrics to TensorBoard: the summary scalars under `val/`, per-AU and
/// per-class F1 once each, under their names (`val/au_f1/AU12`, `val/expr_f1/Happiness`)
/// instead of the indexed keys of `Report::scalars`.
fn log_report(tb: &mut Option<EventWriter>, report: &Report, vocab: &Vocab, step: u64) {
    let Some(w) = tb.as_mut() else { return };
    let mut res = Ok(());
    for (k, v) in report.scalars() {
        if k.starts_with("au.f1_au.") || k.starts_with("expr.f1_class.") {
            continue;
        }
        res = res.and(w.scalar(&format!("val/{k}"), v, step));
    }
    if let Some(au) = &report.au {
        for (name, f1) in vocab.au_names.iter().zip(&au.per_au_f1) {
            res = res.and(w.scalar(&format!("val/au_f1/{name}"), *f1, step));
        }
    }
    if let Some(e) = &report.expr {
        for (name, f1) in vocab.expr_names.iter().zip(&e.per_class_f1) {
            res = res.and(w.scalar(&format!("val/expr_f1/{name}"), *f1, step));
        }
    }
    if let Some(e) = &report.expr {
        let (rgb, wd, ht) = confusion_image(&e.confusion, 24);
        res = res.and(w.image("val/expr_confusion", &rgb, wd, ht, step));
    }
    res = res.and(w.flush());
    if let Err(e) = res {
        tracing::warn!(
            "TensorBoard write failed ({e}); logging to TensorBoard stops, training goes on"
        );
        *tb = None;
    }
}

/// Which task's loss is not finite, for the error message.
fn non_finite_task(report: &mtanet_losses::LossReport) -> &'static str {
    if report.va.is_some_and(|v| !v.is_finite()) {
        "va"
    } else if report.au.is_some_and(|v| !v.is_finite()) {
        "au"
    } else if report.expr.is_some_and(|v| !v.is_finite()) {
        "expr"
    } else {
        "total"
    }
}

/// Everything needed to train: built once per run.
struct Setup {
    device: Device,
    vocab: Vocab,
    train: Loader,
    val: Loader,
    vars: SeededVarMap,
    model: MtaNet,
    uncertainty: UncertaintyWeights,
    pos_weight: Option<Tensor>,
}

fn setup(config: &Config, quiet: bool) -> anyhow::Result<Setup> {
    let root = data_root(config, quiet)?;
    let index = DatasetIndex::load(
        &root,
        &IndexOptions {
            cross_task_overlap: config.data.cross_task_overlap,
            ..IndexOptions::default()
        },
    )
    .with_context(|| format!("indexing {}", root.display()))?;
    let vocab = index.vocab.clone();
    let train_samples = subsample(index.samples(Split::Train), config.data.max_train_frames);
    let val_samples = subsample(index.samples(Split::Validation), config.data.max_val_frames);
    if train_samples.is_empty() {
        bail!("{}: no labelled training frames found", root.display());
    }
    if val_samples.is_empty() {
        bail!("{}: no labelled validation frames found", root.display());
    }
    let device = crate::device::open(
        crate::device::parse_device(&config.device).map_err(anyhow::Error::msg)?,
    )?;
    if config.precision == mtanet_backbones::Precision::Bf16 && device.is_cpu() {
        tracing::warn!("precision bf16 on the CPU: f32 kernels plus casts, slower than f32");
        if !quiet {
            eprintln!(
                "note: precision bf16 on the CPU emulates bf16 with the f32 kernels plus casts \
                 (slower than f32); it is meant for CUDA"
            );
        }
    }
    let pos_weight = if config.training.au_pos_weight {
        let w = au_pos_weight(&train_samples, vocab.au_names.len());
        Some(Tensor::new(w.as_slice(), &device)?)
    } else {
        None
    };
    let train = Loader::new(train_samples, &vocab, loader_config(config, true))?;
    let val = Loader::new(val_samples, &vocab, loader_config(config, false))?;
    let vars = SeededVarMap::new(crate::rng::stream_seed(config.seed, &["weights"]));
    let vb = vars.var_builder(DType::F32, &device);
    let model =
        MtaNet::new(&model_config(config, &vocab), vb.clone())?.with_precision(config.precision);
    let uncertainty = UncertaintyWeights::new(vb.pp("uncertainty"))?;
    if let Some(spec) = &config.model.pretrained {
        let file = resolve_pretrained(spec)?;
        let report = load_pretrained(vars.varmap(), &file, "backbone.")?;
        tracing::info!("pretrained {}: {report}", file.display());
        if !quiet {
            eprintln!("pretrained weights {}: {report}", file.display());
        }
    }
    Ok(Setup {
        device,
        vocab,
        train,
        val,
        vars,
        model,
        uncertainty,
        pos_weight,
    })
}

fn var_tensors(vars: &SeededVarMap) -> HashMap<String, Tensor> {
    vars.varmap()
        .data()
        .lock()
        .expect("var map lock poisoned")
        .iter()
        .map(|(k, v)| (k.clone(), v.as_tensor().clone()))
        .collect()
}

fn restore_vars(
    vars: &SeededVarMap,
    saved: &HashMap<String, Tensor>,
    path: &Path,
) -> anyhow::Result<()> {
    let data = vars.varmap().data().lock().expect("var map lock poisoned");
    for (k, v) in data.iter() {
        let t = saved
            .get(k)
            .with_context(|| format!("{}: checkpoint lacks `{k}`", path.display()))?;
        if t.shape() != v.shape() {
            bail!(
                "{}: `{k}` has shape {:?} in the checkpoint, the model expects {:?}",
                path.display(),
                t.dims(),
                v.dims()
            );
        }
        v.set(&t.to_dtype(v.dtype())?)?;
    }
    Ok(())
}

/// The metrics every `runs.csv` row carries (keys of [`Report::scalars`]), in column order.
pub const RUN_METRICS: &[&str] = &[
    "va.ccc_valence",
    "va.ccc_arousal",
    "va.score",
    "au.f1",
    "au.accuracy",
    "au.score",
    "au.f1_tuned",
    "expr.f1",
    "expr.accuracy",
    "expr.score",
];

/// The `runs.csv` columns: identity, [`RUN_METRICS`], paper values and deltas, cost.
pub fn runs_header() -> Vec<String> {
    const IDENTITY: &[&str] = &[
        "run_id",
        "experiment",
        "profile",
        "row",
        "backbone",
        "seed",
        "git_commit",
        "status",
    ];
    const TAIL: &[&str] = &[
        "paper.valence",
        "paper.arousal",
        "paper.au",
        "paper.expr",
        "delta.valence",
        "delta.arousal",
        "delta.au",
        "delta.expr",
        "steps",
        "wall_s",
        "train_img_s",
        "run_dir",
    ];
    IDENTITY
        .iter()
        .chain(RUN_METRICS)
        .chain(TAIL)
        .map(|s| s.to_string())
        .collect()
}

/// Appends the run's row to `results/runs.csv` (locked, atomic).
#[allow(clippy::too_many_arguments)]
fn append_run_row(
    config: &Config,
    ctx: &RunContext,
    run_id: &str,
    run_dir: &Path,
    status: &str,
    report: Option<&Report>,
    steps: u64,
    wall_s: f64,
    img_s: f64,
) -> anyhow::Result<()> {
    let scalars: HashMap<String, f64> = report
        .map(|r| r.scalars().into_iter().collect())
        .unwrap_or_default();
    let get = |k: &str| {
        scalars
            .get(k)
            .map(|v| format!("{v:.6}"))
            .unwrap_or_default()
    };
    let ours = [
        scalars.get("va.ccc_valence"),
        scalars.get("va.ccc_arousal"),
        scalars.get("au.f1"),
        scalars.get("expr.f1"),
    ];
    let mut row: Vec<String> = vec![
        run_id.into(),
        config.experiment.clone(),
        ctx.profile.clone().unwrap_or_default(),
        ctx.row.clone().unwrap_or_default(),
        config.model.backbone.to_string(),
        config.seed.to_string(),
        git_commit(),
        status.into(),
    ];
    for k in RUN_METRICS {
        row.push(get(k));
    }
    let paper = ctx.paper;
    for i in 0..4 {
        row.push(paper.map(|p| format!("{}", p[i])).unwrap_or_default());
    }
    for i in 0..4 {
        row.push(match (paper, ours[i]) {
            (Some(p), Some(o)) => format!("{:.6}", o - p[i]),
            _ => String::new(),
        });
    }
    row.push(steps.to_string());
    row.push(format!("{wall_s:.1}"));
    row.push(format!("{img_s:.2}"));
    row.push(run_dir.display().to_string());
    append_csv_row(&config.results_dir.join("runs.csv"), &runs_header(), &row)?;
    Ok(())
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
        None => claim_run_dir(
            &config.results_dir.join(&config.experiment),
            &new_run_id(config, ctx),
        )?,
    };
    std::fs::create_dir_all(run_dir.join("checkpoints"))
        .with_context(|| format!("cannot create run directory {}", run_dir.display()))?;
    if ctx.resume.is_none() {
        write_atomic(&run_dir.join("config.yaml"), config.to_yaml().as_bytes())?;
    }
    crate::logging::set_run_log(Some(&run_dir.join("log.txt")));
    tracing::info!("run {run_id} in {}", run_dir.display());

    let s = setup(config, ctx.quiet)?;
    let n_au = s.vocab.au_names.len();
    let n_expr = s.vocab.expr_names.len();
    let last_ckpt = run_dir.join("checkpoints").join("last.safetensors");

    let mut state = TrainState::default();
    let mut resumed_optim: Option<HashMap<String, Tensor>> = None;
    if ctx.resume.is_some() {
        let c = checkpoint::load(&last_ckpt, &s.device).with_context(|| {
            format!(
                "cannot resume {}: no readable checkpoint (was the run started with this config?)",
                run_dir.display()
            )
        })?;
        restore_vars(&s.vars, &c.model, &last_ckpt)?;
        state = c.state;
        resumed_optim = Some(c.optim);
        if state.finished {
            // Nothing left to do: report what the run already wrote, add no row.
            let path = run_dir.join("report.json");
            let report: Report = serde_json::from_slice(
                &std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?,
            )
            .with_context(|| format!("{}: invalid report", path.display()))?;
            if !ctx.quiet {
                eprintln!("{} is already finished", run_dir.display());
            }
            crate::logging::set_run_log(None);
            return Ok(RunOutcome {
                run_dir,
                run_id,
                report: Some(report),
                finished: true,
                train_img_s: state.images as f64 / state.train_seconds.max(1e-9),
                wall_s: wall.elapsed().as_secs_f64(),
            });
        }
        tracing::info!("resumed at step {}", state.global_step);
        if !ctx.quiet {
            eprintln!(
                "resuming {} at step {}",
                run_dir.display(),
                state.global_step
            );
        }
    }

    let mut tb = match EventWriter::create(&run_dir) {
        Ok(w) => Some(w),
        Err(e) => {
            tracing::warn!(
                "cannot write TensorBoard events in {}: {e}",
                run_dir.display()
            );
            None
        }
    };
    let mut metrics_csv = MetricsCsv::open(run_dir.join("metrics.csv"), state.global_step);
    let mut last_report: Option<Report> = None;
    let mut steps_this_call = 0u64;
    let train_start = Instant::now();
    let train_seconds_before = state.train_seconds;
    let stages = config.training.stages.clone();
    let bpe = s.train.batches_per_epoch().max(1);

    let save_ckpt = |state: &TrainState, opt: &Optimizer| -> anyhow::Result<()> {
        let (ost, _) = opt.state();
        checkpoint::save(&last_ckpt, &var_tensors(&s.vars), &ost, state)
    };
    let do_eval = |tb: &mut Option<EventWriter>, step: u64| -> anyhow::Result<Report> {
        let acc = evaluate(&s.model, &s.val, &s.device, n_au, n_expr, |_| {})?;
        let report = acc_report(&acc, config, s.vocab.expr_names.len() > 7);
        log_report(tb, &report, &s.vocab, step);
        Ok(report)
    };

    'stages: while state.stage < stages.len() {
        let stage = &stages[state.stage];
        let total_steps = stage.steps.unwrap_or(stage.epochs * bpe);
        let mut opt = Optimizer::new(
            stage,
            params(
                &s.vars
                    .varmap()
                    .data()
                    .lock()
                    .expect("var map lock poisoned"),
                stage.decay_norm_and_bias,
            ),
        );
        if let Some(o) = resumed_optim.take() {
            opt.load_state(&o, state.optimizer_step);
        }
        let pb = if ctx.quiet {
            ProgressBar::hidden()
        } else {
            ProgressBar::new(total_steps as u64)
        };
        pb.set_style(
            ProgressStyle::with_template(
                "{prefix} [{bar:30}] {pos}/{len} {msg} ({elapsed} < {eta})",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
        );
        pb.set_prefix(format!(
            "{} stage {}/{} {}",
            ctx.row.as_deref().unwrap_or(&run_id),
            state.stage + 1,
            stages.len(),
            stage.name
        ));
        pb.set_position(state.stage_step as u64);
        // Without a terminal (CI, nohup, pipes) the bar is hidden: print a line every 30 s.
        let plain_progress = !ctx.quiet && !std::io::stderr().is_terminal();
        let mut last_line = Instant::now();
        let stage_start = Instant::now();
        let stage_start_step = state.stage_step;
        // `state.batch == bpe`: a run stopped after the epoch's last step but before the epoch
        // was closed (evaluated and checkpointed); the empty pass below closes it.
        while state.stage_step < total_steps || state.batch >= bpe {
            let epoch_id = (state.stage as u64) * 100_000 + state.epoch as u64;
            let mut epoch_done = true;
            for batch in s.train.epoch(epoch_id, state.batch) {
                if state.stage_step >= total_steps {
                    epoch_done = false;
                    break;
                }
                let batch = batch?;
                let step_start = Instant::now();
                let lr = lr_at(&stage.schedule, stage.lr, state.stage_step, total_steps);
                opt.set_lr(lr);
                let images = batch.images.to_device(&s.device)?;
                s.model.set_dropout_seed(crate::rng::stream_seed(
                    config.seed,
                    &["dropout", &state.global_step.to_string()],
                ));
                let out = s.model.forward_t(&images, true)?;
                let dev = |t: &Tensor| t.to_device(&s.device);
                let losses = TaskLosses::compute(
                    &out.va,
                    &out.au_logits,
                    &out.expr_logits,
                    &dev(&batch.va)?,
                    &dev(&batch.va_mask)?,
                    &dev(&batch.au)?,
                    &dev(&batch.au_mask)?,
                    &dev(&batch.expr)?,
                    &dev(&batch.expr_mask)?,
                    s.pos_weight.as_ref(),
                )?;
                let uw = matches!(stage.loss, LossKind::Uncertainty).then_some(&s.uncertainty);
                let report = total_loss(&losses, stage.loss, uw)?;
                let total = report.total.to_dtype(DType::F32)?.to_scalar::<f32>()?;
                let ids = || {
                    batch
                        .ids
                        .iter()
                        .take(8)
                        .map(|i| i.to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                };
                let grads;
                let mut fault = None;
                if !total.is_finite() {
                    fault = Some(format!(
                        "non-finite loss ({total}) in task `{}`",
                        non_finite_task(&report)
                    ));
                    grads = None;
                } else {
                    let g = report.total.backward()?;
                    let norm = opt.grad_norm(&g)?;
                    if !norm.is_finite() {
                        fault = Some(format!("non-finite gradient norm ({norm})"));
                    }
                    grads = Some((g, norm));
                }
                if let Some(f) = fault {
                    pb.abandon();
                    let elapsed = wall.elapsed().as_secs_f64();
                    append_run_row(
                        config,
                        ctx,
                        &run_id,
                        &run_dir,
                        "failed",
                        last_report.as_ref(),
                        state.global_step,
                        elapsed,
                        0.0,
                    )?;
                    bail!(
                        "{f} at step {} (stage {}, epoch {}, batch {}); batch samples: {}{}. \
                         The last good checkpoint is {}; the run is marked failed in runs.csv. \
                         Try a lower lr or `training.grad_clip`.",
                        state.global_step,
                        stage.name,
                        state.epoch,
                        state.batch,
                        ids(),
                        if batch.ids.len() > 8 { ", ..." } else { "" },
                        last_ckpt.display()
                    );
                }
                let (g, norm) = grads.expect("set when no fault");
                let scale = match config.training.grad_clip {
                    Some(c) if norm > c => c / (norm + 1e-6),
                    _ => 1.0,
                };
                opt.step(&g, scale)?;
                let n = batch.ids.len() as u64;
                state.stage_step += 1;
                state.global_step += 1;
                state.batch += 1;
                state.optimizer_step += 1;
                state.images += n;
                steps_this_call += 1;
                let img_s = n as f64 / step_start.elapsed().as_secs_f64().max(1e-9);
                pb.set_position(state.stage_step as u64);
                pb.set_message(format!("loss {total:.4} {img_s:.1} img/s"));
                if plain_progress && last_line.elapsed().as_secs() >= 30 {
                    last_line = Instant::now();
                    let done = (state.stage_step - stage_start_step).max(1) as f64;
                    let per_step = stage_start.elapsed().as_secs_f64() / done;
                    eprintln!(
                        "{} step {}/{} loss {total:.4} {img_s:.1} img/s eta {:.0} s",
                        pb.prefix(),
                        state.stage_step,
                        total_steps,
                        per_step * (total_steps - state.stage_step) as f64
                    );
                }
                if state.global_step % config.training.log_every.max(1) as u64 == 0 {
                    if let Some(w) = tb.as_mut() {
                        let mut r = w.scalar("train/loss_total", total as f64, state.global_step);
                        for (k, v) in [("va", report.va), ("au", report.au), ("expr", report.expr)]
                        {
                            if let Some(v) = v {
                                r = r.and(w.scalar(
                                    &format!("train/loss_{k}"),
                                    v as f64,
                                    state.global_step,
                                ));
                            }
                        }
                        let sig = s.uncertainty.sigmas();
                        for (k, v) in ["va", "au", "expr"].iter().zip(sig) {
                            r = r.and(w.scalar(
                                &format!("train/sigma_{k}"),
                                v as f64,
                                state.global_step,
                            ));
                        }
                        r = r
                            .and(w.scalar("train/lr", lr, state.global_step))
                            .and(w.scalar("train/img_per_s", img_s, state.global_step))
                            .and(w.scalar("train/grad_norm", norm, state.global_step));
                        if let Err(e) = r {
                            tracing::warn!("TensorBoard write failed: {e}");
                            tb = None;
                        }
                    }
                }
                let stop_now = INTERRUPTED.load(Ordering::SeqCst)
                    || ctx.max_steps.is_some_and(|m| steps_this_call >= m);
                if config.eval.every_steps > 0
                    && state.global_step % config.eval.every_steps as u64 == 0
                    && !stop_now
                {
                    let r = do_eval(&mut tb, state.global_step)?;
                    metrics_csv.push(state.global_step, &stage.name, state.epoch, &r)?;
                    last_report = Some(r);
                }
                if stop_now
                    || state.global_step % config.training.checkpoint_every.max(1) as u64 == 0
                {
                    state.train_seconds =
                        train_seconds_before + train_start.elapsed().as_secs_f64();
                    save_ckpt(&state, &opt)?;
                }
                if stop_now {
                    pb.abandon();
                    if let Some(w) = tb.as_mut() {
                        let _ = w.flush();
                    }
                    if !ctx.quiet {
                        eprintln!(
                            "stopped at step {}; checkpoint {}; continue with `mtanet train --resume {}`",
                            state.global_step,
                            last_ckpt.display(),
                            run_dir.display()
                        );
                    }
                    break 'stages;
                }
            }
            if epoch_done {
                state.epoch += 1;
                state.batch = 0;
                let r = do_eval(&mut tb, state.global_step)?;
                metrics_csv.push(state.global_step, &stage.name, state.epoch, &r)?;
                let line = format!(
                    "  {} epoch {}: {}",
                    stage.name,
                    state.epoch,
                    short_report(&r)
                );
                if plain_progress {
                    eprintln!("{line}");
                } else if !ctx.quiet {
                    pb.println(line);
                }
                last_report = Some(r);
                state.train_seconds = train_seconds_before + train_start.elapsed().as_secs_f64();
                save_ckpt(&state, &opt)?;
            }
        }
        pb.finish_and_clear();
        state.stage += 1;
        state.epoch = 0;
        state.batch = 0;
        state.stage_step = 0;
        state.optimizer_step = 0;
        state.train_seconds = train_seconds_before + train_start.elapsed().as_secs_f64();
        save_ckpt(&state, &Optimizer::new(stage, Vec::new()))?;
    }

    let finished = state.stage >= stages.len();
    let train_img_s = state.images as f64 / state.train_seconds.max(1e-9);
    let report = if finished {
        let r = match last_report.take() {
            Some(r) if metrics_csv.rows.last().map(|x| x.0) == Some(state.global_step) => r,
            _ => {
                let r = do_eval(&mut tb, state.global_step)?;
                metrics_csv.push(state.global_step, "final", state.epoch, &r)?;
                r
            }
        };
        write_atomic(
            &run_dir.join("report.json"),
            serde_json::to_string_pretty(&r)?.as_bytes(),
        )?;
        append_run_row(
            config,
            ctx,
            &run_id,
            &run_dir,
            "finished",
            Some(&r),
            state.global_step,
            wall.elapsed().as_secs_f64(),
            train_img_s,
        )?;
        state.finished = true;
        save_ckpt(&state, &Optimizer::new(&stages[0], Vec::new()))?;
        Some(r)
    } else {
        last_report
    };
    if let Some(w) = tb.as_mut() {
        let _ = w.flush();
    }
    crate::logging::set_run_log(None);
    Ok(RunOutcome {
        run_dir,
        run_id,
        report,
        finished,
        train_img_s,
        wall_s: wall.elapsed().as_secs_f64(),
    })
}

/// The report of an accumulator under this config's scoring (ABAW 2022 forms for 8 classes).
pub fn acc_report(acc: &Accumulator, config: &Config, later_layout: bool) -> Report {
    let scoring = if later_layout {
        Scoring::Abaw2022
    } else {
        Scoring::Abaw2020
    };
    if config.eval.tune_au_thresholds {
        acc.report_with_tuning(scoring)
    } else {
        acc.report(scoring, None)
    }
}

/// One line: CCC-V, CCC-A, AU F1, EXPR F1.
pub fn short_report(r: &Report) -> String {
    let f = |v: Option<f64>| v.map(|x| format!("{x:.3}")).unwrap_or_else(|| "-".into());
    format!(
        "CCC-V {} CCC-A {} AU-F1 {} EXPR-F1 {}",
        f(r.va.as_ref().map(|v| v.ccc_valence)),
        f(r.va.as_ref().map(|v| v.ccc_arousal)),
        f(r.au.as_ref().map(|v| v.f1)),
        f(r.expr.as_ref().map(|v| v.f1)),
    )
}

/// Installs the Ctrl-C handler: the first press checkpoints and stops, the second exits.
pub fn install_ctrlc() {
    let _ = ctrlc::set_handler(|| {
        if INTERRUPTED.swap(true, Ordering::SeqCst) {
            eprintln!("second Ctrl-C: exiting without a checkpoint");
            std::process::exit(130);
        }
        eprintln!("\nCtrl-C: writing a checkpoint after this step (Ctrl-C again to abort)");
    });
}
