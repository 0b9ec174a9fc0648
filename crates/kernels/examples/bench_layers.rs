//! Times convolution layers of the backbones at 112x112 input (batch 16): the forward, and the
//! forward plus backward (the input gradient and the weight gradient from a given output
//! gradient; the stem's input needs none), for candle's own `Tensor::conv2d` (its backward
//! through candle's autograd, `(y * r).sum()`), for `mtanet_kernels::conv2d`'s three passes,
//! and for PyTorch (`F.conv2d` and `aten.convolution_backward`, through
//! `scripts/bench_torch.py --layers`, skipped with a note if it cannot run). Both sides time
//! the kernels a training step runs, without the autograd bookkeeping around a single layer.
//!
//! `cargo run --release -p mtanet-kernels --example bench_layers [-- --reps N] [--no-torch]`

use candle_core::{Device, Result, Tensor, Var};
use mtanet_kernels::conv2d::conv2d;
use mtanet_kernels::{Conv2d, Conv2dInputGrad, Conv2dWeightGrad, ConvGeometry};
use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

/// One benchmarked layer: name, input channels, output channels, input size, kernel, stride,
/// padding, groups. The same list is in `scripts/bench_torch.py`.
struct Layer {
    name: &'static str,
    c_in: usize,
    c_out: usize,
    size: usize,
    kernel: usize,
    stride: usize,
    padding: usize,
    groups: usize,
}

impl Layer {
    /// The stem reads the image, whose gradient nobody needs.
    fn needs_input_grad(&self) -> bool {
        self.c_in != 3
    }
}

const fn layer(
    name: &'static str,
    (c_in, c_out, size): (usize, usize, usize),
    (kernel, stride, padding, groups): (usize, usize, usize, usize),
) -> Layer {
    Layer {
        name,
        c_in,
        c_out,
        size,
        kernel,
        stride,
        padding,
        groups,
    }
}

const BATCH: usize = 16;
const LAYERS: [Layer; 8] = [
    layer("grouped32_256ch_28", (256, 256, 28), (3, 1, 1, 32)),
    layer("dense_128ch_28", (128, 128, 28), (3, 1, 1, 1)),
    layer("dense_64ch_56", (64, 64, 56), (3, 1, 1, 1)),
    layer("stem_7x7_s2_112", (3, 64, 112), (7, 2, 3, 1)),
    layer("dense_64ch_28", (64, 64, 28), (3, 1, 1, 1)),
    layer("dense_256ch_s2_14", (256, 256, 14), (3, 2, 1, 1)),
    layer("grouped32_512ch_14", (512, 512, 14), (3, 1, 1, 32)),
    layer("pointwise_256_64_28", (256, 64, 28), (1, 1, 0, 1)),
];

/// Best (minimum) wall time of `reps` runs of `f` after one warm-up, in milliseconds: on a
/// shared machine the minimum is the run least disturbed by other processes.
fn best_ms(reps: usize, mut f: impl FnMut() -> Result<()>) -> Result<f64> {
    f()?;
    let mut times = Vec::with_capacity(reps);
    for _ in 0..reps {
        let start = Instant::now();
        f()?;
        times.push(start.elapsed().as_secs_f64() * 1e3);
    }
    Ok(times.into_iter().fold(f64::INFINITY, f64::min))
}

/// The layer's input, weight and an output gradient.
fn operands(l: &Layer) -> Result<(Tensor, Tensor, Tensor, ConvGeometry)> {
    let dev = Device::Cpu;
    let x = Tensor::randn(0f32, 1.0, (BATCH, l.c_in, l.size, l.size), &dev)?;
    let w = Tensor::randn(
        0f32,
        0.05,
        (l.c_out, l.c_in / l.groups, l.kernel, l.kernel),
        &dev,
    )?;
    let g = ConvGeometry::new(x.dims(), w.dims(), l.stride, l.padding, l.groups)?;
    let r = Tensor::randn(0f32, 1.0, g.output_dims(), &dev)?;
    Ok((x, w, r, g))
}

/// candle's own convolution: (forward ms, forward + backward ms through its autograd).
fn time_candle(l: &Layer, reps: usize) -> Result<(f64, f64)> {
    let (x, w, r, _) = operands(l)?;
    let conv = |x: &Tensor, w: &Tensor| x.conv2d(w, l.padding, l.stride, 1, l.groups);
    let fwd = best_ms(reps, || conv(&x, &w).map(drop))?;
    let (xv, wv) = (Var::from_tensor(&x)?, Var::from_tensor(&w)?);
    let fwd_bwd = best_ms(reps, || {
        let grads = (conv(xv.as_tensor(), wv.as_tensor())? * &r)?
            .sum_all()?
            .backward()?;
        match grads.get(wv.as_tensor()) {
            Some(_) => Ok(()),
            None => candle_core::bail!("{}: missing gradient", l.name),
        }
    })?;
    Ok((fwd, fwd_bwd))
}

/// mtanet's convolution: (forward ms, forward + input gradient + weight gradient ms).
fn time_ours(l: &Layer, reps: usize) -> Result<(f64, f64)> {
    let (x, w, r, geometry) = operands(l)?;
    let fwd = best_ms(reps, || {
        conv2d(&x, &w, l.stride, l.padding, l.groups).map(drop)
    })?;
    let op = Conv2d {
        stride: l.stride,
        padding: l.padding,
        groups: l.groups,
    };
    let fwd_bwd = best_ms(reps, || {
        drop(x.apply_op2_no_bwd(&w, &op)?);
        if l.needs_input_grad() {
            drop(r.apply_op2_no_bwd(&w, &Conv2dInputGrad { geometry })?);
        }
        drop(x.apply_op2_no_bwd(&r, &Conv2dWeightGrad { geometry })?);
        Ok(())
    })?;
    Ok((fwd, fwd_bwd))
}

/// PyTorch's (forward ms, forward + backward ms) per layer name, or why there are none.
fn torch_times(reps: usize) -> std::result::Result<Vec<(String, f64, f64)>, String> {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../scripts/bench_torch.py");
    let out = Command::new("python3")
        .arg(&script)
        .args(["--layers", "--threads", "2", "--reps", &reps.to_string()])
        .output()
        .map_err(|e| format!("cannot run python3 {}: {e}", script.display()))?;
    if !out.status.success() {
        return Err(format!(
            "{} failed: {}",
            script.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    // Lines: "layer <name> fwd_ms <f> fwd_bwd_ms <f>".
    let mut rows = Vec::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if let ["layer", name, "fwd_ms", f, "fwd_bwd_ms", b] = fields.as_slice() {
            let parse = |v: &str| {
                v.parse::<f64>()
                    .map_err(|e| format!("bad number {v:?}: {e}"))
            };
            rows.push((name.to_string(), parse(f)?, parse(b)?));
        }
    }
    Ok(rows)
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let reps = args
        .iter()
        .position(|a| a == "--reps")
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    let with_torch = !args.iter().any(|a| a == "--no-torch");
    println!(
        "batch {BATCH}, f32, best of {reps} after a warm-up; rayon threads {}, \
         RAYON_NUM_THREADS={}",
        rayon::current_num_threads(),
        std::env::var("RAYON_NUM_THREADS").unwrap_or_else(|_| "unset".into())
    );
    let torch = if with_torch {
        torch_times(reps)
    } else {
        Err("skipped (--no-torch)".into())
    };
    if let Err(why) = &torch {
        println!("PyTorch: {why}");
    }
    println!(
        "{:<20} {:>11} {:>11} {:>11} {:>11} {:>11} {:>11} {:>9} {:>9}",
        "layer",
        "candle fwd",
        "candle f+b",
        "ours fwd",
        "ours f+b",
        "torch fwd",
        "torch f+b",
        "fwd x",
        "f+b x"
    );
    let mut ratios: Vec<(f64, f64)> = Vec::new();
    for layer in &LAYERS {
        let (cf, cb) = time_candle(layer, reps)?;
        let (of, ob) = time_ours(layer, reps)?;
        let t = torch
            .as_ref()
            .ok()
            .and_then(|rows| rows.iter().find(|r| r.0 == layer.name));
        let fmt = |v: Option<f64>, unit: &str| match v {
            Some(v) => format!("{v:.1}{unit}"),
            None => "-".into(),
        };
        println!(
            "{:<20} {:>11} {:>11} {:>11} {:>11} {:>11} {:>11} {:>9} {:>9}",
            layer.name,
            fmt(Some(cf), " ms"),
            fmt(Some(cb), " ms"),
            fmt(Some(of), " ms"),
            fmt(Some(ob), " ms"),
            fmt(t.map(|t| t.1), " ms"),
            fmt(t.map(|t| t.2), " ms"),
            fmt(t.map(|t| of / t.1), ""),
            fmt(t.map(|t| ob / t.2), ""),
        );
        if let Some(t) = t {
            ratios.push((of / t.1, ob / t.2));
        }
    }
    println!("fwd x / f+b x: our time divided by PyTorch's (lower is better; < 1 beats PyTorch)");
    if !ratios.is_empty() {
        let summary = |pick: fn(&(f64, f64)) -> f64| {
            let mut v: Vec<f64> = ratios.iter().map(pick).collect();
            v.sort_by(f64::total_cmp);
            let mid = v.len() / 2;
            let median = if v.len() % 2 == 1 {
                v[mid]
            } else {
                (v[mid - 1] + v[mid]) / 2.0
            };
            (median, v[0], v[v.len() - 1])
        };
        let (fm, fmin, fmax) = summary(|r| r.0);
        let (bm, bmin, bmax) = summary(|r| r.1);
        println!(
            "over {} layers: fwd x median {fm:.2} (min {fmin:.2}, max {fmax:.2}); f+b x median \
             {bm:.2} (min {bmin:.2}, max {bmax:.2})",
            ratios.len()
        );
    }
    Ok(())
}
