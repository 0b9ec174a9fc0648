//! Times convolution layers of the backbones at 112x112 input (batch 16): the forward, and the
//! forward plus backward (the input gradient and the weight gradient from a given output
//! gradient; the stem's input needs none), for candle's own `Tensor::conv2d` (its backward
//! through candle's autograd, `(y * r).sum()`), for `mtanet_kernels::conv2d`'s three passes,
//! and for PyTorch (`F.conv2d` and `aten.convolution_backward`, through
//! `scripts/bench_torch.py --layers`, skipped with a note if it cannot run). Both sides time
//! the kernels a training step runs, without the autograd bookkeeping around a single layer.
//!
//! The rounds alternate between the sides layer by layer (ours, then PyTorch's, for each layer,
//! `--rounds` times), so that both sample the same spells of a busy machine; each side keeps
//! its best time, and the per-round ratios give a median and a minimum.
//!
//! `cargo run --release -p mtanet-kernels --example bench_layers [-- --reps N] [--rounds R] [--no-torch]`

use candle_core::{Device, Result, Tensor, Var};
use mtanet_kernels::conv2d::conv2d;
use mtanet_kernels::{Conv2d, Conv2dInputGrad, Conv2dWeightGrad, ConvGeometry};
use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

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

/// `scripts/bench_torch.py --layers --serve`: a PyTorch process that times the layer named on
/// each line it is sent, so that its timings alternate with ours within one run.
struct TorchWorker {
    child: Child,
    stdin: ChildStdin,
    /// The worker's output lines, read by a thread of their own so that a wait can time out.
    lines: Receiver<std::io::Result<String>>,
    script: PathBuf,
}

/// How long the worker may take to import torch and answer `ready`.
const START_LIMIT: Duration = Duration::from_secs(300);
/// How long one layer's timing (all its repetitions) may take before the worker is given up.
const ANSWER_LIMIT: Duration = Duration::from_secs(300);

/// Reads `stdout` line by line on a thread of its own, sending each line (or the read error)
/// until the pipe closes.
fn line_reader(stdout: ChildStdout) -> Receiver<std::io::Result<String>> {
    let (send, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            if send.send(line).is_err() {
                break;
            }
        }
    });
    lines
}

impl TorchWorker {
    fn start(reps: usize) -> std::result::Result<Self, String> {
        let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../scripts/bench_torch.py");
        let mut child = Command::new("python3")
            .arg(&script)
            .args(["--layers", "--serve", "--threads", "2"])
            .args(["--reps", &reps.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| format!("cannot run python3 {}: {e}", script.display()))?;
        let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
            return Err("python3: no pipes".into());
        };
        let worker = Self {
            child,
            stdin,
            lines: line_reader(stdout),
            script,
        };
        // Wait for the import of torch to finish before timing anything beside it.
        match worker.next_line(START_LIMIT) {
            Ok(line) if line.trim() == "ready" => Ok(worker),
            _ => Err(format!(
                "{} did not start (see its message above)",
                worker.script.display()
            )),
        }
    }

    /// The worker's next output line, or why there is none: it closed its output, or `limit`
    /// passed without one.
    fn next_line(&self, limit: Duration) -> std::result::Result<String, String> {
        match self.lines.recv_timeout(limit) {
            Ok(Ok(line)) => Ok(line),
            Ok(Err(e)) => Err(format!("cannot read its output: {e}")),
            Err(RecvTimeoutError::Timeout) => {
                Err(format!("no answer within {} s", limit.as_secs()))
            }
            Err(RecvTimeoutError::Disconnected) => Err("it exited".into()),
        }
    }

    /// PyTorch's (forward ms, forward + backward ms) for the layer called `name`.
    fn time(&mut self, name: &str) -> std::result::Result<(f64, f64), String> {
        let failed = |why: String| format!("{}: {why}", self.script.display());
        writeln!(self.stdin, "{name}")
            .and_then(|()| self.stdin.flush())
            .map_err(|e| failed(format!("cannot send {name:?}: {e}")))?;
        let line = self
            .next_line(ANSWER_LIMIT)
            .map_err(|why| failed(format!("{why} for {name}")))?;
        // "layer <name> fwd_ms <f> fwd_bwd_ms <f>".
        let fields: Vec<&str> = line.split_whitespace().collect();
        let ["layer", answered, "fwd_ms", f, "fwd_bwd_ms", b] = fields.as_slice() else {
            return Err(failed(format!(
                "answered {:?} for {name} (see its message above)",
                line.trim()
            )));
        };
        if *answered != name {
            return Err(failed(format!("answered for {answered}, asked for {name}")));
        }
        let parse = |v: &str| {
            v.parse::<f64>()
                .map_err(|e| failed(format!("bad number {v:?}: {e}")))
        };
        Ok((parse(f)?, parse(b)?))
    }
}

impl Drop for TorchWorker {
    fn drop(&mut self) {
        // Every answer has been read by now: stop the worker rather than wait for it to see
        // the end of its input.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Median, minimum and maximum of `v` (not empty).
fn spread(v: &[f64]) -> (f64, f64, f64) {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    let median = if v.len() % 2 == 1 {
        v[mid]
    } else {
        (v[mid - 1] + v[mid]) / 2.0
    };
    (median, v[0], v[v.len() - 1])
}

/// One layer's times over the rounds: the best of each side, and our f+b time divided by
/// PyTorch's in each round.
#[derive(Default)]
struct LayerTimes {
    candle: Option<(f64, f64)>,
    ours: Option<(f64, f64)>,
    torch: Option<(f64, f64)>,
    round_ratios: Vec<f64>,
}

fn keep_best(best: &mut Option<(f64, f64)>, (f, b): (f64, f64)) {
    *best = Some(match *best {
        Some((bf, bb)) => (bf.min(f), bb.min(b)),
        None => (f, b),
    });
}

/// The value of `--flag N`, or `default`.
fn arg_usize(args: &[String], flag: &str, default: usize) -> usize {
    args.iter()
        .position(|a| a == flag)
        .and_then(|i| args.get(i + 1))
        .map(|v| {
            v.parse()
                .unwrap_or_else(|_| panic!("{flag}: a whole number, not {v:?}"))
        })
        .unwrap_or(default)
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let reps = arg_usize(&args, "--reps", 5).max(1);
    let rounds = arg_usize(&args, "--rounds", 3).max(1);
    let with_torch = !args.iter().any(|a| a == "--no-torch");
    println!(
        "batch {BATCH}, f32, best of {rounds} rounds of {reps} runs after a warm-up, ours and \
         PyTorch alternating per layer; rayon threads {}, RAYON_NUM_THREADS={}",
        rayon::current_num_threads(),
        std::env::var("RAYON_NUM_THREADS").unwrap_or_else(|_| "unset".into())
    );
    let mut torch = if with_torch {
        TorchWorker::start(reps)
    } else {
        Err("skipped (--no-torch)".into())
    };
    let mut times: Vec<LayerTimes> = LAYERS.iter().map(|_| LayerTimes::default()).collect();
    for round in 0..rounds {
        eprintln!("round {}/{rounds}", round + 1);
        for (layer, t) in LAYERS.iter().zip(&mut times) {
            // candle's own convolution is context, not a contender: one round is enough.
            if round == 0 {
                t.candle = Some(time_candle(layer, reps)?);
            }
            let ours = time_ours(layer, reps)?;
            keep_best(&mut t.ours, ours);
            if let Ok(worker) = &mut torch {
                match worker.time(layer.name) {
                    Ok(theirs) => {
                        keep_best(&mut t.torch, theirs);
                        t.round_ratios.push(ours.1 / theirs.1);
                    }
                    Err(why) => torch = Err(why),
                }
            }
        }
    }
    if let Err(why) = &torch {
        println!("PyTorch: {why}");
    }
    println!(
        "{:<20} {:>11} {:>11} {:>11} {:>11} {:>11} {:>11} {:>7} {:>7} {:>13}",
        "layer",
        "candle fwd",
        "candle f+b",
        "ours fwd",
        "ours f+b",
        "torch fwd",
        "torch f+b",
        "fwd x",
        "f+b x",
        "f+b x med,min"
    );
    let fmt = |v: Option<f64>, unit: &str| match v {
        Some(v) => format!("{v:.1}{unit}"),
        None => "-".into(),
    };
    let mut ratios: Vec<(f64, f64)> = Vec::new();
    for (layer, t) in LAYERS.iter().zip(&times) {
        let (Some((cf, cb)), Some((of, ob))) = (t.candle, t.ours) else {
            continue;
        };
        // A layer PyTorch did not answer for in every round has no ratio.
        let torch = t.torch.filter(|_| t.round_ratios.len() == rounds);
        let per_round = torch.map(|_| {
            let (median, min, _) = spread(&t.round_ratios);
            format!("{median:.2}, {min:.2}")
        });
        println!(
            "{:<20} {:>11} {:>11} {:>11} {:>11} {:>11} {:>11} {:>7} {:>7} {:>13}",
            layer.name,
            fmt(Some(cf), " ms"),
            fmt(Some(cb), " ms"),
            fmt(Some(of), " ms"),
            fmt(Some(ob), " ms"),
            fmt(torch.map(|t| t.0), " ms"),
            fmt(torch.map(|t| t.1), " ms"),
            fmt(torch.map(|t| of / t.0), ""),
            fmt(torch.map(|t| ob / t.1), ""),
            per_round.unwrap_or_else(|| "-".into()),
        );
        if let Some((tf, tb)) = torch {
            ratios.push((of / tf, ob / tb));
        }
    }
    println!(
        "fwd x / f+b x: our best time divided by PyTorch's (lower is better; < 1 beats \
         PyTorch); f+b x med,min: median and minimum of the per-round f+b ratios"
    );
    if !ratios.is_empty() {
        let (fm, fmin, fmax) = spread(&ratios.iter().map(|r| r.0).collect::<Vec<_>>());
        let (bm, bmin, bmax) = spread(&ratios.iter().map(|r| r.1).collect::<Vec<_>>());
        // Three decimals: a ratio just over 1 (1.004) must not print as 1.00.
        println!(
            "over {} layers: fwd x median {fm:.3} (min {fmin:.3}, max {fmax:.3}); f+b x median \
             {bm:.3} (min {bmin:.3}, max {bmax:.3})",
            ratios.len()
        );
    }
    Ok(())
}
