//! Whole ResNet bottlenecks in training mode as one candle op: a block's three convolutions
//! with their BatchNorms and ReLUs, the downsample shortcut's convolution and BatchNorm, the
//! squeeze-and-excitation or CBAM gate when the block has one, and the residual join
//! (`bottleneck_block.rs`); and any number of blocks one after the other.
//!
//! As separate ops (`conv_bn_train` and `conv_bn_add_relu_train`) the block's two inner
//! activations, the shortcut and the block input are nodes of candle's graph, and candle's
//! backward gives each node's gradient a zero-filled buffer and then adds every op's gradient
//! into it: per block, four or five full-size allocations, memsets and adds. Inside one op the
//! inner gradients are plain buffers handed from one stage's backward to the next, the input
//! gradient is the sum of its two paths, written once, and in a chain of blocks it is the
//! output gradient of the block before. The parameters' gradients go to a [`ParamGrads`]
//! store, written once each (`param_grads.rs`).
//!
//! Each stage is the fused convolution + BatchNorm of `conv_bn.rs` (`stage_forward`,
//! `stage_backward`), and the gate is `squeeze_excite.rs` or `cbam.rs` with the joins of
//! `gate.rs`: the values and every gradient equal those of the separate ops (up to the sign of
//! zero gradients); the tests check that.

use crate::batch_norm::lock;
use crate::bottleneck_block::{cpu_values, Block, BlockGate, BottleneckStages, ConvBnStage};
use crate::conv2d::storage::dense_f32;
use crate::conv2d::Scratch;
use crate::fused_operands::cpu_f32;
use crate::param_grads::ParamGrads;
use crate::residual::relu_masked;
use crate::BatchStats;
use candle_core::{bail, CpuStorage, CustomOp2, DType, Layout, Result, Shape, Tensor, Var};
use std::sync::{Arc, Mutex};

/// True when [`bottleneck_train`] runs `block` on `x` (the input, every stage's and the gate's
/// parameters): all f32 on the CPU.
pub fn bottleneck_train_applies(x: &Tensor, block: &BottleneckStages<'_>) -> bool {
    let mut all = vec![x];
    all.extend(block.tensors());
    cpu_f32(&all)
}

/// A training-mode bottleneck `relu(bn3(conv3(h2)) + shortcut)` with `h2 = relu(bn2(conv2(h1)))`,
/// `h1 = relu(bn1(conv1(x)))` and `shortcut = bn_d(conv_d(x))` (or `x` without `downsample`),
/// as one op differentiable in `x` and every stage's three parameters. With a `gate`,
/// `relu(z * se(z) + shortcut)` (squeeze-excite) or `relu(u * spatial(u) + shortcut)` with
/// `u = z * channel(z)` (CBAM), where `z = bn3(conv3(h2))`, differentiable in the gate's
/// parameters too. Returns the output and the batch statistics of the BatchNorms in the order
/// `main`, then `downsample`, then CBAM's spatial gate, for the running averages the caller
/// owns.
///
/// The values and gradients equal those of `conv_bn_train` twice, `conv_bn_train` on the
/// shortcut and `conv_bn_add_relu_train` (with a gate: `conv_bn_train` for the third stage, the
/// gate composed of `spatial_mean` or `spatial_mean_max`, candle matmuls and `sigmoid`, for
/// CBAM `channel_gate`, `channel_max_mean` and the spatial convolution and BatchNorm, then
/// `channel_gate_add_relu` or `spatial_gate_add_relu`), up to the sign of zero gradients. f32 on
/// the CPU only ([`bottleneck_train_applies`]).
///
/// The parameters' gradients are not in candle's graph: the backward hands them to
/// `param_grads`, so differentiate with [`ParamGrads::backward`], which puts them into the
/// store under the parameters' ids. Each parameter must be the variable itself (or a
/// constant), not a tensor computed from one.
pub fn bottleneck_train(
    x: &Tensor,
    main: [ConvBnStage<'_>; 3],
    downsample: Option<ConvBnStage<'_>>,
    gate: Option<BlockGate<'_>>,
    param_grads: &ParamGrads,
) -> Result<(Tensor, Vec<BatchStats>)> {
    let block = BottleneckStages {
        main,
        downsample,
        gate,
    };
    let (y, mut stats) = bottlenecks_train(x, &[block], param_grads)?;
    match stats.pop() {
        Some(stats) => Ok((y, stats)),
        None => bail!("bottleneck_train: no statistics for the block"),
    }
}

/// Blocks one after the other, each as [`bottleneck_train`] computes it, as one op: the values
/// and gradients of the chain of single-block ops, bit for bit, without the blocks' outputs
/// and their gradients in candle's graph (each of those gradients would be zero-filled and
/// added into there). Returns the last block's output and each block's batch statistics in
/// [`bottleneck_train`]'s order. Every block must run ([`bottleneck_train_applies`]).
pub fn bottlenecks_train(
    x: &Tensor,
    blocks: &[BottleneckStages<'_>],
    param_grads: &ParamGrads,
) -> Result<(Tensor, Vec<Vec<BatchStats>>)> {
    if blocks.is_empty() {
        bail!("bottleneck_train: no blocks")
    }
    let mut input = x.dims().to_vec();
    let mut built = Vec::with_capacity(blocks.len());
    for spec in blocks {
        if !bottleneck_train_applies(x, spec) {
            bail!("bottleneck_train: f32 tensors on the CPU only")
        }
        let block = Block::new(&input, spec)?;
        let (n, c, h, w) = block.geometries[2].output_dims();
        input = vec![n, c, h, w];
        built.push(block);
    }
    // Besides `x`, the op's graph input is a one-value variable of its own, so that candle's
    // backward reaches the op whether or not `x` is differentiated.
    let anchor = Var::zeros(1, DType::F32, x.device())?;
    let blocks = Arc::new(built);
    let op = BottlenecksTrain {
        blocks: blocks.clone(),
        inner: Mutex::new(Vec::new()),
        param_grads: param_grads.clone(),
    };
    let y = x.apply_op2_arc(
        anchor.as_tensor(),
        Arc::new(Box::new(op) as Box<dyn CustomOp2 + Send + Sync>),
    )?;
    let stats = blocks
        .iter()
        .map(Block::stats)
        .collect::<Result<Vec<_>>>()?;
    Ok((y, stats))
}

/// The op: (`x`, a one-value anchor) -> the last block's output. `inner` keeps the other
/// blocks' outputs (the next block's input, and where its ReLU passed); the parameters'
/// gradients go to `param_grads`.
#[derive(Debug)]
struct BottlenecksTrain {
    blocks: Arc<Vec<Block>>,
    inner: Mutex<Vec<Vec<f32>>>,
    param_grads: ParamGrads,
}

impl CustomOp2 for BottlenecksTrain {
    fn name(&self) -> &'static str {
        "mtanet-bottleneck-train"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        _anchor: &CpuStorage,
        _: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let blocks = &self.blocks[..];
        if xl.dims() != Shape::from(blocks[0].geometries[0].input_dims()).dims() {
            bail!("bottleneck_train: input changed shape since the op was built")
        }
        let x = dense_f32(xs, xl, "input")?;
        let mut inner: Vec<Vec<f32>> = Vec::with_capacity(blocks.len() - 1);
        let mut last = None;
        for (k, block) in blocks.iter().enumerate() {
            let input = match k {
                0 => &x[..],
                _ => &inner[k - 1][..],
            };
            let (y, saved) =
                block.with_params(|(params, gate)| block.forward(input, &params, gate))?;
            *lock(&block.saved)? = Some(saved);
            if k + 1 < blocks.len() {
                inner.push(y);
            } else {
                last = Some(y);
            }
        }
        *lock(&self.inner)? = inner;
        let Some(y) = last else {
            bail!("bottleneck_train: no blocks")
        };
        let out = blocks[blocks.len() - 1].geometries[2].output_dims();
        Ok((CpuStorage::F32(y), Shape::from(out)))
    }

    /// Block after block from the last: its ReLU after the join passed exactly where its output
    /// is positive, so the masked output gradient is the shortcut's gradient and, without a
    /// gate, the third BatchNorm's output gradient (with one, that takes the gate's two paths);
    /// the first two stages recompute their own ReLU masks. The block's input gradient, masked
    /// where its input (the block before's output) is not positive, is the masked output
    /// gradient of the block before it. The parameters' gradients go to the op's
    /// [`ParamGrads`], the anchor gets none.
    fn bwd(
        &self,
        x: &Tensor,
        _anchor: &Tensor,
        y: &Tensor,
        grad_y: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (xs, xl) = x.storage_and_layout();
        let (ys, yl) = y.storage_and_layout();
        let (gs, gl) = grad_y.storage_and_layout();
        let xv = cpu_values(&xs, xl, "input")?;
        let inner = lock(&self.inner)?;
        let blocks = &self.blocks[..];
        if inner.len() + 1 != blocks.len() {
            bail!("bottleneck_train: backward before forward")
        }
        let device = x.device();
        let (gy, yv) = (
            cpu_values(&gs, gl, "output gradient")?,
            cpu_values(&ys, yl, "output")?,
        );
        // The gradient of the block's output: the op's for the last block, then each block's
        // input gradient for the block before it.
        let mut held: Option<Scratch> = None;
        let mut pairs = Vec::new();
        for (k, block) in blocks.iter().enumerate().rev() {
            // The last block masks the op's output gradient here; every other block's
            // gradient comes masked from the backward of the block after it, which joins its
            // input gradient's two paths where its input (this block's output) is positive.
            let last_masked;
            let masked: &[f32] = match &held {
                Some(masked) => masked,
                None => {
                    last_masked = relu_masked(&yv, &gy);
                    &last_masked
                }
            };
            let (input, want_dx) = match k {
                0 => (&xv[..], x.track_op()),
                _ => (&inner[k - 1][..], true),
            };
            let (dx, dparams) = block.with_params(|(params, gate)| {
                block.backward((input, want_dx), &params, gate, masked, k > 0)
            })?;
            for (p, d) in block.params.iter().zip(dparams) {
                pairs.push((p.clone(), Tensor::from_vec(d, p.shape(), device)?));
            }
            if k > 0 && dx.is_none() {
                bail!("bottleneck_train: block {k} returned no input gradient")
            }
            held = dx;
        }
        self.param_grads.push(pairs)?;
        let dx = match held {
            Some(dx) if x.track_op() => Some(Tensor::from_vec(dx.into_vec(), x.shape(), device)?),
            _ => None,
        };
        Ok((dx, None))
    }
}
