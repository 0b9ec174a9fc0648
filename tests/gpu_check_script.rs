//! `scripts/gpu-check.sh` as far as a machine without a GPU allows: it must notice the missing
//! GPU and stop with one clear line and exit code 2, and its CPU mode (`GPU_CHECK_CPU=1`) must
//! run the conformance stage (f32 and bf16 rows) through the real binary and write its CSVs;
//! an op that errors must become an error row, with the run going on and the exit code 1; and
//! on the GPU path (a stand-in `nvidia-smi`, Python and binary) every stage must call the
//! binary and PyTorch with the arguments it documents.

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

/// Stand-ins for `nvidia-smi`, the CUDA binary and Python in `dir`: each records its arguments,
/// one call per line, in `dir/calls` (Python only for `scripts/gpu_check_torch.py`); the binary
/// answers the probe as a working device would.
fn fake_gpu_machine(dir: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let calls = dir.join("calls");
    let write = |name: &str, body: String| {
        let path = dir.join(name);
        std::fs::write(&path, format!("#!/usr/bin/env bash\n{body}")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    };
    write(
        "nvidia-smi",
        "case \"$*\" in -L) echo 'GPU 0: Stand-in (UUID: GPU-0)';; \
         *) echo 'Stand-in, 0.0, 1 MiB';; esac\n"
            .into(),
    );
    write(
        "mtanet",
        format!(
            "echo \"mtanet $*\" >> '{c}'\n\
             case \"$*\" in *--probe*) echo 'gpu-check: device cuda:0 (stand-in)';; esac\n",
            c = calls.display()
        ),
    );
    write(
        "python",
        format!(
            "case \"$*\" in *'import nvidia'*) echo '{d}'; exit 0;; esac\n\
             echo \"python $*\" >> '{c}'\n",
            d = dir.display(),
            c = calls.display()
        ),
    );
}

/// Runs `stage` on the stand-in GPU machine; returns the calls the stage made.
fn gpu_path_calls(stage: &str) -> Vec<String> {
    let fakes = tempfile::tempdir().unwrap();
    fake_gpu_machine(fakes.path());
    let out_dir = tempfile::tempdir().unwrap();
    let out = script()
        .args(["--stage", stage])
        .env("PATH", format!("{}:/usr/bin:/bin", fakes.path().display()))
        .env("BIN", fakes.path().join("mtanet"))
        .env("PYTHON", fakes.path().join("python"))
        .env("OUT", out_dir.path())
        .env_remove("BACKBONES")
        .env_remove("GPU_CHECK_CPU")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    assert!(
        stdout.contains(&format!("gpu-check: stage {stage} done in")),
        "{stdout}\n{stderr}"
    );
    std::fs::read_to_string(fakes.path().join("calls"))
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect()
}

const ALL_FIVE: &str = "--backbones resnet50,resnext50_32x4d,resnext50_32x4d_cbam,seresnet50,\
                        senet50_vggface2 ";

#[test]
fn the_gpu_path_of_each_stage_calls_the_binary_and_pytorch_as_documented() {
    let probe = "mtanet gpu-check --probe --device cuda:0";
    let table = |c: &String| c.starts_with("python scripts/gpu_check_torch.py table --out ");

    let calls = gpu_path_calls("conformance");
    assert_eq!(calls.len(), 3, "{calls:#?}");
    assert_eq!(calls[0], probe);
    assert!(calls[1].starts_with("mtanet gpu-check --device cuda:0 --reference cpu"));
    assert!(calls[1].ends_with(" --no-bench"), "{}", calls[1]);
    assert!(table(&calls[2]), "{}", calls[2]);

    let calls = gpu_path_calls("bench");
    assert_eq!(calls.len(), 4, "{calls:#?}");
    assert_eq!(calls[0], probe);
    assert!(calls[1].ends_with(" --no-conformance"), "{}", calls[1]);
    assert!(
        calls[1].contains("--backbones resnet50,resnext50_32x4d --batches 64,256 "),
        "{}",
        calls[1]
    );
    assert!(calls[2].starts_with("python scripts/gpu_check_torch.py bench --device cuda "));
    assert!(!calls[2].contains("--compile"), "{}", calls[2]);
    assert!(table(&calls[3]), "{}", calls[3]);

    let calls = gpu_path_calls("full");
    assert_eq!(calls.len(), 5, "{calls:#?}");
    assert_eq!(calls[0], probe);
    assert!(calls[1].ends_with(" --no-bench"), "{}", calls[1]);
    assert!(calls[2].ends_with(" --no-conformance"), "{}", calls[2]);
    for c in &calls[1..=2] {
        assert!(c.contains(ALL_FIVE), "{c}");
    }
    assert!(
        calls[3].ends_with(" --compile --compile-points resnet50:256"),
        "{}",
        calls[3]
    );
    assert!(calls[3].contains(ALL_FIVE), "{}", calls[3]);
    assert!(table(&calls[4]), "{}", calls[4]);
}
