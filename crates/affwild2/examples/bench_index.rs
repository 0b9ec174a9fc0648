//! Times `DatasetIndex::load` on a full-size synthetic Aff-Wild2 (560 videos, ~2.8 M
//! annotation lines per task); the aim is under 3 s on 2 cores.
//!
//! `cargo run --release -p mtanet-affwild2 --example bench_index [-- ROOT]`: without ROOT the
//! full set is generated into a temporary folder first (under a minute; deleted afterwards);
//! a ROOT without `annotations/` gets the full set generated into it and kept.
//! `RAYON_NUM_THREADS` sets the thread count.

use std::path::PathBuf;
use std::time::Instant;

use mtanet_affwild2::{generate, DatasetIndex, IndexOptions, SynthConfig};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let given = std::env::args().nth(1).map(PathBuf::from);
    let tmp = tempfile::tempdir()?;
    let root = given.unwrap_or_else(|| tmp.path().to_path_buf());
    if !root.join("annotations").exists() {
        let t = Instant::now();
        let report = generate(
            &root,
            &SynthConfig {
                full: true,
                ..SynthConfig::default()
            },
        )?;
        println!("{report}");
        println!("generated in {:.1} s", t.elapsed().as_secs_f64());
    }
    println!("rayon threads: {}", rayon::current_num_threads());
    let mut times = Vec::new();
    for run in 0..3 {
        let t = Instant::now();
        let index = DatasetIndex::load(&root, &IndexOptions::default())?;
        let s = t.elapsed().as_secs_f64();
        times.push(s);
        if run == 0 {
            let st = index.stats();
            let lines: u64 = [&st.train, &st.validation]
                .iter()
                .map(|s| s.va.frames)
                .sum();
            println!(
                "{} train + {} validation samples, {} VA lines, {} jpgs",
                st.train.samples, st.validation.samples, lines, st.jpgs
            );
        }
        println!("DatasetIndex::load run {}: {s:.2} s", run + 1);
    }
    let best = times.iter().cloned().fold(f64::INFINITY, f64::min);
    println!(
        "best {best:.2} s (target < 3 s on 2 cores; the first run may read a cold page cache)"
    );
    Ok(())
}
