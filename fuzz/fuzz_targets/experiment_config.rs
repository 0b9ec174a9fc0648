//! Fuzzes the YAML experiment loader: `ExperimentFile::parse`, then `resolve` for the base and
//! every profile and row it defines (at most four of each), with `--set` overrides taken from
//! lines of the input that start with `#set ` (comments to YAML).
#![no_main]

use libfuzzer_sys::fuzz_target;
use mtanet_runner::config::{ExperimentFile, Override};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let overrides: Vec<Override> = text
        .lines()
        .filter_map(|l| l.strip_prefix("#set "))
        .take(4)
        .filter_map(|s| s.parse().ok())
        .collect();
    let Ok(file) = ExperimentFile::parse("fuzz.yaml", text) else {
        return;
    };
    let mut profiles: Vec<Option<String>> = vec![None];
    profiles.extend(file.profile_names().into_iter().take(4).map(Some));
    let mut rows: Vec<Option<String>> = vec![None];
    rows.extend(file.rows.iter().take(4).map(|r| Some(r.name.clone())));
    for p in &profiles {
        for r in &rows {
            if let Ok(config) = file.resolve(p.as_deref(), r.as_deref(), &overrides) {
                let _ = config.to_yaml();
            }
        }
    }
});
