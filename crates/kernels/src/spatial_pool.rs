//! Global pooling over the spatial axes for the attention layers: the mean (squeeze-excite)
//! or the mean and the max (CBAM's channel gate) of every (image, channel) map, in one pass.
//!
//! Composed from candle ops (`flatten_from(2)`, `mean`, `max`, `stack`), each reduction's
//! backward broadcasts its gradient to the full input size, the max's also compares the input
//! with its broadcast maximum and multiplies by the mask, and every intermediate gradient is
//! zero-filled and added into by candle's graph: several full-size passes per block. Here the
//! backward is one pass writing the input gradient.

use crate::conv2d::storage::dense_f32;
use crate::lane_sums::{lane_sum, LANES};
use crate::row_tasks::rows_per_task;
use candle_core::{bail, CpuStorage, CustomOp1, Layout, Result, Shape, Storage, Tensor, D};
use rayon::prelude::*;

/// `x.mean over (H, W)` for `x` (N, C, H, W): (N, C), differentiable.
pub fn spatial_mean(x: &Tensor) -> Result<Tensor> {
    if crate::conv_bn_applies(&[x]) {
        x.apply_op1(SpatialPool { with_max: false })
    } else {
        x.flatten_from(2)?.mean(D::Minus1)
    }
}

/// `stack([mean over (H, W), max over (H, W)])` for `x` (N, C, H, W): (2, N, C),
/// differentiable; the max's gradient goes to the first maximal pixel of each map, as
/// PyTorch's `max_pool2d` over the whole map gives it.
pub fn spatial_mean_max(x: &Tensor) -> Result<Tensor> {
    if crate::conv_bn_applies(&[x]) {
        x.apply_op1(SpatialPool { with_max: true })
    } else {
        let flat = x.flatten_from(2)?;
        Tensor::stack(&[flat.mean(D::Minus1)?, flat.max(D::Minus1)?], 0)
    }
}

/// The op behind [`spatial_mean`] and [`spatial_mean_max`].
#[derive(Clone, Copy, Debug)]
struct SpatialPool {
    with_max: bool,
}

/// `(N, C, pixels)` of an NCHW layout.
fn dims(l: &Layout) -> Result<(usize, usize, usize)> {
    match l.dims() {
        &[n, c, h, w] if h * w > 0 => Ok((n, c, h * w)),
        d => bail!("spatial pooling: input must be (N, C, H, W) with H, W > 0, got {d:?}"),
    }
}

/// The largest value of `row` by `>` (NaNs skipped; -inf for an empty row) and whether the row
/// holds a NaN, in one vectorised pass: [`LANES`] partial maxima and NaN flags.
fn lane_max(row: &[f32]) -> (f32, bool) {
    let (chunks, tail) = row.as_chunks::<LANES>();
    let mut lanes = [f32::NEG_INFINITY; LANES];
    let mut nan = [false; LANES];
    for c in chunks {
        for i in 0..LANES {
            lanes[i] = if c[i] > lanes[i] { c[i] } else { lanes[i] };
            nan[i] |= c[i].is_nan();
        }
    }
    let mut max = f32::NEG_INFINITY;
    for &v in lanes.iter().chain(tail) {
        max = if v > max { v } else { max };
    }
    (max, nan.contains(&true) || tail.iter().any(|v| v.is_nan()))
}

/// The first index of the largest value of `row` (a NaN counts as largest, as in PyTorch; of
/// equal values, +0 and -0 included, the first).
///
/// In two vectorised passes over the row (which stays in L1): [`lane_max`], then the first
/// index holding a value equal to it, or the first NaN. A running "best so far" loop, which
/// compares each value with the one at the best index, does not vectorise, and took a third of
/// CBAM's eval gate.
fn first_argmax(row: &[f32]) -> usize {
    let found = match lane_max(row) {
        (_, true) => row.iter().position(|v| v.is_nan()),
        (max, false) => row.iter().position(|&v| v == max),
    };
    found.unwrap_or(0)
}

/// `row[first_argmax(row)]`, the row's maximum, in one vectorised pass ([`lane_max`]) where it
/// can: a maximum of zero (which of +0 and -0 comes first decides its sign) or a NaN (whose
/// bits are the first NaN's) is taken from the first maximal index itself. An empty row gives
/// -inf.
pub(crate) fn row_max(row: &[f32]) -> f32 {
    match lane_max(row) {
        (max, false) if max != 0.0 => max,
        _ => row[first_argmax(row)],
    }
}

/// The mean of each `pixels`-long row of `x` into `means` (summed in f64 lanes), in parallel:
/// [`spatial_mean`]'s values over a buffer of (image, channel) maps.
pub(crate) fn row_means(x: &[f32], pixels: usize, means: &mut [f32]) {
    let (p, rows) = (pixels.max(1), rows_per_task(pixels));
    means.par_chunks_mut(rows).enumerate().for_each(|(t, ms)| {
        for (k, m) in ms.iter_mut().enumerate() {
            let row = t * rows + k;
            *m = row_mean(&x[row * p..(row + 1) * p]);
        }
    });
}

/// The mean of one row, summed in f64 lanes.
pub(crate) fn row_mean(row: &[f32]) -> f32 {
    (lane_sum(row, |v| v) / row.len() as f64) as f32
}

/// [`row_means`] and, of the same rows, the maximum into `maxes` and the index of its first
/// maximal pixel into `argmax`, in parallel: [`spatial_mean_max`]'s values over a buffer. Each
/// row is read once from memory: its max is taken while it is still in cache from its sum.
pub(crate) fn row_means_maxes(
    x: &[f32],
    pixels: usize,
    means: &mut [f32],
    (maxes, argmax): (&mut [f32], &mut [u32]),
) {
    let (p, rows) = (pixels.max(1), rows_per_task(pixels));
    means
        .par_chunks_mut(rows)
        .zip(maxes.par_chunks_mut(rows))
        .zip(argmax.par_chunks_mut(rows))
        .enumerate()
        .for_each(|(t, ((ms, mx), am))| {
            for (k, ((mean, m), a)) in ms.iter_mut().zip(mx).zip(am).enumerate() {
                let row = &x[(t * rows + k) * p..(t * rows + k + 1) * p];
                *mean = row_mean(row);
                let i = first_argmax(row);
                *m = row[i];
                *a = i as u32;
            }
        });
}

impl CustomOp1 for SpatialPool {
    fn name(&self) -> &'static str {
        "mtanet-spatial-pool"
    }

    fn cpu_fwd(&self, xs: &CpuStorage, xl: &Layout) -> Result<(CpuStorage, Shape)> {
        let (n, c, p) = dims(xl)?;
        let x = dense_f32(xs, xl, "input")?;
        let rows = n * c;
        let mut out = vec![0f32; if self.with_max { 2 * rows } else { rows }];
        let (means, maxes) = out.split_at_mut(rows);
        if self.with_max {
            let mut argmax = vec![0u32; rows];
            row_means_maxes(&x, p, means, (maxes, &mut argmax));
        } else {
            row_means(&x, p, means);
        }
        let shape = if self.with_max {
            Shape::from((2, n, c))
        } else {
            Shape::from((n, c))
        };
        Ok((CpuStorage::F32(out), shape))
    }

    fn bwd(&self, x: &Tensor, _y: &Tensor, grad_y: &Tensor) -> Result<Option<Tensor>> {
        let (xs, xl) = x.storage_and_layout();
        let (gs, gl) = grad_y.storage_and_layout();
        let (Storage::Cpu(xs), Storage::Cpu(gs)) = (&*xs, &*gs) else {
            bail!("spatial pooling: backward of a CPU op on another device")
        };
        let (n, c, p) = dims(xl)?;
        let values = dense_f32(xs, xl, "input")?;
        let g = dense_f32(gs, gl, "output gradient")?;
        let rows = n * c;
        let (g_mean, g_max) = g.split_at(rows);
        let inv = 1.0 / p as f32;
        let mut dx = crate::conv2d::zeroed(values.len());
        dx.par_chunks_mut(p)
            .zip(values.par_chunks(p))
            .enumerate()
            .for_each(|(r, (d, row))| {
                d.fill(g_mean[r] * inv);
                if self.with_max {
                    d[first_argmax(row)] += g_max[r];
                }
            });
        Ok(Some(Tensor::from_vec(dx, x.shape(), x.device())?))
    }
}

#[cfg(test)]
mod argmax_tests {
    use super::{first_argmax, row_max};

    /// The plain definition: the first index whose value no later value exceeds, NaN largest.
    fn reference(row: &[f32]) -> usize {
        let mut best = 0;
        for (i, &v) in row.iter().enumerate().skip(1) {
            if v > row[best] || (v.is_nan() && !row[best].is_nan()) {
                best = i;
            }
        }
        best
    }

    /// The vectorised argmax, and the maximum, agree with the plain loop on ties, signed zeros,
    /// NaNs, infinities and lengths around the lane count.
    #[test]
    fn first_argmax_and_row_max_are_the_plain_loops() {
        let specials = [
            0.0,
            -0.0,
            f32::NAN,
            f32::INFINITY,
            f32::NEG_INFINITY,
            1.5,
            -2.0,
        ];
        for len in [1, 2, 15, 16, 17, 33, 49, 64] {
            for seed in 0..200u32 {
                let row: Vec<f32> = (0..len as u32)
                    .map(|i| {
                        let h = (i.wrapping_mul(2_654_435_761) ^ seed.wrapping_mul(40_503)) >> 7;
                        specials[h as usize % specials.len()]
                    })
                    .collect();
                assert_eq!(first_argmax(&row), reference(&row), "{row:?}");
                let max = row[reference(&row)];
                assert_eq!(row_max(&row).to_bits(), max.to_bits(), "{row:?}");
            }
            let ramp: Vec<f32> = (0..len).map(|i| (i as f32 * 0.37).sin()).collect();
            assert_eq!(first_argmax(&ramp), reference(&ramp), "{ramp:?}");
        }
    }
}
