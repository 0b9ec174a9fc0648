//! Times the three passes (forward, input gradient, weight gradient) of convolution shapes,
//! each algorithm beside the others: the repetitions alternate between the algorithms, so
//! that all of them sample the same spells of a busy machine, and each keeps its best time.
//!
//! `cargo run --release -p mtanet-kernels --example conv_passes -- N C_IN C_OUT H K STRIDE PAD GROUPS`
//! times one shape; without arguments it times the 3x3 convolutions of ResNet-50 and
//! ResNeXt-50 32x4d at 112x112 input, batch 16 and 32. `CONV_ALGOS` picks the algorithms
//! (comma-separated from `gemm`, `auto`, `w2`, `w4`, `direct`, `dense`; default `gemm,auto`), `CONV_REPS` the
//! repetitions (default 5). Times in ms: wall-clock, or with `CONV_CLOCK=cpu` the CPU time of
//! all the process's threads (Linux `schedstat`), which time spent waiting for a busy machine's
//! cores does not inflate.

use candle_core::{Device, Result, Tensor};
use mtanet_kernels::conv2d::{with_algorithm, Algorithm};
use mtanet_kernels::{Conv2d, Conv2dInputGrad, Conv2dWeightGrad, ConvGeometry};
use std::time::Instant;

/// One convolution: (N, C_in, C_out, H, K, stride, padding, groups).
type Shape = [usize; 8];

fn algorithms() -> Vec<(&'static str, Algorithm)> {
    let spec = std::env::var("CONV_ALGOS").unwrap_or_else(|_| "gemm,auto".into());
    spec.split(',')
        .map(|name| match name.trim() {
            "gemm" => ("gemm", Algorithm::Gemm),
            "auto" => ("auto", Algorithm::Auto),
            "w2" => ("w2", Algorithm::Winograd2),
            "w4" => ("w4", Algorithm::Winograd4),
            "direct" => ("direct", Algorithm::Direct),
            "dense" => ("dense", Algorithm::DirectDense),
            other => panic!(
                "CONV_ALGOS: unknown algorithm {other:?} (gemm, auto, w2, w4, direct, dense)"
            ),
        })
        .collect()
}

/// Nanoseconds all threads of this process have run on a CPU.
fn cpu_ns() -> f64 {
    let tasks = std::fs::read_dir("/proc/self/task").expect("/proc/self/task");
    tasks
        .filter_map(|task| {
            let stat = std::fs::read_to_string(task.ok()?.path().join("schedstat")).ok()?;
            stat.split_whitespace().next()?.parse::<f64>().ok()
        })
        .sum()
}

fn seconds(f: impl FnOnce() -> Result<()>) -> Result<f64> {
    if std::env::var("CONV_CLOCK").is_ok_and(|c| c == "cpu") {
        let start = cpu_ns();
        f()?;
        return Ok((cpu_ns() - start) / 1e9);
    }
    let t = Instant::now();
    f()?;
    Ok(t.elapsed().as_secs_f64())
}

/// Best ms of each pass `[fwd, dx, dw]` for each algorithm, repetitions alternating.
fn time_shape(shape: &Shape, algos: &[(&str, Algorithm)], reps: usize) -> Result<Vec<[f64; 3]>> {
    let [n, c_in, c_out, h, k, stride, padding, groups] = *shape;
    let dev = Device::Cpu;
    let x = Tensor::randn(0f32, 1.0, (n, c_in, h, h), &dev)?;
    let w = Tensor::randn(0f32, 0.05, (c_out, c_in / groups, k, k), &dev)?;
    let geometry = ConvGeometry::new(x.dims(), w.dims(), stride, padding, groups)?;
    let op = Conv2d {
        stride,
        padding,
        groups,
    };
    let dy = x.apply_op2_no_bwd(&w, &op)?;
    let mut best = vec![[f64::INFINITY; 3]; algos.len()];
    // One warm-up round, then `reps` timed ones.
    for rep in 0..=reps {
        for (b, &(_, algorithm)) in best.iter_mut().zip(algos) {
            let times = with_algorithm(algorithm, || -> Result<[f64; 3]> {
                Ok([
                    seconds(|| x.apply_op2_no_bwd(&w, &op).map(drop))?,
                    seconds(|| {
                        dy.apply_op2_no_bwd(&w, &Conv2dInputGrad { geometry })
                            .map(drop)
                    })?,
                    seconds(|| {
                        x.apply_op2_no_bwd(&dy, &Conv2dWeightGrad { geometry })
                            .map(drop)
                    })?,
                ])
            })?;
            if rep > 0 {
                for (b, t) in b.iter_mut().zip(times) {
                    *b = b.min(t * 1e3);
                }
            }
        }
    }
    Ok(best)
}

/// The 3x3 convolutions of the backbones at 112x112 input, per batch size.
fn network_shapes(n: usize) -> Vec<Shape> {
    let dense = |c, h, s| [n, c, c, h, 3, s, 1, 1];
    let grouped = |c, h, s| [n, c, c, h, 3, s, 1, 32];
    vec![
        dense(64, 28, 1),
        dense(128, 14, 1),
        dense(256, 7, 1),
        dense(512, 4, 1),
        dense(128, 28, 2),
        dense(256, 14, 2),
        dense(512, 7, 2),
        grouped(128, 28, 1),
        grouped(256, 14, 1),
        grouped(512, 7, 1),
        grouped(1024, 4, 1),
        grouped(256, 28, 2),
        grouped(512, 14, 2),
        grouped(1024, 7, 2),
    ]
}

fn main() -> Result<()> {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .map(|s| s.parse().expect("integer arguments"))
        .collect();
    let shapes = match args[..] {
        [] => [16, 32].iter().flat_map(|&n| network_shapes(n)).collect(),
        [n, c_in, c_out, h, k, stride, pad, groups] => {
            vec![[n, c_in, c_out, h, k, stride, pad, groups]]
        }
        _ => panic!("usage: [N C_IN C_OUT H K STRIDE PAD GROUPS]"),
    };
    let reps = std::env::var("CONV_REPS")
        .ok()
        .map(|r| r.parse().expect("CONV_REPS: an integer"))
        .unwrap_or(5);
    let algos = algorithms();
    let names: Vec<&str> = algos.iter().map(|a| a.0).collect();
    println!(
        "{:>4} {:>5} {:>5} {:>4} {:>2} {:>2} {:>3} | fwd {} | dx {} | dw {}",
        "N",
        "C_in",
        "C_out",
        "H",
        "s",
        "g",
        "",
        names.join(" / "),
        names.join(" / "),
        names.join(" / ")
    );
    for shape in &shapes {
        let [n, c_in, c_out, h, k, stride, _, groups] = *shape;
        let best = time_shape(shape, &algos, reps)?;
        let column = |pass: usize| {
            best.iter()
                .map(|b| format!("{:7.2}", b[pass]))
                .collect::<Vec<_>>()
                .join(" ")
        };
        println!(
            "{n:>4} {c_in:>5} {c_out:>5} {h:>4} {stride:>2} {groups:>2} {k}x{k} | {} | {} | {}",
            column(0),
            column(1),
            column(2)
        );
    }
    Ok(())
}
