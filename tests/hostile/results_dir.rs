//! An unwritable results folder: the run fails at once, naming the path, and leaves what was
//! there untouched. (Tests run as root, which ignores permission bits, so "unwritable" is a
//! folder whose parent is a regular file.)

use std::path::Path;

use mtanet_runner::experiment::Config;
use mtanet_runner::training::{self as train, RunContext};

use super::support;

fn tiny_config(tmp: &Path, results: &Path) -> Config {
    support::tiny_config(results, &tmp.join("synth"), &[])
}

fn quiet() -> RunContext {
    RunContext {
        quiet: true,
        ..Default::default()
    }
}

#[test]
fn results_dir_under_a_regular_file() {
    let tmp = tempfile::tempdir().unwrap();
    let afile = tmp.path().join("afile");
    std::fs::write(&afile, b"precious bytes\n").unwrap();
    let results = afile.join("results");
    let config = tiny_config(tmp.path(), &results);
    let Err(e) = train::run(&config, &quiet()) else {
        panic!("a run into an unwritable results folder must fail");
    };
    let msg = format!("{e:#}");
    assert!(msg.contains(&results.display().to_string()), "{msg}");
    assert_eq!(std::fs::read(&afile).unwrap(), b"precious bytes\n");
    // It failed at start: no synthetic set was generated, no training happened.
    assert!(!tmp.path().join("synth").exists());
}

#[test]
fn experiment_folder_is_a_file_and_runs_csv_is_untouched() {
    let tmp = tempfile::tempdir().unwrap();
    let results = tmp.path().join("results");
    std::fs::create_dir_all(&results).unwrap();
    let runs = b"run_id,experiment\nold,tiny\n";
    std::fs::write(results.join("runs.csv"), runs).unwrap();
    std::fs::write(results.join("tiny"), b"not a folder").unwrap();
    let config = tiny_config(tmp.path(), &results);
    let Err(e) = train::run(&config, &quiet()) else {
        panic!("a run into an unwritable results folder must fail");
    };
    let msg = format!("{e:#}");
    assert!(
        msg.contains(&results.join("tiny").display().to_string()),
        "{msg}"
    );
    assert_eq!(std::fs::read(results.join("runs.csv")).unwrap(), runs);
    assert_eq!(
        std::fs::read(results.join("tiny")).unwrap(),
        b"not a folder"
    );
    assert!(!tmp.path().join("synth").exists());
    let names: Vec<_> = std::fs::read_dir(&results)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names.len(), 2, "{names:?}");
}
