//! Broken experiment files: each fails as the exact `ConfigError` variant, naming the file and
//! the key (and line for schema errors).

use mtanet_runner::experiment::{ConfigError, ExperimentFile};

const STAGE: &str = "training: {stages: [{name: a, optimizer: adam, lr: 0.001, epochs: 1}]}";

/// Parses and resolves (base, no profile or row).
fn resolve(text: &str) -> Result<mtanet_runner::experiment::Config, ConfigError> {
    ExperimentFile::parse("hostile.yaml", text)?.resolve(None, None, &[])
}

/// Expects a `Schema` error whose message names the file and contains every `needles`.
#[track_caller]
fn schema(text: &str, needles: &[&str]) {
    match resolve(text) {
        Err(e @ ConfigError::Schema { .. }) => {
            let msg = e.to_string();
            super::assert_names(&msg, "hostile.yaml");
            for n in needles {
                super::assert_names(&msg, n);
            }
        }
        other => panic!("expected Schema for {text:?}, got {other:?}"),
    }
}

/// Expects an `Invalid` error for exactly `key`, naming the file and the key.
#[track_caller]
fn invalid(text: &str, key: &str) {
    match resolve(text) {
        Err(e @ ConfigError::Invalid { .. }) => {
            let ConfigError::Invalid { key: k, .. } = &e else {
                unreachable!()
            };
            assert_eq!(k, key, "{e}");
            let msg = e.to_string();
            super::assert_names(&msg, "hostile.yaml");
            super::assert_names(&msg, key);
        }
        other => panic!("expected Invalid({key}) for {text:?}, got {other:?}"),
    }
}

#[test]
fn wrong_types() {
    schema(
        &format!("defaults:\n  data:\n    batch_size: eight\n  {STAGE}\n"),
        &["batch_size", "line 3"],
    );
    schema("defaults:\n  seed: [1, 2]\n", &["seed", "line 2"]);
    schema("defaults:\n  model: resnet50\n", &["model", "line 2"]);
    schema(
        "defaults:\n  model: {backbone: resnet51}\n",
        &["defaults.model.backbone", "resnet51", "line 2"],
    );
}

#[test]
fn unknown_keys() {
    schema(
        "defaults:\n  data:\n    batch_sise: 8\n",
        &["batch_sise", "line 3"],
    );
    schema("default:\n  seed: 1\n", &["`default`"]);
    schema(
        "defaults:\n  training:\n    stages:\n      - {lr: 0.1, epoch: 2}\n",
        &["epoch", "line 4"],
    );
    schema(
        "rows:\n  - {name: r, colour: red}\n",
        &["rows[0]", "colour", "line 2"],
    );
}

#[test]
fn missing_stages() {
    invalid("defaults:\n  training: {stages: []}\n", "training.stages");
    invalid(
        "defaults:\n  training: {stages: [{lr: 0.1, epochs: 0}]}\n",
        "training.stages[0].epochs",
    );
}

#[test]
fn negative_nan_and_infinite_learning_rates() {
    for lr in ["-0.001", "0", ".nan", ".inf", "-.inf"] {
        invalid(
            &format!("defaults:\n  training: {{stages: [{{lr: 0.1}}, {{lr: {lr}}}]}}\n"),
            "training.stages[1].lr",
        );
    }
}

#[test]
fn out_of_range_values() {
    invalid("defaults:\n  data: {batch_size: 0}\n", "data.batch_size");
    invalid("defaults:\n  data: {image_size: 8}\n", "data.image_size");
    invalid("defaults:\n  model: {width_div: 3}\n", "model.width_div");
    invalid(
        "defaults:\n  model: {depths: [1, 0, 1, 1]}\n",
        "model.depths",
    );
    invalid(
        "defaults:\n  model: {head: {dropout: 1.5}}\n",
        "model.head.dropout",
    );
    invalid(
        "defaults:\n  training: {grad_clip: -1}\n",
        "training.grad_clip",
    );
    invalid("defaults:\n  device: tpu:0\n", "device");
    invalid(
        "defaults:\n  training: {stages: [{lr: 0.1, momentum: 1.0}]}\n",
        "training.stages[0].momentum",
    );
    invalid(
        "defaults:\n  training: {stages: [{lr: 0.1, schedule: {kind: step, every: 0, gamma: 0.1}}]}\n",
        "training.stages[0].schedule.every",
    );
}

#[test]
fn huge_and_negative_numbers() {
    schema(
        "defaults:\n  seed: 99999999999999999999999\n",
        &["defaults.seed", "line 2"],
    );
    schema(
        "defaults:\n  data: {batch_size: -8}\n",
        &["defaults.data.batch_size", "line 2"],
    );
    schema(
        "defaults:\n  data: {batch_size: 1e400}\n",
        &["defaults.data.batch_size", "line 2"],
    );
}

#[test]
fn not_a_mapping_truncated_and_garbage() {
    schema("- just\n- a list\n", &["invalid type: sequence"]);
    schema("defaults:\n  data: {batch_size: 8\n", &["line 3", "line 2"]);
    schema(
        "\u{1}\u{2}\u{7f}garbage: [\n",
        &["control characters are not allowed"],
    );
    schema("defaults: &a\n  seed: *b\n", &["unknown anchor", "line 2"]);
}

#[test]
fn unknown_profile_and_row() {
    let f = ExperimentFile::parse("hostile.yaml", "profiles: {small: {seed: 1}}\n").unwrap();
    match f.resolve(Some("large"), None, &[]) {
        Err(
            e @ ConfigError::Unknown {
                what: "profile", ..
            },
        ) => {
            let msg = e.to_string();
            super::assert_names(&msg, "large");
            super::assert_names(&msg, "small");
        }
        other => panic!("{other:?}"),
    }
    match f.resolve(None, Some("r1"), &[]) {
        Err(e @ ConfigError::Unknown { what: "row", .. }) => {
            let msg = e.to_string();
            super::assert_names(&msg, "hostile.yaml");
            super::assert_names(&msg, "`r1`");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn bad_override_names_the_key() {
    let f = ExperimentFile::parse("hostile.yaml", "defaults: {seed: 1}\n").unwrap();
    let o: mtanet_runner::experiment::Override = "data.batch_size=many".parse().unwrap();
    match f.resolve(None, None, &[o]) {
        Err(e @ ConfigError::Schema { .. }) => {
            let msg = e.to_string();
            super::assert_names(&msg, "data.batch_size=many");
            super::assert_names(&msg, "hostile.yaml");
        }
        other => panic!("{other:?}"),
    }
    let e = "noequals"
        .parse::<mtanet_runner::experiment::Override>()
        .unwrap_err();
    assert!(matches!(e, ConfigError::Invalid { .. }), "{e:?}");
    assert_names_key(&e, "noequals");
}

fn assert_names_key(e: &ConfigError, key: &str) {
    super::assert_names(&e.to_string(), key);
}

#[test]
fn unreadable_files() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.yaml");
    let e = ExperimentFile::load(&missing).unwrap_err();
    assert!(matches!(e, ConfigError::Io { .. }), "{e:?}");
    super::assert_names(&e.to_string(), "missing.yaml");
    let binary = dir.path().join("binary.yaml");
    std::fs::write(&binary, b"defaults:\n  seed: \xff\xfe\n").unwrap();
    let e = ExperimentFile::load(&binary).unwrap_err();
    assert!(matches!(e, ConfigError::Io { .. }), "{e:?}");
    super::assert_names(&e.to_string(), "binary.yaml");
    let e = ExperimentFile::load(dir.path()).unwrap_err();
    assert!(matches!(e, ConfigError::Io { .. }), "{e:?}");
}
