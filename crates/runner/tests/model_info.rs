//! Checkpoints describe themselves: a trained run's checkpoint carries its vocabulary,
//! configuration, preprocessing, layout and commit, `model info` prints them, and a checkpoint
//! without them (written before they existed) still reads, with a note.

use std::collections::HashMap;

use mtanet_runner::model_info::describe;
use mtanet_runner::record::checkpoint::{self, read_metadata, TrainState};
use mtanet_runner::training::{self as train, RunContext};

mod support;

#[test]
fn a_trained_checkpoint_describes_itself_and_an_old_one_says_what_is_missing() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = support::tiny_config(
        &tmp.path().join("results"),
        &tmp.path().join("synth"),
        &["training.stages.1.steps=1"],
    );
    let out = train::run(
        &cfg,
        &RunContext {
            quiet: true,
            ..Default::default()
        },
    )
    .unwrap();
    let ckpt = out.run_dir.join("checkpoints/last.safetensors");
    let meta = read_metadata(&ckpt).unwrap();
    let vocab: mtanet_affwild2::Vocab = serde_json::from_str(&meta["vocab"]).unwrap();
    assert_eq!(vocab, mtanet_affwild2::Vocab::abaw2020());
    let pre: serde_json::Value = serde_json::from_str(&meta["preprocess"]).unwrap();
    assert_eq!(
        (pre["channels"].as_str(), pre["size"].as_u64()),
        (Some("RGB"), Some(48))
    );
    assert!(meta["config"].contains("resnext50_32x4d_cbam"));
    assert_eq!(meta["layout"], "Abaw2020");

    let text = describe(&out.run_dir).unwrap();
    for needle in [
        "AUs (head order): AU1, AU2, AU4, AU6, AU12, AU15, AU20, AU25",
        "expressions (head order): Neutral, Anger",
        "preprocess: ",
        "layout: Abaw2020",
        "commit: ",
        "finished true",
        "backbone: resnext50_32x4d_cbam",
    ] {
        assert!(text.contains(needle), "{needle:?} missing in:\n{text}");
    }
    assert!(!text.contains("note:"), "{text}");

    // A checkpoint with only the loop state (the format before self-description).
    let old = tmp.path().join("old.safetensors");
    let c = checkpoint::load(&ckpt, &candle_core::Device::Cpu).unwrap();
    checkpoint::save(&old, &c.model, &HashMap::new(), &TrainState::default()).unwrap();
    let text = describe(&old).unwrap();
    assert!(
        text.contains("note: this checkpoint predates") && text.contains("vocab"),
        "{text}"
    );
}

#[test]
fn a_run_with_three_decoder_layers_loads_for_inference() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = support::tiny_config(
        &tmp.path().join("results"),
        &tmp.path().join("synth"),
        &["training.stages.1.steps=1", "model.head.decoder_layers=3"],
    );
    let out = train::run(
        &cfg,
        &RunContext {
            quiet: true,
            ..Default::default()
        },
    )
    .unwrap();
    let m = mtanet_runner::build::restore::load_model(&out.run_dir, None, Some("cpu")).unwrap();
    assert_eq!(m.config.model.head.decoder_layers, 3);
    assert_eq!(m.vocab, mtanet_affwild2::Vocab::abaw2020());
}
