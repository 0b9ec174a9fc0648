//! Checkpoints: model weights, optimizer state and the loop position in one safetensors file.
//!
//! One file written atomically means a crash leaves the previous checkpoint intact. Tensor
//! names: `model.<state-dict name>` (the VarMap, uncertainty log-variances included) and
//! `optim.<m|v>.<name>`; the loop position is JSON in the safetensors metadata under `state`.

use std::collections::HashMap;
use std::path::Path;

use anyhow::Context;
use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};

use crate::record::atomic_io::write_atomic;
use crate::training::selection::Selection;

/// Where the training loop is; everything else is derived from the seed and these counters.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct TrainState {
    /// Index of the current stage.
    pub stage: usize,
    /// Epoch within the stage.
    pub epoch: usize,
    /// Next batch index within the epoch.
    pub batch: usize,
    /// Optimizer steps within the stage.
    pub stage_step: usize,
    /// Optimizer steps since the start of the run.
    pub global_step: u64,
    /// The optimizer's own step counter (Adam bias correction).
    pub optimizer_step: u64,
    /// Training images seen.
    pub images: u64,
    /// Training wall time so far (seconds), excluding evaluation.
    pub train_seconds: f64,
    /// Whether every stage is done.
    pub finished: bool,
    /// The best evaluations so far (model selection).
    #[serde(default)]
    pub selection: Selection,
    /// A run stopped at a step that was due for evaluation: the resumed run evaluates first,
    /// so its evaluations and picks equal an uninterrupted run's.
    #[serde(default)]
    pub pending_eval: bool,
    /// Crops that could not be read or decoded and were skipped (`data.on_bad_frame: skip`),
    /// training and validation, sorted; kept across resume.
    #[serde(default)]
    pub skipped: Vec<std::path::PathBuf>,
    /// The last evaluation this state includes (its offer to model selection, its
    /// `metrics.csv` row): a resumed run keeps the rows up to it and evaluates again where a
    /// row was written after the checkpoint it resumes from.
    #[serde(default = "EvaluatedThrough::unrecorded")]
    pub evaluated_through: EvaluatedThrough,
    /// The samples the run trains and evaluates on (`None` in checkpoints written before it
    /// was recorded); a resume on other samples is refused.
    #[serde(default)]
    pub data: Option<crate::record::data_fingerprint::DataFingerprint>,
}

/// How far a [`TrainState`]'s evaluations go.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub enum EvaluatedThrough {
    /// Checkpoints written before this was recorded: every `metrics.csv` row up to the
    /// state's `global_step` is taken as included.
    Unrecorded,
    /// The global step of the last evaluation included; `None` before the first.
    Step(Option<u64>),
}

impl Default for EvaluatedThrough {
    fn default() -> Self {
        Self::Step(None)
    }
}

impl EvaluatedThrough {
    /// What a checkpoint without the field holds.
    fn unrecorded() -> Self {
        Self::Unrecorded
    }
}

impl TrainState {
    /// The last step whose `metrics.csv` row this state includes; `None` for none.
    pub fn metrics_rows_through(&self) -> Option<u64> {
        match self.evaluated_through {
            EvaluatedThrough::Unrecorded => Some(self.global_step),
            EvaluatedThrough::Step(s) => s.map(|s| s.min(self.global_step)),
        }
    }
}

/// Writes a checkpoint atomically.
pub fn save(
    path: &Path,
    model: &HashMap<String, Tensor>,
    optim: &HashMap<String, Tensor>,
    state: &TrainState,
) -> anyhow::Result<()> {
    save_described(path, model, optim, state, &Description::default())
}

/// What a checkpoint says about itself in its safetensors metadata, beside the loop state:
/// enough to rebuild, feed and read the model without the run directory (`mtanet model info`).
#[derive(Debug, Clone, Default)]
pub struct Description {
    /// `(key, value)` pairs: `vocab` (JSON: AU names and expression classes in head order),
    /// `config` (the resolved run configuration, YAML), `preprocess` (JSON: channel order,
    /// scale, mean, std, input size), `layout` (the dataset release), `commit`.
    pub entries: Vec<(String, String)>,
}

/// [`save`] with a [`Description`] in the metadata.
pub fn save_described(
    path: &Path,
    model: &HashMap<String, Tensor>,
    optim: &HashMap<String, Tensor>,
    state: &TrainState,
    description: &Description,
) -> anyhow::Result<()> {
    let mut tensors: Vec<(String, Tensor)> = Vec::with_capacity(model.len() + optim.len());
    for (k, t) in model {
        tensors.push((format!("model.{k}"), t.to_device(&Device::Cpu)?));
    }
    for (k, t) in optim {
        tensors.push((format!("optim.{k}"), t.to_device(&Device::Cpu)?));
    }
    tensors.sort_by(|a, b| a.0.cmp(&b.0));
    let mut meta = HashMap::new();
    meta.insert(STATE_KEY.to_string(), serde_json::to_string(state)?);
    meta.insert(FORMAT_KEY.to_string(), FORMAT.to_string());
    for (k, v) in &description.entries {
        meta.insert(k.clone(), v.clone());
    }
    let bytes = safetensors::serialize(tensors.iter().map(|(k, t)| (k.as_str(), t)), Some(meta))
        .with_context(|| format!("serialising checkpoint {}", path.display()))?;
    write_atomic(path, &bytes)
}

/// A loaded checkpoint.
pub struct Checkpoint {
    /// Model tensors by state-dict name.
    pub model: HashMap<String, Tensor>,
    /// Optimizer tensors (`m.<name>`, `v.<name>`).
    pub optim: HashMap<String, Tensor>,
    /// Loop position.
    pub state: TrainState,
}

/// Reads a checkpoint written by [`save`] (or a plain weights file: then `optim` is empty and
/// `state` default), with errors naming the file; a tensor holding NaN or an infinity is an
/// error naming it and the first such value's index. A checkpoint of another mtanet format
/// (its [`FORMAT_KEY`] entry `mtanet-checkpoint-<n>`, not [`FORMAT`]) is refused, naming both
/// formats; other writers' entries (`pt` from `safetensors.torch`) mark plain weights.
pub fn load(path: &Path, device: &Device) -> anyhow::Result<Checkpoint> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes)
        .with_context(|| format!("{}: not a safetensors file", path.display()))?;
    let entries = meta.metadata().as_ref();
    if let Some(f) = entries.and_then(|m| m.get(FORMAT_KEY)) {
        if is_another_format(f) {
            anyhow::bail!(
                "{}: checkpoint format `{f}`, and this build reads `{FORMAT}` (and plain \
                 weights): use the mtanet version that wrote it",
                path.display()
            );
        }
    }
    let state = match entries.and_then(|m| m.get(STATE_KEY)) {
        Some(s) => parse_entry(path, STATE_KEY, s)?,
        None => TrainState::default(),
    };
    let all = candle_core::safetensors::load_buffer(&bytes, device)
        .with_context(|| format!("{}: cannot read tensors", path.display()))?;
    let mut names: Vec<&String> = all.keys().collect();
    names.sort();
    for k in names {
        check_finite(&all[k])
            .with_context(|| format!("{}: cannot check `{k}`", path.display()))?
            .map_or(Ok(()), |(i, v)| {
                Err(anyhow::anyhow!(
                    "{}: tensor `{k}` holds {v} at flat index {i}: a checkpoint with non-finite values cannot be used",
                    path.display()
                ))
            })?;
    }
    let (mut model, mut optim) = (HashMap::new(), HashMap::new());
    for (k, t) in all {
        if let Some(n) = k.strip_prefix("model.") {
            model.insert(n.to_string(), t);
        } else if let Some(n) = k.strip_prefix("optim.") {
            optim.insert(n.to_string(), t);
        } else {
            model.insert(k, t);
        }
    }
    Ok(Checkpoint {
        model,
        optim,
        state,
    })
}

/// The first non-finite value of a floating-point tensor (flat index and value), if any;
/// integer tensors are finite.
fn check_finite(t: &Tensor) -> candle_core::Result<Option<(usize, f32)>> {
    if !t.dtype().is_float() || t.elem_count() == 0 {
        return Ok(None);
    }
    let t = t.to_dtype(candle_core::DType::F32)?.flatten_all()?;
    // 0 * x is 0 for every finite x and NaN for NaN and the infinities.
    let zero = t.affine(0.0, 0.0)?.sum_all()?.to_scalar::<f32>()?;
    if zero == 0.0 {
        return Ok(None);
    }
    let values = t.to_vec1::<f32>()?;
    Ok(values
        .iter()
        .position(|v| !v.is_finite())
        .map(|i| (i, values[i])))
}

/// The metadata key of a checkpoint's format name ([`FORMAT`] for those [`save`] writes).
pub const FORMAT_KEY: &str = "format";

/// The format name [`save`] writes and [`load`] reads: [`FORMAT_FAMILY`] and a version.
pub const FORMAT: &str = "mtanet-checkpoint-1";

/// The prefix of every mtanet checkpoint format name; [`load`] refuses the versions other
/// than [`FORMAT`].
pub const FORMAT_FAMILY: &str = "mtanet-checkpoint-";

/// True when a [`FORMAT_KEY`] entry names an mtanet checkpoint format other than [`FORMAT`]:
/// the files [`load`] refuses (other writers' entries, such as `pt`, are plain weights).
pub fn is_another_format(format: &str) -> bool {
    format.starts_with(FORMAT_FAMILY) && format != FORMAT
}

/// The metadata key of a checkpoint's loop state (JSON [`TrainState`]), written by [`save`] and
/// [`save_described`] and read by [`load`], the pick files and `model info`.
pub const STATE_KEY: &str = "state";

/// The JSON entry `key` of the metadata of the checkpoint at `path` (reads only its header),
/// parsed: `None` for a file without one (plain weights, or a checkpoint older than the key).
pub fn read_json_entry<T: serde::de::DeserializeOwned>(
    path: &Path,
    key: &str,
) -> anyhow::Result<Option<T>> {
    read_metadata(path)?
        .get(key)
        .map(|text| parse_entry(path, key, text))
        .transpose()
}

/// The JSON metadata entry `key` of the checkpoint at `path`, parsed (the error names both).
pub fn parse_entry<T: serde::de::DeserializeOwned>(
    path: &Path,
    key: &str,
    text: &str,
) -> anyhow::Result<T> {
    serde_json::from_str(text).with_context(|| format!("{}: bad `{key}` metadata", path.display()))
}

/// The metadata of a safetensors file (reads only its header).
pub fn read_metadata(path: &Path) -> anyhow::Result<std::collections::BTreeMap<String, String>> {
    use std::io::Read;
    let mut f = std::fs::File::open(path).with_context(|| format!("reading {}", path.display()))?;
    let mut len = [0u8; 8];
    f.read_exact(&mut len)
        .with_context(|| format!("{}: not a safetensors file", path.display()))?;
    let n = u64::from_le_bytes(len);
    let size = f.metadata().map(|m| m.len()).unwrap_or(0);
    if n > size.saturating_sub(8) || n > 100 << 20 {
        anyhow::bail!(
            "{}: not a safetensors file (header of {n} bytes)",
            path.display()
        );
    }
    let mut header = vec![0u8; n as usize];
    f.read_exact(&mut header)
        .with_context(|| format!("{}: truncated safetensors header", path.display()))?;
    let v: serde_json::Value = serde_json::from_slice(&header)
        .with_context(|| format!("{}: unreadable safetensors header", path.display()))?;
    Ok(v.get("__metadata__")
        .and_then(|m| m.as_object())
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| v.as_str().map(|s| (k.clone(), s.to_string())))
                .collect()
        })
        .unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A checkpoint written before evaluations were recorded keeps its `metrics.csv` rows up to
    /// its step; a new run's state keeps none until it evaluates; a recorded evaluation keeps
    /// the rows up to it, not those written after it.
    #[test]
    fn the_metrics_rows_a_state_includes() {
        let old: TrainState = serde_json::from_str(
            r#"{"stage":1,"epoch":0,"batch":0,"stage_step":0,"global_step":9,
                "optimizer_step":0,"images":72,"train_seconds":1.5,"finished":false}"#,
        )
        .unwrap();
        assert_eq!(old.evaluated_through, EvaluatedThrough::Unrecorded);
        assert_eq!(old.metrics_rows_through(), Some(9));
        let fresh = TrainState {
            global_step: 9,
            ..Default::default()
        };
        assert_eq!(fresh.metrics_rows_through(), None);
        let evaluated = TrainState {
            evaluated_through: EvaluatedThrough::Step(Some(6)),
            ..fresh.clone()
        };
        assert_eq!(evaluated.metrics_rows_through(), Some(6));
        let again: TrainState =
            serde_json::from_str(&serde_json::to_string(&evaluated).unwrap()).unwrap();
        assert_eq!(again, evaluated);
    }

    /// `read_json_entry` reads the loop state from the header alone: the saved one for a
    /// checkpoint, none for plain weights, and an error naming the file for a state that does
    /// not parse.
    #[test]
    fn the_state_read_from_the_header() {
        let d = tempfile::tempdir().unwrap();
        let w = Tensor::new(&[1f32, 2.0], &Device::Cpu).unwrap();
        let model = HashMap::from([("a.weight".to_string(), w.clone())]);
        let state = TrainState {
            stage: 2,
            global_step: 17,
            ..Default::default()
        };
        let ckpt = d.path().join("last.safetensors");
        save(&ckpt, &model, &HashMap::new(), &state).unwrap();
        assert_eq!(read_json_entry(&ckpt, "state").unwrap(), Some(state));
        let plain = d.path().join("weights.safetensors");
        candle_core::safetensors::save(&HashMap::from([("a.weight", w.clone())]), &plain).unwrap();
        assert_eq!(
            read_json_entry::<TrainState>(&plain, "state").unwrap(),
            None
        );
        let bad = d.path().join("bad.safetensors");
        let meta = HashMap::from([("state".to_string(), "{\"stage\": 1".to_string())]);
        let bytes = safetensors::serialize([("a.weight", &w)], Some(meta)).unwrap();
        std::fs::write(&bad, bytes).unwrap();
        let e = format!(
            "{:#}",
            read_json_entry::<TrainState>(&bad, "state").unwrap_err()
        );
        assert!(
            e.contains("bad.safetensors") && e.contains("bad `state`"),
            "{e}"
        );
    }

    #[test]
    fn round_trip() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("last.safetensors");
        let mut m = HashMap::new();
        m.insert(
            "a.weight".to_string(),
            Tensor::new(&[1f32, 2.0], &Device::Cpu).unwrap(),
        );
        let mut o = HashMap::new();
        o.insert(
            "m.a.weight".to_string(),
            Tensor::new(&[0.5f32, 0.25], &Device::Cpu).unwrap(),
        );
        let s = TrainState {
            stage: 1,
            global_step: 9,
            ..Default::default()
        };
        save(&p, &m, &o, &s).unwrap();
        let c = load(&p, &Device::Cpu).unwrap();
        assert_eq!(c.state, s);
        assert_eq!(
            c.model["a.weight"].to_vec1::<f32>().unwrap(),
            vec![1.0, 2.0]
        );
        assert_eq!(
            c.optim["m.a.weight"].to_vec1::<f32>().unwrap(),
            vec![0.5, 0.25]
        );
        for bad in [f32::NAN, f32::INFINITY] {
            let mut m = m.clone();
            m.insert(
                "b.weight".to_string(),
                Tensor::new(&[0f32, 1.0, bad], &Device::Cpu).unwrap(),
            );
            save(&p, &m, &o, &s).unwrap();
            let e = load(&p, &Device::Cpu).err().unwrap().to_string();
            assert!(
                e.contains("last.safetensors")
                    && e.contains("model.b.weight")
                    && e.contains("index 2"),
                "{e}"
            );
        }
        std::fs::write(&p, b"garbage").unwrap();
        let e = load(&p, &Device::Cpu).err().unwrap().to_string();
        assert!(e.contains("last.safetensors"), "{e}");
    }

    /// A checkpoint of another mtanet format version is refused, naming the file and both
    /// formats; a weights file whose `format` another writer set (`pt`) loads as plain weights.
    #[test]
    fn another_checkpoint_format_refused() {
        let d = tempfile::tempdir().unwrap();
        let w = Tensor::new(&[1f32, 2.0], &Device::Cpu).unwrap();
        let write = |name: &str, format: &str| {
            let p = d.path().join(name);
            let meta = HashMap::from([(FORMAT_KEY.to_string(), format.to_string())]);
            let bytes = safetensors::serialize([("model.a.weight", &w)], Some(meta)).unwrap();
            std::fs::write(&p, bytes).unwrap();
            p
        };
        let newer = write("newer.safetensors", "mtanet-checkpoint-2");
        let e = format!("{:#}", load(&newer, &Device::Cpu).err().unwrap());
        assert!(
            e.contains("newer.safetensors")
                && e.contains("`mtanet-checkpoint-2`")
                && e.contains("`mtanet-checkpoint-1`"),
            "{e}"
        );
        let torch = write("torch.safetensors", "pt");
        let c = load(&torch, &Device::Cpu).unwrap();
        assert_eq!(
            c.model["a.weight"].to_vec1::<f32>().unwrap(),
            vec![1.0, 2.0]
        );
        assert_eq!(c.state, TrainState::default());
        let ours = write("ours.safetensors", "mtanet-checkpoint-1");
        assert!(load(&ours, &Device::Cpu).is_ok());
    }
}
