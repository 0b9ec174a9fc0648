//! `mtanet predict --frames DIR`: a plain folder of face crops, one `predictions.csv` row per
//! image with the outputs, the decisions and the expression name.

use std::path::Path;

use anyhow::Context;

use mtanet_affwild2::layout::discover;
use mtanet_affwild2::Vocab;

use super::plan::{root_vocab, vocab_for};
use super::{decide, predict_images, progress, FrameDecision, FrameOutput};
use super::{PredictError, PredictOptions, PredictSummary};
use crate::build::restore::LoadedModel;
use crate::record::atomic_io::{csv_field, write_atomic};

/// Every `.jpg`/`.jpeg` of `dir` (sorted by name) into `predictions.csv`.
pub(super) fn run_frames(
    m: &LoadedModel,
    opts: &PredictOptions,
    dir: &Path,
    batch: usize,
    mut summary: PredictSummary,
) -> anyhow::Result<PredictSummary> {
    let root_vocab = match &opts.root {
        Some(r) => Some(root_vocab(&discover(r)?)?),
        None => None,
    };
    let columns = vocab_for(
        root_vocab,
        opts.root.as_deref().unwrap_or(dir),
        &m.vocab,
        &m.checkpoint,
    )?;
    let names = jpg_names(dir)?;
    let jpgs: Vec<_> = names.iter().map(|n| dir.join(n)).collect();
    let pb = progress(jpgs.len(), opts.quiet, "predict");
    // A plain folder of crops may hold any size: always resize to the network input.
    let outputs = predict_images(m, &jpgs, batch, true, &pb, &mut summary.bad_frames)?;
    pb.finish_and_clear();
    let kept: Vec<(&String, FrameOutput)> = names
        .iter()
        .zip(outputs)
        .filter_map(|(n, o)| o.map(|o| (n, o)))
        .collect();
    let outs: Vec<FrameOutput> = kept.iter().map(|(_, o)| o.clone()).collect();
    let decisions: Vec<FrameDecision> = decide(&outs, opts.smooth, &summary.thresholds)
        .into_iter()
        .map(|d| columns.apply(d))
        .collect();
    let kept_names: Vec<&str> = kept.iter().map(|(n, _)| n.as_str()).collect();
    let text = csv_text(&kept_names, &decisions, &columns.vocab);
    let path = opts.out.join("predictions.csv");
    write_atomic(&path, text.as_bytes())?;
    summary.predicted = kept.len();
    summary.frames = kept.len();
    summary.files.push(path);
    Ok(summary)
}

/// The `.jpg` / `.jpeg` file names of `dir` (any case), sorted; an error if there is none.
fn jpg_names(dir: &Path) -> anyhow::Result<Vec<String>> {
    let mut names: Vec<String> = Vec::new();
    for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let entry = entry.with_context(|| format!("reading {}", dir.display()))?;
        let Some(name) = entry.file_name().to_str().map(str::to_string) else {
            continue;
        };
        let lower = name.to_ascii_lowercase();
        if (lower.ends_with(".jpg") || lower.ends_with(".jpeg")) && entry.path().is_file() {
            names.push(name);
        }
    }
    names.sort();
    if names.is_empty() {
        return Err(PredictError::NoVideos {
            root: dir.to_path_buf(),
            what: "the frames folder (no .jpg files)".into(),
        }
        .into());
    }
    Ok(names)
}

/// The CSV: `file,valence,arousal`, the AU probabilities (`<AU>_prob`), the AU decisions,
/// the expression probabilities (`<class>_prob`), the expression name; one row per image.
fn csv_text(names: &[&str], decisions: &[FrameDecision], vocab: &Vocab) -> String {
    let mut header: Vec<String> = vec!["file".into(), "valence".into(), "arousal".into()];
    header.extend(vocab.au_names.iter().map(|n| format!("{n}_prob")));
    header.extend(vocab.au_names.iter().cloned());
    header.extend(vocab.expr_names.iter().map(|n| format!("{n}_prob")));
    header.push("expression".into());
    let mut text = header
        .iter()
        .map(|h| csv_field(h))
        .collect::<Vec<_>>()
        .join(",");
    text.push('\n');
    for (name, d) in names.iter().zip(decisions) {
        let mut row = vec![csv_field(name), d.va[0].to_string(), d.va[1].to_string()];
        row.extend(d.au_probs.iter().map(f32::to_string));
        row.extend(d.au.iter().map(u8::to_string));
        row.extend(d.expr_probs.iter().map(f32::to_string));
        row.push(csv_field(
            vocab.expr_names.get(d.expr).map_or("", String::as_str),
        ));
        text.push_str(&row.join(","));
        text.push('\n');
    }
    text
}
