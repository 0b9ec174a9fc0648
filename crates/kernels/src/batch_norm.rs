//! BatchNorm over NCHW (or NC) f32 tensors as fused candle ops, with an optional ReLU folded in.
//!
//! candle-nn's training BatchNorm transposes the input, makes it contiguous, subtracts a
//! broadcast mean, divides by a broadcast standard deviation, multiplies and adds broadcast
//! affine terms and transposes back: seven full-size passes forward, and a backward through
//! each of them (the division's backward alone squares the full-size broadcast divisor). Here
//! the forward is two passes for the statistics (mean, then centred squares; a convolution
//! epilogue can hand over the first) and one for the output, and the backward one pass for the
//! two per-channel sums and one for the input gradient, with the ReLU mask applied in the same
//! loops. The per-channel passes run over blocks of channels sized to stay in a core's L2 cache
//! (`channels_per_block`): a block's slice of each image is contiguous, and the backward writes
//! a block's input gradient right after summing it, from inputs still in cache.
//!
//! [`batch_norm_train`] uses the batch statistics (and returns them, for the running averages);
//! [`channel_affine`] computes `x * scale[c] + shift[c]`, which is BatchNorm in eval mode once
//! `scale` and `shift` are folded from the running statistics (differentiable in all three).
//!
//! In a `cuda` build the same ops run on CUDA f32 tensors (our NVRTC kernels, `cuda/norm.cu`,
//! with the CPU's formulas and summation order), and nothing is copied to the host: the training
//! statistics stay in a device tensor that the backward pass reads and
//! [`BatchStats::update_running`] blends into the running averages with a device kernel.

use crate::conv2d::storage::dense_f32;
use crate::lane_sums::{lane_gated_sums, lane_sum, passed, relu_blocks, LANES};
use crate::packed_grads::unpack;
use crate::row_tasks::{par_rows, written_by};
use candle_core::{bail, CpuStorage, CustomOp3, Device, InplaceOp2, Layout, Result, Shape};
use candle_core::{Tensor, Var};
use rayon::prelude::*;
use std::mem::MaybeUninit;
use std::ops::Range;
use std::sync::{Arc, Mutex, MutexGuard};

/// Per-channel statistics of one training-mode BatchNorm pass: on the host from the CPU ops
/// (`mean`, `var`), on the device from the CUDA op (`device`, with `mean` and `var` empty), so
/// that a CUDA training step never reads them back.
#[derive(Clone, Debug)]
pub struct BatchStats {
    /// Mean of each channel over batch and space (host values; empty when `device` holds the
    /// statistics).
    pub mean: Vec<f32>,
    /// Biased variance of each channel (divided by the element count, as PyTorch normalises;
    /// host values, empty when `device` holds the statistics).
    pub var: Vec<f32>,
    /// Elements per channel (N * H * W): PyTorch's running variance uses `var * m / (m - 1)`.
    pub count: usize,
    /// The statistics on the op's device, never copied to the host: an f32 (2, C) tensor whose
    /// rows are the mean and the biased variance. `None` from the CPU ops.
    pub device: Option<Tensor>,
}

impl PartialEq for BatchStats {
    /// Equal host values and count, and the same device tensor (or none on either side).
    fn eq(&self, other: &Self) -> bool {
        let same_device = match (&self.device, &other.device) {
            (None, None) => true,
            (Some(a), Some(b)) => a.id() == b.id(),
            _ => false,
        };
        self.mean == other.mean && self.var == other.var && self.count == other.count && same_device
    }
}

impl BatchStats {
    /// The mean and the biased variance as (C) f32 tensors: views of the device tensor (no
    /// copy), or the host values on the CPU.
    pub fn mean_var(&self) -> Result<(Tensor, Tensor)> {
        match &self.device {
            Some(t) => Ok((t.get(0)?, t.get(1)?)),
            None => Ok((
                Tensor::new(self.mean.as_slice(), &Device::Cpu)?,
                Tensor::new(self.var.as_slice(), &Device::Cpu)?,
            )),
        }
    }

    /// PyTorch's running averages, in place: `r = (1 - momentum) r + momentum s` for the mean,
    /// and with the unbiased batch variance `s * m / (m - 1)` (m = [`BatchStats::count`]) for
    /// the variance; computed in f64 and rounded to f32.
    ///
    /// Host statistics update the variables through the host (for CPU variables that is no
    /// transfer). Device statistics update them on the device with one kernel per variable
    /// (`cuda::norm::blend_running`, bit-identical to the host formula), without a host copy;
    /// the variables must then be contiguous f32 vectors on the statistics' device.
    pub fn update_running(
        &self,
        running_mean: &Var,
        running_var: &Var,
        momentum: f64,
    ) -> Result<()> {
        let m = momentum;
        let unbias = self.count as f64 / (self.count.max(2) - 1) as f64;
        if let Some(stats) = &self.device {
            for (running, row, factor) in [(running_mean, 0, 1.0), (running_var, 1, unbias)] {
                let op = BlendRunning {
                    keep: 1.0 - m,
                    take: m * factor,
                };
                running.as_tensor().inplace_op2(&stats.get(row)?, &op)?;
            }
            return Ok(());
        }
        let blend = |running: &Var, batch: &[f32], factor: f64| -> Result<()> {
            let old = running.as_tensor().to_vec1::<f32>()?;
            let new: Vec<f32> = old
                .iter()
                .zip(batch)
                .map(|(&r, &s)| ((1.0 - m) * r as f64 + m * factor * s as f64) as f32)
                .collect();
            running.set(&Tensor::from_vec(new, old.len(), running.device())?)
        };
        blend(running_mean, &self.mean, 1.0)?;
        blend(running_var, &self.var, unbias)
    }
}

/// `running = (keep * running + take * batch) as f32` in f64, in place: the running-average
/// update of [`BatchStats::update_running`] for device statistics (the CPU form is the same
/// expression, for completeness).
struct BlendRunning {
    keep: f64,
    take: f64,
}

impl InplaceOp2 for BlendRunning {
    fn name(&self) -> &'static str {
        "mtanet-batch-norm-running"
    }

    fn cpu_fwd(
        &self,
        rs: &mut CpuStorage,
        rl: &Layout,
        bs: &CpuStorage,
        bl: &Layout,
    ) -> Result<()> {
        let batch = dense_f32(bs, bl, "batch statistic")?;
        let (CpuStorage::F32(running), Some((start, end))) = (rs, rl.contiguous_offsets()) else {
            bail!("batch_norm running statistics: a contiguous f32 vector only")
        };
        if end - start != batch.len() {
            bail!(
                "batch_norm running statistics: {} values, the batch has {}",
                end - start,
                batch.len()
            )
        }
        for (r, &s) in running[start..end].iter_mut().zip(batch.iter()) {
            *r = (self.keep * *r as f64 + self.take * s as f64) as f32;
        }
        Ok(())
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        rs: &mut candle_core::CudaStorage,
        rl: &Layout,
        bs: &candle_core::CudaStorage,
        bl: &Layout,
    ) -> Result<()> {
        crate::cuda::norm::blend_running((rs, rl), (bs, bl), self.keep, self.take)
    }
}

/// `(N, C, inner)` view of an NC or NCHW tensor's dims.
pub(crate) fn nc_inner(dims: &[usize], what: &str) -> Result<(usize, usize, usize)> {
    if dims.len() < 2 {
        bail!("{what}: input must have at least 2 dimensions (N, C, ...), got {dims:?}")
    }
    Ok((dims[0], dims[1], dims[2..].iter().product()))
}

fn per_channel<'a>(s: &'a CpuStorage, l: &Layout, c: usize, what: &str) -> Result<&'a [f32]> {
    let CpuStorage::F32(data) = s else {
        bail!("batch_norm: {what} must be f32")
    };
    match l.contiguous_offsets() {
        Some((a, b)) if b - a == c => Ok(&data[a..b]),
        _ => bail!(
            "batch_norm: {what} must be a contiguous vector of {c} values, got {:?}",
            l.dims()
        ),
    }
}

/// Training-mode BatchNorm of `x` (N, C, ...) with per-channel `weight` and `bias` (C), the
/// statistics taken over batch and space as `torch.nn.functional.batch_norm(training=True)`,
/// then `max(0, .)` when `relu`. Differentiable in `x`, `weight` and `bias`. Returns the
/// output and the batch statistics (for the running averages, which the caller owns).
///
/// f32 only, on the CPU or (in a `cuda` build) on CUDA: the caller keeps candle's composed
/// BatchNorm for other devices and dtypes.
pub fn batch_norm_train(
    x: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    eps: f64,
    relu: bool,
) -> Result<(Tensor, BatchStats)> {
    if !crate::fused_ops_apply(&[x, weight, bias]) {
        bail!("batch_norm_train: f32 tensors on the CPU (or one CUDA device) only")
    }
    let saved = Arc::new(Mutex::new(None));
    let op = BatchNormTrain {
        eps,
        relu,
        saved: saved.clone(),
    };
    let y = x.apply_op3_arc(
        weight,
        bias,
        Arc::new(Box::new(op) as Box<dyn CustomOp3 + Send + Sync>),
    )?;
    let stats = match lock(&saved)?.as_ref() {
        Some(Recorded::Host(s)) => s.stats(),
        #[cfg(feature = "cuda")]
        Some(Recorded::Device { stats, count }) => BatchStats {
            mean: Vec::new(),
            var: Vec::new(),
            count: *count,
            device: Some(stats.narrow(0, 0, 2)?),
        },
        None => bail!("batch_norm_train: forward did not run"),
    };
    Ok((y, stats))
}

/// What [`BatchNormTrain`] recorded in its forward pass, for its backward pass and the running
/// averages.
#[derive(Clone, Debug)]
enum Recorded {
    /// The CPU op's state, on the host.
    Host(Saved),
    /// The CUDA op's statistics, on the device: an f32 (3, C) tensor of mean, biased variance
    /// and `1 / sqrt(var + eps)`; `count` elements per channel.
    #[cfg(feature = "cuda")]
    Device { stats: Tensor, count: usize },
}

/// What a training BatchNorm forward pass keeps for its backward pass and the running averages.
#[derive(Clone, Debug)]
pub(crate) struct Saved {
    /// Batch mean of each channel.
    pub mean: Vec<f32>,
    /// Biased batch variance of each channel.
    pub var: Vec<f32>,
    /// `1 / sqrt(var + eps)` of each channel.
    pub inv_std: Vec<f32>,
    /// The affine weight (gamma).
    pub weight: Vec<f32>,
    /// The forward's per-channel `scale = weight * inv_std` and `shift = bias - mean * scale`
    /// (the output is `max?(x * scale + shift)`): the backward recomputes the ReLU mask from
    /// them and the input, bit for bit the forward's test, instead of reading the output.
    pub scale_shift: (Vec<f32>, Vec<f32>),
    /// Elements per channel.
    pub count: usize,
}

impl Saved {
    /// The statistics the caller's running averages take.
    pub(crate) fn stats(&self) -> BatchStats {
        BatchStats {
            mean: self.mean.clone(),
            var: self.var.clone(),
            count: self.count,
            device: None,
        }
    }
}

/// Locks an op's recorded state.
pub(crate) fn lock<T>(m: &Mutex<T>) -> Result<MutexGuard<'_, T>> {
    m.lock()
        .map_err(|_| candle_core::Error::Msg("batch norm: poisoned op state".into()))
}

/// The batch statistics a training op recorded in `saved` while `what` ran forward (`bn`
/// picks its BatchNorm state out of the op's).
pub(crate) fn recorded_stats<S>(
    saved: &Mutex<Option<S>>,
    what: &str,
    bn: impl Fn(&S) -> &Saved,
) -> Result<BatchStats> {
    match lock(saved)?.as_ref() {
        Some(s) => Ok(bn(s).stats()),
        None => bail!("{what}: forward did not run"),
    }
}

/// The training forward op (`x`, `weight`, `bias`) -> `y`; its statistics are kept in `saved`.
#[derive(Debug)]
struct BatchNormTrain {
    eps: f64,
    relu: bool,
    saved: Arc<Mutex<Option<Recorded>>>,
}

/// A channel's fused ReLU in the backward pass: the forward's output was
/// `max(x * scale + shift, 0)`, so the gradient passes where `x * scale + shift > 0`,
/// recomputed from the input in the same f32 operations ([`relu_blocks`], bit for bit the
/// forward's test), and the output is not read. Without ReLU everything passes.
#[derive(Clone, Copy, Debug)]
struct ReluGate {
    relu: bool,
    scale: f32,
    shift: f32,
}

impl ReluGate {
    /// The gate as the lane kernels take it: `Some((scale, shift))` with a ReLU.
    #[inline(always)]
    fn relu(self) -> Option<(f32, f32)> {
        self.relu.then_some((self.scale, self.shift))
    }

    /// True where the ReLU blocked the gradient of input value `x` ([`relu_blocks`]).
    #[inline(always)]
    fn blocks(self, x: f32) -> bool {
        relu_blocks(x, self.relu())
    }

    /// `g`, or 0 where the ReLU blocked it ([`passed`]).
    #[inline(always)]
    fn pass(self, g: f32, x: f32) -> f32 {
        passed(g, x, self.relu())
    }
}

/// `(sum(g'), sum(g' * (x - mu)))` with `g' = gate.pass(g, x)`; in [`LANES`] f32 partial sums
/// combined in f64.
fn gated_sums(g: &[f32], x: &[f32], gate: ReluGate, mu: f32) -> (f64, f64) {
    let ((cg, tg), (cx, tx)) = (g.as_chunks::<LANES>(), x.as_chunks::<LANES>());
    let (s1, s2) = lane_gated_sums(cg, cx, gate.relu(), mu);
    let mut t1: f64 = s1.iter().map(|&v| v as f64).sum();
    let mut t2: f64 = s2.iter().map(|&v| v as f64).sum();
    for (&g, &x) in tg.iter().zip(tx) {
        let gv = gate.pass(g, x);
        t1 += gv as f64;
        t2 += (gv * (x - mu)) as f64;
    }
    (t1, t2)
}

/// Row `i` of channel `ch` of a (N, C, inner) buffer.
fn row_of(i: usize, ch: usize, c: usize, inner: usize) -> Range<usize> {
    (i * c + ch) * inner..(i * c + ch + 1) * inner
}

/// Bytes of input a block of channels spans (over the whole batch): small enough that a
/// second pass over the block finds it in a core's L2 cache.
const BLOCK_BYTES: usize = 256 << 10;

/// Channels per block of the per-channel passes over `arrays` (N, C, inner) f32 inputs: as
/// many as [`BLOCK_BYTES`] hold. A block's slice of one image is contiguous, so a pass over
/// it streams, where channel by channel it would jump a whole image's stride every row.
/// Geometry alone decides it, and the values do not depend on it (each channel's sums run
/// over its rows in image order whatever the block).
fn channels_per_block((n, c, inner): (usize, usize, usize), arrays: usize) -> usize {
    #[cfg(test)]
    if let Some(cb) = tests::FORCED_BLOCK.with(std::cell::Cell::get) {
        return cb.clamp(1, c.max(1));
    }
    (BLOCK_BYTES / (n * inner * arrays * 4).max(1)).clamp(1, c.max(1))
}

/// The channel ranges of the blocks of `cb` channels.
fn block_ranges(c: usize, cb: usize) -> impl IndexedParallelIterator<Item = Range<usize>> {
    (0..c.div_ceil(cb))
        .into_par_iter()
        .map(move |b| b * cb..(c.min((b + 1) * cb)))
}

/// `buf` viewed as (N, C, inner) in blocks of `cb` channels: entry `b` holds block `b`'s
/// (contiguous) slice of every image, in image order. The views are disjoint, so that the
/// blocks can be written in parallel, each right after its reductions have read its inputs.
fn channel_blocks<T>(buf: &mut [T], (c, inner): (usize, usize), cb: usize) -> Vec<Vec<&mut [T]>> {
    let mut blocks: Vec<Vec<&mut [T]>> = (0..c.div_ceil(cb)).map(|_| Vec::new()).collect();
    if c * inner > 0 {
        for image in buf.chunks_mut(c * inner) {
            for (b, slice) in image.chunks_mut(cb * inner).enumerate() {
                blocks[b].push(slice);
            }
        }
    }
    blocks
}

/// For each channel of `chs`: `(sum g', sum g' * (x - mu) * scale)` with
/// `(mu, scale) = centre(channel)`, each (image, channel) row through [`gated_sums`] and the
/// rows added in image order.
fn block_gated_sums(
    (g, x): (&[f32], &[f32]),
    (n, c, inner): (usize, usize, usize),
    chs: Range<usize>,
    gate: &(impl Fn(usize) -> ReluGate + Sync),
    centre: &(impl Fn(usize) -> (f32, f32) + Sync),
) -> Vec<(f64, f64)> {
    let mut sums = vec![(0f64, 0f64); chs.len()];
    for i in 0..n {
        for (s, ch) in sums.iter_mut().zip(chs.clone()) {
            let (mu, scale) = centre(ch);
            let r = row_of(i, ch, c, inner);
            let (rg, rgx) = gated_sums(&g[r.clone()], &x[r], gate(ch), mu);
            s.0 += rg;
            s.1 += rgx * scale as f64;
        }
    }
    sums
}

/// Per channel of `x` viewed as (N, C, inner): [`block_gated_sums`] in blocks of channels in
/// parallel (thread-count independent).
fn channel_gated_sums(
    g: &[f32],
    x: &[f32],
    dims: (usize, usize, usize),
    gate: impl Fn(usize) -> ReluGate + Sync,
    centre: impl Fn(usize) -> (f32, f32) + Sync,
) -> (Vec<f64>, Vec<f64>) {
    let cb = channels_per_block(dims, 2);
    let blocks: Vec<Vec<(f64, f64)>> = block_ranges(dims.1, cb)
        .map(|chs| block_gated_sums((g, x), dims, chs, &gate, &centre))
        .collect();
    blocks.into_iter().flatten().unzip()
}

/// Mean and biased variance of each channel of `chs` in `x` viewed as (N, C, inner): two
/// passes (mean, then centred squares, so a large mean does not cancel the variance), each
/// channel's rows added in image order. `row_sums`, when given, holds `lane_sum` of each
/// (image, channel) row (`n * c` values, image-major), taken while the rows were still in
/// cache: the first pass then only adds them up, in the same order, with the same result.
fn block_moments(
    x: &[f32],
    (n, c, inner): (usize, usize, usize),
    chs: Range<usize>,
    row_sums: Option<&[f64]>,
) -> Vec<(f32, f32)> {
    let m = (n * inner) as f64;
    // -0.0 is where `Iterator::sum` of f64 starts, so an all-zero channel keeps its sign.
    let mut sum = vec![-0.0f64; chs.len()];
    for i in 0..n {
        for (s, ch) in sum.iter_mut().zip(chs.clone()) {
            *s += match row_sums {
                Some(sums) => sums[i * c + ch],
                None => lane_sum(&x[row_of(i, ch, c, inner)], |v| v),
            };
        }
    }
    let mean: Vec<f32> = sum.iter().map(|&s| (s / m) as f32).collect();
    let mut sq = vec![-0.0f64; chs.len()];
    for i in 0..n {
        for ((s, ch), &mu) in sq.iter_mut().zip(chs.clone()).zip(&mean) {
            *s += lane_sum(&x[row_of(i, ch, c, inner)], |v| {
                let d = v - mu;
                d * d
            });
        }
    }
    mean.into_iter()
        .zip(sq)
        .map(|(mu, sq)| (mu, (sq / m) as f32))
        .collect()
}

/// `y[n, c, :] = max?(x[n, c, :] * a[c] + b[c])` in parallel over (n, c) rows; with a
/// `shortcut` (x's size), `y = max(x * a + b + shortcut, 0)` (the residual join; `relu` is then
/// implied).
pub(crate) fn scale_shift(
    x: &[f32],
    (a, b): (&[f32], &[f32]),
    (c, inner): (usize, usize),
    relu: bool,
    shortcut: Option<&[f32]>,
) -> Vec<f32> {
    assert!(
        shortcut.is_none_or(|s| s.len() == x.len()),
        "scale_shift: shortcut size"
    );
    let inner = inner.max(1);
    let fill = |y: &mut [MaybeUninit<f32>]| {
        par_rows(y, inner, |row, yr| {
            let (a, b) = (a[row % c], b[row % c]);
            let r = row * inner..row * inner + yr.len();
            let xr = &x[r.clone()];
            match shortcut {
                Some(s) => {
                    let sr = &s[r];
                    for i in 0..yr.len() {
                        yr[i].write((xr[i] * a + b + sr[i]).max(0.0));
                    }
                }
                None if relu => {
                    for i in 0..yr.len() {
                        yr[i].write((xr[i] * a + b).max(0.0));
                    }
                }
                None => {
                    for i in 0..yr.len() {
                        yr[i].write(xr[i] * a + b);
                    }
                }
            }
        })
    };
    // SAFETY: the rows cover all `x.len()` slots, and every value of each row is written.
    unsafe { written_by(x.len(), fill) }
}

impl CustomOp3 for BatchNormTrain {
    fn name(&self) -> &'static str {
        "mtanet-batch-norm-train"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        ws: &CpuStorage,
        wl: &Layout,
        bs: &CpuStorage,
        bl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (n, c, inner) = nc_inner(xl.dims(), "batch_norm_train")?;
        if n * inner < 2 {
            bail!(
                "batch_norm_train: need more than one value per channel, got {:?}",
                xl.dims()
            )
        }
        let x = dense_f32(xs, xl, "input")?;
        let w = per_channel(ws, wl, c, "weight")?;
        let b = per_channel(bs, bl, c, "bias")?;
        let (y, saved) =
            train_forward(&x, (n, c, inner), (w, b), (self.eps, self.relu), None, None);
        *lock(&self.saved)? = Some(Recorded::Host(saved));
        Ok((CpuStorage::F32(y), xl.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        xs: &candle_core::CudaStorage,
        xl: &Layout,
        ws: &candle_core::CudaStorage,
        wl: &Layout,
        bs: &candle_core::CudaStorage,
        bl: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        let (n, c, inner) = nc_inner(xl.dims(), "batch_norm_train")?;
        if n * inner < 2 {
            bail!(
                "batch_norm_train: need more than one value per channel, got {:?}",
                xl.dims()
            )
        }
        let out = crate::cuda::norm::train_forward(
            (xs, xl),
            (ws, wl),
            (bs, bl),
            (n, c, inner),
            self.eps,
            self.relu,
        )?;
        // A tensor owning the device buffer: the backward op and the caller's running averages
        // read it on the device; it lives as long as the op (the graph) or the caller's
        // `BatchStats` holds it, and every use is ordered on the device's stream.
        let stats = Tensor::from_storage(
            candle_core::Storage::Cuda(out.stats),
            (3, c),
            candle_core::op::BackpropOp::none(),
            false,
        );
        *lock(&self.saved)? = Some(Recorded::Device {
            stats,
            count: n * inner,
        });
        Ok((out.y, xl.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        _w: &Tensor,
        _b: &Tensor,
        y: &Tensor,
        grad_y: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let Some(recorded) = lock(&self.saved)?.clone() else {
            bail!("batch_norm_train: backward before forward")
        };
        let (_, c, _) = nc_inner(x.dims(), "batch_norm_train")?;
        let state = match recorded {
            Recorded::Host(s) => GradState::Host(s),
            #[cfg(feature = "cuda")]
            Recorded::Device { stats, .. } => GradState::Device {
                stats,
                weight: _w.clone(),
            },
        };
        let grad = BatchNormTrainGrad {
            state,
            relu: self.relu,
        };
        let packed = x.apply_op3_no_bwd(y, grad_y, &grad)?;
        let per_channel = Shape::from(c);
        let [dx, dw, db] = unpack(&packed, [x.shape(), &per_channel, &per_channel])?;
        Ok((Some(dx), Some(dw), Some(db)))
    }
}

/// Backward of [`BatchNormTrain`]: (`x`, `y`, `grad_y`) -> one flat tensor holding `dx`
/// (x's size), then `dweight` (C), then `dbias` (C).
struct BatchNormTrainGrad {
    state: GradState,
    relu: bool,
}

/// What the backward op reads besides its operands.
enum GradState {
    /// The CPU forward's state.
    Host(Saved),
    /// On CUDA: the forward's (3, C) statistics tensor and the weight, both read on the device.
    #[cfg(feature = "cuda")]
    Device { stats: Tensor, weight: Tensor },
}

impl GradState {
    /// The CPU forward's state, when the forward ran on the CPU.
    fn host(&self) -> Option<&Saved> {
        match self {
            GradState::Host(s) => Some(s),
            #[cfg(feature = "cuda")]
            GradState::Device { .. } => None,
        }
    }
}

impl CustomOp3 for BatchNormTrainGrad {
    fn name(&self) -> &'static str {
        "mtanet-batch-norm-train-grad"
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        xs: &candle_core::CudaStorage,
        xl: &Layout,
        ys: &candle_core::CudaStorage,
        yl: &Layout,
        gs: &candle_core::CudaStorage,
        gl: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        const WHAT: &str = "batch_norm_train backward";
        let dims = nc_inner(xl.dims(), WHAT)?;
        let c = dims.1;
        let GradState::Device { stats, weight } = &self.state else {
            bail!("{WHAT} (cuda): the forward pass ran on the CPU")
        };
        // Read locks on two tensors that are not operands of this op (candle holds the
        // operands'); nothing writes them during the step.
        let (ss, sl) = stats.storage_and_layout();
        let (ws, wl) = weight.storage_and_layout();
        let (candle_core::Storage::Cuda(ss), candle_core::Storage::Cuda(ws)) = (&*ss, &*ws) else {
            bail!("{WHAT} (cuda): the statistics or the weight are not on CUDA")
        };
        let sd = crate::cuda::dense_f32(ss, sl, 3 * c, WHAT)?;
        let wd = crate::cuda::dense_f32(ws, wl, c, WHAT)?;
        let sv = sd.view::<f32>()?;
        let params = crate::cuda::norm::ChannelParams {
            stats: Some((sv.slice(..c), sv.slice(2 * c..3 * c))),
            weight: wd.view::<f32>()?,
        };
        let out =
            crate::cuda::norm::backward((xs, xl), (ys, yl), (gs, gl), dims, &params, self.relu)?;
        let numel = xl.shape().elem_count();
        Ok((out, Shape::from(numel + 2 * c)))
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        ys: &CpuStorage,
        yl: &Layout,
        gs: &CpuStorage,
        gl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (n, c, inner) = nc_inner(xl.dims(), "batch_norm_train backward")?;
        // The output operand is read on CUDA only: here the ReLU mask is recomputed.
        let _ = (ys, yl);
        let x = dense_f32(xs, xl, "input")?;
        let g = dense_f32(gs, gl, "output gradient")?;
        let Some(saved) = self.state.host() else {
            bail!("batch_norm_train backward: the forward pass did not run on the CPU")
        };
        let numel = x.len();
        let mut out = crate::conv2d::zeroed(numel + 2 * c);
        let (dx, rest) = out.split_at_mut(numel);
        let (dweight, dbias) = train_backward(&x, &g, (n, c, inner), saved, self.relu, dx);
        rest[..c].copy_from_slice(&dweight);
        rest[c..].copy_from_slice(&dbias);
        Ok((CpuStorage::F32(out), Shape::from(numel + 2 * c)))
    }
}

/// Training-mode BatchNorm (+ ReLU when `relu`) of `x` viewed as (N, C, inner) on the CPU, with
/// the affine `(weight, bias)`: statistics in two passes ([`block_moments`], the first from
/// `row_sums` when given), output in one ([`scale_shift`]). With a `shortcut` (x's size) the
/// output is `max(batch_norm(x) + shortcut, 0)` (the residual join, in the same pass; `relu` is
/// then ignored). Returns the output and what the backward pass needs.
pub(crate) fn train_forward(
    x: &[f32],
    (n, c, inner): (usize, usize, usize),
    (weight, bias): (&[f32], &[f32]),
    (eps, relu): (f64, bool),
    row_sums: Option<&[f64]>,
    shortcut: Option<&[f32]>,
) -> (Vec<f32>, Saved) {
    assert!(row_sums.is_none_or(|s| s.len() == n * c));
    let dims = (n, c, inner);
    let cb = channels_per_block(dims, 1);
    let moments: Vec<Vec<(f32, f32)>> = block_ranges(c, cb)
        .map(|chs| block_moments(x, dims, chs, row_sums))
        .collect();
    let (mean, var): (Vec<f32>, Vec<f32>) = moments.into_iter().flatten().unzip();
    let inv_std: Vec<f32> = var
        .iter()
        .map(|&v| (1.0 / (v as f64 + eps).sqrt()) as f32)
        .collect();
    let a: Vec<f32> = (0..c).map(|i| weight[i] * inv_std[i]).collect();
    let shift: Vec<f32> = (0..c).map(|i| bias[i] - mean[i] * a[i]).collect();
    let y = scale_shift(x, (&a, &shift), (c, inner), relu, shortcut);
    let saved = Saved {
        mean,
        var,
        inv_std,
        weight: weight.to_vec(),
        scale_shift: (a, shift),
        count: n * inner,
    };
    (y, saved)
}

/// Backward of training-mode BatchNorm (+ ReLU when `relu`) on the CPU: writes the input
/// gradient into `dx` (x's size) and returns the weight and bias gradients (C each). `x` is
/// the BatchNorm input, `g` the output gradient; the ReLU mask is recomputed from `x` and the
/// forward's scale and shift ([`ReluGate`]), the output is not read.
pub(crate) fn train_backward(
    x: &[f32],
    g: &[f32],
    (n, c, inner): (usize, usize, usize),
    s: &Saved,
    relu: bool,
    dx: &mut [f32],
) -> (Vec<f32>, Vec<f32>) {
    let gate = |ch: usize| ReluGate {
        relu,
        scale: s.scale_shift.0[ch],
        shift: s.scale_shift.1[ch],
    };
    // In blocks of channels: per channel sum g' and sum g' * xhat, then the block's input
    // gradient, from rows of `g` and `x` still in cache.
    let dims = (n, c, inner);
    let m = (n * inner) as f64;
    let cb = channels_per_block(dims, 2);
    let centre = |ch: usize| (s.mean[ch], s.inv_std[ch]);
    let sums: Vec<Vec<(f32, f32)>> = block_ranges(c, cb)
        .zip(channel_blocks(dx, (c, inner), cb))
        .map(|(chs, mut out)| {
            let sums = block_gated_sums((g, x), dims, chs.clone(), &gate, &centre);
            for (i, slice) in out.iter_mut().enumerate() {
                for ((dr, ch), &(sum_g, sum_gx)) in
                    slice.chunks_mut(inner.max(1)).zip(chs.clone()).zip(&sums)
                {
                    let (mu, is) = (s.mean[ch], s.inv_std[ch]);
                    let k = s.weight[ch] * is;
                    let mg = (sum_g / m) as f32;
                    let mgx = (sum_gx / m) as f32;
                    let gate = gate(ch);
                    let r = row_of(i, ch, c, inner);
                    for ((d, &xv), &gv) in dr.iter_mut().zip(&x[r.clone()]).zip(&g[r]) {
                        let gv = gate.pass(gv, xv);
                        *d = k * (gv - mg - (xv - mu) * is * mgx);
                    }
                }
            }
            sums.into_iter()
                .map(|(sum_g, sum_gx)| (sum_gx as f32, sum_g as f32))
                .collect()
        })
        .collect();
    sums.into_iter().flatten().unzip()
}

/// `x * scale[c] + shift[c]` over the channel axis of `x` (N, C, ...), then `max(0, .)` when
/// `relu`: BatchNorm in eval mode with `scale = weight / sqrt(running_var + eps)` and
/// `shift = bias - running_mean * scale`. Differentiable in all three. f32 only, on the CPU or
/// (in a `cuda` build) on CUDA.
pub fn channel_affine(x: &Tensor, scale: &Tensor, shift: &Tensor, relu: bool) -> Result<Tensor> {
    if !crate::fused_ops_apply(&[x, scale, shift]) {
        bail!("channel_affine: f32 tensors on the CPU (or one CUDA device) only")
    }
    x.apply_op3(scale, shift, ChannelAffine { relu })
}

/// The op behind [`channel_affine`].
#[derive(Clone, Copy, Debug)]
struct ChannelAffine {
    relu: bool,
}

impl CustomOp3 for ChannelAffine {
    fn name(&self) -> &'static str {
        "mtanet-channel-affine"
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        xs: &candle_core::CudaStorage,
        xl: &Layout,
        ss: &candle_core::CudaStorage,
        sl: &Layout,
        bs: &candle_core::CudaStorage,
        bl: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        let dims = nc_inner(xl.dims(), "channel_affine")?;
        let y = crate::cuda::norm::affine_forward((xs, xl), (ss, sl), (bs, bl), dims, self.relu)?;
        Ok((y, xl.shape().clone()))
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        ss: &CpuStorage,
        sl: &Layout,
        bs: &CpuStorage,
        bl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (_, c, inner) = nc_inner(xl.dims(), "channel_affine")?;
        let x = dense_f32(xs, xl, "input")?;
        let a = per_channel(ss, sl, c, "scale")?;
        let b = per_channel(bs, bl, c, "shift")?;
        let y = scale_shift(&x, (a, b), (c, inner), self.relu, None);
        Ok((CpuStorage::F32(y), xl.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        scale: &Tensor,
        shift: &Tensor,
        y: &Tensor,
        grad_y: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (_, c, _) = nc_inner(x.dims(), "channel_affine")?;
        // On the CPU scale and shift are read as slices (the ReLU mask is recomputed from
        // them); on CUDA the backward reads the scale tensor there.
        let scale = match scale.device() {
            #[cfg(feature = "cuda")]
            Device::Cuda(_) => {
                let _ = shift;
                AffineScale::Device(scale.clone())
            }
            // Any shape holding C values, as the forward accepts (e.g. (1, C, 1, 1)).
            _ => AffineScale::Host {
                scale: scale.flatten_all()?.to_vec1::<f32>()?,
                shift: shift.flatten_all()?.to_vec1::<f32>()?,
            },
        };
        let grad = ChannelAffineGrad {
            scale,
            relu: self.relu,
        };
        let packed = x.apply_op3_no_bwd(y, grad_y, &grad)?;
        let per_channel = Shape::from(c);
        let [dx, ds, db] = unpack(&packed, [x.shape(), &per_channel, &per_channel])?;
        Ok((Some(dx), Some(ds), Some(db)))
    }
}

/// Backward of [`ChannelAffine`]: (`x`, `y`, `grad_y`) -> flat `dx`, `dscale` (C), `dshift` (C).
struct ChannelAffineGrad {
    scale: AffineScale,
    relu: bool,
}

/// The scale (and on the host the shift) of a [`ChannelAffineGrad`].
enum AffineScale {
    /// On the host (the CPU op).
    Host {
        /// Per-channel scale.
        scale: Vec<f32>,
        /// Per-channel shift.
        shift: Vec<f32>,
    },
    /// The scale tensor on CUDA, read there.
    #[cfg(feature = "cuda")]
    Device(Tensor),
}

impl AffineScale {
    /// Scale and shift on the host, for the CPU op.
    fn host(&self) -> Option<(&[f32], &[f32])> {
        match self {
            AffineScale::Host { scale, shift } => Some((scale, shift)),
            #[cfg(feature = "cuda")]
            AffineScale::Device(_) => None,
        }
    }
}

impl CustomOp3 for ChannelAffineGrad {
    fn name(&self) -> &'static str {
        "mtanet-channel-affine-grad"
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        xs: &candle_core::CudaStorage,
        xl: &Layout,
        ys: &candle_core::CudaStorage,
        yl: &Layout,
        gs: &candle_core::CudaStorage,
        gl: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        const WHAT: &str = "channel_affine backward";
        let dims = nc_inner(xl.dims(), WHAT)?;
        let AffineScale::Device(scale) = &self.scale else {
            bail!("{WHAT} (cuda): the scale is on the host")
        };
        let (ss, sl) = scale.storage_and_layout();
        let candle_core::Storage::Cuda(ss) = &*ss else {
            bail!("{WHAT} (cuda): the scale is not on CUDA")
        };
        let sd = crate::cuda::dense_f32(ss, sl, dims.1, WHAT)?;
        let params = crate::cuda::norm::ChannelParams {
            stats: None,
            weight: sd.view::<f32>()?,
        };
        let out =
            crate::cuda::norm::backward((xs, xl), (ys, yl), (gs, gl), dims, &params, self.relu)?;
        let numel = xl.shape().elem_count();
        Ok((out, Shape::from(numel + 2 * dims.1)))
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        ys: &CpuStorage,
        yl: &Layout,
        gs: &CpuStorage,
        gl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (n, c, inner) = nc_inner(xl.dims(), "channel_affine backward")?;
        // The output operand is read on CUDA only: here the ReLU mask is recomputed.
        let _ = (ys, yl);
        let x = dense_f32(xs, xl, "input")?;
        let g = dense_f32(gs, gl, "output gradient")?;
        let Some((scale, shift)) = self.scale.host() else {
            bail!("channel_affine backward: the scale is not on the CPU")
        };
        let gate = |ch: usize| ReluGate {
            relu: self.relu,
            scale: scale[ch],
            shift: shift[ch],
        };
        // Per channel: sum g' and sum g' * x.
        let (sum_g, sum_gx) = channel_gated_sums(&g, &x, (n, c, inner), gate, |_| (0.0, 1.0));
        let numel = x.len();
        let mut out = crate::conv2d::zeroed(numel + 2 * c);
        let (dx, rest) = out.split_at_mut(numel);
        par_rows(dx, inner, |row, dr| {
            let (a, gate) = (scale[row % c], gate(row % c));
            let r = row * inner..row * inner + dr.len();
            for ((d, &gv), &xv) in dr.iter_mut().zip(&g[r.clone()]).zip(&x[r]) {
                *d = if gate.blocks(xv) { 0.0 } else { a * gv };
            }
        });
        for ch in 0..c {
            rest[ch] = sum_gx[ch] as f32;
            rest[c + ch] = sum_g[ch] as f32;
        }
        Ok((CpuStorage::F32(out), Shape::from(numel + 2 * c)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    thread_local! {
        /// Channels per block for the passes started on this thread (`None`: the geometry's).
        pub(super) static FORCED_BLOCK: Cell<Option<usize>> = const { Cell::new(None) };
    }

    /// Every output of the training forward and backward (and the channel-affine sums), as
    /// bits, with `cb` channels per block.
    fn passes_with_block(
        cb: Option<usize>,
        (x, g, shortcut): (&[f32], &[f32], &[f32]),
        dims: (usize, usize, usize),
        (relu, with_shortcut, with_row_sums): (bool, bool, bool),
    ) -> Vec<u64> {
        FORCED_BLOCK.with(|f| f.set(cb));
        let (n, c, inner) = dims;
        let weight: Vec<f32> = (0..c).map(|i| 0.5 + i as f32 * 0.25).collect();
        let bias: Vec<f32> = (0..c).map(|i| 0.1 * i as f32 - 0.3).collect();
        let row_sums: Vec<f64> = x.chunks(inner).map(|r| lane_sum(r, |v| v)).collect();
        let (y, saved) = train_forward(
            x,
            dims,
            (&weight, &bias),
            (1e-5, relu && !with_shortcut),
            with_row_sums.then_some(&row_sums[..]),
            with_shortcut.then_some(shortcut),
        );
        let mut dx = vec![f32::NAN; x.len()];
        let (dw, db) = train_backward(x, g, dims, &saved, relu, &mut dx);
        let gate = |ch: usize| ReluGate {
            relu,
            scale: weight[ch],
            shift: bias[ch],
        };
        let (s1, s2) = channel_gated_sums(g, x, dims, gate, |ch| (0.1 * ch as f32, 1.5));
        FORCED_BLOCK.with(|f| f.set(None));
        assert_eq!(n * c * inner, y.len());
        let f32s = [&y, &dx, &dw, &db, &saved.mean, &saved.var, &saved.inv_std];
        let f64s = [&s1, &s2];
        f32s.iter()
            .flat_map(|v| v.iter().map(|x| x.to_bits() as u64))
            .chain(f64s.iter().flat_map(|v| v.iter().map(|x| x.to_bits())))
            .collect()
    }

    /// The blocks of channels change where the passes read and write, never a value: with one
    /// channel per block, a few, or all of them in one, every output is the same bits (also
    /// with the ReLU, the shortcut join, the epilogue's row sums, and rows whose length is not
    /// a multiple of the lanes).
    #[test]
    fn blocks_of_channels_leave_every_value_unchanged() {
        for dims in [(3, 10, 37), (2, 7, 16), (4, 5, 1)] {
            let len = dims.0 * dims.1 * dims.2;
            let x: Vec<f32> = (0..len)
                .map(|i| ((i as f32) * 0.73).sin() * 2.0 + 0.3)
                .collect();
            let g: Vec<f32> = (0..len).map(|i| ((i as f32) * 0.41).cos()).collect();
            let shortcut: Vec<f32> = (0..len).map(|i| ((i as f32) * 0.29).sin()).collect();
            for flags in [
                (true, false, false),
                (false, false, true),
                (false, true, true),
            ] {
                let inputs = (&x[..], &g[..], &shortcut[..]);
                let whole = passes_with_block(Some(dims.1), inputs, dims, flags);
                assert!(
                    !whole.contains(&(f32::NAN.to_bits() as u64)),
                    "{dims:?}: a value not written"
                );
                for cb in [1, 3, 4] {
                    let blocked = passes_with_block(Some(cb), inputs, dims, flags);
                    let differ = whole.iter().zip(&blocked).filter(|(a, b)| a != b).count();
                    assert_eq!(differ, 0, "{dims:?} {flags:?}: {cb} channels per block");
                }
            }
        }
    }

    /// The backward's recomputed ReLU mask blocks exactly where the forward's output was not
    /// positive, also where the pre-activation is exactly zero or NaN.
    #[test]
    fn recomputed_relu_mask_is_the_forwards() {
        let (n, c, inner) = (2, 3, 7);
        let mut x: Vec<f32> = (0..n * c * inner)
            .map(|i| ((i as f32) * 0.73).sin() * 3.0)
            .collect();
        // Non-finite values and signed zeros in channel 1 (its statistics, and so every
        // pre-activation there, become NaN).
        let specials = [f32::NAN, f32::INFINITY, f32::NEG_INFINITY, -0.0, 0.0];
        x[inner..inner + specials.len()].copy_from_slice(&specials);
        let (weight, bias) = (vec![1.5, -0.5, 0.0], vec![0.25, 0.0, 0.0]);
        let (y, saved) = train_forward(
            &x,
            (n, c, inner),
            (&weight, &bias),
            (1e-5, true),
            None,
            None,
        );
        for (i, (&xv, &yv)) in x.iter().zip(&y).enumerate() {
            let ch = (i / inner) % c;
            let gate = ReluGate {
                relu: true,
                scale: saved.scale_shift.0[ch],
                shift: saved.scale_shift.1[ch],
            };
            assert_eq!(gate.blocks(xv), yv <= 0.0, "value {i}: x {xv}, y {yv}");
        }
        // Channel 2 has weight 0 and bias 0: every pre-activation is exactly 0, all blocked.
        assert!(y[2 * inner..3 * inner].iter().all(|&v| v == 0.0));
    }
}
