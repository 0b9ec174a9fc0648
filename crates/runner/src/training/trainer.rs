//! The state of a run in progress and its loop: stages, epochs, steps, evaluations and
//! checkpoints.

use crate::record::data_fingerprint::DataFingerprint;
use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use candle_core::Tensor;
use mtanet_affwild2::Batch;
use mtanet_losses::LossKind;
use mtanet_metrics::{Report, Scoring};

use super::interrupt::interrupted;
use crate::build::restore::{restore_vars, var_tensors};
use crate::build::training_objects::{self, TrainingObjects};
use crate::experiment::{Config, Criterion, StageConfig, StageInit};
use crate::record::atomic_io::write_atomic;
use crate::record::checkpoint::{self, EvaluatedThrough, TrainState};
use crate::record::metrics_csv::MetricsCsv;
use crate::record::run_scalars::{log_report, log_train, TrainScalars};
use crate::record::tensorboard::EventWriter;
use crate::step::lr_schedule::lr_at;
use crate::step::optim::{params, Optimizer};
use crate::step::{
    batch_targets, evaluate, report_of, scoring_for, train_step, Objective, StepGuard,
};

use super::progress::StageProgress;
use super::{read_selected_from, RunContext, RunOutcome};

/// A run ready to train, or one whose checkpoint says it is already finished.
pub(super) enum Opened<'a> {
    Ready(Box<Trainer<'a>>, Option<HashMap<String, Tensor>>),
    Finished(Box<RunOutcome>),
}

/// The state of a run in progress.
pub(super) struct Trainer<'a> {
    pub(super) config: &'a Config,
    pub(super) ctx: &'a RunContext,
    pub(super) run_dir: PathBuf,
    pub(super) run_id: String,
    pub(super) last_ckpt: PathBuf,
    pub(super) s: TrainingObjects,
    pub(super) scoring: Scoring,
    pub(super) state: TrainState,
    pub(super) tb: Option<EventWriter>,
    pub(super) metrics_csv: MetricsCsv,
    pub(super) last_report: Option<Report>,
    /// The validation crops the last evaluation left out (unreadable), in loader order.
    pub(super) eval_skipped: Vec<PathBuf>,
    pub(super) steps_this_call: u64,
    pub(super) wall: Instant,
    pub(super) train_start: Instant,
    pub(super) train_seconds_before: f64,
    /// What every checkpoint of this run says about itself.
    pub(super) description: checkpoint::Description,
}

impl<'a> Trainer<'a> {
    /// Builds the run's objects and, on resume, restores its checkpoint.
    pub(super) fn open(
        config: &'a Config,
        ctx: &'a RunContext,
        run_dir: PathBuf,
        run_id: String,
        wall: Instant,
    ) -> anyhow::Result<Opened<'a>> {
        let pretrained = match ctx.resume {
            Some(_) => training_objects::Pretrained::Skip,
            None => training_objects::Pretrained::Import,
        };
        let s = training_objects::build(config, ctx.quiet, pretrained)?;
        let last_ckpt = run_dir.join("checkpoints").join("last.safetensors");
        let data = DataFingerprint::of(s.train.samples(), s.val.samples());
        let mut state = TrainState {
            data: Some(data.clone()),
            ..TrainState::default()
        };
        let mut resumed_optim = None;
        if ctx.resume.is_some() {
            let c = checkpoint::load(&last_ckpt, &s.device).with_context(|| {
                format!(
                    "cannot resume {}: no readable checkpoint (was the run started with this config?)",
                    run_dir.display()
                )
            })?;
            if let Some(v) = crate::build::restore::checkpoint_vocab(&last_ckpt)? {
                crate::build::restore::check_same_vocab(&last_ckpt, &v, &s.root, &s.vocab)?;
            }
            restore_vars(&s.vars, &c.model, &last_ckpt)?;
            super::resume_config::check_resume_config(config, &run_dir, &last_ckpt)?;
            if let Some(why) = c
                .state
                .data
                .as_ref()
                .and_then(|then| data.differences(then))
            {
                anyhow::bail!(
                    "cannot resume {}: the data differ from those {} was trained on ({why}); \
                     the epoch order and every later evaluation depend on the samples, so a \
                     resume must see the same ones: restore the data or start a new run",
                    run_dir.display(),
                    last_ckpt.display()
                );
            }
            state = c.state;
            for line in super::pick_files::reconcile(&run_dir, &state)? {
                tracing::info!("{line}");
            }
            // Checkpoints written before the fingerprint was recorded carry it from now on.
            state.data.get_or_insert(data);
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
                let selected_from = read_selected_from(&run_dir);
                return Ok(Opened::Finished(Box::new(RunOutcome {
                    run_dir,
                    run_id,
                    report: Some(report),
                    selected_from,
                    finished: true,
                    skipped: state.skipped.clone(),
                    train_img_s: state.images as f64 / state.train_seconds.max(1e-9),
                    wall_s: wall.elapsed().as_secs_f64(),
                })));
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
        let tb = match EventWriter::create(&run_dir) {
            Ok(w) => Some(w),
            Err(e) => {
                tracing::warn!(
                    "cannot write TensorBoard events in {}: {e}",
                    run_dir.display()
                );
                None
            }
        };
        let mut tb = tb;
        if ctx.resume.is_some() {
            if let Some(w) = tb.as_mut() {
                // Events a killed run wrote after this checkpoint are written again below.
                if let Err(e) = w.session_start(state.global_step + 1) {
                    tracing::warn!(
                        "cannot write TensorBoard events in {}: {e}",
                        run_dir.display()
                    );
                }
            }
        }
        crate::record::hparams::start(&mut tb, config, ctx.profile.as_deref(), ctx.row.as_deref());
        let metrics_csv =
            MetricsCsv::open(run_dir.join("metrics.csv"), state.metrics_rows_through())?;
        let scoring = scoring_for(s.layout, &s.vocab);
        let train_seconds_before = state.train_seconds;
        let description = describe(config, &s.vocab, s.layout)?;
        let trainer = Trainer {
            config,
            ctx,
            run_dir,
            run_id,
            last_ckpt,
            s,
            scoring,
            state,
            tb,
            metrics_csv,
            last_report: None,
            eval_skipped: Vec::new(),
            steps_this_call: 0,
            wall,
            train_start: Instant::now(),
            train_seconds_before,
            description,
        };
        Ok(Opened::Ready(Box::new(trainer), resumed_optim))
    }

    /// Runs the remaining stages, then the final evaluation and the run's row.
    pub(super) fn train(
        mut self,
        mut resumed_optim: Option<HashMap<String, Tensor>>,
    ) -> anyhow::Result<RunOutcome> {
        let stages = self.config.training.stages.clone();
        if self.state.pending_eval {
            let name = stages[self.state.stage.min(stages.len() - 1)].name.clone();
            self.eval_step_due(&name)?;
            self.state.pending_eval = false;
        }
        while self.state.stage < stages.len() {
            let stage = &stages[self.state.stage];
            let at_stage_start =
                self.state.stage_step == 0 && self.state.batch == 0 && self.state.epoch == 0;
            if at_stage_start && stage.init == StageInit::Best {
                self.load_best()?;
            }
            if self.run_stage(stage, resumed_optim.take())? {
                break;
            }
            if self.config.selection.criterion != Criterion::Last
                && self.metrics_csv.last_step() != Some(self.state.global_step)
            {
                // Every stage's end is a candidate, also when it ends inside an epoch.
                let r = self.eval()?;
                self.metrics_csv
                    .push(self.state.global_step, &stage.name, self.state.epoch, &r)?;
                self.last_report = Some(r);
            }
            self.state.stage += 1;
            self.state.epoch = 0;
            self.state.batch = 0;
            self.state.stage_step = 0;
            self.state.optimizer_step = 0;
            self.sync_train_seconds();
            self.save(&Optimizer::new(stage, Vec::new()))?;
        }
        self.finish(&stages[0])
    }

    /// Trains one stage to its end; `true` when the run stopped inside it (Ctrl-C or
    /// `max_steps`) with a checkpoint written.
    fn run_stage(
        &mut self,
        stage: &StageConfig,
        resumed_optim: Option<HashMap<String, Tensor>>,
    ) -> anyhow::Result<bool> {
        let bpe = self.s.train.batches_per_epoch().max(1);
        let total_steps = stage.steps.unwrap_or(stage.epochs * bpe);
        let mut opt = Optimizer::new(
            stage,
            params(
                &self
                    .s
                    .vars
                    .varmap()
                    .data()
                    .lock()
                    .expect("var map lock poisoned"),
                stage.decay_norm_and_bias,
            ),
        );
        if let Some(o) = resumed_optim {
            opt.load_state(&o, self.state.optimizer_step);
        }
        let mut progress = StageProgress::new(
            format!(
                "{} stage {}/{} {}",
                self.ctx.row.as_deref().unwrap_or(&self.run_id),
                self.state.stage + 1,
                self.config.training.stages.len(),
                stage.name
            ),
            total_steps,
            self.state.stage_step,
            self.ctx.quiet,
        );
        // `state.batch == bpe`: a run stopped after the epoch's last step but before the epoch
        // was closed (evaluated and checkpointed); the empty pass below closes it.
        while self.state.stage_step < total_steps || self.state.batch >= bpe {
            let epoch_id = (self.state.stage as u64) * 100_000 + self.state.epoch as u64;
            let mut epoch_done = true;
            for batch in self.s.train.epoch(epoch_id, self.state.batch) {
                if self.state.stage_step >= total_steps {
                    epoch_done = false;
                    break;
                }
                let batch = batch?;
                if self.train_batch(&batch, stage, total_steps, &mut opt, &mut progress)? {
                    return Ok(true);
                }
            }
            if epoch_done {
                self.close_epoch(stage, &opt, &progress)?;
            }
        }
        progress.finish();
        Ok(false)
    }

    /// One optimizer step on `batch` with its logging, evaluation and checkpoint; `true` when
    /// the run stops here.
    fn train_batch(
        &mut self,
        batch: &Batch,
        stage: &StageConfig,
        total_steps: usize,
        opt: &mut Optimizer,
        progress: &mut StageProgress,
    ) -> anyhow::Result<bool> {
        let config = self.config;
        let step_start = Instant::now();
        let lr = lr_at(
            &stage.schedule,
            stage.lr,
            self.state.stage_step,
            total_steps,
        );
        if !(lr.is_finite() && lr >= 0.0) {
            anyhow::bail!(
                "stage {} `{}`: the schedule gives learning rate {lr} at stage step {} \
                 (training.stages[{}].lr / .schedule); refusing to train with it",
                self.state.stage + 1,
                stage.name,
                self.state.stage_step,
                self.state.stage
            );
        }
        opt.set_lr(lr);
        let images = batch.images.to_device(&self.s.device)?;
        self.s.model.set_dropout_seed(mtanet_seed::stream_seed(
            config.seed,
            &["dropout", &self.state.global_step.to_string()],
        ));
        let objective = Objective {
            kind: stage.loss,
            uncertainty: matches!(stage.loss, LossKind::Uncertainty).then_some(&self.s.uncertainty),
            au_pos_weight: self.s.pos_weight.as_ref(),
            au_reduction: config.losses.au_reduction,
        };
        let outcome = train_step(
            &self.s.model,
            &images,
            &batch_targets(batch, &self.s.device)?,
            &objective,
            opt,
            StepGuard {
                check_finite: true,
                grad_clip: config.training.grad_clip,
            },
        )?;
        if let Some(fault) = &outcome.fault {
            progress.abandon();
            return Err(self.fail(fault, stage, batch));
        }
        let n = batch.ids.len() as u64;
        let state = &mut self.state;
        state.stage_step += 1;
        state.global_step += 1;
        state.batch += 1;
        state.optimizer_step += 1;
        state.images += n;
        self.steps_this_call += 1;
        let img_s = n as f64 / step_start.elapsed().as_secs_f64().max(1e-9);
        progress.step(self.state.stage_step, outcome.total, img_s);
        let step = self.state.global_step;
        if step.is_multiple_of(config.training.log_every.max(1) as u64) {
            let scalars = TrainScalars {
                loss: &outcome.loss,
                total: outcome.total,
                sigmas: self.s.uncertainty.sigmas(),
                lr,
                img_s,
                grad_norm: outcome.grad_norm,
            };
            log_train(&mut self.tb, &scalars, step);
        }
        let stop_now = interrupted()
            || self
                .ctx
                .max_steps
                .is_some_and(|m| self.steps_this_call >= m);
        if config.eval.every_steps > 0 && step.is_multiple_of(config.eval.every_steps as u64) {
            if stop_now {
                self.state.pending_eval = true;
            } else {
                self.eval_step_due(&stage.name)?;
            }
        }
        if stop_now || step.is_multiple_of(config.training.checkpoint_every.max(1) as u64) {
            self.sync_train_seconds();
            self.save(opt)?;
        }
        if stop_now {
            progress.abandon();
            if let Some(w) = self.tb.as_mut() {
                let _ = w.flush();
            }
            if !self.ctx.quiet {
                eprintln!(
                    "stopped at step {step}; checkpoint {}; continue with `mtanet train --resume {}`",
                    self.last_ckpt.display(),
                    self.run_dir.display()
                );
            }
        }
        Ok(stop_now)
    }

    /// The evaluation due at this step (`eval.every_steps`), recorded in `metrics.csv`.
    fn eval_step_due(&mut self, stage_name: &str) -> anyhow::Result<()> {
        let r = self.eval()?;
        self.metrics_csv
            .push(self.state.global_step, stage_name, self.state.epoch, &r)?;
        self.last_report = Some(r);
        Ok(())
    }

    /// Ends an epoch: evaluation, `metrics.csv`, the epoch line and a checkpoint.
    fn close_epoch(
        &mut self,
        stage: &StageConfig,
        opt: &Optimizer,
        progress: &StageProgress,
    ) -> anyhow::Result<()> {
        self.state.epoch += 1;
        self.state.batch = 0;
        if !self
            .state
            .epoch
            .is_multiple_of(self.config.eval.every_epochs.max(1))
        {
            self.sync_train_seconds();
            return self.save(opt);
        }
        let r = self.eval()?;
        self.metrics_csv
            .push(self.state.global_step, &stage.name, self.state.epoch, &r)?;
        progress.println(format!(
            "  {} epoch {}: {}",
            stage.name,
            self.state.epoch,
            crate::record::summary_line::short_report(&r)
        ));
        self.last_report = Some(r);
        self.sync_train_seconds();
        self.save(opt)
    }

    /// After the last stage (or a stop): the final evaluation, `report.json` and the run's
    /// row when finished.
    fn finish(mut self, first_stage: &StageConfig) -> anyhow::Result<RunOutcome> {
        let finished = self.state.stage >= self.config.training.stages.len();
        let train_img_s = self.state.images as f64 / self.state.train_seconds.max(1e-9);
        let mut selected_from = "last evaluation".to_string();
        let report = if finished {
            let r = match self.last_report.take() {
                Some(r) if self.metrics_csv.last_step() == Some(self.state.global_step) => r,
                _ => {
                    let r = self.eval()?;
                    self.metrics_csv
                        .push(self.state.global_step, "final", self.state.epoch, &r)?;
                    if super::pick_files::any_pending(&self.run_dir) {
                        // A checkpoint with this evaluation's picks, which puts their weights
                        // in place before the figures below name them.
                        self.sync_train_seconds();
                        self.save(&Optimizer::new(first_stage, Vec::new()))?;
                    }
                    r
                }
            };
            let criterion = self.config.selection.criterion;
            let (selected, from) = self.state.selection.selected(criterion, &r);
            self.count_skipped();
            let mut report_json = serde_json::to_value(&selected)?;
            report_json["skipped_frames"] = serde_json::json!({
                "count": self.state.skipped.len(),
                "first": self.state.skipped.iter().take(20).collect::<Vec<_>>(),
            });
            report_json["eval_skipped_frames"] = serde_json::json!({
                "count": self.eval_skipped.len(),
                "first": self.eval_skipped.iter().take(20).collect::<Vec<_>>(),
            });
            write_atomic(
                &self.run_dir.join("report.json"),
                serde_json::to_string_pretty(&report_json)?.as_bytes(),
            )?;
            let summary = serde_json::json!({
                "criterion": criterion.to_string(),
                "selected_from": from,
                "last_step": self.state.global_step,
                "last": r,
                "picks": self.state.selection,
            });
            write_atomic(
                &self.run_dir.join("selection.json"),
                serde_json::to_string_pretty(&summary)?.as_bytes(),
            )?;
            self.append_row("finished", Some((&selected, &from)), Some(&r), train_img_s)?;
            self.state.finished = true;
            self.save(&Optimizer::new(first_stage, Vec::new()))?;
            selected_from = from;
            Some(selected)
        } else {
            self.last_report.take()
        };
        crate::record::hparams::end(&mut self.tb, finished, self.state.global_step);
        if let Some(w) = self.tb.as_mut() {
            let _ = w.flush();
        }
        Ok(RunOutcome {
            run_dir: self.run_dir,
            run_id: self.run_id,
            report,
            selected_from,
            finished,
            skipped: self.state.skipped.clone(),
            train_img_s,
            wall_s: self.wall.elapsed().as_secs_f64(),
        })
    }

    /// The model on the validation loader, reported and logged to TensorBoard. Unreadable
    /// crops are left out of the evaluation (a warning when they change).
    fn eval(&mut self) -> anyhow::Result<Report> {
        let n_au = self.s.vocab.au_names.len();
        let n_expr = self.s.vocab.expr_names.len();
        let pass = match evaluate(
            &self.s.model,
            &self.s.val,
            &self.s.device,
            n_au,
            n_expr,
            |_| {},
        ) {
            Ok(pass) => pass,
            Err(e) => return Err(self.fail_evaluation(e)),
        };
        if !pass.skipped.is_empty() && pass.skipped != self.eval_skipped {
            let first: Vec<String> = pass
                .skipped
                .iter()
                .take(3)
                .map(|p| p.display().to_string())
                .collect();
            tracing::warn!(
                "evaluation left out {} unreadable validation crops and scored the other {} \
                 frames (data.on_bad_frame: skip), first: {}",
                pass.skipped.len(),
                pass.frames,
                first.join(", ")
            );
        }
        self.eval_skipped = pass.skipped;
        let report = report_of(&pass.acc, self.scoring, self.config.eval.tune_au_thresholds);
        log_report(&mut self.tb, &report, &self.s.vocab, self.state.global_step);
        self.count_skipped();
        self.select(&report)?;
        self.state.evaluated_through = EvaluatedThrough::Step(Some(self.state.global_step));
        Ok(report)
    }

    pub(super) fn sync_train_seconds(&mut self) {
        self.state.train_seconds =
            self.train_seconds_before + self.train_start.elapsed().as_secs_f64();
    }

    /// Writes `last.safetensors`, then renames the pending weights of the picks its loop state
    /// records over their pick files (`pick_files.rs`).
    pub(super) fn save(&self, opt: &Optimizer) -> anyhow::Result<()> {
        let (ost, _) = opt.state();
        checkpoint::save_described(
            &self.last_ckpt,
            &var_tensors(&self.s.vars),
            &ost,
            &self.state,
            &self.description,
        )?;
        super::pick_files::promote(&self.run_dir)
    }
}

/// The self-description every checkpoint of a run carries (see [`checkpoint::Description`]).
fn describe(
    config: &Config,
    vocab: &mtanet_affwild2::Vocab,
    layout: mtanet_affwild2::Layout,
) -> anyhow::Result<checkpoint::Description> {
    let pre = crate::build::model::preprocess_for(&config.model.backbone);
    let preprocess = serde_json::json!({
        "channels": if pre.bgr { "BGR" } else { "RGB" },
        "scale": pre.scale,
        "mean": pre.mean,
        "std": pre.std,
        "size": config.data.image_size,
    });
    Ok(checkpoint::Description {
        entries: vec![
            (
                crate::build::restore::VOCAB_KEY.to_string(),
                serde_json::to_string(vocab)?,
            ),
            ("config".into(), config.to_yaml()),
            ("preprocess".into(), preprocess.to_string()),
            ("layout".into(), format!("{layout:?}")),
            ("commit".into(), crate::record::run_dir::git_commit()),
        ],
    })
}
