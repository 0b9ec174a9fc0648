//! Times the three passes (forward, input gradient, weight gradient) of one convolution shape
//! separately: `cargo run --release -p mtanet-kernels --example conv_passes -- N C_IN C_OUT H K STRIDE PAD GROUPS`.

use candle_core::{Device, Result, Tensor};
use mtanet_kernels::{Conv2d, Conv2dInputGrad, Conv2dWeightGrad, ConvGeometry};
use std::time::Instant;

fn best_ms(mut f: impl FnMut() -> Result<()>) -> Result<f64> {
    f()?;
    let mut best = f64::INFINITY;
    for _ in 0..5 {
        let t = Instant::now();
        f()?;
        best = best.min(t.elapsed().as_secs_f64() * 1e3);
    }
    Ok(best)
}

fn main() -> Result<()> {
    let a: Vec<usize> = std::env::args()
        .skip(1)
        .map(|s| s.parse().expect("integer arguments"))
        .collect();
    let [n, c_in, c_out, h, k, stride, pad, groups] = a[..] else {
        panic!("usage: N C_IN C_OUT H K STRIDE PAD GROUPS")
    };
    let dev = Device::Cpu;
    let x = Tensor::randn(0f32, 1.0, (n, c_in, h, h), &dev)?;
    let w = Tensor::randn(0f32, 0.05, (c_out, c_in / groups, k, k), &dev)?;
    let geometry = ConvGeometry::new(x.dims(), w.dims(), stride, pad, groups)?;
    let op = Conv2d {
        stride,
        padding: pad,
        groups,
    };
    let y = x.apply_op2_no_bwd(&w, &op)?;
    let fwd = best_ms(|| x.apply_op2_no_bwd(&w, &op).map(drop))?;
    let dx = best_ms(|| {
        y.apply_op2_no_bwd(&w, &Conv2dInputGrad { geometry })
            .map(drop)
    })?;
    let dw = best_ms(|| {
        x.apply_op2_no_bwd(&y, &Conv2dWeightGrad { geometry })
            .map(drop)
    })?;
    let (_, _, oh, ow) = geometry.output_dims();
    let gflop = 2.0 * (n * c_out * (c_in / groups) * k * k * oh * ow) as f64 / 1e9;
    println!(
        "fwd {fwd:.2} ms ({:.0} GFLOP/s)  dx {dx:.2} ms ({:.0})  dw {dw:.2} ms ({:.0})",
        gflop / fwd * 1e3,
        gflop / dx * 1e3,
        gflop / dw * 1e3
    );
    Ok(())
}
