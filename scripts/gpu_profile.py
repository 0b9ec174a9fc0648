#!/usr/bin/env python3
"""GPU time of one training step, kernel by kernel, ours beside PyTorch's: the profile stage of
scripts/gpu-check.sh (docs/cuda.md, "Measured on an H200", shows what such a table tells).

    gpu_profile.py torch --device cuda --out DIR --points resnet50:64:f32,resnet50:256:bf16
            [--size 112 --warmup 4]
        -> DIR/torch_kernels.csv (point, kernel, calls, gpu_us): torch.profiler's CUDA kernels
           of one train step of scripts/gpu_check_torch.py's step, after --warmup steps
    gpu_profile.py table --out DIR
        -> DIR/profile.csv and DIR/profile.md from DIR/ncu_<backbone>_<batch>_<precision>.csv
           (Nsight Compute: `--csv --metrics gpu__time_duration.sum`, one timed train step of
           `mtanet gpu-check --profile-timed-steps` under `--profile-from-start off`) and
           DIR/torch_kernels.csv

Each kernel goes to the first category whose pattern its name matches (CATEGORIES), the same
rules for both frameworks; the table gives each category's milliseconds and kernel launches per
step, the totals, and each side's ten slowest kernels. Nothing but the standard library is needed
for `table`; `torch` needs PyTorch and a GPU (or `--device cpu` for the plumbing).
"""
import argparse
import csv
import io
import os
import re
import sys

HERE = os.path.dirname(os.path.abspath(__file__))

# (category, pattern on the kernel name, case-insensitive); first match wins.
CATEGORIES = [
    ("optimizer", r"mtanet_opt|multi_tensor_apply|sgd|adam"),
    ("batchnorm", r"mtanet_bn|mtanet_scale_shift|bn_fw|bn_bw|batch_norm|batchnorm"),
    ("max-pool", r"max_pool"),
    ("convolution + matmul",
     r"conv|fft|wgrad|dgrad|fprop|xmma|gemm|winograd|flip_filter|im2col|nchwtonhwc|nhwctonchw"
     r"|scalepackedtensor|cutlass|engines_precompiled|nvjet"),
    ("casts", r"^cast_|bfloat16_copy|_to_copy|direct_copy"),
    ("elementwise + reductions",
     r"elementwise|^[bu][a-z]+_(f32|bf16|f16|u8|u32|i64)|^(where|affine|const_set|copy2d|eq|ne|lt"
     r"|le|gt|ge|gather|sa|fast|scatter|index)_|mtanet_|reduce|relu|threshold|clamp|sum"),
]
ORDER = [c for c, _ in CATEGORIES] + ["other"]


def category(name):
    """The category of a kernel name (see CATEGORIES); "other" when none matches."""
    for cat, pattern in CATEGORIES:
        if re.search(pattern, name, re.IGNORECASE):
            return cat
    return "other"


def point_label(name):
    """`resnet50:64:f32` -> `resnet50_64_f32` (the ncu file's stem after `ncu_`)."""
    return name.replace(":", "_")


def read_ncu(path):
    """[(kernel, microseconds)] of every launch in an Nsight Compute `--csv` log, in order.
    Lines that are ncu's own messages (`==PROF==`, `==WARNING==`) are skipped."""
    with open(path, newline="") as f:
        text = "".join(line for line in f if not line.startswith("=="))
    scale = {"ns": 1e-3, "nsecond": 1e-3, "us": 1.0, "usecond": 1.0, "ms": 1e3, "msecond": 1e3}
    launches = []
    for row in csv.DictReader(io.StringIO(text)):
        if row.get("Metric Name") != "gpu__time_duration.sum":
            continue
        unit = row["Metric Unit"].strip()
        if unit not in scale:
            sys.exit(f"gpu_profile: {path}: unknown time unit {unit!r} of {row['Kernel Name']!r}")
        value = float(row["Metric Value"].replace(",", ""))
        launches.append((row["Kernel Name"], value * scale[unit]))
    return launches


def read_torch(path):
    """{point: [(kernel, calls, microseconds)]} from torch_kernels.csv."""
    points = {}
    with open(path, newline="") as f:
        for i, row in enumerate(csv.DictReader(f), start=2):
            try:
                entry = (row["kernel"], int(row["calls"]), float(row["gpu_us"]))
            except (KeyError, ValueError) as e:
                sys.exit(f"gpu_profile: {path} line {i}: {e}")
            points.setdefault(row["point"], []).append(entry)
    return points


def sums(kernels, key):
    """{key(kernel): [microseconds, launches]} summed over [(kernel, calls, microseconds)]."""
    out = {}
    for name, calls, us in kernels:
        cell = out.setdefault(key(name), [0.0, 0])
        cell[0] += us
        cell[1] += calls
    return out


def by_category(kernels):
    """{category: [ms, launches]} for every category of ORDER."""
    total = sums(kernels, category)
    return {c: [total.get(c, [0.0, 0])[0] / 1e3, total.get(c, [0.0, 0])[1]] for c in ORDER}


def slowest(kernels, n=10):
    """The `n` kernels with the most time: [(ms, calls, name)], summed over launches."""
    total = sums(kernels, lambda name: name)
    return sorted(((us / 1e3, c, name) for name, (us, c) in total.items()), reverse=True)[:n]


def short(name, width=90):
    """A kernel name without its argument list, cut to `width` characters."""
    name = name.split("(")[0] if not name.startswith("void ") else name[5:].split("(")[0]
    return name if len(name) <= width else name[: width - 3] + "..."


def cmd_table(args):
    ncu_files = sorted(f for f in os.listdir(args.out) if re.fullmatch(r"ncu_.+\.csv", f))
    if not ncu_files:
        sys.exit(f"gpu_profile: no ncu_*.csv in {args.out}")
    torch_path = os.path.join(args.out, "torch_kernels.csv")
    torch_points = read_torch(torch_path) if os.path.exists(torch_path) else {}
    rows, md = [], ["# GPU time of one training step, by kernel category", ""]
    md.append("Ours: Nsight Compute `gpu__time_duration.sum` of one timed train step "
              "(`mtanet gpu-check --profile-timed-steps`); PyTorch: `torch.profiler` of one "
              "step after warm-up. Milliseconds per step (kernel launches).")
    for f in ncu_files:
        label = f[len("ncu_"):-len(".csv")]
        ours = [(name, 1, us) for name, us in read_ncu(os.path.join(args.out, f))]
        theirs = torch_points.get(label, [])
        a, b = by_category(ours), by_category(theirs)
        md += ["", f"## {label}", "", "| category | ours ms (kernels) | torch ms (kernels) | ours / torch |",
               "| --- | --- | --- | --- |"]
        for cat in ORDER + ["total"]:
            if cat == "total":
                ms_a, n_a = sum(v[0] for v in a.values()), sum(v[1] for v in a.values())
                ms_b, n_b = sum(v[0] for v in b.values()), sum(v[1] for v in b.values())
            else:
                (ms_a, n_a), (ms_b, n_b) = a[cat], b[cat]
            if cat != "total" and n_a == 0 and n_b == 0:
                continue
            ratio = f"{ms_a / ms_b:.2f}" if ms_b > 0 else ""
            torch_cell = f"{ms_b:.2f} ({n_b})" if theirs else "-"
            bold = "**" if cat == "total" else ""
            md.append(f"| {bold}{cat}{bold} | {bold}{ms_a:.2f}{bold} ({n_a}) | {torch_cell} | {ratio} |")
            rows.append({"point": label, "category": cat, "ours_ms": f"{ms_a:.3f}",
                         "ours_kernels": n_a,
                         "torch_ms": f"{ms_b:.3f}" if theirs else "",
                         "torch_kernels": n_b if theirs else ""})
        for side, kernels in (("ours", ours), ("torch", theirs)):
            if not kernels:
                continue
            md += ["", f"Slowest kernels, {side}:", "", "| ms | launches | kernel |", "| --- | --- | --- |"]
            md += [f"| {ms:.2f} | {c} | `{short(name)}` |" for ms, c, name in slowest(kernels)]
    labels = {f[len("ncu_"):-len(".csv")] for f in ncu_files}
    unmatched = sorted(set(torch_points) - labels)
    if unmatched:
        md += ["", "PyTorch profiles without an ncu_*.csv of ours, left out of the tables: "
               + ", ".join(unmatched) + "."]
    with open(os.path.join(args.out, "profile.csv"), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["point", "category", "ours_ms", "ours_kernels",
                                          "torch_ms", "torch_kernels"])
        w.writeheader()
        w.writerows(rows)
    with open(os.path.join(args.out, "profile.md"), "w") as f:
        f.write("\n".join(md) + "\n")
    print("\n".join(md))


def cmd_torch(args):
    import torch
    from torch.profiler import ProfilerActivity, profile
    sys.path.insert(0, HERE)
    import gpu_check_torch
    torch.backends.cudnn.benchmark = True
    torch.backends.cuda.matmul.allow_tf32 = args.tf32
    torch.backends.cudnn.allow_tf32 = args.tf32
    cuda = args.device.startswith("cuda")
    out_rows = []
    for point in args.points.split(","):
        try:
            name, batch, precision = point.split(":")
            batch = int(batch)
        except ValueError:
            sys.exit(f"gpu_profile: point {point!r} is not backbone:batch:precision")
        train_step, _ = gpu_check_torch.workload(name, batch, args.size, args.device, False, precision)
        for _ in range(args.warmup):
            train_step()
        gpu_check_torch.sync(args.device)
        activities = [ProfilerActivity.CUDA] if cuda else [ProfilerActivity.CPU]
        with profile(activities=activities) as prof:
            train_step()
            gpu_check_torch.sync(args.device)
        launches = []
        for e in prof.events():
            if cuda and "CUDA" not in str(getattr(e, "device_type", "")):
                continue
            us = getattr(e, "device_time", None) if cuda else getattr(e, "self_cpu_time_total", 0)
            if us is None:
                us = getattr(e, "cuda_time", 0)
            launches.append((e.name, 1, us or 0.0))
        print(f"gpu_profile: torch {point}: {len(launches)} kernels, "
              f"{sum(us for _, _, us in launches) / 1e3:.2f} ms", flush=True)
        out_rows += [{"point": point_label(point), "kernel": k, "calls": c, "gpu_us": f"{us:.3f}"}
                     for k, (us, c) in sums(launches, lambda name: name).items()]
    with open(os.path.join(args.out, "torch_kernels.csv"), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["point", "kernel", "calls", "gpu_us"])
        w.writeheader()
        w.writerows(out_rows)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("torch", help="profile PyTorch's train step")
    t.add_argument("--device", default="cuda")
    t.add_argument("--out", required=True)
    t.add_argument("--points", required=True, help="backbone:batch:precision, comma-separated")
    t.add_argument("--size", type=int, default=112)
    t.add_argument("--warmup", type=int, default=4)
    t.add_argument("--tf32", action="store_true")
    tb = sub.add_parser("table", help="join ncu_*.csv and torch_kernels.csv")
    tb.add_argument("--out", required=True)
    args = p.parse_args()
    os.makedirs(args.out, exist_ok=True)
    {"torch": cmd_torch, "table": cmd_table}[args.cmd](args)


if __name__ == "__main__":
    main()
