//! Fuzzes `mtanet_runner::checkpoint::load` on the bytes written to a file (safetensors header,
//! `state` metadata JSON, tensor data).
#![no_main]

use candle_core::Device;
use libfuzzer_sys::fuzz_target;
use mtanet_runner::checkpoint;

fuzz_target!(|data: &[u8]| {
    let path = std::env::temp_dir().join(format!("mtanet-fuzz-{}.safetensors", std::process::id()));
    if std::fs::write(&path, data).is_err() {
        return;
    }
    let _ = checkpoint::load(&path, &Device::Cpu);
});
