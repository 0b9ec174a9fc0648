#!/usr/bin/env python3
"""PyTorch reference for the MTANet head's structure and parameter count (crates/backbones).

Writes tests/fixtures/heads/heads.json with, per configuration, the parameter count
(`sum(p.numel() for p in module.parameters())`) and the sorted state-dict (name, shape) list:

  heads      the head alone (`export_pytorch.MtaNetHead`, names under `head.`) for C = 256, hidden = 64,
             n_au = 8, n_expr = 7, pooling avg_max / avg / max, decoder_layers 1 / 2 / 3.
  networks   whole small networks, backbone (names under `backbone.`, BN running statistics
             included, `num_batches_tracked` left out) + head, at the demo profile's size
             (width_div 8, depths [1, 1, 1, 1], hidden 64): the Table I backbones with
             groups 4, and the two SE backbones with their own groups; decoder_layers 3 and 1.

The head mirrors our reading of the paper's Fig. 1 (Sec. III-A): per kept pooling branch
`pool -> dropout -> Linear(C, hidden) -> ReLU`, concatenated as [avg, max]; each task decoder a
single Linear, or for L > 1 layers `nn.Sequential(Linear(F, F), ReLU, ..., Linear(F, out))`
with F the shared feature width (Sec. IV-B: "stacking deeper linear layers").
Backbones come from scripts/reference/make_fixtures.py (torchvision, timm and the reference
VGGFace2 / CBAM modules), built at the width and groups `ResNetConfig::scaled` gives.

Run from the repository root:  python3 scripts/reference/make_head_fixtures.py
Requires torch, torchvision, timm.
"""

import json
import os
import sys

import torch
import torch.nn as nn
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, HERE)
import make_fixtures as mf  # noqa: E402  (the backbone builders)

sys.path.insert(0, os.path.dirname(HERE))
from export_pytorch import FULL_GROUPS, POOLINGS, MtaNet, MtaNetHead  # noqa: E402  (the one head module)

SCRIPT = "scripts/reference/make_head_fixtures.py"




def small_backbone(kind, width_div, depths, groups):
    """The backbone `ResNetConfig::from_kind(kind).scaled(width_div, depths, groups)` describes,
    with state-dict names as in the PyTorch references (no classifier)."""
    stem = max(64 // width_div, 1)
    planes = [max(p // width_div, 1) for p in (64, 128, 256, 512)]
    g0, wpg0 = FULL_GROUPS[kind]
    g, wpg = (groups, max(wpg0 * g0 // groups, 1)) if groups else (g0, wpg0)
    if kind in ("resnet50", "resnext50_32x4d"):
        return mf.torchvision_resnet(stem, planes, depths, g, wpg)
    if kind == "resnext50_32x4d_cbam":
        return mf.Plain(mf.RefResNet(mf.CbamBottleneck, depths, stem, planes, False, groups=g,
                                     base_width=wpg))
    if groups not in (None, 1):
        raise ValueError(f"{kind}: the reference has no grouped variant")
    return mf.build(kind, stem, planes, depths, 1)


def named_shapes(state_dict, prefix=""):
    return sorted([prefix + k, list(v.shape)] for k, v in state_dict.items()
                  if not k.endswith("num_batches_tracked"))


def head_entry(c, hidden, n_au, n_expr, pooling, layers):
    head = MtaNetHead(c, hidden, n_au, n_expr, 0.5, pooling, layers, "tanh")
    fmap = torch.randn(2, c, 3, 3)
    va, au, ex = head(fmap)
    f = head.features(fmap)
    assert va.shape == (2, 2) and au.shape == (2, n_au) and ex.shape == (2, n_expr)
    assert f.shape == (2, head.width)
    return {"name": f"{pooling}_L{layers}", "c": c, "hidden": hidden, "n_au": n_au,
            "n_expr": n_expr, "pooling": pooling, "decoder_layers": layers,
            "feature_width": head.width,
            "parameters": sum(p.numel() for p in head.parameters()),
            "state_dict": named_shapes(head.state_dict(), "head.")}


def network_entry(kind, width_div, depths, groups, hidden, n_au, n_expr, pooling, layers):
    backbone = small_backbone(kind, width_div, depths, groups)
    c = 4 * max(512 // width_div, 1)
    net = MtaNet(backbone, MtaNetHead(c, hidden, n_au, n_expr, 0.5, pooling, layers, "tanh"))
    net.eval()
    with torch.no_grad():
        va, au, ex = net(torch.randn(1, 3, 64, 64))
    assert va.shape == (1, 2) and au.shape == (1, n_au) and ex.shape == (1, n_expr)
    # FeatureMap / Plain wrap the reference network as `net.`; the state dict drops that level.
    backbone_sd = backbone.state_dict_plain()
    head_sd = net.head.state_dict()
    # The classifiers are nn.Identity: every parameter is the backbone's or the head's.
    params = sum(p.numel() for p in net.parameters())
    assert params == (sum(v.numel() for k, v in backbone_sd.items() if "running_" not in k
                          and not k.endswith("num_batches_tracked"))
                      + sum(p.numel() for p in net.head.parameters()))
    group_tag = f"_g{groups}" if groups else ""
    return {"name": f"{kind}{group_tag}_L{layers}", "backbone": kind, "width_div": width_div,
            "depths": depths, "groups": groups, "hidden": hidden, "n_au": n_au,
            "n_expr": n_expr, "pooling": pooling, "decoder_layers": layers,
            "parameters": params,
            "state_dict": named_shapes(backbone_sd, "backbone.") + named_shapes(head_sd, "head.")}


def main():
    torch.manual_seed(2020)
    heads = [head_entry(256, 64, 8, 7, pooling, layers)
             for pooling in POOLINGS for layers in (1, 2, 3)]
    demo = dict(width_div=8, depths=[1, 1, 1, 1], hidden=64, n_au=8, n_expr=7)
    networks = []
    for kind, groups in [("resnet50", 4), ("resnext50_32x4d", 4), ("resnext50_32x4d_cbam", 4),
                         ("seresnet50", None), ("senet50_vggface2", None)]:
        for layers in (3, 1):
            networks.append(network_entry(kind, demo["width_div"], demo["depths"], groups,
                                          demo["hidden"], demo["n_au"], demo["n_expr"],
                                          "avg_max", layers))
    out = os.path.join(ROOT, "tests/fixtures/heads/heads.json")
    os.makedirs(os.path.dirname(out), exist_ok=True)
    doc = {"made_by": SCRIPT, "torch": torch.__version__, "heads": heads, "networks": networks}
    with open(out, "w") as fh:
        json.dump(doc, fh, indent=1)
        fh.write("\n")
    for e in heads + networks:
        print(f"{e['name']:<28} {e['parameters']:>9} parameters, {len(e['state_dict'])} tensors")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
