//! `mtanet model info`: what a checkpoint says about itself, from its safetensors metadata
//! (written by training; a checkpoint from before these keys existed says which are missing).

use std::fmt::Write as _;
use std::path::Path;

use crate::build::restore::VOCAB_KEY;
use crate::record::checkpoint::{parse_entry, read_metadata, TrainState, FORMAT_KEY, STATE_KEY};

/// The keys a training run writes, in the order `model info` prints them (`tuning` is added
/// by `mtanet tune` and printed when present).
const KEYS: [&str; 5] = ["vocab", "preprocess", "layout", "commit", "config"];

/// The text `mtanet model info` prints for a run directory (the checkpoint that `predict`
/// and `tune` use, [`crate::build::restore::resolve_checkpoint`]) or a checkpoint file.
pub fn describe(checkpoint: &Path) -> anyhow::Result<String> {
    let (file, why) = if checkpoint.is_dir() {
        let r = crate::build::restore::resolve_checkpoint(checkpoint, None)?;
        (r.file, format!(" ({})", r.why))
    } else {
        (checkpoint.to_path_buf(), String::new())
    };
    let meta = read_metadata(&file)?;
    let mut out = String::new();
    writeln!(out, "checkpoint: {}{why}", file.display())?;
    writeln!(
        out,
        "format: {}",
        meta.get(FORMAT_KEY).map_or("(none)", String::as_str)
    )?;
    if let Some(v) = meta.get(VOCAB_KEY) {
        let v: serde_json::Value = serde_json::from_str(v)?;
        let names = |k: &str| {
            v[k].as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|x| x.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                })
                .unwrap_or_default()
        };
        writeln!(out, "AUs (head order): {}", names("au_names"))?;
        writeln!(out, "expressions (head order): {}", names("expr_names"))?;
    }
    for key in ["preprocess", "layout", "commit", "tuning"] {
        if let Some(v) = meta.get(key) {
            writeln!(out, "{key}: {v}")?;
        }
    }
    if let Some(state) = meta.get(STATE_KEY) {
        let s: TrainState = parse_entry(&file, STATE_KEY, state)?;
        writeln!(
            out,
            "state: step {}, stage {}, finished {}",
            s.global_step, s.stage, s.finished
        )?;
    }
    let missing: Vec<&str> = KEYS
        .iter()
        .copied()
        .filter(|k| !meta.contains_key(*k))
        .collect();
    if !missing.is_empty() {
        writeln!(
            out,
            "note: this checkpoint predates self-describing metadata; missing: {} (its run \
             directory's config.yaml describes the model)",
            missing.join(", ")
        )?;
    }
    if let Some(c) = meta.get("config") {
        writeln!(out, "config:")?;
        for line in c.lines() {
            writeln!(out, "  {line}")?;
        }
    }
    Ok(out)
}
