//! A checkpoint loads only into the model it was made for, with finite values (rules 2, 3):
//! another backbone, an extra, missing or reshaped tensor, NaN or an infinity, or a later
//! checkpoint format are refused naming the file and what differs, by `predict` and by
//! `train --resume`, and leave every earlier result as it was.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use mtanet_runner::record::checkpoint;

use super::child::{copy_tree, fixture, mtanet, predict, snapshot, unchanged};

/// A copy of run A as `<tmp>/results/a/<run>`, with its checkpoint; returns the run folder.
fn copy_of_run_a(tmp: &Path) -> PathBuf {
    let fx = fixture();
    let dst = tmp.join("results/a").join(fx.run_a.file_name().unwrap());
    copy_tree(&fx.run_a, &dst);
    dst
}

/// Rewrites the checkpoint `path` with `edit` applied to its model and optimizer tensors.
fn edit_checkpoint(
    path: &Path,
    edit: impl FnOnce(&mut HashMap<String, Tensor>, &mut HashMap<String, Tensor>),
) {
    let mut c = checkpoint::load(path, &Device::Cpu).unwrap();
    edit(&mut c.model, &mut c.optim);
    checkpoint::save(path, &c.model, &c.optim, &c.state).unwrap();
}

/// Rewrites the `format` entry of the checkpoint `path`'s metadata to `format`, keeping its
/// tensors and every other entry.
fn with_format(path: &Path, format: &str) {
    let mut entries: HashMap<String, String> = checkpoint::read_metadata(path)
        .unwrap()
        .into_iter()
        .collect();
    entries.insert(checkpoint::FORMAT_KEY.to_string(), format.to_string());
    let tensors = candle_core::safetensors::load(path, &Device::Cpu).unwrap();
    let mut named: Vec<(&String, &Tensor)> = tensors.iter().collect();
    named.sort_by(|a, b| a.0.cmp(b.0));
    let out = safetensors::serialize(
        named.into_iter().map(|(k, t)| (k.as_str(), t)),
        Some(entries),
    )
    .unwrap();
    std::fs::write(path, out).unwrap();
}

/// `t` with its flat element `i` set to `v`.
fn with_value(t: &Tensor, i: usize, v: f32) -> Tensor {
    let mut values = t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    values[i] = v;
    Tensor::from_vec(values, t.dims(), &Device::Cpu).unwrap()
}

/// `train --resume DIR --quiet`.
/// `predict` of `run` into `tmp/out` is refused with every one of `needles` in its message, and
/// leaves the run's files as they were.
fn predict_refuses(tmp: &Path, run: &Path, needles: &[&str]) {
    let before = snapshot(&[run]);
    predict(tmp, run, &fixture().root, &tmp.join("out"), &[]).refused(needles);
    unchanged(&before, &[run]);
}

fn resume(cwd: &Path, dir: &Path) -> super::child::Outcome {
    mtanet(
        cwd,
        &[
            OsStr::new("train"),
            "--quiet".as_ref(),
            "--resume".as_ref(),
            dir.as_os_str(),
        ],
    )
}

/// Every file of a run folder but its log (which records the attempt).
fn results_of(run: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(run)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.file_name() != Some(OsStr::new("log.txt")))
        .collect();
    v.sort();
    v
}

#[test]
fn predict_refuses_a_checkpoint_of_another_backbone_naming_both_files() {
    let fx = fixture();
    let tmp = tempfile::tempdir().unwrap();
    let before = snapshot(&[&fx.run_a, &fx.run_b]);
    let ckpt = fx.run_b.join("checkpoints/last.safetensors");
    let out = tmp.path().join("out");
    let config = fx.run_a.join("config.yaml");
    predict(
        tmp.path(),
        &ckpt,
        &fx.root,
        &out,
        &["--config".as_ref(), config.as_os_str()],
    )
    .refused(&[
        &ckpt.display().to_string(),
        &config.display().to_string(),
        "backbone resnext50_32x4d_cbam",
        "missing from the checkpoint",
        "the model does not have",
        "se.fc1",
        "cbam",
    ]);
    assert!(!out.join("VA_Set").exists());
    unchanged(&before, &[&fx.run_a, &fx.run_b]);
}

#[test]
fn resume_refuses_a_checkpoint_of_another_backbone() {
    let fx = fixture();
    let tmp = tempfile::tempdir().unwrap();
    let run = copy_of_run_a(tmp.path());
    let ckpt = run.join("checkpoints/last.safetensors");
    std::fs::copy(fx.run_b.join("checkpoints/last.safetensors"), &ckpt).unwrap();
    let kept = results_of(&run);
    let before = snapshot(&kept.iter().map(PathBuf::as_path).collect::<Vec<_>>());
    resume(tmp.path(), &run).refused(&[
        &ckpt.display().to_string(),
        "made for another model",
        "se.fc1",
    ]);
    unchanged(
        &before,
        &kept.iter().map(PathBuf::as_path).collect::<Vec<_>>(),
    );
}

/// A run's `config.yaml` edited in a key no tensor shape shows (the valence/arousal
/// activation) no longer describes its weights: `predict` names the key and the file.
#[test]
fn predict_refuses_a_config_whose_model_differs_in_a_key_no_shape_shows() {
    let tmp = tempfile::tempdir().unwrap();
    let run = copy_of_run_a(tmp.path());
    let config = run.join("config.yaml");
    let yaml = std::fs::read_to_string(&config).unwrap();
    assert!(yaml.contains("va_activation: tanh"), "{yaml}");
    std::fs::write(
        &config,
        yaml.replace("va_activation: tanh", "va_activation: none"),
    )
    .unwrap();
    predict_refuses(
        tmp.path(),
        &run,
        &[
            "checkpoints/last.safetensors",
            "model.head.va_activation",
            "trained with \"tanh\"",
        ],
    );
}

#[test]
fn predict_refuses_a_checkpoint_with_an_extra_tensor() {
    let tmp = tempfile::tempdir().unwrap();
    let run = copy_of_run_a(tmp.path());
    let ckpt = run.join("checkpoints/last.safetensors");
    edit_checkpoint(&ckpt, |model, _| {
        let t = model["head.va.weight"].clone();
        model.insert("head.va2.weight".into(), t);
    });
    predict_refuses(
        tmp.path(),
        &run,
        &[
            &ckpt.display().to_string(),
            "1 checkpoint tensor(s) the model does not have (head.va2.weight)",
        ],
    );
}

#[test]
fn predict_refuses_a_checkpoint_missing_a_tensor() {
    let tmp = tempfile::tempdir().unwrap();
    let run = copy_of_run_a(tmp.path());
    let ckpt = run.join("checkpoints/last.safetensors");
    edit_checkpoint(&ckpt, |model, _| {
        model.remove("backbone.layer2.0.bn1.running_var").unwrap();
    });
    predict_refuses(
        tmp.path(),
        &run,
        &[
            &ckpt.display().to_string(),
            "1 model tensor(s) missing from the checkpoint (backbone.layer2.0.bn1.running_var)",
        ],
    );
}

#[test]
fn predict_refuses_a_config_of_another_width_naming_the_shapes() {
    let tmp = tempfile::tempdir().unwrap();
    let run = copy_of_run_a(tmp.path());
    let config = run.join("config.yaml");
    let text = std::fs::read_to_string(&config).unwrap();
    assert!(text.contains("width_div: 16"), "{text}");
    std::fs::write(&config, text.replace("width_div: 16", "width_div: 8")).unwrap();
    predict_refuses(
        tmp.path(),
        &run,
        &[
            &config.display().to_string(),
            "width_div 8",
            "of another shape",
            "`backbone.bn1.bias` checkpoint [4], model [8]",
        ],
    );
}

#[test]
fn predict_refuses_nan_in_a_conv_weight_naming_tensor_and_index() {
    let tmp = tempfile::tempdir().unwrap();
    let run = copy_of_run_a(tmp.path());
    let ckpt = run.join("checkpoints/last.safetensors");
    edit_checkpoint(&ckpt, |model, _| {
        let t = with_value(&model["backbone.conv1.weight"], 5, f32::NAN);
        model.insert("backbone.conv1.weight".into(), t);
    });
    let before = snapshot(&[&run]);
    let out = tmp.path().join("out");
    predict(tmp.path(), &run, &fixture().root, &out, &[]).refused(&[
        &ckpt.display().to_string(),
        "`model.backbone.conv1.weight` holds NaN at flat index 5",
    ]);
    assert!(!out.join("VA_Set").exists());
    unchanged(&before, &[&run]);
}

#[test]
fn resume_refuses_an_infinity_in_a_training_only_tensor() {
    // The uncertainty weights, which prediction ignores, are checked too.
    let tmp = tempfile::tempdir().unwrap();
    let run = copy_of_run_a(tmp.path());
    let ckpt = run.join("checkpoints/last.safetensors");
    let mut name = String::new();
    edit_checkpoint(&ckpt, |model, _| {
        let mut names: Vec<&String> = model
            .keys()
            .filter(|k| k.starts_with("uncertainty."))
            .collect();
        names.sort();
        name = names.first().expect("uncertainty weights").to_string();
        let t = with_value(&model[&name], 0, f32::NEG_INFINITY);
        model.insert(name.clone(), t);
    });
    let kept = results_of(&run);
    let before = snapshot(&kept.iter().map(PathBuf::as_path).collect::<Vec<_>>());
    resume(tmp.path(), &run).refused(&[
        &ckpt.display().to_string(),
        &format!("`model.{name}` holds -inf at flat index 0"),
    ]);
    unchanged(
        &before,
        &kept.iter().map(PathBuf::as_path).collect::<Vec<_>>(),
    );
}

#[test]
fn predict_stops_at_a_non_finite_output_naming_its_frame() {
    // Finite weights whose sums overflow: every expression logit is +inf, and their softmax
    // NaN.
    let tmp = tempfile::tempdir().unwrap();
    let run = copy_of_run_a(tmp.path());
    let ckpt = run.join("checkpoints/last.safetensors");
    edit_checkpoint(&ckpt, |model, _| {
        for name in ["head.expr.weight", "head.expr.bias"] {
            let t = &model[name];
            let huge = (t.ones_like().unwrap() * f64::from(f32::MAX)).unwrap();
            model.insert(name.into(), huge);
        }
    });
    let out = tmp.path().join("out");
    let o = predict(tmp.path(), &run, &fixture().root, &out, &[]);
    o.refused(&["non-finite model output for", "cropped_aligned", ".jpg"]);
    assert!(!out.join("VA_Set").exists());
}

#[test]
fn predict_and_resume_refuse_a_checkpoint_of_a_later_format_naming_both() {
    let tmp = tempfile::tempdir().unwrap();
    let run = copy_of_run_a(tmp.path());
    let ckpt = run.join("checkpoints/last.safetensors");
    with_format(&ckpt, "mtanet-checkpoint-2");
    let needles = [
        ckpt.display().to_string(),
        "checkpoint format `mtanet-checkpoint-2`".to_string(),
        "this build reads `mtanet-checkpoint-1`".to_string(),
    ];
    let needles: Vec<&str> = needles.iter().map(String::as_str).collect();
    predict_refuses(tmp.path(), &run, &needles);
    let kept = results_of(&run);
    let before = snapshot(&kept.iter().map(PathBuf::as_path).collect::<Vec<_>>());
    resume(tmp.path(), &run).refused(&needles);
    unchanged(
        &before,
        &kept.iter().map(PathBuf::as_path).collect::<Vec<_>>(),
    );
}
