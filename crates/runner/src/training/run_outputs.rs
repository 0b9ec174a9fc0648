//! What a run in progress writes beside its training: the weights of its model-selection
//! picks, the count of skipped crops, its `runs.csv` row, and the error of a refused step.

use std::collections::HashMap;
use std::path::PathBuf;

use anyhow::Context;
use mtanet_affwild2::Batch;
use mtanet_metrics::Report;

use crate::build::restore::{restore_vars, var_tensors};
use crate::experiment::{Criterion, StageConfig};
use crate::record::checkpoint::{self};
use crate::record::runs_csv::{append_run_row, RunRow};

use super::pick_files::{pending_file, pick_file};
use super::selection::PICK_NAMES;
use super::trainer::Trainer;

impl Trainer<'_> {
    /// Offers an evaluation to model selection; writes the weights of every pick it becomes
    /// (not under `last`, which keeps no best weights) to its pending file, which the next
    /// checkpoint renames over the pick's file (`pick_files.rs`).
    pub(super) fn select(&mut self, report: &Report) -> anyhow::Result<()> {
        let criterion = self.config.selection.criterion;
        if criterion == Criterion::Last {
            return Ok(());
        }
        let st = &mut self.state;
        let improved = st
            .selection
            .offer(st.stage, st.epoch, st.global_step, report);
        for (i, (&better, name)) in improved.iter().zip(PICK_NAMES).enumerate() {
            if better && (i == 0 || criterion == Criterion::PerTask) {
                let path = pending_file(&self.run_dir, name);
                checkpoint::save_described(
                    &path,
                    &var_tensors(&self.s.vars),
                    &HashMap::new(),
                    &self.state,
                    &self.description,
                )?;
            }
        }
        Ok(())
    }

    /// Loads the best-total weights into the model (a stage with `init: best`).
    pub(super) fn load_best(&mut self) -> anyhow::Result<()> {
        let path = pick_file(&self.run_dir, "total");
        let c = checkpoint::load(&path, &self.s.device).with_context(|| {
            format!(
                "a stage with `init: best` starts from the best weights in {}",
                path.display()
            )
        })?;
        if let Some(v) = crate::build::restore::checkpoint_vocab(&path)? {
            crate::build::restore::check_same_vocab(&path, &v, &self.s.root, &self.s.vocab)?;
        }
        restore_vars(&self.s.vars, &c.model, &path)?;
        tracing::info!(
            "stage {} starts from {}",
            self.state.stage + 1,
            path.display()
        );
        Ok(())
    }

    /// Adds the loaders' unreadable crops to the run's count, logs new ones (to stderr and
    /// `log.txt`) and the total to TensorBoard (`data/skipped_frames`).
    pub(super) fn count_skipped(&mut self) {
        let mut all: std::collections::BTreeSet<PathBuf> =
            self.state.skipped.iter().cloned().collect();
        let before = all.len();
        all.extend(self.s.train.bad_frames());
        all.extend(self.s.val.bad_frames());
        if all.len() > before {
            let first: Vec<String> = all
                .iter()
                .take(3)
                .map(|p| p.display().to_string())
                .collect();
            tracing::warn!(
                "{} unreadable crops skipped so far (data.on_bad_frame: skip), first: {}",
                all.len(),
                first.join(", ")
            );
            self.state.skipped = all.into_iter().collect();
        }
        if let Some(w) = self.tb.as_mut() {
            let _ = w.scalar(
                "data/skipped_frames",
                self.state.skipped.len() as f64,
                self.state.global_step,
            );
        }
    }

    pub(super) fn append_row(
        &self,
        status: &str,
        selected: Option<(&Report, &str)>,
        last: Option<&Report>,
        train_img_s: f64,
    ) -> anyhow::Result<()> {
        append_run_row(&RunRow {
            config: self.config,
            profile: self.ctx.profile.as_deref(),
            row: self.ctx.row.as_deref(),
            paper: self.ctx.paper.as_ref(),
            overrides: &self.ctx.overrides,
            run_id: &self.run_id,
            run_dir: &self.run_dir,
            status,
            report: selected.map(|s| s.0),
            selected_from: selected.map(|s| s.1),
            last,
            last_step: self.state.global_step,
            skipped_frames: self.state.skipped.len(),
            steps: self.state.global_step,
            wall_s: self.wall.elapsed().as_secs_f64(),
            train_img_s,
        })
    }

    /// Marks the run failed in `runs.csv` (with the last evaluation's figures, if any) and
    /// says where its last checkpoint is: `the last good checkpoint is <file>`, or that none
    /// was written.
    fn mark_failed(&self) -> anyhow::Result<String> {
        let last = self.last_report.as_ref();
        self.append_row("failed", last.map(|r| (r, "last evaluation")), last, 0.0)?;
        Ok(if self.last_ckpt.is_file() {
            format!("the last good checkpoint is {}", self.last_ckpt.display())
        } else {
            "no checkpoint was written before it".to_string()
        })
    }

    /// A failed evaluation (a non-finite model output, an unreadable crop under `error`):
    /// marks the run failed in `runs.csv` and returns `e` with the step and the run directory.
    pub(super) fn fail_evaluation(&self, e: anyhow::Error) -> anyhow::Error {
        let checkpoint = match self.mark_failed() {
            Ok(c) => c,
            Err(row) => return row.context(e),
        };
        e.context(format!(
            "the evaluation at step {} of {} failed; {checkpoint}; the run is marked failed in \
             runs.csv",
            self.state.global_step,
            self.run_dir.display()
        ))
    }

    /// A refused step (non-finite loss or gradient): marks the run failed in `runs.csv` and
    /// returns the error naming the step and the batch's samples.
    pub(super) fn fail(&self, fault: &str, stage: &StageConfig, batch: &Batch) -> anyhow::Error {
        let checkpoint = match self.mark_failed() {
            Ok(c) => c,
            Err(e) => return e,
        };
        let ids = batch
            .ids
            .iter()
            .take(8)
            .map(|i| i.to_string())
            .collect::<Vec<_>>()
            .join(", ");
        anyhow::anyhow!(
            "{fault} at step {} (stage {}, epoch {}, batch {}); batch samples: {ids}{}; \
             {checkpoint}; the run is marked failed in runs.csv. \
             Try a lower lr or `training.grad_clip`.",
            self.state.global_step,
            stage.name,
            self.state.epoch,
            self.state.batch,
            if batch.ids.len() > 8 { ", ..." } else { "" },
        )
    }
}
