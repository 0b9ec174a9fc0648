//! Fuzzes the result-CSV reader: `read_csv` on the bytes written to a file, and `csv_split`
//! on every line of their lossy UTF-8 text.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mtanet_runner::atomic_io::{csv_split, read_csv};

fuzz_target!(|data: &[u8]| {
    let path = std::env::temp_dir().join(format!("mtanet-fuzz-{}.csv", std::process::id()));
    if std::fs::write(&path, data).is_err() {
        return;
    }
    if let Ok((header, rows)) = read_csv(&path) {
        assert!(rows.iter().all(|r| r.len() == header.len()));
    }
    for line in String::from_utf8_lossy(data).lines() {
        assert!(!csv_split(line).is_empty());
    }
});
