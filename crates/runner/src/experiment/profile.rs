//! Which profile a command runs (explicit, else `paper` when `AFFWILD2_ROOT` is set, else
//! `demo`), which experiment file, and how a single run of a file is resolved.

use std::path::Path;

use crate::experiment::{Config, ExperimentFile, Override, PaperValues, TABLE1_YAML};

/// Picks the profile: explicit, else `paper` with `AFFWILD2_ROOT`, else `demo`; the reason is
/// the first line `table1` prints.
pub fn choose_profile(explicit: Option<&str>) -> (String, String) {
    let env = std::env::var("AFFWILD2_ROOT")
        .ok()
        .filter(|s| !s.trim().is_empty());
    match (explicit, env) {
        (Some(p), _) => (p.to_string(), format!("profile `{p}` (from --profile)")),
        (None, Some(root)) => (
            "paper".into(),
            format!("profile `paper` (AFFWILD2_ROOT={root}): the paper's recipe on Aff-Wild2"),
        ),
        (None, None) => (
            "demo".into(),
            "profile `demo` (AFFWILD2_ROOT is not set): small networks on the synthetic \
             Aff-Wild2; set AFFWILD2_ROOT for the paper's runs"
                .into(),
        ),
    }
}

/// Loads the experiment file the options name.
pub fn load_experiment(path: Option<&Path>) -> anyhow::Result<ExperimentFile> {
    match path {
        Some(p) => Ok(ExperimentFile::load(p)?),
        None => {
            let p = Path::new("experiments/table1.yaml");
            if p.is_file() {
                Ok(ExperimentFile::load(p)?)
            } else {
                Ok(ExperimentFile::parse(
                    "experiments/table1.yaml (embedded)",
                    TABLE1_YAML,
                )?)
            }
        }
    }
}

/// Overrides that come from the environment for a profile (`data.root` from AFFWILD2_ROOT).
pub fn env_overrides(profile: &str, user: &[Override]) -> Vec<Override> {
    let mut out = Vec::new();
    if profile == "paper" && !user.iter().any(|o| o.key == ["data", "root"]) {
        if let Ok(root) = std::env::var("AFFWILD2_ROOT") {
            if !root.trim().is_empty() {
                out.push(Override {
                    key: vec!["data".into(), "root".into()],
                    value: serde_yaml::Value::String(root),
                });
            }
        }
    }
    out.extend(user.iter().cloned());
    out
}

/// One run of an experiment file: its resolved configuration and, when it is a row, the row's
/// identity (profile, name and the paper's values) for `runs.csv`.
pub struct ResolvedRun {
    /// The configuration to train.
    pub config: Config,
    /// The profile applied, if any.
    pub profile: Option<String>,
    /// The row applied, if any.
    pub row: Option<String>,
    /// The paper's values of that row.
    pub paper: Option<PaperValues>,
}

/// Resolves `file` under `profile` and `row` with `sets` (plus the profile's environment
/// overrides, such as `data.root` from `AFFWILD2_ROOT` for `paper`).
pub fn resolve_run(
    file: &ExperimentFile,
    profile: Option<&str>,
    row: Option<&str>,
    sets: &[Override],
) -> anyhow::Result<ResolvedRun> {
    let sets = match profile {
        Some(p) => env_overrides(p, sets),
        None => sets.to_vec(),
    };
    let config = file.resolve(profile, row, &sets)?;
    let paper = row
        .and_then(|r| file.rows.iter().find(|x| x.name == r))
        .and_then(|r| r.paper.clone());
    Ok(ResolvedRun {
        config,
        profile: profile.map(str::to_string),
        row: row.map(str::to_string),
        paper,
    })
}
