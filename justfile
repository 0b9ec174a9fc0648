# Thin wrappers over the `mtanet` binary (`cargo run --release -- <subcommand>`).
# Install just with `pip install rust-just` (or `cargo install just --locked`).

# With AFFWILD2_ROOT set (the paper profile), the binary is built with the `hub` feature so the
# rows' ImageNet weights download into the Hugging Face cache; MTANET_FEATURES overrides.
features := env_var_or_default("MTANET_FEATURES", if env_var_or_default("AFFWILD2_ROOT", "") == "" { "" } else { "hub" })
mtanet := "cargo run --release --quiet " + (if features == "" { "" } else { "--features " + features + " " }) + "--"

# List recipes.
default:
    @just --list

# Table I on the demo profile, or the paper profile when AFFWILD2_ROOT is set.
table1 *args:
    {{mtanet}} table1 {{args}}

# Every row of an experiment file and its table: `just run heads` (= experiments/heads.yaml).
run experiment *args:
    {{mtanet}} run {{experiment}} {{args}}

# One Table I row with overrides: `just ablate backbone=senet50 seed=3`.
ablate *overrides:
    {{mtanet}} ablate {{overrides}}

# Train one configuration: `just train --config experiments/table1.yaml --profile demo --row resnet50`.
train *args:
    {{mtanet}} train {{args}}

# Result CSVs side by side: `just compare results/a.csv results/b.csv`.
compare a b *more:
    {{mtanet}} compare {{a}} {{b}} {{more}}

# Synthetic Aff-Wild2 into data/synthetic (or `just synth --out DIR --full`).
synth *args:
    {{mtanet}} data synth {{args}}

# Dataset statistics: `just stats data/synthetic`.
stats root *args:
    {{mtanet}} data stats --root {{root}} {{args}}

# TensorBoard on results/ (prints the install command when it is missing).
tb:
    @if command -v tensorboard >/dev/null 2>&1; then tensorboard --logdir results; else echo "TensorBoard is not installed: pip install tensorboard, then: tensorboard --logdir results"; fi

# Whole-model train/eval img/s beside PyTorch (results/bench/train.csv), then the per-layer table
# (run with the allocator settings the mtanet binary gives itself, see cli/runtime.rs).
bench *args:
    {{mtanet}} bench {{args}}
    RAYON_NUM_THREADS=2 CANDLE_NUM_THREADS=1 GLIBC_TUNABLES=glibc.malloc.mmap_threshold=33554432:glibc.malloc.trim_threshold=1073741824 cargo run --release --quiet -p mtanet-kernels --example bench_layers

# A train step and eval forward by convolution shape beside PyTorch's: `just conv-breakdown resnext50_32x4d 32`.
conv-breakdown backbone batch="32" *args:
    cargo build --release --quiet
    python3 scripts/conv_breakdown.py --backbone {{backbone}} --batch {{batch}} {{args}}

# Loader throughput (img/s, 1 and 2 threads) against PIL + torchvision.
bench-data:
    cargo run --release -p mtanet-affwild2 --example bench_data

# The tests CI runs.
test:
    cargo test --workspace

# Everything CI checks.
ci:
    .ci/run
