//! `scripts/gpu-check.sh` as far as a machine without a GPU allows: it must notice the missing
//! GPU and stop with one clear line and exit code 2, and its CPU mode (`GPU_CHECK_CPU=1`) must
//! run the conformance stage (f32 and bf16 rows) through the real binary and write its CSVs;
//! an op that errors must become an error row, with the run going on and the exit code 1.

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
fn unknown_stage_exits_2_with_one_line() {
    let out = script().args(["--stage", "warp"]).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "stderr: {stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.starts_with("gpu-check: unknown stage 'warp'"),
        "{stderr}"
    );
}

/// The rows of `conformance.csv` in `dir`, without the header.
fn conformance_rows(dir: &Path) -> Vec<String> {
    let csv = std::fs::read_to_string(dir.join("conformance.csv")).unwrap();
    let mut lines = csv.lines();
    assert_eq!(
        lines.next(),
        Some(
            "item,quantity,shape,reference,rel_err_vs_reference,rel_err_vs_torch,\
             torch_tolerance,status,message"
        )
    );
    lines.map(str::to_string).collect()
}

#[test]
fn cpu_mode_runs_the_conformance_stage() {
    let out_dir = tempfile::tempdir().unwrap();
    let out = script()
        .args(["--stage", "conformance"])
        .env("GPU_CHECK_CPU", "1")
        .env("OUT", out_dir.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    let rows = conformance_rows(out_dir.path());
    assert!(rows.len() > 100, "{} rows", rows.len());
    assert!(
        rows.iter().all(|r| r.contains(",pass,")),
        "{}",
        rows.join("\n")
    );
    // The CPU mode compares the ops with independent code, not with themselves.
    let independent = rows
        .iter()
        .filter(|r| r.contains("\"cpu, candle ops\""))
        .count();
    assert!(
        independent > 100,
        "{independent} rows against candle's own ops"
    );
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
    // The rows of the device-resident training step: running averages, gradient norm, and the
    // whole step in both variants (losses, gradients, updates, running statistics).
    for item in [
        "\"BatchStats::update_running",
        "\"Optimizer::grad_norm_sq",
        "\"train_step small resnet50 (guarded, host masks)\",\"loss total\"",
        "\"train_step small resnet50 (guarded, host masks)\",\"gradient norm\"",
        "\"train_step small resnet50 (unguarded, device masks)\",\"scaled grad",
    ] {
        assert!(rows.iter().any(|r| r.starts_with(item)), "no row {item}");
    }
    let log = std::fs::read_to_string(out_dir.path().join("gpu-check.log")).unwrap();
    assert!(
        log.contains("gpu-check: conformance ") && log.contains(" 0 failed, 0 errored"),
        "{log}"
    );
    assert!(
        stdout.contains("gpu-check: stage conformance done in"),
        "{stdout}"
    );
    assert!(out_dir.path().join("table.md").exists());
}

#[test]
fn an_op_that_errors_is_an_error_row_and_the_run_finishes_with_exit_1() {
    let out_dir = tempfile::tempdir().unwrap();
    let out = script()
        .args(["--stage", "conformance"])
        .env("GPU_CHECK_CPU", "1")
        .env(
            "MTANET_GPU_CHECK_INJECT_ERROR",
            "Gate op spatial (2, 5, 7, 9)",
        )
        .env("OUT", out_dir.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stdout}\n{stderr}");
    let rows = conformance_rows(out_dir.path());
    let errors: Vec<&String> = rows.iter().filter(|r| r.contains(",error,")).collect();
    // The plain and the transposed spatial gate of that shape.
    assert_eq!(errors.len(), 2, "{errors:?}");
    assert!(
        errors[0]
            .starts_with("\"Gate op spatial (2, 5, 7, 9)\",\"-\",\"[2, 5, 7, 9] x [2, 1, 7, 9]\""),
        "{errors:?}"
    );
    assert!(
        errors[0].contains("MTANET_GPU_CHECK_INJECT_ERROR"),
        "{errors:?}"
    );
    // Everything else ran: the backbones after the ops, all passing.
    assert!(rows
        .iter()
        .any(|r| r.starts_with("\"senet50_vggface2 bf16")));
    assert!(rows
        .iter()
        .filter(|r| !r.contains(",error,"))
        .all(|r| r.contains(",pass,")));
    // One line on stderr says the stage failed and why.
    let last = stderr.lines().last().unwrap_or("");
    assert!(
        last.starts_with("gpu-check: FAILED stage conformance") && last.contains("2 errored"),
        "{stderr}"
    );
    assert!(out_dir.path().join("table.md").exists());
}
