//! Loading PyTorch-named safetensors checkpoints (torchvision / timm state dicts, converted
//! VGGFace2 weights) into a candle `VarMap`, with a report of what was loaded, left fresh and
//! ignored.

use candle_core::safetensors::Load;
use candle_core::{DType, Device};
use candle_nn::VarMap;
use safetensors::SafeTensors;
use std::fmt;
use std::path::{Path, PathBuf};

/// Why weights could not be found or loaded.
#[derive(Debug, thiserror::Error)]
pub enum WeightsError {
    /// The checkpoint could not be read.
    #[error("cannot read weights file {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The checkpoint is not valid safetensors.
    #[error("{path} is not a valid safetensors file: {message}")]
    Format {
        /// The file.
        path: PathBuf,
        /// The parser's message.
        message: String,
    },
    /// A tensor in the file has another shape than the model's variable of that name.
    #[error("shape mismatch for `{key}` in {path}: file has {file_shape:?}, model expects {model_shape:?} (variable `{var}`)")]
    ShapeMismatch {
        /// The file.
        path: PathBuf,
        /// The tensor name in the file.
        key: String,
        /// The variable name in the VarMap (`prefix + key`).
        var: String,
        /// Shape in the file.
        file_shape: Vec<usize>,
        /// Shape the model expects.
        model_shape: Vec<usize>,
    },
    /// A tensor could not be converted or assigned.
    #[error("cannot load `{key}` from {path}: {message}")]
    Tensor {
        /// The file.
        path: PathBuf,
        /// The tensor name in the file.
        key: String,
        /// candle's message.
        message: String,
    },
    /// Not a single tensor of the file matched the model (wrong file or wrong prefix).
    #[error("no tensor of {path} matches a model variable under prefix `{prefix}` ({file_tensors} tensors in the file, e.g. {example:?}); is this the right backbone?")]
    NothingLoaded {
        /// The file.
        path: PathBuf,
        /// The VarMap prefix that was tried.
        prefix: String,
        /// Number of tensors in the file.
        file_tensors: usize,
        /// One tensor name from the file.
        example: Option<String>,
    },
    /// A spec is neither an existing local path nor a Hub id.
    #[error("pretrained weights `{spec}` not found: not an existing file and not a Hub id like `timm/resnet50.tv_in1k`")]
    NotFound {
        /// The spec as given.
        spec: String,
    },
    /// A Hub id was given to a build without the `hub` feature.
    #[error("`{spec}` looks like a Hugging Face Hub id, but this build has no Hub support: rebuild with `--features hub`, or download model.safetensors yourself and pass its local path (or place it in the HF cache at {cache_hint})")]
    HubDisabled {
        /// The spec as given.
        spec: String,
        /// Where the file would live in the HF cache.
        cache_hint: String,
    },
    /// The Hub download failed, was offline without a cached copy, or timed out.
    #[error("cannot fetch model.safetensors of `{repo}` from the Hugging Face Hub: {message}. Without network, place the file in the HF cache at {cache_hint} (or run `huggingface-cli download {repo} model.safetensors` on a connected machine and copy the cache), or pass a local path instead of the Hub id")]
    Hub {
        /// The repository id.
        repo: String,
        /// What went wrong.
        message: String,
        /// Where the file would live in the HF cache.
        cache_hint: String,
    },
}

/// What [`load_pretrained`] did, by VarMap name (`prefix + key`) for `loaded`/`fresh` and by file
/// key for `ignored`/`unmatched`. All lists are sorted.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LoadReport {
    /// Variables set from the file.
    pub loaded: Vec<String>,
    /// Variables under the prefix the file did not provide; they keep their fresh initialisation
    /// (new heads, CBAM blocks).
    pub fresh: Vec<String>,
    /// File tensors skipped on purpose: the classifier (`fc.*`, `last_linear.*`) and BN
    /// `num_batches_tracked` counters.
    pub ignored: Vec<String>,
    /// Other file tensors that match no model variable (listed so naming mistakes show).
    pub unmatched: Vec<String>,
    /// The input the file says its weights expect (`input_normalization` in its safetensors
    /// metadata, as `scripts/convert_vggface2.py` writes it: `vggface2` or `imagenet`), if it
    /// says.
    pub input_normalization: Option<String>,
}

impl LoadReport {
    /// The fresh variables outside an attention gate ([`crate::is_gate_variable`]): parts of
    /// the network itself that the file did not provide. Gates are fresh by design when a
    /// plain backbone's weights start an attention variant (the paper's ResNeXt + CBAM);
    /// anything else means the file is for another network.
    pub fn fresh_outside_gates(&self) -> Vec<&str> {
        self.fresh
            .iter()
            .map(String::as_str)
            .filter(|k| !crate::is_gate_variable(k))
            .collect()
    }
}

fn list(f: &mut fmt::Formatter<'_>, what: &str, names: &[String]) -> fmt::Result {
    const SHOWN: usize = 6;
    write!(f, "{what}: {}", names.len())?;
    if !names.is_empty() {
        let head: Vec<&str> = names.iter().take(SHOWN).map(String::as_str).collect();
        write!(f, " ({}", head.join(", "))?;
        if names.len() > SHOWN {
            write!(f, ", ... {} more", names.len() - SHOWN)?;
        }
        write!(f, ")")?;
    }
    Ok(())
}

impl fmt::Display for LoadReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        list(f, "loaded", &self.loaded)?;
        f.write_str("; ")?;
        list(f, "initialised fresh", &self.fresh)?;
        f.write_str("; ")?;
        list(f, "ignored", &self.ignored)?;
        if !self.unmatched.is_empty() {
            f.write_str("; ")?;
            list(f, "UNMATCHED", &self.unmatched)?;
        }
        Ok(())
    }
}

/// File keys dropped on purpose: classifiers and BN step counters.
fn is_ignorable(key: &str) -> bool {
    key.ends_with("num_batches_tracked")
        || key.starts_with("fc.")
        || key.starts_with("last_linear.")
        || key.starts_with("classifier.")
}

/// Loads a PyTorch-named safetensors file into `varmap`: file key `K` sets variable
/// `prefix + K` (e.g. `backbone.layer1.0.conv1.weight` for prefix `"backbone."`), converted to
/// the variable's dtype and device.
///
/// All shapes are checked before any variable is touched, so a mismatch leaves the VarMap as it
/// was. Variables under `prefix` that the file lacks stay as initialised (reported as `fresh`).
pub fn load_pretrained(
    varmap: &VarMap,
    file: &Path,
    prefix: &str,
) -> Result<LoadReport, WeightsError> {
    let bytes = std::fs::read(file).map_err(|source| WeightsError::Io {
        path: file.to_path_buf(),
        source,
    })?;
    let st = SafeTensors::deserialize(&bytes).map_err(|e| WeightsError::Format {
        path: file.to_path_buf(),
        message: e.to_string(),
    })?;
    let vars = varmap.data().lock().map_err(|_| WeightsError::Tensor {
        path: file.to_path_buf(),
        key: String::new(),
        message: "the VarMap lock is poisoned".into(),
    })?;

    let mut report = LoadReport {
        input_normalization: SafeTensors::read_metadata(&bytes)
            .ok()
            .and_then(|(_, meta)| {
                meta.metadata()
                    .as_ref()?
                    .get("input_normalization")
                    .cloned()
            }),
        ..LoadReport::default()
    };
    let mut plan = Vec::new();
    let mut keys: Vec<String> = st.names().into_iter().map(String::from).collect();
    keys.sort();
    for key in &keys {
        let var_name = format!("{prefix}{key}");
        match vars.get(&var_name) {
            Some(var) => {
                let view = st.tensor(key).map_err(|e| WeightsError::Format {
                    path: file.to_path_buf(),
                    message: format!("tensor `{key}`: {e}"),
                })?;
                if view.shape() != var.dims() {
                    return Err(WeightsError::ShapeMismatch {
                        path: file.to_path_buf(),
                        key: key.clone(),
                        var: var_name,
                        file_shape: view.shape().to_vec(),
                        model_shape: var.dims().to_vec(),
                    });
                }
                plan.push((key.clone(), var_name, view));
            }
            None if is_ignorable(key) => report.ignored.push(key.clone()),
            None => report.unmatched.push(key.clone()),
        }
    }
    if plan.is_empty() {
        return Err(WeightsError::NothingLoaded {
            path: file.to_path_buf(),
            prefix: prefix.to_string(),
            file_tensors: keys.len(),
            example: keys.first().cloned(),
        });
    }
    for (key, var_name, view) in plan {
        let var = &vars[&var_name];
        let tensor_err = |e: candle_core::Error| WeightsError::Tensor {
            path: file.to_path_buf(),
            key: key.clone(),
            message: e.to_string(),
        };
        let t = view
            .load(&Device::Cpu)
            .and_then(|t| convert(t, var.dtype(), var.device()))
            .map_err(tensor_err)?;
        var.set(&t).map_err(tensor_err)?;
        report.loaded.push(var_name);
    }
    let loaded: std::collections::HashSet<&str> =
        report.loaded.iter().map(String::as_str).collect();
    let mut fresh: Vec<String> = vars
        .keys()
        .filter(|k| k.starts_with(prefix) && !loaded.contains(k.as_str()))
        .cloned()
        .collect();
    fresh.sort();
    report.fresh = fresh;
    Ok(report)
}

fn convert(
    t: candle_core::Tensor,
    dtype: DType,
    device: &Device,
) -> candle_core::Result<candle_core::Tensor> {
    t.to_dtype(dtype)?.to_device(device)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{BackboneKind, ResNet, ResNetConfig};
    use candle_core::Tensor;
    use candle_nn::VarBuilder;
    use std::collections::HashMap;

    fn fixtures() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/backbones")
    }

    fn small(kind: BackboneKind) -> ResNetConfig {
        let groups = match kind {
            BackboneKind::Resnext50_32x4d | BackboneKind::Resnext50_32x4dCbam => Some(4),
            _ => None,
        };
        ResNetConfig::from_kind(&kind).scaled(16, Some([2, 1, 1, 1]), groups)
    }

    fn model(kind: BackboneKind, prefix: &str) -> VarMap {
        let varmap = VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
        let vb = if prefix.is_empty() {
            vb
        } else {
            vb.pp(prefix.trim_end_matches('.'))
        };
        ResNet::new(&small(kind), vb).expect("build");
        varmap
    }

    #[test]
    fn torchvision_checkpoint_loads_completely_and_drops_counters() -> Result<(), WeightsError> {
        let varmap = model(BackboneKind::Resnet50, "backbone.");
        let report = load_pretrained(
            &varmap,
            &fixtures().join("resnet50.weights.safetensors"),
            "backbone.",
        )?;
        assert!(report.fresh.is_empty(), "fresh: {:?}", report.fresh);
        assert!(
            report.unmatched.is_empty(),
            "unmatched: {:?}",
            report.unmatched
        );
        assert_eq!(report.loaded.len(), varmap.all_vars().len());
        assert!(report
            .loaded
            .contains(&"backbone.layer1.0.downsample.0.weight".to_string()));
        assert!(report
            .ignored
            .iter()
            .all(|k| k.ends_with("num_batches_tracked")));
        assert!(!report.ignored.is_empty());
        Ok(())
    }

    /// A timm-named ResNeXt checkpoint with an extra classifier, loaded into the CBAM model:
    /// classifier ignored, every CBAM tensor fresh, everything else loaded.
    #[test]
    fn extra_classifier_and_missing_cbam_are_reported() -> Result<(), Box<dyn std::error::Error>> {
        let src = fixtures().join("resnext50_32x4d.weights.safetensors");
        let mut tensors: HashMap<String, Tensor> =
            candle_core::safetensors::load(&src, &Device::Cpu)?;
        let n_file = tensors.len();
        tensors.insert(
            "fc.weight".into(),
            Tensor::zeros((10, 128), DType::F32, &Device::Cpu)?,
        );
        tensors.insert(
            "fc.bias".into(),
            Tensor::zeros(10, DType::F32, &Device::Cpu)?,
        );
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("timm_resnext.safetensors");
        candle_core::safetensors::save(&tensors, &path)?;

        let varmap = model(BackboneKind::Resnext50_32x4dCbam, "");
        let report = load_pretrained(&varmap, &path, "")?;
        assert!(report.ignored.contains(&"fc.weight".to_string()));
        assert!(report.ignored.contains(&"fc.bias".to_string()));
        assert!(report.unmatched.is_empty(), "{:?}", report.unmatched);
        assert!(!report.fresh.is_empty());
        assert!(
            report.fresh.iter().all(|k| k.contains(".cbam.")),
            "{:?}",
            report.fresh
        );
        // 5 blocks x (mlp.1 w/b, mlp.3 w/b, spatial conv, spatial bn x4) = 5 x 9 tensors.
        assert_eq!(report.fresh.len(), 5 * 9);
        let counters = report.ignored.len() - 2;
        assert_eq!(report.loaded.len() + counters, n_file);
        assert_eq!(
            report.loaded.len() + report.fresh.len(),
            varmap.all_vars().len()
        );
        let text = report.to_string();
        assert!(text.contains("initialised fresh: 45"), "{text}");
        assert!(report.fresh_outside_gates().is_empty());
        Ok(())
    }

    /// A plain ResNet-50's weights in the VGGFace2 SENet match every tensor but its
    /// squeeze-excite (`conv4` / `conv5`), which does not count as a gate that may start fresh:
    /// the SENet is another network (strides, input), so the report lists those tensors.
    #[test]
    fn resnet_weights_in_the_vggface2_senet_leave_its_squeeze_excite_fresh_outside_the_gates(
    ) -> Result<(), Box<dyn std::error::Error>> {
        let src = fixtures().join("resnet50.weights.safetensors");
        let varmap = model(BackboneKind::Senet50Vggface2, "");
        let report = load_pretrained(&varmap, &src, "")?;
        assert!(!report.fresh.is_empty());
        assert!(
            report
                .fresh
                .iter()
                .all(|k| k.contains(".conv4.") || k.contains(".conv5.")),
            "{:?}",
            report.fresh
        );
        assert_eq!(report.fresh_outside_gates().len(), report.fresh.len());
        assert_eq!(report.input_normalization, None);
        Ok(())
    }

    /// The input a file declares in its metadata (`input_normalization`, as
    /// `convert_vggface2.py` writes it) is reported.
    #[test]
    fn the_declared_input_normalization_is_reported() -> Result<(), Box<dyn std::error::Error>> {
        let src = fixtures().join("resnet50.weights.safetensors");
        let tensors: HashMap<String, Tensor> = candle_core::safetensors::load(&src, &Device::Cpu)?;
        let meta: HashMap<String, String> =
            [("input_normalization".to_string(), "imagenet".to_string())].into();
        let bytes =
            safetensors::serialize(tensors.iter().map(|(k, t)| (k.as_str(), t)), Some(meta))?;
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("declared.safetensors");
        std::fs::write(&path, bytes)?;
        let varmap = model(BackboneKind::Resnet50, "");
        let report = load_pretrained(&varmap, &path, "")?;
        assert_eq!(report.input_normalization.as_deref(), Some("imagenet"));
        Ok(())
    }

    /// A file without one of the network's own tensors leaves that variable fresh outside any
    /// gate, and the report names it.
    #[test]
    fn a_file_missing_a_layer_leaves_it_fresh_outside_the_gates(
    ) -> Result<(), Box<dyn std::error::Error>> {
        let src = fixtures().join("resnext50_32x4d.weights.safetensors");
        let mut tensors: HashMap<String, Tensor> =
            candle_core::safetensors::load(&src, &Device::Cpu)?;
        tensors
            .remove("layer4.0.conv2.weight")
            .expect("in the fixture");
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("partial.safetensors");
        candle_core::safetensors::save(&tensors, &path)?;
        let varmap = model(BackboneKind::Resnext50_32x4dCbam, "");
        let report = load_pretrained(&varmap, &path, "")?;
        assert_eq!(report.fresh_outside_gates(), ["layer4.0.conv2.weight"]);
        Ok(())
    }

    #[test]
    fn a_wrong_shape_fails_naming_the_key_and_both_shapes() -> Result<(), Box<dyn std::error::Error>>
    {
        let src = fixtures().join("resnet50.weights.safetensors");
        let mut tensors: HashMap<String, Tensor> =
            candle_core::safetensors::load(&src, &Device::Cpu)?;
        let before = tensors["conv1.weight"].clone();
        tensors.insert(
            "layer2.0.conv2.weight".into(),
            Tensor::zeros((8, 8, 1, 1), DType::F32, &Device::Cpu)?,
        );
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("bad.safetensors");
        candle_core::safetensors::save(&tensors, &path)?;
        let varmap = model(BackboneKind::Resnet50, "");
        let fresh_conv1 = varmap.data().lock().map_err(|_| "lock")?["conv1.weight"]
            .as_tensor()
            .copy()?;
        let err = load_pretrained(&varmap, &path, "").expect_err("shape mismatch");
        let msg = err.to_string();
        assert!(msg.contains("layer2.0.conv2.weight"), "{msg}");
        assert!(
            msg.contains("[8, 8, 1, 1]") && msg.contains("[8, 8, 3, 3]"),
            "{msg}"
        );
        // Nothing was assigned.
        let now = varmap.data().lock().map_err(|_| "lock")?["conv1.weight"]
            .as_tensor()
            .copy()?;
        assert_eq!(
            (now - &fresh_conv1)?.abs()?.sum_all()?.to_scalar::<f32>()?,
            0.0
        );
        assert_ne!(
            (fresh_conv1 - before)?
                .abs()?
                .sum_all()?
                .to_scalar::<f32>()?,
            0.0
        );
        Ok(())
    }

    #[test]
    fn a_file_of_another_model_fails_clearly() {
        let varmap = model(BackboneKind::Resnet50, "backbone.");
        // No `backbone.` prefix match: loading with the wrong prefix loads nothing.
        let err = load_pretrained(
            &varmap,
            &fixtures().join("mtanet.head.safetensors"),
            "backbone.",
        )
        .expect_err("nothing matches");
        assert!(matches!(err, WeightsError::NothingLoaded { .. }), "{err}");
        let err = load_pretrained(&varmap, Path::new("/nonexistent/x.safetensors"), "")
            .expect_err("missing file");
        assert!(err.to_string().contains("/nonexistent/x.safetensors"));
    }
}
