//! One eval step (the model in eval mode on a batch, its outputs copied to the host) and an
//! evaluation pass over a loader into the ABAW metric accumulators.
//!
//! Evaluation in training, `predict`, `bench` and `gpu-check` call [`eval_step`].

use std::path::PathBuf;

use candle_core::{DType, Device, Tensor, D};
use mtanet_affwild2::{Batch, Layout, Loader, Vocab};
use mtanet_backbones::{MtaNet, MtaNetOutput};
use mtanet_kernels::EvalPacks;
use mtanet_metrics::{Accumulator, Report, Scoring};

/// Host copies of one batch's outputs: VA, AU probabilities, expression probabilities.
pub struct HostOutputs {
    /// (N, 2) valence/arousal.
    pub va: Vec<[f32; 2]>,
    /// (N, K) AU probabilities (sigmoid of the logits).
    pub au_probs: Vec<Vec<f32>>,
    /// (N, C) expression probabilities (softmax of the logits).
    pub expr_probs: Vec<Vec<f32>>,
}

impl HostOutputs {
    /// Copies a model output to the host.
    pub fn from_output(out: &MtaNetOutput) -> candle_core::Result<Self> {
        let va = out.va.to_dtype(DType::F32)?.to_vec2::<f32>()?;
        let au = candle_nn::ops::sigmoid(&out.au_logits.to_dtype(DType::F32)?)?.to_vec2::<f32>()?;
        let expr = candle_nn::ops::softmax(&out.expr_logits.to_dtype(DType::F32)?, D::Minus1)?
            .to_vec2::<f32>()?;
        Ok(Self {
            va: va.into_iter().map(|r| [r[0], r[1]]).collect(),
            au_probs: au,
            expr_probs: expr,
        })
    }
}

impl HostOutputs {
    /// The first row holding a NaN or infinite output, and which head's: such a row would be
    /// scored as class 0 and as absent AUs, with finite-looking figures.
    pub fn first_non_finite(&self) -> Option<(usize, &'static str)> {
        (0..self.va.len()).find_map(|i| {
            if !self.va[i].iter().all(|v| v.is_finite()) {
                Some((i, "valence/arousal"))
            } else if !self.au_probs[i].iter().all(|v| v.is_finite()) {
                Some((i, "action unit"))
            } else if !self.expr_probs[i].iter().all(|v| v.is_finite()) {
                Some((i, "expression"))
            } else {
                None
            }
        })
    }
}

/// The model in eval mode on `images` ([`MtaNet::infer`]: nothing is differentiated), its
/// outputs on the host. `packs`: the evaluation pass's store of packed weight layouts (one per
/// pass over a loader or a list of crops, made where the pass starts), so that each layer's
/// weights are packed on the pass's first batch only.
pub fn eval_step(
    model: &MtaNet,
    images: &Tensor,
    packs: &EvalPacks,
) -> candle_core::Result<HostOutputs> {
    HostOutputs::from_output(&model.infer(images, Some(packs))?)
}

/// The index of the largest value (the first one on ties, as `argmax` in numpy/torch).
pub fn argmax(v: &[f32]) -> usize {
    let mut best = 0;
    for (i, &x) in v.iter().enumerate() {
        if x > v[best] {
            best = i;
        }
    }
    best
}

fn mask(t: &Tensor) -> candle_core::Result<Vec<bool>> {
    Ok(t.to_dtype(DType::F32)?
        .to_vec1::<f32>()?
        .into_iter()
        .map(|m| m > 0.5)
        .collect())
}

/// Pushes one batch's outputs and labels (masked per task) into the accumulators.
pub fn push_batch(
    acc: &mut Accumulator,
    out: &HostOutputs,
    batch: &Batch,
) -> candle_core::Result<()> {
    let va_t = batch.va.to_vec2::<f32>()?;
    let au_t = batch.au.to_vec2::<f32>()?;
    let expr_t = batch.expr.to_dtype(DType::U32)?.to_vec1::<u32>()?;
    let (vm, am, em) = (
        mask(&batch.va_mask)?,
        mask(&batch.au_mask)?,
        mask(&batch.expr_mask)?,
    );
    for i in 0..out.va.len() {
        if vm[i] {
            // Scored as a prediction file holds them (clamped to the annotation range).
            acc.va.push(
                crate::submission::submitted_va(out.va[i]),
                [va_t[i][0], va_t[i][1]],
            );
        }
        if am[i] {
            let t: Vec<u8> = au_t[i].iter().map(|&x| (x > 0.5) as u8).collect();
            acc.au.push(&out.au_probs[i], &t);
        }
        if em[i] {
            acc.expr
                .push(argmax(&out.expr_probs[i]), expr_t[i] as usize);
        }
    }
    Ok(())
}

/// One evaluation pass over a loader: the filled accumulator and what it was filled from.
#[derive(Debug)]
pub struct EvalPass {
    /// The metric accumulators.
    pub acc: Accumulator,
    /// Frames the model ran on (each pushed once, into the tasks it is labelled for).
    pub frames: usize,
    /// Crops of the pass that could not be read or decoded and were left out (an evaluation
    /// loader drops them, [`mtanet_affwild2::OnBadFrame::Drop`]), in loader order.
    pub skipped: Vec<PathBuf>,
}

/// Runs the model in eval mode over one pass of `loader` and returns the filled accumulator
/// with the frames scored and the crops left out. `on_batch` gets each batch's row count.
pub fn evaluate(
    model: &MtaNet,
    loader: &Loader,
    device: &Device,
    n_au: usize,
    n_expr: usize,
    mut on_batch: impl FnMut(usize),
) -> anyhow::Result<EvalPass> {
    let mut pass = EvalPass {
        acc: Accumulator::new(n_au, n_expr),
        frames: 0,
        skipped: Vec::new(),
    };
    // The weights stay the same for the whole pass: each layer's are packed once.
    let packs = EvalPacks::new();
    for batch in loader.epoch(0, 0) {
        let batch = batch?;
        let n = batch.ids.len();
        pass.skipped.extend(batch.dropped.iter().cloned());
        if n > 0 {
            let images = batch.images.to_device(device)?;
            let out = eval_step(model, &images, &packs)?;
            if let Some((i, head)) = out.first_non_finite() {
                anyhow::bail!(
                    "evaluation: the model's {head} output for frame {} is NaN or infinite; \
                     refusing to score it (it would count as class 0 and as absent AUs)",
                    batch.ids[i]
                );
            }
            push_batch(&mut pass.acc, &out, &batch)?;
            pass.frames += n;
        }
        on_batch(n);
    }
    Ok(pass)
}

/// The composite scores of a dataset (the one rule): ABAW 2022 forms for the 2022+ layout or
/// an 8-class expression vocabulary, else ABAW 2020.
pub fn scoring_for(layout: Layout, vocab: &Vocab) -> Scoring {
    if layout == Layout::Abaw2022 || vocab.expr_names.len() > 7 {
        Scoring::Abaw2022
    } else {
        Scoring::Abaw2020
    }
}

/// The report of filled accumulators, with per-AU thresholds tuned on them when
/// `tune_au_thresholds` (reported beside the fixed-0.5 figures, never instead of them).
pub fn report_of(acc: &Accumulator, scoring: Scoring, tune_au_thresholds: bool) -> Report {
    if tune_au_thresholds {
        acc.report_with_tuning(scoring)
    } else {
        acc.report(scoring, None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A NaN or infinity in any head's row is found, with the row and the head; finite rows
    /// pass.
    #[test]
    fn non_finite_outputs_are_found_by_row_and_head() {
        let out = |va: f32, au: f32, expr: f32| HostOutputs {
            va: vec![[0.1, 0.2], [va, 0.0]],
            au_probs: vec![vec![0.5; 3], vec![au, 0.5, 0.5]],
            expr_probs: vec![vec![0.5, 0.5], vec![expr, 0.5]],
        };
        assert_eq!(out(0.0, 0.5, 0.5).first_non_finite(), None);
        assert_eq!(
            out(f32::NAN, 0.5, 0.5).first_non_finite(),
            Some((1, "valence/arousal"))
        );
        assert_eq!(
            out(0.0, f32::NAN, 0.5).first_non_finite(),
            Some((1, "action unit"))
        );
        assert_eq!(
            out(0.0, 0.5, f32::INFINITY).first_non_finite(),
            Some((1, "expression"))
        );
    }

    /// Valence and arousal outside the annotation range (`va_activation: none`) are scored
    /// as a prediction file holds them, clamped: the CCC of outputs 1.8 and -1.3 equals that
    /// of 1.0 and -1.0, not that of the raw outputs.
    #[test]
    fn out_of_range_valence_and_arousal_are_scored_as_written() {
        use candle_core::{Device, Tensor};
        let dev = Device::Cpu;
        let labels = [[0.9f32, -0.2], [-0.8, 0.4], [0.1, 0.6]];
        let batch = Batch {
            images: Tensor::zeros((3, 1), DType::F32, &dev).unwrap(),
            va: Tensor::new(&labels, &dev).unwrap(),
            va_mask: Tensor::ones(3, DType::F32, &dev).unwrap(),
            au: Tensor::zeros((3, 1), DType::F32, &dev).unwrap(),
            au_mask: Tensor::zeros(3, DType::F32, &dev).unwrap(),
            expr: Tensor::zeros(3, DType::F32, &dev).unwrap(),
            expr_mask: Tensor::zeros(3, DType::F32, &dev).unwrap(),
            ids: Vec::new(),
            dropped: Vec::new(),
        };
        let ccc_of = |va: Vec<[f32; 2]>| {
            let out = HostOutputs {
                va,
                au_probs: vec![vec![0.5]; 3],
                expr_probs: vec![vec![1.0, 0.0]; 3],
            };
            let mut acc = Accumulator::new(1, 2);
            push_batch(&mut acc, &out, &batch).unwrap();
            acc.va.ccc().unwrap()
        };
        let raw = vec![[1.8, -0.1], [-1.3, 0.3], [0.2, 0.5]];
        let written = vec![[1.0, -0.1], [-1.0, 0.3], [0.2, 0.5]];
        let mut direct = mtanet_metrics::VaAccumulator::new();
        for (x, y) in raw.iter().zip(labels) {
            direct.push(*x, y);
        }
        let scored = ccc_of(raw);
        assert_eq!(scored, ccc_of(written));
        assert_ne!(scored[0], direct.ccc().unwrap()[0]);
    }

    #[test]
    fn argmax_first_on_ties() {
        assert_eq!(argmax(&[0.1, 0.5, 0.5, 0.2]), 1);
        assert_eq!(argmax(&[1.0]), 0);
    }
}
