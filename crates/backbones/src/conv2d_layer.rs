//! The bias-free `Conv2d` layer of the ResNets (run by `mtanet_kernels::conv2d`) and its
//! constructor with the reference initialisation.

use crate::init_rules::CONV_WEIGHT;
use candle_core::{Result, Tensor};
use candle_nn::{Module, VarBuilder};

/// Geometry of a square conv.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ConvSpec {
    pub c_in: usize,
    pub c_out: usize,
    pub kernel: usize,
    pub stride: usize,
    pub padding: usize,
    pub groups: usize,
}

impl ConvSpec {
    /// A 1x1 conv with `stride`.
    pub(crate) fn pointwise(c_in: usize, c_out: usize, stride: usize) -> Self {
        Self {
            c_in,
            c_out,
            kernel: 1,
            stride,
            padding: 0,
            groups: 1,
        }
    }

    fn weight_shape(&self) -> (usize, usize, usize, usize) {
        (
            self.c_out,
            self.c_in / self.groups,
            self.kernel,
            self.kernel,
        )
    }
}

/// A bias-free convolution run by `mtanet_kernels::conv2d`: forward, input gradient and
/// weight gradient as GEMMs with the groups inside one op (candle's own conv loops over
/// groups and has no GEMM input gradient; see the kernels crate).
#[derive(Clone, Debug)]
pub(crate) struct Conv2d {
    weight: Tensor,
    spec: ConvSpec,
}

impl Conv2d {
    /// The weight `(C_out, C_in/groups, K, K)`.
    pub(crate) fn weight(&self) -> &Tensor {
        &self.weight
    }

    /// Stride, padding and groups, as the fused kernels take them.
    pub(crate) fn params(&self) -> mtanet_kernels::ConvParams {
        mtanet_kernels::ConvParams {
            stride: self.spec.stride,
            padding: self.spec.padding,
            groups: self.spec.groups,
        }
    }
}

impl Module for Conv2d {
    /// Runs in `x`'s dtype: the weight is cast at use (f32 master weight under bf16, see
    /// `precision.rs`; a no-op when the dtypes agree).
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        mtanet_kernels::conv2d(
            x,
            &self.weight.to_dtype(x.dtype())?,
            self.spec.stride,
            self.spec.padding,
            self.spec.groups,
        )
    }
}

/// `weight` only, Kaiming normal fan-out (ResNet convs have no bias).
pub(crate) fn conv_no_bias(spec: ConvSpec, vb: VarBuilder) -> Result<Conv2d> {
    let weight = vb.get_with_hints(spec.weight_shape(), "weight", CONV_WEIGHT)?;
    Ok(Conv2d { weight, spec })
}
