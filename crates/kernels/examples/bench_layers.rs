//! Times three convolution layers of the backbones (batch 16, 3x3,
//! pad 1): forward, and forward + backward (gradients of input and weight), for candle's own
//! `Tensor::conv2d`, for `mtanet_kernels::conv2d`, and for PyTorch (through
//! `scripts/bench_torch.py --layers`, skipped with a note if it cannot run).
//!
//! `cargo run --release -p mtanet-kernels --example bench_layers [-- --reps N] [--no-torch]`

use candle_core::{Device, Result, Tensor, Var};
use mtanet_kernels::conv2d::conv2d;
use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

/// One benchmarked layer: name, channels, spatial size, groups.
struct Layer {
    name: &'static str,
    channels: usize,
    size: usize,
    groups: usize,
}

const BATCH: usize = 16;
const LAYERS: [Layer; 3] = [
    Layer {
        name: "grouped32_256ch_28",
        channels: 256,
        size: 28,
        groups: 32,
    },
    Layer {
        name: "dense_128ch_28",
        channels: 128,
        size: 28,
        groups: 1,
    },
    Layer {
        name: "dense_64ch_56",
        channels: 64,
        size: 56,
        groups: 1,
    },
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

/// (forward ms, forward + backward ms) for one layer and one implementation.
fn time_layer(layer: &Layer, ours: bool, reps: usize) -> Result<(f64, f64)> {
    let dev = Device::Cpu;
    let (c, s) = (layer.channels, layer.size);
    let x = Var::from_tensor(&Tensor::randn(0f32, 1.0, (BATCH, c, s, s), &dev)?)?;
    let w = Var::from_tensor(&Tensor::randn(
        0f32,
        0.05,
        (c, c / layer.groups, 3, 3),
        &dev,
    )?)?;
    let r = Tensor::randn(0f32, 1.0, (BATCH, c, s, s), &dev)?;
    let run = |x: &Tensor, w: &Tensor| -> Result<Tensor> {
        if ours {
            conv2d(x, w, 1, 1, layer.groups)
        } else {
            x.conv2d(w, 1, 1, 1, layer.groups)
        }
    };
    let (xd, wd) = (x.as_tensor().detach(), w.as_tensor().detach());
    let fwd = best_ms(reps, || run(&xd, &wd).map(drop))?;
    let fwd_bwd = best_ms(reps, || {
        let y = run(x.as_tensor(), w.as_tensor())?;
        let grads = (y * &r)?.sum_all()?.backward()?;
        match (grads.get(x.as_tensor()), grads.get(w.as_tensor())) {
            (Some(_), Some(_)) => Ok(()),
            _ => candle_core::bail!("{}: missing gradient", layer.name),
        }
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
        "batch {BATCH}, 3x3 pad 1, f32, best of {reps} after a warm-up; rayon threads {}, \
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
    for layer in &LAYERS {
        let (cf, cb) = time_layer(layer, false, reps)?;
        let (of, ob) = time_layer(layer, true, reps)?;
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
    }
    println!("fwd x / f+b x: our time divided by PyTorch's (lower is better; < 1 beats PyTorch)");
    Ok(())
}
