//! Loader throughput: decode + augment (flip, resized crop, brightness/contrast) + ImageNet
//! normalisation of 112x112 JPEGs into f32 NCHW batches, with 1 and 2 rayon threads, against
//! PIL + torchvision doing the same work on the same files (`scripts/bench_data_torch.py`,
//! skipped with a note if torch is absent).
//!
//! `cargo run --release -p mtanet-affwild2 --example bench_data [-- ROOT]`: without ROOT a
//! small synthetic set is generated into a temporary folder.

use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

use mtanet_affwild2::{
    generate, Augment, DatasetIndex, IndexOptions, Loader, LoaderConfig, Split, SynthConfig,
};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let tmp = tempfile::tempdir()?;
    let root = std::env::args()
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| tmp.path().to_path_buf());
    if !root.join("annotations").exists() {
        generate(
            &root,
            &SynthConfig {
                videos: 8,
                frames: 80,
                ..SynthConfig::default()
            },
        )?;
    }
    let index = DatasetIndex::load(&root, &IndexOptions::default())?;
    let samples: Vec<_> = index
        .samples(Split::Train)
        .iter()
        .take(1024)
        .cloned()
        .collect();
    println!("{} JPEGs of {}", samples.len(), root.display());
    let seconds = 3.0;
    let mut rust = Vec::new();
    for threads in [1, 2] {
        let cfg = LoaderConfig {
            batch_size: 64,
            threads,
            prefetch: 2,
            augment: Some(Augment::default()),
            ..LoaderConfig::default()
        };
        let loader = Loader::new(samples.clone(), &index.vocab, cfg)?;
        // Warm the page cache and the pool.
        for b in loader.epoch(0, 0) {
            b?;
        }
        let (mut n, start) = (0usize, Instant::now());
        let mut epoch = 1;
        while start.elapsed().as_secs_f64() < seconds {
            for b in loader.epoch(epoch, 0) {
                n += b?.len();
            }
            epoch += 1;
        }
        let r = n as f64 / start.elapsed().as_secs_f64();
        println!("rust loader, {threads} thread(s): {r:.0} img/s");
        rust.push(r);
    }
    let list = tmp.path().join("jpgs.txt");
    let mut f = std::fs::File::create(&list)?;
    for s in &samples {
        writeln!(f, "{}", s.jpg.display())?;
    }
    drop(f);
    let script = [
        "scripts/bench_data_torch.py",
        "../../scripts/bench_data_torch.py",
    ]
    .into_iter()
    .map(PathBuf::from)
    .find(|p| p.exists());
    let Some(script) = script else {
        println!("note: scripts/bench_data_torch.py not found (run from the workspace root); no PyTorch comparison");
        return Ok(());
    };
    let out = std::process::Command::new("python3")
        .arg(&script)
        .arg(&list)
        .arg("--seconds")
        .arg(seconds.to_string())
        .env("OMP_NUM_THREADS", "1")
        .output();
    let out = match out {
        Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout).to_string(),
        Ok(o) => {
            println!(
                "note: PyTorch comparison skipped ({}): {}",
                o.status,
                String::from_utf8_lossy(&o.stderr).trim()
            );
            return Ok(());
        }
        Err(e) => {
            println!("note: PyTorch comparison skipped: cannot run python3: {e}");
            return Ok(());
        }
    };
    for (line, r) in out.lines().zip(&rust) {
        let py: f64 = line
            .rsplit('=')
            .next()
            .and_then(|x| x.parse().ok())
            .unwrap_or(f64::NAN);
        println!(
            "torchvision {line}  ->  rust / torchvision = {:.2}x",
            r / py
        );
    }
    Ok(())
}
