#!/usr/bin/env python3
"""How far PyTorch's own bf16 autocast lands from f32 on the small backbone fixtures.

The bf16 conformance rows of `mtanet gpu-check` (crates/runner/src/gpu_check.rs,
BF16_TOLERANCE / BF16_GRAD_TOLERANCE) compare mtanet's `precision: bf16` with the f32
computation. Their tolerances are sized from this: the same small networks as
make_fixtures.py, eval mode, output and eval-mode gradients (of sum(out * r)) under
torch.autocast("cpu", bfloat16) against f32, relative error max|a - b| / max|b|.

    python3 scripts/reference/bf16_autocast_spread.py

Printed on a 2-core AMD EPYC (torch 2.15, timm 1.0.31; oneDNN's bf16 CPU kernels vary a
little between runs): outputs 4e-3 to 9e-3; gradients up to ~0.26 (SE-ResNet and ResNeXt
input and early-conv gradients), and ~1.1 for CBAM's spatial-gate BN weight (autocast runs that
7x7 conv in bf16; mtanet runs CBAM's gate in f32).
"""
import sys
import os

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import make_fixtures as mf  # noqa: E402


def main():
    gen = torch.Generator().manual_seed(0)
    for kind in mf.SMALL:
        cfg = mf.SMALL[kind]
        div = cfg["width_div"]
        model = mf.build(kind, 64 // div, [p // div for p in (64, 128, 256, 512)],
                         cfg["depths"], cfg["groups"] or 1)
        mf.randomise(model, gen)
        model = model.float().eval()
        x = torch.randn(2, 3, mf.SIZE, mf.SIZE, generator=gen)
        r = None
        res = {}
        for mode in ["f32", "bf16"]:
            model.zero_grad()
            xg = x.clone().requires_grad_(True)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=(mode == "bf16")):
                out = model(xg)
            out = out.float()
            if r is None:
                r = torch.randn(out.shape, generator=gen)
            (out * r).sum().backward()
            params = dict(model.net.named_parameters()) if hasattr(model, "net") \
                else dict(model.named_parameters())
            res[mode] = {"output": out.detach(), "grad input": xg.grad.clone(),
                         **{f"grad {k}": params[k].grad.clone() for k in mf.GRAD_KEYS[kind]}}
        for k, want in res["f32"].items():
            err = float((res["bf16"][k] - want).abs().max() / want.abs().max())
            print(f"{kind:22s} {k:50s} {err:.2e}")


if __name__ == "__main__":
    main()
