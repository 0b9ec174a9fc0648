//! `scripts/gpu-check.sh` as far as a machine without a GPU allows: it must notice the missing
//! GPU and stop with one clear line and exit code 2, and its CPU mode (`GPU_CHECK_CPU=1`) must
//! run the conformance stage (f32 and bf16 rows) through the real binary and write its CSVs;
//! an op that errors must become an error row, with the run going on and the exit code 1; and
//! on the GPU path (a stand-in `nvidia-smi`, Python, binary and Nsight Compute) every stage must
//! call the binary, the profiler and PyTorch with the arguments it documents; the profile's
//! table (`scripts/gpu_profile.py table`) must sum each framework's kernels by category.

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
    assert_refused(&out, "gpu-check: no GPU: nvidia-smi not found");
    // Nothing was measured, so nothing was written.
    assert!(!out_dir.path().join("conformance.csv").exists());
}

/// Asserts that `out` exited with code 2, saying one line on stderr that starts with `start`.
fn assert_refused(out: &std::process::Output, start: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.starts_with(start), "{stderr}");
}

#[test]
fn help_prints_the_whole_header() {
    let out = script().arg("--help").output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    // Every header line, down to the last one before the code.
    let script =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/gpu-check.sh"))
            .unwrap();
    let header: Vec<&str> = script
        .lines()
        .skip(1)
        .take_while(|l| l.starts_with('#'))
        .collect();
    assert!(header.len() > 30, "{header:?}");
    assert_eq!(stdout.lines().collect::<Vec<_>>(), header);
}

#[test]
fn unknown_stage_exits_2_with_one_line() {
    let out = script().args(["--stage", "warp"]).output().unwrap();
    assert_refused(&out, "gpu-check: unknown stage 'warp'");
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

/// Stand-ins for `nvidia-smi`, the CUDA binary, Python and `ncu` in `dir`: each records its
/// arguments, one call per line, in `dir/calls` (Python only for the scripts it runs); the
/// binary answers the probe as a working device would, `ncu` writes an empty log.
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
        "ncu",
        format!(
            "echo \"ncu $*\" >> '{c}'\n\
             while [ $# -gt 0 ]; do [ \"$1\" = --log-file ] && : > \"$2\"; shift; done\n",
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

/// `gpu-check.sh --stage STAGE` on the stand-in GPU machine of `fakes` ([`fake_gpu_machine`]),
/// writing to `out`, with none of the settings a caller's environment could pass.
fn on_stand_in_gpu(fakes: &Path, out: &Path, stage: &str) -> Command {
    let mut c = script();
    c.args(["--stage", stage])
        .env("PATH", format!("{}:/usr/bin:/bin", fakes.display()))
        .env("BIN", fakes.join("mtanet"))
        .env("PYTHON", fakes.join("python"))
        .env("OUT", out)
        .env_remove("PROFILE_POINTS")
        .env_remove("NCU")
        .env_remove("BACKBONES")
        .env_remove("GPU_CHECK_CPU");
    c
}

/// Runs `stage` on the stand-in GPU machine; returns the calls the stage made.
fn gpu_path_calls(stage: &str) -> Vec<String> {
    let fakes = tempfile::tempdir().unwrap();
    fake_gpu_machine(fakes.path());
    let out_dir = tempfile::tempdir().unwrap();
    let out = on_stand_in_gpu(fakes.path(), out_dir.path(), stage)
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

    // Probe, one ncu per point, PyTorch's profile, the table; no conformance, no bench.
    let calls = gpu_path_calls("profile");
    assert_eq!(calls.len(), 6, "{calls:#?}");
    assert_eq!(calls[0], probe);
    for (i, (backbone, batch, precision)) in [
        ("resnet50", "64", "f32"),
        ("resnet50", "256", "f32"),
        ("resnet50", "64", "bf16"),
    ]
    .into_iter()
    .enumerate()
    {
        // ncu's call names the binary's (the stand-in ncu does not run it).
        let c = &calls[1 + i];
        assert!(
            c.starts_with(
                "ncu --profile-from-start off --metrics gpu__time_duration.sum --csv \
                 --clock-control none --log-file "
            ),
            "{c}"
        );
        assert!(
            c.contains(&format!("/ncu_{backbone}_{batch}_{precision}.csv ")),
            "{c}"
        );
        assert!(
            c.contains(
                " gpu-check --device cuda:0 --reference cpu --fixtures tests/fixtures/backbones"
            ) && c.contains(&format!(
                " --no-conformance --profile-timed-steps --backbones {backbone} --batches \
                 {batch} --precisions {precision} --size 112 --steps 1 --warmup 2"
            )),
            "{c}"
        );
    }
    assert!(
        calls[4].starts_with("python scripts/gpu_profile.py torch --device cuda --out ")
            && calls[4].ends_with(
                " --points resnet50:64:f32,resnet50:256:f32,resnet50:64:bf16 --size 112"
            ),
        "{}",
        calls[4]
    );
    assert!(
        calls[5].starts_with("python scripts/gpu_profile.py table --out "),
        "{}",
        calls[5]
    );
}

#[test]
fn the_profile_stage_needs_a_gpu_and_nsight_compute() {
    let out = script()
        .args(["--stage", "profile"])
        .env("GPU_CHECK_CPU", "1")
        .output()
        .unwrap();
    assert_refused(&out, "gpu-check: the profile stage needs a GPU");

    let fakes = tempfile::tempdir().unwrap();
    fake_gpu_machine(fakes.path());
    std::fs::remove_file(fakes.path().join("ncu")).unwrap();
    let out_dir = tempfile::tempdir().unwrap();
    let out = on_stand_in_gpu(fakes.path(), out_dir.path(), "profile")
        .output()
        .unwrap();
    assert_refused(
        &out,
        "gpu-check: the profile stage needs Nsight Compute: 'ncu' not found",
    );
}

/// Runs `scripts/gpu_profile.py table` on `dir`.
fn profile_table(dir: &Path) -> std::process::Output {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    Command::new("python3")
        .arg(root.join("scripts/gpu_profile.py"))
        .args(["table", "--out"])
        .arg(dir)
        .output()
        .unwrap()
}

#[test]
fn the_profile_table_sums_each_frameworks_kernels_by_category() {
    let dir = tempfile::tempdir().unwrap();
    // An Nsight Compute `--csv` log: ncu's own lines, one row per launch, ns and us values
    // with thousands separators, and a row of another metric that must not count.
    let head = "\"ID\",\"Process ID\",\"Process Name\",\"Host Name\",\"Kernel Name\",\
                \"Context\",\"Stream\",\"Block Size\",\"Grid Size\",\"Device\",\"CC\",\
                \"Section Name\",\"Metric Name\",\"Metric Unit\",\"Metric Value\"\n";
    let row = |id: usize, name: &str, metric: &str, unit: &str, value: &str| {
        format!(
            "\"{id}\",\"1\",\"mtanet\",\"h\",\"{name}\",\"1\",\"7\",\"(1, 1, 1)\",\"(1, 1, 1)\",\
             \"0\",\"9.0\",\"Command line profiler metrics\",\"{metric}\",\"{unit}\",\"{value}\"\n"
        )
    };
    let t = "gpu__time_duration.sum";
    let ncu = [
        "==PROF== Connected to process 1\n".to_string(),
        head.to_string(),
        row(
            0,
            "void implicit_convolve_sgemm<float, float>(int, int)",
            t,
            "ns",
            "1,500,000",
        ),
        row(1, "sm80_xmma_dgrad_implicit_gemm_f32f32", t, "us", "2,500"),
        row(2, "mtanet_bn_row_sums", t, "ns", "700,000"),
        row(3, "badd_f32", t, "ns", "300,000"),
        row(4, "badd_f32", t, "ns", "300,000"),
        row(5, "mtanet_opt_sgd_apply", t, "ns", "100,000"),
        row(6, "cast_f32_bf16", t, "ns", "50,000"),
        row(7, "mystery_kernel", t, "ns", "10,000"),
        row(
            8,
            "badd_f32",
            "sm__cycles_elapsed.avg",
            "cycle",
            "99,999,999",
        ),
        "==PROF== Disconnected from process 1\n".to_string(),
    ]
    .concat();
    std::fs::write(dir.path().join("ncu_resnet50_64_f32.csv"), ncu).unwrap();
    std::fs::write(
        dir.path().join("torch_kernels.csv"),
        "point,kernel,calls,gpu_us\n\
         resnet50_64_f32,\"void cudnn::bn_fw_tr_1C11_kernel_NCHW<float, float>(int)\",3,900.0\n\
         resnet50_64_f32,sm80_xmma_fprop_implicit_gemm_f32f32,2,2000.0\n\
         resnet50_64_f32,\"void at::native::vectorized_elementwise_kernel<4, at::native::\
         CUDAFunctor_add<float>>\",5,250.0\n\
         resnet50_64_f32,\"void at::native::multi_tensor_apply_kernel<float>\",1,80.0\n\
         resnet50_256_f32,sm80_xmma_fprop_implicit_gemm_f32f32,2,9999.0\n",
    )
    .unwrap();
    let out = profile_table(dir.path());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let csv = std::fs::read_to_string(dir.path().join("profile.csv")).unwrap();
    let mut lines = csv.lines();
    assert_eq!(
        lines.next(),
        Some("point,category,ours_ms,ours_kernels,torch_ms,torch_kernels")
    );
    let rows: Vec<&str> = lines.collect();
    // Each category: ours' launches summed (ms, launches), PyTorch's kernels (ms, calls).
    let want = [
        "resnet50_64_f32,optimizer,0.100,1,0.080,1",
        "resnet50_64_f32,batchnorm,0.700,1,0.900,3",
        "resnet50_64_f32,convolution + matmul,4.000,2,2.000,2",
        "resnet50_64_f32,casts,0.050,1,0.000,0",
        "resnet50_64_f32,elementwise + reductions,0.600,2,0.250,5",
        "resnet50_64_f32,other,0.010,1,0.000,0",
        "resnet50_64_f32,total,5.460,8,3.230,11",
    ];
    assert_eq!(rows, want, "{csv}");
    let md = std::fs::read_to_string(dir.path().join("profile.md")).unwrap();
    assert!(
        md.contains("| **total** | **5.46** (8) | 3.23 (11) | 1.69 |"),
        "{md}"
    );
    assert!(
        md.contains("| 1.50 | 1 | `implicit_convolve_sgemm<float, float>` |"),
        "{md}"
    );
    // The PyTorch point with no profile of ours is named, not dropped silently.
    assert!(
        md.contains("left out of the tables: resnet50_256_f32."),
        "{md}"
    );

    // An unknown time unit is refused, naming the file and the kernel.
    std::fs::write(
        dir.path().join("ncu_resnet50_64_f32.csv"),
        [head.to_string(), row(0, "badd_f32", t, "fortnight", "1")].concat(),
    )
    .unwrap();
    let out = profile_table(dir.path());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("ncu_resnet50_64_f32.csv: unknown time unit 'fortnight' of 'badd_f32'"),
        "{stderr}"
    );
}
