//! What a run writes to TensorBoard: training scalars every `log_every` steps and the
//! validation metrics by name. A failed write is logged and stops TensorBoard output only.

use mtanet_affwild2::Vocab;
use mtanet_losses::LossReport;
use mtanet_metrics::Report;

use crate::record::tensorboard::{confusion_image, EventWriter};

/// The training scalars of one step.
pub struct TrainScalars<'a> {
    /// The step's losses.
    pub loss: &'a LossReport,
    /// Host value of the objective.
    pub total: f32,
    /// Uncertainty sigmas (va, au, expr).
    pub sigmas: [f32; 3],
    /// Learning rate.
    pub lr: f64,
    /// Images per second of the step.
    pub img_s: f64,
    /// Global gradient norm.
    pub grad_norm: f64,
}

/// Logs one step's training scalars under `train/`.
pub fn log_train(tb: &mut Option<EventWriter>, s: &TrainScalars, step: u64) {
    let Some(w) = tb.as_mut() else { return };
    let mut r = w.scalar("train/loss_total", s.total as f64, step);
    for (k, v) in [("va", s.loss.va), ("au", s.loss.au), ("expr", s.loss.expr)] {
        if let Some(v) = v {
            r = r.and(w.scalar(&format!("train/loss_{k}"), v as f64, step));
        }
    }
    for (k, v) in ["va", "au", "expr"].iter().zip(s.sigmas) {
        r = r.and(w.scalar(&format!("train/sigma_{k}"), v as f64, step));
    }
    r = r
        .and(w.scalar("train/lr", s.lr, step))
        .and(w.scalar("train/img_per_s", s.img_s, step))
        .and(w.scalar("train/grad_norm", s.grad_norm, step));
    if let Err(e) = r {
        tracing::warn!("TensorBoard write failed: {e}");
        *tb = None;
    }
}

/// Logs validation metrics to TensorBoard: the summary scalars under `val/`, per-AU and
/// per-class F1 once each, under their names (`val/au_f1/AU12`, `val/expr_f1/Happiness`)
/// instead of the indexed keys of `Report::scalars`, and the expression confusion matrix as
/// an image with the class names on its axes and the counts in its cells.
pub fn log_report(tb: &mut Option<EventWriter>, report: &Report, vocab: &Vocab, step: u64) {
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
        let (rgb, wd, ht) = confusion_image(&e.confusion, &vocab.expr_names, 24);
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
