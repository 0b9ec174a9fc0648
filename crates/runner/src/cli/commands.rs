//! One function per command: each turns parsed arguments into a call to the module that does
//! the work, and prints its result.

use std::process::ExitCode;

use anyhow::Context;
use mtanet_affwild2::{DatasetIndex, Split, SynthConfig};
use mtanet_backbones::{BackboneKind, ResNetConfig};

use super::{
    AblateArgs, BackboneArgs, BenchArgs, Command, DataCommand, EvaluateArgs, ModelCommand,
    PredictArgs, RowsArgs, RunArgs, SubmitCommand, TableArgs, TrainArgs, TuneArgs, ValidateArgs,
};
use crate::build::data::generate_synthetic;
use crate::build::restore::read_run_config;
use crate::experiment::profile::{
    affwild2_root, load_experiment, refuse_synthetic_under_affwild2_root, resolve_run,
    train_profile,
};
use crate::experiment::Override;
use crate::predict::{PredictOptions, PredictTarget};
use crate::record::summary_line::short_report;
use crate::tables::experiment_table::{self, TableOptions};
use crate::training::{self, RunContext};

/// Runs one command; the exit code is 0, or 3 for a training run stopped before its end.
pub fn run(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Train(a) => return train(a),
        Command::Table1(a) => table(a)?,
        Command::Run(a) => run_experiment(a)?,
        Command::Ablate(a) => ablate(a)?,
        Command::Compare { files } => print!("{}", crate::tables::compare::compare(&files)?),
        Command::Data(DataCommand::Synth {
            out,
            videos,
            frames,
            seed,
            full,
            layout,
        }) => {
            let t = std::time::Instant::now();
            let cfg = SynthConfig {
                videos,
                frames,
                seed,
                full,
            };
            let report = match layout.to_ascii_lowercase().as_str() {
                "abaw2020" | "2020" => generate_synthetic(&out, &cfg)?,
                "abaw2022" | "2022" => synth_2022(&out, &cfg)?,
                other => anyhow::bail!("--layout {other}: use abaw2020 or abaw2022"),
            };
            println!("{report}");
            println!(
                "wrote {} in {:.1} s",
                out.display(),
                t.elapsed().as_secs_f64()
            );
        }
        Command::Data(DataCommand::Stats { root, json }) => {
            let index = DatasetIndex::load(&root, &Default::default())
                .with_context(|| format!("indexing {}", root.display()))?;
            let stats = index.stats();
            if json {
                println!("{}", serde_json::to_string_pretty(&stats)?);
            } else {
                println!("{stats}");
            }
        }
        Command::Predict(a) => predict(a)?,
        Command::Tune(a) => tune(a)?,
        Command::Evaluate(a) => evaluate(a)?,
        Command::Submit(SubmitCommand::Validate(a)) => validate(a)?,
        Command::Bench(a) => bench(a)?,
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
        Command::Model(ModelCommand::Info { checkpoint }) => {
            print!("{}", crate::model_info::describe(&checkpoint)?);
        }
        Command::Model(ModelCommand::Summary(a)) => {
            println!("{}", mtanet_backbones::summary(&backbone_config(&a)?));
        }
        Command::Model(ModelCommand::Forward {
            backbone,
            width_div,
            depths,
            groups,
            weights,
            mtanet,
            input,
            out,
            train,
        }) => {
            match (mtanet, backbone, weights) {
                (Some(run), _, _) => crate::model_forward::run_mtanet(&run, &input, &out)?,
                (None, Some(backbone), Some(w)) => {
                    let args = BackboneArgs {
                        backbone,
                        width_div,
                        depths,
                        groups,
                    };
                    crate::model_forward::run(&backbone_config(&args)?, &w, &input, &out, train)?
                }
                _ => anyhow::bail!("give --backbone and --weights, or --mtanet RUN_DIR"),
            }
            println!("wrote {}", out.display());
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn parse_overrides(v: &[String]) -> anyhow::Result<Vec<Override>> {
    v.iter()
        .map(|s| s.parse::<Override>().map_err(anyhow::Error::from))
        .collect()
}

/// `mtanet train`: a row of an experiment file, or `--resume RUN_DIR` with its own config.
fn train(a: TrainArgs) -> anyhow::Result<ExitCode> {
    check_resume_flags(&a)?;
    training::install_ctrlc();
    let (config, ctx) = match &a.resume {
        Some(dir) => {
            let path = dir.join("config.yaml");
            if !path.is_file() {
                anyhow::bail!(
                    "cannot resume: {} is not a run directory (no config.yaml)",
                    dir.display()
                );
            }
            let ctx = RunContext {
                resume: Some(dir.clone()),
                ..Default::default()
            };
            let mut config = read_run_config(&path)?;
            if let Some(d) = &a.device {
                config.device = d.clone();
            }
            (config, ctx)
        }
        None => {
            let file = load_experiment(a.config.as_deref())?;
            let mut sets = parse_overrides(&a.set)?;
            if let Some(d) = &a.device {
                sets.push(format!("device={d}").parse()?);
            }
            let env_root = affwild2_root();
            let (profile, why) = train_profile(&file, a.profile.as_deref(), env_root.as_deref());
            if let Some(why) = why {
                println!("{why}");
            }
            let run = resolve_run(&file, profile.as_deref(), a.row.as_deref(), &sets)?;
            if profile.is_none() {
                refuse_synthetic_under_affwild2_root(&file, &run.config, env_root.as_deref())?;
            }
            if let (Some(row), false) = (&a.row, run.changed_row_keys.is_empty()) {
                println!(
                    "--set changes {} of row `{row}`: this run is not that row and is \
                     recorded without its name and the paper's values",
                    run.changed_row_keys.join(", ")
                );
            }
            let ctx = RunContext {
                profile: run.profile,
                row: run.row,
                paper: run.paper,
                overrides: run.overrides,
                ..Default::default()
            };
            (run.config, ctx)
        }
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
    if let Some(first) = out.skipped.first() {
        println!(
            "skipped {} unreadable crops (data.on_bad_frame: skip), first {}; all in report.json",
            out.skipped.len(),
            first.display()
        );
    }
    println!("run directory: {}", out.run_dir.display());
    Ok(if out.finished {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(3)
    })
}

/// Refuses `--resume` together with a flag that defines a new run (`--config`, `--profile`,
/// `--row`, `--set`): a resumed run continues with the configuration it was trained with.
fn check_resume_flags(a: &TrainArgs) -> anyhow::Result<()> {
    let Some(dir) = &a.resume else {
        return Ok(());
    };
    let given: Vec<&str> = [
        ("--config", a.config.is_some()),
        ("--profile", a.profile.is_some()),
        ("--row", a.row.is_some()),
        ("--set", !a.set.is_empty()),
    ]
    .into_iter()
    .filter_map(|(flag, on)| on.then_some(flag))
    .collect();
    if !given.is_empty() {
        anyhow::bail!(
            "--resume {} continues that run with the configuration it was trained with ({}); \
             {} would define another run: drop {}, or start a new run without --resume",
            dir.display(),
            dir.join("config.yaml").display(),
            given.join(", "),
            if given.len() == 1 { "it" } else { "them" }
        );
    }
    Ok(())
}

/// `mtanet table1`.
fn table(a: TableArgs) -> anyhow::Result<()> {
    training::install_ctrlc();
    experiment_table::run(&table_options(a.config, a.table)?)?;
    Ok(())
}

/// `mtanet ablate`.
fn ablate(a: AblateArgs) -> anyhow::Result<()> {
    training::install_ctrlc();
    let opts = experiment_table::ablate_options(
        parse_overrides(&a.overrides)?,
        a.profile,
        a.seeds,
        a.quiet,
    )?;
    experiment_table::run(&opts)?;
    Ok(())
}

/// The options of a table command over the experiment file `config`.
fn table_options(config: Option<std::path::PathBuf>, a: RowsArgs) -> anyhow::Result<TableOptions> {
    Ok(TableOptions {
        config,
        profile: a.profile,
        seeds: a.seeds,
        rows: a.rows,
        overrides: parse_overrides(&a.set)?,
        quiet: a.quiet,
        write_table: true,
    })
}

/// `mtanet run FILE`: every row of an experiment file and its table.
fn run_experiment(a: RunArgs) -> anyhow::Result<()> {
    training::install_ctrlc();
    let path = std::path::PathBuf::from(&a.experiment);
    let path = if path.is_file() || a.experiment.contains(['/', '.']) {
        path
    } else {
        std::path::Path::new("experiments").join(format!("{}.yaml", a.experiment))
    };
    if !path.is_file() {
        anyhow::bail!(
            "no experiment file {} (give a path, or a name under experiments/: heads, pooling, \
             loss_weighting, table1)",
            path.display()
        );
    }
    experiment_table::run(&table_options(Some(path), a.table)?)?;
    Ok(())
}

/// The synthetic set in the ABAW 2022+ layout, then its `synth_report.json`.
fn synth_2022(
    out: &std::path::Path,
    cfg: &SynthConfig,
) -> anyhow::Result<mtanet_affwild2::SynthReport> {
    let report = mtanet_affwild2::synth::generate_as(out, cfg, mtanet_affwild2::Layout::Abaw2022)
        .with_context(|| format!("generating the synthetic set in {}", out.display()))?;
    crate::record::atomic_io::write_atomic(
        &out.join("synth_report.json"),
        serde_json::to_string_pretty(&report)?.as_bytes(),
    )?;
    Ok(report)
}

/// `mtanet predict`.
fn predict(a: PredictArgs) -> anyhow::Result<()> {
    let target =
        match (&a.frames, a.split.as_str()) {
            (Some(dir), _) => PredictTarget::Frames(dir.clone()),
            (None, "Test" | "Test_Set" | "test") => PredictTarget::Test,
            (None, s) => PredictTarget::Split(s.parse::<Split>().with_context(|| {
                format!("--split {s}: use Validation_Set, Training_Set or Test")
            })?),
        };
    if matches!(target, PredictTarget::Test) && a.videos.is_none() {
        // Without the track's list the plan is every crop folder no annotation file names.
        eprintln!(
            "note: --split Test without --videos predicts the crop folders that no annotation \
             file names, each sized by its highest crop number. ABAW lists each track's test \
             videos in its own file (va_test_set.txt, aus_test_set.txt, \
             expression_test_set.txt; 2022+: *_Challenge_test_set_release.txt), and a track's \
             test set holds videos another task annotates: pass that list as --videos (lines \
             `video` or `video,frames`) for a complete submission, with each video's frame \
             count where its last frames have no face."
        );
    }
    let out = a.out.clone();
    let format = a.format;
    let raw = a.raw;
    let summary = crate::predict::run_with(
        &PredictOptions {
            checkpoint: a.checkpoint,
            config: a.config,
            root: a.root,
            target,
            out: a.out,
            videos: a.videos,
            smooth: a.smooth,
            tuned_thresholds: a.tuned_thresholds,
            batch_size: a.batch_size,
            device: a.device,
            quiet: a.quiet,
        },
        format,
        raw,
    )?;
    println!(
        "wrote {} files for {} videos ({} lines; {} frames predicted, {} filled from the \
         nearest frame, {} unreadable crops) in {}",
        summary.files.len(),
        summary.videos,
        summary.frames,
        summary.predicted,
        summary.filled,
        summary.bad_frames.len(),
        out.display()
    );
    println!("decided with {}", summary.decisions);
    if summary.tuned_on_this_split {
        println!(
            "note: the tuning or thresholds deciding these values were chosen on the split \
             predicted here; figures scored on it are optimistic"
        );
    }
    Ok(())
}

/// `mtanet tune`: prints the table and where the choice was stored.
fn tune(a: TuneArgs) -> anyhow::Result<()> {
    let split = a
        .split
        .parse::<Split>()
        .with_context(|| format!("--split {}: use Validation_Set or Training_Set", a.split))?;
    let dry_run = a.dry_run;
    let outcome = crate::tune::run(&crate::tune::TuneOptions {
        checkpoint: a.checkpoint,
        config: a.config,
        root: a.root,
        split,
        batch_size: a.batch_size,
        device: a.device,
        quiet: a.quiet,
        dry_run,
    })?;
    print!("{}", outcome.render());
    if dry_run {
        println!("dry run: nothing written");
    } else {
        println!(
            "stored as `{}` in {}; `mtanet predict` applies it (--raw to skip)",
            crate::tuning::TUNING_KEY,
            outcome.checkpoint.display()
        );
    }
    Ok(())
}

/// `mtanet submit validate`: prints the report; an error when it found a problem.
fn validate(a: ValidateArgs) -> anyhow::Result<()> {
    let target =
        match a.split.as_str() {
            "Test" | "Test_Set" | "test" => PredictTarget::Test,
            s => PredictTarget::Split(s.parse::<Split>().with_context(|| {
                format!("--split {s}: use Validation_Set, Training_Set or Test")
            })?),
        };
    let report = crate::submission::validate::validate(
        &a.pred,
        &crate::submission::validate::ValidateOptions {
            format: a.format,
            root: a.root,
            target,
            sample: a.sample,
            videos: a.videos,
            max_shown: a.max_shown,
        },
    )?;
    print!("{report}");
    if !report.is_ok() {
        anyhow::bail!(
            "{} is not a valid {} submission: {} problem(s)",
            a.pred.display(),
            report.format,
            report.problems()
        );
    }
    Ok(())
}

/// `mtanet evaluate`.
fn evaluate(a: EvaluateArgs) -> anyhow::Result<()> {
    let split: Split = a
        .split
        .parse()
        .with_context(|| format!("--split {}: use Validation_Set or Training_Set", a.split))?;
    let opts = crate::evaluate::EvaluateOptions {
        split,
        all_frames: a.all_frames,
    };
    let ev = crate::evaluate::evaluate(&a.pred, &a.root, &opts)?;
    if a.json {
        println!("{}", serde_json::to_string(&ev.report)?);
    } else {
        print!("{ev}");
    }
    Ok(())
}

/// `mtanet bench`.
fn bench(a: BenchArgs) -> anyhow::Result<()> {
    let backbones = crate::bench::parse_backbones(&a.backbones)?;
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
    Ok(())
}

/// The backbone the model subcommands ask for.
fn backbone_config(a: &BackboneArgs) -> anyhow::Result<ResNetConfig> {
    let kind: BackboneKind = a
        .backbone
        .parse()
        .map_err(|e| anyhow::anyhow!("--backbone {}: {e}", a.backbone))?;
    let depths = match &a.depths {
        None => None,
        Some(d) if d.len() == 4 => Some([d[0], d[1], d[2], d[3]]),
        Some(d) => anyhow::bail!("--depths needs 4 numbers, got {d:?}"),
    };
    Ok(ResNetConfig::from_kind(&kind).scaled(a.width_div, depths, a.groups))
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::cli::Cli;

    fn train_args(args: &[&str]) -> TrainArgs {
        let cli = Cli::try_parse_from([&["mtanet", "train"], args].concat()).unwrap();
        match cli.command {
            Command::Train(a) => a,
            other => panic!("parsed as {other:?}"),
        }
    }

    #[test]
    fn resume_with_a_run_defining_flag_is_refused_naming_each() {
        for (extra, named) in [
            (vec!["--set", "seed=3"], vec!["--set"]),
            (vec!["--row", "resnet50"], vec!["--row"]),
            (vec!["--profile", "demo"], vec!["--profile"]),
            (
                vec!["--config", "experiments/table1.yaml"],
                vec!["--config"],
            ),
            (
                vec!["--profile", "paper", "--row", "resnet50", "--set", "lr=1"],
                vec!["--profile", "--row", "--set"],
            ),
        ] {
            let a = train_args(&[&["--resume", "results/t/run1"], &extra[..]].concat());
            let e = check_resume_flags(&a).unwrap_err().to_string();
            assert!(e.contains("--resume results/t/run1"), "{e}");
            assert!(e.contains("results/t/run1/config.yaml"), "{e}");
            for flag in named {
                assert!(e.contains(flag), "{flag} missing in: {e}");
            }
        }
    }

    #[test]
    fn resume_alone_or_with_device_and_a_new_run_with_flags_pass() {
        for args in [
            vec!["--resume", "results/t/run1"],
            vec!["--resume", "results/t/run1", "--device", "cpu", "--quiet"],
            vec!["--profile", "demo", "--row", "resnet50", "--set", "seed=3"],
        ] {
            check_resume_flags(&train_args(&args)).unwrap();
        }
    }
}
