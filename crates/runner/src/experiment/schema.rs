//! The configuration of one run: data, model, training stages, evaluation, with the
//! defaults that apply when an experiment file leaves a key out.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use mtanet_affwild2::{Augment, CrossTaskOverlap, OnBadFrame, Sampling};
use mtanet_backbones::{BackboneKind, EncoderPooling, Precision};
use mtanet_losses::{AuReduction, LossKind};

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
    /// Which evaluation's figures (and weights) a run reports.
    pub selection: SelectionConfig,
    /// How the task losses reduce.
    pub losses: LossesConfig,
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
            selection: SelectionConfig::default(),
            losses: LossesConfig::default(),
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
    /// Refuse to start without `root` (the paper profile): a mistyped `AFFWILD2_ROOT` must
    /// not silently train full-size networks on the synthetic faces.
    pub require_real: bool,
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
            require_real: false,
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
    /// Linear layers per task decoder (1 = MTANet; more: ReLU between them, Sec. IV).
    pub decoder_layers: usize,
    /// The shared encoder's pooling branches: `avg_max` (MTANet), `avg` or `max`.
    pub pooling: EncoderPooling,
}

impl Default for HeadConfig {
    fn default() -> Self {
        Self {
            hidden: 512,
            dropout: 0.5,
            va_activation: "tanh".into(),
            decoder_layers: 1,
            pooling: EncoderPooling::AvgMax,
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
    /// The weights this stage starts from: the previous stage's `last` or its `best`
    /// (under `selection.criterion`).
    pub init: StageInit,
}

/// The weights a stage starts from.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum StageInit {
    /// Where the previous stage ended.
    #[default]
    Last,
    /// The best weights so far under `selection.criterion` (`best.safetensors`).
    Best,
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
            init: StageInit::Last,
        }
    }
}

/// When and how to evaluate.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct EvalConfig {
    /// Evaluate every this many steps (0 = only at epoch ends).
    pub every_steps: usize,
    /// Evaluate at the end of every this many epochs (and at the end of the run).
    pub every_epochs: usize,
    /// Frames per evaluation batch.
    pub batch_size: usize,
    /// Also choose per-AU thresholds on the validation set and report them.
    pub tune_au_thresholds: bool,
}

impl Default for EvalConfig {
    fn default() -> Self {
        Self {
            every_steps: 0,
            every_epochs: 1,
            batch_size: 64,
            tune_au_thresholds: true,
        }
    }
}

/// Which evaluation's figures a run reports (model selection; the paper is silent, ABAW
/// entries report the best validation epoch).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct SelectionConfig {
    /// `last`, `total` or `per_task`.
    pub criterion: Criterion,
}

/// A model-selection criterion over the run's evaluations.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Criterion {
    /// The last evaluation.
    #[default]
    Last,
    /// The evaluation with the highest total: VA score (mean CCC) + AU score + EXPR score, as
    /// the release is scored; its weights are `checkpoints/best.safetensors`.
    Total,
    /// Each task's figures from the evaluation where that task's score was highest (as
    /// challenge entries report them); `best.safetensors` holds the best-total weights.
    PerTask,
}

impl std::fmt::Display for Criterion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Criterion::Last => "last",
            Criterion::Total => "total",
            Criterion::PerTask => "per_task",
        })
    }
}

/// How the task losses reduce over frames and labels.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LossesConfig {
    /// `sum` over the AUs and mean over labelled frames (paper Eq. 2), or `mean` over frames
    /// x AUs (PyTorch's `BCEWithLogitsLoss` default).
    pub au_reduction: AuReduction,
}
