//! The TensorBoard HParams plugin's summaries of a run, so the HParams dashboard sets the rows
//! of an experiment (`table1`, `heads`, ...) side by side, and the resolved configuration as
//! a text summary.
//!
//! At the start of a run [`start`] writes the `config` text (the resolved `config.yaml`), the
//! experiment summary (`_hparams_/experiment`: every hyperparameter of [`HPARAM_KEYS`] and
//! every metric of [`METRIC_KEYS`]) and the session start (`_hparams_/session_start_info`:
//! this run's values); when it finishes [`end`] writes `_hparams_/session_end_info` with
//! status success. The metrics are the `val/<key>` scalars the evaluations write, so the
//! dashboard shows each run's last evaluation. Every run writes the same experiment summary
//! (the fixed key list, not the keys one experiment file varies), so whichever run TensorBoard
//! reads it from, it describes every run under `results/`.
//!
//! The protobufs (tensorboard `plugins/hparams/plugin_data.proto`, `api.proto`,
//! `google/protobuf/struct.proto`) are encoded by hand like the rest of the event file.

use std::collections::BTreeMap;

use serde_yaml::Value;

use crate::experiment::Config;
use crate::record::tensorboard::{bytes_field, double_field, varint_field, wall_time, EventWriter};

/// The HParams plugin's name in `SummaryMetadata.plugin_data`.
pub const PLUGIN_NAME: &str = "hparams";
/// Tag of the experiment summary.
pub const EXPERIMENT_TAG: &str = "_hparams_/experiment";
/// Tag of a session's start.
pub const SESSION_START_TAG: &str = "_hparams_/session_start_info";
/// Tag of a session's end.
pub const SESSION_END_TAG: &str = "_hparams_/session_end_info";
/// Tag of the resolved configuration's text summary.
pub const CONFIG_TAG: &str = "config";

/// The hyperparameters every run reports: `experiment`, `seed`, `profile` and `row` (the run
/// context; empty text when a run has no profile or row), then keys of the resolved
/// configuration, `*` standing for every index of a list (each stage). It covers every key
/// the rows of `experiments/*.yaml` set (a test checks this) and the usual other axes.
pub const HPARAM_KEYS: &[&str] = &[
    "experiment",
    "seed",
    "profile",
    "row",
    "model.backbone",
    "model.width_div",
    "model.head.hidden",
    "model.head.dropout",
    "model.head.decoder_layers",
    "model.head.pooling",
    "losses.au_reduction",
    "selection.criterion",
    "training.stages.*.optimizer",
    "training.stages.*.lr",
    "training.stages.*.loss",
];

/// The metrics of the HParams dashboard: the `Report::scalars` keys of the task summaries,
/// read from the `val/<key>` scalars (per-AU and per-class F1 are left to the scalars
/// dashboard).
pub const METRIC_KEYS: &[&str] = &[
    "va.ccc_valence",
    "va.ccc_arousal",
    "va.score",
    "au.f1",
    "au.accuracy",
    "au.score",
    "au.f1_tuned",
    "au.accuracy_tuned",
    "au.score_tuned",
    "expr.f1",
    "expr.accuracy",
    "expr.score",
];

/// A hyperparameter value as the HParams plugin types it.
#[derive(Debug, Clone, PartialEq)]
pub enum HValue {
    /// `DATA_TYPE_STRING` (`null` and lists are written as their YAML text).
    Text(String),
    /// `DATA_TYPE_FLOAT64`.
    Number(f64),
    /// `DATA_TYPE_BOOL`.
    Bool(bool),
}

impl HValue {
    fn of(v: &Value) -> Self {
        match v {
            Value::Bool(b) => HValue::Bool(*b),
            Value::Number(n) => HValue::Number(n.as_f64().unwrap_or(f64::NAN)),
            Value::String(s) => HValue::Text(s.clone()),
            Value::Null => HValue::Text("null".into()),
            other => HValue::Text(
                serde_yaml::to_string(other)
                    .unwrap_or_default()
                    .trim()
                    .to_string(),
            ),
        }
    }

    /// `api.proto` `DataType`.
    fn data_type(&self) -> u64 {
        match self {
            HValue::Text(_) => 1,
            HValue::Bool(_) => 2,
            HValue::Number(_) => 3,
        }
    }

    /// A `google.protobuf.Value`.
    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        match self {
            HValue::Number(x) => double_field(&mut out, 2, *x),
            HValue::Text(s) => bytes_field(&mut out, 3, s.as_bytes()),
            HValue::Bool(b) => varint_field(&mut out, 4, u64::from(*b)),
        }
        out
    }
}

/// The values at a dotted `pattern` of `root` (`*` and numbers index lists), with their
/// concrete keys; a pattern that is absent gives nothing.
fn lookup(root: &Value, pattern: &str) -> Vec<(String, Value)> {
    let mut found = vec![(Vec::<String>::new(), root.clone())];
    for part in pattern.split('.') {
        let mut next = Vec::new();
        for (path, node) in found {
            match (part, &node) {
                ("*", Value::Sequence(items)) => {
                    for (i, item) in items.iter().enumerate() {
                        let mut p = path.clone();
                        p.push(i.to_string());
                        next.push((p, item.clone()));
                    }
                }
                (_, Value::Sequence(items)) => {
                    if let Some(item) = part.parse::<usize>().ok().and_then(|i| items.get(i)) {
                        let mut p = path.clone();
                        p.push(part.to_string());
                        next.push((p, item.clone()));
                    }
                }
                (_, Value::Mapping(m)) => {
                    if let Some(child) = m.get(part) {
                        let mut p = path.clone();
                        p.push(part.to_string());
                        next.push((p, child.clone()));
                    }
                }
                _ => {}
            }
        }
        found = next;
    }
    found.into_iter().map(|(p, v)| (p.join("."), v)).collect()
}

/// This run's hyperparameters: every key of [`HPARAM_KEYS`] that the configuration has.
pub fn hparams(
    config: &Config,
    profile: Option<&str>,
    row: Option<&str>,
) -> BTreeMap<String, HValue> {
    let mut out = BTreeMap::new();
    out.insert("profile".into(), HValue::Text(profile.unwrap_or("").into()));
    out.insert("row".into(), HValue::Text(row.unwrap_or("").into()));
    let root = serde_yaml::to_value(config).unwrap_or(Value::Null);
    for pattern in HPARAM_KEYS {
        if matches!(*pattern, "profile" | "row") {
            continue;
        }
        for (key, v) in lookup(&root, pattern) {
            out.insert(key, HValue::of(&v));
        }
    }
    out
}

/// An `HParamsPluginData` (version 0) holding `field` = `message`.
fn plugin_data(field: u32, message: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    bytes_field(&mut out, field, message);
    out
}

/// The `HParamsPluginData` of a session start: the hparams map and the start time.
pub fn session_start_content(hparams: &BTreeMap<String, HValue>, start_time: f64) -> Vec<u8> {
    let mut info = Vec::new();
    for (k, v) in hparams {
        let mut entry = Vec::new();
        bytes_field(&mut entry, 1, k.as_bytes());
        bytes_field(&mut entry, 2, &v.encode());
        bytes_field(&mut info, 1, &entry);
    }
    double_field(&mut info, 5, start_time);
    plugin_data(3, &info)
}

/// The `HParamsPluginData` of the experiment: one `HParamInfo` per hyperparameter (typed by
/// this run's value) and one validation `MetricInfo` per `val/<key>` of `metrics`.
pub fn experiment_content(
    hparams: &BTreeMap<String, HValue>,
    metrics: &[&str],
    time_created: f64,
) -> Vec<u8> {
    let mut exp = Vec::new();
    double_field(&mut exp, 3, time_created);
    for (k, v) in hparams {
        let mut info = Vec::new();
        bytes_field(&mut info, 1, k.as_bytes());
        varint_field(&mut info, 4, v.data_type());
        bytes_field(&mut exp, 4, &info);
    }
    for m in metrics {
        let mut name = Vec::new();
        bytes_field(&mut name, 2, format!("val/{m}").as_bytes());
        let mut info = Vec::new();
        bytes_field(&mut info, 1, &name);
        varint_field(&mut info, 5, 2); // DATASET_VALIDATION
        bytes_field(&mut exp, 5, &info);
    }
    plugin_data(2, &exp)
}

/// The `HParamsPluginData` of a session end with status success (`STATUS_SUCCESS`).
pub fn session_end_content(end_time: f64) -> Vec<u8> {
    let mut info = Vec::new();
    varint_field(&mut info, 1, 1);
    double_field(&mut info, 2, end_time);
    plugin_data(4, &info)
}

/// The resolved configuration as markdown: a line naming the run's context, then the YAML
/// as a code block.
pub fn config_markdown(config: &Config, profile: Option<&str>, row: Option<&str>) -> String {
    let mut md = format!(
        "experiment `{}`, profile `{}`, row `{}`, seed {}\n\n",
        config.experiment,
        profile.unwrap_or("-"),
        row.unwrap_or("-"),
        config.seed
    );
    for line in config.to_yaml().lines() {
        md.push_str("    ");
        md.push_str(line);
        md.push('\n');
    }
    md
}

/// Stops TensorBoard output after a failed write (training goes on).
fn give_up(tb: &mut Option<EventWriter>, e: std::io::Error) {
    tracing::warn!(
        "TensorBoard write failed ({e}); logging to TensorBoard stops, training goes on"
    );
    *tb = None;
}

/// Writes the start of a run: the `config` text, the experiment summary and this run's
/// session start (hyperparameters of [`hparams`]). A failed write is logged and stops
/// TensorBoard output only.
pub fn start(
    tb: &mut Option<EventWriter>,
    config: &Config,
    profile: Option<&str>,
    row: Option<&str>,
) {
    let Some(w) = tb.as_mut() else { return };
    let values = hparams(config, profile, row);
    let now = wall_time();
    let res = w
        .text(CONFIG_TAG, &config_markdown(config, profile, row), 0)
        .and_then(|()| {
            w.plugin_summary(
                EXPERIMENT_TAG,
                PLUGIN_NAME,
                &experiment_content(&values, METRIC_KEYS, now),
                0,
            )
        })
        .and_then(|()| {
            w.plugin_summary(
                SESSION_START_TAG,
                PLUGIN_NAME,
                &session_start_content(&values, now),
                0,
            )
        })
        .and_then(|()| w.flush());
    if let Err(e) = res {
        give_up(tb, e);
    }
}

/// Writes the end of a run that `finished` (session end, status success); a run that stopped
/// early gets nothing, as it goes on when resumed.
pub fn end(tb: &mut Option<EventWriter>, finished: bool, step: u64) {
    if !finished {
        return;
    }
    let Some(w) = tb.as_mut() else { return };
    let res = w
        .plugin_summary(
            SESSION_END_TAG,
            PLUGIN_NAME,
            &session_end_content(wall_time()),
            step,
        )
        .and_then(|()| w.flush());
    if let Err(e) = res {
        give_up(tb, e);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::experiment::ExperimentFile;
    use std::path::Path;

    fn experiments_dir() -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../experiments")
    }

    /// Whether a concrete key (`training.stages.1.loss`) matches a pattern of [`HPARAM_KEYS`].
    fn matches(pattern: &str, key: &str) -> bool {
        let (p, k): (Vec<_>, Vec<_>) = (pattern.split('.').collect(), key.split('.').collect());
        p.len() == k.len()
            && p.iter()
                .zip(&k)
                .all(|(p, k)| p == k || (*p == "*" && k.parse::<usize>().is_ok()))
    }

    #[test]
    fn every_row_key_of_every_experiment_file_is_a_hyperparameter() {
        let mut files = 0;
        for entry in std::fs::read_dir(experiments_dir()).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().and_then(|e| e.to_str()) != Some("yaml") {
                continue;
            }
            files += 1;
            let text = std::fs::read_to_string(&path).unwrap();
            let file = ExperimentFile::parse(&path.display().to_string(), &text).unwrap();
            let raw: Value = serde_yaml::from_str(&text).unwrap();
            let rows = raw.get("rows").and_then(Value::as_sequence).cloned();
            for (spec, row) in file.rows.iter().zip(rows.unwrap_or_default()) {
                let Some(set) = row.get("set") else { continue };
                let profile = file.profile_names().into_iter().next();
                let config = file
                    .resolve(profile.as_deref(), Some(&spec.name), &[])
                    .unwrap();
                let values = hparams(&config, profile.as_deref(), Some(&spec.name));
                for (key, _) in leaves(set) {
                    // The weights go with the backbone, which is a hyperparameter.
                    if key == "model.pretrained" {
                        continue;
                    }
                    let covered = HPARAM_KEYS.iter().any(|p| matches(p, &key));
                    assert!(
                        covered,
                        "{}: row {} sets `{key}`",
                        path.display(),
                        spec.name
                    );
                    assert!(values.contains_key(&key), "{key}");
                }
                assert_eq!(values["row"], HValue::Text(spec.name.clone()));
            }
        }
        assert!(files >= 4, "found {files} experiment files");
    }

    /// Every leaf of `v` with its dotted key (list items by index).
    fn leaves(v: &Value) -> Vec<(String, Value)> {
        fn walk(v: &Value, prefix: &str, out: &mut Vec<(String, Value)>) {
            let join = |k: &str| {
                if prefix.is_empty() {
                    k.to_string()
                } else {
                    format!("{prefix}.{k}")
                }
            };
            match v {
                Value::Mapping(m) => {
                    for (k, child) in m {
                        walk(child, &join(k.as_str().unwrap_or_default()), out);
                    }
                }
                Value::Sequence(items) => {
                    for (i, child) in items.iter().enumerate() {
                        walk(child, &join(&i.to_string()), out);
                    }
                }
                leaf => out.push((prefix.to_string(), leaf.clone())),
            }
        }
        let mut out = Vec::new();
        walk(v, "", &mut out);
        out
    }

    #[test]
    fn values_come_from_the_resolved_config_and_the_context() {
        let file = ExperimentFile::parse(
            "loss_weighting",
            &std::fs::read_to_string(experiments_dir().join("loss_weighting.yaml")).unwrap(),
        )
        .unwrap();
        let config = file.resolve(Some("demo"), Some("sum_only"), &[]).unwrap();
        let v = hparams(&config, Some("demo"), Some("sum_only"));
        assert_eq!(v["profile"], HValue::Text("demo".into()));
        assert_eq!(v["experiment"], HValue::Text("loss_weighting".into()));
        assert_eq!(v["seed"], HValue::Number(0.0));
        assert_eq!(v["model.backbone"], HValue::Text("senet50_vggface2".into()));
        assert_eq!(v["training.stages.0.loss"], HValue::Text("sum".into()));
        assert_eq!(v["training.stages.1.loss"], HValue::Text("sum".into()));
        assert!(matches!(v["training.stages.0.lr"], HValue::Number(_)));
        let none = hparams(&config, None, None);
        assert_eq!(none["row"], HValue::Text(String::new()));
    }

    #[test]
    fn encodings_match_tensorboards_protobufs() {
        // Bytes from tensorboard 2.21's plugin_data_pb2 for the same messages.
        let mut h = BTreeMap::new();
        h.insert("a".to_string(), HValue::Text("x".into()));
        h.insert("b".to_string(), HValue::Number(0.5));
        h.insert("c".to_string(), HValue::Bool(true));
        let start = session_start_content(&h, 2.0);
        let expect: &[u8] = &[
            0x1a, 0x2c, 0x0a, 0x08, 0x0a, 0x01, b'a', 0x12, 0x03, 0x1a, 0x01, b'x', 0x0a, 0x0e,
            0x0a, 0x01, b'b', 0x12, 0x09, 0x11, 0, 0, 0, 0, 0, 0, 0xe0, 0x3f, 0x0a, 0x07, 0x0a,
            0x01, b'c', 0x12, 0x02, 0x20, 0x01, 0x29, 0, 0, 0, 0, 0, 0, 0, 0x40,
        ];
        assert_eq!(start, expect);
        let end = session_end_content(2.0);
        assert_eq!(
            end,
            [0x22, 0x0b, 0x08, 0x01, 0x11, 0, 0, 0, 0, 0, 0, 0, 0x40]
        );
        let exp = experiment_content(&h, &["au.f1"], 2.0);
        let expect: &[u8] = &[
            0x12, 0x2f, 0x19, 0, 0, 0, 0, 0, 0, 0, 0x40, 0x22, 0x05, 0x0a, 0x01, b'a', 0x20, 0x01,
            0x22, 0x05, 0x0a, 0x01, b'b', 0x20, 0x03, 0x22, 0x05, 0x0a, 0x01, b'c', 0x20, 0x02,
            0x2a, 0x0f, 0x0a, 0x0b, 0x12, 0x09, b'v', b'a', b'l', b'/', b'a', b'u', b'.', b'f',
            b'1', 0x28, 0x02,
        ];
        assert_eq!(exp, expect);
    }

    #[test]
    fn start_and_end_write_four_summaries() {
        let d = tempfile::tempdir().unwrap();
        let mut tb = Some(EventWriter::create(d.path()).unwrap());
        let config = Config::default();
        start(&mut tb, &config, Some("demo"), Some("resnet50"));
        end(&mut tb, false, 7);
        end(&mut tb, true, 7);
        let path = tb.as_ref().unwrap().path().to_path_buf();
        drop(tb);
        let bytes = std::fs::read(path).unwrap();
        let count = |needle: &[u8]| bytes.windows(needle.len()).filter(|w| *w == needle).count();
        for tag in [EXPERIMENT_TAG, SESSION_START_TAG, SESSION_END_TAG] {
            assert_eq!(count(tag.as_bytes()), 1, "{tag}");
        }
        assert_eq!(count(b"\x0a\x07hparams"), 3);
        assert!(count(b"    model:") == 1 && count(b"row `resnet50`") == 1);
    }
}
