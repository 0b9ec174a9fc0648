//! The plain loops the 3x3 kernels' unit tests hold them to bit for bit: each value one chain
//! of fused multiply-adds from zero, in the order the kernels promise, with the zero padding
//! read as zeros (whose products add nothing to a finite sum).

use super::direct3x3_dense::Dims;
use super::geometry::ConvGeometry;

/// The forward of a 3x3 padding-1 convolution of `d` (batch, channels, map and stride): per
/// output, input channels in order, taps in row-major order; `weight(o, i, t)` is tap `t` of
/// output channel `o` and input channel `i`.
pub(super) fn forward_chain(
    d: &Dims,
    x: &[f32],
    weight: impl Fn(usize, usize, usize) -> f32,
) -> Vec<f32> {
    let mut y = vec![0.0f32; d.batch * d.c_out * d.out_pixels()];
    for n in 0..d.batch {
        for o in 0..d.c_out {
            for oy in 0..d.oh {
                for ox in 0..d.ow {
                    let mut s = 0.0f32;
                    for i in 0..d.c_in {
                        for t in 0..9 {
                            let iy = (d.stride * oy + t / 3) as isize - 1;
                            let ix = (d.stride * ox + t % 3) as isize - 1;
                            let inside =
                                (0..d.h as isize).contains(&iy) && (0..d.w as isize).contains(&ix);
                            let v = if inside {
                                x[((n * d.c_in + i) * d.h + iy as usize) * d.w + ix as usize]
                            } else {
                                0.0
                            };
                            s = weight(o, i, t).mul_add(v, s);
                        }
                    }
                    y[((n * d.c_out + o) * d.oh + oy) * d.ow + ox] = s;
                }
            }
        }
    }
    y
}

/// The weight gradient `(C_out, C_in, 9)` of the dense 3x3 padding-1 `g`: per weight, one chain
/// over the positions of the batch in order.
pub(super) fn weight_grad_chain(g: &ConvGeometry, x: &[f32], dy: &[f32]) -> Vec<f32> {
    let (c_in, c_out) = (g.in_channels, g.out_channels);
    let mut dw = vec![0.0f32; c_out * c_in * 9];
    for o in 0..c_out {
        for i in 0..c_in {
            for t in 0..9 {
                let mut s = 0.0f32;
                for n in 0..g.batch {
                    for oy in 0..g.out_h {
                        for ox in 0..g.out_w {
                            let iy = (g.stride * oy + t / 3) as isize - 1;
                            let ix = (g.stride * ox + t % 3) as isize - 1;
                            let inside = (0..g.in_h as isize).contains(&iy)
                                && (0..g.in_w as isize).contains(&ix);
                            let v = if inside {
                                x[((n * c_in + i) * g.in_h + iy as usize) * g.in_w + ix as usize]
                            } else {
                                0.0
                            };
                            let grad = dy[((n * c_out + o) * g.out_h + oy) * g.out_w + ox];
                            s = grad.mul_add(v, s);
                        }
                    }
                }
                dw[(o * c_in + i) * 9 + t] = s;
            }
        }
    }
    dw
}
