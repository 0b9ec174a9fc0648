#!/usr/bin/env bash
# One-shot GPU check for a machine with an NVIDIA GPU (CUDA 13 driver), PyTorch + timm in its
# python3, and neither Rust nor network. Runs the stripped binary built here by
# scripts/build-cuda.sh (dist/mtanet-cuda) and, in one go:
#   1. CPU-vs-CUDA conformance of every op and every backbone, forward and gradients, batch >= 2,
#      also against the PyTorch fixtures (tests/fixtures/backbones); plus every backbone in
#      bf16 on CUDA against f32 (bf16 tolerances);
#   2. train-step and eval img/s of every full-size backbone at 112x112, batch 64 and 256, f32
#      and bf16, beside PyTorch eager and torch.compile (autocast for bf16) in the same call,
#      with ratios and the fraction of the measured matmul peak;
#   3. writes conformance.csv, bench_rust.csv, bench_torch.csv, gpu.json, table.csv, table.md
#      and the log to $OUT (default results/gpu-check).
# Exits 2 with one line "gpu-check: ..." when there is no usable GPU; 1 when a conformance
# comparison failed; 0 otherwise.
#
#   OUT=/some/dir scripts/gpu-check.sh
#
# Environment: BIN (default dist/mtanet-cuda), PYTHON (python3), BATCHES (64,256),
# PRECISIONS (f32,bf16), SIZE (112),
# STEPS (10), WARMUP (3), BACKBONES (all five), NO_COMPILE=1 (skip torch.compile),
# COMPILE_POINTS (backbone:batch pairs timed under torch.compile, default resnet50:256; `all`
# compiles every point, ~0.5-1 min each), TF32=1 (both frameworks), SKIP_BENCH=1,
# SKIP_CONFORMANCE=1.
# GPU_CHECK_CPU=1 runs the whole pipeline on the CPU with tiny sizes (the test on a machine
# without a GPU; it skips the GPU detection and does not need nvidia-smi).
set -uo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo" || exit 2
OUT="${OUT:-$repo/results/gpu-check}"
BIN="${BIN:-$repo/dist/mtanet-cuda}"
PYTHON="${PYTHON:-python3}"
cpu_mode="${GPU_CHECK_CPU:-0}"

fail() {
    echo "gpu-check: $*" >&2
    exit 2
}

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
    device=cpu
    : "${BATCHES:=2}" "${SIZE:=32}" "${STEPS:=1}" "${WARMUP:=0}" "${BACKBONES:=resnet50}"
    torch_device=cpu
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
    libs="$(ls -d "$site"/nvidia/*/lib 2>/dev/null | tr '\n' ':')"
    export LD_LIBRARY_PATH="${libs}${LD_LIBRARY_PATH:-}"
    # PyTorch's CUDA 13 wheels have no libcurand: fall back to the shim build-cuda.sh made
    # (generator set-up works, GPU-side random generation errors; mtanet draws on the CPU).
    deps="$(ldd "$BIN" 2>/dev/null)"
    if [[ "$deps" == *"libcurand.so.10 => not found"* ]]; then
        [ -f "$SHIM_DIR/libcurand.so.10" ] \
            || fail "libcurand.so.10 not found and no $SHIM_DIR: rerun scripts/build-cuda.sh"
        export LD_LIBRARY_PATH="$LD_LIBRARY_PATH:$SHIM_DIR"
        echo "gpu-check: no libcurand.so.10 in $PYTHON's wheels: using the cuRAND shim" >&2
    fi
    missing="$(ldd "$BIN" 2>/dev/null | grep 'not found' | awk '{print $1}' | tr '\n' ' ')"
    [ -z "$missing" ] || fail "the binary's libraries are missing: ${missing}(PyTorch's wheels must be CUDA 13: libcublas.so.13, libnvrtc.so.13, libcudnn.so.9)"
    # 3. The binary can initialise CUDA and run our kernels.
    probe="$(RUST_BACKTRACE=0 "$BIN" gpu-check --probe --device "$device" 2>&1)" \
        || fail "the binary cannot use CUDA: $(echo "$probe" | grep -v -E '^\s+[0-9]+: |^\s+at |^\s*$' | tr -s ' \n' ' ')"
    echo "$probe"
fi
: "${BATCHES:=64,256}" "${PRECISIONS:=f32,bf16}" "${SIZE:=112}" "${STEPS:=10}" "${WARMUP:=3}"
: "${BACKBONES:=resnet50,resnext50_32x4d,resnext50_32x4d_cbam,seresnet50,senet50_vggface2}"

log="$OUT/gpu-check.log"
{
    echo "gpu-check: $(date -u +%FT%TZ) on $(hostname); device $device; binary $BIN"
    [ "$cpu_mode" = 1 ] || nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
} | tee "$log"

rust_args=(gpu-check --device "$device" --reference cpu --fixtures tests/fixtures/backbones
    --out "$OUT" --backbones "$BACKBONES" --batches "$BATCHES" --precisions "$PRECISIONS"
    --size "$SIZE" --steps "$STEPS" --warmup "$WARMUP")
[ "${SKIP_BENCH:-0}" = 1 ] && rust_args+=(--no-bench)
[ "${SKIP_CONFORMANCE:-0}" = 1 ] && rust_args+=(--no-conformance)
[ "${TF32:-0}" = 1 ] && rust_args+=(--tf32)
"$BIN" "${rust_args[@]}" 2>&1 | tee -a "$log"
rust_rc=${PIPESTATUS[0]}

if [ "${SKIP_BENCH:-0}" != 1 ]; then
    torch_args=(bench --device "$torch_device" --out "$OUT" --backbones "$BACKBONES"
        --batches "$BATCHES" --precisions "$PRECISIONS" --size "$SIZE" --steps "$STEPS"
        --warmup "$WARMUP")
    [ "${NO_COMPILE:-0}" = 1 ] || [ "$cpu_mode" = 1 ] \
        || torch_args+=(--compile --compile-points "${COMPILE_POINTS:-resnet50:256}")
    [ "${TF32:-0}" = 1 ] && torch_args+=(--tf32)
    "$PYTHON" scripts/gpu_check_torch.py "${torch_args[@]}" 2>&1 | tee -a "$log"
fi
"$PYTHON" scripts/gpu_check_torch.py table --out "$OUT" 2>&1 | tee -a "$log"

if [ "$rust_rc" -ne 0 ]; then
    echo "gpu-check: mtanet gpu-check exited $rust_rc (conformance failure or error; see $log)" >&2
    exit 1
fi
echo "gpu-check: done; table in $OUT/table.md"
