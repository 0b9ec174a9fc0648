//! `mtanet model info`: what a checkpoint says about itself, from its safetensors metadata
//! (written by training; a checkpoint from before these keys existed says which are missing,
//! and one of another mtanet checkpoint format has its entries printed as stored).

use std::fmt::Write as _;
use std::path::Path;

use crate::build::restore::VOCAB_KEY;
use crate::record::checkpoint::{
    is_another_format, parse_entry, read_metadata, TrainState, FORMAT, FORMAT_KEY, STATE_KEY,
};

/// The keys a training run writes, in the order `model info` prints them (`tuning` is added
/// by `mtanet tune` and printed when present).
const KEYS: [&str; 5] = ["vocab", "preprocess", "layout", "commit", "config"];

/// The text `mtanet model info` prints for a run directory (the checkpoint that `predict`
/// and `tune` use, [`crate::build::restore::resolve_checkpoint`]) or a checkpoint file. A
/// checkpoint of another mtanet format (which [`crate::record::checkpoint::load`] refuses) is
/// not read with this build's meaning of its entries: they are printed as stored, with a note.
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
    if let Some(other) = meta.get(FORMAT_KEY).filter(|f| is_another_format(f)) {
        writeln!(
            out,
            "note: this build reads `{FORMAT}`, not `{other}`, and cannot load this checkpoint; \
             its entries follow as stored, uninterpreted"
        )?;
        for (key, value) in meta.iter().filter(|(k, _)| k.as_str() != FORMAT_KEY) {
            write_block(&mut out, key, value)?;
        }
        return Ok(out);
    }
    if let Some(v) = meta.get(VOCAB_KEY) {
        let v: serde_json::Value = parse_entry(&file, VOCAB_KEY, v)?;
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
        write_block(&mut out, "config", c)?;
    }
    Ok(out)
}

/// `key:`, then each line of `value` indented by two spaces.
fn write_block(out: &mut String, key: &str, value: &str) -> std::fmt::Result {
    writeln!(out, "{key}:")?;
    for line in value.lines() {
        writeln!(out, "  {line}")?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A one-tensor safetensors file with the given metadata entries.
    fn file_with(dir: &Path, entries: &[(&str, &str)]) -> std::path::PathBuf {
        let path = dir.join("ckpt.safetensors");
        let t = candle_core::Tensor::zeros(2, candle_core::DType::F32, &candle_core::Device::Cpu)
            .unwrap();
        let meta = entries
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let bytes = safetensors::serialize([("w", &t)], Some(meta)).unwrap();
        std::fs::write(&path, bytes).unwrap();
        path
    }

    #[test]
    fn a_later_format_is_printed_as_stored_and_not_read_with_this_builds_fields() {
        let tmp = tempfile::tempdir().unwrap();
        // Entries this build could not parse: a later format may have changed their shape.
        let path = file_with(
            tmp.path(),
            &[
                (FORMAT_KEY, "mtanet-checkpoint-2"),
                (VOCAB_KEY, "[\"AU1\"]"),
                (STATE_KEY, "epoch 3\nof 5"),
            ],
        );
        let text = describe(&path).unwrap();
        for needle in [
            "format: mtanet-checkpoint-2\n",
            "note: this build reads `mtanet-checkpoint-1`, not `mtanet-checkpoint-2`",
            "state:\n  epoch 3\n  of 5\n",
            "vocab:\n  [\"AU1\"]\n",
        ] {
            assert!(text.contains(needle), "{needle:?} missing in:\n{text}");
        }
        assert!(!text.contains("AUs (head order)"), "{text}");
        assert!(!text.contains("predates"), "{text}");
    }

    #[test]
    fn this_builds_format_reads_its_entries() {
        let tmp = tempfile::tempdir().unwrap();
        let path = file_with(tmp.path(), &[(FORMAT_KEY, FORMAT), (STATE_KEY, "epoch 3")]);
        let err = describe(&path).unwrap_err();
        assert!(
            format!("{err:#}").contains("bad `state` metadata"),
            "{err:#}"
        );
    }
}
