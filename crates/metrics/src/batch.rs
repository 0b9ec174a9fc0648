//! Pushing a whole batch of host-side model outputs and labels, masks applied.

use crate::accumulator::Accumulator;
use crate::error::MetricsError;

/// One batch as flat row-major host slices (what `Tensor::flatten_all()?.to_vec1()` gives).
///
/// `n` frames; masks are 0/1 per frame (> 0.5 = labelled for that task, as in the losses).
/// Label values of masked-out frames are never read, so -5 / -1 markers may stay in place.
#[derive(Clone, Copy, Debug)]
pub struct FrameBatch<'a> {
    /// Number of frames in the batch.
    pub n: usize,
    /// Predicted `[valence, arousal]`, length 2n.
    pub va_pred: &'a [f32],
    /// Annotated `[valence, arousal]`, length 2n.
    pub va: &'a [f32],
    /// VA mask, length n.
    pub va_mask: &'a [f32],
    /// AU sigmoid outputs (not logits), length n*K.
    pub au_probs: &'a [f32],
    /// AU labels 0/1 as floats, length n*K.
    pub au: &'a [f32],
    /// AU mask, length n.
    pub au_mask: &'a [f32],
    /// Expression logits (or probabilities), length n*C; the prediction is their argmax.
    pub expr_logits: &'a [f32],
    /// Annotated expression class per frame, length n.
    pub expr: &'a [u32],
    /// Expression mask, length n.
    pub expr_mask: &'a [f32],
}

/// Index of the largest value, first one on ties, NaN ignored (0 when all are NaN or empty).
pub fn argmax(values: &[f32]) -> usize {
    let mut best: Option<(usize, f32)> = None;
    for (i, v) in values.iter().enumerate() {
        if v.is_nan() {
            continue;
        }
        if best.is_none_or(|(_, b)| *v > b) {
            best = Some((i, *v));
        }
    }
    best.map_or(0, |(i, _)| i)
}

fn check_len(field: &'static str, slice_len: usize, expected: usize) -> Result<(), MetricsError> {
    if slice_len == expected {
        Ok(())
    } else {
        Err(MetricsError::Length {
            field,
            expected,
            got: slice_len,
        })
    }
}

impl Accumulator {
    /// Pushes every labelled frame of `batch` into the matching task accumulator.
    ///
    /// All lengths and labels are checked before anything is pushed, so on error the
    /// accumulator is unchanged. An AU label of a valid frame must be 0 or 1 and an
    /// expression label must be `< n_expr`.
    pub fn push_batch(&mut self, batch: &FrameBatch<'_>) -> Result<(), MetricsError> {
        let n = batch.n;
        let k = self.au.n_au();
        let c = self.expr.n_classes();
        check_len("va_pred", batch.va_pred.len(), 2 * n)?;
        check_len("va", batch.va.len(), 2 * n)?;
        check_len("va_mask", batch.va_mask.len(), n)?;
        check_len("au_probs", batch.au_probs.len(), k * n)?;
        check_len("au", batch.au.len(), k * n)?;
        check_len("au_mask", batch.au_mask.len(), n)?;
        check_len("expr_logits", batch.expr_logits.len(), c * n)?;
        check_len("expr", batch.expr.len(), n)?;
        check_len("expr_mask", batch.expr_mask.len(), n)?;
        let valid = |m: &[f32], i: usize| m[i] > 0.5;

        let mut au_rows: Vec<(usize, Vec<u8>)> = Vec::new();
        for i in (0..n).filter(|i| valid(batch.au_mask, *i)) {
            let labels = &batch.au[i * k..(i + 1) * k];
            let mut bits = Vec::with_capacity(k);
            for (j, v) in labels.iter().enumerate() {
                match *v {
                    0.0 => bits.push(0),
                    1.0 => bits.push(1),
                    _ => {
                        return Err(MetricsError::NotBinaryLabel {
                            frame: i,
                            index: j,
                            value: *v,
                        })
                    }
                }
            }
            au_rows.push((i, bits));
        }
        let mut expr_rows: Vec<(usize, usize)> = Vec::new();
        for i in (0..n).filter(|i| valid(batch.expr_mask, *i)) {
            let target = batch.expr[i] as usize;
            if target >= c {
                return Err(MetricsError::ClassOutOfRange {
                    field: "expr",
                    value: target,
                    classes: c,
                });
            }
            expr_rows.push((argmax(&batch.expr_logits[i * c..(i + 1) * c]), target));
        }

        for i in (0..n).filter(|i| valid(batch.va_mask, *i)) {
            let p = [batch.va_pred[2 * i], batch.va_pred[2 * i + 1]];
            let t = [batch.va[2 * i], batch.va[2 * i + 1]];
            self.va.push(p, t);
        }
        for (i, bits) in au_rows {
            self.au
                .try_push(&batch.au_probs[i * k..(i + 1) * k], &bits)?;
        }
        for (pred, target) in expr_rows {
            self.expr.try_push(pred, target)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn argmax_ties_and_nan() {
        assert_eq!(argmax(&[0.1, 0.7, 0.7, 0.2]), 1);
        assert_eq!(argmax(&[f32::NAN, -1.0, -2.0]), 1);
        assert_eq!(argmax(&[f32::NAN]), 0);
        assert_eq!(argmax(&[]), 0);
    }

    #[test]
    fn push_batch_applies_masks_and_validates_first() -> Result<(), MetricsError> {
        let mut acc = Accumulator::new(2, 3);
        let b = FrameBatch {
            n: 2,
            va_pred: &[0.1, 0.2, 0.3, 0.4],
            va: &[0.0, 0.1, -5.0, -5.0],
            va_mask: &[1.0, 0.0],
            au_probs: &[0.9, 0.1, 0.4, 0.6],
            au: &[-1.0, -1.0, 1.0, 0.0],
            au_mask: &[0.0, 1.0],
            expr_logits: &[0.0, 2.0, 1.0, 5.0, 0.0, 0.0],
            expr: &[1, 0],
            expr_mask: &[1.0, 1.0],
        };
        acc.push_batch(&b)?;
        assert_eq!((acc.va.len(), acc.au.len(), acc.expr.len()), (1, 1, 2));
        assert_eq!(acc.expr.accuracy(), 1.0);
        let bad = FrameBatch {
            au: &[-1.0, -1.0, 0.5, 0.0],
            ..b
        };
        assert!(matches!(
            acc.push_batch(&bad),
            Err(MetricsError::NotBinaryLabel {
                frame: 1,
                index: 0,
                ..
            })
        ));
        let short = FrameBatch { expr: &[1], ..b };
        assert!(acc.push_batch(&short).is_err());
        assert_eq!(
            (acc.va.len(), acc.au.len(), acc.expr.len()),
            (1, 1, 2),
            "unchanged"
        );
        Ok(())
    }
}
