//! Which profile a command runs (explicit, else `paper` when `AFFWILD2_ROOT` is set, else
//! `demo`), which experiment file, and how a single run of a file is resolved.

use std::path::Path;

use crate::experiment::differences::config_differences;
use crate::experiment::{Config, ExperimentFile, Override, PaperValues, TABLE1_YAML};

/// Picks the profile: explicit, else `paper` with `AFFWILD2_ROOT`, else `demo`; the reason is
/// the first line `table1` prints.
pub fn choose_profile(explicit: Option<&str>) -> (String, String) {
    choose_profile_given(explicit, affwild2_root().as_deref())
}

/// `AFFWILD2_ROOT`, where set to something other than blanks.
pub fn affwild2_root() -> Option<String> {
    std::env::var("AFFWILD2_ROOT")
        .ok()
        .filter(|s| !s.trim().is_empty())
}

/// [`choose_profile`] with `env` as `AFFWILD2_ROOT`.
fn choose_profile_given(explicit: Option<&str>, env: Option<&str>) -> (String, String) {
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

/// The profile `mtanet train` applies to `file`: the one named, else [`choose_profile`]'s
/// (`paper` with `AFFWILD2_ROOT`, else `demo`) where the file defines it, so that a row trains
/// as the table commands train it; else none. With the line saying why, for an implicit one.
pub fn train_profile(
    file: &ExperimentFile,
    explicit: Option<&str>,
    affwild2_root: Option<&str>,
) -> (Option<String>, Option<String>) {
    if let Some(p) = explicit {
        return (Some(p.to_string()), None);
    }
    let (chosen, why) = choose_profile_given(None, affwild2_root);
    if file.profile_names().contains(&chosen) {
        (Some(chosen), Some(why))
    } else {
        (None, None)
    }
}

/// Refuses a run whose profile was not named that would train on the synthetic set
/// (`data.root` null) while `AFFWILD2_ROOT` (`affwild2_root`) is set, unless the file itself
/// sets `data.synthetic`: the variable says the user means Aff-Wild2, and a row trained on the
/// synthetic set under the row's name would be a wrong result.
pub fn refuse_synthetic_under_affwild2_root(
    file: &ExperimentFile,
    config: &Config,
    affwild2_root: Option<&str>,
) -> anyhow::Result<()> {
    let synthetic_by_choice = file.sets_key(&["data", "synthetic"]);
    let Some(env) = affwild2_root.filter(|_| config.data.root.is_none() && !synthetic_by_choice)
    else {
        return Ok(());
    };
    anyhow::bail!(
        "AFFWILD2_ROOT={env} is set, but {} defines no `paper` profile and leaves data.root \
         null (the synthetic Aff-Wild2): pass --set data.root={env} to train on Aff-Wild2, or \
         --profile NAME, `data.synthetic` in the file, or unset AFFWILD2_ROOT to train on the \
         synthetic set",
        file.path
    )
}

/// The experiment file a command reads when none is named.
pub const DEFAULT_EXPERIMENT: &str = "experiments/table1.yaml";

/// Loads the experiment file the options name.
pub fn load_experiment(path: Option<&Path>) -> anyhow::Result<ExperimentFile> {
    match path {
        Some(p) => Ok(ExperimentFile::load(p)?),
        None => {
            let p = Path::new(DEFAULT_EXPERIMENT);
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
        if let Some(root) = affwild2_root() {
            out.push(Override {
                key: vec!["data".into(), "root".into()],
                value: serde_yaml::Value::String(root),
            });
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
    /// The row the run is: the requested row, or `None` when the overrides changed one of the
    /// keys that row sets (see `changed_row_keys`).
    pub row: Option<String>,
    /// The paper's values of that row (`None` when the run is not the row).
    pub paper: Option<PaperValues>,
    /// The keys the requested row sets whose value the overrides changed
    /// ([`ExperimentFile::row_keys_changed`]): when any, the run is recorded without the row's
    /// name and paper values, as the table commands do.
    pub changed_row_keys: Vec<String>,
    /// Every key whose value the command-line overrides changed from what the file defines
    /// for this profile and row, as `key=value` in key order (empty: the run is the file's
    /// own). Recorded beside the row name (`runs.csv`, the table CSV) so that a run with
    /// overrides is never taken for the row as the file defines it.
    pub overrides: Vec<String>,
}

/// Resolves `file` under `profile` and `row` with `sets` (plus the profile's environment
/// overrides, such as `data.root` from `AFFWILD2_ROOT` for `paper`). A run whose overrides
/// change a key the row sets is not that row: it keeps no row name or paper values.
pub fn resolve_run(
    file: &ExperimentFile,
    profile: Option<&str>,
    row: Option<&str>,
    sets: &[Override],
) -> anyhow::Result<ResolvedRun> {
    let with_env = |user: &[Override]| match profile {
        Some(p) => env_overrides(p, user),
        None => user.to_vec(),
    };
    let config = file.resolve(profile, row, &with_env(sets))?;
    let as_defined = file.resolve_unchecked(profile, row, &with_env(&[]))?;
    let changed_row_keys = match row {
        Some(r) => file.row_keys_changed(r, &config, &as_defined),
        None => Vec::new(),
    };
    let overrides = config_differences(&as_defined, &config)?
        .into_iter()
        .map(|d| format!("{}={}", d.key, d.second))
        .collect();
    let row = row.filter(|_| changed_row_keys.is_empty());
    let paper = row
        .and_then(|r| file.rows.iter().find(|x| x.name == r))
        .and_then(|r| r.paper.clone());
    Ok(ResolvedRun {
        config,
        profile: profile.map(str::to_string),
        row: row.map(str::to_string),
        paper,
        changed_row_keys,
        overrides,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = "\
defaults:
  experiment: t
  model: {backbone: resnet50, width_div: 16}
rows:
  - name: r50
    set: {model: {backbone: resnet50, pretrained: timm/resnet50.tv_in1k}}
    paper: {valence: 0.14, arousal: 0.24, au: 0.31, expr: 0.36}
  - name: se
    set: {model: {backbone: senet50_vggface2}}
    paper: {valence: 0.28, arousal: 0.34, au: 0.427, expr: 0.32}
profiles:
  small: {model: {pretrained: null}, seed: 7}
";

    fn sets(s: &[&str]) -> Vec<Override> {
        s.iter().map(|x| x.parse().unwrap()).collect()
    }

    #[test]
    fn a_set_of_a_key_the_row_defines_drops_its_name_and_paper_values() {
        let f = ExperimentFile::parse("t.yaml", FILE).unwrap();
        let run = resolve_run(&f, None, Some("r50"), &sets(&["backbone=senet50"])).unwrap();
        assert_eq!(run.row, None);
        assert!(run.paper.is_none());
        assert_eq!(run.changed_row_keys, vec!["model.backbone".to_string()]);
        assert_eq!(
            run.config.model.backbone,
            mtanet_backbones::BackboneKind::Senet50Vggface2
        );
        // The same value as the row's own is no change.
        let same = resolve_run(&f, None, Some("r50"), &sets(&["backbone=resnet50"])).unwrap();
        assert_eq!(same.row.as_deref(), Some("r50"));
        assert!(same.changed_row_keys.is_empty());
    }

    #[test]
    fn keys_the_row_leaves_alone_and_the_profile_keep_the_row() {
        let f = ExperimentFile::parse("t.yaml", FILE).unwrap();
        let run = resolve_run(
            &f,
            Some("small"),
            Some("se"),
            &sets(&["seed=3", "width_div=8"]),
        )
        .unwrap();
        assert_eq!(run.row.as_deref(), Some("se"));
        assert_eq!(run.paper.as_ref().map(|p| p.au), Some(0.427));
        assert_eq!((run.config.seed, run.config.model.width_div), (3, 8));
        // The row keeps its name, and the overrides are recorded beside it.
        let mut overrides = run.overrides.clone();
        overrides.sort();
        assert_eq!(overrides, ["model.width_div=8", "seed=3"]);
        // The profile resets `pretrained`, which the row sets: the row as the profile
        // defines it, not a change.
        let plain = resolve_run(&f, Some("small"), Some("r50"), &[]).unwrap();
        assert_eq!(plain.row.as_deref(), Some("r50"));
        assert_eq!(plain.config.model.pretrained, None);
        assert!(plain.overrides.is_empty(), "{:?}", plain.overrides);
        // Under that profile, setting the row's key back to the row's value is a change.
        let hub = resolve_run(
            &f,
            Some("small"),
            Some("r50"),
            &sets(&["pretrained=timm/resnet50.tv_in1k"]),
        )
        .unwrap();
        assert_eq!(hub.row, None);
        assert_eq!(hub.changed_row_keys, vec!["model.pretrained".to_string()]);
        assert_eq!(
            hub.overrides,
            ["model.pretrained=\"timm/resnet50.tv_in1k\"".to_string()]
        );
    }

    #[test]
    fn without_a_row_nothing_is_changed() {
        let f = ExperimentFile::parse("t.yaml", FILE).unwrap();
        let run = resolve_run(&f, None, None, &sets(&["backbone=senet50"])).unwrap();
        assert_eq!((run.row, run.paper), (None, None));
        assert!(run.changed_row_keys.is_empty());
        assert_eq!(
            run.overrides,
            ["model.backbone=\"senet50_vggface2\"".to_string()]
        );
    }

    /// `mtanet train` without `--profile` takes the tables' choice where the file defines it
    /// (`paper` with `AFFWILD2_ROOT`, else `demo`, saying why), none where it does not, and the
    /// one named as named.
    #[test]
    fn train_takes_the_tables_profile_where_the_file_defines_it() {
        let file = FILE.replace(
            "  small: {model: {pretrained: null}, seed: 7}",
            "  small: {model: {pretrained: null}, seed: 7}\n  demo: {seed: 5}\n  paper: {seed: 6}",
        );
        let both = ExperimentFile::parse("t.yaml", &file).unwrap();
        let (p, why) = train_profile(&both, None, Some("/data/aw2"));
        assert_eq!(p.as_deref(), Some("paper"));
        assert!(why.unwrap().contains("AFFWILD2_ROOT=/data/aw2"));
        let (p, why) = train_profile(&both, None, None);
        assert_eq!(p.as_deref(), Some("demo"));
        assert!(why.unwrap().contains("AFFWILD2_ROOT is not set"));
        assert_eq!(
            train_profile(&both, Some("small"), Some("/data/aw2")),
            (Some("small".to_string()), None)
        );
        let neither = ExperimentFile::parse("t.yaml", FILE).unwrap();
        assert_eq!(
            train_profile(&neither, None, Some("/data/aw2")),
            (None, None)
        );
        assert_eq!(train_profile(&neither, None, None), (None, None));
    }

    /// With `AFFWILD2_ROOT` set, a run that would train on the synthetic set is refused
    /// naming the variable, the file and both ways out; with a data root, or without the
    /// variable, it is not.
    #[test]
    fn a_synthetic_run_under_affwild2_root_is_refused_naming_the_ways_out() {
        let f = ExperimentFile::parse("t.yaml", FILE).unwrap();
        let synthetic = resolve_run(&f, None, Some("r50"), &[]).unwrap().config;
        assert!(synthetic.data.root.is_none());
        let e = refuse_synthetic_under_affwild2_root(&f, &synthetic, Some("/data/aw2"))
            .unwrap_err()
            .to_string();
        for part in [
            "AFFWILD2_ROOT=/data/aw2",
            "t.yaml",
            "--set data.root=/data/aw2",
            "--profile",
        ] {
            assert!(e.contains(part), "{part}: {e}");
        }
        assert!(!e.contains("  "), "{e}");
        assert!(refuse_synthetic_under_affwild2_root(&f, &synthetic, None).is_ok());
        // A file that sets `data.synthetic` itself means the synthetic set.
        let own = FILE.replace(
            "  experiment: t\n",
            "  experiment: t\n  data: {synthetic: {videos: 4}}\n",
        );
        let own = ExperimentFile::parse("own.yaml", &own).unwrap();
        assert!(own.sets_key(&["data", "synthetic"]) && !f.sets_key(&["data", "synthetic"]));
        assert!(refuse_synthetic_under_affwild2_root(&own, &synthetic, Some("/data/aw2")).is_ok());
        let real = resolve_run(&f, None, Some("r50"), &sets(&["data.root=/x"]))
            .unwrap()
            .config;
        assert!(refuse_synthetic_under_affwild2_root(&f, &real, Some("/data/aw2")).is_ok());
    }

    /// A profile that must train on real data keeps its rows when the data root comes only
    /// from `--set` (the row as defined has none, and is compared unchecked), and is refused
    /// without one.
    #[test]
    fn a_data_root_given_only_by_set_keeps_the_row_of_a_real_data_profile() {
        let file = FILE.replace(
            "  small: {model: {pretrained: null}, seed: 7}",
            "  small: {model: {pretrained: null}, seed: 7}\n  real: {data: {require_real: true}}",
        );
        let f = ExperimentFile::parse("t.yaml", &file).unwrap();
        let run = resolve_run(&f, Some("real"), Some("r50"), &sets(&["data.root=/x"])).unwrap();
        assert_eq!(run.row.as_deref(), Some("r50"));
        assert!(run.paper.is_some());
        assert!(run.changed_row_keys.is_empty());
        let refused = resolve_run(&f, Some("real"), Some("r50"), &[])
            .err()
            .unwrap();
        assert!(
            format!("{refused:#}").contains("no data root is set"),
            "{refused:#}"
        );
    }
}
