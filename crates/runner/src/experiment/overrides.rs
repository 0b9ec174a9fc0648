//! `key=value` overrides from the command line, applied to the YAML before it is checked.

use std::fmt;

use serde_yaml::Value;

use super::ConfigError;

/// A `key=value` override from the command line (`--set training.stages.0.lr=0.01`).
#[derive(Debug, Clone, PartialEq)]
pub struct Override {
    /// Dotted path; numeric parts index lists.
    pub key: Vec<String>,
    /// The value, parsed as YAML (`0.01`, `true`, `[1,1,1,1]`, `null`, strings).
    pub value: Value,
}

impl fmt::Display for Override {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let v = serde_yaml::to_string(&self.value).unwrap_or_default();
        write!(f, "{}={}", self.key.join("."), v.trim())
    }
}

/// Short names accepted by `--set` / `just ablate` for the most used keys.
const ALIASES: &[(&str, &str)] = &[
    ("backbone", "model.backbone"),
    ("pretrained", "model.pretrained"),
    ("width_div", "model.width_div"),
    ("depths", "model.depths"),
    ("seed", "seed"),
    ("device", "device"),
    ("precision", "precision"),
    ("root", "data.root"),
    ("batch_size", "data.batch_size"),
];

/// Backbone names accepted besides the canonical ones.
const BACKBONE_ALIASES: &[(&str, &str)] = &[
    ("senet50", "senet50_vggface2"),
    ("resnext50", "resnext50_32x4d"),
    ("resnext50_cbam", "resnext50_32x4d_cbam"),
    ("resnext_cbam", "resnext50_32x4d_cbam"),
];

impl std::str::FromStr for Override {
    type Err = ConfigError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (k, v) = s.split_once('=').ok_or_else(|| ConfigError::Invalid {
            path: "--set".into(),
            key: s.to_string(),
            message: "expected key=value, e.g. model.backbone=resnet50".into(),
        })?;
        let k = k.trim();
        let full = ALIASES
            .iter()
            .find(|(a, _)| *a == k)
            .map(|(_, f)| *f)
            .unwrap_or(k);
        let mut v = v.trim().to_string();
        if full == "model.backbone" {
            if let Some((_, canon)) = BACKBONE_ALIASES.iter().find(|(a, _)| *a == v) {
                v = canon.to_string();
            }
        }
        let value: Value = serde_yaml::from_str(&v).map_err(|e| ConfigError::Invalid {
            path: "--set".into(),
            key: k.to_string(),
            message: format!("value `{v}` is not valid YAML: {e}"),
        })?;
        if full.is_empty() || full.split('.').any(str::is_empty) {
            return Err(ConfigError::Invalid {
                path: "--set".into(),
                key: k.to_string(),
                message: "empty key part".into(),
            });
        }
        Ok(Self {
            key: full.split('.').map(str::to_string).collect(),
            value,
        })
    }
}

impl Override {
    /// Writes the value at the dotted path, creating mappings on the way.
    pub(crate) fn apply(&self, root: &mut Value) {
        set_path(root, &self.key, &self.value);
    }
}

/// Sets `value` at `path` under `node`; numeric parts index existing lists.
fn set_path(node: &mut Value, path: &[String], value: &Value) {
    let Some((part, rest)) = path.split_first() else {
        *node = value.clone();
        return;
    };
    if let (Ok(idx), Value::Sequence(seq)) = (part.parse::<usize>(), &mut *node) {
        if idx < seq.len() {
            set_path(&mut seq[idx], rest, value);
            return;
        }
    }
    if !node.is_mapping() {
        *node = Value::Mapping(Default::default());
    }
    if let Value::Mapping(map) = node {
        let key = Value::String(part.clone());
        let child = map.entry(key).or_insert(Value::Null);
        set_path(child, rest, value);
    }
}
