//! Fuzzes `mtanet_affwild2::parse_annotation`: every input is parsed as a VA, an AU and an
//! EXPR file. Errors are fine; a panic, a hang or a huge allocation is a finding.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use mtanet_affwild2::{parse_annotation, Task};

fuzz_target!(|data: &[u8]| {
    for task in [Task::Va, Task::Au, Task::Expr] {
        if let Ok(file) = parse_annotation(task, Path::new("fuzz/video.txt"), data) {
            // The accessors must agree with the parsed length.
            for i in 0..=file.len() {
                let _ = (file.is_labelled(i), file.va(i), file.au(i), file.expr(i));
            }
        }
    }
});
