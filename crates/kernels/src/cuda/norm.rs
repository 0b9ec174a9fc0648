//! CUDA forward of the BatchNorm ops (`BatchNormTrain`, `BatchNormTrainGrad`, `ChannelAffine`,
//! `ChannelAffineGrad` in `batch_norm.rs`), from `norm.cu` (compiled by NVRTC on first use).
//! f32 only, as the CPU ops. Same formulas and summation order as the CPU code: statistics and
//! parameter gradients are bit-identical to the CPU's (see the header of `norm.cu`).

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

/// Output and statistics of the training forward, the statistics on the host.
pub struct TrainForward {
    /// The normalised (and optionally rectified) output, dense, x's shape.
    pub y: CudaStorage,
    /// Per-channel batch mean.
    pub mean: Vec<f32>,
    /// Per-channel biased batch variance.
    pub var: Vec<f32>,
    /// Per-channel `1 / sqrt(var + eps)`.
    pub inv_std: Vec<f32>,
}

fn zeros<T>(dev: &CudaDevice, len: usize) -> Result<CudaSlice<T>>
where
    T: candle_core::cuda_backend::cudarc::driver::DeviceRepr
        + candle_core::cuda_backend::cudarc::driver::ValidAsZeroBits,
{
    dev.alloc_zeros::<T>(len.max(1))
}

/// Training-mode BatchNorm forward on CUDA: `x` (N, C, ...), `weight` and `bias` (C).
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
    let mut mean = zeros::<f32>(dev, c)?;
    let mut var = zeros::<f32>(dev, c)?;
    let mut inv_std = zeros::<f32>(dev, c)?;
    let mut a = zeros::<f32>(dev, c)?;
    let mut shift = zeros::<f32>(dev, c)?;
    let mut y = zeros::<f32>(dev, numel)?;
    if numel > 0 {
        let sums = nvrtc::function(dev, MODULE, SOURCE, "mtanet_bn_row_sums")?;
        for centred in [0i32, 1] {
            let mut b = stream.launch_builder(&sums);
            b.arg(&xv).arg(&mean).arg(&centred).arg(&mut row_sums);
            b.arg(&rows_i).arg(&ci).arg(&ii);
            // SAFETY: matches `mtanet_bn_row_sums`; `x` holds rows * inner dense values, `mean`
            // C values, `row_sums` rows values.
            unsafe { b.launch(launch(rows, ROWS_PER_BLOCK)) }.w()?;
            if centred == 0 {
                let f = nvrtc::function(dev, MODULE, SOURCE, "mtanet_bn_mean")?;
                let mut b = stream.launch_builder(&f);
                b.arg(&row_sums).arg(&mut mean).arg(&ni).arg(&ci).arg(&m);
                // SAFETY: matches `mtanet_bn_mean`; reads n * c row sums, writes c means.
                unsafe { b.launch(launch(c, THREADS as usize)) }.w()?;
            }
        }
        let f = nvrtc::function(dev, MODULE, SOURCE, "mtanet_bn_finalize")?;
        let mut b = stream.launch_builder(&f);
        b.arg(&row_sums).arg(&mean).arg(&wv).arg(&bv);
        b.arg(&mut var)
            .arg(&mut inv_std)
            .arg(&mut a)
            .arg(&mut shift);
        b.arg(&ni).arg(&ci).arg(&m).arg(&eps);
        // SAFETY: matches `mtanet_bn_finalize`; every per-channel buffer holds c values.
        unsafe { b.launch(launch(c, THREADS as usize)) }.w()?;
        scale_shift(
            dev,
            &xv,
            (&a.slice(..), &shift.slice(..)),
            &mut y,
            (n, c, inner),
            relu,
        )?;
    }
    let host = |s: &CudaSlice<f32>| -> Result<Vec<f32>> {
        let mut v = dev.clone_dtoh(s)?;
        v.truncate(c);
        Ok(v)
    };
    let out = TrainForward {
        mean: host(&mean)?,
        var: host(&var)?,
        inv_std: host(&inv_std)?,
        y: wrap(y, x.0),
    };
    Ok(out)
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

/// The per-channel weight of a backward op: on the host, or the weight tensor's own CUDA
/// storage (then nothing is copied).
pub enum Weight<'a> {
    /// C values on the host, uploaded for the call.
    Host(&'a [f32]),
    /// C f32 values on the device, as a storage and its layout.
    Device(&'a CudaStorage, &'a Layout),
}

/// Per-channel values the backward ops need on the device.
pub struct ChannelParams<'a> {
    /// Batch mean (training BatchNorm), or `None` for the affine (no centring).
    pub mean: Option<&'a [f32]>,
    /// The factor of the per-row `sum g' x` sums: `inv_std` (training) or `None` (1).
    pub inv_std: Option<&'a [f32]>,
    /// `weight` (training) or `scale` (affine).
    pub weight: Weight<'a>,
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
    let host_weight = match params.weight {
        Weight::Host(w) => Some(w),
        Weight::Device(..) => None,
    };
    for (name, v) in [
        ("mean", params.mean),
        ("inv_std", params.inv_std),
        ("weight", host_weight),
    ] {
        if let Some(v) = v {
            if v.len() != c {
                candle_core::bail!("{WHAT} (cuda): {name} has {} values, expected {c}", v.len())
            }
        }
    }
    let dev = x.0.device();
    let stream = dev.cuda_stream();
    let upload = |v: Option<&[f32]>| -> Result<CudaSlice<f32>> {
        match v {
            Some(v) if !v.is_empty() => dev.clone_htod(v),
            _ => zeros::<f32>(dev, c),
        }
    };
    let mean = upload(params.mean)?;
    let inv_std = upload(params.inv_std)?;
    let weight_dense = match params.weight {
        Weight::Device(s, l) => Some(dense_f32(s, l, c, WHAT)?),
        Weight::Host(_) => None,
    };
    let weight_host = match host_weight {
        Some(w) => Some(upload(Some(w))?),
        None => None,
    };
    let weight: CudaView<'_, f32> = match (&weight_dense, &weight_host) {
        (Some(d), _) => d.view::<f32>()?,
        (None, Some(h)) => h.slice(..),
        (None, None) => candle_core::bail!("{WHAT} (cuda): no weight"),
    };
    let (ci, ii) = (to_i64(c, WHAT)?, to_i64(inner, WHAT)?);
    let (ni, rows_i, numel_i) = (to_i64(n, WHAT)?, to_i64(rows, WHAT)?, to_i64(numel, WHAT)?);
    let relu_i = i32::from(relu);
    let centred = i32::from(params.mean.is_some());
    let scaled = i32::from(params.inv_std.is_some());
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
    if params.mean.is_some() {
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
