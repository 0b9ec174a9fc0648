//! The keys in which two configurations differ, with both values: what a resume or a loaded
//! checkpoint compares with the configuration it was trained with.

use serde_yaml::Value;

use crate::experiment::Config;

/// One key whose value differs between two configurations, with both values (JSON).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyDifference {
    /// Dotted path as `--set` writes it (`training.stages.0.lr`).
    pub key: String,
    /// The value in the first configuration (`null` when absent).
    pub first: String,
    /// The value in the second configuration (`null` when absent).
    pub second: String,
}

impl KeyDifference {
    /// True when the key is one of `keys` or lies under one (`model` holds `model.head.hidden`).
    pub fn is_under(&self, keys: &[&str]) -> bool {
        keys.iter().any(|k| {
            self.key
                .strip_prefix(k)
                .is_some_and(|rest| rest.is_empty() || rest.starts_with('.'))
        })
    }
}

/// The keys whose values differ between `a` and `b` (leaves of mappings, list elements by
/// index; a list of another length is one difference), in the order of the schema.
pub fn config_differences(a: &Config, b: &Config) -> anyhow::Result<Vec<KeyDifference>> {
    let (a, b) = (serde_yaml::to_value(a)?, serde_yaml::to_value(b)?);
    let mut out = Vec::new();
    differences(&a, &b, &mut Vec::new(), &mut out);
    Ok(out)
}

fn differences(a: &Value, b: &Value, path: &mut Vec<String>, out: &mut Vec<KeyDifference>) {
    match (a, b) {
        (Value::Mapping(x), Value::Mapping(y)) => {
            let extra = y.keys().filter(|k| !x.contains_key(*k));
            for k in x.keys().chain(extra) {
                path.push(k.as_str().map_or_else(|| format!("{k:?}"), str::to_string));
                differences(
                    x.get(k).unwrap_or(&Value::Null),
                    y.get(k).unwrap_or(&Value::Null),
                    path,
                    out,
                );
                path.pop();
            }
        }
        (Value::Sequence(x), Value::Sequence(y)) if x.len() == y.len() => {
            for (i, (p, q)) in x.iter().zip(y).enumerate() {
                path.push(i.to_string());
                differences(p, q, path, out);
                path.pop();
            }
        }
        _ if a == b => {}
        _ => {
            let show = |v: &Value| serde_json::to_string(v).unwrap_or_else(|_| format!("{v:?}"));
            out.push(KeyDifference {
                key: path.join("."),
                first: show(a),
                second: show(b),
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn difference(key: &str) -> KeyDifference {
        KeyDifference {
            key: key.into(),
            first: "1".into(),
            second: "2".into(),
        }
    }

    #[test]
    fn a_key_is_under_itself_and_its_sections_only() {
        assert!(difference("model").is_under(&["model"]));
        assert!(difference("model.head.hidden").is_under(&["data.resize", "model"]));
        assert!(difference("data.workers").is_under(&["data.workers"]));
        assert!(!difference("modelx").is_under(&["model"]));
        assert!(!difference("model_x.a").is_under(&["model"]));
        assert!(!difference("data").is_under(&["data.workers"]));
        assert!(!difference("model.head").is_under(&[]));
    }
}
