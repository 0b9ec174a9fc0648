//! The one path from a checkpoint to a model: training's resume, `predict`, `evaluate` and
//! `thread_determinism` all restore weights through [`restore_vars`].

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use candle_core::{DType, Device, Tensor};
use mtanet_affwild2::Vocab;
use mtanet_backbones::MtaNet;

use crate::build::model::default_vocab;
use crate::build::model::model_config;
use crate::experiment::differences::config_differences;
use crate::experiment::{Config, Criterion};
use crate::record::checkpoint::read_metadata;
use mtanet_backbones::SeededVarMap;

/// Why a checkpoint cannot become a model, naming the file.
#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    /// Neither the checkpoint nor a run directory was found.
    #[error("{}: no checkpoint (expected a run directory with checkpoints/last.safetensors or best.safetensors, or a .safetensors file)", path.display())]
    NoCheckpoint {
        /// The path given.
        path: PathBuf,
    },
    /// No config.yaml next to the checkpoint and no `--config`.
    #[error("{}: no run config.yaml for checkpoint {} (pass --config)", expected.display(), checkpoint.display())]
    NoConfig {
        /// Where it was looked for.
        expected: PathBuf,
        /// The checkpoint.
        checkpoint: PathBuf,
    },
    /// The checkpoint lacks a head tensor, so the task sizes are unknown.
    #[error("{}: no tensor `{name}`: not an MTANet checkpoint", path.display())]
    NotMtaNet {
        /// The checkpoint.
        path: PathBuf,
        /// The missing tensor.
        name: String,
    },
}

/// Every variable of a map by name (the tensors a checkpoint stores under `model.`).
pub fn var_tensors(vars: &SeededVarMap) -> HashMap<String, Tensor> {
    vars.varmap()
        .data()
        .lock()
        .expect("var map lock poisoned")
        .iter()
        .map(|(k, v)| (k.clone(), v.as_tensor().clone()))
        .collect()
}

/// Checkpoint tensors that only training uses (the uncertainty weighting's log-variances): a
/// model built for inference has no variable for them and ignores them by name.
pub const TRAINING_ONLY_PREFIX: &str = "uncertainty.";

/// The names shown per list in a [`Fit`] error (the counts are always complete).
const SHOWN: usize = 5;

/// How a checkpoint's model tensors differ from the variables of the model it is loaded into.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Fit {
    /// Variables of the model the checkpoint lacks, sorted.
    pub missing: Vec<String>,
    /// Checkpoint tensors that are no variable of the model, sorted.
    pub unexpected: Vec<String>,
    /// Tensors of another shape: (name, checkpoint shape, model shape), sorted by name.
    pub reshaped: Vec<(String, Vec<usize>, Vec<usize>)>,
}

impl Fit {
    /// Compares the checkpoint's model tensors `saved` with the variables of `vars`; saved
    /// names starting with [`TRAINING_ONLY_PREFIX`] are ignored when the model has no such
    /// variable (a model built for inference).
    pub fn of(vars: &SeededVarMap, saved: &HashMap<String, Tensor>) -> Fit {
        let data = vars.varmap().data().lock().expect("var map lock poisoned");
        let model_has_training_only = data.keys().any(|k| k.starts_with(TRAINING_ONLY_PREFIX));
        let mut fit = Fit::default();
        for (k, v) in data.iter() {
            match saved.get(k) {
                None => fit.missing.push(k.clone()),
                Some(t) if t.dims() != v.dims() => {
                    fit.reshaped
                        .push((k.clone(), t.dims().to_vec(), v.dims().to_vec()))
                }
                Some(_) => {}
            }
        }
        fit.unexpected = saved
            .keys()
            .filter(|k| !data.contains_key(*k))
            .filter(|k| model_has_training_only || !k.starts_with(TRAINING_ONLY_PREFIX))
            .cloned()
            .collect();
        fit.missing.sort();
        fit.unexpected.sort();
        fit.reshaped.sort();
        fit
    }

    /// Whether every variable has its tensor, of its shape, and nothing else is there.
    pub fn is_exact(&self) -> bool {
        self.missing.is_empty() && self.unexpected.is_empty() && self.reshaped.is_empty()
    }
}

/// Up to [`SHOWN`] of `items`, joined with `sep`, with the count of the rest.
fn first_few(items: &[String], sep: &str) -> String {
    let mut s = items
        .iter()
        .take(SHOWN)
        .cloned()
        .collect::<Vec<_>>()
        .join(sep);
    if items.len() > SHOWN {
        s.push_str(&format!("{sep}... {} more", items.len() - SHOWN));
    }
    s
}

impl std::fmt::Display for Fit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut parts = Vec::new();
        if !self.missing.is_empty() {
            parts.push(format!(
                "{} model tensor(s) missing from the checkpoint ({})",
                self.missing.len(),
                first_few(&self.missing, ", ")
            ));
        }
        if !self.unexpected.is_empty() {
            parts.push(format!(
                "{} checkpoint tensor(s) the model does not have ({})",
                self.unexpected.len(),
                first_few(&self.unexpected, ", ")
            ));
        }
        if !self.reshaped.is_empty() {
            let shapes: Vec<String> = self
                .reshaped
                .iter()
                .map(|(k, c, m)| format!("`{k}` checkpoint {c:?}, model {m:?}"))
                .collect();
            parts.push(format!(
                "{} tensor(s) of another shape ({})",
                self.reshaped.len(),
                first_few(&shapes, "; ")
            ));
        }
        f.write_str(&parts.join("; "))
    }
}

/// Copies the checkpoint's tensors into every variable of `vars`, after checking that they
/// fit exactly ([`Fit`]: every variable present with its shape, no other model tensor but
/// training-only ones for an inference model); the error names the file and what differs.
/// Finiteness is checked when the checkpoint is read ([`crate::record::checkpoint::load`]).
pub fn restore_vars(
    vars: &SeededVarMap,
    saved: &HashMap<String, Tensor>,
    path: &Path,
) -> anyhow::Result<()> {
    let fit = Fit::of(vars, saved);
    if !fit.is_exact() {
        bail!(
            "{}: the checkpoint was made for another model: {fit}",
            path.display()
        );
    }
    let data = vars.varmap().data().lock().expect("var map lock poisoned");
    for (k, v) in data.iter() {
        let t = &saved[k];
        v.set(&t.to_dtype(v.dtype())?)
            .with_context(|| format!("{}: cannot set `{k}`", path.display()))?;
    }
    Ok(())
}

/// The checkpoint metadata key holding the run's vocabulary (JSON of [`Vocab`]: the AU names
/// in AU-head order, the expression names in class order).
pub const VOCAB_KEY: &str = "vocab";

/// The vocabulary recorded in the checkpoint `path` under [`VOCAB_KEY`], if any (reads only
/// the safetensors header).
pub fn checkpoint_vocab(path: &Path) -> anyhow::Result<Option<Vocab>> {
    crate::record::checkpoint::read_json_entry(path, VOCAB_KEY)
}

/// The model's vocabulary from the checkpoint `path` and its head sizes: the recorded one
/// (which must fit the heads), else [`default_vocab`] for the head sizes, with a note that the
/// checkpoint does not record its names.
pub fn model_vocab(path: &Path, n_au: usize, n_expr: usize) -> anyhow::Result<Vocab> {
    match checkpoint_vocab(path)? {
        Some(v) if v.au_names.len() == n_au && v.expr_names.len() == n_expr => Ok(v),
        Some(v) => bail!(
            "{}: the `{VOCAB_KEY}` metadata names {} AUs and {} expression classes, the heads have {n_au} and {n_expr}",
            path.display(),
            v.au_names.len(),
            v.expr_names.len()
        ),
        None => {
            let v = default_vocab(n_au, n_expr);
            tracing::warn!(
                "{}: the checkpoint does not record its AU and expression names; taking its {n_au} AUs as {} and its {n_expr} classes as {}",
                path.display(),
                v.au_names.join(","),
                v.expr_names.join(",")
            );
            Ok(v)
        }
    }
}

/// Checks that the data's vocabulary `data` names the same AUs and classes, in the same
/// order, as the vocabulary `model` a checkpoint was trained with (resuming or fine-tuning on
/// other data); the error names both places and lists both vocabularies.
pub fn check_same_vocab(
    checkpoint: &Path,
    model: &Vocab,
    root: &Path,
    data: &Vocab,
) -> anyhow::Result<()> {
    for (what, m, d) in [
        ("AU", &model.au_names, &data.au_names),
        ("expression", &model.expr_names, &data.expr_names),
    ] {
        if m != d {
            bail!(
                "{}: the checkpoint's {what} names [{}] differ from those of the data in {} [{}]",
                checkpoint.display(),
                m.join(", "),
                root.display(),
                d.join(", ")
            );
        }
    }
    Ok(())
}

/// Reads a run's resolved `config.yaml` and checks its values again (it may have been edited
/// since the run started).
pub fn read_run_config(path: &Path) -> anyhow::Result<Config> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let config: Config = serde_yaml::from_str(&text)
        .with_context(|| format!("{}: invalid run config", path.display()))?;
    config.validate(&path.display().to_string())?;
    Ok(config)
}

/// A checkpoint loaded for inference.
pub struct LoadedModel {
    /// The network (eval mode is selected per call).
    pub model: MtaNet,
    /// The run configuration.
    pub config: Config,
    /// The device it runs on.
    pub device: Device,
    /// The checkpoint file.
    pub checkpoint: PathBuf,
    /// The folder holding the config (the run directory), where `report.json` is looked for.
    pub run_dir: PathBuf,
    /// The AU names in AU-head order and the expression names in class order (the
    /// checkpoint's, or the defaults for its head sizes when it does not record them).
    pub vocab: Vocab,
    /// AUs of the AU head.
    pub n_au: usize,
    /// Classes of the expression head.
    pub n_expr: usize,
}

/// The checkpoint file an inference command uses, the run config beside it, and why that file.
#[derive(Debug, Clone)]
pub struct ResolvedCheckpoint {
    /// The checkpoint file.
    pub file: PathBuf,
    /// The run's `config.yaml` (or `--config`).
    pub config_path: PathBuf,
    /// That config, read and checked.
    pub config: Config,
    /// Why this file, for the one line the commands print.
    pub why: String,
}

/// Finds the checkpoint file and the config of `checkpoint` (a run directory or a file).
///
/// For a run directory the file is the one its figures come from: `checkpoints/best.safetensors`
/// (the weights of the selected evaluation) when the run's `selection.criterion` is not `last`
/// and that file exists, else `checkpoints/last.safetensors`. A file path is used as given, so
/// `RUN/checkpoints/last.safetensors` picks the last weights of such a run.
pub fn resolve_checkpoint(
    checkpoint: &Path,
    config: Option<&Path>,
) -> anyhow::Result<ResolvedCheckpoint> {
    let run_dir = checkpoint.is_dir().then_some(checkpoint);
    let (last, best) = match run_dir {
        Some(d) => (
            d.join("checkpoints").join("last.safetensors"),
            d.join("checkpoints").join("best.safetensors"),
        ),
        None => (checkpoint.to_path_buf(), checkpoint.to_path_buf()),
    };
    if !last.is_file() && !best.is_file() {
        return Err(RestoreError::NoCheckpoint {
            path: checkpoint.to_path_buf(),
        }
        .into());
    }
    let config_path = match (config, run_dir) {
        (Some(c), _) => c.to_path_buf(),
        (None, Some(d)) => d.join("config.yaml"),
        (None, None) => last
            .parent()
            .and_then(Path::parent)
            .map(|d| d.join("config.yaml"))
            .unwrap_or_else(|| PathBuf::from("config.yaml")),
    };
    if !config_path.is_file() {
        return Err(RestoreError::NoConfig {
            expected: config_path,
            checkpoint: if last.is_file() { last } else { best },
        }
        .into());
    }
    let cfg = read_run_config(&config_path)?;
    let criterion = cfg.selection.criterion;
    let (file, why) = match run_dir {
        None => (last, "the file given".to_string()),
        Some(_) if criterion != Criterion::Last && best.is_file() => {
            let weights = if criterion == Criterion::PerTask {
                "the weights of the evaluation with the best total (each task's figure comes \
                 from that task's best evaluation, whose weights are best-va, best-au and \
                 best-expr.safetensors)"
            } else {
                "the weights of the evaluation the run reports"
            };
            let why = format!(
                "selection.criterion `{criterion}`: {weights}; {} holds the last weights",
                last.display()
            );
            (best, why)
        }
        Some(_) if !last.is_file() => {
            return Err(RestoreError::NoCheckpoint {
                path: checkpoint.to_path_buf(),
            }
            .into())
        }
        Some(_) if criterion == Criterion::Last => (
            last,
            "selection.criterion `last`: the run reports its last evaluation".to_string(),
        ),
        Some(_) => {
            let why = format!(
                "selection.criterion `{criterion}`, but the run has no best.safetensors (no \
                 evaluation was offered to model selection yet): the last weights"
            );
            (last, why)
        }
    };
    Ok(ResolvedCheckpoint {
        file,
        config_path,
        config: cfg,
        why,
    })
}

/// The configuration keys that decide what a loaded model computes from a face crop: every
/// key of `model` (backbone, widths, activations, head) but [`INIT_ONLY_KEYS`], the input size
/// and the resize.
pub const MODEL_KEYS: [&str; 3] = ["model", "data.image_size", "data.resize"];

/// Keys of `model` that act only in training (the initial weights, dropout): a model loaded
/// for inference computes the same whatever they are.
pub const INIT_ONLY_KEYS: [&str; 2] = ["model.pretrained", "model.head.dropout"];

/// Refuses `cfg` (read from `cfg_path`) for the weights in `file` where a key of
/// [`MODEL_KEYS`] differs from the configuration `file` was trained with (its `config`
/// metadata): another `model.va_activation`, for one, changes every valence and arousal
/// without changing any tensor's shape. A checkpoint that records no configuration (written
/// before checkpoints carried it) is checked by its tensors' shapes alone; one whose recorded
/// configuration does not read is refused, as the model it describes cannot be compared.
pub fn check_model_config(cfg: &Config, cfg_path: &Path, file: &Path) -> anyhow::Result<()> {
    let meta = read_metadata(file)?;
    let Some(yaml) = meta.get("config") else {
        return Ok(());
    };
    let trained: Config = serde_yaml::from_str(yaml).with_context(|| {
        format!(
            "{}: the `config` it records does not read, so the model it was trained with \
             cannot be checked against {}",
            file.display(),
            cfg_path.display()
        )
    })?;
    let differ: Vec<String> = config_differences(&trained, cfg)?
        .into_iter()
        .filter(|d| d.is_under(&MODEL_KEYS) && !d.is_under(&INIT_ONLY_KEYS))
        .map(|d| {
            format!(
                "{} (trained with {}, {} has {})",
                d.key,
                d.first,
                cfg_path.display(),
                d.second
            )
        })
        .collect();
    if differ.is_empty() {
        return Ok(());
    }
    bail!(
        "{} was trained with another model than {} describes: {}; pass the run's own \
         config.yaml (--config)",
        file.display(),
        cfg_path.display(),
        differ.join("; ")
    )
}

fn head_size(
    model: &HashMap<String, Tensor>,
    path: &Path,
    name: &str,
) -> Result<usize, RestoreError> {
    model
        .get(name)
        .and_then(|t| t.dims().first().copied())
        .ok_or_else(|| RestoreError::NotMtaNet {
            path: path.to_path_buf(),
            name: name.to_string(),
        })
}

/// Loads a checkpoint (see [`resolve_checkpoint`]) into an MTANet built from its run config;
/// prints to stderr which file it loaded and why.
pub fn load_model(
    checkpoint: &Path,
    config: Option<&Path>,
    device: Option<&str>,
) -> anyhow::Result<LoadedModel> {
    let ResolvedCheckpoint {
        file,
        config_path: cfg_path,
        config: mut cfg,
        why,
    } = resolve_checkpoint(checkpoint, config)?;
    eprintln!("checkpoint: {} ({why})", file.display());
    if let Some(d) = device {
        cfg.device = d.to_string();
    }
    let device = crate::build::device::open(
        crate::build::device::parse_device(&cfg.device).map_err(anyhow::Error::msg)?,
    )?;
    let ckpt = crate::record::checkpoint::load(&file, &device)?;
    // The output layer of each task decoder: `head.<task>` for one layer, else the last of
    // the `nn.Sequential` stack (`head.<task>.0`, `.2`, ...).
    let last = |task: &str| match cfg.model.head.decoder_layers {
        0 | 1 => format!("head.{task}.weight"),
        l => format!("head.{task}.{}.weight", 2 * (l - 1)),
    };
    let n_au = head_size(&ckpt.model, &file, &last("au"))?;
    let n_expr = head_size(&ckpt.model, &file, &last("expr"))?;
    let vocab = model_vocab(&file, n_au, n_expr)?;
    let vars = SeededVarMap::new(0);
    let model = MtaNet::new(
        &model_config(&cfg, &vocab),
        vars.var_builder(DType::F32, &device),
    )
    .map(|m| m.with_precision(cfg.precision))
    .map_err(anyhow::Error::from)
    .and_then(|m| restore_vars(&vars, &ckpt.model, &file).map(|()| m))
    .with_context(|| {
        format!(
            "{} does not fit the model that {} describes (backbone {}, width_div {}, depths {:?}, groups {:?}, head hidden {}); pass the run's own config.yaml",
            file.display(),
            cfg_path.display(),
            cfg.model.backbone,
            cfg.model.width_div,
            cfg.model.depths,
            cfg.model.groups,
            cfg.model.head.hidden
        )
    })?;
    // After the shapes' check, which names the tensors that do not fit: this one catches the
    // differences no shape shows.
    check_model_config(&cfg, &cfg_path, &file)?;
    let run_dir = cfg_path.parent().map(Path::to_path_buf).unwrap_or_default();
    Ok(LoadedModel {
        model,
        config: cfg,
        device,
        checkpoint: file,
        run_dir,
        vocab,
        n_au,
        n_expr,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_with_meta(path: &Path, meta: Option<(&str, String)>) {
        let t = Tensor::zeros(2, DType::F32, &Device::Cpu).unwrap();
        let meta = meta.map(|(k, v)| HashMap::from([(k.to_string(), v)]));
        let bytes = safetensors::serialize([("model.a", &t)], meta).unwrap();
        std::fs::write(path, bytes).unwrap();
    }

    /// Weights are refused with a configuration whose model differs from the one they were
    /// trained with (an activation changes no shape), named by key; keys that act only in
    /// training, and checkpoints without a recorded configuration, pass; a recorded
    /// configuration that does not read is refused.
    #[test]
    fn another_model_configuration_is_refused_by_key() {
        let d = tempfile::tempdir().unwrap();
        let file = d.path().join("w.safetensors");
        let cfg_path = d.path().join("config.yaml");
        let trained = Config::default();
        write_with_meta(&file, Some(("config", trained.to_yaml())));
        check_model_config(&trained, &cfg_path, &file).unwrap();

        let mut other = trained.clone();
        other.model.head.va_activation = if trained.model.head.va_activation == "tanh" {
            "none".into()
        } else {
            "tanh".into()
        };
        other.data.image_size += 16;
        let err = format!(
            "{:#}",
            check_model_config(&other, &cfg_path, &file).unwrap_err()
        );
        assert!(err.contains("model.head.va_activation"), "{err}");
        assert!(err.contains("data.image_size"), "{err}");
        assert!(err.contains("w.safetensors"), "{err}");

        let mut init_only = trained.clone();
        init_only.model.pretrained = Some("timm/resnet50.tv_in1k".into());
        init_only.model.head.dropout += 0.25;
        init_only.seed += 1;
        check_model_config(&init_only, &cfg_path, &file).unwrap();

        write_with_meta(&file, None);
        check_model_config(&other, &cfg_path, &file).unwrap();

        // A recorded configuration that does not read (a key this build does not know) is
        // refused even for the configuration it was written from: it cannot be compared.
        let unknown = format!("{}\nno_such_key: 1\n", trained.to_yaml());
        write_with_meta(&file, Some(("config", unknown)));
        let err = format!(
            "{:#}",
            check_model_config(&trained, &cfg_path, &file).unwrap_err()
        );
        assert!(err.contains("does not read"), "{err}");
        assert!(err.contains("w.safetensors"), "{err}");
    }

    #[test]
    fn the_recorded_vocabulary_is_read_and_must_fit_the_heads() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("c.safetensors");
        let v = Vocab {
            au_names: vec!["AU2".into(), "AU1".into()],
            expr_names: vec!["B".into(), "A".into(), "C".into()],
        };
        write_with_meta(&p, Some((VOCAB_KEY, serde_json::to_string(&v).unwrap())));
        assert_eq!(model_vocab(&p, 2, 3).unwrap(), v);
        let e = model_vocab(&p, 8, 7).unwrap_err().to_string();
        assert!(e.contains("c.safetensors") && e.contains("2 AUs"), "{e}");
        write_with_meta(&p, None);
        assert_eq!(model_vocab(&p, 8, 7).unwrap(), default_vocab(8, 7));
        write_with_meta(&p, Some((VOCAB_KEY, "[1,".into())));
        let e = format!("{:#}", model_vocab(&p, 8, 7).unwrap_err());
        assert!(e.contains("c.safetensors") && e.contains(VOCAB_KEY), "{e}");
    }

    #[test]
    fn a_run_directory_gives_the_weights_its_figures_come_from() {
        let d = tempfile::tempdir().unwrap();
        let run = d.path();
        std::fs::create_dir(run.join("checkpoints")).unwrap();
        let (last, best) = (
            run.join("checkpoints/last.safetensors"),
            run.join("checkpoints/best.safetensors"),
        );
        write_with_meta(&last, None);
        write_with_meta(&best, None);
        let criterion = |c: Criterion| {
            let mut cfg = Config::default();
            cfg.selection.criterion = c;
            std::fs::write(run.join("config.yaml"), cfg.to_yaml()).unwrap();
        };
        for (c, name) in [
            (Criterion::Total, "total"),
            (Criterion::PerTask, "per_task"),
        ] {
            criterion(c);
            let r = resolve_checkpoint(run, None).unwrap();
            assert_eq!(r.file, best);
            assert_eq!(r.config_path, run.join("config.yaml"));
            assert!(
                r.why.contains(&format!("`{name}`")) && r.why.contains(&last.display().to_string()),
                "{}",
                r.why
            );
        }
        criterion(Criterion::Last);
        let r = resolve_checkpoint(run, None).unwrap();
        assert_eq!(r.file, last);
        assert!(r.why.contains("`last`"), "{}", r.why);

        // A file is used as given, with the config of its run.
        criterion(Criterion::Total);
        let r = resolve_checkpoint(&last, None).unwrap();
        assert_eq!((&r.file, &r.config_path), (&last, &run.join("config.yaml")));
        assert_eq!(r.config.selection.criterion, Criterion::Total);

        // No best weights (yet): the last ones, saying so; no weights at all: refused.
        std::fs::remove_file(&best).unwrap();
        let r = resolve_checkpoint(run, None).unwrap();
        assert_eq!(r.file, last);
        assert!(r.why.contains("no best.safetensors"), "{}", r.why);
        std::fs::remove_file(&last).unwrap();
        let e = resolve_checkpoint(run, None).unwrap_err().to_string();
        assert!(e.contains("no checkpoint"), "{e}");
    }

    #[test]
    fn a_fit_lists_missing_unexpected_and_reshaped_tensors() {
        let vars = SeededVarMap::new(0);
        let vb = vars.var_builder(DType::F32, &Device::Cpu);
        vb.get((2, 3), "head.w").unwrap();
        vb.get(4, "head.b").unwrap();
        vb.get(1, "gone").unwrap();
        let z = |shape: &[usize]| Tensor::zeros(shape, DType::F32, &Device::Cpu).unwrap();
        let saved = HashMap::from([
            ("head.w".to_string(), z(&[3, 2])),
            ("head.b".to_string(), z(&[4])),
            ("extra".to_string(), z(&[1])),
            ("uncertainty.log_var".to_string(), z(&[3])),
        ]);
        let fit = Fit::of(&vars, &saved);
        assert_eq!(fit.missing, vec!["gone".to_string()]);
        assert_eq!(fit.unexpected, vec!["extra".to_string()]);
        assert_eq!(
            fit.reshaped,
            vec![("head.w".to_string(), vec![3, 2], vec![2, 3])]
        );
        let text = fit.to_string();
        assert!(
            text.contains("`head.w` checkpoint [3, 2], model [2, 3]"),
            "{text}"
        );
        let e = restore_vars(&vars, &saved, Path::new("x.safetensors"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("x.safetensors") && e.contains("extra"), "{e}");
    }
}
