//! candle custom operations with a real backward pass, for layers candle lacks or cannot train.
//!
//! Today this holds the ResNet stem max-pool: a 2-D max-pool with padding and PyTorch's
//! ceil mode whose gradient goes to the first maximum of each window, as PyTorch's does.
//! candle's own `max_pool2d` has no padding and no backward unless `kernel == stride`
//! (candle issues #1593, #1851).
//!
//! And a trainable 2-D convolution whose forward, input gradient and weight gradient are all
//! GEMMs with the groups batched inside the op (candle loops over groups and computes the input
//! gradient with a direct, non-GEMM transposed convolution).
//!
//! And the BatchNorm (training and eval, ReLU optionally fused) and the residual `relu(a + b)`
//! as fused ops, replacing candle-nn's seven-pass composed BatchNorm and its backward; and, for
//! training on the CPU, a convolution and its BatchNorm (+ ReLU) as one op (`conv_bn_train`),
//! so that the convolution output's gradient never passes through candle's graph; and, for
//! evaluation, a convolution with its BatchNorm (+ ReLU) as the convolution's epilogue
//! (`conv_affine_eval`); and a whole bottleneck block, without attention or with a
//! squeeze-excite or CBAM gate, as one training op (`bottleneck_train`), and every block of a
//! backbone chained in one (`bottlenecks_train`), so that none of their activations or
//! gradients pass through candle's graph, their parameters' gradients included ([`ParamGrads`]);
//! the stem's convolution, BatchNorm, ReLU and max-pool as one training op
//! (`conv_bn_relu_max_pool_train`); and CBAM's gates with the residual join as one eval op
//! (`cbam_add_relu_eval`).
#![warn(missing_docs)]

use candle_core::{DType, Tensor};

mod affine_rows;
mod batch_norm;
mod batch_norm_passes;
mod bottleneck_block;
mod bottleneck_eval;
mod bottleneck_train;
mod cbam;
mod cbam_eval;
pub mod conv2d;
mod conv_affine;
mod conv_bn;
mod cpu_features;
#[cfg(feature = "cuda")]
pub mod cuda;
mod eval_packs;
mod fused_operands;
mod gate;
mod gate_mlp;
mod lane_sums;
mod max_pool2d;
mod max_pool2d_rows;
mod optimizer_step;
mod packed_grads;
mod param_grads;
mod pool_geometry;
pub mod profile;
mod residual;
mod row_tasks;
mod spatial_pool;
mod squeeze_excite;
mod stem_train;

pub use batch_norm::{batch_norm_train, channel_affine, BatchStats};
pub use bottleneck_block::{BlockGate, BottleneckStages, ConvBnStage};
pub use bottleneck_eval::{
    bottlenecks_infer, bottlenecks_infer_applies, BottleneckEvalStages, ConvAffineStage, EvalGate,
};
pub use bottleneck_train::{bottleneck_train, bottleneck_train_applies, bottlenecks_train};
pub use cbam_eval::{cbam_add_relu_eval, cbam_eval_applies, CbamEval};
pub use conv2d::{conv2d, Conv2d, Conv2dInputGrad, Conv2dWeightGrad, ConvGeometry};
pub use conv_affine::{conv_affine_add_relu_eval, conv_affine_eval};
pub use conv_bn::{conv_bn_add_relu_train, conv_bn_applies, conv_bn_train, ConvParams};
pub use eval_packs::EvalPacks;
pub use gate::{
    channel_gate, channel_gate_add_relu, channel_max_mean, spatial_gate, spatial_gate_add_relu,
};
pub use gate_mlp::GateMlp;
pub use max_pool2d::{max_pool2d, MaxPool2d, MaxPoolScatter};
pub use optimizer_step::{adam_step, fused_update_applies, sgd_momentum_step};
pub use param_grads::ParamGrads;
pub use pool_geometry::{PoolAxis, PoolGeometry};
pub use residual::add_relu;
pub use spatial_pool::{spatial_mean, spatial_mean_max};
pub use stem_train::{conv_bn_relu_max_pool_train, MaxPoolParams};

/// Whether CUDA f32 tensors run our fused BatchNorm, gate, channel-pool, residual and optimizer
/// kernels (NVRTC, `cuda/`): true in a `cuda` build unless the environment sets
/// `MTANET_CUDA_FUSED=0`, which sends them to candle's composed CUDA ops instead (the escape
/// hatch should a GPU run show one of these kernels wrong; convolutions and the max-pool are
/// not affected). Always false without the `cuda` feature.
pub fn cuda_fused_ops() -> bool {
    static ENABLED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    cfg!(feature = "cuda")
        && *ENABLED.get_or_init(|| std::env::var("MTANET_CUDA_FUSED").map_or(true, |v| v != "0"))
}

/// True when the fused ops (BatchNorm, channel affine, gates, channel pooling, residual,
/// optimizer steps) run these tensors: all f32, and all on the CPU or, where
/// [`cuda_fused_ops`] allows, all on one CUDA device. Otherwise callers use candle's composed
/// ops.
pub fn fused_ops_apply(ts: &[&Tensor]) -> bool {
    let Some(first) = ts.first() else {
        return false;
    };
    let on_cpu = ts.iter().all(|t| t.device().is_cpu());
    let on_cuda = cuda_fused_ops()
        && ts
            .iter()
            .all(|t| t.device().is_cuda() && t.device().same_device(first.device()));
    (on_cpu || on_cuda) && ts.iter().all(|t| t.dtype() == DType::F32)
}
