#!/usr/bin/env python3
"""PyTorch timings that crates/kernels/examples/bench_layers.rs compares against.

--layers: the three conv layers of shared/reference/perf-baseline.md (batch 16, 3x3, pad 1),
forward and forward + backward (loss sum(y * r), gradients of input and weight), best
(minimum) of --reps runs after a warm-up, as bench_layers reports its own times. Prints one line per layer:
    layer <name> fwd_ms <float> fwd_bwd_ms <float>
"""
import argparse
import time

import torch
import torch.nn.functional as F

BATCH = 16
LAYERS = [
    ("grouped32_256ch_28", 256, 28, 32),
    ("dense_128ch_28", 128, 28, 1),
    ("dense_64ch_56", 64, 56, 1),
]


def best_ms(reps, fn):
    fn()
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return min(times)


def bench_layers(reps):
    for name, c, s, groups in LAYERS:
        x = torch.randn(BATCH, c, s, s)
        w = torch.randn(c, c // groups, 3, 3) * 0.05
        r = torch.randn(BATCH, c, s, s)

        def fwd():
            with torch.no_grad():
                F.conv2d(x, w, padding=1, groups=groups)

        xg = x.clone().requires_grad_(True)
        wg = w.clone().requires_grad_(True)

        def fwd_bwd():
            xg.grad = None
            wg.grad = None
            (F.conv2d(xg, wg, padding=1, groups=groups) * r).sum().backward()

        print(f"layer {name} fwd_ms {best_ms(reps, fwd):.3f} fwd_bwd_ms {best_ms(reps, fwd_bwd):.3f}",
              flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", action="store_true", help="time the three conv layers")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=5)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.layers:
        bench_layers(args.reps)
    else:
        ap.error("nothing to do: pass --layers")


if __name__ == "__main__":
    main()
