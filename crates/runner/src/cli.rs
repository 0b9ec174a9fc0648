//! The `mtanet` command line: the only place that wires the crates together.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};

use crate::experiment::{ExperimentFile, Override};
use crate::record::report::short_report;
use crate::tables::table1::{self, Table1Options};
use crate::training::{self, RunContext};

/// MTANet (ABAW 2020) multi-task facial affect recognition: train, reproduce Table I, compare.
#[derive(Parser, Debug)]
#[command(name = "mtanet", version, about, long_about = None)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Train one configuration of an experiment file (or resume a run).
    Train(TrainArgs),
    /// Reproduce Table I: every backbone row, the paper's values and our deltas.
    Table1(TableArgs),
    /// Run one Table I row with overrides, e.g. `mtanet ablate backbone=senet50 seed=3`.
    Ablate(AblateArgs),
    /// Print result CSVs (table1.csv, runs.csv) side by side with deltas.
    Compare {
        /// Two or more CSV files.
        #[arg(required = true, num_args = 2..)]
        files: Vec<PathBuf>,
    },
    /// Dataset tools.
    #[command(subcommand)]
    Data(DataCommand),
    /// Model tools.
    #[command(subcommand)]
    Model(ModelCommand),
    /// CPU-vs-GPU conformance of every op and backbone and GPU train/eval img/s: the Rust half
    /// of scripts/gpu-check.sh (`--probe`: only check that the device works).
    GpuCheck(crate::gpu_check::GpuCheckArgs),
    /// Train-step and eval img/s of every full-size backbone beside PyTorch on this machine,
    /// with ratios, GFLOP/s and peak memory; writes `results/bench/train.csv`.
    Bench(BenchArgs),
    /// One (backbone, batch) point of `bench`, measured in this process; prints JSON.
    #[command(hide = true)]
    BenchOne {
        /// Backbone name.
        #[arg(long)]
        backbone: String,
        /// Batch size.
        #[arg(long)]
        batch: usize,
        /// Timed steps.
        #[arg(long, default_value_t = 3)]
        steps: usize,
        /// Untimed warm-up steps.
        #[arg(long, default_value_t = 1)]
        warmup: usize,
    },
    /// Predict a split (or the test set, or a folder of crops) with a trained checkpoint,
    /// writing ABAW 2020 submission files (`VA_Set/`, `AU_Set/`, `EXPR_Set/`).
    Predict {
        /// A run directory (config.yaml + checkpoints/last.safetensors) or a checkpoint file.
        #[arg(long)]
        checkpoint: PathBuf,
        /// The run config, when the checkpoint file has no ../config.yaml.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Aff-Wild2 root (holding annotations/ and cropped_aligned/).
        #[arg(long)]
        root: Option<PathBuf>,
        /// Validation_Set, Training_Set / Train_Set, or Test (the unannotated videos).
        #[arg(long, default_value = "Validation_Set")]
        split: String,
        /// Output folder.
        #[arg(long)]
        out: PathBuf,
        /// Only these videos: lines `video[,frames]`.
        #[arg(long)]
        videos: Option<PathBuf>,
        /// A plain folder of aligned face crops instead of a split: writes predictions.csv.
        #[arg(long)]
        frames: Option<PathBuf>,
        /// Temporal smoothing window in frames (mean for VA / AU, majority for EXPR).
        #[arg(long, default_value_t = 0)]
        smooth: usize,
        /// Use the per-AU thresholds tuned on validation (the run's report.json).
        #[arg(long)]
        tuned_thresholds: bool,
        /// Batch size (default: the run's eval.batch_size).
        #[arg(long)]
        batch_size: Option<usize>,
        /// Device: cpu, cuda:N or auto (default: the run's).
        #[arg(long)]
        device: Option<String>,
        /// No progress bar.
        #[arg(long)]
        quiet: bool,
    },
    /// Score a folder of prediction files (ours or a peer's) with the ABAW metrics.
    Evaluate {
        /// Folder holding VA_Set/, AU_Set/, EXPR_Set/ prediction files.
        #[arg(long)]
        pred: PathBuf,
        /// Aff-Wild2 root (holding annotations/ and cropped_aligned/).
        #[arg(long)]
        root: PathBuf,
        /// The annotated split to score against.
        #[arg(long, default_value = "Validation_Set")]
        split: String,
        /// Print the report as one JSON object.
        #[arg(long)]
        json: bool,
        /// Score every labelled frame, not only those with a face crop (test-set protocol).
        #[arg(long)]
        all_frames: bool,
    },
}

/// `mtanet train`.
#[derive(Args, Debug)]
pub struct TrainArgs {
    /// Experiment YAML (defaults: experiments/table1.yaml).
    #[arg(long, default_value = "experiments/table1.yaml")]
    pub config: PathBuf,
    /// Profile of the file to apply (e.g. demo, paper).
    #[arg(long)]
    pub profile: Option<String>,
    /// Row of the file to apply (e.g. resnet50).
    #[arg(long)]
    pub row: Option<String>,
    /// Override a key: `--set training.stages.0.lr=0.01` (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
    /// Continue this run directory from its last checkpoint (its config.yaml is used).
    #[arg(long)]
    pub resume: Option<PathBuf>,
    /// Device: cpu, cuda:N or auto (overrides the YAML).
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
    /// Write a synthetic Aff-Wild2 in the exact ABAW 2020 layout.
    Synth {
        /// Output folder.
        #[arg(long, default_value = "data/synthetic")]
        out: PathBuf,
        /// Number of videos (default: the small demo size).
        #[arg(long)]
        videos: Option<usize>,
        /// Frames per video.
        #[arg(long)]
        frames: Option<usize>,
        /// Generator seed.
        #[arg(long)]
        seed: Option<u64>,
        /// The full-size set (560 videos, ~2.8 M annotation lines per task) for benchmarks.
        #[arg(long)]
        full: bool,
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
    /// Run one batch through a backbone with given weights and write its features.
    Forward {
        /// The backbone.
        #[command(flatten)]
        backbone: BackboneArgs,
        /// Weights (PyTorch state-dict names) as safetensors.
        #[arg(long)]
        weights: PathBuf,
        /// Input safetensors holding `input` (N, 3, H, W) f32.
        #[arg(long)]
        input: PathBuf,
        /// Output safetensors: `feature_map` and `features` (its global average).
        #[arg(long)]
        out: PathBuf,
        /// Train mode (batch statistics) instead of eval mode.
        #[arg(long)]
        train: bool,
    },
}

fn parse_overrides(v: &[String]) -> anyhow::Result<Vec<Override>> {
    v.iter()
        .map(|s| s.parse::<Override>().map_err(anyhow::Error::from))
        .collect()
}

fn backbone_config(a: &BackboneArgs) -> anyhow::Result<mtanet_backbones::ResNetConfig> {
    let kind: mtanet_backbones::BackboneKind = a
        .backbone
        .parse()
        .map_err(|e| anyhow::anyhow!("--backbone {}: {e}", a.backbone))?;
    let depths = match &a.depths {
        None => None,
        Some(d) if d.len() == 4 => Some([d[0], d[1], d[2], d[3]]),
        Some(d) => anyhow::bail!("--depths needs 4 numbers, got {d:?}"),
    };
    Ok(mtanet_backbones::ResNetConfig::from_kind(&kind).scaled(a.width_div, depths, a.groups))
}

/// Sets sane runtime defaults for CPU training before any candle op runs (each can be
/// overridden by setting the variable yourself):
/// - `RAYON_NUM_THREADS` = available cores: candle otherwise parses /proc/cpuinfo on every matmul;
/// - `CANDLE_NUM_THREADS=1`: candle's elementwise `BarrierPool` spin-waits against the rayon
///   threads that run our convolutions; measured on 2 cores, a demo training step took
///   2.0 s with the pool and 0.8 s without it (README, "Runtime defaults").
fn runtime_defaults() {
    if std::env::var_os("RAYON_NUM_THREADS").is_none() {
        let n = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1);
        std::env::set_var("RAYON_NUM_THREADS", n.to_string());
    }
    if std::env::var_os("CANDLE_NUM_THREADS").is_none() {
        std::env::set_var("CANDLE_NUM_THREADS", "1");
    }
    keep_freed_memory();
}

/// glibc returns every freed block above 128 KiB to the kernel (`munmap`), so each op's
/// fresh multi-megabyte output is page-faulted and zeroed again, every step (~10% of a CPU
/// training step in `perf`). Raising the mmap threshold to its 32 MiB maximum and the trim
/// threshold to 1 GiB lets freed activations be reused; same effect as
/// `GLIBC_TUNABLES=glibc.malloc.mmap_threshold=...`, which takes precedence when set.
fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if std::env::var_os("GLIBC_TUNABLES").is_none() {
        // SAFETY: mallopt only changes allocator thresholds; called before any worker thread.
        unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
            libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 30);
        }
    }
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

/// Runs the `mtanet` command line.
pub fn main() -> anyhow::Result<()> {
    runtime_defaults();
    crate::record::log_file::init();
    let cli = Cli::parse();
    match cli.command {
        Command::Train(a) => {
            training::install_ctrlc();
            let (config, ctx) = if let Some(dir) = &a.resume {
                let path = dir.join("config.yaml");
                let text = std::fs::read_to_string(&path).with_context(|| {
                    format!("cannot resume: {} is not a run directory", dir.display())
                })?;
                let config: crate::experiment::Config = serde_yaml::from_str(&text)
                    .with_context(|| format!("{}: invalid run config", path.display()))?;
                (
                    config,
                    RunContext {
                        resume: Some(dir.clone()),
                        ..Default::default()
                    },
                )
            } else {
                let file = ExperimentFile::load(&a.config)?;
                let mut sets = parse_overrides(&a.set)?;
                if let Some(d) = &a.device {
                    sets.push(format!("device={d}").parse()?);
                }
                let profile = a.profile.clone();
                let sets = match &profile {
                    Some(p) => table1::env_overrides(p, &sets),
                    None => sets,
                };
                let config = file.resolve(profile.as_deref(), a.row.as_deref(), &sets)?;
                let paper = a
                    .row
                    .as_ref()
                    .and_then(|r| file.rows.iter().find(|x| &x.name == r))
                    .and_then(|r| r.paper.as_ref())
                    .map(|p| [p.valence, p.arousal, p.au, p.expr]);
                (
                    config,
                    RunContext {
                        profile,
                        row: a.row.clone(),
                        paper,
                        ..Default::default()
                    },
                )
            };
            let ctx = RunContext {
                max_steps: a.max_steps,
                quiet: a.quiet,
                ..ctx
            };
            let out = training::run(&config, &ctx)?;
            if let Some(r) = &out.report {
                println!("{}", short_report(r));
            }
            println!("run directory: {}", out.run_dir.display());
            if !out.finished {
                std::process::exit(3);
            }
        }
        Command::Table1(a) => {
            training::install_ctrlc();
            table1::run(&Table1Options {
                config: a.config,
                profile: a.profile,
                seeds: a.seeds,
                rows: a.rows,
                overrides: parse_overrides(&a.set)?,
                quiet: a.quiet,
                write_table: true,
            })?;
        }
        Command::Ablate(a) => {
            training::install_ctrlc();
            let overrides = parse_overrides(&a.overrides)?;
            let rows: Vec<String> = overrides
                .iter()
                .filter(|o| o.key == ["model", "backbone"])
                .filter_map(|o| o.value.as_str().map(str::to_string))
                .collect();
            let file = table1::load_experiment(None)?;
            let rows = if rows.iter().all(|r| file.rows.iter().any(|x| &x.name == r)) {
                rows
            } else {
                Vec::new()
            };
            let overrides = if rows.is_empty() {
                overrides
            } else {
                overrides
                    .into_iter()
                    .filter(|o| o.key != ["model", "backbone"])
                    .collect()
            };
            table1::run(&Table1Options {
                config: None,
                profile: a.profile,
                seeds: a.seeds,
                rows: if rows.is_empty() {
                    vec![file.rows[0].name.clone()]
                } else {
                    rows
                },
                overrides,
                quiet: a.quiet,
                write_table: false,
            })?;
        }
        Command::Compare { files } => {
            print!("{}", crate::tables::compare::compare(&files)?);
        }
        Command::Data(DataCommand::Synth {
            out,
            videos,
            frames,
            seed,
            full,
        }) => {
            let d = mtanet_affwild2::SynthConfig::default();
            let cfg = mtanet_affwild2::SynthConfig {
                videos: videos.unwrap_or(d.videos),
                frames: frames.unwrap_or(d.frames),
                seed: seed.unwrap_or(d.seed),
                full,
            };
            let t = std::time::Instant::now();
            let report = mtanet_affwild2::generate(&out, &cfg)
                .with_context(|| format!("generating {}", out.display()))?;
            crate::record::atomic_io::write_atomic(
                &out.join("synth_report.json"),
                serde_json::to_string_pretty(&report)?.as_bytes(),
            )?;
            println!("{report}");
            println!(
                "wrote {} in {:.1} s",
                out.display(),
                t.elapsed().as_secs_f64()
            );
        }
        Command::Data(DataCommand::Stats { root, json }) => {
            let index = mtanet_affwild2::DatasetIndex::load(&root, &Default::default())
                .with_context(|| format!("indexing {}", root.display()))?;
            let stats = index.stats();
            if json {
                println!("{}", serde_json::to_string_pretty(&stats)?);
            } else {
                println!("{stats}");
            }
        }
        Command::Predict {
            checkpoint,
            config,
            root,
            split,
            out,
            videos,
            frames,
            smooth,
            tuned_thresholds,
            batch_size,
            device,
            quiet,
        } => {
            use crate::predict::{PredictOptions, PredictTarget};
            let target = match (&frames, split.as_str()) {
                (Some(dir), _) => PredictTarget::Frames(dir.clone()),
                (None, "Test" | "Test_Set" | "test") => PredictTarget::Test,
                (None, s) => {
                    PredictTarget::Split(crate::evaluate::parse_split(s).with_context(|| {
                        format!("--split {s}: use Validation_Set, Training_Set or Test")
                    })?)
                }
            };
            let summary = crate::predict::run(&PredictOptions {
                checkpoint,
                config,
                root,
                target,
                out: out.clone(),
                videos,
                smooth,
                tuned_thresholds,
                batch_size,
                device,
                quiet,
            })?;
            println!(
                "wrote {} files for {} videos ({} lines; {} frames predicted, {} filled from \
                 the nearest frame, {} unreadable crops) in {}",
                summary.files.len(),
                summary.videos,
                summary.frames,
                summary.predicted,
                summary.filled,
                summary.bad_frames.len(),
                out.display()
            );
        }
        Command::Evaluate {
            pred,
            root,
            split,
            json,
            all_frames,
        } => {
            let split = crate::evaluate::parse_split(&split)
                .with_context(|| format!("--split {split}: use Validation_Set or Training_Set"))?;
            let opts = crate::evaluate::EvaluateOptions { split, all_frames };
            let ev = crate::evaluate::evaluate(&pred, &root, &opts)?;
            if json {
                println!("{}", serde_json::to_string(&ev.report)?);
            } else {
                print!("{ev}");
            }
        }
        Command::Bench(a) => {
            let backbones = if a.backbones.is_empty() {
                mtanet_backbones::BackboneKind::ALL.to_vec()
            } else {
                a.backbones
                    .iter()
                    .map(|b| b.parse())
                    .collect::<Result<Vec<_>, _>>()?
            };
            crate::bench::run(&crate::bench::BenchOptions {
                backbones,
                batches: a.batches,
                threads: a.threads,
                steps: a.steps,
                warmup: a.warmup,
                rounds: a.rounds,
                python: (!a.no_torch).then_some(a.python),
                out: a.out,
            })?;
        }
        Command::BenchOne {
            backbone,
            batch,
            steps,
            warmup,
        } => {
            let m = crate::bench::measure(backbone.parse()?, batch, steps, warmup)?;
            println!("{}", serde_json::to_string(&m)?);
        }
        Command::GpuCheck(a) => crate::gpu_check::main(&a)?,
        Command::Model(ModelCommand::Summary(a)) => {
            let cfg = backbone_config(&a)?;
            println!("{}", mtanet_backbones::summary(&cfg));
        }
        Command::Model(ModelCommand::Forward {
            backbone,
            weights,
            input,
            out,
            train,
        }) => {
            crate::model_forward::run(&backbone_config(&backbone)?, &weights, &input, &out, train)?;
            println!("wrote {}", out.display());
        }
    }
    Ok(())
}
