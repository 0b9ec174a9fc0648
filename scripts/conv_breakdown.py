#!/usr/bin/env python3
"""Where a train step and an eval forward spend their time, convolution shape by shape, beside PyTorch.

Runs `mtanet bench-one --backbone B --batch N` with MTANET_KERNEL_PROFILE=1 (each fused
convolution pass timed inside the step) and, in this process, PyTorch's train step and eval
forward of the same network (scripts/bench_torch.py's builders), then each of PyTorch's
convolutions alone: the forward under no_grad, and aten.convolution_backward for the input
gradient (not for the stem, whose input is the image) and the weight gradient, best of --reps.
Steps and eval forwards are means of --steps after one warm-up on both sides. Both sides are
grouped by the profile's labels (`conv 1x1 s1 g1 @7`: kernel, stride, groups, output size).

Prints, per label: the number of layers, our forward and backward (input + weight gradient) ms
per step, PyTorch's, and `f+b x` (our time over PyTorch's; below 1 is faster); the same for the
eval forward. Then the step and the eval forward split into convolutions and the rest (for
PyTorch: the step minus its convolutions timed alone), and `with the faster convolutions of
each row`: our rest plus, per label, the faster of the two convolution times, as a ratio of
PyTorch's time: what matching PyTorch's convolutions where ours are slower would give, with
nothing else changed.

Our convolutions are timed inside the step, their operands coming from memory; PyTorch's alone,
their operands warm in cache from the previous run. A PyTorch convolution inside its own step
takes longer than alone, so the comparison leans towards PyTorch's convolutions and its `rest`
is an upper bound. torch.profiler was tried for in-step times and is not used: on this machine
it inflated the 28x28 convolutions tenfold.

With --rounds R both sides run R times, alternating, and each keeps its best (minimum) time
per label and per step. Example (from the repository root, after `cargo build --release`):

    python3 scripts/conv_breakdown.py --backbone resnext50_32x4d --batch 32
"""
import argparse
import collections
import os
import re
import subprocess
import sys
import time

try:
    import torch
except ImportError:
    sys.exit("conv_breakdown.py needs PyTorch: pip install torch torchvision timm")

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_torch as bt  # noqa: E402

STEP = re.compile(r"^mean of \d+ timed train steps: ([\d.]+) ms")
EVAL = re.compile(r"^mean of \d+ eval forwards: ([\d.]+) ms")
ROW = re.compile(r"^(conv \d+x\d+ s\d+ g\d+ @\d+) (fwd|dx|dw|eval\+add|eval)\s+[\d.]+\s+([\d.]+)\s")


def ours(binary, backbone, batch, steps):
    """(step ms, eval ms, {label: [fwd, bwd, eval, layers]}) from one `bench-one` run."""
    env = dict(os.environ, MTANET_BENCH_PHASES="1", MTANET_KERNEL_PROFILE="1")
    cmd = [binary, "bench-one", "--backbone", backbone, "--batch", str(batch),
           "--steps", str(steps), "--warmup", "1"]
    run = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if run.returncode != 0:
        sys.exit(f"conv_breakdown.py: `{' '.join(cmd)}` failed:\n{run.stderr.strip()}")
    step = evaluation = None
    rows = collections.defaultdict(lambda: [0.0, 0.0, 0.0])
    for line in run.stdout.splitlines() + run.stderr.splitlines():
        if m := STEP.match(line):
            step = float(m.group(1))
        elif m := EVAL.match(line):
            evaluation = float(m.group(1))
        elif m := ROW.match(line):
            label, kind, ms = m.group(1), m.group(2), float(m.group(3))
            slot = 0 if kind == "fwd" else 1 if kind in ("dx", "dw") else 2
            rows[label][slot] += ms
    if step is None or evaluation is None or not rows:
        sys.exit(f"conv_breakdown.py: no step, eval or kernel rows in the output of "
                 f"`{' '.join(cmd)}` (is {binary} built from this checkout?)")
    return step, evaluation, dict(rows)


def conv_label(conv, out_shape):
    kh, kw = conv.kernel_size
    return f"conv {kh}x{kw} s{conv.stride[0]} g{conv.groups} @{out_shape[2]}"


def theirs(backbone, batch, steps, reps):
    """(step ms, eval ms, {label: [fwd, bwd, eval, layers]}) of PyTorch on the same network:
    the mean of `steps` train steps and eval forwards after one of each, and each convolution
    alone (best of `reps`; in PyTorch's eval forward a convolution is the same forward)."""
    train_step, eval_step, net, x = bt.model_steps(backbone, batch)

    def mean_ms(fn):
        fn()
        start = time.perf_counter()
        for _ in range(steps):
            fn()
        return (time.perf_counter() - start) * 1e3 / steps

    step = mean_ms(train_step)
    evaluation = mean_ms(eval_step)
    convs = []
    hooks = [m.register_forward_hook(lambda m, i, o: convs.append((m, i[0].shape, o.shape)))
             for m in net.modules() if isinstance(m, torch.nn.Conv2d)]
    with torch.no_grad():
        net(x)
    for h in hooks:
        h.remove()
    rows = collections.defaultdict(lambda: [0.0, 0.0, 0.0, 0])
    for conv, in_shape, out_shape in convs:
        xi = torch.randn(in_shape)
        w = conv.weight.detach()
        grad = torch.randn(out_shape)
        s, p, d, g = conv.stride, conv.padding, conv.dilation, conv.groups
        # The stem's input is the image: no input gradient, as in a training step.
        mask = [in_shape[1] != 3, True, False]

        def fwd():
            with torch.no_grad():
                torch.nn.functional.conv2d(xi, w, None, s, p, d, g)

        def bwd():
            torch.ops.aten.convolution_backward(
                grad, xi, w, None, list(s), list(p), list(d), False, [0, 0], g, mask)

        row = rows[conv_label(conv, out_shape)]
        f = bt.best_ms(reps, fwd)
        row[0] += f
        row[1] += bt.best_ms(reps, bwd)
        row[2] += f
        row[3] += 1
    return step, evaluation, dict(rows)


def keep_best(best, new):
    """Per step and per label, the smaller of two rounds' times."""
    if best is None:
        return new
    step, evaluation, rows = new
    merged = {k: [min(a, b) for a, b in zip(best[2].get(k, v), v)] for k, v in rows.items()}
    return min(best[0], step), min(best[1], evaluation), merged


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backbone", required=True)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--mtanet", default="target/release/mtanet", help="the mtanet binary")
    ap.add_argument("--steps", type=int, default=3, help="timed steps per side and round")
    ap.add_argument("--reps", type=int, default=5, help="runs of each PyTorch convolution alone")
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    if not os.access(args.mtanet, os.X_OK):
        sys.exit(f"conv_breakdown.py: {args.mtanet} is not an executable; "
                 "run `cargo build --release` first or pass --mtanet")
    torch.set_num_threads(args.threads)
    os.environ["RAYON_NUM_THREADS"] = str(args.threads)
    a = b = None
    for r in range(args.rounds):
        start = time.time()
        a = keep_best(a, ours(args.mtanet, args.backbone, args.batch, args.steps))
        b = keep_best(b, theirs(args.backbone, args.batch, args.steps, args.reps))
        print(f"round {r + 1}/{args.rounds}: {time.time() - start:.0f} s", file=sys.stderr)
    (step, evaluation, mine), (t_step, t_eval, tr) = a, b

    print(f"{args.backbone}, batch {args.batch}, {args.threads} threads; ms per train step or "
          f"eval forward, mean of {args.steps}, best of {args.rounds} round(s); ours profiled in "
          f"the step, PyTorch's convolutions each alone (best of {args.reps})\n")
    print("| convolutions | layers | fwd ours / torch | bwd ours / torch | f+b x | eval ours / torch | eval x |")
    print("|---|---|---|---|---|---|---|")
    zero = [0.0, 0.0, 0.0, 0]
    labels = sorted(set(mine) | set(tr), key=lambda k: -sum(mine.get(k, zero)[:2]))
    conv = t_conv = best = ev = t_ev = ev_best = 0.0
    for k in labels:
        f, bw, e = mine.get(k, zero)[:3]
        tf, tb, te, n = tr.get(k, zero)

        def x(ours_ms, torch_ms):
            return f"{ours_ms / torch_ms:.2f}" if ours_ms > 0 and torch_ms > 0 else "-"

        print(f"| {k} | {n} | {f:.1f} / {tf:.1f} | {bw:.1f} / {tb:.1f} | {x(f + bw, tf + tb)} "
              f"| {e:.1f} / {te:.1f} | {x(e, te)} |")
        conv += f + bw
        t_conv += tf + tb
        best += min(f + bw, tf + tb) if tf + tb > 0 else f + bw
        ev += e
        t_ev += te
        ev_best += min(e, te) if te > 0 else e
    rest, t_rest = step - conv, t_step - t_conv
    e_rest, te_rest = evaluation - ev, t_eval - t_ev
    print()
    print(f"train step: ours {step:.0f} ms (convolutions {conv:.0f}, the rest {rest:.0f}); "
          f"PyTorch {t_step:.0f} ms (convolutions {t_conv:.0f}, the rest {t_rest:.0f}); "
          f"ratio {t_step / step:.2f}")
    print(f"  with the faster convolutions of each row: {best + rest:.0f} ms, "
          f"ratio {t_step / (best + rest):.2f}")
    print(f"eval forward: ours {evaluation:.0f} ms (convolutions {ev:.0f}, the rest {e_rest:.0f}); "
          f"PyTorch {t_eval:.0f} ms (convolutions {t_ev:.0f}, the rest {te_rest:.0f}); "
          f"ratio {t_eval / evaluation:.2f}")
    print(f"  with the faster convolutions of each row: {ev_best + e_rest:.0f} ms, "
          f"ratio {t_eval / (ev_best + e_rest):.2f}")


if __name__ == "__main__":
    main()
