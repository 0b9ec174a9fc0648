//! The weights of a run's model-selection picks, kept in step with the checkpoint that records
//! the picks.
//!
//! An evaluation that becomes a pick writes its weights to `best.safetensors.pending` (or
//! `best-<task>.safetensors.pending`), not over `best.safetensors`: the picks themselves live in
//! the loop state of `last.safetensors`, which is written later (the next checkpoint). Right after
//! that checkpoint the pending files are renamed over the best ones ([`promote`]). A run killed in
//! between resumes from a checkpoint whose picks do not include the pending weights; [`reconcile`]
//! then renames a pending file whose own recorded pick is the checkpoint's (a kill between the
//! checkpoint and the rename) and removes any other (a pick made after the checkpoint, which the
//! resumed run evaluates again). So `best.safetensors` always holds the weights of the pick that
//! the run's figures (`report.json`, `runs.csv`, `selection.json`) are taken from, also when the
//! replayed evaluations round differently (resumed on another CPU) and pick something else.

use std::path::{Path, PathBuf};

use anyhow::Context;

use super::selection::{Pick, PICK_NAMES};
use crate::record::checkpoint::{read_json_entry, TrainState, STATE_KEY};

/// `checkpoints/best.safetensors` for the total pick, `best-<task>.safetensors` per task.
pub fn pick_file(run_dir: &Path, pick: &str) -> PathBuf {
    let file = if pick == "total" {
        "best.safetensors".to_string()
    } else {
        format!("best-{pick}.safetensors")
    };
    run_dir.join("checkpoints").join(file)
}

/// Where a pick's weights wait for the checkpoint that records the pick: its
/// [`pick_file`] with `.pending` appended.
pub fn pending_file(run_dir: &Path, pick: &str) -> PathBuf {
    let mut name = pick_file(run_dir, pick).into_os_string();
    name.push(".pending");
    PathBuf::from(name)
}

/// True when a pick's weights wait for a checkpoint (a pending file of any pick).
pub fn any_pending(run_dir: &Path) -> bool {
    PICK_NAMES
        .iter()
        .any(|name| pending_file(run_dir, name).is_file())
}

/// Renames every pending pick file over its pick file: called right after a checkpoint whose
/// loop state records those picks.
pub fn promote(run_dir: &Path) -> anyhow::Result<()> {
    for name in PICK_NAMES {
        if pending_file(run_dir, name).is_file() {
            rename_into_place(run_dir, name)?;
        }
    }
    Ok(())
}

/// Renames the pending file of pick `name` over its pick file; returns the pick file.
fn rename_into_place(run_dir: &Path, name: &str) -> anyhow::Result<PathBuf> {
    let (pending, to) = (pending_file(run_dir, name), pick_file(run_dir, name));
    std::fs::rename(&pending, &to)
        .with_context(|| format!("renaming {} to {}", pending.display(), to.display()))?;
    Ok(to)
}

/// On resume from a checkpoint with loop state `state`: each pending pick file whose own
/// recorded pick equals the checkpoint's pick of that name is renamed over its pick file; any
/// other is removed (its evaluation came after the checkpoint and runs again). Returns what it
/// did, a line per file. An unreadable pending file is an error naming it: whether the
/// checkpoint's pick is in it cannot be told.
pub fn reconcile(run_dir: &Path, state: &TrainState) -> anyhow::Result<Vec<String>> {
    let mut done = Vec::new();
    for name in PICK_NAMES {
        let pending = pending_file(run_dir, name);
        if !pending.is_file() {
            continue;
        }
        let recorded = recorded_pick(&pending, name)?;
        let kept = state.selection.pick(name);
        if recorded.is_some() && recorded.as_ref() == kept {
            let to = rename_into_place(run_dir, name)?;
            done.push(format!(
                "{} holds the checkpoint's {name} pick: now {}",
                pending.display(),
                to.display()
            ));
        } else {
            std::fs::remove_file(&pending)
                .with_context(|| format!("removing {}", pending.display()))?;
            let at = recorded.map_or("an unrecorded step".to_string(), |p| p.at());
            done.push(format!(
                "{} (the {name} pick at {at}) came after the checkpoint: removed, its \
                 evaluation runs again",
                pending.display()
            ));
        }
    }
    Ok(done)
}

/// The pick of `name` that the checkpoint file at `path` recorded in its loop state.
fn recorded_pick(path: &Path, name: &str) -> anyhow::Result<Option<Pick>> {
    let state: TrainState = read_json_entry(path, STATE_KEY)?
        .with_context(|| format!("{}: no `state` metadata", path.display()))?;
    Ok(state.selection.pick(name).cloned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::checkpoint::{self, load};
    use candle_core::{Device, Tensor};
    use mtanet_metrics::Report;
    use std::collections::HashMap;

    fn report(score: f64) -> Report {
        serde_json::from_value(serde_json::json!({
            "va": {"ccc_valence": score, "ccc_arousal": score, "score": score, "frames": 10},
            "au": null,
            "expr": null,
        }))
        .unwrap()
    }

    /// A loop state whose total and VA picks are the evaluation at `step` scoring `score`.
    fn state_picking(step: u64, score: f64) -> TrainState {
        let mut state = TrainState {
            global_step: step,
            ..TrainState::default()
        };
        state.selection.offer(0, 1, step, &report(score));
        state
    }

    /// A checkpoint at `path` holding one tensor of `value` and the loop state `state`.
    fn write(path: &Path, value: f32, state: &TrainState) {
        let w = Tensor::new(&[value, value], &Device::Cpu).unwrap();
        let model = HashMap::from([("w".to_string(), w)]);
        checkpoint::save(path, &model, &HashMap::new(), state).unwrap();
    }

    /// An empty run directory with its `checkpoints` folder.
    fn run_dir() -> tempfile::TempDir {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(tmp.path().join("checkpoints")).unwrap();
        tmp
    }

    fn value(path: &Path) -> f32 {
        let c = load(path, &Device::Cpu).unwrap();
        c.model["w"].to_vec1::<f32>().unwrap()[0]
    }

    #[test]
    fn a_pending_pick_the_checkpoint_records_is_promoted_and_another_removed() {
        let tmp = run_dir();
        let run = tmp.path();
        let older = state_picking(4, 0.3);
        write(&pick_file(run, "total"), 1.0, &older);
        write(&pick_file(run, "va"), 1.0, &older);
        // The checkpoint was written after the evaluation at step 8 became the total and VA
        // pick: the pending total file is that pick.
        let checkpoint = state_picking(8, 0.5);
        write(&pending_file(run, "total"), 2.0, &checkpoint);
        // The VA pending file is an evaluation after the checkpoint (step 12).
        write(&pending_file(run, "va"), 3.0, &state_picking(12, 0.7));
        let done = reconcile(run, &checkpoint).unwrap();
        assert_eq!(done.len(), 2, "{done:?}");
        assert_eq!(value(&pick_file(run, "total")), 2.0, "promoted");
        assert_eq!(value(&pick_file(run, "va")), 1.0, "the older pick kept");
        for name in ["total", "va"] {
            assert!(!pending_file(run, name).exists(), "{name} pending left");
        }
        assert!(
            done[1].contains("step 12") && done[1].contains("removed"),
            "{}",
            done[1]
        );
    }

    #[test]
    fn a_pending_pick_with_the_same_step_but_another_score_is_removed() {
        // A replay at the same step that scored differently is not the checkpoint's pick.
        let tmp = run_dir();
        let run = tmp.path();
        write(&pending_file(run, "total"), 2.0, &state_picking(8, 0.51));
        reconcile(run, &state_picking(8, 0.5)).unwrap();
        assert!(!pending_file(run, "total").exists());
        assert!(!pick_file(run, "total").exists());
    }

    #[test]
    fn an_unreadable_pending_file_is_an_error_naming_it() {
        let tmp = run_dir();
        let run = tmp.path();
        let pending = pending_file(run, "expr");
        std::fs::write(&pending, b"not a checkpoint").unwrap();
        let err = reconcile(run, &state_picking(8, 0.5)).unwrap_err();
        assert!(
            format!("{err:#}").contains("best-expr.safetensors.pending"),
            "{err:#}"
        );
        assert!(pending.exists(), "left for the user to look at");
    }

    #[test]
    fn promote_renames_every_pending_file() {
        let tmp = run_dir();
        let run = tmp.path();
        let state = state_picking(8, 0.5);
        write(&pick_file(run, "total"), 1.0, &state);
        write(&pending_file(run, "total"), 2.0, &state);
        write(&pending_file(run, "au"), 3.0, &state);
        promote(run).unwrap();
        assert_eq!(value(&pick_file(run, "total")), 2.0);
        assert_eq!(value(&pick_file(run, "au")), 3.0);
        assert!(!pending_file(run, "total").exists() && !pending_file(run, "au").exists());
    }
}
