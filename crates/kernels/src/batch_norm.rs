//! BatchNorm over NCHW (or NC) f32 tensors as fused candle ops, with an optional ReLU folded in.
//!
//! candle-nn's training BatchNorm transposes the input, makes it contiguous, subtracts a
//! broadcast mean, divides by a broadcast standard deviation, multiplies and adds broadcast
//! affine terms and transposes back: seven full-size passes forward, and a backward through
//! each of them (the division's backward alone squares the full-size broadcast divisor). Here
//! the forward is two passes for the statistics and one for the output, and the backward one
//! pass for the two per-channel sums and one for the input gradient, with the ReLU mask applied
//! in the same loops (`batch_norm_passes.rs`).
//!
//! [`batch_norm_train`] uses the batch statistics (and returns them, for the running averages);
//! [`channel_affine`] computes `x * scale[c] + shift[c]`, which is BatchNorm in eval mode once
//! `scale` and `shift` are folded from the running statistics (differentiable in all three).
//!
//! In a `cuda` build the same ops run on CUDA f32 tensors (our NVRTC kernels, `cuda/norm.cu`,
//! with the CPU's formulas and summation order), and nothing is copied to the host: the training
//! statistics stay in a device tensor that the backward pass reads and
//! [`BatchStats::update_running`] blends into the running averages with a device kernel.

use crate::batch_norm_passes::{
    channel_gated_sums, scale_shift, train_backward, train_forward, OutputGrad, ReluGate, Saved,
};
use crate::conv2d::storage::dense_f32;
use crate::packed_grads::unpack;
use crate::row_tasks::par_rows;
use candle_core::{bail, CpuStorage, CustomOp3, Device, InplaceOp2, Layout, Result, Shape};
use candle_core::{Tensor, Var};
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
        let (y, saved) = train_forward(
            &x,
            (n, c, inner),
            (w, b),
            (self.eps, self.relu),
            None,
            (None, None),
        );
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
        let (dweight, dbias) = train_backward(
            &x,
            OutputGrad::Values(&g),
            (n, c, inner),
            saved,
            self.relu,
            dx,
        );
        rest[..c].copy_from_slice(&dweight);
        rest[c..].copy_from_slice(&dbias);
        Ok((CpuStorage::F32(out), Shape::from(numel + 2 * c)))
    }
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
        let y = scale_shift(&x, (a, b), (c, inner), (self.relu, None));
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
