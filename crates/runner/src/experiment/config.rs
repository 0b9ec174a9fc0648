//! The experiment schema: YAML files with `defaults`, named `profiles` and table `rows`.
//!
//! An experiment file is data (as in lightning-hydra-template / timm `train.py`): a base
//! configuration, profiles that override fields (`demo`, `paper`), and optional rows (one per
//! backbone of Table I). Every key is checked against this schema when the file is read, so a
//! typo fails with its line and column; overrides are merged as YAML values and checked again.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_yaml::Value;

use mtanet_affwild2::{Augment, CrossTaskOverlap, OnBadFrame, Sampling};
use mtanet_backbones::{BackboneKind, Precision};
use mtanet_losses::LossKind;

/// An error in an experiment file or an override, naming the file or the key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The YAML does not match the schema (unknown key, wrong type); carries line and column.
    #[error("{path}: {message}")]
    Schema {
        /// The file (or `--set` for command-line overrides).
        path: String,
        /// serde_yaml's message, with the key path, line and column.
        message: String,
    },
    /// A value is out of range or inconsistent.
    #[error("{path}: `{key}`: {message}")]
    Invalid {
        /// The file the value came from.
        path: String,
        /// The dotted key, e.g. `training.stages[0].lr`.
        key: String,
        /// What is wrong and how to fix it.
        message: String,
    },
    /// A profile or row that the file does not define.
    #[error("{path}: no {what} named `{name}` (defined: {defined})")]
    Unknown {
        /// The file.
        path: String,
        /// `profile` or `row`.
        what: &'static str,
        /// The requested name.
        name: String,
        /// The names the file defines.
        defined: String,
    },
}

/// One fully resolved experiment configuration (what a run uses and writes as `config.yaml`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Experiment name: runs go to `results/<experiment>/<run_id>/`.
    pub experiment: String,
    /// Master seed: weights, data order, augmentation and dropout derive from it.
    pub seed: u64,
    /// `cpu`, `cuda:N` or `auto` (CUDA 0 when built with `cuda` and present, else CPU).
    pub device: String,
    /// `f32` (default) or `bf16`: the backbone computes in bf16 with f32 master weights,
    /// BatchNorm, heads and losses (PyTorch-autocast style; meant for CUDA: on the CPU bf16
    /// adds casts around the f32 kernels and is slower than f32).
    pub precision: Precision,
    /// Where results go (relative to the working directory).
    pub results_dir: PathBuf,
    /// Data source and loader.
    pub data: DataConfig,
    /// Network.
    pub model: ModelConfig,
    /// Optimisation stages.
    pub training: TrainingConfig,
    /// Evaluation cadence and scoring.
    pub eval: EvalConfig,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            experiment: "default".into(),
            seed: 0,
            device: "auto".into(),
            precision: Precision::F32,
            results_dir: PathBuf::from("results"),
            data: DataConfig::default(),
            model: ModelConfig::default(),
            training: TrainingConfig::default(),
            eval: EvalConfig::default(),
        }
    }
}

/// Data source, sampling and loader settings.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct DataConfig {
    /// Aff-Wild2 root (the folder holding `annotations/` and `cropped_aligned/`); `null` means
    /// the synthetic set at `synthetic.dir`, generated on first use.
    pub root: Option<PathBuf>,
    /// The synthetic Aff-Wild2 used when `root` is null.
    pub synthetic: SyntheticConfig,
    /// `mixed` (every frame with any label) or `balanced` (per-task quota per batch).
    pub sampling: Sampling,
    /// Frames per batch.
    pub batch_size: usize,
    /// Decode threads (0 = all cores).
    pub workers: usize,
    /// Batches kept ready by the background loader.
    pub prefetch: usize,
    /// Side of the square network input in pixels.
    pub image_size: usize,
    /// Training augmentation (`null` disables it); never applied in evaluation.
    pub augment: Option<Augment>,
    /// `skip` (count and skip) or `error` (stop) on an unreadable JPEG.
    pub on_bad_frame: OnBadFrame,
    /// Resize images of another size (true) or reject them (false).
    pub resize: bool,
    /// `allow` or `exclude` videos that are in one task's train split and another's validation.
    pub cross_task_overlap: CrossTaskOverlap,
    /// Use at most this many training frames (evenly spaced); `null` = all.
    pub max_train_frames: Option<usize>,
    /// Use at most this many validation frames (evenly spaced); `null` = all.
    pub max_val_frames: Option<usize>,
}

impl Default for DataConfig {
    fn default() -> Self {
        Self {
            root: None,
            synthetic: SyntheticConfig::default(),
            sampling: Sampling::Mixed,
            batch_size: 32,
            workers: 0,
            prefetch: 4,
            image_size: 112,
            augment: Some(Augment::default()),
            on_bad_frame: OnBadFrame::Skip,
            resize: true,
            cross_task_overlap: CrossTaskOverlap::Allow,
            max_train_frames: None,
            max_val_frames: None,
        }
    }
}

/// The synthetic Aff-Wild2 (see `mtanet data synth`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct SyntheticConfig {
    /// Where it is generated (and found on later runs).
    pub dir: PathBuf,
    /// Number of videos.
    pub videos: usize,
    /// Frames per video.
    pub frames: usize,
    /// Generator seed (independent of the training seed).
    pub seed: u64,
}

impl Default for SyntheticConfig {
    fn default() -> Self {
        let d = mtanet_affwild2::SynthConfig::default();
        Self {
            dir: PathBuf::from("data/synthetic"),
            videos: d.videos,
            frames: d.frames,
            seed: d.seed,
        }
    }
}

/// The network: backbone, its size, pretrained weights and the MTANet head.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ModelConfig {
    /// `resnet50`, `resnext50_32x4d`, `resnext50_32x4d_cbam`, `seresnet50`, `senet50_vggface2`.
    pub backbone: BackboneKind,
    /// Divide every width by this (1 = full size); small variants of the same network.
    pub width_div: usize,
    /// Blocks per stage, e.g. `[1, 1, 1, 1]`; `null` = `[3, 4, 6, 3]`.
    pub depths: Option<[usize; 4]>,
    /// Group count of the 3x3 convs for ResNeXt variants; `null` = 32.
    pub groups: Option<usize>,
    /// Hugging Face hub id (`timm/resnet50.tv_in1k`) or a local `.safetensors` path; `null` = random init.
    pub pretrained: Option<String>,
    /// The MTANet head.
    pub head: HeadConfig,
}

impl Default for ModelConfig {
    fn default() -> Self {
        Self {
            backbone: BackboneKind::Senet50Vggface2,
            width_div: 1,
            depths: None,
            groups: None,
            pretrained: None,
            head: HeadConfig::default(),
        }
    }
}

/// The MTANet head (our reading of the paper's Fig. 1).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct HeadConfig {
    /// Width of each pooled branch (the shared encoder is twice this).
    pub hidden: usize,
    /// Dropout before each branch's linear layer.
    pub dropout: f32,
    /// `tanh` or `none` on the valence/arousal outputs.
    pub va_activation: String,
}

impl Default for HeadConfig {
    fn default() -> Self {
        Self {
            hidden: 512,
            dropout: 0.5,
            va_activation: "tanh".into(),
        }
    }
}

/// Optimisation: a list of stages run in order.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct TrainingConfig {
    /// The stages (the paper: Adam with the summed loss, then SGD with uncertainty weighting).
    pub stages: Vec<StageConfig>,
    /// Clip the global gradient norm to this value; `null` = no clipping.
    pub grad_clip: Option<f64>,
    /// Save a checkpoint every this many steps (and always at the end of each epoch).
    pub checkpoint_every: usize,
    /// Positive weights for the AU BCE (neg/pos ratio from the training set, capped at 10).
    pub au_pos_weight: bool,
    /// Log training scalars every this many steps.
    pub log_every: usize,
}

impl Default for TrainingConfig {
    fn default() -> Self {
        Self {
            stages: vec![StageConfig::default()],
            grad_clip: None,
            checkpoint_every: 200,
            au_pos_weight: false,
            log_every: 10,
        }
    }
}

/// `adam` or `sgd`.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum OptimizerKind {
    /// Adam with PyTorch semantics (L2 weight decay added to the gradient).
    Adam,
    /// SGD with momentum, PyTorch semantics.
    Sgd,
}

/// The learning-rate schedule within a stage.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "lowercase", tag = "kind")]
pub enum Schedule {
    /// Constant learning rate.
    Constant,
    /// Cosine decay from `lr` to `lr * min_factor` over the stage.
    Cosine {
        /// Final learning rate as a fraction of the initial one.
        #[serde(default)]
        min_factor: f64,
    },
    /// Multiply by `gamma` every `every` steps.
    Step {
        /// Steps between decays.
        every: usize,
        /// Decay factor.
        gamma: f64,
    },
}

/// One optimisation stage.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct StageConfig {
    /// Name shown in logs and TensorBoard tags.
    pub name: String,
    /// `adam` or `sgd`.
    pub optimizer: OptimizerKind,
    /// Initial learning rate.
    pub lr: f64,
    /// SGD momentum (ignored by Adam).
    pub momentum: f64,
    /// Adam betas.
    pub betas: [f64; 2],
    /// L2 weight decay (PyTorch `weight_decay`).
    pub weight_decay: f64,
    /// Apply weight decay to BatchNorm parameters and biases too (PyTorch default: true).
    pub decay_norm_and_bias: bool,
    /// Length in epochs (ignored when `steps` is set).
    pub epochs: usize,
    /// Length in optimizer steps; overrides `epochs`.
    pub steps: Option<usize>,
    /// `sum` or `uncertainty` (Kendall et al., Eq. 5).
    pub loss: LossKind,
    /// Learning-rate schedule.
    pub schedule: Schedule,
}

impl Default for StageConfig {
    fn default() -> Self {
        Self {
            name: "adam".into(),
            optimizer: OptimizerKind::Adam,
            lr: 1e-3,
            momentum: 0.9,
            betas: [0.9, 0.999],
            weight_decay: 0.0,
            decay_norm_and_bias: true,
            epochs: 1,
            steps: None,
            loss: LossKind::Sum,
            schedule: Schedule::Constant,
        }
    }
}

/// When and how to evaluate.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct EvalConfig {
    /// Evaluate every this many steps (0 = only at the end of each epoch).
    pub every_steps: usize,
    /// Frames per evaluation batch.
    pub batch_size: usize,
    /// Also choose per-AU thresholds on the validation set and report them.
    pub tune_au_thresholds: bool,
}

impl Default for EvalConfig {
    fn default() -> Self {
        Self {
            every_steps: 0,
            batch_size: 64,
            tune_au_thresholds: true,
        }
    }
}

/// The paper's reported values for one Table I row.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PaperValues {
    /// CCC valence.
    pub valence: f64,
    /// CCC arousal.
    pub arousal: f64,
    /// AU column (F1 for MTANet rows, the composite for the baseline; see the README).
    pub au: f64,
    /// Expression column.
    pub expr: f64,
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
        config.validate(&self.path)?;
        Ok(config)
    }
}

/// Merges a whole section (defaults, a profile, a row's `set`); an absent or empty one is a no-op.
fn merge_section(base: &mut Value, section: &Value) {
    if !section.is_null() {
        merge(base, section);
    }
}

/// Deep-merges `over` into `base` (mappings merge by key; anything else replaces).
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
        (b, o) => *b = o.clone(),
    }
}

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
    fn apply(&self, root: &mut Value) {
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

impl Config {
    /// Checks values that the types allow but training does not.
    pub fn validate(&self, path: &str) -> Result<(), ConfigError> {
        let bad = |key: String, message: String| {
            Err(ConfigError::Invalid {
                path: path.to_string(),
                key,
                message,
            })
        };
        if self.training.stages.is_empty() {
            return bad(
                "training.stages".into(),
                "at least one stage is required (e.g. `- {optimizer: adam, lr: 0.001, epochs: 1}`)"
                    .into(),
            );
        }
        for (i, s) in self.training.stages.iter().enumerate() {
            let k = |f: &str| format!("training.stages[{i}].{f}");
            if !(s.lr.is_finite() && s.lr > 0.0) {
                return bad(k("lr"), format!("must be a positive number, got {}", s.lr));
            }
            if !(s.weight_decay.is_finite() && s.weight_decay >= 0.0) {
                return bad(
                    k("weight_decay"),
                    format!("must be >= 0, got {}", s.weight_decay),
                );
            }
            if !(0.0..1.0).contains(&s.momentum) {
                return bad(
                    k("momentum"),
                    format!("must be in [0, 1), got {}", s.momentum),
                );
            }
            if s.betas.iter().any(|b| !(0.0..1.0).contains(b)) {
                return bad(k("betas"), format!("must be in [0, 1), got {:?}", s.betas));
            }
            if s.steps == Some(0) || (s.steps.is_none() && s.epochs == 0) {
                return bad(
                    k("epochs"),
                    "a stage needs epochs >= 1 or steps >= 1".into(),
                );
            }
            if let Schedule::Step { every: 0, .. } = s.schedule {
                return bad(k("schedule.every"), "must be >= 1".into());
            }
        }
        if self.data.batch_size == 0 {
            return bad("data.batch_size".into(), "must be >= 1".into());
        }
        if self.eval.batch_size == 0 {
            return bad("eval.batch_size".into(), "must be >= 1".into());
        }
        if self.data.image_size < 32 {
            return bad(
                "data.image_size".into(),
                format!("must be >= 32, got {}", self.data.image_size),
            );
        }
        if self.model.width_div == 0 || 64 % self.model.width_div != 0 {
            return bad(
                "model.width_div".into(),
                format!("must divide 64, got {}", self.model.width_div),
            );
        }
        if let Some(d) = self.model.depths {
            if d.contains(&0) {
                return bad("model.depths".into(), "every stage needs >= 1 block".into());
            }
        }
        if !(0.0..1.0).contains(&self.model.head.dropout) {
            return bad(
                "model.head.dropout".into(),
                format!("must be in [0, 1), got {}", self.model.head.dropout),
            );
        }
        if !matches!(self.model.head.va_activation.as_str(), "tanh" | "none") {
            return bad(
                "model.head.va_activation".into(),
                format!("`tanh` or `none`, got `{}`", self.model.head.va_activation),
            );
        }
        if let Some(c) = self.training.grad_clip {
            if !(c.is_finite() && c > 0.0) {
                return bad("training.grad_clip".into(), format!("must be > 0, got {c}"));
            }
        }
        crate::build::device::parse_device(&self.device).map_err(|message| {
            ConfigError::Invalid {
                path: path.to_string(),
                key: "device".into(),
                message,
            }
        })?;
        Ok(())
    }

    /// The configuration as YAML (written beside every run).
    pub fn to_yaml(&self) -> String {
        serde_yaml::to_string(self).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        for p in ["demo", "paper"] {
            for r in &f.rows {
                f.resolve(Some(p), Some(&r.name), &[]).unwrap();
            }
        }
    }
}
