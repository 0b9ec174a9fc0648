#!/usr/bin/env bash
# GPU check for a machine with an NVIDIA GPU (CUDA 13 driver), PyTorch + timm in its python3,
# and neither Rust nor network. Runs the stripped binary built by scripts/build-cuda.sh
# (dist/mtanet-cuda, or the carried dist/mtanet-cuda.xz) in stages sized for short GPU lends:
#
#   scripts/gpu-check.sh --stage conformance   # ~1 min on an H200: CPU-vs-CUDA conformance
#       of every op and every backbone (f32, and bf16 against f32), with CUDA_LAUNCH_BLOCKING=1
#       so that an illegal address names its op; no timing, no PyTorch.
#   scripts/gpu-check.sh --stage bench         # ~3 min: train/eval img/s and peak memory of
#       resnet50 and resnext50_32x4d at batch 64 and 256, f32 and bf16, beside PyTorch eager.
#   scripts/gpu-check.sh --stage full          # ~8-10 min (the default): conformance, then all
#       five backbones beside PyTorch eager and torch.compile (COMPILE_POINTS).
#   scripts/gpu-check.sh --stage profile       # ~2-3 min: GPU time of one train step kernel by
#       kernel for each of PROFILE_POINTS, ours (Nsight Compute, `ncu` or NCU=...) beside
#       PyTorch's (torch.profiler), by category: profile.md. Needs a GPU and ncu.
#
# Writes conformance.csv, bench_rust.csv, bench_torch.csv, gpu.json, table.csv, table.md and
# gpu-check.log to $OUT (default results/gpu-check); the profile stage ncu_<point>.csv,
# torch_kernels.csv, profile.csv, profile.md and gpu-check.log. The CSVs of a stage are written
# even when ops or points error (they become error rows). Exit codes: 2 with one line
# "gpu-check: ..." when there is no usable GPU or binary (or, for the profile stage, no ncu); 1
# with one line "gpu-check: FAILED ..." when a conformance row failed or errored, a point
# errored, or a step ran out of time; 0 otherwise.
#
# Environment: BIN (default dist/mtanet-cuda), PYTHON (python3), BATCHES, PRECISIONS (f32,bf16),
# SIZE (112), STEPS (10), WARMUP (3), BACKBONES (per stage, see above), NO_COMPILE=1,
# COMPILE_POINTS (backbone:batch pairs under torch.compile in the full stage, default
# resnet50:256; `all` compiles every point, ~0.5-1 min each), TF32=1 (cuDNN and matmuls in both
# frameworks), PROFILE_POINTS (backbone:batch:precision, comma-separated; default
# resnet50:64:f32,resnet50:256:f32,resnet50:64:bf16), NCU (default ncu). Time: BUDGET, the
# seconds the whole stage may take (225 conformance, 315 bench, 580 full, 300 profile: 15-30 s
# under the device call's timeout), and per-step limits within it,
# CONFORMANCE_LIMIT (200), RUST_BENCH_LIMIT and TORCH_BENCH_LIMIT (150 each in the bench stage;
# the rest of the budget in full). A step that runs out of time is stopped, its CSV keeps the
# rows so far, and the stage fails naming it.
# GPU_CHECK_CPU=1 runs the stages on the CPU with tiny sizes (the test on a machine without a
# GPU; it skips the GPU detection and does not need nvidia-smi).
set -uo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo" || exit 2
OUT="${OUT:-$repo/results/gpu-check}"
BIN="${BIN:-$repo/dist/mtanet-cuda}"
PYTHON="${PYTHON:-python3}"
cpu_mode="${GPU_CHECK_CPU:-0}"
start=$SECONDS

fail() {
    echo "gpu-check: $*" >&2
    exit 2
}

stage=full
while [ "$#" -gt 0 ]; do
    case "$1" in
        --stage) stage="${2:-}"; shift 2 || fail "--stage needs a value: conformance, bench, full or profile" ;;
        --stage=*) stage="${1#--stage=}"; shift ;;
        -h|--help) sed -n '2,/^set -uo/{/^#/p}' "${BASH_SOURCE[0]}"; exit 0 ;;
        *) fail "unknown argument $1 (use --stage conformance|bench|full|profile)" ;;
    esac
done
case "$stage" in
    conformance) run_conformance=1; run_bench=0 ;;
    bench) run_conformance=0; run_bench=1 ;;
    full) run_conformance=1; run_bench=1 ;;
    profile) run_conformance=0; run_bench=0 ;;
    *) fail "unknown stage '$stage' (use conformance, bench, full or profile)" ;;
esac

SHIM_DIR="${SHIM_DIR:-$repo/dist/curand-shim}"
if [ ! -x "$BIN" ] && [ -f "$BIN.xz" ]; then
    # The carried form: unpack with Python's lzma (no xz tool needed).
    unpacked="$(mktemp -d)/mtanet-cuda"
    "$PYTHON" -c 'import lzma, shutil, sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2], "wb"))' \
        "$BIN.xz" "$unpacked" && chmod +x "$unpacked" || fail "cannot unpack $BIN.xz"
    BIN="$unpacked"
fi
[ -x "$BIN" ] || fail "no binary at $BIN(.xz): build it on the dev machine with scripts/build-cuda.sh and carry dist/mtanet-cuda.xz and dist/curand-shim"
mkdir -p "$OUT" || fail "cannot create $OUT"

if [ "$cpu_mode" = 1 ]; then
    [ "$stage" != profile ] || fail "the profile stage needs a GPU and Nsight Compute (not GPU_CHECK_CPU=1)"
    device=cpu
    torch_device=cpu
    : "${BATCHES:=2,4}" "${SIZE:=32}" "${STEPS:=1}" "${WARMUP:=0}"
    [ "$stage" = bench ] || : "${BACKBONES:=resnet50}"
else
    device=cuda:0
    torch_device=cuda
    # 1. A GPU and its driver.
    command -v nvidia-smi >/dev/null 2>&1 \
        || fail "no GPU: nvidia-smi not found (no NVIDIA driver on this machine)"
    gpus="$(nvidia-smi -L 2>/dev/null)"
    echo "$gpus" | grep -q '^GPU ' || fail "no GPU: nvidia-smi lists no device"
    # 2. The CUDA libraries the binary links (libcublas/libnvrtc/libcudnn/...) from PyTorch's
    #    nvidia wheels, as scripts/cuda-env.sh linked them; libcuda.so.1 from the driver.
    site="$("$PYTHON" -c 'import nvidia, os; print(os.path.dirname(nvidia.__path__[0]))' 2>/dev/null)" \
        || fail "$PYTHON has no nvidia wheels (needs a CUDA 13 build of PyTorch)"
    libs="$(ls -d "$site"/nvidia/*/lib 2>/dev/null | paste -sd: -)"
    export LD_LIBRARY_PATH="${libs}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
    # PyTorch's CUDA 13 wheels have no libcurand: fall back to the shim build-cuda.sh made
    # (generator set-up works, GPU-side random generation errors; mtanet draws on the CPU).
    deps="$(ldd "$BIN" 2>/dev/null)"
    if [[ "$deps" == *"libcurand.so.10 => not found"* ]]; then
        [ -f "$SHIM_DIR/libcurand.so.10" ] \
            || fail "libcurand.so.10 not found and no $SHIM_DIR: rerun scripts/build-cuda.sh"
        export LD_LIBRARY_PATH="${LD_LIBRARY_PATH:+$LD_LIBRARY_PATH:}$SHIM_DIR"
        echo "gpu-check: no libcurand.so.10 in $PYTHON's wheels: using the cuRAND shim" >&2
    fi
    missing="$(ldd "$BIN" 2>/dev/null | grep 'not found' | awk '{print $1}' | tr '\n' ' ')"
    [ -z "$missing" ] || fail "the binary's libraries are missing: ${missing}(PyTorch's wheels must be CUDA 13: libcublas.so.13, libnvrtc.so.13, libcudnn.so.9)"
    # 3. The binary can initialise CUDA and run our kernels.
    probe="$(RUST_BACKTRACE=0 timeout -k 5 120 "$BIN" gpu-check --probe --device "$device" 2>&1)" \
        || fail "the binary cannot use CUDA: $(echo "$probe" | grep -v -E '^\s+[0-9]+: |^\s+at |^\s*$' | tr -s ' \n' ' ')"
    echo "$probe"
fi
case "$stage" in
    conformance) : "${BUDGET:=225}" ;;
    bench)
        : "${BACKBONES:=resnet50,resnext50_32x4d}" "${BUDGET:=315}"
        : "${RUST_BENCH_LIMIT:=150}" "${TORCH_BENCH_LIMIT:=150}"
        NO_COMPILE=1
        ;;
    full) : "${BUDGET:=580}" ;;
    profile)
        : "${BUDGET:=300}" "${NCU:=ncu}"
        : "${PROFILE_POINTS:=resnet50:64:f32,resnet50:256:f32,resnet50:64:bf16}"
        command -v "$NCU" >/dev/null 2>&1 \
            || fail "the profile stage needs Nsight Compute: '$NCU' not found (set NCU=/path/to/ncu)"
        ;;
esac
# Every stage passes --backbones (the conformance stage checks every backbone fixture whatever
# it names; the bench measures these): all five unless the stage or the CPU mode chose fewer.
: "${BACKBONES:=resnet50,resnext50_32x4d,resnext50_32x4d_cbam,seresnet50,senet50_vggface2}"
: "${RUST_BENCH_LIMIT:=$BUDGET}" "${TORCH_BENCH_LIMIT:=$BUDGET}" "${CONFORMANCE_LIMIT:=200}"
: "${BATCHES:=64,256}" "${PRECISIONS:=f32,bf16}" "${SIZE:=112}" "${STEPS:=10}" "${WARMUP:=3}"
deadline=$((start + BUDGET))

log="$OUT/gpu-check.log"
{
    echo "gpu-check: stage $stage, $(date -u +%FT%TZ) on $(hostname); device $device; binary $BIN"
    [ "$cpu_mode" = 1 ] || nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
} | tee "$log"

failures=()
# run LIMIT LABEL CMD...: runs CMD under a time limit, its output into the log; records a
# failure naming LABEL when it exits non-zero or runs out of time.
run() {
    local limit="$1" label="$2"
    shift 2
    # Within the stage's budget, keeping 10 s for the table.
    local left=$((deadline - SECONDS - 10))
    [ "$label" = "the table" ] && left=$((deadline - SECONDS + 10))
    if [ "$left" -lt 5 ]; then
        failures+=("no time left for $label within the ${BUDGET} s budget")
        return
    fi
    [ "$left" -lt "$limit" ] && limit=$left
    local from
    from=$(wc -l <"$log")
    timeout -k 10 "$limit" "$@" 2>&1 | tee -a "$log"
    local rc=${PIPESTATUS[0]}
    # The step's own summary lines ("gpu-check: conformance 270 passed, ...") name what failed.
    local said
    said="$(tail -n +"$((from + 1))" "$log" | grep -E '^gpu-check: (conformance|bench) [0-9]' | sed 's/^gpu-check: //' | paste -sd, -)"
    if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
        failures+=("$label ran out of its ${limit} s${said:+ ($said)}")
    elif [ "$rc" -ne 0 ]; then
        failures+=("$label exited $rc${said:+ ($said)}")
    fi
}

common=(--device "$device" --reference cpu --fixtures tests/fixtures/backbones --out "$OUT"
    --backbones "$BACKBONES" --batches "$BATCHES" --precisions "$PRECISIONS" --size "$SIZE"
    --steps "$STEPS" --warmup "$WARMUP")
if [ "$run_conformance" = 1 ]; then
    # Every launch synchronous: an illegal address is reported by the op that caused it.
    run "$CONFORMANCE_LIMIT" "conformance" env CUDA_LAUNCH_BLOCKING=1 \
        "$BIN" gpu-check "${common[@]}" --no-bench
fi
if [ "$run_bench" = 1 ]; then
    rust_args=("${common[@]}" --no-conformance)
    [ "${TF32:-0}" = 1 ] && rust_args+=(--tf32)
    run "$RUST_BENCH_LIMIT" "the Rust bench" "$BIN" gpu-check "${rust_args[@]}"
    torch_args=(bench --device "$torch_device" --out "$OUT" --backbones "$BACKBONES"
        --batches "$BATCHES" --precisions "$PRECISIONS" --size "$SIZE" --steps "$STEPS"
        --warmup "$WARMUP")
    [ "${NO_COMPILE:-0}" = 1 ] || [ "$cpu_mode" = 1 ] \
        || torch_args+=(--compile --compile-points "${COMPILE_POINTS:-resnet50:256}")
    [ "${TF32:-0}" = 1 ] && torch_args+=(--tf32)
    run "$TORCH_BENCH_LIMIT" "the PyTorch bench" "$PYTHON" scripts/gpu_check_torch.py "${torch_args[@]}"
fi
if [ "$stage" = profile ]; then
    # One timed train step per point under Nsight Compute, inside the capture range the binary
    # opens after its warm-up steps (cuDNN's algorithm measurement stays out of the profile).
    scratch="$(mktemp -d)"
    IFS=, read -r -a points <<<"$PROFILE_POINTS"
    for pt in "${points[@]}"; do
        IFS=: read -r p_backbone p_batch p_precision <<<"$pt"
        [ -n "$p_precision" ] || fail "PROFILE_POINTS entry '$pt' is not backbone:batch:precision"
        prof_args=(gpu-check --device "$device" --reference cpu --fixtures tests/fixtures/backbones
            --out "$scratch" --no-conformance --profile-timed-steps --backbones "$p_backbone"
            --batches "$p_batch" --precisions "$p_precision" --size "$SIZE" --steps 1 --warmup 2)
        [ "${TF32:-0}" = 1 ] && prof_args+=(--tf32)
        run "$BUDGET" "the profile of $pt" "$NCU" --profile-from-start off \
            --metrics gpu__time_duration.sum --csv --clock-control none \
            --log-file "$OUT/ncu_${p_backbone}_${p_batch}_${p_precision}.csv" "$BIN" "${prof_args[@]}"
    done
    torch_args=(torch --device "$torch_device" --out "$OUT" --points "$PROFILE_POINTS" --size "$SIZE")
    [ "${TF32:-0}" = 1 ] && torch_args+=(--tf32)
    run "$BUDGET" "the PyTorch profile" "$PYTHON" scripts/gpu_profile.py "${torch_args[@]}"
    run 60 "the table" "$PYTHON" scripts/gpu_profile.py table --out "$OUT"
else
    run 60 "the table" "$PYTHON" scripts/gpu_check_torch.py table --out "$OUT"
fi

elapsed=$((SECONDS - start))
if [ "${#failures[@]}" -gt 0 ]; then
    msg="$(printf '%s; ' "${failures[@]}")"
    echo "gpu-check: FAILED stage $stage after ${elapsed} s: ${msg%; } (see $log)" >&2
    exit 1
fi
table=table.md
[ "$stage" = profile ] && table=profile.md
echo "gpu-check: stage $stage done in ${elapsed} s; table in $OUT/$table"
