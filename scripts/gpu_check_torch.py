#!/usr/bin/env python3
"""PyTorch half of scripts/gpu-check.sh: the same full-size MTANet train step and eval forward
as `mtanet gpu-check` (network, losses and optimizer of scripts/bench_torch.py), timed on a GPU
in eager mode and, where it works, under torch.compile; plus the GPU's measured matmul peak; and
the table that joins them with the Rust numbers.

    gpu_check_torch.py bench --device cuda --out DIR [--batches 64,256 --size 112 ...]
        -> DIR/bench_torch.csv, DIR/gpu.json
    gpu_check_torch.py table --out DIR
        -> DIR/table.csv, DIR/table.md from bench_rust.csv, bench_torch.csv, conformance.csv

Timing: median per-step seconds over --steps after --warmup, with torch.cuda.synchronize()
after every step (both sides do the same). Peak memory: torch.cuda.max_memory_allocated() from
building the model to the last eval step (mtanet-rs reports the same span from its CUDA pool). f32 with TF32 off for convolutions and matmuls
(exact f32, as mtanet-rs runs); --tf32 turns it on for both frameworks. bf16 runs the forward
and the losses under torch.autocast(dtype=torch.bfloat16) with f32 parameters, the counterpart
of mtanet's `precision: bf16`. Achieved TFLOP/s of a train step are counted as 3x the forward
FLOPs (torch.utils.flop_counter; backward ~ 2x forward) and reported as a fraction of the
measured matmul peak of the same precision.
`--device cpu --size 32 --batches 2 --steps 1` is the plumbing test on a machine without a GPU.
"""
import argparse
import csv
import json
import os
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
BACKBONES = ["resnet50", "resnext50_32x4d", "resnext50_32x4d_cbam", "seresnet50", "senet50_vggface2"]


def sync(device):
    import torch
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def median_s(device, steps, warmup, fn):
    for _ in range(warmup):
        fn()
        sync(device)
    times = []
    for _ in range(max(steps, 1)):
        t = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def workload(name, batch, size, device, compiled, precision="f32"):
    """The train step and eval step of the full-size MTANet on `name` (the network, losses and
    optimizer of scripts/bench_torch.py), as two functions; peak memory counts from here."""
    import torch
    import torch.nn.functional as F
    sys.path.insert(0, HERE)
    import bench_torch
    torch.manual_seed(7)
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    net = bench_torch.build_mtanet(name).to(device)
    opt = torch.optim.SGD(net.parameters(), lr=1e-3, momentum=0.9, weight_decay=5e-3)
    n_au, n_expr = bench_torch.N_AU, bench_torch.N_EXPR
    x = torch.randn(batch, 3, size, size, device=device)
    va = torch.rand(batch, 2, device=device) * 2 - 1
    au = (torch.rand(batch, n_au, device=device) >= 0.5).float()
    expr = torch.arange(batch, device=device) % n_expr
    model = torch.compile(net) if compiled else net
    dtype = {"f32": None, "bf16": torch.bfloat16}[precision]
    device_type = "cuda" if device.startswith("cuda") else "cpu"

    def autocast():
        return torch.autocast(device_type, dtype=dtype, enabled=dtype is not None)

    def train_step():
        net.train()
        opt.zero_grad(set_to_none=True)
        with autocast():
            v, a, e = model(x)
            loss = (bench_torch.ccc_loss(v.float(), va)
                    + F.binary_cross_entropy_with_logits(a.float(), au)
                    + F.cross_entropy(e.float(), expr))
        loss.backward()
        opt.step()

    def eval_step():
        net.eval()
        with torch.no_grad(), autocast():
            model(x)[2].sum().item()

    return train_step, eval_step


def bench_point(name, batch, size, steps, warmup, device, compiled, precision="f32"):
    import torch
    train_step, eval_step = workload(name, batch, size, device, compiled, precision)
    train_s = median_s(device, steps, warmup, train_step)
    eval_s = median_s(device, steps, warmup, eval_step)
    peak = torch.cuda.max_memory_allocated() / 2 ** 20 if device.startswith("cuda") else None
    return batch / train_s, batch / eval_s, peak


def forward_gflop_per_img(name, size):
    """Forward GFLOP of one size x size image through the MTANet on `name`."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode
    sys.path.insert(0, HERE)
    import bench_torch
    net = bench_torch.build_mtanet(name).eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        net(torch.zeros(1, 3, size, size))
    return counter.get_total_flops() / 1e9


def matmul_peak(device):
    """Best TFLOP/s of an 8192^3 matmul in f32 (TF32 as configured) and bf16."""
    import torch
    if not device.startswith("cuda"):
        return {}
    n = 8192
    out = {}
    for label, dtype in [("f32", torch.float32), ("bf16", torch.bfloat16)]:
        a = torch.randn(n, n, device=device, dtype=dtype)
        b = torch.randn(n, n, device=device, dtype=dtype)
        s = median_s(device, 10, 3, lambda: torch.mm(a, b))
        out[f"matmul_tflops_{label}"] = 2 * n ** 3 / s / 1e12
    return out


def cmd_bench(args):
    import torch
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("gpu_check_torch: torch.cuda.is_available() is False", file=sys.stderr)
        return 2
    torch.backends.cudnn.allow_tf32 = args.tf32
    torch.backends.cuda.matmul.allow_tf32 = args.tf32
    torch.backends.cudnn.benchmark = True
    os.makedirs(args.out, exist_ok=True)
    info = {
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version(),
        "device": torch.cuda.get_device_name(0) if args.device.startswith("cuda") else "cpu",
        "tf32": args.tf32,
    }
    info.update(matmul_peak(args.device))
    with open(os.path.join(args.out, "gpu.json"), "w") as f:
        json.dump(info, f, indent=1)
    print("gpu_check_torch:", json.dumps(info), flush=True)
    modes = ["eager"] + (["compile"] if args.compile else [])
    # torch.compile costs ~0.5-1 min per (backbone, batch, precision) point: by default only
    # the points named in --compile-points get it, so the whole check fits one device call.
    compile_points = None if args.compile_points == "all" else {
        tuple(p.split(":")) for p in args.compile_points.split(",") if p}
    path = os.path.join(args.out, "bench_torch.csv")
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["framework", "mode", "device", "backbone", "batch", "precision", "size",
                    "fwd_gflop_per_img", "train_img_s", "eval_img_s", "peak_mem_mib", "error"])
        compile_broken = None
        for name in args.backbones.split(","):
            gflop = f"{forward_gflop_per_img(name, args.size):.4f}"
            for batch, precision, mode in [(int(b), p, m) for b in args.batches.split(",")
                                           for p in args.precisions.split(",") for m in modes]:
                head = ["pytorch", mode, args.device, name, batch, precision, args.size, gflop]
                if mode == "compile" and compile_points is not None \
                        and (name, str(batch)) not in compile_points:
                    continue
                if mode == "compile" and compile_broken:
                    w.writerow(head + ["", "", "", f"skipped: {compile_broken}"])
                    continue
                t = time.time()
                try:
                    tr, ev, peak = bench_point(name, batch, args.size, args.steps, args.warmup,
                                               args.device, mode == "compile", precision)
                    row = [f"{tr:.2f}", f"{ev:.2f}", "" if peak is None else f"{peak:.0f}", ""]
                except Exception as e:  # noqa: BLE001 -- recorded in the table, run goes on
                    msg = f"{type(e).__name__}: {e}".splitlines()[0][:200]
                    row = ["", "", "", msg]
                    if mode == "compile":
                        compile_broken = msg
                finally:
                    if args.device.startswith("cuda"):
                        torch.cuda.empty_cache()
                w.writerow(head + row)
                f.flush()
                peak = f", peak {row[2]} MiB" if row[2] else ""
                print(f"gpu_check_torch: {mode} {name} batch {batch} {precision}: train {row[0] or '-'} "
                      f"img/s, eval {row[1] or '-'} img/s{peak} {row[3]} ({time.time() - t:.0f} s)",
                      flush=True)
    return 0


def read_csv(path):
    if not os.path.exists(path):
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def ratio(a, b):
    try:
        return f"{float(a) / float(b):.2f}"
    except (TypeError, ValueError, ZeroDivisionError):
        return ""


def cmd_table(args):
    rust = read_csv(os.path.join(args.out, "bench_rust.csv"))
    torch_rows = read_csv(os.path.join(args.out, "bench_torch.csv"))
    conf = read_csv(os.path.join(args.out, "conformance.csv"))
    info = {}
    if os.path.exists(os.path.join(args.out, "gpu.json")):
        with open(os.path.join(args.out, "gpu.json")) as f:
            info = json.load(f)
    key = lambda r: (r["backbone"], r["batch"], r.get("precision", "f32"))  # noqa: E731
    eager = {key(r): r for r in torch_rows if r["mode"] == "eager"}
    comp = {key(r): r for r in torch_rows if r["mode"] == "compile"}
    header = ["backbone", "batch", "precision", "size", "rs_train_img_s", "torch_train_img_s",
              "compile_train_img_s", "train_ratio_vs_eager", "train_ratio_vs_compile",
              "rs_train_tflops", "rs_fraction_of_matmul_peak", "torch_fraction_of_matmul_peak",
              "rs_eval_img_s", "torch_eval_img_s", "compile_eval_img_s", "eval_ratio_vs_eager",
              "rs_peak_mem_mib", "torch_peak_mem_mib", "errors"]

    def tflops(img_s, gflop):
        try:
            return 3 * float(gflop) * float(img_s) / 1e3
        except (TypeError, ValueError):
            return None

    def fraction(value, precision):
        peak = info.get(f"matmul_tflops_{precision}")
        return f"{value / peak:.3f}" if value is not None and peak else ""

    table = []
    for r in rust:
        e, c = eager.get(key(r), {}), comp.get(key(r), {})
        precision = r.get("precision", "f32")
        errs = "; ".join(x for x in [r.get("error", ""), e.get("error", ""), c.get("error", "")] if x)
        rs_tf = tflops(r["train_img_s"], e.get("fwd_gflop_per_img"))
        torch_tf = tflops(e.get("train_img_s"), e.get("fwd_gflop_per_img"))
        table.append([r["backbone"], r["batch"], precision, r["size"], r["train_img_s"],
                      e.get("train_img_s", ""), c.get("train_img_s", ""),
                      ratio(r["train_img_s"], e.get("train_img_s")),
                      ratio(r["train_img_s"], c.get("train_img_s")),
                      "" if rs_tf is None else f"{rs_tf:.2f}", fraction(rs_tf, precision),
                      fraction(torch_tf, precision), r["eval_img_s"],
                      e.get("eval_img_s", ""), c.get("eval_img_s", ""),
                      ratio(r["eval_img_s"], e.get("eval_img_s")), r.get("peak_mem_mib", ""),
                      e.get("peak_mem_mib", ""), errs])
    with open(os.path.join(args.out, "table.csv"), "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(table)
    counts = {k: sum(1 for r in conf if r.get("status") == k)
              for k in ["pass", "fail", "error", "skip"]}
    worst = {}
    for r in conf:
        item = r["item"].split(" (")[0]
        if r.get("status") == "error":
            worst[item] = "error"
            continue
        if not r.get("rel_err_vs_reference"):
            continue
        v = float(r["rel_err_vs_reference"])
        if worst.get(item) != "error":
            worst[item] = max(worst.get(item, 0.0), v)
    errors = [r for r in conf if r.get("status") == "error"]
    lines = [f"# gpu-check: {info.get('device', '?')}", ""]
    lines.append(f"torch {info.get('torch', '?')}, CUDA {info.get('cuda', '?')}, cuDNN "
                 f"{info.get('cudnn', '?')}, TF32 {info.get('tf32', '?')}; matmul peak "
                 f"f32 {info.get('matmul_tflops_f32', float('nan')):.1f} TFLOP/s, bf16 "
                 f"{info.get('matmul_tflops_bf16', float('nan')):.1f} TFLOP/s")
    lines += ["", f"## Conformance: {counts['pass']} of {len(conf)} rows pass, "
                  f"{counts['fail']} fail, {counts['error']} error, {counts['skip']} skipped", "",
              "| item | worst rel. err vs reference |", "| --- | --- |"]
    lines += [f"| {k} | {v if isinstance(v, str) else f'{v:.2e}'} |" for k, v in worst.items()]
    if errors:
        lines += ["", "### Errors", "", "| item | shape | message |", "| --- | --- | --- |"]
        lines += [f"| {r['item']} | {r.get('shape', '')} | {r.get('message', '')} |"
                  for r in errors]
    lines += ["", "## Throughput (img/s, median step)", "",
              "| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    lines += ["| " + " | ".join(str(x) for x in row) + " |" for row in table]
    with open(os.path.join(args.out, "table.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("bench", help="time PyTorch eager (and torch.compile)")
    b.add_argument("--device", default="cuda")
    b.add_argument("--out", required=True)
    b.add_argument("--backbones", default=",".join(BACKBONES))
    b.add_argument("--batches", default="64,256")
    b.add_argument("--precisions", default="f32,bf16")
    b.add_argument("--size", type=int, default=112)
    b.add_argument("--steps", type=int, default=10)
    b.add_argument("--warmup", type=int, default=3)
    b.add_argument("--compile", action="store_true", help="also time torch.compile")
    b.add_argument("--compile-points", default="resnet50:256",
                   help="backbone:batch pairs timed under torch.compile (both precisions), "
                        "comma-separated, or `all`")
    b.add_argument("--tf32", action="store_true")
    t = sub.add_parser("table", help="join the CSVs into table.csv and table.md")
    t.add_argument("--out", required=True)
    args = ap.parse_args()
    return cmd_bench(args) if args.cmd == "bench" else cmd_table(args)


if __name__ == "__main__":
    sys.exit(main())
