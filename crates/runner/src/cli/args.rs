//! The arguments of each command.

use std::path::PathBuf;

use clap::{Args, Subcommand};
use mtanet_affwild2::SynthConfig;

/// `mtanet predict`.
#[derive(Args, Debug)]
pub struct PredictArgs {
    /// A run directory (config.yaml + the checkpoint its figures come from:
    /// checkpoints/best.safetensors when selection.criterion is not `last` and that file
    /// exists, else checkpoints/last.safetensors) or a checkpoint file, used as given.
    #[arg(long)]
    pub checkpoint: PathBuf,
    /// The run config, when the checkpoint file has no ../config.yaml.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Aff-Wild2 root (holding annotations/ and cropped_aligned/).
    #[arg(long)]
    pub root: Option<PathBuf>,
    /// Validation_Set, Training_Set / Train_Set, or Test (the unannotated videos).
    #[arg(long, default_value = "Validation_Set")]
    pub split: String,
    /// Output folder.
    #[arg(long)]
    pub out: PathBuf,
    /// Only these videos: lines `video[,frames]`.
    #[arg(long)]
    pub videos: Option<PathBuf>,
    /// A plain folder of aligned face crops instead of a split: writes predictions.csv.
    #[arg(long)]
    pub frames: Option<PathBuf>,
    /// Temporal smoothing window in frames (mean for VA / AU, majority for EXPR).
    #[arg(long, default_value_t = 0)]
    pub smooth: usize,
    /// Use the per-AU thresholds tuned on validation (the run's report.json).
    #[arg(long)]
    pub tuned_thresholds: bool,
    /// Batch size (default: the run's eval.batch_size).
    #[arg(long)]
    pub batch_size: Option<usize>,
    /// Device: cpu, cuda:N or auto (default: the run's).
    #[arg(long)]
    pub device: Option<String>,
    /// Submission format: abaw2020 (one txt per video and task), abaw2023 (one file per
    /// single-task track) or mtl (the multi-task track's file); default: abaw2020 for a
    /// 2020/2021 layout, abaw2023 for a 2022+ layout.
    #[arg(long)]
    pub format: Option<crate::submission::SubmissionFormat>,
    /// Ignore the thresholds and smoothing that `mtanet tune` stored in the checkpoint.
    #[arg(long)]
    pub raw: bool,
    /// No progress bar.
    #[arg(long)]
    pub quiet: bool,
}

/// `mtanet tune`.
#[derive(Args, Debug)]
pub struct TuneArgs {
    /// A run directory (config.yaml + the checkpoint its figures come from, as for `predict`)
    /// or a checkpoint file, used as given; the choice is stored in this checkpoint's metadata.
    #[arg(long)]
    pub checkpoint: PathBuf,
    /// The run config, when the checkpoint file has no ../config.yaml.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Aff-Wild2 root (holding annotations/ and cropped_aligned/).
    #[arg(long)]
    pub root: PathBuf,
    /// The labelled split to tune on.
    #[arg(long, default_value = "Validation_Set")]
    pub split: String,
    /// Batch size (default: the run's eval.batch_size).
    #[arg(long)]
    pub batch_size: Option<usize>,
    /// Device: cpu, cuda:N or auto (default: the run's).
    #[arg(long)]
    pub device: Option<String>,
    /// Print the choice without writing the checkpoint.
    #[arg(long)]
    pub dry_run: bool,
    /// No progress bar.
    #[arg(long)]
    pub quiet: bool,
}

/// `mtanet submit ...`.
#[derive(Subcommand, Debug)]
pub enum SubmitCommand {
    /// Check a prediction folder: every frame once (in the sample file's order when given),
    /// headers, column counts and value ranges; prints the problems by file and line and
    /// exits non-zero on any.
    Validate(ValidateArgs),
}

/// `mtanet submit validate`.
#[derive(Args, Debug)]
pub struct ValidateArgs {
    /// The prediction folder.
    pub pred: PathBuf,
    /// abaw2020, abaw2023 or mtl (default: that of the root's layout, as predict picks).
    #[arg(long)]
    pub format: Option<crate::submission::SubmissionFormat>,
    /// Aff-Wild2 root (holding annotations/ and cropped_aligned/).
    #[arg(long)]
    pub root: PathBuf,
    /// Validation_Set, Training_Set / Train_Set, or Test (the unannotated videos).
    #[arg(long, default_value = "Validation_Set")]
    pub split: String,
    /// The organisers' sample file: its first column gives the rows expected, in order.
    #[arg(long)]
    pub sample: Option<PathBuf>,
    /// Only these videos: lines `video[,frames]` (as predict takes).
    #[arg(long)]
    pub videos: Option<PathBuf>,
    /// Problems shown per kind (all are counted).
    #[arg(long, default_value_t = 5)]
    pub max_shown: usize,
}

/// `mtanet evaluate`.
#[derive(Args, Debug)]
pub struct EvaluateArgs {
    /// Folder holding VA_Set/, AU_Set/, EXPR_Set/ prediction files.
    #[arg(long)]
    pub pred: PathBuf,
    /// Aff-Wild2 root (holding annotations/ and cropped_aligned/).
    #[arg(long)]
    pub root: PathBuf,
    /// The annotated split to score against.
    #[arg(long, default_value = "Validation_Set")]
    pub split: String,
    /// Print the report as one JSON object.
    #[arg(long)]
    pub json: bool,
    /// Score every labelled frame, not only those with a face crop (test-set protocol).
    #[arg(long)]
    pub all_frames: bool,
}

/// `mtanet train`.
#[derive(Args, Debug)]
pub struct TrainArgs {
    /// Experiment YAML (default: experiments/table1.yaml, else the embedded copy).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Profile of the file to apply (default, where the file defines it: paper when
    /// AFFWILD2_ROOT is set, else demo; a file without that profile applies none).
    #[arg(long)]
    pub profile: Option<String>,
    /// Row of the file to apply (e.g. resnet50); a `--set` of a key the row sets makes the
    /// run another one, recorded without the row's name and paper values.
    #[arg(long)]
    pub row: Option<String>,
    /// Override a key: `--set training.stages.0.lr=0.01` (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
    /// Continue this run directory from its last checkpoint, with the configuration it was
    /// trained with (its config.yaml, which must match the checkpoint's); refused together
    /// with --config, --profile, --row or --set.
    #[arg(long)]
    pub resume: Option<PathBuf>,
    /// Device: cpu, cuda:N or auto (overrides the YAML; also applies to a resume).
    #[arg(long)]
    pub device: Option<String>,
    /// Stop (with a checkpoint) after this many steps in this invocation.
    #[arg(long, hide = true)]
    pub max_steps: Option<u64>,
    /// No progress bars.
    #[arg(long)]
    pub quiet: bool,
}

/// `mtanet table1`.
#[derive(Args, Debug)]
pub struct TableArgs {
    /// Experiment YAML (default: experiments/table1.yaml, else the embedded copy).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// The table's options.
    #[command(flatten)]
    pub table: RowsArgs,
}

/// `mtanet run`.
#[derive(Args, Debug)]
pub struct RunArgs {
    /// An experiment file, or a name under experiments/ (`heads` = experiments/heads.yaml).
    pub experiment: String,
    /// The table's options.
    #[command(flatten)]
    pub table: RowsArgs,
}

/// Options shared by the table commands.
#[derive(Args, Debug)]
pub struct RowsArgs {
    /// demo | paper (default: paper when AFFWILD2_ROOT is set, else demo).
    #[arg(long)]
    pub profile: Option<String>,
    /// Seeds per row; > 1 reports mean ± std and a 95% interval.
    #[arg(long, default_value_t = 1)]
    pub seeds: usize,
    /// Only these rows (comma-separated).
    #[arg(long, value_delimiter = ',')]
    pub rows: Vec<String>,
    /// Override a key for every row (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
    /// No progress bars.
    #[arg(long)]
    pub quiet: bool,
}

/// `mtanet ablate`.
#[derive(Args, Debug)]
pub struct AblateArgs {
    /// `key=value` overrides; `backbone=X` selects the row (aliases: senet50, resnext50, ...).
    pub overrides: Vec<String>,
    /// demo | paper (default: paper when AFFWILD2_ROOT is set, else demo).
    #[arg(long)]
    pub profile: Option<String>,
    /// Seeds.
    #[arg(long, default_value_t = 1)]
    pub seeds: usize,
    /// No progress bars.
    #[arg(long)]
    pub quiet: bool,
}

/// `mtanet data ...`.
#[derive(Subcommand, Debug)]
pub enum DataCommand {
    /// Write a synthetic Aff-Wild2 in the exact ABAW 2020 layout: faces whose geometry and
    /// colour encode their labels, with the real release's missing labels and crops.
    Synth {
        /// Output folder.
        #[arg(long, default_value = "data/synthetic")]
        out: PathBuf,
        /// Videos (subjects; a `_left`/`_right` pair counts as two); at least 4.
        #[arg(long, default_value_t = SynthConfig::default().videos)]
        videos: usize,
        /// Mean annotation lines (frames) per video: each video draws 0.7x to 1.3x of it.
        #[arg(long, default_value_t = SynthConfig::default().frames)]
        frames: usize,
        /// Generator seed: the same seed writes byte-identical files.
        #[arg(long, default_value_t = SynthConfig::default().seed)]
        seed: u64,
        /// The full-size set for benchmarks (560 videos x ~5,000 frames, ~2.8 M annotation
        /// lines per task); overrides --videos and --frames.
        #[arg(long)]
        full: bool,
        /// Folder layout: abaw2020 (`*_Set`, 8 AUs, 7 expressions) or abaw2022 (`*_Challenge`,
        /// 12 AUs, 8 expressions with Other).
        #[arg(long, default_value = "abaw2020")]
        layout: String,
    },
    /// Per split and task: videos, frames, labels, missing jpgs, histograms.
    Stats {
        /// Aff-Wild2 root (holding annotations/ and cropped_aligned/).
        #[arg(long)]
        root: PathBuf,
        /// Print one JSON object instead of text.
        #[arg(long)]
        json: bool,
    },
}

/// Backbone selection shared by the model subcommands.
#[derive(Args, Debug)]
pub struct BackboneArgs {
    /// resnet50 | resnext50_32x4d | resnext50_32x4d_cbam | seresnet50 | senet50_vggface2.
    #[arg(long)]
    pub backbone: String,
    /// Divide every width by this (1 = full size).
    #[arg(long = "width", default_value_t = 1)]
    pub width_div: usize,
    /// Blocks per stage, e.g. 1,1,1,1.
    #[arg(long, value_delimiter = ',')]
    pub depths: Option<Vec<usize>>,
    /// Groups of the ResNeXt 3x3 convs.
    #[arg(long)]
    pub groups: Option<usize>,
}

/// `mtanet model ...`.
#[derive(Subcommand, Debug)]
pub enum ModelCommand {
    /// Print the layers and `parameters: N` (backbone without classifier).
    Summary(BackboneArgs),
    /// What a checkpoint says about itself: its vocabulary (AU names, expression classes in
    /// head order), model configuration, input preprocessing, dataset layout, commit, and
    /// loop state. Takes a run directory or a `.safetensors` file.
    Info {
        /// A run directory (the checkpoint `predict` uses) or a checkpoint file.
        checkpoint: PathBuf,
    },
    /// Run one batch through a backbone with given weights and write its features, or with
    /// `--mtanet RUN_DIR` through a trained run's whole MTANet and write its three outputs.
    Forward {
        /// resnet50 | resnext50_32x4d | resnext50_32x4d_cbam | seresnet50 | senet50_vggface2
        /// (not with `--mtanet`, which reads the run's config).
        #[arg(long, required_unless_present = "mtanet", conflicts_with = "mtanet")]
        backbone: Option<String>,
        /// Divide every width by this (1 = full size).
        #[arg(long = "width", default_value_t = 1, conflicts_with = "mtanet")]
        width_div: usize,
        /// Blocks per stage, e.g. 1,1,1,1.
        #[arg(long, value_delimiter = ',', conflicts_with = "mtanet")]
        depths: Option<Vec<usize>>,
        /// Groups of the ResNeXt 3x3 convs.
        #[arg(long, conflicts_with = "mtanet")]
        groups: Option<usize>,
        /// Weights (PyTorch state-dict names) as safetensors (the backbone's; not with
        /// `--mtanet`).
        #[arg(long, required_unless_present = "mtanet", conflicts_with = "mtanet")]
        weights: Option<PathBuf>,
        /// A run directory (the checkpoint `predict` uses) or one of its
        /// `checkpoints/*.safetensors`: run the whole MTANet of that run in eval mode, f32, on
        /// the CPU, and write `va`, `au_logits`, `expr_logits`, `feature_map` and `features`
        /// (the shared encoder's output).
        #[arg(long, value_name = "RUN_DIR")]
        mtanet: Option<PathBuf>,
        /// Input safetensors holding `input` (N, 3, H, W) f32, normalised as the run's
        /// backbone expects.
        #[arg(long)]
        input: PathBuf,
        /// Output safetensors: `feature_map` and `features` (its global average); with
        /// `--mtanet` the outputs listed there.
        #[arg(long)]
        out: PathBuf,
        /// Train mode (batch statistics) instead of eval mode (not with `--mtanet`).
        #[arg(long, conflicts_with = "mtanet")]
        train: bool,
    },
}

/// Options of `mtanet bench`.
#[derive(Args, Debug)]
pub struct BenchArgs {
    /// Backbones, comma-separated (default: all five).
    #[arg(long, value_delimiter = ',')]
    pub backbones: Vec<String>,
    /// Batch sizes, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "16,32")]
    pub batches: Vec<usize>,
    /// Threads for both frameworks.
    #[arg(long, default_value_t = 2)]
    pub threads: usize,
    /// Timed steps per point and round (the best of all rounds is reported).
    #[arg(long, default_value_t = 4)]
    pub steps: usize,
    /// Untimed warm-up steps per point and round.
    #[arg(long, default_value_t = 1)]
    pub warmup: usize,
    /// Rounds per point, alternating ours and PyTorch, each a fresh process: this shared
    /// machine's speed drifts by 10-30% over minutes, and one back-to-back pair once put a
    /// point 0.1 lower than the next run of the same code.
    #[arg(long, default_value_t = 2)]
    pub rounds: usize,
    /// Python with torch, torchvision and timm for the comparison.
    #[arg(long, default_value = "python3")]
    pub python: String,
    /// Skip PyTorch.
    #[arg(long)]
    pub no_torch: bool,
    /// Output CSV.
    #[arg(long, default_value = "results/bench/train.csv")]
    pub out: PathBuf,
}
