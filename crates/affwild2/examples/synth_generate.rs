//! Writes a synthetic Aff-Wild2 and prints its report:
//! `cargo run --release -p mtanet-affwild2 --example synth_generate -- DIR [--full] [--seed N]`
//! (the runner's `mtanet data synth` does the same).

use std::path::PathBuf;

use mtanet_affwild2::{generate, SynthConfig};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let dir = args
        .first()
        .map(PathBuf::from)
        .ok_or("usage: synth_generate DIR [--full] [--seed N]")?;
    let mut cfg = SynthConfig {
        full: args.iter().any(|a| a == "--full"),
        ..SynthConfig::default()
    };
    if let Some(i) = args.iter().position(|a| a == "--seed") {
        cfg.seed = args.get(i + 1).ok_or("--seed needs a value")?.parse()?;
    }
    let t = std::time::Instant::now();
    let report = generate(&dir, &cfg)?;
    println!("{report}");
    println!("in {:.1} s", t.elapsed().as_secs_f64());
    Ok(())
}
