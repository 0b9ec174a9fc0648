#!/usr/bin/env python3
"""PyTorch timings that `mtanet bench` and crates/kernels/examples/bench_layers.rs compare against.

--model NAME --batch B: the same network as `mtanet bench-one` (full-size backbone built by
scripts/reference/make_fixtures.py's builders: torchvision resnet50 / resnext50_32x4d, timm
seresnet50, reference CBAM and VGGFace2 SE-ResNet-50; then the MTANet head), the same train step
(forward in train mode, CCC + BCE + CE, backward, SGD momentum 0.9 weight decay 5e-3) and eval
forward, best of --steps after --warmup. Prints one JSON line:
    {"train_img_s", "eval_img_s", "peak_rss_mb", "fwd_gflop_per_img"}
(FLOPs from torch.utils.flop_counter, peak RSS from getrusage).

--sgemm: GFLOP/s of torch.mm on 2048x2048 float32, best of 4.

--layers: the conv layers of crates/kernels/examples/bench_layers.rs (batch 16), forward
and forward + backward (aten.convolution_backward from a given output gradient: the input
gradient, except for the stem, and the weight gradient), best
(minimum) of --reps runs after a warm-up, as bench_layers reports its own times. Prints one line per layer:
    layer <name> fwd_ms <float> fwd_bwd_ms <float>
With --serve it times nothing up front: it prints `ready` once torch is imported, then reads
layer names from stdin, one per line, and answers each with that line, so that bench_layers can
alternate between its layers and PyTorch's within one run; it ends at the end of its input.
"""
import argparse
import sys
import time

import torch
import torch.nn.functional as F

BATCH = 16
# (name, c_in, c_out, input size, kernel, stride, padding, groups): the list in
# crates/kernels/examples/bench_layers.rs.
LAYERS = [
    ("grouped32_256ch_28", 256, 256, 28, 3, 1, 1, 32),
    ("dense_128ch_28", 128, 128, 28, 3, 1, 1, 1),
    ("dense_64ch_56", 64, 64, 56, 3, 1, 1, 1),
    ("stem_7x7_s2_112", 3, 64, 112, 7, 2, 3, 1),
    ("dense_64ch_28", 64, 64, 28, 3, 1, 1, 1),
    ("dense_256ch_s2_14", 256, 256, 14, 3, 2, 1, 1),
    ("grouped32_512ch_14", 512, 512, 14, 3, 1, 1, 32),
    ("pointwise_256_64_28", 256, 64, 28, 1, 1, 0, 1),
]


def best_ms(reps, fn):
    fn()
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return min(times)


def time_layer(layer, reps):
    """(forward ms, forward + backward ms) of one LAYERS entry."""
    name, c_in, c_out, s, k, stride, pad, groups = layer
    x = torch.randn(BATCH, c_in, s, s)
    w = torch.randn(c_out, c_in // groups, k, k) * 0.05
    with torch.no_grad():
        r = torch.randn_like(F.conv2d(x, w, stride=stride, padding=pad, groups=groups))
    # The stem's input (the image) needs no gradient, as in a training step.
    mask = [c_in != 3, True, False]

    def fwd():
        with torch.no_grad():
            F.conv2d(x, w, stride=stride, padding=pad, groups=groups)

    def fwd_bwd():
        with torch.no_grad():
            F.conv2d(x, w, stride=stride, padding=pad, groups=groups)
            torch.ops.aten.convolution_backward(
                r, x, w, None, [stride, stride], [pad, pad], [1, 1], False, [0, 0], groups,
                mask)

    return best_ms(reps, fwd), best_ms(reps, fwd_bwd)


def print_layer(layer, reps):
    fwd, fwd_bwd = time_layer(layer, reps)
    print(f"layer {layer[0]} fwd_ms {fwd:.3f} fwd_bwd_ms {fwd_bwd:.3f}", flush=True)


def bench_layers(reps):
    for layer in LAYERS:
        print_layer(layer, reps)


def serve_layers(reps):
    by_name = {layer[0]: layer for layer in LAYERS}
    # torch is imported and its threads set: the caller's timings no longer share the machine
    # with the import.
    print("ready", flush=True)
    for line in sys.stdin:
        name = line.strip()
        if name not in by_name:
            sys.exit(f"bench_torch.py --serve: unknown layer {name!r} (known: {', '.join(by_name)})")
        print_layer(by_name[name], reps)


N_AU, N_EXPR, SIZE, HIDDEN = 8, 7, 112, 512


def build_mtanet(name):
    import os
    import sys
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "reference"))
    from make_fixtures import build, RefMtaNetHead
    backbone = build(name, 64, [64, 128, 256, 512], [3, 4, 6, 3], 32)
    head = RefMtaNetHead(2048, HIDDEN, N_AU, N_EXPR, 0.5)

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.backbone = backbone
            self.head = head

        def forward(self, x):
            va, au, expr, _ = self.head(self.backbone(x))
            return va, au, expr

    return Net()


def ccc_loss(pred, target):
    total = 0.0
    for i in range(2):
        p, t = pred[:, i], target[:, i]
        pm, tm = p.mean(), t.mean()
        cov = ((p - pm) * (t - tm)).mean()
        ccc = 2 * cov / (p.var(unbiased=False) + t.var(unbiased=False) + (pm - tm) ** 2)
        total = total + (1 - ccc)
    return total / 2


def best_s(steps, warmup, fn):
    for _ in range(warmup):
        fn()
    best = float("inf")
    for _ in range(max(steps, 1)):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def model_steps(name, batch):
    """(train_step, eval_step, net, x): one MTANet train step (SGD momentum 0.9, weight decay
    5e-3, CCC + BCE + CE) and one eval forward of `name` on a fixed random batch."""
    torch.manual_seed(7)
    net = build_mtanet(name)
    opt = torch.optim.SGD(net.parameters(), lr=1e-3, momentum=0.9, weight_decay=5e-3)
    x = torch.randn(batch, 3, SIZE, SIZE)
    va = torch.rand(batch, 2) * 2 - 1
    au = (torch.rand(batch, N_AU) >= 0.5).float()
    expr = torch.arange(batch) % N_EXPR

    def train_step():
        net.train()
        opt.zero_grad(set_to_none=True)
        v, a, e = net(x)
        loss = ccc_loss(v, va) + F.binary_cross_entropy_with_logits(a, au) + F.cross_entropy(e, expr)
        loss.backward()
        opt.step()

    def eval_step():
        net.eval()
        with torch.no_grad():
            net(x)[2].sum().item()

    return train_step, eval_step, net, x


def bench_model(name, batch, steps, warmup):
    import json
    import resource
    from torch.utils.flop_counter import FlopCounterMode
    train_step, eval_step, net, x = model_steps(name, batch)
    train_s = best_s(steps, warmup, train_step)
    net.eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        net(x)
    eval_s = best_s(steps, max(warmup - 1, 0), eval_step)
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({
        "train_img_s": batch / train_s,
        "eval_img_s": batch / eval_s,
        "peak_rss_mb": peak_kb / 1024.0,
        "fwd_gflop_per_img": counter.get_total_flops() / batch / 1e9,
    }), flush=True)


def bench_sgemm():
    n = 2048
    a, b = torch.ones(n, n), torch.full((n, n), 0.5)
    best = best_s(4, 1, lambda: torch.mm(a, b))
    print(f"{2 * n ** 3 / best / 1e9:.1f}", flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", action="store_true", help="time the conv layers")
    ap.add_argument("--serve", action="store_true",
                    help="with --layers: time the layers named on stdin, one per line")
    ap.add_argument("--model", help="time one MTANet train step and eval forward")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--sgemm", action="store_true", help="torch.mm 2048^3 GFLOP/s")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=5)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.layers and args.serve:
        serve_layers(args.reps)
    elif args.layers:
        bench_layers(args.reps)
    elif args.model:
        bench_model(args.model, args.batch, args.steps, args.warmup)
    elif args.sgemm:
        bench_sgemm()
    else:
        ap.error("nothing to do: pass --layers, --model NAME or --sgemm")


if __name__ == "__main__":
    main()
