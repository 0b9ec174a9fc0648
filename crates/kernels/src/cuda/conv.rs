//! CUDA convolutions: forward, input gradient (cuDNN "backward data") and weight gradient
//! (cuDNN "backward filter"), each one cuDNN call with the native group count.
//!
//! Descriptors, checked against cuDNN's API reference (`cudnnSetTensor4dDescriptor`,
//! `cudnnSetFilter4dDescriptor`, `cudnnSetConvolution2dDescriptor`,
//! `cudnnSetConvolutionGroupCount`):
//! - input `x`: NCHW `(N, C_in, H, W)`; output `y`: NCHW `(N, C_out, OH, OW)`; both packed
//!   (strided operands are first copied to packed buffers);
//! - filter: NCHW `(C_out, C_in/groups, KH, KW)`: with a group count G cuDNN expects the
//!   filter's second dimension to be `C_in/G`, exactly our weight layout;
//! - convolution: padding `(p, p)`, stride `(s, s)`, dilation `(1, 1)`,
//!   `CUDNN_CROSS_CORRELATION` (PyTorch's conv, no kernel flip), compute type f32 for
//!   f32/bf16/f16 data and f64 for f64, group count G.
//!
//! Math mode: f32 uses `CUDNN_FMA_MATH` (no TF32) unless [`set_allow_tf32`] is on, then
//! `CUDNN_DEFAULT_MATH` (TF32 tensor cores on Ampere and later, as PyTorch's default); bf16/f16
//! use `CUDNN_TENSOR_OP_MATH`. The math type is set on the convolution descriptor before any
//! algorithm is measured or run, so every algorithm runs in the math type it was measured in.
//! Output buffers are zero-filled and written with `alpha = 1, beta = 0`.
//!
//! Algorithms are chosen by measurement, as PyTorch's `cudnn.benchmark = True` does: the first
//! time a (device, pass, geometry, dtype, math type) key is seen on a thread, every algorithm
//! of the pass is launched once (warm-up; an algorithm that is not supported, needs more than
//! [`WORKSPACE_LIMIT`] bytes of workspace, or fails, is left out) and once more timed, and the
//! working ones are cached fastest first. Each call runs the first cached algorithm and, should
//! it fail (a workspace that no longer fits, say), the next; when none runs, the call returns
//! an error listing each algorithm's failure.
//!
//! Without the `cudnn` feature these functions run the CPU kernels through
//! [`super::host_fallback`].

use crate::{Conv2d, Conv2dInputGrad, Conv2dWeightGrad, ConvGeometry};
use candle_core::{CudaStorage, Layout, Result, Shape};
#[cfg(feature = "cudnn")]
pub use cudnn::WORKSPACE_LIMIT;
use std::sync::atomic::{AtomicBool, Ordering};

static ALLOW_TF32: AtomicBool = AtomicBool::new(false);

/// Lets f32 convolutions use TF32 tensor cores (about 1e-3 relative error, PyTorch's default
/// for cuDNN convolutions) instead of exact f32 FMA math. Off by default. Process-wide; takes
/// effect for the next call of each shape (cached algorithm choices are keyed by math mode).
pub fn set_allow_tf32(allow: bool) {
    ALLOW_TF32.store(allow, Ordering::Relaxed)
}

/// Whether f32 convolutions may use TF32 (see [`set_allow_tf32`]).
pub fn allow_tf32() -> bool {
    ALLOW_TF32.load(Ordering::Relaxed)
}

/// Forward of [`Conv2d`] on CUDA: `x` `(N, C_in, H, W)`, `w` `(C_out, C_in/groups, KH, KW)`.
pub fn forward(
    op: &Conv2d,
    x: &CudaStorage,
    x_layout: &Layout,
    w: &CudaStorage,
    w_layout: &Layout,
) -> Result<(CudaStorage, Shape)> {
    let g = ConvGeometry::new(
        x_layout.dims(),
        w_layout.dims(),
        op.stride,
        op.padding,
        op.groups,
    )?;
    #[cfg(feature = "cudnn")]
    {
        cudnn::run(cudnn::Pass::Forward, &g, (x, x_layout), (w, w_layout))
    }
    #[cfg(not(feature = "cudnn"))]
    {
        let _ = g;
        super::host_fallback::via_host2(op, x, x_layout, w, w_layout)
    }
}

/// [`Conv2dInputGrad`] on CUDA: `dx` from `dy` `(N, C_out, OH, OW)` and `w`.
pub fn input_grad(
    op: &Conv2dInputGrad,
    dy: &CudaStorage,
    dy_layout: &Layout,
    w: &CudaStorage,
    w_layout: &Layout,
) -> Result<(CudaStorage, Shape)> {
    #[cfg(feature = "cudnn")]
    {
        cudnn::run(
            cudnn::Pass::BackwardData,
            &op.geometry,
            (dy, dy_layout),
            (w, w_layout),
        )
    }
    #[cfg(not(feature = "cudnn"))]
    {
        super::host_fallback::via_host2(op, dy, dy_layout, w, w_layout)
    }
}

/// [`Conv2dWeightGrad`] on CUDA: `dw` from `x` and `dy`.
pub fn weight_grad(
    op: &Conv2dWeightGrad,
    x: &CudaStorage,
    x_layout: &Layout,
    dy: &CudaStorage,
    dy_layout: &Layout,
) -> Result<(CudaStorage, Shape)> {
    #[cfg(feature = "cudnn")]
    {
        cudnn::run(
            cudnn::Pass::BackwardFilter,
            &op.geometry,
            (x, x_layout),
            (dy, dy_layout),
        )
    }
    #[cfg(not(feature = "cudnn"))]
    {
        super::host_fallback::via_host2(op, x, x_layout, dy, dy_layout)
    }
}

#[cfg(feature = "cudnn")]
mod cudnn {
    use super::allow_tf32;
    use crate::cuda::{wrap, Dense};
    use crate::ConvGeometry;
    use candle_core::backend::BackendStorage;
    use candle_core::cuda_backend::cudarc::cudnn::sys::{
        cudnnConvolutionBwdDataAlgo_t, cudnnConvolutionBwdFilterAlgo_t, cudnnConvolutionFwdAlgo_t,
        cudnnConvolutionMode_t, cudnnMathType_t, cudnnTensorFormat_t,
    };
    use candle_core::cuda_backend::cudarc::cudnn::{
        ConvBackwardData, ConvBackwardFilter, ConvForward, Cudnn, CudnnDataType,
    };
    use candle_core::cuda_backend::cudarc::driver::{CudaSlice, DeviceRepr, ValidAsZeroBits};
    use candle_core::cuda_backend::WrapErr;
    use candle_core::cuda_backend::{CudaDType, CudaDevice, DeviceId};
    use candle_core::{bail, CudaStorage, DType, Layout, Result, Shape, WithDType};
    use std::cell::RefCell;
    use std::collections::HashMap;
    use std::sync::Arc;
    use std::time::Instant;

    /// Which of the three convolution passes to run.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
    pub enum Pass {
        /// `y = conv(x, w)`; operands `(x, w)`.
        Forward,
        /// `dx` from `(dy, w)`.
        BackwardData,
        /// `dw` from `(x, dy)`.
        BackwardFilter,
    }

    /// Algorithm-cache key: device, pass, the ten sizes of the geometry, dtype, math mode.
    type Key = (DeviceId, Pass, [usize; 10], DType, u32);

    /// Most workspace memory an algorithm may use (1 GiB); algorithms needing more are not
    /// measured or run.
    pub const WORKSPACE_LIMIT: usize = 1 << 30;

    /// Working algorithms of one key, fastest first.
    type Order<A> = Vec<A>;

    thread_local! {
        // cuDNN handles are neither Send nor Sync: one per thread and device, as candle does.
        static HANDLES: RefCell<HashMap<DeviceId, Arc<Cudnn>>> = RefCell::new(HashMap::new());
        static FWD: RefCell<HashMap<Key, Order<cudnnConvolutionFwdAlgo_t>>> =
            RefCell::new(HashMap::new());
        static BWD_DATA: RefCell<HashMap<Key, Order<cudnnConvolutionBwdDataAlgo_t>>> =
            RefCell::new(HashMap::new());
        static BWD_FILTER: RefCell<HashMap<Key, Order<cudnnConvolutionBwdFilterAlgo_t>>> =
            RefCell::new(HashMap::new());
    }

    /// Every forward algorithm of cuDNN's legacy API.
    const FWD_ALGOS: [cudnnConvolutionFwdAlgo_t; 8] = {
        use cudnnConvolutionFwdAlgo_t::*;
        [
            CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_GEMM,
            CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_PRECOMP_GEMM,
            CUDNN_CONVOLUTION_FWD_ALGO_GEMM,
            CUDNN_CONVOLUTION_FWD_ALGO_DIRECT,
            CUDNN_CONVOLUTION_FWD_ALGO_FFT,
            CUDNN_CONVOLUTION_FWD_ALGO_FFT_TILING,
            CUDNN_CONVOLUTION_FWD_ALGO_WINOGRAD,
            CUDNN_CONVOLUTION_FWD_ALGO_WINOGRAD_NONFUSED,
        ]
    };

    /// Every backward-data algorithm.
    const BWD_DATA_ALGOS: [cudnnConvolutionBwdDataAlgo_t; 6] = {
        use cudnnConvolutionBwdDataAlgo_t::*;
        [
            CUDNN_CONVOLUTION_BWD_DATA_ALGO_0,
            CUDNN_CONVOLUTION_BWD_DATA_ALGO_1,
            CUDNN_CONVOLUTION_BWD_DATA_ALGO_FFT,
            CUDNN_CONVOLUTION_BWD_DATA_ALGO_FFT_TILING,
            CUDNN_CONVOLUTION_BWD_DATA_ALGO_WINOGRAD,
            CUDNN_CONVOLUTION_BWD_DATA_ALGO_WINOGRAD_NONFUSED,
        ]
    };

    /// Every backward-filter algorithm.
    const BWD_FILTER_ALGOS: [cudnnConvolutionBwdFilterAlgo_t; 7] = {
        use cudnnConvolutionBwdFilterAlgo_t::*;
        [
            CUDNN_CONVOLUTION_BWD_FILTER_ALGO_0,
            CUDNN_CONVOLUTION_BWD_FILTER_ALGO_1,
            CUDNN_CONVOLUTION_BWD_FILTER_ALGO_FFT,
            CUDNN_CONVOLUTION_BWD_FILTER_ALGO_3,
            CUDNN_CONVOLUTION_BWD_FILTER_ALGO_WINOGRAD,
            CUDNN_CONVOLUTION_BWD_FILTER_ALGO_WINOGRAD_NONFUSED,
            CUDNN_CONVOLUTION_BWD_FILTER_ALGO_FFT_TILING,
        ]
    };

    fn handle(dev: &CudaDevice) -> Result<Arc<Cudnn>> {
        HANDLES.with(|h| {
            if let Some(c) = h.borrow().get(&dev.id()) {
                return Ok(c.clone());
            }
            let c = Cudnn::new(dev.cuda_stream())?;
            h.borrow_mut().insert(dev.id(), c.clone());
            Ok(c)
        })
    }

    fn sizes(g: &ConvGeometry) -> [usize; 10] {
        [
            g.batch,
            g.in_channels,
            g.in_h,
            g.in_w,
            g.out_channels,
            g.kernel_h,
            g.kernel_w,
            g.stride,
            g.padding,
            g.groups,
        ]
    }

    fn int(v: usize, what: &str) -> Result<i32> {
        match i32::try_from(v) {
            Ok(v) => Ok(v),
            Err(_) => bail!("conv2d (cudnn): {what} {v} does not fit in a C int"),
        }
    }

    /// Runs `pass` on operands `(a, b)` (see [`Pass`]), checking their dims against `g`.
    pub fn run(
        pass: Pass,
        g: &ConvGeometry,
        (a, a_layout): (&CudaStorage, &Layout),
        (b, b_layout): (&CudaStorage, &Layout),
    ) -> Result<(CudaStorage, Shape)> {
        let (input, weight, output) = (
            Shape::from(g.input_dims()),
            Shape::from(g.weight_dims()),
            Shape::from(g.output_dims()),
        );
        let (want_a, want_b, out) = match pass {
            Pass::Forward => (&input, &weight, &output),
            Pass::BackwardData => (&output, &weight, &input),
            Pass::BackwardFilter => (&input, &output, &weight),
        };
        if a_layout.dims() != want_a.dims() || b_layout.dims() != want_b.dims() {
            bail!(
                "conv2d {pass:?} (cudnn): expected operands {want_a:?} and {want_b:?}, got {:?} \
                 and {:?}",
                a_layout.dims(),
                b_layout.dims()
            )
        }
        if a.dtype() != b.dtype() {
            bail!(
                "conv2d {pass:?} (cudnn): operand dtypes differ: {:?} and {:?}",
                a.dtype(),
                b.dtype()
            )
        }
        let a = Dense::new(a, a_layout)?;
        let b = Dense::new(b, b_layout)?;
        let like = match &a {
            Dense::Borrowed(s, ..) => *s,
            Dense::Owned(s, _) => s,
        };
        let f32_math = if allow_tf32() {
            cudnnMathType_t::CUDNN_DEFAULT_MATH
        } else {
            cudnnMathType_t::CUDNN_FMA_MATH
        };
        let tensor_math = cudnnMathType_t::CUDNN_TENSOR_OP_MATH;
        let storage = match like.dtype() {
            DType::F32 => typed::<f32, f32>(pass, g, like, &a, &b, f32_math)?,
            DType::F64 => {
                typed::<f64, f64>(pass, g, like, &a, &b, cudnnMathType_t::CUDNN_FMA_MATH)?
            }
            DType::BF16 => typed::<half::bf16, f32>(pass, g, like, &a, &b, tensor_math)?,
            DType::F16 => typed::<half::f16, f32>(pass, g, like, &a, &b, tensor_math)?,
            dt => bail!("conv2d {pass:?} (cudnn): unsupported dtype {dt:?}"),
        };
        Ok((storage, out.clone()))
    }

    /// Measures every algorithm of `all` with `launch` (one warm-up launch, then one timed
    /// launch between two stream synchronisations) and returns the working ones, fastest
    /// first, or an error listing why each failed.
    fn measure<A: Copy + std::fmt::Debug>(
        all: &[A],
        dev: &CudaDevice,
        what: &dyn Fn() -> String,
        launch: &mut dyn FnMut(A) -> Result<()>,
    ) -> Result<Order<A>> {
        let stream = dev.cuda_stream();
        let mut timed = Vec::with_capacity(all.len());
        let mut failures = Vec::new();
        for &algo in all {
            if let Err(e) = launch(algo) {
                failures.push(format!("{algo:?}: {e}"));
                continue;
            }
            // A failed synchronisation is a sticky error of the context: no algorithm can run.
            stream.synchronize().w()?;
            let t = Instant::now();
            if let Err(e) = launch(algo) {
                failures.push(format!("{algo:?}: {e}"));
                continue;
            }
            stream.synchronize().w()?;
            timed.push((t.elapsed(), algo));
        }
        if timed.is_empty() {
            bail!(
                "{}: no cuDNN algorithm runs ({})",
                what(),
                failures.join("; ")
            )
        }
        timed.sort_by_key(|&(t, _)| t);
        Ok(timed.into_iter().map(|(_, a)| a).collect())
    }

    /// Runs `launch` with the algorithms of `key` in their measured order (measuring them on
    /// first use, see [`measure`]) until one succeeds; an error lists every failure.
    fn run_measured<A: Copy + std::fmt::Debug + 'static>(
        cache: &'static std::thread::LocalKey<RefCell<HashMap<Key, Order<A>>>>,
        key: Key,
        all: &[A],
        dev: &CudaDevice,
        what: &dyn Fn() -> String,
        launch: &mut dyn FnMut(A) -> Result<()>,
    ) -> Result<()> {
        let order = match cache.with(|c| c.borrow().get(&key).cloned()) {
            Some(order) => order,
            None => {
                let order = measure(all, dev, what, launch)?;
                cache.with(|c| c.borrow_mut().insert(key, order.clone()));
                order
            }
        };
        let mut failures = Vec::new();
        for algo in order {
            match launch(algo) {
                Ok(()) => return Ok(()),
                Err(e) => failures.push(format!("{algo:?}: {e}")),
            }
        }
        bail!(
            "{}: every measured cuDNN algorithm failed ({})",
            what(),
            failures.join("; ")
        )
    }

    /// Uninitialised scratch memory for cuDNN (`None` when it needs none); an error above
    /// [`WORKSPACE_LIMIT`].
    fn workspace(dev: &CudaDevice, bytes: usize) -> Result<Option<CudaSlice<u8>>> {
        if bytes == 0 {
            return Ok(None);
        }
        if bytes > WORKSPACE_LIMIT {
            bail!("workspace of {bytes} bytes over the limit of {WORKSPACE_LIMIT}")
        }
        // SAFETY: cuDNN workspaces are scratch space that cuDNN writes before it reads.
        Ok(Some(unsafe { dev.alloc::<u8>(bytes) }?))
    }

    /// The typed body of [`run`]: `T` is the data type, `C` the compute type.
    fn typed<T, C>(
        pass: Pass,
        g: &ConvGeometry,
        like: &CudaStorage,
        a: &Dense<'_>,
        b: &Dense<'_>,
        math: cudnnMathType_t,
    ) -> Result<CudaStorage>
    where
        T: CudaDType + CudnnDataType + DeviceRepr + ValidAsZeroBits + WithDType,
        C: CudnnDataType,
    {
        let dev = like.device();
        let cudnn = handle(dev)?;
        let nchw = cudnnTensorFormat_t::CUDNN_TENSOR_NCHW;
        let (p, s) = (int(g.padding, "padding")?, int(g.stride, "stride")?);
        let mut conv = cudnn.create_conv2d::<C>(
            [p, p],
            [s, s],
            [1, 1],
            cudnnConvolutionMode_t::CUDNN_CROSS_CORRELATION,
        )?;
        conv.set_group_count(int(g.groups, "groups")?)?;
        conv.set_math_type(math)?;
        let (n, c_in, c_out) = (
            int(g.batch, "batch")?,
            int(g.in_channels, "input channels")?,
            int(g.out_channels, "output channels")?,
        );
        let x_desc = cudnn.create_4d_tensor::<T>(
            nchw,
            [n, c_in, int(g.in_h, "height")?, int(g.in_w, "width")?],
        )?;
        let w_desc = cudnn.create_4d_filter::<T>(
            nchw,
            [
                c_out,
                int(g.group_in_channels(), "input channels per group")?,
                int(g.kernel_h, "kernel height")?,
                int(g.kernel_w, "kernel width")?,
            ],
        )?;
        let y_desc = cudnn.create_4d_tensor::<T>(
            nchw,
            [
                n,
                c_out,
                int(g.out_h, "output height")?,
                int(g.out_w, "output width")?,
            ],
        )?;
        let key: Key = (dev.id(), pass, sizes(g), T::DTYPE, math as u32);
        let what = || {
            format!(
                "conv2d {pass:?} (cudnn, {:?}, {math:?}): input {:?}, weight {:?}, stride {}, \
             padding {}, groups {}",
                T::DTYPE,
                g.input_dims(),
                g.weight_dims(),
                g.stride,
                g.padding,
                g.groups
            )
        };
        let (one, zero) = (T::from_f64(1.0), T::from_f64(0.0));
        let (av, bv) = (a.view::<T>()?, b.view::<T>()?);
        let out = match pass {
            Pass::Forward => {
                let op = ConvForward {
                    conv: &conv,
                    x: &x_desc,
                    w: &w_desc,
                    y: &y_desc,
                };
                let mut y = dev.alloc_zeros::<T>(g.batch * g.out_channels * g.out_pixels())?;
                run_measured(&FWD, key, &FWD_ALGOS, dev, &what, &mut |algo| {
                    let mut ws = workspace(dev, op.get_workspace_size(algo)?)?;
                    // SAFETY: x, w and y are packed buffers of exactly the descriptors' sizes
                    // and dtype `T` (checked dims in `run`, `Dense` packs strided operands).
                    unsafe { op.launch(algo, ws.as_mut(), (one, zero), &av, &bv, &mut y) }?;
                    Ok(())
                })?;
                y
            }
            Pass::BackwardData => {
                let op = ConvBackwardData {
                    conv: &conv,
                    dx: &x_desc,
                    w: &w_desc,
                    dy: &y_desc,
                };
                let mut dx = dev.alloc_zeros::<T>(g.batch * g.in_channels * g.in_pixels())?;
                run_measured(&BWD_DATA, key, &BWD_DATA_ALGOS, dev, &what, &mut |algo| {
                    let mut ws = workspace(dev, op.get_workspace_size(algo)?)?;
                    // SAFETY: as above; operands are (dy, w), the output is dx.
                    unsafe { op.launch(algo, ws.as_mut(), (one, zero), &mut dx, &bv, &av) }?;
                    Ok(())
                })?;
                dx
            }
            Pass::BackwardFilter => {
                let op = ConvBackwardFilter {
                    conv: &conv,
                    x: &x_desc,
                    dw: &w_desc,
                    dy: &y_desc,
                };
                let mut dw = dev.alloc_zeros::<T>(g.out_channels * g.patch_len())?;
                run_measured(
                    &BWD_FILTER,
                    key,
                    &BWD_FILTER_ALGOS,
                    dev,
                    &what,
                    &mut |algo| {
                        let mut ws = workspace(dev, op.get_workspace_size(algo)?)?;
                        // SAFETY: as above; operands are (x, dy), the output is dw.
                        unsafe { op.launch(algo, ws.as_mut(), (one, zero), &av, &mut dw, &bv) }?;
                        Ok(())
                    },
                )?;
                dw
            }
        };
        Ok(wrap(out, like))
    }
}
