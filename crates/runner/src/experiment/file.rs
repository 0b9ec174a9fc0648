//! The experiment schema: YAML files with `defaults`, named `profiles` and table `rows`.
//!
//! An experiment file is data (as in lightning-hydra-template / timm `train.py`): a base
//! configuration, profiles that override fields (`demo`, `paper`), and optional rows (one per
//! backbone of Table I). Every key is checked against this schema when the file is read, so a
//! typo fails with its line and column; overrides are merged as YAML values and checked again.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_yaml::Value;

use super::{Config, ConfigError, Override};
use mtanet_metrics::Scoring;

/// The paper's reported values for one Table I row.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PaperValues {
    /// CCC valence.
    pub valence: f64,
    /// CCC arousal.
    pub arousal: f64,
    /// AU column.
    pub au: f64,
    /// Expression column.
    pub expr: f64,
    /// Which metric the paper's AU figure is: `f1` (MTANet rows) or `composite` (the ABAW
    /// 2020 baseline's 0.5 F1 + 0.5 accuracy); deltas compare ours of the same kind.
    #[serde(default)]
    pub au_metric: PaperMetric,
    /// Which metric the paper's expression figure is: `f1` or `composite`
    /// (0.67 F1 + 0.33 accuracy).
    #[serde(default)]
    pub expr_metric: PaperMetric,
}

/// The kind of a paper figure for a classification task.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum PaperMetric {
    /// The task's F1 (macro F1 for expressions, mean per-AU F1 for AUs).
    #[default]
    F1,
    /// The ABAW 2020 composite score of the task.
    Composite,
}

impl PaperValues {
    /// The paper's figures as (valence, arousal, au, expr).
    pub fn figures(&self) -> [f64; 4] {
        [self.valence, self.arousal, self.au, self.expr]
    }

    /// Our figures that compare like with like with [`PaperValues::figures`], from our
    /// `Report::scalars` values (`get`): the CCCs, and for AU and EXPR the F1 or, where the
    /// paper's figure is a composite, the ABAW 2020 composite of our F1 and accuracy, whatever
    /// scoring the run's own `score` columns follow (a 2022+ release scores F1 alone). `get`
    /// may be a mean over seeds: the composite is linear.
    pub fn ours(&self, get: impl Fn(&str) -> Option<f64>) -> [Option<f64>; 4] {
        let composite = |task: &str, combine: fn(Scoring, f64, f64) -> f64| {
            Some(combine(
                Scoring::Abaw2020,
                get(&format!("{task}.f1"))?,
                get(&format!("{task}.accuracy"))?,
            ))
        };
        [
            get("va.ccc_valence"),
            get("va.ccc_arousal"),
            match self.au_metric {
                PaperMetric::F1 => get("au.f1"),
                PaperMetric::Composite => composite("au", Scoring::au),
            },
            match self.expr_metric {
                PaperMetric::F1 => get("expr.f1"),
                PaperMetric::Composite => composite("expr", Scoring::expr),
            },
        ]
    }
}

/// One row of a table experiment.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RowSpec {
    /// Row name (`resnet50`, ...).
    pub name: String,
    /// Overrides applied on top of the profile for this row.
    #[serde(default)]
    pub set: Option<Config>,
    /// The paper's values, when the paper has this row.
    #[serde(default)]
    pub paper: Option<PaperValues>,
    /// Where the paper's row comes from (e.g. `baseline [13]`).
    #[serde(default)]
    pub paper_label: Option<String>,
}

/// The file as written (used only to check every key with line and column).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ExperimentFileSchema {
    #[allow(dead_code)]
    #[serde(default)]
    description: Option<String>,
    #[allow(dead_code)]
    #[serde(default)]
    defaults: Config,
    #[allow(dead_code)]
    #[serde(default)]
    profiles: BTreeMap<String, Config>,
    #[allow(dead_code)]
    #[serde(default)]
    rows: Vec<RowSpec>,
}

/// A parsed experiment file: base values, profiles and rows, kept as YAML values for merging.
#[derive(Debug, Clone)]
pub struct ExperimentFile {
    /// Where it came from (for messages).
    pub path: String,
    /// Free text.
    pub description: Option<String>,
    defaults: Value,
    profiles: BTreeMap<String, Value>,
    /// The table rows (may be empty).
    pub rows: Vec<RowSpec>,
    row_values: Vec<Value>,
}

/// The experiment file of Table I, embedded so `mtanet table1` works from any directory.
pub const TABLE1_YAML: &str = include_str!("../../../../experiments/table1.yaml");

impl ExperimentFile {
    /// Reads and checks a file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&path.display().to_string(), &text)
    }

    /// Parses text; `origin` names it in messages.
    pub fn parse(origin: &str, text: &str) -> Result<Self, ConfigError> {
        let schema_err = |e: serde_yaml::Error| ConfigError::Schema {
            path: origin.to_string(),
            message: e.to_string(),
        };
        // First pass: every key against the schema, so errors carry line and column.
        let _: ExperimentFileSchema = serde_yaml::from_str(text).map_err(schema_err)?;
        let mut root: Value = serde_yaml::from_str(text).map_err(schema_err)?;
        let map = root.as_mapping_mut().ok_or_else(|| ConfigError::Schema {
            path: origin.to_string(),
            message: "the top level must be a mapping".into(),
        })?;
        let take = |m: &mut serde_yaml::Mapping, k: &str| m.remove(k).unwrap_or(Value::Null);
        let description = take(map, "description").as_str().map(str::to_string);
        let defaults = take(map, "defaults");
        let mut profiles = BTreeMap::new();
        if let Value::Mapping(p) = take(map, "profiles") {
            for (k, v) in p {
                let name = k.as_str().unwrap_or_default().to_string();
                profiles.insert(name, v);
            }
        }
        let row_values: Vec<Value> = match take(map, "rows") {
            Value::Sequence(s) => s,
            _ => Vec::new(),
        };
        let rows = row_values
            .iter()
            .map(|v| serde_yaml::from_value::<RowSpec>(v.clone()).map_err(schema_err))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            path: origin.to_string(),
            description,
            defaults,
            profiles,
            rows,
            row_values,
        })
    }

    /// Whether the file itself sets `key` (a path of mapping keys, e.g. `["data", "synthetic"]`)
    /// in its defaults, a profile or a row.
    pub fn sets_key(&self, key: &[&str]) -> bool {
        let has = |v: &Value| key.iter().try_fold(v, |node, k| node.get(*k)).is_some();
        has(&self.defaults)
            || self.profiles.values().any(has)
            || self
                .row_values
                .iter()
                .any(|r| r.get("set").is_some_and(has))
    }

    /// The profile names this file defines.
    pub fn profile_names(&self) -> Vec<String> {
        self.profiles.keys().cloned().collect()
    }

    /// Resolves defaults <- row <- profile <- `--set` overrides into a checked [`Config`].
    ///
    /// The profile comes after the row so that `demo` can reset what rows set for `paper`
    /// (pretrained weights, full width); an explicit `null` replaces a value.
    pub fn resolve(
        &self,
        profile: Option<&str>,
        row: Option<&str>,
        overrides: &[Override],
    ) -> Result<Config, ConfigError> {
        let config = self.resolve_unchecked(profile, row, overrides)?;
        config.validate(&self.path)?;
        Ok(config)
    }

    /// [`ExperimentFile::resolve`] without the value checks (schema only): the row as its file
    /// defines it, to compare a run's keys with, even where it needs a value that only the
    /// command line gives (the paper profile's data root).
    pub fn resolve_unchecked(
        &self,
        profile: Option<&str>,
        row: Option<&str>,
        overrides: &[Override],
    ) -> Result<Config, ConfigError> {
        let mut value = Value::Mapping(Default::default());
        merge_section(&mut value, &self.defaults);
        if let Some(r) = row {
            let i =
                self.rows
                    .iter()
                    .position(|x| x.name == r)
                    .ok_or_else(|| ConfigError::Unknown {
                        path: self.path.clone(),
                        what: "row",
                        name: r.to_string(),
                        defined: self
                            .rows
                            .iter()
                            .map(|x| x.name.as_str())
                            .collect::<Vec<_>>()
                            .join(", "),
                    })?;
            if let Some(set) = self.row_values[i].get("set") {
                merge_section(&mut value, set);
            }
        }
        if let Some(p) = profile {
            let pv = self.profiles.get(p).ok_or_else(|| ConfigError::Unknown {
                path: self.path.clone(),
                what: "profile",
                name: p.to_string(),
                defined: self.profile_names().join(", "),
            })?;
            merge_section(&mut value, pv);
        }
        for o in overrides {
            o.apply(&mut value);
        }
        let config: Config = serde_yaml::from_value(value).map_err(|e| ConfigError::Schema {
            path: if overrides.is_empty() {
                self.path.clone()
            } else {
                format!(
                    "{} with overrides [{}]",
                    self.path,
                    overrides
                        .iter()
                        .map(|o| o.to_string())
                        .collect::<Vec<_>>()
                        .join(" ")
                )
            },
            message: e.to_string(),
        })?;
        Ok(config)
    }
}

impl ExperimentFile {
    /// The keys the row `row` sets whose value in `resolved` differs from the row's own
    /// resolution `as_defined` (same profile, no command-line overrides): a run is that row
    /// only when this is empty.
    pub fn row_keys_changed(
        &self,
        row: &str,
        resolved: &Config,
        as_defined: &Config,
    ) -> Vec<String> {
        let Some(i) = self.rows.iter().position(|x| x.name == row) else {
            return Vec::new();
        };
        let Some(set) = self.row_values[i].get("set") else {
            return Vec::new();
        };
        let (Ok(a), Ok(b)) = (
            serde_yaml::to_value(resolved),
            serde_yaml::to_value(as_defined),
        ) else {
            return vec!["(unserialisable configuration)".into()];
        };
        let mut changed = Vec::new();
        leaf_paths(set, &mut Vec::new(), &mut |path| {
            let get = |v: &Value| {
                path.iter()
                    .try_fold(v, |node, k| node.get(k.as_str()))
                    .cloned()
            };
            if get(&a) != get(&b) {
                changed.push(path.join("."));
            }
        });
        changed
    }
}

/// Calls `f` with the key path of every leaf (non-mapping value) under `v`.
fn leaf_paths(v: &Value, prefix: &mut Vec<String>, f: &mut dyn FnMut(&[String])) {
    match v {
        Value::Mapping(m) => {
            for (k, child) in m {
                prefix.push(k.as_str().unwrap_or_default().to_string());
                leaf_paths(child, prefix, f);
                prefix.pop();
            }
        }
        _ => f(prefix),
    }
}

/// Merges a whole section (defaults, a profile, a row's `set`); an absent or empty one is a no-op.
fn merge_section(base: &mut Value, section: &Value) {
    if !section.is_null() {
        merge(base, section);
    }
}

/// Deep-merges `over` into `base`: mappings merge by key; two lists of mappings of the same
/// length merge element by element (a row can set each stage's `loss` while a profile sets
/// their lengths and rates); anything else replaces.
fn merge(base: &mut Value, over: &Value) {
    match (base, over) {
        (Value::Mapping(b), Value::Mapping(o)) => {
            for (k, v) in o {
                match b.get_mut(k) {
                    Some(existing) => merge(existing, v),
                    None => {
                        b.insert(k.clone(), v.clone());
                    }
                }
            }
        }
        (Value::Sequence(b), Value::Sequence(o))
            if b.len() == o.len() && b.iter().chain(o).all(|x| matches!(x, Value::Mapping(_))) =>
        {
            for (x, y) in b.iter_mut().zip(o) {
                merge(x, y);
            }
        }
        (b, o) => *b = o.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mtanet_backbones::{BackboneKind, Precision};
    use mtanet_losses::LossKind;

    const FILE: &str = "\
description: test
defaults:
  experiment: t
  training:
    stages:
      - {name: a, optimizer: adam, lr: 0.001, epochs: 2}
profiles:
  small:
    data: {batch_size: 4}
rows:
  - name: r50
    set: {model: {backbone: resnet50}}
    paper: {valence: 0.1, arousal: 0.2, au: 0.3, expr: 0.4}
";

    #[test]
    fn resolves_defaults_profile_row_and_overrides() {
        let f = ExperimentFile::parse("t.yaml", FILE).unwrap();
        let c = f
            .resolve(
                Some("small"),
                Some("r50"),
                &[
                    "training.stages.0.lr=0.5".parse().unwrap(),
                    "seed=7".parse().unwrap(),
                ],
            )
            .unwrap();
        assert_eq!(c.data.batch_size, 4);
        assert_eq!(c.model.backbone, BackboneKind::Resnet50);
        assert_eq!(c.training.stages[0].lr, 0.5);
        assert_eq!(c.training.stages[0].epochs, 2);
        assert_eq!(c.seed, 7);
        assert_eq!(f.rows[0].paper.as_ref().unwrap().au, 0.3);
    }

    #[test]
    fn typo_names_line_and_column() {
        let text = FILE.replace("lr: 0.001", "lrr: 0.001");
        let e = ExperimentFile::parse("t.yaml", &text)
            .unwrap_err()
            .to_string();
        assert!(e.contains("t.yaml"), "{e}");
        assert!(e.contains("lrr"), "{e}");
        assert!(e.contains("line 6"), "{e}");
        let text = FILE.replace("batch_size: 4", "batchsize: 4");
        let e = ExperimentFile::parse("t.yaml", &text)
            .unwrap_err()
            .to_string();
        assert!(e.contains("batchsize") && e.contains("line 9"), "{e}");
    }

    #[test]
    fn invalid_values_name_the_key() {
        let f = ExperimentFile::parse("t.yaml", FILE).unwrap();
        let e = f
            .resolve(None, None, &["training.stages.0.lr=-1".parse().unwrap()])
            .unwrap_err()
            .to_string();
        assert!(e.contains("training.stages[0].lr"), "{e}");
        let e = f
            .resolve(None, None, &["training.stages=[]".parse().unwrap()])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("training.stages") && e.contains("at least one"),
            "{e}"
        );
        let e = f
            .resolve(None, None, &["model.bakbone=resnet50".parse().unwrap()])
            .unwrap_err()
            .to_string();
        assert!(e.contains("bakbone"), "{e}");
        let e = f.resolve(Some("nope"), None, &[]).unwrap_err().to_string();
        assert!(e.contains("nope") && e.contains("small"), "{e}");
        let e = f
            .resolve(None, None, &["precision=fp16".parse().unwrap()])
            .unwrap_err()
            .to_string();
        assert!(e.contains("fp16") && e.contains("bf16"), "{e}");
        let c = f
            .resolve(None, None, &["precision=bf16".parse().unwrap()])
            .unwrap();
        assert_eq!(c.precision, Precision::Bf16);
        let text = FILE.replace("  experiment: t\n", "  experiment: t\n  precision: half\n");
        let e = ExperimentFile::parse("t.yaml", &text)
            .unwrap_err()
            .to_string();
        assert!(e.contains("t.yaml") && e.contains("half"), "{e}");
    }

    #[test]
    fn backbone_alias() {
        let o: Override = "backbone=senet50".parse().unwrap();
        assert_eq!(o.key, vec!["model", "backbone"]);
        assert_eq!(o.value, Value::String("senet50_vggface2".into()));
    }

    #[test]
    fn embedded_table1_resolves_every_profile_and_row() {
        let f = ExperimentFile::parse("experiments/table1.yaml", TABLE1_YAML).unwrap();
        assert!(f.rows.len() >= 4);
        let root: Override = "data.root=/data/affwild2".parse().unwrap();
        for r in &f.rows {
            f.resolve(Some("demo"), Some(&r.name), &[]).unwrap();
            let paper = f
                .resolve(Some("paper"), Some(&r.name), std::slice::from_ref(&root))
                .unwrap();
            assert_eq!(paper.losses.au_reduction, mtanet_losses::AuReduction::Sum);
        }
    }

    #[test]
    fn paper_profile_without_a_data_root_refuses_naming_both_ways() {
        let f = ExperimentFile::parse("experiments/table1.yaml", TABLE1_YAML).unwrap();
        let e = f.resolve(Some("paper"), Some("resnet50"), &[]).unwrap_err();
        let msg = e.to_string();
        assert!(matches!(e, ConfigError::NeedsRealData { .. }), "{msg}");
        assert!(
            msg.contains("AFFWILD2_ROOT") && msg.contains("data.root"),
            "{msg}"
        );
        assert_eq!(msg.lines().count(), 1, "{msg}");
    }

    #[test]
    fn stage_lists_of_the_same_length_merge_element_by_element() {
        let text = "\
defaults:
  training:
    stages: [{name: a, lr: 0.5, epochs: 3}, {name: b, lr: 0.1, epochs: 1}]
rows:
  - name: r
    set: {training: {stages: [{loss: sum}, {loss: uncertainty}]}}
";
        let f = ExperimentFile::parse("t.yaml", text).unwrap();
        let c = f.resolve(None, Some("r"), &[]).unwrap();
        let s = &c.training.stages;
        assert_eq!((s[0].lr, s[0].epochs, s[0].loss), (0.5, 3, LossKind::Sum));
        assert_eq!((s[1].lr, s[1].loss), (0.1, LossKind::Uncertainty));
    }

    #[test]
    fn an_override_of_a_rows_own_key_detaches_the_row() {
        let f = ExperimentFile::parse("t.yaml", FILE).unwrap();
        let plain = f.resolve(None, Some("r50"), &[]).unwrap();
        let seed = f
            .resolve(None, Some("r50"), &["seed=3".parse().unwrap()])
            .unwrap();
        assert!(f.row_keys_changed("r50", &seed, &plain).is_empty());
        let other = f
            .resolve(None, Some("r50"), &["backbone=seresnet50".parse().unwrap()])
            .unwrap();
        assert_eq!(
            f.row_keys_changed("r50", &other, &plain),
            vec!["model.backbone".to_string()]
        );
    }
}
