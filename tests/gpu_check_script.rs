//! `scripts/gpu-check.sh` as far as a machine without a GPU allows: it must notice the missing
//! GPU and stop with one clear line and exit code 2, and its CPU mode (`GPU_CHECK_CPU=1`) must
//! run the conformance part (f32 and bf16 rows) through the real binary and write its CSVs.

use std::path::Path;
use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_mtanet");

fn script() -> Command {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut c = Command::new("bash");
    c.arg(root.join("scripts/gpu-check.sh"))
        .current_dir(root)
        .env("BIN", BIN);
    c
}

#[test]
fn missing_gpu_exits_2_with_one_line() {
    // A PATH without nvidia-smi (none is installed where this test is meant to run).
    let path = "/usr/bin:/bin";
    if ["/usr/bin/nvidia-smi", "/bin/nvidia-smi"]
        .iter()
        .any(|p| Path::new(p).exists())
    {
        eprintln!("skipped: this machine has nvidia-smi");
        return;
    }
    let out_dir = tempfile::tempdir().unwrap();
    let out = script()
        .env("PATH", path)
        .env("OUT", out_dir.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "stderr: {stderr}");
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "{stderr}");
    assert!(
        lines[0].starts_with("gpu-check: no GPU: nvidia-smi not found"),
        "{stderr}"
    );
    // Nothing was measured, so nothing was written.
    assert!(!out_dir.path().join("conformance.csv").exists());
}

#[test]
fn cpu_mode_runs_the_conformance_part() {
    let out_dir = tempfile::tempdir().unwrap();
    let out = script()
        .env("GPU_CHECK_CPU", "1")
        .env("SKIP_BENCH", "1")
        .env("OUT", out_dir.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    let csv = std::fs::read_to_string(out_dir.path().join("conformance.csv")).unwrap();
    let rows: Vec<&str> = csv.lines().skip(1).collect();
    assert!(rows.len() > 100, "{} rows", rows.len());
    assert!(rows.iter().all(|r| r.ends_with(",true")), "{csv}");
    for kind in [
        "resnet50",
        "resnext50_32x4d",
        "resnext50_32x4d_cbam",
        "seresnet50",
        "senet50_vggface2",
    ] {
        let bf16 = format!("\"{kind} bf16 (small");
        assert!(
            rows.iter().any(|r| r.starts_with(&bf16)),
            "no bf16 rows for {kind}"
        );
    }
    let log = std::fs::read_to_string(out_dir.path().join("gpu-check.log")).unwrap();
    assert!(log.contains("gpu-check: conformance"), "{log}");
}
