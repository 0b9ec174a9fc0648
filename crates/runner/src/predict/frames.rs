//! The model over a list of crops: each batch decoded through the evaluation pixel path
//! ([`mtanet_affwild2::load_frame`] with the identity warp) while the previous one runs.

use std::path::PathBuf;

use candle_core::{Device, Tensor};
use indicatif::ProgressBar;
use rayon::prelude::*;

use mtanet_affwild2::{load_frame, AugmentDraw, DataError, Preprocess};
use mtanet_kernels::EvalPacks;

use super::{FrameOutput, PredictError};
use crate::build::model::preprocess_for;
use crate::build::restore::LoadedModel;
use crate::step::eval_step::eval_step;

/// Decodes and normalises one batch of crops (in parallel), as the evaluation loader does.
fn decode_batch(
    chunk: &[PathBuf],
    size: usize,
    pre: &Preprocess,
    resize: bool,
) -> Vec<Result<Vec<f32>, DataError>> {
    chunk
        .par_iter()
        .map(|p| {
            let mut buf = vec![0f32; 3 * size * size];
            load_frame(p, size, resize, pre, AugmentDraw::identity, &mut buf)?;
            Ok(buf)
        })
        .collect()
}

/// The model's outputs for one decoded batch (`None` where decoding failed; such paths are
/// added to `bad`), in the pass whose packed weights `packs` keeps.
fn forward_batch(
    m: &LoadedModel,
    packs: &EvalPacks,
    chunk: &[PathBuf],
    decoded: Vec<Result<Vec<f32>, DataError>>,
    bad: &mut Vec<PathBuf>,
) -> anyhow::Result<Vec<Option<FrameOutput>>> {
    let size = m.config.data.image_size;
    let mut images = Vec::with_capacity(chunk.len() * 3 * size * size);
    let mut ok = Vec::with_capacity(chunk.len());
    for (p, d) in chunk.iter().zip(decoded) {
        match d {
            Ok(buf) => {
                images.extend_from_slice(&buf);
                ok.push(true);
            }
            Err(e @ DataError::ImageSize { .. }) => return Err(e.into()),
            Err(e) => {
                tracing::warn!("{e}; the frame is filled from its nearest neighbour");
                bad.push(p.clone());
                ok.push(false);
            }
        }
    }
    let n = ok.iter().filter(|&&k| k).count();
    let mut host = Vec::with_capacity(n).into_iter();
    if n > 0 {
        let x = Tensor::from_vec(images, (n, 3, size, size), &Device::Cpu)?.to_device(&m.device)?;
        let h = eval_step(&m.model, &x, packs)?;
        host =
            h.va.into_iter()
                .zip(h.au_probs)
                .zip(h.expr_probs)
                .map(|((va, au_probs), expr_probs)| FrameOutput {
                    va,
                    au_probs,
                    expr_probs,
                })
                .collect::<Vec<_>>()
                .into_iter();
    }
    let mut out = Vec::with_capacity(chunk.len());
    for (p, good) in chunk.iter().zip(ok) {
        let o = if good { host.next() } else { None };
        if let Some(o) = &o {
            let values = o.va.iter().chain(&o.au_probs).chain(&o.expr_probs);
            if !values.into_iter().all(|v| v.is_finite()) {
                return Err(PredictError::NonFinite { jpg: p.clone() }.into());
            }
        }
        out.push(o);
    }
    Ok(out)
}

/// Runs the model in eval mode over `jpgs` in batches of `batch_size`, decoding the next
/// batch while the model runs on the current one; `None` for a crop that cannot be read or
/// decoded (its path is added to `bad`). A crop of another size than the network input is
/// an error unless `resize`.
pub fn predict_images(
    m: &LoadedModel,
    jpgs: &[PathBuf],
    batch_size: usize,
    resize: bool,
    pb: &ProgressBar,
    bad: &mut Vec<PathBuf>,
) -> anyhow::Result<Vec<Option<FrameOutput>>> {
    let size = m.config.data.image_size;
    let pre = preprocess_for(&m.config.model.backbone);
    let chunks: Vec<&[PathBuf]> = jpgs.chunks(batch_size.max(1)).collect();
    let mut out = Vec::with_capacity(jpgs.len());
    // The weights stay the same for the whole list: each layer's are packed once.
    let packs = EvalPacks::new();
    let mut decoded = chunks
        .first()
        .map(|c| decode_batch(c, size, &pre, resize))
        .unwrap_or_default();
    for (k, chunk) in chunks.iter().enumerate() {
        let current = std::mem::take(&mut decoded);
        let (next, outputs) = rayon::join(
            || {
                chunks
                    .get(k + 1)
                    .map(|c| decode_batch(c, size, &pre, resize))
                    .unwrap_or_default()
            },
            || forward_batch(m, &packs, chunk, current, bad),
        );
        out.extend(outputs?);
        decoded = next;
        pb.inc(chunk.len() as u64);
    }
    Ok(out)
}
