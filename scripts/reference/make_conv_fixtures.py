#!/usr/bin/env python3
"""Reference values and gradients for mtanet_kernels::conv2d, from PyTorch.

Writes tests/fixtures/kernels/conv2d_torch.safetensors. For case i it holds
  case{i}.x, case{i}.w  f32 input (N, C_in, H, W) and weight (C_out, C_in/groups, KH, KW)
  case{i}.r             f32 fixed output-gradient: the loss is sum(conv2d(x, w) * r)
  case{i}.y             f32 torch.nn.functional.conv2d(x, w, stride, padding, groups=groups)
  case{i}.gx, case{i}.gw  f32 autograd gradients of the loss w.r.t. x and w
  case{i}.params        i64 [stride, padding, groups]
The forward and backward run in float64 on the float32 inputs, then round to float32.
Run from the repository root: python3 scripts/reference/make_conv_fixtures.py
"""
import json
import os

import torch
import torch.nn.functional as F
from safetensors.torch import save_file

OUT = "tests/fixtures/kernels/conv2d_torch.safetensors"

# (n, c_in, h, w, c_out, (kh, kw), stride, padding, groups)
CASES = [
    (1, 3, 13, 11, 4, (7, 7), 2, 3, 1),  # stem-like 7x7/2, non-square input
    (3, 2, 9, 7, 1, (7, 7), 1, 3, 1),  # CBAM spatial attention: 2 -> 1 channel
    (3, 64, 7, 5, 64, (3, 3), 2, 1, 32),  # ResNeXt grouped 3x3/2
    (2, 64, 6, 6, 64, (3, 3), 1, 1, 32),  # ResNeXt grouped 3x3/1
    (2, 16, 6, 9, 32, (1, 1), 2, 0, 1),  # downsample 1x1/2
    (3, 12, 5, 6, 8, (1, 1), 1, 0, 4),  # pointwise, grouped
    (2, 8, 8, 8, 8, (3, 3), 1, 1, 2),  # even size
    (1, 4, 10, 7, 6, (3, 5), 2, 1, 2),  # rectangular kernel
    (3, 6, 5, 5, 4, (3, 3), 1, 0, 1),  # no padding
    (1, 5, 4, 4, 3, (3, 3), 1, 3, 1),  # padding larger than the kernel reach
    # Grouped 3x3/1 with 4-32 channels per group (the direct kernel, conv2d/direct3x3.rs):
    (2, 16, 9, 7, 32, (3, 3), 1, 1, 4),  # 4 in / 8 out per group, non-square
    (3, 32, 14, 14, 32, (3, 3), 1, 1, 8),  # 4 per group at 14x14 (direct weight gradient too)
    (2, 64, 4, 4, 64, (3, 3), 1, 1, 2),  # 32 per group at 4x4
    # Grouped 3x3/2 with 4-32 channels per group (the direct kernel on stride phases,
    # conv2d/direct3x3_stride2.rs):
    (2, 32, 14, 14, 32, (3, 3), 2, 1, 8),  # 4 per group, 14x14 -> 7x7 (direct weight gradient)
    (3, 64, 7, 9, 64, (3, 3), 2, 1, 4),  # 16 per group, odd non-square -> 4x5
]


def main() -> None:
    gen = torch.Generator().manual_seed(20261128)
    tensors = {}
    for i, (n, c_in, h, w, c_out, (kh, kw), stride, padding, groups) in enumerate(CASES):
        x = torch.randn(n, c_in, h, w, generator=gen, dtype=torch.float32)
        wt = torch.randn(c_out, c_in // groups, kh, kw, generator=gen, dtype=torch.float32)
        x64 = x.double().requires_grad_(True)
        w64 = wt.double().requires_grad_(True)
        y = F.conv2d(x64, w64, stride=stride, padding=padding, groups=groups)
        r = torch.randn(y.shape, generator=gen, dtype=torch.float32)
        (y * r.double()).sum().backward()
        p = f"case{i}."
        tensors[p + "x"] = x
        tensors[p + "w"] = wt
        tensors[p + "r"] = r
        tensors[p + "y"] = y.detach().float()
        tensors[p + "gx"] = x64.grad.float()
        tensors[p + "gw"] = w64.grad.float()
        tensors[p + "params"] = torch.tensor([stride, padding, groups], dtype=torch.int64)
    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    meta = {
        "made_by": "scripts/reference/make_conv_fixtures.py",
        "torch": torch.__version__,
        "cases": json.dumps(CASES),
    }
    save_file({k: v.contiguous() for k, v in tensors.items()}, OUT, metadata=meta)
    print(f"wrote {OUT}: {len(CASES)} cases, {os.path.getsize(OUT)} bytes")


if __name__ == "__main__":
    main()
