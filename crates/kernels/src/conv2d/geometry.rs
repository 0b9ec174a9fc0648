//! Shapes of one grouped 2-D convolution, checked once and shared by the three passes.

use candle_core::{bail, Result};

/// Sizes of an NCHW convolution with square stride and padding and dilation 1.
///
/// The passes work on "units": one channel group of one batch image. Unit `u` is image
/// `u / groups`, group `u % groups`; in NCHW its input, output and gradient slices are contiguous.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConvGeometry {
    /// Batch size N.
    pub batch: usize,
    /// Input channels C_in (all groups).
    pub in_channels: usize,
    /// Input height.
    pub in_h: usize,
    /// Input width.
    pub in_w: usize,
    /// Output channels C_out (all groups).
    pub out_channels: usize,
    /// Kernel height.
    pub kernel_h: usize,
    /// Kernel width.
    pub kernel_w: usize,
    /// Step between output positions, both axes.
    pub stride: usize,
    /// Zero padding on each side, both axes.
    pub padding: usize,
    /// Channel groups.
    pub groups: usize,
    /// Output height.
    pub out_h: usize,
    /// Output width.
    pub out_w: usize,
}

impl ConvGeometry {
    /// Checks an input shape `(N, C_in, H, W)` and a weight shape `(C_out, C_in/groups, KH, KW)`
    /// against `stride`, `padding` and `groups`, and derives the output size as PyTorch does:
    /// `(H + 2*padding - KH) / stride + 1`.
    pub fn new(
        x_dims: &[usize],
        w_dims: &[usize],
        stride: usize,
        padding: usize,
        groups: usize,
    ) -> Result<Self> {
        let &[batch, in_channels, in_h, in_w] = x_dims else {
            bail!("conv2d: input must be (N, C, H, W), got shape {x_dims:?}")
        };
        let &[out_channels, w_in, kernel_h, kernel_w] = w_dims else {
            bail!("conv2d: weight must be (C_out, C_in/groups, KH, KW), got shape {w_dims:?}")
        };
        if stride == 0 {
            bail!("conv2d: stride must be at least 1")
        }
        if groups == 0 {
            bail!("conv2d: groups must be at least 1")
        }
        if in_channels % groups != 0 || out_channels % groups != 0 {
            bail!(
                "conv2d: groups {groups} must divide input channels {in_channels} and output \
                 channels {out_channels}"
            )
        }
        if w_in * groups != in_channels {
            bail!(
                "conv2d: weight {w_dims:?} has {w_in} input channels per group, input {x_dims:?} \
                 with groups {groups} needs {}",
                in_channels / groups
            )
        }
        if batch == 0 || in_channels == 0 || out_channels == 0 || kernel_h == 0 || kernel_w == 0 {
            bail!("conv2d: empty dimension in input {x_dims:?} or weight {w_dims:?}")
        }
        let out_len = |input: usize, kernel: usize, axis: &str| -> Result<usize> {
            let padded = input + 2 * padding;
            if padded < kernel {
                bail!(
                    "conv2d: kernel {axis} {kernel} exceeds padded input {axis} {padded} \
                     (input {x_dims:?}, padding {padding})"
                )
            }
            Ok((padded - kernel) / stride + 1)
        };
        let out_h = out_len(in_h, kernel_h, "height")?;
        let out_w = out_len(in_w, kernel_w, "width")?;
        Ok(Self {
            batch,
            in_channels,
            in_h,
            in_w,
            out_channels,
            kernel_h,
            kernel_w,
            stride,
            padding,
            groups,
            out_h,
            out_w,
        })
    }

    /// Input channels in one group.
    pub fn group_in_channels(&self) -> usize {
        self.in_channels / self.groups
    }

    /// Output channels in one group.
    pub fn group_out_channels(&self) -> usize {
        self.out_channels / self.groups
    }

    /// Rows of a group's im2col matrix: `C_in/groups * KH * KW`.
    pub fn patch_len(&self) -> usize {
        self.group_in_channels() * self.kernel_h * self.kernel_w
    }

    /// Output pixels of one image: `OH * OW`.
    pub fn out_pixels(&self) -> usize {
        self.out_h * self.out_w
    }

    /// Input pixels of one image: `H * W`.
    pub fn in_pixels(&self) -> usize {
        self.in_h * self.in_w
    }

    /// True for 1x1, stride 1, no padding: the input unit already is the im2col matrix.
    pub fn is_pointwise(&self) -> bool {
        self.kernel_h == 1 && self.kernel_w == 1 && self.stride == 1 && self.padding == 0
    }

    /// Number of (image, group) units.
    pub fn units(&self) -> usize {
        self.batch * self.groups
    }

    /// Elements of one input unit: `C_in/groups * H * W`.
    pub fn in_unit_len(&self) -> usize {
        self.group_in_channels() * self.in_pixels()
    }

    /// Elements of one output unit: `C_out/groups * OH * OW`.
    pub fn out_unit_len(&self) -> usize {
        self.group_out_channels() * self.out_pixels()
    }

    /// Elements of one group's weights: `C_out/groups * patch_len`.
    pub fn weight_group_len(&self) -> usize {
        self.group_out_channels() * self.patch_len()
    }

    /// Input shape `(N, C_in, H, W)`.
    pub fn input_dims(&self) -> (usize, usize, usize, usize) {
        (self.batch, self.in_channels, self.in_h, self.in_w)
    }

    /// Weight shape `(C_out, C_in/groups, KH, KW)`.
    pub fn weight_dims(&self) -> (usize, usize, usize, usize) {
        (
            self.out_channels,
            self.group_in_channels(),
            self.kernel_h,
            self.kernel_w,
        )
    }

    /// Output shape `(N, C_out, OH, OW)`.
    pub fn output_dims(&self) -> (usize, usize, usize, usize) {
        (self.batch, self.out_channels, self.out_h, self.out_w)
    }

    /// Unit `unit`'s slice of an NCHW input buffer.
    pub fn input_unit<'a>(&self, x: &'a [f32], unit: usize) -> &'a [f32] {
        let len = self.in_unit_len();
        &x[unit * len..(unit + 1) * len]
    }

    /// Unit `unit`'s slice of an NCHW output (or output-gradient) buffer.
    pub fn output_unit<'a>(&self, y: &'a [f32], unit: usize) -> &'a [f32] {
        let len = self.out_unit_len();
        &y[unit * len..(unit + 1) * len]
    }

    /// Group `group`'s `(C_out/groups, patch_len)` block of the weight buffer.
    pub fn weight_group<'a>(&self, w: &'a [f32], group: usize) -> &'a [f32] {
        let len = self.weight_group_len();
        &w[group * len..(group + 1) * len]
    }

    /// Group of unit `unit`.
    pub fn group_of(&self, unit: usize) -> usize {
        unit % self.groups
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_size_follows_pytorch_floor_rule() -> Result<()> {
        let g = ConvGeometry::new(&[2, 8, 11, 10], &[6, 4, 3, 3], 2, 1, 2)?;
        assert_eq!((g.out_h, g.out_w), (6, 5));
        assert_eq!(g.patch_len(), 36);
        assert_eq!(g.units(), 4);
        let stem = ConvGeometry::new(&[1, 3, 112, 112], &[64, 3, 7, 7], 2, 3, 1)?;
        assert_eq!((stem.out_h, stem.out_w), (56, 56));
        Ok(())
    }

    #[test]
    fn rejects_inconsistent_shapes() {
        assert!(ConvGeometry::new(&[1, 8, 5, 5], &[4, 8, 3, 3], 1, 0, 2).is_err());
        assert!(ConvGeometry::new(&[1, 6, 5, 5], &[4, 2, 3, 3], 1, 0, 4).is_err());
        assert!(ConvGeometry::new(&[1, 4, 2, 2], &[4, 4, 5, 5], 1, 1, 1).is_err());
        assert!(ConvGeometry::new(&[1, 4, 5, 5], &[4, 4, 3, 3], 0, 0, 1).is_err());
        assert!(ConvGeometry::new(&[4, 5, 5], &[4, 4, 3, 3], 1, 0, 1).is_err());
    }

    #[test]
    fn pointwise_only_for_unit_stride_unpadded_1x1() -> Result<()> {
        assert!(ConvGeometry::new(&[1, 4, 5, 5], &[4, 4, 1, 1], 1, 0, 1)?.is_pointwise());
        assert!(!ConvGeometry::new(&[1, 4, 5, 5], &[4, 4, 1, 1], 2, 0, 1)?.is_pointwise());
        assert!(!ConvGeometry::new(&[1, 4, 5, 5], &[4, 4, 3, 3], 1, 1, 1)?.is_pointwise());
        Ok(())
    }
}
