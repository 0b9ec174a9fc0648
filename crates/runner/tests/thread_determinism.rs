//! Does the number of rayon threads change the numbers? A tiny training and an eval-mode
//! forward pass are run in child processes (this test binary re-run with `--exact`) with
//! `RAYON_NUM_THREADS=1` and `=2` (and twice with 2), and their outputs compared bit for bit.
//! See docs/determinism.md for the op-by-op account.

use std::path::{Path, PathBuf};
use std::process::Command;

use mtanet_runner::experiment::Config;
use mtanet_runner::predict;
use mtanet_runner::record::checkpoint;
use mtanet_runner::training::{self as train, RunContext};
use serde_json::{json, Value};

mod support;

/// The shared tiny run with a shorter second stage, no mid-run checkpoints, eval every 2 steps.
fn tiny_config(work: &Path) -> Config {
    support::tiny_config(
        &work.join("results"),
        &work.join("synth"),
        &[
            "training.stages.1.steps=2",
            "training.checkpoint_every=100",
            "eval.every_steps=2",
        ],
    )
}

/// Set in a child: `<train|predict>\t<work directory>\t<output file>`.
const CHILD_ENV: &str = "MTANET_TEST_THREADS_CHILD";

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

/// Trains the tiny config; writes the report, metrics.csv and every weight's bits.
fn train_child(work: &Path) -> Value {
    let config = tiny_config(work);
    let out = train::run(
        &config,
        &RunContext {
            quiet: true,
            ..Default::default()
        },
    )
    .unwrap();
    assert!(out.finished);
    let ckpt = checkpoint::load(
        &out.run_dir.join("checkpoints/last.safetensors"),
        &candle_core::Device::Cpu,
    )
    .unwrap();
    let mut weights: Vec<(String, Vec<u32>)> = ckpt
        .model
        .into_iter()
        .map(|(k, t)| (k, bits(&t.flatten_all().unwrap().to_vec1::<f32>().unwrap())))
        .collect();
    weights.sort_by(|a, b| a.0.cmp(&b.0));
    json!({
        "run_dir": out.run_dir,
        "report": out.report,
        "metrics_csv": std::fs::read_to_string(out.run_dir.join("metrics.csv")).unwrap(),
        "weights": weights,
    })
}

fn jpgs(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            jpgs(&p, out);
        } else if p.extension().is_some_and(|x| x == "jpg") {
            out.push(p);
        }
    }
}

/// Eval-mode forward pass of the checkpoint in `<work>/run` over every synthetic crop.
fn predict_child(work: &Path) -> Value {
    let run_dir = std::fs::read_to_string(work.join("run_dir")).unwrap();
    let m =
        mtanet_runner::build::restore::load_model(Path::new(run_dir.trim()), None, None).unwrap();
    let mut files = Vec::new();
    jpgs(&m.config.data.synthetic.dir, &mut files);
    files.sort();
    files.truncate(64);
    let mut bad = Vec::new();
    let pb = indicatif::ProgressBar::hidden();
    let outs = predict::predict_images(&m, &files, 16, true, &pb, &mut bad).unwrap();
    assert!(bad.is_empty(), "{bad:?}");
    let outs: Vec<Value> = outs
        .into_iter()
        .map(|o| {
            let o = o.unwrap();
            json!([bits(&o.va), bits(&o.au_probs), bits(&o.expr_probs)])
        })
        .collect();
    json!({ "frames": files.len(), "outputs": outs })
}

/// The child side. Does nothing unless started by one of the tests below.
#[test]
fn thread_count_child() {
    let Ok(spec) = std::env::var(CHILD_ENV) else {
        return;
    };
    let parts: Vec<&str> = spec.split('\t').collect();
    let [mode, work, out] = parts[..] else {
        panic!("bad {CHILD_ENV}: {spec}");
    };
    let threads = rayon::current_num_threads();
    eprintln!("child {mode}: rayon threads {threads}");
    let value = match mode {
        "train" => train_child(Path::new(work)),
        "predict" => predict_child(Path::new(work)),
        m => panic!("unknown mode {m}"),
    };
    let value = json!({ "threads": threads, "value": value });
    std::fs::write(out, serde_json::to_vec(&value).unwrap()).unwrap();
}

/// Runs the child in `mode` with `threads` rayon threads and `candle_threads` in candle's
/// elementwise pool; returns its output.
fn run_child(mode: &str, threads: usize, candle_threads: usize, work: &Path) -> Value {
    let out = work.join(format!("{mode}-{threads}.json"));
    let exe = std::env::current_exe().unwrap();
    let res = Command::new(exe)
        .args(["--exact", "thread_count_child", "--nocapture"])
        .args(["--test-threads=1"])
        .env(
            CHILD_ENV,
            format!("{mode}\t{}\t{}", work.display(), out.display()),
        )
        .env("RAYON_NUM_THREADS", threads.to_string())
        // The binary sets 1 (candle's elementwise pool; see docs/determinism.md).
        .env("CANDLE_NUM_THREADS", candle_threads.to_string())
        .output()
        .unwrap();
    assert!(
        res.status.success(),
        "{mode} child with {threads} threads failed:\n{}\n{}",
        String::from_utf8_lossy(&res.stdout),
        String::from_utf8_lossy(&res.stderr)
    );
    let v: Value = serde_json::from_slice(&std::fs::read(&out).unwrap()).unwrap();
    assert_eq!(
        v["threads"],
        json!(threads),
        "RAYON_NUM_THREADS not in force"
    );
    v["value"].clone()
}

/// Describes how two training outputs differ (empty when bit-identical).
fn train_differences(a: &Value, b: &Value) -> Vec<String> {
    let mut out = Vec::new();
    if a["report"] != b["report"] {
        out.push("final report differs".to_string());
    }
    let (ma, mb) = (
        a["metrics_csv"].as_str().unwrap(),
        b["metrics_csv"].as_str().unwrap(),
    );
    assert!(ma.lines().count() > 1, "metrics.csv has no rows:\n{ma}");
    if ma.lines().count() != mb.lines().count() {
        out.push(format!(
            "metrics.csv: {} lines, then {}",
            ma.lines().count(),
            mb.lines().count()
        ));
    }
    for (la, lb) in ma.lines().zip(mb.lines()) {
        if la != lb {
            out.push(format!("metrics.csv:\n  first:  {la}\n  second: {lb}"));
        }
    }
    if out.is_empty() && ma != mb {
        out.push("metrics.csv differs (line ends or trailing text)".to_string());
    }
    let (wa, wb) = (
        a["weights"].as_array().unwrap(),
        b["weights"].as_array().unwrap(),
    );
    assert!(!wa.is_empty(), "no weights");
    assert_eq!(wa.len(), wb.len());
    for (x, y) in wa.iter().zip(wb) {
        assert_eq!(x[0], y[0]);
        let (vx, vy) = (x[1].as_array().unwrap(), y[1].as_array().unwrap());
        assert_eq!(vx.len(), vy.len(), "weight {}", x[0]);
        let differing = vx.iter().zip(vy).filter(|(p, q)| p != q).count();
        if differing > 0 {
            let max = vx
                .iter()
                .zip(vy)
                .map(|(p, q)| {
                    let f = |v: &Value| f32::from_bits(v.as_u64().unwrap() as u32);
                    (f(p) - f(q)).abs()
                })
                .fold(0f32, f32::max);
            out.push(format!(
                "weight {}: {differing}/{} values differ, max |diff| {max:e}",
                x[0],
                vx.len()
            ));
        }
    }
    out
}

/// The default (`RAYON_NUM_THREADS` = the machine's cores) is deterministic on one machine:
/// two training processes with the same thread count agree bit for bit, and the eval-mode
/// forward pass (what `predict` and the evaluations run) is the same with 1 and 2 threads
/// (rayon and candle's elementwise pool both).
#[test]
fn fixed_thread_count_training_and_any_thread_count_inference_are_bit_identical() {
    let tmp = tempfile::tempdir().unwrap();
    let (work_a, work_b) = (tmp.path().join("a"), tmp.path().join("b"));
    let a = run_child("train", 2, 1, &work_a);
    let b = run_child("train", 2, 1, &work_b);
    let diffs = train_differences(&a, &b);
    assert!(
        diffs.is_empty(),
        "two trainings with 2 threads differ:\n{}",
        diffs.join("\n")
    );

    // Inference: one checkpoint, evaluated with 1 thread, and with 2 rayon threads and 2
    // threads in candle's elementwise pool.
    std::fs::write(work_a.join("run_dir"), a["run_dir"].as_str().unwrap()).unwrap();
    let p1 = run_child("predict", 1, 1, &work_a);
    let p2 = run_child("predict", 2, 2, &work_a);
    assert!(p1["frames"].as_u64().unwrap() > 0);
    assert_eq!(p1["outputs"].as_array().unwrap().len(), 64);
    assert!(p1 == p2, "eval-mode outputs differ between 1 and 2 threads");
}

/// Training with 1 and with 2 threads is bit-identical: the convolution weight gradient
/// (`conv2d/weight_grad.rs::weight_grad`) cuts the batch into a fixed number of partial sums,
/// whatever the thread count (it used one per thread, which changed the rounding).
#[test]
fn one_and_two_threads_give_bit_identical_training() {
    let tmp = tempfile::tempdir().unwrap();
    let a = run_child("train", 1, 1, &tmp.path().join("t1"));
    let b = run_child("train", 2, 1, &tmp.path().join("t2"));
    let diffs = train_differences(&a, &b);
    assert!(
        diffs.is_empty(),
        "training differs between 1 and 2 threads:\n{}",
        diffs.join("\n")
    );
}
