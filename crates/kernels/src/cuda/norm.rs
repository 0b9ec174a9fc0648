//! CUDA forward of the BatchNorm ops (`BatchNormTrain`, `BatchNormTrainGrad`, `ChannelAffine`,
//! `ChannelAffineGrad` in `batch_norm.rs`), from `norm.cu` (compiled by NVRTC on first use).
//! f32 only, as the CPU ops. Same formulas as the CPU code, and its summation order except in
//! the backward's sums over 7x7 and 4x4 maps: statistics are bit-identical to the CPU's, and
//! parameter gradients too except there (see the header of `norm.cu`). Nothing here
//! copies to or from the host: the training statistics stay on the device from the forward to
//! the backward and the running averages ([`blend_running`]).

use super::{dense_f32, launch, nvrtc, to_i64, wrap, THREADS};
use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::driver::{CudaSlice, CudaView, PushKernelArg};
use candle_core::cuda_backend::{CudaDevice, WrapErr};
use candle_core::{CudaStorage, Layout, Result};

/// The CUDA C source of the BatchNorm kernels.
pub const SOURCE: &str = include_str!("norm.cu");
const MODULE: &str = "mtanet_norm";
/// Rows per block of the row-sum kernels (`ROWS_PER_BLOCK` in norm.cu; 16 lanes each).
const ROWS_PER_BLOCK: usize = THREADS as usize / 16;

/// `(N, C, inner)` of the input, as the CPU ops take it.
pub type NcInner = (usize, usize, usize);

/// Output and statistics of the training forward, both on the device.
pub struct TrainForward {
    /// The normalised (and optionally rectified) output, dense, x's shape.
    pub y: CudaStorage,
    /// The per-channel statistics, a dense f32 (3, C) block: the batch mean, the biased batch
    /// variance and `1 / sqrt(var + eps)`, one row each. Never copied to the host: the backward
    /// reads it on the device and the running averages are blended from it by
    /// [`blend_running`].
    pub stats: CudaStorage,
}

fn zeros<T>(dev: &CudaDevice, len: usize) -> Result<CudaSlice<T>>
where
    T: candle_core::cuda_backend::cudarc::driver::DeviceRepr
        + candle_core::cuda_backend::cudarc::driver::ValidAsZeroBits,
{
    dev.alloc_zeros::<T>(len.max(1))
}

/// Training-mode BatchNorm forward on CUDA: `x` (N, C, ...), `weight` and `bias` (C). Every
/// launch is on the device's stream and nothing is read back to the host.
pub fn train_forward(
    x: (&CudaStorage, &Layout),
    weight: (&CudaStorage, &Layout),
    bias: (&CudaStorage, &Layout),
    (n, c, inner): NcInner,
    eps: f64,
    relu: bool,
) -> Result<TrainForward> {
    const WHAT: &str = "batch_norm_train";
    let numel = n * c * inner;
    let rows = n * c;
    let xd = dense_f32(x.0, x.1, numel, WHAT)?;
    let wd = dense_f32(weight.0, weight.1, c, WHAT)?;
    let bd = dense_f32(bias.0, bias.1, c, WHAT)?;
    let (xv, wv, bv) = (xd.view::<f32>()?, wd.view::<f32>()?, bd.view::<f32>()?);
    let dev = x.0.device();
    let stream = dev.cuda_stream();
    let (ni, ci, ii) = (to_i64(n, WHAT)?, to_i64(c, WHAT)?, to_i64(inner, WHAT)?);
    let rows_i = to_i64(rows, WHAT)?;
    let m = (n * inner) as f64;
    let mut row_sums = zeros::<f64>(dev, rows)?;
    // [mean; var; inv_std] and [a; shift], C values per row.
    let mut stats = zeros::<f32>(dev, 3 * c)?;
    let mut affine = zeros::<f32>(dev, 2 * c)?;
    let mut y = zeros::<f32>(dev, numel)?;
    if numel > 0 {
        let sums = nvrtc::function(dev, MODULE, SOURCE, "mtanet_bn_row_sums")?;
        for centred in [0i32, 1] {
            let mut b = stream.launch_builder(&sums);
            b.arg(&xv).arg(&stats).arg(&centred).arg(&mut row_sums);
            b.arg(&rows_i).arg(&ci).arg(&ii);
            // SAFETY: matches `mtanet_bn_row_sums`; `x` holds rows * inner dense values, the
            // first C values of `stats` are the mean (read only when centred), `row_sums`
            // holds rows values.
            unsafe { b.launch(launch(rows, ROWS_PER_BLOCK)) }.w()?;
            if centred == 0 {
                let f = nvrtc::function(dev, MODULE, SOURCE, "mtanet_bn_mean")?;
                let mut b = stream.launch_builder(&f);
                b.arg(&row_sums).arg(&mut stats).arg(&ni).arg(&ci).arg(&m);
                // SAFETY: matches `mtanet_bn_mean`; reads n * c row sums, writes the c means
                // (the first row of `stats`).
                unsafe { b.launch(launch(c, THREADS as usize)) }.w()?;
            }
        }
        let f = nvrtc::function(dev, MODULE, SOURCE, "mtanet_bn_finalize")?;
        let mut b = stream.launch_builder(&f);
        b.arg(&row_sums).arg(&mut stats).arg(&wv).arg(&bv);
        b.arg(&mut affine).arg(&ni).arg(&ci).arg(&m).arg(&eps);
        // SAFETY: matches `mtanet_bn_finalize`; `stats` holds 3c values, `affine` 2c, weight
        // and bias c each.
        unsafe { b.launch(launch(c, THREADS as usize)) }.w()?;
        scale_shift(
            dev,
            &xv,
            (&affine.slice(..c), &affine.slice(c..2 * c)),
            &mut y,
            (n, c, inner),
            relu,
        )?;
    }
    Ok(TrainForward {
        y: wrap(y, x.0),
        stats: wrap(stats, x.0),
    })
}

/// PyTorch's running average of one statistic, in place on the device:
/// `running = (1 - momentum) * running + momentum * factor * batch`, in f64 and rounded to f32
/// as the CPU update does (`keep = 1 - momentum` and `take = momentum * factor` are the host's
/// f64 values, so the result is bit-identical to it). `running` must be a contiguous f32
/// vector of C values, `batch` C f32 values.
pub fn blend_running(
    running: (&mut CudaStorage, &Layout),
    batch: (&CudaStorage, &Layout),
    keep: f64,
    take: f64,
) -> Result<()> {
    const WHAT: &str = "batch_norm running statistics";
    let dev = batch.0.device().clone();
    let (mut rv, c) = super::elementwise::target(running.0, running.1, WHAT)?;
    let bd = dense_f32(batch.0, batch.1, c, WHAT)?;
    if c == 0 {
        return Ok(());
    }
    let f = nvrtc::function(&dev, MODULE, SOURCE, "mtanet_bn_running")?;
    let bv = bd.view::<f32>()?;
    let ci = to_i64(c, WHAT)?;
    let stream = dev.cuda_stream();
    let mut l = stream.launch_builder(&f);
    l.arg(&mut rv).arg(&bv).arg(&ci).arg(&keep).arg(&take);
    // SAFETY: matches `mtanet_bn_running`; the running view and `batch` hold c values.
    unsafe { l.launch(launch(c, THREADS as usize)) }.w()?;
    Ok(())
}

/// `y = x * a[c] + b[c]` (then the ReLU) into `y`.
fn scale_shift(
    dev: &CudaDevice,
    x: &CudaView<'_, f32>,
    (a, b): (&CudaView<'_, f32>, &CudaView<'_, f32>),
    y: &mut CudaSlice<f32>,
    (n, c, inner): NcInner,
    relu: bool,
) -> Result<()> {
    const WHAT: &str = "channel_affine";
    let numel = n * c * inner;
    if numel == 0 {
        return Ok(());
    }
    let f = nvrtc::function(dev, MODULE, SOURCE, "mtanet_scale_shift")?;
    let stream = dev.cuda_stream();
    let (numel_i, ci, ii) = (to_i64(numel, WHAT)?, to_i64(c, WHAT)?, to_i64(inner, WHAT)?);
    let relu_i = i32::from(relu);
    let mut l = stream.launch_builder(&f);
    l.arg(x).arg(a).arg(b).arg(y);
    l.arg(&numel_i).arg(&ci).arg(&ii).arg(&relu_i);
    // SAFETY: matches `mtanet_scale_shift`; x and y hold numel values, a and b c values.
    unsafe { l.launch(launch(numel, THREADS as usize)) }.w()?;
    Ok(())
}

/// Eval-mode BatchNorm (`ChannelAffine`) forward on CUDA: `x * scale[c] + shift[c]`, then the
/// ReLU when `relu`.
pub fn affine_forward(
    x: (&CudaStorage, &Layout),
    scale: (&CudaStorage, &Layout),
    shift: (&CudaStorage, &Layout),
    dims: NcInner,
    relu: bool,
) -> Result<CudaStorage> {
    const WHAT: &str = "channel_affine";
    let (n, c, inner) = dims;
    let numel = n * c * inner;
    let xd = dense_f32(x.0, x.1, numel, WHAT)?;
    let sd = dense_f32(scale.0, scale.1, c, WHAT)?;
    let bd = dense_f32(shift.0, shift.1, c, WHAT)?;
    let dev = x.0.device();
    let mut y = zeros::<f32>(dev, numel)?;
    scale_shift(
        dev,
        &xd.view::<f32>()?,
        (&sd.view::<f32>()?, &bd.view::<f32>()?),
        &mut y,
        dims,
        relu,
    )?;
    Ok(wrap(y, x.0))
}

/// Per-channel values the backward ops read, all on the device (nothing is uploaded).
pub struct ChannelParams<'a> {
    /// Training BatchNorm: the batch mean and `inv_std` (C values each, the forward's
    /// statistics); `None` for the channel affine (no centring, no scaling of the sums).
    pub stats: Option<(CudaView<'a, f32>, CudaView<'a, f32>)>,
    /// `weight` (training) or `scale` (affine), C values.
    pub weight: CudaView<'a, f32>,
}

/// Backward of the training BatchNorm (`mean`, `inv_std` given) or of the channel affine
/// (neither): (`x`, `y`, `grad_y`) -> one dense buffer `dx | dweight | dbias` as the CPU ops
/// return it.
pub fn backward(
    x: (&CudaStorage, &Layout),
    y: (&CudaStorage, &Layout),
    grad_y: (&CudaStorage, &Layout),
    (n, c, inner): NcInner,
    params: &ChannelParams<'_>,
    relu: bool,
) -> Result<CudaStorage> {
    const WHAT: &str = "batch_norm backward";
    let numel = n * c * inner;
    let rows = n * c;
    let xd = dense_f32(x.0, x.1, numel, WHAT)?;
    let yd = dense_f32(y.0, y.1, numel, WHAT)?;
    let gd = dense_f32(grad_y.0, grad_y.1, numel, WHAT)?;
    let (xv, yv, gv) = (xd.view::<f32>()?, yd.view::<f32>()?, gd.view::<f32>()?);
    let mut lens = vec![("weight", params.weight.len())];
    if let Some((mean, inv_std)) = &params.stats {
        lens.extend([("mean", mean.len()), ("inv_std", inv_std.len())]);
    }
    for (name, len) in lens {
        if len != c {
            candle_core::bail!("{WHAT} (cuda): {name} has {len} values, expected {c}")
        }
    }
    let dev = x.0.device();
    let stream = dev.cuda_stream();
    // The affine passes no statistics: its kernels never read these (centred = scaled = 0).
    let unused = match params.stats {
        Some(_) => None,
        None => Some(zeros::<f32>(dev, c)?),
    };
    let (mean, inv_std) = match (&params.stats, &unused) {
        (Some((m, s)), _) => (m.slice(..), s.slice(..)),
        (None, Some(z)) => (z.slice(..), z.slice(..)),
        (None, None) => candle_core::bail!("{WHAT} (cuda): no statistics"),
    };
    let weight = params.weight.slice(..);
    let (ci, ii) = (to_i64(c, WHAT)?, to_i64(inner, WHAT)?);
    let (ni, rows_i, numel_i) = (to_i64(n, WHAT)?, to_i64(rows, WHAT)?, to_i64(numel, WHAT)?);
    let relu_i = i32::from(relu);
    let centred = i32::from(params.stats.is_some());
    let scaled = centred;
    let m = (n * inner) as f64;
    let mut out = zeros::<f32>(dev, numel + 2 * c)?;
    if numel == 0 {
        return Ok(wrap(out, x.0));
    }
    let mut row2 = zeros::<f64>(dev, 2 * rows)?;
    let mut coef = zeros::<f32>(dev, 2 * c)?;
    let f = nvrtc::function(dev, MODULE, SOURCE, "mtanet_bn_gated_row_sums")?;
    let mut b = stream.launch_builder(&f);
    b.arg(&gv)
        .arg(&xv)
        .arg(&yv)
        .arg(&mean)
        .arg(&centred)
        .arg(&relu_i);
    b.arg(&mut row2).arg(&rows_i).arg(&ci).arg(&ii);
    // SAFETY: matches `mtanet_bn_gated_row_sums`; g, x, y hold rows * inner dense values, mean
    // c values, row2 2 * rows values.
    unsafe { b.launch(launch(rows, ROWS_PER_BLOCK)) }.w()?;
    {
        let f = nvrtc::function(dev, MODULE, SOURCE, "mtanet_bn_gated_finalize")?;
        let mut dparams = out.slice_mut(numel..numel + 2 * c);
        let mut b = stream.launch_builder(&f);
        b.arg(&row2).arg(&inv_std).arg(&scaled).arg(&mut dparams);
        b.arg(&mut coef).arg(&ni).arg(&ci).arg(&m);
        // SAFETY: matches `mtanet_bn_gated_finalize`; writes 2c values of `dparams` and `coef`.
        unsafe { b.launch(launch(c, THREADS as usize)) }.w()?;
    }
    let mut dx = out.slice_mut(0..numel);
    if params.stats.is_some() {
        let f = nvrtc::function(dev, MODULE, SOURCE, "mtanet_bn_train_dx")?;
        let mut b = stream.launch_builder(&f);
        b.arg(&xv)
            .arg(&gv)
            .arg(&yv)
            .arg(&mean)
            .arg(&inv_std)
            .arg(&weight);
        b.arg(&coef)
            .arg(&relu_i)
            .arg(&mut dx)
            .arg(&numel_i)
            .arg(&ci)
            .arg(&ii);
        // SAFETY: matches `mtanet_bn_train_dx`; full-size operands hold numel values,
        // per-channel ones c (coef 2c); writes dx[0..numel].
        unsafe { b.launch(launch(numel, THREADS as usize)) }.w()?;
    } else {
        let f = nvrtc::function(dev, MODULE, SOURCE, "mtanet_affine_dx")?;
        let mut b = stream.launch_builder(&f);
        b.arg(&gv).arg(&yv).arg(&weight).arg(&relu_i).arg(&mut dx);
        b.arg(&numel_i).arg(&ci).arg(&ii);
        // SAFETY: matches `mtanet_affine_dx`; g and y hold numel values, scale c; writes
        // dx[0..numel].
        unsafe { b.launch(launch(numel, THREADS as usize)) }.w()?;
    }
    Ok(wrap(out, x.0))
}
