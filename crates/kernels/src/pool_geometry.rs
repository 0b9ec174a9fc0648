//! Output sizes and window bounds of a 2-D pooling layer, with PyTorch's rules.

use candle_core::{bail, Result};

/// Window placement along one spatial axis (rows or columns) of a pooling layer.
///
/// Mirrors `pooling_output_shape` in PyTorch's `aten/src/ATen/native/Pool.h`: in ceil mode the
/// output may gain one window, but the last window must start inside the input or the left
/// padding (`(out - 1) * stride < in + padding`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PoolAxis {
    /// Input length.
    pub input: usize,
    /// Output length.
    pub output: usize,
    /// Window size.
    pub kernel: usize,
    /// Step between windows.
    pub stride: usize,
    /// Implicit padding on both sides (padded cells never win the max).
    pub padding: usize,
}

impl PoolAxis {
    /// Computes the output length for `input` cells, validating the parameters as PyTorch does.
    pub fn new(
        input: usize,
        kernel: usize,
        stride: usize,
        padding: usize,
        ceil_mode: bool,
    ) -> Result<Self> {
        if kernel == 0 || stride == 0 {
            bail!("max_pool2d: kernel ({kernel}) and stride ({stride}) must be positive")
        }
        if padding > kernel / 2 {
            bail!("max_pool2d: padding ({padding}) must be at most half the kernel ({kernel})")
        }
        let span = input + 2 * padding;
        if span < kernel {
            bail!("max_pool2d: input length {input} with padding {padding} is smaller than the kernel {kernel}")
        }
        let extra = if ceil_mode { stride - 1 } else { 0 };
        let mut output = (span - kernel + extra) / stride + 1;
        if ceil_mode && (output - 1) * stride >= input + padding {
            output -= 1;
        }
        Ok(Self {
            input,
            output,
            kernel,
            stride,
            padding,
        })
    }

    /// The valid input cells `[start, end)` of window `o`; cells in padding or past the edge
    /// (ceil mode) are left out.
    pub fn window(&self, o: usize) -> (usize, usize) {
        let start = (o * self.stride) as isize - self.padding as isize;
        let end = (start + self.kernel as isize).min(self.input as isize);
        (start.max(0) as usize, end.max(0) as usize)
    }
}

/// Geometry of a 2-D pooling layer over an NCHW tensor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PoolGeometry {
    /// Batch size times channels: the number of independent planes.
    pub planes: usize,
    /// Row placement.
    pub rows: PoolAxis,
    /// Column placement.
    pub cols: PoolAxis,
}

impl PoolGeometry {
    /// Geometry for an input of dims `(n, c, h, w)` and a square window.
    pub fn new(
        dims: &[usize],
        kernel: usize,
        stride: usize,
        padding: usize,
        ceil_mode: bool,
    ) -> Result<Self> {
        let &[n, c, h, w] = dims else {
            bail!("max_pool2d: expected an NCHW tensor, got dims {dims:?}")
        };
        Ok(Self {
            planes: n * c,
            rows: PoolAxis::new(h, kernel, stride, padding, ceil_mode)?,
            cols: PoolAxis::new(w, kernel, stride, padding, ceil_mode)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn floor_mode_matches_the_conv_arithmetic() -> Result<()> {
        // torchvision stem: 3x3/2 pad 1 on 56 -> 28, on 112 -> 56.
        assert_eq!(PoolAxis::new(56, 3, 2, 1, false)?.output, 28);
        assert_eq!(PoolAxis::new(112, 3, 2, 1, false)?.output, 56);
        Ok(())
    }

    #[test]
    fn ceil_mode_adds_a_window_that_hangs_past_the_edge() -> Result<()> {
        // Caffe stem: 3x3/2 pad 0 ceil on 56 -> 28 (floor would give 27).
        let axis = PoolAxis::new(56, 3, 2, 0, true)?;
        assert_eq!(axis.output, 28);
        assert_eq!(axis.window(27), (54, 56));
        assert_eq!(PoolAxis::new(56, 3, 2, 0, false)?.output, 27);
        Ok(())
    }

    #[test]
    fn ceil_mode_drops_a_window_that_starts_in_the_right_padding() -> Result<()> {
        // in 5, k 2, s 3, p 1: ceil arithmetic gives (5+2-2+2)/3+1 = 3 windows, but window 2
        // would start at 2*3-1 = 5, past the input, so PyTorch keeps 2 (checked with
        // torch.nn.functional.max_pool2d 2.15).
        assert_eq!(PoolAxis::new(5, 2, 3, 1, true)?.output, 2);
        // Padding and ceil mode together: 56 with 3x3/2 pad 1 gives 29 (torch 2.15).
        assert_eq!(PoolAxis::new(56, 3, 2, 1, true)?.output, 29);
        Ok(())
    }

    #[test]
    fn rejects_bad_parameters() {
        assert!(PoolAxis::new(5, 3, 2, 2, false).is_err());
        assert!(PoolAxis::new(1, 3, 2, 0, false).is_err());
        assert!(PoolAxis::new(5, 3, 0, 0, false).is_err());
        assert!(PoolGeometry::new(&[1, 2, 3], 3, 2, 1, false).is_err());
    }
}
