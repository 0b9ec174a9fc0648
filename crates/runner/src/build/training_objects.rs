//! Everything a training run needs, built once from its configuration: device, vocabulary,
//! loaders, the seeded variables, the model and the uncertainty weights.

use anyhow::{bail, Context};
use candle_core::{DType, Device, Tensor};
use mtanet_affwild2::{DatasetIndex, IndexOptions, Layout, Loader, Split, Vocab};
use mtanet_backbones::{load_pretrained, resolve_pretrained, LoadReport, MtaNet};
use mtanet_losses::UncertaintyWeights;

use crate::build::data::{au_pos_weight, data_root, loader_config, subsample};
use crate::build::model::model_config;
use crate::experiment::Config;
use mtanet_backbones::SeededVarMap;

/// Everything needed to train: built once per run.
pub struct TrainingObjects {
    /// Where the model runs.
    pub device: Device,
    /// AU names and expression classes of the data.
    pub vocab: Vocab,
    /// The release layout of the data (decides the composite scores with the vocabulary).
    pub layout: Layout,
    /// The data root the vocabulary was read from.
    pub root: std::path::PathBuf,
    /// Training batches (shuffled, augmented).
    pub train: Loader,
    /// Validation batches.
    pub val: Loader,
    /// Every variable (model and uncertainty weights), for the optimizer and checkpoints.
    pub vars: SeededVarMap,
    /// The network.
    pub model: MtaNet,
    /// Kendall log-variances (paper Eq. 5).
    pub uncertainty: UncertaintyWeights,
    /// Per-AU BCE positive weights, when `training.au_pos_weight` is on.
    pub pos_weight: Option<Tensor>,
}

/// What [`build`] does with `model.pretrained`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pretrained {
    /// Import it (and refuse a file that does not cover the backbone): a new run.
    Import,
    /// Leave it: a resumed run, whose weights all come from its checkpoint.
    Skip,
}

/// Builds the [`TrainingObjects`] of a configuration: indexes the data, builds the loaders,
/// the seeded model and, if configured and asked, imports the pretrained backbone weights.
pub fn build(
    config: &Config,
    quiet: bool,
    pretrained: Pretrained,
) -> anyhow::Result<TrainingObjects> {
    let root = data_root(config, quiet)?;
    let index = DatasetIndex::load(
        &root,
        &IndexOptions {
            cross_task_overlap: config.data.cross_task_overlap,
            ..IndexOptions::default()
        },
    )
    .with_context(|| format!("indexing {}", root.display()))?;
    index.require_every_task()?;
    let without_crops = index.stats().videos_without_crops;
    if let Some(first) = without_crops.first() {
        let line = format!(
            "{} annotated videos have no crop in {}/cropped_aligned (first `{first}`): their \
             labelled frames count as missing and none trains or is evaluated",
            without_crops.len(),
            root.display()
        );
        tracing::warn!("{line}");
        if !quiet {
            eprintln!("warning: {line}");
        }
    }
    let vocab = index.vocab.clone();
    let train_samples = subsample(index.samples(Split::Train), config.data.max_train_frames);
    let val_samples = subsample(index.samples(Split::Validation), config.data.max_val_frames);
    if train_samples.is_empty() {
        bail!("{}: no labelled training frames found", root.display());
    }
    if val_samples.is_empty() {
        bail!("{}: no labelled validation frames found", root.display());
    }
    check_batches(config, train_samples.len())?;
    let device = crate::build::device::open(
        crate::build::device::parse_device(&config.device).map_err(anyhow::Error::msg)?,
    )?;
    if config.precision == mtanet_backbones::Precision::Bf16 && device.is_cpu() {
        tracing::warn!("precision bf16 on the CPU: f32 kernels plus casts, slower than f32");
        if !quiet {
            eprintln!(
                "note: precision bf16 on the CPU emulates bf16 with the f32 kernels plus casts \
                 (slower than f32); it is meant for CUDA"
            );
        }
    }
    let pos_weight = if config.training.au_pos_weight {
        let w = au_pos_weight(&train_samples, vocab.au_names.len());
        Some(Tensor::new(w.as_slice(), &device)?)
    } else {
        None
    };
    let train = Loader::new(train_samples, &vocab, loader_config(config, true))?;
    let val = Loader::new(val_samples, &vocab, loader_config(config, false))?;
    let vars = SeededVarMap::new(mtanet_seed::stream_seed(config.seed, &["weights"]));
    let vb = vars.var_builder(DType::F32, &device);
    let model =
        MtaNet::new(&model_config(config, &vocab), vb.clone())?.with_precision(config.precision);
    let uncertainty = UncertaintyWeights::new(vb.pp("uncertainty"))?;
    if let (Some(spec), Pretrained::Import) = (&config.model.pretrained, pretrained) {
        let file = resolve_pretrained(spec)?;
        let report = load_pretrained(vars.varmap(), &file, "backbone.")?;
        refuse_partial_import(&report, &file, config)?;
        tracing::info!("pretrained {}: {report}", file.display());
        if !quiet {
            eprintln!("pretrained weights {}: {report}", file.display());
        }
    }
    Ok(TrainingObjects {
        device,
        vocab,
        layout: index.layout,
        root: root.clone(),
        train,
        val,
        vars,
        model,
        uncertainty,
        pos_weight,
    })
}

/// Refuses pretrained weights that do not cover the backbone: file tensors that match no
/// variable (the file is for another network, or named otherwise), or variables of the
/// network itself left fresh (a gate's, `.se.` / `.cbam.`, may be: the paper's ResNeXt + CBAM
/// starts from plain ResNeXt weights). A run half-initialised from a file would be recorded as
/// pretrained.
fn refuse_partial_import(
    report: &LoadReport,
    file: &std::path::Path,
    config: &Config,
) -> anyhow::Result<()> {
    let first = |names: &[&str]| {
        let shown: Vec<&str> = names.iter().take(4).copied().collect();
        let more = names.len().saturating_sub(shown.len());
        format!(
            "{}{}",
            shown.join(", "),
            if more > 0 {
                format!(", ... {more} more")
            } else {
                String::new()
            }
        )
    };
    let backbone = &config.model.backbone;
    let fed = crate::build::model::input_normalization_of(backbone);
    if let Some(declared) = report.input_normalization.as_deref().filter(|d| *d != fed) {
        bail!(
            "model.pretrained {}: the file says its weights expect `{declared}` input, but \
             `{backbone}` is fed `{fed}` input; they would see inputs they were not trained on",
            file.display()
        );
    }
    let unmatched: Vec<&str> = report.unmatched.iter().map(String::as_str).collect();
    let fresh = report.fresh_outside_gates();
    if !unmatched.is_empty() {
        bail!(
            "model.pretrained {}: {} tensors match no variable of `{backbone}` ({}); the file \
             is for another network, or its tensors are not named as PyTorch names them",
            file.display(),
            unmatched.len(),
            first(&unmatched)
        );
    }
    if !fresh.is_empty() {
        bail!(
            "model.pretrained {}: the file lacks {} tensors of `{backbone}` ({}), which would \
             train from a random start under a pretrained run's name",
            file.display(),
            fresh.len(),
            first(&fresh)
        );
    }
    Ok(())
}

/// Refuses batch settings that cannot train: a balanced batch larger than the training set
/// (its quota sampling would build one enormous batch), and a last batch of one frame when
/// the backbone's last feature map is 1x1 (BatchNorm then sees one value per channel).
fn check_batches(config: &Config, n_train: usize) -> anyhow::Result<()> {
    let b = config.data.batch_size;
    let tasks = mtanet_affwild2::Task::ALL.len();
    if config.data.sampling == mtanet_affwild2::Sampling::Balanced && b < tasks {
        bail!(
            "`data.batch_size` ({b}) is below the {tasks} tasks; with `data.sampling: balanced` \
             each batch draws an equal share per task, so a task would get none: raise the \
             batch size"
        );
    }
    if config.data.sampling == mtanet_affwild2::Sampling::Balanced && b > n_train {
        bail!(
            "`data.batch_size` ({b}) is larger than the {n_train} training frames; with \
             `data.sampling: balanced` lower the batch size"
        );
    }
    let last_side = config.data.image_size.div_ceil(32);
    if config.data.sampling == mtanet_affwild2::Sampling::Mixed
        && n_train % b == 1
        && last_side == 1
    {
        bail!(
            "the last training batch would hold one frame ({n_train} frames, `data.batch_size` \
             {b}) on a 1x1 final feature map (`data.image_size` {}), where BatchNorm cannot \
             train; change `data.batch_size`, `data.max_train_frames` or `data.image_size`",
            config.data.image_size
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Balanced sampling with fewer frames per batch than tasks is refused (a task would get a
    /// share of 0); three, or mixed sampling, is not.
    #[test]
    fn a_balanced_batch_smaller_than_the_tasks_is_refused() {
        let with = |sampling, batch_size| {
            let mut c = Config::default();
            c.data.sampling = sampling;
            c.data.batch_size = batch_size;
            c.data.image_size = 112;
            check_batches(&c, 100)
        };
        let e = with(mtanet_affwild2::Sampling::Balanced, 2)
            .unwrap_err()
            .to_string();
        assert!(e.contains("batch_size") && e.contains("balanced"), "{e}");
        assert!(with(mtanet_affwild2::Sampling::Balanced, 3).is_ok());
        assert!(with(mtanet_affwild2::Sampling::Mixed, 2).is_ok());
    }

    fn names(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    /// Gates left fresh are accepted; an unmatched file tensor, or a fresh variable of the
    /// network itself, is refused naming the file, the backbone and the tensors.
    #[test]
    fn a_partial_pretrained_import_is_refused_unless_only_gates_are_fresh() {
        let config = Config::default();
        let file = std::path::Path::new("w/resnext.safetensors");
        let gates_fresh = LoadReport {
            loaded: names(&["backbone.conv1.weight"]),
            fresh: names(&[
                "backbone.layer1.0.cbam.mlp.1.weight",
                "backbone.layer2.0.se.fc1.bias",
            ]),
            ..Default::default()
        };
        // The refusal's message, for a report that must be refused under `config`.
        let refused = |report: &LoadReport, config: &Config| {
            refuse_partial_import(report, file, config)
                .unwrap_err()
                .to_string()
        };
        assert!(refuse_partial_import(&gates_fresh, file, &config).is_ok());
        let unmatched = LoadReport {
            unmatched: names(&["layer5.0.conv1.weight"]),
            ..gates_fresh.clone()
        };
        let e = refused(&unmatched, &config);
        assert!(
            e.contains("w/resnext.safetensors") && e.contains("layer5.0.conv1.weight"),
            "{e}"
        );
        let backbone = config.model.backbone.to_string();
        assert!(e.contains(&backbone), "{e}");
        assert!(!e.contains("  "), "{e}");
        let missing = LoadReport {
            fresh: names(&[
                "backbone.layer4.0.conv2.weight",
                "backbone.layer1.0.cbam.mlp.1.weight",
            ]),
            ..gates_fresh
        };
        let e = refused(&missing, &config);
        assert!(
            e.contains("1 tensors") && e.contains("backbone.layer4.0.conv2.weight"),
            "{e}"
        );
        assert!(!e.contains("cbam") && !e.contains("  "), "{e}");
        // A file that says it expects another input than the backbone is fed.
        let mut vgg = config.clone();
        vgg.model.backbone = mtanet_backbones::BackboneKind::Senet50Vggface2;
        let imagenet_file = LoadReport {
            input_normalization: Some("imagenet".into()),
            ..LoadReport::default()
        };
        let e = refused(&imagenet_file, &vgg);
        assert!(e.contains("`imagenet`") && e.contains("`vggface2`"), "{e}");
        let vgg_file = LoadReport {
            input_normalization: Some("vggface2".into()),
            ..LoadReport::default()
        };
        assert!(refuse_partial_import(&vgg_file, file, &vgg).is_ok());
    }
}
